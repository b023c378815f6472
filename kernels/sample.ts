/**
 * GPU token sampler: the rule of runtime/core/sampling.ts (greedy, or temperature + nucleus top-p with a
 * counter-based random draw) run in one workgroup of 256 lanes, so the decode loop never reads
 * logits back. One dispatch per token.
 *
 * Buffers: logits [V] f32; state [≥ 4] u32 with state[0] = step (index of the token being
 * produced), state[1] = current token id, state[3] = seed; tokensOut [capacity] u32.
 * The kernel writes tokensOut[step] = token (when step < capacity) and state[1] = token.
 *
 * Each lane owns a contiguous chunk of ⌈V/256⌉ logits. Sampling mode: pass 1 takes the max; pass 2
 * writes the weights wᵢ = exp((lᵢ - max) / T) into a scratch buffer [V] and sums them; the
 * 40-step bisection of the nucleus threshold runs as 10 passes that each evaluate the 15
 * midpoints of a 4-level bisection tree at once, then walk the tree; the last pass sums the kept
 * weight per chunk, prefix-sums the chunks, and every lane scans its own chunk for the first
 * index whose running sum exceeds u · (kept total). Workgroup memory: 15 · 256 f32 = 15 KiB.
 * @module
 */
import type { BufferSet, Dispatch, Gpu } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { BISECTION_STEPS } from "../runtime/core/sampling.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link SamplerKernel.bind}. */
export interface SamplerArgs {
  /** Logits [vocab] f32. */
  logits: GPUBuffer;
  vocab: number;
  /** Decode state u32: [0] step, [1] current token (written), [3] seed. */
  state: GPUBuffer;
  /** Generated tokens u32 [capacity]; entry `step` is written. */
  tokensOut: GPUBuffer;
  /** ≤ 0 means greedy. */
  temperature: number;
  /** Nucleus mass in [0, 1]; 1 keeps every token (default 1). */
  topP?: number;
}

/** The compiled sampler pipelines. */
export interface SamplerKernel {
  /** Builds the dispatch (greedy when temperature ≤ 0); allocates a [vocab] f32 scratch when sampling. */
  bind(buffers: BufferSet, args: SamplerArgs): Dispatch[];
}

const LANES = 256;
/** Bisection levels evaluated per pass: 2⁴ - 1 = 15 midpoints. */
const TREE_LEVELS = 4;
const TREE_NODES = (1 << TREE_LEVELS) - 1;
/** Indices travel through f32 reductions, exact below 2²⁴. */
const MAX_VOCAB = 1 << 24;

const PARAMS = defineUniforms("sample", { vocab: "u32", chunk: "u32", temperature: "f32", topP: "f32" });

/** Bindings and helpers of both pipelines; `red` is the workgroup scratch of every reduction. */
const COMMON_WGSL = /* wgsl */ `${
  wgslPrelude({ workgroupSize: LANES, reductions: ["sum", "max", "min"], scratch: "red" })
}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
@group(0) @binding(3) var<storage, read_write> tokens_out: array<u32>;
const NONE = 3.0e38;              // "no index" in f32 index reductions
const LOWEST = -3.4028234663852886e38;
var<workgroup> red: array<f32, ${TREE_NODES * LANES}>;

fn write_token(lid: u32, token: u32) {
  if (lid == 0u) {
    let step = state[0];
    if (step < arrayLength(&tokens_out)) { tokens_out[step] = token; }
    state[1] = token;
  }
}

// Lane's chunk [begin, end) of the vocabulary.
fn chunk_begin(lid: u32) -> u32 { return min(lid * params.chunk, params.vocab); }
fn chunk_end(lid: u32) -> u32 { return min((lid + 1u) * params.chunk, params.vocab); }
`;

