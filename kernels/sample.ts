/**
 * GPU token sampler: the rule of runtime/sampling.ts (greedy, or temperature + nucleus top-p with a
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

const COMMON_WGSL = /* wgsl */ `
struct Params { vocab: u32, chunk: u32, temperature: f32, topP: f32 }
const LANES = ${LANES}u;
const NONE = 3.0e38;              // "no index" in f32 index reductions
const LOWEST = -3.4028234663852886e38;
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> state: array<u32>;
@group(0) @binding(2) var<storage, read_write> tokensOut: array<u32>;
@group(0) @binding(3) var<uniform> params: Params;
var<workgroup> red: array<f32, ${TREE_NODES * LANES}>;

fn writeToken(lane: u32, token: u32) {
  if (lane == 0u) {
    let step = state[0];
    if (step < arrayLength(&tokensOut)) { tokensOut[step] = token; }
    state[1] = token;
  }
}

// Lane's chunk [begin, end) of the vocabulary.
fn chunkBegin(lane: u32) -> u32 { return min(lane * params.chunk, params.vocab); }
fn chunkEnd(lane: u32) -> u32 { return min((lane + 1u) * params.chunk, params.vocab); }
`;

const GREEDY_WGSL = COMMON_WGSL + /* wgsl */ `
// (value, index) pairs in red[0..256) and red[256..512); NONE marks an empty lane.
fn better(v: f32, i: f32, bestV: f32, bestI: f32) -> bool {
  if (i >= NONE) { return false; }
  if (bestI >= NONE) { return true; }
  return v > bestV || (v == bestV && i < bestI);
}

@compute @workgroup_size(${LANES})
fn main(@builtin(local_invocation_index) lane: u32) {
  let begin = chunkBegin(lane);
  let end = chunkEnd(lane);
  var bestV = 0.0;
  var bestI = NONE;
  if (begin < end) {
    bestV = logits[begin];
    bestI = f32(begin);
    for (var i = begin + 1u; i < end; i++) {
      let v = logits[i];
      if (v > bestV) { bestV = v; bestI = f32(i); }
    }
  }
  red[lane] = bestV;
  red[LANES + lane] = bestI;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s && better(red[lane + s], red[LANES + lane + s], red[lane], red[LANES + lane])) {
      red[lane] = red[lane + s];
      red[LANES + lane] = red[LANES + lane + s];
    }
    workgroupBarrier();
  }
  let best = red[LANES];
  writeToken(lane, select(u32(best), 0u, best >= NONE));
}
`;

