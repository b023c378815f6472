/**
 * Dynamic-LLaVA's two score predictors on the CPU: their tensor lists, loading with
 * shape validation, and forward passes. Pure TypeScript, GPU-free; the GPU runtime uploads the
 * same {@link VisionPredictor}/{@link TextPredictor} objects.
 *
 * Layout, as the official implementation names its submodules (relative to
 * {@link VISION_PREDICTOR_PREFIX} / {@link TEXT_PREDICTOR_PREFIX}); C = LLM hidden size,
 * d = `d_model`, f = the block MLP width, every LayerNorm eps 1e-5, every GELU the erf form:
 *
 * VisionPredictor, x [N, C] → logits [N, 2]:
 * - `down_mlp.0` LayerNorm(C), `down_mlp.1` Linear(C, d), GELU → h [N, d]
 * - `transformer.{i}` (timm block): h += `attn.proj`(MHSA(`norm1` h)), `attn.qkv` Linear(d, 3d)
 *   without bias, its output per row laid out [3 (q, k, v), heads, d/heads], scale (d/heads)^-½,
 *   every token sees every token; h += `mlp.fc2`(GELU(`mlp.fc1`(`norm2` h)))
 * - h[:, :d/2] stays per token, h[:, d/2:] is replaced by its mean over the N tokens
 * - `output_mlp.0` Linear(d, d/2), GELU, `output_mlp.2` Linear(d/2, d/4), GELU,
 *   `output_mlp.4` Linear(d/4, 2)
 *
 * TextPredictor, x [n, C] → logits [n, 2]: `output_mlp.0` LayerNorm(C), `.1` Linear(C, d), GELU,
 * `.3` Linear(d, d/2), GELU, `.5` Linear(d/2, d/4), GELU, `.7` Linear(d/4, 2).
 * @module
 */
import type { ModelConfig, SparseConfig } from "./config.ts";
import { addInPlace, attention, gelu, layerNorm, linear } from "./cpu_ops.ts";
import { CheckpointError, InputError } from "./errors.ts";
import { halfGlobalConcat, logSoftmax2Col0 } from "./predictor_cpu_ops.ts";

/** Checkpoint prefix of the vision (image score) predictor's tensors. */
export const VISION_PREDICTOR_PREFIX = "model.image_score_predictor.";
/** Checkpoint prefix of the output text score predictor's tensors. */
export const TEXT_PREDICTOR_PREFIX = "model.output_text_score_predictor.";
/** eps of every predictor LayerNorm (torch's default). */
export const PREDICTOR_LAYER_NORM_EPS = 1e-5;

/** One expected tensor: name relative to the predictor prefix, torch shape. */
export interface TensorSpec {
  /** Tensor name after the predictor prefix (`down_mlp.1.weight`). */
  name: string;
  /** Torch shape, outermost first. */
  shape: number[];
}

/** Looks up a tensor by its name relative to the predictor prefix, as f32; undefined if absent. */
export type TensorLookup = (name: string) => Float32Array | undefined;

/** Sizes the predictors are built from. */
export interface PredictorSizes {
  /** The LLM hidden size C. */
  hidden: number;
  /** The checkpoint's sparse_config (d_model, nhead, dim_feedforward, num_layers). */
  sparse: Pick<SparseConfig, "dModel" | "nhead" | "dimFeedforward" | "numLayers">;
}

/** A torch Linear: weight [out, in], bias [out] or null. */
export interface LinearWeights {
  /** [outSize, inSize], row-major. */
  weight: Float32Array;
  /** [outSize], or null for a Linear without bias. */
  bias: Float32Array | null;
  /** Input width. */
  inSize: number;
  /** Output width. */
  outSize: number;
}

/** A LayerNorm's affine parameters, [size] each. */
export interface NormWeights {
  /** Scale γ. */
  weight: Float32Array;
  /** Shift β. */
  bias: Float32Array;
}

