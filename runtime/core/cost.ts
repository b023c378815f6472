/**
 * Cost model: FLOPs and KV-cache bytes of LLaVA-1.5 decoding under the dense, FastV and
 * Dynamic-LLaVA policies. Pure TypeScript: no GPU, no file access.
 *
 * Two FLOP counts are kept side by side:
 * - **paper**: the per-layer formula 32·n·C² + 4·n·m·C (n query rows, m key rows each attends to,
 *   m = n for a whole-sequence pass: the paper's 32·N·C² + 4·N²·C), over the rows the paper counts:
 *   image tokens and generated tokens. The prompt's text rows are left out, which is how the paper's
 *   Table 1 gets 10.1 TFLOPs for LLaVA-1.5-7B's prefill (N = 576, C = 4096, 32 layers).
 * - **exact**: what runs, over every row present (text, image, generated). Counted: each matrix
 *   product at 2 FLOPs per multiply-add (q/k/v/o with grouped-query sizes, gate/up/down with the
 *   real intermediate size, QKᵀ and attention-weighted V over the causally visible keys, lm_head),
 *   RMSNorm at 4 FLOPs per element, LayerNorm at 7. Not counted: RoPE, softmax, activations,
 *   residual adds, bias adds, embedding lookup (together under 0.1% for LLaVA-1.5 sizes).
 *
 * Predictor FLOPs (Dynamic-LLaVA's vision and output-text predictors) are reported separately
 * (`predictorFlops`), never folded into the decoder's counts.
 *
 * Memory: the KV cache at `kvDtype` (f16: 2 bytes per element, f32: 4), and with a `weightType`
 * the weights as stored (text model, vision tower + projector, predictors; weight_bytes.ts), so
 * `totalBytes` answers whether a model, a policy, a context length and a batch fit a GPU.
 *
 * Building blocks the runtime calls with the row counts that actually ran: {@link passFlops} over
 * one forward pass's {@link LayerRows}, {@link kvBytes} over the rows a cache holds,
 * {@link visionPredictorFlops} and {@link textPredictorFlops}. {@link estimateCost} plans a whole
 * request (prefill + decode, with or without KV cache) on top of them.
 *
 * Conventions: a request = one prefill pass over the prompt (it yields the first generated token)
 * and `newTokens - 1` decode steps, each feeding one generated token back (the last generated
 * token is never fed). Images are pruned per image. The expected fraction `textKeepRate` of
 * output tokens is turned into whole rows by a fixed schedule: after k candidates,
 * floor(k × textKeepRate) are kept/admitted.
 * @module
 */
import { type KvDtype, kvElementBytes } from "./sparse_kv.ts";
import { CheckpointError, InputError } from "./errors.ts";
import { type ModelConfig, parseModelConfig, type TextConfig } from "./config.ts";
import { parseWeightType, type StoredWeightType, type WeightBytes, weightBytes } from "./weight_bytes.ts";

/** Text tokens of a typical LLaVA-1.5 prompt, BOS included, image excluded (see {@link CostPlan}). */
export const DEFAULT_PROMPT_TOKENS = 48;

const RMSNORM_FLOPS_PER_ELEMENT = 4;
const LAYERNORM_FLOPS_PER_ELEMENT = 7;
const EPSILON = 1e-9;

/** Bytes per cached K/V element of each {@link KvDtype}. */
export const KV_DTYPE_BYTES: Readonly<Record<KvDtype, number>> = {
  f32: kvElementBytes("f32"),
  f16: kvElementBytes("f16"),
};

/** Rows one decoder layer handled in one forward pass. */
export interface LayerRows {
  /** Query rows the layer computed in this pass (hidden states in, hidden states out). */
  newRows: number;
  /** Rows already in the layer's KV cache that every new row also attends to (0 without a cache). */
  cachedRows: number;
  /** Of `newRows`, the image and generated-token rows (the rows the paper's formula counts). */
  paperNewRows: number;
  /** Of `cachedRows`, the image and generated-token rows. */
  paperCachedRows: number;
}

/** FLOPs of one forward pass, or of a sum of passes. */
export interface PassFlops {
  /** The paper's formula over image and generated-token rows (decoder layers only). */
  flopsPaper: number;
  /** Every matrix product and norm that ran: decoder layers, final norm and lm_head. */
  flopsExact: number;
}

/** Sizes a predictor's FLOPs depend on (from `sparse_config` and the decoder's hidden size). */
export interface PredictorDims {
  /** The decoder's hidden size C (the predictors' input width). */
  hiddenSize: number;
  /** `d_model`. */
  dModel: number;
  /** `dim_feedforward` of the vision predictor's transformer blocks. */
  dimFeedforward: number;
  /** `num_layers`: transformer blocks of the vision predictor. */
  numLayers: number;
}

