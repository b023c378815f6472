/**
 * Matrix-vector products with a texture-stored weight (few rows of x, as in decode):
 * out[M, N] (= or +=) x[M, K] · W[N, K]ᵀ (+ bias[N]). CPU twin: `linear` in runtime/core/cpu_ops.ts.
 *
 * W lives in storage textures in 64-row blocks (runtime/device/weights_texture.ts). A workgroup of
 * 8 lanes computes one block for one row of x: lane j owns the block's rows 8j..8j+7, walks K in
 * slices of 8, reads its 8 rows' texels (adjacent across the workgroup) and keeps 8 sums in
 * registers: no workgroup memory, no reduction. One dispatch per texture chunk; the grid is
 * (blocks of the chunk) × M. Arguments mean what they mean for the buffer matmul (kernels/matmul.ts).
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { ROW_BLOCK, texelsPerSlice } from "../runtime/device/weights_texture.ts";
import {
  type WeightDtype,
  weightDtype,
  weightShader,
  type WeightTensor,
} from "../runtime/device/weights_gpu.ts";
import { checkBufferFloats, defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link MatvecTextureKernel.bind}. */
export interface MatvecTextureArgs {
  /** f32 [xRowOffset + rows, K]. */
  x: GPUBuffer;
  /** W [N, K], texture-stored. */
  weight: WeightTensor;
  /** f32 [N], optional. */
  bias?: GPUBuffer;
  /** f32 [outRowOffset + rows, N]. */
  out: GPUBuffer;
  /** M: rows of x multiplied. */
  rows: number;
  /** out += result instead of out = result. */
  accumulate?: boolean;
  /** First row of x read (default 0). */
  xRowOffset?: number;
  /** First row of out written (default 0). */
  outRowOffset?: number;
}

/** The compiled texture matvec. */
export interface MatvecTextureKernel {
  /** Dispatches computing `args` (one per texture chunk). */
  bind(buffers: BufferSet, args: MatvecTextureArgs): Dispatch[];
}

/** Up to this many rows of x, texture-stored weights go through the texture matvecs. */
export const MATVEC_TEXTURE_MAX_ROWS = 8;

/** Invocations per workgroup of the texture matvecs: each owns 8 rows of a 64-row weight block. */
export const MATVEC_TEXTURE_LANES = 8;
const ROWS_PER_LANE = ROW_BLOCK / MATVEC_TEXTURE_LANES;

const PARAMS = defineUniforms("matvec_texture", {
  rows: "u32", //          M
  outCols: "u32", //       N (all chunks)
  inCols: "u32", //        K
  chunkRows: "u32", //     weight rows in this chunk
  chunkStart: "u32", //    first weight row of this chunk
  xRowOffset: "u32",
  outRowOffset: "u32",
  accumulate: "u32", //    1: out += result
  addBias: "u32", //       1: result + bias
});

/**
 * WGSL of one K slice of a texture matvec lane: the lane's 8 rows of the texture declared as
 * `texture` (runtime/device/weights_texture.ts), starting at texel `t`, dotted with the slice's x
 * values `xa`, `xb` (vec4f each), rows 0..3 added to the vec4f `lo` and rows 4..7 to `hi`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { laneSliceDots } from "./matvec_texture.ts";
 * const wgsl = laneSliceDots("f32", { texture: "up", xa: "ya", xb: "yb", lo: "up_lo", hi: "up_hi" });
 * assert.ok(wgsl.includes("let up_w1 = up_slice(t + 2u);")); // f32: 2 texels per slice and row
 * assert.ok(wgsl.includes("up_hi += vec4f(up_d4, up_d5, up_d6, up_d7);"));
 * ```
 */
export function laneSliceDots(
  dtype: WeightDtype,
  names: { texture: string; xa: string; xb: string; lo: string; hi: string },
): string {
  const { texture: w, xa, xb } = names, per = texelsPerSlice(dtype);
  const rows = Array.from(
    { length: ROWS_PER_LANE },
    (_, j) =>
      `    let ${w}_w${j} = ${w}_slice(t + ${j * per}u);\n` +
      `    let ${w}_d${j} = dot(${w}_w${j}[0], ${xa}) + dot(${w}_w${j}[1], ${xb});`,
  );
  const sums = (from: number) => Array.from({ length: 4 }, (_, j) => `${w}_d${from + j}`).join(", ");
  return `${rows.join("\n")}
    ${names.lo} += vec4f(${sums(0)});
    ${names.hi} += vec4f(${sums(4)});`;
}

