/**
 * How LLaVA checkpoints live in GGUF files: llama.cpp's conventions for the LLaMA text model and
 * the `mmproj` CLIP file, and dynllava's convention for the Dynamic-LLaVA predictors. Both the
 * writer (gguf_convert.ts) and the reader (gguf_checkpoint.ts) use these tables, so the two
 * cannot drift apart.
 *
 * Text model (`general.architecture = "llama"`), tensor dims innermost first:
 * - `token_embd.weight` [C, vocab], `output_norm.weight` [C], `output.weight` [C, vocab] (absent
 *   when tied), `blk.{i}.attn_norm|ffn_norm.weight` [C], `blk.{i}.attn_q|attn_k|attn_v|attn_output`,
 *   `blk.{i}.ffn_gate|ffn_up|ffn_down` `.weight`.
 * - `attn_q` and `attn_k` rows are permuted per head as llama.cpp's converter does (its RoPE
 *   rotates adjacent pairs; ours rotates halves): row h·D + 2i + j of the file is row
 *   h·D + j·D/2 + i of the checkpoint (i < D/2, j ∈ {0, 1}); {@link unpermuteRows} undoes it.
 * - Keys `llama.context_length`, `embedding_length`, `block_count`, `feed_forward_length`,
 *   `rope.dimension_count`, `attention.head_count`, `attention.head_count_kv`,
 *   `attention.layer_norm_rms_epsilon`, `rope.freq_base`, `vocab_size`; the vocabulary in
 *   `tokenizer.ggml.*` (model "llama": tokens, scores, token_type, bos/eos/unknown ids).
 *
 * Vision tower and projector (`mmproj`, `general.architecture = "clip"`, as llama.cpp's LLaVA image
 * encoder converter writes it): `clip.has_llava_projector`, `clip.projector_type = "mlp"`,
 * `clip.vision.{image_size, patch_size, embedding_length, feed_forward_length, projection_dim,
 * attention.head_count, attention.layer_norm_epsilon, block_count, feature_layer, image_mean,
 * image_std}`, `clip.use_gelu`; tensors `v.class_embd`, `v.patch_embd.weight`, `v.position_embd.weight`,
 * `v.pre_ln.*`, `v.blk.{i}.{attn_q, attn_k, attn_v, attn_out, ln1, ln2}.*`, `v.blk.{i}.ffn_down.*` (CLIP's
 * fc1: the converter's name) and `v.blk.{i}.ffn_up.*` (fc2), `mm.0.*`, `mm.2.*`. Only the encoder layers
 * up to the selected hidden state are stored (`block_count`; LLaVA-1.5: all but the last).
 *
 * Dynamic-LLaVA predictors (dynllava's convention; llama.cpp refuses unknown tensors in a text
 * model, so they get their own file): `general.architecture = "dynllava"`, keys `dynllava.sparse_layer`
 * (u32), `dynllava.vision_keep_rate` and `dynllava.output_text_keep_rate` (f64),
 * `dynllava.use_vision_predictor` and `dynllava.use_output_text_predictor` (bool), `dynllava.d_model`,
 * `dynllava.nhead`, `dynllava.dim_feedforward`, `dynllava.num_layers` (u32) — `sparse_config`'s fields —
 * and the tensors under their official names without the `model.` prefix
 * (`image_score_predictor.*`, `output_text_score_predictor.*`) in the checkpoint's own element type.
 * @module
 */
import type { ModelConfig } from "../core/config.ts";
import { isPredictorWeight } from "../core/weights.ts";

/** `general.architecture` of each of the three files. */
export const GGUF_ARCHITECTURES = { text: "llama", mmproj: "clip", predictors: "dynllava" } as const;

/**
 * The GGUF name of a canonical tensor name (see checkpoint.ts), or undefined when the tensor is not
 * stored in GGUF (none today).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ggufTensorName } from "./gguf_llava.ts";
 * assert.equal(ggufTensorName("layers.3.w_down"), "blk.3.ffn_down.weight");
 * assert.equal(ggufTensorName("vision.layers.0.fc1.bias"), "v.blk.0.ffn_down.bias");
 * assert.equal(ggufTensorName("image_score_predictor.down_mlp.1.weight"), "image_score_predictor.down_mlp.1.weight");
 * ```
 */
