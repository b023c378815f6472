/**
 * Dynamic-LLaVA's predictors on the GPU: the same forward passes as runtime/core/predictors.ts (their
 * CPU twins), composed from the matmul, LayerNorm, GELU, attention and predictor_ops kernels, so
 * scores and admission decisions stay on the GPU.
 *
 * - {@link uploadVisionPredictor} / {@link uploadTextPredictor}: a loaded CPU predictor's weights
 *   to GPU buffers (Linear weights as {@link WeightTensor}s, f16 where the device uses f16), with
 *   the kernels compiled.
 * - {@link bindVisionScores}: x [N, C] → scores [N] = log_softmax(VisionPredictor(x))[:, 0].
 * - {@link bindTextLogits}: x [n, C] → logits [n, 2] (no-cache output-row selection).
 * - {@link bindTextAdmission}: x [1, C] → flags[state[0]] = logit0 > logit1 (KV admission).
 *
 * Binders allocate their scratch buffers from the given {@link BufferSet} and return prebuilt
 * dispatches that can be encoded any number of times.
 * @module
 */
import type { BufferSet, Dispatch } from "../device/gpu.ts";
import {
  type LinearWeights,
  type NormWeights,
  PREDICTOR_LAYER_NORM_EPS,
  TEXT_PREDICTOR_PREFIX,
  type TextPredictor,
  VISION_PREDICTOR_PREFIX,
  type VisionPredictor,
} from "../core/predictors.ts";
import { uploadWeight, type WeightTensor } from "../device/weights_gpu.ts";
import { createKernels, type Kernels } from "./gpu_kernels.ts";

/** A Linear on the GPU: W [out, in] and its optional bias [out]. */
export interface GpuLinear {
  weight: WeightTensor;
  bias?: GPUBuffer;
}

/** A LayerNorm's scale and shift [size] on the GPU. */
export interface GpuNorm {
  weight: GPUBuffer;
  bias: GPUBuffer;
}

/** The registered kernels the predictors run on. */
const PREDICTOR_KERNELS = [
  "matmul",
  "layerNorm",
  "gelu",
  "attention",
  "halfGlobalConcat",
  "logSoftmax2Col0",
  "admitFlag",
] as const;

/** The compiled kernels the predictors run on. */
export type PredictorKernels = Pick<Kernels, (typeof PREDICTOR_KERNELS)[number]>;

/** One timm block on the GPU; the qkv Linear is split by output rows into q, k and v [d, d]. */
export interface GpuPredictorBlock {
  norm1: GpuNorm;
  q: GpuLinear;
  k: GpuLinear;
  v: GpuLinear;
  proj: GpuLinear;
  norm2: GpuNorm;
  fc1: GpuLinear;
  fc2: GpuLinear;
}

/** The vision predictor on the GPU. */
export interface GpuVisionPredictor {
  kernels: PredictorKernels;
  hidden: number;
  dModel: number;
  heads: number;
  /** Block MLP width f. */
  mlpWidth: number;
  downNorm: GpuNorm;
  down: GpuLinear;
  blocks: GpuPredictorBlock[];
  outputMlp: [GpuLinear, GpuLinear, GpuLinear];
}

/** The output text predictor on the GPU. */
export interface GpuTextPredictor {
  kernels: PredictorKernels;
  hidden: number;
  dModel: number;
  norm: GpuNorm;
  mlp: [GpuLinear, GpuLinear, GpuLinear, GpuLinear];
}

/** Arguments of {@link bindVisionScores}. */
export interface VisionScoresArgs {
  /** Image rows' hidden states, f32 [N, C]. */
  x: GPUBuffer;
  /** N. */
  rows: number;
  /** f32 [N]: log_softmax(logits)[:, 0]. */
  scoresOut: GPUBuffer;
}

/** Arguments of {@link bindTextLogits}. */
export interface TextLogitsArgs {
  /** Hidden states, f32 [n, C]. */
  x: GPUBuffer;
  /** n. */
  rows: number;
  /** f32 [n, 2]. */
  logitsOut: GPUBuffer;
}

