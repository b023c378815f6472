/**
 * Evaluation script: measures a checkpoint the way the paper does, policy by policy, in both
 * decoding modes, on a LLaVA-format JSONL set (`{ "image", "question", "answer" }` per line, the
 * image named relative to the JSONL file).
 *
 * ```sh
 * deno run -A examples/eval.ts --model DIR --data FILE.jsonl [--policies dense,fastv,dynamic] \
 *   [--kv both|on|off] [--max-new-tokens N] [--limit N] [--backend webgpu|cpu] [--json OUT] \
 *   [--wordnet DIR]
 * deno run -A examples/eval.ts --demo-set [--model DIR] ...   # generated set, fixture model by default
 * deno run -A examples/eval.ts --demo [--model DIR] [--per-kind 40] [--describe 16] [--images DIR] \
 *   [--policies ...] [--kv ...] [--backend cpu|webgpu] [--json OUT]  # the shapes test split
 * deno run -A examples/eval.ts --demo --merge A.json,B.json [--json OUT]  # runs made in parallel, merged
 * ```
 *
 * `--demo` evaluates the embedded demo checkpoint on the held-out test split of the shapes task
 * (tools/fixtures/scenes.ts; drawn by its TypeScript rasteriser, or read as `{seed}.png` from
 * `--images DIR` when another renderer drew them): accuracy of the short answers (exact match after
 * lower-casing and stripping punctuation), METEOR of the descriptions, KV-cache bytes held at the
 * end of the descriptions, decode FLOPs per generated token. FastV runs with K = 2 and R = 0.8, the
 * visual budget of Dynamic-LLaVA's r_I = 0.2.
 *
 * For every policy × KV mode:
 * - perplexity of the reference answers: the answer is tokenised with the model's tokenizer without
 *   special tokens (no BOS, no `</s>` appended), the prompt is the question after the image in the
 *   llava_v1 template, and `Model.logProbs` gives teacher-forced log-probabilities with the policy's
 *   sparsification applied; perplexity = exp(−Σ log p / number of answer tokens) over the whole set;
 * - METEOR (NLTK 3.8's) of the greedy answer against the reference, averaged over items. Both are
 *   split into words by {@link meteorWords}, an approximation of NLTK's `word_tokenize`: lower-cased,
 *   runs of letters/digits and single punctuation marks ("isn't" gives "isn", "'", "t" where NLTK
 *   gives "is", "n't");
 * - savings from the generation stats: share of visual tokens kept, peak KV-cache bytes and exact
 *   decode FLOPs per generated token, each relative to the dense policy in the same KV mode (null
 *   when dense was not run or held nothing, as without KV cache).
 * @module
 */
import { dirname, resolve } from "node:path";
import { ImageError, InputError } from "../runtime/core/errors.ts";
import { fastvPolicy } from "../runtime/core/policies.ts";
import type { Policy } from "../runtime/core/policy.ts";
import type { GenerateStats } from "../runtime/engine/generate.ts";
import { decodeImage, type RgbImage } from "../runtime/image/image_decode.ts";
import { meteorScoreSync } from "../runtime/eval/meteor.ts";
import { loadModel, type Model } from "../runtime/api/model.ts";
import { DEFAULT_WORDNET_DIR, loadWordNet } from "../runtime/eval/wordnet.ts";
import { writeEvalSet } from "../tools/fixtures/eval_set.ts";
import { renderScene, type SceneItem, testItems } from "../tools/fixtures/scenes.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";
import { chooseBackend, type CommandSpec, describeBackend, parseFlags, runCommand } from "./cli_options.ts";

