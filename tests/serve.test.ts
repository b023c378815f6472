/**
 * The OpenAI-compatible server: the official `openai` client against `deno task serve --demo`
 * gets the same text as generate(), streamed and not; the handler's statuses and OpenAI error
 * shapes; a CPU stream that arrives while decoding, a /health that answers meanwhile, and a
 * disconnect that stops the request within a step; concurrent requests decoded as one batch.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
// deno-lint-ignore no-import-prefix
import { OpenAI } from "npm:openai@7.59.0";
import { type GenerateRequest, type GenerateRun, loadModel, type Model } from "../mod.ts";
import { createChatServer } from "../serve/server.ts";
import { encodeImage, makeTestImage } from "../tools/fixtures/images.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";
import { startServer } from "./serve_util.ts";

const DEMO = new URL("../assets/demo/", import.meta.url);
const PNG = await encodeImage(makeTestImage(20, 16), "png");
const DATA_URI = `data:image/png;base64,${Buffer.from(PNG).toString("base64")}`;
const userTurn = (text: string) => ({
  role: "user" as const,
  content: [{ type: "image_url" as const, image_url: { url: DATA_URI } }, { type: "text" as const, text }],
});

Deno.test("the openai client against `serve --demo` gets generate()'s text, as a completion and as a stream", async () => {
  const server = await startServer(["--demo", "--backend", "cpu", "--api-key", "sekret"]);
  const model = await loadModel(DEMO, { backend: "cpu" });
  try {
    const direct = await model.generate({
      prompt: "Describe the image in detail.",
      image: PNG,
      maxNewTokens: 12,
    });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "sekret" });
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), ["dynllava-demo"]);
    const completion = await client.chat.completions.create({
      model: "dynllava-demo",
      messages: [userTurn("Describe the image in detail.")],
      max_tokens: 12,
    });
    assert.equal(completion.choices[0].message.content, direct.text);
    assert.equal(completion.choices[0].finish_reason, "length");
    assert.deepEqual(completion.usage, {
      prompt_tokens: direct.usage.promptTokens,
      completion_tokens: 12,
      total_tokens: direct.usage.totalTokens,
    });
    const extension = (completion as unknown as { dynllava: Record<string, unknown> }).dynllava;
    assert.equal(extension.policy, "dynamic");
    assert.equal(extension.visual_kept, direct.stats.visualKeptCount);
    assert.deepEqual(extension.kv_rows_per_layer, direct.stats.kvCache.rowsPerLayer);

    const stream = await client.chat.completions.create({
      model: "dynllava-demo",
      messages: [userTurn("Describe the image in detail.")],
      max_completion_tokens: 12,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "", finish: string | null = null, usage = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      usage = chunk.usage ?? usage;
    }
    assert.equal(text, direct.text);
    assert.equal(finish, "length");
    assert.equal(usage?.completion_tokens, 12);

    // Stop strings end the text before them, with finish_reason "stop".
    const stop = direct.text.slice(5, 8);
    const stopped = await client.chat.completions.create({
      model: "dynllava-demo",
      messages: [userTurn("Describe the image in detail.")],
      max_tokens: 12,
      stop: [stop],
    });
    assert.equal(stopped.choices[0].message.content, direct.text.slice(0, direct.text.indexOf(stop)));
    assert.equal(stopped.choices[0].finish_reason, "stop");

    const wrongKey = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "nope", maxRetries: 0 });
    await assert.rejects(() => wrongKey.models.list(), (e: { status: number }) => e.status === 401);
    await assert.rejects(
      () =>
        client.chat.completions.create({
          model: "dynllava-demo",
          messages: [userTurn("x")],
          temperature: "hot" as unknown as number,
          stream: true,
        }),
      (e: { status: number; param: string }) => e.status === 400 && e.param === "temperature",
    );
  } finally {
    model.dispose();
    await server.stop();
  }
});

const post = (body: unknown, headers: Record<string, string> = {}) =>
  new Request("http://localhost/v1/chat/completions", {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

Deno.test("createChatServer() answers 503 while loading, 405/404/401/413/400 in OpenAI's shape, CORS only when set", async () => {
  const server = createChatServer({ modelName: "m", apiKey: "k", maxBodyBytes: 4096 });
  assert.equal((await server.handler(new Request("http://localhost/health"))).status, 503);
  const auth = { authorization: "Bearer k" };
  const loading = await server.handler(post({ model: "m", messages: [] }, auth));
  assert.equal(loading.status, 503);
  assert.equal((await loading.json()).error.code, "loading");
  const model = await loadModel(DEMO, { backend: "cpu" });
  try {
    server.ready(model);
    const health = await server.handler(new Request("http://localhost/health"));
    assert.equal(health.status, 200);
    assert.equal(health.headers.get("access-control-allow-origin"), null);
    assert.deepEqual(await health.json(), {
      status: "ok",
      model: "m",
      layout: "llava_llama",
      backend: "cpu",
      default_policy: "dynamic",
      vocab_size: 952,
      visual_tokens: 64,
    });
    const wrongMethod = await server.handler(new Request("http://localhost/v1/chat/completions"));
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.headers.get("allow"), "POST");
    assert.equal((await wrongMethod.json()).error.type, "invalid_request_error");
    assert.equal((await server.handler(new Request("http://localhost/nope"))).status, 404);
    const ok = { model: "m", messages: [{ role: "user", content: "Hi" }], max_tokens: 2 };
    assert.equal((await server.handler(post(ok))).status, 401);
    assert.equal((await server.handler(post(ok, { authorization: "Bearer kk" }))).status, 401);
    assert.equal((await server.handler(post(ok, auth))).status, 200);
    const big = await server.handler(post({ ...ok, pad: "x".repeat(5000) }, auth));
    assert.equal(big.status, 413);
    const cases: [unknown, number, string | null][] = [
      ["{nope", 400, "body"],
      [{ ...ok, model: "other" }, 404, "model"],
      [{ ...ok, temperature: "hot" }, 400, "temperature"],
      [{ ...ok, max_tokens: 0 }, 400, "max_tokens"],
      [{ ...ok, n: 2 }, 400, "n"],
      [
        {
          ...ok,
          messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "ftp://x" } }] }],
        },
        400,
        "messages[0].content[0].image_url",
      ],
      [{ ...ok, max_tokens: 5000 }, 400, "max_tokens"],
    ];
    for (const [body, status, param] of cases) {
      for (const stream of [false, true]) {
        const response = await server.handler(
          post(typeof body === "string" ? body : { ...(body as object), stream }, auth),
        );
        assert.equal(response.status, status, JSON.stringify(body));
        assert.equal(response.headers.get("content-type"), "application/json");
        const error = (await response.json()).error;
        assert.equal(error.param, param, JSON.stringify(body));
        assert.match(error.message, /^Cannot /);
      }
    }
    const cors = createChatServer({ modelName: "m", cors: "https://app.example" });
    cors.ready(model);
    const preflight = await cors.handler(
      new Request("http://localhost/v1/chat/completions", { method: "OPTIONS" }),
    );
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get("access-control-allow-origin"), "https://app.example");
    assert.match(preflight.headers.get("access-control-allow-headers")!, /authorization/);
    const models = await cors.handler(new Request("http://localhost/v1/models"));
    assert.equal(models.headers.get("access-control-allow-origin"), "https://app.example");
  } finally {
    model.dispose();
  }
});

/** Wraps `model.streamBatch` to keep every batch it runs. */
function recordBatches(model: Model): GenerateRun[][] {
  const batches: GenerateRun[][] = [];
  const original = model.streamBatch.bind(model);
  model.streamBatch = (requests: GenerateRequest[]) => {
    const runs = original(requests);
    batches.push(runs);
    return runs;
  };
  return batches;
}

