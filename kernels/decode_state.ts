/**
 * `advance`: ends one decode step on the GPU, so steps chain without a readback. Decode state
 * (u32): [0] step, [1] current token, [2] position of the next fed token, [3] seed,
 * [4 + l] KV rows of layer l. flags[step] = 1 when the fed token was admitted (written by the
 * text predictor at the admission layer). Layers < admitLayer always grow by one row; layers ≥
 * admitLayer grow only when admitted (or always when `admitAll`). Then step and position advance.
 * CPU twin: `advanceState` in runtime/core/sparse_kv.ts.
 * @module
 */
import type { BufferSet, Dispatch, Gpu } from "../runtime/device/gpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";

/** Index of layer 0's row count in the decode state. */
export const STATE_COUNTS = 4;

/** Arguments of {@link AdvanceKernel.bind}. */
export interface AdvanceArgs {
  state: GPUBuffer;
  flags: GPUBuffer;
  layers: number;
  admitLayer: number;
  admitAll: boolean;
}

/** The compiled advance kernel. */
export interface AdvanceKernel {
  bind(buffers: BufferSet, args: AdvanceArgs): Dispatch[];
}

const PARAMS = defineUniforms("advance", { layers: "u32", admitLayer: "u32", admitAll: "u32" });

const SOURCE = /* wgsl */ `
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> flags: array<u32>;
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
const STATE_COUNTS = ${STATE_COUNTS}u;

@compute @workgroup_size(1)
fn main() {
  let step = state[0];
  let admitted = params.admit_all == 1u || flags[step] == 1u;
  for (var l = 0u; l < params.layers; l++) {
    if (l < params.admit_layer || admitted) { state[STATE_COUNTS + l] += 1u; }
  }
  state[0] = step + 1u;
  state[2] = state[2] + 1u;
}
`;

/**
 * Compiles the advance kernel.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu, BufferSet } from "../runtime/device/gpu.ts";
 * import { createAdvance } from "./decode_state.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const state = buffers.upload(new Uint32Array([0, 7, 10, 0, 5, 5]), "state");
 * const flags = buffers.upload(new Uint32Array([0]), "flags");
 * gpu.submit((await createAdvance(gpu)).bind(buffers, { state, flags, layers: 2, admitLayer: 1, admitAll: false }));
 * assert.deepEqual(new Uint32Array(await gpu.read(state, 0, 24)), new Uint32Array([1, 7, 11, 0, 6, 5]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createAdvance(gpu: Gpu): Promise<AdvanceKernel> {
  const pipeline = await gpu.pipeline("advance", SOURCE);
  return {
    bind(buffers, args) {
      const { layers, admitLayer } = args;
      const params = packUniforms(PARAMS, { layers, admitLayer, admitAll: args.admitAll ? 1 : 0 });
      return [
        gpu.dispatch(pipeline, [buffers.uniform(params, "advance params"), args.flags, args.state], [
          1,
          1,
          1,
        ]),
      ];
    },
  };
}
