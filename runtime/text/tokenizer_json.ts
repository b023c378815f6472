/**
 * Hugging Face `tokenizer.json` reader for the BPE tokenizers of the LLaMA family (LLaMA-2, Vicuna,
 * Mistral): parses the file into the stages of the BPE engine in `bpe.ts`.
 *
 * Encoding follows the Hugging Face `tokenizers` library step by step:
 * 1. The raw text is split on added tokens whose `normalized` is false (`<s>`, `</s>`, `<unk>`):
 *    leftmost match first, longest at a position, honouring `lstrip`, `rstrip`, `single_word`.
 * 2. The normalizer runs on each remaining segment on its own. With LLaMA-2's normalizer
 *    (Prepend "▁", Replace " " → "▁") every segment gets a leading "▁", so the text right after a
 *    special token gets one too: "<s>hi" → `<s>`, `▁hi` (the "legacy" LLaMA behaviour).
 * 3. Added tokens whose `normalized` is true are split out of the normalized segments.
 * 4. The pre-tokenizer (none, or Metaspace) splits segments into words. Metaspace with
 *    `prepend_scheme: "first"` prepends "▁" only to a segment that starts the text.
 * 5. BPE on each word: characters (code points) to ids, unknown characters to their UTF-8 bytes
 *    (`<0xNN>`, byte fallback) or to the unknown token (fused when `fuse_unk`); then adjacent pairs
 *    merge, lowest merge rank first, leftmost first among equal ranks ({@link mergeSymbols}).
 * 6. `addSpecialTokens` applies the `TemplateProcessing` post-processor (LLaMA: BOS first).
 *
 * Decoding maps ids to token strings and runs the decoder chain (Replace, ByteFallback, Fuse,
 * Strip, Metaspace), as Hugging Face does.
 *
 * Supported components: normalizers Sequence, Prepend, Replace (string pattern); pre-tokenizer
 * Metaspace; model BPE; decoders Sequence, Replace (string pattern), ByteFallback, Fuse, Strip,
 * Metaspace; post-processor TemplateProcessing. Anything else is a TokenizerError.
 * @module
 */
import { TokenizerError } from "../core/errors.ts";
import {
  type AddedToken,
  assembleTokenizer,
  decoderChain,
  type DecoderStep,
  decoderSteps,
  mergeSymbols,
  type MergeTable,
  type Tokenizer,
} from "./bpe.ts";

/** Ids above this are refused: they would only come from a corrupt or hostile file. */
const MAX_TOKEN_ID = 1 << 24;

/**
 * Builds a tokenizer from the text of a Hugging Face `tokenizer.json` (BPE model).
 *
 * @param text the file's contents
 * @param where the file's name or URL, used in error messages
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseTokenizerJson } from "./tokenizer_json.ts";
 * const tokenizer = parseTokenizerJson(JSON.stringify({
 *   added_tokens: [{ id: 1, content: "<s>", special: true }, { id: 2, content: "</s>", special: true }],
 *   pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
 *   decoder: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
 *   model: { type: "BPE", vocab: { "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "▁a": 5 }, merges: [["▁", "a"]] },
 * }), "tokenizer.json");
 * assert.deepEqual(tokenizer.encode("a a"), [1, 5, 5]);
 * assert.equal(tokenizer.decode([1, 5, 5], { skipSpecialTokens: true }), "a a");
 * ```
 */
export function parseTokenizerJson(text: string, where: string): Tokenizer {
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (err) {
    const why = `not valid JSON (${(err as Error).message})`;
    throw new TokenizerError(`Cannot load tokenizer.json: ${why}`, where, { cause: err });
  }
  if (!isObject(root)) throw fail("the top level is not a JSON object", where);
  if (!isObject(root.model)) throw fail('it has no "model" object', where);
  const model = parseBpeModel(root.model, where);
  const addedTokens = parseAddedTokens(root.added_tokens ?? [], model.vocab, where);
  const normalize = parseNormalizer(root.normalizer ?? null, where);
  const preTokenize = parsePreTokenizer(root.pre_tokenizer ?? null, where);
  const decodeTokens = decoderFromConfig(root.decoder ?? null, where);

  const idOf = (token: string) => addedTokens.find((t) => t.content === token)?.id ?? model.vocab.get(token);
  const template = parsePostProcessor(root.post_processor ?? null, where);
  const bosId = template.firstSpecialId ?? idOf("<s>");
  const eosId = idOf("</s>");
  if (bosId === undefined) throw fail("it has no beginning-of-sequence token (<s>)", where);
  if (eosId === undefined) throw fail("it has no end-of-sequence token (</s>)", where);
  return assembleTokenizer({
    where,
    addedTokens,
    normalize,
    preTokenize,
    tokenizeWord: model.tokenizeWord,
    vocab: model.vocab,
    decodeTokens,
    prefixIds: template.prefixIds ?? [bosId],
    suffixIds: template.suffixIds ?? [],
    bosId,
    eosId,
    unkId: model.unkId,
  });
}

