/**
 * Tokenizers of LLaMA-family checkpoints: one {@link Tokenizer} interface over the two file formats
 * a LLaVA checkpoint may carry.
 *
 * - `tokenizer.json` (Hugging Face tokenizers, BPE model with byte fallback) — read by
 *   `tokenizer_json.ts`; encodes exactly as the Hugging Face fast tokenizer does.
 * - `tokenizer.model` (SentencePiece ModelProto, BPE model) — read by `sentencepiece.ts`; encodes
 *   and decodes with the same results as the `tokenizer.json` converted from it.
 *
 * {@link loadTokenizer} reads a checkpoint directory (preferring `tokenizer.json`) or a direct file
 * path; {@link tokenizerFromJson} and {@link tokenizerFromSentencePiece} build a tokenizer from
 * contents already in memory (for example fetched by URL) and touch no files.
 *
 * `encode()` prepends BOS by default, as the Hugging Face LLaMA tokenizer does. Special tokens that
 * appear in the text (`<s>`, `</s>`) are recognised as such, as Hugging Face does. Every problem with
 * a file is a {@link TokenizerError} naming the file.
 * @module
 */
import { join } from "node:path";
import { TokenizerError } from "../core/errors.ts";
import type { FileInfo, FileStore } from "../core/files.ts";
import { parseTokenizerJson } from "./tokenizer_json.ts";
import { parseSentencePieceModel } from "./sentencepiece.ts";
import type { Tokenizer } from "./bpe.ts";

export type { Tokenizer } from "./bpe.ts";

/**
 * Builds a tokenizer from the text of a Hugging Face `tokenizer.json`. Pure: reads no files.
 *
 * @param text the file's contents
 * @param where the file's name or URL, used in error messages
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenizerFromJson } from "./tokenizer.ts";
 * const json = JSON.stringify({
 *   added_tokens: [
 *     { id: 0, content: "<unk>", special: true, normalized: false },
 *     { id: 1, content: "<s>", special: true, normalized: false },
 *     { id: 2, content: "</s>", special: true, normalized: false },
 *   ],
 *   normalizer: { type: "Sequence", normalizers: [
 *     { type: "Prepend", prepend: "▁" },
 *     { type: "Replace", pattern: { String: " " }, content: "▁" },
 *   ] },
 *   pre_tokenizer: null,
 *   decoder: { type: "Sequence", decoders: [
 *     { type: "Replace", pattern: { String: "▁" }, content: " " },
 *     { type: "ByteFallback" }, { type: "Fuse" },
 *     { type: "Strip", content: " ", start: 1, stop: 0 },
 *   ] },
 *   model: {
 *     type: "BPE", unk_token: "<unk>", byte_fallback: true,
 *     vocab: { "<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "h": 4, "i": 5, "▁h": 6, "▁hi": 7 },
 *     merges: ["▁ h", "▁h i"],
 *   },
 * });
 * const tokenizer = tokenizerFromJson(json, "tokenizer.json");
 * assert.deepEqual(tokenizer.encode("hi"), [1, 7]); // <s>, ▁hi
 * assert.equal(tokenizer.decode([1, 7], { skipSpecialTokens: true }), "hi");
 * ```
 */
export function tokenizerFromJson(text: string, where: string): Tokenizer {
  return parseTokenizerJson(text, where);
}

/**
 * Builds a tokenizer from the bytes of a SentencePiece `tokenizer.model` (BPE). Pure: reads no files.
 *
 * @param bytes the file's contents
 * @param where the file's name or URL, used in error messages
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenizerFromSentencePiece } from "./tokenizer.ts";
 * import { TokenizerError } from "../core/errors.ts";
import type { FileInfo, FileStore } from "../core/files.ts";
 * const truncated = new Uint8Array([0x0a, 0xff]);
 * assert.throws(
 *   () => tokenizerFromSentencePiece(truncated, "tokenizer.model"),
 *   (err) => err instanceof TokenizerError && err.where === "tokenizer.model",
 * );
 * ```
 */
export function tokenizerFromSentencePiece(bytes: Uint8Array, where: string): Tokenizer {
  return parseSentencePieceModel(bytes, where);
}

/**
 * Loads the tokenizer of a checkpoint. `path` is a checkpoint directory (its `tokenizer.json` is
 * used, else its `tokenizer.model`) or the path of either file, read through `options.files` (the
 * file system when absent; a page passes the store of the checkpoint it fetched).
 *
 * @param path checkpoint directory, `tokenizer.json` or `tokenizer.model`
 * @param options `files`: the store to read from
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadTokenizer } from "./tokenizer.ts";
 * const checkpoint = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${checkpoint}/tokenizer.json`, JSON.stringify({
 *   added_tokens: [{ id: 1, content: "<s>", special: true }, { id: 2, content: "</s>", special: true }],
 *   model: { type: "BPE", vocab: { "<s>": 1, "</s>": 2, a: 3, b: 4, ab: 5 }, merges: ["a b"] },
 * }));
 * const tokenizer = await loadTokenizer(checkpoint);
 * assert.deepEqual(tokenizer.encode("abab"), [1, 5, 5]);
 * await Deno.remove(checkpoint, { recursive: true });
 * ```
 */
export async function loadTokenizer(path: string, options: { files?: FileStore } = {}): Promise<Tokenizer> {
  const files = options.files ?? denoFiles;
  const file = await findTokenizerFile(path, files);
  const bytes = await readTokenizerFile(file, files);
  if (file.endsWith(".json")) {
    const text = decodeUtf8(bytes, file);
    return tokenizerFromJson(text, file);
  }
  return tokenizerFromSentencePiece(bytes, file);
}

async function findTokenizerFile(path: string, files: Pick<FileStore, "stat">): Promise<string> {
  const info = await statOrNull(path, files);
  if (info === null) {
    throw new TokenizerError("Cannot load tokenizer: no such file or directory", path);
  }
  if (info.isFile) {
    if (path.endsWith(".json") || path.endsWith(".model")) return path;
    throw new TokenizerError(
      "Cannot load tokenizer: expected a tokenizer.json or tokenizer.model file or a directory",
      path,
    );
  }
  for (const name of ["tokenizer.json", "tokenizer.model"]) {
    const candidate = join(path, name);
    const found = await statOrNull(candidate, files);
    if (found?.isFile) return candidate;
  }
  throw new TokenizerError(
    "Cannot load tokenizer: the directory has no tokenizer.json or tokenizer.model",
    path,
  );
}

/** The file system, for loadTokenizer without a store (this room does not reach runtime/io/). */
const denoFiles: Pick<FileStore, "stat" | "read"> = {
  async stat(path) {
    try {
      return await Deno.stat(path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return null;
      throw err;
    }
  },
  read: (path) => Deno.readFile(path),
};

async function statOrNull(path: string, files: Pick<FileStore, "stat">): Promise<FileInfo | null> {
  try {
    return await files.stat(path);
  } catch (err) {
    throw new TokenizerError(`Cannot load tokenizer: ${(err as Error).message}`, path, { cause: err });
  }
}

async function readTokenizerFile(file: string, files: Pick<FileStore, "read">): Promise<Uint8Array> {
  try {
    return await files.read(file);
  } catch (err) {
    throw new TokenizerError(`Cannot read tokenizer file: ${(err as Error).message}`, file, { cause: err });
  }
}

function decodeUtf8(bytes: Uint8Array, where: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (err) {
    throw new TokenizerError("Cannot load tokenizer.json: not valid UTF-8", where, {
      cause: err,
    });
  }
}
