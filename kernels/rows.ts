/**
 * Row gather: out[K, C] = x[indices[k], :] for a u32 index buffer [K]. Compacts hidden states to
 * the kept tokens after pruning, and u32 position arrays alike: the kernel copies 32-bit words, so
 * one pipeline serves f32 and u32 tensors bit for bit. CPU twin: `gatherRows` in runtime/core/cpu_ops.ts.
 *
 * One workgroup of 64 lanes per output row (K beyond 65535 goes through `grid()`). Source indices
 * must be rows of x; an index out of range reads whatever the adapter's bounds clamping returns.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link GatherRowsKernel.bind}. */
export interface GatherRowsArgs {
  /** Source [sourceRows, cols] of 32-bit words (f32 or u32). */
  x: GPUBuffer;
  /** Row indices [rows] u32 into x. */
  indices: GPUBuffer;
  /** Output [rows, cols], same element type as x. */
  out: GPUBuffer;
  /** K: number of rows gathered. */
  rows: number;
  cols: number;
}

/** The compiled row-gather pipeline. */
export interface GatherRowsKernel {
  bind(buffers: BufferSet, args: GatherRowsArgs): Dispatch[];
}

const LANES = 64;

const PARAMS = defineUniforms("gather_rows", { rows: "u32", cols: "u32" });

const GATHER_WGSL = /* wgsl */ `${wgslPrelude({ workgroupSize: LANES })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = workgroup_index(wid, nwg);
  if (row >= params.rows) { return; }
  let cols = params.cols;
  let source = indices[row] * cols;
  let destination = row * cols;
  for (var c = lid; c < cols; c += WORKGROUP_SIZE) { out[destination + c] = x[source + c]; }
}
`;

/**
 * Compiles the row-gather pipeline (f32 and u32 alike).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createGatherRows } from "./rows.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const x = buffers.upload(new Float32Array([0, 1, 10, 11, 20, 21]), "x"); // [3, 2]
 * const indices = buffers.upload(new Uint32Array([2, 0]), "indices");
 * const out = buffers.storage(16, "out");
 * const gather = await createGatherRows(gpu);
 * gpu.submit(gather.bind(buffers, { x, indices, out, rows: 2, cols: 2 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 16)), new Float32Array([20, 21, 0, 1]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createGatherRows(gpu: Gpu): Promise<GatherRowsKernel> {
  const pipeline = await gpu.pipeline("gather_rows", GATHER_WGSL);
  return {
    bind(buffers, args) {
      const { x, indices, out, rows, cols } = args;
      if (!(Number.isInteger(rows) && rows >= 0 && Number.isInteger(cols) && cols > 0)) {
        throw new InputError(`Cannot bind gather_rows: bad shape [${rows}, ${cols}]`, "gather_rows");
      }
      const params = buffers.uniform(packUniforms(PARAMS, { rows, cols }), "gather_rows params");
      return [gpu.dispatch(pipeline, [params, x, indices, out], grid(rows))];
    },
  };
}