/**
 * Builds a decoder chain from the `decoder` object of a tokenizer.json (null: tokens joined by
 * spaces, as Hugging Face does without a decoder).
 *
 * @param config the `decoder` value
 * @param where the file, for error messages
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decoderFromConfig } from "./tokenizer_json.ts";
 * const decode = decoderFromConfig({ type: "Sequence", decoders: [
 *   { type: "Replace", pattern: { String: "▁" }, content: " " },
 *   { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 },
 * ] }, "tokenizer.json");
 * assert.equal(decode(["▁Hello", "<0x21>", "<0x0A>"]), "Hello!\n");
 * ```
 */
export function decoderFromConfig(config: unknown, where: string): (tokens: string[]) => string {
  if (config === null) return (tokens) => tokens.join(" ");
  return decoderChain([parseDecoderStep(config, "decoder", where)]);
}

// ---------------------------------------------------------------------------------------------
// BPE model

interface BpeModel {
  vocab: Map<string, number>;
  unkId: number;
  tokenizeWord: (word: string) => number[];
}

function parseBpeModel(config: Record<string, unknown>, where: string): BpeModel {
  const type = config.type ?? "BPE";
  if (type !== "BPE") {
    throw fail(`model type ${JSON.stringify(type)} is not supported (only BPE)`, where);
  }
  if (config.dropout !== undefined && config.dropout !== null && config.dropout !== 0) {
    throw fail("model.dropout is not supported", where);
  }
  for (const key of ["continuing_subword_prefix", "end_of_word_suffix"]) {
    if (config[key] !== undefined && config[key] !== null && config[key] !== "") {
      throw fail(`model.${key} is not supported`, where);
    }
  }
  const vocab = parseVocab(config.vocab, where);
  const unkToken = optionalString(config.unk_token, "model.unk_token", where);
  let unkId = -1;
  if (unkToken !== null) {
    const id = vocab.get(unkToken);
    if (id === undefined) {
      throw fail(`model.unk_token ${JSON.stringify(unkToken)} is not in the vocabulary`, where);
    }
    unkId = id;
  }
  const table = parseMerges(config.merges, vocab, where);
  const byteFallback = optionalBoolean(config.byte_fallback, "model.byte_fallback", where) ?? false;
  const fuseUnk = optionalBoolean(config.fuse_unk, "model.fuse_unk", where) ?? false;
  const ignoreMerges = optionalBoolean(config.ignore_merges, "model.ignore_merges", where) ?? false;
  const byteIds = byteTokenIds(vocab);

  const tokenizeWord = (word: string): number[] => {
    if (ignoreMerges) {
      const whole = vocab.get(word);
      if (whole !== undefined) return [whole];
    }
    const symbols: number[] = [];
    let pendingUnk = false;
    for (let i = 0; i < word.length;) {
      const codePoint = word.codePointAt(i)!;
      const width = codePoint > 0xffff ? 2 : 1;
      const id = vocab.get(word.slice(i, i + width));
      i += width;
      if (id !== undefined) {
        if (pendingUnk) symbols.push(unkId);
        pendingUnk = false;
        symbols.push(id);
        continue;
      }
      const bytes = byteFallback ? utf8Bytes(codePoint).map((b) => byteIds[b]) : null;
      if (bytes && bytes.every((b) => b >= 0)) {
        if (pendingUnk) symbols.push(unkId);
        pendingUnk = false;
        symbols.push(...bytes);
        continue;
      }
      if (unkId < 0) continue;
      if (pendingUnk && !fuseUnk) symbols.push(unkId);
      pendingUnk = true;
    }
    if (pendingUnk) symbols.push(unkId);
    return mergeSymbols(symbols, table);
  };
  return { vocab, unkId, tokenizeWord };
}

