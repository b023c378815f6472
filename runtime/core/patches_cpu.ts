/**
 * CPU twin of kernels/patches.ts: im2col for a ViT patch embedding, so the patch Conv2d
 * (stride = kernel = patch) becomes one matrix product with the conv weight [out, channels, p, p]
 * flattened to [out, channels·p·p]. GPU-free.
 *
 * image [channels, S, S] f32 (CHW) → patches [P = (S/p)², channels·p·p]; row r = py·(S/p) + px
 * (raster order of patches), column (ch, ky, kx) = ch·p² + ky·p + kx.
 * @module
 */
import { InputError } from "./errors.ts";

/** Geometry of {@link im2col}. */
export interface Im2colOptions {
  /** Image side S (square image). */
  size: number;
  /** Patch side p; must divide S. */
  patch: number;
  /** Channels (3 for RGB). */
  channels: number;
}

/**
 * Rearranges a CHW image into one row per patch (see the module doc for the order).
 * Throws {@link InputError} when the geometry does not fit the image.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { im2col } from "./patches_cpu.ts";
 * const image = new Float32Array(16).map((_, i) => i); // [1, 4, 4]
 * const patches = im2col(image, { size: 4, patch: 2, channels: 1 });
 * assert.deepEqual(patches.subarray(0, 4), new Float32Array([0, 1, 4, 5])); // the top-left patch
 * assert.deepEqual(patches.subarray(12, 16), new Float32Array([10, 11, 14, 15])); // the bottom-right one
 * ```
 */
export function im2col(image: Float32Array, options: Im2colOptions): Float32Array {
  const { size, patch, channels } = options;
  checkPatchGeometry(options);
  if (image.length !== channels * size * size) {
    throw new InputError(
      `Cannot cut patches: the image holds ${image.length} values, expected ${channels}·${size}²`,
      "im2col",
    );
  }
  const perSide = size / patch;
  const cols = channels * patch * patch;
  const patches = new Float32Array(perSide * perSide * cols);
  for (let py = 0; py < perSide; py++) {
    for (let px = 0; px < perSide; px++) {
      const rowBase = (py * perSide + px) * cols;
      for (let ch = 0; ch < channels; ch++) {
        for (let ky = 0; ky < patch; ky++) {
          const from = ch * size * size + (py * patch + ky) * size + px * patch;
          patches.set(image.subarray(from, from + patch), rowBase + (ch * patch + ky) * patch);
        }
      }
    }
  }
  return patches;
}

/**
 * Throws {@link InputError} unless size, patch and channels are positive integers and `patch`
 * divides `size`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkPatchGeometry } from "./patches_cpu.ts";
 * import { InputError } from "./errors.ts";
 * checkPatchGeometry({ size: 28, patch: 14, channels: 3 }); // 2 × 2 patches: fine
 * assert.throws(() => checkPatchGeometry({ size: 30, patch: 14, channels: 3 }), InputError);
 * ```
 */
export function checkPatchGeometry(options: Im2colOptions): void {
  const { size, patch, channels } = options;
  const positive = [size, patch, channels].every((v) => Number.isInteger(v) && v > 0);
  if (!positive || size % patch !== 0) {
    throw new InputError(
      `Cannot cut patches: size ${size} is not a positive multiple of patch ${patch}`,
      "im2col",
    );
  }
}
