/**
 * The evaluation script end to end on a generated 3-item set and the tiny Dynamic-LLaVA fixture:
 * perplexity checked against log-softmax of `Model.logits()` over growing prefixes, METEOR against
 * NLTK-compatible `meteorScoreSync` (and against a reference equal to the model's own answer), the
 * savings columns against the policies' keep rules, the WebGPU backend against the CPU one, and
 * the CLI's JSON output.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type EvalOptions,
  type EvalReport,
  meteorWords,
  readEvalSet,
  runEval,
  runShapesEval,
} from "../examples/eval.ts";
import { InputError } from "../runtime/core/errors.ts";
import { decodeImage } from "../runtime/image/image_decode.ts";
import { fileURLToPath } from "node:url";
import { makeNltkData, nltkAvailable, runNltkScript } from "../tools/fixtures/nltk_data.ts";
import { testNeeding } from "./requirements.ts";
import { loadModel, type Model } from "../runtime/api/model.ts";
import { encodeWithImages, formatLlavaV1 } from "../runtime/text/template.ts";
import { writeEvalSet } from "../tools/fixtures/eval_set.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

const FIXTURE = "llava-f32-dyn";
/** The fixture's tower sees 36 image tokens; sparse_config keeps floor(36 × 0.2) = 7, FastV keeps 18. */
const VISUAL_TOKENS = 36, DYNAMIC_KEPT = 7, FASTV_KEPT = 18;

function logSoftmaxAt(logits: Float32Array, id: number): number {
  let max = -Infinity;
  for (const value of logits) max = Math.max(max, value);
  let total = 0;
  for (const value of logits) total += Math.exp(value - max);
  return logits[id] - max - Math.log(total);
}

/** log p(answer[i] | prompt, answer[..i]) from the last-position logits of each prefix, dense policy. */
async function directLogProbs(model: Model, question: string, answer: string, image: Uint8Array) {
  const promptIds = encodeWithImages(model.tokenizer, formatLlavaV1(question, { images: 1 }));
  const target = model.tokenizer.encode(answer, { addSpecialTokens: false });
  const logProbs: number[] = [];
  for (let i = 0; i < target.length; i++) {
    const logits = await model.logits({
      inputIds: [...promptIds, ...target.slice(0, i)],
      image,
      policy: "dense",
    });
    logProbs.push(logSoftmaxAt(logits, target[i]));
  }
  return logProbs;
}

function assertRelClose(actual: number, expected: number, tolerance: number, what: string) {
  assert.ok(Number.isFinite(actual), `${what}: ${actual} is not finite`);
  assert.ok(
    Math.abs(actual - expected) <= tolerance * Math.abs(expected),
    `${what}: ${actual} vs ${expected}`,
  );
}

/** METEOR of every sample the eval below scored, checked against NLTK by the test after it. */
const scored: { answer: string; generated: string; meteor: number }[] = [];

