/**
 * GGUF files (versions 2 and 3, little-endian): validates the header as strictly as the reference
 * loader, reads single tensors with seek + read (a file is never held whole in memory).
 *
 * File layout:
 * `"GGUF" | u32 version | u64 tensor count | u64 key-value count | key-values | tensor infos |
 * padding to the alignment | data`. A string is `u64 length | UTF-8 bytes`; a key-value is
 * `string key | u32 value type | value`; an array is `u32 item type | u64 count | items`. A tensor
 * info is `string name | u32 n_dims | u64 dims[n_dims] (innermost first) | u32 ggml type | u64 offset`
 * (relative to the data section). `general.alignment` (u32, a power of two, default 32) aligns the
 * data section and every tensor.
 *
 * A valid file has: no duplicate key or tensor name, known value and tensor types only (tensors:
 * F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K), booleans 0 or 1, no array of arrays, UTF-8 strings,
 * tensor names under 64 bytes, 1 to 4 dims whose innermost is a whole number of blocks, and tensors
 * laid out in header order, each at the previous one's end rounded up to the alignment (as the
 * reference writer lays them out), the last one ending inside the file and at most its padding
 * before the file's end. Anything else is a {@link CheckpointError} whose `where` is the file path
 * and whose message names the key or tensor.
 * @module
 */
import { CheckpointError } from "../core/errors.ts";
import { GGML_TYPE_IDS, ggmlBlock, type GgmlType, ggmlTypeOfId } from "../core/ggml_quants.ts";

/** `"GGUF"` read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
/** Alignment when `general.alignment` is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** Longest tensor name in bytes (the reference keeps names in 64 bytes with a terminating NUL). */
export const GGUF_MAX_NAME_BYTES = 63;
/** Largest header (key-values and tensor infos) read into memory. */
export const MAX_GGUF_HEADER_BYTES = 256 * 1024 * 1024;

/** GGUF metadata value types, by their ids in the file. */
export const GGUF_VALUE_TYPES = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

/** A metadata value type's name. */
export type GgufValueType = keyof typeof GGUF_VALUE_TYPES;

/** A scalar metadata value (u64 and i64 as bigint, every other number as number). */
export type GgufScalar = number | bigint | boolean | string;

/** One metadata entry: its type and value (arrays hold their item type too). */
export type GgufEntry =
  | { type: Exclude<GgufValueType, "array">; value: GgufScalar }
  | { type: "array"; itemType: Exclude<GgufValueType, "array">; value: GgufScalar[] };

/** One tensor of a GGUF file. */
export interface GgufTensorInfo {
  name: string;
  type: GgmlType;
  /** Dimensions innermost first, as stored (`dims[0]` is a row's length). */
  dims: number[];
  /** Dimensions outermost first (torch order): `dims` reversed. */
  shape: number[];
  /** Absolute position of the first byte in the file. */
  byteOffset: number;
  byteLength: number;
}

/** A validated GGUF header; the data stays on disk. */
export interface GgufFile {
  path: string;
  version: number;
  alignment: number;
  metadata: Map<string, GgufEntry>;
  /** Tensors in header order. */
  tensors: Map<string, GgufTensorInfo>;
  /** Absolute position of the data section. */
  dataOffset: number;
}

/** Thrown inside the parser when the prefix ends before the file does: read more and retry. */
class NeedMoreBytes extends Error {}

const TYPE_NAMES = Object.fromEntries(
  Object.entries(GGUF_VALUE_TYPES).map(([name, id]) => [id, name]),
) as Record<number, GgufValueType>;
const SCALAR_BYTES: Partial<Record<GgufValueType, number>> = {
  u8: 1,
  i8: 1,
  u16: 2,
  i16: 2,
  u32: 4,
  i32: 4,
  f32: 4,
  bool: 1,
  u64: 8,
  i64: 8,
  f64: 8,
};

