/**
 * model.chat(): the llava_v1 chat template, stop strings (never streamed), finishReason, usage,
 * the default policy, and a CPU run that yields to the event loop between steps (streaming and
 * aborts work while it decodes).
 */
import assert from "node:assert/strict";
import { formatLlavaV1Chat, InputError, loadModel, type Model } from "../mod.ts";
import { encodeImage, makeTestImage } from "../tools/fixtures/images.ts";

const DEMO = new URL("../assets/demo/", import.meta.url);

async function withDemo(body: (model: Model) => Promise<void>): Promise<void> {
  const model = await loadModel(DEMO, { backend: "cpu" });
  try {
    await body(model);
  } finally {
    model.dispose();
  }
}

Deno.test("chat() with one user message answers exactly as generate() with the same prompt and image", async () => {
  await withDemo(async (model) => {
    const png = await encodeImage(makeTestImage(20, 16), "png");
    const direct = await model.generate({
      prompt: "Describe the image in detail.",
      image: png,
      maxNewTokens: 6,
    });
    const reply = await model.chat({
      messages: [{
        role: "user",
        content: [{ type: "image", image: png }, { type: "text", text: "Describe the image in detail." }],
      }],
      maxNewTokens: 6,
    });
    assert.deepEqual(reply.tokens, direct.tokens);
    assert.equal(reply.text, direct.text);
    assert.deepEqual(reply.visualKept, direct.visualKept);
    assert.equal(reply.finishReason, "length");
    assert.deepEqual(reply.usage, {
      promptTokens: direct.stats.promptTokens,
      completionTokens: 6,
      totalTokens: direct.stats.promptTokens + 6,
    });
    assert.ok(direct.stats.promptTokens > 36, "the image's 36 tokens count as prompt tokens");
  });
});

Deno.test("model.defaultPolicy is dynamic on a checkpoint with predictors, and requests without a policy use it", async () => {
  await withDemo(async (model) => {
    assert.equal(model.defaultPolicy, "dynamic");
    const image = makeTestImage(8, 8);
    const plain = await model.generate({ prompt: "Hi", image, maxNewTokens: 3 });
    const dynamic = await model.generate({ prompt: "Hi", image, maxNewTokens: 3, policy: "dynamic" });
    assert.deepEqual(plain.visualKept, dynamic.visualKept);
    assert.equal(plain.visualKept!.length, 12); // floor(64 visual tokens × keep rate 0.2)
  });
});

Deno.test("formatLlavaV1Chat() renders turns, a system prompt, and rejects a last turn that is not the user's", () => {
  assert.equal(
    formatLlavaV1Chat([{ role: "user", text: "A" }, { role: "assistant", text: "B" }, {
      role: "user",
      text: "C",
    }]),
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: A ASSISTANT: B</s>USER: C ASSISTANT:",
  );
  assert.throws(() => formatLlavaV1Chat([{ role: "assistant", text: "B" }]), InputError);
  assert.throws(
    () =>
      formatLlavaV1Chat([{ role: "user", text: "A" }, { role: "system", text: "S" }, {
        role: "user",
        text: "C",
      }]),
    (e: InputError) => e.where === "messages[1]",
  );
});

Deno.test("chat() cuts the text before a stop string, never streams any of it, and reports finishReason stop", async () => {
  await withDemo(async (model) => {
    const messages = [{ role: "user" as const, content: "Tell me more." }];
    const free = await model.chat({ messages, maxNewTokens: 24 });
    assert.ok(free.text.length > 12, free.text);
    const stop = free.text.slice(8, 11);
    const cut = free.text.indexOf(stop);
    const run = model.chat({ messages, maxNewTokens: 24, stop: [stop] });
    let streamed = "";
    for await (const event of run) streamed += event.text;
    const reply = await run;
    assert.equal(reply.text, free.text.slice(0, cut));
    assert.equal(streamed, reply.text);
    assert.equal(reply.finishReason, "stop");
    assert.ok(reply.tokens.length < free.tokens.length);
    assert.deepEqual(reply.tokens, free.tokens.slice(0, reply.tokens.length));
    // A stop id given as a number works the same way in chat() and generate().
    const stopped = await model.chat({ messages, maxNewTokens: 24, stop: [free.tokens[3]] });
    assert.equal(stopped.finishReason, "stop");
    assert.ok(stopped.tokens.length <= 4);
    await assert.rejects(async () => await model.chat({ messages, stop: [""] }), InputError);
    await assert.rejects(
      async () => await model.chat({ messages: [{ role: "robot" as "user", content: "x" }] }),
      (e: InputError) => e.where === "messages[0].role",
    );
  });
});

Deno.test("the CPU backend yields between steps: a timer aborts a long run within one step", async () => {
  await withDemo(async (model) => {
    const controller = new AbortController();
    const run = model.chat({
      messages: [{ role: "user", content: "Count." }],
      maxNewTokens: 1500,
      stop: [],
      signal: controller.signal,
    });
    let seen = 0, seenAtAbort = -1;
    for await (const _ of run) {
      // A macrotask: it only runs if the loop yields to the event loop while decoding.
      if (++seen === 2) setTimeout(() => (seenAtAbort = seen, controller.abort()), 0);
    }
    const reply = await run;
    assert.equal(reply.finishReason, "abort");
    assert.ok(seenAtAbort >= 2, "the timer fired while decoding");
    assert.ok(
      reply.tokens.length <= seenAtAbort + 1,
      `${reply.tokens.length} tokens, abort at ${seenAtAbort}`,
    );
    // generate() keeps rejecting on abort.
    await assert.rejects(
      async () => await model.generate({ prompt: "x", maxNewTokens: 1500, signal: AbortSignal.timeout(1) }),
    );
  });
});
