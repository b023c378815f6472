/**
 * Tests of runtime/io/safetensors.ts and runtime/io/shards.ts: every kind of malformed or hostile file is
 * rejected with a CheckpointError naming the file and saying what is wrong; files round-trip through
 * writeSafetensors → openSafetensors → readTensor in F32, F16 and BF16 (zero-size and scalar
 * tensors included); a file laid out by the reference writer reads back; sharded checkpoints are
 * cross-checked against their index. Resource sanitizers stay on, so a leaked file handle fails.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { float32ToBf16, float32ToF16, toFloat32 } from "../runtime/core/dtype.ts";
import { CheckpointError } from "../runtime/core/errors.ts";
import {
  MAX_HEADER_BYTES,
  openSafetensors,
  parseSafetensorsHeader,
  readTensor,
  type TensorToWrite,
  writeSafetensors,
} from "../runtime/io/safetensors.ts";
import { openTensorFiles, SHARD_INDEX_FILE } from "../runtime/io/shards.ts";

/** Little-endian bytes of float32 values. */
function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

/** A file made by hand: 8-byte length (true length unless overridden), header text, data bytes. */
function rawFile(header: string, dataBytes: Uint8Array | number, options: { headerLength?: bigint } = {}) {
  const json = new TextEncoder().encode(header);
  const data = typeof dataBytes === "number" ? new Uint8Array(dataBytes) : dataBytes;
  const bytes = new Uint8Array(8 + json.length + data.length);
  new DataView(bytes.buffer).setBigUint64(0, options.headerLength ?? BigInt(json.length), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.length);
  return bytes;
}

/** Header JSON of tensors given as name → [dtype, shape, [begin, end]]. */
function headerOf(tensors: Record<string, [unknown, unknown, unknown]>, metadata?: unknown): string {
  const header: Record<string, unknown> = metadata === undefined ? {} : { __metadata__: metadata };
  for (const [name, [dtype, shape, offsets]] of Object.entries(tensors)) {
    header[name] = { dtype, shape, data_offsets: offsets };
  }
  return JSON.stringify(header);
}

/** Asserts a CheckpointError whose message contains `fragment` and whose `where` is `where`. */
async function assertCheckpointError(run: () => Promise<unknown>, fragment: string, where: string) {
  await assert.rejects(run, (error: unknown) => {
    assert.ok(error instanceof CheckpointError, `expected CheckpointError, got ${error}`);
    assert.ok(error.message.includes(fragment), `message ${JSON.stringify(error.message)} lacks ${fragment}`);
    assert.ok(error.message.startsWith("Cannot "), error.message);
    assert.equal(error.where, where);
    return true;
  });
}

const twoFloats = f32Bytes([1, 2]); // 8 bytes

