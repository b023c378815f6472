/**
 * Converts an opened safetensors checkpoint to GGUF files in llama.cpp's conventions
 * (gguf_llava.ts): the text model in the chosen weight type, the vision tower and projector in an
 * `mmproj` file (matrices F16 when the checkpoint's are F16, else F32 — lossless, where llama.cpp's
 * LLaVA converter rounds every matrix to F16 —, vectors F32), and the Dynamic-LLaVA predictors in
 * their own file in the checkpoint's element type.
 *
 * Files, for `out = DIR/NAME.gguf`: `DIR/NAME.gguf` (text), `DIR/mmproj-NAME.gguf` (when the
 * checkpoint has a vision tower), `DIR/predictors-NAME.gguf` (when it has predictors).
 *
 * Weight types of the text model's matrices: `textMatrixType` (runtime/core/weight_bytes.ts);
 * vectors are always F32.
 * @module
 */
import { basename, dirname, join } from "node:path";
import type { ModelConfig } from "../core/config.ts";
import { CheckpointError } from "../core/errors.ts";
import { type GgmlType, quantize } from "../core/ggml_quants.ts";
import { textMatrixType, type WeightType } from "../core/weight_bytes.ts";
import type { Checkpoint } from "./checkpoint.ts";
import { GGUF_ARCHITECTURES, ggufFileOf, ggufTensorName, permutedHeads, permuteRows } from "./gguf_llava.ts";
import { type GgufKeyValue, type GgufTensorHeader, writeGgufFile } from "./gguf_write.ts";

/** Weight type of a conversion. */
export type GgufConvertType = WeightType;

/** `general.file_type` values (llama.cpp's `llama_ftype`). */
const FILE_TYPES: Record<GgufConvertType, number> = { f16: 1, q4_0: 2, q8_0: 7, q4_k_m: 15 };

/** A vocabulary in GGUF's terms. */
export interface GgufVocab {
  tokens: string[];
  scores: number[];
  types: number[];
  bosId: number;
  eosId: number;
  unkId: number;
}

/**
 * A GGUF vocabulary from a Hugging Face `tokenizer.json` of a LLaMA (SentencePiece-converted BPE)
 * tokenizer: token types from the added tokens (`<unk>` UNKNOWN, other special tokens CONTROL,
 * other added tokens USER_DEFINED) and byte pieces `<0xNN>` (BYTE); scores from the merge ranks
 * (the piece merge r produces scores −r, so SentencePiece-style merging by score equals BPE merging
 * by rank); pieces no merge produces score −1e9.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ggufVocabFromTokenizerJson } from "./gguf_convert.ts";
 * const vocab = ggufVocabFromTokenizerJson(JSON.stringify({
 *   added_tokens: [{ id: 0, content: "<unk>", special: true }, { id: 1, content: "<s>", special: true }],
 *   model: { type: "BPE", vocab: { "<unk>": 0, "<s>": 1, "<0x0A>": 2, a: 3, b: 4, ab: 5 }, merges: ["a b"] },
 * }), "tokenizer.json");
 * assert.deepEqual(vocab.types, [2, 3, 6, 1, 1, 1]);
 * assert.deepEqual(vocab.scores, [0, 0, 0, 0, 0, -0]);
 * ```
 */
export function ggufVocabFromTokenizerJson(text: string, where: string): GgufVocab {
  const json = JSON.parse(text) as {
    added_tokens?: { id: number; content: string; special?: boolean }[];
    model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
  };
  const model = json.model;
  if (model?.type !== "BPE" || typeof model.vocab !== "object" || !Array.isArray(model.merges)) {
    throw new CheckpointError("Cannot convert the tokenizer: tokenizer.json holds no BPE model", where);
  }
  const tokens: string[] = [];
  for (const [piece, id] of Object.entries(model.vocab)) tokens[id] = piece;
  for (const added of json.added_tokens ?? []) tokens[added.id] = added.content;
  const missing = tokens.findIndex((t) => t === undefined);
  if (missing !== -1 || tokens.length === 0) {
    throw new CheckpointError(`Cannot convert the tokenizer: no token has id ${missing}`, where);
  }
  const types: number[] = tokens.map((piece) => (/^<0x[0-9A-F]{2}>$/.test(piece) ? 6 : 1));
  const scores = tokens.map(() => 0);
  for (const added of json.added_tokens ?? []) {
    types[added.id] = added.content === "<unk>" ? 2 : added.special ? 3 : 4;
  }
  const ranked = new Set<number>();
  model.merges.forEach((merge, rank) => {
    const [left, right] = typeof merge === "string" ? merge.split(" ") : merge;
    const id = model.vocab![left + right];
    if (id !== undefined && !ranked.has(id)) {
      ranked.add(id);
      scores[id] = -rank;
    }
  });
  tokens.forEach((piece, id) => {
    if (types[id] === 1 && [...piece].length > 1 && !ranked.has(id)) scores[id] = -1e9;
  });
  const idOf = (piece: string, fallback: number) => model.vocab![piece] ?? fallback;
  return { tokens, scores, types, unkId: idOf("<unk>", 0), bosId: idOf("<s>", 1), eosId: idOf("</s>", 2) };
}

