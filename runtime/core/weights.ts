/**
 * The model's weights, described once: every canonical tensor name, its shape for a config, and
 * whether it is a matrix (a matmul or embedding operand, stored as a weight tensor, f16 where
 * chosen) or a vector (an f32 array added, scaled or copied as is). Checkpoint loading validates
 * against this description, and both backends bind it to their own storage with
 * {@link bindWeights}, so a weight name is spelled here and nowhere else.
 *
 * Canonical names (C = text hidden, I = intermediate, H·D / KvH·D = query / key-value width,
 * V = vision hidden, P = patches, p = patch size):
 * - `embed` [vocab, C] matrix, `norm` [C], `lm_head` [vocab, C] matrix (absent when tied)
 * - `layers.{i}.attn_norm`/`.mlp_norm` [C]; `.wq` [H·D, C]; `.wk`/`.wv` [KvH·D, C]; `.wo` [C, H·D];
 *   `.w_gate`/`.w_up` [I, C]; `.w_down` [C, I] (matrices)
 * - `vision.patch_embed` [V, 3, p, p] matrix, `vision.class_embed` [V], `vision.pos_embed` [P+1, V],
 *   `vision.pre_norm.{weight,bias}` [V]; per encoder layer `vision.layers.{i}.`: `ln1`/`ln2`
 *   LayerNorms, `q`/`k`/`v`/`o` Linear(V, V), `fc1` Linear(V, I_v), `fc2` Linear(I_v, V)
 * - `projector.0` Linear(V, C), and for mlp2x_gelu `projector.2` Linear(C, C)
 * - the predictors' tensors under {@link PREDICTOR_PREFIXES} (sub-names as the official
 *   implementation names them; runtime/core/predictors.ts describes them)
 * @module
 */
import type { ModelConfig } from "./config.ts";

/** A matrix (matmul/embedding operand) or a vector (used element by element). */
export type WeightRole = "matrix" | "vector";

/** One canonical tensor: its name, its shape for the config, and its role. */
export interface WeightSpec<R extends WeightRole = WeightRole> {
  name: string;
  shape: number[];
  role: R;
}

/** A Linear layer: weight [out, in] and bias [out]. */
export interface LinearSpec {
  weight: WeightSpec<"matrix">;
  bias: WeightSpec<"vector">;
}

/** A LayerNorm's scale and shift [size]. */
export interface NormSpec {
  weight: WeightSpec<"vector">;
  bias: WeightSpec<"vector">;
}

/** One decoder layer: RMSNorm scales and the seven projections. */
export interface DecoderLayerSpec {
  attnNorm: WeightSpec<"vector">;
  mlpNorm: WeightSpec<"vector">;
  wq: WeightSpec<"matrix">;
  wk: WeightSpec<"matrix">;
  wv: WeightSpec<"matrix">;
  wo: WeightSpec<"matrix">;
  wGate: WeightSpec<"matrix">;
  wUp: WeightSpec<"matrix">;
  wDown: WeightSpec<"matrix">;
}

/** One CLIP encoder layer. */
export interface VisionLayerSpec {
  ln1: NormSpec;
  ln2: NormSpec;
  q: LinearSpec;
  k: LinearSpec;
  v: LinearSpec;
  o: LinearSpec;
  fc1: LinearSpec;
  fc2: LinearSpec;
}

/** The CLIP vision tower (the layers that run, up to the selected hidden state). */
export interface VisionTowerSpec {
  patchEmbed: WeightSpec<"matrix">;
  classEmbed: WeightSpec<"vector">;
  posEmbed: WeightSpec<"vector">;
  preNorm: NormSpec;
  layers: VisionLayerSpec[];
}

/** The multimodal projector: Linear, then (mlp2x_gelu) GELU and a second Linear. */
export interface ProjectorSpec {
  first: LinearSpec;
  second: LinearSpec | null;
}

/** Every weight of a model (predictors apart). */
export interface ModelWeightSpecs {
  embed: WeightSpec<"matrix">;
  norm: WeightSpec<"vector">;
  /** null when the embedding is tied to the output head. */
  lmHead: WeightSpec<"matrix"> | null;
  layers: DecoderLayerSpec[];
  vision: VisionTowerSpec | null;
  projector: ProjectorSpec | null;
}

/** The two predictors' module names, as the official implementation names them. */
export const PREDICTOR_MODULES = {
  vision: "image_score_predictor",
  text: "output_text_score_predictor",
} as const;

/** Canonical prefixes of the two predictors' tensors. */
export const PREDICTOR_PREFIXES = {
  vision: `${PREDICTOR_MODULES.vision}.`,
  text: `${PREDICTOR_MODULES.text}.`,
} as const;

/** Prefix the original checkpoints put before every predictor tensor name. */
export const CHECKPOINT_MODEL_PREFIX = "model.";

