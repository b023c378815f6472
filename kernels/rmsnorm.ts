/**
 * RMSNorm per row: out[M, C] = x / sqrt(mean(x²) + eps) · weight[C]. CPU twin: `rmsNorm` in
 * runtime/core/cpu_ops.ts. One workgroup of 128 threads per row, a tree reduction of the sum of
 * squares in f32. `x` and `out` must be different buffers.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link RmsNormKernel.bind}. */
export interface RmsNormArgs {
  /** f32 [M, C]. */
  x: GPUBuffer;
  /** f32 [C]. */
  weight: GPUBuffer;
  /** f32 [M, C]. */
  out: GPUBuffer;
  rows: number;
  cols: number;
  eps: number;
}

/** Compiled RMSNorm pipeline. */
export interface RmsNormKernel {
  /** The dispatch computing `args`. */
  bind(buffers: BufferSet, args: RmsNormArgs): Dispatch[];
}

const LANES = 128;

const PARAMS = defineUniforms("rmsnorm", { rows: "u32", cols: "u32", eps: "f32" });

const SOURCE = /* wgsl */ `${wgslPrelude({ workgroupSize: LANES, reductions: ["sum"] })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = workgroup_index(wid, nwg);
  if (row >= params.rows) { return; }
  let base = row * params.cols;
  var sum = 0.0;
  for (var c = lid; c < params.cols; c += WORKGROUP_SIZE) {
    let v = x[base + c];
    sum += v * v;
  }
  let scale = 1.0 / sqrt(workgroup_sum(lid, sum) / f32(params.cols) + params.eps);
  for (var c = lid; c < params.cols; c += WORKGROUP_SIZE) {
    out[base + c] = x[base + c] * scale * weight[c];
  }
}
`;

/**
 * Compiles the RMSNorm pipeline.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createRmsNorm } from "./rmsnorm.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const rmsNorm = await createRmsNorm(gpu);
 * const x = buffers.upload(new Float32Array([3, 4]), "x");
 * const weight = buffers.upload(new Float32Array([1, 1]), "norm");
 * const out = buffers.storage(8, "out");
 * gpu.submit(rmsNorm.bind(buffers, { x, weight, out, rows: 1, cols: 2, eps: 0 }));
 * const got = new Float32Array(await gpu.read(out, 0, 8));
 * [0.8485, 1.1314].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-4, `${got}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createRmsNorm(gpu: Gpu): Promise<RmsNormKernel> {
  const pipeline = await gpu.pipeline("rmsnorm", SOURCE);
  return {
    bind(buffers: BufferSet, args: RmsNormArgs): Dispatch[] {
      const { rows, cols, eps } = args;
      const params = buffers.uniform(packUniforms(PARAMS, { rows, cols, eps }), "rmsnorm params");
      return [gpu.dispatch(pipeline, [params, args.x, args.weight, args.out], grid(args.rows))];
    },
  };
}
