import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { InputError } from "../runtime/core/errors.ts";
import { meteorScore, meteorScoreSync } from "../runtime/eval/meteor.ts";
import { porterStem } from "../runtime/eval/porter.ts";
import { loadWordNet, loadWordNetSync, type WordNet } from "../runtime/eval/wordnet.ts";
import { testNeeding } from "./requirements.ts";
import { lexnamesText, makeNltkData, nltkAvailable, runNltkScript } from "../tools/fixtures/nltk_data.ts";

const WORDNET_DIR = "/usr/share/wordnet";
const NLTK_MISSING = await nltkAvailable() ? null : "python3 with nltk";
const words = (sentence: string) => sentence.split(" ").filter((word) => word.length > 0);

interface Case {
  references: string[][];
  hypothesis: string[];
}

/** NLTK's own doctest sentences (meteor_score.py). */
const NLTK_HYPOTHESIS_1 = words(
  "It is a guide to action which ensures that the military always obeys the commands of the party",
);
const NLTK_HYPOTHESIS_2 = words(
  "It is to insure the troops forever hearing the activity guidebook that party direct",
);
const NLTK_REFERENCES = [
  words("It is a guide to action that ensures that the military will forever heed Party commands"),
  words(
    "It is the guiding principle which guarantees the military forces always being under the command of the Party",
  ),
  words("It is the practical guide for the army always to heed the directions of the party"),
];

const LONG_REFERENCE = words(
  "a large brown dog with a red collar is running across a wide green field toward a young boy who is " +
    "throwing a yellow tennis ball while his parents sit on a wooden bench under a tall oak tree and watch " +
    "them play on a sunny afternoon in the park",
);
const LONG_HYPOTHESIS = words(
  "a big brown dog wearing a red collar runs through the green grass towards a little boy throwing a " +
    "yellow ball as his parents are sitting on a bench beneath an oak tree watching them playing in the " +
    "park on a sunny day",
);

