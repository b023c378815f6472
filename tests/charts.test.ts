/**
 * Tests of examples/charts.ts: the SVG charts exist, are well-formed SVG and carry the series
 * names and axis titles; the markdown table holds one line per row. Rows take their FLOPs and KV
 * bytes from the cost model on the real LLaVA-1.5-7B config, and timings from those FLOPs at a
 * fixed throughput.
 * @module
 */
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix
import { XMLParser, XMLValidator } from "npm:fast-xml-parser@5.12.1";
import { benchMarkdown, type BenchRow, renderBenchCharts, renderCostCharts } from "../examples/charts.ts";
import { estimateCost } from "../runtime/core/cost.ts";

const config7b = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/configs/llava-v1.5-7b.json", import.meta.url)),
);

/** Milliseconds at 100 TFLOP/s, spread ±5% for min and max. */
function timing(flops: number) {
  const median = flops / 1e11;
  return { median, min: median * 0.95, max: median * 1.05 };
}

function benchRow(policy: "dense" | "fastv" | "dynamic", kvCache: boolean, newTokens: number): BenchRow {
  const cost = estimateCost(config7b, { policy, kvCache, newTokens });
  const prefillMs = timing(cost.prefill.flopsExact);
  const decodeMsPerToken = timing(cost.decode.flopsExact / Math.max(cost.decode.steps, 1));
  return {
    policy,
    kvCache,
    newTokens,
    batch: 1,
    prefillMs,
    decodeMsPerToken,
    tokensPerSecond: timing(1e3 / decodeMsPerToken.median * 1e11),
    kvBytesPeak: cost.kv.peakBytes,
    gpuBytesPeak: cost.kv.peakBytes + 13.5e9,
    flopsPaper: { prefill: cost.prefill.flopsPaper, decode: cost.decode.flopsPaper },
    flopsExact: { prefill: cost.prefill.flopsExact, decode: cost.decode.flopsExact },
    tokensComputed: cost.decode.tokensComputed,
    visualKept: cost.plan.visualKept,
    visualTokens: cost.plan.imageTokens,
  };
}

const rows: BenchRow[] = [];
for (const policy of ["dense", "fastv", "dynamic"] as const) {
  for (const kvCache of [true, false]) {
    for (const newTokens of [16, 64, 128]) rows.push(benchRow(policy, kvCache, newTokens));
  }
}

/** Reads an SVG file, checks it is well-formed XML with an <svg> root, returns its text. */
async function readSvg(path: string): Promise<string> {
  const svg = await Deno.readTextFile(path);
  assert.equal(XMLValidator.validate(svg), true, `${path} is not well-formed XML`);
  const document = new XMLParser({ ignoreAttributes: false }).parse(svg);
  assert.equal(document.svg["@_xmlns"], "http://www.w3.org/2000/svg");
  return svg;
}

function assertHas(svg: string, texts: string[]): void {
  for (const text of texts) assert.ok(svg.includes(`>${text}<`), `missing text "${text}"`);
}

Deno.test("renderBenchCharts() writes the three charts with series names and axis titles", async () => {
  const outDir = await Deno.makeTempDir();
  try {
    const paths = await renderBenchCharts(rows, outDir);
    assert.deepEqual(paths, [
      `${outDir}/decode-flops-no-kv-cache.svg`,
      `${outDir}/kv-cache-memory.svg`,
      `${outDir}/decode-ms-per-token.svg`,
    ]);
    const [flops, kv, latency] = await Promise.all(paths.map(readSvg));
    assertHas(flops, ["Dense", "FastV", "Dynamic-LLaVA", "Output tokens", "Decode TFLOPs (exact)"]);
    assertHas(flops, ["Decode FLOPs without KV cache"]);
    assertHas(kv, ["Dense", "FastV", "Dynamic-LLaVA", "Output tokens", "KV cache peak (MiB)"]);
    assertHas(latency, [
      "Dense, KV cache",
      "Dense, no KV cache",
      "FastV, KV cache",
      "Dynamic-LLaVA, no KV cache",
      "Decode ms per token (median, min-max)",
    ]);
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
});

Deno.test("renderBenchCharts() skips the no-cache FLOPs chart when every row used a KV cache", async () => {
  const outDir = await Deno.makeTempDir();
  try {
    const paths = await renderBenchCharts(rows.filter((row) => row.kvCache), outDir);
    assert.deepEqual(paths, [`${outDir}/kv-cache-memory.svg`, `${outDir}/decode-ms-per-token.svg`]);
    const latency = await readSvg(paths[1]);
    assert.ok(!latency.includes("no KV cache"));
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
});

Deno.test("renderCostCharts() draws decode FLOPs and KV memory from the cost model", async () => {
  const outDir = await Deno.makeTempDir();
  try {
    const paths = await renderCostCharts(config7b, outDir, { newTokens: [1, 128, 256] });
    assert.deepEqual(paths, [
      `${outDir}/cost-decode-flops-no-kv-cache.svg`,
      `${outDir}/cost-kv-cache-memory.svg`,
    ]);
    const [flops, kv] = await Promise.all(paths.map(readSvg));
    assertHas(flops, ["Dense", "FastV", "Dynamic-LLaVA", "Output tokens", "Decode TFLOPs (exact)"]);
    assertHas(kv, ["Dense", "FastV", "Dynamic-LLaVA", "Output tokens", "KV cache peak (MiB)"]);
    // Dense 7B with 256 output tokens holds (624 + 255) rows × 0.5 MiB = 439.5 MiB: the axis reaches 450.
    assertHas(kv, ["450"]);
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
});

Deno.test("benchMarkdown() writes a header and one line per row", () => {
  const table = benchMarkdown(rows);
  const lines = table.trimEnd().split("\n");
  assert.equal(lines.length, rows.length + 2);
  assert.match(lines[0], /^\| policy \| KV cache \| batch \| new tokens \| prefill ms \|/);
  const dynamic = lines.find((line) => line.startsWith("| Dynamic-LLaVA | yes | 1 | 128 |"));
  assert.ok(dynamic !== undefined);
  // Prefill of Dynamic-LLaVA-7B: 2.49 TFLOPs by the paper's formula, 2.50 exact; 115 of 576 kept.
  assert.ok(dynamic.includes("| 2.49 / 2.50 |"), dynamic);
  assert.ok(dynamic.includes("| 115 / 576 |"), dynamic);
  assert.ok(dynamic.includes("| 25.0 (23.7–26.2) |"), dynamic);
});
