/**
 * dynllava: LLaVA-1.5-class multimodal models on native WebGPU (or the CPU) with Dynamic-LLaVA
 * context sparsification — visual tokens pruned at prefill, output tokens dropped from the context
 * (no KV cache) or refused entry to the KV cache (with KV cache) while decoding.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModel } from "./mod.ts";
 * const model = await loadModel(new URL("./assets/demo/", import.meta.url), { backend: "cpu" });
 * const result = await model.generate({ prompt: "Describe the image.", maxNewTokens: 8, policy: "dynamic",
 *   image: { width: 2, height: 2, data: new Uint8Array(12).fill(200) } });
 * // Dynamic-LLaVA keeps 20% of the image's tokens (sparse_config.vision_keep_rate) from the sparse
 * // layer on (layer 1 in the demo model), so those layers hold fewer KV rows than layer 0:
 * const { visualTokens, kvCache } = result.stats;
 * assert.equal(result.visualKept?.length, Math.floor(visualTokens * 0.2));
 * assert.ok(kvCache.rowsPerLayer[1] < kvCache.rowsPerLayer[0]);
 * model.dispose();
 * ```
 * @module
 */
export * from "./core.ts";
export {
  type BatchOptions,
  type ChatContentPart,
  type ChatMessage,
  type ChatRequest,
  type GenerateRequest,
  GenerateRun,
  type ImageInput,
  loadModel,
  type LoadOptions,
  type LoadProgress,
  Model,
} from "./runtime/api/model.ts";
export type {
  FinishReason,
  GenerateEvent,
  GenerateResult,
  GenerateStats,
  Usage,
} from "./runtime/engine/generate.ts";
export {
  loadTokenizer,
  type Tokenizer,
  tokenizerFromJson,
  tokenizerFromSentencePiece,
} from "./runtime/text/tokenizer.ts";
export {
  decodeImage,
  type DecodeImageOptions,
  decodeVideoFrames,
  type DecodeVideoOptions,
  type RgbImage,
} from "./runtime/image/image_decode.ts";
export { preprocessImage, type PreprocessOptions } from "./runtime/image/preprocess.ts";
export {
  type MeteorOptions,
  meteorScore,
  meteorScoreSync,
  type MeteorSyncOptions,
  type MeteorWeights,
} from "./runtime/eval/meteor.ts";
export { loadWordNet, type Synset, type WordNet, type WordNetPos } from "./runtime/eval/wordnet.ts";
export {
  type ChatTurn,
  encodeWithImages,
  formatLlavaV1,
  formatLlavaV1Chat,
} from "./runtime/text/template.ts";
export {
  type Checkpoint,
  type CheckpointTensor,
  type CheckpointVocab,
  openCheckpoint,
} from "./runtime/io/checkpoint.ts";
export type { GgmlType } from "./runtime/core/ggml_quants.ts";
export type { TensorLocation } from "./runtime/io/shards.ts";
export type { SafetensorsFile, TensorEntry } from "./runtime/io/safetensors.ts";
export type { DType } from "./runtime/core/dtype.ts";
export { type RequestLimits, type ValidateOptions, validateRequest } from "./runtime/engine/request.ts";
