/**
 * CPU twins of every GPU kernel: plain TypeScript, f32, row-major. They define what each kernel
 * computes, they are the CPU backend's building blocks, and the parity tests' reference.
 * GPU-free. Shapes are given as [rows, cols]; "Linear" weights follow torch: W [out, in].
 * @module
 */
import { f16ToFloat32, float32ToF16 } from "./dtype.ts";
import type { KvDtype } from "./sparse_kv.ts";

/**
 * y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias[N]).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { linear } from "./cpu_ops.ts";
 * const y = linear(new Float32Array([1, 2]), new Float32Array([1, 0, 0, 1, 1, 1]), { rows: 1, bias: new Float32Array([0, 0, 1]) });
 * assert.deepEqual(y, new Float32Array([1, 2, 4]));
 * ```
 */
export function linear(
  x: Float32Array,
  weight: Float32Array,
  options: { rows: number; bias?: Float32Array | null },
): Float32Array {
  const rows = options.rows;
  const inSize = x.length / rows;
  const outSize = weight.length / inSize;
  const y = new Float32Array(rows * outSize);
  for (let r = 0; r < rows; r++) {
    const xo = r * inSize;
    for (let o = 0; o < outSize; o++) {
      const wo = o * inSize;
      let acc = 0;
      for (let k = 0; k < inSize; k++) acc += x[xo + k] * weight[wo + k];
      y[r * outSize + o] = acc + (options.bias ? options.bias[o] : 0);
    }
  }
  return y;
}

/**
 * RMSNorm per row: x / sqrt(mean(x²) + eps) · weight. x [M, C] → [M, C].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rmsNorm } from "./cpu_ops.ts";
 * const y = rmsNorm(new Float32Array([3, 4]), new Float32Array([1, 1]), 0); // rms = √12.5
 * assert.deepEqual(Array.from(y, (v) => +v.toFixed(4)), [0.8485, 1.1314]);
 * ```
 */
export function rmsNorm(x: Float32Array, weight: Float32Array, eps: number): Float32Array {
  const cols = weight.length;
  const y = new Float32Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let ss = 0;
    for (let c = 0; c < cols; c++) ss += x[r * cols + c] ** 2;
    const scale = 1 / Math.sqrt(ss / cols + eps);
    for (let c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * scale * weight[c];
  }
  return y;
}

/**
 * LayerNorm per row: (x - mean) / sqrt(var + eps) · weight + bias. x [M, C] → [M, C].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layerNorm } from "./cpu_ops.ts";
 * const y = layerNorm(new Float32Array([1, 3]), new Float32Array([1, 1]), new Float32Array([0, 0]), 0);
 * assert.deepEqual(y, new Float32Array([-1, 1]));
 * ```
 */
export function layerNorm(
  x: Float32Array,
  weight: Float32Array,
  bias: Float32Array,
  eps: number,
): Float32Array {
  const cols = weight.length;
  const y = new Float32Array(x.length);
  for (let r = 0; r < x.length / cols; r++) {
    let mean = 0;
    for (let c = 0; c < cols; c++) mean += x[r * cols + c];
    mean /= cols;
    let variance = 0;
    for (let c = 0; c < cols; c++) variance += (x[r * cols + c] - mean) ** 2;
    const scale = 1 / Math.sqrt(variance / cols + eps);
    for (let c = 0; c < cols; c++) y[r * cols + c] = (x[r * cols + c] - mean) * scale * weight[c] + bias[c];
  }
  return y;
}

/**
 * RoPE in place, HF rotate_half convention: x [M, heads, headDim]; row m rotated by angle
 * positions[m] · theta^(-2i/headDim) for pair (i, i + headDim/2).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { rope } from "./cpu_ops.ts";
 * const x = new Float32Array([1, 0]);
 * rope(x, new Uint32Array([0]), { heads: 1, headDim: 2, theta: 10000 });
 * assert.deepEqual(x, new Float32Array([1, 0])); // position 0 is the identity
 * const y = new Float32Array([1, 0]);
 * rope(y, new Uint32Array([1]), { heads: 1, headDim: 2, theta: 10000 }); // position 1 turns by 1 radian
 * assert.deepEqual(Array.from(y, (v) => +v.toFixed(4)), [+Math.cos(1).toFixed(4), +Math.sin(1).toFixed(4)]);
 * ```
 */