/** A bounds-checked little-endian cursor over the header prefix of a file of `fileSize` bytes. */
class Cursor {
  offset = 0;
  readonly #view: DataView;
  readonly #bytes: Uint8Array;
  readonly #utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  constructor(bytes: Uint8Array, readonly fileSize: number, readonly where: string) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Claims `count` bytes at the cursor: truncation is an error, a short prefix asks for more. */
  take(count: number, what: string): number {
    const at = this.offset;
    if (count > this.fileSize - at) {
      throw new CheckpointError(
        `Cannot read GGUF header: ${what} needs ${count} bytes at offset ${at}, past the end of the file (${this.fileSize} bytes; truncated?)`,
        this.where,
      );
    }
    if (at + count > this.#bytes.length) throw new NeedMoreBytes();
    this.offset += count;
    return at;
  }

  u32(what: string): number {
    return this.#view.getUint32(this.take(4, what), true);
  }

  /** A u64 that must fit a safe integer. */
  u64(what: string): number {
    const value = this.#view.getBigUint64(this.take(8, what), true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new CheckpointError(`Cannot read GGUF header: ${what} ${value} is too large`, this.where);
    }
    return Number(value);
  }

  string(what: string): string {
    const length = this.u64(`length of ${what}`);
    const at = this.take(length, what);
    try {
      return this.#utf8.decode(this.#bytes.subarray(at, at + length));
    } catch (cause) {
      throw new CheckpointError(`Cannot read GGUF header: ${what} is not valid UTF-8`, this.where, { cause });
    }
  }

  scalar(type: Exclude<GgufValueType, "array">, what: string): GgufScalar {
    if (type === "string") return this.string(what);
    const at = this.take(SCALAR_BYTES[type]!, what);
    const v = this.#view;
    switch (type) {
      case "u8":
        return v.getUint8(at);
      case "i8":
        return v.getInt8(at);
      case "u16":
        return v.getUint16(at, true);
      case "i16":
        return v.getInt16(at, true);
      case "u32":
        return v.getUint32(at, true);
      case "i32":
        return v.getInt32(at, true);
      case "f32":
        return v.getFloat32(at, true);
      case "f64":
        return v.getFloat64(at, true);
      case "u64":
        return v.getBigUint64(at, true);
      case "i64":
        return v.getBigInt64(at, true);
      case "bool": {
        const byte = v.getUint8(at);
        if (byte > 1) {
          throw new CheckpointError(`Cannot read GGUF header: ${what} is a bool holding ${byte}`, this.where);
        }
        return byte === 1;
      }
    }
  }
}

/**
 * Validates a GGUF header. `prefix` holds the file's first bytes (the whole header at least; it
 * may hold more); `fileSize` is the whole file's size, so the data section is checked without
 * reading it. Pure.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseGgufHeader } from "./gguf.ts";
 * import { encodeGguf } from "./gguf_write.ts";
 * const bytes = encodeGguf({
 *   metadata: [{ key: "general.architecture", type: "string", value: "llama" }],
 *   tensors: [{ name: "w", type: "F32", dims: [2], data: new Uint8Array(8) }],
 * });
 * const file = parseGgufHeader(bytes, bytes.length, "w.gguf");
 * assert.equal(file.metadata.get("general.architecture")?.value, "llama");
 * assert.deepEqual(file.tensors.get("w")?.shape, [2]);
 * ```
 */
export function parseGgufHeader(prefix: Uint8Array, fileSize: number, where: string): GgufFile {
  const file = parseHeader(new Cursor(prefix, fileSize, where));
  if (file === null) {
    throw new CheckpointError(
      `Cannot read GGUF header: the ${prefix.length} bytes given end before the header does`,
      where,
    );
  }
  return file;
}

