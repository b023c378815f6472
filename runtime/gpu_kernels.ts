/**
 * Compiles every kernel the GPU backend uses, once per device, into one {@link Kernels} record.
 * @module
 */
import { createAdvance } from "../kernels/decode_state.ts";
import { createAttention } from "../kernels/attention.ts";
import {
  createAdd,
  createAddBias,
  createGelu,
  createQuickGelu,
  createSwiglu,
} from "../kernels/elementwise.ts";
import { createEmbedding } from "../kernels/embedding.ts";
import { createKvAppend } from "../kernels/kv_append.ts";
import { createLayerNorm } from "../kernels/layernorm.ts";
import { createMatmul } from "../kernels/matmul.ts";
import { createIm2col } from "../kernels/patches.ts";
import { createRmsNorm } from "../kernels/rmsnorm.ts";
import { createRope } from "../kernels/rope.ts";
import { createGatherRows } from "../kernels/rows.ts";
import { createSampler } from "../kernels/sample.ts";
import type { Gpu } from "./gpu.ts";

/**
 * Compiles all kernels in parallel.
 * @example
 * ```ts
 * import { createGpu } from "./gpu.ts";
 * import { createKernels } from "./gpu_kernels.ts";
 * const gpu = await createGpu();
 * const kernels = await createKernels(gpu);
 * console.log(typeof kernels.matmul.bind); // "function"
 * gpu.destroy();
 * ```
 */
export async function createKernels(gpu: Gpu) {
  const [
    matmul,
    embedding,
    rmsNorm,
    layerNorm,
    rope,
    attention,
    kvAppend,
    add,
    addBias,
    swiglu,
    gelu,
    quickGelu,
    gatherRows,
    im2col,
    sampler,
    advance,
  ] = await Promise.all([
    createMatmul(gpu),
    createEmbedding(gpu),
    createRmsNorm(gpu),
    createLayerNorm(gpu),
    createRope(gpu),
    createAttention(gpu),
    createKvAppend(gpu),
    createAdd(gpu),
    createAddBias(gpu),
    createSwiglu(gpu),
    createGelu(gpu),
    createQuickGelu(gpu),
    createGatherRows(gpu),
    createIm2col(gpu),
    createSampler(gpu),
    createAdvance(gpu),
  ]);
  return {
    matmul,
    embedding,
    rmsNorm,
    layerNorm,
    rope,
    attention,
    kvAppend,
    add,
    addBias,
    swiglu,
    gelu,
    quickGelu,
    gatherRows,
    im2col,
    sampler,
    advance,
  };
}

/** All compiled kernels. */
export type Kernels = Awaited<ReturnType<typeof createKernels>>;
