/**
 * Parity of the language-model kernels with their CPU twins (runtime/core/cpu_ops.ts): random inputs,
 * outputs poisoned with NaN before each run, NMSE against the twin, awkward shapes. Runs on f16
 * weights (when the adapter has `shader-f16` and DYNLLAVA_NO_F16 is unset) and on f32 weights; the
 * KV-cache kernels also with an f16 cache (when the adapter has `shader-f16`), against their twins
 * on the f16-rounded cache.
 *
 * Bounds (NMSE): {@link EXACT} for kernels whose only error is f32 rounding (matmul against the
 * twin run on the stored, f16-rounded weights; norms, attention, elementwise); {@link ROPE} for
 * rope, whose f32 angle at positions up to 4096 is off by up to ~2e-4 rad.
 * @module
 */
import assert from "node:assert/strict";
import {
  BufferSet,
  createGpu,
  type Dispatch,
  type Gpu,
  MAX_GRID,
  writeBuffer,
} from "../runtime/device/gpu.ts";
import * as cpu from "../runtime/core/cpu_ops.ts";
import { GpuError, InputError } from "../runtime/core/errors.ts";
import { storedWeightValues, uploadWeight, weightDtype } from "../runtime/device/weights_gpu.ts";
import { createKernels, type Kernels } from "../runtime/webgpu/gpu_kernels.ts";
import { assertClose, poisoned, randomArray, readF32, testGpu } from "./kernel_util.ts";
import { testNeeding } from "./requirements.ts";
import { f16ToFloat32, float32ToF16 } from "../runtime/core/dtype.ts";
import type { KvDtype } from "../runtime/core/sparse_kv.ts";

/** NMSE bound where the GPU differs from the twin by f32 rounding only (measured ≤ 3e-12). */
const EXACT = 1e-10;
/** NMSE bound for rope (f32 angles; measured ≲ 4e-9 up to position 4096 on lavapipe). */
const ROPE = 1e-7;

/** The f16-weight device (when offered) and an f32-weight device. */
const gpus: Gpu[] = [await testGpu()];
if (gpus[0].f16) gpus.push(await createGpu({ allowF16: false }));
const kernelsOf = new Map<Gpu, Kernels>();
for (const gpu of gpus) kernelsOf.set(gpu, await createKernels(gpu));

/**
 * Why the f16-weight variants cannot run here, or null: reported as ignored with the reason (the GL
 * adapter never offers `shader-f16`), and a failure under CI=true (set for the Vulkan pass).
 */
const F16_MISSING = gpus[0].f16
  ? null
  : Deno.env.get("DYNLLAVA_NO_F16") === "1"
  ? "f16 weights, disabled by DYNLLAVA_NO_F16=1"
  : "an adapter with shader-f16";

/** Registers `fn` once per device, naming the weight type (and the f16 variant's absence). */
function gpuTest(name: string, fn: (gpu: Gpu, k: Kernels, buffers: BufferSet) => Promise<void>): void {
  for (const gpu of gpus) {
    Deno.test(`${name} [${weightDtype(gpu)} weights]`, async () => {
      const buffers = new BufferSet(gpu);
      try {
        await fn(gpu, kernelsOf.get(gpu)!, buffers);
      } finally {
        buffers.destroy();
      }
    });
  }
  if (F16_MISSING) testNeeding({ name: `${name} [f16 weights]`, missing: F16_MISSING, fn: () => {} });
}

/** Why f16 KV caches cannot run here, or null (reported as ignored; a failure under CI=true). */
const KV_F16_MISSING = gpus[0].shaderF16 ? null : "an adapter with shader-f16";

/** Registers `fn` with an f16 KV cache on the first device (ignored where it lacks shader-f16). */
function kvF16Test(name: string, fn: (gpu: Gpu, k: Kernels, buffers: BufferSet) => Promise<void>): void {
  const gpu = gpus[0];
  testNeeding({
    name: `${name} [f16 KV]`,
    missing: KV_F16_MISSING,
    fn: async () => {
      const buffers = new BufferSet(gpu);
      try {
        await fn(gpu, kernelsOf.get(gpu)!, buffers);
      } finally {
        buffers.destroy();
      }
    },
  });
}

