/**
 * Parity of the quantized matmul (kernels/matmul_quant.ts) with its CPU twin: `dequantize` of the
 * same block bytes, then `linear`. Every block type, GEMV and several rows, bias and accumulate,
 * row offsets, weights split into several chunks, awkward N (1, 63, 65); outputs poisoned with NaN.
 * The dequantized values are the twin's exactly, so the bound is f32 summation order only.
 * @module
 */
import assert from "node:assert/strict";
import { writeBuffer } from "../runtime/device/gpu.ts";
import { linear } from "../runtime/core/cpu_ops.ts";
import { dequantize, ggmlBytes, quantize } from "../runtime/core/ggml_quants.ts";
import { createQuantMatmul, type QuantType, uploadQuantWeight } from "../kernels/matmul_quant.ts";
import { assertClose, poisoned, randomArray, readF32, withGpu } from "./kernel_util.ts";

/** NMSE bound: f32 rounding in a different summation order only. */
const EXACT = 1e-10;

const CASES: { type: QuantType; n: number; k: number; m: number }[] = [
  { type: "Q8_0", n: 65, k: 96, m: 1 },
  { type: "Q8_0", n: 1, k: 32, m: 3 },
  { type: "Q4_0", n: 63, k: 160, m: 1 },
  { type: "Q4_0", n: 5, k: 64, m: 4 },
  { type: "Q4_K", n: 9, k: 512, m: 1 },
  { type: "Q4_K", n: 65, k: 256, m: 2 },
  { type: "Q6_K", n: 7, k: 768, m: 1 },
  { type: "Q6_K", n: 63, k: 256, m: 3 },
];

for (const { type, n, k, m } of CASES) {
  Deno.test(`matmul_quant ${type} [${m}×${k}]·[${n}×${k}]ᵀ equals dequantize + linear (bias, accumulate, chunks)`, async () => {
    await withGpu(async (gpu, buffers) => {
      const kernel = await createQuantMatmul(gpu);
      const bytes = quantize(type, randomArray(n * k, 7 + n + k, 0.5));
      const w = dequantize(type, bytes, n * k);
      const x = randomArray((m + 1) * k, 3 + m); // row 0 skipped through xRowOffset
      const bias = randomArray(n, 11);
      const prior = randomArray((m + 1) * n, 13);
      const rowBytes = ggmlBytes(type, k);
      const weight = uploadQuantWeight(buffers, bytes, {
        rows: n,
        cols: k,
        type,
        label: `w_${type}`,
        maxChunkBytes: rowBytes * Math.max(1, Math.floor(n / 3)), // several chunks
      });
      assert.ok(n < 3 || weight.chunks.length >= 3);
      const xBuffer = buffers.upload(x, "x");
      const biasBuffer = buffers.upload(bias, "bias");

      const out = poisoned(buffers, m * n, "out");
      gpu.submit(kernel.bind(buffers, { x: xBuffer, weight, out, rows: m, xRowOffset: 1 }));
      const expected = linear(x.subarray(k), w, { rows: m });
      assertClose(await readF32(gpu, out, m * n), expected, EXACT, `${type} plain`);

      const acc = buffers.storage((m + 1) * n * 4, "acc");
      writeBuffer(gpu, acc, 0, prior);
      gpu.submit(kernel.bind(buffers, {
        x: xBuffer,
        weight,
        bias: biasBuffer,
        out: acc,
        rows: m,
        xRowOffset: 1,
        outRowOffset: 1,
        accumulate: true,
      }));
      const withBias = linear(x.subarray(k), w, { rows: m, bias });
      const want = prior.slice();
      for (let i = 0; i < m * n; i++) want[n + i] += withBias[i];
      assertClose(await readF32(gpu, acc, (m + 1) * n), want, EXACT, `${type} bias + accumulate`);
    });
  });
}

Deno.test("matmul_quant dequantizes every element exactly as the CPU twin (one-hot rows of x)", async () => {
  await withGpu(async (gpu, buffers) => {
    const kernel = await createQuantMatmul(gpu);
    for (const type of ["Q8_0", "Q4_0", "Q4_K", "Q6_K"] as QuantType[]) {
      const n = 3, k = 256;
      const bytes = quantize(type, randomArray(n * k, 5, 2));
      const w = dequantize(type, bytes, n * k);
      const weight = uploadQuantWeight(buffers, bytes, { rows: n, cols: k, type, label: type });
      const x = new Float32Array(k * k);
      for (let j = 0; j < k; j++) x[j * k + j] = 1; // row j of x picks column j of W
      const out = poisoned(buffers, k * n, "out");
      gpu.submit(kernel.bind(buffers, { x: buffers.upload(x, "x"), weight, out, rows: k }));
      const got = await readF32(gpu, out, k * n);
      for (let j = 0; j < k; j++) {
        for (let r = 0; r < n; r++) {
          // === : the sum 0 + 1·(−0) is +0, a zero's sign is not the dequantization's
          const [a, b] = [got[j * n + r], w[r * k + j]];
          assert.ok(a === b, `${type} W[${r}, ${j}]: ${a} vs ${b}`);
        }
      }
    }
  });
});

Deno.test("uploadQuantWeight() and bind() refuse mismatched sizes", async () => {
  await withGpu(async (gpu, buffers) => {
    const kernel = await createQuantMatmul(gpu);
    assert.throws(
      () => uploadQuantWeight(buffers, new Uint8Array(33), { rows: 1, cols: 32, type: "Q8_0", label: "w" }),
      /33 bytes do not fill Q8_0 \[1, 32\]/,
    );
    const weight = uploadQuantWeight(buffers, new Uint8Array(34), {
      rows: 1,
      cols: 32,
      type: "Q8_0",
      label: "w",
    });
    const small = buffers.storage(16, "x");
    assert.throws(
      () => kernel.bind(buffers, { x: small, weight, out: small, rows: 1 }),
      /x holds 16 bytes, needs 128/,
    );
  });
});
