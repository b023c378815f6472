/**
 * WordNet 3.0 reader for METEOR's synonym stage: reads the standard database files (`index.noun`,
 * `index.verb`, `index.adj`, `index.adv`, the matching `data.*` files and the `*.exc` exception lists,
 * as Debian's `wordnet-base` installs them under /usr/share/wordnet) and answers the two questions
 * METEOR asks, exactly as NLTK 3.8's `WordNetCorpusReader` answers them:
 *
 * - {@link WordNet.morphy}: NLTK's `_morphy(form, pos)`: the exception list first, then the suffix
 *   substitutions applied once, then repeatedly until some form is in the index; every base form found
 *   in the index for that part of speech, first-seen order, no duplicates.
 * - {@link WordNet.synsets}: NLTK's `synsets(word)`: lower-cases the word, then for each part of speech
 *   in the order noun, verb, adjective, adverb, each morphy form, each synset offset of that form in the
 *   index: the synset read from the data file at that byte offset. Lemma names keep the case of the data
 *   file ("Canis_familiaris") with adjective markers such as "(a)" removed.
 *
 * The index and exception files are parsed once at load; data-file lines are parsed on first use and
 * cached. Loads are cached per directory ({@link loadWordNet}, {@link loadWordNetSync}). File access only
 * in the two load functions; {@link WordNet} itself works on bytes already read.
 * @module
 */
import { resolve } from "node:path";
import { InputError } from "../core/errors.ts";

/** A WordNet part of speech: noun, verb, adjective, adjective satellite, adverb. */
export type WordNetPos = "n" | "v" | "a" | "s" | "r";

/** The parts of speech that own database files, in the order NLTK's `synsets()` visits them. */
export type WordNetFilePos = "n" | "v" | "a" | "r";

/** Where Debian's `wordnet-base` installs the database. */
export const DEFAULT_WORDNET_DIR = "/usr/share/wordnet";

/** NLTK's `POS_LIST`: the order in which `synsets(word)` visits the parts of speech. */
export const WORDNET_POS_ORDER: readonly WordNetFilePos[] = ["n", "v", "a", "r"];

/** The suffix of each part of speech's file names (`index.noun`, `data.noun`, `noun.exc`, ...). */
const FILE_SUFFIX: Readonly<Record<WordNetFilePos, string>> = { n: "noun", v: "verb", a: "adj", r: "adv" };

/** Morphy's suffix substitutions, [old ending, new ending], in NLTK's order. */
const SUBSTITUTIONS: Readonly<Record<WordNetPos, readonly (readonly [string, string])[]>> = {
  n: [["s", ""], ["ses", "s"], ["ves", "f"], ["xes", "x"], ["zes", "z"], ["ches", "ch"], ["shes", "sh"], [
    "men",
    "man",
  ], ["ies", "y"]],
  v: [["s", ""], ["ies", "y"], ["es", "e"], ["es", ""], ["ed", "e"], ["ed", ""], ["ing", "e"], ["ing", ""]],
  a: [["er", ""], ["est", ""], ["er", "e"], ["est", "e"]],
  s: [["er", ""], ["est", ""], ["er", "e"], ["est", "e"]],
  r: [],
};

/** One synset as METEOR needs it. */
export interface Synset {
  /** The part of speech written in the data line: n, v, a, s (satellite) or r. */
  readonly pos: string;
  /** Byte offset of the synset's line in its data file (its identifier within that file). */
  readonly offset: number;
  /** Lemma names in data-file order and case, multi-word names joined by "_", markers like "(p)" removed. */
  readonly lemmaNames: readonly string[];
}

/** The raw database files of one WordNet, already read (texts of index and exception files, data bytes). */
export interface WordNetFiles {
  /** Bytes of `index.noun`, `index.verb`, `index.adj`, `index.adv`. */
  readonly index: Readonly<Record<WordNetFilePos, Uint8Array>>;
  /** Text of `noun.exc`, `verb.exc`, `adj.exc`, `adv.exc`. */
  readonly exceptions: Readonly<Record<WordNetFilePos, string>>;
  /** Bytes of `data.noun`, `data.verb`, `data.adj`, `data.adv` (synset offsets are byte offsets). */
  readonly data: Readonly<Record<WordNetFilePos, Uint8Array>>;
}

