/**
 * Parity tests of the non-decoder kernels against their CPU twins: layernorm, gatherRows (f32 and
 * u32), im2col (also checked against a direct patch convolution), and the predictor pieces
 * (halfGlobalConcat, logSoftmax2Col0, admitFlag). Outputs are poisoned with NaN before each run;
 * shapes include 1, 63, 65 and grids beyond 65535 workgroups.
 * @module
 */
import assert from "node:assert/strict";
import { BufferSet, createGpu, writeBuffer } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { gatherRows, layerNorm, linear } from "../runtime/core/cpu_ops.ts";
import { im2col } from "../runtime/core/patches_cpu.ts";
import { admitFlag, halfGlobalConcat, logSoftmax2Col0 } from "../runtime/core/predictor_cpu_ops.ts";
import { createKernels, KERNELS } from "../runtime/webgpu/gpu_kernels.ts";
import { advanceState } from "../runtime/core/sparse_kv.ts";
import { assertClose, poisoned, randomArray, readF32, withGpu } from "./kernel_util.ts";

/** Bit patterns of f32 values, for exact comparisons of copies. */
function bits(values: Float32Array): Uint32Array {
  return new Uint32Array(values.buffer, values.byteOffset, values.length);
}

/** Asserts equal words, naming the first difference (a full diff of large arrays is unreadable). */
function assertSameWords(actual: Uint32Array, expected: Uint32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const at = actual.findIndex((word, i) => word !== expected[i]);
  assert.equal(at, -1, `${what}: first difference at ${at}: ${actual[at]} vs ${expected[at]}`);
}

/** Random row indices in [0, sourceRows), with repeats. */
function randomIndices(count: number, sourceRows: number, seed: number): Uint32Array {
  return Uint32Array.from(randomArray(count, seed), (v) => Math.floor((v + 1) / 2 * sourceRows));
}

Deno.test("createLayerNorm() matches layerNorm() on awkward shapes", async () => {
  await withGpu(async (gpu, buffers) => {
    const { layerNorm: layerNormKernel } = await createKernels(gpu, { only: ["layerNorm"] });
    const shapes: [number, number, number][] = [
      [1, 1, 1e-5],
      [1, 63, 1e-5],
      [65, 65, 1e-6],
      [3, 1024, 1e-5],
      [
        70000,
        2,
        1e-5,
      ],
    ];
    let seed = 1;
    const runs = shapes.map(([rows, cols, eps]) => {
      // Offset and scaled rows, so the mean really has to be removed.
      const x = randomArray(rows * cols, seed++, 3).map((v) => v + 5);
      const weight = randomArray(cols, seed++, 2);
      const bias = randomArray(cols, seed++);
      const out = poisoned(buffers, rows * cols, "out");
      const args = { rows, cols, eps, out };
      const dispatches = layerNormKernel.bind(buffers, {
        ...args,
        x: buffers.upload(x, "x"),
        weight: buffers.upload(weight, "w"),
        bias: buffers.upload(bias, "b"),
      });
      return { dispatches, expected: layerNorm(x, weight, bias, eps), out, what: `[${rows}, ${cols}]` };
    });
    gpu.submit(runs.flatMap((r) => r.dispatches));
    for (const r of runs) {
      assertClose(await readF32(gpu, r.out, r.expected.length), r.expected, 1e-10, `layernorm ${r.what}`);
    }
  });
});

