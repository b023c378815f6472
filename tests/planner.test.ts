/**
 * The memory planner (runtime/core/planner.ts): exact admissions of LLaVA-1.5-7B requests on a 6 GB GPU
 * per weight type and policy, arrival order without overtaking, refusals, learning the K/V element size
 * and the output-text keep rate from measured `stats.kvCache` (a real run of the CPU backend), and bad
 * input refused with InputError.
 * @module
 */
import assert from "node:assert/strict";
import { loadModel } from "../mod.ts";
import { parseModelConfig } from "../runtime/core/config.ts";
import { InputError } from "../runtime/core/errors.ts";
import { MemoryPlanner, type PlannedRequest } from "../runtime/core/planner.ts";
import { weightBytes } from "../runtime/core/weight_bytes.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

const CONFIGS = new URL("./fixtures/configs/", import.meta.url);
const dynamic7b = JSON.parse(await Deno.readTextFile(new URL("dynamic-llava-7b.json", CONFIGS)));
const clip = JSON.parse(await Deno.readTextFile(new URL("clip-vit-large-patch14-336.json", CONFIGS)));
const parsed7b = parseModelConfig(dynamic7b, "dynamic-llava-7b.json", clip);

/** One K/V row of one LLaVA-1.5-7B layer at f16: (K, V) × 4096 × 2 bytes. */
const ROW_7B = 2 * 4096 * 2;
/** A 4K context: 48 text + 576 image tokens + 3472 generated (3471 fed back). */
const FULL_CONTEXT = 4096 - 48 - 576;

const request = (id: string, policy: PlannedRequest["policy"], maxNewTokens: number): PlannedRequest => ({
  id,
  policy,
  images: 1,
  promptTokens: 48,
  maxNewTokens,
});

Deno.test("LLaVA-1.5-7B on 6 GB: the planner admits exactly what the hand count fits, per weight type and policy", () => {
  const q4 = new MemoryPlanner({ config: dynamic7b, budgetBytes: 6e9, weightType: "q4_k_m", kvDtype: "f16" });
  assert.equal(q4.kvBudgetBytes, 6e9 - weightBytes(parsed7b, "q4_k_m").total);
  assert.equal(q4.kvBudgetBytes, 1_273_582_576);
  // Dynamic, 4K: layers 0-1 hold 624 + 3471 rows; layers 2-31 hold 48 + 115 + floor(3471 × 0.5).
  const dynamicBytes = (2 * (624 + 3471) + 30 * (48 + 115 + 1735)) * ROW_7B;
  assert.equal(q4.requestBytes(request("a", "dynamic", FULL_CONTEXT)), dynamicBytes);
  const denseBytes = 32 * (624 + 3471) * ROW_7B;
  assert.equal(q4.requestBytes(request("a", "dense", FULL_CONTEXT)), denseBytes);
  // The question at batch 4: one sequence fits, three wait; dense does not fit even alone.
  const four = ["a", "b", "c", "d"];
  const dyn = q4.admit(four.map((id) => request(id, "dynamic", FULL_CONTEXT)));
  assert.deepEqual([dyn.admitted, dyn.waiting, dyn.refused], [["a"], ["b", "c", "d"], []]);
  assert.equal(dyn.freeBytes, 1_273_582_576 - dynamicBytes);
  const dense = q4.admit(four.map((id) => request(id, "dense", FULL_CONTEXT)));
  assert.deepEqual([dense.admitted, dense.waiting, dense.refused], [[], [], four]);
  // Short answers (256 tokens: 879 rows dense; 255 fed back, 127 admitted from layer 2): how many fit?
  const shortDense = 32 * (624 + 255) * ROW_7B, shortDynamic = (2 * (624 + 255) + 30 * (163 + 127)) * ROW_7B;
  const ten = Array.from({ length: 10 }, (_, i) => `r${i}`);
  for (const [policy, bytes] of [["dense", shortDense], ["dynamic", shortDynamic]] as const) {
    const fit = Math.floor(1_273_582_576 / bytes);
    const admission = q4.admit(ten.map((id) => request(id, policy, 256)));
    assert.deepEqual(admission.admitted, ten.slice(0, fit), policy);
    assert.deepEqual(admission.waiting, ten.slice(fit), policy);
  }
  assert.equal(Math.floor(1_273_582_576 / shortDense), 2);
  assert.equal(Math.floor(1_273_582_576 / shortDynamic), 7);
  // With Q8_0 weights (7.25 GiB) nothing is left of 6 GB.
  assert.throws(
    () => new MemoryPlanner({ config: dynamic7b, budgetBytes: 6e9, weightType: "q8_0" }),
    (error: unknown) => error instanceof InputError && error.where === "options.budgetBytes",
  );
});

