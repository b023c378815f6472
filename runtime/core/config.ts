/**
 * Model configuration: reads the `config.json` of the three supported layouts into one typed
 * {@link ModelConfig}. Pure TypeScript, no file access (the caller reads files), GPU-free.
 *
 * Layouts:
 * - `llava_llama`: original LLaVA / Dynamic-LLaVA training output (LLaMA keys at the top level,
 *   `mm_*` keys, optional `sparse_config`); the vision tower's own config is passed separately.
 * - `llava`: llava-hf (`text_config`, `vision_config`, `vision_feature_layer`).
 * - `llama`: a plain LLaMA/Vicuna language model, no vision.
 * @module
 */
import { CheckpointError } from "./errors.ts";

/** The LLaMA decoder's sizes. */
export interface TextConfig {
  /** Width of the residual stream (`hidden_size`), C. */
  hiddenSize: number;
  /** Width of the SwiGLU MLP (`intermediate_size`). */
  intermediateSize: number;
  /** Decoder layers (`num_hidden_layers`). */
  numLayers: number;
  /** Query heads (`num_attention_heads`). */
  numHeads: number;
  /** Key/value heads (`num_key_value_heads`; equal to numHeads without grouped-query attention). */
  numKvHeads: number;
  /** Width of one head: hiddenSize / numHeads. */
  headDim: number;
  /** Rows of the embedding and of lm_head (`vocab_size`). */
  vocabSize: number;
  /** Epsilon of every RMSNorm (`rms_norm_eps`). */
  rmsNormEps: number;
  /** Rotary embedding base (`rope_theta`, 10000 for LLaMA-2). */
  ropeTheta: number;
  /** Longest context the model was trained for (`max_position_embeddings`). */
  maxPositions: number;
  /** Beginning-of-sequence id (`bos_token_id`). */
  bosTokenId: number;
  /** End-of-sequence id (`eos_token_id`): generation stops on it. */
  eosTokenId: number;
  /** lm_head shares the embedding matrix (`tie_word_embeddings`). */
  tieWordEmbeddings: boolean;
}

/** The CLIP vision tower's sizes and how its features are selected. */
export interface VisionConfig {
  /** Width of the tower's residual stream (`hidden_size`, 1024 for CLIP ViT-L). */
  hiddenSize: number;
  /** Width of the tower's MLP (`intermediate_size`). */
  intermediateSize: number;
  /** Encoder layers of the tower (`num_hidden_layers`). */
  numLayers: number;
  /** Attention heads of the tower (`num_attention_heads`). */
  numHeads: number;
  /** Side of the square input image in pixels (`image_size`, 336 for LLaVA-1.5). */
  imageSize: number;
  /** Side of one patch in pixels (`patch_size`, 14). */
  patchSize: number;
  /** Input channels (`num_channels`, 3). */
  numChannels: number;
  /** Epsilon of every LayerNorm (`layer_norm_eps`). */
  layerNormEps: number;
  /** MLP activation (`hidden_act`; OpenAI CLIP uses quick_gelu). */
  hiddenAct: "quick_gelu" | "gelu";
  /** Hidden state index as in HF `hidden_states[selectLayer]` (-2 = second-to-last layer output). */
  selectLayer: number;
  /** "patch" drops the CLS token (LLaVA-1.5), "cls_patch" keeps it. */
  selectFeature: "patch" | "cls_patch";
  /** Per-channel mean subtracted from pixels in [0, 1] (`image_mean`). */
  imageMean: [number, number, number];
  /** Per-channel standard deviation pixels are divided by (`image_std`). */
  imageStd: [number, number, number];
  /** Image tokens per image after feature selection: (imageSize/patchSize)² (+1 for cls_patch). */
  tokensPerImage: number;
  /** Encoder layers that must run: enough to produce hidden state `selectLayer`. */
  layersToRun: number;
}

/** The multimodal projector from vision hidden size to text hidden size. */
export interface ProjectorConfig {
  /** `mlp2x_gelu`: Linear, GELU, Linear (LLaVA-1.5); `linear`: one Linear (LLaVA-1). */
  type: "mlp2x_gelu" | "linear";
  /** Input width: the vision tower's hidden size. */
  inSize: number;
  /** Output width: the text model's hidden size. */
  outSize: number;
}