/** One timm-style transformer block of the vision predictor (width d, MLP width f). */
export interface PredictorBlock {
  /** LayerNorm(d) before attention. */
  norm1: NormWeights;
  /** [3d, d], no bias; output row layout [3, heads, headDim]. */
  qkv: LinearWeights;
  /** [d, d] + bias [d]. */
  proj: LinearWeights;
  /** LayerNorm(d) before the MLP. */
  norm2: NormWeights;
  /** [f, d] + [f]. */
  fc1: LinearWeights;
  /** [d, f] + [d]. */
  fc2: LinearWeights;
}

/** The vision predictor's weights and sizes. */
export interface VisionPredictor {
  /** The LLM hidden size C. */
  hidden: number;
  /** The predictor width d. */
  dModel: number;
  /** Attention heads of the blocks. */
  heads: number;
  /** LayerNorm(C) of `down_mlp.0`. */
  downNorm: NormWeights;
  /** Linear(C, d) of `down_mlp.1`. */
  down: LinearWeights;
  /** The transformer blocks, in order. */
  blocks: PredictorBlock[];
  /** Linear(d, d/2), Linear(d/2, d/4), Linear(d/4, 2), GELU between. */
  outputMlp: [LinearWeights, LinearWeights, LinearWeights];
}

/** The output text predictor's weights and sizes. */
export interface TextPredictor {
  /** The LLM hidden size C. */
  hidden: number;
  /** The predictor width d. */
  dModel: number;
  /** LayerNorm(C) of `output_mlp.0`. */
  norm: NormWeights;
  /** Linear(C, d), Linear(d, d/2), Linear(d/2, d/4), Linear(d/4, 2), GELU between. */
  mlp: [LinearWeights, LinearWeights, LinearWeights, LinearWeights];
}

/** The block MLP width as torch computes it: int(d × (dim_feedforward / d)). */
function mlpWidth(sparse: PredictorSizes["sparse"]): number {
  return Math.trunc(sparse.dModel * (sparse.dimFeedforward / sparse.dModel));
}

function linearSpecs(name: string, outSize: number, inSize: number, bias = true): TensorSpec[] {
  const specs = [{ name: `${name}.weight`, shape: [outSize, inSize] }];
  return bias ? [...specs, { name: `${name}.bias`, shape: [outSize] }] : specs;
}

function normSpecs(name: string, size: number): TensorSpec[] {
  return [{ name: `${name}.weight`, shape: [size] }, { name: `${name}.bias`, shape: [size] }];
}

/**
 * Every tensor of the vision predictor, names relative to {@link VISION_PREDICTOR_PREFIX}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { visionPredictorTensors } from "./predictors.ts";
 * const specs = visionPredictorTensors(64, { dModel: 16, nhead: 2, dimFeedforward: 32, numLayers: 1 });
 * assert.deepEqual(specs[2], { name: "down_mlp.1.weight", shape: [16, 64] });
 * ```
 */
export function visionPredictorTensors(hidden: number, sparse: PredictorSizes["sparse"]): TensorSpec[] {
  const d = sparse.dModel, f = mlpWidth(sparse);
  const specs = [...normSpecs("down_mlp.0", hidden), ...linearSpecs("down_mlp.1", d, hidden)];
  for (let i = 0; i < sparse.numLayers; i++) {
    const block = `transformer.${i}`;
    specs.push(
      ...normSpecs(`${block}.norm1`, d),
      ...linearSpecs(`${block}.attn.qkv`, 3 * d, d, false),
      ...linearSpecs(`${block}.attn.proj`, d, d),
      ...normSpecs(`${block}.norm2`, d),
      ...linearSpecs(`${block}.mlp.fc1`, f, d),
      ...linearSpecs(`${block}.mlp.fc2`, d, f),
    );
  }
  const half = Math.floor(d / 2), quarter = Math.floor(d / 4);
  specs.push(
    ...linearSpecs("output_mlp.0", half, d),
    ...linearSpecs("output_mlp.2", quarter, half),
    ...linearSpecs("output_mlp.4", 2, quarter),
  );
  return specs;
}

/**
 * Every tensor of the output text predictor, names relative to {@link TEXT_PREDICTOR_PREFIX}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { textPredictorTensors } from "./predictors.ts";
 * const specs = textPredictorTensors(64, { dModel: 16, nhead: 2, dimFeedforward: 32, numLayers: 1 });
 * assert.equal(specs.length, 10);
 * assert.deepEqual(specs.at(-1), { name: "output_mlp.7.bias", shape: [2] });
 * ```
 */
