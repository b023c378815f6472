/**
 * A hostile or broken checkpoint server, served for real on a local port: shard names that try
 * to leave the checkpoint's folder, web pages and truncated bodies, wrong sha256 sums, a corrupted
 * cache, and concurrent loaders.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { CheckpointError, loadModel } from "../mod.ts";
import { fetchCheckpoint } from "../runtime/io/remote.ts";
import { ensureFixture } from "../tools/make_fixtures.ts";

type Override = (path: string, file: Uint8Array<ArrayBuffer> | null) => Response | null;

/** A server of `root` in which `override` may answer any path first; counts hits per path. */
function serve(root: string) {
  const hits = new Map<string, number>();
  let override: Override = () => null;
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    const path = decodeURIComponent(new URL(request.url).pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const file = await Deno.readFile(join(root, path)).catch(() => null);
    const answer = override(path, file);
    if (answer) return answer;
    return file ? new Response(file) : new Response("not found", { status: 404 });
  });
  return {
    hits,
    base: `http://127.0.0.1:${server.addr.port}/ckpt/`,
    setOverride: (next: Override) => (override = next),
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

/** A served root holding `ckpt/` (a sharded llama fixture) and `secret.txt` beside it; a fresh cache. */
async function setup() {
  const root = await Deno.makeTempDir({ prefix: "hostile-remote-" });
  const cache = await Deno.makeTempDir({ prefix: "hostile-cache-" });
  const from = await ensureFixture("llama-bf16-sharded");
  await Deno.mkdir(join(root, "ckpt"));
  for await (const entry of Deno.readDir(from)) {
    await Deno.copyFile(join(from, entry.name), join(root, "ckpt", entry.name));
  }
  await Deno.writeTextFile(join(root, "secret.txt"), "TOP SECRET");
  Deno.env.set("DYNLLAVA_CACHE", cache);
  const server = serve(root);
  return {
    root,
    cache,
    server,
    async [Symbol.asyncDispose]() {
      Deno.env.delete("DYNLLAVA_CACHE");
      await server[Symbol.asyncDispose]();
      await Deno.remove(root, { recursive: true });
      await Deno.remove(cache, { recursive: true });
    },
  };
}

async function cachedFiles(cache: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory) await walk(join(dir, e.name));
      else out.push(join(dir, e.name));
    }
  };
  await walk(cache);
  return out;
}

const INDEX = "/ckpt/model.safetensors.index.json";
const SHARD = "/ckpt/model-00001-of-00003.safetensors";

Deno.test("a hostile shard index reads nothing outside the checkpoint's folder and reaches no other host", async () => {
  await using s = await setup();
  const index = JSON.parse(await Deno.readTextFile(join(s.root, INDEX)));
  const tensor = Object.keys(index.weight_map)[0];
  const names = [
    "file:etc%2Fpasswd",
    "file:///etc/passwd",
    "https:127.0.0.1:1",
    "//127.0.0.1:1/x.safetensors",
    "%2e%2e%2fsecret.txt",
    "%2E%2E/secret.txt",
    "../secret.txt",
    "/secret.txt",
    "sub%2fx.safetensors",
    "..\\secret.txt",
    ".hidden.safetensors",
    "%252e%252e%252fsecret.txt",
    "x.safetensors?y=1",
    "%zz",
    7,
  ];
  for (const name of names) {
    s.server.setOverride((path) =>
      path === INDEX ? Response.json({ ...index, weight_map: { ...index.weight_map, [tensor]: name } }) : null
    );
    await assert.rejects(
      () => loadModel(s.server.base, { backend: "cpu" }),
      (err) => err instanceof CheckpointError && !err.message.includes("SECRET"),
      String(name),
    );
  }
  assert.equal(s.server.hits.get("/secret.txt"), undefined);
  assert.ok(
    [...s.server.hits.keys()].every((path) => path.startsWith("/ckpt/")),
    [...s.server.hits.keys()].join(),
  );
  for (const file of await cachedFiles(s.cache)) {
    assert.ok(!(await Deno.readTextFile(file).catch(() => "")).includes("SECRET"), file);
  }
  await assert.rejects(() => fetchCheckpoint(new URL("file:///etc/")), CheckpointError);
});

