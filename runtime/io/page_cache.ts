/**
 * The download cache of a page: a checkpoint fetched by URL is held in memory (a {@link memoryFiles}
 * store the checkpoint readers open) and kept across visits in Cache Storage, each file stored with
 * the sha256 it was checked against. `remote.ts` does the downloading and every check on what a
 * server sends; this cache only keeps the result. Needs no `Deno` (Deno has Cache Storage too).
 *
 * A stored file is used again only when its bytes still hash to the recorded sha256 (and to the one
 * the checkpoint's index gives, when it gives one); otherwise it is deleted and downloaded again.
 * Where Cache Storage is missing (an insecure origin) or full, files are kept in memory only.
 * @module
 */
import { memoryFiles } from "../core/files.ts";
import type { DownloadCache, DownloadSink } from "./remote.ts";

/** The header a stored response carries its checked sha256 in. */
const SHA256_HEADER = "x-dynllava-sha256";

/** Options of {@link pageCache}. */
export interface PageCacheOptions {
  /** The Cache Storage cache to use (default "dynllava"); null keeps files in memory only. */
  cacheName?: string | null;
}

/** Hex sha256 of `bytes`. */
async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The named Cache Storage cache, or null where there is none (or the origin may not use it). */
async function openStorage(name: string | null): Promise<Cache | null> {
  if (name === null || typeof caches === "undefined") return null;
  try {
    return await caches.open(name);
  } catch {
    return null; // e.g. an opaque origin: no persistent storage, memory only
  }
}

/**
 * A download cache for pages: memory, backed by Cache Storage. Make one per load, so that the
 * checkpoint's bytes are freed once the model holds its weights.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { pageCache } from "./page_cache.ts";
 * const cache = pageCache({ cacheName: null }); // memory only
 * const dir = await cache.folder("0123abcd");
 * const url = new URL("https://example.com/m/config.json");
 * const sink = await cache.receive(`${dir}/config.json`, url);
 * await sink.write(new TextEncoder().encode("{}"));
 * await sink.commit(await sink.finish());
 * assert.equal(await cache.holds(`${dir}/config.json`, url, undefined), true);
 * assert.equal(new TextDecoder().decode(await cache.files.read(`${dir}/config.json`)), "{}");
 * ```
 */
export function pageCache(options: PageCacheOptions = {}): DownloadCache {
  const cacheName = options.cacheName === undefined ? "dynllava" : options.cacheName;
  const held = new Map<string, Uint8Array>();
  const sha256s = new Map<string, string>();
  let partials = 0;
  return {
    files: memoryFiles(held),
    folder: (key) => Promise.resolve(`/dynllava/${key}`),
    async holds(path, url, sha256) {
      if (held.has(path)) return sha256 === undefined || sha256s.get(path) === sha256;
      const storage = await openStorage(cacheName);
      const stored = await storage?.match(url.href);
      if (!storage || !stored) return false;
      const bytes = new Uint8Array(await stored.arrayBuffer());
      const actual = await sha256Hex(bytes);
      if (actual !== stored.headers.get(SHA256_HEADER) || (sha256 !== undefined && actual !== sha256)) {
        await storage.delete(url.href);
        return false;
      }
      held.set(path, bytes);
      sha256s.set(path, actual);
      return true;
    },
    receive(path, url): Promise<DownloadSink> {
      const partial = `${path}.partial-${++partials}`;
      const chunks: Uint8Array[] = [];
      return Promise.resolve({
        partial,
        write(chunk) {
          chunks.push(chunk.slice());
          return Promise.resolve();
        },
        async finish() {
          const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
          let at = 0;
          for (const chunk of chunks.splice(0)) {
            bytes.set(chunk, at);
            at += chunk.length;
          }
          held.set(partial, bytes);
          return await sha256Hex(bytes);
        },
        async commit(sha256) {
          const bytes = held.get(partial)!;
          held.delete(partial);
          held.set(path, bytes);
          sha256s.set(path, sha256);
          const storage = await openStorage(cacheName);
          const response = new Response(bytes as Uint8Array<ArrayBuffer>, {
            headers: { [SHA256_HEADER]: sha256, "content-type": "application/octet-stream" },
          });
          // Storage is an optimisation: a full quota leaves the file in memory, downloaded next visit.
          await storage?.put(url.href, response).catch(() => {});
        },
        discard() {
          chunks.length = 0;
          held.delete(partial);
          return Promise.resolve();
        },
      });
    },
  };
}