export function textPredictorTensors(hidden: number, sparse: PredictorSizes["sparse"]): TensorSpec[] {
  const d = sparse.dModel, half = Math.floor(d / 2), quarter = Math.floor(d / 4);
  return [
    ...normSpecs("output_mlp.0", hidden),
    ...linearSpecs("output_mlp.1", d, hidden),
    ...linearSpecs("output_mlp.3", half, d),
    ...linearSpecs("output_mlp.5", quarter, half),
    ...linearSpecs("output_mlp.7", 2, quarter),
  ];
}

/** A validated tensor: its data and torch shape. */
interface LoadedTensor {
  data: Float32Array;
  shape: number[];
}

/** Fetches every spec'd tensor, checking presence and element count. */
function fetchAll(get: TensorLookup, specs: TensorSpec[], prefix: string): Map<string, LoadedTensor> {
  const tensors = new Map<string, LoadedTensor>();
  for (const { name, shape } of specs) {
    const data = get(name);
    if (data === undefined) {
      throw new CheckpointError("Cannot load predictor: tensor is missing", prefix + name);
    }
    const expected = shape.reduce((a, b) => a * b, 1);
    if (data.length !== expected) {
      throw new CheckpointError(
        `Cannot load predictor: expected shape [${shape}] (${expected} values), got ${data.length} values`,
        prefix + name,
      );
    }
    tensors.set(name, { data, shape });
  }
  return tensors;
}

function takeLinear(tensors: Map<string, LoadedTensor>, name: string): LinearWeights {
  const { data: weight, shape: [outSize, inSize] } = tensors.get(`${name}.weight`)!;
  return { weight, bias: tensors.get(`${name}.bias`)?.data ?? null, inSize, outSize };
}

function takeNorm(tensors: Map<string, LoadedTensor>, name: string): NormWeights {
  return { weight: tensors.get(`${name}.weight`)!.data, bias: tensors.get(`${name}.bias`)!.data };
}

/**
 * Loads the vision predictor, validating every tensor against {@link visionPredictorTensors}
 * (CheckpointError naming the tensor when one is missing or has the wrong size).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadVisionPredictor, visionPredictorTensors, visionScores } from "./predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const p = loadVisionPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * assert.equal(visionScores(p, new Float32Array(3 * 4).fill(1)).length, 3); // one score per image token
 * ```
 */
export function loadVisionPredictor(get: TensorLookup, sizes: PredictorSizes): VisionPredictor {
  const { hidden, sparse } = sizes;
  checkSizes(sizes, VISION_PREDICTOR_PREFIX);
  const tensors = fetchAll(get, visionPredictorTensors(hidden, sparse), VISION_PREDICTOR_PREFIX);
  const d = sparse.dModel;
  const blocks: PredictorBlock[] = [];
  for (let i = 0; i < sparse.numLayers; i++) {
    const block = `transformer.${i}`;
    blocks.push({
      norm1: takeNorm(tensors, `${block}.norm1`),
      qkv: takeLinear(tensors, `${block}.attn.qkv`),
      proj: takeLinear(tensors, `${block}.attn.proj`),
      norm2: takeNorm(tensors, `${block}.norm2`),
      fc1: takeLinear(tensors, `${block}.mlp.fc1`),
      fc2: takeLinear(tensors, `${block}.mlp.fc2`),
    });
  }
  return {
    hidden,
    dModel: d,
    heads: sparse.nhead,
    downNorm: takeNorm(tensors, "down_mlp.0"),
    down: takeLinear(tensors, "down_mlp.1"),
    blocks,
    outputMlp: [
      takeLinear(tensors, "output_mlp.0"),
      takeLinear(tensors, "output_mlp.2"),
      takeLinear(tensors, "output_mlp.4"),
    ],
  };
}