export function rope(
  x: Float32Array,
  positions: ArrayLike<number>,
  options: { heads: number; headDim: number; theta: number },
): void {
  const { heads, headDim, theta } = options;
  const half = headDim / 2;
  for (let m = 0; m < positions.length; m++) {
    for (let i = 0; i < half; i++) {
      const angle = positions[m] * Math.pow(theta, (-2 * i) / headDim);
      const cos = Math.cos(angle), sin = Math.sin(angle);
      for (let h = 0; h < heads; h++) {
        const base = (m * heads + h) * headDim;
        const a = x[base + i], b = x[base + i + half];
        x[base + i] = a * cos - b * sin;
        x[base + i + half] = b * cos + a * sin;
      }
    }
  }
}

/**
 * KV-cache append (twin of kernels/kv_append.ts): src [M, cols] into cache [capacity, cols] at rows
 * [base, base + M); rows past the capacity are dropped. An f16 cache holds each value rounded to
 * f16 (to nearest, ties to even, as the GPU packs it) and kept here as the f32 it reads back as, so
 * attention over it computes what the GPU computes.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kvAppend } from "./cpu_ops.ts";
 * const cache = new Float32Array(6); // capacity 3, cols 2
 * kvAppend(cache, new Float32Array([0.1, 2, 7, 8]), { base: 2, cols: 2, kvDtype: "f16" }); // the second row is dropped
 * assert.deepEqual(cache, new Float32Array([0, 0, 0, 0, 0.0999755859375, 2])); // 0.1 as an f16
 * ```
 */
export function kvAppend(
  cache: Float32Array,
  src: Float32Array,
  options: { base: number; cols: number; kvDtype: KvDtype },
): void {
  const { base, cols } = options;
  const rows = Math.max(0, Math.min(src.length / cols, cache.length / cols - base));
  const kept = src.subarray(0, rows * cols);
  cache.set(options.kvDtype === "f16" ? f16ToFloat32(float32ToF16(kept)) : kept, base * cols);
}

/**
 * Scaled dot-product attention with grouped-query heads.
 * q [M, heads, D]; keys, values [R, kvHeads, D]; query row m sees key rows [0, visible[m]).
 * Returns [M, heads, D].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { attention } from "./cpu_ops.ts";
 * const out = attention(new Float32Array([1, 0]), new Float32Array([1, 0, 0, 1]), new Float32Array([1, 2, 3, 4]), {
 *   heads: 1, kvHeads: 1, headDim: 2, visible: [2],
 * });
 * // scores q·k / √2 = [1/√2, 0]; their softmax weighs the value rows [1, 2] and [3, 4]
 * const w = 1 / (1 + Math.exp(-1 / Math.SQRT2));
 * assert.deepEqual(Array.from(out, (v) => +v.toFixed(5)), [+(w + 3 * (1 - w)).toFixed(5), +(2 * w + 4 * (1 - w)).toFixed(5)]);
 * ```
 */
export function attention(
  q: Float32Array,
  keys: Float32Array,
  values: Float32Array,
  options: { heads: number; kvHeads: number; headDim: number; visible: ArrayLike<number> },
): Float32Array {
  const { heads, kvHeads, headDim, visible } = options;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const out = new Float32Array(q.length);
  for (let m = 0; m < visible.length; m++) {
    const n = visible[m];
    const scores = new Float32Array(n);
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group);
      const qo = (m * heads + h) * headDim;
      let max = -Infinity;
      for (let r = 0; r < n; r++) {
        const ko = (r * kvHeads + kvh) * headDim;
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += q[qo + d] * keys[ko + d];
        scores[r] = dot * scale;
        if (scores[r] > max) max = scores[r];
      }
      let sum = 0;
      for (let r = 0; r < n; r++) sum += scores[r] = Math.exp(scores[r] - max);
      for (let r = 0; r < n; r++) {
        const p = scores[r] / sum;
        const vo = (r * kvHeads + kvh) * headDim;
        for (let d = 0; d < headDim; d++) out[qo + d] += p * values[vo + d];
      }
    }
  }
  return out;
}

/**
 * Attention probabilities of one query row averaged over heads (FastV's ranking signal).
 * q [heads, D] (one row); keys [R, kvHeads, D]; the row sees keys [0, visible). Returns [visible].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { attentionProbsMean } from "./cpu_ops.ts";
 * const p = attentionProbsMean(new Float32Array([0, 0]), new Float32Array([1, 0, 0, 1]), { heads: 1, kvHeads: 1, headDim: 2, visible: 2 });
 * assert.deepEqual(p, new Float32Array([0.5, 0.5]));
 * ```
 */
