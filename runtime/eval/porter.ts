/**
 * Porter stemmer, behaving exactly like NLTK 3.8's `nltk.stem.porter.PorterStemmer()` in its default
 * `NLTK_EXTENSIONS` mode (not the 1980 paper's original algorithm, nor Martin Porter's own variant).
 * METEOR's stem stage ({@link ./meteor.ts}) uses it, so every rule, rule order and NLTK deviation is
 * kept, including the irregular-form table, the `ies`/`ied` special cases for four-letter words, the
 * `alli`, `fulli` and `logi` step-2 rules, the two-letter `*o` condition and the y→i rule that needs a
 * consonant before the y.
 *
 * Lengths and positions count Unicode code points, as Python strings do: a word holding characters
 * outside the Basic Multilingual Plane is stemmed with those characters standing for themselves.
 * Pure TypeScript, GPU-free, no file access.
 * @module
 */

/** Irregular forms NLTK maps straight to a stem, checked against the word as given (before lower-casing). */
const IRREGULAR_FORMS: ReadonlyMap<string, string> = new Map(
  ([
    ["sky", ["sky", "skies"]],
    ["die", ["dying"]],
    ["lie", ["lying"]],
    ["tie", ["tying"]],
    ["news", ["news"]],
    ["inning", ["innings", "inning"]],
    ["outing", ["outings", "outing"]],
    ["canning", ["cannings", "canning"]],
    ["howe", ["howe"]],
    ["proceed", ["proceed"]],
    ["exceed", ["exceed"]],
    ["succeed", ["succeed"]],
  ] as const).flatMap(([stem, forms]) => forms.map((form): [string, string] => [form, stem])),
);

const VOWELS: ReadonlySet<string> = new Set(["a", "e", "i", "o", "u"]);

/** A suffix rule: [suffix, replacement, condition on the stem left after removing the suffix]. */
type SuffixRule = readonly [string, string, ((stem: string) => boolean) | null];

/**
 * Porter's consonant test on `word[index]`: not a vowel, and `y` only when it starts the word or
 * follows a vowel (a run of y's alternates).
 */
function isConsonant(word: string, index: number): boolean {
  let negate = false;
  let position = index;
  while (true) {
    const letter = word[position];
    if (VOWELS.has(letter)) return negate;
    if (letter === "y" && position > 0) {
      negate = !negate;
      position -= 1;
      continue;
    }
    return !negate;
  }
}

/** Porter's measure m of a stem written [C](VC){m}[V]. */
function measure(stem: string): number {
  let count = 0;
  let previousIsVowel = false;
  for (let i = 0; i < stem.length; i++) {
    const consonant = isConsonant(stem, i);
    if (consonant && previousIsVowel) count += 1;
    previousIsVowel = !consonant;
  }
  return count;
}

function hasPositiveMeasure(stem: string): boolean {
  return measure(stem) > 0;
}

function containsVowel(stem: string): boolean {
  for (let i = 0; i < stem.length; i++) {
    if (!isConsonant(stem, i)) return true;
  }
  return false;
}

/** Condition *d: the word ends with a doubled consonant. */
function endsDoubleConsonant(word: string): boolean {
  const n = word.length;
  return n >= 2 && word[n - 1] === word[n - 2] && isConsonant(word, n - 1);
}

/** Condition *o: ends consonant-vowel-consonant, the last not w, x or y; NLTK adds two-letter vowel-consonant words. */
function endsCvc(word: string): boolean {
  const n = word.length;
  return (
    (n >= 3 &&
      isConsonant(word, n - 3) &&
      !isConsonant(word, n - 2) &&
      isConsonant(word, n - 1) &&
      word[n - 1] !== "w" &&
      word[n - 1] !== "x" &&
      word[n - 1] !== "y") ||
    (n === 2 && !isConsonant(word, 0) && isConsonant(word, 1))
  );
}

function replaceSuffix(word: string, suffix: string, replacement: string): string {
  return suffix === "" ? word + replacement : word.slice(0, word.length - suffix.length) + replacement;
}