/** What to estimate: a policy and the sizes of one request. */
export interface CostPlan {
  /** The policy: dense (no pruning), FastV, or Dynamic-LLaVA. */
  policy: "dense" | "fastv" | "dynamic";
  /**
   * Text tokens of the prompt, BOS included, image tokens excluded. Default
   * {@link DEFAULT_PROMPT_TOKENS} = 48: the llava_v1 template around `<image>` with the question
   * "Describe this image in detail." (35 tokens before the image, BOS included, 13 after).
   */
  promptTokens?: number;
  /**
   * Images in the prompt (default 1 when the config has a vision tower or `imageTokens` is given,
   * else 0). Images whose token count is unknown, or `imageTokens` with 0 images, are an InputError.
   */
  images?: number;
  /**
   * Tokens per image (default: the vision config's tokensPerImage; for a raw llava_llama config,
   * (size/patch)² read from a tower id such as "openai/clip-vit-large-patch14-336"). Giving it
   * implies one image unless `images` says otherwise.
   */
  imageTokens?: number;
  /** Generated tokens (default 0: prefill only; excludes `contextTokens`). */
  newTokens?: number;
  /**
   * Fill a context of this many positions: newTokens = contextTokens − text − images × image
   * tokens (an InputError when the prompt does not fit it or it exceeds the model's positions).
   */
  contextTokens?: number;
  /** Decode with a KV cache (default true) or recompute the context every step. */
  kvCache?: boolean;
  /** Sequences decoded together; every FLOP and byte count is multiplied by it (default 1). */
  batch?: number;
  /** FastV: prune at layer `k` (default 2), dropping the fraction `r` (default 0.5) of image tokens. */
  fastv?: { k?: number; r?: number };
  /** Dynamic-LLaVA's rates (defaults from the config's `sparse_config`). */
  dynamic?: {
    /** Image tokens kept per image (overrides `visionKeepRate`). */
    visionKeep?: number;
    /** Fraction of image tokens kept (default `sparse_config.vision_keep_rate` or 0.2). */
    visionKeepRate?: number;
    /** The layer l where pruning happens (default `sparse_config.sparse_layer` or 2). */
    sparseLayer?: number;
    /**
     * Expected fraction of output tokens admitted to the KV cache (KV mode) or kept in the context
     * (no-cache mode) at layers ≥ l (default `sparse_config.output_text_keep_rate` or 0.5).
     */
    textKeepRate?: number;
  };
  /** Bytes per cached K/V element (default 2: f16; excludes a different `kvDtype`). */
  bytesPerElement?: number;
  /** The K/V element type: "f16" (2 bytes, the default) or "f32" (4). */
  kvDtype?: KvDtype;
  /** How the weights are stored; with it the estimate counts their bytes (`weights`, `totalBytes`). */
  weightType?: StoredWeightType;
}

/** The plan with every default filled in, as {@link estimateCost} used it. */
export interface ResolvedCostPlan {
  /** The policy estimated. */
  policy: "dense" | "fastv" | "dynamic";
  /** Text tokens of the prompt, BOS included. */
  promptTokens: number;
  /** Images in the prompt. */
  images: number;
  /** Tokens per image before pruning. */
  imageTokens: number;
  /** Generated tokens. */
  newTokens: number;
  /** Decode with a KV cache. */
  kvCache: boolean;
  /** Sequences decoded together. */
  batch: number;
  /** First layer that sees the pruned image (FastV's K, Dynamic-LLaVA's l; numLayers for dense). */
  pruneLayer: number;
  /** Image tokens kept per image at layers ≥ pruneLayer. */
  visualKept: number;
  /** Fraction of output tokens kept at layers ≥ pruneLayer (1 unless dynamic). */
  textKeepRate: number;
  /** Bytes per cached K/V element. */
  bytesPerElement: number;
  /** How the weights are stored, or null when not asked. */
  weightType: StoredWeightType | null;
}

/** FLOPs of a phase (prefill, decode or both); every count covers the whole batch. */
export interface PhaseFlops extends PassFlops {
  /** `flopsPaper` / 1e12. */
  tflopsPaper: number;
  /** `flopsExact` / 1e12. */
  tflopsExact: number;
  /** Dynamic-LLaVA predictors (vision + output text), not part of `flopsExact`. */
  predictorFlops: number;
}

