/**
 * The CLIP vision tower and projector on the GPU (twin: runtime/cpu_vision.ts):
 * pixels [3, S, S] → im2col [P, 3·p·p] → patch embeddings into rows 1..P of e [P+1, V] (row 0 the
 * class embedding) → + positions → pre-LN → x [P+1, V] → `layersToRun` encoder layers (LN,
 * q/k/v with bias, full attention, out-proj into x; LN, fc1, quick_gelu, fc2 into x) → rows 1..P
 * (CLS dropped) → projector (Linear, GELU, Linear) → features [images·N, C].
 * @module
 */
import type { ImageFeatures } from "../engine/backend.ts";
import type { ModelConfig } from "../core/config.ts";
import { BufferSet, type Dispatch, writeBuffer } from "../device/gpu.ts";
import type { GpuBackend } from "./gpu_backend.ts";
import type { WeightTensor } from "../device/weights_gpu.ts";

/** One encoder layer's weights: LayerNorm (weight, bias) pairs and Linear (weight, bias) pairs. */
export interface VisionLayerWeights {
  ln1: [GPUBuffer, GPUBuffer];
  ln2: [GPUBuffer, GPUBuffer];
  q: [WeightTensor, GPUBuffer];
  k: [WeightTensor, GPUBuffer];
  v: [WeightTensor, GPUBuffer];
  o: [WeightTensor, GPUBuffer];
  fc1: [WeightTensor, GPUBuffer];
  fc2: [WeightTensor, GPUBuffer];
}

/** Image features held on the GPU: [rows, C] in `buffer`, freed with `owner`. */
export class GpuImageFeatures implements ImageFeatures {
  constructor(readonly rows: number, readonly buffer: GPUBuffer, readonly owner: BufferSet) {}
  get gpuBytes(): number {
    return this.owner.liveBytes;
  }
  dispose(): void {
    this.owner.destroy();
  }
}

/**
 * Groups the vision tower's uploaded weights by layer.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { visionLayerWeights } from "./gpu_vision.ts";
 * import { openCheckpoint } from "../io/checkpoint.ts";
 * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
 * const model = await createGpuBackend(await openCheckpoint("tests/fixtures/out/llava-f32-dyn"), {
 *   weightDtype: "f32",
 * }) as GpuBackend;
 * const { matrices, vectors } = model.weights;
 * const layers = visionLayerWeights(model.config, (n) => matrices.get(n)!, (n) => vectors.get(n)!);
 * assert.equal(layers.length, model.config.vision!.layersToRun); // only the layers the features need
 * assert.strictEqual(layers[0].q[0], matrices.get("vision.layers.0.q.weight"));
 * assert.strictEqual(layers[0].ln1[1], vectors.get("vision.layers.0.ln1.bias"));
 * model.dispose();
 * ```
 */
export function visionLayerWeights(
  config: ModelConfig,
  m: (name: string) => WeightTensor,
  v: (name: string) => GPUBuffer,
): VisionLayerWeights[] {
  return Array.from({ length: config.vision?.layersToRun ?? 0 }, (_, i) => {
    const p = `vision.layers.${i}.`;
    const lin = (n: string): [WeightTensor, GPUBuffer] => [m(`${p}${n}.weight`), v(`${p}${n}.bias`)];
    const ln = (n: string): [GPUBuffer, GPUBuffer] => [v(`${p}${n}.weight`), v(`${p}${n}.bias`)];
    return {
      ln1: ln("ln1"),
      ln2: ln("ln2"),
      q: lin("q"),
      k: lin("k"),
      v: lin("v"),
      o: lin("o"),
      fc1: lin("fc1"),
      fc2: lin("fc2"),
    };
  });
}

/**
 * Encodes preprocessed images ([3, S, S] each) into projected features, one submission per image.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeImagesGpu, type GpuImageFeatures } from "./gpu_vision.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { preprocessImage } from "../image/preprocess.ts";
 * import { encodeImageCpu } from "../cpu/cpu_vision.ts";
 * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llava-f32-dyn");
 * const model = await createGpuBackend(checkpoint, { weightDtype: "f32" }) as GpuBackend;
 * const vision = model.config.vision!;
 * const image = { width: 3, height: 2, data: new Uint8Array(3 * 2 * 3).map((_, i) => i * 13) };
 * const pixels = await preprocessImage(image, { imageSize: vision.imageSize, mean: vision.imageMean, std: vision.imageStd });
 * const features = await encodeImagesGpu(model, [pixels]) as GpuImageFeatures;
 * assert.equal(features.rows, vision.tokensPerImage);
 * const got = new Float32Array(await model.gpu.read(features.buffer, 0, features.rows * model.config.text.hiddenSize * 4));
 * // The CPU twin:
 * const weights = new Map<string, Float32Array>();
 * for (const name of checkpoint.tensors.keys()) weights.set(name, await readCheckpointTensor(checkpoint, name));
 * const want = encodeImageCpu(pixels, model.config, (name) => weights.get(name)!);
 * got.forEach((value, i) => assert.ok(Math.abs(value - want[i]) < 1e-3, `${i}: ${value} vs ${want[i]}`));
 * features.dispose();
 * model.dispose();
 * ```
 */
