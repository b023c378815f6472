/**
 * Tests of runtime/core/ggml_quants.ts: dequantization of hand-built blocks of every type against
 * values computed here element by element from the block layouts (an independent formulation of
 * the reference dequantization), the reference Q8_0/Q4_0 quantizers on values with known codes,
 * and the quantize → dequantize error of every type.
 * @module
 */
import assert from "node:assert/strict";
import { f16ToFloat32, float32ToF16 } from "../runtime/core/dtype.ts";
import { dequantize, ggmlBytes, type GgmlType, quantize } from "../runtime/core/ggml_quants.ts";

/** Deterministic pseudo-random bytes. */
function randomBytes(count: number, seed: number): Uint8Array {
  let s = seed;
  return Uint8Array.from({ length: count }, () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s >>> 24;
  });
}

function f16Bits(value: number): number {
  return float32ToF16(new Float32Array([value]))[0];
}

function f16Value(bits: number): number {
  return f16ToFloat32(new Uint16Array([bits]))[0];
}

function setF16(block: Uint8Array, at: number, value: number): number {
  const bits = f16Bits(value);
  block[at] = bits & 255;
  block[at + 1] = bits >> 8;
  return f16Value(bits);
}

Deno.test("dequantize() of F32, F16 and BF16 reads little-endian elements", () => {
  assert.deepEqual(
    dequantize("F32", new Uint8Array(new Float32Array([1.5, -3]).buffer), 2),
    new Float32Array([1.5, -3]),
  );
  assert.deepEqual(dequantize("F16", new Uint8Array([0x00, 0x3c, 0x00, 0xc0]), 2), new Float32Array([1, -2]));
  assert.deepEqual(
    dequantize("BF16", new Uint8Array([0x80, 0x3f, 0x00, 0xc0]), 2),
    new Float32Array([1, -2]),
  );
});

Deno.test("dequantize() of hand-built Q8_0 and Q4_0 blocks", () => {
  const q8 = randomBytes(68, 1);
  const d8 = [setF16(q8, 0, 0.0123), setF16(q8, 34, -2.5)];
  const got8 = dequantize("Q8_0", q8, 64);
  for (let e = 0; e < 64; e++) {
    const block = e >> 5;
    const q = (q8[34 * block + 2 + (e & 31)] << 24) >> 24; // as int8
    assert.equal(got8[e], Math.fround(d8[block] * q), `Q8_0 element ${e}`);
  }
  const q4 = randomBytes(36, 2);
  const d4 = [setF16(q4, 0, 0.37), setF16(q4, 18, -1e-3)];
  const got4 = dequantize("Q4_0", q4, 64);
  for (let e = 0; e < 64; e++) {
    const block = e >> 5, j = e & 31;
    const byte = q4[18 * block + 2 + (j & 15)];
    const nibble = j < 16 ? byte & 15 : byte >> 4;
    assert.equal(got4[e], Math.fround(d4[block] * (nibble - 8)), `Q4_0 element ${e}`);
  }
});

Deno.test("dequantize() of a hand-built Q4_K block with 6-bit scales and mins", () => {
  const block = randomBytes(144, 3);
  const d = setF16(block, 0, 0.021), dmin = setF16(block, 2, 0.0075);
  const sc = [1, 63, 17, 40, 5, 33, 62, 48], m = [0, 22, 63, 7, 60, 1, 35, 16];
  const scales = new Uint8Array(12);
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      scales[j] = sc[j];
      scales[j + 4] = m[j];
    }
  }
  for (let j = 4; j < 8; j++) {
    scales[j + 4] = (sc[j] & 15) + 16 * (m[j] & 15);
    scales[j - 4] += 64 * (sc[j] >> 4);
    scales[j] += 64 * (m[j] >> 4);
  }
  block.set(scales, 4);
  const got = dequantize("Q4_K", block, 256);
  for (let e = 0; e < 256; e++) {
    const j = e >> 5, l = e & 31;
    const byte = block[16 + 32 * (j >> 1) + l];
    const q = j % 2 === 0 ? byte & 15 : byte >> 4;
    const want = Math.fround(Math.fround(d * sc[j]) * q - Math.fround(dmin * m[j]));
    assert.equal(got[e], want, `Q4_K element ${e}`);
  }
});

