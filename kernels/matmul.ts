/**
 * Matrix multiply with a weight matrix: out[M, N] (= or +=) x[M, K] · W[N, K]ᵀ (+ bias[N]).
 * CPU twin: `linear` in runtime/core/cpu_ops.ts.
 *
 * - M = 1 (decode): a GEMV, one workgroup of 64 threads per 4 output columns, each thread
 *   reading 8 weights per load, then a workgroup reduction over K.
 * - M > 1 (prefill): 64×64 output tiles, 256 threads of 4×4 outputs, K in steps of 16 through
 *   workgroup memory.
 * - Texture-stored weights (runtime/device/weights_texture.ts): up to 8 rows through the texture
 *   matvec (kernels/matvec_texture.ts), more through the vectorized tiled variant reading texels.
 * Each variant comes vectorized (K % 8 == 0) and scalar (any K). One dispatch per weight chunk:
 * a chunk writes output columns [rowStart, rowStart + rows). `accumulate` adds the result to `out`
 * (fusing a residual add); `xRowOffset` / `outRowOffset` pick rows of x and out (lm_head on the
 * last position only). `x` and `out` must be different buffers.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import {
  type WeightDtype,
  weightDtype,
  weightShader,
  type WeightStorage,
} from "../runtime/device/weights_gpu.ts";
import { createMatvecTexture, MATVEC_TEXTURE_MAX_ROWS, type MatvecTextureArgs } from "./matvec_texture.ts";
import { checkBufferFloats, defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link MatmulKernel.bind}: the texture matvec's, which it routes to for few rows. */
export type MatmulArgs = MatvecTextureArgs;

/** Compiled matmul pipelines. */
export interface MatmulKernel {
  /** Dispatches computing `args` (one per weight chunk). */
  bind(buffers: BufferSet, args: MatmulArgs): Dispatch[];
}

const GEMV_COLUMNS = 4;
const TILE = 64;

