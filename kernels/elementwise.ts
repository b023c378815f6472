/**
 * Elementwise kernels over f32 buffers, one thread per element, `count` elements each. CPU twins in
 * runtime/core/cpu_ops.ts:
 * - {@link createAdd}: a += b (`addInPlace`);
 * - {@link createSwiglu}: out = silu(gate) · up (`swiglu`);
 * - {@link createGelu}: x = gelu(x) in place, erf-based with the twin's erf formula (`gelu`);
 * - {@link createQuickGelu}: x = x · sigmoid(1.702 x) in place (`quickGelu`);
 * - {@link createAddBias}: x[M, N] += bias[N] (a row-broadcast `addInPlace`).
 * A written buffer must not also be bound as an input of the same call.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link createAdd}'s bind: a[count] += b[count]. */
export interface AddArgs {
  a: GPUBuffer;
  b: GPUBuffer;
  count: number;
}

/** Arguments of {@link createSwiglu}'s bind: out[count] = silu(gate) · up. */
export interface SwigluArgs {
  gate: GPUBuffer;
  up: GPUBuffer;
  out: GPUBuffer;
  count: number;
}

/** Arguments of the in-place activations ({@link createGelu}, {@link createQuickGelu}). */
export interface ActivationArgs {
  x: GPUBuffer;
  count: number;
}

/** Arguments of {@link createAddBias}'s bind: x[count / cols, cols] += bias[cols]. */
export interface AddBiasArgs {
  x: GPUBuffer;
  bias: GPUBuffer;
  count: number;
  cols: number;
}

/** A compiled elementwise pipeline. */
export interface ElementwiseKernel<Args> {
  /** The dispatch computing `args`. */
  bind(buffers: BufferSet, args: Args): Dispatch[];
}

const THREADS = 256;

/** Parameters of every elementwise kernel; `cols` is read by add_bias only. */
const FIELDS = { count: "u32", cols: "u32" } as const;

/**
 * WGSL of one elementwise op: `bindings` declared from binding 1 (read-only ones first, the
 * written one last), `body` updates element i.
 */
function source(bindings: string[], body: string, helpers = ""): string {
  const declared = bindings.map((b, n) => `@group(0) @binding(${n + 1}) var<storage, ${b};`).join("\n");
  return `${wgslPrelude({ workgroupSize: THREADS })}
${defineUniforms("elementwise", FIELDS).wgsl}
${declared}
${helpers}
@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
  if (i >= params.count) { return; }
  ${body}
}
`;
}

/** Compiles `code`; bind uploads the count (and cols) and binds `buffersOf(args)` from binding 1. */
async function elementwise<Args extends { count: number }>(
  gpu: Gpu,
  label: string,
  code: string,
  buffersOf: (args: Args) => GPUBuffer[],
  colsOf: (args: Args) => number = () => 0,
): Promise<ElementwiseKernel<Args>> {
  const pipeline = await gpu.pipeline(label, code);
  const layout = defineUniforms(label, FIELDS);
  return {
    bind(buffers: BufferSet, args: Args): Dispatch[] {
      const params = buffers.uniform(
        packUniforms(layout, { count: args.count, cols: colsOf(args) }),
        `${label} params`,
      );
      const groups = grid(Math.ceil(args.count / THREADS));
      return [gpu.dispatch(pipeline, [params, ...buffersOf(args)], groups)];
    },
  };
}

