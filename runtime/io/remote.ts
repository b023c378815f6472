/**
 * Checkpoints by URL: downloads the files a checkpoint needs (config.json, the tokenizer, the
 * safetensors file or index and shards, and a vision tower stored beside it) into a local cache,
 * once, and returns the local directory. Lets a script imported by `https://` URL load assets that
 * sit next to it (`new URL("../../assets/demo/", import.meta.url)`).
 * Cache: `$DYNLLAVA_CACHE`, else `$XDG_CACHE_HOME/dynllava`, else `~/.cache/dynllava`.
 *
 * A checkpoint's server is not trusted:
 * - Only http(s) bases. Every file name (shards from the index, a tower folder from
 *   `mm_vision_tower`) must, after percent-decoding, be a plain relative name inside the
 *   checkpoint's folder: no scheme, no `/` or `\` (one folder level for a tower), no `.` first, no
 *   `%`. The URL built from it must keep the base's origin and folder.
 * - A download goes to a temporary file renamed into place only when it is whole and valid: the
 *   status is 200, the content type is not HTML, the byte count equals Content-Length (when sent)
 *   and stays under a per-kind cap, JSON files parse, safetensors files tile exactly, and the
 *   sha256 matches the one given by the index (`"sha256": { "<file>": "<hex>" }`), by a
 *   `<file>.sha256` beside it, or by an ETag that is a sha256 (as Hugging Face sends for large
 *   files). Nothing invalid is ever cached.
 * - Every cached file's size, mtime and sha256 are recorded beside it (`<file>.dynllava.json`); a
 *   file whose size or mtime changed is hashed again, and a mismatch is deleted and downloaded again.
 * - Loaders in one process share each download; across processes the rename is atomic.
 * Not checked: redirects are followed (to any http(s) host, as Hugging Face's CDN needs), and a
 * cached file changed in place without changing its size or mtime is not re-hashed.
 * @module
 */
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { CheckpointError } from "../core/errors.ts";
import { openSafetensors } from "./safetensors.ts";

/** Largest accepted download per kind of file, in bytes. */
const MAX_BYTES = {
  json: 64 * 1024 * 1024,
  tokenizer: 256 * 1024 * 1024,
  weights: 2 ** 46,
};

/** Bytes of one file downloaded so far (totalBytes 0 when the server does not say). */
export interface DownloadProgress {
  /** The file's name inside the checkpoint. */
  item: string;
  /** Bytes received so far. */
  loadedBytes: number;
  /** The file's size as the server announced it (at least loadedBytes). */
  totalBytes: number;
}

type OnDownload = ((progress: DownloadProgress) => void) | undefined;

/** What a recorded cache entry holds. */
interface CacheRecord {
  size: number;
  mtimeMs: number;
  sha256: string;
}

/** The cache directory of downloaded checkpoints. */
function cacheRoot(): string {
  const env = (name: string) => Deno.env.get(name);
  return env("DYNLLAVA_CACHE") ??
    join(env("XDG_CACHE_HOME") ?? join(env("HOME") ?? "/tmp", ".cache"), "dynllava");
}

/**
 * Checks that `name` (as found in an index or config) is a plain file name, or `folder/` + one,
 * inside the checkpoint's folder once percent-decoded, and returns its URL under `base`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { safeFileUrl } from "./remote.ts";
 * import { CheckpointError } from "../core/errors.ts";
 * const base = new URL("https://example.com/models/tiny/");
 * assert.equal(safeFileUrl(base, "model-00001.safetensors").href, "https://example.com/models/tiny/model-00001.safetensors");
 * assert.throws(() => safeFileUrl(base, "file:etc%2Fpasswd"), CheckpointError);
 * assert.throws(() => safeFileUrl(base, "%2e%2e/secret"), CheckpointError);
 * ```
 */
