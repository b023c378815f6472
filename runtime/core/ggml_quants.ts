/**
 * GGML tensor element types (as GGUF files store them): their block layouts, dequantization to f32
 * (the CPU twin of every GPU dequantizing kernel) and quantization from f32. Pure TypeScript.
 *
 * Block layouts (little-endian; `f16` is an IEEE half; a row of `cols` elements is `cols / block`
 * blocks, so `cols` must be a multiple of the block size):
 * - `F32` (id 0), `F16` (id 1), `BF16` (id 30): one element per "block".
 * - `Q8_0` (id 8), 32 elements in 34 bytes: `f16 d | i8 q[32]`; x[j] = d·q[j].
 * - `Q4_0` (id 2), 32 elements in 18 bytes: `f16 d | u8 qs[16]`; x[j] = d·((qs[j] & 15) − 8),
 *   x[j + 16] = d·((qs[j] >> 4) − 8) for j < 16.
 * - `Q4_K` (id 12), 256 elements in 144 bytes: `f16 d | f16 dmin | u8 scales[12] | u8 qs[128]`;
 *   eight sub-blocks of 32 with 6-bit scale `sc` and min `m` packed in `scales` (sub-block j < 4:
 *   sc = scales[j] & 63, m = scales[j + 4] & 63; j ≥ 4: sc = (scales[j + 4] & 15) | (scales[j − 4] >> 6) << 4,
 *   m = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4); sub-blocks 2i and 2i + 1 share qs[32i .. 32i + 32)
 *   (low nibbles, then high nibbles); x = d·sc·q − dmin·m.
 * - `Q6_K` (id 14), 256 elements in 210 bytes: `u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d`; in each
 *   half of 128 elements, element l + 32·k (l < 32, k < 4) takes 4 low bits from ql (byte l for k even,
 *   l + 32 for k odd; low nibble for k < 2, high for k ≥ 2) and 2 high bits from qh[l] >> 2k;
 *   x = d·scales[16-element group]·(q − 32).
 *
 * Every dequantized value is computed exactly as the reference C code does in f32 (the products
 * of an f16 scale and small integers are exact, so the result is one rounding of the exact value).
 *
 * Quantizers: {@link quantize} of `Q8_0` and `Q4_0` reproduces the reference quantizer bit for bit
 * (round half away from zero, the scale from the largest magnitude). `Q4_K` and `Q6_K` use a plain
 * min/max fit per sub-block (no search for the best scale): valid blocks of the same layout,
 * slightly less accurate than the reference's search.
 * @module
 */
import { f16ToFloat32, float32ToBf16, float32ToF16 } from "./dtype.ts";

/** A GGML element type that dynllava reads and writes. */
export type GgmlType = "F32" | "F16" | "BF16" | "Q8_0" | "Q4_0" | "Q4_K" | "Q6_K";

/** GGML's numeric id of each type (the `type` field of a GGUF tensor info). */
export const GGML_TYPE_IDS: Readonly<Record<GgmlType, number>> = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 8,
  Q4_K: 12,
  Q6_K: 14,
  BF16: 30,
};

/** Elements and bytes of one block of a type. */
export interface GgmlBlock {
  elements: number;
  bytes: number;
}

const BLOCKS: Record<GgmlType, GgmlBlock> = {
  F32: { elements: 1, bytes: 4 },
  F16: { elements: 1, bytes: 2 },
  BF16: { elements: 1, bytes: 2 },
  Q8_0: { elements: 32, bytes: 34 },
  Q4_0: { elements: 32, bytes: 18 },
  Q4_K: { elements: 256, bytes: 144 },
  Q6_K: { elements: 256, bytes: 210 },
};

/**
 * The type of a GGML type id, or undefined for ids dynllava does not read.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ggmlTypeOfId } from "./ggml_quants.ts";
 * assert.equal(ggmlTypeOfId(8), "Q8_0");
 * assert.equal(ggmlTypeOfId(3), undefined); // Q4_1: not supported
 * ```
 */
export function ggmlTypeOfId(id: number): GgmlType | undefined {
  return (Object.keys(GGML_TYPE_IDS) as GgmlType[]).find((type) => GGML_TYPE_IDS[type] === id);
}

/**
 * Block size of a type.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ggmlBlock } from "./ggml_quants.ts";
 * assert.deepEqual(ggmlBlock("Q4_K"), { elements: 256, bytes: 144 });
 * ```
 */
