/**
 * dynllava against llama.cpp on the same GGUF files: converts a checkpoint to F16, Q8_0 and Q4_0 GGUF
 * with `convertToGguf`, decodes greedily with dynllava (CPU backend, or WebGPU) and with llama.cpp
 * through the npm package `node-llama-cpp` (its prebuilt CPU binaries, run by Node), and prints per
 * type: the first step where the tokens part, dynllava's margin there (its top logit minus the
 * logit of llama.cpp's token: small means a near-tie), llama.cpp's next-token logits against
 * dynllava's on the same file (NMSE) and dynllava's against the F16 file's.
 *
 * llama.cpp does not compute the exact product with Q8_0/Q4_0 weights: it rounds the activations to
 * 8-bit blocks (Q8_0) before each matrix product, so its tokens leave the exact ones at the first
 * near-tie; dynllava dequantizes the stored blocks exactly.
 *
 *   npm install --prefix DIR node-llama-cpp@3.22.1      (once; Node ≥ 20)
 *   deno run -A examples/peer.ts --node-modules DIR/node_modules [--model DIR] [--tokens N] [--backend cpu|webgpu]
 *     [--types q8_0,q4_0,q4_k_m]
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { loadModel } from "../mod.ts";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import {
  convertToGguf,
  type GgufConvertType,
  ggufVocabFromTokenizerJson,
} from "../runtime/io/gguf_convert.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

/** Node script: greedy tokens of llama.cpp for a prompt of ids. Args: gguf path, ids JSON, count. */
const LLAMA_CPP_SCRIPT = `
import { getLlama } from "node-llama-cpp";
const [path, idsJson, count] = process.argv.slice(2);
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath: path });
const context = await model.createContext({ contextSize: 512, threads: 1 });
const ids = JSON.parse(idsJson);
const tokens = [];
for await (const token of context.getSequence().evaluate(ids, { temperature: 0 })) {
  tokens.push(token);
  if (tokens.length >= Number(count)) break;
}
await context.dispose();
const probe = await model.createContext({ contextSize: 512, threads: 1 });
const items = [...ids.slice(0, -1), [ids[ids.length - 1], { generateNext: { logits: true } }]];
const result = await probe.getSequence().controlledEvaluate(items);
const map = result[result.length - 1].next.logits;
const logits = new Array(map.size);
for (const [token, value] of map) logits[token] = value;
console.log(JSON.stringify({ tokens, logits }));
await probe.dispose();
await model.dispose();
`;

/** One type's comparison. */
export interface PeerRow {
  type: GgufConvertType;
  ours: number[];
  llamaCpp: number[];
  /** First index where the token lists differ, or -1. */
  firstDifference: number;
  /** dynllava's top logit minus its logit of llama.cpp's token at that step (NaN when equal throughout). */
  marginThere: number;
  /** Standard deviation of dynllava's logits at that step (the scale the margin compares to). */
  logitStd: number;
  /** dynllava's next-token logits NMSE against the F16 file's, at the prompt. */
  nmseVsF16: number;
  /** llama.cpp's next-token logits NMSE against dynllava's on the same file, at the prompt. */
  nmseLlamaCpp: number;
}

