/**
 * Hugging Face `tokenizer.json` reader for the BPE tokenizers of the LLaMA family (LLaMA-2, Vicuna,
 * Mistral), and the encode/decode pipeline that the SentencePiece reader shares.
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
import { InputError, TokenizerError } from "../core/errors.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** A token matched in the text before the model runs (`added_tokens` of tokenizer.json). */
export interface AddedToken {
  id: number;
  content: string;
  /** Special tokens are skipped by `decode(..., { skipSpecialTokens: true })`. */
  special: boolean;
  /** True: matched in the normalized text; false: matched in the raw text. */
  normalized: boolean;
  /** Swallow the whitespace on the left of the match. */
  lstrip: boolean;
  /** Swallow the whitespace on the right of the match. */
  rstrip: boolean;
  /** Match only where no word character touches the token. */
  singleWord: boolean;
}

/**
 * Merge rules of a BPE model, addressed by handles. `find` returns the handle of the rule that
 * merges the pair of ids, or -1; the rule with the lowest `rank` applies first.
 */
export interface MergeTable {
  find(leftId: number, rightId: number): number;
  rank(handle: number): number;
  result(handle: number): number;
}

/** The stages of one tokenizer, built from a tokenizer.json or a tokenizer.model. */
export interface TokenizerStages {
  /** The file the stages came from, for error messages. */
  where: string;
  addedTokens: AddedToken[];
  /** Normalizer of a text segment, or null. */
  normalize: ((segment: string) => string) | null;
  /** Splits a normalized segment into words; `atTextStart` says the segment begins the text. */
  preTokenize: ((segment: string, atTextStart: boolean) => string[]) | null;
  /** The model: ids of one word. */
  tokenizeWord: (word: string) => number[];
  /** Model vocabulary: token string → id. */
  vocab: Map<string, number>;
  /** Decoder chain: token strings → text. */
  decodeTokens: (tokens: string[]) => string;
  /** Ids `addSpecialTokens` puts before and after the text's ids. */
  prefixIds: number[];
  suffixIds: number[];
  bosId: number;
  eosId: number;
  unkId: number;
}

/** Ids above this are refused: they would only come from a corrupt or hostile file. */
const MAX_TOKEN_ID = 1 << 24;

/**
 * Builds a tokenizer from the text of a Hugging Face `tokenizer.json` (BPE model).
 *
 * @param text the file's contents
 * @param where the file's name or URL, used in error messages
 * @example
 * ```ts
 * import { parseTokenizerJson } from "./tokenizer_json.ts";
 * const tokenizer = parseTokenizerJson(JSON.stringify({
 *   added_tokens: [{ id: 1, content: "<s>", special: true }, { id: 2, content: "</s>", special: true }],
 *   pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
 *   decoder: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
 *   model: { type: "BPE", vocab: { "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "▁a": 5 }, merges: [["▁", "a"]] },
 * }), "tokenizer.json");
 * console.log(tokenizer.encode("a a")); // [1, 5, 5]
 * console.log(tokenizer.decode([1, 5, 5], { skipSpecialTokens: true })); // "a a"
 * ```
 */
