/**
 * CPU forward pass of the CLIP vision tower and the multimodal projector, in plain TypeScript:
 * the reference for the GPU path and the CPU backend's image encoder.
 * pixels [3, S, S] → patches [P, 3·p·p] → embeddings [P+1, V] (+CLS, +positions) → pre-LN →
 * `layersToRun` encoder layers → select (drop CLS) [N, V] → projector → [N, C].
 * @module
 */
import type { ModelConfig, VisionConfig } from "../core/config.ts";
import { addInPlace, attention, gelu, layerNorm, linear, quickGelu } from "../core/cpu_ops.ts";
import { im2col } from "../core/patches_cpu.ts";

/** Canonical-name lookup of f32 weights. */
export type WeightGetter = (name: string) => Float32Array;

function encoderLayer(x: Float32Array, rows: number, v: VisionConfig, w: WeightGetter, i: number): void {
  const p = `vision.layers.${i}.`;
  const headDim = v.hiddenSize / v.numHeads;
  const h = layerNorm(x, w(p + "ln1.weight"), w(p + "ln1.bias"), v.layerNormEps);
  const q = linear(h, w(p + "q.weight"), { rows, bias: w(p + "q.bias") });
  const k = linear(h, w(p + "k.weight"), { rows, bias: w(p + "k.bias") });
  const val = linear(h, w(p + "v.weight"), { rows, bias: w(p + "v.bias") });
  const a = attention(q, k, val, {
    heads: v.numHeads,
    kvHeads: v.numHeads,
    headDim,
    visible: new Array(rows).fill(rows),
  });
  addInPlace(x, linear(a, w(p + "o.weight"), { rows, bias: w(p + "o.bias") }));
  const h2 = layerNorm(x, w(p + "ln2.weight"), w(p + "ln2.bias"), v.layerNormEps);
  const f = linear(h2, w(p + "fc1.weight"), { rows, bias: w(p + "fc1.bias") });
  const act = v.hiddenAct === "quick_gelu" ? quickGelu(f) : gelu(f);
  addInPlace(x, linear(act, w(p + "fc2.weight"), { rows, bias: w(p + "fc2.bias") }));
}

/**
 * Image features of one preprocessed image, projected to the text hidden size: [N, C].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeImageCpu } from "./cpu_vision.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { preprocessImage } from "../image/preprocess.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llava-f32-dyn");
 * const { config } = checkpoint, vision = config.vision!;
 * const weights = new Map<string, Float32Array>();
 * for (const name of checkpoint.tensors.keys()) weights.set(name, await readCheckpointTensor(checkpoint, name));
 * const encode = async (grey: number) => {
 *   const image = { width: 4, height: 4, data: new Uint8Array(4 * 4 * 3).fill(grey) };
 *   const pixels = await preprocessImage(image, { imageSize: vision.imageSize, mean: vision.imageMean, std: vision.imageStd });
 *   return encodeImageCpu(pixels, config, (name) => weights.get(name)!);
 * };
 * const dark = await encode(20), light = await encode(230);
 * assert.equal(dark.length, vision.tokensPerImage * config.text.hiddenSize); // [N, C]
 * assert.ok(dark.every(Number.isFinite));
 * assert.notDeepEqual(dark, light); // the features depend on the image
 * ```
 */
export function encodeImageCpu(pixels: Float32Array, config: ModelConfig, w: WeightGetter): Float32Array {
  const v = config.vision!, grid = v.imageSize / v.patchSize, patches = grid * grid, rows = patches + 1;
  const cols = im2col(pixels, { size: v.imageSize, patch: v.patchSize, channels: v.numChannels });
  const patchEmbeds = linear(cols, w("vision.patch_embed"), { rows: patches });
  const x = new Float32Array(rows * v.hiddenSize);
  x.set(w("vision.class_embed"), 0);
  x.set(patchEmbeds, v.hiddenSize);
  addInPlace(x, w("vision.pos_embed"));
  const pre = layerNorm(x, w("vision.pre_norm.weight"), w("vision.pre_norm.bias"), v.layerNormEps);
  for (let i = 0; i < v.layersToRun; i++) encoderLayer(pre, rows, v, w, i);
  const selected = v.selectFeature === "patch" ? pre.subarray(v.hiddenSize) : pre;
  const n = v.tokensPerImage;
  return projectCpu(selected, n, config, w);
}

function projectCpu(
  features: Float32Array,
  rows: number,
  config: ModelConfig,
  w: WeightGetter,
): Float32Array {
  const first = linear(features, w("projector.0.weight"), { rows, bias: w("projector.0.bias") });
  if (config.projector!.type === "linear") return first;
  return linear(gelu(first), w("projector.2.weight"), { rows, bias: w("projector.2.bias") });
}