export function safeFileUrl(base: URL, name: unknown, options: { folders?: number } = {}): URL {
  const refuse = (why: string) =>
    new CheckpointError(`Cannot download ${JSON.stringify(name)}: ${why}`, base.href);
  if (typeof name !== "string" || name.length === 0 || name.length > 255) {
    throw refuse("not a file name");
  }
  let decoded = name;
  try {
    decoded = decodeURIComponent(name);
  } catch {
    throw refuse("bad percent-encoding");
  }
  const parts = decoded.split("/");
  const folders = options.folders ?? 0;
  const isPlain = (part: string) =>
    part.length > 0 && !part.startsWith(".") && ![...part].some((c) => c < " " || "\\:%?#".includes(c));
  if (parts.length > folders + 1 || !parts.every(isPlain)) {
    throw refuse("not a plain file name inside the checkpoint's folder");
  }
  const url = new URL(parts.map(encodeURIComponent).join("/"), base);
  const inside = url.origin === base.origin && url.pathname.startsWith(base.pathname) &&
    url.search === "" && url.hash === "";
  if (!inside) throw refuse("it leaves the checkpoint's folder");
  return url;
}

/** In-flight downloads of this process, by cache path: concurrent loaders share one. */
const inFlight = new Map<string, Promise<boolean>>();

/** Downloads `name` into `dir` unless validly cached; false when the server has no such file. */
function download(
  base: URL,
  name: string,
  dir: string,
  options: { kind: keyof typeof MAX_BYTES; sha256?: string; onProgress?: OnDownload },
): Promise<boolean> {
  const target = join(dir, name);
  const running = inFlight.get(target);
  if (running) return running;
  const job = downloadOnce(base, name, target, options).finally(() => inFlight.delete(target));
  inFlight.set(target, job);
  return job;
}

async function downloadOnce(
  base: URL,
  name: string,
  target: string,
  options: { kind: keyof typeof MAX_BYTES; sha256?: string; onProgress?: OnDownload },
): Promise<boolean> {
  const url = safeFileUrl(base, name, { folders: 1 });
  if (await cachedIsValid(target, options.sha256)) return true;
  const response = await fetchOrNull(url);
  if (!response) return false;
  const expected = options.sha256 ?? etagSha256(response) ?? await sidecarSha256(url);
  await Deno.mkdir(dirname(target), { recursive: true });
  const partial = `${target}.partial-${crypto.randomUUID()}`;
  try {
    const sha256 = await writeChecked(response, partial, {
      url,
      max: MAX_BYTES[options.kind],
      report: options.onProgress &&
        ((loadedBytes: number, totalBytes: number) =>
          options.onProgress!({ item: name, loadedBytes, totalBytes })),
    });
    if (expected !== undefined && sha256 !== expected) {
      throw new CheckpointError(
        `Cannot download checkpoint file: sha256 ${sha256} differs from the expected ${expected}`,
        url.href,
      );
    }
    await checkContent(partial, target, url);
    await Deno.rename(partial, target);
    const info = await Deno.stat(target);
    const record: CacheRecord = { size: info.size, mtimeMs: info.mtime?.getTime() ?? 0, sha256 };
    await writeRecord(target, record);
  } catch (err) {
    await Deno.remove(partial).catch(() => {});
    if (err instanceof CheckpointError) throw err;
    throw new CheckpointError(`Cannot download checkpoint file: ${(err as Error).message}`, url.href, {
      cause: err,
    });
  }
  return true;
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
  if (response.status !== 200) {
    await response.body?.cancel();
    throw new CheckpointError(`Cannot download checkpoint file: HTTP ${response.status}`, url.href);
  }
  const type = response.headers.get("content-type") ?? "";
  if (/^\s*(text\/html|application\/xhtml\+xml)/i.test(type)) {
    await response.body?.cancel();
    throw new CheckpointError(
      `Cannot download checkpoint file: the server sent a web page (${type})`,
      url.href,
    );
  }
  return response;
}

