/**
 * Which GGML type each weight tensor gets under a weight type, and the bytes of a model's weights
 * under it: the rule the GGUF converter writes by and the cost model counts with. Pure TypeScript,
 * GPU-free. Block sizes come from ggml_quants.ts.
 *
 * Weight types ({@link StoredWeightType}): one GGML type for every text-model matrix (`f32`, `f16`,
 * `bf16`, `q8_0`, `q4_0`, `q4_k`, `q6_k`; the quantized ones as llama.cpp's `--pure`), or `q4_k_m`,
 * llama.cpp's mix: Q4_K, with Q6_K for `lm_head` and for `wv` / `w_down` of the layers llama.cpp
 * gives more bits (the first and last eighth, and every third between). A matrix whose rows are not
 * a whole number of blocks falls back to Q8_0, then F16. Vectors (norms, biases) are F32.
 *
 * The vision tower and projector (mmproj) and Dynamic-LLaVA's predictors count at F16 for
 * matrices (F32 or BF16 when the whole model is in that type), F32 for vectors, as llama.cpp ships
 * an mmproj and as the GPU holds the predictors. A tensor of two or more dimensions is a matrix
 * (the position embedding too), as the converter decides.
 * @module
 */
import type { ModelConfig } from "./config.ts";
import { InputError } from "./errors.ts";
import { ggmlBlock, ggmlBytes, type GgmlType } from "./ggml_quants.ts";
import { textPredictorTensors, visionPredictorTensors } from "./predictors.ts";
import { describeWeights, weightList } from "./weights.ts";

/** A weight type the byte count knows: one GGML type for every matrix, or the `q4_k_m` mix. */
export type StoredWeightType = "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "q4_k" | "q6_k" | "q4_k_m";

/** A conversion's weight type (what `deno task convert --type` writes). */
export type WeightType = Extract<StoredWeightType, "f16" | "q8_0" | "q4_0" | "q4_k_m">;

/** Every {@link StoredWeightType}, widest first. */
export const STORED_WEIGHT_TYPES: readonly StoredWeightType[] = [
  "f32",
  "f16",
  "bf16",
  "q8_0",
  "q6_k",
  "q4_k_m",
  "q4_k",
  "q4_0",
];

/** The GGML type a weight type asks for each text matrix (before the block-size fallback). */
const TEXT_TYPE: Record<StoredWeightType, GgmlType> = {
  f32: "F32",
  f16: "F16",
  bf16: "BF16",
  q8_0: "Q8_0",
  q4_0: "Q4_0",
  q4_k: "Q4_K",
  q6_k: "Q6_K",
  q4_k_m: "Q4_K",
};

/**
 * Reads a weight type by name; an unknown name is an InputError naming `where`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseWeightType } from "./weight_bytes.ts";
 * assert.equal(parseWeightType("q4_k_m", "--weight-types"), "q4_k_m");
 * assert.throws(() => parseWeightType("q3_k", "--weight-types"), /q3_k/);
 * ```
 */
export function parseWeightType(name: unknown, where: string): StoredWeightType {
  if (typeof name === "string" && Object.hasOwn(TEXT_TYPE, name)) return name as StoredWeightType;
  throw new InputError(
    `Cannot size the weights: weight type ${JSON.stringify(name)} is not one of ${
      STORED_WEIGHT_TYPES.join(", ")
    }`,
    where,
  );
}

/**
 * The GGML type of a text-model matrix (canonical name, see runtime/io/checkpoint.ts) under `type`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { textMatrixType } from "./weight_bytes.ts";
 * assert.equal(textMatrixType("layers.0.w_down", { type: "q4_k_m", rowLength: 11008, numLayers: 32 }), "Q6_K");
 * assert.equal(textMatrixType("layers.5.w_up", { type: "q4_k_m", rowLength: 4096, numLayers: 32 }), "Q4_K");
 * assert.equal(textMatrixType("layers.5.w_up", { type: "q4_k_m", rowLength: 64, numLayers: 4 }), "Q8_0");
 * assert.equal(textMatrixType("layers.5.w_up", { type: "bf16", rowLength: 64, numLayers: 4 }), "BF16");
 * ```
 */
