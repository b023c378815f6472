/**
 * dynllava: LLaVA-1.5-class multimodal models on native WebGPU (or the CPU) with Dynamic-LLaVA
 * context sparsification — visual tokens pruned at prefill, output tokens dropped from the context
 * (no KV cache) or refused entry to the KV cache (with KV cache) while decoding.
 *
 * @example
 * ```ts
 * import { loadModel } from "./mod.ts";
 * const model = await loadModel(new URL("./assets/demo/", import.meta.url), { backend: "cpu" });
 * const result = await model.generate({ prompt: "Describe the image.", maxNewTokens: 8, policy: "dynamic",
 *   image: { width: 2, height: 2, data: new Uint8Array(12).fill(200) } });
 * console.log(result.visualKept, result.stats.kvCache.rowsPerLayer);
 * model.dispose();
 * ```
 * @module
 */
export * from "./core.ts";
export {
  type BatchOptions,
  type GenerateRequest,
  GenerateRun,
  type ImageInput,
  loadModel,
  type LoadOptions,
  type LoadProgress,
  Model,
} from "./runtime/api/model.ts";
export type { GenerateEvent, GenerateResult, GenerateStats } from "./runtime/engine/generate.ts";
export {
  loadTokenizer,
  type Tokenizer,
  tokenizerFromJson,
  tokenizerFromSentencePiece,
} from "./runtime/text/tokenizer.ts";
export { decodeImage, decodeVideoFrames, type RgbImage } from "./runtime/image/image_decode.ts";
export { preprocessImage } from "./runtime/image/preprocess.ts";
export { meteorScore, meteorScoreSync } from "./runtime/eval/meteor.ts";
export { loadWordNet } from "./runtime/eval/wordnet.ts";
export { encodeWithImages, formatLlavaV1 } from "./runtime/text/template.ts";
export { openCheckpoint } from "./runtime/io/checkpoint.ts";
export { type RequestLimits, type ValidateOptions, validateRequest } from "./runtime/engine/request.ts";
