/**
 * KV-cache append: copies src [M, cols] (cols = kvHeads · headDim) into cache rows
 * [base, base + M), base = counts[countIndex] read on the GPU, so a decode step re-encodes the same
 * dispatch. Rows past the cache's capacity are dropped. counts is not changed: the runtime
 * advances it separately (a refused token's K/V is written at base and overwritten next step).
 * CPU twin: `kvAppend` in runtime/core/cpu_ops.ts.
 *
 * One source, two variants by the cache's element type (kernels/kv_cache.ts): f32, one thread per
 * element; f16, one thread per pair of elements rounded to f16 and packed in one word (cols even).
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { type KvDtype, kvElementBytes } from "../runtime/core/sparse_kv.ts";
import { KV_ELEMENTS_PER_WORD, kvCacheShader } from "./kv_cache.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link KvAppendKernel.bind}. */
export interface KvAppendArgs {
  /** f32 [M, cols]. */
  src: GPUBuffer;
  /** [capacity, cols] of `dtype`. */
  cache: GPUBuffer;
  /** The cache's element type (default "f32"; "f16" needs even cols and a device with shader-f16). */
  kvDtype?: KvDtype;
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

/** The kernel for a cache of `dtype`: thread w stores word w of src's rows (CACHE_PER_WORD elements). */
function kvAppendSource(dtype: KvDtype): string {
  return /* wgsl */ `${wgslPrelude({ workgroupSize: THREADS })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> counts: array<u32>;
${kvCacheShader(dtype, { name: "cache", binding: 3, view: "store" })}
@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let e = thread_index(wid, nwg, lid) * CACHE_PER_WORD;   // first element of this thread's word
  if (e >= params.rows * params.cols) { return; }
  let row = counts[params.count_index] + e / params.cols;
  if (row >= params.capacity) { return; }
  cache[(row * params.cols + e % params.cols) / CACHE_PER_WORD] = cache_word(e);
}
`;
}

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
  const [f32, f16] = await Promise.all([
    gpu.pipeline("kv_append", kvAppendSource("f32")),
    gpu.shaderF16 ? gpu.pipeline("kv_append_f16", kvAppendSource("f16")) : null,
  ]);
  return {
    bind(buffers: BufferSet, args: KvAppendArgs): Dispatch[] {
      const dtype = args.kvDtype ?? "f32";
      const { rows, cols, countIndex } = args;
      const pipeline = dtype === "f16" ? f16 : f32;
      if (!pipeline) {
        throw new InputError(
          `Cannot bind kv_append: an f16 cache needs a device with shader-f16 (${gpu.adapterName} has none)`,
          "kv_append.kvDtype",
        );
      }
      if (dtype === "f16" && cols % 2 !== 0) {
        throw new InputError(
          `Cannot bind kv_append: an f16 cache needs even cols, got ${cols}`,
          "kv_append.cols",
        );
      }
      const capacity = Math.floor(args.cache.size / (args.cols * kvElementBytes(dtype)));
      const params = buffers.uniform(
        packUniforms(PARAMS, { rows, cols, countIndex, capacity }),
        "kv_append params",
      );
      const words = Math.ceil(rows * cols / KV_ELEMENTS_PER_WORD[dtype]);
      return [
        gpu.dispatch(pipeline, [params, args.src, args.counts, args.cache], grid(Math.ceil(words / THREADS))),
      ];
    },
  };
}
