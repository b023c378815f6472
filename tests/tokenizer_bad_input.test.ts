/**
 * Tokenizer files that are missing, malformed, truncated, hostile or of an unsupported kind: each
 * gives a TokenizerError that names the file and says what is wrong, never a RangeError or a hang.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadTokenizer, tokenizerFromJson, tokenizerFromSentencePiece } from "../runtime/text/tokenizer.ts";
import { TokenizerError } from "../runtime/core/errors.ts";
import { llama2TokenizerJson, llama2TokenizerModel } from "../tools/fixtures/tokenizer_data.ts";

const llamaJsonText = await llama2TokenizerJson();
const llamaModelBytes = await llama2TokenizerModel();

/** Asserts that `run` throws a TokenizerError at `where` whose message matches `pattern`. */
function assertTokenizerError(run: () => unknown, where: string, pattern: RegExp): void {
  assert.throws(run, (err) => {
    assert.ok(err instanceof TokenizerError, `expected TokenizerError, got ${err}`);
    assert.equal(err.where, where);
    assert.match(err.message, /^Cannot /);
    assert.match(err.message, pattern);
    return true;
  });
}

async function assertLoadFails(path: string, where: string, pattern: RegExp): Promise<void> {
  await assert.rejects(loadTokenizer(path), (err) => {
    assert.ok(err instanceof TokenizerError, `expected TokenizerError, got ${err}`);
    assert.equal(err.where, where);
    assert.match(err.message, pattern);
    return true;
  });
}

/** LLaMA-2's tokenizer.json with `change` applied to its parsed form. */
// deno-lint-ignore no-explicit-any
function llamaJsonWith(change: (json: any) => void): string {
  const json = JSON.parse(llamaJsonText);
  change(json);
  return JSON.stringify(json);
}

Deno.test("loadTokenizer() names the missing directory or file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = join(dir, "no-such-checkpoint");
    await assertLoadFails(missing, missing, /no such file or directory/);
    await assertLoadFails(dir, dir, /no tokenizer\.json or tokenizer\.model/);
    const other = join(dir, "vocab.txt");
    await Deno.writeTextFile(other, "a\nb\n");
    await assertLoadFails(other, other, /expected a tokenizer\.json or tokenizer\.model/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadTokenizer() names the file that is not JSON, not UTF-8 or truncated", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const jsonPath = join(dir, "tokenizer.json");
    await Deno.writeTextFile(jsonPath, llamaJsonText.slice(0, 5000));
    await assertLoadFails(dir, jsonPath, /not valid JSON/);
    await Deno.writeFile(jsonPath, new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]));
    await assertLoadFails(jsonPath, jsonPath, /not valid UTF-8/);
    await Deno.remove(jsonPath);
    const modelPath = join(dir, "tokenizer.model");
    await Deno.writeFile(modelPath, llamaModelBytes.subarray(0, 1001));
    await assertLoadFails(dir, modelPath, /truncated/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizerFromJson() rejects malformed and unsupported tokenizer.json", () => {
  const where = "ckpt/tokenizer.json";
  assertTokenizerError(() => tokenizerFromJson("{not json", where), where, /not valid JSON/);
  assertTokenizerError(() => tokenizerFromJson("[1, 2]", where), where, /not a JSON object/);
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => delete j.model), where),
    where,
    /no "model"/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.model = { type: "Unigram", vocab: [["a", 0]] })), where),
    where,
    /model type "Unigram" is not supported/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.model.type = "WordPiece")), where),
    where,
    /"WordPiece" is not supported/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => j.model.merges.splice(7, 0, "▁t qqqzzz")), where),
    where,
    /model\.merges\[7\] uses token "qqqzzz" that is not in the vocabulary/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => j.model.merges.push("e r x")), where),
    where,
    /model\.merges\[61249\] is not "left right"/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => delete j.model.vocab["▁t"]), where),
    where,
    /model\.merges\[0\] uses token "▁t"/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.model.vocab["▁t"] = -3)), where),
    where,
    /model\.vocab\["▁t"\] is not a valid id/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.model.vocab["▁t"] = 5)), where),
    where,
    /gives id 5 to two tokens/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.model.unk_token = "<missing>")), where),
    where,
    /unk_token "<missing>" is not in the vocabulary/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.added_tokens[1].id = 7)), where),
    where,
    /added_tokens\[1\] gives "<s>" id 7/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.pre_tokenizer = { type: "ByteLevel" })), where),
    where,
    /pre_tokenizer type "ByteLevel" is not supported/,
  );
  assertTokenizerError(
    () => tokenizerFromJson(llamaJsonWith((j) => (j.normalizer.normalizers[0] = { type: "NFKC" })), where),
    where,
    /normalizer\.normalizers\[0\] type "NFKC" is not supported/,
  );
  assertTokenizerError(
    () =>
      tokenizerFromJson(
        llamaJsonWith((j) => (j.decoder.decoders[0].pattern = { Regex: "\\s" })),
        where,
      ),
    where,
    /decoder\.decoders\[0\]\.pattern .*regex patterns are not supported/,
  );
  assertTokenizerError(
    () =>
      tokenizerFromJson(
        llamaJsonWith((j) => {
          delete j.model.vocab["</s>"];
          j.added_tokens.pop();
        }),
        where,
      ),
    where,
    /no end-of-sequence token/,
  );
});

