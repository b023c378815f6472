/**
 * Embedding lookup: out[M, C] = table[ids[idsOffset + m]] for m < M. CPU twin: `gatherRows` in
 * runtime/core/cpu_ops.ts.
 *
 * The table is a {@link WeightTensor} [V, C] chunked by rows: each chunk's dispatch writes the
 * output rows whose id falls in that chunk. Ids are validated on the CPU before upload; the kernel
 * only clamps them to V - 1 so that it never reads out of bounds. `idsOffset` lets decode read the
 * current token id from a GPU state buffer.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import {
  type WeightDtype,
  weightDtype,
  weightShader,
  type WeightTensor,
} from "../runtime/device/weights_gpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link EmbeddingKernel.bind}. */
export interface EmbeddingArgs {
  /** u32 token ids; row m reads ids[idsOffset + m]. */
  ids: GPUBuffer;
  /** First id read (default 0). */
  idsOffset?: number;
  /** Table [V, C]. */
  table: WeightTensor;
  /** f32 [M, C]. */
  out: GPUBuffer;
  /** M: rows looked up. */
  rows: number;
}

/** Compiled embedding pipelines. */
export interface EmbeddingKernel {
  /** Dispatches computing `args` (one per table chunk). */
  bind(buffers: BufferSet, args: EmbeddingArgs): Dispatch[];
}

const THREADS = 64;

const PARAMS = defineUniforms("embedding", {
  rows: "u32",
  cols: "u32",
  idsOffset: "u32",
  chunkStart: "u32",
  chunkRows: "u32",
  tableRows: "u32",
});

/** One thread per output element (scalar) or per 8 output elements (vectorized). */
function embeddingSource(dtype: WeightDtype, vectorized: boolean): string {
  const width = vectorized ? 8 : 1;
  const copy = vectorized
    ? `let w = weight_block8(id - params.chunk_start, c, params.cols);
  out[2u * i] = w[0];
  out[2u * i + 1u] = w[1];`
    : `out[i] = weight_at(id - params.chunk_start, c, params.cols);`;
  return `${wgslPrelude({ workgroupSize: THREADS })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> ids: array<u32>;
${weightShader(dtype, { binding: 2, vectorized })}
@group(0) @binding(3) var<storage, read_write> out: array<${vectorized ? "vec4f" : "f32"}>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = thread_index(wid, nwg, lid);    // output element (group of ${width})
  let per_row = params.cols / ${width}u;
  if (i >= params.rows * per_row) { return; }
  let m = i / per_row;
  let c = i % per_row;
  let id = min(ids[params.ids_offset + m], params.table_rows - 1u);
  if (id < params.chunk_start || id >= params.chunk_start + params.chunk_rows) { return; }
  ${copy}
}
`;
}

/**
 * Compiles the embedding pipelines for this device's weight type.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { uploadWeight } from "../runtime/device/weights_gpu.ts";
 * import { createEmbedding } from "./embedding.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const embedding = await createEmbedding(gpu);
 * const table = uploadWeight(buffers, new Float32Array([0, 0, 1, 2, 3, 4]), { rows: 3, cols: 2, label: "embed" });
 * const ids = buffers.upload(new Uint32Array([2, 1]), "ids");
 * const out = buffers.storage(4 * 4, "out");
 * gpu.submit(embedding.bind(buffers, { ids, table, out, rows: 2 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 16)), new Float32Array([3, 4, 1, 2]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createEmbedding(gpu: Gpu): Promise<EmbeddingKernel> {
  const dtype = weightDtype(gpu);
  const [vec, scalar] = await Promise.all([
    gpu.pipeline(`embedding_vec_${dtype}`, embeddingSource(dtype, true)),
    gpu.pipeline(`embedding_${dtype}`, embeddingSource(dtype, false)),
  ]);
  return {
    bind(buffers: BufferSet, args: EmbeddingArgs): Dispatch[] {
      const { table, rows } = args;
      if (table.dtype !== dtype) {
        throw new InputError(
          `Cannot bind embedding: table is ${table.dtype}, kernel is ${dtype}`,
          "embedding",
        );
      }
      if (args.out.size < rows * table.cols * 4) {
        throw new InputError(
          `Cannot bind embedding: out is smaller than [${rows}, ${table.cols}]`,
          "embedding.out",
        );
      }
      const vectorized = table.cols % 8 === 0;
      const threads = rows * table.cols / (vectorized ? 8 : 1);
      return table.chunks.map((chunk) => {
        const params = packUniforms(PARAMS, {
          rows,
          cols: table.cols,
          idsOffset: args.idsOffset ?? 0,
          chunkStart: chunk.rowStart,
          chunkRows: chunk.rows,
          tableRows: table.rows,
        });
        return gpu.dispatch(
          vectorized ? vec : scalar,
          [buffers.uniform(params, "embedding params"), args.ids, chunk.buffer, args.out],
          grid(Math.ceil(threads / THREADS)),
        );
      });
    },
  };
}
