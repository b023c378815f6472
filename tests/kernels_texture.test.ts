/**
 * Texture-stored weights: the texel layout, and parity of the texture matvec (kernels/matvec_texture.ts)
 * and of the matmul's texture path with the CPU twin `linear`, and of the fused matvecs
 * (kernels/matvec_texture_fused.ts) with `linear` and `swigluLinear`, on awkward shapes, f16 (when the
 * adapter has `shader-f16` and DYNLLAVA_NO_F16 is unset) and f32 weights. Outputs are poisoned with
 * NaN, so a row not written fails.
 * @module
 */
import assert from "node:assert/strict";
import { BufferSet, createGpu, type Gpu } from "../runtime/device/gpu.ts";
import * as cpu from "../runtime/core/cpu_ops.ts";
import { InputError } from "../runtime/core/errors.ts";
import {
  storedWeightValues,
  uploadWeight,
  weightDtype,
  type WeightTensor,
} from "../runtime/device/weights_gpu.ts";
import { ROW_BLOCK, uploadWeightTextures } from "../runtime/device/weights_texture.ts";
import { createKernels, type Kernels } from "../runtime/webgpu/gpu_kernels.ts";
import { assertClose, poisoned, randomArray, readF32, testGpu } from "./kernel_util.ts";

/** NMSE bound where the GPU differs from the twin by f32 rounding only. */
const EXACT = 1e-10;

const gpus: Gpu[] = [await testGpu()];
if (gpus[0].f16) gpus.push(await createGpu({ allowF16: false }));
const kernelsOf = new Map<Gpu, Kernels>();
for (const gpu of gpus) {
  kernelsOf.set(
    gpu,
    await createKernels(gpu, {
      only: ["matmul", "matvecTexture", "matvecTextureMulti", "swigluTexture"],
    }) as Kernels,
  );
}

function gpuTest(name: string, fn: (gpu: Gpu, k: Kernels, buffers: BufferSet) => Promise<void>): void {
  for (const gpu of gpus) {
    Deno.test(`${name} [${weightDtype(gpu)} weights]`, async () => {
      const buffers = new BufferSet(gpu);
      try {
        await fn(gpu, kernelsOf.get(gpu)!, buffers);
      } finally {
        await gpu.sync();
        buffers.destroy();
      }
    });
  }
}

interface Case {
  rows: number;
  inCols: number;
  outCols: number;
  bias?: boolean;
  accumulate?: boolean;
  xRowOffset?: number;
  outRowOffset?: number;
  /** Texture rows per chunk (forces several texture chunks). */
  maxTexelRows?: number;
}

/** Runs x·Wᵀ through `kernel` on a texture-stored W and compares with `linear` on the stored values. */
async function check(gpu: Gpu, k: Kernels, buffers: BufferSet, c: Case, kernel: "matmul" | "matvecTexture") {
  const seed = c.rows * 7919 + c.inCols * 31 + c.outCols;
  const xRowOffset = c.xRowOffset ?? 0, outRowOffset = c.outRowOffset ?? 0;
  const x = randomArray((xRowOffset + c.rows) * c.inCols, seed);
  const w = randomArray(c.outCols * c.inCols, seed + 1, 0.5);
  const bias = c.bias ? randomArray(c.outCols, seed + 2) : undefined;
  const outFloats = (outRowOffset + c.rows) * c.outCols;
  const start = randomArray(outFloats, seed + 3);
  const dtype = weightDtype(gpu);
  const textures = uploadWeightTextures(buffers, w, {
    rows: c.outCols,
    cols: c.inCols,
    dtype,
    label: "w",
    maxTexelRows: c.maxTexelRows,
  });
  const weight: WeightTensor = { rows: c.outCols, cols: c.inCols, dtype, chunks: [], textures };
  const out = c.accumulate ? buffers.upload(start, "out") : poisoned(buffers, outFloats, "out");
  const dispatches = k[kernel].bind(buffers, {
    x: buffers.upload(x, "x"),
    weight,
    bias: bias && buffers.upload(bias, "bias"),
    out,
    rows: c.rows,
    accumulate: c.accumulate,
    xRowOffset,
    outRowOffset,
  });
  assert.equal(dispatches.length, textures.length);
  gpu.submit(dispatches);
  const actual = await readF32(gpu, out, outFloats);
  const rowsOfX = x.subarray(xRowOffset * c.inCols);
  const result = cpu.linear(rowsOfX, storedWeightValues(w, dtype), { rows: c.rows, bias });
  const expected = c.accumulate ? start.slice() : new Float32Array(outFloats).fill(NaN);
  for (let i = 0; i < result.length; i++) {
    expected[outRowOffset * c.outCols + i] = (c.accumulate ? expected[outRowOffset * c.outCols + i] : 0) +
      result[i];
  }
  const written = outRowOffset * c.outCols;
  assertClose(actual.subarray(written), expected.subarray(written), EXACT, `${kernel} ${JSON.stringify(c)}`);
  if (!c.accumulate) {
    assert.ok(actual.subarray(0, written).every(Number.isNaN), "rows before outRowOffset untouched");
  }
  return textures;
}