/** Options of {@link convertToGguf}. */
export interface ConvertOptions {
  type: GgufConvertType;
  /** The vocabulary to store in the text model. */
  vocab: GgufVocab;
  /** Called after each tensor is written. */
  onTensor?: (name: string, type: GgmlType) => void;
}

/**
 * Writes `checkpoint` as GGUF files next to `out` (see the module doc) and returns their paths.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openCheckpoint } from "./checkpoint.ts";
 * import { convertToGguf, ggufVocabFromTokenizerJson } from "./gguf_convert.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const text = await Deno.readTextFile("tests/fixtures/out/llama-f32/tokenizer.json");
 * const dir = await Deno.makeTempDir();
 * const files = await convertToGguf(checkpoint, `${dir}/tiny.gguf`, { type: "q8_0", vocab: ggufVocabFromTokenizerJson(text, "tokenizer.json") });
 * assert.deepEqual(files, [`${dir}/tiny.gguf`]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function convertToGguf(
  checkpoint: Checkpoint,
  out: string,
  options: ConvertOptions,
): Promise<string[]> {
  const config = checkpoint.config;
  const groups = { text: [] as string[], mmproj: [] as string[], predictors: [] as string[] };
  for (const name of checkpoint.tensors.keys()) groups[ggufFileOf(name)].push(name);
  const paths: string[] = [];
  const plans: [keyof typeof groups, string, GgufKeyValue[]][] = [
    ["text", out, textMetadata(config, options)],
    ["mmproj", join(dirname(out), `mmproj-${basename(out)}`), mmprojMetadata(config)],
    ["predictors", join(dirname(out), `predictors-${basename(out)}`), predictorMetadata(config)],
  ];
  for (const [group, path, metadata] of plans) {
    if (groups[group].length === 0) continue;
    await writeGroup(checkpoint, groups[group], { path, metadata, group, options });
    paths.push(path);
  }
  return paths;
}

/** Element type of one tensor in its file. */
function tensorType(checkpoint: Checkpoint, name: string, group: string, type: GgufConvertType): GgmlType {
  const t = checkpoint.tensors.get(name)!;
  if (group === "predictors") return t.storedType;
  const isMatrix = t.shape.length >= 2 && name !== "vision.class_embed";
  if (!isMatrix) return "F32";
  if (group === "mmproj") return t.storedType === "F16" ? "F16" : "F32";
  const rowLength = t.shape.slice(1).reduce((a, b) => a * b, 1);
  return textMatrixType(name, { type, rowLength, numLayers: checkpoint.config.text.numLayers });
}

async function writeGroup(
  checkpoint: Checkpoint,
  names: string[],
  plan: { path: string; metadata: GgufKeyValue[]; group: string; options: ConvertOptions },
): Promise<void> {
  const headers: GgufTensorHeader[] = names.map((name) => ({
    name: ggufTensorName(name)!,
    type: tensorType(checkpoint, name, plan.group, plan.options.type),
    dims: checkpoint.tensors.get(name)!.shape.slice().reverse(),
  }));
  await writeGgufFile(plan.path, {
    metadata: plan.metadata,
    tensors: headers,
    data: async (i) => {
      const name = names[i], header = headers[i];
      const values = await checkpoint.tensors.get(name)!.read();
      let bytes = quantize(header.type, values);
      const heads = permutedHeads(name, checkpoint.config);
      if (heads > 0) bytes = permuteRows(bytes, { heads, rowBytes: bytes.length / header.dims[1] });
      plan.options.onTensor?.(header.name, header.type);
      return bytes;
    },
  });
}