/** Result of {@link estimateCost}. Row counts are per sequence; FLOPs and bytes cover the batch. */
export interface CostEstimate {
  /** The plan with its defaults filled in. */
  plan: ResolvedCostPlan;
  /** The prefill pass. */
  prefill: PhaseFlops & {
    /** Rows each decoder layer computes at prefill. */
    rowsPerLayer: number[];
  };
  /** The decode steps after the prefill. */
  decode: PhaseFlops & {
    /** Decode steps: newTokens - 1 (the prefill yields the first token). */
    steps: number;
    /** Query rows each decoder layer computes, summed over the decode steps. */
    rowsPerLayer: number[];
    /** Query rows computed by all decoder layers over all decode steps (× batch). */
    tokensComputed: number;
  };
  /** The KV cache. */
  kv: {
    /** Bytes of one token's K and V in every layer (a dense row; one sequence). */
    bytesPerToken: number;
    /** Rows each layer's KV cache holds at the end (all 0 without a KV cache). */
    rowsPerLayer: number[];
    /** Bytes the KV cache holds at the end. */
    bytes: number;
    /**
     * Most K/V bytes held at once: with a cache, its final size (it only grows); without one,
     * the K/V of the largest recomputation pass, all layers together.
     */
    peakBytes: number;
  };
  /** Prefill and decode together. */
  total: PhaseFlops;
  /** The weights' bytes as `plan.weightType` stores them (shared by the batch), or null. */
  weights: WeightBytes | null;
  /** Weights (0 without `weightType`) + the most K/V bytes held at once, batch included. */
  totalBytes: number;
}

/**
 * The paper's per-layer FLOPs: 32·n·C² + 4·n·m·C for n query rows attending to m key rows each
 * (m defaults to n, giving the paper's 32·N·C² + 4·N²·C).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { paperLayerFlops } from "./cost.ts";
 * const perLayer = paperLayerFlops(576, 4096);
 * assert.equal((32 * perLayer / 1e12).toFixed(1), "10.1"); // LLaVA-1.5-7B prefill, image tokens only
 * ```
 */
export function paperLayerFlops(n: number, hidden: number, options: { contextRows?: number } = {}): number {
  const contextRows = options.contextRows ?? n;
  return 32 * n * hidden * hidden + 4 * n * contextRows * hidden;
}

/**
 * Exact FLOPs of one LLaMA decoder layer computing `newRows` query rows. New row i (0-based)
 * attends causally to the `cachedRows` cached keys plus new rows 0..i.
 *
 * Counted: both RMSNorms; q, k, v, o projections (k and v with numKvHeads × headDim outputs);
 * QKᵀ and attention × V (numHeads × headDim per key); the SwiGLU MLP's gate, up, down.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decoderLayerFlops } from "./cost.ts";
 * import { parseTextConfig } from "./config.ts";
 * const text = parseTextConfig({
 *   hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 1,
 * }, "config.json");
 * const withCache = decoderLayerFlops(text, 1, { cachedRows: 3 });
 * assert.ok(withCache > decoderLayerFlops(text, 1, { cachedRows: 0 })); // attending to 3 more rows costs more
 * ```
 */
export function decoderLayerFlops(
  text: TextConfig,
  newRows: number,
  options: { cachedRows?: number } = {},
): number {
  const cachedRows = options.cachedRows ?? 0;
  const hidden = text.hiddenSize;
  const qWidth = text.numHeads * text.headDim;
  const kvWidth = text.numKvHeads * text.headDim;
  const norms = 2 * RMSNORM_FLOPS_PER_ELEMENT * newRows * hidden;
  const projections = 2 * newRows * hidden * (qWidth + 2 * kvWidth) + 2 * newRows * qWidth * hidden;
  const attendedPairs = newRows * cachedRows + (newRows * (newRows + 1)) / 2;
  const attention = 2 * 2 * qWidth * attendedPairs;
  const mlp = 3 * 2 * newRows * hidden * text.intermediateSize;
  return norms + projections + attention + mlp;
}

/**
 * Exact FLOPs of the final RMSNorm and lm_head for `rows` rows whose logits are computed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { logitsFlops } from "./cost.ts";
 * import { parseTextConfig } from "./config.ts";
 * const text = parseTextConfig({
 *   hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 1, vocab_size: 10,
 * }, "config.json");
 * assert.equal(logitsFlops(text, 1), 4 * 8 + 2 * 8 * 10); // final RMSNorm + lm_head = 192
 * ```
 */
export function logitsFlops(text: TextConfig, rows: number): number {
  return rows * (RMSNORM_FLOPS_PER_ELEMENT * text.hiddenSize + 2 * text.hiddenSize * text.vocabSize);
}

/**
 * FLOPs of one forward pass from the rows each decoder layer handled (`layers[i]` for layer i),
 * plus the final norm and lm_head for `logitRows` rows (default 1: the last position).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { passFlops } from "./cost.ts";
 * import { parseTextConfig } from "./config.ts";
 * const text = parseTextConfig({
 *   hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 2,
 * }, "config.json");
 * const rows = { newRows: 5, cachedRows: 0, paperNewRows: 4, paperCachedRows: 0 };
 * const cost = passFlops(text, [rows, { ...rows, newRows: 3, paperNewRows: 2 }]);
 * assert.equal(cost.flopsPaper, (32 * 4 * 64 + 4 * 16 * 8) + (32 * 2 * 64 + 4 * 4 * 8)); // 12928
 * ```
 */
