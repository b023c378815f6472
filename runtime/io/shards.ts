/**
 * A checkpoint directory's tensor files: one safetensors file or a sharded set described by
 * `model.safetensors.index.json`, opened as one name → (file, entry) lookup. Only headers are read;
 * no file handle stays open (tensors are read later with `readTensor`).
 *
 * Which files:
 * - `model.safetensors.index.json` present: its `weight_map` (tensor name → shard file name)
 *   decides. Shard names must be plain file names inside the directory, every shard must exist,
 *   every mapped tensor must be in its shard, and every shard tensor must be mapped to that shard
 *   (so no tensor lives in two shards).
 * - No index: `model.safetensors`, or else the directory's only `*.safetensors` file.
 * - PyTorch `.bin` / `.pt` / `.pth` checkpoints are not supported; the error says so.
 * Every problem is a {@link CheckpointError} naming the file (and tensor) at fault.
 * @module
 */
import { join } from "node:path";
import { CheckpointError } from "../core/errors.ts";
import type { FileStore } from "../core/files.ts";
import { isNotFound, localFiles } from "./files.ts";
import {
  findDuplicateJsonKey,
  openSafetensors,
  type SafetensorsFile,
  type TensorEntry,
} from "./safetensors.ts";

/** Name of the shard index file, as written by Hugging Face `save_pretrained`. */
export const SHARD_INDEX_FILE = "model.safetensors.index.json";

/** Where one tensor lives. */
export interface TensorLocation {
  /** The safetensors file holding the tensor. */
  file: SafetensorsFile;
  /** The tensor's header entry in that file. */
  entry: TensorEntry;
}

/** Every tensor of a checkpoint directory, across its safetensors files. */
export interface TensorFiles {
  /** The opened files, in shard order. */
  files: SafetensorsFile[];
  /** The file and header entry of a tensor, or undefined when no file holds it. */
  locate(name: string): TensorLocation | undefined;
  /** All tensor names, file by file in header order. */
  names(): string[];
}

/**
 * Finds and validates the safetensors files of a checkpoint directory (headers only).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openTensorFiles } from "./shards.ts";
 * import { writeSafetensors } from "./safetensors.ts";
 * const dir = await Deno.makeTempDir();
 * const tensor = { name: "lm_head.weight", dtype: "F32" as const, shape: [2, 2], data: new Uint8Array(16) };
 * await Deno.writeFile(`${dir}/model.safetensors`, writeSafetensors([tensor]));
 * const tensors = await openTensorFiles(dir);
 * assert.deepEqual(tensors.names(), ["lm_head.weight"]);
 * assert.deepEqual(tensors.locate("lm_head.weight")?.entry.shape, [2, 2]);
 * assert.equal(tensors.locate("missing"), undefined);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openTensorFiles(dir: string, files: FileStore = localFiles): Promise<TensorFiles> {
  const fileNames = await listFileNames(dir, files);
  if (fileNames.includes(SHARD_INDEX_FILE)) return await openShardedFiles(dir, files);
  const safetensorsNames = fileNames.filter((name) => name.endsWith(".safetensors"));
  if (safetensorsNames.length === 0) {
    const pytorchNames = fileNames.filter((name) => /\.(bin|pt|pth)$/.test(name));
    const pytorchNote = pytorchNames.length === 0
      ? ""
      : ` (found ${
        pytorchNames.join(", ")
      }: PyTorch pickle checkpoints are not supported, convert them to safetensors)`;
    throw new CheckpointError(`Cannot load checkpoint: no safetensors file in ${dir}${pytorchNote}`, dir);
  }
  const single = safetensorsNames.includes("model.safetensors")
    ? "model.safetensors"
    : safetensorsNames.length === 1
    ? safetensorsNames[0]
    : undefined;
  if (single === undefined) {
    throw new CheckpointError(
      `Cannot load checkpoint: ${safetensorsNames.length} safetensors files (${
        safetensorsNames.join(", ")
      }) but no ${SHARD_INDEX_FILE} saying which tensor is where`,
      dir,
    );
  }
  const path = join(dir, single);
  await requirePlainFile(path, `${single} is not a regular file`, files);
  return indexTensors([await openSafetensors(path, files)]);
}

/** Names of the directory's entries that may be files (symlinks included: the HF cache uses them). */
async function listFileNames(dir: string, files: FileStore): Promise<string[]> {
  const names: string[] = [];
  try {
    for (const entry of await files.list(dir)) {
      if (!entry.isDirectory) names.push(entry.name);
    }
  } catch (cause) {
    const why = isNotFound(cause) ? "directory not found" : String(cause);
    throw new CheckpointError(`Cannot load checkpoint: ${why}`, dir, { cause });
  }
  return names.sort();
}

