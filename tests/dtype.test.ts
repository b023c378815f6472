/**
 * Tests of runtime/core/dtype.ts: exact bit patterns of f16/bf16 conversions (normal, subnormal, overflow,
 * ties, infinities, NaN), exhaustive round trips over all 65536 half patterns, round-to-nearest on
 * pseudo-random values, and byte input at unaligned offsets.
 * @module
 */
import assert from "node:assert/strict";
import {
  bf16ToFloat32,
  dtypeBytes,
  f16ToFloat32,
  float32ToBf16,
  float32ToF16,
  isDType,
  toFloat32,
} from "../runtime/core/dtype.ts";

/** float32 bit pattern of a number (after rounding it to float32). */
function f32Bits(value: number): number {
  return new Uint32Array(new Float32Array([value]).buffer)[0];
}

/** float32 value of a bit pattern. */
function f32FromBits(bits: number): number {
  return new Float32Array(new Uint32Array([bits]).buffer)[0];
}

/** Deterministic float32 bit patterns spread over every exponent (xorshift32). */
function pseudoRandomFloat32(count: number, seed: number): Float32Array {
  const bits = new Uint32Array(count);
  let state = seed;
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bits[i] = state >>> 0;
  }
  return new Float32Array(bits.buffer);
}

Deno.test("dtypeBytes() and isDType() know F32, F16, BF16 only", () => {
  assert.deepEqual([dtypeBytes("F32"), dtypeBytes("F16"), dtypeBytes("BF16")], [4, 2, 2]);
  assert.deepEqual(["F32", "F16", "BF16", "I8", "F64", "toString"].map(isDType), [
    true,
    true,
    true,
    false,
    false,
    false,
  ]);
});

Deno.test("float32ToF16() gives the exact bit patterns (values checked with numpy float16)", () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [65504, 0x7bff], // largest f16
    [65519, 0x7bff], // just under the rounding boundary
    [65520, 0x7c00], // halfway to 65536: ties to even overflows to infinity
    [6.1e-5, 0x03ff], // just under the smallest normal: largest subnormal
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // half the smallest subnormal: tie to even gives zero
    [3 * 2 ** -25, 0x0002], // tie between 1 and 2 units: even is 2
    [1e-8, 0x0000],
    [0.1, 0x2e66],
    [1 + 2 ** -11, 0x3c00], // tie: even mantissa 0
    [1 + 3 * 2 ** -11, 0x3c02], // tie: even mantissa 2
    [-0, 0x8000],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
  ];
  const halves = float32ToF16(new Float32Array(cases.map(([value]) => value)));
  assert.deepEqual([...halves], cases.map(([, bits]) => bits));
  const nanHalf = float32ToF16(new Float32Array([NaN]))[0];
  assert.equal(nanHalf & 0x7c00, 0x7c00);
  assert.notEqual(nanHalf & 0x03ff, 0);
});

Deno.test("float32ToBf16() rounds to nearest even and keeps inf and NaN", () => {
  const cases: [number, number][] = [
    [1, 0x3f80],
    [-2, 0xc000],
    [0.1, 0x3dcd], // 0x3dcccccd: lower half 0xcccd > 0x8000 rounds up
    [f32FromBits(0x3f808000), 0x3f80], // exact tie, even stays
    [f32FromBits(0x3f818000), 0x3f82], // exact tie, odd rounds up
    [f32FromBits(0x3f808001), 0x3f81], // just over the tie
    [f32FromBits(0x7f7fffff), 0x7f80], // largest float32 rounds to infinity
    [Infinity, 0x7f80],
    [-Infinity, 0xff80],
    [-0, 0x8000],
    [f32FromBits(0x00000001), 0x0000], // float32 subnormal rounds to zero
  ];
  const halves = float32ToBf16(new Float32Array(cases.map(([value]) => value)));
  assert.deepEqual([...halves], cases.map(([, bits]) => bits));
  const nanHalf = float32ToBf16(new Float32Array([f32FromBits(0x7f800001)]))[0];
  assert.ok(Number.isNaN(bf16ToFloat32(new Uint16Array([nanHalf]))[0]), "a signalling NaN stays NaN");
});

Deno.test("f16ToFloat32() decodes normals, subnormals, inf and NaN exactly", () => {
  const values = f16ToFloat32(
    new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0400, 0x03ff, 0x0001, 0x8000, 0x7c00, 0xfc00]),
  );
  assert.deepEqual([...values], [1, -2, 65504, 2 ** -14, 1023 * 2 ** -24, 2 ** -24, -0, Infinity, -Infinity]);
  assert.ok(Object.is(values[6], -0));
  assert.ok(Number.isNaN(f16ToFloat32(new Uint16Array([0x7e00]))[0]));
});