export function passFlops(
  text: TextConfig,
  layers: readonly LayerRows[],
  options: { logitRows?: number } = {},
): PassFlops {
  if (layers.length !== text.numLayers) {
    throw new InputError(
      `Cannot count FLOPs: got rows for ${layers.length} layers, the model has ${text.numLayers}`,
      "layers",
    );
  }
  let flopsPaper = 0;
  let flopsExact = logitsFlops(text, options.logitRows ?? 1);
  for (const rows of layers) {
    flopsPaper += paperLayerFlops(rows.paperNewRows, text.hiddenSize, {
      contextRows: rows.paperCachedRows + rows.paperNewRows,
    });
    flopsExact += decoderLayerFlops(text, rows.newRows, { cachedRows: rows.cachedRows });
  }
  return { flopsPaper, flopsExact };
}

/**
 * Bytes of a KV cache holding `rowsPerLayer[i]` rows at layer i:
 * Σ rows × 2 (K and V) × numKvHeads × headDim × bytesPerElement (default 2).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kvBytes } from "./cost.ts";
 * import { parseTextConfig } from "./config.ts";
 * const text = parseTextConfig({
 *   hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 2,
 * }, "config.json");
 * assert.equal(kvBytes(text, [10, 4]), 14 * 2 * 2 * 4 * 2); // rows · (K, V) · kv heads · head dim · f16 = 448
 * ```
 */
export function kvBytes(
  text: TextConfig,
  rowsPerLayer: readonly number[],
  options: { bytesPerElement?: number } = {},
): number {
  if (rowsPerLayer.length !== text.numLayers) {
    throw new InputError(
      `Cannot count KV bytes: got rows for ${rowsPerLayer.length} layers, the model has ${text.numLayers}`,
      "rowsPerLayer",
    );
  }
  const rowBytes = rowBytesOf(text, options);
  return rowsPerLayer.reduce((sum, rows) => sum + rows * rowBytes, 0);
}

/** Bytes of one row of one layer's KV cache: 2 (K and V) × numKvHeads × headDim × bytesPerElement (default 2). */
function rowBytesOf(text: TextConfig, options: { bytesPerElement?: number } = {}): number {
  return 2 * text.numKvHeads * text.headDim * (options.bytesPerElement ?? 2);
}

/**
 * The predictors' sizes for a model: its hidden size and `sparse_config` (official defaults
 * d_model 512, dim_feedforward 2048, num_layers 2 when the config has none).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { predictorDims } from "./cost.ts";
 * import { parseModelConfig } from "./config.ts";
 * const config = parseModelConfig({
 *   model_type: "llama", hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 2,
 * }, "config.json");
 * assert.equal(predictorDims(config).dModel, 512); // the default sparse_config
 * ```
 */
export function predictorDims(config: ModelConfig): PredictorDims {
  return {
    hiddenSize: config.text.hiddenSize,
    dModel: config.sparse?.dModel ?? 512,
    dimFeedforward: config.sparse?.dimFeedforward ?? 2048,
    numLayers: config.sparse?.numLayers ?? 2,
  };
}

function outputMlpFlops(dModel: number): number {
  return 2 * (dModel * (dModel / 2) + (dModel / 2) * (dModel / 4) + (dModel / 4) * 2);
}

/**
 * FLOPs of the vision predictor scoring one image's `tokens` image tokens: `down_mlp`
 * (LayerNorm(C), Linear(C,d)), `numLayers` transformer blocks over all tokens (norms, qkv, full
 * attention, proj, fc1, fc2), `output_mlp` (d → d/2 → d/4 → 2).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { visionPredictorFlops } from "./cost.ts";
 * const dims = { hiddenSize: 4096, dModel: 512, dimFeedforward: 2048, numLayers: 2 };
 * assert.equal((visionPredictorFlops(576, dims) / 1e9).toFixed(1), "11.2");
 * ```
 */
export function visionPredictorFlops(tokens: number, dims: PredictorDims): number {
  const { hiddenSize, dModel, dimFeedforward } = dims;
  const down = LAYERNORM_FLOPS_PER_ELEMENT * tokens * hiddenSize + 2 * tokens * hiddenSize * dModel;
  const block = 2 * LAYERNORM_FLOPS_PER_ELEMENT * tokens * dModel +
    2 * tokens * dModel * 3 * dModel + // qkv
    2 * 2 * tokens * tokens * dModel + // scores and weighted sum, every token sees every token
    2 * tokens * dModel * dModel + // proj
    2 * 2 * tokens * dModel * dimFeedforward; // fc1, fc2
  return down + dims.numLayers * block + tokens * outputMlpFlops(dModel);
}

/**
 * FLOPs of the output-text predictor scoring `tokens` tokens: `output_mlp` = LayerNorm(C),
 * Linear(C,d), then d → d/2 → d/4 → 2.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { textPredictorFlops } from "./cost.ts";
 * const dims = { hiddenSize: 4096, dModel: 512, dimFeedforward: 2048, numLayers: 2 };
 * assert.equal(textPredictorFlops(1, dims), 7 * 4096 + 2 * (4096 * 512 + 512 * 256 + 256 * 128 + 128 * 2)); // 4551168
 * ```
 */
