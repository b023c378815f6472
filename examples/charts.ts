/**
 * Charts and tables of benchmark results, drawn as SVG with Vega-Lite + Vega (headless: no browser,
 * no canvas; text widths are estimated).
 *
 * - {@link renderBenchCharts}: from measured {@link BenchRow}s, (a) decode FLOPs without KV cache
 *   vs output tokens, (b) KV-cache memory with KV cache vs output tokens (together the paper's
 *   Figure 1), (c) decode ms per token vs output tokens, per policy and KV mode.
 * - {@link renderCostCharts}: (a) and (b) from the cost model alone (no weights, no GPU).
 * - {@link benchMarkdown}: the rows as a markdown table.
 *
 * ```sh
 * deno run -A examples/charts.ts --config llava-v1.5-7b/config.json --out charts/   # cost model
 * deno run -A examples/charts.ts --rows bench-rows.json --out charts/               # bench results
 * ```
 * @module
 */
import { join } from "node:path";
// deno-lint-ignore no-import-prefix
import * as vegaLite from "npm:vega-lite@6.5.0";
// deno-lint-ignore no-import-prefix
import * as vega from "npm:vega@6.4.0";
import { type CostPlan, estimateCost } from "../runtime/core/cost.ts";
import type { ModelConfig } from "../runtime/core/config.ts";
import { InputError } from "../runtime/core/errors.ts";
import { type CommandSpec, type Flags, runCommand } from "./cli_options.ts";

/** The command line of the script. */
export const CHARTS_COMMAND: CommandSpec = {
  usage: "deno task charts (--config FILE | --rows FILE) [--out DIR]",
  summary:
    "Draws the paper's Figure 1 (decode FLOPs without KV cache, KV memory with it, vs output length) as SVG:\n" +
    "from a checkpoint's config.json alone (cost model), or from a saved bench.json.",
  options: {
    config: { type: "string", value: "FILE", description: "config.json to chart with the cost model" },
    rows: { type: "string", value: "FILE", description: "bench.json (or a JSON array of rows) to redraw" },
    out: { type: "string", value: "DIR", default: "charts", description: "where the SVGs go" },
  },
  examples: ["deno task charts --config tests/fixtures/configs/llava-v1.5-7b.json --out charts"],
};

/** Median, minimum and maximum of repeated measurements. */
export interface Stat {
  median: number;
  min: number;
  max: number;
}

/** One benchmark configuration's results (FLOPs and bytes cover the whole batch). */
export interface BenchRow {
  policy: string;
  kvCache: boolean;
  newTokens: number;
  batch: number;
  prefillMs: Stat;
  decodeMsPerToken: Stat;
  tokensPerSecond: Stat;
  kvBytesPeak: number;
  gpuBytesPeak: number;
  flopsPaper: { prefill: number; decode: number };
  flopsExact: { prefill: number; decode: number };
  tokensComputed: number;
  visualKept: number;
  visualTokens: number;
}

/** One point of a line chart; `low`/`high` draw an error bar. */
interface ChartPoint {
  series: string;
  x: number;
  y: number;
  low?: number;
  high?: number;
}

interface ChartText {
  title: string;
  xTitle: string;
  yTitle: string;
  seriesTitle: string;
}

const POLICY_LABELS: Record<string, string> = { dense: "Dense", fastv: "FastV", dynamic: "Dynamic-LLaVA" };
const POLICY_ORDER = ["dense", "fastv", "dynamic"];
const MIB = 2 ** 20;

/** File names of the charts, (a), (b), (c). */
const FILES = {
  flops: "decode-flops-no-kv-cache.svg",
  kv: "kv-cache-memory.svg",
  latency: "decode-ms-per-token.svg",
};

function policyLabel(policy: string): string {
  return POLICY_LABELS[policy] ?? policy;
}

function byPolicy(a: string, b: string): number {
  const rank = (policy: string) => {
    const index = POLICY_ORDER.indexOf(policy);
    return index < 0 ? POLICY_ORDER.length : index;
  };
  return rank(a) - rank(b) || a.localeCompare(b);
}