const u32 = (key: string, value: number): GgufKeyValue => ({ key, type: "u32", value });
const f32 = (key: string, value: number): GgufKeyValue => ({ key, type: "f32", value });
const str = (key: string, value: string): GgufKeyValue => ({ key, type: "string", value });
const bool = (key: string, value: boolean): GgufKeyValue => ({ key, type: "bool", value });

function textMetadata(config: ModelConfig, options: ConvertOptions): GgufKeyValue[] {
  const t = config.text, v = options.vocab, arch = GGUF_ARCHITECTURES.text;
  return [
    str("general.architecture", arch),
    str("general.name", "dynllava conversion"),
    u32("general.file_type", FILE_TYPES[options.type]),
    u32("general.quantization_version", 2),
    u32(`${arch}.vocab_size`, t.vocabSize),
    u32(`${arch}.context_length`, t.maxPositions),
    u32(`${arch}.embedding_length`, t.hiddenSize),
    u32(`${arch}.block_count`, t.numLayers),
    u32(`${arch}.feed_forward_length`, t.intermediateSize),
    u32(`${arch}.rope.dimension_count`, t.headDim),
    u32(`${arch}.attention.head_count`, t.numHeads),
    u32(`${arch}.attention.head_count_kv`, t.numKvHeads),
    f32(`${arch}.attention.layer_norm_rms_epsilon`, t.rmsNormEps),
    f32(`${arch}.rope.freq_base`, t.ropeTheta),
    str("tokenizer.ggml.model", "llama"),
    { key: "tokenizer.ggml.tokens", type: "array", itemType: "string", value: v.tokens },
    { key: "tokenizer.ggml.scores", type: "array", itemType: "f32", value: v.scores },
    { key: "tokenizer.ggml.token_type", type: "array", itemType: "i32", value: v.types },
    u32("tokenizer.ggml.bos_token_id", v.bosId),
    u32("tokenizer.ggml.eos_token_id", v.eosId),
    u32("tokenizer.ggml.unknown_token_id", v.unkId),
    bool("tokenizer.ggml.add_bos_token", true),
    bool("tokenizer.ggml.add_eos_token", false),
  ];
}

function mmprojMetadata(config: ModelConfig): GgufKeyValue[] {
  const v = config.vision, p = config.projector;
  if (!v || !p) return [];
  return [
    str("general.architecture", GGUF_ARCHITECTURES.mmproj),
    str("general.name", "dynllava conversion"),
    str("general.description", "image encoder for LLaVA"),
    u32("general.file_type", 1),
    bool("clip.has_text_encoder", false),
    bool("clip.has_vision_encoder", true),
    bool("clip.has_llava_projector", true),
    str("clip.projector_type", p.type === "mlp2x_gelu" ? "mlp" : "linear"),
    u32("clip.vision.image_size", v.imageSize),
    u32("clip.vision.patch_size", v.patchSize),
    u32("clip.vision.embedding_length", v.hiddenSize),
    u32("clip.vision.feed_forward_length", v.intermediateSize),
    u32("clip.vision.projection_dim", p.outSize),
    u32("clip.vision.attention.head_count", v.numHeads),
    f32("clip.vision.attention.layer_norm_epsilon", v.layerNormEps),
    u32("clip.vision.block_count", v.layersToRun),
    { key: "clip.vision.feature_layer", type: "array", itemType: "i32", value: [v.layersToRun] },
    { key: "clip.vision.image_mean", type: "array", itemType: "f32", value: [...v.imageMean] },
    { key: "clip.vision.image_std", type: "array", itemType: "f32", value: [...v.imageStd] },
    bool("clip.use_gelu", v.hiddenAct === "gelu"),
  ];
}

function predictorMetadata(config: ModelConfig): GgufKeyValue[] {
  const s = config.sparse;
  if (!s) return [];
  const arch = GGUF_ARCHITECTURES.predictors;
  return [
    str("general.architecture", arch),
    u32(`${arch}.sparse_layer`, s.sparseLayer),
    { key: `${arch}.vision_keep_rate`, type: "f64", value: s.visionKeepRate },
    { key: `${arch}.output_text_keep_rate`, type: "f64", value: s.outputTextKeepRate },
    bool(`${arch}.use_vision_predictor`, s.useVisionPredictor),
    bool(`${arch}.use_output_text_predictor`, s.useOutputTextPredictor),
    u32(`${arch}.d_model`, s.dModel),
    u32(`${arch}.nhead`, s.nhead),
    u32(`${arch}.dim_feedforward`, s.dimFeedforward),
    u32(`${arch}.num_layers`, s.numLayers),
  ];
}