/** Parses the header, or returns null when the cursor's prefix is too short. */
function parseHeader(cursor: Cursor): GgufFile | null {
  try {
    const where = cursor.where;
    const magic = cursor.u32("magic");
    if (magic !== GGUF_MAGIC) {
      throw new CheckpointError(
        `Cannot read GGUF header: bad magic 0x${magic.toString(16).padStart(8, "0")} (not a GGUF file)`,
        where,
      );
    }
    const version = cursor.u32("version");
    if (version !== 2 && version !== 3) {
      throw new CheckpointError(
        `Cannot read GGUF header: version ${version} is not supported (2 and 3 are)`,
        where,
      );
    }
    const tensorCount = cursor.u64("tensor count");
    const kvCount = cursor.u64("key-value count");
    // Every key-value takes at least 12 bytes and every tensor info at least 24: no huge loops.
    if (kvCount * 12 + tensorCount * 24 > cursor.fileSize - cursor.offset) {
      throw new CheckpointError(
        `Cannot read GGUF header: ${kvCount} key-values and ${tensorCount} tensors cannot fit in ${cursor.fileSize} bytes`,
        where,
      );
    }
    const metadata = readMetadata(cursor, kvCount);
    const alignment = readAlignment(metadata, where);
    const infos = [];
    for (let i = 0; i < tensorCount; i++) infos.push(readTensorInfo(cursor, i));
    const dataOffset = Math.ceil(cursor.offset / alignment) * alignment;
    const tensors = layOutTensors(infos, { dataOffset, alignment, fileSize: cursor.fileSize, where });
    return { path: where, version, alignment, metadata, tensors, dataOffset };
  } catch (err) {
    if (err instanceof NeedMoreBytes) return null;
    throw err;
  }
}

function readMetadata(cursor: Cursor, count: number): Map<string, GgufEntry> {
  const metadata = new Map<string, GgufEntry>();
  for (let i = 0; i < count; i++) {
    const key = cursor.string(`key ${i}`);
    if (metadata.has(key)) {
      throw new CheckpointError(
        `Cannot read GGUF header: duplicate key ${JSON.stringify(key)}`,
        cursor.where,
      );
    }
    metadata.set(key, readValue(cursor, key));
  }
  return metadata;
}

function valueType(cursor: Cursor, what: string): GgufValueType {
  const id = cursor.u32(`type of ${what}`);
  const type = TYPE_NAMES[id];
  if (type === undefined) {
    throw new CheckpointError(`Cannot read GGUF header: ${what} has unknown value type ${id}`, cursor.where);
  }
  return type;
}

function readValue(cursor: Cursor, key: string): GgufEntry {
  const what = `key ${JSON.stringify(key)}`;
  const type = valueType(cursor, what);
  if (type !== "array") return { type, value: cursor.scalar(type, what) };
  const itemType = valueType(cursor, `items of ${what}`);
  if (itemType === "array") {
    throw new CheckpointError(`Cannot read GGUF header: ${what} is an array of arrays`, cursor.where);
  }
  const count = cursor.u64(`length of ${what}`);
  const minItemBytes = SCALAR_BYTES[itemType] ?? 8;
  if (count * minItemBytes > cursor.fileSize - cursor.offset) {
    throw new CheckpointError(
      `Cannot read GGUF header: ${what} declares ${count} items, more than the rest of the file holds`,
      cursor.where,
    );
  }
  const value: GgufScalar[] = new Array(count);
  for (let i = 0; i < count; i++) value[i] = cursor.scalar(itemType, `${what}[${i}]`);
  return { type, itemType, value };
}

function readAlignment(metadata: Map<string, GgufEntry>, where: string): number {
  const entry = metadata.get("general.alignment");
  if (entry === undefined) return GGUF_DEFAULT_ALIGNMENT;
  const value = entry.value;
  if (entry.type !== "u32" || typeof value !== "number" || value === 0 || (value & (value - 1)) !== 0) {
    throw new CheckpointError(
      `Cannot read GGUF header: general.alignment must be a u32 power of two, got ${entry.type} ${
        JSON.stringify(String(value))
      }`,
      where,
    );
  }
  return value;
}

interface RawTensorInfo {
  name: string;
  type: GgmlType;
  dims: number[];
  offset: number;
  byteLength: number;
}

