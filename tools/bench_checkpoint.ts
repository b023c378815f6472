/**
 * Writes the random-weight plain LLaMA the README's speed figures run on: 220M parameters in F16
 * safetensors (hidden 1024, 12 layers, 16 heads, FFN 2816, vocab 32000), LLaMA-2's tokenizer.
 *
 *   deno run -A tools/bench_checkpoint.ts --out DIR
 * @module
 */
import { parseArgs } from "node:util";
import { type FixtureSpec, TINY_DEFAULT } from "./fixtures/checkpoint.ts";
import { writeFixture } from "./fixtures/checkpoint.ts";

/**
 * The 220M LLaMA's spec.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BENCH_LLAMA_220M } from "./bench_checkpoint.ts";
 * const { hidden, intermediate, vocab } = BENCH_LLAMA_220M.sizes!;
 * const perLayer = 4 * hidden * hidden + 3 * hidden * intermediate;
 * const params = BENCH_LLAMA_220M.layers! * perLayer + 2 * vocab * hidden;
 * assert.equal(Math.round(params / 1e6), 220);
 * ```
 */
export const BENCH_LLAMA_220M: FixtureSpec = {
  layout: "llama",
  dtype: "F16",
  layers: 12,
  sizes: { ...TINY_DEFAULT, hidden: 1024, heads: 16, intermediate: 2816, vocab: 32000 },
};

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { out: { type: "string" } } });
  if (!values.out) {
    console.error("usage: deno run -A tools/bench_checkpoint.ts --out DIR");
    Deno.exit(2);
  }
  console.log(await writeFixture(values.out, BENCH_LLAMA_220M));
}