/** A cache's values as stored in `kvDtype`: the data to upload and the f32 values it reads back as. */
function storedKv(values: Float32Array, kvDtype: KvDtype): { data: ArrayBufferView; read: Float32Array } {
  if (kvDtype === "f32") return { data: values, read: values };
  const bits = float32ToF16(values);
  return { data: bits, read: f16ToFloat32(bits) };
}

/** Runs dispatches and reads `floats` f32 of `out`. */
async function run(gpu: Gpu, dispatches: Dispatch[], out: GPUBuffer, floats: number): Promise<Float32Array> {
  gpu.submit(dispatches);
  return await readF32(gpu, out, floats);
}

function randomIntegers(n: number, seed: number, below: number): Uint32Array {
  return Uint32Array.from(randomArray(n, seed), (v) => Math.floor((v + 1) / 2 * below));
}

// ---- weights ---------------------------------------------------------------------------------

gpuTest("uploadWeight() splits rows into chunks in the device's weight type", (gpu, _k, buffers) => {
  const values = randomArray(10 * 6, 1);
  const weight = uploadWeight(buffers, values, { rows: 10, cols: 6, label: "w", maxChunkBytes: 4 * 6 * 4 });
  const bytes = gpu.f16 ? 2 : 4;
  assert.equal(weight.dtype, gpu.f16 ? "f16" : "f32");
  assert.deepEqual(
    weight.chunks.map((c) => [c.rowStart, c.rows]),
    gpu.f16 ? [[0, 8], [8, 2]] : [[0, 4], [4, 4], [8, 2]],
  );
  assert.equal(weight.chunks[0].buffer.size, Math.ceil(weight.chunks[0].rows * 6 * bytes / 16) * 16);
  assert.throws(
    () => uploadWeight(buffers, values, { rows: 10, cols: 6, label: "w", maxChunkBytes: 8 }),
    GpuError,
  );
  assert.throws(() => uploadWeight(buffers, values, { rows: 9, cols: 6, label: "w" }), GpuError);
  return Promise.resolve();
});

// ---- matmul ----------------------------------------------------------------------------------

interface MatmulCase {
  rows: number;
  inCols: number;
  outCols: number;
  bias?: boolean;
  accumulate?: boolean;
  maxChunkBytes?: number;
}

async function checkMatmul(gpu: Gpu, k: Kernels, buffers: BufferSet, c: MatmulCase, seed: number) {
  const x = randomArray(c.rows * c.inCols, seed);
  const w = randomArray(c.outCols * c.inCols, seed + 1, 0.5);
  const bias = c.bias ? randomArray(c.outCols, seed + 2) : undefined;
  const start = randomArray(c.rows * c.outCols, seed + 3);
  const weight = uploadWeight(buffers, w, {
    rows: c.outCols,
    cols: c.inCols,
    label: "w",
    maxChunkBytes: c.maxChunkBytes,
  });
  const out = c.accumulate ? buffers.upload(start, "out") : poisoned(buffers, c.rows * c.outCols, "out");
  const dispatches = k.matmul.bind(buffers, {
    x: buffers.upload(x, "x"),
    weight,
    bias: bias && buffers.upload(bias, "bias"),
    out,
    rows: c.rows,
    accumulate: c.accumulate,
  });
  assert.equal(dispatches.length, weight.chunks.length);
  const actual = await run(gpu, dispatches, out, c.rows * c.outCols);
  const expected = cpu.linear(x, storedWeightValues(w, weight.dtype), { rows: c.rows, bias });
  if (c.accumulate) cpu.addInPlace(expected, start);
  assertClose(actual, expected, EXACT, `matmul ${JSON.stringify(c)}`);
  return dispatches;
}

gpuTest("createMatmul() M=1 (GEMV) matches linear() for K = 64, 63, 1 with bias and accumulate", async (
  gpu,
  k,
  buffers,
) => {
  await checkMatmul(gpu, k, buffers, { rows: 1, inCols: 64, outCols: 65, bias: true }, 10);
  await checkMatmul(gpu, k, buffers, { rows: 1, inCols: 63, outCols: 33, accumulate: true }, 20);
  await checkMatmul(gpu, k, buffers, { rows: 1, inCols: 1, outCols: 1, bias: true }, 30);
  await checkMatmul(gpu, k, buffers, { rows: 1, inCols: 1000, outCols: 7, bias: true, accumulate: true }, 40);
});