/** Streams the body into `path`, counting and hashing; checks Content-Length and the size cap. */
async function writeChecked(
  response: Response,
  path: string,
  options: { url: URL; max: number; report?: (loadedBytes: number, totalBytes: number) => void },
): Promise<string> {
  const declared = response.headers.get("content-length");
  const length = declared === null ? null : Number(declared);
  const fail = (why: string) =>
    new CheckpointError(`Cannot download checkpoint file: ${why}`, options.url.href);
  if (length !== null && !(Number.isSafeInteger(length) && length >= 0)) {
    throw fail(`bad Content-Length ${declared}`);
  }
  if (length !== null && length > options.max) throw fail(`${length} bytes, more than ${options.max}`);
  const hash = createHash("sha256");
  const file = await Deno.open(path, { write: true, createNew: true });
  let written = 0;
  try {
    if (response.body) {
      for await (const chunk of response.body) {
        written += chunk.length;
        if (written > options.max || (length !== null && written > length)) {
          await response.body.cancel().catch(() => {});
          throw fail(`more bytes than ${length ?? options.max}`);
        }
        hash.update(chunk);
        for (let at = 0; at < chunk.length;) at += await file.write(chunk.subarray(at));
        options.report?.(written, Math.max(length ?? 0, written));
      }
    }
  } finally {
    file.close();
  }
  if (length !== null && written !== length) throw fail(`truncated: ${written} of ${length} bytes`);
  return hash.digest("hex");
}

/** A downloaded file must be usable: JSON parses, safetensors tile exactly. */
async function checkContent(partial: string, target: string, url: URL): Promise<void> {
  if (target.endsWith(".json")) {
    try {
      JSON.parse(await Deno.readTextFile(partial));
    } catch (err) {
      throw new CheckpointError(
        `Cannot download checkpoint file: not valid JSON (${(err as Error).message})`,
        url.href,
      );
    }
  } else if (target.endsWith(".safetensors")) {
    try {
      await openSafetensors(partial);
    } catch (err) {
      throw new CheckpointError(`Cannot download checkpoint file: ${(err as Error).message}`, url.href, {
        cause: err,
      });
    }
  }
}

function etagSha256(response: Response): string | undefined {
  const tag = response.headers.get("x-linked-etag") ?? response.headers.get("etag") ?? "";
  const hex = tag.replace(/^W\//, "").replaceAll('"', "").toLowerCase();
  return /^[0-9a-f]{64}$/.test(hex) ? hex : undefined;
}

/** The sha256 in `<file>.sha256` beside it (first word, as `sha256sum` writes), if served. */
async function sidecarSha256(url: URL): Promise<string | undefined> {
  let response: Response | null;
  try {
    response = await fetchOrNull(new URL(`${url.href}.sha256`));
  } catch (err) {
    // A host answering every path with a web page (a single-page-app fallback) has no sidecar.
    if (err instanceof CheckpointError && /web page/.test(err.message)) return undefined;
    throw err;
  }
  if (!response) return undefined;
  const text = (await response.text()).slice(0, 4096).trim().split(/\s+/)[0].toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(text)) {
    throw new CheckpointError(
      "Cannot download checkpoint file: its .sha256 holds no sha256",
      `${url.href}.sha256`,
    );
  }
  return text;
}

function recordPath(target: string): string {
  return `${target}.dynllava.json`;
}

async function writeRecord(target: string, record: CacheRecord): Promise<void> {
  const partial = `${recordPath(target)}.partial-${crypto.randomUUID()}`;
  await Deno.writeTextFile(partial, JSON.stringify(record));
  await Deno.rename(partial, recordPath(target));
}

/**
 * True when `target` is cached and matches its record (and `sha256` when given). A file without a
 * record, or one that fails the check, is deleted so that it is downloaded again.
 */
async function cachedIsValid(target: string, sha256: string | undefined): Promise<boolean> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(target);
  } catch {
    return false;
  }
  if (!info.isFile) {
    throw new CheckpointError(
      `Cannot use the checkpoint cache: ${target} is not a regular file; delete it`,
      target,
    );
  }
  let record: CacheRecord | null = null;
  try {
    record = JSON.parse(await Deno.readTextFile(recordPath(target)));
  } catch { /* no record: not trusted */ }
  let valid = record !== null && typeof record.sha256 === "string" &&
    (sha256 === undefined || record.sha256 === sha256);
  if (valid && (record!.size !== info.size || record!.mtimeMs !== (info.mtime?.getTime() ?? 0))) {
    valid = await sha256OfFile(target) === record!.sha256;
  }
  if (!valid) {
    try {
      await Deno.remove(target);
      await Deno.remove(recordPath(target)).catch(() => {});
    } catch (err) {
      throw new CheckpointError(
        `Cannot use the checkpoint cache: ${target} is corrupt and cannot be removed (${
          (err as Error).message
        }); delete it`,
        target,
      );
    }
  }
  return valid;
}

