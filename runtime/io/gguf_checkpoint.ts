/**
 * Opens GGUF checkpoints as a {@link Checkpoint}: a LLaMA text model, optionally with an `mmproj`
 * file (CLIP tower and projector, llama.cpp's LLaVA layout) and a Dynamic-LLaVA predictor file
 * (conventions in gguf_llava.ts). The config is rebuilt from the metadata and checked by the same
 * parser and the same shape table as safetensors checkpoints; the vocabulary comes from
 * `tokenizer.ggml.*`. Tensors stay on disk until read; reading dequantizes and un-permutes q/k rows.
 *
 * Which files: a path to a `.gguf` file is the text model, and `mmproj-NAME` / `predictors-NAME`
 * beside it (or else the folder's only file of that architecture) complete it. A folder must hold
 * exactly one text model (by `general.architecture`), at most one of each other kind.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { CLIP_MEAN, CLIP_STD, type ModelConfig, parseModelConfig } from "../core/config.ts";
import { CheckpointError } from "../core/errors.ts";
import { dequantize } from "../core/ggml_quants.ts";
import { isPredictorWeight } from "../core/weights.ts";
import {
  type Checkpoint,
  type CheckpointTensor,
  type CheckpointVocab,
  expectedShapes,
} from "./checkpoint.ts";
import { type GgufFile, ggufValue, openGguf, readGgufTensor } from "./gguf.ts";
import {
  GGUF_ARCHITECTURES,
  ggufTensorName,
  permutedHeads,
  permuteRows,
  unpermuteRows,
} from "./gguf_llava.ts";

type Kind = keyof typeof GGUF_ARCHITECTURES;

/**
 * Whether `path` is a GGUF checkpoint: a `.gguf` file, or a folder with `.gguf` files and no
 * config.json.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isGgufCheckpoint } from "./gguf_checkpoint.ts";
 * assert.equal(await isGgufCheckpoint("tests/fixtures/out/llama-f32"), false);
 * ```
 */
export async function isGgufCheckpoint(path: string): Promise<boolean> {
  try {
    const stat = await Deno.stat(path);
    if (stat.isFile) return path.endsWith(".gguf");
    const names = [...Deno.readDirSync(path)].map((e) => e.name);
    return !names.includes("config.json") && names.some((n) => n.endsWith(".gguf"));
  } catch {
    return false;
  }
}

/**
 * Opens a GGUF checkpoint (a text-model file or a folder; see the module doc), validating every
 * file's header, the config and every tensor's name and shape.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openCheckpoint } from "./checkpoint.ts";
 * import { convertToGguf, ggufVocabFromTokenizerJson } from "./gguf_convert.ts";
 * import { openGgufCheckpoint } from "./gguf_checkpoint.ts";
 * const dir = await Deno.makeTempDir();
 * const text = await Deno.readTextFile("tests/fixtures/out/llama-f32/tokenizer.json");
 * await convertToGguf(await openCheckpoint("tests/fixtures/out/llama-f32"), `${dir}/m.gguf`, {
 *   type: "f16", vocab: ggufVocabFromTokenizerJson(text, "tokenizer.json"),
 * });
 * const checkpoint = await openGgufCheckpoint(dir);
 * assert.equal(checkpoint.config.layout, "llama");
 * assert.equal(checkpoint.vocab?.tokens.length, 32000);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openGgufCheckpoint(path: string): Promise<Checkpoint> {
  const files = await findFiles(path);
  const config = ggufConfig(files);
  const tensors = new Map<string, CheckpointTensor>();
  const expected = expectedShapes(config);
  for (const kind of ["text", "mmproj", "predictors"] as Kind[]) {
    const file = files[kind];
    if (file) addTensors(file, { config, tensors });
  }
  for (const [name, shape] of expected) {
    const t = tensors.get(name);
    if (!t) {
      throw new CheckpointError(
        `Cannot load checkpoint: tensor ${JSON.stringify(ggufTensorName(name))} is missing`,
        files.text!.path,
      );
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `Cannot load checkpoint: tensor ${
          JSON.stringify(t.sourceName)
        } has dims [${t.shape.toReversed()}], expected [${shape.toReversed()}]`,
        t.path,
      );
    }
  }
  return {
    dir: files.text!.path,
    config,
    tensors,
    tokenizerPath: files.text!.path,
    vocab: ggufVocab(files.text!),
  };
}

/** Finds and opens the text, mmproj and predictor files. */
async function findFiles(path: string): Promise<Partial<Record<Kind, GgufFile>>> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch (cause) {
    throw new CheckpointError("Cannot load checkpoint: file or folder not found", path, { cause });
  }
  const dir = stat.isFile ? dirname(path) : path;
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".gguf")).sort();
  const byKind: Record<Kind, GgufFile[]> = { text: [], mmproj: [], predictors: [] };
  for (const name of names) {
    const file = await openGguf(join(dir, name));
    const arch = ggufValue<string>(file, "general.architecture", ["string"], "");
    const kind = (Object.keys(GGUF_ARCHITECTURES) as Kind[]).find((k) => GGUF_ARCHITECTURES[k] === arch);
    if (kind) byKind[kind].push(file);
  }
  const chosen: Partial<Record<Kind, GgufFile>> = {};
  if (stat.isFile) {
    chosen.text = byKind.text.find((f) => f.path === join(dir, basename(path)));
    if (!chosen.text) {
      throw new CheckpointError("Cannot load checkpoint: the file is not a LLaMA text model GGUF", path);
    }
  }
  for (const kind of Object.keys(byKind) as Kind[]) {
    if (chosen[kind]) continue;
    const prefix = kind === "text" ? "" : `${kind}-`;
    const named = stat.isFile
      ? byKind[kind].find((f) => basename(f.path) === prefix + basename(path))
      : undefined;
    if (named) chosen[kind] = named;
    else if (byKind[kind].length === 1) chosen[kind] = byKind[kind][0];
    else if (byKind[kind].length > 1) {
      throw new CheckpointError(
        `Cannot load checkpoint: ${byKind[kind].length} ${kind} GGUF files (${
          byKind[kind].map((f) => basename(f.path)).join(", ")
        }); pass the text model's file`,
        dir,
      );
    }
  }
  if (!chosen.text) throw new CheckpointError("Cannot load checkpoint: no LLaMA text model GGUF", dir);
  return chosen;
}

