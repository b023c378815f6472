/**
 * Which GGML type each weight matrix gets under a conversion type (`f16`, `q8_0`, `q4_0`,
 * `q4_k_m`), and the bytes of a model's weights under it: the rule the GGUF converter writes by and
 * the cost model counts with. Pure TypeScript, GPU-free.
 *
 * Text-model matrices: `f16` F16; `q8_0`, `q4_0` that type for every matrix (llama.cpp's `--pure`);
 * `q4_k_m` Q4_K, with Q6_K for `lm_head` and for `wv` / `w_down` of the layers llama.cpp gives more
 * bits (the first and last eighth, and every third between). A matrix whose rows are not a whole
 * number of blocks falls back to Q8_0, then F16. Vectors are F32. The vision tower and projector
 * (mmproj) count at F16 for matrices, F32 for vectors, as llama.cpp ships them.
 * @module
 */
import type { ModelConfig } from "./config.ts";
import { ggmlBlock, ggmlBytes, type GgmlType } from "./ggml_quants.ts";

/** A conversion's weight type. */
export type WeightType = "f16" | "q8_0" | "q4_0" | "q4_k_m";

/**
 * The GGML type of a text-model matrix (canonical name, see runtime/io/checkpoint.ts) under `type`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { textMatrixType } from "./weight_bytes.ts";
 * assert.equal(textMatrixType("layers.0.w_down", { type: "q4_k_m", rowLength: 11008, numLayers: 32 }), "Q6_K");
 * assert.equal(textMatrixType("layers.5.w_up", { type: "q4_k_m", rowLength: 4096, numLayers: 32 }), "Q4_K");
 * assert.equal(textMatrixType("layers.5.w_up", { type: "q4_k_m", rowLength: 64, numLayers: 4 }), "Q8_0");
 * ```
 */
export function textMatrixType(
  canonical: string,
  options: { type: WeightType; rowLength: number; numLayers: number },
): GgmlType {
  const { type, rowLength, numLayers } = options;
  let wanted: GgmlType = ({ f16: "F16", q8_0: "Q8_0", q4_0: "Q4_0", q4_k_m: "Q4_K" } as const)[type];
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

/** Bytes of a model's weights under a weight type. */
export interface WeightBytes {
  /** Decoder, embedding, final norm and lm_head. */
  text: number;
  /** Vision tower layers that run, and the projector (mmproj). */
  mmproj: number;
  total: number;
}

/**
 * Bytes of `config`'s weights when converted to `type` (predictors not counted: a few MB).
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
 * ```
 */
export function weightBytes(config: ModelConfig, type: WeightType): WeightBytes {
  const t = config.text;
  const q = t.numHeads * t.headDim, kv = t.numKvHeads * t.headDim;
  let text = 0;
  const matrix = (name: string, rows: number, cols: number) => {
    text += rows * ggmlBytes(textMatrixType(name, { type, rowLength: cols, numLayers: t.numLayers }), cols);
  };
  matrix("embed", t.vocabSize, t.hiddenSize);
  if (!t.tieWordEmbeddings) matrix("lm_head", t.vocabSize, t.hiddenSize);
  text += 4 * t.hiddenSize * (1 + 2 * t.numLayers); // norms, F32
  for (let i = 0; i < t.numLayers; i++) {
    const p = `layers.${i}.`;
    matrix(p + "wq", q, t.hiddenSize);
    matrix(p + "wk", kv, t.hiddenSize);
    matrix(p + "wv", kv, t.hiddenSize);
    matrix(p + "wo", t.hiddenSize, q);
    matrix(p + "w_gate", t.intermediateSize, t.hiddenSize);
    matrix(p + "w_up", t.intermediateSize, t.hiddenSize);
    matrix(p + "w_down", t.hiddenSize, t.intermediateSize);
  }
  let mmproj = 0;
  const v = config.vision, pr = config.projector;
  if (v) {
    const h = v.hiddenSize, grid = v.imageSize / v.patchSize;
    mmproj += 2 * h * v.numChannels * v.patchSize * v.patchSize + 4 * h + 2 * (grid * grid + 1) * h + 8 * h;
    const layer = 2 * (4 * h * h + 2 * h * v.intermediateSize) + 4 * (4 * h + 4 * h + v.intermediateSize + h);
    mmproj += v.layersToRun * layer;
  }
  if (pr) {
    mmproj += 2 * pr.outSize * pr.inSize + 4 * pr.outSize;
    if (pr.type === "mlp2x_gelu") mmproj += 2 * pr.outSize * pr.outSize + 4 * pr.outSize;
  }
  return { text, mmproj, total: text + mmproj };
}