Deno.test("createGatherRows() copies f32 rows exactly and leaves other rows alone", async () => {
  await withGpu(async (gpu, buffers) => {
    const { gatherRows: gather } = await createKernels(gpu, { only: ["gatherRows"] });
    for (const [sourceRows, cols, rows] of [[100, 65, 63], [5, 1, 1], [3, 4096, 7]]) {
      const x = randomArray(sourceRows * cols, sourceRows + cols);
      x[0] = NaN; // NaN payloads travel as bits too
      const ids = randomIndices(rows, sourceRows, rows);
      const out = poisoned(buffers, (rows + 1) * cols, "out");
      const args = { x: buffers.upload(x, "x"), indices: buffers.upload(ids, "ids"), out, rows, cols };
      gpu.submit(gather.bind(buffers, args));
      const got = await readF32(gpu, out, (rows + 1) * cols);
      const expected = gatherRows(x, cols, ids);
      assertSameWords(bits(got.subarray(0, rows * cols)), bits(expected), `gather [${rows}, ${cols}]`);
      assert.ok(got.subarray(rows * cols).every(Number.isNaN), "row past K written");
    }
  });
});

Deno.test("createGatherRows() gathers u32 positions beyond 65535 workgroups", async () => {
  await withGpu(async (gpu, buffers) => {
    const { gatherRows: gather } = await createKernels(gpu, { only: ["gatherRows"] });
    const rows = 70000;
    const positions = Uint32Array.from({ length: 1000 }, (_, i) => 3 * i + 7);
    const ids = randomIndices(rows, positions.length, 99);
    const out = buffers.upload(new Uint32Array(rows).fill(0xffffffff), "out");
    const x = buffers.upload(positions, "positions");
    gpu.submit(gather.bind(buffers, { x, indices: buffers.upload(ids, "ids"), out, rows, cols: 1 }));
    const got = new Uint32Array(await gpu.read(out, 0, rows * 4));
    assertSameWords(got, Uint32Array.from(ids, (i) => positions[i]), "gathered positions");
  });
});

/** Direct patch convolution (stride = kernel = patch, no padding): [out, P] for image [C, S, S]. */
function patchConv(image: Float32Array, weight: Float32Array, options: { size: number; patch: number }) {
  const { size, patch } = options;
  const perSide = size / patch;
  const channels = image.length / (size * size);
  const outChannels = weight.length / (channels * patch * patch);
  const y = new Float32Array(outChannels * perSide * perSide);
  for (let o = 0; o < outChannels; o++) {
    for (let py = 0; py < perSide; py++) {
      for (let px = 0; px < perSide; px++) {
        let acc = 0;
        for (let c = 0; c < channels; c++) {
          for (let ky = 0; ky < patch; ky++) {
            for (let kx = 0; kx < patch; kx++) {
              acc += weight[((o * channels + c) * patch + ky) * patch + kx] *
                image[(c * size + py * patch + ky) * size + px * patch + kx];
            }
          }
        }
        y[o * perSide * perSide + py * perSide + px] = acc;
      }
    }
  }
  return y;
}

Deno.test("im2col() times the flattened conv weight equals the patch convolution", () => {
  const size = 12, patch = 4, channels = 3, outChannels = 5;
  const image = randomArray(channels * size * size, 11);
  const weight = randomArray(outChannels * channels * patch * patch, 12); // [out, C, p, p]
  const patches = im2col(image, { size, patch, channels }); // [9, 48]
  const viaMatmul = linear(patches, weight, { rows: 9 }); // [9, out]
  const direct = patchConv(image, weight, { size, patch }); // [out, 9]
  const transposed = new Float32Array(direct.length).map((_, i) =>
    direct[(i % outChannels) * 9 + (i / outChannels | 0)]
  );
  assertClose(viaMatmul, transposed, 1e-12, "patch conv");
  assert.throws(() => im2col(new Float32Array(3 * 10 * 10), { size: 10, patch: 4, channels: 3 }), InputError);
  assert.throws(() => im2col(new Float32Array(10), { size: 4, patch: 2, channels: 1 }), InputError);
});

