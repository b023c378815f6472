/**
 * Compiles every kernel the GPU backend uses, once per device, into one {@link Kernels} record.
 * @module
 */
import { createAdvance } from "../../kernels/decode_state.ts";
import { createAttention } from "../../kernels/attention.ts";
import {
  createAdd,
  createAddBias,
  createGelu,
  createQuickGelu,
  createSwiglu,
} from "../../kernels/elementwise.ts";
import { createEmbedding } from "../../kernels/embedding.ts";
import { createKvAppend } from "../../kernels/kv_append.ts";
import { createLayerNorm } from "../../kernels/layernorm.ts";
import { createMatmul } from "../../kernels/matmul.ts";
import { createIm2col } from "../../kernels/patches.ts";
import { createRmsNorm } from "../../kernels/rmsnorm.ts";
import { createRope } from "../../kernels/rope.ts";
import { createGatherRows } from "../../kernels/rows.ts";
import { createSampler } from "../../kernels/sample.ts";
import type { Gpu } from "../device/gpu.ts";

/**
 * Compiles all kernels (compiles are queued one at a time by the Gpu).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu } from "../device/gpu.ts";
 * import { createKernels } from "./gpu_kernels.ts";
 * const gpu = await createGpu();
 * const kernels = await createKernels(gpu);
 * assert.equal(typeof kernels.matmul.bind, "function");
 * gpu.destroy();
 * ```
 */
export function createKernels(gpu: Gpu) {
  return awaitAll({
    matmul: createMatmul(gpu),
    embedding: createEmbedding(gpu),
    rmsNorm: createRmsNorm(gpu),
    layerNorm: createLayerNorm(gpu),
    rope: createRope(gpu),
    attention: createAttention(gpu),
    kvAppend: createKvAppend(gpu),
    add: createAdd(gpu),
    addBias: createAddBias(gpu),
    swiglu: createSwiglu(gpu),
    gelu: createGelu(gpu),
    quickGelu: createQuickGelu(gpu),
    gatherRows: createGatherRows(gpu),
    im2col: createIm2col(gpu),
    sampler: createSampler(gpu),
    advance: createAdvance(gpu),
  });
}

/** Awaits every promise of a record, keeping the keys. */
async function awaitAll<T extends Record<string, Promise<unknown>>>(
  promises: T,
): Promise<{ [K in keyof T]: Awaited<T[K]> }> {
  const keys = Object.keys(promises);
  const values = await Promise.all(Object.values(promises));
  return Object.fromEntries(keys.map((key, i) => [key, values[i]])) as { [K in keyof T]: Awaited<T[K]> };
}

/** All compiled kernels. */
export type Kernels = Awaited<ReturnType<typeof createKernels>>;
