import assert from "node:assert/strict";
import { join } from "node:path";
import { ImageError, InputError } from "../runtime/core/errors.ts";
import {
  checkRgbImage,
  decodeImage,
  decodeVideoFrames,
  readImageHeader,
  type RgbImage,
  runFfmpeg,
} from "../runtime/image/image_decode.ts";
import {
  encodeGif,
  encodeImage,
  encodeVideo,
  makeTestImage,
  type PillowJob,
  pngWithHeader,
  posterize,
  runPillow,
  withExifOrientation,
} from "../tools/fixtures/images.ts";

// ---------------------------------------------------------------------------------------------
// Fixtures: sources, their encodings, and Pillow's decodes of those in withPillow (one Python run).
// ---------------------------------------------------------------------------------------------

const SOURCES: Record<string, RgbImage> = {
  dot: makeTestImage(1, 1, { pattern: "noise", seed: 1 }),
  tiny: makeTestImage(3, 3, { pattern: "noise", seed: 2 }),
  thin: makeTestImage(7, 300, { pattern: "noise", seed: 3 }),
  wide: makeTestImage(301, 6, { pattern: "edges", seed: 4 }),
  photo: makeTestImage(203, 151, { pattern: "photo", seed: 5 }),
  edges: makeTestImage(64, 48, { pattern: "edges", seed: 6 }),
  gradient: makeTestImage(500, 333, { pattern: "gradient", seed: 7 }),
};

/** Files Pillow encodes (settings ffmpeg's encoders do not offer), by name. */
const PILLOW_ENCODED: Record<
  string,
  { source: string; mode: "RGB" | "L"; options: Record<string, unknown> }
> = {
  "pillow-420.jpg": { source: "photo", mode: "RGB", options: { format: "JPEG", quality: 90 } },
  "pillow-progressive.jpg": {
    source: "photo",
    mode: "RGB",
    options: { format: "JPEG", quality: 80, progressive: true },
  },
  "pillow-gray.jpg": { source: "edges", mode: "L", options: { format: "JPEG", quality: 85 } },
  "pillow-422.jpg": { source: "thin", mode: "RGB", options: { format: "JPEG", quality: 90, subsampling: 1 } },
  "pillow.webp": { source: "gradient", mode: "RGB", options: { format: "WEBP", quality: 70 } },
};

/** Alpha from `lowest` (default 0) to 255 in a scattered ramp. */
const alphaRamp = (image: RgbImage, lowest = 0) =>
  new Uint8Array(image.width * image.height).map((_, i) => lowest + (i * 37) % (256 - lowest));

// Every libwebp encode comes first: in this ffmpeg build, a libwebp encode that follows an mjpeg
// encode that followed another libwebp encode traps (runFfmpeg then retries on a fresh instance,
// which costs a reload each time).
const withPillow = new Map<string, Uint8Array>();
const webpLossless = new Map<string, Uint8Array>();
for (const [name, source] of Object.entries(SOURCES)) {
  webpLossless.set(name, await encodeImage(source, "webp-lossless"));
  if (name !== "gradient") withPillow.set(`${name}.webp`, await encodeImage(source, "webp"));
}
// libwebp rewrites the colour of fully transparent pixels: keep alpha above 0 for the lossless one.
const webpLosslessAlpha = await encodeImage(SOURCES.photo, "webp-lossless", {
  alpha: alphaRamp(SOURCES.photo, 1),
});
withPillow.set(
  "photo-alpha.webp",
  await encodeImage(SOURCES.photo, "webp", { alpha: alphaRamp(SOURCES.photo) }),
);
/** Three 48×32 frames (the first flat grey, the others not) as an animated WebP. */
const animatedWebp = await (async () => {
  const frames = new Uint8Array(3 * 48 * 32 * 3).map((_, i) => (i < 48 * 32 * 3 ? 40 : i & 255));
  const args = "-v error -f rawvideo -pix_fmt rgb24 -s 48x32 -r 5 -i in.raw -c:v libwebp_anim".split(" ");
  args.push("-loop", "0", "-f", "webp", "out.webp");
  const run = await runFfmpeg(args, { inputs: { "in.raw": frames }, outputs: ["out.webp"] });
  return run.outputs.get("out.webp")!;
})();
withPillow.set("photo-16bit.png", await encodeImage(SOURCES.photo, "png16"));
for (const name of ["dot", "tiny", "thin", "wide", "photo", "edges"]) {
  for (const chroma of ["420", "422", "444"] as const) {
    withPillow.set(`${name}-${chroma}.jpg`, await encodeImage(SOURCES[name], "jpeg", { chroma }));
  }
}