const CASES: Case[] = [
  // identical, empty, no overlap
  {
    references: [words("a man is riding a horse on the beach")],
    hypothesis: words("a man is riding a horse on the beach"),
  },
  { references: [words("a man is riding a horse")], hypothesis: [] },
  { references: [[]], hypothesis: words("a man is riding a horse") },
  { references: [words("the cat sat on the mat")], hypothesis: words("dogs bark loudly") },
  { references: [words("yes")], hypothesis: words("yes") },
  { references: [words("yes")], hypothesis: words("no") },
  // reordering and crossing alignments
  { references: [words("the cat sat on the mat")], hypothesis: words("on the mat the cat sat") },
  { references: [words("a b c d e")], hypothesis: words("e d c b a") },
  { references: [words("one two three four five six")], hypothesis: words("one two four three five six") },
  { references: [words("the cat sat on the mat")], hypothesis: words("the cat sat") },
  { references: [words("the cat sat")], hypothesis: words("the cat sat on the mat") },
  // stems
  { references: [words("he was running to the store")], hypothesis: words("he runs to the store") },
  { references: [words("she ran quickly home")], hypothesis: words("she runs quick home") },
  {
    references: [words("the churches were generously funded")],
    hypothesis: words("a church is generous funding"),
  },
  { references: [words("dogs are playing with balls")], hypothesis: words("a dog played with a ball") },
  { references: [words("the relational databases")], hypothesis: words("relate the database") },
  // synonyms (after stemming, as NLTK does)
  { references: [words("the car is big")], hypothesis: words("the automobile is large") },
  { references: [words("the auto stopped at the light")], hypothesis: words("the car stopped at the light") },
  { references: [words("the dog barked")], hypothesis: words("the hound barked") },
  { references: [words("the patient was ill")], hypothesis: words("the patient was sick") },
  { references: [words("they start the race")], hypothesis: words("they begin the race") },
  { references: [words("please halt here")], hypothesis: words("please stop here") },
  { references: [words("a fast runner")], hypothesis: words("a quick runner") },
  { references: [words("bought a new car")], hypothesis: words("purchased a new vehicle") },
  {
    references: [words("two men playing soccer in a field")],
    hypothesis: words("a pair of men play football on the grass"),
  },
  { references: [words("the geese flew over the lake")], hypothesis: words("a goose flies above the lake") },
  { references: [words("I live in the US")], hypothesis: words("I live in America") },
  // repeated words
  { references: [words("the the the cat")], hypothesis: words("the cat the the") },
  { references: [words("a")], hypothesis: words("a a a a") },
  { references: [words("a a a a")], hypothesis: words("a") },
  { references: [words("dog dog cat dog")], hypothesis: words("cat dog dog dog dog") },
  // multiple references
  { references: NLTK_REFERENCES, hypothesis: NLTK_HYPOTHESIS_1 },
  { references: NLTK_REFERENCES, hypothesis: NLTK_HYPOTHESIS_2 },
  { references: [NLTK_REFERENCES[0]], hypothesis: NLTK_HYPOTHESIS_1 },
  {
    references: [
      words("a man riding a wave on top of a surfboard"),
      words("a surfer rides a large wave in the ocean"),
      words("a person on a surf board riding a wave"),
    ],
    hypothesis: words("a man is surfing on a big wave"),
  },
  {
    references: [
      words("a plate of food with broccoli and rice"),
      words("broccoli , rice and chicken on a white plate"),
    ],
    hypothesis: words("a white plate with chicken , rice and broccolis ."),
  },
  { references: [[], words("a cat")], hypothesis: words("the cat") },
  // punctuation and numbers
  { references: [words("a cat , a dog .")], hypothesis: words("a dog , a cat !") },
  { references: [words("what is it ? it is a cat .")], hypothesis: words("it is a cat . what is it ?") },
  {
    references: [words("there are 3 cats and 2 dogs")],
    hypothesis: words("there are three cats and two dogs"),
  },
  { references: [words("in 1999 , 42 % of 7.5 million")], hypothesis: words("42 % of 7.5 million in 1999") },
  // capitalised words and non-ASCII
  { references: [words("The Eiffel Tower is in Paris")], hypothesis: words("the eiffel tower is in paris") },
  { references: [words("NEW YORK City At Night")], hypothesis: words("New York city at night") },
  {
    references: [words("a café serving naïve crème brûlée")],
    hypothesis: words("the Café serves naive crème brûlée"),
  },
  { references: [words("a well-known man-made lake")], hypothesis: words("a well known manmade lake") },
  // long sentences
  { references: [LONG_REFERENCE], hypothesis: LONG_HYPOTHESIS },
  { references: [LONG_REFERENCE, words("a dog runs in a park")], hypothesis: LONG_REFERENCE.slice(5, 40) },
  { references: [LONG_HYPOTHESIS], hypothesis: [...LONG_REFERENCE].reverse() },
];

/** Words that exercise every Porter step and NLTK's deviations from the paper. */
const HAND_PICKED_WORDS = words(
  "caresses ponies ties ties pies dies lies skies sky caress cats feed agreed plastered bled motoring sing " +
    "conflated troubled sized hopping tanned falling hissing fizzed failing filing happy enjoy spy fly try " +
    "relational conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli " +
    "analogousli vietnamization predication operator feudalism decisiveness hopefulness callousness " +
    "formaliti sensitiviti sensibiliti triplicate formative formalize electriciti electrical hopeful goodness " +
    "revival allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment " +
    "dependent adoption homologou communism activate angulariti homologous effective bowdlerize probate rate " +
    "cease controll roll generously generalli fulli hopefulli archaeologi analogi dying lying tying news " +
    "innings inning outings outing cannings canning howe proceed exceed succeed succeeded proceeding " +
    "Innings Dying NEWS Running CATS Skies running runs ran runner easily quickly sadly national nationalize " +
    "a is at by be ie y yy yyy yes eyes toy syzygy trouble oats trees ivy troubles private oaten orrery " +
    "cried spied died ied lied tied abilities possibly organization organizational agreement disagreeable " +
    "a*ding x*ding 3d 42 7.5 1999 , . ? ! % café naïve crème brûlée İstanbul ΣΊΣΥΦΟΣ 𝒜bcdes 😀s😀ing " +
    "well-known man-made e-mail self-evidently",
);