/**
 * Loads the output text predictor, validating every tensor against {@link textPredictorTensors}.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadTextPredictor, textPredictorLogits, textPredictorTensors } from "./predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(textPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const p = loadTextPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * const logits = textPredictorLogits(p, new Float32Array(4).fill(1));
 * assert.equal(logits.length, 2); // [keep, drop] logits of one token
 * assert.ok(logits.every(Number.isFinite));
 * ```
 */
export function loadTextPredictor(get: TensorLookup, sizes: PredictorSizes): TextPredictor {
  const { hidden, sparse } = sizes;
  checkSizes(sizes, TEXT_PREDICTOR_PREFIX);
  const tensors = fetchAll(get, textPredictorTensors(hidden, sparse), TEXT_PREDICTOR_PREFIX);
  return {
    hidden,
    dModel: sparse.dModel,
    norm: takeNorm(tensors, "output_mlp.0"),
    mlp: [
      takeLinear(tensors, "output_mlp.1"),
      takeLinear(tensors, "output_mlp.3"),
      takeLinear(tensors, "output_mlp.5"),
      takeLinear(tensors, "output_mlp.7"),
    ],
  };
}

function checkSizes(sizes: PredictorSizes, where: string): void {
  const { hidden, sparse } = sizes;
  const ok =
    [hidden, sparse.dModel, sparse.nhead, sparse.dimFeedforward].every((v) => Number.isInteger(v) && v > 0) &&
    Number.isInteger(sparse.numLayers) && sparse.numLayers >= 0 &&
    sparse.dModel % sparse.nhead === 0 && sparse.dModel % 4 === 0;
  if (!ok) {
    throw new CheckpointError(
      `Cannot load predictor: sizes hidden ${hidden}, d_model ${sparse.dModel}, nhead ${sparse.nhead}, ` +
        `dim_feedforward ${sparse.dimFeedforward}, num_layers ${sparse.numLayers} are inconsistent`,
      where,
    );
  }
}

function applyLinear(x: Float32Array, layer: LinearWeights, rows: number): Float32Array {
  return linear(x, layer.weight, { rows, bias: layer.bias });
}

/** One timm block in place on h [N, d]. */
function runBlock(h: Float32Array, block: PredictorBlock, sizes: { rows: number; d: number; heads: number }) {
  const { rows, d, heads } = sizes;
  const normed = layerNorm(h, block.norm1.weight, block.norm1.bias, PREDICTOR_LAYER_NORM_EPS);
  const qkv = applyLinear(normed, block.qkv, rows); // [N, 3, heads, headDim]
  const q = new Float32Array(rows * d), k = new Float32Array(rows * d), v = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) {
    q.set(qkv.subarray(r * 3 * d, r * 3 * d + d), r * d);
    k.set(qkv.subarray(r * 3 * d + d, r * 3 * d + 2 * d), r * d);
    v.set(qkv.subarray(r * 3 * d + 2 * d, r * 3 * d + 3 * d), r * d);
  }
  const attended = attention(q, k, v, {
    heads,
    kvHeads: heads,
    headDim: d / heads,
    visible: new Array<number>(rows).fill(rows),
  }); // [N, heads, headDim] = [N, d]
  addInPlace(h, applyLinear(attended, block.proj, rows));
  const normed2 = layerNorm(h, block.norm2.weight, block.norm2.bias, PREDICTOR_LAYER_NORM_EPS);
  addInPlace(h, applyLinear(gelu(applyLinear(normed2, block.fc1, rows)), block.fc2, rows));
}

function rowCount(x: Float32Array, cols: number): number {
  const rows = x.length / cols;
  if (!Number.isInteger(rows)) {
    throw new InputError(`Cannot run predictor: input has ${x.length} values, not rows of ${cols}`, "x");
  }
  return rows;
}

/**
 * VisionPredictor logits for the N image rows: x [N, C] → [N, 2] (row-major).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadVisionPredictor, visionPredictorLogits, visionPredictorTensors } from "./predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 2 };
 * const sizes = new Map(visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const p = loadVisionPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.05), { hidden: 4, sparse });
 * const logits = visionPredictorLogits(p, new Float32Array([1, 2, 3, 4]));
 * assert.equal(logits.length, 2);
 * assert.ok(logits.every(Number.isFinite));
 * ```
 */