/** Stats `path` (following symlinks) and requires a regular file. */
async function requirePlainFile(path: string, problem: string, files: FileStore): Promise<void> {
  let info;
  try {
    info = await files.stat(path);
  } catch (cause) {
    throw new CheckpointError(`Cannot load checkpoint: ${problem} (${String(cause)})`, path, { cause });
  }
  if (info === null) throw new CheckpointError(`Cannot load checkpoint: ${problem} (file not found)`, path);
  if (!info.isFile) throw new CheckpointError(`Cannot load checkpoint: ${problem}`, path);
}

/** Opens the shards named by the index and cross-checks them against its weight_map. */
async function openShardedFiles(dir: string, store: FileStore): Promise<TensorFiles> {
  const indexPath = join(dir, SHARD_INDEX_FILE);
  const weightMap = await readWeightMap(indexPath, store);
  const shardNames = [...new Set(weightMap.values())].sort();
  for (const shardName of shardNames) {
    if (!isPlainFileName(shardName)) {
      throw new CheckpointError(
        `Cannot load checkpoint: shard name ${
          JSON.stringify(shardName)
        } in weight_map is not a plain file name inside the checkpoint directory`,
        indexPath,
      );
    }
    await requirePlainFile(
      join(dir, shardName),
      `shard ${JSON.stringify(shardName)} named in weight_map is missing`,
      store,
    );
  }
  const files: SafetensorsFile[] = [];
  for (const shardName of shardNames) files.push(await openSafetensors(join(dir, shardName), store));
  for (const [tensorName, shardName] of weightMap) {
    const file = files[shardNames.indexOf(shardName)];
    if (!file.entries.has(tensorName)) {
      throw new CheckpointError(
        `Cannot load checkpoint: weight_map puts tensor ${JSON.stringify(tensorName)} in shard ${
          JSON.stringify(shardName)
        }, which does not hold it`,
        indexPath,
      );
    }
  }
  for (const [shardIndex, file] of files.entries()) {
    for (const tensorName of file.entries.keys()) {
      const mappedShard = weightMap.get(tensorName);
      if (mappedShard === undefined) {
        throw new CheckpointError(
          `Cannot load checkpoint: tensor ${JSON.stringify(tensorName)} of shard ${
            JSON.stringify(shardNames[shardIndex])
          } is missing from weight_map`,
          indexPath,
        );
      }
      if (mappedShard !== shardNames[shardIndex]) {
        throw new CheckpointError(
          `Cannot load checkpoint: tensor ${JSON.stringify(tensorName)} appears in two shards, ${
            JSON.stringify(mappedShard)
          } and ${JSON.stringify(shardNames[shardIndex])}`,
          indexPath,
        );
      }
    }
  }
  return indexTensors(files);
}

/** Reads the index's weight_map: tensor name → shard file name. */
async function readWeightMap(indexPath: string, files: FileStore): Promise<Map<string, string>> {
  const bad = (why: string, cause?: unknown) =>
    new CheckpointError(`Cannot read shard index: ${why}`, indexPath, cause === undefined ? {} : { cause });
  let text: string;
  try {
    text = new TextDecoder().decode(await files.read(indexPath));
  } catch (cause) {
    throw bad(String(cause), cause);
  }
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (cause) {
    throw bad(`not JSON (${cause instanceof Error ? cause.message : String(cause)})`, cause);
  }
  const duplicate = findDuplicateJsonKey(text);
  if (duplicate !== undefined) throw bad(`duplicate key ${JSON.stringify(duplicate)}`);
  if (!isPlainObject(index) || !isPlainObject(index.weight_map)) {
    throw bad("not a JSON object with a weight_map object");
  }
  if (index.metadata !== undefined && !isPlainObject(index.metadata)) throw bad("metadata is not an object");
  const weightMap = new Map<string, string>();
  for (const [tensorName, shardName] of Object.entries(index.weight_map)) {
    if (typeof shardName !== "string") {
      throw bad(`weight_map entry ${JSON.stringify(tensorName)} is not a shard file name`);
    }
    weightMap.set(tensorName, shardName);
  }
  if (weightMap.size === 0) throw bad("weight_map names no tensors");
  return weightMap;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A bare file name: no directory part, not "." or "..", no NUL. */
function isPlainFileName(name: string): boolean {
  return name !== "" && name !== "." && name !== ".." && !/[/\\\0]/.test(name);
}

/** Builds the name → location lookup over the opened files. */
function indexTensors(files: SafetensorsFile[]): TensorFiles {
  const locations = new Map<string, TensorLocation>();
  for (const file of files) {
    for (const entry of file.entries.values()) locations.set(entry.name, { file, entry });
  }
  return {
    files,
    locate: (name) => locations.get(name),
    names: () => [...locations.keys()],
  };
}