export function textMatrixType(
  canonical: string,
  options: { type: StoredWeightType; rowLength: number; numLayers: number },
): GgmlType {
  const { type, rowLength, numLayers } = options;
  let wanted: GgmlType = TEXT_TYPE[type];
  if (type === "q4_k_m") {
    const layer = Number(canonical.match(/^layers\.(\d+)\.(wv|w_down)$/)?.[1] ?? -1);
    const eighth = Math.floor(numLayers / 8);
    const moreBits = layer >= 0 &&
      (layer < eighth || layer >= Math.floor((7 * numLayers) / 8) || (layer - eighth) % 3 === 2);
    if (canonical === "lm_head" || moreBits) wanted = "Q6_K";
  }
  for (const candidate of [wanted, "Q8_0", "F16"] as GgmlType[]) {
    if (rowLength % ggmlBlock(candidate).elements === 0) return candidate;
  }
  return "F16";
}

/**
 * The GGML type of the mmproj's and the predictors' matrices under `type`: F32 or BF16 when the
 * whole model is in that type, else F16.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { sideMatrixType } from "./weight_bytes.ts";
 * assert.equal(sideMatrixType("q4_k_m"), "F16");
 * assert.equal(sideMatrixType("f32"), "F32");
 * ```
 */
export function sideMatrixType(type: StoredWeightType): GgmlType {
  return type === "f32" ? "F32" : type === "bf16" ? "BF16" : "F16";
}

/** Bytes of a model's weights under a weight type. */
export interface WeightBytes {
  /** Decoder, embedding, final norm and lm_head. */
  text: number;
  /** Vision tower layers that run, and the projector (mmproj). */
  mmproj: number;
  /** Dynamic-LLaVA's predictors (0 without a `sparse_config`, or for a predictor it turns off). */
  predictors: number;
  /** All of them. */
  total: number;
}

const elementsOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * Bytes of `config`'s weights stored as `type` (see the module notes for the type of each tensor).
 * `type` is checked: an unknown name is an InputError.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseModelConfig } from "./config.ts";
 * import { weightBytes } from "./weight_bytes.ts";
 * const config = parseModelConfig({
 *   model_type: "llama", hidden_size: 4096, intermediate_size: 11008, num_attention_heads: 32,
 *   num_hidden_layers: 32, vocab_size: 32000,
 * }, "config.json");
 * assert.ok(Math.abs(weightBytes(config, "f16").total / 2 ** 30 - 12.55) < 0.01); // LLaMA-2-7B at F16
 * assert.ok(weightBytes(config, "q4_k_m").total < weightBytes(config, "q8_0").total / 1.6);
 * assert.equal(weightBytes(config, "f32").text, 2 * weightBytes(config, "f16").text - 4 * 4096 * 65); // norms stay F32
 * ```
 */
export function weightBytes(config: ModelConfig, type: StoredWeightType): WeightBytes {
  parseWeightType(type, "type");
  const numLayers = config.text.numLayers;
  const side = sideMatrixType(type);
  const sideBytes = (shape: readonly number[]) =>
    shape.length >= 2 ? ggmlBytes(side, elementsOf(shape)) : 4 * elementsOf(shape);
  let text = 0, mmproj = 0;
  for (const spec of weightList(describeWeights(config)).values()) {
    if (spec.name.startsWith("vision.") || spec.name.startsWith("projector.")) {
      mmproj += sideBytes(spec.shape);
    } else if (spec.shape.length >= 2) {
      const [rows, ...row] = spec.shape;
      const rowLength = elementsOf(row);
      text += rows * ggmlBytes(textMatrixType(spec.name, { type, rowLength, numLayers }), rowLength);
    } else {
      text += 4 * elementsOf(spec.shape);
    }
  }
  let predictors = 0;
  const sparse = config.sparse;
  if (sparse) {
    const hidden = config.text.hiddenSize;
    const specs = [
      ...(sparse.useVisionPredictor ? visionPredictorTensors(hidden, sparse) : []),
      ...(sparse.useOutputTextPredictor ? textPredictorTensors(hidden, sparse) : []),
    ];
    for (const spec of specs) predictors += sideBytes(spec.shape);
  }
  return { text, mmproj, predictors, total: text + mmproj + predictors };
}