const GREEDY_WGSL = COMMON_WGSL + /* wgsl */ `
// (value, index) pairs in red[0..256) and red[256..512); NONE marks an empty lane.
fn better(v: f32, i: f32, best_value: f32, best_index: f32) -> bool {
  if (i >= NONE) { return false; }
  if (best_index >= NONE) { return true; }
  return v > best_value || (v == best_value && i < best_index);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
  let begin = chunk_begin(lid);
  let end = chunk_end(lid);
  var best_value = 0.0;
  var best_index = NONE;
  if (begin < end) {
    best_value = logits[begin];
    best_index = f32(begin);
    for (var i = begin + 1u; i < end; i++) {
      let v = logits[i];
      if (v > best_value) { best_value = v; best_index = f32(i); }
    }
  }
  // An argmax over (value, index) pairs: not a plain sum/max/min, so reduced here.
  red[lid] = best_value;
  red[WORKGROUP_SIZE + lid] = best_index;
  for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride && better(red[lid + stride], red[WORKGROUP_SIZE + lid + stride], red[lid], red[WORKGROUP_SIZE + lid])) {
      red[lid] = red[lid + stride];
      red[WORKGROUP_SIZE + lid] = red[WORKGROUP_SIZE + lid + stride];
    }
  }
  workgroupBarrier();
  let best = red[WORKGROUP_SIZE];
  write_token(lid, select(u32(best), 0u, best >= NONE));
}
`;

const SAMPLE_WGSL = COMMON_WGSL + /* wgsl */ `
const NODES = ${TREE_NODES}u;
const PASSES = ${BISECTION_STEPS / TREE_LEVELS}u;
const SMALLEST_NORMAL = 1.1754943508222875e-38;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;

fn pcg_hash(input: u32) -> u32 {
  let s = input * 747796405u + 2891336453u;
  let word = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (word >> 22u) ^ word;
}

fn uniform_random(seed: u32, step: u32) -> f32 {
  return f32(pcg_hash(pcg_hash(seed) + step) >> 8u) / 16777216.0;
}

// Largest t found by BISECTION_STEPS bisection steps over [0, 1] with Σ_{w ≥ t} w ≥ mass_target.
fn nucleus_threshold(lid: u32, mass_target: f32, begin: u32, end: u32) -> f32 {
  var lo = 0.0;
  var hi = 1.0;
  for (var round = 0u; round < PASSES; round++) {
    // Midpoints of the bisection tree rooted at [lo, hi]: node n's children are 2n (mass too
    // small: [lo_n, mid_n]) and 2n + 1 (enough mass: [mid_n, hi_n]).
    var node_lo: array<f32, 16>;
    var node_hi: array<f32, 16>;
    var mid: array<f32, 16>;
    node_lo[1] = lo;
    node_hi[1] = hi;
    for (var n = 1u; n <= NODES; n++) {
      mid[n] = (node_lo[n] + node_hi[n]) * 0.5;
      if (2u * n <= NODES) {
        node_lo[2u * n] = node_lo[n];
        node_hi[2u * n] = mid[n];
        node_lo[2u * n + 1u] = mid[n];
        node_hi[2u * n + 1u] = node_hi[n];
      }
    }
    var mass: array<f32, 16>;
    // Zeroed explicitly: some compilers keep a loop-local array's values across iterations.
    for (var n = 1u; n <= NODES; n++) { mass[n] = 0.0; }
    for (var i = begin; i < end; i++) {
      let w = weights[i];
      for (var n = 1u; n <= NODES; n++) {
        if (w >= mid[n]) { mass[n] += w; }
      }
    }
    // 15 sums reduced together (red[(n - 1) · 256 + lane]): one barrier per level for all nodes.
    for (var n = 1u; n <= NODES; n++) { red[(n - 1u) * WORKGROUP_SIZE + lid] = mass[n]; }
    workgroupBarrier();
    for (var stride = WORKGROUP_SIZE / 2u; stride > 0u; stride >>= 1u) {
      if (lid < stride) {
        for (var n = 0u; n < NODES; n++) { red[n * WORKGROUP_SIZE + lid] += red[n * WORKGROUP_SIZE + lid + stride]; }
      }
      workgroupBarrier();
    }
    var node = 1u;
    for (var level = 0u; level < ${TREE_LEVELS}u; level++) {
      if (red[(node - 1u) * WORKGROUP_SIZE] >= mass_target) {
        lo = mid[node];
        node = 2u * node + 1u;
      } else {
        hi = mid[node];
        node = 2u * node;
      }
    }
    workgroupBarrier();
  }
  return lo;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(local_invocation_index) lid: u32) {
  let begin = chunk_begin(lid);
  let end = chunk_end(lid);

  var local_max = LOWEST;
  for (var i = begin; i < end; i++) { local_max = max(local_max, logits[i]); }
  let max_logit = workgroup_max(lid, local_max);
  if (max_logit <= LOWEST) {
    write_token(lid, 0u);
    return;
  }

  var local_sum = 0.0;
  for (var i = begin; i < end; i++) {
    let l = logits[i];
    var w = 0.0;
    if (l == max_logit) {
      w = 1.0;
    } else if (l > LOWEST) {
      w = exp((l - max_logit) / params.temperature);
      if (w < SMALLEST_NORMAL) { w = 0.0; }
    }
    weights[i] = w;
    local_sum += w;
  }
  let total = workgroup_sum(lid, local_sum);

  var threshold = 0.0;
  if (params.top_p < 1.0) { threshold = nucleus_threshold(lid, params.top_p * total, begin, end); }

  // Kept weight per chunk, then exclusive prefix sums over chunks (lane 0, in order).
  var chunk_mass = 0.0;
  var last_kept = -1.0;
  for (var i = begin; i < end; i++) {
    let w = weights[i];
    if (w >= threshold && w > 0.0) {
      chunk_mass += w;
      last_kept = f32(i);
    }
  }
  red[lid] = chunk_mass;
  workgroupBarrier();
  if (lid == 0u) {
    var running = 0.0;
    for (var j = 0u; j < WORKGROUP_SIZE; j++) {
      let m = red[j];
      red[j] = running;
      running += m;
    }
    red[WORKGROUP_SIZE] = running;
  }
  workgroupBarrier();
  let bound = uniform_random(state[3], state[0]) * red[WORKGROUP_SIZE];
  var running = red[lid];
  var pick = NONE;
  for (var i = begin; i < end; i++) {
    let w = weights[i];
    if (w >= threshold && w > 0.0) {
      running += w;
      if (running > bound) {
        pick = f32(i);
        break;
      }
    }
  }
  workgroupBarrier();
  let first = workgroup_min(lid, pick);
  let last = -workgroup_min(lid, -last_kept);
  write_token(lid, u32(select(first, last, first >= NONE)));
}
`;

