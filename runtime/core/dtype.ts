/**
 * Element types of checkpoint tensors and conversions between them. Pure TypeScript, GPU-free.
 *
 * - {@link DType}: the tensor element types dynllava reads (`F32`, `F16`, `BF16`), named as in
 *   safetensors headers; all little-endian in files.
 * - {@link toFloat32}: raw little-endian tensor bytes (any byte offset) → Float32Array.
 * - {@link float32ToF16} / {@link float32ToBf16}: Float32Array → half-precision bit patterns,
 *   rounding to nearest, ties to even; infinities and NaN kept (NaN stays quiet NaN), overflow goes to
 *   infinity, f16 subnormals produced exactly.
 * - {@link f16ToFloat32} / {@link bf16ToFloat32}: half-precision bit patterns → Float32Array (exact).
 *
 * Every conversion is one typed-array loop (f16 → f32 through a 65536-entry table), so 100M
 * elements take seconds.
 * @module
 */

/** Tensor element type, as spelled in safetensors headers. */
export type DType = "F32" | "F16" | "BF16";

const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

/** True when the host stores numbers little-endian (then typed-array views read file bytes as is). */
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Whether a string names a supported {@link DType}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isDType } from "./dtype.ts";
 * assert.equal(isDType("BF16"), true);
 * assert.equal(isDType("I8"), false);
 * ```
 */
export function isDType(name: string): name is DType {
  return Object.hasOwn(DTYPE_BYTES, name);
}

/**
 * Bytes per element of a dtype.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dtypeBytes } from "./dtype.ts";
 * assert.equal(dtypeBytes("F32"), 4);
 * assert.equal(dtypeBytes("BF16"), 2);
 * ```
 */
export function dtypeBytes(dtype: DType): number {
  return DTYPE_BYTES[dtype];
}

/**
 * Converts raw little-endian tensor bytes of `dtype` to float32. `bytes` may start at any byte
 * offset of its buffer; the result never shares memory with it.
 *
 * @throws {RangeError} when `bytes.length` is not a multiple of the element size.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { toFloat32 } from "./dtype.ts";
 * const oneAndMinusTwoF16 = new Uint8Array([0x00, 0x3c, 0x00, 0xc0]);
 * assert.deepEqual(toFloat32("F16", oneAndMinusTwoF16), new Float32Array([1, -2]));
 * ```
 */
export function toFloat32(dtype: DType, bytes: Uint8Array): Float32Array {
  const elementBytes = dtypeBytes(dtype);
  if (bytes.length % elementBytes !== 0) {
    throw new RangeError(
      `Cannot convert ${dtype} data: ${bytes.length} bytes is not a multiple of ${elementBytes}`,
    );
  }
  const count = bytes.length / elementBytes;
  if (dtype === "F32") return readFloat32(bytes, count);
  const bits = readUint16(bytes, count);
  return dtype === "F16" ? f16ToFloat32(bits) : bf16ToFloat32(bits);
}

/** Copies `count` little-endian float32 values out of `bytes` (any alignment). */
function readFloat32(bytes: Uint8Array, count: number): Float32Array {
  if (HOST_IS_LITTLE_ENDIAN) {
    const copy = bytes.slice(); // fresh, aligned buffer
    return new Float32Array(copy.buffer, 0, count);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) values[i] = view.getFloat32(i * 4, true);
  return values;
}

/** Little-endian uint16 values of `bytes`: a view when aligned on a little-endian host, else a copy. */
function readUint16(bytes: Uint8Array, count: number): Uint16Array {
  if (HOST_IS_LITTLE_ENDIAN) {
    if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, count);
    return new Uint16Array(bytes.slice().buffer, 0, count);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bits = new Uint16Array(count);
  for (let i = 0; i < count; i++) bits[i] = view.getUint16(i * 2, true);
  return bits;
}

let f16Table: Float32Array | undefined;

/** float32 value of every f16 bit pattern (65536 entries, built on first use). */
function f16ValueTable(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >>> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    if (exponent === 0) table[bits] = sign * mantissa * 2 ** -24;
    else if (exponent === 31) table[bits] = mantissa === 0 ? sign * Infinity : NaN;
    else table[bits] = sign * (1024 + mantissa) * 2 ** (exponent - 25);
  }
  f16Table = table;
  return table;
}