gpuTest("texture matvec matches linear() on shapes off the 64-row blocks", async (gpu, k, buffers) => {
  await check(gpu, k, buffers, { rows: 1, inCols: 8, outCols: 1, bias: true }, "matvecTexture");
  await check(gpu, k, buffers, { rows: 1, inCols: 72, outCols: 65, accumulate: true }, "matvecTexture");
  await check(gpu, k, buffers, { rows: 3, inCols: 1000, outCols: 130, bias: true }, "matvecTexture");
  await check(
    gpu,
    k,
    buffers,
    { rows: 2, inCols: 24, outCols: 63, xRowOffset: 2, outRowOffset: 1 },
    "matvecTexture",
  );
});

gpuTest("texture matvec writes every chunk of a weight split across textures", async (gpu, k, buffers) => {
  // 512 columns, one 8192-texel row per texture: 2 blocks of 64 f16 rows or 1 block of f32 rows each
  const textures = await check(gpu, k, buffers, {
    rows: 1,
    inCols: 512,
    outCols: 3 * ROW_BLOCK + 5,
    bias: true,
    maxTexelRows: 1,
  }, "matvecTexture");
  assert.ok(textures.length >= 2, `${textures.length} chunks`);
});

gpuTest(
  "matmul routes texture weights: matvec up to 8 rows, tiled texels beyond",
  async (gpu, k, buffers) => {
    await check(gpu, k, buffers, { rows: 8, inCols: 40, outCols: 70, bias: true }, "matmul");
    await check(gpu, k, buffers, { rows: 9, inCols: 40, outCols: 70, accumulate: true }, "matmul");
    await check(gpu, k, buffers, { rows: 65, inCols: 72, outCols: 130, bias: true, xRowOffset: 1 }, "matmul");
    await check(gpu, k, buffers, { rows: 70, inCols: 512, outCols: 200, maxTexelRows: 1 }, "matmul");
  },
);

gpuTest("uploadWeight() stores textures only where cols % 8 == 0", (_gpu, _k, buffers) => {
  const texture = uploadWeight(buffers, randomArray(4 * 16, 1), {
    rows: 4,
    cols: 16,
    label: "w",
    storage: "texture",
  });
  assert.equal(texture.chunks.length, 0);
  assert.equal(texture.textures?.length, 1);
  const buffer = uploadWeight(buffers, randomArray(4 * 6, 1), {
    rows: 4,
    cols: 6,
    label: "w",
    storage: "texture",
  });
  assert.equal(buffer.textures, undefined);
  assert.equal(buffer.chunks.length, 1);
  return Promise.resolve();
});

gpuTest("texture matvec rejects buffer-stored weights and short buffers", (_gpu, k, buffers) => {
  const small = buffers.storage(16, "small");
  const inBuffers = uploadWeight(buffers, randomArray(4 * 16, 1), { rows: 4, cols: 16, label: "w" });
  assert.throws(
    () => k.matvecTexture.bind(buffers, { x: small, weight: inBuffers, out: small, rows: 1 }),
    InputError,
  );
  const inTextures = uploadWeight(buffers, randomArray(4 * 16, 1), {
    rows: 4,
    cols: 16,
    label: "w",
    storage: "texture",
  });
  assert.throws(
    () => k.matvecTexture.bind(buffers, { x: small, weight: inTextures, out: small, rows: 1 }),
    /x holds 16 bytes, needs 64/,
  );
  return Promise.resolve();
});

/** A texture-stored W [rows, cols] of random values (in as many textures as `maxTexelRows` makes). */
function textureWeight(
  gpu: Gpu,
  buffers: BufferSet,
  shape: { rows: number; cols: number; seed: number; maxTexelRows?: number },
): { weight: WeightTensor; stored: Float32Array } {
  const dtype = weightDtype(gpu);
  const values = randomArray(shape.rows * shape.cols, shape.seed, 0.5);
  const textures = uploadWeightTextures(buffers, values, { ...shape, dtype, label: `w${shape.seed}` });
  return {
    weight: { rows: shape.rows, cols: shape.cols, dtype, chunks: [], textures },
    stored: storedWeightValues(values, dtype),
  };
}

interface MultiCase {
  rows: number;
  inCols: number;
  /** Rows of each projected weight. */
  outCols: number[];
}