function lineChartSpec(points: ChartPoint[], seriesOrder: string[], text: ChartText): vegaLite.TopLevelSpec {
  const x = { field: "x", type: "quantitative", title: text.xTitle } as const;
  const color = {
    field: "series",
    type: "nominal",
    title: text.seriesTitle,
    sort: seriesOrder,
    legend: { labelLimit: 400 },
  } as const;
  const hasRange = points.some((point) => point.low !== undefined);
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: text.title,
    width: 480,
    height: 300,
    data: { values: points },
    layer: [
      {
        mark: { type: "line", point: true },
        encoding: { x, y: { field: "y", type: "quantitative", title: text.yTitle }, color },
      },
      ...(hasRange
        ? [
          {
            mark: { type: "errorbar", ticks: true },
            encoding: {
              x,
              y: { field: "low", type: "quantitative", title: text.yTitle },
              y2: { field: "high" },
              color,
            },
          } as const,
        ]
        : []),
    ],
  };
}

async function writeChart(spec: vegaLite.TopLevelSpec, path: string): Promise<string> {
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: "none" });
  try {
    await Deno.writeTextFile(path, await view.toSVG());
  } finally {
    view.finalize();
  }
  return path;
}

function seriesOrder(points: ChartPoint[]): string[] {
  return [...new Set(points.map((point) => point.series))];
}

function flopsText(): ChartText {
  return {
    title: "Decode FLOPs without KV cache",
    xTitle: "Output tokens",
    yTitle: "Decode TFLOPs (exact)",
    seriesTitle: "Policy",
  };
}

function kvText(): ChartText {
  return {
    title: "KV-cache memory with KV cache",
    xTitle: "Output tokens",
    yTitle: "KV cache peak (MiB)",
    seriesTitle: "Policy",
  };
}

/**
 * Draws bench results as SVG files in `outDir`: (a) `decode-flops-no-kv-cache.svg`,
 * (b) `kv-cache-memory.svg`, (c) `decode-ms-per-token.svg`. A chart whose rows are absent (no
 * no-cache rows for (a), no KV-cache rows for (b)) is not written. Returns the paths written.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderBenchCharts } from "./charts.ts";
 * const stat = (median: number) => ({ median, min: median, max: median });
 * const row = (policy: string, newTokens: number) => ({
 *   policy, kvCache: true, newTokens, batch: 1, prefillMs: stat(90), decodeMsPerToken: stat(20),
 *   tokensPerSecond: stat(50), kvBytesPeak: (624 + newTokens) * 2 ** 19, gpuBytesPeak: 2 ** 30,
 *   flopsPaper: { prefill: 10e12, decode: 1e12 }, flopsExact: { prefill: 10e12, decode: 1e12 },
 *   tokensComputed: 32 * newTokens, visualKept: 576, visualTokens: 576,
 * });
 * const outDir = await Deno.makeTempDir();
 * const files = await renderBenchCharts([row("dense", 16), row("dense", 64)], outDir);
 * assert.deepEqual(files.map((file) => file.slice(outDir.length + 1)), ["kv-cache-memory.svg", "decode-ms-per-token.svg"]);
 * assert.match(await Deno.readTextFile(files[0]), /^<svg/);
 * await Deno.remove(outDir, { recursive: true });
 * ```
 */