function filePosOf(pos: WordNetPos): WordNetFilePos {
  return pos === "s" ? "a" : pos;
}

/** The characters Python's `str.split()` splits on. */
function isPythonSpace(code: number): boolean {
  return code === 32 || (code >= 9 && code <= 13) || (code >= 28 && code <= 31) || code === 0x85 ||
    code === 0xa0 || code === 0x1680 || (code >= 0x2000 && code <= 0x200a) || code === 0x2028 ||
    code === 0x2029 || code === 0x202f || code === 0x205f || code === 0x3000;
}

/** Splits a line on runs of whitespace, like Python's `str.split()`. */
function splitWhitespace(line: string): string[] {
  const tokens: string[] = [];
  let start = -1;
  for (let i = 0; i <= line.length; i++) {
    const space = i === line.length || isPythonSpace(line.charCodeAt(i));
    if (space && start >= 0) {
      tokens.push(line.slice(start, i));
      start = -1;
    } else if (!space && start < 0) {
      start = i;
    }
  }
  return tokens;
}

/** Python's `int(text)` for the plain decimal numbers of the database; NaN for anything else. */
function parseDecimal(text: string | undefined): number {
  if (text === undefined || text.length === 0) return NaN;
  let value = 0;
  for (let i = 0; i < text.length; i++) {
    const digit = text.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) return NaN;
    value = value * 10 + digit;
  }
  return value;
}

/** Python's `int(text, 16)` for the hexadecimal counts of the data files; NaN for anything else. */
function parseHex(text: string | undefined): number {
  return text !== undefined && /^[0-9a-fA-F]+$/.test(text) ? parseInt(text, 16) : NaN;
}

/** Lemma names with an adjective marker: `name(marker)`, split as NLTK's `(.*?)(\(.*\))?$` does. */
const SYNTACTIC_MARKER = /^(.*?)(\(.*\))?$/;

/** True for the ASCII bytes Python's `str.split()` treats as whitespace. */
function isSpaceByte(byte: number): boolean {
  return byte < 128 && isPythonSpace(byte);
}

/** Byte order of `bytes[start, end)` against `key`: negative, zero or positive. */
function compareBytes(bytes: Uint8Array, start: number, end: number, key: Uint8Array): number {
  const length = Math.min(end - start, key.length);
  for (let i = 0; i < length; i++) {
    const difference = bytes[start + i] - key[i];
    if (difference !== 0) return difference;
  }
  return end - start - key.length;
}

/**
 * One index file (`index.noun`, ...): lemma → synset offsets, looked up by binary search over the
 * file's lines when the lemmas are strictly sorted in byte order (as WordNet writes them), through a
 * map otherwise (a repeated lemma then keeps its last line, as NLTK's dictionary does). Lines starting
 * with a space (the licence) and blank lines are skipped. Each looked-up line is parsed once.
 */
class LemmaIndex {
  readonly #bytes: Uint8Array;
  readonly #where: string;
  readonly #pos: WordNetFilePos;
  /** Byte offsets of the lemma lines, in file order; each line's lemma ends at `#keyEnds[i]`. */
  readonly #lineStarts: Uint32Array;
  readonly #keyEnds: Uint32Array;
  /** Lemma → line start, only when the file is not strictly sorted. */
  readonly #unsorted: Map<string, number> | null;
  readonly #parsed = new Map<string, readonly number[] | null>();
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();

