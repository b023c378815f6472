/**
 * Speed side by side with llama.cpp on the same weights and machine: converts a checkpoint to GGUF
 * (F16 and the quantized types asked for, with `convertToGguf`), then runs each runtime in its own
 * process on the same prompt of ids (greedy, batch 1, KV cache on, dense): llama.cpp through the npm
 * package `node-llama-cpp` (its prebuilt CPU binaries, run by Node) and dynllava from the same GGUF
 * file on each backend asked for. Prints load ms, prefill ms, decode tokens/s and peak resident
 * memory per runtime and type, medians over the repeats with min–max, and each dynllava row's ratio
 * to llama.cpp on the same file.
 *
 *   npm install --prefix DIR node-llama-cpp@3.22.1      (once; Node ≥ 20)
 *   deno run -A examples/peer_speed.ts --node-modules DIR/node_modules --model DIR [--types f16,q8_0]
 *     [--backends webgpu,cpu] [--prompt 128] [--tokens 64] [--repeat 3] [--threads 2] [--out DIR]
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { loadModel } from "../mod.ts";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import {
  convertToGguf,
  type GgufConvertType,
  ggufVocabFromTokenizerJson,
} from "../runtime/io/gguf_convert.ts";

/** What one run of one runtime measured (times in ms, memory in bytes). */
export interface SpeedSample {
  loadMs: number;
  prefillMs: number;
  decodeTokensPerSecond: number;
  peakRssBytes: number;
}

/** Node script: llama.cpp's timings. Args: gguf path, ids JSON, new tokens, threads. */
const LLAMA_CPP_SCRIPT = `
import { readFileSync } from "node:fs";
import { getLlama } from "node-llama-cpp";
const [path, idsJson, count, threads] = process.argv.slice(2);
const ids = JSON.parse(idsJson);
let t = performance.now();
const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
const model = await llama.loadModel({ modelPath: path });
const context = await model.createContext({ contextSize: 1024, threads: Number(threads), batchSize: 512 });
const loadMs = performance.now() - t;
const sequence = context.getSequence();
t = performance.now();
await sequence.evaluateWithoutGeneratingNewTokens(ids.slice(0, -1));
let first = 0, n = 0, decodeStart = 0;
for await (const token of sequence.evaluate([ids[ids.length - 1]], { temperature: 0 })) {
  if (n === 0) { first = performance.now() - t; decodeStart = performance.now(); }
  n++;
  if (n >= Number(count)) break;
}
const decodeMs = performance.now() - decodeStart;
const hwm = /VmHWM:\\s+(\\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
console.log(JSON.stringify({
  loadMs, prefillMs: first, decodeTokensPerSecond: (n - 1) / (decodeMs / 1000),
  peakRssBytes: hwm ? Number(hwm[1]) * 1024 : 0,
}));
await context.dispose();
await model.dispose();
`;

