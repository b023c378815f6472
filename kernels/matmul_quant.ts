/**
 * Matrix multiply with a weight matrix stored in GGML blocks, dequantized inside the kernel (the
 * weights stay in their block bytes on the GPU, never expanded):
 * out[M, N] (= or +=) x[M, K] · W[N, K]ᵀ (+ bias[N]), W in Q8_0, Q4_0, Q4_K or Q6_K.
 * CPU twin: `dequantize` (runtime/core/ggml_quants.ts) then `linear` (runtime/core/cpu_ops.ts); the
 * dequantized values are the twin's bit for bit (each is one f32 rounding of an exact product), so
 * results differ by summation order only.
 *
 * Storage ({@link uploadQuantWeight}), chosen per adapter like float weights
 * (runtime/webgpu/weight_storage.ts):
 * - `"buffer"`: W's rows of block bytes, split by rows into chunks that fit the binding limit, each
 *   chunk one storage buffer read as `array<u32>` (bytes addressed inside words). One workgroup of
 *   64 threads per (row of x, output column): threads stride over K, decode their elements, and
 *   reduce (this file).
 * - `"texture"`: the blocks repacked into storage textures (runtime/device/weights_quant_texture.ts),
 *   multiplied by kernels/matvec_quant_texture.ts, which this kernel's bind routes to.
 * Block layouts: see runtime/core/ggml_quants.ts. {@link createLinear} routes each matmul to this
 * kernel or to kernels/matmul.ts by the weight's kind.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { GpuError } from "../runtime/core/errors.ts";
import { ggmlBlock, ggmlBytes, type GgmlType } from "../runtime/core/ggml_quants.ts";
import type { WeightStorage, WeightTensor } from "../runtime/device/weights_gpu.ts";
import type { WeightTextureChunk } from "../runtime/device/weights_texture.ts";
import { uploadQuantTextures } from "../runtime/device/weights_quant_texture.ts";
import { createMatmul, type MatmulArgs } from "./matmul.ts";
import { createQuantTextureMatvec } from "./matvec_quant_texture.ts";
import { checkBufferFloats, defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** The block types this kernel dequantizes. */
export type QuantType = Extract<GgmlType, "Q8_0" | "Q4_0" | "Q4_K" | "Q6_K">;

/** A W [rows, cols] in GGML blocks on the GPU, split by rows into chunks. */
export interface QuantWeight {
  rows: number;
  cols: number;
  type: QuantType;
  /** Storage-buffer chunks of block bytes (empty when the weight lives in textures). */
  chunks: { buffer: GPUBuffer; rowStart: number; rows: number }[];
  /** Storage-texture chunks (runtime/device/weights_quant_texture.ts), when stored as textures. */
  textures?: WeightTextureChunk[];
}