/**
 * Compiles a += b.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createAdd } from "./elementwise.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const add = await createAdd(gpu);
 * const a = buffers.upload(new Float32Array([1, 2]), "a");
 * const b = buffers.upload(new Float32Array([10, 20]), "b");
 * gpu.submit(add.bind(buffers, { a, b, count: 2 }));
 * assert.deepEqual(new Float32Array(await gpu.read(a, 0, 8)), new Float32Array([11, 22]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function createAdd(gpu: Gpu): Promise<ElementwiseKernel<AddArgs>> {
  const code = source(["read> b: array<f32>", "read_write> a: array<f32>"], "a[i] += b[i];");
  return elementwise(gpu, "add", code, (args: AddArgs) => [args.b, args.a]);
}

/**
 * Compiles out = silu(gate) · up.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createSwiglu } from "./elementwise.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const swiglu = await createSwiglu(gpu);
 * const gate = buffers.upload(new Float32Array([0, 1]), "gate");
 * const up = buffers.upload(new Float32Array([5, 2]), "up");
 * const out = buffers.storage(8, "out");
 * gpu.submit(swiglu.bind(buffers, { gate, up, out, count: 2 }));
 * const got = new Float32Array(await gpu.read(out, 0, 8));
 * [0, 1.4621].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-4, `${got}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function createSwiglu(gpu: Gpu): Promise<ElementwiseKernel<SwigluArgs>> {
  const code = source(
    ["read> gate: array<f32>", "read> up: array<f32>", "read_write> out: array<f32>"],
    "let g = gate[i];\n  out[i] = g / (1.0 + exp(-g)) * up[i];",
  );
  return elementwise(gpu, "swiglu", code, (args: SwigluArgs) => [args.gate, args.up, args.out]);
}

/**
 * 1 + erf(z) with the CPU twin's erfc fit (Numerical Recipes Chebyshev, |error| < 1.2e-7),
 * computed without cancellation for negative z.
 */
const ONE_PLUS_ERF = `
fn one_plus_erf(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  let erfc_z = t * exp(-z * z + poly);
  return select(erfc_z, 2.0 - erfc_z, x >= 0.0);
}
`;

/**
 * Compiles x = gelu(x) in place (erf-based, as torch's default GELU).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createGelu } from "./elementwise.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const gelu = await createGelu(gpu);
 * const x = buffers.upload(new Float32Array([-1, 0, 1]), "x");
 * gpu.submit(gelu.bind(buffers, { x, count: 3 }));
 * const got = new Float32Array(await gpu.read(x, 0, 12));
 * [-0.1587, 0, 0.8413].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-4, `${got}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function createGelu(gpu: Gpu): Promise<ElementwiseKernel<ActivationArgs>> {
  const code = source(
    ["read_write> x: array<f32>"],
    "let v = x[i];\n  x[i] = 0.5 * v * one_plus_erf(v * 0.70710678118654752);",
    ONE_PLUS_ERF,
  );
  return elementwise(gpu, "gelu", code, (args: ActivationArgs) => [args.x]);
}

/**
 * Compiles x = x · sigmoid(1.702 x) in place (CLIP's quick_gelu).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createQuickGelu } from "./elementwise.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const quickGelu = await createQuickGelu(gpu);
 * const x = buffers.upload(new Float32Array([0, 1]), "x");
 * gpu.submit(quickGelu.bind(buffers, { x, count: 2 }));
 * const got = new Float32Array(await gpu.read(x, 0, 8));
 * [0, 0.8458].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-4, `${got}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function createQuickGelu(gpu: Gpu): Promise<ElementwiseKernel<ActivationArgs>> {
  const code = source(["read_write> x: array<f32>"], "let v = x[i];\n  x[i] = v / (1.0 + exp(-1.702 * v));");
  return elementwise(gpu, "quick_gelu", code, (args: ActivationArgs) => [args.x]);
}

/**
 * Compiles x[M, N] += bias[N] (count = M · N, cols = N).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createAddBias } from "./elementwise.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const addBias = await createAddBias(gpu);
 * const x = buffers.upload(new Float32Array([1, 2, 3, 4]), "x");
 * const bias = buffers.upload(new Float32Array([10, 20]), "bias");
 * gpu.submit(addBias.bind(buffers, { x, bias, count: 4, cols: 2 }));
 * assert.deepEqual(new Float32Array(await gpu.read(x, 0, 16)), new Float32Array([11, 22, 13, 24]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function createAddBias(gpu: Gpu): Promise<ElementwiseKernel<AddBiasArgs>> {
  const code = source(
    ["read> bias: array<f32>", "read_write> x: array<f32>"],
    "x[i] += bias[i % params.cols];",
  );
  return elementwise(gpu, "add_bias", code, (args: AddBiasArgs) => [args.bias, args.x], (args) => args.cols);
}
