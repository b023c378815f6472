/**
 * Image and video input: turns encoded bytes (PNG, JPEG, WebP, GIF first frame, BMP; any video
 * container ffmpeg reads) into 8-bit RGB pixels, `data` laid out as [height, width, 3].
 *
 * Decoding runs in ffmpeg compiled to WebAssembly (`npm:@ffmpeg/core@0.12.10`, ffmpeg 5.1), loaded
 * once per process on the first encoded input and shared by every call; calls are serialised, and a
 * crashed instance is dropped so the next call loads a fresh one.
 *
 * The pixels match what LLaVA's `PIL.Image.open(f).convert("RGB")` produces:
 * - EXIF orientation is NOT applied (ffmpeg's autorotation is turned off), alpha is dropped without
 *   compositing, palette images keep their palette colours (a GIF's transparent index too).
 * - JPEG: ffmpeg's decoded Y/Cb/Cr planes are upsampled and converted here with libjpeg's fancy
 *   (triangle) upsampling and fixed-point YCbCr→RGB, as libjpeg-turbo does for Pillow; only IDCT
 *   rounding differs (a few values off by 1–3).
 * - WebP (lossy): the VP8 planes are upsampled and converted with libwebp's fancy upsampler and
 *   fixed-point YUV→RGB, as libwebp does for Pillow.
 * - 16-bit PNGs keep the high byte of each sample (Pillow does the same for RGB; for 16-bit grey
 *   Pillow clips to 255 instead, which we do not copy).
 * - Strict on damage: truncated data or corrupt JPEG entropy data is an error (Pillow tolerates the
 *   latter with a warning).
 *
 * Before any decoding, the declared size is read from the container header here, so an empty,
 * unknown, zero-sized or oversized image (a 100-byte file can declare 20000×20000) is refused
 * without running the decoder. Videos are sized with ffprobe (headers only) before decoding.
 * @module
 */
import { ImageError, InputError } from "../core/errors.ts";
import { canDecodeInPage, decodeInPage } from "./page_decode.ts";

/** An 8-bit RGB image. */
export interface RgbImage {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** [height, width, 3] RGB, row-major, no padding. */
  data: Uint8Array;
}

/** The container formats {@link decodeImage} accepts. */
export type ImageFormat = "png" | "jpeg" | "webp" | "gif" | "bmp";

/** What a container header declares, read without decoding. */
export interface ImageHeader {
  format: ImageFormat;
  width: number;
  height: number;
  /** GIF only: the RGB colour (0xRRGGBB) of the first frame's transparent palette index, if any. */
  gifTransparentRgb?: number;
}

/** Options of {@link decodeImage}. */
export interface DecodeImageOptions {
  /** Refuse images with more pixels than this (default {@link DEFAULT_MAX_PIXELS} = 4096²). */
  maxPixels?: number;
}

/** Options of {@link decodeVideoFrames}. */
export interface DecodeVideoOptions {
  /** How many frames to return, evenly spaced over the video. */
  frames: number;
  /** Refuse videos whose frames have more pixels than this (default {@link DEFAULT_MAX_PIXELS} = 4096²). */
  maxPixels?: number;
}

/** Options of {@link runFfmpeg}. */
export interface RunFfmpegOptions {
  /** Files written into the run's private working directory before the run. */
  inputs?: Record<string, Uint8Array>;
  /** Files read back from the working directory after the run (missing ones are left out). */
  outputs?: string[];
  /** Which program's `main` to run (default "ffmpeg"). */
  program?: "ffmpeg" | "ffprobe";
}

/** What {@link runFfmpeg} returns. */
export interface FfmpegRun {
  /** ffmpeg's exit status (0 = success). ffprobe does not report one: it is always -1. */
  exitCode: number;
  /** Every line ffmpeg printed, stdout and stderr interleaved. */
  log: string[];
  /** The requested outputs that exist after the run. */
  outputs: Map<string, Uint8Array>;
}

/**
 * Default pixel limit of decoded images and video frames: 4096² = 16,777,216 (a 12-megapixel
 * photo fits). Decoding costs about 30 bytes per pixel at peak, so this bounds one decode near 500 MB.
 */
export const DEFAULT_MAX_PIXELS = 4096 * 4096;

/** Most JPEG marker segments accepted (real files have tens; a bomb has hundreds of thousands). */
const MAX_JPEG_SEGMENTS = 4096;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/**
 * Decodes one image (PNG, JPEG, WebP, GIF's first frame, BMP) to RGB, as Pillow's
 * `Image.open(f).convert("RGB")` would. In a page (the browser bundle) the browser's decoder does
 * it (`page_decode.ts`): the same pixels for opaque PNG, GIF and BMP.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decodeImage, runFfmpeg } from "./image_decode.ts";
 * const red = new Uint8Array(4 * 2 * 3).map((_, i) => (i % 3 === 0 ? 255 : 0));
 * const run = await runFfmpeg(
 *   ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "4x2", "-i", "in.rgb", "out.png"],
 *   { inputs: { "in.rgb": red }, outputs: ["out.png"] },
 * );
 * const image = await decodeImage(run.outputs.get("out.png")!);
 * assert.equal(image.width, 4);
 * assert.equal(image.height, 2);
 * assert.deepEqual(image.data, red); // PNG is lossless
 * ```
 */
export async function decodeImage(bytes: Uint8Array, options: DecodeImageOptions = {}): Promise<RgbImage> {
  const header = readImageHeader(bytes);
  checkPixelCount(header.width, header.height, options.maxPixels ?? DEFAULT_MAX_PIXELS, "image");
  // A page (the browser bundle) has no ffmpeg: the browser's decoder reads the image instead.
  if (typeof Deno === "undefined" && canDecodeInPage()) return await decodeInPage(bytes, header);
  const inputArgs = [...DEMUXER_ARGS[header.format]];
  if (header.gifTransparentRgb !== undefined) {
    inputArgs.push("-trans_color", String(header.gifTransparentRgb));
  }
  // JPEG: refuse damaged entropy data instead of concealing it; of ffmpeg's IDCTs, the floating-point
  // AAN one comes closest to libjpeg's (fewest values off by one).
  if (header.format === "jpeg") inputArgs.push("-err_detect", "explode", "-idct", "faani");

  // First pass: the decoder's own pixel format, no conversion (ffmpeg's converters differ from
  // Pillow's; the formats we know are converted below exactly as Pillow's libraries do).
  const native = await decodeFirstFrame(bytes, inputArgs, []);
  const frame = parseRawOutputStream(native.log);
  checkDecodedSize(frame, header);
  const rgb = rawFrameToRgb(native.outputs.get("out.raw")!, frame, header.format);
  if (rgb !== null) return { width: header.width, height: header.height, data: rgb };

  // Second pass for the rest (palettes with odd layouts, CMYK JPEG, 1-bit, 15/16-bit BMP...).
  const converted = await decodeFirstFrame(bytes, inputArgs, ["-pix_fmt", "rgb24", ...SWS_ARGS]);
  const data = converted.outputs.get("out.raw")!;
  if (data.length !== header.width * header.height * 3) throw corrupt("decoded size differs from the header");
  return { width: header.width, height: header.height, data };
}