export function ggmlBlock(type: GgmlType): GgmlBlock {
  return BLOCKS[type];
}

/**
 * Bytes of `elements` values of a type; RangeError when `elements` is not a whole number of blocks.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ggmlBytes } from "./ggml_quants.ts";
 * assert.equal(ggmlBytes("Q4_0", 64), 36);
 * assert.throws(() => ggmlBytes("Q4_0", 48), RangeError);
 * ```
 */
export function ggmlBytes(type: GgmlType, elements: number): number {
  const block = BLOCKS[type];
  if (!Number.isSafeInteger(elements) || elements < 0 || elements % block.elements !== 0) {
    throw new RangeError(
      `Cannot size ${type} data: ${elements} elements is not a multiple of the ${block.elements}-element block`,
    );
  }
  return (elements / block.elements) * block.bytes;
}

/**
 * Dequantizes `elements` values of `type` from little-endian block bytes (any byte offset) to
 * f32, exactly as the reference dequantization.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dequantize } from "./ggml_quants.ts";
 * const block = new Uint8Array(34);
 * block.set([0x00, 0x38]); // d = 0.5 (f16 0x3800)
 * block[2] = 4; // q[0] = 4
 * block[3] = 0xfe; // q[1] = -2
 * const values = dequantize("Q8_0", block, 32);
 * assert.deepEqual([values[0], values[1], values[2]], [2, -1, 0]);
 * ```
 */
export function dequantize(type: GgmlType, bytes: Uint8Array, elements: number): Float32Array {
  const expected = ggmlBytes(type, elements);
  if (bytes.length !== expected) {
    throw new RangeError(
      `Cannot dequantize ${type}: ${bytes.length} bytes, ${elements} elements need ${expected}`,
    );
  }
  const data = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(elements);
  const blocks = elements / BLOCKS[type].elements;
  switch (type) {
    case "F32":
      for (let i = 0; i < elements; i++) out[i] = data.getFloat32(4 * i, true);
      return out;
    case "F16":
      return f16ToFloat32(uint16s(data, elements));
    case "BF16": {
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < elements; i++) bits[i] = data.getUint16(2 * i, true) << 16;
      return out;
    }
    case "Q8_0":
      for (let b = 0; b < blocks; b++) dequantizeQ8_0(data, b, out);
      return out;
    case "Q4_0":
      for (let b = 0; b < blocks; b++) dequantizeQ4_0(data, b, out);
      return out;
    case "Q4_K":
      for (let b = 0; b < blocks; b++) dequantizeQ4_K(data, b, out);
      return out;
    case "Q6_K":
      for (let b = 0; b < blocks; b++) dequantizeQ6_K(data, b, out);
      return out;
  }
}

function uint16s(data: DataView, count: number): Uint16Array {
  const bits = new Uint16Array(count);
  for (let i = 0; i < count; i++) bits[i] = data.getUint16(2 * i, true);
  return bits;
}

const F16_ONE = new Uint16Array(1);
/** f16 bits at `offset` → number. */
function f16At(data: DataView, offset: number): number {
  F16_ONE[0] = data.getUint16(offset, true);
  return f16ToFloat32(F16_ONE)[0];
}

function dequantizeQ8_0(data: DataView, block: number, out: Float32Array): void {
  const at = block * 34;
  const d = f16At(data, at);
  for (let j = 0; j < 32; j++) out[block * 32 + j] = d * data.getInt8(at + 2 + j);
}

function dequantizeQ4_0(data: DataView, block: number, out: Float32Array): void {
  const at = block * 18;
  const d = f16At(data, at);
  for (let j = 0; j < 16; j++) {
    const q = data.getUint8(at + 2 + j);
    out[block * 32 + j] = d * ((q & 15) - 8);
    out[block * 32 + j + 16] = d * ((q >> 4) - 8);
  }
}

/** 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes at `at`. */
function scaleMinK4(data: DataView, at: number, j: number): [number, number] {
  const q = (i: number) => data.getUint8(at + i);
  if (j < 4) return [q(j) & 63, q(j + 4) & 63];
  return [(q(j + 4) & 15) | ((q(j - 4) >> 6) << 4), (q(j + 4) >> 4) | ((q(j) >> 6) << 4)];
}