gpuTest("createMatmul() M>1 (tiled) matches linear() on shapes off the 64×64×16 tiles", async (
  gpu,
  k,
  buffers,
) => {
  await checkMatmul(gpu, k, buffers, { rows: 65, inCols: 72, outCols: 63, bias: true, accumulate: true }, 50);
  await checkMatmul(gpu, k, buffers, { rows: 63, inCols: 65, outCols: 130 }, 60);
  await checkMatmul(gpu, k, buffers, { rows: 2, inCols: 16, outCols: 1, bias: true }, 70);
  await checkMatmul(gpu, k, buffers, { rows: 130, inCols: 24, outCols: 5, accumulate: true }, 80);
});

gpuTest("createMatmul() writes every chunk of a weight split in ≥ 3 chunks", async (gpu, k, buffers) => {
  const maxChunkBytes = 16 * 2 * 30; // f16: 30 rows per chunk, f32: 15
  for (const rows of [1, 70]) {
    const dispatches = await checkMatmul(gpu, k, buffers, {
      rows,
      inCols: 16,
      outCols: 100,
      bias: true,
      accumulate: rows > 1,
      maxChunkBytes,
    }, 90 + rows);
    assert.ok(dispatches.length >= 3, `${dispatches.length} chunks`);
  }
});

gpuTest("createMatmul() GEMV spans > 65535 workgroups through a 2-D grid", async (gpu, k, buffers) => {
  const outCols = 4 * MAX_GRID + 7;
  const dispatches = await checkMatmul(gpu, k, buffers, { rows: 1, inCols: 8, outCols, bias: true }, 100);
  const [x, y, z] = dispatches[0].workgroups;
  assert.ok(x * y * z > MAX_GRID && y > 1, `grid ${dispatches[0].workgroups}`);
});

gpuTest(
  "createMatmul() reads x at xRowOffset and writes out at outRowOffset only",
  async (gpu, k, buffers) => {
    for (const [rows, inCols] of [[1, 24], [3, 13]]) {
      const outCols = 10;
      const x = randomArray((2 + rows) * inCols, 110 + rows);
      const w = randomArray(outCols * inCols, 111);
      const weight = uploadWeight(buffers, w, { rows: outCols, cols: inCols, label: "w" });
      const out = poisoned(buffers, (1 + rows + 1) * outCols, "out");
      const dispatches = k.matmul.bind(buffers, {
        x: buffers.upload(x, "x"),
        weight,
        out,
        rows,
        xRowOffset: 2,
        outRowOffset: 1,
      });
      const actual = await run(gpu, dispatches, out, (rows + 2) * outCols);
      const expected = cpu.linear(x.subarray(2 * inCols), storedWeightValues(w, weight.dtype), { rows });
      assertClose(actual.subarray(outCols, (rows + 1) * outCols), expected, EXACT, `offset rows ${rows}`);
      assert.ok(actual.subarray(0, outCols).every(Number.isNaN), "row before outRowOffset was written");
      assert.ok(
        actual.subarray((rows + 1) * outCols).every(Number.isNaN),
        "row after the output was written",
      );
    }
  },
);

// ---- embedding -------------------------------------------------------------------------------

gpuTest("createEmbedding() gathers rows across ≥ 3 chunks from ids at an offset, clamping ids", async (
  gpu,
  k,
  buffers,
) => {
  const vocab = 50;
  const state = buffers.upload(new Uint32Array([999, 3, 49, 25, 0, 1_000_000]), "state");
  for (const cols of [24, 13]) {
    const values = randomArray(vocab * cols, 120 + cols);
    const table = uploadWeight(buffers, values, {
      rows: vocab,
      cols,
      label: "embed",
      maxChunkBytes: cols * 2 * 20,
    });
    assert.ok(table.chunks.length >= 3);
    const out = poisoned(buffers, 5 * cols, "out");
    const dispatches = k.embedding.bind(buffers, { ids: state, idsOffset: 1, table, out, rows: 5 });
    const actual = await run(gpu, dispatches, out, 5 * cols);
    const expected = cpu.gatherRows(storedWeightValues(values, table.dtype), cols, [3, 49, 25, 0, vocab - 1]);
    assertClose(actual, expected, 0, `embedding cols ${cols}`);
  }
});

// ---- rmsnorm ---------------------------------------------------------------------------------

