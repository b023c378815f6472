/**
 * The GGUF writer (version 3, little-endian): the layout {@link parseGgufHeader} accepts and the
 * reference writer produces — key-values in the given order, tensor infos in the given order,
 * data section and every tensor aligned to `general.alignment` (32 unless the metadata sets it),
 * each tensor padded with zeros to the alignment. {@link encodeGguf} builds a file in memory;
 * {@link writeGgufFile} streams one to disk tensor by tensor (for checkpoints larger than memory).
 * @module
 */
import { CheckpointError } from "../core/errors.ts";
import { GGML_TYPE_IDS, ggmlBytes, type GgmlType } from "../core/ggml_quants.ts";
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_NAME_BYTES,
  GGUF_VALUE_TYPES,
  type GgufEntry,
  type GgufScalar,
  type GgufValueType,
} from "./gguf.ts";

/** One key-value to write. */
export type GgufKeyValue = GgufEntry & { key: string };

/** A tensor's description: name, type and dims innermost first (`dims[0]` = row length). */
export interface GgufTensorHeader {
  name: string;
  type: GgmlType;
  dims: number[];
}

/** A tensor with its block bytes, for {@link encodeGguf}. */
export interface GgufTensorToWrite extends GgufTensorHeader {
  data: Uint8Array;
}

/** What {@link encodeGguf} writes. */
export interface GgufContents {
  metadata: GgufKeyValue[];
  tensors: GgufTensorToWrite[];
}

const encoder = new TextEncoder();

/** Growable little-endian byte sink. */
class Sink {
  #bytes = new Uint8Array(1024);
  #view = new DataView(this.#bytes.buffer);
  length = 0;

