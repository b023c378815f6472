/**
 * Hostile and careless checkpoints: config values no real model has, a FIFO named config.json,
 * a tokenizer that does not cover the model's vocabulary, NaN/Inf weights (`checkTensors`),
 * tokenizer.json Sequences nested 20,000 deep; and the text-only llava_llama layout, which loads.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CheckpointError, loadModel, TokenizerError, tokenizerFromJson } from "../mod.ts";
import { openSafetensors } from "../runtime/io/safetensors.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

/** A private copy of fixture `name` (files copied, not linked), with `edit` applied to its config. */
async function copyFixture(name: string, edit: (config: Record<string, unknown>) => void = () => {}) {
  const from = await ensureFixture(name);
  const dir = await Deno.makeTempDir({ prefix: "hostile-" });
  const copy = async (src: string, dst: string) => {
    for await (const entry of Deno.readDir(src)) {
      if (entry.isDirectory) {
        await Deno.mkdir(join(dst, entry.name));
        await copy(join(src, entry.name), join(dst, entry.name));
      } else await Deno.copyFile(join(src, entry.name), join(dst, entry.name));
    }
  };
  await copy(from, dir);
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  edit(config);
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(config));
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

async function refuses(dir: string, pattern: RegExp, options = {}): Promise<void> {
  await assert.rejects(
    () => loadModel(dir, { backend: "cpu", ...options }),
    (err) => err instanceof CheckpointError && pattern.test(err.message),
  );
}

Deno.test("loadModel() refuses config values no real model has, naming the key", async () => {
  const cases: [string, (c: Record<string, unknown>) => void, RegExp][] = [
    ["llama-f32", (c) => (c.rms_norm_eps = -1), /"rms_norm_eps" must be above 0, got -1/],
    ["llama-f32", (c) => (c.rms_norm_eps = 0), /"rms_norm_eps" must be above 0/],
    ["llama-f32", (c) => (c.rope_theta = 0), /"rope_theta" must be above 0/],
    [
      "llama-f32",
      (c) => (c.max_position_embeddings = 1e15),
      /"max_position_embeddings" .* larger than any real/,
    ],
    ["llama-f32", (c) => (c.hidden_size = 2 ** 30), /"hidden_size" .* larger than any real/],
    ["llama-f32", (c) => (c.eos_token_id = 99999), /eos_token_id 99999 is outside the vocabulary/],
    [
      "llava-f32-dyn",
      (c) => ((c.sparse_config as Record<string, unknown>).sparse_layer = -1),
      /sparse_layer -1/,
    ],
    ["llava-f32-dyn", (c) => ((c.sparse_config as Record<string, unknown>).sparse_layer = 4), /not below/],
  ];
  for (const [name, edit, pattern] of cases) {
    await using fixture = await copyFixture(name, edit);
    await refuses(fixture.dir, pattern);
  }
});

Deno.test("loadModel() refuses a FIFO named config.json at once instead of hanging", async () => {
  await using fixture = await copyFixture("llama-f32");
  await Deno.remove(join(fixture.dir, "config.json"));
  const made = await new Deno.Command("mkfifo", { args: [join(fixture.dir, "config.json")] }).output();
  assert.ok(made.success);
  await refuses(fixture.dir, /not a regular file/);
});

Deno.test("loadModel() loads the text-only llava_llama layout (no mm_vision_tower) as a text model", async () => {
  await using fixture = await copyFixture("llama-f32", (c) => (c.model_type = "llava_llama"));
  const model = await loadModel(fixture.dir, { backend: "cpu" });
  const plain = await loadModel(await ensureFixture("llama-f32"), { backend: "cpu" });
  try {
    assert.equal(model.config.layout, "llava_llama");
    assert.equal(model.config.vision, null);
    const request = { prompt: "Hello", maxNewTokens: 3, stop: [] };
    assert.deepEqual((await model.generate(request)).tokens, (await plain.generate(request)).tokens);
    await assert.rejects(
      model.generate({ ...request, image: new Uint8Array(4) }).result,
      /this checkpoint has no vision tower/,
    );
  } finally {
    model.dispose();
    plain.dispose();
  }
});

Deno.test("loadModel() refuses a tokenizer far smaller than vocab_size", async () => {
  await using fixture = await copyFixture("llama-f32");
  await Deno.writeTextFile(
    join(fixture.dir, "tokenizer.json"),
    JSON.stringify({
      added_tokens: [{ id: 1, content: "<s>", special: true }, { id: 2, content: "</s>", special: true }],
      model: {
        type: "BPE",
        vocab: Object.fromEntries(
          Array.from({ length: 300 }, (_, i) => [i < 3 ? ["<unk>", "<s>", "</s>"][i] : `t${i}`, i]),
        ),
        merges: [],
      },
    }),
  );
  await refuses(fixture.dir, /the tokenizer has 300 ids, far fewer than the model's vocab_size 32000/);
});

Deno.test("loadModel({ checkTensors: true }) refuses NaN and Inf weights, naming tensor and file", async () => {
  for (const [value, shown] of [[NaN, "NaN"], [-Infinity, "-Infinity"]] as const) {
    await using fixture = await copyFixture("llama-f32");
    const path = join(fixture.dir, "model.safetensors");
    const entry = (await openSafetensors(path)).entries.get("model.norm.weight")!;
    using file = await Deno.open(path, { write: true });
    await file.seek(entry.byteOffset + 8, Deno.SeekMode.Start);
    await file.write(new Uint8Array(new Float32Array([value]).buffer));
    await assert.rejects(
      () => loadModel(fixture.dir, { backend: "cpu", checkTensors: true }),
      (err) =>
        err instanceof CheckpointError && err.where === path &&
        err.message.includes(`tensor "model.norm.weight" holds ${shown} at index 2`),
    );
    if (shown === "NaN") (await loadModel(fixture.dir, { backend: "cpu" })).dispose(); // not scanned unless asked
  }
  (await loadModel(await ensureFixture("llama-f32"), { backend: "cpu", checkTensors: true })).dispose();
});

Deno.test("tokenizerFromJson() refuses decoders and normalizers nested 20,000 deep with TokenizerError", () => {
  const nest = (key: "decoders" | "normalizers", leaf: unknown) => {
    let node = leaf;
    for (let i = 0; i < 20_000; i++) node = { type: "Sequence", [key]: [node] };
    return node;
  };
  const base = {
    added_tokens: [{ id: 1, content: "<s>", special: true }, { id: 2, content: "</s>", special: true }],
    model: { type: "BPE", vocab: { "<s>": 1, "</s>": 2, a: 3 }, merges: [] },
  };
  const decoder = nest("decoders", { type: "Fuse" });
  const normalizer = nest("normalizers", { type: "Prepend", prepend: "▁" });
  for (const hostile of [{ ...base, decoder }, { ...base, normalizer }]) {
    assert.throws(
      () => tokenizerFromJson(JSON.stringify(hostile), "tokenizer.json"),
      (err) => err instanceof TokenizerError && /nests Sequences more than 16 deep/.test(err.message),
    );
  }
});
