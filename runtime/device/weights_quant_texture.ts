/**
 * Quantized weight matrices (GGML blocks) stored in storage textures: the texel layout, the repack
 * of a block stream into it and its upload, and the WGSL that declares the texture. The bytes are
 * only moved, never decoded: dequantization happens inside kernels/matvec_quant_texture.ts, whose
 * CPU twin is `dequantize` (runtime/core/ggml_quants.ts).
 *
 * W [rows, cols] of one block type (`E` elements per block, `cols % E == 0`) goes in blocks of
 * {@link ROW_BLOCK} rows, like the float texture layout (runtime/device/weights_texture.ts). For
 * each row block and each K-block `b` (elements [E·b, E·b + E) of every row) one segment of
 * `segmentTexels` texels holds, in this order:
 * - `headerTexels` texels (0 or 8): texel l holds the f16 scale `d` of the block's rows
 *   8l .. 8l + 7 (row 8l + j in half j, two halves per u32, low half first), so the lane that owns
 *   those 8 rows reads their scales in one texel;
 * - 64 rows × `bodyTexels` texels: row r's block bytes without that `d`, in their stored order, at
 *   texel header + r · bodyTexels.
 *
 * | type | E   | block bytes               | header | body                                   |
 * | ---- | --- | ------------------------- | ------ | -------------------------------------- |
 * | Q8_0 | 32  | d · q[32]                 | d      | 2 texels: q[32] (i8)                   |
 * | Q4_0 | 32  | d · qs[16]                | d      | 1 texel: qs[16]                        |
 * | Q4_K | 256 | d · dmin · scales · qs    | none   | 9 texels: the whole 144-byte block     |
 * | Q6_K | 256 | ql · qh · scales · d      | d      | 13 texels: ql[128] · qh[64] · scales   |
 *
 *   segment(rowBlock, b) = (rowBlock · cols / E + b) · segmentTexels
 *
 * Total bytes equal the block bytes (rows padded to a whole row block, zero: a zero block decodes to
 * zeros); the linear texel index i lives at (i % TEXTURE_WIDTH, i / TEXTURE_WIDTH). A matrix larger
 * than one texture is split by whole row blocks into chunks.
 * @module
 */
import { GpuError } from "../core/errors.ts";
import { ggmlBlock, ggmlBytes, type GgmlType } from "../core/ggml_quants.ts";
import type { BufferSet } from "./gpu.ts";
import { ROW_BLOCK, TEXTURE_WIDTH, uploadTexels, type WeightTextureChunk } from "./weights_texture.ts";

/** The block types stored in quantized textures. */
export type QuantTextureType = Extract<GgmlType, "Q8_0" | "Q4_0" | "Q4_K" | "Q6_K">;

/** Where one block type's bytes go in a segment (see the module doc). */
export interface QuantTextureLayout {
  /** Elements per block (E). */
  blockElements: number;
  /** Byte offset of the f16 `d` moved to the header, or null when the block stays whole. */
  scaleByte: number | null;
  /** Header texels per segment: 8 (one per lane of 8 rows) or 0. */
  headerTexels: number;
  /** Texels of one row's block bytes without `d`. */
  bodyTexels: number;
  /** headerTexels + 64 · bodyTexels. */
  segmentTexels: number;
}

const SCALE_BYTE: Record<QuantTextureType, number | null> = { Q8_0: 0, Q4_0: 0, Q4_K: null, Q6_K: 208 };

/**
 * The segment layout of a block type.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { quantTextureLayout } from "./weights_quant_texture.ts";
 * const q8 = quantTextureLayout("Q8_0");
 * assert.deepEqual([q8.headerTexels, q8.bodyTexels, q8.segmentTexels], [8, 2, 136]);
 * // 136 texels of 16 bytes hold 64 blocks of 34 bytes: no padding
 * assert.equal(q8.segmentTexels * 16, 64 * 34);
 * assert.equal(quantTextureLayout("Q4_K").segmentTexels * 16, 64 * 144);
 * ```
 */