gpuTest(
  "createRmsNorm() matches rmsNorm() for rows 1, 3, 65 and cols 63, 64, 300",
  async (gpu, k, buffers) => {
    for (const [rows, cols] of [[1, 64], [3, 300], [65, 63]]) {
      const x = randomArray(rows * cols, 130 + rows, 3);
      const weight = randomArray(cols, 131);
      const out = poisoned(buffers, rows * cols, "out");
      const dispatches = k.rmsNorm.bind(buffers, {
        x: buffers.upload(x, "x"),
        weight: buffers.upload(weight, "norm"),
        out,
        rows,
        cols,
        eps: 1e-6,
      });
      const actual = await run(gpu, dispatches, out, rows * cols);
      assertClose(actual, cpu.rmsNorm(x, weight, 1e-6), EXACT, `rmsnorm ${rows}×${cols}`);
    }
  },
);

// ---- rope ------------------------------------------------------------------------------------

gpuTest("createRope() matches rope() for positions up to 4096 read at an offset", async (gpu, k, buffers) => {
  for (const [rows, heads, headDim] of [[65, 3, 16], [4, 2, 128], [1, 5, 64]]) {
    const x = randomArray(rows * heads * headDim, 140 + rows);
    const positions = randomIntegers(rows, 141 + rows, 4097);
    positions[0] = 4096;
    const state = buffers.upload(new Uint32Array([7, 7, ...positions]), "positions");
    const buffer = buffers.upload(x, "x");
    const dispatches = k.rope.bind(buffers, {
      x: buffer,
      positions: state,
      positionsOffset: 2,
      rows,
      heads,
      headDim,
      theta: 10000,
    });
    const actual = await run(gpu, dispatches, buffer, x.length);
    const expected = x.slice();
    cpu.rope(expected, positions, { heads, headDim, theta: 10000 });
    assertClose(actual, expected, ROPE, `rope ${rows}×${heads}×${headDim}`);
  }
});

gpuTest(
  "createRope() turns a second tensor (k with q) at the same positions in the same dispatch",
  async (gpu, k, buffers) => {
    for (const [rows, heads, kvHeads, headDim] of [[1, 4, 2, 64], [3, 5, 5, 16], [8, 2, 1, 128]]) {
      const q = randomArray(rows * heads * headDim, 150 + rows);
      const kNew = randomArray(rows * kvHeads * headDim, 151 + rows);
      const positions = randomIntegers(rows, 152 + rows, 4097);
      const state = buffers.upload(new Uint32Array([7, ...positions]), "positions");
      const [qBuffer, kBuffer] = [buffers.upload(q, "q"), buffers.upload(kNew, "k")];
      const dispatches = k.rope.bind(buffers, {
        x: qBuffer,
        second: { x: kBuffer, heads: kvHeads },
        positions: state,
        positionsOffset: 1,
        rows,
        heads,
        headDim,
        theta: 10000,
      });
      assert.equal(dispatches.length, 1);
      const actualQ = await run(gpu, dispatches, qBuffer, q.length);
      const actualK = await readF32(gpu, kBuffer, kNew.length);
      const rotate = { headDim, theta: 10000 };
      cpu.rope(q, positions, { heads, ...rotate });
      cpu.rope(kNew, positions, { heads: kvHeads, ...rotate });
      assertClose(actualQ, q, ROPE, `rope q ${rows}×${heads}×${headDim}`);
      assertClose(actualK, kNew, ROPE, `rope k ${rows}×${kvHeads}×${headDim}`);
    }
  },
);

// ---- attention -------------------------------------------------------------------------------

interface AttentionCase {
  rows: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  cached: number;
  capacity: number;
  causal: boolean;
}