const SAMPLE_WGSL = COMMON_WGSL + /* wgsl */ `
const NODES = ${TREE_NODES}u;
const PASSES = ${BISECTION_STEPS / TREE_LEVELS}u;
const SMALLEST_NORMAL = 1.1754943508222875e-38;
@group(0) @binding(4) var<storage, read_write> weights: array<f32>;

fn pcgHash(input: u32) -> u32 {
  let s = input * 747796405u + 2891336453u;
  let word = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (word >> 22u) ^ word;
}

fn uniformRandom(seed: u32, step: u32) -> f32 {
  return f32(pcgHash(pcgHash(seed) + step) >> 8u) / 16777216.0;
}

fn reduceMax(lane: u32, v: f32) -> f32 {
  red[lane] = v;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[lane] = max(red[lane], red[lane + s]); }
    workgroupBarrier();
  }
  let result = workgroupUniformLoad(&red[0]);
  workgroupBarrier();
  return result;
}

fn reduceSum(lane: u32, v: f32) -> f32 {
  red[lane] = v;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[lane] += red[lane + s]; }
    workgroupBarrier();
  }
  let result = workgroupUniformLoad(&red[0]);
  workgroupBarrier();
  return result;
}

fn reduceMin(lane: u32, v: f32) -> f32 {
  red[lane] = v;
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) { red[lane] = min(red[lane], red[lane + s]); }
    workgroupBarrier();
  }
  let result = workgroupUniformLoad(&red[0]);
  workgroupBarrier();
  return result;
}

// Largest t found by BISECTION_STEPS bisection steps over [0, 1] with Σ_{w ≥ t} w ≥ massTarget.
fn nucleusThreshold(lane: u32, massTarget: f32, begin: u32, end: u32) -> f32 {
  var lo = 0.0;
  var hi = 1.0;
  for (var round = 0u; round < PASSES; round++) {
    // Midpoints of the bisection tree rooted at [lo, hi]: node n's children are 2n (mass too
    // small: [lo_n, mid_n]) and 2n + 1 (enough mass: [mid_n, hi_n]).
    var nodeLo: array<f32, 16>;
    var nodeHi: array<f32, 16>;
    var mid: array<f32, 16>;
    nodeLo[1] = lo;
    nodeHi[1] = hi;
    for (var n = 1u; n <= NODES; n++) {
      mid[n] = (nodeLo[n] + nodeHi[n]) * 0.5;
      if (2u * n <= NODES) {
        nodeLo[2u * n] = nodeLo[n];
        nodeHi[2u * n] = mid[n];
        nodeLo[2u * n + 1u] = mid[n];
        nodeHi[2u * n + 1u] = nodeHi[n];
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
    for (var n = 1u; n <= NODES; n++) { red[(n - 1u) * LANES + lane] = mass[n]; }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
      if (lane < s) {
        for (var n = 0u; n < NODES; n++) { red[n * LANES + lane] += red[n * LANES + lane + s]; }
      }
      workgroupBarrier();
    }
    var node = 1u;
    for (var level = 0u; level < ${TREE_LEVELS}u; level++) {
      if (red[(node - 1u) * LANES] >= massTarget) {
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

@compute @workgroup_size(${LANES})
fn main(@builtin(local_invocation_index) lane: u32) {
  let begin = chunkBegin(lane);
  let end = chunkEnd(lane);

  var localMax = LOWEST;
  for (var i = begin; i < end; i++) { localMax = max(localMax, logits[i]); }
  let maxLogit = reduceMax(lane, localMax);
  if (maxLogit <= LOWEST) {
    writeToken(lane, 0u);
    return;
  }

  var localSum = 0.0;
  for (var i = begin; i < end; i++) {
    let l = logits[i];
    var w = 0.0;
    if (l == maxLogit) {
      w = 1.0;
    } else if (l > LOWEST) {
      w = exp((l - maxLogit) / params.temperature);
      if (w < SMALLEST_NORMAL) { w = 0.0; }
    }
    weights[i] = w;
    localSum += w;
  }
  let total = reduceSum(lane, localSum);

  var threshold = 0.0;
  if (params.topP < 1.0) { threshold = nucleusThreshold(lane, params.topP * total, begin, end); }

  // Kept weight per chunk, then exclusive prefix sums over chunks (lane 0, in order).
  var chunkMass = 0.0;
  var lastKept = -1.0;
  for (var i = begin; i < end; i++) {
    let w = weights[i];
    if (w >= threshold && w > 0.0) {
      chunkMass += w;
      lastKept = f32(i);
    }
  }
  red[lane] = chunkMass;
  workgroupBarrier();
  if (lane == 0u) {
    var running = 0.0;
    for (var j = 0u; j < LANES; j++) {
      let m = red[j];
      red[j] = running;
      running += m;
    }
    red[LANES] = running;
  }
  workgroupBarrier();
  let bound = uniformRandom(state[3], state[0]) * red[LANES];
  var running = red[lane];
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
  let first = reduceMin(lane, pick);
  let last = -reduceMin(lane, -lastKept);
  writeToken(lane, u32(select(first, last, first >= NONE)));
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
      const params = new ArrayBuffer(16);
      new Uint32Array(params, 0, 2).set([vocab, Math.ceil(vocab / LANES)]);
      new Float32Array(params, 8, 2).set([temperature, topP]);
      const uniform = buffers.uniform(new Uint8Array(params), "sample.params");
      if (!(temperature > 0)) {
        return [gpu.dispatch(greedy, [logits, state, tokensOut, uniform], [1, 1, 1])];
      }
      const weights = buffers.storage(vocab * 4, "sample.weights");
      return [gpu.dispatch(sample, [logits, state, tokensOut, uniform, weights], [1, 1, 1])];
    },
  };
}
