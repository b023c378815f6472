/**
 * Tests of the sparsification policies (runtime/core/policies.ts) against the method's rules (ARCHITECTURE.md), case by case:
 * keep counts, order, ties, untouched text rows, the no-cache output rule, KV admission, FastV
 * ranking, composition, errors; and that the predictors and policies run where WebGPU is absent.
 * @module
 */
import assert from "node:assert/strict";
import { InputError, PolicyError } from "../runtime/core/errors.ts";
import {
  composePolicy,
  densePolicy,
  dynamicPolicy,
  fastvPolicy,
  resolvePolicy,
} from "../runtime/core/policies.ts";
import type { Policy, PolicyModelInfo, RowKind } from "../runtime/core/policy.ts";
import { loadVisionPredictor, visionPredictorTensors, visionScores } from "../runtime/core/predictors.ts";

const SPARSE_MODEL: PolicyModelInfo = {
  numLayers: 4,
  sparse: { sparseLayer: 2, visionKeepRate: 0.2, useVisionPredictor: true, useOutputTextPredictor: true },
  hasVisionPredictor: true,
  hasTextPredictor: true,
};
const PLAIN_MODEL: PolicyModelInfo = {
  numLayers: 4,
  sparse: null,
  hasVisionPredictor: false,
  hasTextPredictor: false,
};

/** `before` text rows, `images` image rows, `after` text rows. */
function promptKinds(before: number, images: number, after: number): RowKind[] {
  return [
    ...new Array<RowKind>(before).fill("text"),
    ...new Array<RowKind>(images).fill("image"),
    ...new Array<RowKind>(after).fill("text"),
  ];
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

/** Vision scores, one per image row in row order (higher keeps). */
function scoresFrom(values: number[]): Float32Array {
  return new Float32Array(values);
}

Deno.test("densePolicy() keeps every row and admits every token", () => {
  const plan = densePolicy().plan(PLAIN_MODEL);
  const kinds: RowKind[] = [...promptKinds(2, 5, 2), "output", "output"];
  assert.equal(plan.pruneLayer, null);
  assert.deepEqual(plan.needs, { visionScores: false, textLogits: false, lastRowAttention: false });
  assert.deepEqual(plan.selectRows(kinds, {}), range(0, 11));
  assert.equal(plan.admission, "all");
  assert.equal(plan.admit([0, 5]), true);
});

Deno.test("dynamicPolicy() keeps floor(N × rate) image rows for rates 0.2, 0.5 and 1", () => {
  const n = 10, kinds = promptKinds(3, n, 2);
  const scores = scoresFrom(range(0, n).map((i) => Math.sin(i * 2.3)));
  for (const [rate, expected] of [[0.2, 2], [0.5, 5], [1, 10]] as const) {
    const kept = dynamicPolicy({ visionKeepRate: rate }).plan(SPARSE_MODEL).selectRows(kinds, {
      visionScores: scores,
    });
    const images = kept.filter((i) => kinds[i] === "image");
    assert.equal(images.length, expected, `rate ${rate}`);
    assert.deepEqual(kept.filter((i) => kinds[i] === "text"), [0, 1, 2, 13, 14], `rate ${rate}: text rows`);
  }
  // LLaVA-1.5's 576 tokens at the default 0.2 from sparse_config: 115.
  const big = promptKinds(35, 576, 20);
  const kept = dynamicPolicy().plan(SPARSE_MODEL).selectRows(big, {
    visionScores: scoresFrom(range(0, 576).map((i) => Math.cos(i))),
  });
  assert.equal(kept.length, 35 + 115 + 20);
});

Deno.test("dynamicPolicy() keeps the highest-scoring image rows in original order", () => {
  const kinds = promptKinds(2, 6, 1);
  // image j at row 2 + j; best three: images 4 (0.9), 1 (0.5), 5 (0.2).
  const scores = scoresFrom([-1, 0.5, -3, 0.1, 0.9, 0.2]);
  const kept = dynamicPolicy({ visionKeep: 3 }).plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: scores,
  });
  assert.deepEqual(kept, [0, 1, 3, 6, 7, 8]);
});

Deno.test("dynamicPolicy() keeps at least one image row and clamps counts to N", () => {
  const kinds = promptKinds(1, 3, 1);
  const scores = scoresFrom([-2, -1, -3]);
  const kept = dynamicPolicy({ visionKeepRate: 0.2 }).plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: scores,
  });
  assert.deepEqual(kept, [0, 2, 4]); // floor(0.6) = 0 → 1: the best image (index 1, row 2)
  const all = dynamicPolicy({ visionKeep: 50 }).plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: scores,
  });
  assert.deepEqual(all, [0, 1, 2, 3, 4]);
});

