/**
 * The CLIP vision tower and projector on the GPU (twin: runtime/cpu/cpu_vision.ts):
 * pixels [3, S, S] → im2col [P, 3·p·p] → patch embeddings into rows 1..P of e [P+1, V] (row 0 the
 * class embedding) → + positions → pre-LN → x [P+1, V] → `layersToRun` encoder layers (LN,
 * q/k/v with bias, full attention, out-proj into x; LN, fc1, quick_gelu, fc2 into x) → rows 1..P
 * (CLS dropped) → projector (Linear, and for mlp2x_gelu GELU, Linear) → features [images·N, C].
 * @module
 */
import type { ImageFeatures } from "../engine/backend.ts";
import type { BoundWeights, LinearSpec, NormSpec } from "../core/weights.ts";
import { BufferSet, type Dispatch, writeBuffer } from "../device/gpu.ts";
import type { GpuMatrix } from "../../kernels/matmul_quant.ts";
import type { GpuModel } from "./gpu_model.ts";

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

/** The tower's activations for one image (f32): R = P + 1 rows of width V. */
interface TowerActivations {
  /** [3, S, S] */
  image: GPUBuffer;
  /** [P, 3·p·p] */
  patches: GPUBuffer;
  /** e, x, h, q, k, v, attn [R, V]; fc1 [R, I_v]. */
  e: GPUBuffer;
  x: GPUBuffer;
  h: GPUBuffer;
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  attn: GPUBuffer;
  fc1: GPUBuffer;
  /** mlp2x_gelu: the projector's hidden rows [N, C]; null for a linear projector. */
  hidden: GPUBuffer | null;
  /** u32 [1] = R: every row sees every row. */
  counts: GPUBuffer;
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
 * import { bindWeights, describeWeights, type WeightSpec } from "../core/weights.ts";
 * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llava-f32-dyn");
 * const backend = await createGpuBackend(checkpoint, { weightDtype: "f32" }) as GpuBackend;
 * const { model } = backend, config = model.config, vision = config.vision!;
 * const image = { width: 3, height: 2, data: new Uint8Array(3 * 2 * 3).map((_, i) => i * 13) };
 * const pixels = await preprocessImage(image, { imageSize: vision.imageSize, mean: vision.imageMean, std: vision.imageStd });
 * const features = await encodeImagesGpu(model, [pixels]) as GpuImageFeatures;
 * assert.equal(features.rows, vision.tokensPerImage);
 * const got = new Float32Array(await model.gpu.read(features.buffer, 0, features.rows * config.text.hiddenSize * 4));
 * // The CPU twin:
 * const tensors = new Map<string, Float32Array>();
 * for (const name of checkpoint.tensors.keys()) tensors.set(name, await readCheckpointTensor(checkpoint, name));
 * const get = (spec: WeightSpec) => tensors.get(spec.name)!;
 * const weights = bindWeights(describeWeights(config), { matrix: get, vector: get });
 * const want = encodeImageCpu(pixels, { config, vision: weights.vision!, projector: weights.projector! });
 * got.forEach((value, i) => assert.ok(Math.abs(value - want[i]) < 1e-3, `${i}: ${value} vs ${want[i]}`));
 * features.dispose();
 * backend.dispose();
 * ```
 */
export async function encodeImagesGpu(model: GpuModel, pixels: Float32Array[]): Promise<ImageFeatures> {
  const n = model.config.vision!.tokensPerImage, c = model.config.text.hiddenSize, gpu = model.gpu;
  const out = new BufferSet(gpu);
  const scratch = new BufferSet(gpu);
  try {
    const features = out.storage(pixels.length * n * c * 4, "image.features");
    const act = allocTowerActivations(model, scratch, pixels[0].byteLength);
    const tower = bindTower(model, scratch, act);
    for (let i = 0; i < pixels.length; i++) {
      const project = bindProjector(model, scratch, { act, out: features, outRow: i * n });
      writeBuffer(gpu, act.image, 0, pixels[i]);
      const enc = gpu.device.createCommandEncoder();
      enc.copyBufferToBuffer(
        model.weights.vision!.classEmbed,
        0,
        act.e,
        0,
        model.config.vision!.hiddenSize * 4,
      );
      gpu.encode(enc, tower);
      gpu.encode(enc, project);
      gpu.device.queue.submit([enc.finish()]);
    }
    await gpu.sync();
    return new GpuImageFeatures(pixels.length * n, features, out);
  } catch (err) {
    out.destroy();
    throw err;
  } finally {
    scratch.destroy();
  }
}

function allocTowerActivations(model: GpuModel, set: BufferSet, imageBytes: number): TowerActivations {
  const v = model.config.vision!, grid = v.imageSize / v.patchSize, patches = grid * grid;
  const rows = patches + 1, width = v.hiddenSize * rows * 4;
  const projectorHidden = model.weights.projector!.second
    ? set.storage(v.tokensPerImage * model.config.text.hiddenSize * 4, "projector.hidden")
    : null;
  return {
    image: set.storage(imageBytes, "image.pixels"),
    patches: set.storage(patches * v.numChannels * v.patchSize * v.patchSize * 4, "image.patches"),
    e: set.storage(width, "vision.embeddings"),
    x: set.storage(width, "vision.x"),
    h: set.storage(width, "vision.h"),
    q: set.storage(width, "vision.q"),
    k: set.storage(width, "vision.k"),
    v: set.storage(width, "vision.v"),
    attn: set.storage(width, "vision.attn"),
    fc1: set.storage(rows * v.intermediateSize * 4, "vision.fc1"),
    hidden: projectorHidden,
    counts: set.upload(new Uint32Array([rows]), "vision.counts"),
  };
}

/** The tower up to its last encoder layer: pixels in `act.image` → x [R, V]. */
function bindTower(model: GpuModel, set: BufferSet, act: TowerActivations): Dispatch[] {
  const v = model.config.vision!, k = model.kernels, W = model.weights.vision!;
  const grid = v.imageSize / v.patchSize, patches = grid * grid, rows = patches + 1, vh = v.hiddenSize;
  const norm = (x: GPUBuffer, weights: BoundWeights<NormSpec, GpuMatrix, GPUBuffer>, out: GPUBuffer) =>
    k.layerNorm.bind(set, { ...weights, x, out, rows, cols: vh, eps: v.layerNormEps });
  const linear = (
    x: GPUBuffer,
    weights: BoundWeights<LinearSpec, GpuMatrix, GPUBuffer>,
    out: GPUBuffer,
    accumulate = false,
  ) => k.matmul.bind(set, { x, weight: weights.weight, bias: weights.bias, out, rows, accumulate });
  const { image, patches: cols, e, x, h, q, attn: a, fc1: f } = act;
  const d: Dispatch[] = [];
  d.push(
    ...k.im2col.bind(set, {
      image,
      out: cols,
      size: v.imageSize,
      patch: v.patchSize,
      channels: v.numChannels,
    }),
  );
  d.push(...k.matmul.bind(set, { x: cols, weight: W.patchEmbed, out: e, rows: patches, outRowOffset: 1 }));
  d.push(...k.add.bind(set, { a: e, b: W.posEmbed, count: rows * vh }));
  d.push(...norm(e, W.preNorm, x));
  const activation = v.hiddenAct === "quick_gelu" ? k.quickGelu : k.gelu;
  for (const L of W.layers) {
    d.push(...norm(x, L.ln1, h), ...linear(h, L.q, q), ...linear(h, L.k, act.k), ...linear(h, L.v, act.v));
    d.push(...k.attention.bind(set, {
      q,
      keys: act.k,
      values: act.v,
      out: a,
      counts: act.counts,
      countIndex: 0,
      rows,
      heads: v.numHeads,
      kvHeads: v.numHeads,
      headDim: vh / v.numHeads,
      causal: false,
    }));
    d.push(...linear(a, L.o, x, true), ...norm(x, L.ln2, h), ...linear(h, L.fc1, f));
    d.push(...activation.bind(set, { x: f, count: rows * v.intermediateSize }));
    d.push(...linear(f, L.fc2, x, true));
  }
  return d;
}

/**
 * The projector over the N selected rows of x (CLS dropped when the feature is "patch") into rows
 * `outRow`.. of `out` [images·N, C]: Linear, or Linear → GELU → Linear through `act.hidden`.
 */
function bindProjector(
  model: GpuModel,
  set: BufferSet,
  args: { act: TowerActivations; out: GPUBuffer; outRow: number },
): Dispatch[] {
  const v = model.config.vision!, k = model.kernels, { first, second } = model.weights.projector!;
  const n = v.tokensPerImage, c = model.config.text.hiddenSize, hidden = args.act.hidden;
  const skip = v.selectFeature === "patch" ? 1 : 0;
  const firstOut = second ? { out: hidden!, outRowOffset: 0 } : { out: args.out, outRowOffset: args.outRow };
  const d = k.matmul.bind(set, { x: args.act.x, ...first, ...firstOut, rows: n, xRowOffset: skip });
  if (!second) return d;
  return [
    ...d,
    ...k.gelu.bind(set, { x: hidden!, count: n * c }),
    ...k.matmul.bind(set, { x: hidden!, ...second, out: args.out, rows: n, outRowOffset: args.outRow }),
  ];
}
