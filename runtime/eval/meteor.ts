/**
 * METEOR, computed exactly as NLTK 3.8's `nltk.translate.meteor_score.meteor_score` computes it, so
 * that scores match the numbers papers report with that implementation.
 *
 * Inputs are pre-tokenised words (one hypothesis, one or more references); the score is the maximum of
 * the single-reference scores. For one reference:
 * 1. Every word is lower-cased (NLTK's default `preprocess=str.lower`) and numbered by position.
 * 2. Exact stage: for each hypothesis word from the last to the first, the last still-unmatched
 *    reference word equal to it is matched; both leave their lists.
 * 3. Stem stage: the words left over are replaced by their Porter stems ({@link porterStem}) and matched
 *    the same way. The words left over after this stage stay stemmed.
 * 4. Synonym stage: for each remaining (stemmed) hypothesis word from the last to the first, its
 *    synonyms are the lemma names without "_" of all its WordNet synsets ({@link WordNet.synsets}, all
 *    parts of speech, lemma names in the data file's case) plus the word itself; the last remaining
 *    reference word among them is matched.
 * 5. Matches (hypothesis position, reference position) are sorted by hypothesis position; chunks are
 *    counted over that order (a chunk continues while both positions advance by one).
 * 6. P = m / |hypothesis|, R = m / |reference|, Fmean = P·R / (α·P + (1−α)·R),
 *    penalty = γ · (chunks / m)^β, score = (1 − penalty) · Fmean; 0 when any of these divides by zero
 *    (empty hypothesis or reference, no match).
 *
 * Defaults α = 0.9, β = 3, γ = 0.5. GPU-free; WordNet files are read only by {@link meteorScore}
 * (through {@link loadWordNet}, cached per directory).
 * @module
 */
import { InputError } from "../core/errors.ts";
import { porterStem } from "./porter.ts";
import { DEFAULT_WORDNET_DIR, loadWordNet, type WordNet } from "./wordnet.ts";

/** METEOR's weights. */
export interface MeteorWeights {
  /** Relative weight of precision against recall in Fmean (default 0.9). */
  alpha?: number;
  /** Exponent of the fragmentation penalty (default 3). */
  beta?: number;
  /** Weight of the fragmentation penalty (default 0.5). */
  gamma?: number;
}

/** Options of {@link meteorScore}. */
export interface MeteorOptions extends MeteorWeights {
  /** Directory of the WordNet 3.0 database files (default /usr/share/wordnet). */
  wordnetDir?: string;
}

/** Options of {@link meteorScoreSync}: the weights plus a WordNet already loaded. */
export interface MeteorSyncOptions extends MeteorWeights {
  /** The WordNet used for the synonym stage, from {@link loadWordNet} or {@link loadWordNetSync}. */
  wordnet: WordNet;
}

/** A word with its position in the sentence. */
type NumberedWord = [position: number, word: string];

/** A match: [hypothesis position, reference position]. */
type WordMatch = [hypothesisPosition: number, referencePosition: number];

/** Synonym sets per WordNet and word, kept across calls (an evaluation loop sees the same words often). */
const synonymCache = new WeakMap<WordNet, Map<string, ReadonlySet<string>>>();

function synonymsOf(word: string, wordnet: WordNet): ReadonlySet<string> {
  let byWord = synonymCache.get(wordnet);
  if (byWord === undefined) synonymCache.set(wordnet, byWord = new Map());
  let synonyms = byWord.get(word);
  if (synonyms === undefined) {
    const names = new Set<string>();
    for (const synset of wordnet.synsets(word)) {
      for (const name of synset.lemmaNames) {
        if (!name.includes("_")) names.add(name);
      }
    }
    names.add(word);
    synonyms = names;
    byWord.set(word, synonyms);
  }
  return synonyms;
}

/**
 * Matches words between the two lists, removing matched words from both (the lists are changed in
 * place and keep the unmatched words): hypothesis words from last to first, each taking the last
 * remaining reference word that `accepts` it.
 */
function matchWords(
  hypothesis: NumberedWord[],
  reference: NumberedWord[],
  accepts: (hypothesisWord: string) => (referenceWord: string) => boolean,
): WordMatch[] {
  const matches: WordMatch[] = [];
  for (let i = hypothesis.length - 1; i >= 0; i--) {
    const accept = accepts(hypothesis[i][1]);
    for (let j = reference.length - 1; j >= 0; j--) {
      if (accept(reference[j][1])) {
        matches.push([hypothesis[i][0], reference[j][0]]);
        hypothesis.splice(i, 1);
        reference.splice(j, 1);
        break;
      }
    }
  }
  return matches;
}

function equalTo(hypothesisWord: string): (referenceWord: string) => boolean {
  return (referenceWord) => referenceWord === hypothesisWord;
}

/** The fewest chunks of matches adjacent in both sentences, over matches sorted by hypothesis position. */
function countChunks(matches: readonly WordMatch[]): number {
  let chunks = 1;
  for (let i = 0; i < matches.length - 1; i++) {
    const adjacent = matches[i + 1][0] === matches[i][0] + 1 && matches[i + 1][1] === matches[i][1] + 1;
    if (!adjacent) chunks += 1;
  }
  return chunks;
}