  #reserve(count: number): number {
    if (this.length + count > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(this.#bytes.length * 2, this.length + count));
      grown.set(this.#bytes.subarray(0, this.length));
      this.#bytes = grown;
      this.#view = new DataView(grown.buffer);
    }
    const at = this.length;
    this.length += count;
    return at;
  }
  u32(value: number) {
    const at = this.#reserve(4);
    this.#view.setUint32(at, value, true);
  }
  u64(value: number | bigint) {
    const at = this.#reserve(8);
    this.#view.setBigUint64(at, BigInt(value), true);
  }
  bytes(value: Uint8Array) {
    const at = this.#reserve(value.length);
    this.#bytes.set(value, at);
  }
  string(value: string) {
    const utf8 = encoder.encode(value);
    this.u64(utf8.length);
    this.bytes(utf8);
  }
  zeros(count: number) {
    const at = this.#reserve(count);
    this.#bytes.fill(0, at, this.length);
  }
  scalar(type: Exclude<GgufValueType, "array">, value: GgufScalar, where: string) {
    const bad = () =>
      new CheckpointError(`Cannot write GGUF: value ${String(value)} is not a ${type}`, where);
    if (type === "string") {
      if (typeof value !== "string") throw bad();
      return this.string(value);
    }
    if (type === "bool") {
      if (typeof value !== "boolean") throw bad();
      const at = this.#reserve(1);
      return this.#view.setUint8(at, value ? 1 : 0);
    }
    if (type === "u64" || type === "i64") {
      if (typeof value !== "bigint" && !Number.isSafeInteger(value)) throw bad();
      const at = this.#reserve(8);
      if (type === "u64") this.#view.setBigUint64(at, BigInt(value as number | bigint), true);
      else this.#view.setBigInt64(at, BigInt(value as number | bigint), true);
      return;
    }
    if (typeof value !== "number") throw bad();
    const setters: Record<string, [number, (v: DataView, at: number) => void]> = {
      u8: [1, (v, at) => v.setUint8(at, value)],
      i8: [1, (v, at) => v.setInt8(at, value)],
      u16: [2, (v, at) => v.setUint16(at, value, true)],
      i16: [2, (v, at) => v.setInt16(at, value, true)],
      u32: [4, (v, at) => v.setUint32(at, value, true)],
      i32: [4, (v, at) => v.setInt32(at, value, true)],
      f32: [4, (v, at) => v.setFloat32(at, value, true)],
      f64: [8, (v, at) => v.setFloat64(at, value, true)],
    };
    const [size, set] = setters[type];
    const at = this.#reserve(size);
    set(this.#view, at);
  }
  take(): Uint8Array {
    return this.#bytes.subarray(0, this.length);
  }
}

/** The alignment the metadata asks for. */
function alignmentOf(metadata: GgufKeyValue[]): number {
  const entry = metadata.find((kv) => kv.key === "general.alignment");
  return typeof entry?.value === "number" ? entry.value : GGUF_DEFAULT_ALIGNMENT;
}

/**
 * Header bytes (key-values, tensor infos, padding to the data section) and each tensor's offset
 * in the data section.
 */
function encodeHeader(metadata: GgufKeyValue[], tensors: GgufTensorHeader[]) {
  const alignment = alignmentOf(metadata);
  const sink = new Sink();
  sink.u32(GGUF_MAGIC);
  sink.u32(3);
  sink.u64(tensors.length);
  sink.u64(metadata.length);
  const keys = new Set<string>();
  for (const kv of metadata) {
    if (keys.has(kv.key)) throw new CheckpointError("Cannot write GGUF: key repeats", kv.key);
    keys.add(kv.key);
    sink.string(kv.key);
    sink.u32(GGUF_VALUE_TYPES[kv.type]);
    if (kv.type === "array") {
      sink.u32(GGUF_VALUE_TYPES[kv.itemType]);
      sink.u64(kv.value.length);
      for (const item of kv.value) sink.scalar(kv.itemType, item, kv.key);
    } else {
      sink.scalar(kv.type, kv.value, kv.key);
    }
  }
  const names = new Set<string>();
  const sizes: number[] = [];
  let offset = 0;
  const offsets: number[] = [];
  for (const tensor of tensors) {
    if (names.has(tensor.name) || encoder.encode(tensor.name).length > GGUF_MAX_NAME_BYTES) {
      throw new CheckpointError("Cannot write GGUF: tensor name repeats or is too long", tensor.name);
    }
    names.add(tensor.name);
    const bytes = ggmlBytes(tensor.type, tensor.dims.reduce((a, b) => a * b, 1));
    sink.string(tensor.name);
    sink.u32(tensor.dims.length);
    for (const dim of tensor.dims) sink.u64(dim);
    sink.u32(GGML_TYPE_IDS[tensor.type]);
    sink.u64(offset);
    offsets.push(offset);
    sizes.push(bytes);
    offset = Math.ceil((offset + bytes) / alignment) * alignment;
  }
  sink.zeros(Math.ceil(sink.length / alignment) * alignment - sink.length);
  return { header: sink.take(), offsets, sizes, alignment, dataBytes: offset };
}

/**
 * Serializes metadata and tensors into a GGUF file in memory.
 *
 * @throws {CheckpointError} when a key or tensor name repeats, a value does not match its type, or
 *   a tensor's byte count does not match its type and dims.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeGguf } from "./gguf_write.ts";
 * const bytes = encodeGguf({
 *   metadata: [{ key: "general.name", type: "string", value: "tiny" }],
 *   tensors: [{ name: "w", type: "Q8_0", dims: [32, 1], data: new Uint8Array(34) }],
 * });
 * assert.equal(bytes.length % 32, 0);
 * ```
 */
export function encodeGguf(contents: GgufContents): Uint8Array {
  const { header, offsets, sizes, dataBytes } = encodeHeader(contents.metadata, contents.tensors);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header);
  contents.tensors.forEach((tensor, i) => {
    checkSize(tensor, tensor.data, sizes[i]);
    out.set(tensor.data, header.length + offsets[i]);
  });
  return out;
}

function checkSize(tensor: GgufTensorHeader, data: Uint8Array, expected: number): void {
  if (data.length !== expected) {
    throw new CheckpointError(
      `Cannot write GGUF: ${data.length} data bytes, ${tensor.type} [${tensor.dims}] needs ${expected}`,
      tensor.name,
    );
  }
}

/**
 * Writes a GGUF file to `path`, asking `data(i)` for each tensor's bytes in turn, so only one
 * tensor is in memory at a time. The file is written to a temporary name and renamed at the end:
 * a failure leaves no partial file.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openGguf } from "./gguf.ts";
 * import { writeGgufFile } from "./gguf_write.ts";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGgufFile(path, {
 *   metadata: [],
 *   tensors: [{ name: "a", type: "F32", dims: [3] }, { name: "b", type: "F16", dims: [2, 2] }],
 *   data: (i) => Promise.resolve(new Uint8Array(i === 0 ? 12 : 8)),
 * });
 * assert.equal((await openGguf(path)).tensors.size, 2);
 * await Deno.remove(path);
 * ```
 */
export async function writeGgufFile(
  path: string,
  contents: {
    metadata: GgufKeyValue[];
    tensors: GgufTensorHeader[];
    data: (index: number) => Promise<Uint8Array>;
  },
): Promise<void> {
  const { header, offsets, sizes, alignment } = encodeHeader(contents.metadata, contents.tensors);
  const tmp = `${path}.partial`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await writeAll(file, header);
    for (let i = 0; i < contents.tensors.length; i++) {
      const data = await contents.data(i);
      checkSize(contents.tensors[i], data, sizes[i]);
      await writeAll(file, data);
      const padded = Math.ceil((offsets[i] + data.length) / alignment) * alignment;
      await writeAll(file, new Uint8Array(padded - offsets[i] - data.length));
    }
  } catch (err) {
    file.close();
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  file.close();
  await Deno.rename(tmp, path);
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await file.write(bytes.subarray(written));
}
