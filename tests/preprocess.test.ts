import assert from "node:assert/strict";
import { join } from "node:path";
import { ImageError, InputError } from "../runtime/core/errors.ts";
import type { RgbImage } from "../runtime/image/image_decode.ts";
import { CLIP_MEAN } from "../runtime/core/config.ts";
import { padToSquare, preprocessImage, resizeBicubic } from "../runtime/image/preprocess.ts";
import { encodeImage, makeTestImage, type Pattern, runPillow } from "../tools/fixtures/images.ts";

const CLIP_FILL: [number, number, number] = [122, 116, 104];

interface Case {
  width: number;
  height: number;
  pattern: Pattern;
  size: number;
}

/** Sizes and aspect ratios: tiny, very thin both ways, odd, already square, exact multiples, up- and downscaling. */
const CASES: Case[] = [
  { width: 1, height: 1, pattern: "noise", size: 336 },
  { width: 2, height: 3, pattern: "edges", size: 336 },
  { width: 7, height: 300, pattern: "noise", size: 336 },
  { width: 300, height: 7, pattern: "gradient", size: 336 },
  { width: 500, height: 333, pattern: "photo", size: 336 },
  { width: 336, height: 336, pattern: "noise", size: 336 },
  { width: 336, height: 200, pattern: "edges", size: 336 },
  { width: 1000, height: 90, pattern: "edges", size: 336 },
  { width: 90, height: 1000, pattern: "photo", size: 336 },
  { width: 672, height: 671, pattern: "noise", size: 336 },
  { width: 337, height: 335, pattern: "edges", size: 336 },
  { width: 100, height: 60, pattern: "photo", size: 336 },
  { width: 640, height: 480, pattern: "gradient", size: 224 },
  { width: 33, height: 17, pattern: "edges", size: 5 },
];

