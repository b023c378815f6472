/**
 * The Dynamic-LLaVA predictor pieces that are neither LayerNorm, Linear nor GELU, all
 * f32; CPU twins in runtime/core/predictor_cpu_ops.ts.
 *
 * - {@link createHalfGlobalConcat}: VisionPredictor channel split, x [N, d] → y [N, d] with
 *   y[:, :d/2] = x[:, :d/2] and y[:, d/2:] = mean over the N rows of x[:, d/2:] on every row. One
 *   workgroup of 64 lanes per column.
 * - {@link createLogSoftmax2Col0}: keep scores, logits [N, 2] → score [N] = log_softmax(row)[0]
 *   = -softplus(l1 - l0), with log1p from its atanh series so small scores keep their precision.
 * - {@link createAdmitFlag}: KV admission on the GPU, text-predictor logits [2] → flags[state[0]]
 *   = (logit0 > logit1 ? 1 : 0) as u32, where state[0] is the decode step; no readback needed.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link HalfGlobalConcatKernel.bind}. */
export interface HalfGlobalConcatArgs {
  /** Input [rows, cols] f32. */
  x: GPUBuffer;
  /** Output [rows, cols] f32 (a buffer other than x). */
  out: GPUBuffer;
  /** N: tokens. */
  rows: number;
  /** d: channels, even. */
  cols: number;
}

/** The compiled local/global split pipeline. */
export interface HalfGlobalConcatKernel {
  bind(buffers: BufferSet, args: HalfGlobalConcatArgs): Dispatch[];
}

/** Arguments of {@link LogSoftmax2Col0Kernel.bind}. */
export interface LogSoftmax2Col0Args {
  /** Two-way logits [rows, 2] f32. */
  logits: GPUBuffer;
  /** Scores [rows] f32. */
  out: GPUBuffer;
  rows: number;
}

/** The compiled keep-score pipeline. */
export interface LogSoftmax2Col0Kernel {
  bind(buffers: BufferSet, args: LogSoftmax2Col0Args): Dispatch[];
}

/** Arguments of {@link AdmitFlagKernel.bind}. */
export interface AdmitFlagArgs {
  /** Text-predictor logits [2] f32. */
  logits: GPUBuffer;
  /** Decode state u32; state[0] is the step, the flag's index. */
  state: GPUBuffer;
  /** Admission flags u32 [capacity]; entry state[0] is written when it is below the capacity. */
  flags: GPUBuffer;
}

/** The compiled admission pipeline. */
export interface AdmitFlagKernel {
  bind(buffers: BufferSet, args: AdmitFlagArgs): Dispatch[];
}

const COLUMN_LANES = 64;
const ROW_LANES = 256;

const HALF_GLOBAL_PARAMS = defineUniforms("half_global_concat", { rows: "u32", cols: "u32" });

const HALF_GLOBAL_WGSL = /* wgsl */ `${wgslPrelude({ workgroupSize: COLUMN_LANES, reductions: ["sum"] })}
${HALF_GLOBAL_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let col = workgroup_index(wid, nwg);
  let rows = params.rows;
  let cols = params.cols;
  if (col >= cols) { return; }
  if (col < cols / 2u) {
    for (var r = lid; r < rows; r += WORKGROUP_SIZE) { out[r * cols + col] = x[r * cols + col]; }
    return;
  }
  var sum = 0.0;
  for (var r = lid; r < rows; r += WORKGROUP_SIZE) { sum += x[r * cols + col]; }
  let mean = workgroup_sum(lid, sum) / f32(rows);
  for (var r = lid; r < rows; r += WORKGROUP_SIZE) { out[r * cols + col] = mean; }
}
`;

const LOG_SOFTMAX_PARAMS = defineUniforms("log_softmax2_col0", { rows: "u32" });

const LOG_SOFTMAX_WGSL = /* wgsl */ `${wgslPrelude({ workgroupSize: ROW_LANES })}
${LOG_SOFTMAX_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// log(1 + z) for z in [0, 1]: 2·atanh(s) with s = z / (2 + z) ≤ 1/3, series to s¹⁵.
fn log1p_unit(z: f32) -> f32 {
  let s = z / (2.0 + z);
  let s2 = s * s;
  var series = 1.0 / 15.0;
  series = 1.0 / 13.0 + s2 * series;
  series = 1.0 / 11.0 + s2 * series;
  series = 1.0 / 9.0 + s2 * series;
  series = 1.0 / 7.0 + s2 * series;
  series = 1.0 / 5.0 + s2 * series;
  series = 1.0 / 3.0 + s2 * series;
  series = 1.0 + s2 * series;
  return 2.0 * s * series;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = thread_index(wid, nwg, lid);
  if (row >= params.rows) { return; }
  let d = logits[2u * row + 1u] - logits[2u * row];
  out[row] = -(max(d, 0.0) + log1p_unit(exp(-abs(d))));
}
`;

