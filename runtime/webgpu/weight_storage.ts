/**
 * Which weight storage an adapter reads faster, decided by a short matvec micro-benchmark at
 * load: storage buffers or storage textures (runtime/device/weights_texture.ts). Real GPUs read
 * both at memory speed and keep buffers; Mesa's lavapipe compiles lane-varying storage-buffer
 * loads into a per-lane scalar loop and reads textures many times faster. The choice is cached
 * per adapter and weight dtype for the life of the process.
 * @module
 */
import { BufferSet, type Dispatch, type Gpu } from "../device/gpu.ts";
import { uploadWeight, weightDtype, type WeightStorage } from "../device/weights_gpu.ts";
import type { Kernels } from "./gpu_kernels.ts";

/** The storage option of loadModel: measure ("auto") or force one. */
export type WeightStorageOption = "auto" | WeightStorage;

/** Effective read rate of each storage on one adapter, in GB/s of weight bytes. */
export interface WeightStorageRates {
  buffer: number;
  texture: number;
}

/** Options of {@link measureWeightStorage}. */
export interface MeasureOptions {
  /** Rows of the probe matrix (default 512). */
  rows?: number;
  /** Columns of the probe matrix (default 1024). */
  cols?: number;
  /** Matvecs per timed submission (default 8). */
  repeat?: number;
}

const chosen = new Map<string, WeightStorage>();

/**
 * Times decode-shaped matvecs (one row of x) on a fixed matrix stored both ways; best of three
 * submissions each, after a warm-up, less the time of an empty submission.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu } from "../device/gpu.ts";
 * import { createKernels } from "./gpu_kernels.ts";
 * import { measureWeightStorage } from "./weight_storage.ts";
 * const gpu = await createGpu();
 * const kernels = await createKernels(gpu, { only: ["matmul"] });
 * const rates = await measureWeightStorage(gpu, kernels, { rows: 256, cols: 256, repeat: 2 });
 * assert.ok(rates.buffer > 0 && rates.texture > 0);
 * gpu.destroy();
 * ```
 */
export async function measureWeightStorage(
  gpu: Gpu,
  kernels: Pick<Kernels, "matmul">,
  options: MeasureOptions = {},
): Promise<WeightStorageRates> {
  const { rows = 512, cols = 1024, repeat = 8 } = options;
  const set = new BufferSet(gpu);
  try {
    const values = new Float32Array(rows * cols).map((_, i) => (i % 17) * 0.01 - 0.08);
    const x = set.upload(new Float32Array(cols).fill(0.5), "probe x");
    const out = set.storage(rows * 4, "probe out");
    const bytes = rows * cols * (weightDtype(gpu) === "f16" ? 2 : 4) * repeat;
    const idle = await bestTime(gpu, []); // the cost of a submission and its sync alone
    const rate = async (storage: WeightStorage) => {
      const weight = uploadWeight(set, values, { rows, cols, label: `probe ${storage}`, storage });
      const dispatches = Array.from(
        { length: repeat },
        () => kernels.matmul.bind(set, { x, weight, out, rows: 1 }),
      )
        .flat();
      const ms = Math.max(await bestTime(gpu, dispatches) - idle, 0.01);
      return bytes / (ms * 1e6);
    };
    return { buffer: await rate("buffer"), texture: await rate("texture") };
  } finally {
    await gpu.sync();
    set.destroy();
  }
}

/** Best of three timed submissions of `dispatches` (ms, through the sync), after a warm-up. */
async function bestTime(gpu: Gpu, dispatches: Dispatch[]): Promise<number> {
  gpu.submit(dispatches);
  await gpu.sync();
  let best = Infinity;
  for (let trial = 0; trial < 3; trial++) {
    const start = performance.now();
    gpu.submit(dispatches);
    await gpu.sync();
    best = Math.min(best, performance.now() - start);
  }
  return best;
}

/**
 * The storage to load weights with: `option` when forced, else the faster one on this adapter
 * (measured once per adapter and dtype, then cached). Textures must win by 20% to be chosen, so
 * adapters where both read alike keep buffers.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu } from "../device/gpu.ts";
 * import { createKernels } from "./gpu_kernels.ts";
 * import { chooseWeightStorage } from "./weight_storage.ts";
 * const gpu = await createGpu();
 * const kernels = await createKernels(gpu, { only: ["matmul"] });
 * assert.equal(await chooseWeightStorage(gpu, kernels, "buffer"), "buffer");
 * const auto = await chooseWeightStorage(gpu, kernels, "auto");
 * assert.equal(await chooseWeightStorage(gpu, kernels, "auto"), auto); // cached
 * gpu.destroy();
 * ```
 */
export async function chooseWeightStorage(
  gpu: Gpu,
  kernels: Pick<Kernels, "matmul">,
  option: WeightStorageOption,
): Promise<WeightStorage> {
  if (option !== "auto") return option;
  const key = `${gpu.adapterName}|${weightDtype(gpu)}`;
  let storage = chosen.get(key);
  if (!storage) {
    const rates = await measureWeightStorage(gpu, kernels);
    storage = rates.texture > 1.2 * rates.buffer ? "texture" : "buffer";
    chosen.set(key, storage);
  }
  return storage;
}
