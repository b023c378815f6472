/**
 * The file system as a {@link FileStore} ({@link localFiles}, through Deno's file API, touched only
 * when called, so a page may load this module), and {@link isNotFound} for errors of either store.
 * @module
 */
import { type DirEntry, FileNotFoundError, type FileStore } from "../core/files.ts";

/**
 * Whether `error` says that a file or directory does not exist (in either store).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isNotFound, localFiles } from "./files.ts";
 * const error = await localFiles.read("/no/such/file").catch((e) => e);
 * assert.ok(isNotFound(error));
 * assert.ok(!isNotFound(new Error("permission denied")));
 * ```
 */
export function isNotFound(error: unknown): boolean {
  return error instanceof FileNotFoundError ||
    (typeof Deno !== "undefined" && error instanceof Deno.errors.NotFound);
}

/**
 * Whether this runtime has a file system the runtime may read (Deno; not a page).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { hasFileSystem } from "./files.ts";
 * assert.equal(hasFileSystem(), true); // in Deno
 * ```
 */
export function hasFileSystem(): boolean {
  return typeof Deno !== "undefined";
}

/**
 * The file system, through Deno's file API.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { localFiles } from "./files.ts";
 * const info = await localFiles.stat("assets/demo/config.json");
 * assert.ok(info?.isFile);
 * const head = await localFiles.readAt("assets/demo/config.json", 0, 1);
 * assert.equal(new TextDecoder().decode(head), "{");
 * assert.equal(await localFiles.stat("assets/demo/missing.json"), null);
 * ```
 */
export const localFiles: FileStore = {
  async stat(path) {
    try {
      const info = await Deno.stat(path);
      return { isFile: info.isFile, isDirectory: info.isDirectory, size: info.size };
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null;
      throw error;
    }
  },
  async list(dir) {
    const entries: DirEntry[] = [];
    for await (const entry of Deno.readDir(dir)) {
      entries.push({ name: entry.name, isDirectory: entry.isDirectory });
    }
    return entries;
  },
  read: (path) => Deno.readFile(path),
  async readAt(path, offset, length) {
    using file = await Deno.open(path, { read: true });
    await file.seek(offset, Deno.SeekMode.Start);
    const bytes = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const read = await file.read(bytes.subarray(filled));
      if (read === null) break;
      filled += read;
    }
    return filled === length ? bytes : bytes.slice(0, filled);
  },
};