/**
 * Compiles the greedy and the sampling pipelines.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createSampler } from "./sample.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const logits = buffers.upload(new Float32Array([0.5, 3, 1]), "logits");
 * const state = buffers.upload(new Uint32Array([0, 0, 0, 42]), "state"); // step 0, seed 42
 * const tokensOut = buffers.storage(4 * 8, "tokens");
 * const sampler = await createSampler(gpu);
 * gpu.submit(sampler.bind(buffers, { logits, vocab: 3, state, tokensOut, temperature: 0 }));
 * assert.equal(new Uint32Array(await gpu.read(tokensOut, 0, 4))[0], 1);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createSampler(gpu: Gpu): Promise<SamplerKernel> {
  const [greedy, sample] = await Promise.all([
    gpu.pipeline("sample_greedy", GREEDY_WGSL),
    gpu.pipeline("sample_top_p", SAMPLE_WGSL),
  ]);
  return {
    bind(buffers, args) {
      const { logits, vocab, state, tokensOut, temperature, topP = 1 } = args;
      if (!(Number.isInteger(vocab) && vocab > 0 && vocab < MAX_VOCAB)) {
        throw new InputError(`Cannot bind the sampler: vocab ${vocab} is not in [1, 2^24)`, "vocab");
      }
      if (Number.isNaN(temperature)) {
        throw new InputError("Cannot bind the sampler: temperature is NaN", "temperature");
      }
      if (!(topP >= 0 && topP <= 1)) {
        throw new InputError(`Cannot bind the sampler: topP ${topP} is outside [0, 1]`, "topP");
      }
      const params = packUniforms(PARAMS, { vocab, chunk: Math.ceil(vocab / LANES), temperature, topP });
      const uniform = buffers.uniform(params, "sample params");
      if (!(temperature > 0)) {
        return [gpu.dispatch(greedy, [uniform, logits, state, tokensOut], [1, 1, 1])];
      }
      const weights = buffers.storage(vocab * 4, "sample weights");
      return [gpu.dispatch(sample, [uniform, logits, state, tokensOut, weights], [1, 1, 1])];
    },
  };
}