const PARAMS = defineUniforms("matmul", {
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

/** Uniform, x, bias, weight and out (x is vec4f when vectorized), and the store of one output. */
function matmulBindings(dtype: WeightDtype, vectorized: boolean, storage: WeightStorage = "buffer"): string {
  return `${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<${vectorized ? "vec4f" : "f32"}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
${weightShader(dtype, { binding: 3, vectorized, storage })}
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
`;
}

/** GEMV: workgroup g computes out columns 4g..4g+3 of this chunk for one x row. */
function gemvSource(dtype: WeightDtype, vectorized: boolean): string {
  const loop = vectorized
    ? `
  let x_base = params.x_row_offset * (params.in_cols >> 2u);
  for (var b = lid; b < (params.in_cols >> 3u); b += WORKGROUP_SIZE) {
    let xa = x[x_base + 2u * b];
    let xb = x[x_base + 2u * b + 1u];
    let w0 = weight_block8(r0, b, params.in_cols);
    let w1 = weight_block8(r1, b, params.in_cols);
    let w2 = weight_block8(r2, b, params.in_cols);
    let w3 = weight_block8(r3, b, params.in_cols);
    acc += vec4f(
      dot(w0[0], xa) + dot(w0[1], xb),
      dot(w1[0], xa) + dot(w1[1], xb),
      dot(w2[0], xa) + dot(w2[1], xb),
      dot(w3[0], xa) + dot(w3[1], xb),
    );
  }`
    : `
  let x_base = params.x_row_offset * params.in_cols;
  for (var k = lid; k < params.in_cols; k += WORKGROUP_SIZE) {
    let xv = x[x_base + k];
    acc += xv * vec4f(
      weight_at(r0, k, params.in_cols),
      weight_at(r1, k, params.in_cols),
      weight_at(r2, k, params.in_cols),
      weight_at(r3, k, params.in_cols),
    );
  }`;
  return `${wgslPrelude({ workgroupSize: 64, reductions: ["sum_vec4"] })}
${matmulBindings(dtype, vectorized)}
@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let n0 = workgroup_index(wid, nwg) * ${GEMV_COLUMNS}u;
  if (n0 >= params.chunk_rows) { return; }
  let last = params.chunk_rows - 1u;   // rows past the chunk re-read its last row; never stored
  let r0 = n0;
  let r1 = min(n0 + 1u, last);
  let r2 = min(n0 + 2u, last);
  let r3 = min(n0 + 3u, last);
  var acc = vec4f(0.0);${loop}
  let total = workgroup_sum_vec4(lid, acc);
  if (lid < ${GEMV_COLUMNS}u && n0 + lid < params.chunk_rows) {
    store(0u, n0 + lid, total[lid]);
  }
}
`;
}

/** Tiled: workgroup computes a 64×64 tile of out; thread (tx, ty) owns rows 4ty.., columns 4tx... */
function tiledSource(dtype: WeightDtype, vectorized: boolean, storage: WeightStorage = "buffer"): string {
  // Tiles hold 16 k-steps of 64 values as 16 vec4 each: tile[k * 16 + i / 4][i % 4].
  const load = vectorized
    ? `
    {
      let i = lid / 4u;              // tile row 0..63
      let q = lid % 4u;              // k quad 0..3
      let m = m0 + i;
      let k = k0 + 4u * q;
      var v = vec4f(0.0);
      if (m < params.rows && k < params.in_cols) {
        v = x[((params.x_row_offset + m) * params.in_cols + k) >> 2u];
      }
      for (var c = 0u; c < 4u; c++) { x_tile[(4u * q + c) * 16u + i / 4u][i % 4u] = v[c]; }
    }
    if (lid < 128u) {
      let i = lid / 2u;              // tile row 0..63
      let half = lid % 2u;           // k block of 8
      let n = n0 + i;
      let block = (k0 >> 3u) + half;
      var w = mat2x4f();
      if (n < params.chunk_rows && 8u * block < params.in_cols) {
        w = weight_block8(n, block, params.in_cols);
      }
      for (var c = 0u; c < 8u; c++) { w_tile[(8u * half + c) * 16u + i / 4u][i % 4u] = w[c / 4u][c % 4u]; }
    }`
    : `
    for (var e = lid; e < 1024u; e += 256u) {
      let i = e / 16u;
      let kk = e % 16u;
      let k = k0 + kk;
      let m = m0 + i;
      let n = n0 + i;
      var xv = 0.0;
      var wv = 0.0;
      if (m < params.rows && k < params.in_cols) { xv = x[(params.x_row_offset + m) * params.in_cols + k]; }
      if (n < params.chunk_rows && k < params.in_cols) { wv = weight_at(n, k, params.in_cols); }
      x_tile[kk * 16u + i / 4u][i % 4u] = xv;
      w_tile[kk * 16u + i / 4u][i % 4u] = wv;
    }`;
  return `${wgslPrelude({ workgroupSize: 256 })}
${matmulBindings(dtype, vectorized, storage)}
const TILE = ${TILE}u;
var<workgroup> x_tile: array<vec4f, 256>;
var<workgroup> w_tile: array<vec4f, 256>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let tiles_n = (params.chunk_rows + TILE - 1u) / TILE;
  let tiles_m = (params.rows + TILE - 1u) / TILE;
  let tile = workgroup_index(wid, nwg);
  if (tile >= tiles_n * tiles_m) { return; }
  let m0 = (tile / tiles_n) * TILE;
  let n0 = (tile % tiles_n) * TILE;
  let tx = lid % 16u;
  let ty = lid / 16u;
  var acc0 = vec4f(0.0);
  var acc1 = vec4f(0.0);
  var acc2 = vec4f(0.0);
  var acc3 = vec4f(0.0);
  for (var k0 = 0u; k0 < params.in_cols; k0 += 16u) {${load}
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let a = x_tile[kk * 16u + ty];
      let b = w_tile[kk * 16u + tx];
      acc0 += a.x * b;
      acc1 += a.y * b;
      acc2 += a.z * b;
      acc3 += a.w * b;
    }
    workgroupBarrier();
  }
  var acc = array<vec4f, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + 4u * ty + i;
    if (m >= params.rows) { break; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + 4u * tx + j;
      if (n < params.chunk_rows) { store(m, n, acc[i][j]); }
    }
  }
}
`;
}

/**
 * Compiles the matmul pipelines for this device's weight type.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { createMatmul } from "./matmul.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const matmul = await createMatmul(gpu);
 * const weight = uploadWeight(buffers, new Float32Array([1, 0, 0, 1, 1, 1]), { rows: 3, cols: 2, label: "w" });
 * const x = buffers.upload(new Float32Array([1, 2]), "x");
 * const out = buffers.storage(3 * 4, "out");
 * gpu.submit(matmul.bind(buffers, { x, weight, out, rows: 1 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 12)), new Float32Array([1, 2, 3]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createMatmul(gpu: Gpu): Promise<MatmulKernel> {
  const dtype = weightDtype(gpu);
  const [gemvVec, gemvScalar, tiledVec, tiledScalar, tiledTexture, matvecTexture] = await Promise.all([
    gpu.pipeline(`matmul_gemv_vec_${dtype}`, gemvSource(dtype, true)),
    gpu.pipeline(`matmul_gemv_${dtype}`, gemvSource(dtype, false)),
    gpu.pipeline(`matmul_tiled_vec_${dtype}`, tiledSource(dtype, true)),
    gpu.pipeline(`matmul_tiled_${dtype}`, tiledSource(dtype, false)),
    gpu.pipeline(`matmul_tiled_texture_${dtype}`, tiledSource(dtype, true, "texture")),
    createMatvecTexture(gpu),
  ]);
  return {
    bind(buffers: BufferSet, args: MatmulArgs): Dispatch[] {
      const { weight, rows } = args;
      if (weight.dtype !== dtype) {
        throw new InputError(`Cannot bind matmul: weight is ${weight.dtype}, kernel is ${dtype}`, "matmul");
      }
      const xRowOffset = args.xRowOffset ?? 0;
      const outRowOffset = args.outRowOffset ?? 0;
      checkSize(args.x, (xRowOffset + rows) * weight.cols, "x");
      checkSize(args.out, (outRowOffset + rows) * weight.rows, "out");
      if (args.bias) checkSize(args.bias, weight.rows, "bias");
      if (weight.textures && rows <= MATVEC_TEXTURE_MAX_ROWS) return matvecTexture.bind(buffers, args);
      const vectorized = weight.cols % 8 === 0;
      const gemv = rows === 1 && !weight.textures;
      const pipeline = weight.textures
        ? tiledTexture
        : gemv
        ? (vectorized ? gemvVec : gemvScalar)
        : (vectorized ? tiledVec : tiledScalar);
      return (weight.textures ?? weight.chunks).map((chunk) => {
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
        const groups = gemv
          ? Math.ceil(chunk.rows / GEMV_COLUMNS)
          : Math.ceil(chunk.rows / TILE) * Math.ceil(rows / TILE);
        // Without a bias, x stands in for the (unread) bias binding.
        const bindings = [
          buffers.uniform(params, "matmul params"),
          args.x,
          args.bias ?? args.x,
          "view" in chunk ? chunk.view : chunk.buffer,
          args.out,
        ];
        return gpu.dispatch(pipeline, bindings, grid(groups));
      });
    },
  };
}

function checkSize(buffer: GPUBuffer, floats: number, name: string): void {
  checkBufferFloats(buffer, floats, { kernel: "matmul", label: "matmul", name });
}