function parseVocab(value: unknown, where: string): Map<string, number> {
  if (!isObject(value)) throw fail("model.vocab is not an object of token → id", where);
  const vocab = new Map<string, number>();
  const seenIds = new Set<number>();
  for (const [token, id] of Object.entries(value)) {
    if (!isTokenId(id)) throw fail(`model.vocab[${JSON.stringify(token)}] is not a valid id`, where);
    if (seenIds.has(id)) throw fail(`model.vocab gives id ${id} to two tokens`, where);
    seenIds.add(id);
    vocab.set(token, id);
  }
  if (vocab.size === 0) throw fail("model.vocab is empty", where);
  return vocab;
}

function parseMerges(value: unknown, vocab: Map<string, number>, where: string): MergeTable {
  if (!Array.isArray(value)) throw fail("model.merges is not an array", where);
  let stride = 0;
  for (const id of vocab.values()) stride = Math.max(stride, id + 1);
  const handleOfPair = new Map<number, number>();
  const results = new Int32Array(value.length);
  value.forEach((merge, rank) => {
    const pair = mergePair(merge);
    if (pair === null) {
      throw fail(
        `model.merges[${rank}] is not "left right" or [left, right]: ${JSON.stringify(merge)}`,
        where,
      );
    }
    const [left, right] = pair;
    const ids = [vocab.get(left), vocab.get(right), vocab.get(left + right)];
    const missing = [left, right, left + right].find((_, k) => ids[k] === undefined);
    if (missing !== undefined) {
      throw fail(
        `model.merges[${rank}] uses token ${JSON.stringify(missing)} that is not in the vocabulary`,
        where,
      );
    }
    handleOfPair.set(ids[0]! * stride + ids[1]!, rank);
    results[rank] = ids[2]!;
  });
  return {
    find: (leftId, rightId) => handleOfPair.get(leftId * stride + rightId) ?? -1,
    rank: (handle) => handle,
    result: (handle) => results[handle],
  };
}

function mergePair(merge: unknown): [string, string] | null {
  if (typeof merge === "string") {
    const parts = merge.split(" ");
    return parts.length === 2 ? [parts[0], parts[1]] : null;
  }
  if (
    Array.isArray(merge) && merge.length === 2 && typeof merge[0] === "string" && typeof merge[1] === "string"
  ) {
    return [merge[0], merge[1]];
  }
  return null;
}

/** Id of `<0xNN>` for each byte value, -1 where the vocabulary lacks it. */
function byteTokenIds(vocab: Map<string, number>): Int32Array {
  const ids = new Int32Array(256);
  for (let b = 0; b < 256; b++) ids[b] = vocab.get(byteTokenName(b)) ?? -1;
  return ids;
}

function byteTokenName(byte: number): string {
  return `<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`;
}

/** UTF-8 bytes of one code point; a lone surrogate encodes as U+FFFD, as TextEncoder does. */
function utf8Bytes(codePoint: number): number[] {
  if (codePoint >= 0xd800 && codePoint <= 0xdfff) codePoint = 0xfffd;
  if (codePoint < 0x80) return [codePoint];
  if (codePoint < 0x800) return [0xc0 | (codePoint >> 6), 0x80 | (codePoint & 63)];
  if (codePoint < 0x10000) {
    return [0xe0 | (codePoint >> 12), 0x80 | ((codePoint >> 6) & 63), 0x80 | (codePoint & 63)];
  }
  return [
    0xf0 | (codePoint >> 18),
    0x80 | ((codePoint >> 12) & 63),
    0x80 | ((codePoint >> 6) & 63),
    0x80 | (codePoint & 63),
  ];
}

// ---------------------------------------------------------------------------------------------
// Added tokens, normalizer, pre-tokenizer, post-processor

