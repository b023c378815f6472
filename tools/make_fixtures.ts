/**
 * Writes the standard set of tiny test checkpoints (random weights, LLaMA-2 tokenizer) into a
 * directory, one folder per fixture. Used by the tests, the benchmarks and the demo asset.
 *
 *   deno run -A tools/make_fixtures.ts [--out tests/fixtures/out]
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { type FixtureSpec, writeFixture } from "./fixtures/checkpoint.ts";

/** Every standard fixture by folder name. */
export const FIXTURES: Record<string, FixtureSpec> = {
  "llama-f32": { layout: "llama", dtype: "F32" },
  "llama-f16-gqa": { layout: "llama", dtype: "F16", kvHeads: 2, seed: 2 },
  "llama-bf16-sharded": { layout: "llama", dtype: "BF16", kvHeads: 1, shards: 3, seed: 3 },
  "llava-f32-dyn": { layout: "llava_llama", dtype: "F32", predictors: true, seed: 4 },
  "llava-f16-gqa-dyn-hub": {
    layout: "llava_llama",
    dtype: "F16",
    kvHeads: 2,
    predictors: true,
    tower: "hub",
    seed: 5,
  },
  "llava-bf16": { layout: "llava_llama", dtype: "BF16", seed: 6 },
  "llava-hf-f32": { layout: "llava", dtype: "F32", seed: 7 },
};

/** The demo checkpoint committed under assets/demo (random weights, labelled as such). */
export const DEMO_FIXTURE: FixtureSpec = { layout: "llava_llama", dtype: "F16", predictors: true, seed: 11 };

/**
 * Ensures fixture `name` exists under `root` (written atomically: concurrent callers are safe)
 * and returns its directory. For hub-tower fixtures the HF cache is `<dir>/hf`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ensureFixture } from "./make_fixtures.ts";
 * const dir = await ensureFixture("llama-f32");
 * assert.ok(dir.endsWith("llama-f32"));
 * assert.ok((await Deno.stat(`${dir}/model.safetensors`)).isFile);
 * ```
 */
export async function ensureFixture(name: string, options: { root?: string } = {}): Promise<string> {
  const root = options.root ?? new URL("../tests/fixtures/out/", import.meta.url).pathname;
  const dir = join(root, name);
  try {
    await Deno.stat(join(dir, "config.json"));
    return dir;
  } catch { /* write it */ }
  const spec = FIXTURES[name];
  if (!spec) {
    throw new RangeError(`Cannot write fixture ${name}: unknown (${Object.keys(FIXTURES).join(", ")})`);
  }
  await Deno.mkdir(root, { recursive: true });
  const tmp = await Deno.makeTempDir({ dir: root, prefix: `.${name}-` });
  await writeFixture(tmp, { ...spec, hfHome: join(dir, "hf") });
  if (spec.tower === "hub") {
    // The hub cache path is absolute: write the tower where the final folder will be.
    await Deno.mkdir(dir, { recursive: true }).catch(() => {});
  }
  try {
    if (spec.tower === "hub") {
      for await (const e of Deno.readDir(tmp)) await Deno.rename(join(tmp, e.name), join(dir, e.name));
      await Deno.remove(tmp, { recursive: true });
    } else {
      await Deno.rename(tmp, dir);
    }
  } catch {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return dir;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string" }, demo: { type: "string" } },
  });
  if (values.demo) {
    console.log(await writeFixture(values.demo, DEMO_FIXTURE));
    Deno.exit(0);
  }
  for (const name of Object.keys(FIXTURES)) {
    console.log(await ensureFixture(name, { root: values.out }));
  }
}