export function parseTokenizerJson(text: string, where: string): Tokenizer {
  if (text.length > MAX_TOKENIZER_JSON_CHARS) {
    throw fail(`it has ${text.length} characters, more than ${MAX_TOKENIZER_JSON_CHARS}`, where);
  }
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
 * Builds a {@link Tokenizer} from its stages: added-token splitting, normalizer, pre-tokenizer,
 * model, post-processor and decoder, run in Hugging Face's order.
 *
 * @param stages the parsed parts of a tokenizer file
 * @example
 * ```ts
 * import { assembleTokenizer } from "./tokenizer_json.ts";
 * const vocab = new Map([["<s>", 0], ["</s>", 1], ["a", 2], ["b", 3]]);
 * const tokenizer = assembleTokenizer({
 *   where: "inline", normalize: null, preTokenize: null, vocab,
 *   addedTokens: [],
 *   tokenizeWord: (word) => [...word].map((c) => vocab.get(c) ?? -1),
 *   decodeTokens: (tokens) => tokens.join(""),
 *   prefixIds: [0], suffixIds: [], bosId: 0, eosId: 1, unkId: -1,
 * });
 * console.log(tokenizer.encode("ab")); // [0, 2, 3]
 * ```
 */
export function assembleTokenizer(stages: TokenizerStages): Tokenizer {
  return new PipelineTokenizer(stages);
}

/**
 * Merges adjacent symbols of one word until no rule applies: the pair with the lowest rank
 * merges first, the leftmost one among equal ranks. Returns the final ids. Runs in
 * O(n log n) with a heap over candidate pairs and a linked list over the symbols.
 *
 * @param ids the word's initial symbol ids (one per character or byte); not modified
 * @param table the merge rules
 * @example
 * ```ts
 * import { mergeSymbols } from "./tokenizer_json.ts";
 * // ids: a=0 b=1 c=2 ab=3 abc=4; rule 0: (a, b) → ab, rule 1: (ab, c) → abc
 * const rules = [[0, 1, 3], [3, 2, 4]];
 * const table = {
 *   find: (left: number, right: number) => rules.findIndex(([a, b]) => a === left && b === right),
 *   rank: (rule: number) => rule,
 *   result: (rule: number) => rules[rule][2],
 * };
 * console.log(mergeSymbols([0, 1, 2, 0], table)); // [4, 0]
 * ```
 */
export function mergeSymbols(ids: ArrayLike<number>, table: MergeTable): number[] {
  const count = ids.length;
  if (count < 2) return Array.from(ids);
  const symbol = Int32Array.from(ids);
  const next = new Int32Array(count);
  const prev = new Int32Array(count);
  const dead = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    next[i] = i + 1 < count ? i + 1 : -1;
    prev[i] = i - 1;
  }
  const queue = new CandidateQueue();
  const propose = (left: number, right: number) => {
    const handle = table.find(symbol[left], symbol[right]);
    if (handle >= 0) queue.push(table.rank(handle), left, handle);
  };
  for (let i = 0; i + 1 < count; i++) propose(i, i + 1);
  while (queue.size > 0) {
    const { left, handle } = queue.pop();
    if (dead[left]) continue;
    const right = next[left];
    if (right < 0 || table.find(symbol[left], symbol[right]) !== handle) continue;
    symbol[left] = table.result(handle);
    dead[right] = 1;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    if (prev[left] >= 0) propose(prev[left], left);
    if (next[left] >= 0) propose(left, next[left]);
  }
  const merged: number[] = [];
  for (let i = 0; i >= 0; i = next[i]) merged.push(symbol[i]);
  return merged;
}

/**
 * Builds a decoder chain from the `decoder` object of a tokenizer.json (null: tokens joined by
 * spaces, as Hugging Face does without a decoder).
 *
 * @param config the `decoder` value
 * @param where the file, for error messages
 * @example
 * ```ts
 * import { decoderFromConfig } from "./tokenizer_json.ts";
 * const decode = decoderFromConfig({ type: "Sequence", decoders: [
 *   { type: "Replace", pattern: { String: "▁" }, content: " " },
 *   { type: "ByteFallback" }, { type: "Fuse" }, { type: "Strip", content: " ", start: 1, stop: 0 },
 * ] }, "tokenizer.json");
 * console.log(decode(["▁Hello", "<0x21>", "<0x0A>"])); // "Hello!\n"
 * ```
 */
export function decoderFromConfig(config: unknown, where: string): (tokens: string[]) => string {
  if (config === null) return (tokens) => tokens.join(" ");
  const step = parseDecoderStep(config, "decoder", where);
  return (tokens) => step(tokens).join("");
}

// ---------------------------------------------------------------------------------------------
// The tokenizer

class PipelineTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly unkId: number;
  readonly #stages: TokenizerStages;
  readonly #rawMatcher: AddedTokenMatcher;
  readonly #normalizedMatcher: AddedTokenMatcher;
  readonly #addedById = new Map<number, AddedToken>();
  readonly #addedByContent = new Map<string, AddedToken>();
  readonly #modelTokens = new Map<number, string>();

  constructor(stages: TokenizerStages) {
    this.#stages = stages;
    this.bosId = stages.bosId;
    this.eosId = stages.eosId;
    this.unkId = stages.unkId;
    let maxId = -1;
    for (const [token, id] of stages.vocab) {
      this.#modelTokens.set(id, token);
      maxId = Math.max(maxId, id);
    }
    for (const token of stages.addedTokens) {
      this.#addedById.set(token.id, token);
      this.#addedByContent.set(token.content, token);
      maxId = Math.max(maxId, token.id);
    }
    this.vocabSize = maxId + 1;
    const normalizedPattern = (token: AddedToken) => stages.normalize?.(token.content) ?? token.content;
    this.#rawMatcher = new AddedTokenMatcher(
      stages.addedTokens.filter((t) => !t.normalized),
      (t) => t.content,
    );
    this.#normalizedMatcher = new AddedTokenMatcher(
      stages.addedTokens.filter((t) => t.normalized),
      normalizedPattern,
    );
  }

  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    const ids: number[] = addSpecialTokens ? [...this.#stages.prefixIds] : [];
    for (const segment of this.#rawMatcher.split(text)) {
      if (segment.token) {
        ids.push(segment.token.id);
        continue;
      }
      const normalized = this.#stages.normalize ? this.#stages.normalize(segment.text) : segment.text;
      for (const piece of this.#normalizedMatcher.split(normalized)) {
        if (piece.token) {
          ids.push(piece.token.id);
          continue;
        }
        const atTextStart = segment.start === 0 && piece.start === 0;
        const words = this.#stages.preTokenize
          ? this.#stages.preTokenize(piece.text, atTextStart)
          : [piece.text];
        for (const word of words) {
          if (word.length === 0) continue;
          for (const id of this.#stages.tokenizeWord(word)) ids.push(id);
        }
      }
    }
    if (addSpecialTokens) ids.push(...this.#stages.suffixIds);
    return ids;
  }

  decode(ids: ArrayLike<number>, options: { skipSpecialTokens?: boolean } = {}): string {
    const skipSpecialTokens = options.skipSpecialTokens ?? false;
    const tokens: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      const added = this.#addedById.get(id);
      const token = added?.content ?? this.#modelTokens.get(id);
      if (token === undefined) {
        throw new InputError(
          `Cannot decode token id ${id}: not in the vocabulary of ${this.#stages.where} (${this.vocabSize} ids)`,
          `ids[${i}]`,
        );
      }
      if (skipSpecialTokens && this.#addedByContent.get(token)?.special) continue;
      tokens.push(token);
    }
    return this.#stages.decodeTokens(tokens);
  }

  tokenToId(token: string): number | undefined {
    return this.#addedByContent.get(token)?.id ?? this.#stages.vocab.get(token);
  }

  idToToken(id: number): string | undefined {
    return this.#addedById.get(id)?.content ?? this.#modelTokens.get(id);
  }
}

/** One piece of a split text: plain text, or an added token. `start` is its offset in the text. */
interface TextPiece {
  text: string;
  start: number;
  token?: AddedToken;
}

interface TrieNode {
  children: Map<string, TrieNode>;
  token: AddedToken | null;
}

/** Finds added tokens in a text: leftmost match first, the longest one at a position. */
class AddedTokenMatcher {
  readonly #root: TrieNode = { children: new Map(), token: null };
  readonly #empty: boolean;

  constructor(tokens: AddedToken[], patternOf: (token: AddedToken) => string) {
    let empty = true;
    for (const token of tokens) {
      const pattern = patternOf(token);
      if (pattern.length === 0) continue;
      let node = this.#root;
      for (const unit of pattern) {
        let child = node.children.get(unit);
        if (!child) {
          child = { children: new Map(), token: null };
          node.children.set(unit, child);
        }
        node = child;
      }
      node.token ??= token;
      empty = false;
    }
    this.#empty = empty;
  }

  split(text: string): TextPiece[] {
    if (this.#empty || text.length === 0) return [{ text, start: 0 }];
    const pieces: TextPiece[] = [];
    let pieceStart = 0;
    let i = 0;
    while (i < text.length) {
      const match = this.#longestAt(text, i);
      if (!match) {
        i++;
        continue;
      }
      let start = i;
      let stop = match.end;
      const token = match.token;
      i = stop;
      if (token.singleWord && !isSingleWord(text, start, stop)) continue;
      if (token.lstrip) start = Math.max(pieceStart, whitespaceStartBefore(text, start));
      if (token.rstrip) stop = whitespaceEndAfter(text, stop);
      if (pieceStart < start) pieces.push({ text: text.slice(pieceStart, start), start: pieceStart });
      pieces.push({ text: text.slice(start, stop), start, token });
      pieceStart = stop;
      i = stop;
    }
    if (pieceStart < text.length) pieces.push({ text: text.slice(pieceStart), start: pieceStart });
    return pieces;
  }

  #longestAt(text: string, from: number): { token: AddedToken; end: number } | null {
    let node: TrieNode | undefined = this.#root;
    let best: { token: AddedToken; end: number } | null = null;
    for (let j = from; j < text.length; j++) {
      node = node.children.get(text[j]);
      if (!node) break;
      if (node.token) best = { token: node.token, end: j + 1 };
    }
    return best;
  }
}

const WORD_CHAR = /[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]/u;
const WHITESPACE = /\p{White_Space}/u;

function isSingleWord(text: string, start: number, stop: number): boolean {
  const before = start > 0 ? String.fromCodePoint(codePointBefore(text, start)) : "";
  const after = stop < text.length ? String.fromCodePoint(text.codePointAt(stop)!) : "";
  return !WORD_CHAR.test(before) && !WORD_CHAR.test(after);
}

function codePointBefore(text: string, index: number): number {
  const low = text.charCodeAt(index - 1);
  if (index >= 2 && low >= 0xdc00 && low <= 0xdfff) {
    const high = text.charCodeAt(index - 2);
    if (high >= 0xd800 && high <= 0xdbff) return text.codePointAt(index - 2)!;
  }
  return low;
}

function whitespaceStartBefore(text: string, index: number): number {
  let start = index;
  while (start > 0 && WHITESPACE.test(text[start - 1])) start--;
  return start;
}

function whitespaceEndAfter(text: string, index: number): number {
  let end = index;
  while (end < text.length && WHITESPACE.test(text[end])) end++;
  return end;
}

// ---------------------------------------------------------------------------------------------
// Heap of merge candidates, ordered by (rank, left position)

class CandidateQueue {
  #ranks: number[] = [];
  #lefts: number[] = [];
  #handles: number[] = [];

  get size(): number {
    return this.#ranks.length;
  }

  push(rank: number, left: number, handle: number): void {
    let i = this.#ranks.length;
    this.#ranks.push(rank);
    this.#lefts.push(left);
    this.#handles.push(handle);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(i, parent)) break;
      this.#swap(i, parent);
      i = parent;
    }
  }

  pop(): { left: number; handle: number } {
    const top = { left: this.#lefts[0], handle: this.#handles[0] };
    const last = this.#ranks.length - 1;
    this.#swap(0, last);
    this.#ranks.pop();
    this.#lefts.pop();
    this.#handles.pop();
    let i = 0;
    for (;;) {
      const leftChild = 2 * i + 1;
      const rightChild = leftChild + 1;
      let smallest = i;
      if (leftChild < last && this.#before(leftChild, smallest)) smallest = leftChild;
      if (rightChild < last && this.#before(rightChild, smallest)) smallest = rightChild;
      if (smallest === i) break;
      this.#swap(i, smallest);
      i = smallest;
    }
    return top;
  }

  #before(a: number, b: number): boolean {
    const ranks = this.#ranks;
    return ranks[a] < ranks[b] || (ranks[a] === ranks[b] && this.#lefts[a] < this.#lefts[b]);
  }

  #swap(a: number, b: number): void {
    const ranks = this.#ranks, lefts = this.#lefts, handles = this.#handles;
    const rank = ranks[a], left = lefts[a], handle = handles[a];
    ranks[a] = ranks[b];
    lefts[a] = lefts[b];
    handles[a] = handles[b];
    ranks[b] = rank;
    lefts[b] = left;
    handles[b] = handle;
  }
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
  depth = 0,
): ((s: string) => string) | null {
  if (config === null) return null;
  if (!isObject(config)) throw fail(`${field} is not an object`, where);
  checkDepth(depth, field, where);
  switch (config.type) {
    case "Sequence": {
      if (!Array.isArray(config.normalizers)) throw fail(`${field}.normalizers is not an array`, where);
      const steps = config.normalizers.map((c, i) =>
        parseNormalizer(c, where, `${field}.normalizers[${i}]`, depth + 1)
      );
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
// Decoders: each step maps the list of token strings to a new list, as in Hugging Face

type DecoderStep = (tokens: string[]) => string[];

function parseDecoderStep(config: unknown, field: string, where: string, depth = 0): DecoderStep {
  if (!isObject(config)) throw fail(`${field} is not an object`, where);
  checkDepth(depth, field, where);
  switch (config.type) {
    case "Sequence": {
      if (!Array.isArray(config.decoders)) throw fail(`${field}.decoders is not an array`, where);
      const steps = config.decoders.map((c, i) =>
        parseDecoderStep(c, `${field}.decoders[${i}]`, where, depth + 1)
      );
      return (tokens) => steps.reduce((list, step) => step(list), tokens);
    }
    case "Replace": {
      const pattern = stringPattern(config.pattern, `${field}.pattern`, where);
      const content = requiredString(config.content, `${field}.content`, where);
      return (tokens) => tokens.map((t) => t.replaceAll(pattern, content));
    }
    case "ByteFallback":
      return decodeByteFallback;
    case "Fuse":
      return (tokens) => [tokens.join("")];
    case "Strip": {
      const content = singleChar(config.content, `${field}.content`, where);
      const start = countField(config.start, `${field}.start`, where);
      const stop = countField(config.stop, `${field}.stop`, where);
      return (tokens) => tokens.map((t) => stripChars(t, content, start, stop));
    }
    case "Metaspace": {
      const replacement = singleChar(config.replacement, `${field}.replacement`, where);
      const dropFirst = parsePrependScheme(config, field, where) !== "never";
      return (tokens) =>
        tokens.map((
          t,
          i,
        ) => (i === 0 && dropFirst ? t.replaceAll(replacement, "") : t.replaceAll(replacement, " ")));
    }
    default:
      throw fail(`${field} type ${JSON.stringify(config.type)} is not supported`, where);
  }
}

const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const STRICT_UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Runs of `<0xNN>` tokens become their UTF-8 text, or one U+FFFD per byte when invalid. */
function decodeByteFallback(tokens: string[]): string[] {
  const out: string[] = [];
  const pending: number[] = [];
  const flush = () => {
    if (pending.length === 0) return;
    try {
      out.push(STRICT_UTF8.decode(Uint8Array.from(pending)));
    } catch {
      for (let i = 0; i < pending.length; i++) out.push("\ufffd");
    }
    pending.length = 0;
  };
  for (const token of tokens) {
    const match = BYTE_TOKEN.exec(token);
    if (match) {
      pending.push(parseInt(match[1], 16));
      continue;
    }
    flush();
    out.push(token);
  }
  flush();
  return out;
}

function stripChars(token: string, content: string, start: number, stop: number): string {
  const chars = Array.from(token);
  let begin = 0;
  while (begin < start && begin < chars.length && chars[begin] === content) begin++;
  let end = chars.length;
  while (chars.length - end < stop && end > begin && chars[end - 1] === content) end--;
  return chars.slice(begin, end).join("");
}

// ---------------------------------------------------------------------------------------------
// JSON field helpers

/** Deepest nesting of Sequence normalizers or decoders accepted (real files nest 1 deep). */
const MAX_NESTING = 16;

/** Longest tokenizer.json accepted, in characters (real ones are 2–35 MB). */
const MAX_TOKENIZER_JSON_CHARS = 256 * 1024 * 1024;

function checkDepth(depth: number, field: string, where: string): void {
  if (depth > MAX_NESTING) throw fail(`${field} nests Sequences more than ${MAX_NESTING} deep`, where);
}

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
