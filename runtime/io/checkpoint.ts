/**
 * Opens a checkpoint directory: reads config.json (and the vision tower's, resolved on disk),
 * finds the safetensors files, maps every tensor of the three layouts to one canonical name,
 * checks shapes against the config, and streams tensors one at a time as f32.
 *
 * Canonical names (shapes with C = text hidden, I = intermediate, V = vision hidden):
 * - `embed` [vocab, C], `norm` [C], `lm_head` [vocab, C]
 * - `layers.{i}.{attn_norm,mlp_norm}` [C]; `.wq` [H·D, C]; `.wk`/`.wv` [KvH·D, C]; `.wo` [C, H·D];
 *   `.w_gate`/`.w_up` [I, C]; `.w_down` [C, I]
 * - `vision.patch_embed` [V, 3·p·p], `vision.class_embed` [V], `vision.pos_embed` [P+1, V],
 *   `vision.pre_norm.{weight,bias}`, `vision.layers.{i}.{ln1,ln2}.{weight,bias}`,
 *   `vision.layers.{i}.{q,k,v,o}.{weight,bias}`, `vision.layers.{i}.{fc1,fc2}.{weight,bias}`
 * - `projector.{0,2}.{weight,bias}` (mlp2x_gelu) or `projector.0.*` (linear)
 * - `image_score_predictor.*`, `output_text_score_predictor.*` (official sub-names kept)
 * @module
 */
import { join, resolve } from "node:path";
import { type ModelConfig, parseModelConfig } from "../core/config.ts";
import { toFloat32 } from "../core/dtype.ts";
import { CheckpointError } from "../core/errors.ts";
import type { GgmlType } from "../core/ggml_quants.ts";
import { readTensor } from "./safetensors.ts";
import { openTensorFiles, type TensorFiles } from "./shards.ts";

/** One tensor the model will load. */
export interface CheckpointTensor {
  /** Canonical name (see module doc). */
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
  tokens: string[];
  scores: number[];
  types: number[];
  unkId: number;
  bosId: number;
  eosId: number;
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
}

const PREDICTOR_PREFIXES = ["image_score_predictor.", "output_text_score_predictor."];