Deno.test("createIm2col() matches im2col() for 1 to 576 patches", async () => {
  await withGpu(async (gpu, buffers) => {
    const { im2col: kernel } = await createKernels(gpu, { only: ["im2col"] });
    const runs = [[4, 2, 1], [14, 14, 3], [21, 7, 3], [65, 13, 3], [336, 14, 3]].map(
      ([size, patch, channels]) => {
        const image = randomArray(channels * size * size, size + patch);
        const total = image.length;
        const out = poisoned(buffers, total, "patches");
        const geometry = { size, patch, channels };
        const dispatches = kernel.bind(buffers, { image: buffers.upload(image, "image"), out, ...geometry });
        return { dispatches, out, expected: im2col(image, geometry), what: `S ${size} p ${patch}` };
      },
    );
    gpu.submit(runs.flatMap((r) => r.dispatches));
    for (const r of runs) {
      const got = await readF32(gpu, r.out, r.expected.length);
      assert.ok(!got.some(Number.isNaN), `${r.what}: unwritten output`);
      assertSameWords(bits(got), bits(r.expected), r.what);
    }
    const image = buffers.storage(3 * 100 * 4, "image");
    assert.throws(
      () => kernel.bind(buffers, { image, out: image, size: 10, patch: 3, channels: 3 }),
      InputError,
    );
  });
});

Deno.test("createHalfGlobalConcat() matches halfGlobalConcat() incl. > 65535 columns", async () => {
  await withGpu(async (gpu, buffers) => {
    const { halfGlobalConcat: kernel } = await createKernels(gpu, { only: ["halfGlobalConcat"] });
    const runs = [[1, 2], [63, 64], [65, 130], [576, 512], [2, 70000]].map(([rows, cols]) => {
      const x = randomArray(rows * cols, rows * 7 + cols, 2).map((v, i) => v + (i % cols) * 0.01);
      const out = poisoned(buffers, rows * cols, "out");
      const dispatches = kernel.bind(buffers, { x: buffers.upload(x, "x"), out, rows, cols });
      return { dispatches, out, expected: halfGlobalConcat(x, cols), what: `[${rows}, ${cols}]` };
    });
    gpu.submit(runs.flatMap((r) => r.dispatches));
    for (const r of runs) {
      assertClose(await readF32(gpu, r.out, r.expected.length), r.expected, 1e-12, `half-global ${r.what}`);
    }
    assert.throws(() => halfGlobalConcat(new Float32Array(6), 3), InputError);
  });
});

Deno.test("createLogSoftmax2Col0() matches logSoftmax2Col0(), small scores included", async () => {
  await withGpu(async (gpu, buffers) => {
    const { logSoftmax2Col0: kernel } = await createKernels(gpu, { only: ["logSoftmax2Col0"] });
    const extremes = new Float32Array([0, 0, 30, -30, -30, 30, 12, -3, 1e-3, 0, -88, 0, 0, 1e-7]);
    const runs = [1, 63, 65, 70000].map((rows, k) => {
      const logits = k === 0 ? new Float32Array([2, -1]) : randomArray(rows * 2, rows, 6);
      if (rows >= extremes.length / 2) logits.set(extremes);
      const out = poisoned(buffers, rows, "scores");
      const dispatches = kernel.bind(buffers, { logits: buffers.upload(logits, "logits"), out, rows });
      return { dispatches, out, expected: logSoftmax2Col0(logits), rows };
    });
    gpu.submit(runs.flatMap((r) => r.dispatches));
    for (const r of runs) {
      const got = await readF32(gpu, r.out, r.rows);
      assertClose(got, r.expected, 1e-12, `scores of ${r.rows} rows`);
      for (let i = 0; i < r.rows; i++) {
        const relative = Math.abs(got[i] - r.expected[i]) / Math.max(Math.abs(r.expected[i]), 1e-30);
        assert.ok(relative < 2e-5, `row ${i}: ${got[i]} vs ${r.expected[i]}`);
      }
    }
  });
});

