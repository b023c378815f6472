/**
 * What every script shares on the command line: one option table per script gives its `--help`
 * and its parsing; user mistakes end in one line on stderr (the stack only with `--debug`), named
 * by their flag; the backend is chosen (and the adapter named) the same way everywhere; loading
 * draws a progress bar on stderr.
 * @module
 */
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import { DynllavaError, GpuError, InputError, type LoadProgress } from "../mod.ts";

/** One flag. `value` names its argument in the help (string flags). */
export interface OptionSpec {
  type: "string" | "boolean";
  description: string;
  value?: string;
  default?: string | boolean;
  short?: string;
  multiple?: boolean;
}

/** A script: how it is started, what it does, its flags. */
export interface CommandSpec {
  usage: string;
  summary: string;
  options: Record<string, OptionSpec>;
  examples?: string[];
}

/** Flags every script has. */
const COMMON: Record<string, OptionSpec> = {
  help: { type: "boolean", short: "h", description: "show this help and exit" },
  debug: { type: "boolean", description: "print the stack trace of errors" },
};

/**
 * The `--help` text of a command, from its option table.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { helpText } from "./cli_options.ts";
 * const text = helpText({ usage: "deno task x", summary: "Does x.", options: {
 *   steps: { type: "string", value: "N", default: "4", description: "how many steps" } } });
 * assert.match(text, /--steps N\s+how many steps \(default 4\)/);
 * assert.match(text, /--help/);
 * ```
 */
export function helpText(command: CommandSpec): string {
  const rows = Object.entries({ ...command.options, ...COMMON }).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : "    "}--${name}${spec.value ? ` ${spec.value}` : ""}`;
    const fallback = spec.default !== undefined && spec.default !== false ? ` (default ${spec.default})` : "";
    return [flag, `${spec.description}${fallback}${spec.multiple ? " (repeatable)" : ""}`];
  });
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  const lines = [
    `Usage: ${command.usage}`,
    "",
    command.summary,
    "",
    "Options:",
    ...rows.map(([flag, text]) => `  ${flag.padEnd(width)}${text}`),
  ];
  if (command.examples?.length) lines.push("", "Examples:", ...command.examples.map((e) => `  ${e}`));
  return lines.join("\n");
}

/** Parsed flag values (strings, booleans, or string lists for repeatable flags). */
export type Flags = Record<string, string | boolean | string[] | undefined>;

/**
 * Parses `args` with the command's table; unknown flags and missing values become InputError
 * naming the flag. Positionals are refused.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseFlags } from "./cli_options.ts";
 * const spec = { usage: "x", summary: "x", options: { seed: { type: "string" as const, description: "s", default: "0" } } };
 * assert.equal(parseFlags(spec, ["--seed", "3"]).seed, "3");
 * assert.throws(() => parseFlags(spec, ["--sed", "3"]), /unknown option --sed/);
 * ```
 */
export function parseFlags(command: CommandSpec, args: string[]): Flags {
  const options: ParseArgsOptionsConfig = {};
  for (const [name, spec] of Object.entries({ ...command.options, ...COMMON })) {
    // parseArgs refuses keys whose value is undefined.
    const descriptor: ParseArgsOptionsConfig[string] = { type: spec.type };
    if (spec.short) descriptor.short = spec.short;
    if (spec.multiple) descriptor.multiple = true;
    if (spec.default !== undefined) descriptor.default = spec.default as string;
    options[name] = descriptor;
  }
  try {
    return parseArgs({
      args,
      options,
      strict: true,
      allowPositionals: false,
    })
      .values as Flags;
  } catch (err) {
    const message = (err as Error).message;
    const unknown = /Unknown option '([^']+)'/.exec(message);
    if (unknown) {
      throw new InputError(
        `Cannot read the command line: unknown option ${unknown[1]} (see --help)`,
        unknown[1],
      );
    }
    const flag = /'(-{1,2}[^' ]+)/.exec(message)?.[1] ?? "arguments";
    throw new InputError(`Cannot read the command line: ${message.split(".")[0]} (see --help)`, flag);
  }
}

/**
 * A numeric flag: undefined when absent, else a finite number within the given bounds.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { numberFlag } from "./cli_options.ts";
 * assert.equal(numberFlag({ seed: "7" }, "seed", { integer: true }), 7);
 * assert.throws(() => numberFlag({ seed: "x" }, "seed"), /--seed: "x" is not a number/);
 * ```
 */
export function numberFlag(
  flags: Flags,
  name: string,
  bounds: { integer?: boolean; min?: number; max?: number } = {},
): number | undefined {
  const text = flags[name];
  if (text === undefined) return undefined;
  const value = Number(text);
  if (typeof text !== "string" || text.trim() === "" || !Number.isFinite(value)) {
    throw new InputError(`Cannot read --${name}: ${JSON.stringify(text)} is not a number`, `--${name}`);
  }
  if (bounds.integer && !Number.isInteger(value)) {
    throw new InputError(`Cannot read --${name}: ${text} is not an integer`, `--${name}`);
  }
  if ((bounds.min !== undefined && value < bounds.min) || (bounds.max !== undefined && value > bounds.max)) {
    throw new InputError(
      `Cannot read --${name}: ${text} is outside ${bounds.min ?? "-∞"}..${bounds.max ?? "∞"}`,
      `--${name}`,
    );
  }
  return value;
}

