/**
 * Opens a checkpoint directory: reads config.json (and the vision tower's, resolved on disk),
 * finds the safetensors files, maps every tensor of the three layouts to one canonical name
 * (runtime/core/weights.ts describes them), checks names and shapes against that description, and
 * streams tensors one at a time as f32.
 * @module
 */
import { join, resolve } from "node:path";
import { type ModelConfig, parseModelConfig } from "../core/config.ts";
import { toFloat32 } from "../core/dtype.ts";
import { CheckpointError } from "../core/errors.ts";
import type { GgmlType } from "../core/ggml_quants.ts";
import type { FileStore } from "../core/files.ts";
import { isNotFound, localFiles } from "./files.ts";
import { readTensor } from "./safetensors.ts";
import { openTensorFiles, type TensorFiles } from "./shards.ts";
import {
  CHECKPOINT_MODEL_PREFIX,
  type DecoderLayerSpec,
  describeWeights,
  isPredictorWeight,
  PREDICTOR_PREFIXES,
  visionLayerOf,
  type VisionLayerSpec,
  WEIGHT_NAMES,
  weightList,
} from "../core/weights.ts";

/** One tensor the model will load. */
export interface CheckpointTensor {
  /** Canonical name (runtime/core/weights.ts). */
  name: string;
  /** Name in the file. */
  sourceName: string;
  /** Torch shape, outermost first. */
  shape: number[];
  /** Element type as stored in the file. */
  storedType: GgmlType;
  /** Bytes in the file. */
  byteLength: number;
  /** The file holding it. */
  path: string;
  /** Reads it as f32 values in checkpoint order (converted, dequantized, rows un-permuted). */
  read(): Promise<Float32Array>;
  /** GGUF tensors: reads its raw block bytes, rows in checkpoint order (un-permuted). */
  readBlocks?(): Promise<Uint8Array>;
}

/** A vocabulary stored in the checkpoint's own files (GGUF metadata), SentencePiece style. */
export interface CheckpointVocab {
  /** Token pieces, by id. */
  tokens: string[];
  /** SentencePiece scores, by id (higher merges first). */
  scores: number[];
  /** SentencePiece token types, by id (1 normal, 2 unknown, 3 control, 6 byte). */
  types: number[];
  /** Id of the unknown token. */
  unkId: number;
  /** Id of the beginning-of-sequence token. */
  bosId: number;
  /** Id of the end-of-sequence token. */
  eosId: number;
  /** Whether encoding prepends a space to the text (SentencePiece's add_dummy_prefix). */
  addDummyPrefix: boolean;
}

/** An opened checkpoint: config, tokenizer location and the tensors to load (data still on disk). */
export interface Checkpoint {
  /** The checkpoint directory. */
  dir: string;
  /** The architecture read from config.json (and the tower's config, when separate). */
  config: ModelConfig;
  /** Canonical name → tensor. */
  tensors: Map<string, CheckpointTensor>;
  /** Directory or file holding tokenizer.json / tokenizer.model. */
  tokenizerPath: string;
  /** The vocabulary when the checkpoint's files carry it (GGUF), else undefined. */
  vocab?: CheckpointVocab;
  /** The store its files are read from (the file system when absent). */
  files?: FileStore;
}

/** Source-name patterns of tensors that exist in real checkpoints but are not needed. */
const IGNORED = [
  /rotary_emb\.inv_freq$/,
  /^(vision_model|vision_tower\.vision_model|model\.vision_tower\.vision_tower\.vision_model|model\.vision_tower\.vision_model)\.(post_layernorm\.|embeddings\.position_ids$)/,
  /^text_model\./,
  /^(logit_scale|text_projection\.weight|visual_projection\.weight)$/,
];

/** Largest config.json read (real ones are a few KiB). */
const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