export async function renderBenchCharts(rows: BenchRow[], outDir: string): Promise<string[]> {
  const sorted = [...rows].sort((a, b) =>
    byPolicy(a.policy, b.policy) || Number(b.kvCache) - Number(a.kvCache) || a.batch - b.batch
  );
  const batches = new Set(rows.map((row) => row.batch));
  const label = (row: BenchRow) =>
    policyLabel(row.policy) + (batches.size > 1 ? ` (batch ${row.batch})` : "");
  await Deno.mkdir(outDir, { recursive: true });
  const written: string[] = [];

  const flopsPoints = sorted.filter((row) => !row.kvCache).map((row) => ({
    series: label(row),
    x: row.newTokens,
    y: row.flopsExact.decode / 1e12,
  }));
  if (flopsPoints.length > 0) {
    const spec = lineChartSpec(flopsPoints, seriesOrder(flopsPoints), flopsText());
    written.push(await writeChart(spec, join(outDir, FILES.flops)));
  }

  const kvPoints = sorted.filter((row) => row.kvCache).map((row) => ({
    series: label(row),
    x: row.newTokens,
    y: row.kvBytesPeak / MIB,
  }));
  if (kvPoints.length > 0) {
    const spec = lineChartSpec(kvPoints, seriesOrder(kvPoints), kvText());
    written.push(await writeChart(spec, join(outDir, FILES.kv)));
  }

  const latencyPoints = sorted.map((row) => ({
    series: `${label(row)}, ${row.kvCache ? "KV cache" : "no KV cache"}`,
    x: row.newTokens,
    y: row.decodeMsPerToken.median,
    low: row.decodeMsPerToken.min,
    high: row.decodeMsPerToken.max,
  }));
  if (latencyPoints.length > 0) {
    const spec = lineChartSpec(latencyPoints, seriesOrder(latencyPoints), {
      title: "Decode time per token",
      xTitle: "Output tokens",
      yTitle: "Decode ms per token (median, min-max)",
      seriesTitle: "Policy, KV mode",
    });
    written.push(await writeChart(spec, join(outDir, FILES.latency)));
  }
  return written;
}

/** Options of {@link renderCostCharts}: the request to estimate, at several output lengths. */
export interface CostChartOptions {
  /** Output lengths to plot (default 1, 64, 128, …, 1024). */
  newTokens?: number[];
  promptTokens?: CostPlan["promptTokens"];
  batch?: CostPlan["batch"];
  fastv?: CostPlan["fastv"];
  dynamic?: CostPlan["dynamic"];
  bytesPerElement?: CostPlan["bytesPerElement"];
}

/**
 * Draws (a) decode FLOPs without KV cache and (b) KV-cache memory with KV cache vs output tokens
 * for dense, FastV and Dynamic-LLaVA from the cost model alone, as
 * `cost-decode-flops-no-kv-cache.svg` and `cost-kv-cache-memory.svg` in `outDir`. `config` is a
 * {@link ModelConfig} or a raw config.json object. Returns the paths written.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { renderCostCharts } from "./charts.ts";
 * const config = JSON.parse(
 *   await Deno.readTextFile(new URL("../tests/fixtures/configs/llava-v1.5-7b.json", import.meta.url)),
 * );
 * const outDir = await Deno.makeTempDir();
 * const files = await renderCostCharts(config, outDir, { newTokens: [1, 256, 512] });
 * assert.deepEqual(files.map((file) => file.slice(outDir.length + 1)), [
 *   "cost-decode-flops-no-kv-cache.svg",
 *   "cost-kv-cache-memory.svg",
 * ]);
 * assert.match(await Deno.readTextFile(files[1]), /^<svg/);
 * await Deno.remove(outDir, { recursive: true });
 * ```
 */
export async function renderCostCharts(
  config: ModelConfig | unknown,
  outDir: string,
  options: CostChartOptions = {},
): Promise<string[]> {
  const lengths = options.newTokens ?? [1, ...Array.from({ length: 16 }, (_, i) => 64 * (i + 1))];
  const { newTokens: _, ...shared } = options;
  const flopsPoints: ChartPoint[] = [];
  const kvPoints: ChartPoint[] = [];
  for (const policy of ["dense", "fastv", "dynamic"] as const) {
    for (const newTokens of lengths) {
      const plan: CostPlan = { ...shared, policy, newTokens };
      const withoutCache = estimateCost(config, { ...plan, kvCache: false });
      const withCache = estimateCost(config, { ...plan, kvCache: true });
      flopsPoints.push({ series: policyLabel(policy), x: newTokens, y: withoutCache.decode.tflopsExact });
      kvPoints.push({ series: policyLabel(policy), x: newTokens, y: withCache.kv.peakBytes / MIB });
    }
  }
  await Deno.mkdir(outDir, { recursive: true });
  return [
    await writeChart(
      lineChartSpec(flopsPoints, seriesOrder(flopsPoints), flopsText()),
      join(outDir, `cost-${FILES.flops}`),
    ),
    await writeChart(
      lineChartSpec(kvPoints, seriesOrder(kvPoints), kvText()),
      join(outDir, `cost-${FILES.kv}`),
    ),
  ];
}

