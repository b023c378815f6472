/**
 * Token sampling: the definition that the GPU sampler (kernels/sample.ts) reproduces, and the CPU
 * backend's sampler. Pure TypeScript, GPU-free, deterministic for a given (seed, step).
 *
 * From logits [V] (f32):
 * - temperature ≤ 0: argmax (the first index on ties).
 * - otherwise weights wᵢ = exp((lᵢ - max) / T) in f32 (wᵢ = 1 exactly where lᵢ = max; -∞ logits and
 *   weights below the smallest normal f32 count as 0), so pᵢ = wᵢ / Σw. Nucleus top-p without
 *   sorting: a bisection of {@link BISECTION_STEPS} steps over t in [0, 1] (midpoints rounded to f32)
 *   keeps the largest t found with Σ_{wᵢ ≥ t} wᵢ ≥ topP · Σw; the kept set is {i : wᵢ ≥ t}.
 *   topP = 1 skips the bisection and keeps every token; topP = 0 keeps only the most probable
 *   token(s).
 * - u = {@link uniformRandom}(seed, step); the token is the first index i, in index order, whose
 *   running sum of kept weights exceeds u · (kept weight total).
 *
 * GPU and CPU agree except when a sum lands within f32 rounding of a decision boundary (the GPU adds
 * in another order and its `exp` differs by a few ulps), which random logits practically never hit.
 * @module
 */
import { InputError } from "./errors.ts";

/** Bisection steps of the nucleus threshold search (the GPU runs them as 10 passes of 4 levels). */
export const BISECTION_STEPS = 40;

/** Lowest finite f32: logits at or below it count as -∞. */
const LOWEST_F32 = -3.4028234663852886e38;

/** Smallest normal f32: smaller weights are flushed to 0, as GPUs may do. */
const SMALLEST_NORMAL_F32 = 1.1754943508222875e-38;

/** Options of {@link sampleToken}. */
export interface SampleOptions {
  /** Softmax temperature; ≤ 0 means greedy (argmax). Default 0. */
  temperature?: number;
  /** Nucleus mass in [0, 1]; 1 keeps every token. Default 1. */
  topP?: number;
  /** Random stream (u32). Default 0. */
  seed?: number;
  /** Index of the token being produced (u32); one draw per step. Default 0. */
  step?: number;
}

/**
 * PCG-style integer hash of a u32 (one LCG step, then a data-dependent shift and a multiply).
 * The WGSL twin in kernels/sample.ts computes the same bits.
 */
function pcgHash(input: number): number {
  const state = (Math.imul(input >>> 0, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

/**
 * Counter-based uniform draw in [0, 1) with 24 random bits: hash(hash(seed) + step).
 * Same (seed, step) → same value, on the CPU and on the GPU.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { uniformRandom } from "./sampling.ts";
 * const u = uniformRandom(42, 0);
 * assert.ok(u >= 0 && u < 1);
 * assert.equal(u, uniformRandom(42, 0)); // the same seed and step give the same number
 * assert.notEqual(u, uniformRandom(42, 1));
 * ```
 */
export function uniformRandom(seed: number, step: number): number {
  const bits = pcgHash((pcgHash(seed) + (step >>> 0)) >>> 0);
  return (bits >>> 8) / 16777216;
}

/**
 * Picks the next token from logits [V] (see the module doc for the exact rule).
 * Throws {@link InputError} for an empty vocabulary, a NaN temperature or topP outside [0, 1].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { sampleToken } from "./sampling.ts";
 * const logits = new Float32Array([0.1, 2.5, 0.3]);
 * assert.equal(sampleToken(logits, { temperature: 0 }), 1); // greedy: the largest logit
 * const token = sampleToken(logits, { temperature: 0.8, topP: 0.9, seed: 7, step: 3 });
 * assert.equal(token, sampleToken(logits, { temperature: 0.8, topP: 0.9, seed: 7, step: 3 })); // reproducible
 * assert.ok(token >= 0 && token < 3);
 * ```
 */
export function sampleToken(logits: Float32Array, options: SampleOptions = {}): number {
  const { temperature = 0, topP = 1, seed = 0, step = 0 } = options;
  if (logits.length === 0) throw new InputError("Cannot sample: the logits are empty", "logits");
  if (Number.isNaN(temperature)) throw new InputError("Cannot sample: temperature is NaN", "temperature");
  if (!(topP >= 0 && topP <= 1)) {
    throw new InputError(`Cannot sample: topP ${topP} is outside [0, 1]`, "topP");
  }
  if (!(temperature > 0)) return firstArgmax(logits);

  const weights = softmaxWeights(logits, Math.fround(temperature));
  if (weights === null) return 0;
  const threshold = Math.fround(topP) >= 1 ? 0 : nucleusThreshold(weights, Math.fround(topP));
  return drawKept(weights, threshold, uniformRandom(seed, step));
}

/** Index of the largest logit, first on ties (NaN never wins over index 0). */
function firstArgmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** f32 weights exp((l - max) / T) [V], or null when no logit is finite. */
function softmaxWeights(logits: Float32Array, temperature: number): Float32Array | null {
  let max = LOWEST_F32;
  for (const l of logits) if (l > max) max = l;
  if (max <= LOWEST_F32) return null;
  const weights = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) {
    const l = logits[i];
    if (l === max) weights[i] = 1;
    else if (l > LOWEST_F32) {
      const w = Math.fround(Math.exp(Math.fround(Math.fround(l - max) / temperature)));
      weights[i] = w < SMALLEST_NORMAL_F32 ? 0 : w;
    }
  }
  return weights;
}

/** Σ_{wᵢ ≥ threshold} wᵢ. */
function keptMass(weights: Float32Array, threshold: number): number {
  let mass = 0;
  for (const w of weights) if (w >= threshold) mass += w;
  return mass;
}

/** The nucleus threshold: bisection over [0, 1] with f32 midpoints, keeping mass ≥ topP · total. */
function nucleusThreshold(weights: Float32Array, topP: number): number {
  const target = topP * keptMass(weights, 0);
  let lo = 0, hi = 1;
  for (let s = 0; s < BISECTION_STEPS; s++) {
    const mid = Math.fround(Math.fround(lo + hi) * 0.5);
    if (keptMass(weights, mid) >= target) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** First kept index whose running kept weight exceeds u · (kept total); the last kept one if none. */
function drawKept(weights: Float32Array, threshold: number, u: number): number {
  const bound = u * keptMass(weights, threshold);
  let running = 0, lastKept = 0;
  for (let i = 0; i < weights.length; i++) {
    const w = weights[i];
    if (w < threshold || w <= 0) continue;
    running += w;
    lastKept = i;
    if (running > bound) return i;
  }
  return lastKept;
}