/**
 * Decodes `frames` evenly spaced frames of a video: frame indices
 * `floor(i × (total − 1) / (frames − 1))` for i = 0..frames−1 (numpy's
 * `linspace(0, total − 1, frames, dtype=int)`; frame 0 alone when `frames` is 1), total being the
 * video stream's packet count. A video with fewer frames than asked repeats frames (the repeats
 * share one `data`). Rotation metadata is not applied; colours are converted by ffmpeg's swscale
 * (bicubic, accurate rounding, full chroma), as video readers built on ffmpeg do.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decodeVideoFrames, runFfmpeg } from "./image_decode.ts";
 * const frames = 6, side = 16, raw = new Uint8Array(frames * side * side * 3);
 * for (let f = 0; f < frames; f++) raw.fill(f * 40, f * side * side * 3, (f + 1) * side * side * 3);
 * const run = await runFfmpeg(
 *   ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "16x16", "-r", "6", "-i", "in.rgb", "-c:v", "mjpeg", "out.avi"],
 *   { inputs: { "in.rgb": raw }, outputs: ["out.avi"] },
 * );
 * const picked = await decodeVideoFrames(run.outputs.get("out.avi")!, { frames: 3 });
 * // Frames 0, 2 and 5 (grey levels 0, 80, 200), give or take the JPEG rounding:
 * const levels = picked.map((image) => image.data[0]);
 * [0, 80, 200].forEach((level, i) => assert.ok(Math.abs(levels[i] - level) <= 4, `${levels}`));
 * ```
 */
export async function decodeVideoFrames(bytes: Uint8Array, options: DecodeVideoOptions): Promise<RgbImage[]> {
  const { frames } = options;
  if (!Number.isSafeInteger(frames) || frames < 1 || frames > 4096) {
    throw new InputError(
      `Cannot decode video: frames must be an integer in 1..4096, got ${frames}`,
      "frames",
    );
  }
  if (bytes.length === 0) throw new ImageError("Cannot decode video: empty input", "video");
  const { width, height, total } = await probeVideo(bytes);
  checkPixelCount(width, height, options.maxPixels ?? DEFAULT_MAX_PIXELS, "video");

  const picks = evenlySpacedIndices(total, frames);
  const unique = [...new Set(picks)];
  const selectExpr = unique.map((index) => `eq(n\\,${index})`).join("+");
  const args = ["-hide_banner", "-nostats", "-v", "error", "-noautorotate", "-i", "in", "-map", "0:v:0"];
  args.push("-vf", `select=${selectExpr}`, "-fps_mode", "passthrough", "-frames:v", String(unique.length));
  args.push("-f", "rawvideo", "-pix_fmt", "rgb24", ...SWS_ARGS, "out.raw");
  const run = await runFfmpeg(args, { inputs: { in: bytes }, outputs: ["out.raw"] });
  const raw = run.outputs.get("out.raw");
  const frameBytes = width * height * 3;
  if (run.exitCode !== 0 || raw === undefined || raw.length < frameBytes) {
    throw new ImageError(`Cannot decode video: truncated or corrupt data${ffmpegReason(run.log)}`, "video");
  }
  // A container may announce more frames than decode; missing picks reuse the last decoded one.
  const decodedCount = Math.min(unique.length, Math.floor(raw.length / frameBytes));
  const images = unique.slice(0, decodedCount).map((_, i): RgbImage => ({
    width,
    height,
    data: raw.slice(i * frameBytes, (i + 1) * frameBytes),
  }));
  return picks.map((index) => images[Math.min(unique.indexOf(index), decodedCount - 1)]);
}

/**
 * Checks a caller-supplied raw image: positive integer `width` and `height`, and `data` a
 * Uint8Array of exactly width × height × 3 bytes. Throws {@link ImageError} naming `where`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRgbImage } from "./image_decode.ts";
 * import { ImageError } from "../core/errors.ts";
 * const image: unknown = { width: 2, height: 1, data: new Uint8Array(6) };
 * checkRgbImage(image, "image");
 * assert.equal(image.width, 2); // `image` is now typed as an RgbImage
 * assert.throws(() => checkRgbImage({ width: 2, height: 1, data: new Uint8Array(5) }, "image"), ImageError);
 * ```
 */
export function checkRgbImage(image: unknown, where: string): asserts image is RgbImage {
  if (typeof image !== "object" || image === null) {
    throw new ImageError("Cannot use image: expected { width, height, data }", where);
  }
  const { width, height, data } = image as Partial<RgbImage>;
  for (const [name, value] of [["width", width], ["height", height]] as const) {
    if (!Number.isSafeInteger(value) || (value as number) < 1) {
      throw new ImageError(`Cannot use image: ${name} must be a positive integer, got ${value}`, where);
    }
  }
  if (!(data instanceof Uint8Array)) {
    throw new ImageError("Cannot use image: data must be a Uint8Array of RGB bytes", where);
  }
  const expected = width! * height! * 3;
  if (data.length !== expected) {
    throw new ImageError(
      `Cannot use image: data has ${data.length} bytes, expected ${width}×${height}×3 = ${expected}`,
      where,
    );
  }
}