const pillowDecoded = await (async () => {
  const dir = await Deno.makeTempDir({ prefix: "image-decode-" });
  try {
    const jobs: PillowJob[] = [];
    for (const [name, spec] of Object.entries(PILLOW_ENCODED)) {
      const source = SOURCES[spec.source];
      const data = spec.mode === "L" ? source.data.filter((_, i) => i % 3 === 1) : source.data;
      await Deno.writeFile(join(dir, `${name}.raw`), data);
      const { width, height } = source;
      jobs.push({
        op: "encode",
        input: `${name}.raw`,
        width,
        height,
        mode: spec.mode,
        output: name,
        options: spec.options,
      });
    }
    for (const [name, bytes] of withPillow) await Deno.writeFile(join(dir, name), bytes);
    for (const name of [...withPillow.keys(), ...Object.keys(PILLOW_ENCODED)]) {
      jobs.push({ op: "decode", input: name, output: `${name}.rgb` });
    }
    await runPillow(jobs, dir);
    for (const name of Object.keys(PILLOW_ENCODED)) {
      withPillow.set(name, await Deno.readFile(join(dir, name)));
    }
    const decoded = new Map<string, Uint8Array>();
    for (const name of withPillow.keys()) decoded.set(name, await Deno.readFile(join(dir, `${name}.rgb`)));
    return decoded;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
})();

function differences(ours: Uint8Array, theirs: Uint8Array): { mean: number; max: number } {
  assert.equal(ours.length, theirs.length);
  let sum = 0, max = 0;
  for (let i = 0; i < ours.length; i++) {
    const difference = Math.abs(ours[i] - theirs[i]);
    sum += difference;
    max = Math.max(max, difference);
  }
  return { mean: sum / ours.length, max };
}

/** A small valid image that must still decode after every failure. */
const CANARY = makeTestImage(5, 4, { pattern: "noise", seed: 42 });
const CANARY_PNG = await encodeImage(CANARY, "png");

async function assertStillDecodes(): Promise<void> {
  assert.deepEqual(await decodeImage(CANARY_PNG), CANARY);
}

async function assertImageError(bytes: Uint8Array, fragment: string, options = {}): Promise<void> {
  await assert.rejects(decodeImage(bytes, options), (error) => {
    assert.ok(error instanceof ImageError, `expected ImageError, got ${error}`);
    assert.ok(error.message.includes(fragment), `"${error.message}" lacks "${fragment}"`);
    assert.equal(error.where, "image");
    return true;
  });
  await assertStillDecodes();
}

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

Deno.test("decodeImage() decodes PNG (8 and 16 bit), BMP (24 and 32 bit) and lossless WebP exactly", async () => {
  for (const [name, source] of Object.entries(SOURCES)) {
    for (const format of ["png", "png16", "bmp", "bmp32", "webp-lossless"] as const) {
      const encoded = format === "webp-lossless"
        ? webpLossless.get(name)!
        : await encodeImage(source, format);
      const decoded = await decodeImage(encoded);
      assert.equal(decoded.width, source.width, `${name} ${format}`);
      assert.equal(decoded.height, source.height, `${name} ${format}`);
      assert.ok(
        decoded.data.every((value, i) => value === source.data[i]),
        `${name} ${format}: pixels differ`,
      );
    }
  }
});

Deno.test("decodeImage() keeps the high byte of 16-bit PNG samples, as Pillow does", () => {
  assert.deepEqual(pillowDecoded.get("photo-16bit.png"), SOURCES.photo.data);
});

Deno.test("decodeImage() replicates grey PNG samples into R, G and B", async () => {
  const source = SOURCES.photo;
  const decoded = await decodeImage(await encodeImage(source, "png-gray"));
  // ffmpeg's rgb24 → gray conversion made the grey levels; each must come back three times.
  for (let i = 0; i < decoded.data.length; i += 3) {
    assert.equal(decoded.data[i], decoded.data[i + 1]);
    assert.equal(decoded.data[i], decoded.data[i + 2]);
  }
  assert.ok(differences(decoded.data, source.data).mean > 5, "grey must differ from the colour source");
});

Deno.test("decodeImage() drops alpha without compositing (PNG, WebP, BMP)", async () => {
  const source = SOURCES.photo;
  const encoded = [
    ["png", await encodeImage(source, "png", { alpha: alphaRamp(source) })],
    ["png16", await encodeImage(source, "png16", { alpha: alphaRamp(source) })],
    ["bmp32", await encodeImage(source, "bmp32", { alpha: alphaRamp(source) })],
    ["webp-lossless", webpLosslessAlpha],
  ] as const;
  for (const [format, bytes] of encoded) {
    const decoded = await decodeImage(bytes);
    assert.ok(decoded.data.every((value, i) => value === source.data[i]), `${format}: RGB changed by alpha`);
  }
});

Deno.test("decodeImage() matches Pillow on JPEG (4:2:0, 4:2:2, 4:4:4, grey, progressive) within IDCT rounding", async () => {
  for (const [name, expected] of pillowDecoded) {
    if (!name.endsWith(".jpg")) continue;
    const decoded = await decodeImage(withPillow.get(name)!);
    const { mean, max } = differences(decoded.data, expected);
    // Only IDCT rounding differs (ffmpeg's float AAN vs libjpeg's islow): a few values by 1–3.
    assert.ok(max <= 3 && mean < (expected.length > 100 ? 0.06 : 0.25), `${name}: mean ${mean}, max ${max}`);
  }
  // sanity: the decode is the picture, not just Pillow-like noise
  const photo = await decodeImage(withPillow.get("photo-444.jpg")!);
  assert.ok(differences(photo.data, SOURCES.photo.data).mean < 6);
});

Deno.test("decodeImage() matches Pillow (libwebp) on lossy WebP exactly", async () => {
  for (const [name, expected] of pillowDecoded) {
    if (!name.endsWith(".webp")) continue;
    const decoded = await decodeImage(withPillow.get(name)!);
    const { mean, max } = differences(decoded.data, expected);
    assert.equal(max, 0, `${name}: mean ${mean.toFixed(4)}, max ${max} vs Pillow`);
  }
});

Deno.test("decodeImage() ignores EXIF orientation, like PIL.Image.open", async () => {
  const jpeg = await encodeImage(SOURCES.photo, "jpeg");
  const plain = await decodeImage(jpeg);
  for (const orientation of [3, 6, 8]) {
    const rotated = await decodeImage(withExifOrientation(jpeg, orientation));
    assert.equal(rotated.width, 203, `orientation ${orientation}`);
    assert.equal(rotated.height, 151, `orientation ${orientation}`);
    assert.deepEqual(rotated.data, plain.data, `orientation ${orientation}`);
  }
});

Deno.test("decodeImage() returns a GIF's first frame with its palette colours, transparent index included", async () => {
  const first = posterize(SOURCES.photo, 6);
  const second = posterize(makeTestImage(203, 151, { pattern: "noise", seed: 11 }), 6);
  const gif = encodeGif([first, second]);
  assert.deepEqual(await decodeImage(gif), first);

  // A transparent palette entry comes back as its own colour (PIL's P → RGB ignores transparency).
  const holed = posterize(SOURCES.edges, 6);
  for (let i = 0; i < holed.data.length; i += 7 * 3) holed.data.set([10, 20, 30], i);
  const transparentGif = encodeGif([holed], { transparent: [10, 20, 30] });
  assert.equal(readImageHeader(transparentGif).gifTransparentRgb, 0x0a141e);
  assert.deepEqual(await decodeImage(transparentGif), holed);
  // Pillow agrees
  const dir = await Deno.makeTempDir({ prefix: "gif-" });
  try {
    await Deno.writeFile(join(dir, "t.gif"), transparentGif);
    await runPillow([{ op: "decode", input: "t.gif", output: "t.rgb" }], dir);
    assert.deepEqual(await Deno.readFile(join(dir, "t.rgb")), holed.data);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decodeImage() reads a top-down BMP (negative height) right side up", async () => {
  const source = SOURCES.edges;
  const bmp = await encodeImage(source, "bmp");
  const view = new DataView(bmp.buffer, bmp.byteOffset);
  view.setInt32(22, -view.getInt32(22, true), true); // same rows, now declared top-down
  const decoded = await decodeImage(bmp);
  const rowBytes = source.width * 3;
  for (let y = 0; y < source.height; y++) {
    const flippedRow = source.data.subarray(
      (source.height - 1 - y) * rowBytes,
      (source.height - y) * rowBytes,
    );
    assert.deepEqual(decoded.data.subarray(y * rowBytes, (y + 1) * rowBytes), flippedRow, `row ${y}`);
  }
});

Deno.test("readImageHeader() reads each container's declared size without decoding", async () => {
  const photo = SOURCES.photo;
  const cases: [Uint8Array, string][] = [
    [await encodeImage(photo, "png"), "png"],
    [await encodeImage(photo, "jpeg"), "jpeg"],
    [withExifOrientation(await encodeImage(photo, "jpeg"), 6), "jpeg"],
    [withPillow.get("photo.webp")!, "webp"],
    [webpLossless.get("photo")!, "webp"],
    [withPillow.get("photo-alpha.webp")!, "webp"],
    [encodeGif([posterize(photo, 6)]), "gif"],
    [await encodeImage(photo, "bmp"), "bmp"],
    [withPillow.get("pillow-progressive.jpg")!, "jpeg"],
  ];
  for (const [bytes, format] of cases) {
    assert.deepEqual(
      { ...readImageHeader(bytes), gifTransparentRgb: undefined },
      { format, width: 203, height: 151, gifTransparentRgb: undefined },
    );
  }
  assert.deepEqual(readImageHeader(pngWithHeader(20000, 20000)), {
    format: "png",
    width: 20000,
    height: 20000,
  });
});

// ---------------------------------------------------------------------------------------------
// Video
// ---------------------------------------------------------------------------------------------

/** Ten well separated solid colours, one per frame. */
const FRAME_COLOURS: [number, number, number][] = [
  [230, 30, 30],
  [30, 230, 30],
  [30, 30, 230],
  [230, 230, 30],
  [230, 30, 230],
  [30, 230, 230],
  [240, 240, 240],
  [20, 20, 20],
  [128, 64, 0],
  [0, 128, 200],
];

function solidFrame(colour: [number, number, number]): RgbImage {
  const data = new Uint8Array(48 * 32 * 3);
  for (let i = 0; i < data.length; i += 3) data.set(colour, i);
  return { width: 48, height: 32, data };
}

function nearestColour(image: RgbImage): number {
  const mean = [0, 1, 2].map((c) => image.data.filter((_, i) => i % 3 === c).reduce((a, b) => a + b, 0));
  const pixels = image.width * image.height;
  const distance = (colour: number[]) =>
    colour.reduce((sum, value, c) => sum + (value - mean[c] / pixels) ** 2, 0);
  const best = FRAME_COLOURS.map(distance);
  const index = best.indexOf(Math.min(...best));
  assert.ok(
    Math.sqrt(best[index]) < 8,
    `frame colour ${mean.map((m) => m / pixels)} far from ${FRAME_COLOURS[index]}`,
  );
  return index;
}

Deno.test("decodeVideoFrames() returns evenly spaced frames (MJPEG in AVI, MPEG-4 in MP4)", async () => {
  const frames = FRAME_COLOURS.map(solidFrame);
  for (
    const options of [{ codec: "mjpeg", container: "avi" }, { codec: "mpeg4", container: "mp4" }] as const
  ) {
    const video = await encodeVideo(frames, options);
    const picked = await decodeVideoFrames(video, { frames: 4 });
    assert.deepEqual(picked.map(nearestColour), [0, 3, 6, 9], options.container);
    assert.deepEqual([picked[0].width, picked[0].height, picked[0].data.length], [48, 32, 48 * 32 * 3]);
    assert.deepEqual((await decodeVideoFrames(video, { frames: 1 })).map(nearestColour), [0]);
    // more frames than the video has: linspace(0, 9, 13) floored repeats some
    const many = await decodeVideoFrames(video, { frames: 13 });
    assert.deepEqual(many.map(nearestColour), [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9], options.container);
  }
});

Deno.test("decodeVideoFrames() refuses empty input, non-videos, oversized frames and bad frame counts", async () => {
  const video = await encodeVideo(FRAME_COLOURS.slice(0, 3).map(solidFrame));
  const cases: [Promise<unknown>, RegExp][] = [
    [decodeVideoFrames(new Uint8Array(), { frames: 2 }), /Cannot decode video: empty input/],
    [
      decodeVideoFrames(new TextEncoder().encode("just some text, no video here"), { frames: 2 }),
      /Cannot decode video: not a video or corrupt/,
    ],
    [
      decodeVideoFrames(video, { frames: 2, maxPixels: 1000 }),
      /too large \(48×32 = 1536 pixels, limit 1000\)/,
    ],
  ];
  for (const [promise, message] of cases) {
    await assert.rejects(promise, (error) => error instanceof ImageError && message.test(error.message));
  }
  await assert.rejects(
    decodeVideoFrames(video, { frames: 0 }),
    (error) =>
      error instanceof InputError && /frames must be an integer in 1\.\.4096, got 0/.test(error.message),
  );
  assert.equal((await decodeVideoFrames(video, { frames: 2 })).length, 2);
  await assertStillDecodes();
});

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

Deno.test("decodeImage() refuses bad input with a specific ImageError and keeps working after each", async () => {
  const noisePng = await encodeImage(makeTestImage(120, 90, { pattern: "noise" }), "png");
  const noiseJpeg = await encodeImage(makeTestImage(120, 90, { pattern: "noise" }), "jpeg");
  const corruptJpeg = noiseJpeg.slice();
  for (let i = noiseJpeg.length >> 1; i < (noiseJpeg.length >> 1) + 400; i++) {
    corruptJpeg[i] = (i * 7919) & 255;
  }
  const cases: [Uint8Array, string, { maxPixels?: number }?][] = [
    [new Uint8Array(), "Cannot decode image: empty input"],
    [
      new TextEncoder().encode("hello, this is not an image"),
      "Cannot decode image: not an image (unrecognised header)",
    ],
    [new Uint8Array([0, 0, 1, 0, 1, 0, 32, 32]), "not an image (unrecognised header)"],
    [noisePng.slice(0, 20), "truncated or corrupt data (PNG header cut short)"],
    [noisePng.slice(0, Math.floor(noisePng.length * 0.6)), "Cannot decode image: truncated or corrupt data"],
    [
      noiseJpeg.slice(0, Math.floor(noiseJpeg.length * 0.6)),
      "Cannot decode image: truncated or corrupt data",
    ],
    [corruptJpeg, "Cannot decode image: truncated or corrupt data"],
    [new Uint8Array([0xff, 0xd8, 0xff, 0xda, 0, 2]), "no frame header (SOF) before its data"],
    [pngWithHeader(20000, 20000), "too large (20000×20000 = 400000000 pixels, limit 16777216)"],
    [pngWithHeader(0, 5), "Cannot decode image: zero size (0×5)"],
    [noisePng, "too large (120×90 = 10800 pixels, limit 10000)", { maxPixels: 10000 }],
    [animatedWebp, "animated WebP is not supported"],
  ];
  for (const [bytes, fragment, options] of cases) await assertImageError(bytes, fragment, options);
});

Deno.test("runFfmpeg() serialises concurrent decodes, good and bad mixed", async () => {
  const jpeg = withPillow.get("photo-420.jpg")!;
  const expectedJpeg = await decodeImage(jpeg);
  const results = await Promise.allSettled([
    decodeImage(CANARY_PNG),
    decodeImage(new TextEncoder().encode("text")),
    decodeImage(jpeg),
    decodeImage(CANARY_PNG.slice(0, CANARY_PNG.length - 30)),
    decodeImage(encodeGif([posterize(SOURCES.edges, 6)])),
    decodeImage(CANARY_PNG),
  ]);
  assert.deepEqual(results.map((result) => result.status), [
    "fulfilled",
    "rejected",
    "fulfilled",
    "rejected",
    "fulfilled",
    "fulfilled",
  ]);
  const value = (i: number) => (results[i] as PromiseFulfilledResult<RgbImage>).value;
  assert.deepEqual(value(0), CANARY);
  assert.deepEqual(value(2), expectedJpeg);
  assert.deepEqual(value(4), posterize(SOURCES.edges, 6));
  assert.deepEqual(value(5), CANARY);
});

Deno.test("checkRgbImage() accepts well-formed raw images and names what is wrong", () => {
  checkRgbImage({ width: 2, height: 3, data: new Uint8Array(18) }, "image");
  const bad: [unknown, RegExp][] = [
    [null, /expected \{ width, height, data \}/],
    [{ width: 0, height: 3, data: new Uint8Array(0) }, /width must be a positive integer, got 0/],
    [{ width: 2, height: 1.5, data: new Uint8Array(9) }, /height must be a positive integer, got 1.5/],
    [{ width: 2, height: 3, data: new Float32Array(18) }, /data must be a Uint8Array/],
    [{ width: 2, height: 3, data: new Uint8Array(24) }, /data has 24 bytes, expected 2×3×3 = 18/],
  ];
  for (const [image, message] of bad) {
    assert.throws(() => checkRgbImage(image, "request.image"), (error) => {
      assert.ok(error instanceof ImageError);
      assert.match(error.message, message);
      assert.equal(error.where, "request.image");
      return true;
    });
  }
});
