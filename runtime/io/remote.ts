/**
 * Checkpoints by URL: downloads the files a checkpoint needs (config.json, the tokenizer, the
 * safetensors file or index and shards, and a vision tower stored beside it) into a
 * {@link DownloadCache}, once, and returns the checkpoint's folder there. Lets a script imported by
 * `https://` URL load assets that sit next to it (`new URL("../../assets/demo/", import.meta.url)`).
 * The default cache is a folder on disk ({@link diskCache}): `$DYNLLAVA_CACHE`, else
 * `$XDG_CACHE_HOME/dynllava`, else `~/.cache/dynllava`; a page uses `page_cache.ts` (memory and
 * Cache Storage) through the same interface, so both go through the checks below.
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
import type { FileStore } from "../core/files.ts";
import { localFiles } from "./files.ts";
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

/** Where downloaded files are kept: a folder per checkpoint, read back through {@link DownloadCache.files}. */
export interface DownloadCache {
  /** Reads what the cache holds (paths as {@link DownloadCache.folder} and the file names make them). */
  readonly files: FileStore;
  /** The folder of the checkpoint whose base URL digests to `key`, made when needed. */
  folder(key: string): Promise<string>;
  /** Whether `path` (downloaded from `url`) is held and valid, of `sha256` when given; a bad copy is dropped. */
  holds(path: string, url: URL, sha256: string | undefined): Promise<boolean>;
  /** Starts receiving the bytes of `path`, downloaded from `url`. */
  receive(path: string, url: URL): Promise<DownloadSink>;
}

/** One file being received into a {@link DownloadCache}. */
export interface DownloadSink {
  /** Where the bytes written so far can be read through the cache's `files`, once finished. */
  readonly partial: string;
  /** Appends bytes. */
  write(chunk: Uint8Array): Promise<void>;
  /** Ends writing and returns the sha256 (hex) of all bytes written. */
  finish(): Promise<string>;
  /** Puts the finished file at its path, recorded with its sha256. */
  commit(sha256: string): Promise<void>;
  /** Drops what was written (after a failure). */
  discard(): Promise<void>;
}

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

/** Options of one file's download. */
interface DownloadOptions {
  kind: keyof typeof MAX_BYTES;
  sha256?: string;
  onProgress?: OnDownload;
}

/** Downloads `name` into `dir` of `cache` unless validly held; false when the server has no such file. */
function download(
  base: URL,
  name: string,
  dir: string,
  cache: DownloadCache,
  options: DownloadOptions,
): Promise<boolean> {
  const target = join(dir, name);
  const running = inFlight.get(target);
  if (running) return running;
  const job = downloadOnce(base, name, target, cache, options).finally(() => inFlight.delete(target));
  inFlight.set(target, job);
  return job;
}