/** The command line of the script. */
export const EVAL_COMMAND: CommandSpec = {
  usage: "deno task eval (--model DIR --data FILE.jsonl | --demo-set | --demo) [options]",
  summary:
    "Scores the reference answers of an {image, question, answer} JSONL set (perplexity, teacher-forced)\n" +
    "and the generated ones (METEOR) per policy and KV mode, with what each policy saved.",
  options: {
    model: {
      type: "string",
      value: "DIR",
      description: "checkpoint (default with --demo-set: the test fixture)",
    },
    data: {
      type: "string",
      value: "FILE",
      description: "LLaVA-style JSONL: {image, question, answer} per line",
    },
    "demo-set": { type: "boolean", description: "generate a small set and run on it" },
    demo: {
      type: "boolean",
      description: "the demo model on the shapes test split (accuracy, METEOR, KV bytes)",
    },
    "per-kind": { type: "string", value: "N", description: "--demo: short questions per kind (default 40)" },
    describe: { type: "string", value: "N", description: "--demo: description items (default 16)" },
    images: {
      type: "string",
      value: "DIR",
      description: "--demo: read {seed}.png drawn by another renderer",
    },
    merge: { type: "string", value: "A.json,B.json", description: "--demo: merge reports of separate runs" },
    policies: {
      type: "string",
      value: "LIST",
      default: "dense,fastv,dynamic",
      description: "policies to run",
    },
    kv: { type: "string", value: "both|on|off", default: "both", description: "KV-cache modes" },
    "max-new-tokens": { type: "string", value: "N", description: "longest generated answer" },
    limit: { type: "string", value: "N", description: "first N items only" },
    backend: {
      type: "string",
      value: "webgpu|cpu",
      description: "compute backend (default: webgpu when an adapter exists, else cpu)",
    },
    json: { type: "string", value: "OUT", description: "also write the report as JSON to OUT" },
    wordnet: {
      type: "string",
      value: "DIR",
      description: "WordNet directory for METEOR (default /usr/share/wordnet)",
    },
  },
  examples: [
    "deno task eval --demo-set --backend cpu --limit 2",
    "deno task eval --model ./ckpt --data set.jsonl",
    "deno task eval --demo --json eval.json",
  ],
};

/** The policies the script knows by name. */
export type EvalPolicy = "dense" | "fastv" | "dynamic";

/** One item of the evaluation set. */
export interface EvalItem {
  /** Image path as written in the JSONL file (relative to it). */
  image: string;
  question: string;
  answer: string;
}

/** Options of {@link runEval}. */
export interface EvalOptions {
  /** Checkpoint directory, or a loaded model (left open). Default with `demoSet`: the fixture model. */
  model?: string | Model;
  /** The JSONL file. Either this or `demoSet`. */
  data?: string;
  /** Generate the demo set (this many items, default 8) into a temporary directory and use it. */
  demoSet?: boolean | { count: number };
  /** Default ["dense", "fastv", "dynamic"]. */
  policies?: EvalPolicy[];
  /** "both" (default), "on" (KV cache) or "off" (the paper's no-cache decoding). */
  kv?: "both" | "on" | "off";
  /** Default 32. */
  maxNewTokens?: number;
  /** Evaluate only the first N items. */
  limit?: number;
  /** Backend when `model` is a path: "webgpu" (default) or "cpu". */
  backend?: "webgpu" | "cpu";
  /** KV cache element type when `model` is a path (`loadModel`'s `kvDtype`, default "auto"). */
  kvDtype?: "auto" | "f16" | "f32";
  /** WordNet 3.0 database directory (default /usr/share/wordnet). */
  wordnetDir?: string;
  /** Called after each item of each run. */
  onProgress?: (progress: { policy: EvalPolicy; kvCache: boolean; item: number; items: number }) => void;
}

/** One item's result in one run. */
export interface EvalSample {
  image: string;
  question: string;
  answer: string;
  /** Greedy answer. */
  generated: string;
  /** log p of each answer token (length = answer tokens). */
  logProbs: number[];
  /** exp(−mean(logProbs)). */
  perplexity: number;
  meteor: number;
  visualTokens: number;
  visualKept: number;
  newTokens: number;
  kvPeakBytes: number;
  decodeFlopsExact: number;
}

/** One policy × KV mode. */
export interface EvalRow {
  policy: EvalPolicy;
  kvCache: boolean;
  /** exp(−Σ log p / Σ answer tokens) over the set. */
  perplexity: number;
  answerTokens: number;
  /** Mean METEOR over items, in [0, 1]. */
  meteor: number;
  /** Σ visual tokens kept / Σ visual tokens. */
  visualKeptRatio: number;
  /** Mean peak KV-cache bytes per item. */
  kvPeakBytes: number;
  /** kvPeakBytes / dense's in the same KV mode; null without a dense run or when dense held nothing. */
  kvPeakVsDense: number | null;
  /** Σ exact decode FLOPs / Σ generated tokens. */
  decodeFlopsPerToken: number;
  /** decodeFlopsPerToken / dense's in the same KV mode; null without a dense run or when dense is 0. */
  decodeFlopsVsDense: number | null;
  samples: EvalSample[];
}