/**
 * Reads the format and declared size from an image's header (PNG IHDR, JPEG SOFn, WebP
 * VP8/VP8L/VP8X, GIF logical screen, BMP info header) without decoding pixels.
 * Throws {@link ImageError} for empty input, unknown magic bytes, a header cut short or
 * malformed, and animated WebP (which ffmpeg 5.1 cannot decode).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { readImageHeader } from "./image_decode.ts";
 * const png = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 78, 32, 0, 0, 78, 32]);
 * assert.deepEqual(readImageHeader(png), { format: "png", width: 20000, height: 20000 }); // read without decoding
 * ```
 */
export function readImageHeader(bytes: Uint8Array): ImageHeader {
  if (bytes.length === 0) throw new ImageError("Cannot decode image: empty input", "image");
  if (startsWith(bytes, 0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return readPngHeader(bytes);
  if (startsWith(bytes, 0, [0xff, 0xd8, 0xff])) return readJpegHeader(bytes);
  if (startsWith(bytes, 0, ascii("RIFF")) && startsWith(bytes, 8, ascii("WEBP"))) {
    return readWebpHeader(bytes);
  }
  if (startsWith(bytes, 0, ascii("GIF87a")) || startsWith(bytes, 0, ascii("GIF89a"))) {
    return readGifHeader(bytes);
  }
  if (startsWith(bytes, 0, ascii("BM"))) return readBmpHeader(bytes);
  throw new ImageError("Cannot decode image: not an image (unrecognised header)", "image");
}

/**
 * Runs ffmpeg (or ffprobe) in the shared WebAssembly instance with `args` (after ffmpeg's own
 * `-nostdin -y`), in a fresh working directory holding `inputs`; returns the exit status, the log
 * and the requested `outputs`. Runs are serialised; the directory is removed afterwards. The log
 * level starts at "info" unless `args` set one (`-v`); other global options (`-hide_banner`...)
 * stay set for later runs, as in one ffmpeg process. A run that traps is run once more on a fresh
 * instance; a second trap throws {@link ImageError} (`where` "ffmpeg").
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { runFfmpeg } from "./image_decode.ts";
 * const gray = new Uint8Array(8 * 8).fill(128);
 * const run = await runFfmpeg(
 *   ["-f", "rawvideo", "-pix_fmt", "gray", "-s", "8x8", "-i", "in.raw", "out.bmp"],
 *   { inputs: { "in.raw": gray }, outputs: ["out.bmp"] },
 * );
 * assert.equal(run.exitCode, 0);
 * assert.deepEqual(run.outputs.get("out.bmp")?.subarray(0, 2), new TextEncoder().encode("BM"));
 * ```
 */
export function runFfmpeg(args: string[], options: RunFfmpegOptions = {}): Promise<FfmpegRun> {
  const job = ffmpegQueue.then(() => runRetryingOnTrap(args, options));
  ffmpegQueue = job.catch(() => undefined);
  return job;
}

// ---------------------------------------------------------------------------------------------
// Container headers
// ---------------------------------------------------------------------------------------------

/** ffmpeg input options per format: the demuxer and decoder are forced, never guessed. */
const DEMUXER_ARGS: Record<ImageFormat, string[]> = {
  png: ["-f", "image2", "-c:v", "png"],
  jpeg: ["-f", "image2", "-c:v", "mjpeg"],
  webp: ["-f", "image2", "-c:v", "webp"],
  gif: ["-f", "gif"],
  bmp: ["-f", "image2", "-c:v", "bmp"],
};

function readPngHeader(bytes: Uint8Array): ImageHeader {
  // signature (8) | IHDR length (4) | "IHDR" | width u32be | height u32be
  need(bytes, 24, "PNG");
  if (!startsWith(bytes, 12, ascii("IHDR"))) throw corrupt("PNG does not start with an IHDR chunk");
  return { format: "png", width: u32be(bytes, 16), height: u32be(bytes, 20) };
}

function readJpegHeader(bytes: Uint8Array): ImageHeader {
  let at = 2;
  let segments = 0;
  while (true) {
    need(bytes, at + 2, "JPEG");
    if (bytes[at] !== 0xff) throw corrupt(`JPEG has no marker at byte ${at}`);
    while (at < bytes.length && bytes[at] === 0xff) at++; // fill bytes
    need(bytes, at + 1, "JPEG");
    const marker = bytes[at++];
    countJpegSegment(++segments);
    const standalone = marker === 0x01 || marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7);
    if (standalone) continue;
    if (marker === 0xd9 || marker === 0xda) throw corrupt("JPEG has no frame header (SOF) before its data");
    need(bytes, at + 2, "JPEG");
    const length = u16be(bytes, at);
    if (length < 2) throw corrupt("JPEG segment length below 2");
    const isFrameHeader = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
      marker !== 0xcc;
    if (isFrameHeader) {
      // length u16 | precision u8 | height u16 | width u16 | components u8
      need(bytes, at + 8, "JPEG");
      countRemainingJpegSegments(bytes, at + length, segments);
      return { format: "jpeg", width: u16be(bytes, at + 5), height: u16be(bytes, at + 3) };
    }
    at += length;
  }
}

function countJpegSegment(segments: number): void {
  if (segments > MAX_JPEG_SEGMENTS) {
    throw new ImageError(
      `Cannot decode image: JPEG has more than ${MAX_JPEG_SEGMENTS} marker segments (a decompression bomb)`,
      "image",
    );
  }
}

/**
 * Walks the JPEG's segments after the frame header, skipping entropy-coded data, and refuses files
 * with too many (ffmpeg spends seconds and hundreds of MB on hundreds of thousands of empty ones).
 * Damage here is left to the decoder to report.
 */
function countRemainingJpegSegments(bytes: Uint8Array, at: number, segments: number): void {
  while (at + 1 < bytes.length) {
    if (bytes[at] !== 0xff) return;
    while (at < bytes.length && bytes[at] === 0xff) at++;
    if (at + 2 >= bytes.length) return;
    const marker = bytes[at++];
    countJpegSegment(++segments);
    if (marker === 0xd9) return;
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue;
    at += u16be(bytes, at);
    if (marker !== 0xda) continue;
    // Entropy-coded data runs to the next marker that is not a stuffed 0x00 nor a restart marker.
    while (at + 1 < bytes.length) {
      const next = bytes[at + 1];
      if (bytes[at] === 0xff && next !== 0x00 && next !== 0xff && !(next >= 0xd0 && next <= 0xd7)) break;
      at++;
    }
  }
}

function readWebpHeader(bytes: Uint8Array): ImageHeader {
  // "RIFF" size "WEBP" | chunk FourCC (12) | chunk size (16) | payload (20)
  need(bytes, 30, "WebP");
  const chunk = String.fromCharCode(...bytes.subarray(12, 16));
  if (chunk === "VP8 ") {
    // frame tag (3) | start code 9d 01 2a | width u16le & 0x3fff | height u16le & 0x3fff
    if (!startsWith(bytes, 23, [0x9d, 0x01, 0x2a])) throw corrupt("WebP VP8 start code missing");
    return { format: "webp", width: u16le(bytes, 26) & 0x3fff, height: u16le(bytes, 28) & 0x3fff };
  }
  if (chunk === "VP8L") {
    // signature 0x2f | 14 bits width − 1 | 14 bits height − 1
    if (bytes[20] !== 0x2f) throw corrupt("WebP VP8L signature missing");
    const bits = u32le(bytes, 21);
    return { format: "webp", width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
  }
  if (chunk === "VP8X") {
    // flags u8 | reserved u24 | canvas width − 1 u24le | canvas height − 1 u24le
    if (bytes[20] & 0x02) {
      throw new ImageError("Cannot decode image: animated WebP is not supported", "image");
    }
    return { format: "webp", width: u24le(bytes, 24) + 1, height: u24le(bytes, 27) + 1 };
  }
  throw corrupt(`WebP has an unknown first chunk "${chunk}"`);
}

function readGifHeader(bytes: Uint8Array): ImageHeader {
  // "GIF89a" | width u16le | height u16le | flags | background index | aspect | global palette
  need(bytes, 13, "GIF");
  const header: ImageHeader = { format: "gif", width: u16le(bytes, 6), height: u16le(bytes, 8) };
  const globalPalette = bytes[10] & 0x80 ? { at: 13, size: 2 << (bytes[10] & 7) } : null;
  let at = 13 + (globalPalette ? globalPalette.size * 3 : 0);
  let transparentIndex = -1;
  // Walk extension blocks up to the first image descriptor, noting its transparent index.
  while (true) {
    need(bytes, at + 1, "GIF");
    const introducer = bytes[at];
    if (introducer === 0x21) {
      need(bytes, at + 3, "GIF");
      // graphic control extension: 0x21 0xf9 size(4) flags delay(2) transparent-index 0
      if (bytes[at + 1] === 0xf9 && bytes[at + 2] >= 4) {
        need(bytes, at + 7, "GIF");
        transparentIndex = bytes[at + 3] & 1 ? bytes[at + 6] : -1;
      }
      at += 2;
      for (let size = bytes[at]; size !== 0; size = bytes[at]) {
        at += size + 1;
        need(bytes, at + 1, "GIF");
      }
      at += 1;
    } else if (introducer === 0x2c) {
      // image descriptor: 0x2c left top width height (u16le each) flags, then a local palette
      need(bytes, at + 10, "GIF");
      checkGifFrame(bytes, at, header);
      const flags = bytes[at + 9];
      const palette = flags & 0x80 ? { at: at + 10, size: 2 << (flags & 7) } : globalPalette;
      if (transparentIndex >= 0 && palette !== null && transparentIndex < palette.size) {
        const entry = palette.at + transparentIndex * 3;
        need(bytes, entry + 3, "GIF");
        header.gifTransparentRgb = (bytes[entry] << 16) | (bytes[entry + 1] << 8) | bytes[entry + 2];
      }
      return header;
    } else {
      throw corrupt(`GIF has no image (block 0x${introducer.toString(16)} at byte ${at})`);
    }
  }
}

/** A GIF frame must lie inside the logical screen (the decoder allocates the screen, not the frame). */
function checkGifFrame(bytes: Uint8Array, at: number, header: ImageHeader): void {
  const left = u16le(bytes, at + 1), top = u16le(bytes, at + 3);
  const width = u16le(bytes, at + 5), height = u16le(bytes, at + 7);
  if (width === 0 || height === 0 || left + width > header.width || top + height > header.height) {
    throw corrupt(
      `GIF frame ${width}×${height} at (${left}, ${top}) does not lie inside the ${header.width}×${header.height} screen`,
    );
  }
}

function readBmpHeader(bytes: Uint8Array): ImageHeader {
  // "BM" size(4) reserved(4) offset(4) | info header size u32le (14) | width | height
  need(bytes, 18, "BMP");
  const infoSize = u32le(bytes, 14);
  if (infoSize === 12) {
    need(bytes, 22, "BMP");
    return { format: "bmp", width: u16le(bytes, 18), height: u16le(bytes, 20) };
  }
  if (infoSize < 16 || infoSize > 124) throw corrupt(`BMP info header has an unknown size ${infoSize}`);
  need(bytes, 26, "BMP");
  const width = u32le(bytes, 18) | 0;
  const height = u32le(bytes, 22) | 0; // negative: rows stored top-down
  if (width < 0) throw corrupt(`BMP width is negative (${width})`);
  return { format: "bmp", width, height: Math.abs(height) };
}

// ---------------------------------------------------------------------------------------------
// Decoding passes
// ---------------------------------------------------------------------------------------------

/** Swscale flags for the conversions left to ffmpeg: exact rounding, chroma at full resolution. */
const SWS_ARGS = ["-sws_flags", "bicubic+accurate_rnd+full_chroma_int"];

/** The size and pixel format of a raw frame ffmpeg wrote. */
interface RawFrame {
  pixelFormat: string;
  width: number;
  height: number;
}

function decodeFirstFrame(bytes: Uint8Array, inputArgs: string[], outputArgs: string[]): Promise<FfmpegRun> {
  const args = ["-hide_banner", "-nostats", "-noautorotate", ...inputArgs, "-i", "in", "-map", "0:v:0"];
  args.push("-frames:v", "1", ...outputArgs, "-f", "rawvideo", "out.raw");
  return runFfmpeg(args, { inputs: { in: bytes }, outputs: ["out.raw"] }).then((run) => {
    if (run.exitCode !== 0 || !run.outputs.get("out.raw")?.length) throw corrupt(null, run.log);
    return run;
  });
}

/** Reads the pixel format and size of the raw output stream from ffmpeg's log. */
function parseRawOutputStream(log: string[]): RawFrame {
  const outputAt = log.findIndex((line) => line.startsWith("Output #0"));
  for (const line of log.slice(outputAt + 1)) {
    // "  Stream #0:0: Video: rawvideo (I420 / 0x30323449), yuvj420p(pc, ...), 120x80 [SAR 1:1 ...], ..."
    const match = /^\s*Stream #0:0.*?: Video: rawvideo(?: \([^)]*\))?, ([a-z0-9_]+)/.exec(line);
    if (match === null) continue;
    const size = /, (\d+)x(\d+)/.exec(line.slice(match.index + match[0].length));
    if (size === null) break;
    return { pixelFormat: match[1], width: Number(size[1]), height: Number(size[2]) };
  }
  throw corrupt("ffmpeg did not report the decoded frame's format");
}

function checkDecodedSize(frame: RawFrame, header: ImageHeader): void {
  if (frame.width !== header.width || frame.height !== header.height) {
    throw corrupt(
      `decoded ${frame.width}×${frame.height}, the header declares ${header.width}×${header.height}`,
    );
  }
}

async function probeVideo(bytes: Uint8Array): Promise<{ width: number; height: number; total: number }> {
  // Headers and packet count only: nothing is decoded.
  const args = "-v error -select_streams v:0 -count_packets -show_entries stream=width,height,nb_read_packets"
    .split(" ");
  args.push("-of", "default=noprint_wrappers=1", "-o", "probe.txt", "in");
  const run = await runFfmpeg(args, { inputs: { in: bytes }, outputs: ["probe.txt"], program: "ffprobe" });
  const text = new TextDecoder().decode(run.outputs.get("probe.txt") ?? new Uint8Array());
  const field = (name: string) => Number(new RegExp(`^${name}=(\\d+)$`, "m").exec(text)?.[1] ?? NaN);
  const width = field("width"), height = field("height"), total = field("nb_read_packets");
  if (text.trim() === "") {
    const reason = ffmpegReason(run.log);
    const what = reason === "" ? "no video stream" : `not a video or corrupt${reason}`;
    throw new ImageError(`Cannot decode video: ${what}`, "video");
  }
  if (!(width > 0 && height > 0)) {
    throw new ImageError(`Cannot decode video: zero size (${width}×${height})`, "video");
  }
  if (!(total > 0)) throw new ImageError("Cannot decode video: no frames", "video");
  return { width, height, total };
}

/** numpy's linspace(0, total − 1, count, dtype=int): count indices spread over 0..total−1. */
function evenlySpacedIndices(total: number, count: number): number[] {
  if (count === 1) return [0];
  return Array.from({ length: count }, (_, i) => Math.floor((i * (total - 1)) / (count - 1)));
}

function checkPixelCount(width: number, height: number, maxPixels: number, what: "image" | "video"): void {
  if (width === 0 || height === 0) {
    throw new ImageError(`Cannot decode ${what}: zero size (${width}×${height})`, what);
  }
  const pixels = width * height;
  if (pixels > maxPixels) {
    throw new ImageError(
      `Cannot decode ${what}: too large (${width}×${height} = ${pixels} pixels, limit ${maxPixels})`,
      what,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Raw frames to RGB
// ---------------------------------------------------------------------------------------------

/** Packed pixel formats by ffmpeg name: [bytes per pixel, byte offsets of R, G and B]. */
const PACKED_LAYOUTS: Record<string, [number, number, number, number]> = {
  rgb24: [3, 0, 1, 2],
  bgr24: [3, 2, 1, 0],
  rgba: [4, 0, 1, 2],
  rgb0: [4, 0, 1, 2],
  bgra: [4, 2, 1, 0],
  bgr0: [4, 2, 1, 0],
  argb: [4, 1, 2, 3],
  "0rgb": [4, 1, 2, 3],
  abgr: [4, 3, 2, 1],
  "0bgr": [4, 3, 2, 1],
  // 16 bits per sample, big-endian: keep the high byte
  rgb48be: [6, 0, 2, 4],
  rgba64be: [8, 0, 2, 4],
  // grey (+ alpha): the one sample three times
  gray: [1, 0, 0, 0],
  ya8: [2, 0, 0, 0],
  gray16be: [2, 0, 0, 0],
  ya16be: [4, 0, 0, 0],
};

/**
 * Converts ffmpeg's native raw frame to RGB [height, width, 3], or returns null when the format
 * is not one we convert ourselves (the caller then lets ffmpeg convert to rgb24).
 */
function rawFrameToRgb(raw: Uint8Array, frame: RawFrame, format: ImageFormat): Uint8Array | null {
  const { pixelFormat, width, height } = frame;
  const pixels = width * height;
  if (Object.hasOwn(PACKED_LAYOUTS, pixelFormat)) {
    const [stride, r, g, b] = PACKED_LAYOUTS[pixelFormat];
    if (raw.length !== pixels * stride) throw corrupt("decoded frame has the wrong size");
    const rgb = new Uint8Array(pixels * 3);
    for (let i = 0, at = 0; i < pixels; i++, at += stride) {
      rgb[3 * i] = raw[at + r];
      rgb[3 * i + 1] = raw[at + g];
      rgb[3 * i + 2] = raw[at + b];
    }
    return rgb;
  }
  if (pixelFormat === "pal8") return palette8ToRgb(raw, pixels);
  if (format === "jpeg" && Object.hasOwn(JPEG_CHROMA_SUBSAMPLING, pixelFormat)) {
    const [shiftX, shiftY] = JPEG_CHROMA_SUBSAMPLING[pixelFormat];
    return jpegYccToRgb(raw, { width, height, shiftX, shiftY });
  }
  if (format === "webp" && (pixelFormat === "yuv420p" || pixelFormat === "yuva420p")) {
    return webpYuvToRgb(raw, width, height);
  }
  return null;
}

/** pal8: width×height indices, then 256 palette entries of native-endian uint32 ARGB (B G R A). */
function palette8ToRgb(raw: Uint8Array, pixels: number): Uint8Array {
  if (raw.length !== pixels + 1024) throw corrupt("decoded palette frame has the wrong size");
  const rgb = new Uint8Array(pixels * 3);
  for (let i = 0; i < pixels; i++) {
    const entry = pixels + 4 * raw[i];
    rgb[3 * i] = raw[entry + 2];
    rgb[3 * i + 1] = raw[entry + 1];
    rgb[3 * i + 2] = raw[entry];
  }
  return rgb;
}

/** log2 of the horizontal and vertical chroma subsampling of ffmpeg's JPEG output formats. */
const JPEG_CHROMA_SUBSAMPLING: Record<string, [number, number]> = {
  yuvj444p: [0, 0],
  yuvj422p: [1, 0],
  yuvj440p: [0, 1],
  yuvj420p: [1, 1],
};

/**
 * JPEG planes (Y [h, w], Cb and Cr [ceil(h / 2^shiftY), ceil(w / 2^shiftX)]) to RGB the way
 * libjpeg(-turbo) does by default: fancy upsampling, then ITU-R BT.601 full-range YCbCr→RGB in
 * 16-bit fixed point (jdsample.c, jdcolor.c).
 */
function jpegYccToRgb(
  raw: Uint8Array,
  geometry: { width: number; height: number; shiftX: number; shiftY: number },
): Uint8Array {
  const { width, height, shiftX, shiftY } = geometry;
  const chromaWidth = (width + (1 << shiftX) - 1) >> shiftX;
  const chromaHeight = (height + (1 << shiftY) - 1) >> shiftY;
  const lumaSize = width * height, chromaSize = chromaWidth * chromaHeight;
  if (raw.length !== lumaSize + 2 * chromaSize) throw corrupt("decoded JPEG planes have the wrong size");
  const chroma = { width: chromaWidth, height: chromaHeight };
  const upsample = (plane: Uint8Array) =>
    libjpegUpsample(plane, chroma, { width, height, doubleX: shiftX === 1, doubleY: shiftY === 1 });
  const cb = upsample(raw.subarray(lumaSize, lumaSize + chromaSize));
  const cr = upsample(raw.subarray(lumaSize + chromaSize));
  const tables = libjpegColorTables();
  const rgb = new Uint8Array(lumaSize * 3);
  for (let i = 0; i < lumaSize; i++) {
    const y = raw[i], blue = cb[i], red = cr[i];
    rgb[3 * i] = clampByte(y + tables.crToR[red]);
    rgb[3 * i + 1] = clampByte(y + ((tables.cbToG[blue] + tables.crToG[red]) >> 16));
    rgb[3 * i + 2] = clampByte(y + tables.cbToB[blue]);
  }
  return rgb;
}

let colorTables: { crToR: Int32Array; cbToB: Int32Array; crToG: Int32Array; cbToG: Int32Array } | null = null;

/** libjpeg's build_ycc_rgb_table: SCALEBITS 16, values rounded to nearest. */
function libjpegColorTables() {
  if (colorTables !== null) return colorTables;
  const fix = (x: number) => Math.floor(x * 65536 + 0.5);
  const half = 1 << 15;
  colorTables = {
    crToR: new Int32Array(256),
    cbToB: new Int32Array(256),
    crToG: new Int32Array(256),
    cbToG: new Int32Array(256),
  };
  for (let i = 0; i < 256; i++) {
    const x = i - 128;
    colorTables.crToR[i] = (fix(1.402) * x + half) >> 16;
    colorTables.cbToB[i] = (fix(1.772) * x + half) >> 16;
    colorTables.crToG[i] = -fix(0.71414) * x;
    colorTables.cbToG[i] = -fix(0.34414) * x + half;
  }
  return colorTables;
}

/**
 * libjpeg's chroma upsampling to [height, width]: h2v2 / h2v1 "fancy" triangle filters when the
 * chroma plane is wider than 2 samples (plain replication otherwise), h1v2 fancy always; rows above
 * the first and below the last repeat the edge row.
 */
function libjpegUpsample(
  plane: Uint8Array,
  chroma: { width: number; height: number },
  out: { width: number; height: number; doubleX: boolean; doubleY: boolean },
): Uint8Array {
  const { width, height, doubleX, doubleY } = out;
  const result = new Uint8Array(width * height);
  const cw = chroma.width, ch = chroma.height;
  const fancy = !doubleX || cw > 2;
  const columnSums = new Int32Array(cw);
  for (let y = 0; y < height; y++) {
    const row = doubleY ? y >> 1 : y;
    const outRow = result.subarray(y * width, (y + 1) * width);
    if (doubleY && fancy) {
      // nearest chroma row × 3 + next nearest (above for even output rows, below for odd)
      const other = y & 1 ? Math.min(row + 1, ch - 1) : Math.max(row - 1, 0);
      for (let x = 0; x < cw; x++) columnSums[x] = 3 * plane[row * cw + x] + plane[other * cw + x];
      if (doubleX) fancyH2V2Row(columnSums, outRow);
      else for (let x = 0; x < width; x++) outRow[x] = (columnSums[x] + (y & 1 ? 2 : 1)) >> 2;
    } else if (doubleX && fancy) {
      fancyH2V1Row(plane.subarray(row * cw, (row + 1) * cw), outRow);
    } else {
      for (let x = 0; x < width; x++) outRow[x] = plane[row * cw + (doubleX ? x >> 1 : x)];
    }
  }
  return result;
}

/** jdsample.c h2v2_fancy_upsample, one output row from column sums (3 × near + far). */
function fancyH2V2Row(sums: Int32Array, outRow: Uint8Array): void {
  const last = sums.length - 1;
  for (let x = 0; x < outRow.length; x++) {
    const i = x >> 1, here = sums[i];
    if (x & 1) outRow[x] = i < last ? (3 * here + sums[i + 1] + 7) >> 4 : (4 * here + 7) >> 4;
    else outRow[x] = i > 0 ? (3 * here + sums[i - 1] + 8) >> 4 : (4 * here + 8) >> 4;
  }
}

/** jdsample.c h2v1_fancy_upsample, one row. */
function fancyH2V1Row(inRow: Uint8Array, outRow: Uint8Array): void {
  const last = inRow.length - 1;
  for (let x = 0; x < outRow.length; x++) {
    const i = x >> 1, here = inRow[i];
    if (x & 1) outRow[x] = i < last ? (3 * here + inRow[i + 1] + 2) >> 2 : here;
    else outRow[x] = i > 0 ? (3 * here + inRow[i - 1] + 1) >> 2 : here;
  }
}

/**
 * WebP lossy planes (Y [h, w], U and V [ceil(h/2), ceil(w/2)], then alpha, ignored) to RGB as
 * libwebp does by default: its "fancy" 9-3-3-1 upsampler on pairs of rows (EmitFancyRGB,
 * UpsampleRgbLinePair) and BT.601 limited-range YUV→RGB with 14-bit constants (VP8YuvToRgb).
 */
function webpYuvToRgb(raw: Uint8Array, width: number, height: number): Uint8Array {
  const cw = (width + 1) >> 1, ch = (height + 1) >> 1;
  const lumaSize = width * height, chromaSize = cw * ch;
  if (raw.length !== lumaSize + 2 * chromaSize && raw.length !== 2 * lumaSize + 2 * chromaSize) {
    throw corrupt("decoded WebP planes have the wrong size");
  }
  const uPlane = raw.subarray(lumaSize, lumaSize + chromaSize);
  const vPlane = raw.subarray(lumaSize + chromaSize, lumaSize + 2 * chromaSize);
  const rgb = new Uint8Array(lumaSize * 3);
  const u = new Uint8Array(width), v = new Uint8Array(width);
  for (let y = 0; y < height; y++) {
    // Row 0 and the last row of an even height use one chroma row; inner rows come in pairs
    // (2k − 1, 2k) between chroma rows k − 1 ("top") and k ("current").
    const pairIndex = (y + 1) >> 1;
    const single = y === 0 || pairIndex >= ch;
    const top = single ? Math.min(pairIndex, ch - 1) : pairIndex - 1;
    const current = single ? top : pairIndex;
    const isTopRow = single || (y & 1) === 1;
    webpUpsampleRow(uPlane, { top, current, isTopRow, chromaWidth: cw }, u);
    webpUpsampleRow(vPlane, { top, current, isTopRow, chromaWidth: cw }, v);
    for (let x = 0; x < width; x++) {
      const i = y * width + x;
      const luma = (raw[i] * 19077) >> 8;
      rgb[3 * i] = webpClip(luma + ((v[x] * 26149) >> 8) - 14234);
      rgb[3 * i + 1] = webpClip(luma - ((u[x] * 6419) >> 8) - ((v[x] * 13320) >> 8) + 8708);
      rgb[3 * i + 2] = webpClip(luma + ((u[x] * 33050) >> 8) - 17685);
    }
  }
  return rgb;
}

/** libwebp's fancy upsampler for one chroma plane and one output row. */
function webpUpsampleRow(
  plane: Uint8Array,
  rows: { top: number; current: number; isTopRow: boolean; chromaWidth: number },
  out: Uint8Array,
): void {
  const { isTopRow, chromaWidth } = rows;
  const t = plane.subarray(rows.top * chromaWidth, (rows.top + 1) * chromaWidth);
  const c = plane.subarray(rows.current * chromaWidth, (rows.current + 1) * chromaWidth);
  const len = out.length;
  // the sample nearer to this output row weighs 3, the other 1 (first and last columns)
  const [near, far] = isTopRow ? [t, c] : [c, t];
  out[0] = (3 * near[0] + far[0] + 2) >> 2;
  const lastPair = (len - 1) >> 1;
  for (let x = 1; x <= lastPair; x++) {
    const topLeft = t[x - 1], topHere = t[x], left = c[x - 1], here = c[x];
    const average = topLeft + topHere + left + here + 8;
    const diagonal12 = (average + 2 * (topHere + left)) >> 3;
    const diagonal03 = (average + 2 * (topLeft + here)) >> 3;
    if (isTopRow) {
      out[2 * x - 1] = (diagonal12 + topLeft) >> 1;
      out[2 * x] = (diagonal03 + topHere) >> 1;
    } else {
      out[2 * x - 1] = (diagonal03 + left) >> 1;
      out[2 * x] = (diagonal12 + here) >> 1;
    }
  }
  if ((len & 1) === 0) out[len - 1] = (3 * near[lastPair] + far[lastPair] + 2) >> 2;
}

/** libwebp's VP8Clip8: 6 fractional bits, clamped to 0..255. */
function webpClip(value: number): number {
  return (value & ~16383) === 0 ? value >> 6 : value < 0 ? 0 : 255;
}

function clampByte(value: number): number {
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

// ---------------------------------------------------------------------------------------------
// The ffmpeg WebAssembly instance
// ---------------------------------------------------------------------------------------------

/** The parts of @ffmpeg/core's Emscripten module used here. */
interface FfmpegCore {
  FS: {
    writeFile(path: string, data: Uint8Array): void;
    readFile(path: string): Uint8Array;
    readdir(path: string): string[];
    unlink(path: string): void;
    mkdir(path: string): void;
    rmdir(path: string): void;
    chdir(path: string): void;
  };
  exec(...args: string[]): number;
  ffprobe(...args: string[]): number;
  reset(): void;
  setLogger(logger: (event: { type: string; message: string }) => void): void;
  /** The WebAssembly instance's exports, under minified names. */
  asm: Record<string, unknown>;
}

/**
 * A loaded core and the Emscripten runtime's stackSave / stackRestore. ffmpeg ends every run with
 * abort(), which unwinds to JavaScript as an exception and leaves the WebAssembly stack pointer
 * where abort was called: each run would leak 0.2–9 KB of the 64 KB stack, and after a few dozen
 * runs the stack would grow into the heap and crash the instance ("memory access out of bounds",
 * "function signature mismatch"). Each run therefore restores the stack pointer it started with.
 */
interface FfmpegInstance {
  core: FfmpegCore;
  saveStack: () => number;
  restoreStack: (pointer: number) => void;
}

let instancePromise: Promise<FfmpegInstance> | null = null;
let ffmpegQueue: Promise<unknown> = Promise.resolve();
let runCounter = 0;

/**
 * Runs once more on a fresh instance when a run traps. Some sequences of runs trap although each
 * run alone works (seen: a libwebp encode, an mjpeg encode, then another libwebp encode), so a trap
 * says more about the instance's history than about the input; a second trap is reported.
 */
async function runRetryingOnTrap(args: string[], options: RunFfmpegOptions): Promise<FfmpegRun> {
  try {
    return await runExclusive(args, options);
  } catch (error) {
    if (!(error instanceof ImageError && error.where === "ffmpeg")) throw error;
    return await runExclusive(args, options);
  }
}

async function runExclusive(args: string[], options: RunFfmpegOptions): Promise<FfmpegRun> {
  const { core, saveStack, restoreStack } = await loadInstance();
  const dir = `/run${++runCounter}`;
  const log: string[] = [];
  core.setLogger((event) => log.push(event.message));
  core.FS.mkdir(dir);
  core.FS.chdir(dir);
  const stackPointer = saveStack();
  try {
    for (const [name, data] of Object.entries(options.inputs ?? {})) core.FS.writeFile(name, data);
    let exitCode: number;
    try {
      // The log level is process-global in ffmpeg and would carry over from the previous run's
      // `-v`: start each run at "info" unless args set a level.
      const setsLevel = args.some((arg) => arg === "-v" || arg === "-loglevel");
      const fullArgs = setsLevel ? args : ["-v", "info", ...args];
      exitCode = options.program === "ffprobe" ? core.ffprobe(...fullArgs) : core.exec(...fullArgs);
    } catch (error) {
      // A trap leaves the instance in an unknown state: the next run loads a fresh one.
      instancePromise = null;
      const reason = error instanceof Error ? error.message : String(error);
      throw new ImageError(`Cannot run ffmpeg: ${reason}`, "ffmpeg", { cause: error });
    }
    const outputs = new Map<string, Uint8Array>();
    for (const name of options.outputs ?? []) {
      if (core.FS.readdir(".").includes(name)) outputs.set(name, core.FS.readFile(name));
    }
    return { exitCode, log, outputs };
  } finally {
    restoreStack(stackPointer);
    core.reset();
    core.setLogger(() => {});
    removeDirectory(core, dir);
  }
}

function removeDirectory(core: FfmpegCore, dir: string): void {
  core.FS.chdir("/");
  for (const name of core.FS.readdir(dir)) {
    if (name !== "." && name !== "..") core.FS.unlink(`${dir}/${name}`);
  }
  core.FS.rmdir(dir);
}

function loadInstance(): Promise<FfmpegInstance> {
  if (instancePromise === null) {
    instancePromise = instantiateCore();
    instancePromise.catch(() => (instancePromise = null)); // a failed load is retried by the next run
  }
  return instancePromise;
}

async function instantiateCore(): Promise<FfmpegInstance> {
  if (typeof Deno === "undefined") {
    throw new ImageError(
      "Cannot run ffmpeg: the browser build leaves it out (video input needs Deno); pass images as encoded bytes or { width, height, data } RGB",
      "ffmpeg",
    );
  }
  // Literal specifiers, so that Deno resolves and caches the package ahead of time.
  // deno-lint-ignore no-import-prefix
  const { default: createFFmpegCore } = await import("npm:@ffmpeg/core@0.12.10");
  const wasmUrl = import.meta.resolve("npm:@ffmpeg/core@0.12.10/wasm");
  const response = await fetch(wasmUrl);
  if (!response.ok) {
    throw new ImageError(`Cannot load ffmpeg: ${response.status} ${response.statusText}`, wasmUrl);
  }
  const wasmBinary = await response.arrayBuffer();
  // The core is built for a web worker and reads `self.location.href` once, synchronously, when
  // created. Deno has no location unless run with --location: lend one for that moment only.
  const saved = Object.getOwnPropertyDescriptor(globalThis, "location");
  const lend = (globalThis as { location?: unknown }).location === undefined;
  if (lend) {
    Object.defineProperty(globalThis, "location", { value: { href: import.meta.url }, configurable: true });
  }
  let created: Promise<FfmpegCore>;
  try {
    created = createFFmpegCore({ wasmBinary });
  } finally {
    if (lend) {
      if (saved) Object.defineProperty(globalThis, "location", saved);
      else delete (globalThis as { location?: unknown }).location;
    }
  }
  const core = await created;
  // stackSave and stackRestore are the wasm exports "Da" and "Ea" of @ffmpeg/core 0.12.10.
  const saveStack = core.asm.Da, restoreStack = core.asm.Ea;
  if (
    typeof saveStack !== "function" || saveStack.length !== 0 || typeof restoreStack !== "function" ||
    restoreStack.length !== 1 || !Number.isInteger(saveStack())
  ) {
    throw new ImageError(
      "Cannot load ffmpeg: unexpected @ffmpeg/core build (no stackSave/stackRestore)",
      wasmUrl,
    );
  }
  return {
    core,
    saveStack: saveStack as () => number,
    restoreStack: restoreStack as (pointer: number) => void,
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/** An ImageError for damaged data, with ffmpeg's last error line when there is one. */
function corrupt(detail: string | null, log: string[] = []): ImageError {
  const reason = detail !== null ? ` (${detail})` : ffmpegReason(log);
  return new ImageError(`Cannot decode image: truncated or corrupt data${reason}`, "image");
}

/** ffmpeg's most telling error line, as " (ffmpeg: ...)", or "" if it printed none. */
function ffmpegReason(log: string[]): string {
  const errors = log.filter((line) =>
    /invalid|error|corrupt|overread|truncat|fail|not found|cannot|unable/i.test(line) &&
    !/^Aborted|^Conversion failed/.test(line)
  );
  const line = errors[0]?.replace(/^\[[^\]]*\]\s*/, "").trim();
  return line ? ` (ffmpeg: ${line})` : "";
}

function need(bytes: Uint8Array, length: number, format: string): void {
  if (bytes.length < length) {
    throw new ImageError(
      `Cannot decode image: truncated or corrupt data (${format} header cut short)`,
      "image",
    );
  }
}

function startsWith(bytes: Uint8Array, at: number, prefix: ArrayLike<number>): boolean {
  if (bytes.length < at + prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[at + i] !== prefix[i]) return false;
  return true;
}

function ascii(text: string): number[] {
  return Array.from(text, (char) => char.charCodeAt(0));
}

function u16be(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 8) | bytes[at + 1];
}

function u16le(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8);
}

function u24le(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16);
}

function u32be(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
}

function u32le(bytes: Uint8Array, at: number): number {
  return (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
}
