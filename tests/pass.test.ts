/**
 * The pass orchestration both backends run on (runtime/engine/pass.ts): pruning at the plan's layer,
 * admission at the plan's layer, and the rows every layer computes and holds, checked against
 * counts worked out by hand.
 */
import assert from "node:assert/strict";
import { decodeStep, fullPass, KvRows, signalRows } from "../runtime/engine/pass.ts";
import { dynamicPolicy, fastvPolicy } from "../runtime/core/policies.ts";
import type { RowKind } from "../runtime/core/policy.ts";

const model = {
  numLayers: 3,
  sparse: { sparseLayer: 1, visionKeepRate: 0.5, useVisionPredictor: true, useOutputTextPredictor: true },
  hasVisionPredictor: true,
  hasTextPredictor: true,
};

Deno.test("fullPass() prunes at the plan's layer and books the kept rows from there on", async () => {
  const plan = dynamicPolicy({ visionKeep: 1, textAdmission: false }).plan(model);
  const book = new KvRows(3, 16);
  const kinds: RowKind[] = ["text", "image", "image", "text"];
  const calls: string[] = [];
  const out = await fullPass(book, plan, { kinds, positions: [0, 1, 2, 3], tags: [-1, 0, 1, -1] }, {
    signals: (rows) => {
      calls.push(`signals ${rows.kinds.length}`);
      return { visionScores: new Float32Array([-2, -0.1]) };
    },
    keep: (keep) => calls.push(`keep ${keep}`),
    layer: (l, rows) => calls.push(`layer ${l} ${rows.positions}`),
  }, { phase: "prefill", ledger: true });
  assert.deepEqual(calls, ["layer 0 0,1,2,3", "signals 4", "keep 0,2,3", "layer 1 0,2,3", "layer 2 0,2,3"]);
  assert.deepEqual(out.visualKept, [1]);
  assert.deepEqual(out.outputKept, []);
  assert.deepEqual(book.rows, [4, 3, 3]);
  assert.deepEqual(book.paperRows, [2, 1, 1]);
  assert.deepEqual(book.ledger.positions, [[0, 1, 2, 3], [0, 2, 3], [0, 2, 3]]);
  assert.deepEqual(book.passes, [{
    phase: "prefill",
    layers: [
      { newRows: 4, cachedRows: 0, paperNewRows: 2, paperCachedRows: 0 },
      { newRows: 3, cachedRows: 0, paperNewRows: 1, paperCachedRows: 0 },
      { newRows: 3, cachedRows: 0, paperNewRows: 1, paperCachedRows: 0 },
    ],
  }]);
  // A second full pass starts from empty caches; without the ledger nothing is appended to it.
  await fullPass(book, plan, { kinds, positions: [0, 1, 2, 3], tags: [-1, 0, 1, -1] }, {
    signals: () => ({ visionScores: new Float32Array([0, -1]) }),
    keep: () => {},
    layer: () => {},
  }, { phase: "decode", ledger: false });
  assert.deepEqual(book.rows, [4, 3, 3]);
  assert.equal(book.ledger.rowsPerLayer()[0], 4);
});

Deno.test("fullPass() asks FastV's attention only of the layer before the prune layer", async () => {
  const plan = fastvPolicy({ k: 2, r: 0.5 }).plan({ ...model, sparse: null });
  const asked: boolean[] = [];
  await fullPass(new KvRows(3, 16), plan, {
    kinds: ["text", "image", "image"],
    positions: [0, 1, 2],
    tags: [-1, 0, 1],
  }, {
    signals: () => ({ lastRowAttention: new Float32Array([0.2, 0.1, 0.7]) }),
    keep: (keep) => assert.deepEqual(keep, [0, 2]),
    layer: (_, __, options) => asked.push(options.lastRowAttention),
  }, { phase: "prefill", ledger: false });
  assert.deepEqual(asked, [false, true, false]);
});

Deno.test("decodeStep() holds a refused token only below the admission layer", () => {
  const plan = dynamicPolicy().plan(model);
  const book = new KvRows(3, 16);
  const decisions = [false, true];
  const admitted = decisions.map((decision, tag) =>
    decodeStep(book, plan, { position: 10 + tag, tag }, { admit: () => decision, layer: () => {} })
  );
  assert.deepEqual(admitted, [false, true]);
  assert.deepEqual(book.rows, [2, 1, 1]);
  assert.deepEqual(book.paperRows, [2, 1, 1]);
  assert.deepEqual(book.ledger.positions, [[10, 11], [11], [11]]);
  assert.deepEqual(book.passes[1].layers.map((l) => l.cachedRows), [1, 0, 0]);
  // A step after a stop id occupies the caches it entered and nothing else.
  book.holdUncounted(plan, false);
  assert.deepEqual(book.rows, [3, 1, 1]);
  assert.deepEqual(book.paperRows, [2, 1, 1]);
  assert.equal(book.passes.length, 2);
});

Deno.test("decodeStep() with every token admitted never asks for an admission", () => {
  const plan = dynamicPolicy({ textAdmission: false }).plan(model);
  const book = new KvRows(3, 16);
  const layers: number[] = [];
  const admitted = decodeStep(book, plan, { position: 4, tag: 0 }, {
    admit: () => assert.fail("asked"),
    layer: (l) => layers.push(l),
  });
  assert.equal(admitted, true);
  assert.deepEqual(layers, [0, 1, 2]);
  assert.deepEqual(book.rows, [1, 1, 1]);
});

Deno.test("signalRows() lists the rows of each needed signal only", () => {
  const kinds: RowKind[] = ["text", "image", "output", "image", "output"];
  const both = signalRows({ visionScores: true, textLogits: true, lastRowAttention: false }, kinds);
  assert.deepEqual(both.rows, { images: [1, 3], outputs: [2, 4] });
  assert.deepEqual(Object.keys(both.signals).sort(), ["textLogits", "visionScores"]);
  const none = signalRows({ visionScores: false, textLogits: false, lastRowAttention: true }, kinds);
  assert.deepEqual(none, { rows: { images: [], outputs: [] }, signals: {} });
});