/** What {@link runEval} returns (and `--json` writes). */
export interface EvalReport {
  /** Checkpoint directory (or "(loaded model)"). */
  model: string;
  /** The JSONL file. */
  data: string;
  items: number;
  maxNewTokens: number;
  /** How METEOR's words were made. */
  meteorTokenizer: string;
  rows: EvalRow[];
}

const ALL_POLICIES: readonly EvalPolicy[] = ["dense", "fastv", "dynamic"];

const METEOR_TOKENIZER =
  "lower-cased runs of letters/digits and single punctuation marks (approximates NLTK word_tokenize)";

/**
 * Splits text into METEOR's words: lower-cased runs of letters and digits, and every other
 * non-space character on its own (close to NLTK's `word_tokenize`, which also keeps punctuation).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { meteorWords } from "./eval.ts";
 * assert.deepEqual(meteorWords("The Circle is RED."), ["the", "circle", "is", "red", "."]);
 * ```
 */
export function meteorWords(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+|[^\s\p{L}\p{N}]/gu) ?? [];
}

/**
 * Reads a LLaVA-format JSONL evaluation file (blank lines skipped).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readEvalSet } from "./eval.ts";
 * const path = await Deno.makeTempFile({ suffix: ".jsonl" });
 * await Deno.writeTextFile(path, '{"image":"a.png","question":"What is it?","answer":"A cat."}\n');
 * const items = await readEvalSet(path);
 * assert.equal(items.length, 1);
 * assert.equal(items[0].answer, "A cat.");
 * ```
 */
export async function readEvalSet(path: string, options: { limit?: number } = {}): Promise<EvalItem[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new InputError(`Cannot read the evaluation set: ${(error as Error).message}`, path);
  }
  const items: EvalItem[] = [];
  for (const [index, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    const where = `${path}:${index + 1}`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch (error) {
      throw new InputError(`Cannot parse the evaluation set: ${(error as Error).message}`, where);
    }
    const record = (typeof parsed === "object" && parsed !== null ? parsed : {}) as Record<string, unknown>;
    for (const field of ["image", "question", "answer"]) {
      if (typeof record[field] !== "string" || record[field] === "") {
        throw new InputError(`Cannot read the evaluation set: "${field}" must be a non-empty string`, where);
      }
    }
    items.push({
      image: record.image as string,
      question: record.question as string,
      answer: record.answer as string,
    });
    if (options.limit !== undefined && items.length >= options.limit) break;
  }
  if (items.length === 0) throw new InputError("Cannot evaluate: the set has no items", path);
  return items;
}

async function readItemImage(jsonlPath: string, item: EvalItem): Promise<RgbImage> {
  const path = resolve(dirname(jsonlPath), item.image);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new ImageError(`Cannot read image: ${(error as Error).message}`, path);
  }
  return await decodeImage(bytes);
}

async function scoreItem(
  model: Model,
  input: { item: EvalItem; image: RgbImage; policy: EvalPolicy; kvCache: boolean; maxNewTokens: number },
  meteorOf: (reference: string, hypothesis: string) => number,
): Promise<EvalSample> {
  const { item, image, policy, kvCache } = input;
  const target = model.tokenizer.encode(item.answer, { addSpecialTokens: false });
  const logProbs = await model.logProbs({ prompt: item.question, image, policy, kvCache, target });
  const result = await model.generate({
    prompt: item.question,
    image,
    policy,
    kvCache,
    maxNewTokens: input.maxNewTokens,
  });
  const stats: GenerateStats = result.stats;
  const generated = result.text.trim();
  return {
    image: item.image,
    question: item.question,
    answer: item.answer,
    generated,
    logProbs,
    perplexity: Math.exp(-logProbs.reduce((sum, lp) => sum + lp, 0) / logProbs.length),
    meteor: meteorOf(item.answer, generated),
    visualTokens: stats.visualTokens,
    visualKept: stats.visualKeptCount ?? stats.visualTokens,
    newTokens: stats.newTokens,
    kvPeakBytes: stats.kvCache.peakBytes,
    decodeFlopsExact: stats.flops.decode.flopsExact,
  };
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}

function ratioOrNull(value: number, dense: number | undefined): number | null {
  return dense === undefined || dense === 0 ? null : value / dense;
}

