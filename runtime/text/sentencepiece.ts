/**
 * SentencePiece `tokenizer.model` reader (ModelProto, BPE models such as LLaMA-2's), encoding and
 * decoding with the same results as the Hugging Face `tokenizer.json` converted from the model.
 *
 * The file is a protobuf ModelProto, read here by a small bounds-checked reader (varints,
 * length-delimited fields, fixed32 floats): a truncated or hostile file gives a TokenizerError.
 * Fields used:
 * - `pieces` (1): `piece` (1, string), `score` (2, float), `type` (3: NORMAL 1, UNKNOWN 2,
 *   CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6).
 * - `trainer_spec` (2): `model_type` (3, must be BPE = 2), `treat_whitespace_as_suffix` (24, must
 *   be false), `byte_fallback` (35), `unk_id` (40), `bos_id` (41), `eos_id` (42).
 * - `normalizer_spec` (3): `precompiled_charsmap` (2, must be empty: identity normalization),
 *   `add_dummy_prefix` (3), `remove_extra_whitespaces` (4), `escape_whitespaces` (5); protobuf
 *   defaults (true) apply to absent fields.
 *
 * Encoding, as the Hugging Face conversion of a SentencePiece BPE model behaves:
 * 1. CONTROL, UNKNOWN and USER_DEFINED pieces (`<s>`, `</s>`, `<unk>`) are split out of the raw
 *    text (longest match), as the converted tokenizer's added tokens are.
 * 2. Each remaining segment is normalized: extra spaces removed if asked, a space prepended
 *    (dummy prefix), spaces written as "▁".
 * 3. BPE: characters to piece ids (unknown characters to `<0xNN>` byte pieces with byte fallback,
 *    else to `<unk>`), then the adjacent pair whose concatenation is the piece with the highest
 *    score merges first, the leftmost among equal scores. UNUSED pieces never take part.
 * Decoding: "▁" → space, byte pieces → UTF-8, one leading space dropped (with the dummy prefix).
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
  type Tokenizer,
} from "./bpe.ts";

/** SentencePiece.Type values of the ModelProto. */
const PieceType = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;
const BPE_MODEL_TYPE = 2;
const MODEL_TYPE_NAMES: Record<number, string> = { 1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR" };

interface Piece {
  piece: string;
  score: number;
  type: number;
}

interface ModelProto {
  pieces: Piece[];
  modelType: number;
  treatWhitespaceAsSuffix: boolean;
  byteFallback: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  charsmapBytes: number;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

/**
 * Builds a tokenizer from the bytes of a SentencePiece `tokenizer.model` with a BPE model.
 *
 * @param bytes the file's contents
 * @param where the file's name or URL, used in error messages
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSentencePieceModel } from "./sentencepiece.ts";
 * // ModelProto with pieces <unk>, <s>, </s>, ▁, h, i, ▁h, ▁hi; trainer_spec model_type BPE
 * const piece = (text: string, score: number, type: number) => {
 *   const utf8 = new TextEncoder().encode(text);
 *   const body = [0x0a, utf8.length, ...utf8, 0x15, ...new Uint8Array(new Float32Array([score]).buffer), 0x18, type];
 *   return [0x0a, body.length, ...body];
 * };
 * const bytes = new Uint8Array([
 *   ...piece("<unk>", 0, 2), ...piece("<s>", 0, 3), ...piece("</s>", 0, 3),
 *   ...piece("▁", -3, 1), ...piece("h", -4, 1), ...piece("i", -5, 1), ...piece("▁h", -1, 1), ...piece("▁hi", -2, 1),
 *   0x12, 2, 0x18, 2, // trainer_spec { model_type: BPE }
 *   0x1a, 2, 0x20, 0, // normalizer_spec { remove_extra_whitespaces: false }
 * ]);
 * const tokenizer = parseSentencePieceModel(bytes, "tokenizer.model");
 * assert.deepEqual(tokenizer.encode("hi"), [1, 7]); // <s>, ▁hi
 * assert.equal(tokenizer.decode([1, 7], { skipSpecialTokens: true }), "hi");
 * ```
 */
export function parseSentencePieceModel(bytes: Uint8Array, where: string): Tokenizer {
  return tokenizerFromProto(readModelProto(bytes, where), where);
}

/** A vocabulary of SentencePiece pieces (as GGUF's `tokenizer.ggml.*` keys hold one). */
export interface SentencePieceVocab {
  /** Piece text per id. */
  tokens: string[];
  /** Merge priority per id: the adjacent pair forming the highest-scored piece merges first. */
  scores: number[];
  /** SentencePiece.Type per id: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6. */
  types: number[];
  unkId: number;
  bosId: number;
  eosId: number;
  /** Prepend a space to the text (SentencePiece's add_dummy_prefix; default true). */
  addDummyPrefix?: boolean;
}

/**
 * Builds a BPE tokenizer from SentencePiece pieces held in memory (for example a GGUF file's
 * `tokenizer.ggml.tokens`, `scores` and `token_type`); encodes as {@link parseSentencePieceModel}
 * does for a `tokenizer.model` with the same pieces (byte fallback when byte pieces exist, no
 * extra-whitespace removal, as LLaMA's model).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { tokenizerFromPieces } from "./sentencepiece.ts";
 * const tokenizer = tokenizerFromPieces({
 *   tokens: ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi"],
 *   scores: [0, 0, 0, -3, -4, -5, -1, -2],
 *   types: [2, 3, 3, 1, 1, 1, 1, 1],
 *   unkId: 0, bosId: 1, eosId: 2,
 * }, "model.gguf");
 * assert.deepEqual(tokenizer.encode("hi"), [1, 7]);
 * ```
 */
export function tokenizerFromPieces(vocab: SentencePieceVocab, where: string): Tokenizer {
  const { tokens, scores, types } = vocab;
  if (scores.length !== tokens.length || types.length !== tokens.length) {
    throw fail(
      `${tokens.length} tokens, ${scores.length} scores and ${types.length} token types do not match`,
      where,
    );
  }
  const pieces = tokens.map((piece, id) => ({ piece, score: scores[id], type: types[id] }));
  return tokenizerFromProto({
    pieces,
    modelType: BPE_MODEL_TYPE,
    treatWhitespaceAsSuffix: false,
    byteFallback: types.includes(PieceType.byte),
    unkId: vocab.unkId,
    bosId: vocab.bosId,
    eosId: vocab.eosId,
    charsmapBytes: 0,
    addDummyPrefix: vocab.addDummyPrefix ?? true,
    removeExtraWhitespaces: false,
    escapeWhitespaces: true,
  }, where);
}

function tokenizerFromProto(proto: ModelProto, where: string): Tokenizer {
  validate(proto, where);
  const { pieces } = proto;

  const vocab = new Map<string, number>();
  const mergeable = new Map<string, number>();
  pieces.forEach(({ piece, type }, id) => {
    if (vocab.has(piece)) throw fail(`piece ${JSON.stringify(piece)} appears twice`, where);
    vocab.set(piece, id);
    if (type === PieceType.normal || type === PieceType.userDefined) mergeable.set(piece, id);
  });

  const addedTokens: AddedToken[] = [];
  pieces.forEach(({ piece, type }, id) => {
    if (type !== PieceType.control && type !== PieceType.unknown && type !== PieceType.userDefined) return;
    const special = type !== PieceType.userDefined;
    addedTokens.push({
      id,
      content: piece,
      special,
      normalized: false,
      lstrip: false,
      rstrip: false,
      singleWord: false,
    });
  });

  const escape = proto.escapeWhitespaces ? "▁" : " ";
  const normalize = (segment: string): string => {
    let text = segment;
    if (proto.removeExtraWhitespaces) text = text.replace(/^ +| +$/g, "").replace(/ {2,}/g, " ");
    if (proto.addDummyPrefix && text.length > 0) text = " " + text;
    return text.replaceAll(" ", escape);
  };

  const decodeSteps: DecoderStep[] = [];
  if (proto.escapeWhitespaces) decodeSteps.push(decoderSteps.replace("▁", " "));
  decodeSteps.push(decoderSteps.byteFallback, decoderSteps.fuse);
  if (proto.addDummyPrefix) decodeSteps.push(decoderSteps.strip(" ", 1, 0));

  return assembleTokenizer({
    where,
    addedTokens,
    normalize,
    preTokenize: null,
    tokenizeWord: bpeTokenizer(proto, mergeable, vocab),
    vocab,
    decodeTokens: decoderChain(decodeSteps),
    prefixIds: [proto.bosId],
    suffixIds: [],
    bosId: proto.bosId,
    eosId: proto.eosId,
    unkId: proto.unkId,
  });
}

/** The BPE model: characters to ids, then merges by the score of the merged piece. */
function bpeTokenizer(
  proto: ModelProto,
  mergeable: Map<string, number>,
  vocab: Map<string, number>,
): (word: string) => number[] {
  const { pieces, unkId } = proto;
  const byteIds: number[] = [];
  for (let b = 0; b < 256; b++) {
    const id = vocab.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    byteIds.push(id !== undefined && pieces[id].type === PieceType.byte ? id : -1);
  }
  const isMergeable = pieces.map(({ type }) => type === PieceType.normal || type === PieceType.userDefined);
  const table = {
    find: (left: number, right: number): number => {
      if (!isMergeable[left] || !isMergeable[right]) return -1;
      return mergeable.get(pieces[left].piece + pieces[right].piece) ?? -1;
    },
    rank: (merged: number) => -pieces[merged].score,
    result: (merged: number) => merged,
  };
  const encoder = new TextEncoder();
  return (word) => {
    const symbols: number[] = [];
    let pendingUnk = false;
    for (const char of word) {
      const id = mergeable.get(char);
      if (id !== undefined) {
        if (pendingUnk) symbols.push(unkId);
        pendingUnk = false;
        symbols.push(id);
        continue;
      }
      const bytes = proto.byteFallback ? Array.from(encoder.encode(char), (b) => byteIds[b]) : null;
      if (bytes && bytes.every((b) => b >= 0)) {
        if (pendingUnk) symbols.push(unkId);
        pendingUnk = false;
        symbols.push(...bytes);
        continue;
      }
      pendingUnk = true;
    }
    if (pendingUnk) symbols.push(unkId);
    return mergeSymbols(symbols, table);
  };
}

function validate(proto: ModelProto, where: string): void {
  const { pieces } = proto;
  if (pieces.length === 0) throw fail("the model has no pieces", where);
  if (proto.modelType !== BPE_MODEL_TYPE) {
    const name = MODEL_TYPE_NAMES[proto.modelType] ?? `${proto.modelType}`;
    throw fail(`model type ${name} is not supported (only BPE)`, where);
  }
  if (proto.treatWhitespaceAsSuffix) throw fail("treat_whitespace_as_suffix is not supported", where);
  if (proto.charsmapBytes > 0) {
    throw fail(
      "normalizer_spec has a precompiled charsmap (only identity normalization is supported)",
      where,
    );
  }
  pieces.forEach(({ piece, type, score }, id) => {
    if (piece.length === 0) throw fail(`piece ${id} is empty`, where);
    if (type < PieceType.normal || type > PieceType.byte) {
      throw fail(`piece ${id} has unknown type ${type}`, where);
    }
    if (!Number.isFinite(score)) throw fail(`piece ${id} has a non-finite score`, where);
  });
  const checkId = (id: number, name: string) => {
    if (id < 0 || id >= pieces.length) throw fail(`trainer_spec.${name} ${id} is not a piece id`, where);
  };
  checkId(proto.unkId, "unk_id");
  checkId(proto.bosId, "bos_id");
  checkId(proto.eosId, "eos_id");
  if (pieces[proto.unkId].type !== PieceType.unknown) {
    throw fail(`piece ${proto.unkId} (unk_id) is not of type UNKNOWN`, where);
  }
}

// ---------------------------------------------------------------------------------------------
// Protobuf

function readModelProto(bytes: Uint8Array, where: string): ModelProto {
  const proto: ModelProto = {
    pieces: [],
    modelType: 1,
    treatWhitespaceAsSuffix: false,
    byteFallback: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    charsmapBytes: 0,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  const reader = new ProtoReader(bytes, where);
  while (!reader.done()) {
    const { field, wire } = reader.key();
    if (field === 1) proto.pieces.push(readPiece(reader.message(wire, "pieces"), proto.pieces.length));
    else if (field === 2) readTrainerSpec(reader.message(wire, "trainer_spec"), proto);
    else if (field === 3) readNormalizerSpec(reader.message(wire, "normalizer_spec"), proto);
    else reader.skip(wire);
  }
  return proto;
}

function readPiece(reader: ProtoReader, index: number): Piece {
  const piece: Piece = { piece: "", score: 0, type: PieceType.normal };
  const field = `pieces[${index}]`;
  while (!reader.done()) {
    const key = reader.key();
    if (key.field === 1) piece.piece = reader.string(key.wire, `${field}.piece`);
    else if (key.field === 2) piece.score = reader.float32(key.wire, `${field}.score`);
    else if (key.field === 3) piece.type = reader.int32(key.wire, `${field}.type`);
    else reader.skip(key.wire);
  }
  return piece;
}

function readTrainerSpec(reader: ProtoReader, proto: ModelProto): void {
  while (!reader.done()) {
    const { field, wire } = reader.key();
    if (field === 3) proto.modelType = reader.int32(wire, "trainer_spec.model_type");
    else if (field === 24) {
      proto.treatWhitespaceAsSuffix = reader.bool(wire, "trainer_spec.treat_whitespace_as_suffix");
    } else if (field === 35) proto.byteFallback = reader.bool(wire, "trainer_spec.byte_fallback");
    else if (field === 40) proto.unkId = reader.int32(wire, "trainer_spec.unk_id");
    else if (field === 41) proto.bosId = reader.int32(wire, "trainer_spec.bos_id");
    else if (field === 42) proto.eosId = reader.int32(wire, "trainer_spec.eos_id");
    else reader.skip(wire);
  }
}

function readNormalizerSpec(reader: ProtoReader, proto: ModelProto): void {
  while (!reader.done()) {
    const { field, wire } = reader.key();
    if (field === 2) {
      proto.charsmapBytes = reader.message(wire, "normalizer_spec.precompiled_charsmap").length;
    } else if (field === 3) proto.addDummyPrefix = reader.bool(wire, "normalizer_spec.add_dummy_prefix");
    else if (field === 4) {
      proto.removeExtraWhitespaces = reader.bool(wire, "normalizer_spec.remove_extra_whitespaces");
    } else if (field === 5) proto.escapeWhitespaces = reader.bool(wire, "normalizer_spec.escape_whitespaces");
    else reader.skip(wire);
  }
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH = 2;
const WIRE_FIXED32 = 5;

/** Reads protobuf fields from `bytes[start, end)`; every read is bounds-checked. */
class ProtoReader {
  readonly #bytes: Uint8Array;
  readonly #where: string;
  readonly #end: number;
  #pos: number;

  constructor(bytes: Uint8Array, where: string, start = 0, end = bytes.length) {
    this.#bytes = bytes;
    this.#where = where;
    this.#pos = start;
    this.#end = end;
  }

  get length(): number {
    return this.#end - this.#pos;
  }

  done(): boolean {
    return this.#pos >= this.#end;
  }

  key(): { field: number; wire: number } {
    const at = this.#pos;
    const { value } = this.#varint("a field key");
    const field = Math.floor(value / 8);
    const wire = value % 8;
    if (field === 0 || field > 0x1fffffff) throw this.#fail(`invalid field number ${field} at byte ${at}`);
    return { field, wire };
  }

  /** A length-delimited field as a reader over its bytes. */
  message(wire: number, name: string): ProtoReader {
    this.#expect(wire, WIRE_LENGTH, name);
    const { value: length } = this.#varint(name);
    if (length > this.#end - this.#pos) throw this.#fail(`${name} runs past the end of the data (truncated)`);
    const reader = new ProtoReader(this.#bytes, this.#where, this.#pos, this.#pos + length);
    this.#pos += length;
    return reader;
  }

  string(wire: number, name: string): string {
    const reader = this.message(wire, name);
    try {
      return UTF8.decode(this.#bytes.subarray(reader.#pos, reader.#end));
    } catch {
      throw this.#fail(`${name} is not valid UTF-8`);
    }
  }

  float32(wire: number, name: string): number {
    this.#expect(wire, WIRE_FIXED32, name);
    this.#need(4, name);
    const view = new DataView(this.#bytes.buffer, this.#bytes.byteOffset + this.#pos, 4);
    this.#pos += 4;
    return view.getFloat32(0, true);
  }

  /** An int32 or enum varint (negative values take ten bytes, as protobuf writes them). */
  int32(wire: number, name: string): number {
    this.#expect(wire, WIRE_VARINT, name);
    return this.#varint(name).low32;
  }

  bool(wire: number, name: string): boolean {
    this.#expect(wire, WIRE_VARINT, name);
    return this.#varint(name).value !== 0;
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.#varint("an unknown field");
    else if (wire === WIRE_FIXED64) this.#skipBytes(8);
    else if (wire === WIRE_FIXED32) this.#skipBytes(4);
    else if (wire === WIRE_LENGTH) this.message(wire, "an unknown field");
    else throw this.#fail(`unsupported wire type ${wire} at byte ${this.#pos}`);
  }

  #skipBytes(count: number): void {
    this.#need(count, "an unknown field");
    this.#pos += count;
  }

  #varint(name: string): { value: number; low32: number } {
    let value = 0;
    let low32 = 0;
    for (let i = 0; i < 10; i++) {
      this.#need(1, name);
      const byte = this.#bytes[this.#pos++];
      if (i < 5) low32 |= (byte & 0x7f) << (7 * i);
      value += (byte & 0x7f) * 2 ** (7 * i);
      if (byte < 0x80) return { value, low32 };
    }
    throw this.#fail(`${name}: varint longer than 10 bytes`);
  }

  #need(count: number, name: string): void {
    if (this.#end - this.#pos < count) throw this.#fail(`${name} runs past the end of the data (truncated)`);
  }

  #expect(wire: number, expected: number, name: string): void {
    if (wire !== expected) throw this.#fail(`${name} has wire type ${wire}, expected ${expected}`);
  }

  #fail(why: string): TokenizerError {
    return fail(why, this.#where);
  }
}

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function fail(why: string, where: string): TokenizerError {
  return new TokenizerError(`Cannot load tokenizer.model: ${why}`, where);
}