/**
 * Applies the first rule whose suffix the word ends with (the pseudo-suffix `*d` means a doubled
 * consonant); when that rule's condition fails the word comes back unchanged and no later rule is tried.
 */
function applyRuleList(word: string, rules: readonly SuffixRule[]): string {
  for (const [suffix, replacement, condition] of rules) {
    if (suffix === "*d" && endsDoubleConsonant(word)) {
      const stem = word.slice(0, word.length - 2);
      return condition === null || condition(stem) ? stem + replacement : word;
    }
    if (word.endsWith(suffix)) {
      const stem = replaceSuffix(word, suffix, "");
      return condition === null || condition(stem) ? stem + replacement : word;
    }
  }
  return word;
}

function step1a(word: string): string {
  if (word.endsWith("ies") && word.length === 4) return replaceSuffix(word, "ies", "ie");
  return applyRuleList(word, [
    ["sses", "ss", null],
    ["ies", "i", null],
    ["ss", "ss", null],
    ["s", "", null],
  ]);
}

function step1b(word: string): string {
  if (word.endsWith("ied")) {
    return replaceSuffix(word, "ied", word.length === 4 ? "ie" : "i");
  }
  if (word.endsWith("eed")) {
    const stem = replaceSuffix(word, "eed", "");
    return measure(stem) > 0 ? stem + "ee" : word;
  }
  let intermediateStem: string | null = null;
  for (const suffix of ["ed", "ing"]) {
    if (word.endsWith(suffix)) {
      const candidate = replaceSuffix(word, suffix, "");
      if (containsVowel(candidate)) {
        intermediateStem = candidate;
        break;
      }
    }
  }
  if (intermediateStem === null) return word;
  const lastLetter = intermediateStem[intermediateStem.length - 1];
  return applyRuleList(intermediateStem, [
    ["at", "ate", null],
    ["bl", "ble", null],
    ["iz", "ize", null],
    ["*d", lastLetter, () => lastLetter !== "l" && lastLetter !== "s" && lastLetter !== "z"],
    ["", "e", (stem) => measure(stem) === 1 && endsCvc(stem)],
  ]);
}

function step1c(word: string): string {
  return applyRuleList(word, [
    ["y", "i", (stem) => stem.length > 1 && isConsonant(stem, stem.length - 1)],
  ]);
}

function step2(word: string): string {
  if (word.endsWith("alli") && hasPositiveMeasure(replaceSuffix(word, "alli", ""))) {
    return step2(replaceSuffix(word, "alli", "al"));
  }
  return applyRuleList(word, [
    ["ational", "ate", hasPositiveMeasure],
    ["tional", "tion", hasPositiveMeasure],
    ["enci", "ence", hasPositiveMeasure],
    ["anci", "ance", hasPositiveMeasure],
    ["izer", "ize", hasPositiveMeasure],
    ["bli", "ble", hasPositiveMeasure],
    ["alli", "al", hasPositiveMeasure],
    ["entli", "ent", hasPositiveMeasure],
    ["eli", "e", hasPositiveMeasure],
    ["ousli", "ous", hasPositiveMeasure],
    ["ization", "ize", hasPositiveMeasure],
    ["ation", "ate", hasPositiveMeasure],
    ["ator", "ate", hasPositiveMeasure],
    ["alism", "al", hasPositiveMeasure],
    ["iveness", "ive", hasPositiveMeasure],
    ["fulness", "ful", hasPositiveMeasure],
    ["ousness", "ous", hasPositiveMeasure],
    ["aliti", "al", hasPositiveMeasure],
    ["iviti", "ive", hasPositiveMeasure],
    ["biliti", "ble", hasPositiveMeasure],
    ["fulli", "ful", hasPositiveMeasure],
    // NLTK measures the word minus "ogi" here (the stem keeps its "l").
    ["logi", "log", () => hasPositiveMeasure(word.slice(0, word.length - 3))],
  ]);
}