/** Arguments of {@link bindTextAdmission}. */
export interface TextAdmissionArgs {
  /** The decoded token's hidden state, f32 [1, C]. */
  x: GPUBuffer;
  /** Decode state u32; state[0] is the step, the index of the flag written. */
  state: GPUBuffer;
  /** Admission flags u32 [capacity]: flags[state[0]] = 1 when admitted, else 0. */
  flags: GPUBuffer;
}

function createPredictorKernels(buffers: BufferSet): Promise<PredictorKernels> {
  return createKernels(buffers.gpu, { only: PREDICTOR_KERNELS });
}

function uploadLinear(buffers: BufferSet, layer: LinearWeights, label: string): GpuLinear {
  const weight = uploadWeight(buffers, layer.weight, { rows: layer.outSize, cols: layer.inSize, label });
  return { weight, bias: layer.bias ? buffers.upload(layer.bias, `${label}.bias`) : undefined };
}

function uploadNorm(buffers: BufferSet, norm: NormWeights, label: string): GpuNorm {
  return {
    weight: buffers.upload(norm.weight, `${label}.weight`),
    bias: buffers.upload(norm.bias, `${label}.bias`),
  };
}

/** Rows [from, from + count) of a Linear's weight as a Linear of their own (no bias). */
function rowSlice(layer: LinearWeights, from: number, count: number): LinearWeights {
  const weight = layer.weight.subarray(from * layer.inSize, (from + count) * layer.inSize);
  return { weight, bias: null, inSize: layer.inSize, outSize: count };
}

