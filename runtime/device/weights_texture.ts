/**
 * Weight matrices stored in storage textures: the texel layout, its upload and the WGSL that
 * reads it. runtime/device/weights_gpu.ts chooses between this and storage buffers; kernels reach
 * it only through the accessors it declares.
 *
 * Layout of W [rows, cols] (cols % 8 == 0) in `rgba32uint` texels, 16 bytes each: a K slice is
 * 8 consecutive elements of a row, `TEXELS_PER_SLICE` texels (f16: 1 texel of 8 halves, packed
 * two per u32, low half first; f32: 2 texels of 4 floats as bits). Rows go in blocks of
 * {@link ROW_BLOCK}; within a block, slice s of its 64 rows sits together:
 *
 *   texel(row, s, t) = ((row / 64) · (cols / 8) · 64 + s · 64 + row % 64) · TEXELS_PER_SLICE + t
 *
 * so 64 rows reading the same slice read adjacent texels. The linear texel index i lives at
 * (i % {@link TEXTURE_WIDTH}, i / TEXTURE_WIDTH). Rows past `rows` (padding to a whole block)
 * are zero. A matrix larger than one texture is split by rows (whole blocks) into chunks.
 * @module
 */
import { GpuError } from "../core/errors.ts";
import { float32ToF16 } from "../core/dtype.ts";
import type { BufferSet } from "./gpu.ts";

/** Texels per texture row. */
export const TEXTURE_WIDTH = 8192;
/** Rows per layout block. */
export const ROW_BLOCK = 64;

/** One texture holding weight rows [rowStart, rowStart + rows). */
export interface WeightTextureChunk {
  texture: GPUTexture;
  view: GPUTextureView;
  rowStart: number;
  rows: number;
}

/**
 * Texels one 8-wide K slice of one row takes: 1 for f16, 2 for f32.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { texelsPerSlice } from "./weights_texture.ts";
 * assert.deepEqual([texelsPerSlice("f16"), texelsPerSlice("f32")], [1, 2]); // 16-byte texels
 * ```
 */
export function texelsPerSlice(dtype: "f16" | "f32"): number {
  return dtype === "f16" ? 1 : 2;
}

/**
 * Packs W [rows, cols] (f32 values, row-major; f16-rounded when `dtype` is f16) into texels of
 * the module's layout: u32 words, 4 per texel, whole texture rows (zero-padded).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { packWeightTexels, TEXTURE_WIDTH } from "./weights_texture.ts";
 * const w = new Float32Array(2 * 16).map((_, i) => i); // W [2, 16]
 * const words = packWeightTexels(w, { rows: 2, cols: 16, dtype: "f32" });
 * assert.equal(words.length, TEXTURE_WIDTH * 4); // one texture row
 * const f = new Float32Array(words.buffer);
 * // row 0 slice 0 (texels 0, 1), then row 1 slice 0 (texels 2, 3): rows of a block sit together
 * assert.deepEqual([...f.subarray(0, 12)], [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19]);
 * // slice 1 of row 0 starts after the 64-row block's slice 0: texel 128
 * assert.equal(f[128 * 4], 8);
 * ```
 */
export function packWeightTexels(
  values: Float32Array,
  options: { rows: number; cols: number; dtype: "f16" | "f32" },
): Uint32Array<ArrayBuffer> {
  const { rows, cols, dtype } = options;
  const slices = cols / 8, perSlice = texelsPerSlice(dtype);
  const texels = Math.ceil(rows / ROW_BLOCK) * ROW_BLOCK * slices * perSlice;
  const words = new Uint32Array(Math.ceil(texels / TEXTURE_WIDTH) * TEXTURE_WIDTH * 4);
  const source = dtype === "f16"
    ? new Uint32Array(float32ToF16(values).buffer, 0, values.length / 2) // 2 halves per word
    : new Uint32Array(values.buffer, values.byteOffset, values.length);
  const wordsPerSlice = 4 * perSlice; // f16: 4 words of 2 halves; f32: 8 words of 1 float
  for (let row = 0; row < rows; row++) {
    const block = Math.floor(row / ROW_BLOCK), inBlock = row % ROW_BLOCK;
    const rowWords = row * slices * wordsPerSlice;
    for (let s = 0; s < slices; s++) {
      const texel = (block * slices * ROW_BLOCK + s * ROW_BLOCK + inBlock) * perSlice;
      const from = rowWords + s * wordsPerSlice;
      words.set(source.subarray(from, from + wordsPerSlice), texel * 4);
    }
  }
  return words;
}