export function ggufTensorName(canonical: string): string | undefined {
  const fixed: Record<string, string> = {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    lm_head: "output.weight",
    "vision.patch_embed": "v.patch_embd.weight",
    "vision.class_embed": "v.class_embd",
    "vision.pos_embed": "v.position_embd.weight",
    "vision.pre_norm.weight": "v.pre_ln.weight",
    "vision.pre_norm.bias": "v.pre_ln.bias",
  };
  if (fixed[canonical]) return fixed[canonical];
  let m: RegExpMatchArray | null;
  if ((m = canonical.match(/^layers\.(\d+)\.(\w+)$/))) {
    const part: Record<string, string> = {
      attn_norm: "attn_norm",
      mlp_norm: "ffn_norm",
      wq: "attn_q",
      wk: "attn_k",
      wv: "attn_v",
      wo: "attn_output",
      w_gate: "ffn_gate",
      w_up: "ffn_up",
      w_down: "ffn_down",
    };
    return part[m[2]] ? `blk.${m[1]}.${part[m[2]]}.weight` : undefined;
  }
  if ((m = canonical.match(/^vision\.layers\.(\d+)\.(\w+)\.(weight|bias)$/))) {
    const part: Record<string, string> = {
      ln1: "ln1",
      ln2: "ln2",
      q: "attn_q",
      k: "attn_k",
      v: "attn_v",
      o: "attn_out",
      fc1: "ffn_down",
      fc2: "ffn_up",
    };
    return part[m[2]] ? `v.blk.${m[1]}.${part[m[2]]}.${m[3]}` : undefined;
  }
  if ((m = canonical.match(/^projector\.(\d)\.(weight|bias)$/))) return `mm.${m[1]}.${m[2]}`;
  if (isPredictorWeight(canonical)) return canonical;
  return undefined;
}

/** Which file of the three a canonical tensor goes to. */
export function ggufFileOf(canonical: string): keyof typeof GGUF_ARCHITECTURES {
  if (isPredictorWeight(canonical)) return "predictors";
  if (/^(vision|projector)\./.test(canonical)) return "mmproj";
  return "text";
}

/** Heads whose rows are permuted in the text GGUF for a canonical tensor (wq, wk), else 0. */
export function permutedHeads(canonical: string, config: ModelConfig): number {
  if (/^layers\.\d+\.wq$/.test(canonical)) return config.text.numHeads;
  if (/^layers\.\d+\.wk$/.test(canonical)) return config.text.numKvHeads;
  return 0;
}

/**
 * Reorders the rows of W [rows, rowBytes bytes each] from checkpoint order to llama.cpp's
 * (`inverse: false`) or back (`inverse: true`), `heads` heads of rows/heads rows each. Works on any
 * row encoding (f32 values or quantized blocks): rows move whole.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { permuteRows } from "./gguf_llava.ts";
 * const rows = new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]); // 2 heads of 4 one-byte rows
 * assert.deepEqual([...permuteRows(rows, { heads: 2, rowBytes: 1 })], [0, 2, 1, 3, 4, 6, 5, 7]);
 * assert.deepEqual([...permuteRows(permuteRows(rows, { heads: 2, rowBytes: 1 }), { heads: 2, rowBytes: 1, inverse: true })], [...rows]);
 * ```
 */
export function permuteRows(
  data: Uint8Array,
  options: { heads: number; rowBytes: number; inverse?: boolean },
): Uint8Array {
  const { heads, rowBytes } = options;
  const rows = data.length / rowBytes;
  const headDim = rows / heads, half = headDim / 2;
  if (!Number.isInteger(rows) || !Number.isInteger(half)) {
    throw new RangeError(`Cannot permute ${rows} rows into ${heads} heads of an even size`);
  }
  const out = new Uint8Array(data.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const llamaCpp = h * headDim + 2 * i + j, checkpoint = h * headDim + j * half + i;
        const [from, to] = options.inverse ? [llamaCpp, checkpoint] : [checkpoint, llamaCpp];
        out.set(data.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes);
      }
    }
  }
  return out;
}

/**
 * Undoes llama.cpp's q/k row permutation on f32 values W [rows, cols].
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { unpermuteRows } from "./gguf_llava.ts";
 * const stored = new Float32Array([0, 2, 1, 3]); // 1 head, 4 rows of 1 column, as llama.cpp stores them
 * assert.deepEqual([...unpermuteRows(stored, { heads: 1, cols: 1 })], [0, 1, 2, 3]);
 * ```
 */
export function unpermuteRows(values: Float32Array, options: { heads: number; cols: number }): Float32Array {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = permuteRows(bytes, { heads: options.heads, rowBytes: options.cols * 4, inverse: true });
  return new Float32Array(out.buffer);
}