function matvecTextureSource(dtype: WeightDtype): string {
  const per = texelsPerSlice(dtype);
  return `${wgslPrelude({ workgroupSize: MATVEC_TEXTURE_LANES })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<vec4f>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
${weightShader(dtype, { binding: 3, vectorized: true, storage: "texture" })}
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// out[m, chunk_start + n] (=|+=) value (+ bias).
fn store(m: u32, n: u32, value: f32) {
  let column = params.chunk_start + n;
  let at = (params.out_row_offset + m) * params.out_cols + column;
  var v = value;
  if (params.add_bias != 0u) { v += bias[column]; }
  if (params.accumulate != 0u) { v += out[at]; }
  out[at] = v;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = (params.chunk_rows + ${ROW_BLOCK - 1}u) / ${ROW_BLOCK}u;
  let g = workgroup_index(wid, nwg);
  if (g >= blocks * params.rows) { return; }
  let m = g / blocks;
  let block = g % blocks;
  let slices = params.in_cols >> 3u;
  // Texel of (block, slice 0, this lane's first row); slice s is ${ROW_BLOCK} rows further each.
  let first = (block * slices * ${ROW_BLOCK}u + lid * ${ROWS_PER_LANE}u) * WEIGHT_TEXELS_PER_SLICE;
  let x_base = (params.x_row_offset + m) * (params.in_cols >> 2u);
  var lo = vec4f(0.0);
  var hi = vec4f(0.0);
  for (var s = 0u; s < slices; s++) {
    let xa = x[x_base + 2u * s];
    let xb = x[x_base + 2u * s + 1u];
    let t = first + s * ${ROW_BLOCK * per}u;
${laneSliceDots(dtype, { texture: "weight", xa: "xa", xb: "xb", lo: "lo", hi: "hi" })}
  }
  let row0 = block * ${ROW_BLOCK}u + lid * ${ROWS_PER_LANE}u;
  for (var j = 0u; j < 4u; j++) {
    if (row0 + j < params.chunk_rows) { store(m, row0 + j, lo[j]); }
    if (row0 + 4u + j < params.chunk_rows) { store(m, row0 + 4u + j, hi[j]); }
  }
}
`;
}

/**
 * Compiles the texture matvec for the device's weight dtype.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { createMatvecTexture } from "./matvec_texture.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const matvec = await createMatvecTexture(gpu);
 * // W [2, 8]: row 0 all ones, row 1 = 0..7; x = 1..8
 * const w = new Float32Array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 2, 3, 4, 5, 6, 7]);
 * const weight = uploadWeight(buffers, w, { rows: 2, cols: 8, label: "w", storage: "texture" });
 * const x = buffers.upload(new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]), "x");
 * const out = buffers.storage(2 * 4, "out");
 * gpu.submit(matvec.bind(buffers, { x, weight, out, rows: 1 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 8)), new Float32Array([36, 168]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createMatvecTexture(gpu: Gpu): Promise<MatvecTextureKernel> {
  const dtype = weightDtype(gpu);
  const pipeline = await gpu.pipeline(`matvec_texture_${dtype}`, matvecTextureSource(dtype));
  return {
    bind(buffers: BufferSet, args: MatvecTextureArgs): Dispatch[] {
      const { weight, rows } = args;
      if (!weight.textures || weight.dtype !== dtype) {
        throw new InputError(
          `Cannot bind matvec_texture: weight is ${weight.dtype} in ${
            weight.textures ? "textures" : "buffers"
          }, kernel reads ${dtype} textures`,
          "matvec_texture.weight",
        );
      }
      const xRowOffset = args.xRowOffset ?? 0;
      const outRowOffset = args.outRowOffset ?? 0;
      checkSize(args.x, (xRowOffset + rows) * weight.cols, "x");
      checkSize(args.out, (outRowOffset + rows) * weight.rows, "out");
      if (args.bias) checkSize(args.bias, weight.rows, "bias");
      return weight.textures.map((chunk) => {
        const params = packUniforms(PARAMS, {
          rows,
          outCols: weight.rows,
          inCols: weight.cols,
          chunkRows: chunk.rows,
          chunkStart: chunk.rowStart,
          xRowOffset,
          outRowOffset,
          accumulate: args.accumulate ? 1 : 0,
          addBias: args.bias ? 1 : 0,
        });
        const groups = Math.ceil(chunk.rows / ROW_BLOCK) * rows;
        // Without a bias, x stands in for the (unread) bias binding.
        const bindings = [
          buffers.uniform(params, "matvec_texture params"),
          args.x,
          args.bias ?? args.x,
          chunk.view,
          args.out,
        ];
        return gpu.dispatch(pipeline, bindings, grid(groups));
      });
    },
  };
}

function checkSize(buffer: GPUBuffer, floats: number, name: string): void {
  checkBufferFloats(buffer, floats, { kernel: "matvec_texture", label: "matvec_texture", name });
}
