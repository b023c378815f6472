/**
 * Safetensors files: validates the header as strictly as the reference parser, reads single
 * tensors with seek + read (a file is never held whole in memory), and writes files (for fixtures).
 *
 * File layout: `u64 little-endian N` | `N bytes of UTF-8 JSON` | data. The JSON object maps each
 * tensor name to `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the data
 * section) plus an optional `__metadata__` string→string map. A valid file has no duplicate keys,
 * supported dtypes only (F32, F16, BF16), tensors that tile the data section exactly (sorted by
 * begin: no gap, no overlap, from 0 to the last byte of the file) and byte counts equal to
 * product(shape) × element size. Anything else is a {@link CheckpointError} whose `where` is the
 * file path and whose message names the tensor.
 * @module
 */
import { type DType, dtypeBytes, isDType } from "../core/dtype.ts";
import { CheckpointError } from "../core/errors.ts";
import type { FileStore } from "../core/files.ts";
import { isNotFound, localFiles } from "./files.ts";

/** Largest accepted JSON header, in bytes (as the reference parser). */
export const MAX_HEADER_BYTES = 100_000_000;

/** One tensor of a safetensors file. */
export interface TensorEntry {
  /** Tensor name as written in the header. */
  name: string;
  /** Element type. */
  dtype: DType;
  /** Dimensions, outermost first; `[]` for a scalar. */
  shape: number[];
  /** Absolute position of the first byte in the file. */
  byteOffset: number;
  /** product(shape) × dtypeBytes(dtype). */
  byteLength: number;
}

/** A validated safetensors header; the data stays on disk. */
export interface SafetensorsFile {
  /** The file's path. */
  path: string;
  /** Tensors in header order. */
  entries: Map<string, TensorEntry>;
  /** The header's `__metadata__` strings ({} when absent). */
  metadata: Record<string, string>;
  /** The store the file is read from (the file system when absent). */
  files?: FileStore;
}

/** A tensor to write with {@link writeSafetensors}. */
export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  /** Little-endian element bytes, product(shape) × dtypeBytes(dtype) of them. */
  data: Uint8Array;
}

/**
 * Validates a safetensors header. `prefix` holds the file's first 8 + N bytes (it may hold more);
 * `fileSize` is the whole file's size, so the data section is checked without reading it. Pure.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseSafetensorsHeader, writeSafetensors } from "./safetensors.ts";
 * const bytes = writeSafetensors([{ name: "w", dtype: "F32", shape: [2], data: new Uint8Array(8) }]);
 * const file = parseSafetensorsHeader(bytes, bytes.length, "w.safetensors");
 * assert.deepEqual(file.entries.get("w")?.shape, [2]);
 * assert.equal(file.entries.get("w")?.byteLength, 8);
 * ```
 */
export function parseSafetensorsHeader(prefix: Uint8Array, fileSize: number, where: string): SafetensorsFile {
  const headerBytes = readHeaderLength(prefix.subarray(0, 8), fileSize, where);
  if (prefix.length < 8 + headerBytes) {
    throw new CheckpointError(
      `Cannot read safetensors header: file is truncated (${prefix.length} bytes available, header needs ${
        8 + headerBytes
      })`,
      where,
    );
  }
  const header = decodeHeaderJson(prefix.subarray(8, 8 + headerBytes), where);
  const dataStart = 8 + headerBytes;
  const metadata = readMetadata(header.__metadata__, where);
  const spans: TensorSpan[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name !== "__metadata__") spans.push(readTensorSpan(name, raw, where));
  }
  checkSpansTileData(spans, fileSize - dataStart, where);
  const entries = new Map<string, TensorEntry>();
  for (const span of spans) {
    entries.set(span.name, {
      name: span.name,
      dtype: span.dtype,
      shape: span.shape,
      byteOffset: dataStart + span.begin,
      byteLength: span.end - span.begin,
    });
  }
  return { path: where, entries, metadata };
}