async function checkAttention(
  gpu: Gpu,
  k: Kernels,
  buffers: BufferSet,
  c: AttentionCase,
  seed: number,
  kvDtype: KvDtype = "f32",
) {
  const { rows, heads, kvHeads, headDim } = c;
  const q = randomArray(rows * heads * headDim, seed, 2);
  const keys = storedKv(randomArray(c.capacity * kvHeads * headDim, seed + 1, 2), kvDtype);
  const values = storedKv(randomArray(c.capacity * kvHeads * headDim, seed + 2), kvDtype);
  const out = poisoned(buffers, q.length, "out");
  const counts = buffers.upload(new Uint32Array([5, c.cached, 9]), "counts");
  const dispatches = k.attention.bind(buffers, {
    q: buffers.upload(q, "q"),
    keys: buffers.upload(keys.data, "keys"),
    values: buffers.upload(values.data, "values"),
    kvDtype,
    out,
    counts,
    countIndex: 1,
    rows,
    heads,
    kvHeads,
    headDim,
    causal: c.causal,
  });
  const actual = await run(gpu, dispatches, out, q.length);
  // Rows past the capacity are not visible (the kernel clamps instead of reading out of bounds).
  const visible = Array.from(
    { length: rows },
    (_, m) => Math.min(c.capacity, c.causal ? c.cached + m + 1 : c.cached),
  );
  const expected = cpu.attention(q, keys.read, values.read, { heads, kvHeads, headDim, visible });
  assertClose(actual, expected, EXACT, `attention ${kvDtype} KV ${JSON.stringify(c)}`);
}

/** Decode-variant cases (M < 8) with their seeds: GQA, long caches, head dims 8..128, non-causal. */
const DECODE_CASES: [AttentionCase, number][] = [
  [{ rows: 1, heads: 4, kvHeads: 2, headDim: 16, cached: 200, capacity: 300, causal: true }, 150],
  [{ rows: 7, heads: 4, kvHeads: 1, headDim: 8, cached: 63, capacity: 70, causal: true }, 160],
  [{ rows: 1, heads: 4, kvHeads: 1, headDim: 64, cached: 3000, capacity: 3001, causal: true }, 170],
  [{ rows: 1, heads: 4, kvHeads: 4, headDim: 128, cached: 0, capacity: 1, causal: true }, 180],
  [{ rows: 2, heads: 2, kvHeads: 2, headDim: 24, cached: 65, capacity: 65, causal: false }, 190],
];

/** Prefill-variant cases (M ≥ 8): blocks off the 8-row grid, causal and not, clamped to the capacity. */
const PREFILL_CASES: [AttentionCase, number][] = [
  [{ rows: 65, heads: 4, kvHeads: 2, headDim: 16, cached: 7, capacity: 80, causal: true }, 200],
  [{ rows: 9, heads: 4, kvHeads: 1, headDim: 128, cached: 40, capacity: 49, causal: true }, 210],
  [{ rows: 63, heads: 2, kvHeads: 2, headDim: 40, cached: 63, capacity: 63, causal: false }, 220],
  [{ rows: 9, heads: 2, kvHeads: 1, headDim: 12, cached: 60, capacity: 64, causal: true }, 225],
];

for (const kvTest of [gpuTest, kvF16Test]) {
  const kvDtype: KvDtype = kvTest === kvF16Test ? "f16" : "f32";
  kvTest("createAttention() decode (M < 8) matches attention() with GQA over cached rows", async (
    gpu,
    k,
    buffers,
  ) => {
    for (const [c, seed] of DECODE_CASES) await checkAttention(gpu, k, buffers, c, seed, kvDtype);
  });
  kvTest(
    "createAttention() prefill (M ≥ 8) matches attention(), causal and not, clamped to the capacity",
    async (gpu, k, buffers) => {
      for (const [c, seed] of PREFILL_CASES) await checkAttention(gpu, k, buffers, c, seed, kvDtype);
    },
  );
}

gpuTest("createAttention() without visible keys writes zeros like attention()", async (gpu, k, buffers) => {
  for (const rows of [1, 9]) {
    await checkAttention(gpu, k, buffers, {
      rows,
      heads: 2,
      kvHeads: 1,
      headDim: 8,
      cached: 0,
      capacity: 4,
      causal: false,
    }, 230);
  }
});

gpuTest(
  "createAttention() rejects head dims above 128 or not multiples of 4, and heads not a multiple of kvHeads",
  (
    _gpu,
    k,
    buffers,
  ) => {
    const buffer = buffers.storage(1024, "any");
    const args = {
      q: buffer,
      keys: buffer,
      values: buffer,
      out: buffers.storage(1024, "out"),
      counts: buffer,
      countIndex: 0,
      rows: 1,
      heads: 4,
      kvHeads: 2,
      headDim: 256,
      causal: true,
    };
    assert.throws(() => k.attention.bind(buffers, args), InputError);
    assert.throws(() => k.attention.bind(buffers, { ...args, headDim: 6 }), InputError);
    assert.throws(() => k.attention.bind(buffers, { ...args, headDim: 8, kvHeads: 3 }), InputError);
    assert.throws(() => k.attention.bind(buffers, { ...args, headDim: 8, rows: -1 }), InputError);
    return Promise.resolve();
  },
);

