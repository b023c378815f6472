/**
 * Hostile and careless requests: every field checked by type and range in one place before any
 * work (no session opened), huge prompts refused before tokenizing, `generateBatch` with `settle`,
 * and user policies whose row selections are out of range.
 */
import assert from "node:assert/strict";
import { InputError, loadModel, type Model, type Policy, PolicyError, type PolicyPlan } from "../mod.ts";
import { validateRequest } from "../runtime/engine/request.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

/** Loads `name` on the CPU and counts its tokenizer's encode calls (the first work a prompt gets). */
async function openCounting(name: string): Promise<{ model: Model; encodes: () => number }> {
  const model = await loadModel(await ensureFixture(name), { backend: "cpu" });
  let calls = 0;
  const encode = model.tokenizer.encode.bind(model.tokenizer);
  model.tokenizer.encode = (text, options) => {
    calls++;
    return encode(text, options);
  };
  return { model, encodes: () => calls };
}

const BAD_FIELDS: [Record<string, unknown>, string][] = [
  [{ temperature: "hot" }, "temperature"],
  [{ temperature: NaN }, "temperature"],
  [{ seed: "abc" }, "seed"],
  [{ seed: 1.5 }, "seed"],
  [{ kvCache: "no" }, "kvCache"],
  [{ stop: ["</s>"] }, "stop[0]"],
  [{ stop: [""] }, "stop[0]"],
  [{ stop: 2 }, "stop"],
  [{ stop: {} }, "stop"],
  [{ stop: [32000] }, "stop[0]"],
  [{ topP: 0 }, "topP"],
  [{ topP: 2 }, "topP"],
  [{ maxNewTokens: 4e7 }, "maxNewTokens"],
  [{ maxNewTokens: -1 }, "maxNewTokens"],
  [{ video: { frames: 2 } }, "video.data"],
  [{ video: { data: new Uint8Array(4), frames: 0 } }, "video.frames"],
  [{ image: "cat.png" }, "image"],
  [{ image: [new Uint8Array(1), 7] }, "image[1]"],
  [{ policy: "sparse" }, "policy"],
  [{ signal: "stop" }, "signal"],
  [{ onAbort: "later" }, "onAbort"],
  [{ max_tokens: 4 }, "max_tokens"],
];

Deno.test("validateRequest() names each bad field, with and without a prefix", () => {
  for (const [fields, where] of BAD_FIELDS) {
    for (const prefix of ["", "requests[3]"]) {
      assert.throws(
        () =>
          validateRequest({ prompt: "Hi", ...fields }, prefix, {
            limits: { vocabSize: 32000, specialTexts: ["<s>", "</s>"] },
          }),
        (err) => err instanceof InputError && err.where === (prefix ? `${prefix}.${where}` : where),
        JSON.stringify(Object.keys(fields)),
      );
    }
  }
  assert.throws(() => validateRequest(null, "body"), InputError);
  assert.throws(() => validateRequest({}, ""), (err) => err instanceof InputError && err.where === "prompt");
  assert.throws(() => validateRequest({ prompt: "a", inputIds: [1] }, ""), InputError);
  assert.throws(() => validateRequest({ inputIds: [1, "2"] }, ""), InputError);
  assert.throws(() => validateRequest({ inputIds: [1, -5] }, ""), InputError);
  assert.deepEqual(validateRequest({ inputIds: [1, -200, 5] }, ""), { inputIds: [1, -200, 5] });
  assert.deepEqual(
    validateRequest({ prompt: "Hi", stop: [2, "###"] }, "", { limits: { vocabSize: 32000 } }),
    {
      prompt: "Hi",
      stop: [2, "###"],
    },
  );
  assert.deepEqual(validateRequest({ prompt: "Hi", stream: true }, "", { extraKeys: ["stream"] }), {
    prompt: "Hi",
    stream: true,
  });
});

Deno.test("generate() refuses every bad field with InputError before any work", async () => {
  const { model, encodes } = await openCounting("llava-f32-dyn");
  try {
    for (const [fields, where] of BAD_FIELDS) {
      await assert.rejects(
        model.generate({ prompt: "Hi", maxNewTokens: 2, ...fields } as never).result,
        (err) => err instanceof InputError && err.where === where,
        JSON.stringify(Object.keys(fields)),
      );
    }
    assert.equal(encodes(), 0);
    const ok = await model.generate({ prompt: "Hi", maxNewTokens: 2, stop: [] });
    assert.equal(ok.tokens.length, 2);
    assert.equal(encodes(), 1);
  } finally {
    model.dispose();
  }
});

