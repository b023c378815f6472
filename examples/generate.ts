/**
 * Command-line generation (`deno task generate --help`): streams text from a checkpoint, with an
 * image or video, under a sparsification policy, and prints a one-line saving summary.
 * `--demo` runs it on the embedded demo checkpoint and its sample scene.
 * @module
 */
import {
  densePolicy,
  dynamicPolicy,
  fastvPolicy,
  ImageError,
  InputError,
  loadModel,
  type Policy,
  validateRequest,
} from "../mod.ts";
import {
  chooseBackend,
  type CommandSpec,
  describeBackend,
  type Flags,
  numberFlag,
  progressBar,
  runCommand,
} from "./cli_options.ts";

/** The command line of the script. */
export const GENERATE_COMMAND: CommandSpec = {
  usage:
    "deno task generate (--model DIR|URL | --demo) [--prompt TEXT] [--image FILE | --video FILE] [options]",
  summary:
    "Streams an answer from a checkpoint and prints what Dynamic-LLaVA saved (visual tokens, KV rows).",
  options: {
    model: { type: "string", value: "DIR|URL", description: "checkpoint directory, file: or http(s): URL" },
    demo: {
      type: "boolean",
      description: "use the bundled demo checkpoint (trained on the shapes task) and its sample scene",
    },
    prompt: {
      type: "string",
      value: "TEXT",
      default: "Describe the image in detail.",
      description: "the question",
    },
    image: { type: "string", value: "FILE", description: "an image (png, jpeg, webp, gif, bmp)" },
    video: {
      type: "string",
      value: "FILE",
      description: "a video; --frames evenly spaced frames are the images",
    },
    frames: { type: "string", value: "N", default: "4", description: "frames taken from --video" },
    "max-new-tokens": { type: "string", value: "N", default: "64", description: "most tokens to generate" },
    temperature: {
      type: "string",
      value: "T",
      default: "0",
      description: "sampling temperature (0: greedy)",
    },
    "top-p": { type: "string", value: "P", default: "1", description: "nucleus sampling mass" },
    seed: { type: "string", value: "S", default: "0", description: "sampling seed" },
    backend: {
      type: "string",
      value: "webgpu|cpu",
      description: "compute backend (default: webgpu when an adapter exists, else cpu)",
    },
    policy: {
      type: "string",
      value: "NAME",
      description:
        "dense, dynamic or fastv (default: dynamic when the checkpoint has predictors, else dense)",
    },
    "no-kv-cache": { type: "boolean", description: "the paper's no-cache decoding (recompute each step)" },
    "vision-keep": { type: "string", value: "N", description: "image tokens kept (--policy dynamic)" },
    "fastv-k": { type: "string", value: "K", description: "FastV pruning layer (--policy fastv)" },
    "fastv-r": {
      type: "string",
      value: "R",
      description: "FastV share of image tokens dropped (--policy fastv)",
    },
    json: { type: "boolean", description: "print the whole result as JSON instead of streaming" },
  },
  examples: [
    "deno task generate --demo --prompt 'Describe the image in detail.'",
    "deno task generate --model ./llava-v1.5-7b --image cat.jpg --prompt 'What is it?'",
    "deno task generate --demo --backend cpu --policy fastv --fastv-k 2 --fastv-r 0.5 --json",
  ],
};

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

/** Reads a file named on the command line; a missing or unreadable one is the user's mistake. */
async function readInput(path: string, flag: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (err) {
    throw new ImageError(`Cannot read ${flag} ${path}: ${(err as Error).message.split(":")[0]}`, flag);
  }
}

/** The demo's sample scene (assets/demo/sample.png), used when the demo runs without --image. */
async function demoImage(): Promise<Uint8Array> {
  const response = await fetch(new URL("../assets/demo/sample.png", import.meta.url));
  return new Uint8Array(await response.arrayBuffer());
}

async function main(values: Flags): Promise<void> {
  const modelPath = (values.model as string | undefined) ??
    (values.demo ? new URL("../assets/demo/", import.meta.url) : undefined);
  if (!modelPath) throw new InputError("Cannot start: give --model DIR, or --demo", "--model");
  const choice = await chooseBackend(values.backend as string | undefined);
  const backend = choice.backend;
  const policyName = values.policy as string | undefined;
  const policy = policyName === undefined && values["vision-keep"] === undefined &&
      values["fastv-k"] === undefined && values["fastv-r"] === undefined
    ? undefined
    : policyFrom(policyName ?? "dynamic", {
      visionKeep: numberFlag(values, "vision-keep"),
      fastvK: numberFlag(values, "fastv-k"),
      fastvR: numberFlag(values, "fastv-r"),
    });
  const frames = numberFlag(values, "frames", { integer: true, min: 1 })!;
  const sampling = {
    maxNewTokens: numberFlag(values, "max-new-tokens", { integer: true, min: 0 }),
    temperature: numberFlag(values, "temperature", { min: 0 }),
    topP: numberFlag(values, "top-p", { min: 0, max: 1 }),
    seed: numberFlag(values, "seed", { integer: true }),
  };
  // The same checks as generate(), before the model is loaded (a bad flag fails at once).
  validateRequest({ prompt: values.prompt ?? "", ...sampling }, "flags");
  const image = values.image
    ? await readInput(values.image as string, "--image")
    : values.demo && !values.video
    ? await demoImage()
    : undefined;
  const video = values.video
    ? { data: await readInput(values.video as string, "--video"), frames }
    : undefined;
  if (!values.json) console.error(describeBackend(choice));
  const model = await loadModel(modelPath, { backend, onProgress: values.json ? undefined : progressBar() });
  try {
    const run = model.generate({
      prompt: values.prompt as string,
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
      `[${backend} ${policyName ?? model.defaultPolicy}${
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

if (import.meta.main) await runCommand(GENERATE_COMMAND, Deno.args, main);