// A small decoder with Dynamic-LLaVA's sparse_config: C = 8 (2 heads × 4), 4 layers, sparse layer 2.
const small = {
  model_type: "llama",
  hidden_size: 8,
  intermediate_size: 16,
  num_attention_heads: 2,
  num_hidden_layers: 4,
  vocab_size: 32,
  sparse_config: { sparse_layer: 2, output_text_keep_rate: 0.5 },
};
/** One K/V row of one small layer at f32: (K, V) × 8 × 4 bytes. */
const ROW_SMALL = 2 * 8 * 4;

Deno.test("admit() keeps arrival order: the first that does not fit waits with everyone after it", () => {
  const planner = new MemoryPlanner({ config: small, budgetBytes: 100 * ROW_SMALL, kvDtype: "f32" });
  const dense = (id: string, maxNewTokens: number) => ({
    id,
    policy: "dense" as const,
    promptTokens: 10,
    maxNewTokens,
  });
  // dense rows: 4 layers × (10 + maxNewTokens − 1).
  assert.equal(planner.requestBytes(dense("x", 6)), 60 * ROW_SMALL);
  const admission = planner.admit([dense("a", 6), dense("b", 6), dense("c", 1), dense("huge", 20)], {
    usedBytes: 0,
  });
  assert.deepEqual(admission.admitted, ["a"]); // 60 rows
  assert.deepEqual(admission.waiting, ["b", "c"]); // b needs 60 more; c (40) would fit but does not overtake
  assert.deepEqual(admission.refused, ["huge"]); // 4 × 29 = 116 rows > 100
  assert.deepEqual(admission.bytes, {
    a: 60 * ROW_SMALL,
    b: 60 * ROW_SMALL,
    c: 40 * ROW_SMALL,
    huge: 116 * ROW_SMALL,
  });
  assert.equal(admission.usedBytes, 60 * ROW_SMALL);
  // Memory already held by running requests counts.
  const busy = planner.admit([dense("c", 1)], { usedBytes: 70 * ROW_SMALL });
  assert.deepEqual([busy.admitted, busy.waiting], [[], ["c"]]);
  const freed = planner.admit([dense("c", 1)], { usedBytes: 60 * ROW_SMALL });
  assert.deepEqual([freed.admitted, freed.freeBytes], [["c"], 0]);
});

