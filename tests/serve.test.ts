/** examples/serve.ts: JSON and streamed generation over HTTP semantics, and clear 400s. */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { createHandler } from "../examples/serve.ts";
import { loadModel } from "../mod.ts";
import { encodeImage, makeTestImage } from "../tools/fixtures/images.ts";

const post = (body: unknown) =>
  new Request("http://localhost/generate", {
    method: "POST",
    body: typeof body === "string" ? body : JSON.stringify(body),
  });

Deno.test("createHandler() serves JSON and streamed results equal to generate(), and 400 on bad input", async () => {
  const model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
  try {
    const handler = createHandler(model);
    const health = await (await handler(new Request("http://localhost/health"))).json();
    assert.deepEqual(health, { layout: "llava_llama", backend: "cpu", vocabSize: 952, visualTokens: 64 });
    const png = await encodeImage(makeTestImage(20, 16), "png");
    const body = {
      prompt: "What is it?",
      image: Buffer.from(png).toString("base64"),
      maxNewTokens: 5,
      stop: [],
    };
    const direct = await model.generate({ ...body, image: png });
    const response = await handler(post(body));
    assert.equal(response.status, 200);
    const result = await response.json();
    assert.deepEqual(result.tokens, direct.tokens);
    assert.deepEqual(result.visualKept, direct.visualKept);
    const streamed = await (await handler(post({ ...body, stream: true }))).text();
    const tokens = [...streamed.matchAll(/event: token\ndata: (.*)\n/g)].map((m) => JSON.parse(m[1]).token);
    assert.deepEqual(tokens, direct.tokens);
    assert.match(streamed, /event: result\ndata: \{"tokens":/);
    const bad = await handler(post({ inputIds: [1, 99999] }));
    assert.equal(bad.status, 400);
    assert.deepEqual(await bad.json(), {
      error: "Cannot build prompt: id 99999 at index 1 is outside the vocabulary (0..951)",
      where: "inputIds[1]",
    });
    assert.equal((await handler(post("{nope"))).status, 400);
    assert.equal((await handler(new Request("http://localhost/other"))).status, 404);
  } finally {
    model.dispose();
  }
});