  constructor(bytes: Uint8Array, where: string, pos: WordNetFilePos) {
    this.#bytes = bytes;
    this.#where = where;
    this.#pos = pos;
    const starts: number[] = [];
    const keyEnds: number[] = [];
    let sorted = true;
    let position = 0;
    while (position < bytes.length) {
      let lineEnd = bytes.indexOf(10, position);
      if (lineEnd < 0) lineEnd = bytes.length;
      if (bytes[position] !== 32 && position < lineEnd) {
        let keyStart = position;
        while (keyStart < lineEnd && isSpaceByte(bytes[keyStart])) keyStart += 1;
        if (keyStart < lineEnd) {
          let keyEnd = keyStart;
          while (keyEnd < lineEnd && !isSpaceByte(bytes[keyEnd])) keyEnd += 1;
          if (starts.length > 0 && sorted) {
            const previous = bytes.subarray(starts[starts.length - 1], keyEnds[keyEnds.length - 1]);
            if (compareBytes(bytes, keyStart, keyEnd, previous) <= 0) sorted = false;
          }
          starts.push(keyStart);
          keyEnds.push(keyEnd);
        }
      }
      position = lineEnd + 1;
    }
    this.#lineStarts = Uint32Array.from(starts);
    this.#keyEnds = Uint32Array.from(keyEnds);
    this.#unsorted = null;
    if (!sorted) {
      const byLemma = new Map<string, number>();
      for (let i = 0; i < starts.length; i++) {
        byLemma.set(this.#decoder.decode(bytes.subarray(starts[i], keyEnds[i])), starts[i]);
      }
      this.#unsorted = byLemma;
    }
  }

  /** True when the lemma has a line (cheap: no line parsing). */
  has(lemma: string): boolean {
    const parsed = this.#parsed.get(lemma);
    if (parsed !== undefined) return parsed !== null;
    return this.#find(lemma) >= 0;
  }

  /** The synset offsets of a lemma, in index order; undefined when the lemma has no line. */
  get(lemma: string): readonly number[] | undefined {
    let parsed = this.#parsed.get(lemma);
    if (parsed === undefined) {
      const start = this.#find(lemma);
      parsed = start < 0 ? null : this.#parseLine(start);
      this.#parsed.set(lemma, parsed);
    }
    return parsed ?? undefined;
  }

  #find(lemma: string): number {
    if (this.#unsorted !== null) return this.#unsorted.get(lemma) ?? -1;
    const key = this.#encoder.encode(lemma);
    let low = 0;
    let high = this.#lineStarts.length - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      const order = compareBytes(this.#bytes, this.#lineStarts[middle], this.#keyEnds[middle], key);
      if (order === 0) return this.#lineStarts[middle];
      if (order < 0) low = middle + 1;
      else high = middle - 1;
    }
    return -1;
  }