function readTensorInfo(cursor: Cursor, index: number): RawTensorInfo {
  const name = cursor.string(`name of tensor ${index}`);
  const problem = (why: string) =>
    new CheckpointError(`Cannot read GGUF tensor ${JSON.stringify(name)}: ${why}`, cursor.where);
  if (new TextEncoder().encode(name).length > GGUF_MAX_NAME_BYTES) {
    throw problem(`name is longer than ${GGUF_MAX_NAME_BYTES} bytes`);
  }
  const nDims = cursor.u32(`dimension count of ${JSON.stringify(name)}`);
  if (nDims < 1 || nDims > 4) throw problem(`${nDims} dimensions (1 to 4 are allowed)`);
  const dims: number[] = [];
  for (let d = 0; d < nDims; d++) dims.push(cursor.u64(`dimension ${d} of ${JSON.stringify(name)}`));
  const typeId = cursor.u32(`type of ${JSON.stringify(name)}`);
  const type = ggmlTypeOfId(typeId);
  if (type === undefined) {
    throw problem(
      `unsupported ggml type ${typeId} (supported: ${
        Object.entries(GGML_TYPE_IDS).map(([n, id]) => `${n}=${id}`).join(", ")
      })`,
    );
  }
  const offset = cursor.u64(`offset of ${JSON.stringify(name)}`);
  const elements = dims.reduce((product, size) => product * size, 1);
  if (!Number.isSafeInteger(elements)) throw problem(`dims [${dims}] are too large`);
  const block = ggmlBlock(type);
  if (dims[0] % block.elements !== 0) {
    throw problem(`row length ${dims[0]} is not a multiple of the ${type} block of ${block.elements}`);
  }
  const byteLength = (elements / block.elements) * block.bytes;
  if (!Number.isSafeInteger(byteLength)) throw problem(`dims [${dims}] are too large`);
  return { name, type, dims, offset, byteLength };
}

/** Checks the layout (header order, aligned, contiguous, inside the file) and makes the entries. */
function layOutTensors(
  infos: RawTensorInfo[],
  options: { dataOffset: number; alignment: number; fileSize: number; where: string },
): Map<string, GgufTensorInfo> {
  const { dataOffset, alignment, fileSize, where } = options;
  const tensors = new Map<string, GgufTensorInfo>();
  let expected = 0;
  let end = dataOffset;
  for (const info of infos) {
    const problem = (why: string) =>
      new CheckpointError(`Cannot read GGUF tensor ${JSON.stringify(info.name)}: ${why}`, where);
    if (tensors.has(info.name)) throw problem("name appears twice");
    if (info.offset % alignment !== 0) {
      throw problem(`offset ${info.offset} is not a multiple of ${alignment}`);
    }
    if (info.offset !== expected) {
      throw problem(
        `offset ${info.offset}, expected ${expected} (tensors must follow each other in header order, ${alignment}-byte aligned)`,
      );
    }
    end = dataOffset + info.offset + info.byteLength;
    if (end > fileSize) {
      throw problem(
        `data [${
          dataOffset + info.offset
        }, ${end}) runs past the end of the file (${fileSize} bytes; truncated?)`,
      );
    }
    tensors.set(info.name, {
      name: info.name,
      type: info.type,
      dims: info.dims,
      shape: info.dims.slice().reverse(),
      byteOffset: dataOffset + info.offset,
      byteLength: info.byteLength,
    });
    expected = Math.ceil((info.offset + info.byteLength) / alignment) * alignment;
  }
  const paddedEnd = infos.length === 0 ? fileSize : dataOffset + expected;
  if (fileSize > paddedEnd) {
    throw new CheckpointError(
      `Cannot read GGUF data: ${fileSize - paddedEnd} trailing bytes after the last tensor`,
      where,
    );
  }
  return tensors;
}

/**
 * Opens a GGUF file and validates its header; reads only the header from disk.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openGguf } from "./gguf.ts";
 * import { encodeGguf } from "./gguf_write.ts";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await Deno.writeFile(path, encodeGguf({ metadata: [], tensors: [{ name: "b", type: "F16", dims: [3], data: new Uint8Array(6) }] }));
 * const file = await openGguf(path);
 * assert.equal(file.tensors.get("b")?.byteLength, 6);
 * await Deno.remove(path);
 * ```
 */
