/**
 * dynllava's GPU-free core: Dynamic-LLaVA's predictors, the sparsification policies, sparse KV
 * bookkeeping, the cost model (FLOPs, weight and K/V bytes), the memory planner, sampling and
 * config parsing, in pure TypeScript. Nothing here
 * touches `navigator.gpu`, the file system or ffmpeg, so it runs on edge runtimes (Deno Deploy).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { estimateCost, parseModelConfig } from "./core.ts";
 * const config = parseModelConfig({
 *   model_type: "llama", hidden_size: 4096, intermediate_size: 11008, num_attention_heads: 32,
 *   num_hidden_layers: 32, vocab_size: 32000,
 * }, "config.json");
 * // A plain LLaMA config has no vision tower: imageTokens says one image of 576 tokens (CLIP-L/336).
 * const cost = estimateCost(config, { policy: "dense", imageTokens: 576 });
 * assert.equal(cost.plan.images, 1);
 * assert.equal(cost.prefill.tflopsPaper.toFixed(1), "10.1"); // LLaVA-1.5-7B, the paper's Table 1
 * ```
 * @module
 */
export * from "./runtime/core/errors.ts";
export * from "./runtime/core/config.ts";
export * from "./runtime/core/policy.ts";
export * from "./runtime/core/policies.ts";
export * from "./runtime/core/predictors.ts";
export {
  advanceState,
  KV_DTYPES,
  type KvDtype,
  kvElementBytes,
  KvLedger,
  kvRowBytes,
} from "./runtime/core/sparse_kv.ts";
export * from "./runtime/core/cost.ts";
export * from "./runtime/core/weight_bytes.ts";
export * from "./runtime/core/planner.ts";
export { type SampleOptions, sampleToken, uniformRandom } from "./runtime/core/sampling.ts";
export { buildPromptRows, type PromptRows } from "./runtime/core/sequence.ts";
export * from "./runtime/core/files.ts";