Deno.test("dequantize() of a hand-built Q6_K block", () => {
  const block = randomBytes(210, 4);
  const d = setF16(block, 208, -0.0031);
  const got = dequantize("Q6_K", block, 256);
  for (let e = 0; e < 256; e++) {
    const half = e >> 7, k = (e & 127) >> 5, l = e & 31;
    const lowByte = block[64 * half + l + 32 * (k & 1)];
    const low = k < 2 ? lowByte & 15 : lowByte >> 4;
    const high = (block[128 + 32 * half + l] >> (2 * k)) & 3;
    const scale = (block[192 + 8 * half + (l >> 4) + 2 * k] << 24) >> 24;
    assert.equal(got[e], Math.fround(d * scale * (low + 16 * high - 32)), `Q6_K element ${e}`);
  }
});

Deno.test("quantize() Q8_0 and Q4_0 give the reference codes", () => {
  // Q8_0: d = amax / 127, q = round half away from zero (x / d).
  const x8 = new Float32Array(32);
  x8.set([127, -63.5, 0.5, -0.5, 1.49]);
  const b8 = quantize("Q8_0", x8);
  assert.equal(f16Value(b8[0] | (b8[1] << 8)), 1);
  assert.deepEqual([...new Int8Array(b8.buffer, 2, 5)], [127, -64, 1, -1, 1]);
  // Q4_0: d = (value of largest magnitude) / -8; code = min(15, trunc(x / d + 8.5)).
  const x4 = new Float32Array(32);
  x4.set([-16, 2, 14, -3.1], 0);
  x4[16] = 16;
  const b4 = quantize("Q4_0", x4);
  // The first value of largest magnitude (-16 at index 0, not 16 at index 16) sets d = -16 / -8 = 2.
  assert.equal(f16Value(b4[0] | (b4[1] << 8)), 2);
  const code = (j: number) => j < 16 ? b4[2 + j] & 15 : b4[2 + j - 16] >> 4;
  assert.deepEqual([code(0), code(1), code(2), code(3), code(16), code(17)], [0, 9, 15, 6, 15, 8]);
  // all-zero blocks: d = -0, codes neutral, values zero
  assert.ok(dequantize("Q4_0", quantize("Q4_0", new Float32Array(32)), 32).every((v) => v === 0));
});

Deno.test("quantize() → dequantize() stays within each type's step", () => {
  const values = Float32Array.from(randomBytes(1024, 5), (b, i) => (b - 128) / 64 + Math.sin(i) * 0.1);
  const errors: Record<string, number> = {};
  for (const type of ["F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"] as GgmlType[]) {
    const bytes = quantize(type, values);
    assert.equal(bytes.length, ggmlBytes(type, values.length));
    const back = dequantize(type, bytes, values.length);
    let se = 0, sv = 0;
    for (let i = 0; i < values.length; i++) {
      se += (back[i] - values[i]) ** 2;
      sv += values[i] ** 2;
    }
    errors[type] = se / sv;
  }
  assert.ok(errors.F16 < 1e-7, `F16 ${errors.F16}`);
  assert.ok(errors.Q8_0 < 1e-4, `Q8_0 ${errors.Q8_0}`);
  assert.ok(errors.Q6_K < 1e-3, `Q6_K ${errors.Q6_K}`);
  assert.ok(errors.Q4_0 < 2e-2, `Q4_0 ${errors.Q4_0}`);
  assert.ok(errors.Q4_K < 2e-2, `Q4_K ${errors.Q4_K}`);
  assert.ok(errors.Q8_0 < errors.Q6_K && errors.Q6_K < errors.Q4_K, JSON.stringify(errors));
});

Deno.test("dequantize() refuses partial blocks and wrong byte counts", () => {
  assert.throws(() => dequantize("Q4_K", new Uint8Array(144), 128), /128 elements is not a multiple/);
  assert.throws(() => dequantize("Q8_0", new Uint8Array(33), 32), /33 bytes, 32 elements need 34/);
  assert.throws(() => quantize("Q6_K", new Float32Array(32)), RangeError);
});
