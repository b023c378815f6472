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
import type {
  BoundWeights,
  LinearSpec,
  NormSpec,
  ProjectorSpec,
  VisionLayerSpec,
  VisionTowerSpec,
} from "../core/weights.ts";

/** The vision tower's and the projector's weights, f32. */
export interface CpuVisionWeights {
  config: ModelConfig;
  vision: BoundWeights<VisionTowerSpec, Float32Array, Float32Array>;
  projector: BoundWeights<ProjectorSpec, Float32Array, Float32Array>;
}

type Linear = BoundWeights<LinearSpec, Float32Array, Float32Array>;
type Norm = BoundWeights<NormSpec, Float32Array, Float32Array>;

const applyLinear = (x: Float32Array, rows: number, W: Linear) => linear(x, W.weight, { rows, bias: W.bias });
const applyNorm = (x: Float32Array, W: Norm, eps: number) => layerNorm(x, W.weight, W.bias, eps);

function encoderLayer(
  x: Float32Array,
  rows: number,
  v: VisionConfig,
  W: BoundWeights<VisionLayerSpec, Float32Array, Float32Array>,
): void {
  const headDim = v.hiddenSize / v.numHeads;
  const h = applyNorm(x, W.ln1, v.layerNormEps);
  const q = applyLinear(h, rows, W.q);
  const k = applyLinear(h, rows, W.k);
  const val = applyLinear(h, rows, W.v);
  const a = attention(q, k, val, {
    heads: v.numHeads,
    kvHeads: v.numHeads,
    headDim,
    visible: new Array(rows).fill(rows),
  });
  addInPlace(x, applyLinear(a, rows, W.o));
  const h2 = applyNorm(x, W.ln2, v.layerNormEps);
  const f = applyLinear(h2, rows, W.fc1);
  const act = v.hiddenAct === "quick_gelu" ? quickGelu(f) : gelu(f);
  addInPlace(x, applyLinear(act, rows, W.fc2));
}

/**
 * Image features of one preprocessed image, projected to the text hidden size: [N, C].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeImageCpu } from "./cpu_vision.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { preprocessImage } from "../image/preprocess.ts";
 * import { bindWeights, describeWeights, type WeightSpec } from "../core/weights.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llava-f32-dyn");
 * const { config } = checkpoint, vision = config.vision!;
 * const tensors = new Map<string, Float32Array>();
 * for (const name of checkpoint.tensors.keys()) tensors.set(name, await readCheckpointTensor(checkpoint, name));
 * const get = (spec: WeightSpec) => tensors.get(spec.name)!;
 * const weights = bindWeights(describeWeights(config), { matrix: get, vector: get });
 * const encode = async (grey: number) => {
 *   const image = { width: 4, height: 4, data: new Uint8Array(4 * 4 * 3).fill(grey) };
 *   const pixels = await preprocessImage(image, { imageSize: vision.imageSize, mean: vision.imageMean, std: vision.imageStd });
 *   return encodeImageCpu(pixels, { config, vision: weights.vision!, projector: weights.projector! });
 * };
 * const dark = await encode(20), light = await encode(230);
 * assert.equal(dark.length, vision.tokensPerImage * config.text.hiddenSize); // [N, C]
 * assert.ok(dark.every(Number.isFinite));
 * assert.notDeepEqual(dark, light); // the features depend on the image
 * ```
 */
export function encodeImageCpu(pixels: Float32Array, weights: CpuVisionWeights): Float32Array {
  const { config, vision: W } = weights;
  const v = config.vision!, grid = v.imageSize / v.patchSize, patches = grid * grid, rows = patches + 1;
  const cols = im2col(pixels, { size: v.imageSize, patch: v.patchSize, channels: v.numChannels });
  const patchEmbeds = linear(cols, W.patchEmbed, { rows: patches });
  const x = new Float32Array(rows * v.hiddenSize);
  x.set(W.classEmbed, 0);
  x.set(patchEmbeds, v.hiddenSize);
  addInPlace(x, W.posEmbed);
  const pre = applyNorm(x, W.preNorm, v.layerNormEps);
  for (const layer of W.layers) encoderLayer(pre, rows, v, layer);
  const selected = v.selectFeature === "patch" ? pre.subarray(v.hiddenSize) : pre;
  const n = v.tokensPerImage;
  const first = applyLinear(selected, n, weights.projector.first);
  const second = weights.projector.second;
  return second ? applyLinear(gelu(first), n, second) : first;
}