/**
 * Converts f16 bit patterns to float32 values (exact; NaN payloads are not preserved).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { f16ToFloat32 } from "./dtype.ts";
 * assert.deepEqual(f16ToFloat32(new Uint16Array([0x3c00, 0x7bff])), new Float32Array([1, 65504]));
 * ```
 */
export function f16ToFloat32(bits: Uint16Array): Float32Array {
  const table = f16ValueTable();
  const values = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) values[i] = table[bits[i]];
  return values;
}

/**
 * Converts bf16 bit patterns to float32 values (exact: bf16 is the upper half of a float32).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bf16ToFloat32 } from "./dtype.ts";
 * assert.deepEqual(bf16ToFloat32(new Uint16Array([0x3f80, 0xc000])), new Float32Array([1, -2]));
 * ```
 */
export function bf16ToFloat32(bits: Uint16Array): Float32Array {
  const values = new Float32Array(bits.length);
  const valueBits = new Uint32Array(values.buffer);
  for (let i = 0; i < bits.length; i++) valueBits[i] = bits[i] << 16;
  return values;
}

/**
 * Rounds float32 values to f16 bit patterns: round to nearest, ties to even; values beyond 65504
 * (after rounding) become infinity, tiny values become f16 subnormals or signed zero, NaN becomes a
 * quiet NaN.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { float32ToF16 } from "./dtype.ts";
 * const half = float32ToF16(new Float32Array([1, -2, 65504, Infinity]));
 * assert.deepEqual(half, new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x7c00])); // 65504 is the largest finite f16
 * ```
 */
export function float32ToF16(values: Float32Array): Uint16Array {
  const valueBits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const halves = new Uint16Array(values.length);
  for (let i = 0; i < valueBits.length; i++) halves[i] = f32BitsToF16Bits(valueBits[i]);
  return halves;
}

/** One float32 bit pattern → f16 bit pattern, round to nearest even. */
function f32BitsToF16Bits(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | (mantissa === 0 ? 0x7c00 : 0x7e00); // inf, quiet NaN
  const halfExponent = exponent - 112; // rebias 127 → 15
  if (halfExponent >= 31) return sign | 0x7c00; // overflow
  if (halfExponent <= 0) {
    // Subnormal or zero: value = (2^23 + mantissa) × 2^(exponent - 150); f16 unit is 2^-24.
    const shift = 14 - halfExponent; // ≥ 14
    if (shift > 24) return sign; // below half the smallest subnormal (or a float32 subnormal)
    const full = 0x800000 | mantissa;
    const truncated = full >>> shift;
    const remainder = full - (truncated << shift); // < 2^24 fits in int32
    const half = 1 << (shift - 1);
    const roundUp = remainder > half || (remainder === half && (truncated & 1) === 1);
    return sign | (truncated + (roundUp ? 1 : 0)); // may carry into the smallest normal: correct
  }
  const truncated = (halfExponent << 10) | (mantissa >>> 13);
  const remainder = mantissa & 0x1fff;
  const roundUp = remainder > 0x1000 || (remainder === 0x1000 && (truncated & 1) === 1);
  return sign | (truncated + (roundUp ? 1 : 0)); // a carry may reach 0x7c00 = infinity: correct
}

/**
 * Rounds float32 values to bf16 bit patterns (the upper 16 bits), round to nearest, ties to even;
 * NaN stays a quiet NaN.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { float32ToBf16 } from "./dtype.ts";
 * assert.deepEqual(float32ToBf16(new Float32Array([1, -2])), new Uint16Array([0x3f80, 0xc000]));
 * ```
 */
export function float32ToBf16(values: Float32Array): Uint16Array {
  const valueBits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const halves = new Uint16Array(values.length);
  for (let i = 0; i < valueBits.length; i++) {
    const bits = valueBits[i];
    if ((bits & 0x7fffffff) > 0x7f800000) {
      halves[i] = (bits >>> 16) | 0x0040; // NaN: keep sign and top payload, force quiet
    } else {
      halves[i] = (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16; // sum < 2^32 for every non-NaN
    }
  }
  return halves;
}
