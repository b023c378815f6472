/**
 * im2col for CLIP's patch embedding: image [channels, S, S] f32 (CHW) → patches
 * [P = (S/p)², channels·p·p] f32, rows in raster order of patches, columns (ch, ky, kx) matching a
 * torch Conv2d weight [out, channels, p, p] flattened to [out, channels·p·p]; the patch embedding
 * is then one matrix product. CPU twin: `im2col` in runtime/core/patches_cpu.ts.
 *
 * One lane per output value, 256 per workgroup, through `grid()`.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { checkPatchGeometry, type Im2colOptions } from "../runtime/core/patches_cpu.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link Im2colKernel.bind}. */
export interface Im2colArgs extends Im2colOptions {
  /** Image [channels, size, size] f32. */
  image: GPUBuffer;
  /** Patches [(size/patch)², channels·patch²] f32. */
  out: GPUBuffer;
}

/** The compiled im2col pipeline. */
export interface Im2colKernel {
  bind(buffers: BufferSet, args: Im2colArgs): Dispatch[];
}

const LANES = 256;

const PARAMS = defineUniforms("im2col", { size: "u32", patchSize: "u32", channels: "u32", total: "u32" });

const IM2COL_WGSL = /* wgsl */ `${wgslPrelude({ workgroupSize: LANES })}
${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> image: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let index = thread_index(wid, nwg, lid);
  if (index >= params.total) { return; }
  let p = params.patch_size;
  let size = params.size;
  let cols = params.channels * p * p;
  let row = index / cols;
  let col = index % cols;
  let per_side = size / p;
  let py = row / per_side;
  let px = row % per_side;
  let ch = col / (p * p);
  let ky = (col / p) % p;
  let kx = col % p;
  out[index] = image[ch * size * size + (py * p + ky) * size + px * p + kx];
}
`;

/**
 * Compiles the im2col pipeline.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createIm2col } from "./patches.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const image = buffers.upload(new Float32Array(16).map((_, i) => i), "image"); // [1, 4, 4]
 * const out = buffers.storage(16 * 4, "patches"); // [4, 4]
 * const im2col = await createIm2col(gpu);
 * gpu.submit(im2col.bind(buffers, { image, out, size: 4, patch: 2, channels: 1 }));
 * assert.deepEqual(new Float32Array(await gpu.read(out, 0, 16)), new Float32Array([0, 1, 4, 5]));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createIm2col(gpu: Gpu): Promise<Im2colKernel> {
  const pipeline = await gpu.pipeline("im2col", IM2COL_WGSL);
  return {
    bind(buffers, args) {
      const { image, out, size, patch, channels } = args;
      checkPatchGeometry({ size, patch, channels });
      const total = channels * size * size;
      if (image.size < total * 4 || out.size < total * 4) {
        throw new InputError(
          `Cannot bind im2col: buffers of ${image.size} and ${out.size} bytes cannot hold ${total} f32`,
          "im2col",
        );
      }
      const params = buffers.uniform(
        packUniforms(PARAMS, { size, patchSize: patch, channels, total }),
        "im2col params",
      );
      return [gpu.dispatch(pipeline, [params, image, out], grid(Math.ceil(total / LANES)))];
    },
  };
}
