/**
 * Command-line generation: streams text from a checkpoint, with an image or video, under a
 * sparsification policy, and prints a one-line saving summary.
 *
 *   deno run -A examples/generate.ts --model DIR --prompt TEXT [--image FILE | --video FILE --frames N]
 *     [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S] [--backend webgpu|cpu]
 *     [--policy dense|dynamic|fastv] [--no-kv-cache] [--vision-keep N] [--fastv-k K --fastv-r R] [--json]
 *   deno run -A examples/generate.ts --demo     (the embedded demo checkpoint and its sample scene)
 * @module
 */
import { parseArgs } from "node:util";
import {
  densePolicy,
  dynamicPolicy,
  DynllavaError,
  fastvPolicy,
  InputError,
  loadModel,
  type Policy,
} from "../mod.ts";

/** Builds the policy the flags ask for. */
function policyFrom(
  name: string,
  options: { visionKeep?: number; fastvK?: number; fastvR?: number },
): Policy {
  if (options.visionKeep !== undefined && name !== "dynamic") {
    throw new InputError(
      "Cannot build the policy: --vision-keep applies to --policy dynamic only",
      "--vision-keep",
    );
  }
  if ((options.fastvK !== undefined || options.fastvR !== undefined) && name !== "fastv") {
    throw new InputError(
      "Cannot build the policy: --fastv-k and --fastv-r apply to --policy fastv only",
      "--fastv-k",
    );
  }
  if (name === "dynamic") return dynamicPolicy({ visionKeep: options.visionKeep });
  if (name === "fastv") return fastvPolicy({ k: options.fastvK, r: options.fastvR });
  if (name === "dense") return densePolicy();
  throw new InputError(
    `Cannot build the policy: unknown --policy ${name} (dense, dynamic or fastv)`,
    "--policy",
  );
}

/** Reads a numeric flag; undefined when absent. */
function numberFlag(values: Record<string, unknown>, name: string): number | undefined {
  const text = values[name];
  if (text === undefined) return undefined;
  const value = Number(text);
  if (typeof text !== "string" || text.trim() === "" || !Number.isFinite(value)) {
    throw new InputError(`Cannot read --${name}: ${JSON.stringify(text)} is not a number`, `--${name}`);
  }
  return value;
}

/** The demo's sample scene (assets/demo/sample.png), used when the demo runs without --image. */
async function demoImage(): Promise<Uint8Array> {
  const response = await fetch(new URL("../assets/demo/sample.png", import.meta.url));
  return new Uint8Array(await response.arrayBuffer());
}

let lastFilled = -1;

/** Draws a progress bar on stderr (redrawn only when it grows). */
function progressBar(loaded: number, total: number): void {
  const width = 30, filled = Math.round((loaded / Math.max(1, total)) * width);
  if (filled === lastFilled && loaded < total) return;
  lastFilled = filled;
  const text = `\rloading [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${
    (loaded / 2 ** 20).toFixed(1)
  }/${(total / 2 ** 20).toFixed(1)} MiB`;
  Deno.stderr.writeSync(new TextEncoder().encode(text + (loaded >= total ? "\n" : "")));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      demo: { type: "boolean", default: false },
      prompt: { type: "string" },
      image: { type: "string" },
      video: { type: "string" },
      frames: { type: "string", default: "4" },
      "max-new-tokens": { type: "string", default: "64" },
      temperature: { type: "string", default: "0" },
      "top-p": { type: "string", default: "1" },
      seed: { type: "string", default: "0" },
      backend: { type: "string", default: "webgpu" },
      policy: { type: "string", default: "dynamic" },
      "no-kv-cache": { type: "boolean", default: false },
      "vision-keep": { type: "string" },
      "fastv-k": { type: "string" },
      "fastv-r": { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const modelPath = values.model ?? (values.demo ? new URL("../assets/demo/", import.meta.url) : undefined);
  if (!modelPath) throw new InputError("Cannot start: give --model DIR, or --demo", "--model");
  const backend = values.backend;
  if (backend !== "cpu" && backend !== "webgpu") {
    throw new InputError(`Cannot start: --backend must be webgpu or cpu, got ${backend}`, "--backend");
  }
  const policy = policyFrom(values.policy, {
    visionKeep: numberFlag(values, "vision-keep"),
    fastvK: numberFlag(values, "fastv-k"),
    fastvR: numberFlag(values, "fastv-r"),
  });
  const frames = numberFlag(values, "frames")!;
  const sampling = {
    maxNewTokens: numberFlag(values, "max-new-tokens"),
    temperature: numberFlag(values, "temperature"),
    topP: numberFlag(values, "top-p"),
    seed: numberFlag(values, "seed"),
  };
  const model = await loadModel(modelPath, {
    backend,
    onProgress: values.json ? undefined : (p) => progressBar(p.loadedBytes, p.totalBytes),
  });
  try {
    const image = values.image
      ? await Deno.readFile(values.image)
      : values.demo && !values.video && model.config.vision
      ? await demoImage()
      : undefined;
    const video = values.video ? { data: await Deno.readFile(values.video), frames } : undefined;
    const run = model.generate({
      prompt: values.prompt ?? "Describe the image in detail.",
      image,
      video,
      ...sampling,
      policy,
      kvCache: !values["no-kv-cache"],
    });
    if (!values.json) {
      for await (const event of run) Deno.stdout.writeSync(new TextEncoder().encode(event.text));
      console.log();
    }
    const result = await run;
    if (values.json) {
      console.log(JSON.stringify(result, null, 2));
      return;
    }
    const s = result.stats;
    const layers = s.kvCache.rowsPerLayer.length;
    const denseRows = layers * (s.promptTokens + Math.max(0, s.newTokens - 1));
    const heldRows = s.kvCache.rowsPerLayer.reduce((a, b) => a + b, 0);
    const kept = s.visualKeptCount === null
      ? `${s.visualTokens}/${s.visualTokens}`
      : `${s.visualKeptCount}/${s.visualTokens}`;
    console.log(
      `[${backend} ${values.policy}${
        values["no-kv-cache"] ? " no-cache" : ""
      }] visual tokens kept ${kept}; ` +
        (values["no-kv-cache"]
          ? `output tokens kept in context ${s.admittedCount}/${Math.max(0, s.newTokens - 1)}; `
          : `KV rows ${heldRows} vs dense ${denseRows} (${
            (100 * heldRows / Math.max(1, denseRows)).toFixed(1)
          }%), ` +
            `${(s.kvCache.bytes / 1024).toFixed(1)} KiB; `) +
        `${s.newTokens} tokens, prefill ${s.prefillMs.toFixed(0)} ms, ${s.tokensPerSecond.toFixed(1)} tok/s`,
    );
  } finally {
    model.dispose();
  }
}

if (import.meta.main) {
  try {
    await main();
  } catch (err) {
    if (!(err instanceof DynllavaError)) throw err;
    console.error(`${err.name}: ${err.message} (${err.where})`);
    Deno.exit(2);
  }
}
