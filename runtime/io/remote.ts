/**
 * Checkpoints by URL: downloads the files a checkpoint needs (config.json, the tokenizer, the
 * safetensors file or index and shards, and a vision tower stored beside it) into a local cache,
 * once, and returns the local directory. Lets a script imported by `https://` URL load assets that
 * sit next to it (`new URL("../../assets/demo/", import.meta.url)`).
 * Cache: `$DYNLLAVA_CACHE`, else `$XDG_CACHE_HOME/dynllava`, else `~/.cache/dynllava`.
 * @module
 */
import { join } from "node:path";
import { CheckpointError } from "../core/errors.ts";

/** The cache directory of downloaded checkpoints. */
function cacheRoot(): string {
  const env = (name: string) => Deno.env.get(name);
  return env("DYNLLAVA_CACHE") ??
    join(env("XDG_CACHE_HOME") ?? join(env("HOME") ?? "/tmp", ".cache"), "dynllava");
}

async function fetchOrNull(url: URL): Promise<Response | null> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (err) {
    throw new CheckpointError(`Cannot download checkpoint file: ${(err as Error).message}`, url.href, {
      cause: err,
    });
  }
  if (response.status === 404) {
    await response.body?.cancel();
    return null;
  }
  if (!response.ok) {
    await response.body?.cancel();
    throw new CheckpointError(`Cannot download checkpoint file: HTTP ${response.status}`, url.href);
  }
  return response;
}

/** Bytes of one file downloaded so far (totalBytes 0 when the server does not say). */
export interface DownloadProgress {
  item: string;
  loadedBytes: number;
  totalBytes: number;
}

type OnDownload = ((progress: DownloadProgress) => void) | undefined;

/** The body of `response`, reporting its bytes as they pass. */
function counted(response: Response, item: string, onProgress: OnDownload): ReadableStream<Uint8Array> {
  if (!onProgress) return response.body!;
  const totalBytes = Number(response.headers.get("content-length") ?? 0);
  let loadedBytes = 0;
  return response.body!.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        loadedBytes += chunk.length;
        onProgress({ item, loadedBytes, totalBytes: Math.max(totalBytes, loadedBytes) });
        controller.enqueue(chunk);
      },
    }),
  );
}

/** Downloads `name` (relative to `base`) into `dir` unless present; false when the server has no such file. */
async function download(base: URL, name: string, dir: string, onProgress?: OnDownload): Promise<boolean> {
  const target = join(dir, name);
  try {
    await Deno.stat(target);
    return true;
  } catch { /* not cached yet */ }
  const response = await fetchOrNull(new URL(name, base));
  if (!response) return false;
  await Deno.mkdir(join(target, ".."), { recursive: true });
  const partial = `${target}.partial-${crypto.randomUUID()}`;
  try {
    await Deno.writeFile(partial, counted(response, name, onProgress));
    await Deno.rename(partial, target);
  } catch (err) {
    await Deno.remove(partial).catch(() => {});
    throw new CheckpointError(
      `Cannot download checkpoint file: ${(err as Error).message}`,
      new URL(name, base).href,
      {
        cause: err,
      },
    );
  }
  return true;
}

async function readJson(path: string, where: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    throw new CheckpointError(`Cannot read JSON: ${(err as Error).message}`, where, { cause: err });
  }
}

/** Downloads the weights of one folder: the index and its shards, or model.safetensors. */
async function downloadWeights(
  base: URL,
  prefix: string,
  dir: string,
  onProgress: OnDownload,
): Promise<void> {
  const index = `${prefix}model.safetensors.index.json`;
  if (await download(base, index, dir, onProgress)) {
    const map = (await readJson(join(dir, index), new URL(index, base).href))["weight_map"];
    if (typeof map !== "object" || map === null) {
      throw new CheckpointError(
        "Cannot read the shard index: weight_map is missing",
        new URL(index, base).href,
      );
    }
    for (const shard of new Set(Object.values(map as Record<string, string>))) {
      if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\") || shard.startsWith(".")) {
        throw new CheckpointError(
          `Cannot download shard ${JSON.stringify(shard)}: not a plain file name`,
          base.href,
        );
      }
      if (!(await download(base, prefix + shard, dir, onProgress))) {
        throw new CheckpointError(
          `Cannot download shard: ${shard} not found`,
          new URL(prefix + shard, base).href,
        );
      }
    }
    return;
  }
  if (!(await download(base, `${prefix}model.safetensors`, dir, onProgress))) {
    throw new CheckpointError(
      "Cannot download checkpoint: no model.safetensors or index",
      new URL(prefix, base).href,
    );
  }
}

/**
 * Makes a checkpoint given by http(s) URL available locally and returns its directory.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fetchCheckpoint } from "./remote.ts";
 * // A local server stands in for the remote host, serving a tiny checkpoint.
 * const served = "tests/fixtures/out/llama-f32";
 * const server = Deno.serve({ port: 0, onListen() {} }, async (request) => {
 *   const file = await Deno.readFile(`${served}${new URL(request.url).pathname}`).catch(() => null);
 *   return file ? new Response(file) : new Response("not found", { status: 404 });
 * });
 * const cache = await Deno.makeTempDir();
 * Deno.env.set("DYNLLAVA_CACHE", cache);
 * const dir = await fetchCheckpoint(new URL(`http://localhost:${server.addr.port}/`));
 * assert.ok(dir.startsWith(cache));
 * for (const name of ["config.json", "tokenizer.json", "model.safetensors"]) {
 *   assert.deepEqual(await Deno.readFile(`${dir}/${name}`), await Deno.readFile(`${served}/${name}`));
 * }
 * await server.shutdown();
 * Deno.env.delete("DYNLLAVA_CACHE");
 * await Deno.remove(cache, { recursive: true });
 * ```
 */
export async function fetchCheckpoint(
  url: URL,
  options: { onProgress?: (progress: DownloadProgress) => void } = {},
): Promise<string> {
  const onProgress = options.onProgress;
  const base = new URL(url.href.endsWith("/") ? url.href : `${url.href}/`);
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(base.href));
  const key = Array.from(new Uint8Array(digest).subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
  const dir = join(cacheRoot(), key);
  await Deno.mkdir(dir, { recursive: true });
  if (!(await download(base, "config.json", dir, onProgress))) {
    throw new CheckpointError(
      "Cannot download checkpoint: config.json not found",
      new URL("config.json", base).href,
    );
  }
  if (
    !(await download(base, "tokenizer.json", dir, onProgress)) &&
    !(await download(base, "tokenizer.model", dir, onProgress))
  ) {
    throw new CheckpointError("Cannot download checkpoint: no tokenizer.json or tokenizer.model", base.href);
  }
  await downloadWeights(base, "", dir, onProgress);
  const config = await readJson(join(dir, "config.json"), new URL("config.json", base).href);
  const tower = config["mm_vision_tower"];
  // A tower stored beside the checkpoint (a relative path) travels with it; hub ids resolve in the HF cache.
  if (
    typeof tower === "string" && config["text_config"] === undefined && /^(\.\/)?[\w-][\w.-]*\/?$/.test(tower)
  ) {
    const prefix = `${tower.replace(/^\.\//, "").replace(/\/$/, "")}/`;
    if (await download(base, `${prefix}config.json`, dir, onProgress)) {
      await downloadWeights(base, prefix, dir, onProgress);
    }
  }
  return dir;
}