/**
 * Uploads W's block bytes (rows × ggmlBytes(type, cols)) as a {@link QuantWeight}: in storage
 * buffers, or repacked into storage textures with `storage: "texture"`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { quantize } from "../runtime/core/ggml_quants.ts";
 * import { uploadQuantWeight } from "./matmul_quant.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const bytes = quantize("Q8_0", new Float32Array(3 * 64).fill(0.5));
 * const w = uploadQuantWeight(buffers, bytes, { rows: 3, cols: 64, type: "Q8_0", label: "w", maxChunkBytes: 136 });
 * assert.deepEqual(w.chunks.map((c) => c.rows), [2, 1]);
 * const t = uploadQuantWeight(buffers, bytes, { rows: 3, cols: 64, type: "Q8_0", label: "t", storage: "texture" });
 * assert.deepEqual([t.chunks.length, t.textures?.length], [0, 1]);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function uploadQuantWeight(
  buffers: BufferSet,
  bytes: Uint8Array,
  options: {
    rows: number;
    cols: number;
    type: QuantType;
    label: string;
    maxChunkBytes?: number;
    /** Where the blocks live (default "buffer"). */
    storage?: WeightStorage;
  },
): QuantWeight {
  const { rows, cols, type, label } = options;
  const rowBytes = ggmlBytes(type, cols);
  if (bytes.length !== rows * rowBytes) {
    throw new GpuError(
      `Cannot upload weight ${label}: ${bytes.length} bytes do not fill ${type} [${rows}, ${cols}]`,
      label,
    );
  }
  if (options.storage === "texture") {
    return {
      rows,
      cols,
      type,
      chunks: [],
      textures: uploadQuantTextures(buffers, bytes, { rows, cols, type, label }),
    };
  }
  const limit = Math.min(buffers.gpu.maxBindingBytes, options.maxChunkBytes ?? Infinity);
  const rowsPerChunk = Math.floor(limit / rowBytes);
  if (rowsPerChunk < 1) {
    throw new GpuError(
      `Cannot upload weight ${label}: one row of ${rowBytes} bytes exceeds the chunk limit`,
      label,
    );
  }
  const chunks: QuantWeight["chunks"] = [];
  for (let start = 0; start < rows; start += rowsPerChunk) {
    const chunkRows = Math.min(rowsPerChunk, rows - start);
    const part = bytes.subarray(start * rowBytes, (start + chunkRows) * rowBytes);
    const padded = new Uint8Array(Math.ceil(part.length / 4) * 4);
    padded.set(part);
    chunks.push({
      buffer: buffers.upload(padded, chunks.length === 0 ? label : `${label}#${chunks.length}`),
      rowStart: start,
      rows: chunkRows,
    });
  }
  return { rows, cols, type, chunks };
}

/** WGSL: `element(row_byte, k) -> f32`, the k-th value of the row whose blocks start at row_byte. */
const ELEMENT: Record<QuantType, string> = {
  Q8_0: `
fn element(row_byte: u32, k: u32) -> f32 {
  let base = row_byte + (k / 32u) * 34u;
  return half_at(base) * f32(i8_at(base + 2u + k % 32u));
}`,
  Q4_0: `
fn element(row_byte: u32, k: u32) -> f32 {
  let base = row_byte + (k / 32u) * 18u;
  let j = k % 32u;
  let byte = byte_at(base + 2u + j % 16u);
  let q = select(byte >> 4u, byte & 15u, j < 16u);
  return half_at(base) * (f32(q) - 8.0);
}`,
  Q4_K: `
fn element(row_byte: u32, k: u32) -> f32 {
  let base = row_byte + (k / 256u) * 144u;
  let j = k % 256u;
  let sub = j / 32u;
  let s = base + 4u;
  var sc: u32;
  var m: u32;
  if (sub < 4u) {
    sc = byte_at(s + sub) & 63u;
    m = byte_at(s + sub + 4u) & 63u;
  } else {
    sc = (byte_at(s + sub + 4u) & 15u) | ((byte_at(s + sub - 4u) >> 6u) << 4u);
    m = (byte_at(s + sub + 4u) >> 4u) | ((byte_at(s + sub) >> 6u) << 4u);
  }
  let byte = byte_at(base + 16u + (sub / 2u) * 32u + j % 32u);
  let q = select(byte >> 4u, byte & 15u, sub % 2u == 0u);
  return (half_at(base) * f32(sc)) * f32(q) - half_at(base + 2u) * f32(m);
}`,
  Q6_K: `
fn element(row_byte: u32, k: u32) -> f32 {
  let base = row_byte + (k / 256u) * 210u;
  let j = k % 256u;
  let half = j / 128u;
  let part = (j % 128u) / 32u;
  let l = j % 32u;
  let low_byte = byte_at(base + half * 64u + l + (part & 1u) * 32u);
  let low = select(low_byte >> 4u, low_byte & 15u, part < 2u);
  let high = (byte_at(base + 128u + half * 32u + l) >> (2u * part)) & 3u;
  let scale = f32(i8_at(base + 192u + half * 8u + l / 16u + 2u * part));
  return (half_at(base + 208u) * scale) * (f32(low | (high << 4u)) - 32.0);
}`,
};