export function attentionProbsMean(
  q: Float32Array,
  keys: Float32Array,
  options: { heads: number; kvHeads: number; headDim: number; visible: number },
): Float32Array {
  const { heads, kvHeads, headDim, visible } = options;
  const group = heads / kvHeads;
  const scale = 1 / Math.sqrt(headDim);
  const mean = new Float32Array(visible);
  const scores = new Float32Array(visible);
  for (let h = 0; h < heads; h++) {
    const kvh = Math.floor(h / group);
    let max = -Infinity;
    for (let r = 0; r < visible; r++) {
      let dot = 0;
      for (let d = 0; d < headDim; d++) dot += q[h * headDim + d] * keys[(r * kvHeads + kvh) * headDim + d];
      scores[r] = dot * scale;
      if (scores[r] > max) max = scores[r];
    }
    let sum = 0;
    for (let r = 0; r < visible; r++) sum += scores[r] = Math.exp(scores[r] - max);
    for (let r = 0; r < visible; r++) mean[r] += scores[r] / sum / heads;
  }
  return mean;
}

/** SiLU(gate) · up, elementwise. */
export function swiglu(gate: Float32Array, up: Float32Array): Float32Array {
  const y = new Float32Array(gate.length);
  for (let i = 0; i < y.length; i++) y[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
  return y;
}

/**
 * The SwiGLU MLP's hidden activation: silu(x·W_gateᵀ) · (x·W_upᵀ). x [M, C], W_gate and W_up
 * [I, C] → [M, I]. The twin of the gate/up-SwiGLU texture kernel (kernels/matvec_texture_fused.ts).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { swigluLinear } from "./cpu_ops.ts";
 * // gate = [2, 0], up = [2, 3]
 * const act = swigluLinear(new Float32Array([1, 1]), {
 *   gate: new Float32Array([1, 1, 0, 0]),
 *   up: new Float32Array([1, 1, 3, 0]),
 * }, { rows: 1 });
 * assert.deepEqual(Array.from(act, (v) => +v.toFixed(4)), [3.5232, 0]); // silu(2)·2, silu(0)·3
 * ```
 */
export function swigluLinear(
  x: Float32Array,
  weights: { gate: Float32Array; up: Float32Array },
  options: { rows: number },
): Float32Array {
  return swiglu(linear(x, weights.gate, options), linear(x, weights.up, options));
}

/**
 * Error function from the Chebyshev-fitted erfc of Numerical Recipes (|error| < 1.2e-7); the GELU
 * kernel evaluates the same formula.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { erf } from "./cpu_ops.ts";
 * assert.ok(Math.abs(erf(0)) < 1.2e-7);
 * assert.ok(Math.abs(erf(10) - 1) < 1.2e-7);
 * assert.ok(Math.abs(erf(1) - 0.8427008) < 1.2e-7);
 * ```
 */
export function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
                      t *
                        (0.27886807 +
                          t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? 1 - r : r - 1;
}

/** GELU with erf (torch default), elementwise, new array. */
export function gelu(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = 0.5 * x[i] * (1 + erf(x[i] / Math.SQRT2));
  return y;
}

/** quick_gelu (CLIP): x · sigmoid(1.702 x), elementwise, new array. */
export function quickGelu(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = x[i] / (1 + Math.exp(-1.702 * x[i]));
  return y;
}

/** a += b, elementwise, in place. */
export function addInPlace(a: Float32Array, b: Float32Array): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

/** Gathers rows of a table [V, C] by ids → [ids.length, C]. */
export function gatherRows(table: Float32Array, cols: number, ids: ArrayLike<number>): Float32Array {
  const y = new Float32Array(ids.length * cols);
  for (let i = 0; i < ids.length; i++) y.set(table.subarray(ids[i] * cols, (ids[i] + 1) * cols), i * cols);
  return y;
}

/**
 * log_softmax(x)[id] without building the whole vector.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { logSoftmaxAt } from "./cpu_ops.ts";
 * assert.equal(Math.exp(logSoftmaxAt(new Float32Array([0, 0]), 1)), 0.5);
 * ```
 */
export function logSoftmaxAt(x: Float32Array, id: number): number {
  let max = -Infinity;
  for (const v of x) if (v > max) max = v;
  let sum = 0;
  for (const v of x) sum += Math.exp(v - max);
  return x[id] - max - Math.log(sum);
}

/** Index of the largest value (first on ties). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}
