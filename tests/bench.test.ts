/**
 * Tests of the model runs of examples/bench.ts: the script run as a subprocess on the tiny
 * `llava-f32-dyn` fixture (CPU backend for the full sweep, WebGPU for a smaller one) writes one
 * row per policy × KV mode × output length, the markdown table and the charts, and its
 * measurements show what Dynamic-LLaVA promises (smaller KV cache, fewer FLOPs than dense);
 * batches sum the batch's requests; lengths beyond the context are refused.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { BenchRow } from "../examples/charts.ts";
import { gradientImage, parseBenchArgs, ratioLines, runBench } from "../examples/bench.ts";
import { InputError } from "../runtime/core/errors.ts";
import { loadModel } from "../runtime/api/model.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

const BENCH = fileURLToPath(new URL("../examples/bench.ts", import.meta.url));
/** The fixture's image: (42 / 7)² = 36 tokens; Dynamic-LLaVA keeps floor(36 × 0.2) = 7, FastV 18. */
const VISUAL_TOKENS = 36;
const KEPT: Record<string, number> = { dense: 36, fastv: 18, dynamic: 7 };
/** Decoder layers of the fixture. */
const LAYERS = 4;

interface BenchReport {
  backend: string;
  rows: BenchRow[];
}

async function runBenchScript(flags: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", BENCH, ...flags],
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).output();
  const decoder = new TextDecoder();
  return { code: output.code, stdout: decoder.decode(output.stdout), stderr: decoder.decode(output.stderr) };
}

function totalFlops(flops: { prefill: number; decode: number }): number {
  return flops.prefill + flops.decode;
}