  /**
   * Parses `lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...`.
   * Throws {@link InputError} naming the file and byte offset when the line is malformed.
   */
  #parseLine(start: number): readonly number[] {
    let end = this.#bytes.indexOf(10, start);
    if (end < 0) end = this.#bytes.length;
    const tokens = splitWhitespace(this.#decoder.decode(this.#bytes.subarray(start, end)).trim());
    const fail = (why: string) =>
      new InputError(`Cannot read WordNet index: the line at byte ${start} ${why}`, this.#where);
    if (tokens[1] !== this.#pos) throw fail(`has part of speech "${tokens[1]}", expected "${this.#pos}"`);
    const synsetCount = parseDecimal(tokens[2]);
    if (!(synsetCount > 0)) throw fail(`has synset count "${tokens[2]}", expected a positive integer`);
    const pointerCount = parseDecimal(tokens[3]);
    if (Number.isNaN(pointerCount)) throw fail(`has pointer count "${tokens[3]}", expected an integer`);
    const senseCount = parseDecimal(tokens[4 + pointerCount]);
    if (senseCount !== synsetCount) {
      throw fail(`has sense count "${tokens[4 + pointerCount]}" unlike its synset count ${synsetCount}`);
    }
    const offsets: number[] = [];
    for (let i = 0; i < synsetCount; i++) {
      const written = tokens[6 + pointerCount + i];
      const offset = parseDecimal(written);
      if (Number.isNaN(offset)) throw fail(`has synset offset "${written}", expected an integer`);
      offsets.push(offset);
    }
    return offsets;
  }
}

/** Parses one exception list: inflected form → base forms (a later line for the same form wins). */
function parseExceptions(text: string): Map<string, string[]> {
  const exceptions = new Map<string, string[]>();
  for (const line of text.split("\n")) {
    const terms = splitWhitespace(line);
    if (terms.length > 0) exceptions.set(terms[0], terms.slice(1));
  }
  return exceptions;
}

/** A loaded WordNet 3.0 database: index, exception lists and data files, with a synset cache. */
export class WordNet {
  /** The directory the database was read from (absolute), or a label for files passed in. */
  readonly dir: string;
  readonly #indexes = new Map<WordNetPos, LemmaIndex>();
  readonly #exceptions = new Map<WordNetPos, Map<string, string[]>>();
  readonly #data: Readonly<Record<WordNetFilePos, Uint8Array>>;
  readonly #synsetCache = new Map<WordNetFilePos, Map<number, Synset>>();
  readonly #decoder = new TextDecoder();

  /**
   * Builds a WordNet from database files already read; most callers use {@link loadWordNet} instead.
   * Throws {@link InputError} naming the file and line when an index line is malformed.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { WordNet } from "./wordnet.ts";
   * const dir = "/usr/share/wordnet";
   * const bytes = (name: string) => Deno.readFileSync(`${dir}/${name}`);
   * const text = (name: string) => Deno.readTextFileSync(`${dir}/${name}`);
   * const wordnet = new WordNet(dir, {
   *   index: { n: bytes("index.noun"), v: bytes("index.verb"), a: bytes("index.adj"), r: bytes("index.adv") },
   *   exceptions: { n: text("noun.exc"), v: text("verb.exc"), a: text("adj.exc"), r: text("adv.exc") },
   *   data: { n: bytes("data.noun"), v: bytes("data.verb"), a: bytes("data.adj"), r: bytes("data.adv") },
   * });
   * assert.deepEqual(wordnet.morphy("churches", "n"), ["church"]);
   * ```
   */
  constructor(dir: string, files: WordNetFiles) {
    this.dir = dir;
    for (const pos of WORDNET_POS_ORDER) {
      this.#indexes.set(pos, new LemmaIndex(files.index[pos], `${dir}/index.${FILE_SUFFIX[pos]}`, pos));
      this.#exceptions.set(pos, parseExceptions(files.exceptions[pos]));
    }
    this.#indexes.set("s", this.#indexes.get("a")!);
    this.#exceptions.set("s", this.#exceptions.get("a")!);
    this.#data = files.data;
  }

  /**
   * The base forms of `form` for one part of speech, as NLTK's `_morphy(form, pos)` finds them: when
   * the form is in the exception list, the form and its listed bases that are in the index; otherwise
   * the form and its one-step substitutions that are in the index, or failing that the first round of
   * repeated substitutions that reaches the index. `form` is used as given (no lower-casing).
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadWordNetSync } from "./wordnet.ts";
   * const wordnet = loadWordNetSync();
   * assert.deepEqual(wordnet.morphy("aardwolves", "n"), ["aardwolf"]); // from noun.exc
   * assert.deepEqual(wordnet.morphy("book", "a"), []); // not an adjective
   * ```
   */
  morphy(form: string, pos: WordNetPos): string[] {
    const inIndex = this.#indexes.get(pos);
    const substitutions = SUBSTITUTIONS[pos];
    const applyRules = (forms: readonly string[]): string[] => {
      const out: string[] = [];
      for (const base of forms) {
        for (const [oldEnding, newEnding] of substitutions) {
          if (base.endsWith(oldEnding)) out.push(base.slice(0, base.length - oldEnding.length) + newEnding);
        }
      }
      return out;
    };
    const filterForms = (forms: readonly string[]): string[] => {
      const result: string[] = [];
      for (const candidate of forms) {
        if (inIndex?.has(candidate) && !result.includes(candidate)) result.push(candidate);
      }
      return result;
    };
    const listed = this.#exceptions.get(pos)?.get(form);
    if (listed !== undefined) return filterForms([form, ...listed]);
    let forms = applyRules([form]);
    const results = filterForms([form, ...forms]);
    if (results.length > 0) return results;
    while (forms.length > 0) {
      forms = applyRules(forms);
      const found = filterForms(forms);
      if (found.length > 0) return found;
    }
    return [];
  }

  /**
   * All synsets of a word, as NLTK's `wordnet.synsets(word)` lists them: the word lower-cased, then for
   * each part of speech (noun, verb, adjective, adverb unless `options.pos` picks one), each morphy
   * form, each of that form's synsets in index order. The same synset can appear more than once.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadWordNetSync } from "./wordnet.ts";
   * const wordnet = loadWordNetSync();
   * assert.deepEqual(wordnet.synsets("Car").map((synset) => synset.lemmaNames[0]), ["car", "car", "car", "car", "cable_car"]);
   * ```
   */
  synsets(word: string, options: { pos?: WordNetPos } = {}): Synset[] {
    const lemma = word.toLowerCase();
    const order: readonly WordNetPos[] = options.pos === undefined ? WORDNET_POS_ORDER : [options.pos];
    const found: Synset[] = [];
    for (const pos of order) {
      const index = this.#indexes.get(pos);
      for (const form of this.morphy(lemma, pos)) {
        for (const offset of index?.get(form) ?? []) found.push(this.synsetAt(pos, offset));
      }
    }
    return found;
  }

  /**
   * The synset whose line starts at byte `offset` of the part of speech's data file (satellites "s"
   * live in `data.adj`). Throws {@link InputError} naming the data file when no synset line starts there.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadWordNetSync } from "./wordnet.ts";
   * assert.deepEqual(loadWordNetSync().synsetAt("n", 2084071).lemmaNames, ["dog", "domestic_dog", "Canis_familiaris"]);
   * ```
   */
  synsetAt(pos: WordNetPos, offset: number): Synset {
    const filePos = filePosOf(pos);
    let cache = this.#synsetCache.get(filePos);
    if (cache === undefined) this.#synsetCache.set(filePos, cache = new Map());
    const cached = cache.get(offset);
    if (cached !== undefined) return cached;
    const synset = this.#readSynset(filePos, offset);
    cache.set(offset, synset);
    return synset;
  }

  #readSynset(filePos: WordNetFilePos, offset: number): Synset {
    const where = `${this.dir}/data.${FILE_SUFFIX[filePos]}`;
    const bytes = this.#data[filePos];
    const fail = (why: string) =>
      new InputError(`Cannot read WordNet synset at offset ${offset}: ${why}`, where);
    if (!Number.isInteger(offset) || offset < 0 || offset >= bytes.length) {
      throw fail("outside the data file");
    }
    let end = bytes.indexOf(10, offset);
    if (end < 0) end = bytes.length;
    const line = this.#decoder.decode(bytes.subarray(offset, end));
    const expectedPrefix = String(offset).padStart(8, "0");
    if (!/^[0-9A-Za-z]+$/.test(line.slice(0, 8)) || line.slice(0, 8) !== expectedPrefix) {
      throw fail("no synset line starts there");
    }
    const bar = line.indexOf("|");
    if (bar < 0) throw fail("the line has no gloss separator '|'");
    const columns = splitWhitespace(line.slice(0, bar));
    const pos = columns[2];
    const lemmaCount = parseHex(columns[3]);
    if (pos === undefined || Number.isNaN(lemmaCount)) {
      throw fail("the line has no part of speech or lemma count");
    }
    const lemmaNames: string[] = [];
    for (let i = 0; i < lemmaCount; i++) {
      const written = columns[4 + 2 * i];
      if (written === undefined) throw fail(`the line lists fewer than ${lemmaCount} lemmas`);
      lemmaNames.push(SYNTACTIC_MARKER.exec(written)![1]);
    }
    return { pos, offset, lemmaNames };
  }
}

const loadedByDir = new Map<string, WordNet>();
const loadingByDir = new Map<string, Promise<WordNet>>();

function directoryError(dir: string, error: unknown): InputError {
  const why = error instanceof Deno.errors.NotFound
    ? "the directory does not exist (install Debian's wordnet-base, or pass the directory of a WordNet 3.0 database)"
    : `the directory cannot be read (${error instanceof Error ? error.message : String(error)})`;
  return new InputError(`Cannot load WordNet from ${dir}: ${why}`, dir);
}

function noFilesError(dir: string): InputError {
  return new InputError(
    `Cannot load WordNet from ${dir}: it is read from files, which a page does not have`,
    dir,
  );
}

function fileError(path: string, error: unknown): InputError {
  const why = error instanceof Deno.errors.NotFound
    ? "the file is missing"
    : `the file cannot be read (${error instanceof Error ? error.message : String(error)})`;
  return new InputError(`Cannot load WordNet file ${path}: ${why}`, path);
}

/** The database files of one part of speech. */
function fileNamesOf(pos: WordNetFilePos): { index: string; exceptions: string; data: string } {
  return {
    index: `index.${FILE_SUFFIX[pos]}`,
    exceptions: `${FILE_SUFFIX[pos]}.exc`,
    data: `data.${FILE_SUFFIX[pos]}`,
  };
}

/**
 * Loads the WordNet 3.0 database in `dir` (default /usr/share/wordnet), once per directory: later calls
 * with the same directory return the same {@link WordNet}. Throws {@link InputError} naming the directory
 * when it is missing or not a directory, or naming the file when a database file is missing or malformed.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadWordNet } from "./wordnet.ts";
 * const wordnet = await loadWordNet("/usr/share/wordnet");
 * assert.equal(wordnet.synsets("dogs").length, 8); // as NLTK's wordnet.synsets("dogs")
 * ```
 */
export function loadWordNet(dir: string = DEFAULT_WORDNET_DIR): Promise<WordNet> {
  if (typeof Deno === "undefined") return Promise.reject(noFilesError(dir));
  const key = resolve(dir);
  const loaded = loadedByDir.get(key);
  if (loaded !== undefined) return Promise.resolve(loaded);
  const pending = loadingByDir.get(key);
  if (pending !== undefined) return pending;
  const loading = (async () => {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(key);
    } catch (error) {
      throw directoryError(dir, error);
    }
    if (!info.isDirectory) throw new InputError(`Cannot load WordNet from ${dir}: not a directory`, dir);
    // Read everything at once, then report the first failure in a fixed order (index.noun first).
    const names = WORDNET_POS_ORDER.flatMap((pos) => Object.values(fileNamesOf(pos)));
    const settled = await Promise.allSettled(names.map((name) => Deno.readFile(`${key}/${name}`)));
    const contents = new Map<string, Uint8Array>();
    settled.forEach((outcome, i) => {
      if (outcome.status === "rejected") throw fileError(`${key}/${names[i]}`, outcome.reason);
      contents.set(names[i], outcome.value);
    });
    const perPos = WORDNET_POS_ORDER.map((pos) => {
      const files = fileNamesOf(pos);
      return {
        index: contents.get(files.index)!,
        exceptions: new TextDecoder().decode(contents.get(files.exceptions)),
        data: contents.get(files.data)!,
      };
    });
    const [n, v, a, r] = perPos;
    const wordnet = new WordNet(key, {
      index: { n: n.index, v: v.index, a: a.index, r: r.index },
      exceptions: { n: n.exceptions, v: v.exceptions, a: a.exceptions, r: r.exceptions },
      data: { n: n.data, v: v.data, a: a.data, r: r.data },
    });
    loadedByDir.set(key, wordnet);
    return wordnet;
  })();
  loadingByDir.set(key, loading);
  loading.finally(() => loadingByDir.delete(key)).catch(() => {});
  return loading;
}