async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

async function readJson(path: string, url: URL): Promise<Record<string, unknown>> {
  try {
    const value = JSON.parse(await Deno.readTextFile(path));
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new Error("not a JSON object");
    }
    return value;
  } catch (err) {
    throw new CheckpointError(
      `Cannot read ${url.href}: ${(err as Error).message}; delete the cached copy ${path}`,
      path,
      { cause: err },
    );
  }
}

/** The index's optional `"sha256": { file: hex }` map. */
function indexSha256(index: Record<string, unknown>, file: string): string | undefined {
  const map = index["sha256"];
  if (typeof map !== "object" || map === null) return undefined;
  const hex = (map as Record<string, unknown>)[file];
  return typeof hex === "string" && /^[0-9a-f]{64}$/i.test(hex) ? hex.toLowerCase() : undefined;
}

/** Downloads the weights of one folder: the index and its shards, or model.safetensors. */
async function downloadWeights(
  base: URL,
  prefix: string,
  dir: string,
  onProgress: OnDownload,
): Promise<void> {
  const index = `${prefix}model.safetensors.index.json`;
  if (await download(base, index, dir, { kind: "json", onProgress })) {
    const indexUrl = safeFileUrl(base, index, { folders: 1 });
    const json = await readJson(join(dir, index), indexUrl);
    const map = json["weight_map"];
    if (typeof map !== "object" || map === null || Array.isArray(map)) {
      throw new CheckpointError(
        `Cannot read the shard index ${indexUrl.href}: weight_map is missing; delete the cached copy`,
        join(dir, index),
      );
    }
    for (const shard of new Set(Object.values(map as Record<string, unknown>))) {
      // A shard is a plain file name in the index's folder (checked before anything is fetched).
      safeFileUrl(base, shard);
      const name = decodeURIComponent(shard as string);
      if (
        !(await download(base, prefix + name, dir, {
          kind: "weights",
          sha256: indexSha256(json, name),
          onProgress,
        }))
      ) {
        throw new CheckpointError(
          `Cannot download shard: ${name} not found`,
          safeFileUrl(base, prefix + name, { folders: 1 }).href,
        );
      }
    }
    return;
  }
  if (!(await download(base, `${prefix}model.safetensors`, dir, { kind: "weights", onProgress }))) {
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
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new CheckpointError(`Cannot download checkpoint: only http(s) URLs, got ${url.protocol}`, url.href);
  }
  const base = new URL(url.href.endsWith("/") ? url.href : `${url.href}/`);
  base.search = "";
  base.hash = "";
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(base.href));
  const key = Array.from(new Uint8Array(digest).subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join(
    "",
  );
  const dir = join(cacheRoot(), key);
  await Deno.mkdir(dir, { recursive: true });
  if (!(await download(base, "config.json", dir, { kind: "json", onProgress }))) {
    throw new CheckpointError(
      "Cannot download checkpoint: config.json not found",
      new URL("config.json", base).href,
    );
  }
  const hasTokenizer = await download(base, "tokenizer.json", dir, { kind: "tokenizer", onProgress }) ||
    await download(base, "tokenizer.model", dir, { kind: "tokenizer", onProgress });
  if (!hasTokenizer) {
    throw new CheckpointError("Cannot download checkpoint: no tokenizer.json or tokenizer.model", base.href);
  }
  await downloadWeights(base, "", dir, onProgress);
  const config = await readJson(join(dir, "config.json"), new URL("config.json", base));
  const tower = config["mm_vision_tower"];
  // A tower stored beside the checkpoint (a relative path) travels with it; hub ids resolve in the HF cache.
  if (
    typeof tower === "string" && config["text_config"] === undefined && /^(\.\/)?[\w-][\w.-]*\/?$/.test(tower)
  ) {
    const folder = tower.replace(/^\.\//, "").replace(/\/$/, "");
    safeFileUrl(base, folder);
    const prefix = `${folder}/`;
    if (await download(base, `${prefix}config.json`, dir, { kind: "json", onProgress })) {
      await downloadWeights(base, prefix, dir, onProgress);
    }
  }
  return dir;
}
