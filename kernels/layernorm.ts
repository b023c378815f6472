/**
 * LayerNorm over rows: out[M, C] = (x - mean) / sqrt(var + eps) · weight[C] + bias[C], with x [M, C]
 * f32 and f32 weight and bias (CLIP's pre/post norms, the predictors' norms). CPU twin:
 * `layerNorm` in runtime/core/cpu_ops.ts.
 *
 * One workgroup of 64 lanes per row (rows beyond 65535 go through `grid()`); two passes over the
 * row (mean, then the centred variance) for accuracy, a third writes the output.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link LayerNormKernel.bind}. */
export interface LayerNormArgs {
  /** Input [rows, cols] f32. */
  x: GPUBuffer;
  /** Scale [cols] f32. */
  weight: GPUBuffer;
  /** Shift [cols] f32. */
  bias: GPUBuffer;
  /** Output [rows, cols] f32 (a buffer other than x). */
  out: GPUBuffer;
  rows: number;
  cols: number;
  /** Variance epsilon (default 1e-5, as CLIP and the predictors use). */
  eps?: number;
}

/** The compiled LayerNorm pipeline. */
export interface LayerNormKernel {
  bind(buffers: BufferSet, args: LayerNormArgs): Dispatch[];
}

const LANES = 64;

const PARAMS = defineUniforms("layernorm", { rows: "u32", cols: "u32", eps: "f32" });

const LAYERNORM_WGSL = /* wgsl */ `${wgslPrelude({ workgroupSize: LANES, reductions: ["sum"] })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = workgroup_index(wid, nwg);
  if (row >= params.rows) { return; }
  let cols = params.cols;
  let base = row * cols;
  var sum = 0.0;
  for (var c = lid; c < cols; c += WORKGROUP_SIZE) { sum += x[base + c]; }
  let mean = workgroup_sum(lid, sum) / f32(cols);
  var squares = 0.0;
  for (var c = lid; c < cols; c += WORKGROUP_SIZE) {
    let d = x[base + c] - mean;
    squares += d * d;
  }
  let scale = inverseSqrt(workgroup_sum(lid, squares) / f32(cols) + params.eps);
  for (var c = lid; c < cols; c += WORKGROUP_SIZE) {
    out[base + c] = (x[base + c] - mean) * scale * weight[c] + bias[c];
  }
}
`;

/**
 * Compiles the LayerNorm pipeline.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createLayerNorm } from "./layernorm.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const x = buffers.upload(new Float32Array([1, 3]), "x");
 * const weight = buffers.upload(new Float32Array([1, 1]), "w");
 * const bias = buffers.upload(new Float32Array([0, 0]), "b");
 * const out = buffers.storage(8, "out");
 * const layerNorm = await createLayerNorm(gpu);
 * gpu.submit(layerNorm.bind(buffers, { x, weight, bias, out, rows: 1, cols: 2, eps: 0 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 8)), new Float32Array([-1, 1]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createLayerNorm(gpu: Gpu): Promise<LayerNormKernel> {
  const pipeline = await gpu.pipeline("layernorm", LAYERNORM_WGSL);
  return {
    bind(buffers, args) {
      const { x, weight, bias, out, rows, cols, eps = 1e-5 } = args;
      if (!(Number.isInteger(rows) && rows >= 0 && Number.isInteger(cols) && cols > 0)) {
        throw new InputError(`Cannot bind layernorm: bad shape [${rows}, ${cols}]`, "layernorm");
      }
      const params = buffers.uniform(packUniforms(PARAMS, { rows, cols, eps }), "layernorm params");
      return [gpu.dispatch(pipeline, [params, x, weight, bias, out], grid(rows))];
    },
  };
}