for (const backend of ["cpu", "webgpu"] as const) {
  Deno.test(`on ${backend} a stream arrives while decoding, /health answers meanwhile, and a disconnect stops it within a step`, async () => {
    // Random weights: the answer runs on (the trained demo would say </s> after a few tokens).
    const model = await loadModel(await ensureFixture("llava-f32-dyn"), { backend });
    const batches = recordBatches(model);
    const server = createChatServer({ modelName: "m" });
    server.ready(model);
    const http = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, server.handler);
    try {
      const url = `http://127.0.0.1:${http.addr.port}`;
      const client = new AbortController();
      const response = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        body: JSON.stringify({
          model: "m",
          messages: [{ role: "user", content: "Count." }],
          max_tokens: 1500,
          stream: true,
          policy: "dense",
        }),
        signal: client.signal,
      });
      assert.equal(response.headers.get("content-type"), "text/event-stream");
      const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
      let received = "";
      while ((received.match(/^data: /gm) ?? []).length < 3) received += (await reader.read()).value;
      const health = await fetch(`${url}/health`);
      assert.equal(health.status, 200, "health answers while the stream decodes");
      await health.body?.cancel();
      client.abort();
      const result = await batches[0][0];
      assert.equal(result.finishReason, "abort");
      assert.ok(result.tokens.length < 1500, `${result.tokens.length} tokens decoded`);
      assert.equal(result.stats.newTokens, result.tokens.length);
    } finally {
      await http.shutdown();
      model.dispose();
    }
  });
}