function summarise(policy: EvalPolicy, kvCache: boolean, samples: EvalSample[]): EvalRow {
  const answerTokens = sum(samples.map((s) => s.logProbs.length));
  return {
    policy,
    kvCache,
    perplexity: Math.exp(-sum(samples.map((s) => sum(s.logProbs))) / answerTokens),
    answerTokens,
    meteor: sum(samples.map((s) => s.meteor)) / samples.length,
    visualKeptRatio: sum(samples.map((s) => s.visualKept)) /
      Math.max(1, sum(samples.map((s) => s.visualTokens))),
    kvPeakBytes: sum(samples.map((s) => s.kvPeakBytes)) / samples.length,
    kvPeakVsDense: null,
    decodeFlopsPerToken: sum(samples.map((s) => s.decodeFlopsExact)) /
      Math.max(1, sum(samples.map((s) => s.newTokens))),
    decodeFlopsVsDense: null,
    samples,
  };
}

/** Fills the "vs dense" columns from the dense row of the same KV mode. */
function compareWithDense(rows: EvalRow[]): void {
  for (const row of rows) {
    const dense = rows.find((r) => r.policy === "dense" && r.kvCache === row.kvCache);
    row.kvPeakVsDense = ratioOrNull(row.kvPeakBytes, dense?.kvPeakBytes);
    row.decodeFlopsVsDense = ratioOrNull(row.decodeFlopsPerToken, dense?.decodeFlopsPerToken);
  }
}

async function resolveData(options: EvalOptions): Promise<string> {
  if (options.data !== undefined && options.demoSet) {
    throw new InputError("Cannot evaluate: give --data or --demo-set, not both", "--data");
  }
  if (options.data !== undefined) return options.data;
  if (!options.demoSet) {
    throw new InputError("Cannot evaluate: --data FILE or --demo-set is required", "--data");
  }
  const count = typeof options.demoSet === "object" ? options.demoSet.count : 8;
  const dir = await Deno.makeTempDir({ prefix: "dynllava-eval-" });
  return (await writeEvalSet(dir, { count })).jsonlPath;
}

/**
 * Runs the evaluation: every policy × KV mode over the set; see the module doc for the metrics.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { runEval } from "./eval.ts";
 * const report = await runEval({ demoSet: { count: 1 }, backend: "cpu", policies: ["dense"], kv: "on", maxNewTokens: 2 });
 * assert.equal(report.rows.length, 1);
 * assert.ok(report.rows[0].perplexity > 1);
 * ```
 */
export async function runEval(options: EvalOptions): Promise<EvalReport> {
  const policies = options.policies ?? [...ALL_POLICIES];
  for (const policy of policies) {
    if (!ALL_POLICIES.includes(policy)) {
      throw new InputError(`Cannot evaluate: unknown policy "${policy}" (dense, fastv, dynamic)`, "policies");
    }
  }
  const kvModes = { both: [true, false], on: [true], off: [false] }[options.kv ?? "both"];
  if (kvModes === undefined) throw new InputError(`Cannot evaluate: --kv must be both, on or off`, "kv");
  const maxNewTokens = options.maxNewTokens ?? 32;
  const data = await resolveData(options);
  const items = await readEvalSet(data, { limit: options.limit });
  const images = await Promise.all(items.map((item) => readItemImage(data, item)));
  const wordnet = await loadWordNet(options.wordnetDir ?? DEFAULT_WORDNET_DIR);
  const meteorOf = (reference: string, hypothesis: string) =>
    meteorScoreSync([meteorWords(reference)], meteorWords(hypothesis), { wordnet });

  const modelPath = typeof options.model === "string"
    ? options.model
    : options.model === undefined && options.demoSet
    ? await ensureFixture("llava-f32-dyn")
    : undefined;
  if (options.model === undefined && modelPath === undefined) {
    throw new InputError("Cannot evaluate: --model DIR is required without --demo-set", "--model");
  }
  const model = typeof options.model === "object"
    ? options.model
    : await loadModel(modelPath!, { backend: options.backend, kvDtype: options.kvDtype });
  try {
    for (const policy of policies) model.planPolicy(policy); // fail before any run
    const rows: EvalRow[] = [];
    for (const kvCache of kvModes) {
      for (const policy of policies) {
        const samples: EvalSample[] = [];
        for (const [index, item] of items.entries()) {
          const input = { item, image: images[index], policy, kvCache, maxNewTokens };
          samples.push(await scoreItem(model, input, meteorOf));
          options.onProgress?.({ policy, kvCache, item: index + 1, items: items.length });
        }
        rows.push(summarise(policy, kvCache, samples));
      }
    }
    compareWithDense(rows);
    return {
      model: modelPath ?? "(loaded model)",
      data,
      items: items.length,
      maxNewTokens,
      meteorTokenizer: METEOR_TOKENIZER,
      rows,
    };
  } finally {
    if (typeof options.model !== "object") model.dispose();
  }
}