export function textPredictorFlops(tokens: number, dims: PredictorDims): number {
  const perToken = LAYERNORM_FLOPS_PER_ELEMENT * dims.hiddenSize + 2 * dims.hiddenSize * dims.dModel +
    outputMlpFlops(dims.dModel);
  return tokens * perToken;
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isModelConfig(value: unknown): value is ModelConfig {
  return isObject(value) && typeof value["layout"] === "string" && isObject(value["text"]) &&
    typeof value["text"]["hiddenSize"] === "number";
}

/** Sizes of the standard ViT widths (ViT-B, ViT-L, ViT-H) that CLIP tower ids name. */
const VIT_SIZES: Record<string, Json> = {
  base: { hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, intermediate_size: 3072 },
  large: { hidden_size: 1024, num_hidden_layers: 24, num_attention_heads: 16, intermediate_size: 4096 },
  huge: { hidden_size: 1280, num_hidden_layers: 32, num_attention_heads: 16, intermediate_size: 5120 },
};

/**
 * A CLIP tower's config read from its id, e.g. "openai/clip-vit-large-patch14-336": image and
 * patch size always; the widths and depth when the id names a standard ViT size (base, large,
 * huge), else only enough for token counts (`sized: false`).
 */
function towerFromId(raw: Json): { tower: Json; sized: boolean } {
  const id = raw["mm_vision_tower"] ?? raw["vision_tower"];
  const name = typeof id === "string" ? id.split("/").filter((part) => part !== "").at(-1) ?? "" : "";
  const match = /patch(\d+)(?:-(\d+))?/.exec(name);
  if (match === null) {
    throw new CheckpointError(
      `Cannot derive the image token count: vision tower ${JSON.stringify(id)} names no patch size; ` +
        "pass a ModelConfig parsed with the tower's config",
      "config.json mm_vision_tower",
    );
  }
  const size = /-(base|large|huge)-/.exec(name)?.[1];
  return {
    tower: {
      patch_size: Number(match[1]),
      image_size: match[2] === undefined ? 224 : Number(match[2]),
      hidden_size: raw["mm_hidden_size"] ?? 1024,
      num_attention_heads: 16,
      ...(size === undefined ? {} : VIT_SIZES[size]),
    },
    sized: size !== undefined,
  };
}

/**
 * The {@link ModelConfig} the cost model reads from `config`: a parsed config as is, or a raw
 * config.json object (a llava_llama config whose tower is a hub id is read without the tower's
 * config, as {@link estimateCost} reads it).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { costConfig } from "./cost.ts";
 * const config = costConfig({
 *   model_type: "llava_llama", hidden_size: 64, intermediate_size: 128, num_attention_heads: 4,
 *   num_hidden_layers: 2, mm_vision_tower: "openai/clip-vit-large-patch14-336", mm_hidden_size: 1024,
 * });
 * assert.equal(config.vision?.tokensPerImage, 576);
 * ```
 */
export function costConfig(config: ModelConfig | unknown): ModelConfig {
  return resolveConfig(config).model;
}

/** The parsed config, and whether its weights can be sized (a tower known only by a bare id cannot). */
function resolveConfig(config: unknown): { model: ModelConfig; sized: boolean } {
  if (isModelConfig(config)) return { model: config, sized: true };
  if (!isObject(config)) {
    throw new CheckpointError("Cannot read config: expected a JSON object", "config.json");
  }
  const type = config["model_type"];
  const needsTower = type === "llava_llama" || (type === "llama" && config["mm_vision_tower"] != null);
  if (!needsTower) return { model: parseModelConfig(config, "config.json"), sized: true };
  const { tower, sized } = towerFromId(config);
  return { model: parseModelConfig(config, "config.json", tower), sized };
}

function count(value: number | undefined, fallback: number, where: string, minimum = 0): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result < minimum) {
    throw new InputError(
      `Cannot estimate cost: ${where} must be a whole number ≥ ${minimum}, got ${result}`,
      where,
    );
  }
  return result;
}

function fraction(value: number | undefined, fallback: number, where: string, maxExclusive = false): number {
  const result = value ?? fallback;
  if (!(result >= 0) || (maxExclusive ? result >= 1 : result > 1)) {
    throw new InputError(
      `Cannot estimate cost: ${where} must be in [0, 1${maxExclusive ? ")" : "]"}, got ${result}`,
      where,
    );
  }
  return result;
}

function layerIndex(value: number, numLayers: number, lowest: number, where: string): number {
  if (!Number.isInteger(value) || value < lowest || value >= numLayers) {
    throw new InputError(
      `Cannot estimate cost: ${where} must be a layer in ${lowest}..${numLayers - 1}, got ${value}`,
      where,
    );
  }
  return value;
}