/**
 * Uploads a loaded vision predictor and compiles its kernels.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../device/gpu.ts";
 * import { bindVisionScores, uploadVisionPredictor } from "./gpu_predictors.ts";
 * import { loadVisionPredictor, visionPredictorTensors, visionScores } from "../core/predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const cpu = loadVisionPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const predictor = await uploadVisionPredictor(buffers, cpu);
 * const x = buffers.upload(new Float32Array(3 * 4).fill(1), "x");
 * const scoresOut = buffers.storage(3 * 4, "scores");
 * gpu.submit(bindVisionScores(predictor, buffers, { x, rows: 3, scoresOut }));
 * const scores = new Float32Array(await gpu.read(scoresOut, 0, 12));
 * const expected = visionScores(cpu, new Float32Array(3 * 4).fill(1)); // the CPU twin
 * scores.forEach((score, i) => assert.ok(Math.abs(score - expected[i]) < 1e-3, `${scores} vs ${expected}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function uploadVisionPredictor(
  buffers: BufferSet,
  cpuPredictor: VisionPredictor,
): Promise<GpuVisionPredictor> {
  const p = cpuPredictor, d = p.dModel, label = (name: string) => VISION_PREDICTOR_PREFIX + name;
  const kernels = await createPredictorKernels(buffers);
  const blocks = p.blocks.map((block, i): GpuPredictorBlock => {
    const name = (part: string) => label(`transformer.${i}.${part}`);
    return {
      norm1: uploadNorm(buffers, block.norm1, name("norm1")),
      q: uploadLinear(buffers, rowSlice(block.qkv, 0, d), name("attn.qkv.weight[q]")),
      k: uploadLinear(buffers, rowSlice(block.qkv, d, d), name("attn.qkv.weight[k]")),
      v: uploadLinear(buffers, rowSlice(block.qkv, 2 * d, d), name("attn.qkv.weight[v]")),
      proj: uploadLinear(buffers, block.proj, name("attn.proj.weight")),
      norm2: uploadNorm(buffers, block.norm2, name("norm2")),
      fc1: uploadLinear(buffers, block.fc1, name("mlp.fc1.weight")),
      fc2: uploadLinear(buffers, block.fc2, name("mlp.fc2.weight")),
    };
  });
  const [out0, out1, out2] = p.outputMlp;
  return {
    kernels,
    hidden: p.hidden,
    dModel: d,
    heads: p.heads,
    mlpWidth: p.blocks[0]?.fc1.outSize ?? 0,
    downNorm: uploadNorm(buffers, p.downNorm, label("down_mlp.0")),
    down: uploadLinear(buffers, p.down, label("down_mlp.1.weight")),
    blocks,
    outputMlp: [
      uploadLinear(buffers, out0, label("output_mlp.0.weight")),
      uploadLinear(buffers, out1, label("output_mlp.2.weight")),
      uploadLinear(buffers, out2, label("output_mlp.4.weight")),
    ],
  };
}

/**
 * Uploads a loaded output text predictor and compiles its kernels.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../device/gpu.ts";
 * import { bindTextLogits, uploadTextPredictor } from "./gpu_predictors.ts";
 * import { loadTextPredictor, textPredictorLogits, textPredictorTensors } from "../core/predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(textPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const cpu = loadTextPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const predictor = await uploadTextPredictor(buffers, cpu);
 * const x = buffers.upload(new Float32Array([1, 2, 3, 4]), "x");
 * const logitsOut = buffers.storage(2 * 4, "logits");
 * gpu.submit(bindTextLogits(predictor, buffers, { x, rows: 1, logitsOut }));
 * const logits = new Float32Array(await gpu.read(logitsOut, 0, 8));
 * const expected = textPredictorLogits(cpu, new Float32Array([1, 2, 3, 4])); // the CPU twin
 * logits.forEach((logit, i) => assert.ok(Math.abs(logit - expected[i]) < 1e-3, `${logits} vs ${expected}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function uploadTextPredictor(
  buffers: BufferSet,
  cpuPredictor: TextPredictor,
): Promise<GpuTextPredictor> {
  const p = cpuPredictor, label = (name: string) => TEXT_PREDICTOR_PREFIX + name;
  const [l1, l3, l5, l7] = p.mlp;
  return {
    kernels: await createPredictorKernels(buffers),
    hidden: p.hidden,
    dModel: p.dModel,
    norm: uploadNorm(buffers, p.norm, label("output_mlp.0")),
    mlp: [
      uploadLinear(buffers, l1, label("output_mlp.1.weight")),
      uploadLinear(buffers, l3, label("output_mlp.3.weight")),
      uploadLinear(buffers, l5, label("output_mlp.5.weight")),
      uploadLinear(buffers, l7, label("output_mlp.7.weight")),
    ],
  };
}

/** Dispatches for out [rows, W.rows] = x · Wᵀ + bias (or out += … when `accumulate`). */
function bindLinear(
  kernels: PredictorKernels,
  buffers: BufferSet,
  args: { x: GPUBuffer; layer: GpuLinear; out: GPUBuffer; rows: number; accumulate?: boolean },
): Dispatch[] {
  const { x, layer, out, rows, accumulate } = args;
  return kernels.matmul.bind(buffers, { x, weight: layer.weight, bias: layer.bias, out, rows, accumulate });
}

function bindNorm(
  kernels: PredictorKernels,
  buffers: BufferSet,
  args: { x: GPUBuffer; norm: GpuNorm; out: GPUBuffer; rows: number; cols: number },
): Dispatch[] {
  const { x, norm, out, rows, cols } = args;
  return kernels.layerNorm.bind(buffers, {
    x,
    weight: norm.weight,
    bias: norm.bias,
    out,
    rows,
    cols,
    eps: PREDICTOR_LAYER_NORM_EPS,
  });
}