/** Every `step`-th lemma without "_" of each index file, in file order. */
function sampleIndexLemmas(step: number): string[] {
  const sampled: string[] = [];
  for (const suffix of ["noun", "verb", "adj", "adv"]) {
    const lemmas = Deno.readTextFileSync(`${WORDNET_DIR}/index.${suffix}`).split("\n")
      .filter((line) => line.length > 0 && !line.startsWith(" "))
      .map((line) => line.slice(0, line.indexOf(" ")))
      .filter((lemma) => !lemma.includes("_"));
    for (let i = 0; i < lemmas.length; i += step) sampled.push(lemmas[i]);
  }
  return sampled;
}

/** Every `step`-th inflected form of each exception list. */
function sampleExceptionForms(step: number): string[] {
  const sampled: string[] = [];
  for (const suffix of ["noun", "verb", "adj", "adv"]) {
    const forms = Deno.readTextFileSync(`${WORDNET_DIR}/${suffix}.exc`).split("\n")
      .filter((line) => line.length > 0).map((line) => line.split(" ")[0]);
    for (let i = 0; i < forms.length; i += step) sampled.push(forms[i]);
  }
  return sampled;
}

const STEM_WORDS = [
  ...new Set([...HAND_PICKED_WORDS, ...sampleIndexLemmas(500), ...sampleExceptionForms(40)]),
];
const SENTENCE_WORDS = [
  ...new Set(
    CASES.flatMap((c) => [...c.hypothesis, ...c.references.flat()]).map((word) => word.toLowerCase()),
  ),
];
const SYNSET_WORDS = [
  ...new Set([
    ...SENTENCE_WORDS,
    ...SENTENCE_WORDS.map(porterStem),
    ...sampleExceptionForms(100),
    "dogs",
    "abaci",
  ]),
];

interface NltkAnswers {
  version: string;
  scores: number[];
  stems: string[];
  synsets: [string, number, string[]][][];
}

let nltkAnswers: Promise<NltkAnswers> | undefined;

/** All NLTK reference values, from one Python process shared by the tests below. */
function askNltk(): Promise<NltkAnswers> {
  nltkAnswers ??= (async () => {
    await using nltkData = await makeNltkData({ wordnetDir: WORDNET_DIR });
    const script = fileURLToPath(new URL("./nltk_meteor.py", import.meta.url));
    return await runNltkScript(script, {
      cases: CASES,
      stems: STEM_WORDS,
      synsets: SYNSET_WORDS,
    }, { nltkData }) as NltkAnswers;
  })();
  return nltkAnswers;
}

testNeeding({
  name: "porterStem() equals NLTK's PorterStemmer (NLTK_EXTENSIONS) on hundreds of words",
  missing: NLTK_MISSING,
  async fn() {
    const answers = await askNltk();
    assert.ok(STEM_WORDS.length >= 300, `only ${STEM_WORDS.length} words`);
    const mismatches = STEM_WORDS.map((word, i) => [word, porterStem(word), answers.stems[i]])
      .filter(([, ours, theirs]) => ours !== theirs);
    assert.deepEqual(mismatches, []);
  },
});

testNeeding({
  name: "WordNet.synsets() lists the same synsets and lemma names as NLTK's wordnet.synsets()",
  missing: NLTK_MISSING,
  async fn() {
    const answers = await askNltk();
    const wordnet = await loadWordNet(WORDNET_DIR);
    const mismatches = SYNSET_WORDS.flatMap((word, i) => {
      const ours = wordnet.synsets(word).map((s) => [s.pos, s.offset, s.lemmaNames]);
      return JSON.stringify(ours) === JSON.stringify(answers.synsets[i])
        ? []
        : [{ word, ours, nltk: answers.synsets[i] }];
    });
    assert.deepEqual(mismatches, []);
    // The comparison is not vacuous: many words have synsets, some through morphy's exception lists.
    assert.ok(answers.synsets.filter((list) => list.length > 0).length > SYNSET_WORDS.length / 2);
  },
});