/**
 * Images and tokens per image. Giving `imageTokens` means the request has images (one by default),
 * even for a config without a vision tower; images without a token count are refused, as is a
 * token count with `images: 0`, so a plan never silently drops its images.
 */
function resolveImages(config: ModelConfig, plan: CostPlan): { images: number; imageTokens: number } {
  const hasImages = config.vision !== null || plan.imageTokens !== undefined;
  const images = count(plan.images, hasImages ? 1 : 0, "plan.images");
  const imageTokens = count(plan.imageTokens, config.vision?.tokensPerImage ?? 0, "plan.imageTokens");
  if (images > 0 && imageTokens === 0) {
    throw new InputError(
      `Cannot estimate cost: plan.images is ${images} but the tokens per image are unknown (the config has no vision tower); give plan.imageTokens`,
      "plan.imageTokens",
    );
  }
  if (images === 0 && plan.imageTokens !== undefined && imageTokens > 0) {
    throw new InputError(
      `Cannot estimate cost: plan.imageTokens is ${imageTokens} but plan.images is 0; give plan.images ≥ 1 or drop plan.imageTokens`,
      "plan.images",
    );
  }
  return { images, imageTokens };
}

/** Generated tokens: `newTokens`, or what fills `contextTokens` after the prompt's rows. */
function resolveNewTokens(config: ModelConfig, plan: CostPlan, promptRows: number): number {
  if (plan.contextTokens === undefined) return count(plan.newTokens, 0, "plan.newTokens");
  if (plan.newTokens !== undefined) {
    throw new InputError(
      "Cannot estimate cost: give plan.newTokens or plan.contextTokens, not both",
      "plan.contextTokens",
    );
  }
  const context = count(plan.contextTokens, 0, "plan.contextTokens", 1);
  const positions = config.text.maxPositions;
  if (context > positions || context < promptRows) {
    throw new InputError(
      `Cannot estimate cost: plan.contextTokens ${context} must hold the prompt's ${promptRows} rows ` +
        `and stay within the model's ${positions} positions`,
      "plan.contextTokens",
    );
  }
  return context - promptRows;
}

/** Bytes per K/V element from `kvDtype` or `bytesPerElement` (which must agree when both are given). */
function resolveBytesPerElement(plan: CostPlan): number {
  if (plan.kvDtype === undefined) return count(plan.bytesPerElement, 2, "plan.bytesPerElement", 1);
  const bytes = Object.hasOwn(KV_DTYPE_BYTES, plan.kvDtype) ? KV_DTYPE_BYTES[plan.kvDtype] : undefined;
  if (bytes === undefined) {
    throw new InputError(
      `Cannot estimate cost: plan.kvDtype ${JSON.stringify(plan.kvDtype)} is not f32 or f16`,
      "plan.kvDtype",
    );
  }
  if (plan.bytesPerElement !== undefined && plan.bytesPerElement !== bytes) {
    throw new InputError(
      `Cannot estimate cost: plan.bytesPerElement ${plan.bytesPerElement} contradicts plan.kvDtype ${plan.kvDtype}`,
      "plan.bytesPerElement",
    );
  }
  return bytes;
}

/** Fills the plan's defaults from the model config and checks every value. */
function resolvePlan(config: ModelConfig, plan: CostPlan): ResolvedCostPlan {
  const numLayers = config.text.numLayers;
  const { images, imageTokens } = resolveImages(config, plan);
  const weightType = plan.weightType === undefined
    ? null
    : parseWeightType(plan.weightType, "plan.weightType");
  const promptTokens = count(plan.promptTokens, DEFAULT_PROMPT_TOKENS, "plan.promptTokens");
  const common = {
    promptTokens,
    images,
    imageTokens,
    newTokens: resolveNewTokens(config, plan, promptTokens + images * imageTokens),
    kvCache: plan.kvCache ?? true,
    batch: count(plan.batch, 1, "plan.batch", 1),
    bytesPerElement: resolveBytesPerElement(plan),
    weightType,
  };
  if (plan.policy === "dense") {
    return { ...common, policy: "dense", pruneLayer: numLayers, visualKept: imageTokens, textKeepRate: 1 };
  }
  if (plan.policy === "fastv") {
    const pruneLayer = layerIndex(plan.fastv?.k ?? 2, numLayers, 1, "plan.fastv.k");
    const dropRate = fraction(plan.fastv?.r, 0.5, "plan.fastv.r", true);
    const visualKept = Math.floor(imageTokens * (1 - dropRate) + EPSILON);
    return { ...common, policy: "fastv", pruneLayer, visualKept, textKeepRate: 1 };
  }
  if (plan.policy === "dynamic") {
    const options = plan.dynamic ?? {};
    const sparse = config.sparse;
    const pruneLayer = layerIndex(
      options.sparseLayer ?? sparse?.sparseLayer ?? 2,
      numLayers,
      0,
      "plan.dynamic.sparseLayer",
    );
    const keepRate = fraction(
      options.visionKeepRate,
      sparse?.visionKeepRate ?? 0.2,
      "plan.dynamic.visionKeepRate",
    );
    const visualKept = count(
      options.visionKeep,
      Math.floor(imageTokens * keepRate + EPSILON),
      "plan.dynamic.visionKeep",
    );
    if (visualKept > imageTokens) {
      throw new InputError(
        `Cannot estimate cost: plan.dynamic.visionKeep ${visualKept} exceeds the ${imageTokens} image tokens`,
        "plan.dynamic.visionKeep",
      );
    }
    const textKeepRate = fraction(
      options.textKeepRate,
      sparse?.outputTextKeepRate ?? 0.5,
      "plan.dynamic.textKeepRate",
    );
    return { ...common, policy: "dynamic", pruneLayer, visualKept, textKeepRate };
  }
  throw new InputError(
    `Cannot estimate cost: policy ${JSON.stringify(plan.policy)} is not dense, fastv or dynamic`,
    "plan.policy",
  );
}