Deno.test("tokenizerFromSentencePiece() rejects truncated tokenizer.model at any length", () => {
  const where = "ckpt/tokenizer.model";
  const cuts = new Set<number>();
  for (let length = 0; length < 64; length++) cuts.add(length);
  for (let k = 1; k < 40; k++) cuts.add(Math.floor((llamaModelBytes.length * k) / 40) + (k % 7));
  cuts.add(llamaModelBytes.length - 1);
  for (const length of cuts) {
    assert.throws(
      () => tokenizerFromSentencePiece(llamaModelBytes.subarray(0, length), where),
      (err) => err instanceof TokenizerError && err.where === where,
      `cut at ${length} bytes`,
    );
  }
});

Deno.test("tokenizerFromSentencePiece() rejects garbage and hostile protobuf", () => {
  const where = "tokenizer.model";
  const cases: [string, number[], RegExp][] = [
    ["endless varint", new Array(64).fill(0xff), /varint longer than 10 bytes/],
    ["field number 0", [0x02, 0x00], /invalid field number 0/],
    ["group wire type", [0x3b, 0x0c], /unsupported wire type 3/],
    ["length past the end", [0x0a, 0xff, 0xff, 0xff, 0xff, 0x07, 0x01], /pieces runs past the end/],
    ["piece with wrong wire type", [0x08, 0x01], /pieces has wire type 0, expected 2/],
    ["score cut short", [0x0a, 0x04, 0x15, 0x00, 0x00, 0x80], /pieces\[0\]\.score runs past the end/],
    ["invalid UTF-8 piece", [0x0a, 0x03, 0x0a, 0x01, 0xff], /pieces\[0\]\.piece is not valid UTF-8/],
    ["no pieces", [0x12, 0x02, 0x18, 0x02], /no pieces/],
  ];
  for (const [name, bytes, pattern] of cases) {
    assert.doesNotThrow(
      () =>
        assertTokenizerError(() => tokenizerFromSentencePiece(new Uint8Array(bytes), where), where, pattern),
      name,
    );
  }
  let seed = 12345;
  for (let trial = 0; trial < 200; trial++) {
    const bytes = new Uint8Array(1 + (trial % 97));
    for (let i = 0; i < bytes.length; i++) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      bytes[i] = seed >> 23;
    }
    assert.throws(
      () => tokenizerFromSentencePiece(bytes, where),
      TokenizerError,
      `random bytes, trial ${trial}`,
    );
  }
});

Deno.test("tokenizerFromSentencePiece() rejects models it cannot reproduce", () => {
  const where = "tokenizer.model";
  // The LLaMA-2 model with one more trainer_spec appended: later fields override earlier ones.
  const withTrainerField = (...field: number[]) =>
    new Uint8Array([...llamaModelBytes, 0x12, field.length, ...field]);
  assertTokenizerError(
    () => tokenizerFromSentencePiece(withTrainerField(0x18, 0x01), where),
    where,
    /model type UNIGRAM is not supported/,
  );
  assertTokenizerError(
    () => tokenizerFromSentencePiece(withTrainerField(0xc0, 0x01, 0x01), where),
    where,
    /treat_whitespace_as_suffix is not supported/,
  );
  assertTokenizerError(
    () => tokenizerFromSentencePiece(withTrainerField(0xc0, 0x02, 0x05), where),
    where,
    /piece 5 \(unk_id\) is not of type UNKNOWN/,
  );
  assertTokenizerError(
    () => tokenizerFromSentencePiece(withTrainerField(0xc8, 0x02, 0x80, 0xfa, 0x01), where),
    where,
    /trainer_spec\.bos_id 32000 is not a piece id/,
  );
  const withCharsmap = new Uint8Array([...llamaModelBytes, 0x1a, 0x03, 0x12, 0x01, 0x00]);
  assertTokenizerError(() => tokenizerFromSentencePiece(withCharsmap, where), where, /precompiled charsmap/);
  const firstPiece = llamaModelBytes.subarray(0, 2 + llamaModelBytes[1]);
  const duplicate = new Uint8Array([...firstPiece, ...llamaModelBytes]);
  assertTokenizerError(
    () => tokenizerFromSentencePiece(duplicate, where),
    where,
    /piece "<unk>" appears twice/,
  );
});
