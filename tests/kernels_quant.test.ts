/**
 * Parity of the quantized matmul (kernels/matmul_quant.ts) with its CPU twin: `dequantize` of the
 * same block bytes, then `linear`, for both storages: blocks in storage buffers, and blocks
 * repacked into storage textures (runtime/device/weights_quant_texture.ts) multiplied by
 * kernels/matvec_quant_texture.ts (decode rows with x bound as a uniform, x in storage, tiles of
 * rows). Every block type, GEMV and several rows, bias and accumulate, row offsets, weights split
 * into several chunks, awkward N (1, 63, 65, 130, 200); outputs poisoned with NaN. The bound is f32
 * rounding only (the buffer kernel sums dequantized values in another order; the texture kernel
 * also applies block scales to sums), and with one-hot x every element comes out exactly.
 * @module
 */
import assert from "node:assert/strict";
import { writeBuffer } from "../runtime/device/gpu.ts";
import { linear } from "../runtime/core/cpu_ops.ts";
import { dequantize, ggmlBytes, quantize } from "../runtime/core/ggml_quants.ts";
import { createQuantMatmul, type QuantType, uploadQuantWeight } from "../kernels/matmul_quant.ts";
import { prepareQuantTextureMatvec } from "../kernels/matvec_quant_texture.ts";
import { packQuantTexels, uploadQuantTextures } from "../runtime/device/weights_quant_texture.ts";
import type { WeightStorage } from "../runtime/device/weights_gpu.ts";
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

/** Texture-stored cases: row blocks of 64 cut short, several texture chunks (8192 texels each). */
const TEXTURE_CASES: { type: QuantType; n: number; k: number; m: number[]; chunks: number }[] = [
  { type: "Q8_0", n: 130, k: 1024, m: [1, 2, 5], chunks: 3 }, // a row block per texture row
  { type: "Q4_0", n: 70, k: 2048, m: [1, 3, 8], chunks: 2 },
  { type: "Q4_K", n: 130, k: 2048, m: [1, 6], chunks: 3 },
  { type: "Q6_K", n: 200, k: 1024, m: [1, 4], chunks: 2 }, // two row blocks per texture row
];

for (const { type, n, k, m: rowCounts, chunks } of TEXTURE_CASES) {
  Deno.test(`matvec_quant_texture ${type} [${rowCounts}×${k}]·[${n}×${k}]ᵀ equals dequantize + linear (uniform and storage x, chunks)`, async () => {
    await withGpu(async (gpu, buffers) => {
      const kernel = await createQuantMatmul(gpu);
      await prepareQuantTextureMatvec(gpu, [{ type, cols: k }]);
      const bytes = quantize(type, randomArray(n * k, 17 + n + k, 0.5));
      const w = dequantize(type, bytes, n * k);
      const textures = uploadQuantTextures(buffers, bytes, {
        rows: n,
        cols: k,
        type,
        label: type,
        maxTexelRows: 1,
      });
      assert.equal(textures.length, chunks);
      const weight = { rows: n, cols: k, type, chunks: [], textures };
      const bias = randomArray(n, 11);
      const biasBuffer = buffers.upload(bias, "bias");
      for (const m of rowCounts) {
        const x = randomArray((m + 1) * k, 3 + m); // row 0 skipped through xRowOffset
        const xBuffer = buffers.upload(x, "x");
        const out = poisoned(buffers, m * n, "out");
        const dispatches = kernel.bind(buffers, { x: xBuffer, weight, out, rows: m, xRowOffset: 1 });
        // x through a uniform binding: a dispatch per chunk and decode row, or full tile of 4 rows
        const uniform = dispatches.filter((d) => d.label.includes("uniform")).length;
        assert.equal(uniform, (m <= 2 ? m : Math.floor(m / 4)) * chunks, `${type} m=${m} uniform dispatches`);
        gpu.submit(dispatches);
        assertClose(
          await readF32(gpu, out, m * n),
          linear(x.subarray(k), w, { rows: m }),
          EXACT,
          `${type} m=${m}`,
        );

        const prior = randomArray((m + 1) * n, 13);
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
        assertClose(await readF32(gpu, acc, (m + 1) * n), want, EXACT, `${type} m=${m} bias + accumulate`);
      }
    });
  });
}