/** Malformed files: [case, file bytes, expected message fragment]. */
const badFiles: [string, Uint8Array, string][] = [
  ["file shorter than the length field", new Uint8Array(5), "shorter than the 8-byte header length"],
  [
    "file truncated inside the data",
    rawFile(headerOf({ w: ["F32", [4], [0, 16]] }), 10),
    `tensor "w": data_offsets [0, 16] run past the end of the data (10 bytes`,
  ],
  [
    "header length past the file",
    rawFile("{}", 12, { headerLength: 1000n }),
    "header length 1000 runs past the end",
  ],
  [
    "header length over the cap",
    rawFile("{}", 0, { headerLength: BigInt(MAX_HEADER_BYTES + 1) }),
    `header length ${MAX_HEADER_BYTES + 1} exceeds the cap`,
  ],
  ["header length of 2^64 - 1", rawFile("{}", 0, { headerLength: 2n ** 64n - 1n }), "exceeds the cap"],
  ["non-JSON header", rawFile("{not json}", 0), "header is not JSON"],
  ["JSON array header", rawFile("[]", 0), "header is an array, not a JSON object"],
  ["JSON number header", rawFile("42", 0), "header is a number, not a JSON object"],
  ["header that is not UTF-8", rawFile("{}", 0).map((byte, i) => i === 8 ? 0xff : byte), "not valid UTF-8"],
  [
    "duplicate tensor names",
    rawFile(
      `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`,
      twoFloats,
    ),
    `duplicate key "w"`,
  ],
  [
    "duplicate tensor names spelled with escapes",
    rawFile(
      `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"\\u0077":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`,
      twoFloats,
    ),
    `duplicate key "w"`,
  ],
  [
    "duplicate field inside an entry",
    rawFile(`{"w":{"dtype":"F16","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, twoFloats),
    `duplicate key "dtype"`,
  ],
  ["dtype I8", rawFile(headerOf({ q: ["I8", [8], [0, 8]] }), 8), `tensor "q": unsupported dtype "I8"`],
  ["dtype F64", rawFile(headerOf({ d: ["F64", [1], [0, 8]] }), 8), `tensor "d": unsupported dtype "F64"`],
  ["dtype not a string", rawFile(headerOf({ d: [4, [2], [0, 8]] }), 8), `tensor "d": dtype is missing`],
  [
    "negative shape",
    rawFile(headerOf({ w: ["F32", [-2], [0, 8]] }), 8),
    `tensor "w": shape [-2] is not a list of non-negative integers`,
  ],
  [
    "non-integer shape",
    rawFile(headerOf({ w: ["F32", [1.5], [0, 8]] }), 8),
    `tensor "w": shape [1.5] is not a list of non-negative integers`,
  ],
  ["shape not a list", rawFile(headerOf({ w: ["F32", 2, [0, 8]] }), 8), `tensor "w": shape 2 is not a list`],
  [
    "offsets not a pair",
    rawFile(headerOf({ w: ["F32", [2], [0, 4, 8]] }), 8),
    `tensor "w": data_offsets [0,4,8] is not a pair`,
  ],
  [
    "non-integer offsets",
    rawFile(headerOf({ w: ["F32", [2], [0, 8.5]] }), 8),
    `tensor "w": data_offsets [0,8.5] is not a pair of non-negative integers`,
  ],
  [
    "offsets ending before they begin",
    rawFile(headerOf({ w: ["F32", [0], [8, 0]] }), 8),
    `tensor "w": data_offsets [8, 0] end before they begin`,
  ],
  [
    "overlapping offsets",
    rawFile(headerOf({ a: ["F32", [2], [0, 8]], b: ["F32", [2], [4, 12]] }), 12),
    `tensor "b": data_offsets [4, 12] overlap tensor "a"`,
  ],
  [
    "two tensors on the same bytes",
    rawFile(headerOf({ a: ["F32", [2], [0, 8]], b: ["F32", [2], [0, 8]] }), 8),
    `overlap tensor "a"`,
  ],
  [
    "gap between tensors",
    rawFile(headerOf({ a: ["F32", [2], [0, 8]], b: ["F32", [2], [12, 20]] }), 20),
    `tensor "b": gap in the data, bytes [8, 12)`,
  ],
  [
    "data not starting at 0",
    rawFile(headerOf({ a: ["F32", [2], [4, 12]] }), 12),
    "bytes [0, 4) belong to no tensor",
  ],
  [
    "offsets out of range",
    rawFile(headerOf({ a: ["F32", [2], [0, 8]], b: ["F32", [1], [8, 12]] }), 8),
    `tensor "b": data_offsets [8, 12] run past the end of the data (8 bytes`,
  ],
  [
    "byte count not matching the shape",
    rawFile(headerOf({ w: ["F32", [3], [0, 8]] }), 8),
    `tensor "w": byte count 8 does not match shape [3] × F32 (12 bytes)`,
  ],
  [
    "F16 byte count as if F32",
    rawFile(headerOf({ h: ["F16", [2], [0, 8]] }), 8),
    "does not match shape [2] × F16",
  ],
  [
    "trailing bytes",
    rawFile(headerOf({ w: ["F32", [2], [0, 8]] }), 12),
    "4 trailing bytes after the last tensor",
  ],
  ["data but no tensors", rawFile("{}", 4), "4 trailing bytes"],
  [
    "metadata holding a number",
    rawFile(headerOf({ w: ["F32", [2], [0, 8]] }, { format: "pt", step: 3 }), 8),
    `__metadata__ is not a string-to-string map ("step" holds number)`,
  ],
  [
    "metadata that is a list",
    rawFile(headerOf({ w: ["F32", [2], [0, 8]] }, ["pt"]), 8),
    "__metadata__ is not a string-to-string map",
  ],
  ["entry that is not an object", rawFile(`{"w":[0,8]}`, 0), `tensor "w": entry is not an object`],
];

Deno.test("openSafetensors() rejects malformed and hostile files with a CheckpointError saying why", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    for (const [description, bytes, fragment] of badFiles) {
      await t.step(description, async () => {
        const path = join(dir, `${description.replaceAll(" ", "_")}.safetensors`);
        await Deno.writeFile(path, bytes);
        await assertCheckpointError(() => openSafetensors(path), fragment, path);
      });
    }
    await t.step("missing file", async () => {
      const path = join(dir, "absent.safetensors");
      await assertCheckpointError(() => openSafetensors(path), "file not found", path);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseSafetensorsHeader() rejects a prefix shorter than the header it announces", () => {
  const bytes = writeSafetensors([{ name: "w", dtype: "F32", shape: [2], data: twoFloats }]);
  assert.throws(
    () => parseSafetensorsHeader(bytes.subarray(0, 20), bytes.length, "w.safetensors"),
    (error: unknown) =>
      error instanceof CheckpointError && error.where === "w.safetensors" &&
      error.message.includes("file is truncated (20 bytes available"),
  );
});

const roundTripTensors: TensorToWrite[] = [
  { name: "model.embed_tokens.weight", dtype: "F32", shape: [2, 3], data: f32Bytes([1, -2, 0.5, 3, 4, -6]) },
  {
    name: "model.layers.0.mlp.up_proj.weight",
    dtype: "F16",
    shape: [4],
    data: new Uint8Array(float32ToF16(new Float32Array([1, -2, 65504, 0.25])).buffer),
  },
  { name: "empty", dtype: "F32", shape: [0, 5], data: new Uint8Array(0) },
  {
    name: "lm_head.weight",
    dtype: "BF16",
    shape: [3, 1],
    data: new Uint8Array(float32ToBf16(new Float32Array([1, -2, 3])).buffer),
  },
  {
    name: "scale",
    dtype: "BF16",
    shape: [],
    data: new Uint8Array(float32ToBf16(new Float32Array([0.5])).buffer),
  },
];

Deno.test("writeSafetensors() → openSafetensors() → readTensor() round-trips F32, F16, BF16, empty, scalar", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "model.safetensors");
    const bytes = writeSafetensors(roundTripTensors, { metadata: { format: "pt" } });
    await Deno.writeFile(path, bytes);
    const headerBytes = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(headerBytes % 8, 0, "data section 8-byte aligned");
    const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + headerBytes));
    assert.match(headerText, /^\{.*\} *$/, "header padded with spaces");

    const file = await openSafetensors(path);
    assert.deepEqual(file.metadata, { format: "pt" });
    assert.deepEqual([...file.entries.keys()], roundTripTensors.map((tensor) => tensor.name));
    let expectedOffset = 8 + headerBytes;
    for (const tensor of roundTripTensors) {
      const entry = file.entries.get(tensor.name)!;
      assert.deepEqual(entry, {
        name: tensor.name,
        dtype: tensor.dtype,
        shape: tensor.shape,
        byteOffset: expectedOffset,
        byteLength: tensor.data.length,
      });
      expectedOffset += tensor.data.length;
      assert.deepEqual(await readTensor(file, tensor.name), tensor.data, tensor.name);
    }
    assert.equal(expectedOffset, bytes.length);

    const handle = await Deno.open(path);
    try {
      const scale = await readTensor(file, "scale", { handle });
      const embed = await readTensor(file, "model.embed_tokens.weight", { handle });
      const up = await readTensor(file, "model.layers.0.mlp.up_proj.weight", { handle });
      assert.deepEqual([...toFloat32("BF16", scale)], [0.5]);
      assert.deepEqual([...toFloat32("F32", embed)], [1, -2, 0.5, 3, 4, -6]);
      assert.deepEqual([...toFloat32("F16", up)], [1, -2, 65504, 0.25]);
    } finally {
      handle.close();
    }
    await assertCheckpointError(() => readTensor(file, "missing.weight"), `tensor "missing.weight"`, path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readTensor() reports a file truncated after its header was read", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "model.safetensors");
    const bytes = writeSafetensors(roundTripTensors);
    await Deno.writeFile(path, bytes);
    const file = await openSafetensors(path);
    await Deno.truncate(path, bytes.length - 4);
    await assertCheckpointError(() => readTensor(file, "lm_head.weight"), `tensor "lm_head.weight"`, path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A file as the reference writer (safetensors 0.8 `serialize`) lays it out, byte for byte. */
function referenceWrittenFile(): Uint8Array {
  const header =
    `{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},` +
    `"empty":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},"c":{"dtype":"BF16","shape":[],"data_offsets":[8,10]},` +
    `"b.bias":{"dtype":"F16","shape":[2],"data_offsets":[10,14]}}       `;
  const data = [0, 0, 0, 63, 0, 0, 64, 64, 128, 63, 0, 60, 0, 192];
  return rawFile(header, new Uint8Array(data));
}

Deno.test("openSafetensors() reads a reference-written file; writeSafetensors() writes the same bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "reference.safetensors");
    const reference = referenceWrittenFile();
    assert.equal(reference.length, 294);
    await Deno.writeFile(path, reference);
    const file = await openSafetensors(path);
    const read = async (name: string) => {
      const entry = file.entries.get(name)!;
      return {
        dtype: entry.dtype,
        shape: entry.shape,
        values: [...toFloat32(entry.dtype, await readTensor(file, name))],
      };
    };
    assert.deepEqual(await read("a.weight"), { dtype: "F32", shape: [2], values: [0.5, 3] });
    assert.deepEqual(await read("empty"), { dtype: "F32", shape: [0, 3], values: [] });
    assert.deepEqual(await read("c"), { dtype: "BF16", shape: [], values: [1] });
    assert.deepEqual(await read("b.bias"), { dtype: "F16", shape: [2], values: [1, -2] });

    const rewritten = writeSafetensors(
      await Promise.all(["a.weight", "empty", "c", "b.bias"].map(async (name) => {
        const entry = file.entries.get(name)!;
        return { name, dtype: entry.dtype, shape: entry.shape, data: await readTensor(file, name) };
      })),
      { metadata: file.metadata },
    );
    assert.deepEqual(rewritten, reference);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeSafetensors() refuses data not matching the shape and repeated names", () => {
  assert.throws(
    () => writeSafetensors([{ name: "w", dtype: "F16", shape: [3], data: new Uint8Array(4) }]),
    (error: unknown) =>
      error instanceof CheckpointError && error.where === "w" &&
      error.message.includes("shape [3] × F16 needs 6"),
  );
  const tensor: TensorToWrite = { name: "w", dtype: "F32", shape: [], data: new Uint8Array(4) };
  assert.throws(() => writeSafetensors([tensor, tensor]), /tensor name repeats/);
  assert.throws(() => writeSafetensors([{ ...tensor, name: "__metadata__" }]), /reserved/);
});

/** Writes a sharded checkpoint: each shard's F32 [2] tensors (null: 3 garbage bytes) and the index. */
async function writeShardedCheckpoint(
  dir: string,
  shards: Record<string, string[] | null>,
  weightMap: Record<string, string> | string,
): Promise<void> {
  for (const [shardName, tensorNames] of Object.entries(shards)) {
    if (tensorNames === null) {
      await Deno.writeFile(join(dir, shardName), new Uint8Array(3));
      continue;
    }
    const tensors = tensorNames.map((name, i) => ({
      name,
      dtype: "F32" as const,
      shape: [2],
      data: f32Bytes([i, -i]),
    }));
    await Deno.writeFile(join(dir, shardName), writeSafetensors(tensors));
  }
  const index = typeof weightMap === "string"
    ? weightMap
    : JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap });
  await Deno.writeTextFile(join(dir, SHARD_INDEX_FILE), index);
}

const shardA = "model-00001-of-00002.safetensors";
const shardB = "model-00002-of-00002.safetensors";

Deno.test("openTensorFiles() opens a sharded checkpoint through its index", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeShardedCheckpoint(dir, { [shardA]: ["a.weight", "b.weight"], [shardB]: ["c.weight"] }, {
      "a.weight": shardA,
      "b.weight": shardA,
      "c.weight": shardB,
    });
    const tensors = await openTensorFiles(dir);
    assert.deepEqual(tensors.files.map((file) => file.path), [join(dir, shardA), join(dir, shardB)]);
    assert.deepEqual(tensors.names(), ["a.weight", "b.weight", "c.weight"]);
    const located = tensors.locate("c.weight")!;
    assert.equal(located.file.path, join(dir, shardB));
    assert.deepEqual([...toFloat32("F32", await readTensor(located.file, "c.weight"))], [0, -0]);
    const b = tensors.locate("b.weight")!;
    assert.deepEqual([...toFloat32("F32", await readTensor(b.file, b.entry.name))], [1, -1]);
    assert.equal(tensors.locate("d.weight"), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openTensorFiles() opens a single file by any *.safetensors name, following symlinks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(join(dir, "blobs"));
    await Deno.writeFile(join(dir, "blobs", "0123abcd"), writeSafetensors(roundTripTensors));
    await Deno.symlink(join(dir, "blobs", "0123abcd"), join(dir, "model-00001-of-00001.safetensors"));
    const tensors = await openTensorFiles(dir);
    assert.deepEqual(tensors.names(), roundTripTensors.map((tensor) => tensor.name));
    assert.equal(tensors.locate("scale")?.entry.byteLength, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openTensorFiles() rejects inconsistent or hostile checkpoints", async (t) => {
  // [case, shard name → tensor names (null: a 3-byte garbage file), weight_map or raw index text,
  //  message fragment, file the error must name (default: the index)]
  const cases: [string, Record<string, string[] | null>, Record<string, string> | string, string, string?][] =
    [
      [
        "missing shard",
        { [shardA]: ["a"] },
        { a: shardA, b: shardB },
        `shard "${shardB}" named in weight_map is missing`,
        shardB,
      ],
      [
        "tensor in two shards",
        { [shardA]: ["a", "b"], [shardB]: ["b", "c"] },
        { a: shardA, b: shardA, c: shardB },
        `tensor "b" appears in two shards, "${shardA}" and "${shardB}"`,
      ],
      [
        "weight_map naming a tensor absent from its shard",
        { [shardA]: ["a"], [shardB]: ["c"] },
        { a: shardA, b: shardA, c: shardB },
        `weight_map puts tensor "b" in shard "${shardA}", which does not hold it`,
      ],
      [
        "shard tensor missing from weight_map",
        { [shardA]: ["a", "z"] },
        { a: shardA },
        `tensor "z" of shard "${shardA}" is missing from weight_map`,
      ],
      [
        "path traversal",
        { [shardA]: ["a"] },
        { a: `../${shardA}` },
        `shard name "../${shardA}" in weight_map is not a plain file name`,
      ],
      ["absolute shard path", { [shardA]: ["a"] }, { a: "/etc/passwd" }, `shard name "/etc/passwd"`],
      ["shard name ..", { [shardA]: ["a"] }, { a: ".." }, `shard name ".."`],
      ["index that is not JSON", { [shardA]: ["a"] }, "{weight_map", "not JSON"],
      ["index without weight_map", { [shardA]: ["a"] }, `{"metadata": {}}`, "weight_map object"],
      [
        "index with duplicate keys",
        { [shardA]: ["a"] },
        `{"weight_map": {"a": "${shardA}", "a": "${shardB}"}}`,
        `duplicate key "a"`,
      ],
      ["index naming no tensors", { [shardA]: ["a"] }, `{"weight_map": {}}`, "weight_map names no tensors"],
      [
        "malformed shard",
        { [shardA]: ["a"], [shardB]: null },
        { a: shardA, b: shardB },
        "shorter than the 8-byte header length",
        shardB,
      ],
    ];
  for (const [description, shards, weightMap, fragment, faultyFile = SHARD_INDEX_FILE] of cases) {
    await t.step(description, async () => {
      const dir = await Deno.makeTempDir();
      try {
        await writeShardedCheckpoint(dir, shards, weightMap);
        await assertCheckpointError(() => openTensorFiles(dir), fragment, join(dir, faultyFile));
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});

Deno.test("openTensorFiles() explains a directory without safetensors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertCheckpointError(() => openTensorFiles(dir), `no safetensors file in ${dir}`, dir);
    await Deno.writeFile(join(dir, "pytorch_model.bin"), new Uint8Array(4));
    await assertCheckpointError(
      () => openTensorFiles(dir),
      "pytorch_model.bin: PyTorch pickle checkpoints are not supported",
      dir,
    );
    await Deno.writeFile(join(dir, "x.safetensors"), writeSafetensors([]));
    await Deno.writeFile(join(dir, "y.safetensors"), writeSafetensors([]));
    await assertCheckpointError(
      () => openTensorFiles(dir),
      `2 safetensors files (x.safetensors, y.safetensors) but no`,
      dir,
    );
    const missing = join(dir, "nowhere");
    await assertCheckpointError(() => openTensorFiles(missing), "directory not found", missing);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