/** Whole output rows kept out of `candidates` at rate `rate`. */
function keptRows(candidates: number, rate: number): number {
  return Math.floor(candidates * rate + EPSILON);
}

/** Per-layer rows of the request as planned. */
interface Layout {
  /** Image rows per layer (all images). */
  imageRows: number[];
  /** Prompt rows per layer: text + image. */
  promptRows: number[];
  /** Whether the layer keeps only `textKeepRate` of the output tokens. */
  textPruned: boolean[];
}

function layout(numLayers: number, plan: ResolvedCostPlan): Layout {
  const layers = Array.from({ length: numLayers }, (_, layer) => layer);
  const imageRows = layers.map((layer) =>
    plan.images * (layer < plan.pruneLayer ? plan.imageTokens : plan.visualKept)
  );
  return {
    imageRows,
    promptRows: imageRows.map((rows) => plan.promptTokens + rows),
    textPruned: layers.map((layer) => plan.policy === "dynamic" && layer >= plan.pruneLayer),
  };
}

/** Rows of a no-cache pass whose context holds `generated` generated tokens (the last one new). */
function recomputeRows(shape: Layout, plan: ResolvedCostPlan, generated: number): LayerRows[] {
  return shape.promptRows.map((promptRows, layer) => {
    const outputRows = shape.textPruned[layer] && generated > 0
      ? keptRows(generated - 1, plan.textKeepRate) + 1
      : generated;
    return {
      newRows: promptRows + outputRows,
      cachedRows: 0,
      paperNewRows: shape.imageRows[layer] + outputRows,
      paperCachedRows: 0,
    };
  });
}

/** Rows of KV-cache decode step `step` (1-based): one token attending to the cache. */
function cachedStepRows(shape: Layout, plan: ResolvedCostPlan, step: number): LayerRows[] {
  return shape.promptRows.map((promptRows, layer) => {
    const outputRows = shape.textPruned[layer] ? keptRows(step - 1, plan.textKeepRate) : step - 1;
    return {
      newRows: 1,
      cachedRows: promptRows + outputRows,
      paperNewRows: 1,
      paperCachedRows: shape.imageRows[layer] + outputRows,
    };
  });
}

function phase(flops: PassFlops, predictorFlops: number, batch: number): PhaseFlops {
  const flopsPaper = flops.flopsPaper * batch;
  const flopsExact = flops.flopsExact * batch;
  return {
    flopsPaper,
    flopsExact,
    tflopsPaper: flopsPaper / 1e12,
    tflopsExact: flopsExact / 1e12,
    predictorFlops: predictorFlops * batch,
  };
}

/**
 * Estimates the FLOPs and KV-cache bytes of one request under a policy. `config` is a parsed
 * {@link ModelConfig} or a raw config.json object (a llava_llama config whose tower is a hub id
 * is read without the tower's config).
 *
 * Prefill: layers below the prune layer see every row; layers at or above it see the kept image
 * rows. Decode with KV cache: each fed token runs through all layers attending to the cache;
 * under `dynamic`, layers ≥ l hold only the admitted output tokens. Decode without KV cache:
 * every step recomputes the context (image pruned as at prefill, `dynamic` also keeping
 * `textKeepRate` of the earlier output tokens at layers ≥ l). With `weightType` it adds the
 * weights' bytes (`weights`, `totalBytes`); `kvDtype` sets the K/V element size.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { estimateCost } from "./cost.ts";
 * const config = {
 *   model_type: "llava_llama", hidden_size: 4096, intermediate_size: 11008, num_attention_heads: 32,
 *   num_hidden_layers: 32, vocab_size: 32000, mm_vision_tower: "openai/clip-vit-large-patch14-336",
 *   mm_hidden_size: 1024, mm_projector_type: "mlp2x_gelu", mm_vision_select_layer: -2,
 * };
 * const dense = estimateCost(config, { policy: "dense" });
 * const dynamic = estimateCost(config, { policy: "dynamic", dynamic: { visionKeep: 115 } });
 * assert.equal(dense.prefill.tflopsPaper.toFixed(1), "10.1"); // the paper's Table 1
 * assert.equal(dynamic.prefill.tflopsPaper.toFixed(1), "2.5");
 * assert.deepEqual(dynamic.prefill.rowsPerLayer.slice(1, 3), [48 + 576, 48 + 115]); // pruned at layer 2
 * // Memory: Q4_K_M weights + an f16 KV cache filling a 4K context, batch 4.
 * const fit = estimateCost(config, { policy: "dynamic", weightType: "q4_k_m", kvDtype: "f16", contextTokens: 4096, batch: 4 });
 * assert.equal(fit.plan.newTokens, 4096 - 48 - 576);
 * assert.ok(fit.totalBytes > 6e9); // does not fit 6 GB
 * ```
 */