/** Dynamic-LLaVA `sparse_config` (defaults as the official implementation). */
export interface SparseConfig {
  /** The decoder layer l where visual tokens are pruned and output tokens filtered (`sparse_layer`). */
  sparseLayer: number;
  /** Fraction of image tokens kept at layer l (`vision_keep_rate`). */
  visionKeepRate: number;
  /** Expected fraction of output tokens kept at layers ≥ l (`output_text_keep_rate`). */
  outputTextKeepRate: number;
  /** The checkpoint has an image predictor (`use_vision_predictor`). */
  useVisionPredictor: boolean;
  /** The checkpoint has an output-text predictor (`use_output_text_predictor`). */
  useOutputTextPredictor: boolean;
  /** Width the predictors project the hidden state down to (`d_model`). */
  dModel: number;
  /** Attention heads of the predictors' encoder layers (`nhead`). */
  nhead: number;
  /** MLP width of the predictors' encoder layers (`dim_feedforward`). */
  dimFeedforward: number;
  /** Encoder layers of each predictor (`num_layers`). */
  numLayers: number;
}

/** Everything the runtime needs to know about a checkpoint's architecture. */
export interface ModelConfig {
  /** The `config.json` layout the config was read from. */
  layout: "llava_llama" | "llava" | "llama";
  /** The language model. */
  text: TextConfig;
  /** The vision tower, or null for a text-only model. */
  vision: VisionConfig | null;
  /** The multimodal projector, or null for a text-only model. */
  projector: ProjectorConfig | null;
  /** Dynamic-LLaVA's `sparse_config`, or null for a checkpoint trained without it. */
  sparse: SparseConfig | null;
  /** llava-hf only: the in-vocabulary id of `<image>` (treated like -200 in `inputIds`). */
  imageTokenId: number | null;
}

/** Ids equal to this in `inputIds` mark where an image's tokens are spliced in. */
export const IMAGE_TOKEN_INDEX: number = -200;

/** CLIP's normalisation constants (OpenAI CLIP, used by LLaVA-1.5's image processor). */
export const CLIP_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
/** See {@link CLIP_MEAN}. */
export const CLIP_STD: [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function int(o: Json, key: string, where: string, fallback?: number): number {
  const v = o[key] ?? fallback;
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new CheckpointError(
      `Cannot read config: "${key}" must be an integer, got ${JSON.stringify(v)}`,
      where,
    );
  }
  return v;
}

function positiveInt(o: Json, key: string, where: string, fallback?: number): number {
  const v = int(o, key, where, fallback);
  if (v <= 0) throw new CheckpointError(`Cannot read config: "${key}" must be positive, got ${v}`, where);
  return v;
}

function num(o: Json, key: string, where: string, fallback?: number): number {
  const v = o[key] ?? fallback;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new CheckpointError(
      `Cannot read config: "${key}" must be a number, got ${JSON.stringify(v)}`,
      where,
    );
  }
  return v;
}

function bool(o: Json, key: string, where: string, fallback: boolean): boolean {
  const v = o[key] ?? fallback;
  if (typeof v !== "boolean") {
    throw new CheckpointError(
      `Cannot read config: "${key}" must be a boolean, got ${JSON.stringify(v)}`,
      where,
    );
  }
  return v;
}

function firstId(v: unknown, fallback: number): number {
  if (Array.isArray(v)) return typeof v[0] === "number" ? v[0] : fallback;
  return typeof v === "number" ? v : fallback;
}

/**
 * Reads the LLaMA part of a config object (top level for llava_llama/llama, `text_config` for llava).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseTextConfig } from "./config.ts";
 * const text = parseTextConfig({
 *   hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 2, vocab_size: 32000,
 * }, "config.json");
 * assert.equal(text.headDim, 16);
 * assert.equal(text.numKvHeads, 4); // no num_key_value_heads: one KV head per query head
 * ```
 */