function formatStat(stat: Stat, digits = 1): string {
  return `${stat.median.toFixed(digits)} (${stat.min.toFixed(digits)}–${stat.max.toFixed(digits)})`;
}

function tflops(flops: number): string {
  return (flops / 1e12).toFixed(2);
}

/**
 * Formats bench rows as a markdown table (timings as median (min–max); FLOPs in TFLOPs as
 * paper / exact; memory in MiB).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { benchMarkdown } from "./charts.ts";
 * const stat = { median: 20, min: 19, max: 23 };
 * const table = benchMarkdown([{
 *   policy: "dynamic", kvCache: true, newTokens: 64, batch: 1, prefillMs: stat, decodeMsPerToken: stat,
 *   tokensPerSecond: stat, kvBytesPeak: 2 ** 27, gpuBytesPeak: 2 ** 33,
 *   flopsPaper: { prefill: 2.49e12, decode: 1.1e12 }, flopsExact: { prefill: 2.5e12, decode: 0.85e12 },
 *   tokensComputed: 2016, visualKept: 115, visualTokens: 576,
 * }]);
 * assert.equal(
 *   table.split("\n")[2],
 *   "| Dynamic-LLaVA | yes | 1 | 64 | 20.0 (19.0–23.0) | 20.0 (19.0–23.0) | 20.0 (19.0–23.0) | 2.49 / 2.50 | 1.10 / 0.85 | 2016 | 115 / 576 | 128.0 | 8192.0 |",
 * );
 * ```
 */
export function benchMarkdown(rows: BenchRow[]): string {
  const header = [
    "policy",
    "KV cache",
    "batch",
    "new tokens",
    "prefill ms",
    "decode ms/token",
    "tokens/s",
    "prefill TFLOPs (paper / exact)",
    "decode TFLOPs (paper / exact)",
    "tokens computed",
    "visual kept",
    "KV peak MiB",
    "GPU peak MiB",
  ];
  const lines = [`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`];
  for (const row of rows) {
    const cells = [
      policyLabel(row.policy),
      row.kvCache ? "yes" : "no",
      String(row.batch),
      String(row.newTokens),
      formatStat(row.prefillMs),
      formatStat(row.decodeMsPerToken),
      formatStat(row.tokensPerSecond),
      `${tflops(row.flopsPaper.prefill)} / ${tflops(row.flopsExact.prefill)}`,
      `${tflops(row.flopsPaper.decode)} / ${tflops(row.flopsExact.decode)}`,
      String(row.tokensComputed),
      `${row.visualKept} / ${row.visualTokens}`,
      (row.kvBytesPeak / MIB).toFixed(1),
      (row.gpuBytesPeak / MIB).toFixed(1),
    ];
    lines.push(`| ${cells.join(" | ")} |`);
  }
  return lines.join("\n") + "\n";
}

async function readJson(path: string, flag: string): Promise<unknown> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    throw new InputError(`Cannot read ${flag} file: ${(error as Error).message}`, path);
  }
}

async function main(flags: Flags): Promise<void> {
  const values = flags as { config?: string; rows?: string; out: string };
  if (values.config !== undefined) {
    const paths = await renderCostCharts(await readJson(values.config, "--config"), values.out);
    console.log(paths.join("\n"));
  } else if (values.rows !== undefined) {
    // A bench.json ({ rows: [...] }, as examples/bench.ts writes it) or a bare array of rows.
    const json = await readJson(values.rows, "--rows");
    const rows = Array.isArray(json) ? json : (json as { rows?: unknown } | null)?.rows;
    if (!Array.isArray(rows)) {
      throw new InputError(
        "Cannot draw charts: --rows must hold bench.json or a JSON array of rows",
        values.rows,
      );
    }
    const paths = await renderBenchCharts(rows as BenchRow[], values.out);
    const table = join(values.out, "bench.md");
    await Deno.writeTextFile(table, benchMarkdown(rows as BenchRow[]));
    console.log([...paths, table].join("\n"));
  } else {
    throw new InputError("Cannot draw charts: pass --config FILE or --rows FILE", "argv");
  }
}

if (import.meta.main) await runCommand(CHARTS_COMMAND, Deno.args, main);