for (const kvTest of [gpuTest, kvF16Test]) {
  const kvDtype: KvDtype = kvTest === kvF16Test ? "f16" : "f32";
  kvTest("bindProbsMean() matches attentionProbsMean() and writes only visible keys", async (
    gpu,
    k,
    buffers,
  ) => {
    const [rows, heads, kvHeads, headDim, capacity] = [9, 4, 2, 16, 64];
    const q = randomArray(rows * heads * headDim, 240, 2);
    const keys = storedKv(randomArray(capacity * kvHeads * headDim, 241, 2), kvDtype);
    const counts = buffers.upload(new Uint32Array([20, 33]), "counts");
    for (const [row, countIndex, causal, visible] of [[8, 0, true, 29], [0, 1, false, 33]] as const) {
      const out = poisoned(buffers, capacity, "out");
      const dispatches = k.attention.bindProbsMean(buffers, {
        q: buffers.upload(q, "q"),
        row,
        keys: buffers.upload(keys.data, "keys"),
        kvDtype,
        out,
        counts,
        countIndex,
        heads,
        kvHeads,
        headDim,
        causal,
      });
      const actual = await run(gpu, dispatches, out, capacity);
      const qRow = q.subarray(row * heads * headDim, (row + 1) * heads * headDim);
      const expected = cpu.attentionProbsMean(qRow, keys.read, { heads, kvHeads, headDim, visible });
      assertClose(actual.subarray(0, visible), expected, EXACT, `probs mean row ${row}`);
      assert.ok(actual.subarray(visible).every(Number.isNaN), "a key past the visible ones was written");
    }
  });
}

// ---- elementwise -----------------------------------------------------------------------------

const COUNTS = [1, 63, 65, 1000];

gpuTest("createAdd() and createAddBias() match addInPlace()", async (gpu, k, buffers) => {
  for (const count of COUNTS) {
    const a = randomArray(count, 250 + count);
    const b = randomArray(count, 251 + count);
    const buffer = buffers.upload(a, "a");
    const actual = await run(
      gpu,
      k.add.bind(buffers, { a: buffer, b: buffers.upload(b, "b"), count }),
      buffer,
      count,
    );
    const expected = a.slice();
    cpu.addInPlace(expected, b);
    assertClose(actual, expected, 0, `add ${count}`);
  }
  for (const [rows, cols] of [[1, 1], [65, 7], [3, 300]]) {
    const x = randomArray(rows * cols, 252 + cols);
    const bias = randomArray(cols, 253);
    const buffer = buffers.upload(x, "x");
    const dispatches = k.addBias.bind(buffers, {
      x: buffer,
      bias: buffers.upload(bias, "bias"),
      count: x.length,
      cols,
    });
    const actual = await run(gpu, dispatches, buffer, x.length);
    const expected = x.slice();
    for (let r = 0; r < rows; r++) cpu.addInPlace(expected.subarray(r * cols, (r + 1) * cols), bias);
    assertClose(actual, expected, 0, `addBias ${rows}×${cols}`);
  }
});

gpuTest("createSwiglu() matches swiglu()", async (gpu, k, buffers) => {
  for (const count of COUNTS) {
    const gate = randomArray(count, 260 + count, 8);
    const up = randomArray(count, 261 + count);
    const out = poisoned(buffers, count, "out");
    const dispatches = k.swiglu.bind(buffers, {
      gate: buffers.upload(gate, "gate"),
      up: buffers.upload(up, "up"),
      out,
      count,
    });
    assertClose(await run(gpu, dispatches, out, count), cpu.swiglu(gate, up), EXACT, `swiglu ${count}`);
  }
});