/** llama.cpp's greedy tokens and its next-token logits at the prompt, run by Node with `node-llama-cpp`. */
async function runLlamaCpp(
  path: string,
  ids: number[],
  options: { count: number; nodeModules: string },
): Promise<{ tokens: number[]; logits: number[] }> {
  const { count, nodeModules } = options;
  // A script file beside node_modules (node-llama-cpp's binary check re-runs Node, which `-e` breaks).
  const script = join(dirname(nodeModules), `.dynllava-peer-${Deno.pid}.mjs`);
  await Deno.writeTextFile(script, LLAMA_CPP_SCRIPT);
  const out = await new Deno.Command("node", {
    args: [script, path, JSON.stringify(ids), String(count)],
    cwd: dirname(nodeModules),
    stdout: "piped",
    stderr: "piped",
  }).output().finally(() => Deno.remove(script));
  if (out.code !== 0) throw new Error(`llama.cpp run failed: ${new TextDecoder().decode(out.stderr)}`);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

/**
 * Normalised mean squared error: mse(actual, expected) / mse(expected, 0).
 * @example
 * ```ts
 * import { nmse } from "./peer.ts";
 * console.log(nmse(new Float32Array([1, 2]), new Float32Array([1, 2]))); // 0
 * ```
 */
export function nmse(actual: Float32Array, expected: Float32Array): number {
  let err = 0, ref = 0;
  for (let i = 0; i < actual.length; i++) {
    err += (actual[i] - expected[i]) ** 2;
    ref += expected[i] ** 2;
  }
  return err / ref;
}

/**
 * Converts `model` to each type in a temporary folder and compares dynllava with llama.cpp.
 * @example
 * ```ts ignore
 * import { comparePeers } from "./peer.ts";
 * const rows = await comparePeers({ nodeModules: "/tmp/nlc/node_modules", tokens: 16 });
 * console.log(rows.map((r) => r.firstDifference));
 * ```
 */
export async function comparePeers(
  options: {
    nodeModules: string;
    model?: string;
    tokens?: number;
    backend?: "cpu" | "webgpu";
    /** Types compared after F16 (default Q8_0 and Q4_0; `q4_k_m` needs rows that are multiples of 256). */
    types?: GgufConvertType[];
  },
): Promise<PeerRow[]> {
  const source = options.model ?? await ensureFixture("llama-f16-gqa");
  const count = options.tokens ?? 32;
  const vocab = ggufVocabFromTokenizerJson(await Deno.readTextFile(join(source, "tokenizer.json")), source);
  const checkpoint = await openCheckpoint(source);
  const dir = await Deno.makeTempDir({ prefix: "peer-" });
  try {
    const rows: PeerRow[] = [];
    let f16Logits: Float32Array | undefined;
    for (const type of ["f16", ...(options.types ?? ["q8_0", "q4_0"])] as GgufConvertType[]) {
      const path = join(dir, type, `model-${type}.gguf`);
      await Deno.mkdir(dirname(path));
      await convertToGguf(checkpoint, path, { type, vocab });
      const model = await loadModel(path, { backend: options.backend ?? "cpu" });
      try {
        const ids = model.tokenizer.encode("Hello, how are you? Tell me about the weather today.");
        const ours =
          (await model.generate({ inputIds: ids, maxNewTokens: count, stop: [], policy: "dense" })).tokens;
        const peer = await runLlamaCpp(path, ids, { count, nodeModules: options.nodeModules });
        const llamaCpp = peer.tokens;
        const firstDifference = ours.findIndex((t, i) => t !== llamaCpp[i]);
        let marginThere = NaN, logitStd = NaN;
        if (firstDifference >= 0) {
          const logits = await model.logits({
            inputIds: [...ids, ...ours.slice(0, firstDifference)],
            policy: "dense",
          });
          marginThere = logits[ours[firstDifference]] - logits[llamaCpp[firstDifference]];
          const mean = logits.reduce((a, b) => a + b, 0) / logits.length;
          logitStd = Math.sqrt(logits.reduce((a, b) => a + (b - mean) ** 2, 0) / logits.length);
        }
        const logits = await model.logits({ inputIds: ids, policy: "dense" });
        f16Logits ??= logits;
        rows.push({
          type,
          ours,
          llamaCpp,
          firstDifference,
          marginThere,
          logitStd,
          nmseVsF16: nmse(logits, f16Logits),
          nmseLlamaCpp: nmse(Float32Array.from(peer.logits), logits),
        });
      } finally {
        model.dispose();
      }
    }
    return rows;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "node-modules": { type: "string" },
      model: { type: "string" },
      tokens: { type: "string", default: "32" },
      backend: { type: "string", default: "cpu" },
      types: { type: "string", default: "q8_0,q4_0" },
    },
  });
  if (!values["node-modules"]) {
    console.error(
      "usage: deno run -A examples/peer.ts --node-modules DIR/node_modules [--model DIR] [--tokens N]",
    );
    Deno.exit(2);
  }
  const rows = await comparePeers({
    nodeModules: values["node-modules"],
    model: values.model,
    tokens: Number(values.tokens),
    backend: values.backend as "cpu" | "webgpu",
    types: values.types.split(",") as GgufConvertType[],
  });
  console.log(
    "| type | tokens equal | first difference | margin there (logit std) | llama.cpp vs ours | ours vs F16 |",
  );
  console.log(
    "| ---- | ------------ | ---------------- | ------------------------ | ----------------- | ----------- |",
  );
  for (const r of rows) {
    const equal = r.firstDifference === -1 ? r.ours.length : r.firstDifference;
    const where = r.firstDifference === -1 ? "none" : `token ${r.firstDifference}`;
    const margin = Number.isNaN(r.marginThere)
      ? "–"
      : `${r.marginThere.toExponential(2)} (${r.logitStd.toExponential(2)})`;
    const errors = `${r.nmseLlamaCpp.toExponential(2)} | ${r.nmseVsF16.toExponential(2)}`;
    console.log(`| ${r.type} | ${equal}/${r.ours.length} | ${where} | ${margin} | ${errors} |`);
  }
}
