/**
 * Tests of the CPU predictors (runtime/core/predictors.ts): forward passes against a straightforward
 * re-computation written here in f64 with explicit loops (its own erf, LayerNorm, timm block), the
 * tensor lists against the official layout, and loading errors.
 * @module
 */
import assert from "node:assert/strict";
import { CheckpointError, InputError } from "../runtime/core/errors.ts";
import {
  loadTextPredictor,
  loadVisionPredictor,
  type PredictorSizes,
  type TensorSpec,
  TEXT_PREDICTOR_PREFIX,
  textPredictorLogits,
  textPredictorTensors,
  VISION_PREDICTOR_PREFIX,
  visionPredictorLogits,
  visionPredictorTensors,
  visionScores,
} from "../runtime/core/predictors.ts";
import { randomArray } from "./kernel_util.ts";

const SPARSE = { dModel: 16, nhead: 4, dimFeedforward: 24, numLayers: 2 };
const SIZES: PredictorSizes = { hidden: 12, sparse: SPARSE };

/** Random weights for every spec: LayerNorm weights near 1, Linear weights ~ 1/√in. */
function randomWeights(specs: TensorSpec[], seed: number): Map<string, Float32Array> {
  const weights = new Map<string, Float32Array>();
  specs.forEach(({ name, shape }, i) => {
    const values = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + i + 1);
    // 1-D ".weight" tensors are LayerNorm scales; 2-D ones are Linear weights.
    if (shape.length === 1 && name.endsWith(".weight")) values.forEach((v, j) => values[j] = 1 + 0.3 * v);
    else if (shape.length === 2) values.forEach((v, j) => values[j] = (1.5 * v) / Math.sqrt(shape[1]));
    else values.forEach((v, j) => values[j] = 0.2 * v);
    weights.set(name, values);
  });
  return weights;
}

// ---- Independent f64 reference -------------------------------------------------------------

/** erf by its Maclaurin series (exact to ~1e-15 for |x| < 3), ±1 beyond 6. */
function refErf(x: number): number {
  if (Math.abs(x) > 6) return Math.sign(x);
  let term = x, sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (-x * x) / n;
    sum += term / (2 * n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

const refGelu = (v: number) => 0.5 * v * (1 + refErf(v / Math.SQRT2));

type Matrix = number[][];

function refLinear(x: Matrix, w: Float32Array, b: Float32Array | undefined, outSize: number): Matrix {
  const inSize = x[0].length;
  return x.map((row) => {
    const y: number[] = [];
    for (let o = 0; o < outSize; o++) {
      let acc = b ? b[o] : 0;
      for (let i = 0; i < inSize; i++) acc += row[i] * w[o * inSize + i];
      y.push(acc);
    }
    return y;
  });
}

function refLayerNorm(x: Matrix, w: Float32Array, b: Float32Array): Matrix {
  return x.map((row) => {
    const mean = row.reduce((a, v) => a + v, 0) / row.length;
    const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / row.length;
    return row.map((v, c) => ((v - mean) / Math.sqrt(variance + 1e-5)) * w[c] + b[c]);
  });
}

const mapGelu = (x: Matrix) => x.map((row) => row.map(refGelu));

/** timm Attention: qkv → [N, 3, heads, hd]; softmax((q · hd^-½) kᵀ) v; heads concatenated. */
function refAttention(x: Matrix, qkvW: Float32Array, heads: number): Matrix {
  const n = x.length, d = x[0].length, hd = d / heads;
  const qkv = refLinear(x, qkvW, undefined, 3 * d);
  const part = (row: number, which: number, h: number, j: number) => qkv[row][which * d + h * hd + j];
  const out: Matrix = Array.from({ length: n }, () => new Array(d).fill(0));
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < n; i++) {
      const logits: number[] = [];
      for (let t = 0; t < n; t++) {
        let dot = 0;
        for (let j = 0; j < hd; j++) dot += part(i, 0, h, j) * hd ** -0.5 * part(t, 1, h, j);
        logits.push(dot);
      }
      const max = Math.max(...logits);
      const exps = logits.map((l) => Math.exp(l - max));
      const sum = exps.reduce((a, v) => a + v, 0);
      for (let t = 0; t < n; t++) {
        for (let j = 0; j < hd; j++) out[i][h * hd + j] += (exps[t] / sum) * part(t, 2, h, j);
      }
    }
  }
  return out;
}