Deno.test("a web page or a truncated body is never cached: the next load with a good server works", async () => {
  await using s = await setup();
  const breakages: [string, Override][] = [
    [
      "web page for config.json",
      (path) =>
        path === "/ckpt/config.json"
          ? new Response("<html>login</html>", { headers: { "content-type": "text/html" } })
          : null,
    ],
    ["invalid JSON config", (path) => (path === "/ckpt/config.json" ? new Response("{ not json") : null)],
    [
      "truncated shard without Content-Length",
      (path, file) =>
        path === SHARD
          ? new Response(new Blob([file!.subarray(0, file!.length - 10)]).stream(), {
            headers: { "content-type": "application/octet-stream" },
          })
          : null,
    ],
    ["HTTP 500", (path) => (path === SHARD ? new Response("oops", { status: 500 }) : null)],
  ];
  for (const [what, breakage] of breakages) {
    s.server.setOverride(breakage);
    await assert.rejects(() => loadModel(s.server.base, { backend: "cpu" }), CheckpointError, what);
    assert.ok(
      (await cachedFiles(s.cache)).every((f) => !f.includes(".partial-")),
      `${what}: no temporary file left`,
    );
  }
  s.server.setOverride(() => null);
  (await loadModel(s.server.base, { backend: "cpu" })).dispose();
});

Deno.test("sha256 sums from a .sha256 file, an ETag or the index are checked", async () => {
  await using s = await setup();
  const shard = await Deno.readFile(join(s.root, SHARD));
  const good = createHash("sha256").update(shard).digest("hex");
  const wrong = "0".repeat(64);
  const index = JSON.parse(await Deno.readTextFile(join(s.root, INDEX)));
  const shardName = SHARD.slice("/ckpt/".length);
  const cases: [Override, boolean][] = [
    [(path) => (path === `${SHARD}.sha256` ? new Response(`${wrong}  ${shardName}\n`) : null), false],
    [
      (path, file) => (path === SHARD ? new Response(file, { headers: { etag: `"${wrong}"` } }) : null),
      false,
    ],
    [(path) => (path === INDEX ? Response.json({ ...index, sha256: { [shardName]: wrong } }) : null), false],
    [(path) => (path === `${SHARD}.sha256` ? new Response(`${good}  ${shardName}\n`) : null), true],
  ];
  for (const [override, ok] of cases) {
    await Deno.remove(s.cache, { recursive: true }); // the index is cached after the first load
    s.server.setOverride(override);
    if (ok) (await loadModel(s.server.base, { backend: "cpu" })).dispose();
    else {
      await assert.rejects(
        () => loadModel(s.server.base, { backend: "cpu" }),
        (err) => err instanceof CheckpointError && err.message.includes(`differs from the expected ${wrong}`),
      );
    }
  }
});

Deno.test("a corrupted cache entry is detected and downloaded again; concurrent loaders share downloads", async () => {
  await using s = await setup();
  const [a, b] = await Promise.all([
    loadModel(s.server.base, { backend: "cpu" }),
    loadModel(s.server.base, { backend: "cpu" }),
  ]);
  a.dispose();
  b.dispose();
  assert.equal(s.server.hits.get(SHARD), 1, "one download for two concurrent loaders");
  const cached = (await cachedFiles(s.cache)).find((f) => f.endsWith(SHARD.slice("/ckpt".length)))!;
  const bytes = await Deno.readFile(cached);
  bytes[bytes.length - 1] ^= 0xff;
  await Deno.writeFile(cached, bytes); // same size, new mtime
  (await loadModel(s.server.base, { backend: "cpu" })).dispose();
  assert.equal(s.server.hits.get(SHARD), 2, "the corrupted shard was fetched again");
  (await loadModel(s.server.base, { backend: "cpu" })).dispose();
  assert.equal(s.server.hits.get(SHARD), 2, "a valid entry is used as is");
});