/** Source-name patterns of tensors that exist in real checkpoints but are not needed. */
const IGNORED = [
  /rotary_emb\.inv_freq$/,
  /^(vision_model|vision_tower\.vision_model|model\.vision_tower\.vision_tower\.vision_model|model\.vision_tower\.vision_model)\.(post_layernorm\.|embeddings\.position_ids$)/,
  /^text_model\./,
  /^(logit_scale|text_projection\.weight|visual_projection\.weight)$/,
];

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
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

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Finds a vision tower named in `mm_vision_tower`: a path (absolute or relative to the checkpoint)
 * or a hub id `org/name` in the local Hugging Face cache (`$HF_HOME/hub`, default
 * `~/.cache/huggingface/hub`).
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
export async function resolveVisionTower(tower: string, checkpointDir: string): Promise<string> {
  const local = resolve(checkpointDir, tower);
  if (await isDir(local)) return local;
  if (await isDir(tower)) return resolve(tower);
  const home = Deno.env.get("HF_HOME") ?? join(Deno.env.get("HOME") ?? "/root", ".cache", "huggingface");
  const repo = join(home, "hub", `models--${tower.replaceAll("/", "--")}`);
  const snapshots: string[] = [];
  try {
    const ref = (await Deno.readTextFile(join(repo, "refs", "main"))).trim();
    if (await isDir(join(repo, "snapshots", ref))) snapshots.push(join(repo, "snapshots", ref));
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

/** Maps a source tensor name of any layout to its canonical name, or null when unknown. */
function canonicalName(source: string): string | null {
  let m: RegExpMatchArray | null;
  const lm = source.replace(/^(language_model\.|model\.language_model\.)/, "");
  if (lm === "lm_head.weight") return "lm_head";
  if (
    (m = lm.match(/^model\.(embed_tokens|norm)\.weight$/)) || (m = lm.match(/^(embed_tokens|norm)\.weight$/))
  ) {
    return m[1] === "norm" ? "norm" : "embed";
  }
  if ((m = lm.match(/^(?:model\.)?layers\.(\d+)\.(.+)\.weight$/))) {
    const part = ({
      "input_layernorm": "attn_norm",
      "post_attention_layernorm": "mlp_norm",
      "self_attn.q_proj": "wq",
      "self_attn.k_proj": "wk",
      "self_attn.v_proj": "wv",
      "self_attn.o_proj": "wo",
      "mlp.gate_proj": "w_gate",
      "mlp.up_proj": "w_up",
      "mlp.down_proj": "w_down",
    } as Record<string, string>)[m[2]];
    return part ? `layers.${m[1]}.${part}` : null;
  }
  if ((m = source.match(/^(?:model\.)?mm_projector\.(\d+)\.(weight|bias)$/))) {
    return `projector.${m[1]}.${m[2]}`;
  }
  if ((m = source.match(/^(?:model\.)?multi_modal_projector\.linear_([12])\.(weight|bias)$/))) {
    return `projector.${m[1] === "1" ? 0 : 2}.${m[2]}`;
  }
  for (const prefix of PREDICTOR_PREFIXES) {
    const at = source.indexOf(prefix);
    if (at === 0 || source.startsWith("model." + prefix)) return source.slice(at);
  }
  const v = source.replace(
    /^(model\.vision_tower\.vision_tower\.|model\.vision_tower\.|vision_tower\.)?vision_model\./,
    "vision_model.",
  );
  if (!v.startsWith("vision_model.")) return null;
  if (v === "vision_model.embeddings.patch_embedding.weight") return "vision.patch_embed";
  if (v === "vision_model.embeddings.class_embedding") return "vision.class_embed";
  if (v === "vision_model.embeddings.position_embedding.weight") return "vision.pos_embed";
  if ((m = v.match(/^vision_model\.pre_layrnorm\.(weight|bias)$/))) return `vision.pre_norm.${m[1]}`;
  if ((m = v.match(/^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$/))) {
    const part = ({
      "layer_norm1": "ln1",
      "layer_norm2": "ln2",
      "self_attn.q_proj": "q",
      "self_attn.k_proj": "k",
      "self_attn.v_proj": "v",
      "self_attn.out_proj": "o",
      "mlp.fc1": "fc1",
      "mlp.fc2": "fc2",
    } as Record<string, string>)[m[2]];
    return part ? `vision.layers.${m[1]}.${part}.${m[3]}` : null;
  }
  return null;
}

/** Expected shape of every canonical tensor the config implies (predictors excluded). */
export function expectedShapes(config: ModelConfig): Map<string, number[]> {
  const t = config.text;
  const shapes = new Map<string, number[]>();
  const q = t.numHeads * t.headDim, kv = t.numKvHeads * t.headDim;
  shapes.set("embed", [t.vocabSize, t.hiddenSize]);
  shapes.set("norm", [t.hiddenSize]);
  if (!t.tieWordEmbeddings) shapes.set("lm_head", [t.vocabSize, t.hiddenSize]);
  for (let i = 0; i < t.numLayers; i++) {
    const p = `layers.${i}.`;
    shapes.set(p + "attn_norm", [t.hiddenSize]);
    shapes.set(p + "mlp_norm", [t.hiddenSize]);
    shapes.set(p + "wq", [q, t.hiddenSize]);
    shapes.set(p + "wk", [kv, t.hiddenSize]);
    shapes.set(p + "wv", [kv, t.hiddenSize]);
    shapes.set(p + "wo", [t.hiddenSize, q]);
    shapes.set(p + "w_gate", [t.intermediateSize, t.hiddenSize]);
    shapes.set(p + "w_up", [t.intermediateSize, t.hiddenSize]);
    shapes.set(p + "w_down", [t.hiddenSize, t.intermediateSize]);
  }
  const v = config.vision;
  if (v) {
    const grid = v.imageSize / v.patchSize;
    shapes.set("vision.patch_embed", [v.hiddenSize, v.numChannels, v.patchSize, v.patchSize]);
    shapes.set("vision.class_embed", [v.hiddenSize]);
    shapes.set("vision.pos_embed", [grid * grid + 1, v.hiddenSize]);
    shapes.set("vision.pre_norm.weight", [v.hiddenSize]);
    shapes.set("vision.pre_norm.bias", [v.hiddenSize]);
    for (let i = 0; i < v.layersToRun; i++) {
      const p = `vision.layers.${i}.`;
      for (const n of ["ln1", "ln2"]) {
        shapes.set(`${p}${n}.weight`, [v.hiddenSize]);
        shapes.set(`${p}${n}.bias`, [v.hiddenSize]);
      }
      for (const n of ["q", "k", "v", "o"]) {
        shapes.set(`${p}${n}.weight`, [v.hiddenSize, v.hiddenSize]);
        shapes.set(`${p}${n}.bias`, [v.hiddenSize]);
      }
      shapes.set(`${p}fc1.weight`, [v.intermediateSize, v.hiddenSize]);
      shapes.set(`${p}fc1.bias`, [v.intermediateSize]);
      shapes.set(`${p}fc2.weight`, [v.hiddenSize, v.intermediateSize]);
      shapes.set(`${p}fc2.bias`, [v.hiddenSize]);
    }
  }
  const pr = config.projector;
  if (pr) {
    if (pr.type === "linear") {
      shapes.set("projector.0.weight", [pr.outSize, pr.inSize]);
      shapes.set("projector.0.bias", [pr.outSize]);
    } else {
      shapes.set("projector.0.weight", [pr.outSize, pr.inSize]);
      shapes.set("projector.0.bias", [pr.outSize]);
      shapes.set("projector.2.weight", [pr.outSize, pr.outSize]);
      shapes.set("projector.2.bias", [pr.outSize]);
    }
  }
  return shapes;
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
    const layer = name.match(/^vision\.layers\.(\d+)\./);
    if (layer && Number(layer[1]) >= options.visionLayers) continue; // after the selected hidden state
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
 * Nothing is loaded yet: use {@link readCheckpointTensor} per tensor.
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
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  if (!(await isDir(dir))) throw new CheckpointError("Cannot load checkpoint: directory not found", dir);
  const configPath = join(dir, "config.json");
  const raw = await readJson(configPath) as Record<string, unknown>;
  let towerDir: string | null = null;
  let towerRaw: unknown;
  const isObj = typeof raw === "object" && raw !== null;
  if (isObj && typeof raw["text_config"] !== "object" && typeof raw["mm_vision_tower"] === "string") {
    towerDir = await resolveVisionTower(raw["mm_vision_tower"], dir);
    towerRaw = await readJson(join(towerDir, "config.json"));
  }
  const config = parseModelConfig(raw, configPath, towerRaw);
  const tensors = new Map<string, CheckpointTensor>();
  const visionLayers = config.vision?.layersToRun ?? 0;
  addTensors(await openTensorFiles(dir), tensors, { where: dir, visionLayers });
  if (towerDir && !tensors.has("vision.patch_embed")) {
    addTensors(await openTensorFiles(towerDir), tensors, { where: towerDir, visionLayers });
  }
  const expected = expectedShapes(config);
  for (const [name, shape] of expected) {
    const t = tensors.get(name);
    if (!t) {
      if (name.startsWith("vision.") && !config.vision) continue;
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
    if (!expected.has(name) && !PREDICTOR_PREFIXES.some((p) => name.startsWith(p))) {
      throw new CheckpointError(
        `Cannot load checkpoint: tensor "${t.sourceName}" does not belong to a ${config.layout} model with this config`,
        t.path,
      );
    }
  }
  return { dir, config, tensors, tokenizerPath: dir };
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