function parseAddedTokens(value: unknown, vocab: Map<string, number>, where: string): AddedToken[] {
  if (!Array.isArray(value)) throw fail("added_tokens is not an array", where);
  return value.map((entry, i) => {
    const field = `added_tokens[${i}]`;
    if (!isObject(entry)) throw fail(`${field} is not an object`, where);
    if (!isTokenId(entry.id)) throw fail(`${field}.id is not a valid id`, where);
    if (typeof entry.content !== "string" || entry.content.length === 0) {
      throw fail(`${field}.content is not a non-empty string`, where);
    }
    const inVocab = vocab.get(entry.content);
    if (inVocab !== undefined && inVocab !== entry.id) {
      throw fail(
        `${field} gives ${JSON.stringify(entry.content)} id ${entry.id}, the vocabulary ${inVocab}`,
        where,
      );
    }
    const special = optionalBoolean(entry.special, `${field}.special`, where) ?? false;
    return {
      id: entry.id,
      content: entry.content,
      special,
      normalized: optionalBoolean(entry.normalized, `${field}.normalized`, where) ?? !special,
      lstrip: optionalBoolean(entry.lstrip, `${field}.lstrip`, where) ?? false,
      rstrip: optionalBoolean(entry.rstrip, `${field}.rstrip`, where) ?? false,
      singleWord: optionalBoolean(entry.single_word, `${field}.single_word`, where) ?? false,
    };
  });
}

function parseNormalizer(
  config: unknown,
  where: string,
  field = "normalizer",
): ((s: string) => string) | null {
  if (config === null) return null;
  if (!isObject(config)) throw fail(`${field} is not an object`, where);
  switch (config.type) {
    case "Sequence": {
      if (!Array.isArray(config.normalizers)) throw fail(`${field}.normalizers is not an array`, where);
      const steps = config.normalizers.map((c, i) => parseNormalizer(c, where, `${field}.normalizers[${i}]`));
      return (text) => steps.reduce((s, step) => (step ? step(s) : s), text);
    }
    case "Prepend": {
      const prefix = requiredString(config.prepend, `${field}.prepend`, where);
      return (text) => (text.length > 0 ? prefix + text : text);
    }
    case "Replace": {
      const pattern = stringPattern(config.pattern, `${field}.pattern`, where);
      const content = requiredString(config.content, `${field}.content`, where);
      return (text) => text.replaceAll(pattern, content);
    }
    default:
      throw fail(`${field} type ${JSON.stringify(config.type)} is not supported`, where);
  }
}

type PrependScheme = "always" | "never" | "first";

function parsePrependScheme(config: Record<string, unknown>, field: string, where: string): PrependScheme {
  const scheme = config.prepend_scheme;
  if (scheme === "always" || scheme === "never" || scheme === "first") return scheme;
  if (scheme !== undefined && scheme !== null) {
    throw fail(`${field}.prepend_scheme is not always/never/first`, where);
  }
  return (optionalBoolean(config.add_prefix_space, `${field}.add_prefix_space`, where) ?? true)
    ? "always"
    : "never";
}

function parsePreTokenizer(
  config: unknown,
  where: string,
): ((segment: string, atTextStart: boolean) => string[]) | null {
  if (config === null) return null;
  if (!isObject(config)) throw fail("pre_tokenizer is not an object", where);
  if (config.type !== "Metaspace") {
    throw fail(`pre_tokenizer type ${JSON.stringify(config.type)} is not supported (only Metaspace)`, where);
  }
  const replacement = singleChar(config.replacement, "pre_tokenizer.replacement", where);
  const scheme = parsePrependScheme(config, "pre_tokenizer", where);
  const split = optionalBoolean(config.split, "pre_tokenizer.split", where) ?? true;
  return (segment, atTextStart) => {
    let text = segment.replaceAll(" ", replacement);
    const prepend = scheme === "always" || (scheme === "first" && atTextStart);
    if (prepend && text.length > 0 && !text.startsWith(replacement)) text = replacement + text;
    if (!split) return [text];
    const words: string[] = [];
    let wordStart = 0;
    for (let i = text.indexOf(replacement, 1); i > 0; i = text.indexOf(replacement, i + replacement.length)) {
      words.push(text.slice(wordStart, i));
      wordStart = i;
    }
    words.push(text.slice(wordStart));
    return words;
  };
}

interface Template {
  prefixIds: number[] | null;
  suffixIds: number[] | null;
  firstSpecialId: number | undefined;
}