gpuTest("multi-projection matvec matches linear() for one to three projections", async (gpu, k, buffers) => {
  const cases: MultiCase[] = [
    { rows: 1, inCols: 8, outCols: [1] },
    { rows: 1, inCols: 72, outCols: [65, 63] },
    { rows: 3, inCols: 1000, outCols: [130, 64, 1] },
    { rows: 8, inCols: 24, outCols: [128, 70, 70] },
  ];
  for (const c of cases) {
    const seed = c.rows * 7919 + c.inCols * 31 + c.outCols.length;
    const x = randomArray(c.rows * c.inCols, seed, 3);
    const weights = c.outCols.map((rows, i) =>
      textureWeight(gpu, buffers, { rows, cols: c.inCols, seed: seed + 2 + i })
    );
    const outs = c.outCols.map((n, i) => poisoned(buffers, c.rows * n, `out${i}`));
    const dispatches = k.matvecTextureMulti.bind(buffers, {
      x: buffers.upload(x, "x"),
      projections: weights.map(({ weight }, i) => ({ weight, out: outs[i] })),
      rows: c.rows,
    });
    assert.equal(dispatches.length, 1);
    gpu.submit(dispatches);
    for (const [i, out] of outs.entries()) {
      const actual = await readF32(gpu, out, c.rows * c.outCols[i]);
      const expected = cpu.linear(x, weights[i].stored, { rows: c.rows });
      assertClose(actual, expected, EXACT, `matvecTextureMulti projection ${i} of ${JSON.stringify(c)}`);
    }
  }
});

gpuTest("gate/up-SwiGLU matvec matches swigluLinear()", async (gpu, k, buffers) => {
  for (
    const c of [{ rows: 1, inCols: 8, outCols: 1 }, { rows: 3, inCols: 72, outCols: 130 }, {
      rows: 8,
      inCols: 1000,
      outCols: 65,
    }]
  ) {
    const seed = c.rows * 7919 + c.inCols * 31 + c.outCols;
    const x = randomArray(c.rows * c.inCols, seed, 3);
    const gate = textureWeight(gpu, buffers, { rows: c.outCols, cols: c.inCols, seed: seed + 2 });
    const up = textureWeight(gpu, buffers, { rows: c.outCols, cols: c.inCols, seed: seed + 3 });
    const out = poisoned(buffers, c.rows * c.outCols, "act");
    const dispatches = k.swigluTexture.bind(buffers, {
      x: buffers.upload(x, "x"),
      gate: gate.weight,
      up: up.weight,
      out,
      rows: c.rows,
    });
    assert.equal(dispatches.length, 1);
    gpu.submit(dispatches);
    const expected = cpu.swigluLinear(x, { gate: gate.stored, up: up.stored }, { rows: c.rows });
    assertClose(
      await readF32(gpu, out, c.rows * c.outCols),
      expected,
      EXACT,
      `swigluTexture ${JSON.stringify(c)}`,
    );
  }
});

gpuTest(
  "fused texture matvecs refuse weights outside one texture and mismatched shapes",
  (gpu, k, buffers) => {
    const x = buffers.upload(randomArray(512, 5), "x");
    const out = buffers.storage(4 * 4096, "out");
    // 512 columns, one texture row per texture: 200 rows need several textures
    const split = textureWeight(gpu, buffers, { rows: 200, cols: 512, seed: 6, maxTexelRows: 1 }).weight;
    const fine = textureWeight(gpu, buffers, { rows: 64, cols: 512, seed: 7 }).weight;
    const narrow = textureWeight(gpu, buffers, { rows: 64, cols: 256, seed: 8 }).weight;
    const inBuffers = uploadWeight(buffers, randomArray(64 * 512, 9), { rows: 64, cols: 512, label: "w" });
    const project = (...weights: WeightTensor[]) =>
      k.matvecTextureMulti.bind(buffers, {
        x,
        rows: 1,
        projections: weights.map((weight) => ({ weight, out })),
      });
    assert.throws(() => project(fine, split), /projections\[1\]\.weight is .* in \d+ textures/);
    assert.throws(() => project(inBuffers), /in buffers/);
    assert.throws(() => project(fine, narrow), /\[64, 256\]/);
    assert.throws(() => project(fine, fine, fine, fine), /4 projections, expected 1 to 3/);
    assert.throws(() => project(), InputError);
    const swiglu = (gate: WeightTensor, up: WeightTensor) =>
      k.swigluTexture.bind(buffers, { x, rows: 1, gate, up, out });
    assert.throws(() => swiglu(split, split), InputError);
    assert.throws(
      () => swiglu(fine, textureWeight(gpu, buffers, { rows: 65, cols: 512, seed: 10 }).weight),
      /up has 65 rows, gate 64/,
    );
    assert.throws(
      () =>
        k.swigluTexture.bind(buffers, {
          x,
          rows: 1,
          gate: fine,
          up: fine,
          out: buffers.storage(16, "small"),
        }),
      /out holds 16 bytes, needs 256/,
    );
    assert.equal(project(fine).length, 1);
    return Promise.resolve();
  },
);
