/**
 * Texture matvecs that do a layer's work in fewer dispatches (decode: few rows of x, weights in
 * storage textures):
 * - {@link createMatvecTextureMulti}: out_i[M, N_i] = x[M, C] · W_i[N_i, C]ᵀ for one to three
 *   weights of the same x rows in one dispatch (q, k and v of a decoder layer). CPU twin: `linear`
 *   for each weight (runtime/core/cpu_ops.ts).
 * - {@link createSwigluTexture}: act[M, I] = silu(x·W_gateᵀ) · (x·W_upᵀ) in one dispatch; gate and
 *   up are never stored. CPU twin: `swigluLinear` (runtime/core/cpu_ops.ts).
 *
 * The lanes are the texture matvec's (kernels/matvec_texture.ts): a workgroup of 8 lanes computes
 * one 64-row block of a weight for one row of x, lane j its rows 8j..8j+7, walking K in slices of
 * 8; the multi-projection kernel's workgroups are those of W_0's blocks, then W_1's, then W_2's,
 * and the SwiGLU kernel's lanes walk the same block of W_gate and W_up together. Each weight must
 * sit in one texture ({@link inOneTexture}: every decoder matrix up to LLaMA-7B's does); the
 * wrappers refuse others.
 *
 * RMSNorm stays a dispatch of its own before them: folding it in (each lane summing x² and
 * multiplying x by the norm weight on the way, or each workgroup writing its normed row to
 * workgroup memory first) was measured slower on Mesa's lavapipe than the ~20 µs dispatch it saves.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { ROW_BLOCK, texelsPerSlice, weightTextureShader } from "../runtime/device/weights_texture.ts";
import { type WeightDtype, weightDtype, type WeightTensor } from "../runtime/device/weights_gpu.ts";
import { laneSliceDots, MATVEC_TEXTURE_LANES } from "./matvec_texture.ts";
import { checkBufferFloats, defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** One projection of {@link MatvecTextureMultiArgs}: out [M, N] = x · weightᵀ. */
export interface TextureProjection {
  /** W [N, C] in one texture. */
  weight: WeightTensor;
  /** f32 [M, N]. */
  out: GPUBuffer;
}

/** Arguments of {@link MatvecTextureMultiKernel.bind}. */
export interface MatvecTextureMultiArgs {
  /** f32 [rows, C]. */
  x: GPUBuffer;
  /** One to three projections of the same rows, all with C columns. */
  projections: TextureProjection[];
  /** M: rows of x projected. */
  rows: number;
}

/** Arguments of {@link SwigluTextureKernel.bind}. */
export interface SwigluTextureArgs {
  /** f32 [rows, C]. */
  x: GPUBuffer;
  /** W_gate [I, C] in one texture. */
  gate: WeightTensor;
  /** W_up [I, C] in one texture. */
  up: WeightTensor;
  /** f32 [rows, I]: silu(gate) · up. */
  out: GPUBuffer;
  rows: number;
}

/** The compiled multi-projection matvec. */
export interface MatvecTextureMultiKernel {
  /** The one dispatch computing `args`. */
  bind(buffers: BufferSet, args: MatvecTextureMultiArgs): Dispatch[];
}

/** The compiled gate/up-SwiGLU matvec. */
export interface SwigluTextureKernel {
  /** The one dispatch computing `args`. */
  bind(buffers: BufferSet, args: SwigluTextureArgs): Dispatch[];
}

/** Projections one multi-projection dispatch computes at most (storage textures per stage: 4). */
export const MAX_PROJECTIONS = 3;