/** One timm block in place on h [N, d], with scratch buffers sized for N rows. */
function bindBlock(
  p: GpuVisionPredictor,
  buffers: BufferSet,
  args: { block: GpuPredictorBlock; h: GPUBuffer; rows: number; counts: GPUBuffer },
): Dispatch[] {
  const { kernels, dModel: d, heads } = p;
  const { block, h, rows, counts } = args;
  const scratch = (cols: number, name: string) =>
    buffers.storage(rows * cols * 4, `vision predictor ${name}`);
  const normed = scratch(d, "normed"), q = scratch(d, "q"), k = scratch(d, "k"), v = scratch(d, "v");
  const attended = scratch(d, "attended"), inner = scratch(p.mlpWidth, "mlp");
  return [
    ...bindNorm(kernels, buffers, { x: h, norm: block.norm1, out: normed, rows, cols: d }),
    ...bindLinear(kernels, buffers, { x: normed, layer: block.q, out: q, rows }),
    ...bindLinear(kernels, buffers, { x: normed, layer: block.k, out: k, rows }),
    ...bindLinear(kernels, buffers, { x: normed, layer: block.v, out: v, rows }),
    ...kernels.attention.bind(buffers, {
      q,
      keys: k,
      values: v,
      out: attended,
      counts,
      countIndex: 0,
      rows,
      heads,
      kvHeads: heads,
      headDim: d / heads,
      causal: false,
    }),
    ...bindLinear(kernels, buffers, { x: attended, layer: block.proj, out: h, rows, accumulate: true }),
    ...bindNorm(kernels, buffers, { x: h, norm: block.norm2, out: normed, rows, cols: d }),
    ...bindLinear(kernels, buffers, { x: normed, layer: block.fc1, out: inner, rows }),
    ...kernels.gelu.bind(buffers, { x: inner, count: rows * p.mlpWidth }),
    ...bindLinear(kernels, buffers, { x: inner, layer: block.fc2, out: h, rows, accumulate: true }),
  ];
}