/** The hint printed when no WebGPU adapter is found. */
export const NO_ADAPTER_HINT =
  "install a Vulkan driver (Mesa: `apt-get install mesa-vulkan-drivers`) for WebGPU, or run with --backend cpu";

/** The backend to load on, and the adapter found (null on the CPU). */
export interface BackendChoice {
  backend: "webgpu" | "cpu";
  adapter: { name: string; software: boolean } | null;
}

/**
 * Picks the backend from `--backend`: "cpu" as asked; "webgpu" needs an adapter (else GpuError
 * with the hint); absent, WebGPU when an adapter exists, else the CPU with a one-line notice.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { chooseBackend } from "./cli_options.ts";
 * assert.deepEqual(await chooseBackend("cpu"), { backend: "cpu", adapter: null });
 * ```
 */
export async function chooseBackend(
  flag: string | undefined,
  options: { notice?: (line: string) => void } = {},
): Promise<BackendChoice> {
  if (flag === "cpu") return { backend: "cpu", adapter: null };
  if (flag !== undefined && flag !== "webgpu") {
    throw new InputError(`Cannot start: --backend must be webgpu or cpu, got ${flag}`, "--backend");
  }
  const adapter = await (globalThis.navigator as Navigator | undefined)?.gpu?.requestAdapter();
  if (adapter) {
    const info = adapter.info;
    const name =
      [info?.vendor, info?.architecture, info?.device, info?.description].filter(Boolean).join(" ") ||
      "unknown adapter";
    const software = (info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter === true ||
      /llvmpipe|lavapipe|swiftshader|softpipe|warp/i.test(name);
    return { backend: "webgpu", adapter: { name, software } };
  }
  if (flag === "webgpu") {
    throw new GpuError(`Cannot open WebGPU: no adapter found; ${NO_ADAPTER_HINT}`, "--backend webgpu");
  }
  (options.notice ?? console.error)(`no WebGPU adapter found: running on the CPU (${NO_ADAPTER_HINT})`);
  return { backend: "cpu", adapter: null };
}

/**
 * One line naming where the model runs, e.g. `backend: webgpu on llvmpipe (software)`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { describeBackend } from "./cli_options.ts";
 * assert.equal(describeBackend({ backend: "cpu", adapter: null }), "backend: cpu (pure TypeScript)");
 * ```
 */
export function describeBackend(choice: BackendChoice): string {
  if (!choice.adapter) return "backend: cpu (pure TypeScript)";
  return `backend: webgpu on ${choice.adapter.name}${
    choice.adapter.software ? " (software)" : " (hardware)"
  }`;
}

/**
 * A loading progress bar on stderr (phase, bytes, redrawn when it grows), as an `onProgress`.
 * @example
 * ```ts
 * import { progressBar } from "./cli_options.ts";
 * const onProgress = progressBar({ write: () => {} });
 * onProgress({ phase: "weights", loadedBytes: 5, totalBytes: 10, item: "w" });
 * ```
 */
export function progressBar(
  options: { write?: (text: string) => void } = {},
): (progress: LoadProgress) => void {
  const write = options.write ?? ((text: string) => Deno.stderr.writeSync(new TextEncoder().encode(text)));
  let last = "";
  return (p) => {
    const width = 30, filled = Math.round((p.loadedBytes / Math.max(1, p.totalBytes)) * width);
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    const line = `${p.phase.padEnd(8)} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${
      mib(p.loadedBytes)
    }/${mib(p.totalBytes)} MiB`;
    const done = p.loadedBytes >= p.totalBytes;
    if (line === last && !done) return;
    last = line;
    write(`\r${line}${done ? "\n" : ""}`);
  };
}

/**
 * Runs a script's `main` with the shared conventions: `--help` prints the help, a user mistake
 * (any dynllava error) prints one line and exits 2, `--debug` adds the stack; other failures exit 1.
 * @example
 * ```ts
 * import { runCommand } from "./cli_options.ts";
 * // if (import.meta.main) await runCommand(COMMAND, Deno.args, main);
 * ```
 */
export async function runCommand(
  command: CommandSpec,
  args: string[],
  main: (flags: Flags, args: string[]) => Promise<void>,
): Promise<void> {
  const debug = args.includes("--debug");
  try {
    const flags = parseFlags(command, args);
    if (flags.help) {
      console.log(helpText(command));
      return;
    }
    await main(flags, args);
  } catch (err) {
    const known = err instanceof DynllavaError;
    const where = known && !err.message.includes(err.where) ? ` (${err.where})` : "";
    console.error(`error: ${(err as Error).message ?? err}${where}`);
    if (debug) console.error((err as Error).stack);
    else if (!known) console.error("(run with --debug for the stack trace)");
    Deno.exit(known ? 2 : 1);
  }
}