/**
 * Whether a weight can go through these kernels: stored in exactly one texture.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { inOneTexture } from "./matvec_texture_fused.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const values = new Float32Array(4 * 8);
 * assert.ok(inOneTexture(uploadWeight(buffers, values, { rows: 4, cols: 8, label: "w", storage: "texture" })));
 * assert.ok(!inOneTexture(uploadWeight(buffers, values, { rows: 4, cols: 8, label: "w" }))); // buffers
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function inOneTexture(weight: { textures?: readonly unknown[] }): boolean {
  return weight.textures?.length === 1;
}

const MULTI_PARAMS = defineUniforms("matvec_texture_multi", {
  rows: "u32", //        M
  inCols: "u32", //      C
  blocks0: "u32", //     64-row blocks of each projection (0 past the projections)
  blocks1: "u32",
  blocks2: "u32",
  outCols0: "u32", //    N of each projection
  outCols1: "u32",
  outCols2: "u32",
});

const SWIGLU_PARAMS = defineUniforms("swiglu_texture", {
  rows: "u32", //        M
  inCols: "u32", //      C
  outCols: "u32", //     I
});

/**
 * WGSL statements of one lane walking row m of x over `block` of each texture in `textures`:
 * declares `<texture>_lo` / `_hi` (its 8 rows' sums). Needs `block`, `m` and `lid` in scope.
 */
function laneLoop(dtype: WeightDtype, textures: string[]): string {
  const per = texelsPerSlice(dtype), rowsPerLane = ROW_BLOCK / MATVEC_TEXTURE_LANES;
  const sums = textures.map((w) => `  var ${w}_lo = vec4f(0.0);\n  var ${w}_hi = vec4f(0.0);`).join("\n");
  const dots = textures.map((w) =>
    laneSliceDots(dtype, { texture: w, xa: "xa", xb: "xb", lo: `${w}_lo`, hi: `${w}_hi` })
  );
  return `  let slices = params.in_cols >> 3u;
  // Texel of (block, slice 0, this lane's first row); slice s is ${ROW_BLOCK} rows further each.
  let first = (block * slices * ${ROW_BLOCK}u + lid * ${rowsPerLane}u) * ${per}u;
  let x_base = m * (params.in_cols >> 2u);
${sums}
  for (var s = 0u; s < slices; s++) {
    let xa = x[x_base + 2u * s];
    let xb = x[x_base + 2u * s + 1u];
    let t = first + s * ${ROW_BLOCK * per}u;
${dots.join("\n")}
  }`;
}

/** The multi-projection shader for `count` projections (a pipeline per count: no binding is bound twice). */
function multiSource(dtype: WeightDtype, count: number): string {
  const slots = Array.from({ length: count }, (_, i) => i);
  const rowsPerLane = ROW_BLOCK / MATVEC_TEXTURE_LANES;
  // The workgroups of projection i follow those of projections 0..i-1.
  const before = (i: number) => slots.slice(0, i).map((j) => `params.blocks${j}`).join(" + ") || "0u";
  const dispatch = slots.map((i) => {
    const call = `project_${i}(m, block - (${before(i)}), lid);`;
    return i === count - 1 ? `{\n    ${call}\n  }` : `if (block < ${before(i + 1)}) {\n    ${call}\n  }`;
  }).join(" else ");
  const project = (i: number) => `
// Rows of block \`block\` of W${i} for row m of x, into out${i}.
fn project_${i}(m: u32, block: u32, lid: u32) {
${laneLoop(dtype, [`w${i}`])}
  let row0 = block * ${ROW_BLOCK}u + lid * ${rowsPerLane}u;
  let at = m * params.out_cols${i};
  for (var j = 0u; j < 4u; j++) {
    if (row0 + j < params.out_cols${i}) { out${i}[at + row0 + j] = w${i}_lo[j]; }
    if (row0 + 4u + j < params.out_cols${i}) { out${i}[at + row0 + 4u + j] = w${i}_hi[j]; }
  }
}`;
  const outs = slots.map((i) =>
    `@group(0) @binding(${2 + count + i}) var<storage, read_write> out${i}: array<f32>;`
  );
  return `${wgslPrelude({ workgroupSize: MATVEC_TEXTURE_LANES })}
${MULTI_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<vec4f>;
${slots.map((i) => weightTextureShader(dtype, 2 + i, `w${i}`)).join("")}
${outs.join("\n")}
${slots.map(project).join("\n")}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = ${before(count)};
  let g = workgroup_index(wid, nwg);
  if (g >= blocks * params.rows) { return; }
  let m = g / blocks;
  let block = g % blocks;
  ${dispatch}
}
`;
}