export function quantTextureLayout(type: QuantTextureType): QuantTextureLayout {
  const block = ggmlBlock(type);
  const scaleByte = SCALE_BYTE[type];
  const headerTexels = scaleByte === null ? 0 : ROW_BLOCK / 8;
  const bodyTexels = (block.bytes - (scaleByte === null ? 0 : 2)) / 16;
  return {
    blockElements: block.elements,
    scaleByte,
    headerTexels,
    bodyTexels,
    segmentTexels: headerTexels + ROW_BLOCK * bodyTexels,
  };
}

/**
 * Repacks W's block bytes (rows × ggmlBytes(type, cols), row-major) into the module's texel
 * layout: u32 words, 4 per texel, whole texture rows (zero-padded). Bytes are moved, not decoded.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { packQuantTexels } from "./weights_quant_texture.ts";
 * const bytes = new Uint8Array(2 * 34).map((_, i) => i); // Q8_0 W [2, 32]: two blocks
 * const words = packQuantTexels(bytes, { rows: 2, cols: 32, type: "Q8_0" });
 * const b = new Uint8Array(words.buffer);
 * // header texel 0: d of row 0 (bytes 0, 1), then d of row 1 (bytes 34, 35)
 * assert.deepEqual([...b.subarray(0, 4)], [0, 1, 34, 35]);
 * // body of row 0 at texel 8, of row 1 at texel 10: the 32 codes of each
 * assert.deepEqual([b[8 * 16], b[8 * 16 + 31], b[10 * 16]], [2, 33, 36]);
 * ```
 */
export function packQuantTexels(
  bytes: Uint8Array,
  options: { rows: number; cols: number; type: QuantTextureType },
): Uint32Array<ArrayBuffer> {
  const { rows, cols, type } = options;
  const layout = quantTextureLayout(type), block = ggmlBlock(type);
  const kBlocks = cols / layout.blockElements;
  const rowBlocks = Math.ceil(rows / ROW_BLOCK);
  const texels = rowBlocks * kBlocks * layout.segmentTexels;
  const words = new Uint32Array(Math.ceil(texels / TEXTURE_WIDTH) * TEXTURE_WIDTH * 4);
  const out = new Uint8Array(words.buffer);
  const { scaleByte, headerTexels, bodyTexels, segmentTexels } = layout;
  const bodyBytes = bodyTexels * 16;
  for (let row = 0; row < rows; row++) {
    const rowBlock = Math.floor(row / ROW_BLOCK), inBlock = row % ROW_BLOCK;
    for (let b = 0; b < kBlocks; b++) {
      const from = (row * kBlocks + b) * block.bytes;
      const segment = (rowBlock * kBlocks + b) * segmentTexels * 16;
      const body = segment + (headerTexels + inBlock * bodyTexels) * 16;
      if (scaleByte === null) {
        out.set(bytes.subarray(from, from + bodyBytes), body);
        continue;
      }
      // header texel inBlock / 8, half inBlock % 8: 2 bytes each
      const header = segment + inBlock * 2;
      out[header] = bytes[from + scaleByte];
      out[header + 1] = bytes[from + scaleByte + 1];
      const start = scaleByte === 0 ? from + 2 : from; // the body is the block without d
      out.set(bytes.subarray(start, start + bodyBytes), body);
    }
  }
  return words;
}