/** Runs the script into a temp dir and checks the files and the rows it wrote. */
async function checkSweep(backend: "cpu" | "webgpu", policies: string[], lengths: number[]): Promise<void> {
  await ensureFixture("llava-f32-dyn");
  const outDir = await Deno.makeTempDir({ prefix: "bench-test-" });
  try {
    const run = await runBenchScript([
      "--backend",
      backend,
      "--policies",
      policies.join(","),
      "--kv",
      "both",
      "--new-tokens",
      lengths.join(","),
      "--repeat",
      "1",
      "--warmup",
      "0",
      "--out",
      outDir,
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /model: tiny test fixture llava-f32-dyn/);
    assert.match(run.stdout, /image: generated 336×336 RGB gradient/);

    const report: BenchReport = JSON.parse(await Deno.readTextFile(join(outDir, "bench.json")));
    assert.equal(report.backend, backend);
    const rows = report.rows;
    assert.equal(rows.length, policies.length * 2 * lengths.length);
    const find = (policy: string, kvCache: boolean, newTokens: number) => {
      const found = rows.filter((row) =>
        row.policy === policy && row.kvCache === kvCache && row.newTokens === newTokens && row.batch === 1
      );
      assert.equal(found.length, 1, `${policy} ${kvCache} ${newTokens}`);
      return found[0];
    };
    for (const policy of policies) {
      for (const kvCache of [true, false]) {
        for (const newTokens of lengths) {
          const row = find(policy, kvCache, newTokens);
          assert.equal(row.visualTokens, VISUAL_TOKENS);
          assert.equal(row.visualKept, KEPT[policy], policy);
          assert.ok(row.prefillMs.min > 0 && row.decodeMsPerToken.min > 0 && row.tokensPerSecond.min > 0);
          assert.equal(row.prefillMs.min, row.prefillMs.max); // one measured run
          // With the cache each of the N - 1 decode steps runs one row through every layer.
          if (kvCache) assert.equal(row.tokensComputed, (newTokens - 1) * LAYERS);
          else assert.equal(row.kvBytesPeak, 0);
        }
      }
    }
    for (const newTokens of lengths) {
      for (const kvCache of [true, false]) {
        const dense = find("dense", kvCache, newTokens), dynamic = find("dynamic", kvCache, newTokens);
        assert.ok(dynamic.kvBytesPeak <= dense.kvBytesPeak, `KV peak at ${newTokens}`);
        if (kvCache) assert.ok(dynamic.kvBytesPeak < dense.kvBytesPeak, `KV peak at ${newTokens}`);
        assert.ok(totalFlops(dynamic.flopsExact) < totalFlops(dense.flopsExact), `FLOPs at ${newTokens}`);
        assert.ok(dynamic.flopsExact.prefill < dense.flopsExact.prefill);
      }
      // Without the cache every step recomputes the context: more rows at longer outputs.
      const longer = lengths.filter((length) => length > newTokens);
      for (const length of longer) {
        assert.ok(
          find("dense", false, length).tokensComputed > find("dense", false, newTokens).tokensComputed,
        );
      }
    }

    const table = await Deno.readTextFile(join(outDir, "bench.md"));
    assert.match(table, /^\| policy \| KV cache \| batch \| new tokens \| prefill ms \| decode ms\/token \|/);
    assert.equal(table.trim().split("\n").length, 2 + rows.length);
    assert.ok(run.stdout.includes(table.trim()), "the table is printed");
    const ratios = run.stdout.split("\n").filter((line) => line.startsWith("ratio vs dense: "));
    assert.equal(ratios.length, (policies.length - 1) * 2);
    for (const name of ["decode-flops-no-kv-cache.svg", "kv-cache-memory.svg", "decode-ms-per-token.svg"]) {
      const svg = await Deno.readTextFile(join(outDir, name));
      assert.match(svg, /^<svg[\s\S]*<\/svg>\s*$/, name);
    }
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
}

Deno.test("bench.ts measures dense, FastV and Dynamic-LLaVA with and without KV cache on the CPU", async () => {
  await checkSweep("cpu", ["dense", "fastv", "dynamic"], [4, 8, 12]);
});

Deno.test("bench.ts measures dense and Dynamic-LLaVA on WebGPU", async () => {
  await checkSweep("webgpu", ["dense", "dynamic"], [4, 8]);
});

Deno.test("bench.ts refuses output lengths beyond the model's context before running", async () => {
  await ensureFixture("llava-f32-dyn");
  const outDir = await Deno.makeTempDir({ prefix: "bench-test-" });
  try {
    const run = await runBenchScript([
      "--backend",
      "cpu",
      "--new-tokens",
      "1024,4096",
      "--batch",
      "8",
      "--out",
      outDir,
    ]);
    assert.equal(run.code, 2);
    assert.match(
      run.stderr,
      /Cannot run --new-tokens 4096: .*context holds 2048, so at most \d+ new tokens fit/,
    );
    assert.deepEqual([...Deno.readDirSync(outDir)], []);
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
});

Deno.test("runBench() sums a batch's requests: B requests hold B times the KV bytes and FLOPs", async () => {
  const model = await loadModel(await ensureFixture("llava-f32-dyn"), { backend: "cpu" });
  try {
    const rows = await runBench(model, {
      policies: ["dynamic"],
      kvModes: [true],
      newTokens: [3],
      batches: [1, 3],
      repeat: 2,
      warmup: 1,
    }, { image: gradientImage(64, 48) });
    assert.deepEqual(rows.map((row) => row.batch), [1, 3]);
    const [single, triple] = rows;
    assert.equal(triple.kvBytesPeak, 3 * single.kvBytesPeak);
    assert.equal(triple.flopsExact.decode, 3 * single.flopsExact.decode);
    assert.equal(triple.flopsPaper.prefill, 3 * single.flopsPaper.prefill);
    assert.equal(triple.tokensComputed, 3 * single.tokensComputed);
    assert.equal(triple.visualKept, 7);
    for (const row of rows) {
      assert.ok(row.decodeMsPerToken.min <= row.decodeMsPerToken.median);
      assert.ok(row.decodeMsPerToken.median <= row.decodeMsPerToken.max);
    }
  } finally {
    model.dispose();
  }
});

Deno.test("parseBenchArgs() reads lists and refuses bad values", () => {
  const args = parseBenchArgs([
    "--policies",
    "dense,dynamic",
    "--kv",
    "off",
    "--new-tokens",
    "1024,2048,4096",
    "--batch",
    "1,8",
    "--repeat",
    "5",
    "--out",
    "out",
  ]);
  assert.ok(!args.costOnly);
  assert.deepEqual(args.policies, ["dense", "dynamic"]);
  assert.deepEqual(args.kvModes, [false]);
  assert.deepEqual(args.newTokens, [1024, 2048, 4096]);
  assert.deepEqual(args.batches, [1, 8]);
  assert.equal(args.repeat, 5);
  assert.equal(args.warmup, 1);
  assert.equal(args.backend, "auto");
  assert.equal(args.modelDir, null);
  assert.deepEqual(args.fusedKernels, [true]);
  const ab = parseBenchArgs(["--fused", "both", "--weight-storage", "texture", "--out", "out"]);
  assert.ok(!ab.costOnly);
  assert.deepEqual(ab.fusedKernels, [false, true]); // unfused first: the ratios read fused vs unfused
  const refused = (argv: string[], pattern: RegExp) =>
    assert.throws(
      () => parseBenchArgs(argv),
      (error) => error instanceof InputError && pattern.test(error.message),
    );
  refused(["--policies", "dense,sparse", "--out", "o"], /--policies: .*got "sparse"/);
  refused(["--kv", "maybe", "--out", "o"], /--kv: expected both, on or off/);
  refused(["--fused", "yes", "--out", "o"], /--fused: expected on, off or both/);
  refused(
    ["--cost-only", "--config", "c.json", "--fused", "off"],
    /--fused: it does not go with --cost-only/,
  );
  refused(["--new-tokens", "64,0", "--out", "o"], /--new-tokens: every value must be ≥ 1/);
  refused(["--repeat", "0", "--out", "o"], /--repeat: expected at least 1/);
  refused(["--policies", "dense"], /--out DIR is required/);
  refused(["--cost-only", "--config", "c.json", "--out", "o"], /--out: it does not go with --cost-only/);
  refused(["--policy", "dense", "--out", "o"], /--policy: it needs --cost-only/);
  refused(["--context", "4096", "--out", "o"], /--context: it needs --cost-only/);
  const cost = (...flags: string[]) => ["--cost-only", "--config", "c.json", ...flags];
  refused(cost("--kv-dtype", "f8"), /--kv-dtype: expected f16 or f32, got "f8"/);
  refused(cost("--budget-gb", "6"), /--budget-gb: it needs --weight-types/);
  refused(cost("--weight-types", "f16", "--budget-gb", "0"), /--budget-gb: expected a size > 0/);
  refused(cost("--policy", "dense,sparse"), /--policy: .*got "sparse"/);
  const memory = parseBenchArgs(
    cost("--policy", "dense,dynamic", "--weight-types", "q4_k_m,f16", "--budget-gb", "6"),
  );
  assert.ok(memory.costOnly);
  assert.deepEqual([memory.policies, memory.weightTypes, memory.budgetBytes], [["dense", "dynamic"], [
    "q4_k_m",
    "f16",
  ], 6e9]);
  assert.equal(memory.plan.policy, "dense");
});

Deno.test("ratioLines() compares each policy with dense at the longest output length", () => {
  const stat = (median: number) => ({ median, min: median, max: median });
  const row = (policy: string, newTokens: number, decodeMs: number, kvBytesPeak: number): BenchRow => ({
    policy,
    kvCache: true,
    newTokens,
    batch: 1,
    prefillMs: stat(10),
    decodeMsPerToken: stat(decodeMs),
    tokensPerSecond: stat(50),
    kvBytesPeak,
    gpuBytesPeak: 0,
    flopsPaper: { prefill: 100, decode: 100 },
    flopsExact: { prefill: 300, decode: 100 },
    tokensComputed: 4,
    visualKept: 7,
    visualTokens: 36,
  });
  const sparse = { ...row("dynamic", 8, 15, 500), flopsExact: { prefill: 200, decode: 100 } };
  assert.deepEqual(
    ratioLines([row("dense", 4, 1, 1), row("dense", 8, 20, 1000), row("dynamic", 4, 1, 1), sparse]),
    [
      "ratio vs dense: Dynamic-LLaVA, KV cache, batch 1, 8 new tokens: decode ms/token ×0.750, KV peak ×0.500, " +
      "FLOPs exact ×0.750, paper ×1.000",
    ],
  );
});
