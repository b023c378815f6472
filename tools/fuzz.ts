/**
 * Seeded mutation fuzzing of every input format and of requests:
 *
 *   deno task fuzz [--iterations N] [--seed S] [--family NAME]...
 *
 * Families: safetensors headers, tokenizer.json, config.json, PNG, JPEG, GIF, WebP, and request
 * objects (validated, and every tenth one run on the demo model on the CPU). Each case takes a
 * valid seed input, applies 1–4 random mutations (bit flips, interesting bytes and integers,
 * cuts, copies, insertions; for JSON: values replaced by wrong types, extremes, deep nesting, keys
 * dropped or added) and runs it. A case passes when it succeeds or throws one of the project's
 * error classes; anything else escaping (TypeError, RangeError...), a case running longer than
 * the time limit, or memory growing past the bound is a finding. Same seed, same cases.
 * Exit status 1 when there are findings.
 *
 *   deno task fuzz --bombs
 *
 * measures the refusal of the known bombs instead (time and resident memory added): the GIF
 * with an 8000² screen, the 8192² PNG, the JPEG of 200,000 empty segments, and 1,000,000-character
 * and 50 MB prompts on the demo model.
 * @module
 */
import { parseArgs } from "node:util";
import { DynllavaError } from "../runtime/core/errors.ts";
import { parseModelConfig } from "../runtime/core/config.ts";
import { expectedShapes } from "../runtime/io/checkpoint.ts";
import { parseSafetensorsHeader, writeSafetensors } from "../runtime/io/safetensors.ts";
import { parseTokenizerJson } from "../runtime/text/tokenizer_json.ts";
import { decodeImage } from "../runtime/image/image_decode.ts";
import { validateRequest } from "../runtime/engine/request.ts";
import { loadModel, type Model } from "../runtime/api/model.ts";
import { encodeGif, encodeImage, makeTestImage } from "./fixtures/images.ts";
import { gifScreenBomb, jpegSegmentBomb, pngBomb } from "./fixtures/bombs.ts";
import { llamaTokenizerFile } from "./fixtures/tokenizer_data.ts";

/** The input families. */
export const FUZZ_FAMILIES = [
  "safetensors",
  "tokenizer",
  "config",
  "png",
  "jpeg",
  "gif",
  "webp",
  "request",
] as const;

/** One family's name. */
export type FuzzFamily = typeof FUZZ_FAMILIES[number];

/** Options of {@link fuzzFamily}. */
export interface FuzzOptions {
  iterations: number;
  seed?: number;
  /** A case running longer than this is a finding (default 5000 ms). */
  caseLimitMs?: number;
}

/** What one family's run found. */
export interface FuzzReport {
  family: FuzzFamily;
  iterations: number;
  /** Cases refused with a project error. */
  refused: number;
  /** Cases that ran to a result. */
  accepted: number;
  /** Untyped errors and cases over the time limit, with the case number to replay. */
  findings: { case: number; problem: string }[];
  slowestMs: number;
  /** Resident memory after the run minus before it, in bytes. */
  rssGrowthBytes: number;
}

/** A small, fast, seeded generator (mulberry32). */
export class Random {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }
}

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x2c, 0x21, 0x3b];
const INTERESTING_U32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0xffff, 0x10000, 8000, 65535];

/**
 * Applies 1–4 random byte-level mutations to a copy of `bytes`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mutateBytes, Random } from "./fuzz.ts";
 * const seed = new Uint8Array(32);
 * assert.deepEqual(mutateBytes(seed, new Random(1)), mutateBytes(seed, new Random(1))); // seeded
 * ```
 */