/** Decoder layer parts → the last component of their canonical name. */
export const DECODER_PARTS: Record<keyof DecoderLayerSpec, string> = {
  attnNorm: "attn_norm",
  mlpNorm: "mlp_norm",
  wq: "wq",
  wk: "wk",
  wv: "wv",
  wo: "wo",
  wGate: "w_gate",
  wUp: "w_up",
  wDown: "w_down",
};

/** Encoder layer parts → the component of their canonical name. */
export const VISION_PARTS: Record<keyof VisionLayerSpec, string> = {
  ln1: "ln1",
  ln2: "ln2",
  q: "q",
  k: "k",
  v: "v",
  o: "o",
  fc1: "fc1",
  fc2: "fc2",
};

const VISION_LAYER_PREFIX = "vision.layers.";

/** Canonical names, built in one place. */
export const WEIGHT_NAMES = {
  embed: "embed",
  norm: "norm",
  lmHead: "lm_head",
  decoder: (layer: number, part: keyof DecoderLayerSpec) => `layers.${layer}.${DECODER_PARTS[part]}`,
  patchEmbed: "vision.patch_embed",
  classEmbed: "vision.class_embed",
  posEmbed: "vision.pos_embed",
  preNorm: "vision.pre_norm",
  visionLayer: (layer: number, part: keyof VisionLayerSpec) =>
    `${VISION_LAYER_PREFIX}${layer}.${VISION_PARTS[part]}`,
  /** Index 0 is the first Linear, 2 the second (as in the official `mm_projector` Sequential). */
  projector: (index: number) => `projector.${index}`,
} as const;

/**
 * The encoder layer a canonical vision weight belongs to, or null for any other weight.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { visionLayerOf } from "./weights.ts";
 * assert.equal(visionLayerOf("vision.layers.3.q.weight"), 3);
 * assert.equal(visionLayerOf("layers.3.wq"), null);
 * ```
 */
export function visionLayerOf(name: string): number | null {
  const match = name.startsWith(VISION_LAYER_PREFIX) &&
    name.slice(VISION_LAYER_PREFIX.length).match(/^(\d+)\./);
  return match ? Number(match[1]) : null;
}

/**
 * True for a tensor of one of the two predictors (canonical name).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isPredictorWeight } from "./weights.ts";
 * assert.equal(isPredictorWeight("image_score_predictor.down_mlp.1.weight"), true);
 * assert.equal(isPredictorWeight("layers.0.wq"), false);
 * ```
 */
export function isPredictorWeight(name: string): boolean {
  return Object.values(PREDICTOR_PREFIXES).some((prefix) => name.startsWith(prefix));
}

const matrix = (name: string, shape: number[]): WeightSpec<"matrix"> => ({ name, shape, role: "matrix" });
const vector = (name: string, shape: number[]): WeightSpec<"vector"> => ({ name, shape, role: "vector" });
const linear = (name: string, outSize: number, inSize: number): LinearSpec => ({
  weight: matrix(`${name}.weight`, [outSize, inSize]),
  bias: vector(`${name}.bias`, [outSize]),
});
const norm = (name: string, size: number): NormSpec => ({
  weight: vector(`${name}.weight`, [size]),
  bias: vector(`${name}.bias`, [size]),
});

function decoderLayer(config: ModelConfig, i: number): DecoderLayerSpec {
  const t = config.text, c = t.hiddenSize, inter = t.intermediateSize;
  const q = t.numHeads * t.headDim, kv = t.numKvHeads * t.headDim;
  const name = (part: keyof DecoderLayerSpec) => WEIGHT_NAMES.decoder(i, part);
  return {
    attnNorm: vector(name("attnNorm"), [c]),
    mlpNorm: vector(name("mlpNorm"), [c]),
    wq: matrix(name("wq"), [q, c]),
    wk: matrix(name("wk"), [kv, c]),
    wv: matrix(name("wv"), [kv, c]),
    wo: matrix(name("wo"), [c, q]),
    wGate: matrix(name("wGate"), [inter, c]),
    wUp: matrix(name("wUp"), [inter, c]),
    wDown: matrix(name("wDown"), [c, inter]),
  };
}

function visionTower(config: ModelConfig): VisionTowerSpec | null {
  const v = config.vision;
  if (!v) return null;
  const grid = v.imageSize / v.patchSize, size = v.hiddenSize;
  return {
    patchEmbed: matrix(WEIGHT_NAMES.patchEmbed, [size, v.numChannels, v.patchSize, v.patchSize]),
    classEmbed: vector(WEIGHT_NAMES.classEmbed, [size]),
    posEmbed: vector(WEIGHT_NAMES.posEmbed, [grid * grid + 1, size]),
    preNorm: norm(WEIGHT_NAMES.preNorm, size),
    layers: Array.from({ length: v.layersToRun }, (_, i) => {
      const name = (part: keyof VisionLayerSpec) => WEIGHT_NAMES.visionLayer(i, part);
      return {
        ln1: norm(name("ln1"), size),
        ln2: norm(name("ln2"), size),
        q: linear(name("q"), size, size),
        k: linear(name("k"), size, size),
        v: linear(name("v"), size, size),
        o: linear(name("o"), size, size),
        fc1: linear(name("fc1"), v.intermediateSize, size),
        fc2: linear(name("fc2"), size, v.intermediateSize),
      };
    }),
  };
}