testNeeding({
  name: "meteorScore() equals NLTK's meteor_score to 1e-4 on varied sentence pairs",
  missing: NLTK_MISSING,
  async fn() {
    const answers = await askNltk();
    assert.ok(CASES.length >= 40);
    assert.equal(answers.scores.length, CASES.length);
    const wordnet = await loadWordNet(WORDNET_DIR);
    const mismatches = CASES.flatMap((c, i) => {
      const ours = meteorScoreSync(c.references, c.hypothesis, { wordnet });
      return Math.abs(ours - answers.scores[i]) <= 1e-4
        ? []
        : [{ i, hypothesis: c.hypothesis.join(" "), ours, nltk: answers.scores[i] }];
    });
    assert.deepEqual(mismatches, []);
    // The set spans the range: some zeros, some perfect-ish, many in between.
    assert.ok(answers.scores.some((score) => score === 0));
    assert.ok(answers.scores.some((score) => score > 0.99));
    assert.ok(answers.scores.filter((score) => score > 0.1 && score < 0.9).length >= 20);
    // The async entry point agrees with the synchronous one.
    assert.equal(
      await meteorScore(NLTK_REFERENCES, NLTK_HYPOTHESIS_2),
      meteorScoreSync(NLTK_REFERENCES, NLTK_HYPOTHESIS_2, { wordnet }),
    );
  },
});

Deno.test("meteorScore() reproduces NLTK's documented values", async () => {
  const single = await meteorScore([NLTK_REFERENCES[0]], NLTK_HYPOTHESIS_1);
  assert.equal(single.toFixed(4), "0.6944");
  const multiple = await meteorScore(NLTK_REFERENCES, NLTK_HYPOTHESIS_1);
  assert.equal(multiple.toFixed(4), "0.6944");
  assert.equal(await meteorScore([words("this is a cat")], words("non matching hypothesis")), 0);
});

Deno.test("meteorScoreSync() scores each stage and the fragmentation penalty as specified", () => {
  const wordnet: WordNet = loadWordNetSync(WORDNET_DIR);
  const score = (reference: string, hypothesis: string, weights = {}) =>
    meteorScoreSync([words(reference)], words(hypothesis), { wordnet, ...weights });
  // 3 of 3 matched in one chunk: Fmean 1, penalty 0.5 * (1/3)^3.
  const oneChunk = 1 - 0.5 * (1 / 3) ** 3;
  assert.equal(score("the dog barked", "the dog barked"), oneChunk);
  assert.equal(score("the dog barked", "The DOG Barked"), oneChunk); // lower-cased first
  assert.equal(score("the dogs barked", "the dog barking"), oneChunk); // stem stage
  assert.equal(score("the dog barked", "the hound barked"), oneChunk); // synonym: hound.n.02 has "dog"
  assert.equal(score("the car is big", "the automobile is large"), 0.25); // stems "automobil", "larg" have no synsets
  // Reversed order: 3 matches, 3 chunks, penalty 0.5.
  assert.equal(score("a b c", "c b a"), 0.5);
  // Precision 1, recall 1/2: Fmean = 0.5 / (0.9 + 0.05); one chunk of 3.
  assert.ok(Math.abs(score("a b c d e f", "a b c") - (0.5 / 0.95) * (1 - 0.5 / 27)) < 1e-12);
  // Weights are used: alpha 0.5 gives the harmonic mean, gamma 0 removes the penalty.
  assert.ok(Math.abs(score("a b c d e f", "a b c", { alpha: 0.5, gamma: 0 }) - 2 / 3) < 1e-12);
  assert.equal(score("a b", "", {}), 0);
  assert.equal(meteorScoreSync([[], words("x y")], words("x y"), { wordnet }), 1 - 0.5 * (1 / 2) ** 3);
});