export function mutateBytes(bytes: Uint8Array, random: Random): Uint8Array {
  let out: Uint8Array = bytes.slice();
  const steps = 1 + random.below(4);
  for (let s = 0; s < steps; s++) {
    const at = out.length === 0 ? 0 : random.below(out.length);
    switch (random.below(7)) {
      case 0: // flip a bit
        if (out.length > 0) out[at] ^= 1 << random.below(8);
        break;
      case 1: // an interesting byte
        if (out.length > 0) out[at] = random.pick(INTERESTING_BYTES);
        break;
      case 2: { // an interesting 32-bit value, either byte order
        if (out.length < 4) break;
        const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
        view.setUint32(Math.min(at, out.length - 4), random.pick(INTERESTING_U32), random.next() < 0.5);
        break;
      }
      case 3: // cut the tail
        out = out.slice(0, at);
        break;
      case 4: { // delete a range
        const end = Math.min(out.length, at + 1 + random.below(64));
        out = concat(out.subarray(0, at), out.subarray(end));
        break;
      }
      case 5: { // copy a range somewhere else (inserted)
        const from = random.below(out.length + 1);
        const chunk = out.slice(from, from + 1 + random.below(256));
        out = concat(out.subarray(0, at), chunk, out.subarray(at));
        break;
      }
      default: { // insert random bytes
        const chunk = Uint8Array.from({ length: 1 + random.below(16) }, () => random.below(256));
        out = concat(out.subarray(0, at), chunk, out.subarray(at));
      }
    }
  }
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Values no well-formed file holds where a number, string or object is expected. */
function hostileValue(random: Random): unknown {
  const deep = () => {
    const key = random.pick(["decoders", "normalizers", "x"]);
    let node: unknown = { type: "Sequence", [key]: [] };
    for (let i = 0; i < 2000; i++) node = { type: "Sequence", [key]: [node] };
    return node;
  };
  const values: (() => unknown)[] = [
    () => -1,
    () => 0,
    () => 1e15,
    () => -1e308,
    () => 2 ** 53,
    () => 0.5,
    () => "",
    () => "x".repeat(1 + random.below(100_000)),
    () => "hot",
    () => null,
    () => true,
    () => [],
    () => [1, "2", null],
    () => ({}),
    () => deep(),
    () => Array.from({ length: 1 + random.below(50_000) }, (_, i) => i),
  ];
  return random.pick(values)();
}

/**
 * Applies 1–4 structural mutations to a deep copy of a JSON value: a value anywhere replaced by a
 * hostile one, a key dropped or added.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mutateJson, Random } from "./fuzz.ts";
 * const seed = { a: 1, b: { c: [1, 2] } };
 * assert.notDeepEqual(mutateJson(seed, new Random(3)), seed);
 * assert.deepEqual(seed, { a: 1, b: { c: [1, 2] } }); // the seed is not modified
 * ```
 */
export function mutateJson(value: unknown, random: Random): unknown {
  const root = structuredClone(value);
  const steps = 1 + random.below(4);
  for (let s = 0; s < steps; s++) {
    const containers: (Record<string, unknown> | unknown[])[] = [];
    const walk = (node: unknown, depth: number) => {
      if (typeof node !== "object" || node === null || depth > 6) return;
      containers.push(node as Record<string, unknown>);
      const children = Array.isArray(node) ? node.slice(0, 8) : Object.values(node);
      for (const child of children) walk(child, depth + 1);
    };
    walk(root, 0);
    if (containers.length === 0) return hostileValue(random);
    const target = random.pick(containers);
    const keys = Array.isArray(target) ? target.map((_, i) => String(i)) : Object.keys(target);
    const key = keys.length > 0 ? random.pick(keys) : "extra";
    const action = random.below(6);
    if (action === 0 && !Array.isArray(target)) delete (target as Record<string, unknown>)[key];
    else if (action === 1 && !Array.isArray(target)) {
      (target as Record<string, unknown>)[`k${random.below(9)}`] = hostileValue(random);
    } else (target as Record<string, unknown>)[key] = hostileValue(random);
  }
  return root;
}

/** One family: seed inputs prepared once, and a case runner. */
interface Harness {
  run(random: Random): Promise<void> | void;
  dispose?(): void;
}

const TINY_TOKENIZER = llamaTokenizerFile(
  { "<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "▁": 4, "h": 5, "i": 6, "▁h": 7, "▁hi": 8 },
  ["▁ h", "▁h i"],
);

const LLAVA_CONFIG = {
  model_type: "llava_llama",
  hidden_size: 64,
  intermediate_size: 128,
  num_attention_heads: 4,
  num_key_value_heads: 4,
  num_hidden_layers: 4,
  vocab_size: 32000,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 2048,
  mm_vision_tower: "clip",
  mm_vision_select_layer: -2,
  mm_projector_type: "mlp2x_gelu",
  mm_hidden_size: 32,
  sparse_config: { d_model: 32, nhead: 4, dim_feedforward: 64, num_layers: 2, sparse_layer: 2 },
};

const TOWER_CONFIG = {
  hidden_size: 32,
  intermediate_size: 64,
  num_attention_heads: 2,
  num_hidden_layers: 3,
  image_size: 42,
  patch_size: 7,
};

const HF_CONFIG = {
  model_type: "llava",
  text_config: { ...LLAVA_CONFIG, model_type: "llama" },
  vision_config: TOWER_CONFIG,
  vision_feature_layer: -2,
  image_token_index: 32000,
};

let seedImages: Promise<Record<"png" | "jpeg" | "webp" | "gif", Uint8Array>> | null = null;

/** The valid images mutations start from, encoded once and in this order (WebP before JPEG: see encodeImage). */
function imageSeeds(): Promise<Record<"png" | "jpeg" | "webp" | "gif", Uint8Array>> {
  seedImages ??= (async () => {
    const image = makeTestImage(12, 10, { pattern: "photo" });
    const webp = await encodeImage(image, "webp");
    const jpeg = await encodeImage(image, "jpeg");
    const png = await encodeImage(image, "png");
    return { webp, jpeg, png, gif: encodeGif([image]) };
  })();
  return seedImages;
}

async function makeHarness(family: FuzzFamily): Promise<Harness> {
  switch (family) {
    case "safetensors": {
      const seed = writeSafetensors([
        { name: "a", dtype: "F32", shape: [2, 3], data: new Uint8Array(24) },
        { name: "b", dtype: "F16", shape: [4], data: new Uint8Array(8) },
        { name: "c", dtype: "BF16", shape: [], data: new Uint8Array(2) },
      ]);
      return {
        run(random) {
          const bytes = mutateBytes(seed, random);
          parseSafetensorsHeader(
            bytes,
            random.next() < 0.8 ? bytes.length : random.below(2 ** 40),
            "fuzz.safetensors",
          );
        },
      };
    }
    case "tokenizer": {
      const text = JSON.stringify(TINY_TOKENIZER);
      const bytes = new TextEncoder().encode(text);
      return {
        run(random) {
          const mutated = random.next() < 0.6
            ? JSON.stringify(mutateJson(TINY_TOKENIZER, random))
            : new TextDecoder().decode(mutateBytes(bytes, random));
          const tokenizer = parseTokenizerJson(mutated, "fuzz/tokenizer.json");
          const ids = tokenizer.encode("hi h i A <s> é 🦊");
          tokenizer.decode(ids.filter((id) => id < tokenizer.vocabSize), { skipSpecialTokens: true });
        },
      };
    }
    case "config":
      return {
        run(random) {
          const base = random.next() < 0.7 ? LLAVA_CONFIG : HF_CONFIG;
          const tower = random.next() < 0.5 ? mutateJson(TOWER_CONFIG, random) : TOWER_CONFIG;
          const config = parseModelConfig(mutateJson(base, random), "fuzz/config.json", tower);
          expectedShapes(config);
        },
      };
    case "png":
    case "jpeg":
    case "webp":
    case "gif": {
      const seed = (await imageSeeds())[family];
      return {
        async run(random) {
          await decodeImage(mutateBytes(seed, random), { maxPixels: 1 << 20 });
        },
      };
    }
    case "request": {
      const model: Model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
      const image = { width: 4, height: 4, data: new Uint8Array(48).fill(128) };
      const seed = {
        prompt: "Hi",
        maxNewTokens: 2,
        temperature: 0.7,
        topP: 0.9,
        seed: 3,
        stop: [2],
        kvCache: true,
      };
      let count = 0;
      return {
        async run(random) {
          const raw = mutateJson(seed, random) as Record<string, unknown>;
          if (random.next() < 0.2 && typeof raw === "object" && raw !== null) raw.image = image;
          const checked = validateRequest(raw, "", { limits: model.limits });
          if (count++ % 10 !== 0) return;
          // Run every tenth valid request, kept short.
          await model.generate({ ...checked, maxNewTokens: Math.min(checked.maxNewTokens ?? 2, 2) });
        },
        dispose: () => model.dispose(),
      };
    }
  }
}

/**
 * Runs `options.iterations` seeded cases of one family and reports what escaped.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fuzzFamily } from "./fuzz.ts";
 * const report = await fuzzFamily("safetensors", { iterations: 20, seed: 1 });
 * assert.deepEqual(report.findings, []);
 * ```
 */
export async function fuzzFamily(family: FuzzFamily, options: FuzzOptions): Promise<FuzzReport> {
  const harness = await makeHarness(family);
  const limit = options.caseLimitMs ?? 5000;
  const report: FuzzReport = {
    family,
    iterations: options.iterations,
    refused: 0,
    accepted: 0,
    findings: [],
    slowestMs: 0,
    rssGrowthBytes: 0,
  };
  const rssBefore = Deno.memoryUsage().rss;
  try {
    for (let i = 0; i < options.iterations; i++) {
      const random = new Random(((options.seed ?? 1) * 1_000_003 + i) >>> 0);
      const started = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      try {
        const timeout = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new HungError()), limit);
        });
        await Promise.race([Promise.resolve().then(() => harness.run(random)), timeout]);
        report.accepted++;
      } catch (err) {
        if (err instanceof DynllavaError) report.refused++;
        else if (err instanceof HungError) {
          report.findings.push({ case: i, problem: `still running after ${limit} ms` });
        } else {report.findings.push({
            case: i,
            problem: `${(err as Error)?.name}: ${(err as Error)?.message}`.slice(0, 300),
          });}
      } finally {
        clearTimeout(timer);
      }
      const ms = performance.now() - started;
      report.slowestMs = Math.max(report.slowestMs, ms);
      if (ms > limit && !report.findings.some((f) => f.case === i)) {
        report.findings.push({ case: i, problem: `took ${ms.toFixed(0)} ms` });
      }
    }
  } finally {
    harness.dispose?.();
  }
  report.rssGrowthBytes = Deno.memoryUsage().rss - rssBefore;
  return report;
}

