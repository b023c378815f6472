/**
 * Encoded images end to end: PNG, WebP and JPEG bytes go through ffmpeg-wasm decoding, LLaVA
 * preprocessing, the vision tower and the decoder, on both backends and both checkpoint layouts.
 */
import assert from "node:assert/strict";
import { ensureFixture } from "../tools/make_fixtures.ts";
import { encodeImage, encodeVideo, makeTestImage } from "../tools/fixtures/images.ts";
import { decodeImage, decodeVideoFrames, ImageError, loadModel } from "../mod.ts";
import { nmse } from "./kernel_util.ts";

const source = makeTestImage(50, 30, { pattern: "photo", seed: 5 });
// Every WebP before any JPEG (see encodeImage).
const encoded: Record<string, Uint8Array> = {};
for (const format of ["png", "webp", "jpeg"] as const) encoded[format] = await encodeImage(source, format);

for (const name of ["llava-f32-dyn", "llava-hf-f32"]) {
  Deno.test(`generate() on ${name} with PNG, WebP and JPEG input: WebGPU and CPU agree`, async () => {
    const dir = await ensureFixture(name);
    const cpu = await loadModel(dir, { backend: "cpu" });
    const gpu = await loadModel(dir, { backend: "webgpu", kvDtype: "f32" });
    try {
      for (const [format, bytes] of Object.entries(encoded)) {
        const request = { prompt: "What is in this picture?", image: bytes };
        const [a, b] = [await cpu.logits(request), await gpu.logits(request)];
        assert.ok(nmse(b, a) < 1e-8, `${format}: logits NMSE ${nmse(b, a)}`);
        const r = { ...request, maxNewTokens: 5, stop: [] };
        const [x, y] = [await cpu.generate(r), await gpu.generate(r)];
        assert.deepEqual(y.tokens, x.tokens, format);
        // Bytes and their decoded pixels are the same input.
        const decoded = await cpu.generate({ ...r, image: await decodeImage(bytes) });
        assert.deepEqual(decoded.tokens, x.tokens, `${format}: bytes vs decoded RGB`);
      }
      // The lossless PNG carries exactly the source pixels.
      const fromPng = await cpu.logits({ prompt: "What is in this picture?", image: encoded.png });
      const fromRgb = await cpu.logits({ prompt: "What is in this picture?", image: source });
      assert.equal(nmse(fromPng, fromRgb), 0);
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
  });
}

Deno.test("generate() rejects a corrupt image with ImageError and the model keeps working", async () => {
  const model = await loadModel(await ensureFixture("llava-f32-dyn"), { backend: "webgpu" });
  try {
    const truncated = encoded.png.subarray(0, 60);
    await assert.rejects(
      async () => await model.generate({ prompt: "x", image: truncated, maxNewTokens: 2 }),
      ImageError,
    );
    await assert.rejects(
      async () =>
        await model.generate({
          prompt: "x",
          image: new TextEncoder().encode("not an image"),
          maxNewTokens: 2,
        }),
      ImageError,
    );
    const ok = await model.generate({ prompt: "x", image: encoded.jpeg, maxNewTokens: 2, stop: [] });
    assert.equal(ok.tokens.length, 2);
  } finally {
    model.dispose();
  }
});

Deno.test("generate() with two images and with video frames: each frame is one image, on both backends", async () => {
  const dir = await ensureFixture("llava-f16-gqa-dyn-hub");
  Deno.env.set("HF_HOME", `${dir}/hf`);
  const frames = [1, 2, 3, 4, 5, 6].map((seed) => makeTestImage(24, 24, { pattern: "noise", seed }));
  const video = await encodeVideo(frames);
  const cpu = await loadModel(dir, { backend: "cpu" });
  const gpu = await loadModel(dir, { backend: "webgpu", kvDtype: "f32" });
  try {
    const two = {
      prompt: "<image>\nCompare with <image>\n",
      image: [encoded.png, source],
      maxNewTokens: 4,
      stop: [],
    };
    const [x, y] = [await cpu.generate(two), await gpu.generate(two)];
    assert.deepEqual(y.tokens, x.tokens);
    assert.equal(x.stats.visualTokens, 2 * cpu.config.vision!.tokensPerImage);
    const clip = { prompt: "What happens?", video: { data: video, frames: 3 }, maxNewTokens: 4, stop: [] };
    const [v1, v2] = [await cpu.generate(clip), await gpu.generate(clip)];
    assert.deepEqual(v2.tokens, v1.tokens);
    assert.equal(v1.stats.visualTokens, 3 * cpu.config.vision!.tokensPerImage);
    const asImages = await cpu.generate({
      prompt: "What happens?",
      image: await decodeVideoFrames(video, { frames: 3 }),
      maxNewTokens: 4,
      stop: [],
    });
    assert.deepEqual(asImages.tokens, v1.tokens);
  } finally {
    cpu.dispose();
    gpu.dispose();
  }
});