/** Parameters of one dispatch (one weight chunk). */
const PARAMS = defineUniforms("matmul_quant", {
  rows: "u32", // M
  outCols: "u32", // N (all chunks)
  inCols: "u32", // K
  chunkRows: "u32", // weight rows in this chunk
  chunkStart: "u32", // first weight row of this chunk
  rowBytes: "u32", // bytes of one weight row
  flags: "u32", // bit 0: accumulate, bit 1: bias
  xRowOffset: "u32",
  outRowOffset: "u32",
});

/** WGSL for `type`: one workgroup per (row m of x, column n of the chunk), lanes striding over K. */
function source(type: QuantType): string {
  return `${wgslPrelude({ workgroupSize: 64, reductions: ["sum"] })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> blocks: array<u32>;

fn byte_at(b: u32) -> u32 { return (blocks[b >> 2u] >> ((b & 3u) * 8u)) & 255u; }
fn i8_at(b: u32) -> i32 { return (i32(byte_at(b)) << 24u) >> 24u; }
fn half_at(b: u32) -> f32 { return unpack2x16float(byte_at(b) | (byte_at(b + 1u) << 8u)).x; }
${ELEMENT[type]}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let item = workgroup_index(wid, nwg);
  if (item >= params.rows * params.chunk_rows) { return; }
  let m = item / params.chunk_rows;
  let n = item % params.chunk_rows;
  let x_base = (params.x_row_offset + m) * params.in_cols;
  let row_byte = n * params.row_bytes;
  var acc = 0.0;
  for (var k = lid; k < params.in_cols; k += WORKGROUP_SIZE) {
    acc += x[x_base + k] * element(row_byte, k);
  }
  let total = workgroup_sum(lid, acc);
  if (lid == 0u) {
    let column = params.chunk_start + n;
    let at = (params.out_row_offset + m) * params.out_cols + column;
    var v = total;
    if ((params.flags & 2u) != 0u) { v += bias[column]; }
    if ((params.flags & 1u) != 0u) { v += out[at]; }
    out[at] = v;
  }
}
`;
}

/** Arguments of {@link QuantMatmulKernel.bind}. */
export interface QuantMatmulArgs {
  /** f32 [xRowOffset + rows, K]. */
  x: GPUBuffer;
  weight: QuantWeight;
  /** f32 [N], optional. */
  bias?: GPUBuffer;
  /** f32 [outRowOffset + rows, N]; a different buffer from x. */
  out: GPUBuffer;
  /** M: rows of x multiplied. */
  rows: number;
  accumulate?: boolean;
  xRowOffset?: number;
  outRowOffset?: number;
}

/** Compiled quantized matmul pipelines, one per block type. */
export interface QuantMatmulKernel {
  /** Dispatches computing `args` (one per weight chunk). */
  bind(buffers: BufferSet, args: QuantMatmulArgs): Dispatch[];
}