function percent(value: number | null): string {
  return value === null ? "–" : `${(value * 100).toFixed(1)}%`;
}

/**
 * Formats a report as a Markdown table, one line per policy × KV mode (KV cache on first, policies in the
 * order given).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatEvalTable } from "./eval.ts";
 * const table = formatEvalTable({ model: "m", data: "d.jsonl", items: 0, maxNewTokens: 8, meteorTokenizer: "", rows: [] });
 * assert.ok(table.split("\n")[2].startsWith("| policy"));
 * ```
 */
export function formatEvalTable(report: EvalReport): string {
  const lines = [
    `${report.items} items from ${report.data}, model ${report.model}, ≤ ${report.maxNewTokens} new tokens`,
    "",
    "| policy | KV cache | PPL ↓ | METEOR ↑ | visual tokens kept | KV peak vs dense | decode FLOPs/token vs dense |",
    "|---|---|---:|---:|---:|---:|---:|",
  ];
  for (const row of report.rows) {
    lines.push(
      `| ${row.policy} | ${row.kvCache ? "on" : "off"} | ${row.perplexity.toFixed(2)} | ${
        row.meteor.toFixed(4)
      } | ${percent(row.visualKeptRatio)} | ${percent(row.kvPeakVsDense)} | ${
        percent(row.decodeFlopsVsDense)
      } |`,
    );
  }
  return lines.join("\n");
}

function wholeNumber(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (value.trim() === "" || !Number.isInteger(parsed) || parsed < 1) {
    throw new InputError(`Cannot read ${flag}: expected a whole number ≥ 1, got "${value}"`, flag);
  }
  return parsed;
}

/**
 * Reads the eval script's command line into {@link runEval} options plus the JSON output path.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseEvalArgs } from "./eval.ts";
 * const { options } = parseEvalArgs(["--demo-set", "--policies", "dense,dynamic", "--kv", "on"]);
 * assert.deepEqual(options.policies, ["dense", "dynamic"]);
 * assert.equal(options.kv, "on");
 * ```
 */
export function parseEvalArgs(argv: string[]): { options: EvalOptions; jsonPath?: string } {
  const values = parseFlags(EVAL_COMMAND, argv) as Record<string, string | undefined> & {
    "demo-set"?: boolean;
  };
  const policies = values.policies!.split(",").map((p) => p.trim()) as EvalPolicy[];
  for (const policy of policies) {
    if (!ALL_POLICIES.includes(policy)) {
      throw new InputError(`Cannot read --policies: unknown policy "${policy}"`, "--policies");
    }
  }
  const kv = values.kv;
  if (kv !== "both" && kv !== "on" && kv !== "off") {
    throw new InputError(`Cannot read --kv: expected both, on or off, got "${kv}"`, "--kv");
  }
  const backend = values.backend;
  if (backend !== undefined && backend !== "webgpu" && backend !== "cpu") {
    throw new InputError(`Cannot read --backend: expected webgpu or cpu, got "${backend}"`, "--backend");
  }
  return {
    options: {
      model: values.model,
      data: values.data,
      demoSet: values["demo-set"],
      policies,
      kv,
      maxNewTokens: wholeNumber(values["max-new-tokens"], "--max-new-tokens"),
      limit: wholeNumber(values.limit, "--limit"),
      backend,
      wordnetDir: values.wordnet,
    },
    jsonPath: values.json,
  };
}