/** Reads the u64 header length and checks it against the cap and the file size. */
function readHeaderLength(lengthBytes: Uint8Array, fileSize: number, where: string): number {
  if (lengthBytes.length < 8 || fileSize < 8) {
    throw new CheckpointError(
      `Cannot read safetensors header: file is truncated (${fileSize} bytes, shorter than the 8-byte header length)`,
      where,
    );
  }
  const view = new DataView(lengthBytes.buffer, lengthBytes.byteOffset, 8);
  const headerBytes = view.getBigUint64(0, true);
  if (headerBytes > BigInt(MAX_HEADER_BYTES)) {
    throw new CheckpointError(
      `Cannot read safetensors header: header length ${headerBytes} exceeds the cap of ${MAX_HEADER_BYTES} bytes`,
      where,
    );
  }
  if (8 + Number(headerBytes) > fileSize) {
    throw new CheckpointError(
      `Cannot read safetensors header: header length ${headerBytes} runs past the end of the file (${fileSize} bytes)`,
      where,
    );
  }
  return Number(headerBytes);
}

/** UTF-8 → JSON object, rejecting bad UTF-8, non-JSON, non-objects and duplicate keys. */
function decodeHeaderJson(jsonBytes: Uint8Array, where: string): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(jsonBytes);
  } catch (cause) {
    throw new CheckpointError("Cannot read safetensors header: header is not valid UTF-8", where, { cause });
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    throw new CheckpointError(`Cannot read safetensors header: header is not JSON (${reason})`, where, {
      cause,
    });
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    const kind = Array.isArray(header) ? "an array" : header === null ? "null" : `a ${typeof header}`;
    throw new CheckpointError(`Cannot read safetensors header: header is ${kind}, not a JSON object`, where);
  }
  const duplicate = findDuplicateJsonKey(text);
  if (duplicate !== undefined) {
    throw new CheckpointError(
      `Cannot read safetensors header: duplicate key ${JSON.stringify(duplicate)}`,
      where,
    );
  }
  return header as Record<string, unknown>;
}

/**
 * Finds a key that occurs twice in one object of a JSON text (JSON.parse silently keeps the last
 * one). `text` must already be valid JSON. Returns the first duplicate key, or undefined.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { findDuplicateJsonKey } from "./safetensors.ts";
 * assert.equal(findDuplicateJsonKey('{"a": 1, "b": {"a": 2}}'), undefined); // different objects
 * assert.equal(findDuplicateJsonKey('{"a": 1, "\\u0061": 2}'), "a"); // the same key, escaped
 * ```
 */
export function findDuplicateJsonKey(text: string): string | undefined {
  // One frame per open object or array; keys is null for arrays.
  const frames: { keys: Set<string> | null; expectingKey: boolean }[] = [];
  for (let i = 0; i < text.length; i++) {
    const char = text.charCodeAt(i);
    if (char === 0x22 /* " */) {
      const end = endOfJsonString(text, i);
      const frame = frames[frames.length - 1];
      if (frame?.keys && frame.expectingKey) {
        const key: string = JSON.parse(text.slice(i, end + 1));
        if (frame.keys.has(key)) return key;
        frame.keys.add(key);
        frame.expectingKey = false;
      }
      i = end;
    } else if (char === 0x7b /* { */) {
      frames.push({ keys: new Set(), expectingKey: true });
    } else if (char === 0x5b /* [ */) {
      frames.push({ keys: null, expectingKey: false });
    } else if (char === 0x7d /* } */ || char === 0x5d /* ] */) {
      frames.pop();
    } else if (char === 0x2c /* , */) {
      const frame = frames[frames.length - 1];
      if (frame?.keys) frame.expectingKey = true;
    }
  }
  return undefined;
}

/** Index of the closing quote of the JSON string starting at `start`. */
function endOfJsonString(text: string, start: number): number {
  let end = text.indexOf('"', start + 1);
  while (end !== -1) {
    let backslashes = 0;
    while (text.charCodeAt(end - 1 - backslashes) === 0x5c) backslashes++;
    if (backslashes % 2 === 0) return end;
    end = text.indexOf('"', end + 1);
  }
  return text.length; // unterminated: only reachable with invalid JSON
}

/** `__metadata__` must be absent or a string→string map. */
function readMetadata(raw: unknown, where: string): Record<string, string> {
  if (raw === undefined) return {};
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new CheckpointError(
      "Cannot read safetensors header: __metadata__ is not a string-to-string map",
      where,
    );
  }
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value !== "string") {
      throw new CheckpointError(
        `Cannot read safetensors header: __metadata__ is not a string-to-string map (${
          JSON.stringify(key)
        } holds ${value === null ? "null" : typeof value})`,
        where,
      );
    }
    metadata[key] = value;
  }
  return metadata;
}