/** The model config, rebuilt as config.json keys and parsed by the shared parser. */
function ggufConfig(files: Partial<Record<Kind, GgufFile>>): ModelConfig {
  const text = files.text!;
  const n = (file: GgufFile, key: string, fallback?: number) =>
    shortestDecimal(ggufValue<number>(file, key, ["u32", "i32", "u64", "f32", "f64"], fallback));
  const vocab = ggufValue<string[]>(text, "tokenizer.ggml.tokens", ["array"], []);
  const raw: Record<string, unknown> = {
    model_type: "llama",
    hidden_size: n(text, "llama.embedding_length"),
    intermediate_size: n(text, "llama.feed_forward_length"),
    num_hidden_layers: n(text, "llama.block_count"),
    num_attention_heads: n(text, "llama.attention.head_count"),
    num_key_value_heads: n(text, "llama.attention.head_count_kv", n(text, "llama.attention.head_count")),
    vocab_size: n(text, "llama.vocab_size", vocab.length || undefined),
    rms_norm_eps: n(text, "llama.attention.layer_norm_rms_epsilon"),
    rope_theta: n(text, "llama.rope.freq_base", 10000),
    max_position_embeddings: n(text, "llama.context_length"),
    bos_token_id: n(text, "tokenizer.ggml.bos_token_id", 1),
    eos_token_id: n(text, "tokenizer.ggml.eos_token_id", 2),
    tie_word_embeddings: !text.tensors.has("output.weight"),
  };
  const dims = n(text, "llama.rope.dimension_count", 0);
  if (dims && dims !== Number(raw.hidden_size) / Number(raw.num_attention_heads)) raw.head_dim = dims;
  const p = files.predictors;
  if (p) {
    const arch = GGUF_ARCHITECTURES.predictors;
    const b = (key: string) => ggufValue<boolean>(p, `${arch}.${key}`, ["bool"]);
    raw.sparse_config = {
      sparse_layer: n(p, `${arch}.sparse_layer`),
      vision_keep_rate: n(p, `${arch}.vision_keep_rate`),
      output_text_keep_rate: n(p, `${arch}.output_text_keep_rate`),
      use_vision_predictor: b("use_vision_predictor"),
      use_output_text_predictor: b("use_output_text_predictor"),
      d_model: n(p, `${arch}.d_model`),
      nhead: n(p, `${arch}.nhead`),
      dim_feedforward: n(p, `${arch}.dim_feedforward`),
      num_layers: n(p, `${arch}.num_layers`),
    };
  }
  const m = files.mmproj;
  if (!m) return parseModelConfig(raw, text.path);
  const blocks = n(m, "clip.vision.block_count");
  const featureLayer = ggufValue<number[]>(m, "clip.vision.feature_layer", ["array"], [blocks]);
  const projector = ggufValue<string>(m, "clip.projector_type", ["string"], "mlp");
  Object.assign(raw, {
    model_type: "llava_llama",
    mm_vision_tower: m.path,
    mm_projector_type: projector === "mlp" ? "mlp2x_gelu" : projector,
    mm_vision_select_layer: Math.max(...featureLayer),
    mm_hidden_size: n(m, "clip.vision.embedding_length"),
  });
  const tower = {
    hidden_size: n(m, "clip.vision.embedding_length"),
    intermediate_size: n(m, "clip.vision.feed_forward_length"),
    num_attention_heads: n(m, "clip.vision.attention.head_count"),
    num_hidden_layers: blocks,
    image_size: n(m, "clip.vision.image_size"),
    patch_size: n(m, "clip.vision.patch_size"),
    layer_norm_eps: n(m, "clip.vision.attention.layer_norm_epsilon"),
    hidden_act: ggufValue<boolean>(m, "clip.use_gelu", ["bool"], false) ? "gelu" : "quick_gelu",
  };
  const config = parseModelConfig(raw, text.path, tower);
  const mean = ggufValue<number[]>(m, "clip.vision.image_mean", ["array"], [...CLIP_MEAN]);
  const std = ggufValue<number[]>(m, "clip.vision.image_std", ["array"], [...CLIP_STD]);
  const near = (a: number[], b: readonly number[]) =>
    a.length === 3 && a.every((x, i) => Math.abs(x - b[i]) < 1e-6);
  config.vision!.imageMean = near(mean, CLIP_MEAN) ? CLIP_MEAN : mean as [number, number, number];
  config.vision!.imageStd = near(std, CLIP_STD) ? CLIP_STD : std as [number, number, number];
  return config;
}