/**
 * Synchronous {@link loadWordNet}: same cache, same errors; for evaluation loops that cannot await.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadWordNetSync } from "./wordnet.ts";
 * const wordnet = loadWordNetSync();
 * assert.deepEqual(wordnet.morphy("abaci", "n"), ["abacus"]);
 * ```
 */
export function loadWordNetSync(dir: string = DEFAULT_WORDNET_DIR): WordNet {
  if (typeof Deno === "undefined") throw noFilesError(dir);
  const key = resolve(dir);
  const loaded = loadedByDir.get(key);
  if (loaded !== undefined) return loaded;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(key);
  } catch (error) {
    throw directoryError(dir, error);
  }
  if (!info.isDirectory) throw new InputError(`Cannot load WordNet from ${dir}: not a directory`, dir);
  const read = (name: string) => {
    try {
      return Deno.readFileSync(`${key}/${name}`);
    } catch (error) {
      throw fileError(`${key}/${name}`, error);
    }
  };
  const index = {} as Record<WordNetFilePos, Uint8Array>;
  const exceptions = {} as Record<WordNetFilePos, string>;
  const data = {} as Record<WordNetFilePos, Uint8Array>;
  for (const pos of WORDNET_POS_ORDER) {
    const names = fileNamesOf(pos);
    index[pos] = read(names.index);
    exceptions[pos] = new TextDecoder().decode(read(names.exceptions));
    data[pos] = read(names.data);
  }
  const wordnet = new WordNet(key, { index, exceptions, data });
  loadedByDir.set(key, wordnet);
  return wordnet;
}