/**
 * Compiles the quantized matmul pipelines (storage-buffer blocks here; texture-stored weights go
 * to kernels/matvec_quant_texture.ts).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { quantize } from "../runtime/core/ggml_quants.ts";
 * import { createQuantMatmul, uploadQuantWeight } from "./matmul_quant.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const matmul = await createQuantMatmul(gpu);
 * const w = new Float32Array(2 * 32).fill(127); // d = 127 / 127 = 1, q = 127: exact in Q8_0
 * const weight = uploadQuantWeight(buffers, quantize("Q8_0", w), { rows: 2, cols: 32, type: "Q8_0", label: "w" });
 * const x = buffers.upload(new Float32Array(32).fill(0.5), "x");
 * const out = buffers.storage(2 * 4, "out");
 * gpu.submit(matmul.bind(buffers, { x, weight, out, rows: 1 }));
 * assert.deepEqual([...new Float32Array(await gpu.read(out, 0, 8))], [2032, 2032]);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createQuantMatmul(gpu: Gpu): Promise<QuantMatmulKernel> {
  const types: QuantType[] = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"];
  const [pipelines, textureMatvec] = await Promise.all([
    Promise.all(types.map((type) => gpu.pipeline(`matmul_${type}`, source(type)))),
    createQuantTextureMatvec(gpu),
  ]);
  return {
    bind(buffers: BufferSet, args: QuantMatmulArgs): Dispatch[] {
      const { weight, rows } = args;
      if (weight.textures) {
        return textureMatvec.bind(buffers, { ...args, weight: { ...weight, textures: weight.textures } });
      }
      const pipeline = pipelines[types.indexOf(weight.type)];
      if (!pipeline || weight.cols % ggmlBlock(weight.type).elements !== 0) {
        throw new GpuError(
          `Cannot bind quantized matmul: weight type ${weight.type} [${weight.cols}]`,
          "matmul_quant",
        );
      }
      const xRowOffset = args.xRowOffset ?? 0, outRowOffset = args.outRowOffset ?? 0;
      checkSize(args.x, (xRowOffset + rows) * weight.cols, "x");
      checkSize(args.out, (outRowOffset + rows) * weight.rows, "out");
      if (args.bias) checkSize(args.bias, weight.rows, "bias");
      const flags = (args.accumulate ? 1 : 0) | (args.bias ? 2 : 0);
      const rowBytes = ggmlBytes(weight.type, weight.cols);
      return weight.chunks.map((chunk) => {
        const params = buffers.uniform(
          packUniforms(PARAMS, {
            rows,
            outCols: weight.rows,
            inCols: weight.cols,
            chunkRows: chunk.rows,
            chunkStart: chunk.rowStart,
            rowBytes,
            flags,
            xRowOffset,
            outRowOffset,
          }),
          "matmul_quant params",
        );
        const bindings = [params, args.x, args.bias ?? args.x, args.out, chunk.buffer];
        return gpu.dispatch(pipeline, bindings, grid(rows * chunk.rows));
      });
    },
  };
}

function checkSize(buffer: GPUBuffer, floats: number, name: string): void {
  checkBufferFloats(buffer, floats, { kernel: "matmul_quant", label: "quantized matmul", name });
}

/** A weight matrix on the GPU: float storage (weights_gpu.ts) or GGML blocks ({@link QuantWeight}). */
export type GpuMatrix = WeightTensor | QuantWeight;

/** Arguments of {@link LinearKernel.bind}: {@link MatmulArgs} with either kind of weight. */
export type LinearArgs = Omit<MatmulArgs, "weight"> & { weight: GpuMatrix };

/** One matmul entry point for both weight kinds. */
export interface LinearKernel {
  /** Dispatches computing `args` with the float or the quantized kernel, by the weight's kind. */
  bind(buffers: BufferSet, args: LinearArgs): Dispatch[];
}

/**
 * Compiles the float and the quantized matmul and routes each bind by the weight's kind.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { quantize } from "../runtime/core/ggml_quants.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { createLinear, uploadQuantWeight } from "./matmul_quant.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const linear = await createLinear(gpu);
 * const ones = new Float32Array(32).fill(1);
 * const x = buffers.upload(ones, "x");
 * const out = buffers.storage(4, "out");
 * for (const weight of [
 *   uploadWeight(buffers, ones, { rows: 1, cols: 32, label: "float" }),
 *   uploadQuantWeight(buffers, quantize("Q4_0", ones), { rows: 1, cols: 32, type: "Q4_0", label: "q4" }),
 * ]) {
 *   gpu.submit(linear.bind(buffers, { x, weight, out, rows: 1 }));
 *   assert.deepEqual([...new Float32Array(await gpu.read(out, 0, 4))], [32]);
 * }
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createLinear(gpu: Gpu): Promise<LinearKernel> {
  const [float, quant] = await Promise.all([createMatmul(gpu), createQuantMatmul(gpu)]);
  return {
    bind(buffers: BufferSet, args: LinearArgs): Dispatch[] {
      const weight = args.weight;
      return "type" in weight
        ? quant.bind(buffers, { ...args, weight })
        : float.bind(buffers, { ...args, weight });
    },
  };
}