function swigluSource(dtype: WeightDtype): string {
  const rowsPerLane = ROW_BLOCK / MATVEC_TEXTURE_LANES;
  return `${wgslPrelude({ workgroupSize: MATVEC_TEXTURE_LANES })}
${SWIGLU_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<vec4f>;
${weightTextureShader(dtype, 2, "gate")}${weightTextureShader(dtype, 3, "up")}
@group(0) @binding(4) var<storage, read_write> act: array<f32>;

// act[m, n] = silu(gate) · up, as the swiglu kernel computes it.
fn store(m: u32, n: u32, gate: f32, up: f32) {
  if (n < params.out_cols) { act[m * params.out_cols + n] = gate / (1.0 + exp(-gate)) * up; }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = (params.out_cols + ${ROW_BLOCK - 1}u) / ${ROW_BLOCK}u;
  let g = workgroup_index(wid, nwg);
  if (g >= blocks * params.rows) { return; }
  let m = g / blocks;
  let block = g % blocks;
${laneLoop(dtype, ["gate", "up"])}
  let row0 = block * ${ROW_BLOCK}u + lid * ${rowsPerLane}u;
  for (var j = 0u; j < 4u; j++) {
    store(m, row0 + j, gate_lo[j], up_lo[j]);
    store(m, row0 + 4u + j, gate_hi[j], up_hi[j]);
  }
}
`;
}

