/**
 * Texture-stored weights: the texel layout, and parity of the texture matvec (kernels/matvec_texture.ts)
 * and of the matmul's texture path with the CPU twin `linear` on awkward shapes, f16 (when the
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
  kernelsOf.set(gpu, await createKernels(gpu, { only: ["matmul", "matvecTexture"] }) as Kernels);
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
