/**
 * The BPE engine both tokenizer readers share: the {@link Tokenizer} interface, the encode/decode
 * pipeline ({@link assembleTokenizer}: added-token splitting, normalizer, pre-tokenizer, model,
 * post-processor, decoder, in Hugging Face's order), the merge loop ({@link mergeSymbols}) and the
 * decoder steps ({@link decoderSteps}). It parses no file: `tokenizer_json.ts` and `sentencepiece.ts`
 * read their formats into {@link TokenizerStages} and call {@link assembleTokenizer}.
 * @module
 */
import { InputError } from "../core/errors.ts";

/** Text ↔ token ids for one checkpoint. */
export interface Tokenizer {
  /** Number of ids: the highest id plus one (model vocabulary and added tokens). */
  readonly vocabSize: number;
  /** Beginning-of-sequence id (`<s>`, 1 for LLaMA). */
  readonly bosId: number;
  /** End-of-sequence id (`</s>`, 2 for LLaMA): generation stops on it. */
  readonly eosId: number;
  /** Unknown-token id (`<unk>`, 0 for LLaMA), or -1 when the tokenizer has none. */
  readonly unkId: number;
  /**
   * Token ids of `text`. With `addSpecialTokens` (default true) the tokens the checkpoint adds
   * around a sequence are added: BOS first for LLaMA.
   */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /**
   * Text of `ids`. Special tokens are written out (`<s>`) unless `skipSpecialTokens` is set.
   * Throws InputError for an id outside the vocabulary.
   */
  decode(ids: ArrayLike<number>, options?: { skipSpecialTokens?: boolean }): string;
  /** Id of a token string (`"▁Hello"`, `"<0x0A>"`, `"</s>"`), or undefined. */
  tokenToId(token: string): number | undefined;
  /** Token string of an id, or undefined. */
  idToToken(id: number): string | undefined;
}

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

/**
 * Builds a {@link Tokenizer} from its stages: added-token splitting, normalizer, pre-tokenizer,
 * model, post-processor and decoder, run in Hugging Face's order.
 *
 * @param stages the parsed parts of a tokenizer file
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { assembleTokenizer } from "./bpe.ts";
 * const vocab = new Map([["<s>", 0], ["</s>", 1], ["a", 2], ["b", 3]]);
 * const tokenizer = assembleTokenizer({
 *   where: "inline", normalize: null, preTokenize: null, vocab,
 *   addedTokens: [],
 *   tokenizeWord: (word) => [...word].map((c) => vocab.get(c) ?? -1),
 *   decodeTokens: (tokens) => tokens.join(""),
 *   prefixIds: [0], suffixIds: [], bosId: 0, eosId: 1, unkId: -1,
 * });
 * assert.deepEqual(tokenizer.encode("ab"), [0, 2, 3]); // BOS, a, b
 * assert.equal(tokenizer.decode([2, 3]), "ab");
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
 * import assert from "node:assert/strict";
 * import { mergeSymbols } from "./bpe.ts";
 * // ids: a=0 b=1 c=2 ab=3 abc=4; rule 0: (a, b) → ab, rule 1: (ab, c) → abc
 * const rules = [[0, 1, 3], [3, 2, 4]];
 * const table = {
 *   find: (left: number, right: number) => rules.findIndex(([a, b]) => a === left && b === right),
 *   rank: (rule: number) => rule,
 *   result: (rule: number) => rules[rule][2],
 * };
 * assert.deepEqual(mergeSymbols([0, 1, 2, 0], table), [4, 0]); // abca → abc, a
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
// Decoder steps: each maps the list of token strings to a new list, as in Hugging Face

/** One step of a decoder chain: token strings → token strings. */
export type DecoderStep = (tokens: string[]) => string[];

/** The decoder steps a chain may hold, named as in Hugging Face's `decoders`. */
export interface DecoderSteps {
  /** Every occurrence of `pattern` in each token becomes `content`. */
  replace(pattern: string, content: string): DecoderStep;
  /** Runs of `<0xNN>` tokens become their UTF-8 text, or one U+FFFD per byte when invalid. */
  byteFallback: DecoderStep;
  /** All tokens joined into one. */
  fuse: DecoderStep;
  /** Up to `start` leading and `stop` trailing `content` characters removed from each token. */
  strip(content: string, start: number, stop: number): DecoderStep;
  /** `replacement` becomes a space, except in the first token when `dropFirst` (there it is removed). */
  metaspace(replacement: string, dropFirst: boolean): DecoderStep;
}

/**
 * The decoder steps, named as in Hugging Face's `decoders`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decoderChain, decoderSteps } from "./bpe.ts";
 * const { replace, byteFallback, fuse, strip, metaspace } = decoderSteps;
 * const decode = decoderChain([replace("▁", " "), byteFallback, fuse, strip(" ", 1, 0)]);
 * assert.equal(decode(["▁Hello", "<0x21>", "<0x0A>"]), "Hello!\n");
 * assert.deepEqual(byteFallback(["<0xFF>"]), ["\ufffd"]);
 * assert.deepEqual(metaspace("▁", true)(["▁a", "▁b"]), ["a", " b"]);
 * ```
 */
export const decoderSteps: DecoderSteps = {
  replace: (pattern, content) => (tokens) => tokens.map((t) => t.replaceAll(pattern, content)),
  byteFallback: decodeByteFallback,
  fuse: (tokens) => [tokens.join("")],
  strip: (content, start, stop) => (tokens) => tokens.map((t) => stripChars(t, content, start, stop)),
  metaspace: (replacement, dropFirst) => (tokens) =>
    tokens.map((t, i) => t.replaceAll(replacement, i === 0 && dropFirst ? "" : " ")),
};

/**
 * A decoder: the steps run in order, then the remaining token strings are joined.
 *
 * @param steps the chain, first step first
 * @returns token strings → text
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decoderChain, decoderSteps } from "./bpe.ts";
 * assert.equal(decoderChain([decoderSteps.replace("▁", " ")])(["▁a", "▁b"]), " a b");
 * ```
 */
export function decoderChain(steps: DecoderStep[]): (tokens: string[]) => string {
  return (tokens) => steps.reduce((list, step) => step(list), tokens).join("");
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