async function downloadOnce(
  base: URL,
  name: string,
  target: string,
  cache: DownloadCache,
  options: DownloadOptions,
): Promise<boolean> {
  const url = safeFileUrl(base, name, { folders: 1 });
  if (await cache.holds(target, url, options.sha256)) return true;
  const response = await fetchOrNull(url);
  if (!response) return false;
  const expected = options.sha256 ?? etagSha256(response) ?? await sidecarSha256(url);
  let sink: DownloadSink | null = null;
  try {
    sink = await cache.receive(target, url);
    const sha256 = await writeChecked(response, sink, {
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
    await checkContent(sink.partial, target, url, cache.files);
    await sink.commit(sha256);
  } catch (err) {
    await sink?.discard().catch(() => {});
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

/** Streams the body into `sink`, counting; checks Content-Length and the size cap; returns the sha256. */
async function writeChecked(
  response: Response,
  sink: DownloadSink,
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
  let written = 0;
  if (response.body) {
    for await (const chunk of response.body) {
      written += chunk.length;
      if (written > options.max || (length !== null && written > length)) {
        await response.body.cancel().catch(() => {});
        throw fail(`more bytes than ${length ?? options.max}`);
      }
      await sink.write(chunk);
      options.report?.(written, Math.max(length ?? 0, written));
    }
  }
  const sha256 = await sink.finish();
  if (length !== null && written !== length) throw fail(`truncated: ${written} of ${length} bytes`);
  return sha256;
}

/** A downloaded file must be usable: JSON parses, safetensors tile exactly. */
async function checkContent(partial: string, target: string, url: URL, files: FileStore): Promise<void> {
  if (target.endsWith(".json")) {
    try {
      JSON.parse(new TextDecoder().decode(await files.read(partial)));
    } catch (err) {
      throw new CheckpointError(
        `Cannot download checkpoint file: not valid JSON (${(err as Error).message})`,
        url.href,
      );
    }
  } else if (target.endsWith(".safetensors")) {
    try {
      await openSafetensors(partial, files);
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

/**
 * The disk cache: one folder per checkpoint under `$DYNLLAVA_CACHE` (else `$XDG_CACHE_HOME/dynllava`,
 * else `~/.cache/dynllava`); each file written to a temporary name, renamed when whole and checked,
 * its size, mtime and sha256 recorded beside it (`<file>.dynllava.json`).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { diskCache } from "./remote.ts";
 * const root = await Deno.makeTempDir();
 * Deno.env.set("DYNLLAVA_CACHE", root);
 * const cache = diskCache();
 * const dir = await cache.folder("0123abcd");
 * const url = new URL("https://example.com/m/config.json");
 * const sink = await cache.receive(`${dir}/config.json`, url);
 * await sink.write(new TextEncoder().encode("{}"));
 * await sink.commit(await sink.finish());
 * assert.equal(await cache.holds(`${dir}/config.json`, url, undefined), true);
 * assert.equal(await Deno.readTextFile(`${root}/0123abcd/config.json`), "{}");
 * Deno.env.delete("DYNLLAVA_CACHE");
 * await Deno.remove(root, { recursive: true });
 * ```
 */
export function diskCache(): DownloadCache {
  return {
    files: localFiles,
    async folder(key) {
      const dir = join(cacheRoot(), key);
      await Deno.mkdir(dir, { recursive: true });
      return dir;
    },
    holds: (path, _url, sha256) => cachedIsValid(path, sha256),
    async receive(path) {
      await Deno.mkdir(dirname(path), { recursive: true });
      const partial = `${path}.partial-${crypto.randomUUID()}`;
      const file = await Deno.open(partial, { write: true, createNew: true });
      const hash = createHash("sha256");
      let open = true;
      const close = () => {
        if (open) file.close();
        open = false;
      };
      return {
        partial,
        async write(chunk) {
          hash.update(chunk);
          for (let at = 0; at < chunk.length;) at += await file.write(chunk.subarray(at));
        },
        finish() {
          close();
          return Promise.resolve(hash.digest("hex"));
        },
        async commit(sha256) {
          await Deno.rename(partial, path);
          const info = await Deno.stat(path);
          await writeRecord(path, { size: info.size, mtimeMs: info.mtime?.getTime() ?? 0, sha256 });
        },
        async discard() {
          close();
          await Deno.remove(partial).catch(() => {});
        },
      };
    },
  };
}

async function readJson(path: string, url: URL, files: FileStore): Promise<Record<string, unknown>> {
  try {
    const value = JSON.parse(new TextDecoder().decode(await files.read(path)));
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
  cache: DownloadCache,
  onProgress: OnDownload,
): Promise<void> {
  const index = `${prefix}model.safetensors.index.json`;
  if (await download(base, index, dir, cache, { kind: "json", onProgress })) {
    const indexUrl = safeFileUrl(base, index, { folders: 1 });
    const json = await readJson(join(dir, index), indexUrl, cache.files);
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
        !(await download(base, prefix + name, dir, cache, {
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
  if (!(await download(base, `${prefix}model.safetensors`, dir, cache, { kind: "weights", onProgress }))) {
    throw new CheckpointError(
      "Cannot download checkpoint: no model.safetensors or index",
      new URL(prefix, base).href,
    );
  }
}

/**
 * Makes a checkpoint given by http(s) URL available in `options.cache` (the disk cache by default)
 * and returns its folder there, to be read through the cache's `files`.
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
  options: { onProgress?: (progress: DownloadProgress) => void; cache?: DownloadCache } = {},
): Promise<string> {
  const onProgress = options.onProgress;
  const cache = options.cache ?? diskCache();
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
  const dir = await cache.folder(key);
  if (!(await download(base, "config.json", dir, cache, { kind: "json", onProgress }))) {
    throw new CheckpointError(
      "Cannot download checkpoint: config.json not found",
      new URL("config.json", base).href,
    );
  }
  const hasTokenizer =
    await download(base, "tokenizer.json", dir, cache, { kind: "tokenizer", onProgress }) ||
    await download(base, "tokenizer.model", dir, cache, { kind: "tokenizer", onProgress });
  if (!hasTokenizer) {
    throw new CheckpointError("Cannot download checkpoint: no tokenizer.json or tokenizer.model", base.href);
  }
  await downloadWeights(base, "", dir, cache, onProgress);
  const config = await readJson(join(dir, "config.json"), new URL("config.json", base), cache.files);
  const tower = config["mm_vision_tower"];
  // A tower stored beside the checkpoint (a relative path) travels with it; hub ids resolve in the HF cache.
  if (
    typeof tower === "string" && config["text_config"] === undefined && /^(\.\/)?[\w-][\w.-]*\/?$/.test(tower)
  ) {
    const folder = tower.replace(/^\.\//, "").replace(/\/$/, "");
    safeFileUrl(base, folder);
    const prefix = `${folder}/`;
    if (await download(base, `${prefix}config.json`, dir, cache, { kind: "json", onProgress })) {
      await downloadWeights(base, prefix, dir, cache, onProgress);
    }
  }
  return dir;
}