Deno.test("createAdmitFlag() writes admitFlag() at flags[step] only", async () => {
  await withGpu(async (gpu, buffers) => {
    const { admitFlag: kernel } = await createKernels(gpu, { only: ["admitFlag"] });
    const cases: [number, number, number][] = [[0.4, -0.2, 0], [1, 1, 1], [-1, 2, 2], [3, 2.999, 5], [
      5,
      1,
      9,
    ]];
    const flags = buffers.upload(new Uint32Array(8).fill(7), "flags"); // capacity 8: step 9 is dropped
    gpu.submit(cases.flatMap(([l0, l1, step]) =>
      kernel.bind(buffers, {
        logits: buffers.upload(new Float32Array([l0, l1]), "logits"),
        state: buffers.upload(new Uint32Array([step, 0, 0, 0]), "state"),
        flags,
      })
    ));
    const expected = new Uint32Array(8).fill(7);
    for (const [l0, l1, step] of cases) if (step < 8) expected[step] = admitFlag(new Float32Array([l0, l1]));
    assert.deepEqual(new Uint32Array(await gpu.read(flags, 0, 32)), expected);
    assert.deepEqual([...expected.subarray(0, 6)], [1, 0, 0, 7, 7, 1]);
  });
});

Deno.test("every registered kernel compiles on a device without shader-f16 and runs; f16 KV is refused", async () => {
  const gpu = await createGpu({ allowF16: false, shaderF16: false });
  const buffers = new BufferSet(gpu);
  try {
    assert.equal(gpu.f16, false);
    assert.equal(gpu.shaderF16, false);
    const kernels = await createKernels(gpu);
    assert.deepEqual(Object.keys(kernels).sort(), Object.keys(KERNELS).sort());
    const x = buffers.upload(new Float32Array([1, 2, 3, 4]), "x");
    const out = buffers.storage(16, "out");
    writeBuffer(gpu, out, 0, new Float32Array(4).fill(NaN));
    gpu.submit(kernels.halfGlobalConcat.bind(buffers, { x, out, rows: 2, cols: 2 }));
    assert.deepEqual([...await readF32(gpu, out, 4)], [1, 3, 3, 3]);
    // f16 KV caches need shader-f16: refused by name, never silently stored as f32.
    const kv = { counts: x, countIndex: 0, rows: 1, heads: 1, kvHeads: 1, headDim: 4, causal: true };
    assert.throws(
      () => kernels.attention.bind(buffers, { ...kv, q: x, keys: x, values: x, out, kvDtype: "f16" }),
      (err: unknown) => err instanceof InputError && err.where === "attention.kvDtype",
    );
    assert.throws(
      () =>
        kernels.kvAppend.bind(buffers, {
          src: x,
          cache: out,
          counts: x,
          countIndex: 0,
          rows: 1,
          cols: 4,
          kvDtype: "f16",
        }),
      (err: unknown) => err instanceof InputError && err.where === "kv_append.kvDtype",
    );
  } finally {
    buffers.destroy();
    gpu.destroy();
  }
});

Deno.test("createAdvance() matches advanceState() over decode steps with mixed admissions", async () => {
  await withGpu(async (gpu, buffers) => {
    const { advance } = await createKernels(gpu, { only: ["advance"] });
    const flagValues = new Uint32Array([1, 0, 0, 1, 1, 0, 1, 0]);
    for (
      const options of [{ layers: 5, admitLayer: 2, admitAll: false }, {
        layers: 3,
        admitLayer: 1,
        admitAll: true,
      }]
    ) {
      const expected = new Uint32Array([0, 42, 17, 9, 30, 30, 12, 12, 12].slice(0, 4 + options.layers));
      const state = buffers.upload(expected.slice(), "state");
      const flags = buffers.upload(flagValues, "flags");
      for (let step = 0; step < flagValues.length; step++) {
        gpu.submit(advance.bind(buffers, { state, flags, ...options }));
        advanceState(expected, flagValues, options);
      }
      const got = new Uint32Array(await gpu.read(state, 0, expected.byteLength));
      assert.deepEqual([...got], [...expected], JSON.stringify(options));
      assert.equal(expected[0], flagValues.length); // the twin did advance
    }
  });
});