/**
 * The shortest decimal that rounds to the same f32 (1e-5 stored as f32 reads back as 1e-5, as the
 * config.json value it came from), for f32 metadata; other numbers unchanged.
 */
function shortestDecimal(value: number): number {
  if (Number.isInteger(value) || Math.fround(value) !== value) return value;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return value;
}

/** Canonical name of every GGUF tensor name this config can hold. */
function canonicalNames(config: ModelConfig, file: GgufFile): Map<string, string> {
  const names = new Map<string, string>();
  for (const canonical of expectedShapes(config).keys()) names.set(ggufTensorName(canonical)!, canonical);
  for (const name of file.tensors.keys()) {
    if (isPredictorWeight(name)) names.set(name, name);
  }
  return names;
}

function addTensors(
  file: GgufFile,
  into: { config: ModelConfig; tensors: Map<string, CheckpointTensor> },
): void {
  const canonical = canonicalNames(into.config, file);
  for (const info of file.tensors.values()) {
    const name = canonical.get(info.name);
    if (name === undefined) {
      if (info.name === "v.post_ln.weight" || info.name === "v.post_ln.bias") continue; // unused by LLaVA
      if (/^v\.blk\.\d+\./.test(info.name)) continue; // encoder layers after the selected one
      throw new CheckpointError(
        `Cannot load checkpoint: unknown tensor ${JSON.stringify(info.name)}`,
        file.path,
      );
    }
    const heads = permutedHeads(name, into.config);
    // llama.cpp squeezes the class embedding and stores the patch kernel [V, 3, p, p] as 4 dims.
    const shape = info.shape;
    into.tensors.set(name, {
      name,
      sourceName: info.name,
      shape,
      storedType: info.type,
      byteLength: info.byteLength,
      path: file.path,
      read: async () => {
        const elements = shape.reduce((a, b) => a * b, 1);
        const values = dequantize(info.type, await readGgufTensor(file, info.name), elements);
        return heads > 0 ? unpermuteRows(values, { heads, cols: info.dims[0] }) : values;
      },
      readBlocks: async () => {
        const bytes = await readGgufTensor(file, info.name);
        return heads > 0
          ? permuteRows(bytes, { heads, rowBytes: bytes.length / shape[0], inverse: true })
          : bytes;
      },
    });
  }
}

/** The SentencePiece vocabulary of `tokenizer.ggml.*` (model "llama"). */
function ggufVocab(file: GgufFile): CheckpointVocab {
  const model = ggufValue<string>(file, "tokenizer.ggml.model", ["string"]);
  if (model !== "llama") {
    throw new CheckpointError(
      `Cannot load the tokenizer: tokenizer.ggml.model ${
        JSON.stringify(model)
      } is not supported (only "llama")`,
      file.path,
    );
  }
  const tokens = ggufValue<string[]>(file, "tokenizer.ggml.tokens", ["array"]);
  const id = (key: string, fallback: number) =>
    ggufValue<number>(file, `tokenizer.ggml.${key}`, ["u32", "i32"], fallback);
  return {
    tokens,
    scores: ggufValue<number[]>(file, "tokenizer.ggml.scores", ["array"], tokens.map(() => 0)),
    types: ggufValue<number[]>(file, "tokenizer.ggml.token_type", ["array"], tokens.map(() => 1)),
    unkId: id("unknown_token_id", 0),
    bosId: id("bos_token_id", 1),
    eosId: id("eos_token_id", 2),
    addDummyPrefix: ggufValue<boolean>(file, "tokenizer.ggml.add_space_prefix", ["bool"], true),
  };
}
