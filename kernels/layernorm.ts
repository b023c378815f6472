/**
 * LayerNorm over rows: out[M, C] = (x - mean) / sqrt(var + eps) · weight[C] + bias[C], with x [M, C]
 * f32 and f32 weight and bias (CLIP's pre/post norms, the predictors' norms). CPU twin:
 * `layerNorm` in runtime/cpu_ops.ts.
 *
 * One workgroup of 64 lanes per row (rows beyond 65535 go through `grid()`); two passes over the
 * row (mean, then the centred variance) for accuracy, a third writes the output.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";

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

const LAYERNORM_WGSL = /* wgsl */ `
struct Params { rows: u32, cols: u32, eps: f32, _pad: u32 }
const LANES = ${LANES}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;
var<workgroup> partial: array<f32, LANES>;

fn rowSum(lane: u32, v: f32) -> f32 {
  partial[lane] = v;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { partial[lane] += partial[lane + s]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier();
  return total;
}

@compute @workgroup_size(${LANES})
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= params.rows) { return; }
  let cols = params.cols;
  let base = row * cols;
  var sum = 0.0;
  for (var c = lane; c < cols; c += LANES) { sum += x[base + c]; }
  let mean = rowSum(lane, sum) / f32(cols);
  var squares = 0.0;
  for (var c = lane; c < cols; c += LANES) {
    let d = x[base + c] - mean;
    squares += d * d;
  }
  let scale = inverseSqrt(rowSum(lane, squares) / f32(cols) + params.eps);
  for (var c = lane; c < cols; c += LANES) {
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
      const params = new ArrayBuffer(16);
      new Uint32Array(params, 0, 2).set([rows, cols]);
      new Float32Array(params, 8, 1)[0] = eps;
      const uniform = buffers.uniform(new Uint8Array(params), "layernorm.params");
      return [gpu.dispatch(pipeline, [x, weight, bias, out, uniform], grid(rows))];
    },
  };
}