function parsePostProcessor(config: unknown, where: string): Template {
  if (config === null) return { prefixIds: null, suffixIds: null, firstSpecialId: undefined };
  if (!isObject(config)) throw fail("post_processor is not an object", where);
  if (config.type !== "TemplateProcessing") {
    throw fail(`post_processor type ${JSON.stringify(config.type)} is not supported`, where);
  }
  if (!Array.isArray(config.single)) throw fail("post_processor.single is not an array", where);
  const specials = isObject(config.special_tokens) ? config.special_tokens : {};
  const prefixIds: number[] = [];
  const suffixIds: number[] = [];
  let sawSequence = false;
  for (const [i, item] of config.single.entries()) {
    const field = `post_processor.single[${i}]`;
    if (isObject(item) && isObject(item.Sequence)) {
      sawSequence = true;
      continue;
    }
    const name = isObject(item) && isObject(item.SpecialToken) ? item.SpecialToken.id : undefined;
    const special = typeof name === "string" ? specials[name] : undefined;
    if (!isObject(special) || !Array.isArray(special.ids) || !special.ids.every(isTokenId)) {
      throw fail(`${field} is not a Sequence or a SpecialToken listed in special_tokens`, where);
    }
    (sawSequence ? suffixIds : prefixIds).push(...(special.ids as number[]));
  }
  if (!sawSequence) throw fail("post_processor.single has no Sequence", where);
  return { prefixIds, suffixIds, firstSpecialId: prefixIds[0] };
}

// ---------------------------------------------------------------------------------------------
// Decoder chain: the config of each step, mapped to the steps of bpe.ts

function parseDecoderStep(config: unknown, field: string, where: string): DecoderStep {
  if (!isObject(config)) throw fail(`${field} is not an object`, where);
  switch (config.type) {
    case "Sequence": {
      if (!Array.isArray(config.decoders)) throw fail(`${field}.decoders is not an array`, where);
      const steps = config.decoders.map((c, i) => parseDecoderStep(c, `${field}.decoders[${i}]`, where));
      return (tokens) => steps.reduce((list, step) => step(list), tokens);
    }
    case "Replace":
      return decoderSteps.replace(
        stringPattern(config.pattern, `${field}.pattern`, where),
        requiredString(config.content, `${field}.content`, where),
      );
    case "ByteFallback":
      return decoderSteps.byteFallback;
    case "Fuse":
      return decoderSteps.fuse;
    case "Strip":
      return decoderSteps.strip(
        singleChar(config.content, `${field}.content`, where),
        countField(config.start, `${field}.start`, where),
        countField(config.stop, `${field}.stop`, where),
      );
    case "Metaspace":
      return decoderSteps.metaspace(
        singleChar(config.replacement, `${field}.replacement`, where),
        parsePrependScheme(config, field, where) !== "never",
      );
    default:
      throw fail(`${field} type ${JSON.stringify(config.type)} is not supported`, where);
  }
}

// ---------------------------------------------------------------------------------------------
// JSON field helpers

function fail(why: string, where: string): TokenizerError {
  return new TokenizerError(`Cannot load tokenizer.json: ${why}`, where);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isTokenId(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 0 && value < MAX_TOKEN_ID;
}

function requiredString(value: unknown, field: string, where: string): string {
  if (typeof value !== "string") throw fail(`${field} is not a string`, where);
  return value;
}

function optionalString(value: unknown, field: string, where: string): string | null {
  if (value === undefined || value === null) return null;
  return requiredString(value, field, where);
}

function optionalBoolean(value: unknown, field: string, where: string): boolean | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "boolean") throw fail(`${field} is not a boolean`, where);
  return value;
}

function singleChar(value: unknown, field: string, where: string): string {
  if (typeof value !== "string" || Array.from(value).length !== 1) {
    throw fail(`${field} is not one character`, where);
  }
  return value;
}

function countField(value: unknown, field: string, where: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw fail(`${field} is not a non-negative integer`, where);
  }
  return value;
}

function stringPattern(value: unknown, field: string, where: string): string {
  if (isObject(value) && typeof value.String === "string" && value.String.length > 0) return value.String;
  throw fail(`${field} is not {"String": ...} (regex patterns are not supported)`, where);
}