function singleMeteorScore(
  reference: readonly string[],
  hypothesis: readonly string[],
  weights: { alpha: number; beta: number; gamma: number; wordnet: WordNet },
): number {
  let hypothesisWords: NumberedWord[] = hypothesis.map((word, position) => [position, word.toLowerCase()]);
  let referenceWords: NumberedWord[] = reference.map((word, position) => [position, word.toLowerCase()]);
  const hypothesisLength = hypothesisWords.length;
  const referenceLength = referenceWords.length;

  const exactMatches = matchWords(hypothesisWords, referenceWords, equalTo);
  hypothesisWords = hypothesisWords.map(([position, word]) => [position, porterStem(word)]);
  referenceWords = referenceWords.map(([position, word]) => [position, porterStem(word)]);
  const stemMatches = matchWords(hypothesisWords, referenceWords, equalTo);
  const synonymMatches = matchWords(hypothesisWords, referenceWords, (hypothesisWord) => {
    const synonyms = synonymsOf(hypothesisWord, weights.wordnet);
    return (referenceWord) => synonyms.has(referenceWord);
  });
  const matches = [...exactMatches, ...stemMatches, ...synonymMatches].sort((x, y) => x[0] - y[0]);

  const matchCount = matches.length;
  if (hypothesisLength === 0 || referenceLength === 0) return 0;
  const precision = matchCount / hypothesisLength;
  const recall = matchCount / referenceLength;
  const denominator = weights.alpha * precision + (1 - weights.alpha) * recall;
  if (denominator === 0 || matchCount === 0) return 0;
  const fmean = (precision * recall) / denominator;
  const fragmentation = countChunks(matches) / matchCount;
  const penalty = weights.gamma * fragmentation ** weights.beta;
  return (1 - penalty) * fmean;
}

function checkWords(words: unknown, where: string): readonly string[] {
  if (typeof words === "string" || !Array.isArray(words)) {
    throw new InputError(`Cannot score METEOR: ${where} must be an array of words (pre-tokenised)`, where);
  }
  words.forEach((word, index) => {
    if (typeof word !== "string") {
      throw new InputError(`Cannot score METEOR: ${where}[${index}] is not a string`, `${where}[${index}]`);
    }
  });
  return words;
}

function checkWeight(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new InputError(
      `Cannot score METEOR: ${name} must be a finite number, got ${value}`,
      `options.${name}`,
    );
  }
  return value;
}

/**
 * METEOR of one hypothesis against one or more references, with a WordNet already loaded: the best
 * single-reference score, as NLTK's `meteor_score(references, hypothesis)`. Words are pre-tokenised.
 * Throws {@link InputError} when there is no reference, a sentence is not an array of strings, or a
 * weight is not a finite number.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { meteorScoreSync } from "./meteor.ts";
 * import { loadWordNetSync } from "./wordnet.ts";
 * const wordnet = loadWordNetSync();
 * const score = meteorScoreSync([["the", "cat", "sat", "on", "the", "mat"]], ["the", "cat", "sat"], { wordnet });
 * assert.equal(score.toFixed(4), "0.4483"); // as NLTK's meteor_score
 * ```
 */
export function meteorScoreSync(
  references: readonly (readonly string[])[],
  hypothesis: readonly string[],
  options: MeteorSyncOptions,
): number {
  if (!Array.isArray(references) || references.length === 0) {
    throw new InputError("Cannot score METEOR: at least one reference is needed", "references");
  }
  const hypothesisWords = checkWords(hypothesis, "hypothesis");
  const referenceSentences = references.map((reference, index) =>
    checkWords(reference, `references[${index}]`)
  );
  const weights = {
    alpha: checkWeight(options.alpha, 0.9, "alpha"),
    beta: checkWeight(options.beta, 3, "beta"),
    gamma: checkWeight(options.gamma, 0.5, "gamma"),
    wordnet: options.wordnet,
  };
  let best = -Infinity;
  for (const reference of referenceSentences) {
    best = Math.max(best, singleMeteorScore(reference, hypothesisWords, weights));
  }
  return best;
}

/**
 * METEOR of one hypothesis against one or more references, exactly as NLTK 3.8's
 * `nltk.translate.meteor_score.meteor_score(references, hypothesis)` (exact, Porter-stem and WordNet
 * synonym stages; the best reference wins). Loads WordNet from `options.wordnetDir` (default
 * /usr/share/wordnet) once per directory. Throws {@link InputError} for a missing WordNet directory (named
 * in the message), no reference, sentences that are not arrays of strings, or weights that are not finite.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { meteorScore } from "./meteor.ts";
 * const hypothesis = ["It", "is", "a", "guide", "to", "action", "which", "ensures", "that", "the", "military",
 *   "always", "obeys", "the", "commands", "of", "the", "party"];
 * const reference = ["It", "is", "a", "guide", "to", "action", "that", "ensures", "that", "the", "military",
 *   "will", "forever", "heed", "Party", "commands"];
 * assert.equal((await meteorScore([reference], hypothesis)).toFixed(4), "0.6944"); // as NLTK's meteor_score
 * ```
 */
export async function meteorScore(
  references: readonly (readonly string[])[],
  hypothesis: readonly string[],
  options: MeteorOptions = {},
): Promise<number> {
  const wordnet = await loadWordNet(options.wordnetDir ?? DEFAULT_WORDNET_DIR);
  return meteorScoreSync(references, hypothesis, { ...options, wordnet });
}