/**
 * The weights a config implies (predictors apart), as a typed tree of {@link WeightSpec}s.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseModelConfig } from "./config.ts";
 * import { describeWeights } from "./weights.ts";
 * const config = parseModelConfig({ model_type: "llama", hidden_size: 8, intermediate_size: 16,
 *   num_attention_heads: 2, num_hidden_layers: 1, vocab_size: 10 }, "config.json");
 * const specs = describeWeights(config);
 * assert.deepEqual(specs.layers[0].wGate, { name: "layers.0.w_gate", shape: [16, 8], role: "matrix" });
 * assert.equal(specs.vision, null);
 * ```
 */
export function describeWeights(config: ModelConfig): ModelWeightSpecs {
  const t = config.text, pr = config.projector;
  return {
    embed: matrix(WEIGHT_NAMES.embed, [t.vocabSize, t.hiddenSize]),
    norm: vector(WEIGHT_NAMES.norm, [t.hiddenSize]),
    lmHead: t.tieWordEmbeddings ? null : matrix(WEIGHT_NAMES.lmHead, [t.vocabSize, t.hiddenSize]),
    layers: Array.from({ length: t.numLayers }, (_, i) => decoderLayer(config, i)),
    vision: visionTower(config),
    projector: pr && {
      first: linear(WEIGHT_NAMES.projector(0), pr.outSize, pr.inSize),
      second: pr.type === "linear" ? null : linear(WEIGHT_NAMES.projector(2), pr.outSize, pr.outSize),
    },
  };
}

/**
 * Every {@link WeightSpec} of a description, by canonical name (in the description's order).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseModelConfig } from "./config.ts";
 * import { describeWeights, weightList } from "./weights.ts";
 * const config = parseModelConfig({ model_type: "llama", hidden_size: 8, intermediate_size: 16,
 *   num_attention_heads: 2, num_hidden_layers: 1, vocab_size: 10 }, "config.json");
 * const list = weightList(describeWeights(config));
 * assert.deepEqual([...list.keys()].slice(0, 4), ["embed", "norm", "lm_head", "layers.0.attn_norm"]);
 * ```
 */
export function weightList(specs: ModelWeightSpecs): Map<string, WeightSpec> {
  const list = new Map<string, WeightSpec>();
  const visit = (node: unknown): void => {
    if (node === null || typeof node !== "object") return;
    if (isSpec(node)) list.set(node.name, node);
    else for (const child of Object.values(node)) visit(child);
  };
  visit(specs);
  return list;
}

function isSpec(node: object): node is WeightSpec {
  return "role" in node && "name" in node && "shape" in node;
}

/** A description with every matrix replaced by an M and every vector by a V. */
export type BoundWeights<T, M, V> = T extends WeightSpec<"matrix"> ? M
  : T extends WeightSpec<"vector"> ? V
  : T extends null ? null
  : T extends (infer E)[] ? BoundWeights<E, M, V>[]
  : { [K in keyof T]: BoundWeights<T[K], M, V> };

/**
 * Binds a description to a backend's storage: every matrix spec becomes `load.matrix(spec)`, every
 * vector spec `load.vector(spec)`, keeping the tree's shape and types.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseModelConfig } from "./config.ts";
 * import { bindWeights, describeWeights } from "./weights.ts";
 * const config = parseModelConfig({ model_type: "llama", hidden_size: 8, intermediate_size: 16,
 *   num_attention_heads: 2, num_hidden_layers: 1, vocab_size: 10 }, "config.json");
 * const bound = bindWeights(describeWeights(config), { matrix: (s) => `M ${s.name}`, vector: (s) => `V ${s.name}` });
 * assert.equal(bound.layers[0].wq, "M layers.0.wq");
 * assert.equal(bound.layers[0].attnNorm, "V layers.0.attn_norm");
 * ```
 */
export function bindWeights<T, M, V>(
  specs: T,
  load: { matrix: (spec: WeightSpec<"matrix">) => M; vector: (spec: WeightSpec<"vector">) => V },
): BoundWeights<T, M, V> {
  const bind = (node: unknown): unknown => {
    if (node === null || typeof node !== "object") return node;
    if (Array.isArray(node)) return node.map(bind);
    if (isSpec(node)) {
      return node.role === "matrix"
        ? load.matrix(node as WeightSpec<"matrix">)
        : load.vector(node as WeightSpec<"vector">);
    }
    return Object.fromEntries(Object.entries(node).map(([key, child]) => [key, bind(child)]));
  };
  return bind(specs) as BoundWeights<T, M, V>;
}
