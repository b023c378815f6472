/**
 * Image bombs are refused from their headers, before ffmpeg runs: a GIF whose logical screen is
 * huge, a highly compressed huge PNG, a JPEG of hundreds of thousands of empty segments, a GIF frame
 * outside its screen; and `maxImagePixels` bounds what a loaded model decodes.
 */
import assert from "node:assert/strict";
import { decodeImage, ImageError, loadModel } from "../mod.ts";
import { readImageHeader, runFfmpeg } from "../runtime/image/image_decode.ts";
import { gifScreenBomb, jpegSegmentBomb, pngBomb } from "../tools/fixtures/bombs.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

function rejectsWith(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  return assert.rejects(promise, (err) => err instanceof ImageError && pattern.test(err.message));
}

Deno.test("decodeImage() refuses a 35-byte GIF with an 8000×8000 logical screen from its header", async () => {
  const bomb = gifScreenBomb(8000);
  assert.equal(bomb.length, 35);
  assert.deepEqual(readImageHeader(bomb), { format: "gif", width: 8000, height: 8000 });
  await rejectsWith(decodeImage(bomb), /too large \(8000×8000 = 64000000 pixels, limit 16777216\)/);
});

Deno.test("decodeImage() refuses a real 8192² PNG of 360 KB, and a 4096² one under a lower maxPixels", async () => {
  const bomb = await pngBomb(8192);
  assert.ok(bomb.length < 400_000, `${bomb.length} bytes`);
  await rejectsWith(decodeImage(bomb), /too large \(8192×8192/);
  await rejectsWith(decodeImage(await pngBomb(4096), { maxPixels: 1_000_000 }), /limit 1000000/);
});

Deno.test("decodeImage() refuses a JPEG of 200,000 empty APP segments, and counts segments after the frame header", async () => {
  await rejectsWith(decodeImage(jpegSegmentBomb(200_000)), /more than 4096 marker segments/);
  // A real JPEG with the empty segments placed after its frame header.
  const run = await runFfmpeg(
    ["-f", "lavfi", "-i", "color=c=red:s=16x16", "-frames:v", "1", "out.jpg"],
    { outputs: ["out.jpg"] },
  );
  const jpeg = run.outputs.get("out.jpg")!;
  assert.equal((await decodeImage(jpeg)).width, 16);
  const sof = jpeg.findIndex((b, i) => b === 0xff && jpeg[i + 1] === 0xc0);
  const sofEnd = sof + 2 + ((jpeg[sof + 2] << 8) | jpeg[sof + 3]);
  const padded = new Uint8Array(jpeg.length + 5000 * 4);
  padded.set(jpeg.subarray(0, sofEnd));
  for (let i = 0; i < 5000; i++) padded.set([0xff, 0xe1, 0x00, 0x02], sofEnd + i * 4);
  padded.set(jpeg.subarray(sofEnd), sofEnd + 5000 * 4);
  await rejectsWith(decodeImage(padded), /marker segments/);
});

Deno.test("decodeImage() refuses a GIF frame that lies outside the logical screen", async () => {
  const bomb = gifScreenBomb(4);
  bomb.set([0x40, 0x1f], 20); // the frame's left edge: 8000
  await rejectsWith(decodeImage(bomb), /GIF frame 1×1 at \(8000, 0\) does not lie inside the 4×4 screen/);
});

Deno.test("loadModel({ maxImagePixels }) refuses larger encoded images and video frames before decoding", async () => {
  const dir = await ensureFixture("llava-f32-dyn");
  const png = (await runFfmpeg(
    ["-f", "lavfi", "-i", "color=c=blue:s=20x20", "-frames:v", "1", "out.png"],
    { outputs: ["out.png"] },
  )).outputs.get("out.png")!;
  const strict = await loadModel(dir, { backend: "cpu", maxImagePixels: 100 });
  const loose = await loadModel(dir, { backend: "cpu" });
  try {
    const request = { prompt: "Hi", image: png, maxNewTokens: 1 };
    await rejectsWith(strict.generate(request).result, /20×20 = 400 pixels, limit 100/);
    assert.equal((await loose.generate(request)).tokens.length, 1);
    await rejectsWith(loose.generate({ ...request, image: gifScreenBomb(8000) }).result, /too large/);
    await assert.rejects(() => loadModel(dir, { backend: "cpu", maxImagePixels: -1 }), /maxImagePixels/);
  } finally {
    strict.dispose();
    loose.dispose();
  }
});
