/**
 * Converts a safetensors checkpoint (any supported layout, tokenizer.json beside it) to GGUF files
 * that llama.cpp and dynllava both load: the text model, its `mmproj` (vision tower + projector)
 * and the Dynamic-LLaVA predictors (conventions in runtime/io/gguf_llava.ts).
 *
 *   deno task convert --model DIR --out FILE.gguf [--type f16|q8_0|q4_0|q4_k_m]
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import {
  convertToGguf,
  type GgufConvertType,
  ggufVocabFromTokenizerJson,
} from "../runtime/io/gguf_convert.ts";
import { DynllavaError, InputError } from "../mod.ts";

const TYPES: GgufConvertType[] = ["f16", "q8_0", "q4_0", "q4_k_m"];

/**
 * Runs the conversion the command-line flags ask for and returns the written paths.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { convertCommand } from "./convert.ts";
 * await assert.rejects(convertCommand(["--model", "x"]), /--out FILE.gguf is required/);
 * ```
 */
export async function convertCommand(args: string[]): Promise<string[]> {
  const { values } = parseArgs({
    args,
    options: { model: { type: "string" }, out: { type: "string" }, type: { type: "string", default: "f16" } },
  });
  if (!values.model) throw new InputError("Cannot convert: --model DIR is required", "--model");
  if (!values.out?.endsWith(".gguf")) {
    throw new InputError("Cannot convert: --out FILE.gguf is required", "--out");
  }
  const type = values.type as GgufConvertType;
  if (!TYPES.includes(type)) {
    throw new InputError(`Cannot convert: --type ${type} is not one of ${TYPES.join(", ")}`, "--type");
  }
  const checkpoint = await openCheckpoint(values.model);
  const tokenizerPath = join(values.model, "tokenizer.json");
  let tokenizerText: string;
  try {
    tokenizerText = await Deno.readTextFile(tokenizerPath);
  } catch (cause) {
    throw new InputError("Cannot convert: the checkpoint has no tokenizer.json", tokenizerPath, { cause });
  }
  return await convertToGguf(checkpoint, values.out, {
    type,
    vocab: ggufVocabFromTokenizerJson(tokenizerText, tokenizerPath),
  });
}

if (import.meta.main) {
  try {
    for (const path of await convertCommand(Deno.args)) console.log(path);
  } catch (err) {
    if (!(err instanceof DynllavaError)) throw err;
    console.error(`${err.message} (${err.where})`);
    Deno.exit(1);
  }
}
