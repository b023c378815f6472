/**
 * How large weight matrices live on the GPU: the one file that knows their storage.
 *
 * A {@link WeightTensor} is a matrix W [rows, cols] (torch `Linear` layout [out, in], or an
 * embedding table [vocab, hidden]) split by rows into chunks, each chunk one storage buffer that
 * fits the device's binding limit. Elements are f16 when the device has `shader-f16`, else f32.
 *
 * Kernels never index weight buffers themselves: they include the WGSL from {@link weightShader},
 * which declares the binding and the accessors (rows counted from the start of a chunk):
 * - `weight_at(row: u32, col: u32, cols: u32) -> f32` (scalar variant, any `cols`);
 * - `weight_block8(row: u32, block: u32, cols: u32) -> mat2x4f`: elements [8·block, 8·block + 8) of
 *   a row, as two vec4f columns (vectorized variant, `cols % 8 == 0`).
 * f16 elements are read as packed u32 words and widened with `unpack2x16float`, so shaders need no
 * `enable f16;` and every load moves 16 bytes in the vectorized variant.
 * @module
 */
import type { BufferSet, Gpu } from "./gpu.ts";
import { GpuError } from "../core/errors.ts";
import { f16ToFloat32, float32ToF16 } from "../core/dtype.ts";

/** Element type of a weight on the GPU. */
export type WeightDtype = "f16" | "f32";

/** One storage buffer holding weight rows [rowStart, rowStart + rows), row-major. */
export interface WeightChunk {
  buffer: GPUBuffer;
  rowStart: number;
  rows: number;
}

/** A weight matrix W [rows, cols] on the GPU, split by rows into chunks. */
export interface WeightTensor {
  rows: number;
  cols: number;
  dtype: WeightDtype;
  chunks: WeightChunk[];
}

/** Options of {@link uploadWeight}. */
export interface UploadWeightOptions {
  rows: number;
  cols: number;
  /** Buffer label (the tensor name), used in errors. */
  label: string;
  /** Largest chunk in bytes (default: the device's binding limit); tests force several chunks. */
  maxChunkBytes?: number;
}

/**
 * The element type weights get on this device: f16 when `shader-f16` was granted, else f32.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu } from "./gpu.ts";
 * import { weightDtype } from "./weights_gpu.ts";
 * const gpu = await createGpu({ allowF16: false });
 * assert.equal(weightDtype(gpu), "f32"); // f16 storage needs shader-f16
 * gpu.destroy();
 * ```
 */
export function weightDtype(gpu: Gpu): WeightDtype {
  return gpu.f16 ? "f16" : "f32";
}

/**
 * Uploads W [rows, cols] (f32 values, row-major) as a {@link WeightTensor}, converted to f16
 * (round to nearest even) when the device uses f16 weights. Throws {@link GpuError} when the
 * value count does not match the shape or one row exceeds the chunk limit.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "./gpu.ts";
 * import { uploadWeight } from "./weights_gpu.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const w = uploadWeight(buffers, new Float32Array(6 * 4), { rows: 6, cols: 4, label: "w", maxChunkBytes: 32 });
 * // 32-byte chunks hold 2 rows of 4 f32 values, or 4 rows of 4 f16 values:
 * assert.deepEqual(w.chunks.map((c) => c.rows), gpu.f16 ? [4, 2] : [2, 2, 2]);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function uploadWeight(
  buffers: BufferSet,
  values: Float32Array,
  options: UploadWeightOptions,
): WeightTensor {
  const { rows, cols, label } = options;
  if (values.length !== rows * cols) {
    throw new GpuError(
      `Cannot upload weight ${label}: ${values.length} values do not fill shape [${rows}, ${cols}]`,
      label,
    );
  }
  const dtype = weightDtype(buffers.gpu);
  const rowBytes = cols * (dtype === "f16" ? 2 : 4);
  const limit = Math.min(buffers.gpu.maxBindingBytes, options.maxChunkBytes ?? Infinity);
  const rowsPerChunk = Math.floor(limit / rowBytes);
  if (rowsPerChunk < 1) {
    throw new GpuError(
      `Cannot upload weight ${label}: one row of ${rowBytes} bytes exceeds the ${limit}-byte chunk limit`,
      label,
    );
  }
  const chunks: WeightChunk[] = [];
  for (let rowStart = 0; rowStart < rows; rowStart += rowsPerChunk) {
    const chunkRows = Math.min(rowsPerChunk, rows - rowStart);
    const part = values.subarray(rowStart * cols, (rowStart + chunkRows) * cols);
    const data = dtype === "f16" ? float32ToF16(part) : part;
    const buffer = buffers.upload(data, chunks.length === 0 ? label : `${label}#${chunks.length}`);
    chunks.push({ buffer, rowStart, rows: chunkRows });
  }
  return { rows, cols, dtype, chunks };
}

/**
 * The values a kernel reads for weights uploaded from `values`: f16-rounded for f16 weights,
 * unchanged for f32. CPU references use it to compute exactly what the GPU sees.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { storedWeightValues } from "./weights_gpu.ts";
 * assert.deepEqual(storedWeightValues(new Float32Array([0.1]), "f16"), new Float32Array([0.0999755859375])); // 0.1 rounded to f16
 * assert.deepEqual(storedWeightValues(new Float32Array([0.1]), "f32"), new Float32Array([0.1]));
 * ```
 */
export function storedWeightValues(values: Float32Array, dtype: WeightDtype): Float32Array {
  return dtype === "f16" ? f16ToFloat32(float32ToF16(values)) : values;
}

/** Options of {@link weightShader}. */
export interface WeightShaderOptions {
  /** Binding number of the weight buffer in group 0. */
  binding: number;
  /** Declare `weight_block8` (needs cols % 8 == 0) instead of `weight_at`. */
  vectorized: boolean;
}

/**
 * WGSL declaring a weight chunk at `@group(0) @binding(options.binding)` and its accessor
 * (`weight_block8` when vectorized, else `weight_at`; see the module doc).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { weightShader } from "./weights_gpu.ts";
 * const wgsl = weightShader("f16", { binding: 3, vectorized: true });
 * assert.ok(wgsl.includes("fn weight_block8"));
 * assert.ok(wgsl.includes("@binding(3)"));
 * ```
 */
export function weightShader(dtype: WeightDtype, options: WeightShaderOptions): string {
  const at = `@group(0) @binding(${options.binding}) var<storage, read> weight_data`;
  if (dtype === "f32" && options.vectorized) {
    return `${at}: array<vec4f>;
fn weight_block8(row: u32, block: u32, cols: u32) -> mat2x4f {
  let v = row * (cols >> 2u) + 2u * block;
  return mat2x4f(weight_data[v], weight_data[v + 1u]);
}
`;
  }
  if (dtype === "f32") {
    return `${at}: array<f32>;
fn weight_at(row: u32, col: u32, cols: u32) -> f32 {
  return weight_data[row * cols + col];
}
`;
  }
  if (options.vectorized) {
    return `${at}: array<vec4u>;
fn weight_block8(row: u32, block: u32, cols: u32) -> mat2x4f {
  let w = weight_data[row * (cols >> 3u) + block];
  return mat2x4f(
    vec4f(unpack2x16float(w.x), unpack2x16float(w.y)),
    vec4f(unpack2x16float(w.z), unpack2x16float(w.w)),
  );
}
`;
  }
  return `${at}: array<u32>;
fn weight_at(row: u32, col: u32, cols: u32) -> f32 {
  let e = row * cols + col;
  return unpack2x16float(weight_data[e >> 1u])[e & 1u];
}
`;
}