/**
 * Compiles the multi-projection texture matvec for the device's weight dtype.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { createMatvecTextureMulti } from "./matvec_texture_fused.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const multi = await createMatvecTextureMulti(gpu);
 * const x = buffers.upload(new Float32Array(8).fill(0.5), "x");
 * const ones = uploadWeight(buffers, new Float32Array(8).fill(1), { rows: 1, cols: 8, label: "a", storage: "texture" });
 * const ramp = new Float32Array(16).map((_, i) => i % 8); // W [2, 8], rows 0..7
 * const twoRows = uploadWeight(buffers, ramp, { rows: 2, cols: 8, label: "b", storage: "texture" });
 * const a = buffers.storage(4, "a"), b = buffers.storage(8, "b");
 * gpu.submit(multi.bind(buffers, { x, rows: 1, projections: [{ weight: ones, out: a }, { weight: twoRows, out: b }] }));
 * assert.deepEqual([...new Float32Array(await gpu.read(a, 0, 4))], [4]); // 8 · 0.5
 * assert.deepEqual([...new Float32Array(await gpu.read(b, 0, 8))], [14, 14]); // 28 · 0.5
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createMatvecTextureMulti(gpu: Gpu): Promise<MatvecTextureMultiKernel> {
  const dtype = weightDtype(gpu);
  const pipelines = await Promise.all(
    Array.from(
      { length: MAX_PROJECTIONS },
      (_, i) => gpu.pipeline(`matvec_texture_multi_${i + 1}_${dtype}`, multiSource(dtype, i + 1)),
    ),
  );
  return {
    bind(buffers: BufferSet, args: MatvecTextureMultiArgs): Dispatch[] {
      const { projections, rows } = args, kernel = "matvec_texture_multi";
      if (projections.length < 1 || projections.length > MAX_PROJECTIONS) {
        throw new InputError(
          `Cannot bind ${kernel}: ${projections.length} projections, expected 1 to ${MAX_PROJECTIONS}`,
          `${kernel}.projections`,
        );
      }
      const cols = projections[0].weight.cols;
      projections.forEach(({ weight, out }, i) => {
        checkWeight(kernel, `projections[${i}].weight`, weight, { dtype, cols });
        checkBufferFloats(out, rows * weight.rows, { kernel, label: kernel, name: `projections[${i}].out` });
      });
      checkBufferFloats(args.x, rows * cols, { kernel, label: kernel, name: "x" });
      // Fields past the projections are 0 (the pipeline for their count has no such slot).
      const blocks = (i: number) =>
        i < projections.length ? Math.ceil(projections[i].weight.rows / ROW_BLOCK) : 0;
      const params = packUniforms(MULTI_PARAMS, {
        rows,
        inCols: cols,
        blocks0: blocks(0),
        blocks1: blocks(1),
        blocks2: blocks(2),
        outCols0: projections[0].weight.rows,
        outCols1: projections[1]?.weight.rows ?? 0,
        outCols2: projections[2]?.weight.rows ?? 0,
      });
      const groups = (blocks(0) + blocks(1) + blocks(2)) * rows;
      return [gpu.dispatch(pipelines[projections.length - 1], [
        buffers.uniform(params, `${kernel} params`),
        args.x,
        ...projections.map((p) => p.weight.textures![0].view),
        ...projections.map((p) => p.out),
      ], grid(groups))];
    },
  };
}

/**
 * Compiles the gate/up-SwiGLU texture matvec for the device's weight dtype.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { createSwigluTexture } from "./matvec_texture_fused.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const swiglu = await createSwigluTexture(gpu);
 * const x = buffers.upload(new Float32Array(8).fill(1), "x");
 * const texture = (values: number[]) =>
 *   uploadWeight(buffers, new Float32Array(values.flatMap((v) => Array(8).fill(v / 8))), {
 *     rows: values.length, cols: 8, label: "w", storage: "texture",
 *   });
 * const out = buffers.storage(8, "act");
 * // gate = [0, 2], up = [5, 3]: act = [silu(0)·5, silu(2)·3]
 * gpu.submit(swiglu.bind(buffers, { x, gate: texture([0, 2]), up: texture([5, 3]), out, rows: 1 }));
 * const act = new Float32Array(await gpu.read(out, 0, 8));
 * assert.equal(act[0], 0);
 * assert.ok(Math.abs(act[1] - 5.2848) < 1e-4, `${act[1]}`);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createSwigluTexture(gpu: Gpu): Promise<SwigluTextureKernel> {
  const dtype = weightDtype(gpu);
  const pipeline = await gpu.pipeline(`swiglu_texture_${dtype}`, swigluSource(dtype));
  return {
    bind(buffers: BufferSet, args: SwigluTextureArgs): Dispatch[] {
      const { gate, up, rows } = args, kernel = "swiglu_texture";
      const cols = gate.cols;
      checkWeight(kernel, "gate", gate, { dtype, cols });
      checkWeight(kernel, "up", up, { dtype, cols });
      if (up.rows !== gate.rows) {
        throw new InputError(
          `Cannot bind ${kernel}: up has ${up.rows} rows, gate ${gate.rows}`,
          `${kernel}.up`,
        );
      }
      checkBufferFloats(args.x, rows * cols, { kernel, label: kernel, name: "x" });
      checkBufferFloats(args.out, rows * gate.rows, { kernel, label: kernel, name: "out" });
      const params = packUniforms(SWIGLU_PARAMS, { rows, inCols: cols, outCols: gate.rows });
      return [gpu.dispatch(pipeline, [
        buffers.uniform(params, `${kernel} params`),
        args.x,
        gate.textures![0].view,
        up.textures![0].view,
        args.out,
      ], grid(Math.ceil(gate.rows / ROW_BLOCK) * rows))];
    },
  };
}

/** Throws InputError unless `weight` is a `dtype` weight with `cols` columns in one texture. */
function checkWeight(
  kernel: string,
  name: string,
  weight: WeightTensor,
  want: { dtype: WeightDtype; cols: number },
): void {
  if (!inOneTexture(weight) || weight.dtype !== want.dtype || weight.cols !== want.cols) {
    const stored = weight.textures ? `${weight.textures.length} textures` : "buffers";
    throw new InputError(
      `Cannot bind ${kernel}: ${name} is ${weight.dtype} [${weight.rows}, ${weight.cols}] in ${stored}, ` +
        `kernel reads ${want.dtype} [·, ${want.cols}] in one texture`,
      `${kernel}.${name}`,
    );
  }
}