export function parseTextConfig(raw: unknown, where: string): TextConfig {
  if (!isObject(raw)) throw new CheckpointError("Cannot read config: expected a JSON object", where);
  const hiddenSize = positiveInt(raw, "hidden_size", where);
  const numHeads = positiveInt(raw, "num_attention_heads", where);
  const numKvHeads = positiveInt(raw, "num_key_value_heads", where, numHeads);
  const headDim = positiveInt(raw, "head_dim", where, Math.floor(hiddenSize / numHeads));
  if (headDim * numHeads !== hiddenSize) {
    throw new CheckpointError(
      `Cannot read config: hidden_size ${hiddenSize} is not num_attention_heads ${numHeads} × head_dim ${headDim}`,
      where,
    );
  }
  if (numHeads % numKvHeads !== 0) {
    throw new CheckpointError(
      `Cannot read config: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
      where,
    );
  }
  if (headDim % 2 !== 0) {
    throw new CheckpointError(`Cannot read config: head_dim ${headDim} must be even`, where);
  }
  const rope = raw["rope_scaling"];
  if (rope !== undefined && rope !== null) {
    throw new CheckpointError("Cannot read config: rope_scaling is not supported", where);
  }
  const act = raw["hidden_act"] ?? "silu";
  if (act !== "silu") {
    throw new CheckpointError(`Cannot read config: hidden_act "${act}" is not supported`, where);
  }
  return {
    hiddenSize,
    intermediateSize: positiveInt(raw, "intermediate_size", where),
    numLayers: positiveInt(raw, "num_hidden_layers", where),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(raw, "vocab_size", where, 32000),
    rmsNormEps: num(raw, "rms_norm_eps", where, 1e-6),
    ropeTheta: num(raw, "rope_theta", where, 10000),
    maxPositions: positiveInt(raw, "max_position_embeddings", where, 4096),
    bosTokenId: firstId(raw["bos_token_id"], 1),
    eosTokenId: firstId(raw["eos_token_id"], 2),
    tieWordEmbeddings: bool(raw, "tie_word_embeddings", where, false),
  };
}

/**
 * Reads a CLIP vision config (a `CLIPVisionConfig`, or a `CLIPConfig` holding `vision_config`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseVisionConfig } from "./config.ts";
 * const v = parseVisionConfig({
 *   hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, num_hidden_layers: 3,
 *   image_size: 28, patch_size: 14,
 * }, { selectLayer: -2, selectFeature: "patch" }, "tower/config.json");
 * assert.equal(v.tokensPerImage, 4); // (28 / 14)² patches, CLS dropped
 * assert.equal(v.layersToRun, 2); // hidden_states[-2] is the output of layer 2 of 3
 * ```
 */
export function parseVisionConfig(
  raw: unknown,
  select: { selectLayer: number; selectFeature: string },
  where: string,
): VisionConfig {
  if (isObject(raw) && isObject(raw["vision_config"])) raw = raw["vision_config"];
  if (!isObject(raw)) throw new CheckpointError("Cannot read vision config: expected a JSON object", where);
  const imageSize = positiveInt(raw, "image_size", where, 224);
  const patchSize = positiveInt(raw, "patch_size", where, 32);
  if (imageSize % patchSize !== 0) {
    throw new CheckpointError(
      `Cannot read vision config: image_size ${imageSize} is not a multiple of patch_size ${patchSize}`,
      where,
    );
  }
  const hiddenSize = positiveInt(raw, "hidden_size", where, 768);
  const numHeads = positiveInt(raw, "num_attention_heads", where, 12);
  if (hiddenSize % numHeads !== 0) {
    throw new CheckpointError(
      "Cannot read vision config: hidden_size is not a multiple of num_attention_heads",
      where,
    );
  }
  const numLayers = positiveInt(raw, "num_hidden_layers", where, 12);
  const act = raw["hidden_act"] ?? "quick_gelu";
  if (act !== "quick_gelu" && act !== "gelu") {
    throw new CheckpointError(`Cannot read vision config: hidden_act "${act}" is not supported`, where);
  }
  // hidden_states has numLayers + 1 entries (embeddings output first).
  const layer = select.selectLayer < 0 ? numLayers + 1 + select.selectLayer : select.selectLayer;
  if (!Number.isInteger(layer) || layer < 0 || layer > numLayers) {
    throw new CheckpointError(
      `Cannot read vision config: select layer ${select.selectLayer} is outside 0..${numLayers}`,
      where,
    );
  }
  if (select.selectFeature !== "patch" && select.selectFeature !== "cls_patch") {
    throw new CheckpointError(
      `Cannot read vision config: select feature "${select.selectFeature}" is unknown`,
      where,
    );
  }
  const grid = imageSize / patchSize;
  return {
    hiddenSize,
    intermediateSize: positiveInt(raw, "intermediate_size", where, 3072),
    numLayers,
    numHeads,
    imageSize,
    patchSize,
    numChannels: positiveInt(raw, "num_channels", where, 3),
    layerNormEps: num(raw, "layer_norm_eps", where, 1e-5),
    hiddenAct: act,
    selectLayer: select.selectLayer,
    selectFeature: select.selectFeature,
    imageMean: CLIP_MEAN,
    imageStd: CLIP_STD,
    tokensPerImage: grid * grid + (select.selectFeature === "cls_patch" ? 1 : 0),
    layersToRun: layer,
  };
}

/**
 * Reads Dynamic-LLaVA's `sparse_config`, filling the official defaults.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSparseConfig } from "./config.ts";
 * const sparse = parseSparseConfig({ vision_keep_rate: 0.2 }, "config.json");
 * assert.equal(sparse.sparseLayer, 2); // the default
 * assert.equal(sparse.visionKeepRate, 0.2);
 * ```
 */
export function parseSparseConfig(raw: unknown, where: string): SparseConfig {
  if (!isObject(raw)) throw new CheckpointError("Cannot read sparse_config: expected a JSON object", where);
  const visionKeepRate = num(raw, "vision_keep_rate", where, 0.2);
  if (visionKeepRate <= 0 || visionKeepRate > 1) {
    throw new CheckpointError(
      `Cannot read sparse_config: vision_keep_rate ${visionKeepRate} is outside (0, 1]`,
      where,
    );
  }
  const dModel = positiveInt(raw, "d_model", where, 512);
  const nhead = positiveInt(raw, "nhead", where, 8);
  if (dModel % nhead !== 0 || dModel % 4 !== 0) {
    throw new CheckpointError(
      `Cannot read sparse_config: d_model ${dModel} must divide by nhead and 4`,
      where,
    );
  }
  return {
    sparseLayer: int(raw, "sparse_layer", where, 2),
    visionKeepRate,
    outputTextKeepRate: num(raw, "output_text_keep_rate", where, 0.5),
    useVisionPredictor: bool(raw, "use_vision_predictor", where, true),
    useOutputTextPredictor: bool(raw, "use_output_text_predictor", where, true),
    dModel,
    nhead,
    dimFeedforward: positiveInt(raw, "dim_feedforward", where, 2048),
    numLayers: positiveInt(raw, "num_layers", where, 2),
  };
}

/**
 * Reads a checkpoint's `config.json` object. For `llava_llama`, pass the vision tower's config
 * object as `towerRaw` (the caller resolves `mm_vision_tower` on disk).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseModelConfig } from "./config.ts";
 * const cfg = parseModelConfig({
 *   model_type: "llama", hidden_size: 64, intermediate_size: 128, num_attention_heads: 4,
 *   num_hidden_layers: 2, vocab_size: 32000,
 * }, "config.json");
 * assert.equal(cfg.layout, "llama");
 * assert.equal(cfg.vision, null);
 * assert.equal(cfg.text.numLayers, 2);
 * ```
 */
export function parseModelConfig(raw: unknown, where: string, towerRaw?: unknown): ModelConfig {
  if (!isObject(raw)) throw new CheckpointError("Cannot read config: expected a JSON object", where);
  const type = raw["model_type"];
  const sparse = raw["sparse_config"] == null ? null : parseSparseConfig(raw["sparse_config"], where);
  if (type === "llava" && isObject(raw["text_config"])) {
    const text = parseTextConfig(raw["text_config"], `${where} text_config`);
    const strategy = raw["vision_feature_select_strategy"] ?? "default";
    const vision = parseVisionConfig(raw["vision_config"], {
      selectLayer: int(raw, "vision_feature_layer", where, -2),
      selectFeature: strategy === "default" ? "patch" : strategy === "full" ? "cls_patch" : String(strategy),
    }, `${where} vision_config`);
    const act = raw["projector_hidden_act"] ?? "gelu";
    if (act !== "gelu") {
      throw new CheckpointError(`Cannot read config: projector_hidden_act "${act}" unsupported`, where);
    }
    return {
      layout: "llava",
      text,
      vision,
      projector: { type: "mlp2x_gelu", inSize: vision.hiddenSize, outSize: text.hiddenSize },
      sparse,
      imageTokenId: int(raw, "image_token_index", where, 32000),
    };
  }
  if (type === "llava_llama" || ((type === "llama" || type === "llava") && raw["mm_vision_tower"] != null)) {
    const text = parseTextConfig(raw, where);
    if (towerRaw === undefined) {
      throw new CheckpointError("Cannot read config: the vision tower's config was not provided", where);
    }
    const vision = parseVisionConfig(towerRaw, {
      selectLayer: int(raw, "mm_vision_select_layer", where, -2),
      selectFeature: String(raw["mm_vision_select_feature"] ?? "patch"),
    }, `${where} mm_vision_tower`);
    const projectorType = raw["mm_projector_type"] ?? "linear";
    if (projectorType !== "mlp2x_gelu" && projectorType !== "linear") {
      throw new CheckpointError(
        `Cannot read config: mm_projector_type "${projectorType}" is not supported`,
        where,
      );
    }
    const inSize = positiveInt(raw, "mm_hidden_size", where, vision.hiddenSize);
    if (inSize !== vision.hiddenSize) {
      throw new CheckpointError(
        `Cannot read config: mm_hidden_size ${inSize} differs from the tower's hidden_size ${vision.hiddenSize}`,
        where,
      );
    }
    const aspect = raw["image_aspect_ratio"] ?? "pad";
    if (aspect !== "pad" && aspect !== "square") {
      throw new CheckpointError(`Cannot read config: image_aspect_ratio "${aspect}" is not supported`, where);
    }
    return {
      layout: "llava_llama",
      text,
      vision,
      projector: { type: projectorType, inSize, outSize: text.hiddenSize },
      sparse,
      imageTokenId: null,
    };
  }
  if (type === "llama") {
    return {
      layout: "llama",
      text: parseTextConfig(raw, where),
      vision: null,
      projector: null,
      sparse,
      imageTokenId: null,
    };
  }
  throw new CheckpointError(`Cannot read config: model_type ${JSON.stringify(type)} is not supported`, where);
}
