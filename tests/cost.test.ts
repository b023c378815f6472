/**
 * Tests of the cost model (runtime/core/cost.ts) and the `--cost-only` mode of examples/bench.ts:
 * the paper's Table 1 prefill TFLOPs from the real LLaVA-1.5 configs, exact FLOPs against a count
 * written out row by row, KV bytes, rows per layer under each policy, decode with and without cache;
 * weight bytes per weight type (a small config and LLaVA-1.5-7B against hand counts), K/V bytes per
 * K/V type, memory totals, and the memory table of `--cost-only --weight-types`.
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
import { parseWeightType, STORED_WEIGHT_TYPES, weightBytes } from "../runtime/core/weight_bytes.ts";

const CONFIGS = new URL("./fixtures/configs/", import.meta.url);

async function readConfig(name: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(new URL(name, CONFIGS)));
}

const raw7b = await readConfig("llava-v1.5-7b.json");
const raw13b = await readConfig("llava-v1.5-13b.json");
const clip = await readConfig("clip-vit-large-patch14-336.json");
const parsed7b = parseModelConfig(raw7b, "llava-v1.5-7b.json", clip);
const parsed13b = parseModelConfig(raw13b, "llava-v1.5-13b.json", clip);
const rawDynamic7b = await readConfig("dynamic-llava-7b.json");

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

// A small grouped-query decoder: C = 64, 4 heads × 16, 2 KV heads, I = 128, 2 layers, vocab 96, untied.
const small = parseModelConfig({
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 128,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 96,
}, "small/config.json");

Deno.test("weightBytes() of a small decoder equals a hand count for every weight type", () => {
  // Matrices: embed + lm_head 2 × 96 × 64; per layer wq 64², wk and wv 32 × 64, wo 64², gate, up, down 128 × 64.
  const elements = 2 * 96 * 64 + 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64);
  assert.equal(elements, 86016);
  const norms = 4 * 64 * (1 + 2 * 2); // final norm + 2 per layer, F32
  const expected: Record<string, number> = {
    f32: 4 * elements + norms,
    f16: 2 * elements + norms,
    bf16: 2 * elements + norms,
    q8_0: (elements / 32) * 34 + norms,
    q4_0: (elements / 32) * 18 + norms, // 49664
    // Rows of 64 and 128 are not whole 256-element blocks: the K-quants fall back to Q8_0.
    q4_k: (elements / 32) * 34 + norms,
    q6_k: (elements / 32) * 34 + norms,
    q4_k_m: (elements / 32) * 34 + norms,
  };
  assert.equal(expected.q4_0, 49664);
  for (const type of STORED_WEIGHT_TYPES) {
    const bytes = weightBytes(small, type);
    assert.deepEqual(bytes, { text: expected[type], mmproj: 0, predictors: 0, total: expected[type] }, type);
  }
});

Deno.test("weightBytes() of LLaVA-1.5-7B: text model, mmproj and predictors against hand counts", () => {
  const C = 4096, I = 11008, L = 32, vocab = 32000;
  const elements = 2 * vocab * C + L * (4 * C * C + 3 * C * I);
  const norms = 4 * C * (1 + 2 * L);
  assert.equal(weightBytes(parsed7b, "q4_0").text, (elements / 32) * 18 + norms); // 3,791,273,984
  assert.equal(weightBytes(parsed7b, "q4_0").text, 3_791_273_984);
  assert.equal(weightBytes(parsed7b, "q8_0").text, (elements / 32) * 34 + norms);
  assert.equal(weightBytes(parsed7b, "f16").text, 2 * elements + norms);
  assert.equal(weightBytes(parsed7b, "q4_k").text, (elements / 256) * 144 + norms);
  assert.equal(weightBytes(parsed7b, "q6_k").text, (elements / 256) * 210 + norms);
  // Q4_K_M: Q6_K for lm_head and for wv / w_down of layers 0-3, 28-31 and every third from 4 (6, 9, …, 27).
  const moreBits = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
  const q6 = vocab * C + moreBits.length * (C * C + C * I);
  assert.equal(
    weightBytes(parsed7b, "q4_k_m").text,
    ((elements - q6) / 256) * 144 + (q6 / 256) * 210 + norms,
  );
  // CLIP ViT-L/14-336 up to hidden_states[-2] (23 of 24 layers) and the mlp2x_gelu projector, F16 matrices.
  const V = 1024, VI = 4096, grid = 24;
  const towerMatrices = V * 3 * 14 * 14 + (grid * grid + 1) * V + 23 * (4 * V * V + 2 * V * VI);
  const towerVectors = V + 2 * V + 23 * (4 * V + 4 * V + VI + V);
  const projector = 2 * (C * V + C * C) + 4 * 2 * C;
  const mmproj = 2 * towerMatrices + 4 * towerVectors + projector;
  assert.equal(weightBytes(parsed7b, "q4_k_m").mmproj, mmproj);
  assert.equal(
    weightBytes(parsed7b, "f32").mmproj,
    4 * towerMatrices + 4 * towerVectors + 2 * projector - 4 * 2 * C,
  );
  // Dynamic-LLaVA's predictors (d = 512, 2 blocks of width 2048): F16 matrices, F32 vectors.
  const d = 512, f = 2048;
  const visionMatrices = d * C + 2 * (3 * d * d + d * d + 2 * d * f) + (d / 2) * d + (d / 4) * (d / 2) +
    2 * (d / 4);
  const visionVectors = 2 * C + d + 2 * (2 * d + d + 2 * d + f + d) + d / 2 + d / 4 + 2;
  const textMatrices = d * C + (d / 2) * d + (d / 4) * (d / 2) + 2 * (d / 4);
  const textVectors = 2 * C + d + d / 2 + d / 4 + 2;
  const dynamic7b = estimateCost(rawDynamic7b, { policy: "dynamic", weightType: "q4_k_m" }).weights!;
  assert.equal(dynamic7b.predictors, 2 * (visionMatrices + textMatrices) + 4 * (visionVectors + textVectors));
  assert.equal(dynamic7b.total, dynamic7b.text + dynamic7b.mmproj + dynamic7b.predictors);
  // A raw config names its tower by id: "large" sizes it as the tower's own config does.
  assert.deepEqual(
    estimateCost(raw7b, { policy: "dense", weightType: "q8_0" }).weights,
    weightBytes(parsed7b, "q8_0"),
  );
});

Deno.test("estimateCost() counts K/V at f16 as half of f32, fills a context, and adds the weights", () => {
  const plan = { policy: "dynamic" as const, contextTokens: 4096, batch: 4 };
  const f16 = estimateCost(rawDynamic7b, { ...plan, kvDtype: "f16" });
  const f32 = estimateCost(rawDynamic7b, { ...plan, kvDtype: "f32" });
  assert.equal(f16.kv.peakBytes * 2, f32.kv.peakBytes);
  assert.equal(f16.kv.bytesPerToken, 32 * ROW_BYTES_7B); // 512 KiB per token, every layer
  assert.equal(f32.kv.bytesPerToken, 2 * f16.kv.bytesPerToken);
  assert.equal(f16.plan.newTokens, 4096 - 48 - 576);
  // 4095 rows fed (the last token never is): layers 0-1 hold them all, layers 2-31 115 image tokens
  // and floor(3471 × 0.5) = 1735 of the generated ones; × batch 4.
  const rows = 2 * (48 + 576 + 3471) + 30 * (48 + 115 + 1735);
  assert.equal(f16.kv.peakBytes, 4 * rows * ROW_BYTES_7B);
  assert.equal(f16.weights, null);
  assert.equal(f16.totalBytes, f16.kv.peakBytes);
  const q4km = estimateCost(rawDynamic7b, { ...plan, kvDtype: "f16", weightType: "q4_k_m" });
  assert.equal(q4km.totalBytes, q4km.weights!.total + f16.kv.peakBytes);
  assert.ok(q4km.totalBytes > 6e9, "Q4_K_M + dynamic at 4K context, batch 4, does not fit 6 GB");
  assert.equal(
    estimateCost(rawDynamic7b, { ...plan, batch: 1, kvDtype: "f16", weightType: "q4_k_m" }).totalBytes <= 6e9,
    true,
  );
});

Deno.test("estimateCost() and parseWeightType() refuse unknown types and contradicting sizes", () => {
  const refused = (plan: Record<string, unknown>, where: string) =>
    assert.throws(
      () => estimateCost(raw7b, { policy: "dense", ...plan }),
      (error: unknown) => error instanceof InputError && error.where === where,
      where,
    );
  refused({ weightType: "q3_k" }, "plan.weightType");
  refused({ kvDtype: "f8" }, "plan.kvDtype");
  refused({ kvDtype: "f32", bytesPerElement: 2 }, "plan.bytesPerElement");
  refused({ contextTokens: 4097 }, "plan.contextTokens"); // beyond the model's 4096 positions
  refused({ contextTokens: 600 }, "plan.contextTokens"); // shorter than the 624-row prompt
  refused({ contextTokens: 1000, newTokens: 5 }, "plan.contextTokens");
  assert.throws(() => parseWeightType("Q4_K_M", "--weight-types"), /"Q4_K_M" is not one of f32, f16/);
  assert.throws(() => weightBytes(parsed7b, "int4" as "f16"), InputError);
  // A tower id with no ViT size sizes the tokens but not the weights.
  const unsized = { ...raw7b, mm_vision_tower: "my-org/my-tower-patch14-336" };
  assert.equal(estimateCost(unsized, { policy: "dense" }).plan.imageTokens, 576);
  assert.throws(() => estimateCost(unsized, { policy: "dense", weightType: "f16" }), CheckpointError);
});

Deno.test("bench.ts --cost-only --weight-types prints weight + KV bytes per type and policy", async () => {
  const bench = fileURLToPath(new URL("../examples/bench.ts", import.meta.url));
  const config = fileURLToPath(new URL("dynamic-llava-7b.json", CONFIGS));
  const run = async (...flags: string[]) => {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", bench, "--cost-only", "--config", config, ...flags],
    }).output();
    return {
      code: output.code,
      stdout: new TextDecoder().decode(output.stdout),
      stderr: new TextDecoder().decode(output.stderr),
    };
  };
  const flags = [
    "--policy",
    "dense,fastv,dynamic",
    "--weight-types",
    "f16,q4_k_m",
    "--context",
    "4096",
    "--batch",
    "4",
  ];
  const table = await run(...flags, "--budget-gb", "6");
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /context 4096: 48 text \+ 1 × 576 image \+ 3472 generated tokens/);
  assert.match(table.stdout, /q4_k_m\s+dynamic\s+3\.80\s+0\.58\s+20\.7\s+3\.98\s+8\.38\s+no/);
  assert.match(table.stdout, /f16\s+dense\s+12\.55\s+0\.58\s+20\.7\s+8\.00\s+21\.15\s+no/);
  const json = JSON.parse((await run(...flags, "--kv-dtype", "f32", "--json")).stdout);
  assert.equal(json.rows.length, 6);
  const dynamic = json.rows.find((r: { weightType: string; policy: string }) =>
    r.weightType === "q4_k_m" && r.policy === "dynamic"
  );
  const expected = estimateCost(rawDynamic7b, {
    policy: "dynamic",
    contextTokens: 4096,
    batch: 4,
    kvDtype: "f32",
    weightType: "q4_k_m",
  });
  assert.equal(dynamic.totalBytes, expected.totalBytes);
  assert.equal(dynamic.fits, null);
  const bad = await run("--weight-types", "q3_k");
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /weight type "q3_k" is not one of/);
});
