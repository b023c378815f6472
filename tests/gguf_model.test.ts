/**
 * GGUF checkpoints end to end: fixtures converted by `convertToGguf` (text model, mmproj,
 * predictors) load with `loadModel` and answer exactly as the safetensors original at F16 (logits
 * bit for bit, kept image tokens, admissions and tokens under `policy: "dynamic"`, grouped-query
 * q/k un-permutation included); the vocabulary stored in `tokenizer.ggml.*` encodes and decodes as
 * the tokenizer.json it came from (LLaMA-2's real vocabulary); Q8_0 and Q4_0 files stay close to
 * F16 (logits NMSE); on WebGPU, Q8_0 and Q4_K_M (Q4_K + Q6_K) files answer as the CPU backend with
 * their blocks in textures or in buffers; bad folders give a CheckpointError.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CheckpointError, loadModel, type Model } from "../mod.ts";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import {
  convertToGguf,
  type GgufConvertType,
  ggufVocabFromTokenizerJson,
} from "../runtime/io/gguf_convert.ts";
import { openGgufCheckpoint } from "../runtime/io/gguf_checkpoint.ts";
import { weightBytes } from "../runtime/core/weight_bytes.ts";
import { tokenizerFromPieces } from "../runtime/text/sentencepiece.ts";
import { createGpuBackend, type GpuBackend } from "../runtime/webgpu/gpu_backend.ts";
import { loadTokenizer } from "../runtime/text/tokenizer.ts";
import { ensureFixture, FIXTURES } from "../tools/make_fixtures.ts";
import { TINY_DEFAULT, writeFixture } from "../tools/fixtures/checkpoint.ts";
import { nmse } from "./kernel_util.ts";

const IMAGE = (() => {
  const width = 30, height = 20, data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + (i % 7) * 11) % 256;
  return { width, height, data };
})();

/** Converts fixture `name` to `type` in a fresh folder; returns the folder. */
async function converted(name: string, type: GgufConvertType): Promise<string> {
  const source = await ensureFixture(name);
  if (FIXTURES[name].tower === "hub") Deno.env.set("HF_HOME", `${source}/hf`);
  const out = await Deno.makeTempDir({ prefix: `gguf-${name}-${type}-` });
  const vocab = ggufVocabFromTokenizerJson(await Deno.readTextFile(join(source, "tokenizer.json")), source);
  await convertToGguf(await openCheckpoint(source), join(out, `model-${type}.gguf`), { type, vocab });
  return out;
}

/** Bit-for-bit equality without a (huge) diff of 32000 values on failure. */
function assertSameValues(actual: Float32Array, expected: Float32Array, what: string) {
  assert.equal(actual.length, expected.length, what);
  const first = actual.findIndex((v, i) => !Object.is(v, expected[i]));
  assert.equal(first, -1, `${what}: first difference at ${first}: ${actual[first]} vs ${expected[first]}`);
}

async function withModels(paths: string[], body: (models: Model[]) => Promise<void>) {
  const models: Model[] = [];
  try {
    for (const path of paths) models.push(await loadModel(path, { backend: "cpu" }));
    await body(models);
  } finally {
    for (const model of models) model.dispose();
  }
}

Deno.test("tokenizer.ggml.* vocabulary encodes and decodes as the tokenizer.json it came from", async () => {
  const source = await ensureFixture("llama-f32");
  const text = await Deno.readTextFile(join(source, "tokenizer.json"));
  const vocab = ggufVocabFromTokenizerJson(text, "tokenizer.json");
  const fromGguf = tokenizerFromPieces({ ...vocab, addDummyPrefix: true }, "model.gguf");
  const fromJson = await loadTokenizer(source);
  assert.equal(fromGguf.vocabSize, fromJson.vocabSize);
  assert.deepEqual([fromGguf.bosId, fromGguf.eosId, fromGguf.unkId], [
    fromJson.bosId,
    fromJson.eosId,
    fromJson.unkId,
  ]);
  const samples = [
    "Hello world",
    "  leading and  double  spaces ",
    "A chat between a curious human and an artificial intelligence assistant. USER: <image>\nWhat is it? ASSISTANT:",
    "naïve café, Straße, 東京, русский, عربى",
    "emoji 🦊🔥 and rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "tabs\tand\nnewlines\r\n</s> inside <s> text <unk>",
    "numbers 3.14159 2026-12-02 x^2+y^2",
    "",
  ];
  for (const sample of samples) {
    assert.deepEqual(fromGguf.encode(sample), fromJson.encode(sample), JSON.stringify(sample));
  }
  const ids = Array.from({ length: 400 }, (_, i) => (i * 7919) % 32000);
  assert.equal(fromGguf.decode(ids), fromJson.decode(ids));
  assert.equal(
    fromGguf.decode(ids, { skipSpecialTokens: true }),
    fromJson.decode(ids, { skipSpecialTokens: true }),
  );
});