function step3(word: string): string {
  return applyRuleList(word, [
    ["icate", "ic", hasPositiveMeasure],
    ["ative", "", hasPositiveMeasure],
    ["alize", "al", hasPositiveMeasure],
    ["iciti", "ic", hasPositiveMeasure],
    ["ical", "ic", hasPositiveMeasure],
    ["ful", "", hasPositiveMeasure],
    ["ness", "", hasPositiveMeasure],
  ]);
}

function measureAboveOne(stem: string): boolean {
  return measure(stem) > 1;
}

function step4(word: string): string {
  return applyRuleList(word, [
    ["al", "", measureAboveOne],
    ["ance", "", measureAboveOne],
    ["ence", "", measureAboveOne],
    ["er", "", measureAboveOne],
    ["ic", "", measureAboveOne],
    ["able", "", measureAboveOne],
    ["ible", "", measureAboveOne],
    ["ant", "", measureAboveOne],
    ["ement", "", measureAboveOne],
    ["ment", "", measureAboveOne],
    ["ent", "", measureAboveOne],
    ["ion", "", (stem) => measure(stem) > 1 && (stem.endsWith("s") || stem.endsWith("t"))],
    ["ou", "", measureAboveOne],
    ["ism", "", measureAboveOne],
    ["ate", "", measureAboveOne],
    ["iti", "", measureAboveOne],
    ["ous", "", measureAboveOne],
    ["ive", "", measureAboveOne],
    ["ize", "", measureAboveOne],
  ]);
}

function step5a(word: string): string {
  if (word.endsWith("e")) {
    const stem = replaceSuffix(word, "e", "");
    const m = measure(stem);
    if (m > 1) return stem;
    if (m === 1 && !endsCvc(stem)) return stem;
  }
  return word;
}

function step5b(word: string): string {
  // The condition measures the word minus one "l", as NLTK does.
  return applyRuleList(word, [["ll", "l", () => measure(word.slice(0, word.length - 1)) > 1]]);
}

function stemAllSteps(word: string): string {
  return step5b(step5a(step4(step3(step2(step1c(step1b(step1a(word))))))));
}

/**
 * Replaces every character outside the Basic Multilingual Plane (two UTF-16 units) with a private-use
 * character absent from the word, so that string positions equal code-point positions; returns the
 * encoded word and the table to undo it.
 */
function encodeAstral(word: string): { encoded: string; decode: Map<string, string> } {
  const present = new Set(Array.from(word));
  const encodeTable = new Map<string, string>();
  const decode = new Map<string, string>();
  let next = 0xe000;
  let encoded = "";
  for (const char of Array.from(word)) {
    if (char.length === 1) {
      encoded += char;
      continue;
    }
    let stand = encodeTable.get(char);
    if (stand === undefined) {
      while (present.has(String.fromCharCode(next))) next += 1;
      stand = String.fromCharCode(next);
      next += 1;
      encodeTable.set(char, stand);
      decode.set(stand, char);
    }
    encoded += stand;
  }
  return { encoded, decode };
}

/**
 * Stems one word as NLTK's `PorterStemmer().stem(word)` does (default `NLTK_EXTENSIONS` mode, lower-casing
 * on): irregular forms first, words of at most two characters only lower-cased, then steps 1a–5b.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { porterStem } from "./porter.ts";
 * assert.deepEqual(["running", "generously", "skies"].map(porterStem), ["run", "gener", "sky"]); // as NLTK
 * ```
 */
export function porterStem(word: string): string {
  const lower = word.toLowerCase();
  const irregular = IRREGULAR_FORMS.get(word);
  if (irregular !== undefined) return irregular;
  if (!/[\uD800-\uDFFF]/.test(word)) {
    return word.length <= 2 ? lower : stemAllSteps(lower);
  }
  if (Array.from(word).length <= 2) return lower;
  const { encoded, decode } = encodeAstral(lower);
  const stemmed = stemAllSteps(encoded);
  return Array.from(stemmed, (char) => decode.get(char) ?? char).join("");
}
