/**
 * The kernel registry: every kernel the GPU backend runs, by name, in one list. The backend, the
 * GPU predictors and the kernel tests all compile their kernels through {@link createKernels}
 * (pipelines are cached per device and source, so compiling a kernel twice costs nothing).
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
import { createLinear, createQuantMatmul } from "../../kernels/matmul_quant.ts";
import { createMatvecTexture } from "../../kernels/matvec_texture.ts";
import { createMatvecTextureMulti, createSwigluTexture } from "../../kernels/matvec_texture_fused.ts";
import { createQuantTextureMatvec } from "../../kernels/matvec_quant_texture.ts";
import { createIm2col } from "../../kernels/patches.ts";
import {
  createAdmitFlag,
  createHalfGlobalConcat,
  createLogSoftmax2Col0,
} from "../../kernels/predictor_ops.ts";
import { createRmsNorm } from "../../kernels/rmsnorm.ts";
import { createRope } from "../../kernels/rope.ts";
import { createGatherRows } from "../../kernels/rows.ts";
import { createSampler } from "../../kernels/sample.ts";
import type { Gpu } from "../device/gpu.ts";

/** Every kernel, by the name the runtime calls it: its compile function. */
export const KERNELS = {
  // decoder
  embedding: createEmbedding,
  rmsNorm: createRmsNorm,
  matmul: createLinear, // by the weight's kind: floatMatmul (texture weights: matvecTexture) or quantMatmul (texture weights: quantMatvecTexture)
  floatMatmul: createMatmul,
  quantMatmul: createQuantMatmul,
  matvecTexture: createMatvecTexture,
  matvecTextureMulti: createMatvecTextureMulti, // decode: q, k and v in one dispatch
  swigluTexture: createSwigluTexture, // decode: gate/up and SwiGLU in one
  quantMatvecTexture: createQuantTextureMatvec,
  rope: createRope,
  kvAppend: createKvAppend,
  attention: createAttention,
  swiglu: createSwiglu,
  add: createAdd,
  gatherRows: createGatherRows,
  sampler: createSampler,
  advance: createAdvance,
  // vision tower and projector
  im2col: createIm2col,
  layerNorm: createLayerNorm,
  addBias: createAddBias,
  gelu: createGelu,
  quickGelu: createQuickGelu,
  // predictors
  halfGlobalConcat: createHalfGlobalConcat,
  logSoftmax2Col0: createLogSoftmax2Col0,
  admitFlag: createAdmitFlag,
} as const;

/** The name of a registered kernel. */
export type KernelName = keyof typeof KERNELS;

/** All compiled kernels, by name. */
export type Kernels = { [K in KernelName]: Awaited<ReturnType<(typeof KERNELS)[K]>> };

/** Options of {@link createKernels}. */
export interface CreateKernelsOptions<K extends KernelName> {
  /** Compile only these kernels (default: all). */
  only?: readonly K[];
}

/**
 * Compiles registered kernels for `gpu` (compiles are queued one at a time by the Gpu).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu } from "../device/gpu.ts";
 * import { createKernels, KERNELS } from "./gpu_kernels.ts";
 * const gpu = await createGpu();
 * const all = await createKernels(gpu);
 * assert.deepEqual(Object.keys(all).sort(), Object.keys(KERNELS).sort());
 * const some = await createKernels(gpu, { only: ["matmul", "layerNorm"] });
 * assert.deepEqual(Object.keys(some), ["matmul", "layerNorm"]);
 * gpu.destroy();
 * ```
 */
export async function createKernels<K extends KernelName = KernelName>(
  gpu: Gpu,
  options: CreateKernelsOptions<K> = {},
): Promise<Pick<Kernels, K>> {
  const names = (options.only ?? Object.keys(KERNELS)) as K[];
  const compiled = await Promise.all(names.map((name) => KERNELS[name](gpu)));
  return Object.fromEntries(names.map((name, i) => [name, compiled[i]])) as Pick<Kernels, K>;
}