/** Options of {@link runShapesEval}. */
export interface ShapesEvalOptions {
  /** Checkpoint directory; default the embedded demo checkpoint. */
  model?: string | URL;
  /** Short questions per kind (color, shape, count, exists, where); default 40. */
  perKind?: number;
  /** Description items; default 16. */
  describe?: number;
  /** Default ["dense", "fastv", "dynamic"]. */
  policies?: EvalPolicy[];
  /** "both" (default), "on" or "off". */
  kv?: "both" | "on" | "off";
  /** Default "cpu". */
  backend?: "webgpu" | "cpu";
  /** Directory of `{seed}.png` scenes drawn by another renderer; default the TypeScript rasteriser. */
  images?: string;
  /** WordNet 3.0 database directory (default /usr/share/wordnet). */
  wordnetDir?: string;
  onProgress?: (progress: { policy: EvalPolicy; kvCache: boolean; item: number; items: number }) => void;
}

/** One policy in one KV mode on the shapes test split. */
export interface ShapesEvalRow {
  /** Exact-match accuracy of the short answers, in [0, 1]. */
  accuracy: number;
  /** The same per question kind. */
  accuracyByKind: Record<string, number>;
  /** Mean METEOR of the descriptions. */
  meteor: number;
  /** Mean KV-cache bytes held at the end of the descriptions. */
  kvBytes: number;
  /** kvBytes / dense's in the same mode (null without dense or when dense held none). */
  kvBytesVsDense: number | null;
  /** Σ decode FLOPs (exact) / Σ generated tokens, over every item. */
  decodeFlopsPerToken: number;
  decodeFlopsVsDense: number | null;
  /** Σ visual tokens kept / Σ visual tokens. */
  visualKeptRatio: number;
  /** Share of the descriptions' fed-back tokens admitted (KV) or kept (no cache). */
  admittedRatio: number;
  /** Short and description items. */
  items: { short: number; describe: number };
}

/** policy → KV mode → row, as `--json` writes it. */
export type ShapesEvalReport = Partial<
  Record<EvalPolicy, { kvCache?: ShapesEvalRow; noCache?: ShapesEvalRow }>
>;

/**
 * Normalises an answer for exact match: lower case, punctuation removed, spaces collapsed.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { normaliseAnswer } from "./eval.ts";
 * assert.equal(normaliseAnswer(" Top  Left."), "top left");
 * ```
 */
export function normaliseAnswer(text: string): string {
  return text.toLowerCase().replace(/[^\p{L}\p{N}\s]/gu, "").replace(/\s+/g, " ").trim();
}

function shapesPolicy(policy: EvalPolicy): EvalPolicy | Policy {
  return policy === "fastv" ? fastvPolicy({ k: 2, r: 0.8 }) : policy;
}

async function shapesImage(item: SceneItem, dir: string | undefined): Promise<RgbImage> {
  if (dir === undefined) return renderScene(item.scene);
  const path = resolve(dir, `${item.seed}.png`);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new ImageError(`Cannot read scene image: ${(error as Error).message}`, path);
  }
  return await decodeImage(bytes);
}

interface ShapesSample {
  item: SceneItem;
  correct: boolean;
  meteor: number;
  kvBytes: number;
  newTokens: number;
  decodeFlops: number;
  visualTokens: number;
  visualKept: number;
  admitted: number;
  fed: number;
}

function summariseShapes(samples: ShapesSample[]): ShapesEvalRow {
  const short = samples.filter((s) => s.item.kind !== "describe");
  const long = samples.filter((s) => s.item.kind === "describe");
  const byKind: Record<string, number> = {};
  for (const kind of new Set(short.map((s) => s.item.kind))) {
    const ofKind = short.filter((s) => s.item.kind === kind);
    byKind[kind] = ofKind.filter((s) => s.correct).length / ofKind.length;
  }
  const mean = (values: number[]) => values.length === 0 ? 0 : sum(values) / values.length;
  return {
    accuracy: mean(short.map((s) => s.correct ? 1 : 0)),
    accuracyByKind: byKind,
    meteor: mean(long.map((s) => s.meteor)),
    kvBytes: mean(long.map((s) => s.kvBytes)),
    kvBytesVsDense: null,
    decodeFlopsPerToken: sum(samples.map((s) => s.decodeFlops)) /
      Math.max(1, sum(samples.map((s) => s.newTokens))),
    decodeFlopsVsDense: null,
    visualKeptRatio: sum(samples.map((s) => s.visualKept)) /
      Math.max(1, sum(samples.map((s) => s.visualTokens))),
    admittedRatio: sum(long.map((s) => s.admitted)) / Math.max(1, sum(long.map((s) => s.fed))),
    items: { short: short.length, describe: long.length },
  };
}

