/**
 * KV-cache append: copies src [M, cols] (cols = kvHeads · headDim) into cache rows
 * [base, base + M), base = counts[countIndex] read on the GPU, so a decode step re-encodes the same
 * dispatch. Rows past the cache's capacity are dropped. counts is not changed: the runtime
 * advances it separately (a refused token's K/V is written at base and overwritten next step).
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

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

const PARAMS = defineUniforms("kv_append", { rows: "u32", cols: "u32", countIndex: "u32", capacity: "u32" });

const SOURCE = /* wgsl */ `${wgslPrelude({ workgroupSize: THREADS })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);
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
      const { rows, cols, countIndex } = args;
      const params = buffers.uniform(
        packUniforms(PARAMS, { rows, cols, countIndex, capacity }),
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