/**
 * Dispatches computing the image tokens' keep scores: x [N, C] → scoresOut [N] =
 * log_softmax(VisionPredictor(x))[:, 0]. Scratch buffers come from `buffers`; N = 0 binds nothing.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../device/gpu.ts";
 * import { bindVisionScores, uploadVisionPredictor } from "./gpu_predictors.ts";
 * import { loadVisionPredictor, visionPredictorTensors, visionScores } from "../core/predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 2 };
 * const sizes = new Map(visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const cpu = loadVisionPredictor((name) => new Float32Array(sizes.get(name)!).map((_, i) => Math.sin(i)), { hidden: 4, sparse });
 * const gpu = await createGpu({ allowF16: false });
 * const buffers = new BufferSet(gpu);
 * const predictor = await uploadVisionPredictor(buffers, cpu);
 * const input = new Float32Array(5 * 4).map((_, i) => Math.cos(i));
 * const scoresOut = buffers.storage(5 * 4, "scores");
 * gpu.submit(bindVisionScores(predictor, buffers, { x: buffers.upload(input, "x"), rows: 5, scoresOut }));
 * const scores = new Float32Array(await gpu.read(scoresOut, 0, 20));
 * const expected = visionScores(cpu, input); // the CPU twin
 * scores.forEach((score, i) => assert.ok(Math.abs(score - expected[i]) < 1e-4, `${scores} vs ${expected}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function bindVisionScores(
  p: GpuVisionPredictor,
  buffers: BufferSet,
  args: VisionScoresArgs,
): Dispatch[] {
  const { x, rows, scoresOut } = args;
  if (rows === 0) return [];
  const { kernels, hidden, dModel: d } = p;
  const half = Math.floor(d / 2), quarter = Math.floor(d / 4);
  const scratch = (cols: number, name: string) =>
    buffers.storage(rows * cols * 4, `vision predictor ${name}`);
  const normedInput = scratch(hidden, "normed input"), h = scratch(d, "h"), mixed = scratch(d, "mixed");
  const a = scratch(half, "a"), b = scratch(quarter, "b"), logits = scratch(2, "logits");
  const counts = buffers.upload(new Uint32Array([rows]), "vision predictor counts");
  const [out0, out1, out2] = p.outputMlp;
  return [
    ...bindNorm(kernels, buffers, { x, norm: p.downNorm, out: normedInput, rows, cols: hidden }),
    ...bindLinear(kernels, buffers, { x: normedInput, layer: p.down, out: h, rows }),
    ...kernels.gelu.bind(buffers, { x: h, count: rows * d }),
    ...p.blocks.flatMap((block) => bindBlock(p, buffers, { block, h, rows, counts })),
    ...kernels.halfGlobalConcat.bind(buffers, { x: h, out: mixed, rows, cols: d }),
    ...bindLinear(kernels, buffers, { x: mixed, layer: out0, out: a, rows }),
    ...kernels.gelu.bind(buffers, { x: a, count: rows * half }),
    ...bindLinear(kernels, buffers, { x: a, layer: out1, out: b, rows }),
    ...kernels.gelu.bind(buffers, { x: b, count: rows * quarter }),
    ...bindLinear(kernels, buffers, { x: b, layer: out2, out: logits, rows }),
    ...kernels.logSoftmax2Col0.bind(buffers, { logits, out: scoresOut, rows }),
  ];
}

/**
 * Dispatches computing TextPredictor logits: x [n, C] → logitsOut [n, 2]. n = 0 binds nothing.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../device/gpu.ts";
 * import { bindTextLogits, uploadTextPredictor } from "./gpu_predictors.ts";
 * import { loadTextPredictor, textPredictorLogits, textPredictorTensors } from "../core/predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(textPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const cpu = loadTextPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const predictor = await uploadTextPredictor(buffers, cpu);
 * const logitsOut = buffers.storage(3 * 2 * 4, "logits");
 * gpu.submit(bindTextLogits(predictor, buffers, { x: buffers.upload(new Float32Array(12), "x"), rows: 3, logitsOut }));
 * const logits = new Float32Array(await gpu.read(logitsOut, 0, 24));
 * const expected = textPredictorLogits(cpu, new Float32Array(12)); // the CPU twin, 3 rows × 2
 * logits.forEach((logit, i) => assert.ok(Math.abs(logit - expected[i]) < 1e-3, `${logits} vs ${expected}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function bindTextLogits(p: GpuTextPredictor, buffers: BufferSet, args: TextLogitsArgs): Dispatch[] {
  const { x, rows, logitsOut } = args;
  if (rows === 0) return [];
  const { kernels, hidden } = p;
  const normed = buffers.storage(rows * hidden * 4, "text predictor normed");
  const dispatches = bindNorm(kernels, buffers, { x, norm: p.norm, out: normed, rows, cols: hidden });
  let input = normed;
  p.mlp.forEach((layer, i) => {
    const last = i === p.mlp.length - 1;
    const out = last ? logitsOut : buffers.storage(rows * layer.weight.rows * 4, `text predictor h${i}`);
    dispatches.push(...bindLinear(kernels, buffers, { x: input, layer, out, rows }));
    if (!last) dispatches.push(...kernels.gelu.bind(buffers, { x: out, count: rows * layer.weight.rows }));
    input = out;
  });
  return dispatches;
}

/**
 * Dispatches deciding one decoded token's KV admission on the GPU: TextPredictor(x [1, C]) gives
 * logits [2]; flags[state[0]] = 1 when logit0 > logit1, else 0. Nothing is read back.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../device/gpu.ts";
 * import { bindTextAdmission, uploadTextPredictor } from "./gpu_predictors.ts";
 * import { loadTextPredictor, textPredictorTensors } from "../core/predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(textPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const cpu = loadTextPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const predictor = await uploadTextPredictor(buffers, cpu);
 * const state = buffers.upload(new Uint32Array([1, 0, 0, 0]), "state");
 * const flags = buffers.upload(new Uint32Array([7, 7, 7, 7]), "flags");
 * gpu.submit(bindTextAdmission(predictor, buffers, { x: buffers.upload(new Float32Array(4), "x"), state, flags }));
 * assert.equal(new Uint32Array(await gpu.read(flags, 0, 16))[0], 7); // only flags[1] is written
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export function bindTextAdmission(
  p: GpuTextPredictor,
  buffers: BufferSet,
  args: TextAdmissionArgs,
): Dispatch[] {
  const logits = buffers.storage(2 * 4, "text predictor admission logits");
  return [
    ...bindTextLogits(p, buffers, { x: args.x, rows: 1, logitsOut: logits }),
    ...p.kernels.admitFlag.bind(buffers, { logits, state: args.state, flags: args.flags }),
  ];
}