/** No parameters: bindings start at 0 with the inputs. */
const ADMIT_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> state: array<u32>;
@group(0) @binding(2) var<storage, read_write> flags: array<u32>;

@compute @workgroup_size(1)
fn main() {
  let step = state[0];
  if (step < arrayLength(&flags)) { flags[step] = select(0u, 1u, logits[0] > logits[1]); }
}
`;

/** Throws InputError unless `value` is a non-negative integer (positive when `positive`). */
function checkCount(value: number, what: string, positive = false): void {
  if (!(Number.isInteger(value) && value >= (positive ? 1 : 0))) {
    throw new InputError(`Cannot bind ${what}: bad size ${value}`, what);
  }
}

/**
 * Compiles the VisionPredictor's local/global channel split.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createHalfGlobalConcat } from "./predictor_ops.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const x = buffers.upload(new Float32Array([1, 2, 3, 6]), "x"); // [2, 2]
 * const out = buffers.storage(16, "out");
 * const split = await createHalfGlobalConcat(gpu);
 * gpu.submit(split.bind(buffers, { x, out, rows: 2, cols: 2 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 16)), new Float32Array([1, 4, 3, 4]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createHalfGlobalConcat(gpu: Gpu): Promise<HalfGlobalConcatKernel> {
  const pipeline = await gpu.pipeline("half_global_concat", HALF_GLOBAL_WGSL);
  return {
    bind(buffers, args) {
      const { x, out, rows, cols } = args;
      checkCount(rows, "half_global_concat", true);
      if (!(Number.isInteger(cols) && cols > 0 && cols % 2 === 0)) {
        throw new InputError(`Cannot bind half_global_concat: width ${cols} is not even`, "cols");
      }
      const params = packUniforms(HALF_GLOBAL_PARAMS, { rows, cols });
      return [
        gpu.dispatch(pipeline, [buffers.uniform(params, "half_global_concat params"), x, out], grid(cols)),
      ];
    },
  };
}

/**
 * Compiles the keep-score kernel score[r] = log_softmax(logits[r, :])[0].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createLogSoftmax2Col0 } from "./predictor_ops.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const logits = buffers.upload(new Float32Array([0, 0, 5, -5]), "logits"); // [2, 2]
 * const out = buffers.storage(8, "scores");
 * const score = await createLogSoftmax2Col0(gpu);
 * gpu.submit(score.bind(buffers, { logits, out, rows: 2 }));
 * const got = new Float32Array(await gpu.read(out, 0, 8));
 * [-0.6931, -0.0000454].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-4, `${got}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createLogSoftmax2Col0(gpu: Gpu): Promise<LogSoftmax2Col0Kernel> {
  const pipeline = await gpu.pipeline("log_softmax2_col0", LOG_SOFTMAX_WGSL);
  return {
    bind(buffers, args) {
      const { logits, out, rows } = args;
      checkCount(rows, "log_softmax2_col0");
      const params = buffers.uniform(packUniforms(LOG_SOFTMAX_PARAMS, { rows }), "log_softmax2_col0 params");
      return [gpu.dispatch(pipeline, [params, logits, out], grid(Math.ceil(rows / ROW_LANES)))];
    },
  };
}

/**
 * Compiles the KV admission kernel flags[state[0]] = (logits[0] > logits[1] ? 1 : 0).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createAdmitFlag } from "./predictor_ops.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const logits = buffers.upload(new Float32Array([0.4, -0.2]), "logits");
 * const state = buffers.upload(new Uint32Array([2, 0, 0, 0]), "state"); // step 2
 * const flags = buffers.upload(new Uint32Array(4), "flags");
 * const admit = await createAdmitFlag(gpu);
 * gpu.submit(admit.bind(buffers, { logits, state, flags }));
 * assert.deepEqual(new Uint32Array(await gpu.read(flags, 0, 16)), new Uint32Array([0, 0, 1, 0]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createAdmitFlag(gpu: Gpu): Promise<AdmitFlagKernel> {
  const pipeline = await gpu.pipeline("admit_flag", ADMIT_WGSL);
  return {
    bind(_buffers, args) {
      return [gpu.dispatch(pipeline, [args.logits, args.state, args.flags], [1, 1, 1])];
    },
  };
}
