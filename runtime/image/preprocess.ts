/**
 * Image preprocessing for the CLIP vision tower, exactly as LLaVA-1.5 does it with
 * `image_aspect_ratio: "pad"`:
 *
 * 1. `expand2square`: paste the image centred on a square canvas of side max(w, h) filled with the
 *    mean colour `tuple(int(x * 255) for x in image_mean)` (122, 116, 104 for CLIP).
 * 2. `CLIPImageProcessor`: resize to `imageSize` × `imageSize` with Pillow's BICUBIC (the square
 *    input makes "shortest edge" and centre crop no-ops), scale by 1/255, normalise with the CLIP
 *    mean and std, channels first.
 *
 * The resize reproduces Pillow 9/10's `ImagingResample` bit for bit: separable passes (horizontal,
 * then vertical over only the rows the vertical pass reads), Keys bicubic with a = −0.5, support
 * widened by the scale when downscaling (antialiasing), per-output-pixel weights normalised to sum
 * 1 then rounded to 22-bit fixed point, and each pass rounded and clipped to 8 bits.
 * The float steps follow transformers' numpy code: `float32(uint8 × (1/255))`, then
 * `(x − mean) / std` in float32.
 * @module
 */
import { CLIP_MEAN, CLIP_STD } from "../core/config.ts";
import { InputError } from "../core/errors.ts";
import { checkRgbImage, decodeImage, type RgbImage } from "./image_decode.ts";

/** Options of {@link preprocessImage}. */
export interface PreprocessOptions {
  /** Side of the square the tower takes (the vision config's `image_size`; default 336). */
  imageSize?: number;
  /** Per-channel mean, also the padding colour (× 255, truncated); default {@link CLIP_MEAN}. */
  mean?: readonly [number, number, number];
  /** Per-channel standard deviation; default {@link CLIP_STD}. */
  std?: readonly [number, number, number];
}

/**
 * Decodes (if given bytes) and preprocesses one image for the vision tower: pad to a square with the
 * mean colour, Pillow-bicubic resize to `imageSize`, scale to [0, 1], normalise.
 * Returns pixel values [3, imageSize, imageSize], channels first (R, G, B).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { preprocessImage } from "./preprocess.ts";
 * const white = { width: 4, height: 2, data: new Uint8Array(4 * 2 * 3).fill(255) };
 * const pixels = await preprocessImage(white, { imageSize: 4 });
 * assert.equal(pixels.length, 3 * 4 * 4); // [3, 4, 4], channels first
 * assert.equal(pixels[0].toFixed(3), "-0.011"); // row 0 is padding: the mean colour, truncated to bytes
 * assert.equal(pixels[4].toFixed(3), "1.930"); // row 1 is white: (1 - mean) / std in the red channel
 * ```
 */
export async function preprocessImage(
  input: Uint8Array | RgbImage,
  options: PreprocessOptions = {},
): Promise<Float32Array> {
  const { imageSize = 336, mean = CLIP_MEAN, std = CLIP_STD } = options;
  if (!Number.isSafeInteger(imageSize) || imageSize < 1) {
    throw new InputError(
      `Cannot preprocess image: imageSize must be a positive integer, got ${imageSize}`,
      "imageSize",
    );
  }
  checkChannels(mean, "mean");
  checkChannels(std, "std");
  let image: RgbImage;
  if (input instanceof Uint8Array) image = await decodeImage(input);
  else {
    checkRgbImage(input, "image");
    image = input;
  }
  const fill = mean.map((value) => Math.trunc(value * 255)) as [number, number, number];
  const resized = resizeBicubic(padToSquare(image, fill), imageSize);
  return normalizeToChw(resized, { mean, std });
}

/**
 * LLaVA's `expand2square`: the image pasted on a square canvas of side max(width, height) filled
 * with `fill`, at ((side − width) // 2, (side − height) // 2). A square image is returned as is.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { padToSquare } from "./preprocess.ts";
 * const red = { width: 1, height: 3, data: new Uint8Array([255, 0, 0, 255, 0, 0, 255, 0, 0]) };
 * const square = padToSquare(red, [122, 116, 104]);
 * assert.equal(square.width, 3);
 * assert.deepEqual(Array.from(square.data.slice(0, 9)), [122, 116, 104, 255, 0, 0, 122, 116, 104]); // centred
 * ```
 */
export function padToSquare(image: RgbImage, fill: readonly [number, number, number]): RgbImage {
  checkRgbImage(image, "image");
  for (const value of fill) {
    if (!Number.isInteger(value) || value < 0 || value > 255) {
      throw new InputError(`Cannot pad image: fill values must be integers in 0..255, got ${fill}`, "fill");
    }
  }
  const { width, height } = image;
  if (width === height) return image;
  const side = Math.max(width, height);
  const data = new Uint8Array(side * side * 3);
  for (let i = 0; i < side * side; i++) data.set(fill, 3 * i);
  const left = (side - width) >> 1, top = (side - height) >> 1;
  for (let y = 0; y < height; y++) {
    const row = image.data.subarray(y * width * 3, (y + 1) * width * 3);
    data.set(row, ((top + y) * side + left) * 3);
  }
  return { width: side, height: side, data };
}

/**
 * Resizes to `size` × `size` with Pillow's `Image.resize(..., Image.BICUBIC)` (Pillow 9/10,
 * 8-bit RGB), bit for bit. An image already that size is returned as is.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resizeBicubic } from "./preprocess.ts";
 * const checker = { width: 2, height: 2, data: new Uint8Array([0, 0, 0, 255, 255, 255, 255, 255, 255, 0, 0, 0]) };
 * const big = resizeBicubic(checker, 4);
 * assert.equal(big.width, 4);
 * assert.equal(big.data.length, 4 * 4 * 3);
 * assert.equal(big.data[0], 0); // the black corner stays black
 * ```
 */