/** Pillow's pad + resize (and numpy's normalisation) of every case, computed once. */
const reference = await (async () => {
  const dir = await Deno.makeTempDir({ prefix: "preprocess-" });
  try {
    const jobs = CASES.map((testCase, i) => ({
      op: "pad_resize" as const,
      input: `in${i}.raw`,
      width: testCase.width,
      height: testCase.height,
      size: testCase.size,
      output: `out${i}.raw`,
      normalized: `norm${i}.f32`,
    }));
    const images = CASES.map((testCase, i) =>
      makeTestImage(testCase.width, testCase.height, { pattern: testCase.pattern, seed: i + 1 })
    );
    await Promise.all(images.map((image, i) => Deno.writeFile(join(dir, jobs[i].input), image.data)));
    await runPillow(jobs, dir);
    return await Promise.all(images.map(async (image, i) => ({
      image,
      resized: await Deno.readFile(join(dir, jobs[i].output)),
      normalized: new Float32Array((await Deno.readFile(join(dir, jobs[i].normalized))).buffer),
    })));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
})();

function channelStats(ours: Uint8Array, theirs: Uint8Array): { mean: number[]; max: number } {
  const sums = [0, 0, 0];
  let max = 0;
  for (let i = 0; i < ours.length; i++) {
    const difference = Math.abs(ours[i] - theirs[i]);
    sums[i % 3] += difference;
    max = Math.max(max, difference);
  }
  return { mean: sums.map((sum) => sum / (ours.length / 3)), max };
}

Deno.test("padToSquare() + resizeBicubic() match Pillow's expand2square + BICUBIC resize exactly", () => {
  for (const [i, testCase] of CASES.entries()) {
    const { image, resized } = reference[i];
    const ours = resizeBicubic(padToSquare(image, CLIP_FILL), testCase.size);
    const label = `${testCase.width}×${testCase.height} ${testCase.pattern} → ${testCase.size}`;
    assert.equal(ours.width, testCase.size, label);
    assert.equal(ours.data.length, resized.length, label);
    const stats = channelStats(ours.data, resized);
    for (const mean of stats.mean) assert.ok(mean < 0.5, `${label}: mean |difference| ${stats.mean}`);
    assert.equal(stats.max, 0, `${label}: max |difference| ${stats.max}, mean ${stats.mean}`);
  }
});

Deno.test("preprocessImage() gives transformers' float32 pixel values bit for bit", async () => {
  for (const i of [0, 2, 4, 7, 12]) {
    const { image, normalized } = reference[i];
    const ours = await preprocessImage(image, { imageSize: CASES[i].size });
    assert.equal(ours.length, normalized.length);
    const firstMismatch = ours.findIndex((value, at) => value !== normalized[at]);
    assert.equal(firstMismatch, -1, `case ${i}: first mismatch at ${firstMismatch}`);
  }
});

Deno.test("preprocessImage() lays out [3, size, size] with the padding colour and CLIP normalisation", async () => {
  // 2×1: red, blue; padded to 2×2 with the image in row 0 (top = (2 − 1) // 2 = 0); no resize.
  const image: RgbImage = { width: 2, height: 1, data: new Uint8Array([255, 0, 0, 0, 0, 255]) };
  const pixels = await preprocessImage(image, { imageSize: 2 });
  const red = [1.9303361177444458, -1.7520971298217773, -1.480219841003418];
  const blue = [-1.7922625541687012, -1.7520971298217773, 2.1458969116210938];
  const padding = [-0.011254520155489445, -0.01119600422680378, -0.0013328947825357318];
  const expected = [0, 1, 2].flatMap((c) => [red[c], blue[c], padding[c], padding[c]]);
  assert.equal(pixels.length, 12);
  for (let i = 0; i < 12; i++) {
    assert.ok(Math.abs(pixels[i] - expected[i]) < 1e-6, `value ${i}: ${pixels[i]}`);
  }
});

Deno.test("preprocessImage() of encoded bytes equals preprocessImage() of the same pixels", async () => {
  const image = makeTestImage(120, 45, { pattern: "photo", seed: 9 });
  const fromPng = await preprocessImage(await encodeImage(image, "png"), { imageSize: 64 });
  const fromPixels = await preprocessImage(image, { imageSize: 64 });
  assert.deepEqual(fromPng, fromPixels);
});

Deno.test("padToSquare() centres with Python's floor division and returns square images as is", () => {
  const image = makeTestImage(2, 5, { pattern: "noise" });
  const square = padToSquare(image, CLIP_FILL);
  assert.equal(square.width, 5);
  // left = (5 − 2) // 2 = 1: column 0 and columns 3, 4 are fill, columns 1, 2 the image
  for (let y = 0; y < 5; y++) {
    assert.deepEqual([...square.data.subarray((y * 5) * 3, (y * 5 + 1) * 3)], CLIP_FILL);
    assert.deepEqual([...square.data.subarray((y * 5 + 1) * 3, (y * 5 + 3) * 3)], [
      ...image.data.subarray(y * 6, y * 6 + 6),
    ]);
    assert.deepEqual([...square.data.subarray((y * 5 + 3) * 3, (y * 5 + 5) * 3)], [
      ...CLIP_FILL,
      ...CLIP_FILL,
    ]);
  }
  const already = makeTestImage(4, 4);
  assert.equal(padToSquare(already, CLIP_FILL), already);
  assert.equal(resizeBicubic(already, 4), already);
  assert.deepEqual(CLIP_MEAN.map((value) => Math.trunc(value * 255)), CLIP_FILL);
});

Deno.test("preprocessImage() refuses bad options and malformed images", async () => {
  const image = makeTestImage(3, 3);
  await assert.rejects(preprocessImage(image, { imageSize: 0 }), (error) => {
    assert.ok(error instanceof InputError);
    assert.match(error.message, /imageSize must be a positive integer, got 0/);
    return true;
  });
  await assert.rejects(preprocessImage(image, { std: [0.2, 0, 0.2] }), /std must be 3 finite numbers/);
  await assert.rejects(
    preprocessImage({ width: 3, height: 3, data: new Uint8Array(26) }),
    (error) => error instanceof ImageError && /data has 26 bytes, expected 3×3×3 = 27/.test(error.message),
  );
  assert.throws(
    () => padToSquare(makeTestImage(2, 3), [0, 0, 256]),
    /fill values must be integers in 0..255/,
  );
  assert.throws(() => resizeBicubic(image, 2.5), /size must be a positive integer, got 2.5/);
});