export async function openGguf(path: string): Promise<GgufFile> {
  const handle = await openFile(path);
  try {
    const fileSize = (await handle.stat()).size;
    let length = Math.min(fileSize, 1 << 20);
    while (true) {
      const prefix = new Uint8Array(length);
      await handle.seek(0, Deno.SeekMode.Start);
      await readInto(handle, prefix, path, "header");
      const file = parseHeader(new Cursor(prefix, fileSize, path));
      if (file !== null) return file;
      if (length >= MAX_GGUF_HEADER_BYTES) {
        throw new CheckpointError(
          `Cannot read GGUF header: header is larger than the cap of ${MAX_GGUF_HEADER_BYTES} bytes`,
          path,
        );
      }
      length = Math.min(fileSize, length * 4, MAX_GGUF_HEADER_BYTES);
    }
  } finally {
    handle.close();
  }
}

/**
 * Reads one tensor's raw block bytes with seek + read. Pass `handle` (an open file of
 * `file.path`) to reuse it across tensors; otherwise the file is opened and closed here.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openGguf, readGgufTensor } from "./gguf.ts";
 * import { encodeGguf } from "./gguf_write.ts";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * const data = new Uint8Array(new Float32Array([1, 2]).buffer);
 * await Deno.writeFile(path, encodeGguf({ metadata: [], tensors: [{ name: "w", type: "F32", dims: [2], data }] }));
 * const bytes = await readGgufTensor(await openGguf(path), "w");
 * assert.deepEqual(new Float32Array(bytes.buffer), new Float32Array([1, 2]));
 * await Deno.remove(path);
 * ```
 */
export async function readGgufTensor(
  file: GgufFile,
  name: string,
  options: { handle?: Deno.FsFile } = {},
): Promise<Uint8Array> {
  const info = file.tensors.get(name);
  if (!info) {
    throw new CheckpointError(
      `Cannot read tensor ${JSON.stringify(name)}: no such tensor in the file`,
      file.path,
    );
  }
  const handle = options.handle ?? await openFile(file.path);
  try {
    await handle.seek(info.byteOffset, Deno.SeekMode.Start);
    const bytes = new Uint8Array(info.byteLength);
    await readInto(handle, bytes, file.path, `tensor ${JSON.stringify(name)}`);
    return bytes;
  } finally {
    if (!options.handle) handle.close();
  }
}

/**
 * A metadata value of an expected type, or `fallback` when the key is absent (a
 * {@link CheckpointError} when absent without fallback or of another type).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ggufValue, parseGgufHeader } from "./gguf.ts";
 * import { encodeGguf } from "./gguf_write.ts";
 * const bytes = encodeGguf({ metadata: [{ key: "llama.block_count", type: "u32", value: 4 }], tensors: [] });
 * const file = parseGgufHeader(bytes, bytes.length, "m.gguf");
 * assert.equal(ggufValue(file, "llama.block_count", ["u32"]), 4);
 * assert.equal(ggufValue(file, "llama.vocab_size", ["u32"], 32000), 32000);
 * ```
 */
export function ggufValue<T extends GgufScalar | GgufScalar[]>(
  file: GgufFile,
  key: string,
  types: GgufValueType[],
  fallback?: T,
): T {
  const entry = file.metadata.get(key);
  if (entry === undefined) {
    if (fallback !== undefined) return fallback;
    throw new CheckpointError(`Cannot read GGUF metadata: key ${JSON.stringify(key)} is missing`, file.path);
  }
  if (!types.includes(entry.type)) {
    throw new CheckpointError(
      `Cannot read GGUF metadata: key ${JSON.stringify(key)} is ${entry.type}, expected ${
        types.join(" or ")
      }`,
      file.path,
    );
  }
  return entry.value as T;
}

async function openFile(path: string): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { read: true });
  } catch (cause) {
    const why = cause instanceof Deno.errors.NotFound ? "file not found" : String(cause);
    throw new CheckpointError(`Cannot open GGUF file: ${why}`, path, { cause });
  }
}

/** Fills `target` from the current position; a short read means the file shrank. */
async function readInto(handle: Deno.FsFile, target: Uint8Array, where: string, what: string) {
  let filled = 0;
  while (filled < target.length) {
    const read = await handle.read(target.subarray(filled));
    if (read === null) {
      throw new CheckpointError(
        `Cannot read ${what}: file ended after ${filled} of ${target.length} bytes (truncated while open?)`,
        where,
      );
    }
    filled += read;
  }
}