export function resizeBicubic(image: RgbImage, size: number): RgbImage {
  checkRgbImage(image, "image");
  if (!Number.isSafeInteger(size) || size < 1) {
    throw new InputError(`Cannot resize image: size must be a positive integer, got ${size}`, "size");
  }
  const { width, height } = image;
  if (width === size && height === size) return image;
  const horizontal = resampleWeights(width, size);
  const vertical = resampleWeights(height, size);
  // The horizontal pass only produces the source rows the vertical pass reads.
  const firstRow = vertical.bounds[0];
  const lastRow = vertical.bounds[2 * size - 2] + vertical.bounds[2 * size - 1];
  for (let y = 0; y < size; y++) vertical.bounds[2 * y] -= firstRow;
  const rows = lastRow - firstRow;
  const band = image.data.subarray(firstRow * width * 3, lastRow * width * 3);
  const temp = resampleHorizontal(band, { width, height: rows }, horizontal, size);
  const data = resampleVertical(temp, size, vertical, size);
  return { width: size, height: size, data };
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampling (libImaging/Resample.c)
// ---------------------------------------------------------------------------------------------

/** Fixed-point fraction bits of the 8-bit resampler: 32 − 8 − 2. */
const PRECISION_BITS = 22;

/** Per-output-pixel source windows and fixed-point weights, as Pillow's precompute_coeffs. */
interface ResampleWeights {
  /** ksize: the weights per output pixel (the window's upper bound). */
  taps: number;
  /** [outSize, 2]: first source index and window length per output pixel. */
  bounds: Int32Array;
  /** [outSize, taps]: weights × 2^22, rounded half away from zero. */
  weights: Int32Array;
}

/** Keys' cubic convolution kernel with a = −0.5, written as Pillow evaluates it. */
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

function resampleWeights(inSize: number, outSize: number): ResampleWeights {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 2.0 * filterScale; // bicubic support 2, widened when downscaling
  const taps = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * taps);
  const window = new Float64Array(taps);
  for (let out = 0; out < outSize; out++) {
    const center = (out + 0.5) * scale;
    const inverseScale = 1.0 / filterScale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    let total = 0.0;
    for (let x = 0; x < count; x++) {
      window[x] = bicubic((x + first - center + 0.5) * inverseScale);
      total += window[x];
    }
    for (let x = 0; x < count; x++) {
      const weight = total !== 0.0 ? window[x] / total : window[x];
      const fixed = weight * (1 << PRECISION_BITS);
      weights[out * taps + x] = Math.trunc(weight < 0 ? fixed - 0.5 : fixed + 0.5);
    }
    bounds[2 * out] = first;
    bounds[2 * out + 1] = count;
  }
  return { taps, bounds, weights };
}

/** Rounds a fixed-point sum (already offset by one half) to 0..255, as Pillow's clip8. */
function clip8(sum: number): number {
  const value = sum >> PRECISION_BITS;
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

/** ImagingResampleHorizontal_8bpc: [rows, width, 3] → [rows, outWidth, 3]. */
function resampleHorizontal(
  source: Uint8Array,
  shape: { width: number; height: number },
  weights: ResampleWeights,
  outWidth: number,
): Uint8Array {
  const { width, height } = shape;
  const { taps, bounds, weights: kk } = weights;
  const out = new Uint8Array(height * outWidth * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < height; y++) {
    const rowStart = y * width * 3;
    for (let x = 0; x < outWidth; x++) {
      const first = bounds[2 * x], count = bounds[2 * x + 1];
      let r = half, g = half, b = half;
      for (let i = 0; i < count; i++) {
        const k = kk[x * taps + i], at = rowStart + (first + i) * 3;
        r += source[at] * k;
        g += source[at + 1] * k;
        b += source[at + 2] * k;
      }
      const o = (y * outWidth + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

/** ImagingResampleVertical_8bpc: [rows, width, 3] → [outHeight, width, 3]. */
function resampleVertical(
  source: Uint8Array,
  width: number,
  weights: ResampleWeights,
  outHeight: number,
): Uint8Array {
  const { taps, bounds, weights: kk } = weights;
  const out = new Uint8Array(outHeight * width * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < outHeight; y++) {
    const first = bounds[2 * y], count = bounds[2 * y + 1];
    for (let x = 0; x < width; x++) {
      let r = half, g = half, b = half;
      for (let i = 0; i < count; i++) {
        const k = kk[y * taps + i], at = ((first + i) * width + x) * 3;
        r += source[at] * k;
        g += source[at + 1] * k;
        b += source[at + 2] * k;
      }
      const o = (y * width + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

/** [h, w, 3] uint8 → [3, h, w] float32: float32(v × (1/255)), then (x − mean) / std in float32. */
function normalizeToChw(
  image: RgbImage,
  stats: { mean: readonly number[]; std: readonly number[] },
): Float32Array {
  const plane = image.width * image.height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(stats.mean[c]), std = Math.fround(stats.std[c]);
    for (let i = 0; i < plane; i++) {
      const scaled = Math.fround(image.data[3 * i + c] * (1 / 255));
      out[c * plane + i] = Math.fround(scaled - mean) / std;
    }
  }
  return out;
}

function checkChannels(values: readonly number[], name: "mean" | "std"): void {
  const valid = Array.isArray(values) && values.length === 3 &&
    values.every((value) => Number.isFinite(value) && (name === "mean" || value > 0));
  if (!valid) {
    throw new InputError(`Cannot preprocess image: ${name} must be 3 finite numbers, got ${values}`, name);
  }
}