Deno.test("loadModel() of an F16 GGUF conversion (text, mmproj, predictors) answers as the safetensors original", async () => {
  const name = "llava-f16-gqa-dyn-hub";
  const dir = await converted(name, "f16");
  try {
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(files, ["mmproj-model-f16.gguf", "model-f16.gguf", "predictors-model-f16.gguf"]);
    await withModels([await ensureFixture(name), dir], async ([original, gguf]) => {
      // The mmproj keeps only the encoder layers that run: the selected hidden state is its last.
      const { numLayers: _n, selectLayer: _s, ...vision } = original.config.vision!;
      assert.deepEqual(gguf.config, {
        ...original.config,
        vision: { ...vision, numLayers: 2, selectLayer: 2 },
      });
      for (const policy of ["dense", "dynamic"] as const) {
        const request = { prompt: "What is in the picture?", image: IMAGE, policy };
        assertSameValues(await gguf.logits(request), await original.logits(request), policy);
      }
      for (const kvCache of [true, false]) {
        const request = {
          prompt: "Describe it.",
          image: IMAGE,
          maxNewTokens: 12,
          stop: [],
          policy: "dynamic" as const,
          kvCache,
        };
        const [a, b] = [await original.generate(request), await gguf.generate(request)];
        assert.ok(a.visualKept && a.visualKept.length < 36);
        assert.deepEqual(b.visualKept, a.visualKept);
        assert.deepEqual(b.admitted, a.admitted);
        assert.deepEqual(b.tokens, a.tokens);
        assert.deepEqual(b.stats.kvCache.rowsPerLayer, a.stats.kvCache.rowsPerLayer);
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadModel() of Q8_0 and Q4_0 GGUF files stays close to F16 (logits NMSE)", async () => {
  const dirs = await Promise.all(
    (["f16", "q8_0", "q4_0"] as const).map((type) => converted("llama-f16-gqa", type)),
  );
  try {
    const request = { prompt: "Tell me a story about a red fox.", policy: "dense" as const };
    await withModels(dirs, async ([f16, q8, q4]) => {
      const reference = await f16.logits(request);
      const [e8, e4] = [nmse(await q8.logits(request), reference), nmse(await q4.logits(request), reference)];
      assert.ok(e8 < 1e-3, `Q8_0 NMSE ${e8}`);
      assert.ok(e4 < 0.15 && e4 > e8, `Q4_0 NMSE ${e4} (Q8_0 ${e8})`); // random weights: 4 bits are coarse
      const checkpoint = await openGgufCheckpoint(dirs[1]);
      assert.equal(checkpoint.tensors.get("layers.0.wq")?.storedType, "Q8_0");
      assert.equal(checkpoint.tensors.get("norm")?.storedType, "F32");
      // The cost model's weight bytes are the bytes the converter wrote.
      for (const [dir, type] of [[dirs[0], "f16"], [dirs[1], "q8_0"], [dirs[2], "q4_0"]] as const) {
        const opened = await openGgufCheckpoint(dir);
        const stored = [...opened.tensors.values()].reduce((sum, t) => sum + t.byteLength, 0);
        assert.equal(stored, weightBytes(opened.config, type).text, type);
      }
    });
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadModel() of a Q8_0 GGUF: WebGPU, on the blocks as stored, equals the CPU backend", async () => {
  const dir = await converted("llava-f32-dyn", "q8_0");
  try {
    const cpu = await loadModel(dir, { backend: "cpu" });
    const gpu = await loadModel(dir, { backend: "webgpu", kvDtype: "f32" });
    try {
      const request = { prompt: "What is in the picture?", image: IMAGE, policy: "dynamic" as const };
      const e = nmse(await gpu.logits(request), await cpu.logits(request));
      assert.ok(e < 1e-8, `logits NMSE ${e}`);
      const r = { ...request, maxNewTokens: 6, stop: [] };
      const [a, b] = [await cpu.generate(r), await gpu.generate(r)];
      assert.deepEqual(b.tokens, a.tokens);
      assert.deepEqual(b.visualKept, a.visualKept);
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
    // Decoder matrices and lm_head stay in their Q8_0 blocks on the GPU (the embedding table: f32).
    const backend = await createGpuBackend(await openGgufCheckpoint(dir), {
      weightDtype: "auto",
    }) as GpuBackend;
    try {
      const { layers, lmHead, embed } = backend.model.weights;
      const matrices = [...layers.flatMap((l) => [l.wq, l.wk, l.wv, l.wo, l.wGate, l.wUp, l.wDown]), lmHead!];
      const stored = matrices.filter((w) => "type" in w);
      assert.equal(stored.length, 4 * 7 + 1); // 4 layers of 7 matrices, lm_head
      assert.ok(stored.every((w) => "type" in w && w.type === "Q8_0"));
      assert.ok(!("type" in embed));
    } finally {
      backend.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadModel() of a Q4_K_M GGUF (Q4_K and Q6_K blocks): WebGPU on blocks in textures equals the CPU backend", async () => {
  // K-quants need rows of 256: a LLaMA of hidden 256 (its last layer's wv, w_down and lm_head get Q6_K)
  const source = await writeFixture(await Deno.makeTempDir({ prefix: "llama-256-" }), {
    layout: "llama",
    dtype: "F16",
    layers: 2,
    sizes: { ...TINY_DEFAULT, hidden: 256, heads: 4, intermediate: 512 },
    seed: 9,
  });
  const dir = await Deno.makeTempDir({ prefix: "gguf-llama-256-q4_k_m-" });
  try {
    const vocab = ggufVocabFromTokenizerJson(await Deno.readTextFile(join(source, "tokenizer.json")), source);
    await convertToGguf(await openCheckpoint(source), join(dir, "model.gguf"), { type: "q4_k_m", vocab });
    const checkpoint = await openGgufCheckpoint(dir);
    const types = new Set([...checkpoint.tensors.values()].map((t) => t.storedType));
    assert.ok(types.has("Q4_K") && types.has("Q6_K"), [...types].join());
    const cpu = await loadModel(dir, { backend: "cpu" });
    try {
      const request = { prompt: "Tell me a story about", maxNewTokens: 8, stop: [] };
      const expected = await cpu.generate(request);
      const logits = await cpu.logits(request);
      // (blocks in storage buffers: the kernel parity suite; on lavapipe that kernel is slow)
      const gpu = await loadModel(dir, { backend: "webgpu", weightStorage: "texture", kvDtype: "f32" });
      try {
        const e = nmse(await gpu.logits(request), logits);
        assert.ok(e < 1e-8, `logits NMSE ${e}`);
        assert.deepEqual((await gpu.generate(request)).tokens, expected.tokens);
        assert.deepEqual(
          (await gpu.generate({ ...request, kvCache: false })).tokens,
          expected.tokens,
          "no KV cache",
        );
      } finally {
        gpu.dispose();
      }
    } finally {
      cpu.dispose();
    }
    // The blocks stay blocks in either storage: repacked into textures, or as stored in buffers.
    for (const weightStorage of ["texture", "buffer"] as const) {
      const backend = await createGpuBackend(checkpoint, {
        weightDtype: "auto",
        weightStorage,
      }) as GpuBackend;
      try {
        const { layers, lmHead } = backend.model.weights;
        const matrices = [
          ...layers.flatMap((l) => [l.wq, l.wk, l.wv, l.wo, l.wGate, l.wUp, l.wDown]),
          lmHead!,
        ];
        assert.ok(matrices.every((w) => "type" in w && (w.type === "Q4_K" || w.type === "Q6_K")));
        const inTextures = matrices.filter((w) => "type" in w && w.textures && w.chunks.length === 0);
        assert.equal(inTextures.length, weightStorage === "texture" ? matrices.length : 0, weightStorage);
      } finally {
        backend.dispose();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(source, { recursive: true });
  }
});

Deno.test("loadModel() of bad GGUF folders names the problem", async () => {
  const dir = await converted("llama-f32", "q8_0");
  try {
    await Deno.copyFile(join(dir, "model-q8_0.gguf"), join(dir, "second.gguf"));
    await assert.rejects(loadModel(dir, { backend: "cpu" }), (err: unknown) => {
      assert.ok(err instanceof CheckpointError);
      assert.match(
        err.message,
        /2 text GGUF files \(model-q8_0.gguf, second.gguf\); pass the text model's file/,
      );
      return true;
    });
    const model = await loadModel(join(dir, "second.gguf"), { backend: "cpu" });
    model.dispose();
    const bytes = await Deno.readFile(join(dir, "second.gguf"));
    await Deno.writeFile(join(dir, "second.gguf"), bytes.subarray(0, bytes.length - 100));
    await assert.rejects(
      loadModel(join(dir, "second.gguf"), { backend: "cpu" }),
      /runs past the end of the file/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
