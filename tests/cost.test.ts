/**
 * Tests of the cost model (runtime/core/cost.ts) and the `--cost-only` mode of examples/bench.ts:
 * the paper's Table 1 prefill TFLOPs from the real LLaVA-1.5 configs, exact FLOPs against a count
 * written out row by row, KV bytes, rows per layer under each policy, decode with and without cache.
 * @module
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { type ModelConfig, parseModelConfig, parseTextConfig } from "../runtime/core/config.ts";
import {
  estimateCost,
  kvBytes,
  paperLayerFlops,
  passFlops,
  textPredictorFlops,
  visionPredictorFlops,
} from "../runtime/core/cost.ts";
import { CheckpointError, InputError } from "../runtime/core/errors.ts";

const CONFIGS = new URL("./fixtures/configs/", import.meta.url);

async function readConfig(name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(new URL(name, CONFIGS)));
}

const raw7b = await readConfig("llava-v1.5-7b.json");
const raw13b = await readConfig("llava-v1.5-13b.json");
const clip = await readConfig("clip-vit-large-patch14-336.json");
const parsed7b = parseModelConfig(raw7b, "llava-v1.5-7b.json", clip);
const parsed13b = parseModelConfig(raw13b, "llava-v1.5-13b.json", clip);

/** Bytes of one K/V row across a layer for LLaVA-1.5-7B in f16: 2 × 4096 × 2. */
const ROW_BYTES_7B = 2 * 4096 * 2;

Deno.test("estimateCost() gives the paper's Table 1 prefill TFLOPs for LLaVA-1.5-7B and -13B", () => {
  const table: [string, unknown, string, string, string][] = [
    ["7B raw config", raw7b, "10.1", "3.2", "2.5"],
    ["7B with tower config", parsed7b, "10.1", "3.2", "2.5"],
    ["13B raw config", raw13b, "19.6", "6.0", "4.7"],
    ["13B with tower config", parsed13b, "19.6", "6.0", "4.7"],
  ];
  for (const [name, config, dense, fastv, dynamic] of table) {
    const tflops = (plan: Parameters<typeof estimateCost>[1]) =>
      estimateCost(config, plan).prefill.tflopsPaper.toFixed(1);
    assert.equal(tflops({ policy: "dense" }), dense, name);
    assert.equal(tflops({ policy: "fastv", fastv: { k: 3, r: 0.75 } }), fastv, name);
    assert.equal(tflops({ policy: "dynamic", dynamic: { visionKeep: 115, sparseLayer: 2 } }), dynamic, name);
    // The default keep rate 0.2 keeps floor(576 × 0.2) = 115 at layer 2.
    assert.equal(tflops({ policy: "dynamic" }), dynamic, name);
  }
});

Deno.test("paperLayerFlops() is 32·n·C² + 4·n·m·C", () => {
  assert.equal(paperLayerFlops(576, 4096), 32 * 576 * 4096 ** 2 + 4 * 576 ** 2 * 4096);
  assert.equal(paperLayerFlops(1, 4096, { contextRows: 700 }), 32 * 4096 ** 2 + 4 * 700 * 4096);
});

// A tiny decoder with grouped-query attention: C = 8, 2 heads × 4, 1 KV head, I = 12, 3 layers, V = 10.
const tiny: ModelConfig = parseModelConfig({
  model_type: "llama",
  hidden_size: 8,
  intermediate_size: 12,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  num_hidden_layers: 3,
  vocab_size: 10,
}, "tiny/config.json");

/** FLOPs of one row through one tiny layer attending to `keys` keys, written out term by term. */
function tinyRowFlops(keys: number): number {
  const C = 8, heads = 2, kvHeads = 1, headDim = 4, I = 12;
  let multiplyAdds = 0;
  multiplyAdds += C * heads * headDim; // q_proj
  multiplyAdds += C * kvHeads * headDim; // k_proj
  multiplyAdds += C * kvHeads * headDim; // v_proj
  multiplyAdds += heads * headDim * C; // o_proj
  multiplyAdds += C * I + C * I + I * C; // gate_proj, up_proj, down_proj
  for (let key = 0; key < keys; key++) {
    multiplyAdds += heads * headDim; // q · k
    multiplyAdds += heads * headDim; // p × v
  }
  const rmsNorms = 2 * 4 * C;
  return 2 * multiplyAdds + rmsNorms;
}

/** Final norm + lm_head for one row of the tiny model. */
const TINY_LOGITS = 4 * 8 + 2 * 8 * 10;

function tinyCausalPass(rows: number): number {
  let flops = 0;
  for (let row = 0; row < rows; row++) flops += tinyRowFlops(row + 1);
  return flops;
}