Deno.test("porterStem() follows NLTK's extensions, not the original algorithm", () => {
  assert.equal(porterStem("running"), "run");
  assert.equal(porterStem("ponies"), "poni");
  assert.equal(porterStem("ties"), "tie"); // NLTK: four-letter "-ies" → "-ie" (original: "ti")
  assert.equal(porterStem("dying"), "die"); // irregular form
  assert.equal(porterStem("Dying"), "dy"); // the irregular table is checked before lower-casing
  assert.equal(porterStem("generously"), "gener");
  assert.equal(porterStem("enjoy"), "enjoy"); // y → i only after a consonant
  assert.equal(porterStem("happy"), "happi");
  assert.equal(porterStem("at"), "at"); // two letters or fewer: only lower-cased
  assert.equal(porterStem("AT"), "at");
});

Deno.test("WordNet.morphy() and synsets() give NLTK's documented answers", async () => {
  const wordnet = await loadWordNet(WORDNET_DIR);
  assert.deepEqual(wordnet.morphy("dogs", "n"), ["dog"]);
  assert.deepEqual(wordnet.morphy("churches", "n"), ["church"]);
  assert.deepEqual(wordnet.morphy("aardwolves", "n"), ["aardwolf"]);
  assert.deepEqual(wordnet.morphy("abaci", "n"), ["abacus"]);
  assert.deepEqual(wordnet.morphy("hardrock", "r"), []);
  assert.deepEqual(wordnet.morphy("book", "n"), ["book"]);
  assert.deepEqual(wordnet.morphy("book", "a"), []);
  assert.deepEqual(wordnet.synsets("Car").map((s) => s.lemmaNames), [
    ["car", "auto", "automobile", "machine", "motorcar"],
    ["car", "railcar", "railway_car", "railroad_car"],
    ["car", "gondola"],
    ["car", "elevator_car"],
    ["cable_car", "car"],
  ]);
  assert.deepEqual(wordnet.synsetAt("n", 2084071).lemmaNames, ["dog", "domestic_dog", "Canis_familiaris"]);
  // Adjective markers are removed: "galore(ip)" in data.adj.
  assert.ok(wordnet.synsets("galore").some((s) => s.lemmaNames.includes("galore")));
});

Deno.test("loadWordNet() caches per directory and names a missing directory", async () => {
  const first = await loadWordNet(WORDNET_DIR);
  assert.equal(await loadWordNet(`${WORDNET_DIR}/`), first);
  assert.equal(loadWordNetSync(WORDNET_DIR), first);
  const missing = await Deno.makeTempDir();
  await Deno.remove(missing);
  await assert.rejects(
    () => meteorScore([["a"]], ["a"], { wordnetDir: missing }),
    (error: unknown) =>
      error instanceof InputError && error.message.includes(missing) && error.where === missing,
  );
  assert.throws(() => loadWordNetSync(missing), InputError);
  const empty = await Deno.makeTempDir();
  try {
    await assert.rejects(
      () => loadWordNet(empty),
      (error: unknown) =>
        error instanceof InputError && error.where.startsWith(empty) && /index\.noun/.test(error.message),
    );
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("meteorScoreSync() rejects malformed input with InputError", () => {
  const wordnet = loadWordNetSync(WORDNET_DIR);
  assert.throws(() => meteorScoreSync([], ["a"], { wordnet }), InputError);
  assert.throws(() => meteorScoreSync([["a"]], "a b" as unknown as string[], { wordnet }), InputError);
  assert.throws(() => meteorScoreSync(["a b"] as unknown as string[][], ["a"], { wordnet }), InputError);
  assert.throws(() => meteorScoreSync([["a", 3 as unknown as string]], ["a"], { wordnet }), InputError);
  assert.throws(() => meteorScoreSync([["a"]], ["a"], { wordnet, alpha: NaN }), InputError);
});

Deno.test("lexnamesText() lists the 45 WordNet lexicographer files with their categories", () => {
  const lines = lexnamesText().trimEnd().split("\n");
  assert.equal(lines.length, 45);
  assert.equal(lines[0], "00\tadj.all\t3");
  assert.equal(lines[2], "02\tadv.all\t4");
  assert.equal(lines[3], "03\tnoun.Tops\t1");
  assert.equal(lines[28], "28\tnoun.time\t1");
  assert.equal(lines[29], "29\tverb.body\t2");
  assert.equal(lines[43], "43\tverb.weather\t2");
  assert.equal(lines[44], "44\tadj.ppl\t3");
});
