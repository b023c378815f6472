/**
 * Tests of runtime/io/gguf.ts and runtime/io/gguf_write.ts: files round-trip through encodeGguf /
 * writeGgufFile → openGguf → readGgufTensor with every metadata value type and every tensor type,
 * version 2 files read too, and every kind of malformed or hostile file is rejected with a
 * CheckpointError naming the file and saying what is wrong (every truncation of a valid file
 * included). Resource sanitizers stay on, so a leaked file handle fails.
 * @module
 */
import assert from "node:assert/strict";
import { CheckpointError } from "../runtime/core/errors.ts";
import { ggmlBytes, type GgmlType } from "../runtime/core/ggml_quants.ts";
import {
  ggufValue,
  MAX_GGUF_HEADER_BYTES,
  openGguf,
  parseGgufHeader,
  readGgufTensor,
} from "../runtime/io/gguf.ts";
import { encodeGguf, type GgufKeyValue, writeGgufFile } from "../runtime/io/gguf_write.ts";

type Part = ["u32", number] | ["u64", number | bigint] | ["str", string] | ["raw", Uint8Array | number[]];

/** Little-endian bytes of hand-assembled fields. */
function assemble(parts: Part[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  for (const [kind, value] of parts) {
    if (kind === "u32") {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, value, true);
      chunks.push(b);
    } else if (kind === "u64") {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, BigInt(value), true);
      chunks.push(b);
    } else if (kind === "str") {
      const utf8 = new TextEncoder().encode(value);
      chunks.push(assemble([["u64", utf8.length]]), utf8);
    } else {
      chunks.push(Uint8Array.from(value));
    }
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** A file by hand: header fields, then zero padding to 32, then `dataBytes` data bytes. */
function handFile(
  options: { version?: number; kvs?: Part[]; kvCount?: number; tensors?: Part[]; tensorCount?: number },
  dataBytes = 0,
): Uint8Array {
  const header = assemble([
    ["u32", 0x46554747],
    ["u32", options.version ?? 3],
    ["u64", options.tensorCount ?? 0],
    ["u64", options.kvCount ?? 0],
    ...(options.kvs ?? []),
    ...(options.tensors ?? []),
  ]);
  const padded = Math.ceil(header.length / 32) * 32;
  const out = new Uint8Array(padded + dataBytes);
  out.set(header);
  return out;
}

/** A tensor info's parts. */
function info(name: string, dims: number[], type: number, offset: number): Part[] {
  return [["str", name], ["u32", dims.length], ...dims.map((d): Part => ["u64", d]), ["u32", type], [
    "u64",
    offset,
  ]];
}

function rejects(bytes: Uint8Array, pattern: RegExp) {
  assert.throws(() => parseGgufHeader(bytes, bytes.length, "bad.gguf"), (err: unknown) => {
    assert.ok(err instanceof CheckpointError, `expected CheckpointError, got ${err}`);
    assert.equal(err.where, "bad.gguf");
    assert.match(err.message, /^Cannot /);
    assert.match(err.message, pattern);
    return true;
  });
}

const EVERY_VALUE_TYPE: GgufKeyValue[] = [
  { key: "t.u8", type: "u8", value: 255 },
  { key: "t.i8", type: "i8", value: -128 },
  { key: "t.u16", type: "u16", value: 65535 },
  { key: "t.i16", type: "i16", value: -32768 },
  { key: "t.u32", type: "u32", value: 4294967295 },
  { key: "t.i32", type: "i32", value: -2147483648 },
  { key: "t.f32", type: "f32", value: 0.5 },
  { key: "t.bool", type: "bool", value: true },
  { key: "t.string", type: "string", value: "héllo ▁" },
  { key: "t.u64", type: "u64", value: 18446744073709551615n },
  { key: "t.i64", type: "i64", value: -9223372036854775808n },
  { key: "t.f64", type: "f64", value: 1e-300 },
  { key: "t.strings", type: "array", itemType: "string", value: ["<unk>", "<s>", ""] },
  { key: "t.floats", type: "array", itemType: "f32", value: [-1000, 0.25] },
  { key: "t.empty", type: "array", itemType: "i32", value: [] },
];

Deno.test("encodeGguf() → parseGgufHeader() round-trips every value type and tensor type", () => {
  const types: GgmlType[] = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"];
  const tensors = types.map((type, i) => {
    const dims = type.endsWith("_K") ? [256, 2] : [32, 3];
    const data = Uint8Array.from({ length: ggmlBytes(type, dims[0] * dims[1]) }, (_, j) => (j * 7 + i) & 255);
    return { name: `t.${type}`, type, dims, data };
  });
  const bytes = encodeGguf({ metadata: EVERY_VALUE_TYPE, tensors });
  const file = parseGgufHeader(bytes, bytes.length, "ok.gguf");
  assert.equal(file.version, 3);
  assert.equal(file.alignment, 32);
  for (const kv of EVERY_VALUE_TYPE) {
    const entry = file.metadata.get(kv.key)!;
    assert.equal(entry.type, kv.type, kv.key);
    assert.deepEqual(entry.value, kv.value, kv.key);
  }
  for (const tensor of tensors) {
    const got = file.tensors.get(tensor.name)!;
    assert.equal(got.type, tensor.type);
    assert.deepEqual(got.dims, tensor.dims);
    assert.deepEqual(got.shape, tensor.dims.slice().reverse());
    assert.equal(got.byteOffset % 32, 0);
    assert.deepEqual(bytes.subarray(got.byteOffset, got.byteOffset + got.byteLength), tensor.data);
  }
});

Deno.test("parseGgufHeader() reads version 2 files and a custom alignment", () => {
  const bytes = encodeGguf({
    metadata: [{ key: "general.alignment", type: "u32", value: 64 }],
    tensors: [{ name: "a", type: "F32", dims: [3], data: new Uint8Array(12) }, {
      name: "b",
      type: "F32",
      dims: [1],
      data: new Uint8Array(4),
    }],
  });
  new DataView(bytes.buffer).setUint32(4, 2, true);
  const file = parseGgufHeader(bytes, bytes.length, "v2.gguf");
  assert.equal(file.version, 2);
  assert.equal(file.alignment, 64);
  assert.equal(file.dataOffset % 64, 0);
  assert.equal(file.tensors.get("b")!.byteOffset - file.tensors.get("a")!.byteOffset, 64);
});

Deno.test("parseGgufHeader() accepts a last tensor without its trailing padding", () => {
  const bytes = encodeGguf({
    metadata: [],
    tensors: [{ name: "a", type: "F32", dims: [3], data: new Uint8Array(12) }],
  });
  const unpadded = bytes.subarray(0, bytes.length - 20);
  assert.equal(parseGgufHeader(unpadded, unpadded.length, "x.gguf").tensors.size, 1);
});

Deno.test("parseGgufHeader() rejects every truncation of a valid file with a CheckpointError", () => {
  const bytes = encodeGguf({
    metadata: EVERY_VALUE_TYPE,
    tensors: [{ name: "w", type: "Q8_0", dims: [32, 2], data: new Uint8Array(68) }],
  });
  const lastDataByte = bytes.length - (bytes.length % 32 === 0 ? 28 : 0); // 68 bytes → padded to 96
  for (let length = 0; length < lastDataByte; length++) {
    const cut = bytes.subarray(0, length);
    assert.throws(() => parseGgufHeader(cut, cut.length, "cut.gguf"), CheckpointError, `length ${length}`);
  }
});

Deno.test("parseGgufHeader() rejects bad magic, versions and counts", () => {
  const ok = handFile({});
  const badMagic = ok.slice();
  badMagic.set([0x47, 0x47, 0x4d, 0x4c]); // "GGML"
  rejects(badMagic, /bad magic 0x4c4d4747/);
  rejects(handFile({ version: 1 }), /version 1 is not supported/);
  rejects(handFile({ version: 4 }), /version 4 is not supported/);
  rejects(handFile({ tensorCount: 1e9 }), /cannot fit/);
  rejects(handFile({ kvCount: 2 ** 40 }), /cannot fit/);
  const huge = ok.slice();
  new DataView(huge.buffer).setBigUint64(8, 2n ** 63n, true);
  rejects(huge, /tensor count 9223372036854775808 is too large/);
});

Deno.test("parseGgufHeader() rejects malformed key-values", () => {
  const kv = (parts: Part[], count = 1) => handFile({ kvCount: count, kvs: parts });
  rejects(
    kv([["str", "a"], ["u32", 4], ["u32", 1], ["str", "a"], ["u32", 4], ["u32", 2]], 2),
    /duplicate key "a"/,
  );
  rejects(kv([["str", "a"], ["u32", 13], ["u32", 1]]), /key "a" has unknown value type 13/);
  rejects(kv([["str", "a"], ["u32", 7], ["raw", [2]]]), /key "a" is a bool holding 2/);
  rejects(kv([["u64", 2], ["raw", [0xc3, 0x28]], ["u32", 4], ["u32", 1]]), /key 0 is not valid UTF-8/);
  rejects(kv([["str", "a"], ["u32", 8], ["u64", 2], ["raw", [0xff, 0xfe]]]), /key "a" is not valid UTF-8/);
  rejects(kv([["str", "a"], ["u32", 9], ["u32", 9], ["u64", 0]]), /key "a" is an array of arrays/);
  rejects(kv([["str", "a"], ["u32", 9], ["u32", 4], ["u64", 2 ** 40]]), /declares 1099511627776 items/);
  rejects(kv([["str", "a"], ["u32", 8], ["u64", 2 ** 50]]), /needs 1125899906842624 bytes .* past the end/);
  rejects(
    kv([["str", "general.alignment"], ["u32", 4], ["u32", 48]]),
    /general.alignment must be a u32 power of two/,
  );
  rejects(
    kv([["str", "general.alignment"], ["u32", 4], ["u32", 0]]),
    /general.alignment must be a u32 power of two/,
  );
  rejects(kv([["str", "general.alignment"], ["u32", 10], ["u64", 32]]), /general.alignment .* got u64/);
});

Deno.test("parseGgufHeader() rejects malformed tensor infos and layouts", () => {
  const tensor = (parts: Part[], dataBytes: number, count = 1) =>
    handFile({ tensorCount: count, tensors: parts }, dataBytes);
  rejects(tensor(info("w", [4], 3, 0), 32), /tensor "w": unsupported ggml type 3 \(supported: F32=0/);
  rejects(tensor(info("w", [], 0, 0), 32), /tensor "w": 0 dimensions/);
  rejects(tensor(info("w", [1, 1, 1, 1, 1], 0, 0), 32), /tensor "w": 5 dimensions/);
  rejects(tensor(info("w", [48], 8, 0), 64), /row length 48 is not a multiple of the Q8_0 block of 32/);
  rejects(tensor(info("w", [2 ** 30, 2 ** 30], 0, 0), 32), /dims \[1073741824,1073741824\] are too large/);
  rejects(tensor(info("w".repeat(64), [1], 0, 0), 32), /name is longer than 63 bytes/);
  rejects(tensor(info("w", [1], 0, 16), 64), /offset 16 is not a multiple of 32/);
  rejects(tensor(info("w", [1], 0, 32), 64), /offset 32, expected 0/);
  rejects(
    tensor([...info("w", [1], 0, 0), ...info("w", [1], 0, 32)], 64, 2),
    /tensor "w": name appears twice/,
  );
  rejects(
    tensor([...info("a", [9], 0, 0), ...info("b", [1], 0, 32)], 64, 2),
    /tensor "b": offset 32, expected 64/,
  );
  rejects(tensor(info("w", [16], 0, 0), 32), /data \[\d+, \d+\) runs past the end of the file/);
  rejects(tensor(info("w", [8], 0, 0), 64), /32 trailing bytes after the last tensor/);
});

Deno.test("openGguf() reads headers larger than its first read, and readGgufTensor() the data", async () => {
  const tokens = Array.from({ length: 60000 }, (_, i) => `token-${i}-${"x".repeat(20)}`); // ~2.4 MB
  const data = new Uint8Array(new Float32Array([1.5, -2]).buffer);
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  try {
    await writeGgufFile(path, {
      metadata: [{ key: "tokenizer.ggml.tokens", type: "array", itemType: "string", value: tokens }],
      tensors: [{ name: "w", type: "F32", dims: [2] }],
      data: () => Promise.resolve(data),
    });
    const file = await openGguf(path);
    assert.equal(ggufValue<string[]>(file, "tokenizer.ggml.tokens", ["array"])[59999], tokens[59999]);
    assert.deepEqual(await readGgufTensor(file, "w"), data);
    await assert.rejects(readGgufTensor(file, "nope"), /Cannot read tensor "nope": no such tensor/);
    assert.throws(() => ggufValue(file, "tokenizer.ggml.tokens", ["u32"]), /is array, expected u32/);
    assert.throws(() => ggufValue(file, "general.name", ["string"]), /key "general.name" is missing/);
  } finally {
    await Deno.remove(path);
  }
  assert.ok(MAX_GGUF_HEADER_BYTES >= 64 * 1024 * 1024);
});

Deno.test("openGguf() names a missing file; writeGgufFile() leaves nothing behind on failure", async () => {
  await assert.rejects(openGguf("/nonexistent/model.gguf"), (err: unknown) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.where, "/nonexistent/model.gguf");
    assert.match(err.message, /file not found/);
    return true;
  });
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      writeGgufFile(`${dir}/x.gguf`, {
        metadata: [],
        tensors: [{ name: "w", type: "F32", dims: [2] }],
        data: () => Promise.resolve(new Uint8Array(4)),
      }),
      /4 data bytes, F32 \[2\] needs 8/,
    );
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("encodeGguf() refuses repeated keys, repeated names and mistyped values", () => {
  const w = { name: "w", type: "F32" as const, dims: [1], data: new Uint8Array(4) };
  assert.throws(() => encodeGguf({ metadata: [], tensors: [w, w] }), /tensor name repeats/);
  assert.throws(
    () =>
      encodeGguf({
        metadata: [{ key: "a", type: "u8", value: 1 }, { key: "a", type: "u8", value: 2 }],
        tensors: [],
      }),
    /key repeats/,
  );
  assert.throws(
    () => encodeGguf({ metadata: [{ key: "a", type: "u32", value: "1" }], tensors: [] }),
    /not a u32/,
  );
});