Deno.test("estimateCost() exact prefill FLOPs match a count written out row by row", () => {
  const plan = { promptTokens: 3, images: 1, imageTokens: 4 };
  const dense = estimateCost(tiny, { ...plan, policy: "dense" });
  assert.deepEqual(dense.prefill.rowsPerLayer, [7, 7, 7]);
  assert.equal(dense.prefill.flopsExact, 3 * tinyCausalPass(7) + TINY_LOGITS);

  // Pruned at layer 1 to 2 image tokens: layer 0 runs 7 rows, layers 1 and 2 run 3 + 2 = 5.
  const dynamic = estimateCost(tiny, {
    ...plan,
    policy: "dynamic",
    dynamic: { sparseLayer: 1, visionKeep: 2 },
  });
  assert.deepEqual(dynamic.prefill.rowsPerLayer, [7, 5, 5]);
  assert.equal(dynamic.prefill.flopsExact, tinyCausalPass(7) + 2 * tinyCausalPass(5) + TINY_LOGITS);
  // The paper's formula counts image rows only: 4 at layer 0, 2 after.
  assert.equal(
    dynamic.prefill.flopsPaper,
    (32 * 4 * 64 + 4 * 16 * 8) + 2 * (32 * 2 * 64 + 4 * 4 * 8),
  );
});

Deno.test("estimateCost() exact decode FLOPs match a count written out step by step", () => {
  const plan = { promptTokens: 3, images: 1, imageTokens: 4, newTokens: 4 };
  // KV cache: step s feeds generated token s, which attends to 7 + (s - 1) cached rows plus itself.
  const cached = estimateCost(tiny, { ...plan, policy: "dense" });
  let expected = 0;
  for (let step = 1; step <= 3; step++) expected += 3 * tinyRowFlops(7 + step) + TINY_LOGITS;
  assert.equal(cached.decode.steps, 3);
  assert.equal(cached.decode.flopsExact, expected);
  assert.equal(cached.decode.tokensComputed, 3 * 3);

  // No cache: step s recomputes 7 + s rows causally.
  const recomputed = estimateCost(tiny, { ...plan, policy: "dense", kvCache: false });
  expected = 0;
  for (let step = 1; step <= 3; step++) expected += 3 * tinyCausalPass(7 + step) + TINY_LOGITS;
  assert.equal(recomputed.decode.flopsExact, expected);
  assert.equal(recomputed.decode.tokensComputed, 3 * (8 + 9 + 10));
});

Deno.test("passFlops() sums layers and lm_head, and refuses a wrong layer count", () => {
  const rows = { newRows: 2, cachedRows: 5, paperNewRows: 1, paperCachedRows: 3 };
  const cost = passFlops(tiny.text, [rows, rows, rows], { logitRows: 2 });
  // Two new rows see 5 cached keys plus 1 and 2 of their own.
  assert.equal(cost.flopsExact, 3 * (tinyRowFlops(6) + tinyRowFlops(7)) + 2 * TINY_LOGITS);
  assert.equal(cost.flopsPaper, 3 * (32 * 1 * 64 + 4 * 1 * 4 * 8));
  assert.throws(() => passFlops(tiny.text, [rows]), InputError);
});

Deno.test("visionPredictorFlops() and textPredictorFlops() match a count written out", () => {
  const dims = { hiddenSize: 8, dModel: 8, dimFeedforward: 16, numLayers: 1 };
  const tokens = 3;
  const downMlp = 7 * tokens * 8 + 2 * tokens * 8 * 8;
  const block = 2 * 7 * tokens * 8 + 2 * tokens * 8 * 24 + 4 * tokens * tokens * 8 + 2 * tokens * 8 * 8 +
    2 * tokens * 8 * 16 + 2 * tokens * 16 * 8;
  const outputMlp = 2 * tokens * (8 * 4 + 4 * 2 + 2 * 2);
  assert.equal(visionPredictorFlops(tokens, dims), downMlp + block + outputMlp);
  assert.equal(visionPredictorFlops(tokens, dims), 4512);
  assert.equal(textPredictorFlops(2, dims), 2 * (7 * 8 + 2 * 8 * 8 + 2 * (8 * 4 + 4 * 2 + 2 * 2)));
});

Deno.test("kvBytes() is rows × 2 × kv_heads × head_dim × bytes per element", () => {
  const text = parseTextConfig(raw7b, "llava-v1.5-7b.json");
  assert.equal(kvBytes(text, new Array(32).fill(624)), 32 * 624 * ROW_BYTES_7B);
  assert.equal(kvBytes(tiny.text, [7, 5, 5], { bytesPerElement: 4 }), 17 * 2 * 1 * 4 * 4);
  assert.throws(() => kvBytes(text, [1, 2]), InputError);
});