Deno.test("dynamicPolicy() breaks score ties by lower index", () => {
  const kinds = promptKinds(1, 6, 1);
  const scores = scoresFrom([0, 1, 1, 0, 1, 1]);
  const kept = dynamicPolicy({ visionKeep: 3 }).plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: scores,
  });
  assert.deepEqual(kept, [0, 2, 3, 5, 7]); // images 1, 2, 4 of the four tied at 1
  const flat = dynamicPolicy({ visionKeep: 2 }).plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: new Float32Array(6).fill(-0.7),
  });
  assert.deepEqual(flat, [0, 1, 2, 7]);
});

Deno.test("dynamicPolicy() without cache keeps the n output rows with the largest logit0", () => {
  // Rows: 2 text, 2 image, 1 text, then outputs A B C D and the last output E.
  const kinds: RowKind[] = [...promptKinds(2, 2, 1), "output", "output", "output", "output", "output"];
  // A: logit0 5 but 5 < 10 (predicted drop); B: 1 > 0; C: 2 > 1; D: 0.5 < 3; E (last): 9 < 10.
  // n = 2 (B, C), but the two largest logit0 among A–D are A (5) and C (2): keep A and C.
  const textLogits = new Float32Array([5, 10, 1, 0, 2, 1, 0.5, 3, 9, 10]);
  const plan = dynamicPolicy().plan(SPARSE_MODEL);
  const kept = plan.selectRows(kinds, { visionScores: scoresFrom([0, -1]), textLogits });
  assert.deepEqual(kept, [0, 1, 2, 4, 5, 7, 9]);
});

Deno.test("dynamicPolicy() always keeps the last row and ignores its text logits", () => {
  const kinds: RowKind[] = [...promptKinds(1, 1, 1), "output", "output", "output"];
  // Last row (5) has the largest logit0 and a drop decision: still kept, never takes a slot.
  const textLogits = new Float32Array([1, 2, 3, 0, 100, 200]);
  const kept = dynamicPolicy().plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: scoresFrom([0]),
    textLogits,
  });
  assert.deepEqual(kept, [0, 1, 2, 4, 5]); // n = 1 (row 4): keep row 4, drop row 3
  // When every candidate says drop, only the last output row survives; text rows stay.
  const none = dynamicPolicy().plan(SPARSE_MODEL).selectRows(kinds, {
    visionScores: scoresFrom([0]),
    textLogits: new Float32Array([0, 1, 0, 1, 5, 1]),
  });
  assert.deepEqual(none, [0, 1, 2, 5]);
});

Deno.test("dynamicPolicy() admits with cache when logit0 > logit1 at the sparse layer", () => {
  const plan = dynamicPolicy().plan(SPARSE_MODEL);
  assert.equal(plan.pruneLayer, 2);
  assert.equal(plan.admission, "predictor");
  assert.equal(plan.admitLayer, 2);
  assert.deepEqual(plan.needs, { visionScores: true, textLogits: true, lastRowAttention: false });
  assert.equal(plan.admit([0.3, 0.2]), true);
  assert.equal(plan.admit(new Float32Array([0.2, 0.3])), false);
  assert.equal(plan.admit([1, 1]), false);
  const layer3 = dynamicPolicy({ sparseLayer: 3 }).plan(SPARSE_MODEL);
  assert.equal(layer3.pruneLayer, 3);
  assert.equal(layer3.admitLayer, 3);
});

Deno.test("dynamicPolicy() honours vision: false and textAdmission: false", () => {
  const kinds: RowKind[] = [...promptKinds(1, 3, 1), "output", "output", "output"];
  const textLogits = new Float32Array([0, 1, 0, 1, 0, 1]);
  const textOnly = dynamicPolicy({ vision: false }).plan({ ...SPARSE_MODEL, hasVisionPredictor: false });
  assert.equal(textOnly.needs.visionScores, false);
  assert.deepEqual(textOnly.selectRows(kinds, { textLogits }), [0, 1, 2, 3, 4, 7]);
  const visionOnly = dynamicPolicy({ textAdmission: false, visionKeep: 1 }).plan(SPARSE_MODEL);
  assert.equal(visionOnly.admission, "all");
  assert.equal(visionOnly.admit([0, 1]), true);
  assert.equal(visionOnly.needs.textLogits, false);
  assert.deepEqual(visionOnly.selectRows(kinds, { visionScores: scoresFrom([0, 1, 0]) }), [0, 2, 4, 5, 6, 7]);
  // Defaults follow sparse_config's use_* switches.
  const configured = dynamicPolicy().plan({
    ...SPARSE_MODEL,
    sparse: { ...SPARSE_MODEL.sparse!, useOutputTextPredictor: false },
    hasTextPredictor: false,
  });
  assert.equal(configured.admission, "all");
});

