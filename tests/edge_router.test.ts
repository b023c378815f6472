/**
 * The edge router (examples/edge_router.ts) against two real workers (`deno task serve` on the tiny
 * `llava-f32-dyn` fixture, CPU backend, each with a K/V budget that holds one request): requests are
 * forwarded and spread over the workers, a request that fits nowhere waits in the queue and is served
 * once a finished response frees memory, a worker that is down is skipped, a request larger than every
 * budget is refused; the workers' `GET /v1/dynllava/status` reports their K/V memory.
 * @module
 */
import assert from "node:assert/strict";
import { MemoryPlanner } from "../runtime/core/planner.ts";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import { createEdgeRouter, requestShape } from "../examples/edge_router.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";
import { type StartedServer, startServer } from "./serve_util.ts";

const MAX_TOKENS = 12;
const body = (content: string, maxTokens = MAX_TOKENS) => ({
  model: "llava-f32-dyn",
  messages: [{ role: "user", content }],
  max_tokens: maxTokens,
});
const post = (payload: unknown) =>
  new Request("http://router/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(payload),
  });

/** Resolves once `condition()` holds, checking every 10 ms (no deadline: the test runner's applies). */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** A base URL where nothing listens. */
function deadUrl(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return `http://127.0.0.1:${port}`;
}

const dir = await ensureFixture("llava-f32-dyn");
const config = (await openCheckpoint(dir)).config;
// What the router reserves for one request (workers assume f32 K/V until they measure): a budget of
// 1.5 of it holds one request at a time.
const oneRequest = new MemoryPlanner({ config, budgetBytes: Infinity, kvDtype: "f32" })
  .requestBytes({ id: "r", ...requestShape(body("Describe a red square.")), policy: "dynamic" });
const budgetBytes = Math.ceil((1.5 * oneRequest) / 1024) * 1024;

Deno.test("the edge router forwards and spreads, queues what does not fit, skips a worker that is down", async () => {
  const started: StartedServer[] = [];
  try {
    for (let i = 0; i < 2; i++) {
      started.push(
        await startServer([
          "--model",
          dir,
          "--backend",
          "cpu",
          "--model-name",
          "llava-f32-dyn",
          "--kv-budget-mib",
          String(budgetBytes / 2 ** 20),
        ]),
      );
    }
    const [w1, w2] = started.map((s) => s.url);

    // The workers report their K/V memory and config.
    const status = await (await fetch(`${w1}/v1/dynllava/status`)).json();
    assert.equal(status.kv_budget_bytes, budgetBytes);
    assert.deepEqual([status.kv_free_bytes, status.running, status.waiting], [budgetBytes, 0, 0]);
    assert.equal(status.kv_bytes_per_element, 4);
    assert.equal(status.config.text.numLayers, 4);

    const pair = createEdgeRouter({ workers: [w1, w2], pollMs: 20 });
    try {
      // Spread: each worker holds one request while its response is unread.
      const a = await pair.handler(post(body("Describe a red square.")));
      const b = await pair.handler(post(body("Describe a blue circle.")));
      assert.deepEqual([a.status, b.status], [200, 200]);
      assert.equal(a.headers.get("x-dynllava-worker"), w1);
      assert.equal(b.headers.get("x-dynllava-worker"), w2);
      assert.deepEqual(pair.status().workers.map((w) => w.inFlight), [1, 1]);

      // Queued: a third fits nowhere until a response has been passed on.
      let cSettled = false;
      const c = pair.handler(post(body("Describe a green star."))).then((response) => {
        cSettled = true;
        return response;
      });
      await until(() => pair.status().queued === 1);
      assert.equal(cSettled, false);
      const answerA = await a.json();
      assert.equal(answerA.object, "chat.completion");
      assert.ok(answerA.dynllava.kv_bytes > 0);
      const served = await c;
      assert.equal(served.status, 200);
      assert.equal(served.headers.get("x-dynllava-worker"), w1); // where memory was freed
      assert.equal((await served.json()).choices[0].message.role, "assistant");
      await b.body?.cancel();
      await until(() => pair.status().workers.every((w) => w.inFlight === 0));
      assert.deepEqual(pair.status().workers.map((w) => w.forwarded), [2, 1]);
      assert.equal(pair.status().queued, 0);

      // Larger than every worker's budget: refused, not queued forever.
      const huge = await pair.handler(post(body("Write a long story.", 1500)));
      assert.equal(huge.status, 400);
      assert.equal((await huge.json()).error.code, "kv_budget_exceeded");
    } finally {
      pair.close();
    }

    // A worker that is down is skipped.
    const dead = deadUrl();
    const withDead = createEdgeRouter({ workers: [dead, w1, w2], pollMs: 20 });
    try {
      for (const content of ["One.", "Two."]) {
        const response = await withDead.handler(post(body(content)));
        assert.equal(response.status, 200);
        assert.notEqual(response.headers.get("x-dynllava-worker"), dead);
        await response.body?.cancel();
      }
      const health = await (await withDead.handler(new Request("http://router/health"))).json();
      assert.deepEqual(health.workers.map((w: { up: boolean }) => w.up), [false, true, true]);
      assert.equal(health.workers[0].forwarded, 0);
    } finally {
      withDead.close();
    }

    // The worker refuses on its own what its budget can never hold.
    const direct = await fetch(`${w1}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify(body("Write a long story.", 1500)),
    });
    assert.equal(direct.status, 400);
    assert.equal((await direct.json()).error.code, "kv_budget_exceeded");
  } finally {
    for (const server of started) await server.stop();
  }
});

Deno.test("the edge router answers 503 with no worker, 404/405 for other routes, 401 without the key, 400 for bad JSON, 413 past the body limit", async () => {
  const router = createEdgeRouter({ workers: [deadUrl()], apiKey: "sekret" });
  try {
    assert.equal((await router.handler(new Request("http://router/health"))).status, 503);
    assert.equal((await router.handler(new Request("http://router/v2/x"))).status, 404);
    assert.equal((await router.handler(new Request("http://router/v1/chat/completions"))).status, 405);
    const unauthorized = await router.handler(post(body("Hi")));
    assert.equal(unauthorized.status, 401);
    await unauthorized.body?.cancel();
    const authorized = (payload: string) =>
      router.handler(
        new Request("http://router/v1/chat/completions", {
          method: "POST",
          headers: { authorization: "Bearer sekret" },
          body: payload,
        }),
      );
    const badJson = await authorized("{");
    assert.equal(badJson.status, 400);
    assert.equal((await badJson.json()).error.code, "invalid_json");
    const noWorker = await authorized(JSON.stringify(body("Hi")));
    assert.equal(noWorker.status, 503);
    assert.equal((await noWorker.json()).error.code, "no_worker");
  } finally {
    router.close();
  }
  const small = createEdgeRouter({ workers: [], maxBodyBytes: 100 });
  try {
    const tooLarge = await small.handler(post(body("x".repeat(200))));
    assert.equal(tooLarge.status, 413);
    assert.equal((await tooLarge.json()).error.code, "too_large");
  } finally {
    small.close();
  }
});