gpuTest("createGelu() and createQuickGelu() match gelu() and quickGelu()", async (gpu, k, buffers) => {
  for (const count of COUNTS) {
    const x = randomArray(count, 270 + count, 6);
    for (
      const [kernel, twin, name] of [[k.gelu, cpu.gelu, "gelu"], [
        k.quickGelu,
        cpu.quickGelu,
        "quickGelu",
      ]] as const
    ) {
      const buffer = buffers.upload(x, "x");
      const actual = await run(gpu, kernel.bind(buffers, { x: buffer, count }), buffer, count);
      assertClose(actual, twin(x), EXACT, `${name} ${count}`);
    }
  }
  const large = new Float32Array([-100, -12, -5.5, -0.001, 0, 1e-6, 3, 30]);
  const buffer = buffers.upload(large, "x");
  const actual = await run(
    gpu,
    k.gelu.bind(buffers, { x: buffer, count: large.length }),
    buffer,
    large.length,
  );
  const expected = cpu.gelu(large);
  for (let i = 0; i < large.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= 1e-6 * Math.max(1, Math.abs(expected[i])),
      `gelu(${large[i]})`,
    );
  }
});

// ---- kv_append -------------------------------------------------------------------------------

/** Halves whose rounding to f16 is a tie or next to one, subnormal, signed zero, and the largest. */
const F16_EDGES = [
  1 + 2 ** -11,
  1 + 3 * 2 ** -11,
  -(1 + 2 ** -11),
  1 + 2 ** -11 + 2 ** -20,
  2 ** -24,
  3 * 2 ** -25,
];
F16_EDGES.push(2 ** -14 - 2 ** -25, -0, 65504, 0.1, -1 / 3, 1e-9);

for (const kvTest of [gpuTest, kvF16Test]) {
  const kvDtype: KvDtype = kvTest === kvF16Test ? "f16" : "f32";
  kvTest(
    "createKvAppend() writes rows after counts[countIndex] and nowhere else",
    async (gpu, k, buffers) => {
      const [capacity, cols] = [20, 12];
      for (const [base, rows] of [[5, 3], [0, 1], [19, 3]]) {
        const start = storedKv(randomArray(capacity * cols, 280 + base), kvDtype);
        const src = randomArray(rows * cols, 281 + base);
        src.set(F16_EDGES.slice(0, src.length));
        const cache = buffers.upload(start.data, "cache");
        const counts = buffers.upload(new Uint32Array([1, 2, base]), "counts");
        const dispatches = k.kvAppend.bind(buffers, {
          src: buffers.upload(src, "src"),
          cache,
          kvDtype,
          counts,
          countIndex: 2,
          rows,
          cols,
        });
        gpu.submit(dispatches);
        const expected = start.read.slice();
        cpu.kvAppend(expected, src, { base, cols, kvDtype });
        // Bit for bit: the GPU's f16 words are the twin's rounding (to nearest, ties to even).
        const bytes = await gpu.read(cache, 0, start.data.byteLength);
        const actual = kvDtype === "f16" ? f16ToFloat32(new Uint16Array(bytes)) : new Float32Array(bytes);
        assert.deepEqual(actual, expected, `append ${rows} rows at ${base}`);
        assert.deepEqual(new Uint32Array(await gpu.read(counts, 0, 12)), new Uint32Array([1, 2, base]));
      }
    },
  );
}

// ---- bound once, run per decode step ---------------------------------------------------------

