/** Checkpoints by http URL, served by a real local HTTP server. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CheckpointError, loadModel, type LoadProgress } from "../mod.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

/** Serves `root` on a free port; counts requests per path. */
function serve(root: string) {
  const hits = new Map<string, number>();
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    const path = decodeURIComponent(new URL(request.url).pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    try {
      return new Response(await Deno.readFile(join(root, path)));
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  return { server, hits, base: `http://127.0.0.1:${server.addr.port}/` };
}

Deno.test("loadModel() downloads an http checkpoint once (with its vision tower) and runs it", async () => {
  const dir = await ensureFixture("llava-f32-dyn");
  const cache = await Deno.makeTempDir();
  Deno.env.set("DYNLLAVA_CACHE", cache);
  const { server, hits, base } = serve(join(dir, ".."));
  try {
    const url = `${base}llava-f32-dyn/`;
    const image = { width: 8, height: 8, data: new Uint8Array(192).fill(90) };
    const request = { prompt: "Hi", image, maxNewTokens: 3, stop: [], policy: "dynamic" as const };
    const progress: LoadProgress[] = [];
    const remote = await loadModel(url, { backend: "cpu", onProgress: (p) => progress.push({ ...p }) });
    // Download progress per file first, then the weights: every phase reports bytes up to its total.
    const phases = [...new Set(progress.map((p) => p.phase))];
    assert.deepEqual(phases, ["download", "weights"]);
    const weightsFile = progress.filter((p) => p.phase === "download" && p.item === "model.safetensors");
    const size = (await Deno.stat(join(dir, "model.safetensors"))).size;
    assert.deepEqual(weightsFile.at(-1), {
      phase: "download",
      item: "model.safetensors",
      loadedBytes: size,
      totalBytes: size,
    });
    const weights = progress.filter((p) => p.phase === "weights");
    assert.ok(weights.every((p, i) => i === 0 || p.loadedBytes >= weights[i - 1].loadedBytes));
    assert.equal(weights.at(-1)!.loadedBytes, weights.at(-1)!.totalBytes);
    const local = await loadModel(dir, { backend: "cpu" });
    assert.deepEqual((await remote.generate(request)).tokens, (await local.generate(request)).tokens);
    remote.dispose();
    local.dispose();
    assert.equal(hits.get("/llava-f32-dyn/clip/model.safetensors"), 1);
    (await loadModel(url, { backend: "cpu" })).dispose();
    assert.equal(hits.get("/llava-f32-dyn/model.safetensors"), 1, "served from the cache the second time");
    await assert.rejects(() => loadModel(`${base}missing/`, { backend: "cpu" }), CheckpointError);
  } finally {
    Deno.env.delete("DYNLLAVA_CACHE");
    await server.shutdown();
    await Deno.remove(cache, { recursive: true });
  }
});