Deno.test("estimateCost() prunes FastV's and Dynamic-LLaVA's image rows at their layers", () => {
  const fastv = estimateCost(parsed7b, { policy: "fastv", fastv: { k: 3, r: 0.75 } });
  assert.deepEqual(fastv.prefill.rowsPerLayer, [624, 624, 624, ...new Array(29).fill(48 + 144)]);
  assert.equal(fastv.plan.visualKept, 144);
  const fastvDefault = estimateCost(parsed7b, { policy: "fastv" });
  assert.deepEqual(fastvDefault.prefill.rowsPerLayer, [624, 624, ...new Array(30).fill(48 + 288)]);
  const dynamic = estimateCost(parsed7b, { policy: "dynamic", promptTokens: 60 });
  assert.deepEqual(dynamic.prefill.rowsPerLayer, [636, 636, ...new Array(30).fill(60 + 115)]);
  const dense = estimateCost(parsed7b, { policy: "dense", images: 2 });
  assert.deepEqual(dense.prefill.rowsPerLayer, new Array(32).fill(48 + 2 * 576));
});

Deno.test("estimateCost() holds admitted output tokens only at layers ≥ l with a KV cache", () => {
  const steps = 100;
  const dynamic = estimateCost(parsed7b, { policy: "dynamic", newTokens: steps + 1 });
  const expectedRows = [724, 724, ...new Array(30).fill(48 + 115 + 50)];
  assert.deepEqual(dynamic.kv.rowsPerLayer, expectedRows);
  assert.equal(dynamic.kv.bytes, (2 * 724 + 30 * 213) * ROW_BYTES_7B);
  assert.equal(dynamic.kv.peakBytes, dynamic.kv.bytes);
  const dense = estimateCost(parsed7b, { policy: "dense", newTokens: steps + 1 });
  assert.equal(dense.kv.bytes, 32 * 724 * ROW_BYTES_7B);
  const fastv = estimateCost(parsed7b, { policy: "fastv", newTokens: steps + 1 });
  assert.equal(fastv.kv.bytes, (2 * 724 + 30 * (48 + 288 + 100)) * ROW_BYTES_7B);
  // Each decode step runs one row per layer; the predictor scores each fed token once.
  assert.equal(dynamic.decode.tokensComputed, steps * 32);
  assert.equal(
    dynamic.decode.predictorFlops,
    steps * textPredictorFlops(1, { hiddenSize: 4096, dModel: 512, dimFeedforward: 2048, numLayers: 2 }),
  );
  assert.equal(
    dynamic.prefill.predictorFlops,
    visionPredictorFlops(576, { hiddenSize: 4096, dModel: 512, dimFeedforward: 2048, numLayers: 2 }),
  );
  assert.equal(dense.total.predictorFlops, 0);
});

Deno.test("estimateCost() without KV cache recomputes ~textKeepRate of the output rows at layers ≥ l", () => {
  const steps = 100;
  const dynamic = estimateCost(parsed7b, { policy: "dynamic", newTokens: steps + 1, kvCache: false });
  // Step s holds s output tokens at layers < l; at layers ≥ l, floor((s - 1) / 2) earlier ones + the new one.
  const outputRowsEarly = dynamic.decode.rowsPerLayer[0] - steps * 624;
  const outputRowsLate = dynamic.decode.rowsPerLayer[2] - steps * 163;
  assert.equal(outputRowsEarly, 5050);
  assert.equal(outputRowsLate, 2550);
  assert.ok(Math.abs(outputRowsLate / outputRowsEarly - 0.5) < 0.01);
  assert.deepEqual(dynamic.kv.rowsPerLayer, new Array(32).fill(0));
  assert.equal(dynamic.kv.bytes, 0);
  // The largest pass (the last: 100 output rows early, floor(99 / 2) + 1 = 50 late) holds its K/V at the peak.
  assert.equal(dynamic.kv.peakBytes, (2 * 724 + 30 * (163 + 50)) * ROW_BYTES_7B);

  // Dense recomputation: the paper's formula over image + output rows, step by step.
  const dense = estimateCost(parsed7b, { policy: "dense", newTokens: steps + 1, kvCache: false });
  let paper = 0;
  for (let step = 1; step <= steps; step++) paper += 32 * paperLayerFlops(576 + step, 4096);
  assert.ok(Math.abs(dense.decode.flopsPaper - paper) / paper < 1e-12);
  const cached = estimateCost(parsed7b, { policy: "dense", newTokens: steps + 1 });
  assert.ok(dense.decode.flopsExact > 300 * cached.decode.flopsExact);
  assert.ok(dynamic.decode.flopsExact < 0.35 * dense.decode.flopsExact);
  // The predictors run on the image and on the earlier output tokens at every step.
  const dims = { hiddenSize: 4096, dModel: 512, dimFeedforward: 2048, numLayers: 2 };
  assert.equal(
    dynamic.decode.predictorFlops,
    steps * visionPredictorFlops(576, dims) + textPredictorFlops((steps * (steps - 1)) / 2, dims),
  );
});