/**
 * Evaluates a checkpoint (default: the embedded demo) on the shapes test split, every policy in
 * every KV mode; see the module doc.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { runShapesEval } from "./eval.ts";
 * const report = await runShapesEval({ perKind: 1, describe: 1, policies: ["dense"], kv: "on" });
 * assert.ok(report.dense!.kvCache!.accuracy >= 0 && report.dense!.kvCache!.kvBytes > 0);
 * ```
 */
export async function runShapesEval(options: ShapesEvalOptions = {}): Promise<ShapesEvalReport> {
  const policies = options.policies ?? [...ALL_POLICIES];
  const kvModes = { both: [true, false], on: [true], off: [false] }[options.kv ?? "both"];
  if (kvModes === undefined) throw new InputError(`Cannot evaluate: --kv must be both, on or off`, "kv");
  const items = testItems({ perKind: options.perKind ?? 40, describe: options.describe ?? 16 });
  const images = await Promise.all(items.map((item) => shapesImage(item, options.images)));
  const wordnet = await loadWordNet(options.wordnetDir ?? DEFAULT_WORDNET_DIR);
  const model = await loadModel(options.model ?? new URL("../assets/demo/", import.meta.url), {
    backend: options.backend ?? "cpu",
  });
  const report: ShapesEvalReport = {};
  try {
    for (const kvCache of kvModes) {
      for (const policy of policies) {
        const samples: ShapesSample[] = [];
        for (const [index, item] of items.entries()) {
          const long = item.kind === "describe";
          const result = await model.generate({
            prompt: item.question,
            image: images[index],
            policy: shapesPolicy(policy),
            kvCache,
            maxNewTokens: long ? 160 : 8,
          });
          const text = result.text.trim();
          samples.push({
            item,
            correct: normaliseAnswer(text) === normaliseAnswer(item.answer),
            meteor: long ? meteorScoreSync([meteorWords(item.answer)], meteorWords(text), { wordnet }) : 0,
            kvBytes: result.stats.kvCache.bytes,
            newTokens: result.stats.newTokens,
            decodeFlops: result.stats.flops.decode.flopsExact,
            visualTokens: result.stats.visualTokens,
            visualKept: result.stats.visualKeptCount ?? result.stats.visualTokens,
            admitted: result.admitted.filter(Boolean).length,
            fed: result.admitted.length,
          });
          options.onProgress?.({ policy, kvCache, item: index + 1, items: items.length });
        }
        const mode = kvCache ? "kvCache" : "noCache";
        report[policy] = { ...report[policy], [mode]: summariseShapes(samples) };
      }
    }
  } finally {
    model.dispose();
  }
  return mergeShapesReports([report]);
}

/**
 * Merges shapes reports of separate runs (one per policy or KV mode, e.g. run in parallel) and
 * fills the "vs dense" ratios from the merged dense rows.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mergeShapesReports, type ShapesEvalRow } from "./eval.ts";
 * const row = (kvBytes: number) => ({ kvBytes, decodeFlopsPerToken: 1 }) as ShapesEvalRow;
 * const merged = mergeShapesReports([{ dense: { kvCache: row(100) } }, { dynamic: { kvCache: row(60) } }]);
 * assert.equal(merged.dynamic!.kvCache!.kvBytesVsDense, 0.6);
 * ```
 */
export function mergeShapesReports(reports: ShapesEvalReport[]): ShapesEvalReport {
  const merged: ShapesEvalReport = {};
  for (const report of reports) {
    for (const [policy, modes] of Object.entries(report) as [EvalPolicy, ShapesEvalReport[EvalPolicy]][]) {
      merged[policy] = { ...merged[policy], ...modes };
    }
  }
  for (const modes of Object.values(merged)) {
    for (const mode of ["kvCache", "noCache"] as const) {
      const row = modes?.[mode], dense = merged.dense?.[mode];
      if (row === undefined) continue;
      row.kvBytesVsDense = ratioOrNull(row.kvBytes, dense?.kvBytes);
      row.decodeFlopsVsDense = ratioOrNull(row.decodeFlopsPerToken, dense?.decodeFlopsPerToken);
    }
  }
  return merged;
}

