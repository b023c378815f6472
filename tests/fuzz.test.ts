/**
 * The seeded fuzz suite at CI size: a few hundred mutations per input family (tools/fuzz.ts has
 * the mutators; `deno task fuzz --iterations N` runs longer). Only the project's error classes may
 * escape, no case may run past its time limit, and resident memory may grow by a bounded amount.
 */
import assert from "node:assert/strict";
import { FUZZ_FAMILIES, type FuzzFamily, fuzzFamily } from "../tools/fuzz.ts";

/** Cases per family: pure parsers get more, ffmpeg decodes and model runs fewer. */
const ITERATIONS: Record<FuzzFamily, number> = {
  safetensors: 400,
  tokenizer: 300,
  config: 300,
  png: 100,
  jpeg: 100,
  gif: 100,
  webp: 100,
  request: 200,
};

/** Resident memory a family may add (the first ffmpeg load alone takes tens of MiB). */
const RSS_BOUND_BYTES = 512 * 2 ** 20;

for (const family of FUZZ_FAMILIES) {
  Deno.test(`fuzz ${family}: ${ITERATIONS[family]} seeded mutations, only project errors, no hang, bounded memory`, async () => {
    const report = await fuzzFamily(family, {
      iterations: ITERATIONS[family],
      seed: 20261202,
      caseLimitMs: 10_000,
    });
    assert.deepEqual(report.findings, [], JSON.stringify(report.findings.slice(0, 5)));
    assert.equal(report.refused + report.accepted, ITERATIONS[family]);
    assert.ok(report.refused > 0, "the mutations reach the checks");
    assert.ok(report.rssGrowthBytes < RSS_BOUND_BYTES, `RSS grew ${report.rssGrowthBytes} bytes`);
  });
}