Deno.test("observe() learns the K/V element size and Dynamic-LLaVA's admitted fraction from stats.kvCache", () => {
  const planner = new MemoryPlanner({ config: small, budgetBytes: 1e6 }); // assumes f16 until measured
  const dyn = { id: "d", policy: "dynamic" as const, promptTokens: 10, maxNewTokens: 21 };
  // Expected: layers 0-1 hold 10 + 20 rows, layers 2-3 hold 10 + floor(20 × 0.5).
  assert.equal(planner.textKeepRate, 0.5);
  assert.equal(planner.requestBytes(dyn), (2 * 30 + 2 * 20) * 2 * 8 * 2);
  // A finished request: 11 tokens (10 fed back), 1 of them admitted at layers 2-3, held in f32.
  planner.observe({ ...dyn, maxNewTokens: undefined }, {
    newTokens: 11,
    kvCache: { rowsPerLayer: [20, 20, 11, 11], bytes: 62 * ROW_SMALL },
  });
  assert.equal(planner.bytesPerElement, 4);
  assert.equal(planner.textKeepRate, 0.1);
  // Another: 30 fed back, 12 admitted. Pooled: (1 + 12) / (10 + 30).
  planner.observe(dyn, {
    newTokens: 31,
    kvCache: { rowsPerLayer: [40, 40, 22, 22], bytes: 124 * ROW_SMALL },
  });
  assert.equal(planner.textKeepRate, 13 / 40);
  // Now 21 tokens reserve 2 × 30 + 2 × (10 + floor(20 × 0.325)) = 92 rows at f32.
  assert.equal(planner.requestBytes(dyn), 92 * ROW_SMALL);
  // Dense requests and no-cache requests teach the row size only.
  planner.observe({ id: "x", policy: "dense", promptTokens: 10 }, {
    newTokens: 3,
    kvCache: { rowsPerLayer: [12, 12, 12, 12], bytes: 48 * 2 * 8 * 2 },
  });
  assert.deepEqual([planner.bytesPerElement, planner.textKeepRate], [2, 13 / 40]);
});

Deno.test("the planner's estimate after observing a real CPU run equals that run's stats.kvCache", async () => {
  const model = await loadModel(await ensureFixture("llava-f32-dyn"), { backend: "cpu" });
  try {
    const image = { width: 8, height: 8, data: new Uint8Array(8 * 8 * 3).fill(120) };
    const result = await model.generate({
      prompt: "Describe it.",
      image,
      maxNewTokens: 24,
      policy: "dynamic",
      stop: [],
    });
    const stats = result.stats;
    const planned = {
      id: "run",
      policy: "dynamic" as const,
      promptTokens: stats.promptTokens - stats.visualTokens,
      images: 1,
      maxNewTokens: stats.newTokens,
    };
    const planner = new MemoryPlanner({ config: model.config, budgetBytes: 2 ** 30 });
    const before = planner.requestBytes(planned);
    planner.observe(planned, { newTokens: stats.newTokens, kvCache: stats.kvCache });
    assert.equal(planner.requestBytes(planned), stats.kvCache.bytes);
    assert.equal(planner.textKeepRate, stats.admittedCount / (stats.newTokens - 1));
    // Before measuring, the planner assumed f16 and the configured keep rate.
    assert.notEqual(before, stats.kvCache.bytes);
  } finally {
    model.dispose();
  }
});

Deno.test("the planner refuses bad input with InputError naming the field", () => {
  const refused = (run: () => unknown, where: string) =>
    assert.throws(run, (error: unknown) => error instanceof InputError && error.where === where, where);
  refused(() => new MemoryPlanner({ config: small, budgetBytes: 0 }), "options.budgetBytes");
  refused(
    () => new MemoryPlanner({ config: small, budgetBytes: 1e6, kvDtype: "f8" as "f16" }),
    "options.kvDtype",
  );
  refused(
    () => new MemoryPlanner({ config: small, budgetBytes: 1e6, weightType: "q3_k" as "f16" }),
    "plan.weightType",
  );
  const planner = new MemoryPlanner({ config: small, budgetBytes: 1e6 });
  refused(() => planner.admit([{ id: "a" }, { id: "a" }]), "requests[1].id");
  refused(() => planner.admit([{ id: "a" }], { usedBytes: -1 }), "options.usedBytes");
  refused(() => planner.admit([{ id: "a", maxNewTokens: -3 }]), "plan.newTokens");
  refused(() => planner.admit([{ id: "a", images: 1 }]), "plan.imageTokens"); // no vision tower
  refused(
    () => planner.observe({ id: "a" }, { newTokens: 3, kvCache: { rowsPerLayer: [1, 2], bytes: 96 } }),
    "measured.kvCache.rowsPerLayer",
  );
  refused(
    () =>
      planner.observe({ id: "a" }, { newTokens: 3.5, kvCache: { rowsPerLayer: [1, 1, 1, 1], bytes: 64 } }),
    "measured",
  );
});