Deno.test("generate() refuses a 1,000,000-character and a 50 MB prompt before tokenizing, by the context", async () => {
  const { model, encodes } = await openCounting("llama-f32");
  try {
    const maxChars = model.limits.maxPromptChars!;
    assert.ok(maxChars >= model.config.text.maxPositions && maxChars < 1_000_000, `${maxChars}`);
    for (const length of [1_000_000, 50_000_000]) {
      await assert.rejects(
        model.generate({ prompt: "a".repeat(length), maxNewTokens: 1 }).result,
        (err) =>
          err instanceof InputError && err.where === "prompt" &&
          err.message.includes(`the prompt has ${length} characters`),
      );
    }
    assert.equal(encodes(), 0, "not tokenized");
    // Under the character budget but over the token budget: refused after tokenizing, still typed.
    await assert.rejects(
      model.generate({ prompt: "🦊".repeat(Math.floor(maxChars / 2) - 100), maxNewTokens: 1 }).result,
      InputError,
    );
    // Many image markers in a text-only model's prompt: typed, not a stack overflow.
    await assert.rejects(
      model.generate({ prompt: "<image>".repeat(4000), maxNewTokens: 1 }).result,
      InputError,
    );
  } finally {
    model.dispose();
  }
});

Deno.test("generateBatch() refuses a bad request before any work, or with settle returns each outcome", async () => {
  const { model, encodes } = await openCounting("llama-f32");
  try {
    const good = (prompt: string) => ({ prompt, maxNewTokens: 3, stop: [] });
    const requests = [good("One"), { prompt: "Two", temperature: "hot" } as never, good("Three")];
    await assert.rejects(
      model.generateBatch(requests),
      (err) => err instanceof InputError && err.where === "requests[1].temperature",
    );
    assert.equal(encodes(), 0, "nothing ran");
    const settled = await model.generateBatch(requests, { settle: true });
    assert.deepEqual(settled.map((s) => s.status), ["fulfilled", "rejected", "fulfilled"]);
    assert.equal(encodes(), 2, "the bad request was not even tokenized");
    const reason = (settled[1] as PromiseRejectedResult).reason;
    assert.ok(reason instanceof InputError && reason.where === "requests[1].temperature");
    const alone = await model.generate(good("Three"));
    assert.deepEqual((settled[2] as PromiseFulfilledResult<{ tokens: number[] }>).value.tokens, alone.tokens);
    // A failure during the run (an image for a text-only model) is settled too.
    const late = await model.generateBatch([good("A"), { prompt: "B", image: new Uint8Array(3) }], {
      settle: true,
    });
    assert.deepEqual(late.map((s) => s.status), ["fulfilled", "rejected"]);
  } finally {
    model.dispose();
  }
});

Deno.test("a policy whose selectRows returns [999, -1] or drops a text row is refused with PolicyError", async () => {
  const model = await loadModel(await ensureFixture("llava-f32-dyn"), { backend: "cpu" });
  const numLayers = model.config.text.numLayers;
  const policy = (selectRows: PolicyPlan["selectRows"], extra: Partial<PolicyPlan> = {}): Policy => ({
    name: "hostile",
    plan: () => ({
      pruneLayer: 1,
      needs: { visionScores: false, textLogits: false, lastRowAttention: false },
      selectRows,
      admission: "all",
      admitLayer: numLayers,
      admit: () => true,
      ...extra,
    }),
  });
  const image = { width: 8, height: 8, data: new Uint8Array(192).fill(90) };
  try {
    for (const kvCache of [true, false]) {
      const request = { prompt: "Hi", image, maxNewTokens: 2, kvCache };
      await assert.rejects(
        model.generate({ ...request, policy: policy(() => [999, -1]) }).result,
        (err) => err instanceof PolicyError && /row 999/.test(err.message),
      );
      await assert.rejects(
        model.generate({ ...request, policy: policy((kinds) => [kinds.length - 1]) }).result,
        (err) => err instanceof PolicyError && /dropped text row 0/.test(err.message),
      );
    }
    await assert.rejects(
      model.generate({
        prompt: "Hi",
        maxNewTokens: 1,
        policy: policy((k) => k.map((_, i) => i), { pruneLayer: 99 }),
      })
        .result,
      (err) => err instanceof PolicyError && /pruneLayer 99/.test(err.message),
    );
    const keepAll = await model.generate({
      prompt: "Hi",
      image,
      maxNewTokens: 2,
      stop: [],
      policy: policy((k) => k.map((_, i) => i)),
    });
    assert.equal(keepAll.tokens.length, 2);
  } finally {
    model.dispose();
  }
});

Deno.test("a policy selecting rows out of range is the same PolicyError on WebGPU as on the CPU", async () => {
  const dir = await ensureFixture("llava-f32-dyn");
  const image = { width: 8, height: 8, data: new Uint8Array(192).fill(90) };
  const messages: string[] = [];
  for (const backend of ["cpu", "webgpu"] as const) {
    const model = await loadModel(dir, { backend });
    const policy: Policy = {
      name: "hostile",
      plan: () => ({
        pruneLayer: 1,
        needs: { visionScores: false, textLogits: false, lastRowAttention: false },
        selectRows: () => [999, -1],
        admission: "all",
        admitLayer: model.config.text.numLayers,
        admit: () => true,
      }),
    };
    try {
      await assert.rejects(
        model.generate({ prompt: "Hi", image, maxNewTokens: 2, policy }).result,
        (err) => err instanceof PolicyError && messages.push(err.message) > 0,
      );
    } finally {
      model.dispose();
    }
  }
  assert.equal(messages[0], messages[1]);
});