Deno.test("f16 and bf16 patterns survive a round trip through float32, all 65536 of them", () => {
  const allPatterns = new Uint16Array(65536).map((_, bits) => bits);
  const f16Back = float32ToF16(f16ToFloat32(allPatterns));
  const bf16Back = float32ToBf16(bf16ToFloat32(allPatterns));
  for (let bits = 0; bits < 65536; bits++) {
    const f16IsNaN = (bits & 0x7c00) === 0x7c00 && (bits & 0x03ff) !== 0;
    if (f16IsNaN) assert.equal(f16Back[bits] & 0x7e00, 0x7e00, `f16 NaN ${bits.toString(16)}`);
    else if (f16Back[bits] !== bits) {
      assert.fail(`f16 ${bits.toString(16)} came back ${f16Back[bits].toString(16)}`);
    }
    const bf16IsNaN = (bits & 0x7f80) === 0x7f80 && (bits & 0x007f) !== 0;
    if (bf16IsNaN) assert.equal(bf16Back[bits] & 0x7fc0, 0x7fc0, `bf16 NaN ${bits.toString(16)}`);
    else if (bf16Back[bits] !== bits) {
      assert.fail(`bf16 ${bits.toString(16)} came back ${bf16Back[bits].toString(16)}`);
    }
  }
});

Deno.test("float32ToF16() picks the nearest f16, ties to even, on 200k pseudo-random floats", () => {
  const values = pseudoRandomFloat32(200_000, 0x9e3779b9);
  const halves = float32ToF16(values);
  const decoded = f16ToFloat32(halves);
  const valueOfPattern = f16ToFloat32(new Uint16Array(65536).map((_, bits) => bits));
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (Number.isNaN(value)) {
      assert.ok(Number.isNaN(decoded[i]));
      continue;
    }
    const magnitude = Math.abs(value);
    const positiveBits = halves[i] & 0x7fff;
    assert.equal(halves[i] & 0x8000, f32Bits(value) & 0x80000000 ? 0x8000 : 0, `sign of ${value}`);
    const chosenError = Math.abs(Math.abs(decoded[i]) - magnitude);
    // Neighbours: one unit below and above (above 0x7bff is infinity: allowed past 65520 only).
    const below = positiveBits === 0 ? Infinity : Math.abs(valueOfPattern[positiveBits - 1] - magnitude);
    const above = positiveBits >= 0x7bff ? Infinity : Math.abs(valueOfPattern[positiveBits + 1] - magnitude);
    if (positiveBits === 0x7c00) {
      assert.ok(magnitude >= 65520, `${value} overflowed to infinity`);
      continue;
    }
    assert.ok(
      chosenError <= below && chosenError <= above,
      `${value} → 0x${halves[i].toString(16)} is not nearest`,
    );
    if (chosenError === below || chosenError === above) {
      assert.equal(positiveBits & 1, 0, `tie of ${value} not even`);
    }
  }
});

Deno.test("toFloat32() reads little-endian F32, F16 and BF16 bytes at odd offsets", () => {
  const expected = [1, -2, 0.5, 65504];
  const f32Bytes = new Uint8Array(new Float32Array(expected).buffer);
  const f16Bytes = new Uint8Array(float32ToF16(new Float32Array(expected)).buffer);
  const bf16Bytes = new Uint8Array(float32ToBf16(new Float32Array([1, -2, 0.5, 65536])).buffer);
  for (
    const [dtype, bytes, values] of [
      ["F32", f32Bytes, expected],
      ["F16", f16Bytes, expected],
      ["BF16", bf16Bytes, [1, -2, 0.5, 65536]],
    ] as const
  ) {
    for (const offset of [0, 1, 3]) {
      const backing = new Uint8Array(bytes.length + 8).fill(0xff);
      backing.set(bytes, offset);
      const unaligned = backing.subarray(offset, offset + bytes.length);
      const result = toFloat32(dtype, unaligned);
      assert.deepEqual([...result], values, `${dtype} at offset ${offset}`);
      const backingBefore = backing.slice();
      result.fill(42);
      assert.deepEqual(backing, backingBefore, "the result does not alias the input");
    }
  }
  // Explicit little-endian bytes: 1.0 in each format.
  assert.deepEqual([...toFloat32("F32", new Uint8Array([0, 0, 0x80, 0x3f]))], [1]);
  assert.deepEqual([...toFloat32("F16", new Uint8Array([0, 0x3c]))], [1]);
  assert.deepEqual([...toFloat32("BF16", new Uint8Array([0x80, 0x3f]))], [1]);
  assert.throws(() => toFloat32("F16", new Uint8Array(3)), /3 bytes is not a multiple of 2/);
});