async function readJson(path: string, files: FileStore): Promise<unknown> {
  let text: string;
  try {
    // A FIFO or device named config.json would block the read forever: only regular files are read.
    const info = await files.stat(path);
    if (info === null) throw new CheckpointError("Cannot load checkpoint: file not found", path);
    if (!info.isFile) throw new CheckpointError("Cannot load checkpoint: not a regular file", path);
    if (info.size > MAX_CONFIG_BYTES) {
      throw new CheckpointError(
        `Cannot load checkpoint: ${info.size} bytes, more than ${MAX_CONFIG_BYTES}`,
        path,
      );
    }
    text = new TextDecoder().decode(await files.read(path));
  } catch (err) {
    if (err instanceof CheckpointError) throw err;
    if (isNotFound(err)) {
      throw new CheckpointError("Cannot load checkpoint: file not found", path);
    }
    throw new CheckpointError(`Cannot load checkpoint: ${(err as Error).message}`, path, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CheckpointError(`Cannot read JSON: ${(err as Error).message}`, path, { cause: err });
  }
}

async function isDir(path: string, files: FileStore): Promise<boolean> {
  try {
    return (await files.stat(path))?.isDirectory ?? false;
  } catch {
    return false;
  }
}

/**
 * Finds a vision tower named in `mm_vision_tower`: a path (absolute or relative to the checkpoint)
 * or a hub id `org/name` in the local Hugging Face cache (`$HF_HOME/hub`, default
 * `~/.cache/huggingface/hub`). `files` is where the checkpoint lies (the file system by default);
 * elsewhere (a page's downloaded checkpoint) only a folder beside the checkpoint is found.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolveVisionTower } from "./checkpoint.ts";
 * import { CheckpointError } from "../core/errors.ts";
 * const checkpoint = await Deno.makeTempDir();
 * await Deno.mkdir(`${checkpoint}/clip`);
 * assert.equal(await resolveVisionTower("clip", checkpoint), `${checkpoint}/clip`); // a directory beside it
 * Deno.env.set("HF_HOME", checkpoint); // an empty Hugging Face cache
 * await assert.rejects(resolveVisionTower("openai/clip-vit-large-patch14-336", checkpoint), CheckpointError);
 * Deno.env.delete("HF_HOME");
 * await Deno.remove(checkpoint, { recursive: true });
 * ```
 */
export async function resolveVisionTower(
  tower: string,
  checkpointDir: string,
  files: FileStore = localFiles,
): Promise<string> {
  const local = resolve(checkpointDir, tower);
  if (await isDir(local, files)) return local;
  if (files !== localFiles) {
    throw new CheckpointError(
      `Cannot find vision tower "${tower}": not a folder next to the checkpoint`,
      join(checkpointDir, "config.json"),
    );
  }
  if (await isDir(tower, files)) return resolve(tower);
  const home = Deno.env.get("HF_HOME") ?? join(Deno.env.get("HOME") ?? "/root", ".cache", "huggingface");
  const repo = join(home, "hub", `models--${tower.replaceAll("/", "--")}`);
  const snapshots: string[] = [];
  try {
    const ref = (await Deno.readTextFile(join(repo, "refs", "main"))).trim();
    if (await isDir(join(repo, "snapshots", ref), files)) snapshots.push(join(repo, "snapshots", ref));
  } catch { /* no refs/main: scan the snapshots */ }
  try {
    for await (const e of Deno.readDir(join(repo, "snapshots"))) {
      snapshots.push(join(repo, "snapshots", e.name));
    }
  } catch { /* no snapshots */ }
  for (const dir of snapshots) {
    try {
      await Deno.stat(join(dir, "config.json"));
      return dir;
    } catch { /* try the next */ }
  }
  throw new CheckpointError(
    `Cannot find vision tower "${tower}": not a directory next to the checkpoint, nor in the Hugging Face cache ${
      join(home, "hub")
    }`,
    join(checkpointDir, "config.json"),
  );
}

/** Source decoder layer parts (LLaMA / llava-hf naming) → canonical parts. */
const DECODER_SOURCE_PARTS: Record<string, keyof DecoderLayerSpec> = {
  "input_layernorm": "attnNorm",
  "post_attention_layernorm": "mlpNorm",
  "self_attn.q_proj": "wq",
  "self_attn.k_proj": "wk",
  "self_attn.v_proj": "wv",
  "self_attn.o_proj": "wo",
  "mlp.gate_proj": "wGate",
  "mlp.up_proj": "wUp",
  "mlp.down_proj": "wDown",
};

/** Source CLIP encoder layer parts → canonical parts. */
const VISION_SOURCE_PARTS: Record<string, keyof VisionLayerSpec> = {
  "layer_norm1": "ln1",
  "layer_norm2": "ln2",
  "self_attn.q_proj": "q",
  "self_attn.k_proj": "k",
  "self_attn.v_proj": "v",
  "self_attn.out_proj": "o",
  "mlp.fc1": "fc1",
  "mlp.fc2": "fc2",
};

/** Maps a source tensor name of any layout to its canonical name, or null when unknown. */
function canonicalName(source: string): string | null {
  let m: RegExpMatchArray | null;
  const lm = source.replace(/^(language_model\.|model\.language_model\.)/, "");
  if (lm === "lm_head.weight") return WEIGHT_NAMES.lmHead;
  if (
    (m = lm.match(/^model\.(embed_tokens|norm)\.weight$/)) || (m = lm.match(/^(embed_tokens|norm)\.weight$/))
  ) {
    return m[1] === "norm" ? WEIGHT_NAMES.norm : WEIGHT_NAMES.embed;
  }
  if ((m = lm.match(/^(?:model\.)?layers\.(\d+)\.(.+)\.weight$/))) {
    const part = DECODER_SOURCE_PARTS[m[2]];
    return part ? WEIGHT_NAMES.decoder(Number(m[1]), part) : null;
  }
  if ((m = source.match(/^(?:model\.)?mm_projector\.(\d+)\.(weight|bias)$/))) {
    return `${WEIGHT_NAMES.projector(Number(m[1]))}.${m[2]}`;
  }
  if ((m = source.match(/^(?:model\.)?multi_modal_projector\.linear_([12])\.(weight|bias)$/))) {
    return `${WEIGHT_NAMES.projector(m[1] === "1" ? 0 : 2)}.${m[2]}`;
  }
  for (const prefix of Object.values(PREDICTOR_PREFIXES)) {
    const at = source.indexOf(prefix);
    if (at === 0 || source.startsWith(CHECKPOINT_MODEL_PREFIX + prefix)) return source.slice(at);
  }
  const v = source.replace(
    /^(model\.vision_tower\.vision_tower\.|model\.vision_tower\.|vision_tower\.)?vision_model\./,
    "vision_model.",
  );
  if (!v.startsWith("vision_model.")) return null;
  if (v === "vision_model.embeddings.patch_embedding.weight") return WEIGHT_NAMES.patchEmbed;
  if (v === "vision_model.embeddings.class_embedding") return WEIGHT_NAMES.classEmbed;
  if (v === "vision_model.embeddings.position_embedding.weight") return WEIGHT_NAMES.posEmbed;
  if ((m = v.match(/^vision_model\.pre_layrnorm\.(weight|bias)$/))) return `${WEIGHT_NAMES.preNorm}.${m[1]}`;
  if ((m = v.match(/^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$/))) {
    const part = VISION_SOURCE_PARTS[m[2]];
    return part ? `${WEIGHT_NAMES.visionLayer(Number(m[1]), part)}.${m[3]}` : null;
  }
  return null;
}

/** Expected shape of every canonical tensor the config implies (predictors excluded), by name. */
export function expectedShapes(config: ModelConfig): Map<string, number[]> {
  return new Map([...weightList(describeWeights(config))].map(([name, spec]) => [name, spec.shape]));
}

function addTensors(
  files: TensorFiles,
  into: Map<string, CheckpointTensor>,
  options: { where: string; visionLayers: number },
): void {
  for (const sourceName of files.names()) {
    const location = files.locate(sourceName)!;
    const name = canonicalName(sourceName);
    if (name === null) {
      if (IGNORED.some((re) => re.test(sourceName))) continue;
      throw new CheckpointError(`Cannot load checkpoint: unknown tensor "${sourceName}"`, location.file.path);
    }
    const layer = visionLayerOf(name);
    if (layer !== null && layer >= options.visionLayers) continue; // after the selected hidden state
    if (into.has(name)) {
      throw new CheckpointError(
        `Cannot load checkpoint: tensor "${sourceName}" appears twice`,
        location.file.path,
      );
    }
    const { file, entry } = location;
    into.set(name, {
      name,
      sourceName,
      shape: entry.shape,
      storedType: entry.dtype,
      byteLength: entry.byteLength,
      path: file.path,
      read: async () => toFloat32(entry.dtype, await readTensor(file, sourceName)),
    });
  }
}

/**
 * Opens a checkpoint directory (any supported layout) and validates its tensors' names and shapes.
 * Nothing is loaded yet: use {@link readCheckpointTensor} per tensor. `options.files` is the store
 * the directory is read from (the file system by default; a page passes its downloaded files).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openCheckpoint } from "./checkpoint.ts";
 * const ckpt = await openCheckpoint("tests/fixtures/out/llama-f32");
 * assert.equal(ckpt.config.layout, "llama");
 * assert.ok(ckpt.tensors.has("embed") && ckpt.tensors.has("norm"));
 * assert.equal(ckpt.tokenizerPath, "tests/fixtures/out/llama-f32");
 * ```
 */
export async function openCheckpoint(
  dir: string,
  options: { files?: FileStore } = {},
): Promise<Checkpoint> {
  const files = options.files ?? localFiles;
  if (!(await isDir(dir, files))) {
    throw new CheckpointError("Cannot load checkpoint: directory not found", dir);
  }
  const configPath = join(dir, "config.json");
  const raw = await readJson(configPath, files) as Record<string, unknown>;
  let towerDir: string | null = null;
  let towerRaw: unknown;
  const isObj = typeof raw === "object" && raw !== null;
  if (isObj && typeof raw["text_config"] !== "object" && typeof raw["mm_vision_tower"] === "string") {
    towerDir = await resolveVisionTower(raw["mm_vision_tower"], dir, files);
    towerRaw = await readJson(join(towerDir, "config.json"), files);
  }
  const config = parseModelConfig(raw, configPath, towerRaw);
  const tensors = new Map<string, CheckpointTensor>();
  const visionLayers = config.vision?.layersToRun ?? 0;
  addTensors(await openTensorFiles(dir, files), tensors, { where: dir, visionLayers });
  if (towerDir && !tensors.has(WEIGHT_NAMES.patchEmbed)) {
    addTensors(await openTensorFiles(towerDir, files), tensors, { where: towerDir, visionLayers });
  }
  const expected = weightList(describeWeights(config));
  for (const [name, { shape }] of expected) {
    const t = tensors.get(name);
    if (!t) {
      throw new CheckpointError(`Cannot load checkpoint: tensor "${name}" is missing`, dir);
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `Cannot load checkpoint: tensor "${t.sourceName}" has shape [${t.shape}], expected [${shape}]`,
        t.path,
      );
    }
  }
  for (const [name, t] of tensors) {
    if (!expected.has(name) && !isPredictorWeight(name)) {
      throw new CheckpointError(
        `Cannot load checkpoint: tensor "${t.sourceName}" does not belong to a ${config.layout} model with this config`,
        t.path,
      );
    }
  }
  return { dir, config, tensors, tokenizerPath: dir, files };
}

/**
 * Reads one tensor as f32 (F16/BF16 converted, GGUF blocks dequantized), touching only its bytes on disk.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openCheckpoint, readCheckpointTensor } from "./checkpoint.ts";
 * const ckpt = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const norm = await readCheckpointTensor(ckpt, "norm");
 * assert.equal(norm.length, ckpt.config.text.hiddenSize); // f32, whatever the stored dtype
 * ```
 */
export async function readCheckpointTensor(checkpoint: Checkpoint, name: string): Promise<Float32Array> {
  const t = checkpoint.tensors.get(name);
  if (!t) throw new CheckpointError(`Cannot read tensor "${name}": not in the checkpoint`, checkpoint.dir);
  return await t.read();
}