/**
 * Uploads W's block bytes into textures of the module's layout, split by whole row blocks so each
 * texture fits the device's largest 2D texture (or `maxTexelRows` texture rows, for tests). Throws
 * {@link GpuError} when the bytes do not fill [rows, cols] of `type` or cols is not a whole
 * number of blocks.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "./gpu.ts";
 * import { quantize } from "../core/ggml_quants.ts";
 * import { uploadQuantTextures } from "./weights_quant_texture.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const bytes = quantize("Q4_K", new Float32Array(1000 * 256).fill(0.25));
 * // a row block of Q4_K [·, 256] takes 576 texels: 14 fit one texture row of 8192
 * const chunks = uploadQuantTextures(buffers, bytes, { rows: 1000, cols: 256, type: "Q4_K", label: "w", maxTexelRows: 1 });
 * assert.deepEqual(chunks.map((c) => [c.rowStart, c.rows]), [[0, 896], [896, 104]]);
 * assert.throws(() => uploadQuantTextures(buffers, bytes, { rows: 999, cols: 256, type: "Q4_K", label: "w" }));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function uploadQuantTextures(
  buffers: BufferSet,
  bytes: Uint8Array,
  options: { rows: number; cols: number; type: QuantTextureType; label: string; maxTexelRows?: number },
): WeightTextureChunk[] {
  const { rows, cols, type, label } = options;
  const layout = quantTextureLayout(type);
  const rowBytes = cols % layout.blockElements === 0 ? ggmlBytes(type, cols) : NaN;
  if (bytes.length !== rows * rowBytes) {
    throw new GpuError(
      `Cannot upload weight ${label} as a texture: ${bytes.length} bytes do not fill ${type} [${rows}, ${cols}]`,
      label,
    );
  }
  const maxTexelRows = Math.min(
    buffers.gpu.device.limits.maxTextureDimension2D,
    options.maxTexelRows ?? Infinity,
  );
  const texelsPerRowBlock = (cols / layout.blockElements) * layout.segmentTexels;
  const blocksPerChunk = Math.floor((maxTexelRows * TEXTURE_WIDTH) / texelsPerRowBlock);
  if (blocksPerChunk < 1) {
    throw new GpuError(`Cannot upload weight ${label} as a texture: a row block exceeds one texture`, label);
  }
  const chunks: WeightTextureChunk[] = [];
  for (let rowStart = 0; rowStart < rows; rowStart += blocksPerChunk * ROW_BLOCK) {
    const chunkRows = Math.min(blocksPerChunk * ROW_BLOCK, rows - rowStart);
    const part = bytes.subarray(rowStart * rowBytes, (rowStart + chunkRows) * rowBytes);
    const words = packQuantTexels(part, { rows: chunkRows, cols, type });
    const chunkLabel = chunks.length === 0 ? label : `${label}#${chunks.length}`;
    chunks.push({ ...uploadTexels(buffers, words, chunkLabel), rowStart, rows: chunkRows });
  }
  return chunks;
}

/**
 * WGSL declaring a quantized weight texture at `@group(0) @binding(binding)`, its segment
 * constants (`QUANT_BLOCK_ELEMENTS`, `QUANT_HEADER_TEXELS`, `QUANT_BODY_TEXELS`,
 * `QUANT_SEGMENT_TEXELS`) and `quant_texel(i: u32) -> vec4u` (linear texel i).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { quantTextureShader } from "./weights_quant_texture.ts";
 * const wgsl = quantTextureShader("Q6_K", 3);
 * assert.ok(wgsl.includes("@group(0) @binding(3) var quant_tex: texture_storage_2d<rgba32uint, read>;"));
 * assert.ok(wgsl.includes("const QUANT_SEGMENT_TEXELS = 840u;"));
 * ```
 */
export function quantTextureShader(type: QuantTextureType, binding: number): string {
  const layout = quantTextureLayout(type);
  return `@group(0) @binding(${binding}) var quant_tex: texture_storage_2d<rgba32uint, read>;
const QUANT_BLOCK_ELEMENTS = ${layout.blockElements}u;
const QUANT_HEADER_TEXELS = ${layout.headerTexels}u;
const QUANT_BODY_TEXELS = ${layout.bodyTexels}u;
const QUANT_SEGMENT_TEXELS = ${layout.segmentTexels}u;
fn quant_texel(i: u32) -> vec4u {
  return textureLoad(quant_tex, vec2u(i % ${TEXTURE_WIDTH}u, i / ${TEXTURE_WIDTH}u));
}
`;
}
