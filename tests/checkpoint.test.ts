/** Bad-input suite of checkpoint opening: config.json and tensors checked against each other. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CheckpointError, loadModel, openCheckpoint } from "../mod.ts";
import { writeFixture } from "../tools/fixtures/checkpoint.ts";
import { writeSafetensors } from "../runtime/io/safetensors.ts";

async function fixture(): Promise<string> {
  const dir = await Deno.makeTempDir();
  await writeFixture(dir, { layout: "llama", dtype: "F32", layers: 1 });
  return dir;
}

async function expectError(dir: string, fragment: string, where?: string): Promise<void> {
  await assert.rejects(() => openCheckpoint(dir), (err: CheckpointError) => {
    assert.ok(err instanceof CheckpointError, `${err}`);
    assert.ok(err.message.includes(fragment), `"${err.message}" lacks "${fragment}"`);
    if (where) assert.ok(err.where.endsWith(where), `where ${err.where}`);
    return true;
  });
}

Deno.test("openCheckpoint() rejects missing and malformed config.json with the file named", async () => {
  const dir = await fixture();
  try {
    await expectError(join(dir, "nope"), "directory not found");
    const config = await Deno.readTextFile(join(dir, "config.json"));
    await Deno.writeTextFile(join(dir, "config.json"), "{ not json");
    await expectError(dir, "Cannot read JSON", "config.json");
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({ model_type: "gpt2" }));
    await expectError(dir, 'model_type "gpt2" is not supported', "config.json");
    await Deno.writeTextFile(
      join(dir, "config.json"),
      JSON.stringify({ ...JSON.parse(config), hidden_size: 63 }),
    );
    await expectError(dir, "hidden_size 63 is not num_attention_heads");
    await Deno.remove(join(dir, "config.json"));
    await expectError(dir, "file not found", "config.json");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openCheckpoint() rejects unknown, missing and misshapen tensors", async () => {
  const dir = await fixture();
  try {
    const path = join(dir, "model.safetensors");
    const good = await Deno.readFile(path);
    const { openSafetensors, readTensor } = await import("../runtime/io/safetensors.ts");
    const file = await openSafetensors(path);
    const tensors = [];
    for (const [name, e] of file.entries) {
      tensors.push({ name, dtype: e.dtype, shape: e.shape, data: await readTensor(file, name) });
    }
    await Deno.writeFile(
      path,
      writeSafetensors([...tensors, {
        name: "model.extra.weight",
        dtype: "F32",
        shape: [1],
        data: new Uint8Array(4),
      }]),
    );
    await expectError(dir, 'unknown tensor "model.extra.weight"');
    await Deno.writeFile(path, writeSafetensors(tensors.filter((t) => t.name !== "model.norm.weight")));
    await expectError(dir, 'tensor "norm" is missing');
    await Deno.writeFile(
      path,
      writeSafetensors(
        tensors.map((t) =>
          t.name === "model.norm.weight" ? { ...t, shape: [32], data: t.data.subarray(0, 128) } : t
        ),
      ),
    );
    await expectError(dir, "has shape [32], expected [64]");
    await Deno.writeFile(path, good);
    assert.equal((await openCheckpoint(dir)).config.text.numLayers, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadModel() fails cleanly when the tokenizer is missing, and nothing stays open", async () => {
  const dir = await fixture();
  try {
    await Deno.remove(join(dir, "tokenizer.json"));
    await assert.rejects(
      () => loadModel(dir, { backend: "cpu" }),
      (err: Error) => err.name === "TokenizerError",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