Deno.test("runEval() on the CPU backend: perplexity, METEOR and savings of every policy × KV mode", async () => {
  const dir = await Deno.makeTempDir();
  const model = await loadModel(await ensureFixture(FIXTURE), { backend: "cpu" });
  try {
    const set = await writeEvalSet(dir, { count: 3 });
    const report = await runEval({ model, data: set.jsonlPath, maxNewTokens: 4 });

    assert.equal(report.items, 3);
    assert.equal(report.data, set.jsonlPath);
    assert.deepEqual(
      report.rows.map((row) => `${row.policy}/${row.kvCache}`),
      ["dense/true", "fastv/true", "dynamic/true", "dense/false", "fastv/false", "dynamic/false"],
    );

    // Perplexity of item 0, dense, KV cache on, against log-softmax of logits() over prefixes.
    const first = set.items[0];
    const direct = await directLogProbs(
      model,
      first.question,
      first.answer,
      await Deno.readFile(join(dir, first.image)),
    );
    const denseOn = report.rows[0].samples[0];
    assert.equal(denseOn.logProbs.length, direct.length);
    denseOn.logProbs.forEach((lp, i) => assertRelClose(lp, direct[i], 1e-4, `log p of answer token ${i}`));
    const directPerplexity = Math.exp(-direct.reduce((a, b) => a + b, 0) / direct.length);
    assertRelClose(denseOn.perplexity, directPerplexity, 1e-3, "item 0 perplexity");

    for (const row of report.rows) {
      assert.equal(row.samples.length, 3);
      const allLogProbs = row.samples.flatMap((s) => s.logProbs);
      assert.equal(row.answerTokens, allLogProbs.length);
      assertRelClose(
        row.perplexity,
        Math.exp(-allLogProbs.reduce((a, b) => a + b, 0) / allLogProbs.length),
        1e-12,
        "set perplexity",
      );
      assert.ok(row.perplexity > 1, `${row.policy} perplexity ${row.perplexity}`);
      for (const sample of row.samples) {
        assert.ok(sample.meteor >= 0 && sample.meteor <= 1, `METEOR ${sample.meteor}`);
        scored.push({ answer: sample.answer, generated: sample.generated, meteor: sample.meteor });
        assert.ok(sample.newTokens >= 1 && sample.newTokens <= 4);
        assert.equal(sample.visualTokens, VISUAL_TOKENS);
      }
      const kept = { dense: VISUAL_TOKENS, fastv: FASTV_KEPT, dynamic: DYNAMIC_KEPT }[row.policy];
      assert.equal(row.visualKeptRatio, kept / VISUAL_TOKENS, `${row.policy} visual tokens kept`);
      if (row.kvCache) {
        assert.ok(row.kvPeakBytes > 0);
        assert.equal(
          row.kvPeakVsDense! < 1,
          row.policy !== "dense",
          `${row.policy} KV peak ${row.kvPeakVsDense}`,
        );
      } else {
        assert.equal(row.kvPeakVsDense, null); // nothing is cached without a KV cache
      }
    }
    assert.equal(report.rows[0].kvPeakVsDense, 1);
    assert.equal(report.rows[3].decodeFlopsVsDense, 1);
    // Without a KV cache every step recomputes the context: fewer image rows, fewer FLOPs per token.
    assert.ok(report.rows[5].decodeFlopsVsDense! < report.rows[4].decodeFlopsVsDense!);
    assert.ok(report.rows[4].decodeFlopsVsDense! < 1);
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runEval() gives METEOR near 1 when the reference is the model's own greedy answer", async () => {
  const dir = await Deno.makeTempDir();
  const model = await loadModel(await ensureFixture(FIXTURE), { backend: "cpu" });
  try {
    const set = await writeEvalSet(dir, { count: 1 });
    const item = set.items[0];
    const image = await decodeImage(await Deno.readFile(join(dir, item.image)));
    const own = await model.generate({ prompt: item.question, image, maxNewTokens: 6, policy: "dense" });
    const words = meteorWords(own.text.trim());
    assert.ok(words.length > 0, `greedy answer "${own.text}" has no words`);
    await Deno.writeTextFile(set.jsonlPath, JSON.stringify({ ...item, answer: own.text.trim() }) + "\n");
    const report = await runEval({
      model,
      data: set.jsonlPath,
      policies: ["dense"],
      kv: "on",
      maxNewTokens: 6,
    });
    // One chunk of m exact matches: (1 − 0.5 · (1/m)³) · Fmean(1, 1).
    assertRelClose(report.rows[0].meteor, 1 - 0.5 / words.length ** 3, 1e-12, "METEOR");
    for (const sample of report.rows[0].samples) {
      scored.push({ answer: sample.answer, generated: sample.generated, meteor: sample.meteor });
    }
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runEval() on WebGPU matches the CPU backend's perplexities and answers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const set = await writeEvalSet(dir, { count: 1 });
    const model = await ensureFixture(FIXTURE);
    const reports: EvalReport[] = [];
    for (const backend of ["cpu", "webgpu"] as const) {
      const data = set.jsonlPath;
      const options: EvalOptions = { model, backend, kvDtype: "f32", data, kv: "off", maxNewTokens: 3 };
      reports.push(await runEval({ ...options, policies: ["dense", "dynamic"] }));
    }
    const [cpu, gpu] = reports;
    assert.equal(gpu.rows.length, 2);
    for (const [i, row] of gpu.rows.entries()) {
      assertRelClose(row.perplexity, cpu.rows[i].perplexity, 1e-4, `${row.policy} perplexity`);
      assert.equal(row.samples[0].generated, cpu.rows[i].samples[0].generated);
      assert.equal(row.visualKeptRatio, cpu.rows[i].visualKeptRatio);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readEvalSet() names the line of a malformed record", async () => {
  const path = await Deno.makeTempFile({ suffix: ".jsonl" });
  try {
    await Deno.writeTextFile(
      path,
      '{"image":"a.png","question":"Q?","answer":"A."}\n\n{"image":"b.png","question":"Q?"}\n',
    );
    await assert.rejects(
      () => readEvalSet(path),
      (error: unknown) =>
        error instanceof InputError && error.where === `${path}:3` && /"answer"/.test(error.message),
    );
    assert.equal((await readEvalSet(path, { limit: 1 })).length, 1);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("meteorWords() lower-cases and splits off punctuation like word_tokenize", () => {
  assert.deepEqual(meteorWords("The Circle, on a RED background."), [
    "the",
    "circle",
    ",",
    "on",
    "a",
    "red",
    "background",
    ".",
  ]);
  assert.deepEqual(meteorWords("  "), []);
});

Deno.test("examples/eval.ts --demo-set --json writes a report", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const jsonPath = join(dir, "report.json");
    const script = new URL("../examples/eval.ts", import.meta.url).pathname;
    const args = [
      "run",
      "-A",
      script,
      "--demo-set",
      "--backend",
      "cpu",
      "--limit",
      "2",
      "--policies",
      "dense,dynamic",
    ];
    args.push("--kv", "off", "--max-new-tokens", "2", "--json", jsonPath);
    const output = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
      .output();
    const stdout = new TextDecoder().decode(output.stdout);
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    assert.match(stdout, /\| policy \| KV cache \| PPL/);
    const report = JSON.parse(await Deno.readTextFile(jsonPath)) as EvalReport;
    assert.equal(report.items, 2);
    assert.deepEqual(report.rows.map((row) => [row.policy, row.kvCache]), [["dense", false], [
      "dynamic",
      false,
    ]]);
    assert.ok(report.rows.every((row) => row.perplexity > 1 && row.samples.length === 2));
    await Deno.remove(report.data.replace(/eval\.jsonl$/, ""), { recursive: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runShapesEval() reports accuracy, METEOR and KV bytes per policy and KV mode on the demo", async () => {
  const report = await runShapesEval({ perKind: 1, describe: 1, policies: ["dense", "dynamic"] });
  for (const policy of ["dense", "dynamic"] as const) {
    for (const mode of ["kvCache", "noCache"] as const) {
      const row = report[policy]![mode]!;
      assert.ok(row.accuracy >= 0 && row.accuracy <= 1);
      assert.ok(row.meteor >= 0 && row.meteor <= 1);
      assert.deepEqual(row.items, { short: 5, describe: 1 });
    }
  }
  assert.equal(report.dense!.kvCache!.visualKeptRatio, 1);
  assert.equal(report.dynamic!.kvCache!.visualKeptRatio, 12 / 64);
  assert.ok(report.dynamic!.kvCache!.kvBytes < report.dense!.kvCache!.kvBytes);
  assert.equal(report.dense!.noCache!.kvBytes, 0);
});

testNeeding({
  name: "runEval()'s METEOR equals NLTK's meteor_score on every sample it scored",
  missing: await nltkAvailable() ? null : "python3 with nltk",
  async fn() {
    assert.ok(scored.length >= 19, `only ${scored.length} samples scored (the eval test above failed?)`);
    await using nltkData = await makeNltkData({ wordnetDir: "/usr/share/wordnet" });
    const cases = scored.map((s) => ({
      references: [meteorWords(s.answer)],
      hypothesis: meteorWords(s.generated),
    }));
    const script = fileURLToPath(new URL("./nltk_meteor.py", import.meta.url));
    const answers = await runNltkScript(script, { cases, stems: [], synsets: [] }, { nltkData }) as {
      scores: number[];
    };
    scored.forEach((s, i) => {
      assert.ok(
        Math.abs(s.meteor - answers.scores[i]) < 1e-4,
        `${s.generated}: ${s.meteor} vs NLTK ${answers.scores[i]}`,
      );
    });
    // Not vacuous: the sample whose reference is the model's own answer scores near 1.
    assert.ok(answers.scores.some((score) => score > 0.9), "no NLTK score above 0.9");
  },
});