Deno.test("matvec_quant_texture reads x from storage where a uniform binding cannot start at the row", async () => {
  await withGpu(async (gpu, buffers) => {
    const kernel = await createQuantMatmul(gpu);
    const [n, k] = [65, 96]; // rows of 384 bytes: row 1 starts off the 256-byte uniform alignment
    await prepareQuantTextureMatvec(gpu, [{ type: "Q8_0", cols: k }]);
    const bytes = quantize("Q8_0", randomArray(n * k, 23, 0.5));
    const weight = uploadQuantWeight(buffers, bytes, {
      rows: n,
      cols: k,
      type: "Q8_0",
      label: "w",
      storage: "texture",
    });
    const x = randomArray(2 * k, 29);
    const out = poisoned(buffers, n, "out");
    const dispatches = kernel.bind(buffers, {
      x: buffers.upload(x, "x"),
      weight,
      out,
      rows: 1,
      xRowOffset: 1,
    });
    assert.ok(dispatches.every((d) => !d.label.includes("uniform")));
    gpu.submit(dispatches);
    const expected = linear(x.subarray(k), dequantize("Q8_0", bytes, n * k), { rows: 1 });
    assertClose(await readF32(gpu, out, n), expected, EXACT, "Q8_0 storage x");
  });
});

for (const storage of ["buffer", "texture"] as WeightStorage[]) {
  Deno.test(`matmul_quant dequantizes every element exactly as the CPU twin (one-hot rows of x, ${storage})`, async () => {
    await withGpu(async (gpu, buffers) => {
      const kernel = await createQuantMatmul(gpu);
      for (const type of ["Q8_0", "Q4_0", "Q4_K", "Q6_K"] as QuantType[]) {
        const n = 3, k = 256;
        await prepareQuantTextureMatvec(gpu, [{ type, cols: k }]);
        const bytes = quantize(type, randomArray(n * k, 5, 2));
        const w = dequantize(type, bytes, n * k);
        const weight = uploadQuantWeight(buffers, bytes, { rows: n, cols: k, type, label: type, storage });
        const x = new Float32Array(k * k);
        for (let j = 0; j < k; j++) x[j * k + j] = 1; // row j of x picks column j of W
        const xBuffer = buffers.upload(x, "x");
        const out = poisoned(buffers, k * n, "out");
        gpu.submit(kernel.bind(buffers, { x: xBuffer, weight, out, rows: k }));
        const decode = poisoned(buffers, k * n, "decode"); // the same, one row at a time
        gpu.submit(
          (Array.from({ length: k }, (_, j) =>
            kernel.bind(buffers, {
              x: xBuffer,
              weight,
              out: decode,
              rows: 1,
              xRowOffset: j,
              outRowOffset: j,
            }))).flat(),
        );
        for (
          const [name, got] of [["rows", await readF32(gpu, out, k * n)], [
            "decode",
            await readF32(gpu, decode, k * n),
          ]] as const
        ) {
          for (let j = 0; j < k; j++) {
            for (let r = 0; r < n; r++) {
              // === : the sum 0 + 1·(−0) is +0, a zero's sign is not the dequantization's
              const [a, b] = [got[j * n + r], w[r * k + j]];
              assert.ok(a === b, `${type} ${name} W[${r}, ${j}]: ${a} vs ${b}`);
            }
          }
        }
      }
    });
  });
}

Deno.test("packQuantTexels() moves every block byte once, and uploads refuse bytes that do not fill the shape", async () => {
  for (const type of ["Q8_0", "Q4_0", "Q4_K", "Q6_K"] as QuantType[]) {
    const [n, k] = [70, 512];
    const bytes = quantize(type, randomArray(n * k, 31, 1));
    const words = packQuantTexels(bytes, { rows: n, cols: k, type });
    // the same multiset of bytes, plus zeros for the padding rows and the texture's tail
    const count = (b: Uint8Array) => b.reduce((c, v) => (c[v]++, c), new Array(256).fill(0));
    const [stored, given] = [count(new Uint8Array(words.buffer)), count(bytes)];
    for (let v = 1; v < 256; v++) assert.equal(stored[v], given[v], `${type} byte ${v}`);
  }
  await withGpu((_gpu, buffers) => {
    assert.throws(
      () => uploadQuantTextures(buffers, new Uint8Array(33), { rows: 1, cols: 32, type: "Q8_0", label: "w" }),
      /33 bytes do not fill Q8_0 \[1, 32\]/,
    );
    return Promise.resolve();
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