export function visionPredictorLogits(p: VisionPredictor, x: Float32Array): Float32Array {
  const rows = rowCount(x, p.hidden);
  if (rows === 0) return new Float32Array(0);
  const d = p.dModel;
  const normed = layerNorm(x, p.downNorm.weight, p.downNorm.bias, PREDICTOR_LAYER_NORM_EPS);
  const h = gelu(applyLinear(normed, p.down, rows)); // [N, d]
  for (const block of p.blocks) runBlock(h, block, { rows, d, heads: p.heads });
  // Second half of the channels → its mean over the N tokens, broadcast back to every row.
  const mixed = halfGlobalConcat(h, d);
  const [out0, out1, out2] = p.outputMlp;
  const a = gelu(applyLinear(mixed, out0, rows)); // [N, d/2]
  const b = gelu(applyLinear(a, out1, rows)); // [N, d/4]
  return applyLinear(b, out2, rows); // [N, 2]
}

/**
 * The image tokens' keep scores: log_softmax(VisionPredictor(x))[:, 0]. x [N, C] → [N].
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadVisionPredictor, visionPredictorTensors, visionScores } from "./predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(visionPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const p = loadVisionPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * const scores = visionScores(p, new Float32Array(2 * 4).fill(1));
 * assert.equal(scores.length, 2);
 * assert.ok(scores.every((s) => s <= 0)); // log-probabilities
 * ```
 */
export function visionScores(p: VisionPredictor, x: Float32Array): Float32Array {
  return logSoftmax2Col0(visionPredictorLogits(p, x));
}

/**
 * TextPredictor logits: x [n, C] → [n, 2] (row-major); logit0 > logit1 means "keep".
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadTextPredictor, textPredictorLogits, textPredictorTensors } from "./predictors.ts";
 * const sparse = { dModel: 8, nhead: 2, dimFeedforward: 16, numLayers: 1 };
 * const sizes = new Map(textPredictorTensors(4, sparse).map((t) => [t.name, t.shape.reduce((a, b) => a * b)]));
 * const p = loadTextPredictor((name) => new Float32Array(sizes.get(name)!).fill(0.1), { hidden: 4, sparse });
 * assert.equal(textPredictorLogits(p, new Float32Array(3 * 4)).length, 6); // 3 tokens × 2 logits
 * ```
 */
export function textPredictorLogits(p: TextPredictor, x: Float32Array): Float32Array {
  const rows = rowCount(x, p.hidden);
  if (rows === 0) return new Float32Array(0);
  let h = layerNorm(x, p.norm.weight, p.norm.bias, PREDICTOR_LAYER_NORM_EPS);
  p.mlp.forEach((layer, i) => {
    h = applyLinear(h, layer, rows);
    if (i < p.mlp.length - 1) h = gelu(h);
  });
  return h;
}

/**
 * Builds both predictors from canonical weights (`image_score_predictor.*`,
 * `output_text_score_predictor.*`) when the checkpoint has them and a sparse_config; null otherwise.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadPredictors } from "./predictors.ts";
 * import { parseModelConfig } from "./config.ts";
 * const config = parseModelConfig({ model_type: "llama", hidden_size: 8, intermediate_size: 8,
 *   num_attention_heads: 2, num_hidden_layers: 1 }, "config.json");
 * assert.deepEqual(loadPredictors(config, () => undefined), { vision: null, text: null });
 * ```
 */
export function loadPredictors(
  config: ModelConfig,
  get: (name: string) => Float32Array | undefined,
): { vision: VisionPredictor | null; text: TextPredictor | null } {
  const sparse = config.sparse;
  const hidden = config.text.hiddenSize;
  const has = (prefix: string) => sparse !== null && get(`${prefix}output_mlp.0.weight`) !== undefined;
  return {
    vision: has("image_score_predictor.")
      ? loadVisionPredictor((n) => get(`image_score_predictor.${n}`), { hidden, sparse: sparse! })
      : null,
    text: has("output_text_score_predictor.")
      ? loadTextPredictor((n) => get(`output_text_score_predictor.${n}`), { hidden, sparse: sparse! })
      : null,
  };
}