/**
 * Uploads W [rows, cols] into textures of the module's layout, split by whole row blocks so
 * each texture fits the device's largest 2D texture. Throws {@link GpuError} when cols is not a
 * multiple of 8 or the value count does not match the shape.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "./gpu.ts";
 * import { uploadWeightTextures } from "./weights_texture.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const chunks = uploadWeightTextures(buffers, new Float32Array(100 * 512), {
 *   rows: 100, cols: 512, dtype: "f32", label: "w", maxTexelRows: 1,
 * });
 * // one texture row of 8192 texels holds one block of 64 rows at 512 f32 columns
 * assert.deepEqual(chunks.map((c) => [c.rowStart, c.rows]), [[0, 64], [64, 36]]);
 * assert.throws(() => uploadWeightTextures(buffers, new Float32Array(12), { rows: 2, cols: 6, dtype: "f32", label: "w" }));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function uploadWeightTextures(
  buffers: BufferSet,
  values: Float32Array,
  options: { rows: number; cols: number; dtype: "f16" | "f32"; label: string; maxTexelRows?: number },
): WeightTextureChunk[] {
  const { rows, cols, dtype, label } = options;
  if (cols % 8 !== 0 || values.length !== rows * cols) {
    throw new GpuError(
      `Cannot upload weight ${label} as a texture: shape [${rows}, ${cols}] needs cols % 8 == 0 and ${values.length} values to fill it`,
      label,
    );
  }
  const device = buffers.gpu.device;
  const maxTexelRows = Math.min(device.limits.maxTextureDimension2D, options.maxTexelRows ?? Infinity);
  const texelsPerBlock = ROW_BLOCK * (cols / 8) * texelsPerSlice(dtype);
  const blocksPerChunk = Math.floor((maxTexelRows * TEXTURE_WIDTH) / texelsPerBlock);
  if (blocksPerChunk < 1) {
    throw new GpuError(`Cannot upload weight ${label} as a texture: a row block exceeds one texture`, label);
  }
  const chunks: WeightTextureChunk[] = [];
  for (let rowStart = 0; rowStart < rows; rowStart += blocksPerChunk * ROW_BLOCK) {
    const chunkRows = Math.min(blocksPerChunk * ROW_BLOCK, rows - rowStart);
    const part = values.subarray(rowStart * cols, (rowStart + chunkRows) * cols);
    const words = packWeightTexels(part, { rows: chunkRows, cols, dtype });
    const chunkLabel = chunks.length === 0 ? label : `${label}#${chunks.length}`;
    chunks.push({ ...uploadTexels(buffers, words, chunkLabel), rowStart, rows: chunkRows });
  }
  return chunks;
}

/**
 * Uploads texels (u32 words, 4 per texel, whole rows of {@link TEXTURE_WIDTH} texels) into one
 * new `rgba32uint` storage texture; the texel layout is the caller's.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "./gpu.ts";
 * import { TEXTURE_WIDTH, uploadTexels } from "./weights_texture.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const { texture } = uploadTexels(buffers, new Uint32Array(2 * TEXTURE_WIDTH * 4), "w");
 * assert.deepEqual([texture.width, texture.height], [TEXTURE_WIDTH, 2]);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function uploadTexels(
  buffers: BufferSet,
  words: Uint32Array<ArrayBuffer>,
  label: string,
): { texture: GPUTexture; view: GPUTextureView } {
  const height = words.length / (TEXTURE_WIDTH * 4);
  const texture = buffers.texture({
    label,
    size: [TEXTURE_WIDTH, height],
    format: "rgba32uint",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
  }, words.byteLength);
  buffers.gpu.device.queue.writeTexture({ texture }, words, { bytesPerRow: TEXTURE_WIDTH * 16 }, [
    TEXTURE_WIDTH,
    height,
  ]);
  return { texture, view: texture.createView() };
}

/**
 * WGSL declaring a weight texture at `@group(0) @binding(binding)` and its accessors:
 * `weight_texel(i: u32) -> vec4u` (linear texel i), `weight_slice(texel: u32) -> mat2x4f` (the 8
 * elements of the slice starting at that texel) and `weight_block8(row, block, cols) -> mat2x4f`
 * (the same contract as the storage-buffer accessor of runtime/device/weights_gpu.ts), and the
 * constant `WEIGHT_TEXELS_PER_SLICE`. A kernel reading several weight textures gives each a `name`
 * (snake_case), which replaces `weight` in every one of these (`up_slice`, `UP_TEXELS_PER_SLICE`).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { weightTextureShader } from "./weights_texture.ts";
 * const wgsl = weightTextureShader("f16", 3);
 * assert.ok(wgsl.includes("@group(0) @binding(3) var weight_tex: texture_storage_2d<rgba32uint, read>;"));
 * assert.ok(wgsl.includes("fn weight_block8(row: u32, block: u32, cols: u32) -> mat2x4f"));
 * const up = weightTextureShader("f32", 4, "up");
 * assert.ok(up.includes("var up_tex: texture_storage_2d<rgba32uint, read>;"));
 * assert.ok(up.includes("const UP_TEXELS_PER_SLICE = 2u;") && up.includes("fn up_slice(texel: u32) -> mat2x4f"));
 * ```
 */
export function weightTextureShader(dtype: "f16" | "f32", binding: number, name = "weight"): string {
  const slice = dtype === "f16"
    ? `  let w = ${name}_texel(texel);
  return mat2x4f(
    vec4f(unpack2x16float(w.x), unpack2x16float(w.y)),
    vec4f(unpack2x16float(w.z), unpack2x16float(w.w)),
  );`
    : `  return mat2x4f(bitcast<vec4f>(${name}_texel(texel)), bitcast<vec4f>(${name}_texel(texel + 1u)));`;
  const per = `${name.toUpperCase()}_TEXELS_PER_SLICE`;
  return `@group(0) @binding(${binding}) var ${name}_tex: texture_storage_2d<rgba32uint, read>;
const ${per} = ${texelsPerSlice(dtype)}u;
fn ${name}_texel(i: u32) -> vec4u {
  return textureLoad(${name}_tex, vec2u(i % ${TEXTURE_WIDTH}u, i / ${TEXTURE_WIDTH}u));
}
fn ${name}_slice(texel: u32) -> mat2x4f {
${slice}
}
fn ${name}_block8(row: u32, block: u32, cols: u32) -> mat2x4f {
  let slot = (row / ${ROW_BLOCK}u) * (cols >> 3u) * ${ROW_BLOCK}u + block * ${ROW_BLOCK}u + row % ${ROW_BLOCK}u;
  return ${name}_slice(slot * ${per});
}
`;
}