Deno.test("dynamicPolicy() throws PolicyError naming what the model lacks", () => {
  assert.throws(() => dynamicPolicy().plan(PLAIN_MODEL), (e: unknown) => {
    assert.ok(e instanceof PolicyError);
    assert.match(e.message, /^Cannot plan the dynamic policy: .*sparse_config/);
    return true;
  });
  assert.throws(() => dynamicPolicy().plan({ ...SPARSE_MODEL, hasVisionPredictor: false }), (e: unknown) => {
    assert.ok(e instanceof PolicyError);
    assert.equal(e.where, "model.image_score_predictor");
    assert.match(e.message, /vision predictor/);
    return true;
  });
  assert.throws(() => dynamicPolicy().plan({ ...SPARSE_MODEL, hasTextPredictor: false }), (e: unknown) => {
    assert.ok(e instanceof PolicyError);
    assert.equal(e.where, "model.output_text_score_predictor");
    return true;
  });
  assert.throws(() => dynamicPolicy({ sparseLayer: 4 }).plan(SPARSE_MODEL), PolicyError);
});

Deno.test("dynamicPolicy() rejects bad options and mis-sized signals", () => {
  assert.throws(() => dynamicPolicy({ visionKeepRate: 0 }), InputError);
  assert.throws(() => dynamicPolicy({ visionKeepRate: 1.5 }), InputError);
  assert.throws(() => dynamicPolicy({ visionKeep: 2.5 }), InputError);
  assert.throws(() => dynamicPolicy({ visionKeep: 2, visionKeepRate: 0.5 }), InputError);
  assert.throws(() => dynamicPolicy({ sparseLayer: -1 }), InputError);
  const plan = dynamicPolicy().plan(SPARSE_MODEL);
  assert.throws(
    () => plan.selectRows(promptKinds(1, 3, 1), { visionScores: scoresFrom([1, 2]) }),
    (e: unknown) => {
      assert.ok(e instanceof PolicyError);
      assert.equal(e.where, "signals.visionScores");
      return true;
    },
  );
  assert.throws(() => plan.selectRows(promptKinds(1, 3, 1), {}), PolicyError);
  // A text-only prompt needs no signals.
  assert.deepEqual(plan.selectRows(promptKinds(3, 0, 0), {}), [0, 1, 2]);
});

Deno.test("fastvPolicy() keeps the image rows the last row attends to most", () => {
  const plan = fastvPolicy().plan(PLAIN_MODEL);
  assert.equal(plan.pruneLayer, 2);
  assert.deepEqual(plan.needs, { visionScores: false, textLogits: false, lastRowAttention: true });
  assert.equal(plan.admission, "all");
  const kinds = promptKinds(2, 6, 2);
  // Text rows get the largest attention but never take an image slot.
  const attention = new Float32Array([0.3, 0.2, 0.01, 0.05, 0.02, 0.1, 0.07, 0.03, 0.1, 0.1]);
  // keep floor(6 × 0.5) = 3 images: rows 5 (0.1), 6 (0.07), 3 (0.05).
  assert.deepEqual(plan.selectRows(kinds, { lastRowAttention: attention }), [0, 1, 3, 5, 6, 8, 9]);
  const keepMost = fastvPolicy({ r: 0.25 }).plan(PLAIN_MODEL).selectRows(kinds, {
    lastRowAttention: attention,
  });
  assert.equal(keepMost.length, 4 + 4); // floor(6 × 0.75) = 4
  const keepAll = fastvPolicy({ r: 0 }).plan(PLAIN_MODEL).selectRows(kinds, { lastRowAttention: attention });
  assert.deepEqual(keepAll, range(0, 10));
  const one = fastvPolicy({ r: 0.9 }).plan(PLAIN_MODEL).selectRows(promptKinds(0, 2, 1), {
    lastRowAttention: new Float32Array([0.2, 0.2, 0.6]),
  });
  assert.deepEqual(one, [0, 2]); // floor of one; the tie goes to the lower index
});

Deno.test("fastvPolicy() never prunes output rows and checks its layer", () => {
  const kinds: RowKind[] = [...promptKinds(1, 4, 1), "output", "output"];
  const attention = new Float32Array([0.1, 0.4, 0.0, 0.3, 0.0, 0.1, 0.0, 0.1]);
  const plan = fastvPolicy({ k: 3 }).plan(PLAIN_MODEL);
  assert.equal(plan.pruneLayer, 3);
  assert.deepEqual(plan.selectRows(kinds, { lastRowAttention: attention }), [0, 1, 3, 5, 6, 7]);
  assert.throws(() => fastvPolicy({ k: 4 }).plan(PLAIN_MODEL), PolicyError);
  assert.throws(() => fastvPolicy({ k: 0 }), InputError);
  assert.throws(() => fastvPolicy({ r: 1 }), InputError);
  assert.throws(() => plan.selectRows(kinds, { lastRowAttention: new Float32Array(3) }), PolicyError);
});