gpuTest(
  "decode dispatches bound once follow positions and counts in GPU buffers",
  async (gpu, k, buffers) => {
    const [heads, kvHeads, headDim, capacity, prompt] = [4, 2, 16, 40, 30];
    const kvCols = kvHeads * headDim;
    const q = buffers.storage(heads * headDim * 4, "q");
    const kNew = buffers.storage(kvCols * 4, "k");
    const vNew = buffers.storage(kvCols * 4, "v");
    const keys = buffers.storage(capacity * kvCols * 4, "keys");
    const values = buffers.storage(capacity * kvCols * 4, "values");
    const state = buffers.storage(8, "state"); // [token, position]
    const counts = buffers.storage(8, "counts"); // [other layer, this layer]
    const out = buffers.storage(heads * headDim * 4, "out");
    const cpuKeys = randomArray(capacity * kvCols, 290, 2);
    const cpuValues = randomArray(capacity * kvCols, 291);
    writeBuffer(gpu, keys, 0, cpuKeys);
    writeBuffer(gpu, values, 0, cpuValues);
    const rope = { positions: state, positionsOffset: 1, rows: 1, headDim, theta: 10000 };
    const step = [
      ...k.rope.bind(buffers, { ...rope, x: q, heads }),
      ...k.rope.bind(buffers, { ...rope, x: kNew, heads: kvHeads }),
      ...k.kvAppend.bind(buffers, { src: kNew, cache: keys, counts, countIndex: 1, rows: 1, cols: kvCols }),
      ...k.kvAppend.bind(buffers, { src: vNew, cache: values, counts, countIndex: 1, rows: 1, cols: kvCols }),
      ...k.attention.bind(buffers, {
        q,
        keys,
        values,
        out,
        counts,
        countIndex: 1,
        rows: 1,
        heads,
        kvHeads,
        headDim,
        causal: true,
      }),
    ];
    // Cache rows: [0, 20) prompt, then decode steps; step 1's token is refused (counts not advanced).
    let cached = 20;
    for (const [s, admitted] of [[0, true], [1, false], [2, true]] as const) {
      const position = prompt + s;
      const qv = randomArray(heads * headDim, 300 + s);
      const kv = randomArray(kvCols, 310 + s);
      const vv = randomArray(kvCols, 320 + s);
      writeBuffer(gpu, q, 0, qv);
      writeBuffer(gpu, kNew, 0, kv);
      writeBuffer(gpu, vNew, 0, vv);
      writeBuffer(gpu, state, 0, new Uint32Array([5, position]));
      writeBuffer(gpu, counts, 0, new Uint32Array([0, cached]));
      const actual = await run(gpu, step, out, heads * headDim);
      cpu.rope(qv, [position], { heads, headDim, theta: 10000 });
      cpu.rope(kv, [position], { heads: kvHeads, headDim, theta: 10000 });
      cpu.kvAppend(cpuKeys, kv, { base: cached, cols: kvCols, kvDtype: "f32" });
      cpu.kvAppend(cpuValues, vv, { base: cached, cols: kvCols, kvDtype: "f32" });
      const expected = cpu.attention(qv, cpuKeys, cpuValues, {
        heads,
        kvHeads,
        headDim,
        visible: [cached + 1],
      });
      assertClose(actual, expected, ROPE, `decode step ${s}`);
      if (admitted) cached++;
    }
  },
);

// ---- caller mistakes -------------------------------------------------------------------------

gpuTest("bind() rejects caller mistakes with InputError naming the kernel", (gpu, k, buffers) => {
  const small = buffers.storage(16, "small");
  const weight = uploadWeight(buffers, randomArray(8 * 8, 330), { rows: 8, cols: 8, label: "w" });
  const otherDtype = { ...weight, dtype: gpu.f16 ? "f32" as const : "f16" as const };
  const mistakes: [string, () => unknown][] = [
    ["matmul", () => k.matmul.bind(buffers, { x: small, weight, out: small, rows: 1 })],
    ["matmul", () => k.matmul.bind(buffers, { x: small, weight: otherDtype, out: small, rows: 1 })],
    ["embedding", () => k.embedding.bind(buffers, { ids: small, table: weight, out: small, rows: 2 })],
    [
      "rmsnorm",
      () => k.rmsNorm.bind(buffers, { x: small, weight: small, out: small, rows: -1, cols: 4, eps: 0 }),
    ],
    [
      "rmsnorm",
      () => k.rmsNorm.bind(buffers, { x: small, weight: small, out: small, rows: 1, cols: 4, eps: NaN }),
    ],
    [
      "rope",
      () => k.rope.bind(buffers, { x: small, positions: small, rows: 1.5, heads: 1, headDim: 4, theta: 1e4 }),
    ],
    [
      "kv_append",
      () =>
        k.kvAppend.bind(buffers, {
          src: small,
          cache: small,
          counts: small,
          countIndex: -1,
          rows: 1,
          cols: 4,
        }),
    ],
    [
      "kv_append",
      () =>
        k.kvAppend.bind(buffers, {
          src: small,
          cache: small,
          kvDtype: "f16",
          counts: small,
          countIndex: 0,
          rows: 1,
          cols: 3,
        }),
    ],
    ["add", () => k.add.bind(buffers, { a: small, b: small, count: -4 })],
  ];
  for (const [kernel, bind] of mistakes) {
    assert.throws(bind, (err: unknown) => err instanceof InputError && err.where.startsWith(kernel), kernel);
  }
  return Promise.resolve();
});