for (const backend of ["cpu", "webgpu"] as const) {
  Deno.test(`concurrent requests on ${backend} decode together (shared GPU steps), a late one joins, each gets its text alone`, async () => {
    const model = await loadModel(DEMO, { backend });
    const batches = recordBatches(model);
    const server = createChatServer({ modelName: "m" });
    server.ready(model);
    try {
      const texts = ["One", "Two", "Three"];
      const alone: string[] = [];
      for (const text of texts) {
        alone.push((await model.chat({ messages: [{ role: "user", content: text }], maxNewTokens: 8 })).text);
      }
      const stepsBefore = model.batchedSteps;
      const responses = await Promise.all(
        texts.map((text, i) =>
          server.handler(
            post({ model: "m", messages: [{ role: "user", content: text }], max_tokens: 8, stream: i === 1 }),
          )
        ),
      );
      const answers: string[] = [];
      for (const [i, response] of responses.entries()) {
        if (i !== 1) answers.push((await response.json()).choices[0].message.content);
        else {
          const events = [...(await response.text()).matchAll(/^data: (.*)$/gm)].map((m) => m[1]);
          assert.equal(events.at(-1), "[DONE]");
          answers.push(
            events.slice(0, -1).map((e) => JSON.parse(e).choices[0]?.delta.content ?? "").join(""),
          );
        }
      }
      assert.deepEqual(answers, alone);
      assert.deepEqual(batches.map((b) => b.length), [1, 1, 1]);
      if (backend === "webgpu") {
        assert.ok(model.batchedSteps > stepsBefore, "decode steps were shared");
      }

      // A request arriving while a long one streams joins the running batch and finishes first (on
      // WebGPU it decodes interleaved with it: the GPU shares steps of calls that arrive together).
      const longTurn = [{ role: "user" as const, content: "Long" }];
      const longAlone = await model.chat({ messages: longTurn, maxNewTokens: 100 });
      const shortAlone = await model.chat({
        messages: [{ role: "user", content: "Short" }],
        maxNewTokens: 8,
      });
      const streaming = await server.handler(
        post({ model: "m", messages: longTurn, max_tokens: 100, stream: true }),
      );
      const reader = streaming.body!.pipeThrough(new TextDecoderStream()).getReader();
      let received = (await reader.read()).value!;
      const short = await server.handler(
        post({ model: "m", messages: [{ role: "user", content: "Short" }], max_tokens: 8 }),
      );
      assert.equal((await short.json()).choices[0].message.content, shortAlone.text);
      assert.ok(!received.includes("[DONE]"), "the short request did not wait for the long one");
      for (let part = await reader.read(); !part.done; part = await reader.read()) received += part.value;
      const streamed = [...received.matchAll(/^data: (\{.*\})$/gm)]
        .map((m) => JSON.parse(m[1]).choices[0]?.delta.content ?? "").join("");
      assert.equal(streamed, longAlone.text);
    } finally {
      model.dispose();
    }
  });
}

Deno.test("image_url parts fetch http(s) URLs like data: URIs, and a failing URL is a 400 naming the part", async () => {
  const images = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) =>
      new URL(request.url).pathname === "/cat.png"
        ? new Response(new Uint8Array(PNG))
        : new Response("gone", { status: 404 }),
  );
  const model = await loadModel(DEMO, { backend: "cpu" });
  try {
    const server = createChatServer({ modelName: "m" });
    server.ready(model);
    const ask = (url: string) =>
      server.handler(post({
        model: "m",
        messages: [{
          role: "user",
          content: [{ type: "image_url", image_url: { url } }, { type: "text", text: "Hi" }],
        }],
        max_tokens: 4,
      }));
    const base = `http://127.0.0.1:${images.addr.port}`;
    const byUrl = await (await ask(`${base}/cat.png`)).json();
    const byData = await (await ask(DATA_URI)).json();
    assert.equal(byUrl.choices[0].message.content, byData.choices[0].message.content);
    assert.equal(byUrl.dynllava.visual_tokens, 64);
    const missing = await ask(`${base}/none.png`);
    assert.equal(missing.status, 400);
    const error = (await missing.json()).error;
    assert.equal(error.param, "messages[0].content[0].image_url");
    assert.match(error.message, /HTTP 404/);
  } finally {
    model.dispose();
    await images.shutdown();
  }
});
