/**
 * Helpers shared by the kernel parity tests: one GPU per test file, NMSE against the CPU twin,
 * poisoned output buffers, f32 readback.
 * @module
 */
import assert from "node:assert/strict";
import { BufferSet, createGpu, type Gpu, writeBuffer } from "../runtime/device/gpu.ts";

/** NMSE = mse(actual, expected) / mse(expected, 0); fails on any NaN. */
export function nmse(actual: Float32Array, expected: Float32Array): number {
  assert.equal(actual.length, expected.length, "length mismatch");
  let err = 0, ref = 0;
  for (let i = 0; i < actual.length; i++) {
    assert.ok(!Number.isNaN(actual[i]), `NaN at ${i}`);
    err += (actual[i] - expected[i]) ** 2;
    ref += expected[i] ** 2;
  }
  return ref === 0 ? err : err / ref;
}

/** Asserts NMSE below `bound` with a readable message. */
export function assertClose(actual: Float32Array, expected: Float32Array, bound: number, what: string): void {
  const e = nmse(actual, expected);
  assert.ok(e <= bound, `${what}: NMSE ${e.toExponential(2)} > ${bound}`);
}

/** Deterministic pseudo-random floats in [-scale, scale). */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 4294967296 * 2 - 1) * scale;
  }
  return out;
}

/** A storage buffer of `floats` f32 filled with NaN, so unwritten outputs fail the comparison. */
export function poisoned(buffers: BufferSet, floats: number, label: string): GPUBuffer {
  const buffer = buffers.storage(floats * 4, label);
  writeBuffer(buffers.gpu, buffer, 0, new Float32Array(floats).fill(NaN));
  return buffer;
}

/** Reads `floats` f32 from a buffer. */
export async function readF32(gpu: Gpu, buffer: GPUBuffer, floats: number): Promise<Float32Array> {
  return new Float32Array(await gpu.read(buffer, 0, floats * 4));
}

/** Opens a GPU for a test file; `DYNLLAVA_NO_F16=1` forces the f32 path. */
export function testGpu(): Promise<Gpu> {
  return createGpu({ allowF16: Deno.env.get("DYNLLAVA_NO_F16") !== "1" });
}

let sharedGpu: Promise<Gpu> | null = null;

/**
 * Runs `body` with this module's test GPU (one device per test file: creating and destroying many
 * devices in one process has crashed lavapipe at exit) and a fresh buffer set, freed afterwards.
 */
export async function withGpu(body: (gpu: Gpu, buffers: BufferSet) => Promise<void>): Promise<void> {
  sharedGpu ??= testGpu();
  const gpu = await sharedGpu;
  const buffers = new BufferSet(gpu);
  try {
    await body(gpu, buffers);
  } finally {
    await gpu.sync();
    buffers.destroy();
  }
}