export async function encodeImagesGpu(model: GpuBackend, pixels: Float32Array[]): Promise<ImageFeatures> {
  const v = model.config.vision!, k = model.kernels;
  const grid = v.imageSize / v.patchSize, patches = grid * grid, rows = patches + 1, vh = v.hiddenSize;
  const n = v.tokensPerImage, c = model.config.text.hiddenSize;
  const out = new BufferSet(model.gpu);
  const scratch = new BufferSet(model.gpu);
  try {
    const features = out.storage(pixels.length * n * c * 4, "image.features");
    const image = scratch.storage(pixels[0].byteLength, "image.pixels");
    const cols = scratch.storage(patches * v.numChannels * v.patchSize * v.patchSize * 4, "image.patches");
    const e = scratch.storage(rows * vh * 4, "vision.embeddings");
    const x = scratch.storage(rows * vh * 4, "vision.x");
    const h = scratch.storage(rows * vh * 4, "vision.h");
    const q = scratch.storage(rows * vh * 4, "vision.q");
    const kk = scratch.storage(rows * vh * 4, "vision.k");
    const vv = scratch.storage(rows * vh * 4, "vision.v");
    const a = scratch.storage(rows * vh * 4, "vision.attn");
    const f = scratch.storage(rows * v.intermediateSize * 4, "vision.fc1");
    const p1 = scratch.storage(n * c * 4, "projector.hidden");
    const counts = scratch.upload(new Uint32Array([rows]), "vision.counts");
    const d: Dispatch[] = [];
    d.push(
      ...k.im2col.bind(scratch, {
        image,
        out: cols,
        size: v.imageSize,
        patch: v.patchSize,
        channels: v.numChannels,
      }),
    );
    d.push(
      ...k.matmul.bind(scratch, {
        x: cols,
        weight: model.matrix("vision.patch_embed"),
        out: e,
        rows: patches,
        outRowOffset: 1,
      }),
    );
    d.push(...k.add.bind(scratch, { a: e, b: model.vector("vision.pos_embed"), count: rows * vh }));
    const norm = (input: GPUBuffer, [weight, bias]: [GPUBuffer, GPUBuffer], out: GPUBuffer) =>
      k.layerNorm.bind(scratch, { x: input, weight, bias, out, rows, cols: vh, eps: v.layerNormEps });
    const linear = (
      input: GPUBuffer,
      [weight, bias]: [WeightTensor, GPUBuffer],
      out: GPUBuffer,
      accumulate = false,
    ) => k.matmul.bind(scratch, { x: input, weight, bias, out, rows, accumulate });
    d.push(...norm(e, [model.vector("vision.pre_norm.weight"), model.vector("vision.pre_norm.bias")], x));
    for (const L of model.visionLayers) {
      d.push(...norm(x, L.ln1, h), ...linear(h, L.q, q), ...linear(h, L.k, kk), ...linear(h, L.v, vv));
      d.push(...k.attention.bind(scratch, {
        q,
        keys: kk,
        values: vv,
        out: a,
        counts,
        countIndex: 0,
        rows,
        heads: v.numHeads,
        kvHeads: v.numHeads,
        headDim: vh / v.numHeads,
        causal: false,
      }));
      d.push(...linear(a, L.o, x, true), ...norm(x, L.ln2, h), ...linear(h, L.fc1, f));
      d.push(
        ...(v.hiddenAct === "quick_gelu" ? k.quickGelu : k.gelu).bind(scratch, {
          x: f,
          count: rows * v.intermediateSize,
        }),
      );
      d.push(...linear(f, L.fc2, x, true));
    }
    const skip = v.selectFeature === "patch" ? 1 : 0;
    const project: Dispatch[] = [];
    const first = model.config.projector!.type === "linear" ? null : p1;
    for (let i = 0; i < pixels.length; i++) {
      const outRow = i * n;
      if (first) {
        project.push(...k.matmul.bind(scratch, {
          x,
          weight: model.matrix("projector.0.weight"),
          bias: model.vector("projector.0.bias"),
          out: first,
          rows: n,
          xRowOffset: skip,
        }));
        project.push(...k.gelu.bind(scratch, { x: first, count: n * c }));
        project.push(...k.matmul.bind(scratch, {
          x: first,
          weight: model.matrix("projector.2.weight"),
          bias: model.vector("projector.2.bias"),
          out: features,
          rows: n,
          outRowOffset: outRow,
        }));
      } else {
        project.push(...k.matmul.bind(scratch, {
          x,
          weight: model.matrix("projector.0.weight"),
          bias: model.vector("projector.0.bias"),
          out: features,
          rows: n,
          xRowOffset: skip,
          outRowOffset: outRow,
        }));
      }
      writeBuffer(model.gpu, image, 0, pixels[i]);
      const enc = model.gpu.device.createCommandEncoder();
      enc.copyBufferToBuffer(model.vector("vision.class_embed"), 0, e, 0, vh * 4);
      model.gpu.encode(enc, d);
      model.gpu.encode(enc, project.splice(0));
      model.gpu.device.queue.submit([enc.finish()]);
    }
    await model.gpu.sync();
    return new GpuImageFeatures(pixels.length * n, features, out);
  } catch (err) {
    out.destroy();
    throw err;
  } finally {
    scratch.destroy();
  }
}