/** Peak resident memory of this process (VmHWM), or 0 where /proc is missing. */
function peakRss(): number {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** dynllava's timings for one file and backend, in this process (the `--worker` mode). */
async function dynllavaSample(
  path: string,
  backend: "cpu" | "webgpu",
  ids: number[],
  tokens: number,
): Promise<SpeedSample> {
  const started = performance.now();
  const model = await loadModel(path, { backend });
  const loadMs = performance.now() - started;
  try {
    const result = await model.generate({ inputIds: ids, maxNewTokens: tokens, stop: [], policy: "dense" });
    return {
      loadMs,
      prefillMs: result.stats.prefillMs,
      decodeTokensPerSecond: result.stats.tokensPerSecond,
      peakRssBytes: peakRss(),
    };
  } finally {
    model.dispose();
  }
}

/** Runs a command, returning the JSON its last stdout line holds. */
async function runJson(
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<SpeedSample> {
  const output = await new Deno.Command(command, { args, env, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(output.stdout).trim();
  if (!output.success) {
    throw new Error(`${command} failed: ${new TextDecoder().decode(output.stderr).slice(-2000)}`);
  }
  return JSON.parse(text.split("\n").at(-1)!);
}

/** Median, min and max of the values. */
function spread(values: number[]): { median: number; min: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted.at(-1)! };
}

function cell(values: number[], digits: number): string {
  const { median, min, max } = spread(values);
  return `${median.toFixed(digits)} (${min.toFixed(digits)}–${max.toFixed(digits)})`;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      "node-modules": { type: "string" },
      model: { type: "string" },
      types: { type: "string", default: "f16" },
      backends: { type: "string", default: "webgpu,cpu" },
      prompt: { type: "string", default: "128" },
      tokens: { type: "string", default: "64" },
      repeat: { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      out: { type: "string", default: "peer-out" },
      worker: { type: "string" },
      backend: { type: "string" },
      ids: { type: "string" },
    },
  });
  if (values.worker) {
    const ids = JSON.parse(values.ids!) as number[];
    const sample = await dynllavaSample(
      values.worker,
      values.backend as "cpu" | "webgpu",
      ids,
      Number(values.tokens),
    );
    console.log(JSON.stringify(sample));
    Deno.exit(0);
  }
  if (!values["node-modules"] || !values.model) {
    console.error(
      "usage: deno run -A examples/peer_speed.ts --node-modules DIR/node_modules --model DIR [options]",
    );
    Deno.exit(2);
  }
  const types = values.types.split(",") as GgufConvertType[];
  const backends = values.backends.split(",") as ("cpu" | "webgpu")[];
  const [promptLength, tokens, repeat] = [
    Number(values.prompt),
    Number(values.tokens),
    Number(values.repeat),
  ];
  await Deno.mkdir(values.out, { recursive: true });
  const checkpoint = await openCheckpoint(values.model);
  const vocab = ggufVocabFromTokenizerJson(
    await Deno.readTextFile(join(values.model, "tokenizer.json")),
    values.model,
  );
  // A fixed prompt of ordinary vocabulary ids after <s> (a seeded LCG: the same for every runtime).
  let state = 12345;
  const ids = [
    1,
    ...Array.from({ length: promptLength - 1 }, () => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return 300 + (state % 20000);
    }),
  ];
  const script = join(values.out, "llama_cpp_speed.mjs");
  await Deno.writeTextFile(script, LLAMA_CPP_SCRIPT);
  const nodePath = { NODE_PATH: values["node-modules"] };
  await Deno.symlink(values["node-modules"], join(values.out, "node_modules")).catch(() => {});
  const rows: { runtime: string; type: string; samples: SpeedSample[] }[] = [];
  for (const type of types) {
    const file = join(values.out, `model-${type}.gguf`);
    try {
      await Deno.stat(file);
    } catch {
      await convertToGguf(checkpoint, file, { type, vocab });
    }
    const runs: Record<string, SpeedSample[]> = { "llama.cpp CPU": [] };
    for (const backend of backends) runs[`dynllava ${backend === "cpu" ? "CPU" : "WebGPU"}`] = [];
    // Interleaved repeats: a slow moment of the machine hits every runtime alike.
    for (let r = 0; r < repeat; r++) {
      runs["llama.cpp CPU"].push(
        await runJson("node", [script, file, JSON.stringify(ids), String(tokens), values.threads], nodePath),
      );
      for (const backend of backends) {
        runs[`dynllava ${backend === "cpu" ? "CPU" : "WebGPU"}`].push(
          await runJson(Deno.execPath(), [
            "run",
            "-A",
            new URL(import.meta.url).pathname,
            "--worker",
            file,
            "--backend",
            backend,
            "--ids",
            JSON.stringify(ids),
            "--tokens",
            String(tokens),
          ]),
        );
      }
    }
    for (const [runtime, samples] of Object.entries(runs)) rows.push({ runtime, type, samples });
  }
  console.log(
    `prompt ${promptLength} ids, ${tokens} new tokens, greedy, batch 1, KV cache, dense; ${repeat} runs each, ` +
      `median (min–max); llama.cpp with ${values.threads} threads`,
  );
  console.log("");
  console.log(
    "| runtime | weights | decode tok/s | prefill ms | load ms | peak RSS MiB | decode vs llama.cpp | prefill vs llama.cpp |",
  );
  console.log("|---|---|---:|---:|---:|---:|---:|---:|");
  for (const row of rows) {
    const peer = rows.find((r) => r.type === row.type && r.runtime === "llama.cpp CPU")!;
    const median = (samples: SpeedSample[], key: keyof SpeedSample) =>
      spread(samples.map((s) => s[key])).median;
    const isPeer = row === peer;
    const decodeRatio = median(row.samples, "decodeTokensPerSecond") /
      median(peer.samples, "decodeTokensPerSecond");
    const prefillRatio = median(row.samples, "prefillMs") / median(peer.samples, "prefillMs");
    console.log(
      `| ${row.runtime} | ${row.type.toUpperCase()} | ${
        cell(row.samples.map((s) => s.decodeTokensPerSecond), 1)
      } | ` +
        `${cell(row.samples.map((s) => s.prefillMs), 0)} | ${cell(row.samples.map((s) => s.loadMs), 0)} | ` +
        `${(median(row.samples, "peakRssBytes") / 2 ** 20).toFixed(0)} | ` +
        `${isPeer ? "–" : `×${decodeRatio.toFixed(2)}`} | ${isPeer ? "–" : `×${prefillRatio.toFixed(1)}`} |`,
    );
  }
  await Deno.writeTextFile(join(values.out, "peer_speed.json"), JSON.stringify(rows, null, 2));
}