function addMatrix(a: Matrix, b: Matrix): Matrix {
  return a.map((row, i) => row.map((v, j) => v + b[i][j]));
}

function toMatrix(x: Float32Array, cols: number): Matrix {
  return Array.from({ length: x.length / cols }, (_, r) => Array.from(x.subarray(r * cols, (r + 1) * cols)));
}

function refVisionLogits(w: Map<string, Float32Array>, x: Float32Array, sizes: PredictorSizes): Matrix {
  const { hidden, sparse: { dModel: d, nhead, dimFeedforward: f, numLayers } } = sizes;
  const g = (name: string) => w.get(name)!;
  let h = refLayerNorm(toMatrix(x, hidden), g("down_mlp.0.weight"), g("down_mlp.0.bias"));
  h = mapGelu(refLinear(h, g("down_mlp.1.weight"), g("down_mlp.1.bias"), d));
  for (let i = 0; i < numLayers; i++) {
    const p = `transformer.${i}.`;
    const a = refAttention(
      refLayerNorm(h, g(p + "norm1.weight"), g(p + "norm1.bias")),
      g(p + "attn.qkv.weight"),
      nhead,
    );
    h = addMatrix(h, refLinear(a, g(p + "attn.proj.weight"), g(p + "attn.proj.bias"), d));
    const m = refLayerNorm(h, g(p + "norm2.weight"), g(p + "norm2.bias"));
    const inner = mapGelu(refLinear(m, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias"), f));
    h = addMatrix(h, refLinear(inner, g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias"), d));
  }
  const globalHalf = new Array(d / 2).fill(0);
  for (const row of h) for (let c = 0; c < d / 2; c++) globalHalf[c] += row[d / 2 + c] / h.length;
  h = h.map((row) => [...row.slice(0, d / 2), ...globalHalf]);
  h = mapGelu(refLinear(h, g("output_mlp.0.weight"), g("output_mlp.0.bias"), d / 2));
  h = mapGelu(refLinear(h, g("output_mlp.2.weight"), g("output_mlp.2.bias"), d / 4));
  return refLinear(h, g("output_mlp.4.weight"), g("output_mlp.4.bias"), 2);
}

function refTextLogits(w: Map<string, Float32Array>, x: Float32Array, sizes: PredictorSizes): Matrix {
  const d = sizes.sparse.dModel;
  const g = (name: string) => w.get(name)!;
  let h = refLayerNorm(toMatrix(x, sizes.hidden), g("output_mlp.0.weight"), g("output_mlp.0.bias"));
  h = mapGelu(refLinear(h, g("output_mlp.1.weight"), g("output_mlp.1.bias"), d));
  h = mapGelu(refLinear(h, g("output_mlp.3.weight"), g("output_mlp.3.bias"), d / 2));
  h = mapGelu(refLinear(h, g("output_mlp.5.weight"), g("output_mlp.5.bias"), d / 4));
  return refLinear(h, g("output_mlp.7.weight"), g("output_mlp.7.bias"), 2);
}

function assertNear(actual: Float32Array, expected: Matrix, tolerance: number, what: string): void {
  const flat = expected.flat();
  assert.equal(actual.length, flat.length, `${what}: length`);
  flat.forEach((e, i) => {
    assert.ok(
      Math.abs(actual[i] - e) <= tolerance * (1 + Math.abs(e)),
      `${what}[${i}]: ${actual[i]} vs ${e}`,
    );
  });
}

function visionFixture(seed: number) {
  const weights = randomWeights(visionPredictorTensors(SIZES.hidden, SPARSE), seed);
  return { weights, predictor: loadVisionPredictor((name) => weights.get(name), SIZES) };
}

// ---- Tests ---------------------------------------------------------------------------------

Deno.test("visionPredictorTensors() lists the official layout with its shapes", () => {
  const specs = visionPredictorTensors(4096, { dModel: 512, nhead: 8, dimFeedforward: 2048, numLayers: 2 });
  const byName = new Map(specs.map((s) => [s.name, s.shape]));
  assert.equal(specs.length, 4 + 2 * 11 + 6);
  assert.deepEqual(byName.get("down_mlp.0.weight"), [4096]);
  assert.deepEqual(byName.get("down_mlp.1.weight"), [512, 4096]);
  assert.deepEqual(byName.get("transformer.1.attn.qkv.weight"), [1536, 512]);
  assert.equal(byName.has("transformer.1.attn.qkv.bias"), false);
  assert.deepEqual(byName.get("transformer.0.attn.proj.bias"), [512]);
  assert.deepEqual(byName.get("transformer.1.mlp.fc1.weight"), [2048, 512]);
  assert.deepEqual(byName.get("transformer.1.mlp.fc2.weight"), [512, 2048]);
  assert.deepEqual(byName.get("transformer.0.norm2.bias"), [512]);
  assert.deepEqual(byName.get("output_mlp.0.weight"), [256, 512]);
  assert.deepEqual(byName.get("output_mlp.2.weight"), [128, 256]);
  assert.deepEqual(byName.get("output_mlp.4.weight"), [2, 128]);
  assert.equal(byName.has("transformer.2.norm1.weight"), false);
  assert.equal(VISION_PREDICTOR_PREFIX, "model.image_score_predictor.");
});

Deno.test("textPredictorTensors() lists the official layout with its shapes", () => {
  const specs = textPredictorTensors(4096, { dModel: 512, nhead: 8, dimFeedforward: 2048, numLayers: 2 });
  assert.deepEqual(specs, [
    { name: "output_mlp.0.weight", shape: [4096] },
    { name: "output_mlp.0.bias", shape: [4096] },
    { name: "output_mlp.1.weight", shape: [512, 4096] },
    { name: "output_mlp.1.bias", shape: [512] },
    { name: "output_mlp.3.weight", shape: [256, 512] },
    { name: "output_mlp.3.bias", shape: [256] },
    { name: "output_mlp.5.weight", shape: [128, 256] },
    { name: "output_mlp.5.bias", shape: [128] },
    { name: "output_mlp.7.weight", shape: [2, 128] },
    { name: "output_mlp.7.bias", shape: [2] },
  ]);
  assert.equal(TEXT_PREDICTOR_PREFIX, "model.output_text_score_predictor.");
});

Deno.test("visionPredictorLogits() matches an explicit f64 re-computation", () => {
  const { weights, predictor } = visionFixture(1);
  for (const rows of [1, 2, 7]) {
    const x = randomArray(rows * SIZES.hidden, 100 + rows).map((v) => 3 * v + 0.5);
    const logits = visionPredictorLogits(predictor, x);
    assertNear(logits, refVisionLogits(weights, x, SIZES), 2e-5, `rows ${rows}`);
    // Not degenerate: the two logits and the rows differ.
    if (rows > 1) assert.notEqual(logits[0], logits[2]);
    assert.notEqual(logits[0], logits[1]);
  }
});

Deno.test("visionPredictorLogits() is permutation-equivariant and mixes tokens globally", () => {
  const { predictor } = visionFixture(2);
  const rows = 5, c = SIZES.hidden;
  const x = randomArray(rows * c, 7);
  const logits = visionPredictorLogits(predictor, x);
  const order = [3, 0, 4, 1, 2];
  const permuted = new Float32Array(rows * c);
  order.forEach((src, dst) => permuted.set(x.subarray(src * c, (src + 1) * c), dst * c));
  const permutedLogits = visionPredictorLogits(predictor, permuted);
  order.forEach((src, dst) => {
    for (let j = 0; j < 2; j++) assert.ok(Math.abs(permutedLogits[2 * dst + j] - logits[2 * src + j]) < 1e-5);
  });
  // Changing token 4 changes token 0's logits (attention and the global mean see every token).
  const changed = x.slice();
  changed.fill(2, 4 * c, 5 * c);
  assert.ok(Math.abs(visionPredictorLogits(predictor, changed)[0] - logits[0]) > 1e-6);
});

Deno.test("visionScores() is log_softmax(logits)[:, 0]", () => {
  const { predictor } = visionFixture(3);
  const x = randomArray(4 * SIZES.hidden, 9);
  const logits = visionPredictorLogits(predictor, x);
  const scores = visionScores(predictor, x);
  assert.equal(scores.length, 4);
  scores.forEach((s, r) => {
    const expected = -Math.log1p(Math.exp(logits[2 * r + 1] - logits[2 * r]));
    assert.ok(Math.abs(s - expected) < 1e-6, `row ${r}: ${s} vs ${expected}`);
    assert.ok(s < 0);
  });
});

Deno.test("textPredictorLogits() matches an explicit f64 re-computation", () => {
  const weights = randomWeights(textPredictorTensors(SIZES.hidden, SPARSE), 4);
  const predictor = loadTextPredictor((name) => weights.get(name), SIZES);
  for (const rows of [1, 3]) {
    const x = randomArray(rows * SIZES.hidden, 50 + rows).map((v) => 2 * v);
    const logits = textPredictorLogits(predictor, x);
    assertNear(logits, refTextLogits(weights, x, SIZES), 2e-5, `rows ${rows}`);
  }
  assert.equal(textPredictorLogits(predictor, new Float32Array(0)).length, 0);
});

Deno.test("loadVisionPredictor() names a missing or mis-sized tensor", () => {
  const weights = randomWeights(visionPredictorTensors(SIZES.hidden, SPARSE), 5);
  const missing = new Map(weights);
  missing.delete("transformer.1.mlp.fc2.bias");
  assert.throws(() => loadVisionPredictor((name) => missing.get(name), SIZES), (e: unknown) => {
    assert.ok(e instanceof CheckpointError);
    assert.equal(e.where, "model.image_score_predictor.transformer.1.mlp.fc2.bias");
    assert.match(e.message, /^Cannot load predictor: tensor is missing/);
    return true;
  });
  const wrong = new Map(weights);
  wrong.set("transformer.0.attn.qkv.weight", new Float32Array(3 * 16 * 16 + 1));
  assert.throws(() => loadVisionPredictor((name) => wrong.get(name), SIZES), (e: unknown) => {
    assert.ok(e instanceof CheckpointError);
    assert.equal(e.where, "model.image_score_predictor.transformer.0.attn.qkv.weight");
    assert.match(e.message, /expected shape \[48,16\] \(768 values\), got 769 values/);
    return true;
  });
  assert.throws(
    () => loadVisionPredictor((name) => weights.get(name), { hidden: 12, sparse: { ...SPARSE, nhead: 3 } }),
    CheckpointError,
  );
});

Deno.test("loadTextPredictor() names a mis-sized tensor", () => {
  const weights = randomWeights(textPredictorTensors(SIZES.hidden, SPARSE), 6);
  weights.set("output_mlp.5.weight", new Float32Array(7));
  assert.throws(() => loadTextPredictor((name) => weights.get(name), SIZES), (e: unknown) => {
    assert.ok(e instanceof CheckpointError);
    assert.equal(e.where, "model.output_text_score_predictor.output_mlp.5.weight");
    return true;
  });
});

Deno.test("visionPredictorLogits() rejects input that is not whole rows", () => {
  const { predictor } = visionFixture(7);
  assert.throws(() => visionPredictorLogits(predictor, new Float32Array(SIZES.hidden + 1)), InputError);
  assert.equal(visionPredictorLogits(predictor, new Float32Array(0)).length, 0);
});
