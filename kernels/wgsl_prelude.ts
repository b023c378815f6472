/**
 * WGSL shared by the kernels: the workgroup size, linear indices over `grid()` dispatches, and
 * workgroup reductions. A kernel puts {@link wgslPrelude}'s text at the top of its source.
 *
 * The dialect every kernel follows:
 * - `@group(0) @binding(0)` is the uniform `params` (kernels/uniforms.ts) when the kernel has
 *   parameters; storage buffers follow in the order of the wrapper's binding list, inputs first,
 *   outputs last.
 * - Functions, variables and fields are snake_case, module constants UPPER_CASE, types PascalCase.
 * - Builtins are named `wid` (workgroup_id), `nwg` (num_workgroups), `lid`
 *   (local_invocation_index); a grid of more than 65535 workgroups folds into y (see `grid()` in
 *   runtime/device/gpu.ts) and `workgroup_index` / `thread_index` unfold it.
 * - Reductions are called by every lane of the workgroup in uniform control flow and return the
 *   result to every lane; two calls in a row are safe (the result is read between barriers).
 * @module
 */

/** A workgroup reduction over f32 (`sum`, `max`, `min`) or vec4f (`sum_vec4`). */
export type Reduction = "sum" | "max" | "min" | "sum_vec4";

/** Options of {@link wgslPrelude}. */
export interface PreludeOptions {
  /** Lanes per workgroup, a power of two: declared as `const WORKGROUP_SIZE`. */
  workgroupSize: number;
  /** Reductions to declare: `workgroup_sum`, `workgroup_max`, `workgroup_min`, `workgroup_sum_vec4`. */
  reductions?: Reduction[];
  /**
   * A workgroup `array<f32, ≥ WORKGROUP_SIZE>` that the kernel declares and the f32 reductions
   * reuse (default: the prelude declares `reduce_scratch`).
   */
  scratch?: string;
}

const COMBINE: Record<Reduction, (a: string, b: string) => string> = {
  sum: (a, b) => `${a} + ${b}`,
  max: (a, b) => `max(${a}, ${b})`,
  min: (a, b) => `min(${a}, ${b})`,
  sum_vec4: (a, b) => `${a} + ${b}`,
};

/**
 * The prelude text for a kernel with `options.workgroupSize` lanes.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { wgslPrelude } from "./wgsl_prelude.ts";
 * const wgsl = wgslPrelude({ workgroupSize: 64, reductions: ["sum", "max"] });
 * assert.ok(wgsl.includes("const WORKGROUP_SIZE = 64u;"));
 * assert.ok(wgsl.includes("fn workgroup_sum(lid: u32, value: f32) -> f32"));
 * assert.ok(wgsl.includes("fn workgroup_max(lid: u32, value: f32) -> f32"));
 * assert.throws(() => wgslPrelude({ workgroupSize: 48 }));
 * ```
 */
export function wgslPrelude(options: PreludeOptions): string {
  const { workgroupSize, reductions = [] } = options;
  if (
    !(Number.isInteger(workgroupSize) && workgroupSize > 0 && (workgroupSize & (workgroupSize - 1)) === 0)
  ) {
    throw new RangeError(
      `Cannot build the WGSL prelude: workgroup size ${workgroupSize} is not a power of two`,
    );
  }
  const scalar = reductions.filter((r) => r !== "sum_vec4");
  const parts = [`const WORKGROUP_SIZE = ${workgroupSize}u;`, INDEXING];
  if (scalar.length > 0 && !options.scratch) {
    parts.push("var<workgroup> reduce_scratch: array<f32, WORKGROUP_SIZE>;");
  }
  if (reductions.includes("sum_vec4")) {
    parts.push("var<workgroup> reduce_scratch_vec4: array<vec4f, WORKGROUP_SIZE>;");
  }
  for (const op of reductions) {
    const vec4 = op === "sum_vec4";
    parts.push(reduction({
      name: `workgroup_${op}`,
      type: vec4 ? "vec4f" : "f32",
      scratch: vec4 ? "reduce_scratch_vec4" : options.scratch ?? "reduce_scratch",
      combine: COMBINE[op],
    }));
  }
  return parts.join("\n") + "\n";
}

/** Linear indices over a `grid()` dispatch (workgroups folded into x and y). */
const INDEXING = `
// Linear workgroup index of a grid() dispatch.
fn workgroup_index(wid: vec3u, nwg: vec3u) -> u32 {
  return wid.x + wid.y * nwg.x;
}

// Linear thread index of a grid() dispatch.
fn thread_index(wid: vec3u, nwg: vec3u, lid: u32) -> u32 {
  return workgroup_index(wid, nwg) * WORKGROUP_SIZE + lid;
}`;

/** A tree reduction over the workgroup; the result comes back to every lane. */
function reduction(
  spec: { name: string; type: string; scratch: string; combine: (a: string, b: string) => string },
) {
  const { name, type, scratch, combine } = spec;
  return `
// ${name.replace("workgroup_", "")} of \`value\` over the workgroup's lanes, returned to every lane.
fn ${name}(lid: u32, value: ${type}) -> ${type} {
  ${scratch}[lid] = value;
  for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) { ${scratch}[lid] = ${combine(`${scratch}[lid]`, `${scratch}[lid + stride]`)}; }
  }
  return workgroupUniformLoad(&${scratch}[0]);   // a barrier before and after the load
}`;
}