Deno.test("composePolicy() takes image rows from one part, output rows and admission from the other", () => {
  const policy = composePolicy({ images: fastvPolicy(), outputs: dynamicPolicy({ vision: false }) });
  const model = { ...SPARSE_MODEL, hasVisionPredictor: false };
  const plan = policy.plan(model);
  assert.equal(policy.name, "fastv+dynamic");
  assert.equal(plan.pruneLayer, 2);
  assert.deepEqual(plan.needs, { visionScores: false, textLogits: true, lastRowAttention: true });
  assert.equal(plan.admission, "predictor");
  assert.equal(plan.admit([2, 1]), true);
  assert.equal(plan.admit([1, 2]), false);
  const kinds: RowKind[] = [...promptKinds(1, 4, 1), "output", "output", "output"];
  const lastRowAttention = new Float32Array([0.1, 0.05, 0.3, 0.2, 0.05, 0.1, 0.1, 0.05, 0.05]);
  const textLogits = new Float32Array([0, 1, 2, 1, 0, 1]);
  // Images: rows 2, 3 (top 2 of 4). Outputs: n = 1 → row 7 (logit0 2); last row 8 kept.
  assert.deepEqual(plan.selectRows(kinds, { lastRowAttention, textLogits }), [0, 2, 3, 5, 7, 8]);
  assert.throws(
    () =>
      composePolicy({ images: fastvPolicy({ k: 1 }), outputs: dynamicPolicy({ vision: false }) }).plan(model),
    PolicyError,
  );
  const withDense = composePolicy({ images: densePolicy(), outputs: dynamicPolicy({ vision: false }) }).plan(
    model,
  );
  assert.equal(withDense.pruneLayer, 2);
  assert.deepEqual(withDense.selectRows(kinds, { textLogits }), [0, 1, 2, 3, 4, 5, 7, 8]);
});

Deno.test("resolvePolicy() maps names to policies and passes Policy objects through", () => {
  assert.equal(resolvePolicy("dense").name, "dense");
  assert.equal(resolvePolicy("dynamic").name, "dynamic");
  assert.equal(resolvePolicy("fastv").name, "fastv");
  const custom: Policy = { name: "mine", plan: (model) => densePolicy().plan(model) };
  assert.equal(resolvePolicy(custom), custom);
  assert.throws(() => resolvePolicy("sparse" as "dense"), (e: unknown) => {
    assert.ok(e instanceof InputError);
    assert.equal(e.where, "policy");
    return true;
  });
});

Deno.test("core.ts (the GPU-free export) imports and runs predictors and policies where navigator.gpu is absent", async () => {
  const core = new URL("../core.ts", import.meta.url).href;
  const script = `
    Object.defineProperty(Navigator.prototype, "gpu", { get() { throw new Error("navigator.gpu was touched"); } });
    const p = await import(${JSON.stringify(core)});
    const { dynamicPolicy } = p;
    const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
    const sizes = new Map(p.visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
    const predictor = p.loadVisionPredictor((name) => new Float32Array(sizes.get(name)).map((_, i) => Math.sin(i)), { hidden: 4, sparse });
    const visionScores = p.visionScores(predictor, new Float32Array(12).map((_, i) => Math.cos(i)));
    const plan = dynamicPolicy({ visionKeep: 1 }).plan({
      numLayers: 4, hasVisionPredictor: true, hasTextPredictor: true,
      sparse: { sparseLayer: 2, visionKeepRate: 0.2, useVisionPredictor: true, useOutputTextPredictor: true },
    });
    console.log(JSON.stringify({ kept: plan.selectRows(["text", "image", "image", "image", "text"], { visionScores }), scores: Array.from(visionScores) }));
  `;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const errorText = new TextDecoder().decode(stderr);
  assert.equal(code, 0, errorText);
  const result = JSON.parse(new TextDecoder().decode(stdout));
  // The same computation in this process gives the same numbers and rows.
  const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
  const sizes = new Map(
    visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]),
  );
  const predictor = loadVisionPredictor(
    (name) => new Float32Array(sizes.get(name)!).map((_, i) => Math.sin(i)),
    { hidden: 4, sparse },
  );
  const scores = visionScores(predictor, new Float32Array(12).map((_, i) => Math.cos(i)));
  assert.deepEqual(result.scores, Array.from(scores));
  const best = scores.indexOf(Math.max(...scores));
  assert.deepEqual(result.kept, [0, 1 + best, 4]);
});
