/**
 * Rotary position embedding in place, HF rotate_half convention: x [M, heads, D]; pair
 * (i, i + D/2) of row m turns by angle pos(m) · theta^(-2i/D), pos(m) = positions[positionsOffset
 * + m]. CPU twin: `rope` in runtime/core/cpu_ops.ts. A second tensor at the same positions (k with
 * q) can turn in the same dispatch (`second`): the twin applied to each.
 *
 * In f32: theta^(-2i/D) = exp2(-2i/D · log2(theta)) with log2(theta) computed on the CPU; the angle
 * is reduced to [-π, π] (2π split in a high part exact under multiplication and a low part) before
 * sin/cos, whose accuracy WGSL only bounds on that interval. Positions come from a GPU buffer, so
 * decode steps re-encode the same dispatch.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link RopeKernel.bind}. */
export interface RopeArgs {
  /** f32 [M, heads, headDim], rotated in place. */
  x: GPUBuffer;
  /** u32 positions; row m uses positions[positionsOffset + m]. */
  positions: GPUBuffer;
  /** First position read (default 0). */
  positionsOffset?: number;
  rows: number;
  heads: number;
  headDim: number;
  theta: number;
  /** f32 [M, second.heads, headDim], rotated in place at the same positions in the same dispatch. */
  second?: { x: GPUBuffer; heads: number };
}

/** Compiled RoPE pipeline. */
export interface RopeKernel {
  /** The dispatch computing `args`. */
  bind(buffers: BufferSet, args: RopeArgs): Dispatch[];
}

const THREADS = 64;

const PARAMS = defineUniforms("rope", {
  rows: "u32",
  heads: "u32",
  headDim: "u32",
  positionsOffset: "u32",
  log2Theta: "f32",
  secondHeads: "u32", //  heads of x2 (0: none)
});

/**
 * The RoPE shader: x alone, or x then x2 (`paired`; no binding is bound twice), one thread per
 * (m, head, i) of each.
 */
function ropeSource(paired: boolean): string {
  const turn = (buffer: string) =>
    `    let a = ${buffer}[base + i];
    let b = ${buffer}[base + i + half];
    ${buffer}[base + i] = a * c - b * s;
    ${buffer}[base + i + half] = b * c + a * s;`;
  return `${wgslPrelude({ workgroupSize: THREADS })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
${paired ? "@group(0) @binding(3) var<storage, read_write> x2: array<f32>;" : ""}

const TWO_PI_HI = 6.28125;                  // 8 significant bits: k · TWO_PI_HI is exact for k < 2^16
const TWO_PI_LO = 0.0019353071795864769;    // 2π - TWO_PI_HI
const INV_TWO_PI = 0.15915494309189535;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let half = params.head_dim / 2u;
  let first = params.rows * params.heads * half;
  var t = thread_index(wid, nwg, lid);   // one thread per (m, head, i) of x, then of x2
  if (t >= first + params.rows * params.second_heads * half) { return; }
  let in_second = t >= first;
  var heads = params.heads;
  if (in_second) {
    t -= first;
    heads = params.second_heads;
  }
  let i = t % half;
  let mh = t / half;                              // m · heads + head
  let m = mh / heads;
  let pos = f32(positions[params.positions_offset + m]);
  let inv_freq = exp2(-f32(2u * i) / f32(params.head_dim) * params.log2_theta);
  let angle = pos * inv_freq;
  let k = round(angle * INV_TWO_PI);
  let reduced = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
  let c = cos(reduced);
  let s = sin(reduced);
  let base = mh * params.head_dim;
${paired ? `  if (in_second) {\n${turn("x2")}\n  } else {\n${turn("x")}\n  }` : `  {\n${turn("x")}\n  }`}
}
`;
}

/**
 * Compiles the RoPE pipelines (one tensor, or two at the same positions).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createRope } from "./rope.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const rope = await createRope(gpu);
 * const x = buffers.upload(new Float32Array([1, 0]), "x");
 * const positions = buffers.upload(new Uint32Array([0]), "positions");
 * gpu.submit(rope.bind(buffers, { x, positions, rows: 1, heads: 1, headDim: 2, theta: 10000 }));
 * assert.deepEqual(new Float32Array(await gpu.read(x, 0, 8)), new Float32Array([1, 0]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createRope(gpu: Gpu): Promise<RopeKernel> {
  const [single, paired] = await Promise.all([
    gpu.pipeline("rope", ropeSource(false)),
    gpu.pipeline("rope_paired", ropeSource(true)),
  ]);
  return {
    bind(buffers: BufferSet, args: RopeArgs): Dispatch[] {
      const { rows, heads, headDim } = args;
      const values = {
        rows,
        heads,
        headDim,
        positionsOffset: args.positionsOffset ?? 0,
        log2Theta: Math.log2(args.theta),
        secondHeads: args.second?.heads ?? 0,
      };
      const params = buffers.uniform(packUniforms(PARAMS, values), "rope params");
      const threads = args.rows * (args.heads + values.secondHeads) * (args.headDim / 2);
      const groups = grid(Math.ceil(threads / THREADS));
      return args.second
        ? [gpu.dispatch(paired, [params, args.positions, args.x, args.second.x], groups)]
        : [gpu.dispatch(single, [params, args.positions, args.x], groups)];
    },
  };
}