/**
 * Formats a shapes report as a Markdown table.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatShapesTable } from "./eval.ts";
 * assert.equal(formatShapesTable({}).split("\n").length, 2);
 * ```
 */
export function formatShapesTable(report: ShapesEvalReport): string {
  const lines = [
    "| policy | KV cache | accuracy | color | shape | count | exists | where | METEOR | visual kept | " +
    "KV bytes (end of descriptions) | vs dense | decode FLOPs/token vs dense |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const mode of ["kvCache", "noCache"] as const) {
    for (const [policy, modes] of Object.entries(report)) {
      const row = modes?.[mode];
      if (row === undefined) continue;
      const kinds = ["color", "shape", "count", "exists", "where"].map((k) =>
        (row.accuracyByKind[k] ?? 0).toFixed(3)
      );
      lines.push(
        `| ${policy} | ${mode === "kvCache" ? "on" : "off"} | ${row.accuracy.toFixed(3)} | ${
          kinds.join(" | ")
        } | ${row.meteor.toFixed(4)} | ${percent(row.visualKeptRatio)} | ${Math.round(row.kvBytes)} | ${
          percent(row.kvBytesVsDense)
        } | ${percent(row.decodeFlopsVsDense)} |`,
      );
    }
  }
  return lines.join("\n");
}

function parseShapesArgs(
  argv: string[],
): { options: ShapesEvalOptions; jsonPath?: string; merge?: string[] } {
  const values = parseFlags(EVAL_COMMAND, argv) as Record<string, string | undefined>;
  const backend = values.backend ?? "cpu";
  const policies = values.policies!.split(",").map((p) => p.trim()) as EvalPolicy[];
  for (const policy of policies) {
    if (!ALL_POLICIES.includes(policy)) {
      throw new InputError(`Cannot read --policies: unknown policy "${policy}"`, "--policies");
    }
  }
  if (values.kv !== "both" && values.kv !== "on" && values.kv !== "off") {
    throw new InputError(`Cannot read --kv: expected both, on or off, got "${values.kv}"`, "--kv");
  }
  if (backend !== "webgpu" && backend !== "cpu") {
    throw new InputError(
      `Cannot read --backend: expected webgpu or cpu, got "${backend}"`,
      "--backend",
    );
  }
  return {
    options: {
      model: values.model,
      perKind: wholeNumber(values["per-kind"], "--per-kind"),
      describe: wholeNumber(values.describe, "--describe"),
      images: values.images,
      policies,
      kv: values.kv,
      backend,
      wordnetDir: values.wordnet,
    },
    jsonPath: values.json,
    merge: values.merge?.split(","),
  };
}

async function mainShapes(argv: string[]): Promise<void> {
  const { options, jsonPath, merge } = parseShapesArgs(argv);
  const started = performance.now();
  const report = merge !== undefined
    ? mergeShapesReports(
      await Promise.all(merge.map(async (path) => JSON.parse(await Deno.readTextFile(path)))),
    )
    : await runShapesEval({
      ...options,
      onProgress: ({ policy, kvCache, item, items }) => {
        if (item % 25 === 0 || item === items) {
          console.error(`${policy}, KV cache ${kvCache ? "on" : "off"}: ${item}/${items}`);
        }
      },
    });
  console.log(formatShapesTable(report));
  console.error(`evaluated in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  if (jsonPath !== undefined) {
    await Deno.writeTextFile(jsonPath, JSON.stringify(report, null, 2) + "\n");
    console.error(`wrote ${resolve(jsonPath)}`);
  }
}

async function main(argv: string[]): Promise<void> {
  if (argv.includes("--demo")) return await mainShapes(argv);
  const { options, jsonPath } = parseEvalArgs(argv);
  const choice = await chooseBackend(options.backend);
  console.error(describeBackend(choice));
  const report = await runEval({
    ...options,
    backend: choice.backend,
    onProgress: ({ policy, kvCache, item, items }) =>
      console.error(`${policy}, KV cache ${kvCache ? "on" : "off"}: ${item}/${items}`),
  });
  console.log(formatEvalTable(report));
  if (jsonPath !== undefined) {
    await Deno.writeTextFile(jsonPath, JSON.stringify(report, null, 2) + "\n");
    console.error(`wrote ${resolve(jsonPath)}`);
  }
}

if (import.meta.main) await runCommand(EVAL_COMMAND, Deno.args, (_flags, args) => main(args));
