/**
 * KV-cache append: copies src [M, cols] (cols = kvHeads · headDim) into cache rows
 * [base, base + M), base = counts[countIndex] read on the GPU, so a decode step re-encodes the same
 * dispatch. Rows past the cache's capacity are dropped. counts is not changed: the runtime
 * advances it separately (a refused token's K/V is written at base and overwritten next step).
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";

/** Arguments of {@link KvAppendKernel.bind}. */
export interface KvAppendArgs {
  /** f32 [M, cols]. */
  src: GPUBuffer;
  /** f32 [capacity, cols]. */
  cache: GPUBuffer;
  /** u32 row counts; rows go after counts[countIndex]. */
  counts: GPUBuffer;
  countIndex: number;
  rows: number;
  cols: number;
}

/** Compiled KV-append pipeline. */
export interface KvAppendKernel {
  /** The dispatch computing `args`. */
  bind(buffers: BufferSet, args: KvAppendArgs): Dispatch[];
}

const THREADS = 64;

const SOURCE = `
struct Params {
  rows: u32,
  cols: u32,
  count_index: u32,
  capacity: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;

@compute @workgroup_size(${THREADS})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * ${THREADS}u;
  if (i >= params.rows * params.cols) { return; }
  let row = counts[params.count_index] + i / params.cols;
  if (row >= params.capacity) { return; }
  cache[row * params.cols + i % params.cols] = src[i];
}
`;

/**
 * Compiles the KV-append pipeline.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createKvAppend } from "./kv_append.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const kvAppend = await createKvAppend(gpu);
 * const cache = buffers.upload(new Float32Array([1, 1, 0, 0]), "cache"); // capacity 2, cols 2
 * const src = buffers.upload(new Float32Array([5, 6]), "k");
 * const counts = buffers.upload(new Uint32Array([1]), "counts");
 * gpu.submit(kvAppend.bind(buffers, { src, cache, counts, countIndex: 0, rows: 1, cols: 2 }));
 * assert.deepEqual(new Float32Array(await gpu.read(cache, 0, 16)), new Float32Array([1, 1, 5, 6]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createKvAppend(gpu: Gpu): Promise<KvAppendKernel> {
  const pipeline = await gpu.pipeline("kv_append", SOURCE);
  return {
    bind(buffers: BufferSet, args: KvAppendArgs): Dispatch[] {
      const capacity = Math.floor(args.cache.size / (args.cols * 4));
      const params = buffers.uniform(
        new Uint32Array([args.rows, args.cols, args.countIndex, capacity]),
        "kv_append params",
      );
      return [
        gpu.dispatch(
          pipeline,
          [params, args.src, args.counts, args.cache],
          grid(Math.ceil(args.rows * args.cols / THREADS)),
        ),
      ];
    },
  };
}