/** A tensor's header entry, offsets still relative to the data section. */
interface TensorSpan {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

/** Checks one header entry's fields and its byte count against its shape. */
function readTensorSpan(name: string, raw: unknown, where: string): TensorSpan {
  const problem = (why: string) =>
    new CheckpointError(`Cannot read safetensors tensor ${JSON.stringify(name)}: ${why}`, where);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw problem("entry is not an object with dtype, shape and data_offsets");
  }
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (typeof dtype !== "string") throw problem("dtype is missing or not a string");
  if (!isDType(dtype)) {
    throw problem(`unsupported dtype ${JSON.stringify(dtype)} (supported: F32, F16, BF16)`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    throw problem(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeInteger)) {
    throw problem(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw problem(`data_offsets [${begin}, ${end}] end before they begin`);
  const elements = shape.reduce((product: number, size: number) => product * size, 1);
  const expectedBytes = elements * dtypeBytes(dtype);
  if (!Number.isSafeInteger(expectedBytes)) throw problem(`shape ${JSON.stringify(shape)} is too large`);
  if (end - begin !== expectedBytes) {
    throw problem(
      `byte count ${end - begin} does not match shape ${
        JSON.stringify(shape)
      } × ${dtype} (${expectedBytes} bytes)`,
    );
  }
  return { name, dtype, shape: shape as number[], begin, end };
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** Sorted by begin, the spans must cover [0, dataBytes) exactly once. */
function checkSpansTileData(spans: TensorSpan[], dataBytes: number, where: string): void {
  const sorted = spans.slice().sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expectedBegin = 0;
  let previous: TensorSpan | undefined;
  for (const span of sorted) {
    const name = JSON.stringify(span.name);
    if (span.end > dataBytes) {
      throw new CheckpointError(
        `Cannot read safetensors tensor ${name}: data_offsets [${span.begin}, ${span.end}] run past the end of the data (${dataBytes} bytes; file truncated?)`,
        where,
      );
    }
    if (span.begin < expectedBegin) {
      throw new CheckpointError(
        `Cannot read safetensors tensor ${name}: data_offsets [${span.begin}, ${span.end}] overlap tensor ${
          JSON.stringify(previous?.name)
        }`,
        where,
      );
    }
    if (span.begin > expectedBegin) {
      throw new CheckpointError(
        `Cannot read safetensors tensor ${name}: gap in the data, bytes [${expectedBegin}, ${span.begin}) belong to no tensor`,
        where,
      );
    }
    expectedBegin = span.end;
    previous = span;
  }
  if (expectedBegin !== dataBytes) {
    throw new CheckpointError(
      `Cannot read safetensors data: ${dataBytes - expectedBegin} trailing bytes after the last tensor`,
      where,
    );
  }
}

/**
 * Opens a safetensors file and validates its header; reads only the header, through `files` (the
 * file system by default; a page passes the store of the checkpoint it fetched).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openSafetensors, writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await Deno.writeFile(path, writeSafetensors([{ name: "b", dtype: "F16", shape: [3], data: new Uint8Array(6) }]));
 * const file = await openSafetensors(path);
 * assert.equal(file.entries.get("b")?.byteLength, 6);
 * assert.equal(file.entries.get("b")?.dtype, "F16");
 * await Deno.remove(path);
 * ```
 */
export async function openSafetensors(path: string, files: FileStore = localFiles): Promise<SafetensorsFile> {
  let info;
  try {
    info = await files.stat(path);
  } catch (cause) {
    throw new CheckpointError(`Cannot open safetensors file: ${String(cause)}`, path, { cause });
  }
  if (info === null) throw new CheckpointError("Cannot open safetensors file: file not found", path);
  const fileSize = info.size;
  const lengthBytes = await readRange(files, path, 0, Math.min(8, fileSize), "header");
  const headerBytes = readHeaderLength(lengthBytes, fileSize, path);
  const header = await readRange(files, path, 8, headerBytes, "header");
  const prefix = new Uint8Array(8 + headerBytes);
  prefix.set(lengthBytes);
  prefix.set(header, 8);
  return { ...parseSafetensorsHeader(prefix, fileSize, path), files };
}

/**
 * Reads one tensor's bytes (little-endian elements, `entry.byteLength` of them) with seek + read.
 * Pass `handle` (an open file of `file.path`) to reuse it across tensors; otherwise the bytes are
 * read through the store the file was opened from (`file.files`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openSafetensors, readTensor, writeSafetensors } from "./safetensors.ts";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const data = new Uint8Array(new Float32Array([1, 2]).buffer);
 * await Deno.writeFile(path, writeSafetensors([{ name: "w", dtype: "F32", shape: [2], data }]));
 * const bytes = await readTensor(await openSafetensors(path), "w");
 * assert.deepEqual(new Float32Array(bytes.buffer), new Float32Array([1, 2]));
 * await Deno.remove(path);
 * ```
 */
export async function readTensor(
  file: SafetensorsFile,
  name: string,
  options: { handle?: Deno.FsFile } = {},
): Promise<Uint8Array> {
  const entry = file.entries.get(name);
  if (!entry) {
    throw new CheckpointError(
      `Cannot read tensor ${JSON.stringify(name)}: no such tensor in the file`,
      file.path,
    );
  }
  if (options.handle) {
    await options.handle.seek(entry.byteOffset, Deno.SeekMode.Start);
    const bytes = new Uint8Array(entry.byteLength);
    await readInto(options.handle, bytes, file.path, name);
    return bytes;
  }
  const what = `tensor ${JSON.stringify(name)}`;
  return await readRange(file.files ?? localFiles, file.path, entry.byteOffset, entry.byteLength, what);
}

/** Reads `length` bytes at `offset` through a store; a failure or a short read is a CheckpointError. */
async function readRange(
  files: FileStore,
  path: string,
  offset: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await files.readAt(path, offset, length);
  } catch (cause) {
    const why = isNotFound(cause) ? "file not found" : String(cause);
    throw new CheckpointError(`Cannot read ${what}: ${why}`, path, { cause });
  }
  if (bytes.length < length) {
    throw new CheckpointError(
      `Cannot read ${what}: file ended after ${bytes.length} of ${length} bytes (truncated while open?)`,
      path,
    );
  }
  return bytes;
}

/** Fills `target` from the current position; a short read means the file shrank. */
async function readInto(handle: Deno.FsFile, target: Uint8Array, where: string, tensorName?: string) {
  let filled = 0;
  while (filled < target.length) {
    const read = await handle.read(target.subarray(filled));
    if (read === null) {
      const what = tensorName === undefined ? "header" : `tensor ${JSON.stringify(tensorName)}`;
      throw new CheckpointError(
        `Cannot read ${what}: file ended after ${filled} of ${target.length} bytes (truncated while open?)`,
        where,
      );
    }
    filled += read;
  }
}

/**
 * Serializes tensors into a safetensors file, in the given order. The JSON header is padded with
 * spaces so the data section starts at a multiple of 8 bytes, as the reference writer does.
 *
 * @throws {CheckpointError} when a name repeats or is `__metadata__`, or a tensor's byte count
 *   does not match its shape and dtype.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { writeSafetensors } from "./safetensors.ts";
 * const bytes = writeSafetensors([{ name: "s", dtype: "BF16", shape: [], data: new Uint8Array(2) }], {
 *   metadata: { format: "pt" },
 * });
 * assert.equal(bytes.length % 8, 2); // 8 + header padded to 8 bytes + 2 data bytes
 * assert.deepEqual(parseSafetensorsHeader(bytes, bytes.length, "s.safetensors").metadata, { format: "pt" });
 * ```
 */
export function writeSafetensors(
  tensors: TensorToWrite[],
  options: { metadata?: Record<string, string> } = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (options.metadata) header.__metadata__ = options.metadata;
  let dataBytes = 0;
  for (const tensor of tensors) {
    const where = tensor.name;
    if (tensor.name === "__metadata__" || Object.hasOwn(header, tensor.name)) {
      throw new CheckpointError("Cannot write safetensors: tensor name repeats or is reserved", where);
    }
    const elements = tensor.shape.reduce((product, size) => product * size, 1);
    const expectedBytes = elements * dtypeBytes(tensor.dtype);
    if (tensor.data.length !== expectedBytes) {
      throw new CheckpointError(
        `Cannot write safetensors: ${tensor.data.length} data bytes, shape ${
          JSON.stringify(tensor.shape)
        } × ${tensor.dtype} needs ${expectedBytes}`,
        where,
      );
    }
    header[tensor.name] = {
      dtype: tensor.dtype,
      shape: tensor.shape,
      data_offsets: [dataBytes, dataBytes + expectedBytes],
    };
    dataBytes += expectedBytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const headerBytes = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + headerBytes + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerBytes);
  let offset = 8 + headerBytes;
  for (const tensor of tensors) {
    out.set(tensor.data, offset);
    offset += tensor.data.length;
  }
  return out;
}