export function estimateCost(config: ModelConfig | unknown, plan: CostPlan): CostEstimate {
  const { model, sized } = resolveConfig(config);
  const text = model.text;
  const resolved = resolvePlan(model, plan);
  const shape = layout(text.numLayers, resolved);
  const dims = predictorDims(model);
  const dynamic = resolved.policy === "dynamic";
  const imagePredictor = dynamic && resolved.imageTokens > 0
    ? resolved.images * visionPredictorFlops(resolved.imageTokens, dims)
    : 0;
  const bytesPerElement = resolved.bytesPerElement;

  const prefillRows = recomputeRows(shape, resolved, 0);
  const prefillFlops = passFlops(text, prefillRows);
  let peakBytes = kvBytes(text, shape.promptRows, { bytesPerElement });

  const steps = Math.max(resolved.newTokens - 1, 0);
  const decodeFlops: PassFlops = { flopsPaper: 0, flopsExact: 0 };
  const decodeRows = new Array<number>(text.numLayers).fill(0);
  let decodePredictor = 0;
  for (let step = 1; step <= steps; step++) {
    const rows = resolved.kvCache
      ? cachedStepRows(shape, resolved, step)
      : recomputeRows(shape, resolved, step);
    const flops = passFlops(text, rows);
    decodeFlops.flopsPaper += flops.flopsPaper;
    decodeFlops.flopsExact += flops.flopsExact;
    rows.forEach((layerRows, layer) => decodeRows[layer] += layerRows.newRows);
    if (dynamic && resolved.kvCache) decodePredictor += textPredictorFlops(1, dims);
    if (dynamic && !resolved.kvCache) {
      decodePredictor += imagePredictor + textPredictorFlops(step - 1, dims);
    }
    if (!resolved.kvCache) {
      peakBytes = Math.max(peakBytes, kvBytes(text, rows.map((r) => r.newRows), { bytesPerElement }));
    }
  }

  const cacheRows = resolved.kvCache
    ? shape.promptRows.map((promptRows, layer) =>
      promptRows + (shape.textPruned[layer] ? keptRows(steps, resolved.textKeepRate) : steps)
    )
    : new Array<number>(text.numLayers).fill(0);
  const cacheBytes = kvBytes(text, cacheRows, { bytesPerElement });
  if (resolved.kvCache) peakBytes = cacheBytes;

  const batch = resolved.batch;
  if (resolved.weightType !== null && !sized) {
    throw new CheckpointError(
      "Cannot size the weights: the vision tower's id names no standard ViT size; " +
        "pass a ModelConfig parsed with the tower's config",
      "config.json mm_vision_tower",
    );
  }
  const weights = resolved.weightType === null ? null : weightBytes(model, resolved.weightType);
  const prefill = phase(prefillFlops, imagePredictor, batch);
  const decode = phase(decodeFlops, decodePredictor, batch);
  return {
    plan: resolved,
    prefill: { ...prefill, rowsPerLayer: prefillRows.map((rows) => rows.newRows) },
    decode: {
      ...decode,
      steps,
      rowsPerLayer: decodeRows,
      tokensComputed: decodeRows.reduce((sum, rows) => sum + rows, 0) * batch,
    },
    kv: {
      bytesPerToken: text.numLayers * rowBytesOf(text, { bytesPerElement }),
      rowsPerLayer: cacheRows,
      bytes: cacheBytes * batch,
      peakBytes: peakBytes * batch,
    },
    total: phase(
      {
        flopsPaper: prefillFlops.flopsPaper + decodeFlops.flopsPaper,
        flopsExact: prefillFlops.flopsExact + decodeFlops.flopsExact,
      },
      imagePredictor + decodePredictor,
      batch,
    ),
    weights,
    totalBytes: (weights?.total ?? 0) + peakBytes * batch,
  };
}