function dequantizeQ4_K(data: DataView, block: number, out: Float32Array): void {
  const at = block * 144;
  const d = f16At(data, at);
  const dmin = f16At(data, at + 2);
  for (let pair = 0; pair < 4; pair++) {
    const [sc1, m1] = scaleMinK4(data, at + 4, 2 * pair);
    const [sc2, m2] = scaleMinK4(data, at + 4, 2 * pair + 1);
    const d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2;
    const base = block * 256 + pair * 64;
    for (let l = 0; l < 32; l++) {
      const q = data.getUint8(at + 16 + pair * 32 + l);
      out[base + l] = d1 * (q & 15) - min1;
      out[base + 32 + l] = d2 * (q >> 4) - min2;
    }
  }
}

function dequantizeQ6_K(data: DataView, block: number, out: Float32Array): void {
  const at = block * 210;
  const d = f16At(data, at + 208);
  for (let half = 0; half < 2; half++) {
    const ql = at + half * 64, qh = at + 128 + half * 32, sc = at + 192 + half * 8;
    const base = block * 256 + half * 128;
    for (let l = 0; l < 32; l++) {
      const group = l >> 4;
      const low0 = data.getUint8(ql + l), low1 = data.getUint8(ql + l + 32), high = data.getUint8(qh + l);
      const q1 = ((low0 & 15) | (((high >> 0) & 3) << 4)) - 32;
      const q2 = ((low1 & 15) | (((high >> 2) & 3) << 4)) - 32;
      const q3 = ((low0 >> 4) | (((high >> 4) & 3) << 4)) - 32;
      const q4 = ((low1 >> 4) | (((high >> 6) & 3) << 4)) - 32;
      out[base + l] = d * data.getInt8(sc + group) * q1;
      out[base + l + 32] = d * data.getInt8(sc + group + 2) * q2;
      out[base + l + 64] = d * data.getInt8(sc + group + 4) * q3;
      out[base + l + 96] = d * data.getInt8(sc + group + 6) * q4;
    }
  }
}

/**
 * Quantizes f32 values (a whole number of blocks) to `type`'s block bytes (see the module doc for
 * which quantizers equal the reference bit for bit).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dequantize, quantize } from "./ggml_quants.ts";
 * const values = Float32Array.from({ length: 32 }, (_, i) => i - 16);
 * const back = dequantize("Q8_0", quantize("Q8_0", values), 32);
 * assert.ok(back.every((v, i) => Math.abs(v - values[i]) <= 16 / 127 / 2 + 1e-3));
 * ```
 */
export function quantize(type: GgmlType, values: Float32Array): Uint8Array {
  const out = new Uint8Array(ggmlBytes(type, values.length));
  const data = new DataView(out.buffer);
  const blocks = values.length / BLOCKS[type].elements;
  switch (type) {
    case "F32":
      for (let i = 0; i < values.length; i++) data.setFloat32(4 * i, values[i], true);
      return out;
    case "F16":
    case "BF16": {
      const halves = type === "F16" ? float32ToF16(values) : float32ToBf16(values);
      for (let i = 0; i < halves.length; i++) data.setUint16(2 * i, halves[i], true);
      return out;
    }
    case "Q8_0":
      for (let b = 0; b < blocks; b++) quantizeQ8_0(values.subarray(32 * b, 32 * b + 32), data, 34 * b);
      return out;
    case "Q4_0":
      for (let b = 0; b < blocks; b++) quantizeQ4_0(values.subarray(32 * b, 32 * b + 32), data, 18 * b);
      return out;
    case "Q4_K":
      for (let b = 0; b < blocks; b++) quantizeQ4_K(values.subarray(256 * b, 256 * b + 256), data, 144 * b);
      return out;
    case "Q6_K":
      for (let b = 0; b < blocks; b++) quantizeQ6_K(values.subarray(256 * b, 256 * b + 256), data, 210 * b);
      return out;
  }
}

const f32 = Math.fround;

/** C's roundf: half away from zero. */
function roundAway(x: number): number {
  return Math.sign(x) * Math.floor(Math.abs(x) + 0.5);
}

/** Writes f32 `value` as f16 at `offset` and returns the f16's value. */
function setF16(data: DataView, offset: number, value: number): number {
  const bits = float32ToF16(new Float32Array([value]));
  data.setUint16(offset, bits[0], true);
  return f16ToFloat32(bits)[0];
}

function quantizeQ8_0(x: Float32Array, data: DataView, at: number): void {
  let amax = 0;
  for (const v of x) amax = Math.max(amax, Math.abs(v));
  const d = f32(amax / 127);
  const id = d ? f32(1 / d) : 0;
  setF16(data, at, d);
  for (let j = 0; j < 32; j++) data.setInt8(at + 2 + j, roundAway(f32(x[j] * id)));
}

