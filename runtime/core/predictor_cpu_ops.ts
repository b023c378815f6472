/**
 * CPU twins of kernels/predictor_ops.ts: the Dynamic-LLaVA predictor pieces that are neither
 * LayerNorm, Linear nor GELU. GPU-free; the pure-TS predictors can use them directly.
 *
 * - {@link halfGlobalConcat}: the VisionPredictor's local/global channel split.
 * - {@link logSoftmax2Col0}: the keep score log_softmax(row)[0] of two-way logits.
 * - {@link admitFlag}: the TextPredictor's KV admission decision.
 * @module
 */
import { InputError } from "./errors.ts";

/**
 * x [N, d] → y [N, d]: y[:, :d/2] = x[:, :d/2]; y[:, d/2:] = the mean of x[:, d/2:] over the N rows,
 * the same for every row. Throws {@link InputError} when d is odd or does not divide x.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { halfGlobalConcat } from "./predictor_cpu_ops.ts";
 * const y = halfGlobalConcat(new Float32Array([1, 2, 3, 6]), 2); // x [2, 2]
 * assert.deepEqual(y, new Float32Array([1, 4, 3, 4])); // each row: its first half, then the column means of the second half
 * ```
 */
export function halfGlobalConcat(x: Float32Array, cols: number): Float32Array {
  if (!(Number.isInteger(cols) && cols > 0 && cols % 2 === 0 && x.length % cols === 0)) {
    throw new InputError(`Cannot split channels: width ${cols} is odd or does not divide the input`, "x");
  }
  const rows = x.length / cols;
  const half = cols / 2;
  const y = new Float32Array(x);
  for (let c = half; c < cols; c++) {
    let sum = 0;
    for (let r = 0; r < rows; r++) sum += x[r * cols + c];
    const mean = sum / rows;
    for (let r = 0; r < rows; r++) y[r * cols + c] = mean;
  }
  return y;
}

/**
 * logits [N, 2] → score [N] = log_softmax(row)[0] = -log(1 + exp(l1 - l0)).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { logSoftmax2Col0 } from "./predictor_cpu_ops.ts";
 * const col0 = logSoftmax2Col0(new Float32Array([0, 0, 5, -5]));
 * assert.deepEqual(Array.from(col0, (v) => +v.toPrecision(4)), [-0.6931, -0.0000454]);
 * ```
 */
export function logSoftmax2Col0(logits: Float32Array): Float32Array {
  const scores = new Float32Array(logits.length / 2);
  for (let r = 0; r < scores.length; r++) {
    const d = logits[2 * r + 1] - logits[2 * r];
    scores[r] = -(Math.max(d, 0) + Math.log1p(Math.exp(-Math.abs(d))));
  }
  return scores;
}

/**
 * The KV admission decision from text-predictor logits [2]: 1 when logit0 > logit1, else 0.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { admitFlag } from "./predictor_cpu_ops.ts";
 * assert.equal(admitFlag(new Float32Array([0.3, -0.1])), 1);
 * assert.equal(admitFlag(new Float32Array([1, 1])), 0); // a tie is not admitted
 * ```
 */
export function admitFlag(logits: Float32Array): 0 | 1 {
  return logits[0] > logits[1] ? 1 : 0;
}
