/**
 * The loader interface of checkpoint readers: a {@link FileStore} reads a tree of files, and
 * {@link memoryFiles} is one held in memory (a page keeps the checkpoint it fetched so). The
 * safetensors, shard, checkpoint and tokenizer readers take a store, so the same code opens a folder
 * on disk in Deno (`runtime/io/files.ts`) and a downloaded checkpoint in a browser. Pure: no `Deno`.
 *
 * Paths are POSIX strings (`dir/name`); a memory store's paths are absolute under its own root.
 * @module
 */

/** What {@link FileStore.stat} tells about a path. */
export interface FileInfo {
  /** A regular file (a symlink to one counts). */
  isFile: boolean;
  /** A directory. */
  isDirectory: boolean;
  /** Bytes, for a file. */
  size: number;
}

/** One entry of a directory listing. */
export interface DirEntry {
  /** The entry's name, without its directory. */
  name: string;
  /** Whether it is a directory. */
  isDirectory: boolean;
}

/** Read access to a tree of files. */
export interface FileStore {
  /** What is there, following symlinks; null when nothing is. */
  stat(path: string): Promise<FileInfo | null>;
  /** The entries of a directory; a missing one throws (a {@link FileNotFoundError} in memory). */
  list(dir: string): Promise<DirEntry[]>;
  /** A whole file; a missing one throws (a {@link FileNotFoundError} in memory). */
  read(path: string): Promise<Uint8Array>;
  /** `length` bytes from `offset` (fewer when the file ends first), in a fresh buffer. */
  readAt(path: string, offset: number, length: number): Promise<Uint8Array>;
}

/** Thrown by {@link memoryFiles} for a path it does not hold. */
export class FileNotFoundError extends Error {
  /** `path`: what was looked for. */
  constructor(path: string) {
    super(`No such file or directory: ${path}`);
    this.name = "FileNotFoundError";
  }
}

/**
 * Files held in memory, by absolute path (`/root/dir/name`); directories are the paths' prefixes.
 * The store reads the map as it is when called, so files may be added later.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { memoryFiles } from "./files.ts";
 * const files = new Map([["/ckpt/config.json", new TextEncoder().encode("{}")]]);
 * const store = memoryFiles(files);
 * assert.deepEqual(await store.stat("/ckpt"), { isFile: false, isDirectory: true, size: 0 });
 * assert.deepEqual(await store.list("/ckpt"), [{ name: "config.json", isDirectory: false }]);
 * assert.deepEqual(await store.readAt("/ckpt/config.json", 1, 5), new Uint8Array([0x7d]));
 * ```
 */
export function memoryFiles(files: ReadonlyMap<string, Uint8Array>): FileStore {
  const trim = (path: string) => path.replace(/\/+$/, "");
  const isDir = (dir: string) => [...files.keys()].some((key) => key.startsWith(`${dir}/`));
  const file = (path: string) => {
    const bytes = files.get(path);
    if (bytes === undefined) throw new FileNotFoundError(path);
    return bytes;
  };
  return {
    stat(path) {
      const key = trim(path);
      const bytes = files.get(key);
      if (bytes !== undefined) {
        return Promise.resolve({ isFile: true, isDirectory: false, size: bytes.length });
      }
      return Promise.resolve(isDir(key) ? { isFile: false, isDirectory: true, size: 0 } : null);
    },
    list(dir) {
      const key = trim(dir);
      if (!isDir(key)) return Promise.reject(new FileNotFoundError(dir));
      const entries = new Map<string, boolean>();
      for (const path of files.keys()) {
        if (!path.startsWith(`${key}/`)) continue;
        const [name, ...rest] = path.slice(key.length + 1).split("/");
        entries.set(name, (entries.get(name) ?? false) || rest.length > 0);
      }
      return Promise.resolve([...entries].map(([name, isDirectory]) => ({ name, isDirectory })));
    },
    read(path) {
      try {
        return Promise.resolve(file(trim(path)));
      } catch (error) {
        return Promise.reject(error);
      }
    },
    readAt(path, offset, length) {
      try {
        return Promise.resolve(file(trim(path)).slice(offset, offset + length));
      } catch (error) {
        return Promise.reject(error);
      }
    },
  };
}