function quantizeQ4_0(x: Float32Array, data: DataView, at: number): void {
  let amax = 0, max = 0;
  for (const v of x) {
    if (amax < Math.abs(v)) {
      amax = Math.abs(v);
      max = v;
    }
  }
  const d = f32(max / -8);
  const id = d ? f32(1 / d) : 0;
  setF16(data, at, d);
  const level = (v: number) => Math.min(15, Math.trunc(f32(f32(v * id) + 8.5)));
  for (let j = 0; j < 16; j++) data.setUint8(at + 2 + j, level(x[j]) | (level(x[j + 16]) << 4));
}

function quantizeQ4_K(x: Float32Array, data: DataView, at: number): void {
  const scales = new Float32Array(8), mins = new Float32Array(8);
  for (let j = 0; j < 8; j++) {
    const sub = x.subarray(32 * j, 32 * j + 32);
    const lo = Math.min(0, ...sub), hi = Math.max(...sub);
    scales[j] = (hi - lo) / 15;
    mins[j] = -lo;
  }
  const d = setF16(data, at, Math.max(...scales) / 63);
  const dmin = setF16(data, at + 2, Math.max(...mins) / 63);
  const ls = scales.map((s) => (d ? Math.min(63, Math.round(s / d)) : 0));
  const lm = mins.map((m) => (dmin ? Math.min(63, Math.round(m / dmin)) : 0));
  const packed = new Uint8Array(12);
  for (let j = 0; j < 4; j++) {
    packed[j] = ls[j];
    packed[j + 4] = lm[j];
  }
  for (let j = 4; j < 8; j++) {
    packed[j + 4] = (ls[j] & 15) | ((lm[j] & 15) << 4);
    packed[j - 4] |= (ls[j] >> 4) << 6;
    packed[j] |= (lm[j] >> 4) << 6;
  }
  packed.forEach((byte, i) => data.setUint8(at + 4 + i, byte));
  const levels = new Uint8Array(256);
  for (let j = 0; j < 8; j++) {
    const step = d * ls[j], offset = dmin * lm[j];
    for (let l = 0; l < 32; l++) {
      const q = step ? Math.round((x[32 * j + l] + offset) / step) : 0;
      levels[32 * j + l] = Math.max(0, Math.min(15, q));
    }
  }
  for (let pair = 0; pair < 4; pair++) {
    for (let l = 0; l < 32; l++) {
      data.setUint8(at + 16 + 32 * pair + l, levels[64 * pair + l] | (levels[64 * pair + 32 + l] << 4));
    }
  }
}

function quantizeQ6_K(x: Float32Array, data: DataView, at: number): void {
  const scales = new Float32Array(16);
  let maxScale = 0;
  for (let g = 0; g < 16; g++) {
    let amax = 0, max = 0;
    for (const v of x.subarray(16 * g, 16 * g + 16)) {
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    scales[g] = max / -32;
    if (Math.abs(scales[g]) > Math.abs(maxScale)) maxScale = scales[g];
  }
  const iscale = maxScale ? -128 / maxScale : 0;
  const d = setF16(data, at + 208, iscale ? 1 / iscale : 0);
  const levels = new Uint8Array(256);
  for (let g = 0; g < 16; g++) {
    const sc = Math.max(-128, Math.min(127, Math.round(iscale * scales[g])));
    data.setInt8(at + 192 + g, sc);
    const step = d * sc;
    for (let l = 0; l < 16; l++) {
      const q = step ? Math.round(x[16 * g + l] / step) : 0;
      levels[16 * g + l] = Math.max(-32, Math.min(31, q)) + 32;
    }
  }
  for (let half = 0; half < 2; half++) {
    const L = levels.subarray(128 * half), ql = at + 64 * half, qh = at + 128 + 32 * half;
    for (let l = 0; l < 32; l++) {
      data.setUint8(ql + l, (L[l] & 15) | ((L[l + 64] & 15) << 4));
      data.setUint8(ql + l + 32, (L[l + 32] & 15) | ((L[l + 96] & 15) << 4));
      data.setUint8(
        qh + l,
        (L[l] >> 4) | ((L[l + 32] >> 4) << 2) | ((L[l + 64] >> 4) << 4) | ((L[l + 96] >> 4) << 6),
      );
    }
  }
}