class HungError extends Error {}

/** How one bomb was refused. */
export interface BombMeasure {
  bomb: string;
  /** The error's class and message, or "accepted". */
  outcome: string;
  ms: number;
  /** Resident memory after the refusal minus before it (the bomb's own bytes included). */
  rssAddedBytes: number;
}

/**
 * Builds each known bomb and measures its refusal.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { measureBombs } from "./fuzz.ts";
 * const rows = await measureBombs();
 * assert.ok(rows.every((r) => /^(ImageError|InputError)/.test(r.outcome)));
 * ```
 */
export async function measureBombs(): Promise<BombMeasure[]> {
  const model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
  const bombs: [string, () => Promise<Uint8Array | string>][] = [
    ["GIF 8000² screen, 1×1 frame (35 B)", () => Promise.resolve(gifScreenBomb(8000))],
    ["PNG 8192² (360 KB)", () => pngBomb(8192)],
    ["JPEG 200,000 empty APP0 (800 KB)", () => Promise.resolve(jpegSegmentBomb(200_000))],
    ["prompt of 1,000,000 characters", () => Promise.resolve("a".repeat(1_000_000))],
    ["prompt of 50,000,000 characters", () => Promise.resolve("ab ".repeat(50_000_000 / 3))],
  ];
  const rows: BombMeasure[] = [];
  try {
    for (const [bomb, build] of bombs) {
      const input = await build();
      const request = typeof input === "string"
        ? { prompt: input, maxNewTokens: 1 }
        : { prompt: "Hi", image: input, maxNewTokens: 1 };
      const rss = Deno.memoryUsage().rss;
      const started = performance.now();
      let outcome = "accepted";
      try {
        await model.generate(request);
      } catch (err) {
        outcome = `${(err as Error).name}: ${(err as Error).message}`;
      }
      rows.push({
        bomb,
        outcome,
        ms: performance.now() - started,
        rssAddedBytes: Deno.memoryUsage().rss - rss,
      });
    }
  } finally {
    model.dispose();
  }
  return rows;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      iterations: { type: "string", default: "1000" },
      seed: { type: "string", default: "1" },
      family: { type: "string", multiple: true },
      bombs: { type: "boolean", default: false },
    },
  });
  if (values.bombs) {
    for (const r of await measureBombs()) {
      console.log(
        `${r.bomb}: ${r.ms.toFixed(1)} ms, RSS +${(r.rssAddedBytes / 2 ** 20).toFixed(1)} MiB — ${r.outcome}`,
      );
    }
    Deno.exit(0);
  }
  const iterations = Number(values.iterations), seed = Number(values.seed);
  if (!Number.isSafeInteger(iterations) || iterations < 1 || !Number.isSafeInteger(seed)) {
    console.error("usage: deno task fuzz [--iterations N] [--seed S] [--family NAME]...");
    Deno.exit(2);
  }
  const families = (values.family ?? [...FUZZ_FAMILIES]) as FuzzFamily[];
  let findings = 0;
  for (const family of families) {
    if (!FUZZ_FAMILIES.includes(family)) {
      console.error(`unknown family ${family}: ${FUZZ_FAMILIES.join(", ")}`);
      Deno.exit(2);
    }
    const t0 = performance.now();
    const r = await fuzzFamily(family, { iterations, seed });
    findings += r.findings.length;
    console.log(
      `${family}: ${r.iterations} cases in ${
        ((performance.now() - t0) / 1000).toFixed(1)
      } s, ${r.refused} refused, ${r.accepted} accepted, slowest ${r.slowestMs.toFixed(0)} ms, RSS ${
        (r.rssGrowthBytes / 2 ** 20).toFixed(0)
      } MiB, ${r.findings.length} findings`,
    );
    for (const f of r.findings.slice(0, 20)) console.log(`  case ${f.case}: ${f.problem}`);
  }
  Deno.exit(findings > 0 ? 1 : 0);
}
