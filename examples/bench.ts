/**
 * Benchmark script. `--cost-only` prints the cost model's estimate for a checkpoint's config.json
 * (no weights, no GPU): FLOPs by the paper's formula and exactly, and KV-cache bytes.
 *
 * ```sh
 * deno run -A examples/bench.ts --cost-only --config llava-v1.5-7b/config.json --policy dynamic \
 *   [--fastv-k K --fastv-r R] [--vision-keep N] [--new-tokens N] [--no-kv-cache] [--batch B] \
 *   [--prompt-tokens N] [--json]
 * ```
 *
 * The config may be a llava_llama config whose `mm_vision_tower` is a hub id: the image token
 * count is read from the id (patch14-336 → 576).
 * @module
 */
import { parseArgs } from "node:util";
import { type CostEstimate, type CostPlan, estimateCost } from "../runtime/cost.ts";
import { CheckpointError, DynllavaError, InputError } from "../runtime/errors.ts";

/** Command-line options of the bench script. */
export interface BenchArgs {
  /** Print the cost model's estimate instead of running a model. */
  costOnly: boolean;
  /** Path of the checkpoint's config.json. */
  configPath: string;
  /** The request to estimate or run. */
  plan: CostPlan;
  /** Print JSON instead of a table. */
  json: boolean;
}

function wholeNumber(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (value.trim() === "" || !Number.isInteger(parsed) || parsed < 0) {
    throw new InputError(`Cannot read ${flag}: expected a whole number ≥ 0, got "${value}"`, flag);
  }
  return parsed;
}

function decimal(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const parsed = Number(value);
  if (value.trim() === "" || !Number.isFinite(parsed)) {
    throw new InputError(`Cannot read ${flag}: expected a number, got "${value}"`, flag);
  }
  return parsed;
}

/**
 * Reads the bench script's command line.
 *
 * @example
 * ```ts
 * import { parseBenchArgs } from "./bench.ts";
 * const args = parseBenchArgs(["--cost-only", "--config", "config.json", "--policy", "fastv", "--fastv-k", "3"]);
 * console.log(args.plan.fastv?.k); // 3
 * ```
 */
export function parseBenchArgs(argv: string[]): BenchArgs {
  let values;
  try {
    values = parseArgs({
      args: argv,
      options: {
        "cost-only": { type: "boolean", default: false },
        config: { type: "string" },
        policy: { type: "string", default: "dense" },
        "fastv-k": { type: "string" },
        "fastv-r": { type: "string" },
        "vision-keep": { type: "string" },
        "new-tokens": { type: "string" },
        "no-kv-cache": { type: "boolean", default: false },
        batch: { type: "string" },
        "prompt-tokens": { type: "string" },
        json: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    throw new InputError(`Cannot read the command line: ${(error as Error).message}`, "argv");
  }
  if (values.config === undefined) {
    throw new InputError("Cannot run bench: --config FILE is required", "--config");
  }
  const policy = values.policy;
  if (policy !== "dense" && policy !== "fastv" && policy !== "dynamic") {
    throw new InputError(
      `Cannot read --policy: expected dense, fastv or dynamic, got "${policy}"`,
      "--policy",
    );
  }
  return {
    costOnly: values["cost-only"],
    configPath: values.config,
    json: values.json,
    plan: {
      policy,
      promptTokens: wholeNumber(values["prompt-tokens"], "--prompt-tokens"),
      newTokens: wholeNumber(values["new-tokens"], "--new-tokens"),
      kvCache: !values["no-kv-cache"],
      batch: wholeNumber(values.batch, "--batch"),
      fastv: { k: wholeNumber(values["fastv-k"], "--fastv-k"), r: decimal(values["fastv-r"], "--fastv-r") },
      dynamic: { visionKeep: wholeNumber(values["vision-keep"], "--vision-keep") },
    },
  };
}

/**
 * Estimates the cost of `plan` for the config.json at `configPath` (no weights are read).
 *
 * @example
 * ```ts
 * import { runCostOnly } from "./bench.ts";
 * const url = new URL("../tests/fixtures/configs/llava-v1.5-7b.json", import.meta.url);
 * const estimate = await runCostOnly(url.pathname, { policy: "dense" });
 * console.log(estimate.prefill.tflopsPaper.toFixed(1)); // "10.1"
 * ```
 */
export async function runCostOnly(configPath: string, plan: CostPlan): Promise<CostEstimate> {
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(configPath));
  } catch (error) {
    throw new CheckpointError(`Cannot read config: ${(error as Error).message}`, configPath);
  }
  return estimateCost(raw, plan);
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/**
 * Formats a cost estimate as a plain-text table.
 *
 * @example
 * ```ts
 * import { formatCostTable } from "./bench.ts";
 * import { estimateCost } from "../runtime/cost.ts";
 * const config = {
 *   model_type: "llama", hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 2,
 * };
 * console.log(formatCostTable(estimateCost(config, { policy: "dense", newTokens: 4 })));
 * ```
 */
export function formatCostTable(estimate: CostEstimate): string {
  const plan = estimate.plan;
  const lines = [
    `policy ${plan.policy}, ${plan.kvCache ? "KV cache" : "no KV cache"}, batch ${plan.batch}`,
    `prompt: ${plan.promptTokens} text + ${plan.images} × ${plan.imageTokens} image tokens, ` +
    `${plan.visualKept} image tokens kept per image from layer ${plan.pruneLayer}`,
    `generated tokens: ${plan.newTokens} (${estimate.decode.steps} decode steps)`,
    "",
    "phase      TFLOPs (paper)  TFLOPs (exact)  predictor GFLOPs",
  ];
  for (
    const [name, phase] of Object.entries({
      prefill: estimate.prefill,
      decode: estimate.decode,
      total: estimate.total,
    })
  ) {
    lines.push(
      `${name.padEnd(9)}  ${phase.tflopsPaper.toFixed(3).padStart(14)}  ${
        phase.tflopsExact.toFixed(3).padStart(14)
      }` +
        `  ${(phase.predictorFlops / 1e9).toFixed(3).padStart(16)}`,
    );
  }
  lines.push(
    "",
    `KV cache at the end: ${mib(estimate.kv.bytes)}, peak ${mib(estimate.kv.peakBytes)}`,
    `decode rows computed: ${estimate.decode.tokensComputed}`,
  );
  return lines.join("\n");
}

async function main(argv: string[]): Promise<void> {
  const args = parseBenchArgs(argv);
  if (!args.costOnly) {
    throw new InputError("Cannot run bench: only --cost-only is available", "--cost-only");
  }
  const estimate = await runCostOnly(args.configPath, args.plan);
  console.log(args.json ? JSON.stringify(estimate, null, 2) : formatCostTable(estimate));
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    if (!(error instanceof DynllavaError)) throw error;
    console.error(`error: ${error.message} (${error.where})`);
    Deno.exit(2);
  }
}