Deno.test("estimateCost() multiplies FLOPs and bytes by the batch", () => {
  const one = estimateCost(parsed7b, { policy: "dynamic", newTokens: 33 });
  const four = estimateCost(parsed7b, { policy: "dynamic", newTokens: 33, batch: 4 });
  assert.equal(four.prefill.flopsExact, 4 * one.prefill.flopsExact);
  assert.equal(four.decode.flopsPaper, 4 * one.decode.flopsPaper);
  assert.equal(four.kv.bytes, 4 * one.kv.bytes);
  assert.equal(four.total.predictorFlops, 4 * one.total.predictorFlops);
  assert.deepEqual(four.kv.rowsPerLayer, one.kv.rowsPerLayer);
});

Deno.test("estimateCost() rejects bad plans and towers it cannot read", () => {
  assert.throws(() => estimateCost(parsed7b, { policy: "sparse" as "dense" }), InputError);
  assert.throws(() => estimateCost(parsed7b, { policy: "fastv", fastv: { r: 1 } }), InputError);
  assert.throws(() => estimateCost(parsed7b, { policy: "fastv", fastv: { k: 32 } }), InputError);
  assert.throws(
    () => estimateCost(parsed7b, { policy: "dynamic", dynamic: { visionKeep: 577 } }),
    InputError,
  );
  assert.throws(() => estimateCost(parsed7b, { policy: "dense", newTokens: -1 }), InputError);
  assert.throws(() => estimateCost(parsed7b, { policy: "dense", batch: 0 }), InputError);
  assert.throws(
    () => estimateCost({ ...raw7b, mm_vision_tower: "my-org/my-tower" }, { policy: "dense" }),
    CheckpointError,
  );
  // A tower id without a size suffix is a 224-pixel tower: (224 / 14)² = 256 tokens.
  const tower224 = estimateCost({ ...raw7b, mm_vision_tower: "openai/clip-vit-large-patch14" }, {
    policy: "dense",
  });
  assert.equal(tower224.plan.imageTokens, 256);
});

Deno.test("estimateCost() counts the images that imageTokens implies and refuses images it cannot size", () => {
  const llama = {
    model_type: "llama",
    hidden_size: 4096,
    intermediate_size: 11008,
    num_attention_heads: 32,
    num_hidden_layers: 32,
    vocab_size: 32000,
  };
  // A plain LLaMA config has no vision tower: imageTokens alone means one image of that many tokens.
  const implied = estimateCost(llama, { policy: "dense", imageTokens: 576 });
  assert.equal(implied.plan.images, 1);
  assert.equal(implied.prefill.tflopsPaper.toFixed(1), "10.1");
  assert.equal(estimateCost(llama, { policy: "dense", imageTokens: 576, images: 2 }).plan.images, 2);
  assert.equal(estimateCost(llama, { policy: "dense" }).plan.images, 0);
  assert.throws(
    () => estimateCost(llama, { policy: "dense", images: 0, imageTokens: 576 }),
    (error: unknown) =>
      error instanceof InputError && error.where === "plan.images" && /images is 0/.test(error.message),
  );
  assert.throws(
    () => estimateCost(llama, { policy: "dense", images: 1 }),
    (error: unknown) =>
      error instanceof InputError && error.where === "plan.imageTokens" &&
      /no vision tower/.test(error.message),
  );
});

Deno.test("bench.ts --cost-only --json prints the estimate for a llava_llama config", async () => {
  const bench = fileURLToPath(new URL("../examples/bench.ts", import.meta.url));
  const config = fileURLToPath(new URL("llava-v1.5-7b.json", CONFIGS));
  const run = async (...flags: string[]) => {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", bench, "--cost-only", "--config", config, ...flags],
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    return new TextDecoder().decode(output.stdout);
  };
  const dense = JSON.parse(await run("--policy", "dense", "--json"));
  assert.equal(dense.prefill.tflopsPaper.toFixed(1), "10.1");
  assert.equal(dense.plan.imageTokens, 576);
  const fastv = JSON.parse(
    await run(
      "--policy",
      "fastv",
      "--fastv-k",
      "3",
      "--fastv-r",
      "0.75",
      "--new-tokens",
      "9",
      "--no-kv-cache",
      "--json",
    ),
  );
  assert.equal(fastv.prefill.tflopsPaper.toFixed(1), "3.2");
  assert.equal(fastv.plan.kvCache, false);
  assert.equal(fastv.decode.steps, 8);
  const table = await run("--policy", "dynamic", "--vision-keep", "115");
  assert.match(table, /prefill\s+2\.488/);
});
