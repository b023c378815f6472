/**
 * WebGPU device, pipelines, buffers and readback: the only file that talks to `navigator.gpu`
 * directly. Everything here is shared by all kernels and the GPU runtime.
 *
 * - {@link createGpu} picks the adapter, requests its buffer limits and `shader-f16` when offered
 *   (f16 weights where allowed, f16 KV caches), and turns device loss into a {@link GpuError} for all pending and later work.
 * - {@link Gpu.pipeline} compiles a WGSL compute shader once per source text and caches it; a
 *   compile error names the kernel.
 * - {@link BufferSet} creates buffers and tracks their bytes (live and peak), so a request can
 *   report `gpuPeakBytes` and free everything it made in one call.
 * - {@link Dispatch} is a pipeline with its bind group and workgroup grid, built once and encoded
 *   many times: per-step values live in GPU buffers, so a decode step re-encodes prebuilt dispatches.
 * @module
 */
import { GpuError } from "../core/errors.ts";

/** A compute pipeline bound to its buffers, ready to be encoded into a pass. */
export interface Dispatch {
  label: string;
  pipeline: GPUComputePipeline;
  bindGroup: GPUBindGroup;
  workgroups: [number, number, number];
}

/** Options of {@link createGpu}. */
export interface GpuOptions {
  /** Use f16 weights when the device has `shader-f16` (default true). */
  allowF16?: boolean;
  /**
   * Request `shader-f16` when the adapter offers it (default true); false opens a device without
   * it: no f16 weights, no f16 KV caches.
   */
  shaderF16?: boolean;
  /** Adapter power preference. */
  powerPreference?: GPUPowerPreference;
}

/** A byte range of a buffer to read back. */
export interface ReadRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/** Largest workgroup count per grid dimension that WebGPU guarantees. */
export const MAX_GRID = 65535;

/** An open WebGPU device with a pipeline cache. */
export class Gpu {
  readonly device: GPUDevice;
  /** True when weights go in f16: the `shader-f16` feature was granted and f16 weights allowed. */
  readonly f16: boolean;
  /** True when the device has `shader-f16` (requested whenever the adapter offers it): f16 KV caches. */
  readonly shaderF16: boolean;
  /** Adapter description, for reports. */
  readonly adapterName: string;
  readonly maxBindingBytes: number;
  #pipelines = new Map<string, Promise<GPUComputePipeline>>();
  /** Compiles run one at a time: error scopes are device-wide, so overlapping ones mislabel errors. */
  #compiling: Promise<unknown> = Promise.resolve();
  #lost: GpuError | null = null;
  #lostPromise: Promise<never>;

  /** Use {@link createGpu}. */
  constructor(device: GPUDevice, f16: boolean, adapterName: string, shaderF16: boolean = f16) {
    this.device = device;
    this.f16 = f16;
    this.shaderF16 = shaderF16;
    this.adapterName = adapterName;
    this.maxBindingBytes = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    this.#lostPromise = device.lost.then((info) => {
      this.#lost = new GpuError(
        `Cannot continue: the GPU device was lost (${info.reason}: ${info.message})`,
        "device",
      );
      throw this.#lost;
    });
    this.#lostPromise.catch(() => {});
  }

  /** Throws the device-lost error if the device is gone. */
  checkAlive(): void {
    if (this.#lost) throw this.#lost;
  }

  /**
   * Compiles (once per source text) a compute pipeline with entry point `main`.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { createGpu } from "./gpu.ts";
   * const gpu = await createGpu();
   * const pipeline = await gpu.pipeline("noop", "@compute @workgroup_size(1) fn main() {}");
   * assert.equal(pipeline.label, "noop");
   * assert.strictEqual(await gpu.pipeline("noop", "@compute @workgroup_size(1) fn main() {}"), pipeline); // cached
   * gpu.destroy();
   * ```
   */
  pipeline(label: string, code: string): Promise<GPUComputePipeline> {
    this.checkAlive();
    const key = `${label}\u0000${code}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      p = this.#compiling.then(() => this.#compile(label, code));
      this.#compiling = p.catch(() => {});
      this.#pipelines.set(key, p);
      p.catch(() => this.#pipelines.delete(key));
    }
    return p;
  }

  async #compile(label: string, code: string): Promise<GPUComputePipeline> {
    const device = this.device;
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ label, code });
    const info = await module.getCompilationInfo();
    const scopeError = await device.popErrorScope();
    const messages = info.messages.filter((m) => m.type === "error");
    if (messages.length > 0 || scopeError) {
      const detail = messages.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join("; ") ||
        scopeError?.message;
      throw new GpuError(`Cannot compile kernel ${label}: ${detail}`, label);
    }
    try {
      return await device.createComputePipelineAsync({
        label,
        layout: "auto",
        compute: { module, entryPoint: "main" },
      });
    } catch (err) {
      throw new GpuError(`Cannot create pipeline for kernel ${label}: ${(err as Error).message}`, label, {
        cause: err,
      });
    }
  }

  /**
   * Builds a {@link Dispatch}: binds `buffers` (buffers, byte ranges of buffers or texture views) to
   * bindings 0..n-1 of group 0.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { createGpu, BufferSet } from "./gpu.ts";
   * const gpu = await createGpu();
   * const buffers = new BufferSet(gpu);
   * const out = buffers.storage(16, "out");
   * const p = await gpu.pipeline("fill", `@group(0) @binding(0) var<storage, read_write> o: array<u32>;
   *   @compute @workgroup_size(4) fn main(@builtin(global_invocation_id) g: vec3u) { o[g.x] = g.x; }`);
   * const d = gpu.dispatch(p, [out], [1, 1, 1]);
   * gpu.submit([d]);
   * assert.deepEqual(new Uint32Array(await gpu.read(out, 0, 16)), new Uint32Array([0, 1, 2, 3]));
   * buffers.destroy();
   * gpu.destroy();
   * ```
   */
  dispatch(
    pipeline: GPUComputePipeline,
    buffers: (GPUBuffer | GPUTextureView | GPUBufferBinding)[],
    workgroups: [number, number, number],
  ): Dispatch {
    for (const n of workgroups) {
      if (n > MAX_GRID) {
        throw new GpuError(`Cannot dispatch ${pipeline.label}: grid ${workgroups} too large`, pipeline.label);
      }
    }
    const bindGroup = this.device.createBindGroup({
      label: pipeline.label,
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((b, binding) => ({
        binding,
        resource: b instanceof GPUBuffer ? { buffer: b } : b,
      })),
    });
    return { label: pipeline.label, pipeline, bindGroup, workgroups };
  }

  /** Encodes dispatches in order into one compute pass of `encoder`. */
  encode(encoder: GPUCommandEncoder, dispatches: Dispatch[]): void {
    const pass = encoder.beginComputePass();
    for (const d of dispatches) {
      if (d.workgroups[0] === 0 || d.workgroups[1] === 0 || d.workgroups[2] === 0) continue;
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
    }
    pass.end();
  }

  /** Encodes and submits dispatches in one command buffer. */
  submit(dispatches: Dispatch[]): void {
    this.checkAlive();
    const encoder = this.device.createCommandEncoder();
    this.encode(encoder, dispatches);
    this.device.queue.submit([encoder.finish()]);
  }

  /** Copies `size` bytes of `buffer` from `offset` back to the CPU (one mapAsync). */
  async read(buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
    return (await readRanges(this, [{ buffer, offset, size }]))[0];
  }

  /** mapAsync calls made so far (each costs ~10 ms in Deno): tests and benchmarks count them. */
  readbacks = 0;

  /** Maps a MAP_READ buffer for reading, failing fast if the device is lost. */
  async mapped(staging: GPUBuffer): Promise<void> {
    this.readbacks++;
    await Promise.race([staging.mapAsync(GPUMapMode.READ), this.#lostPromise]);
  }

  #pendingJobs: {
    encode: (encoder: GPUCommandEncoder) => void;
    ranges: ReadRange[];
    done: PromiseWithResolvers<ArrayBuffer[]>;
  }[] = [];

  /**
   * Encodes work and reads ranges back, coalescing every call made before the next macrotask into
   * one submission and one mapAsync: concurrent requests (a batch) share each readback.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { BufferSet, createGpu } from "./gpu.ts";
   * const gpu = await createGpu();
   * const set = new BufferSet(gpu);
   * const a = set.upload(new Uint32Array([7]), "a"), b = set.upload(new Uint32Array([9]), "b");
   * const [[x], [y]] = await Promise.all([
   *   gpu.submitAndRead(() => {}, [{ buffer: a, offset: 0, size: 4 }]),
   *   gpu.submitAndRead(() => {}, [{ buffer: b, offset: 0, size: 4 }]),
   * ]);
   * assert.equal(new Uint32Array(x)[0], 7);
   * assert.equal(new Uint32Array(y)[0], 9);
   * assert.equal(gpu.readbacks, 1); // the two concurrent reads shared one readback
   * set.destroy();
   * gpu.destroy();
   * ```
   */
  submitAndRead(encode: (encoder: GPUCommandEncoder) => void, ranges: ReadRange[]): Promise<ArrayBuffer[]> {
    this.checkAlive();
    const done = Promise.withResolvers<ArrayBuffer[]>();
    if (this.#pendingJobs.length === 0) setTimeout(() => this.#flushJobs(), 0);
    this.#pendingJobs.push({ encode, ranges, done });
    return done.promise;
  }

  async #flushJobs(): Promise<void> {
    const jobs = this.#pendingJobs.splice(0);
    try {
      const encoder = this.device.createCommandEncoder();
      for (const job of jobs) job.encode(encoder);
      this.device.queue.submit([encoder.finish()]);
      const data = await readRanges(this, jobs.flatMap((job) => job.ranges));
      let at = 0;
      for (const job of jobs) {
        job.done.resolve(data.slice(at, at + job.ranges.length));
        at += job.ranges.length;
      }
    } catch (err) {
      for (const job of jobs) job.done.reject(err);
    }
  }

  /** Waits until all submitted work is done (or throws if the device was lost). */
  async sync(): Promise<void> {
    await Promise.race([this.device.queue.onSubmittedWorkDone(), this.#lostPromise]);
  }

  /** Destroys the device; pending work rejects. */
  destroy(): void {
    this.#pipelines.clear();
    this.device.destroy();
  }
}

/**
 * Opens the WebGPU adapter and device with the adapter's buffer limits.
 * Throws {@link GpuError} when WebGPU or an adapter is missing.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createGpu } from "./gpu.ts";
 * const gpu = await createGpu();
 * assert.equal(typeof gpu.adapterName, "string");
 * assert.equal(typeof gpu.f16, "boolean"); // true when the adapter has shader-f16 and it was allowed
 * assert.ok(gpu.shaderF16 || !gpu.f16); // the device has shader-f16 whenever the adapter offers it
 * gpu.destroy();
 * ```
 */
export async function createGpu(options: GpuOptions = {}): Promise<Gpu> {
  const gpuApi = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpuApi) throw new GpuError("Cannot open WebGPU: navigator.gpu is not available", "navigator.gpu");
  const adapter = await gpuApi.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) throw new GpuError("Cannot open WebGPU: no adapter found", "navigator.gpu.requestAdapter");
  const shaderF16 = (options.shaderF16 ?? true) && adapter.features.has("shader-f16");
  const f16 = (options.allowF16 ?? true) && shaderF16;
  const lim = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: shaderF16 ? ["shader-f16"] : [],
    requiredLimits: {
      maxStorageBufferBindingSize: lim.maxStorageBufferBindingSize,
      maxUniformBufferBindingSize: lim.maxUniformBufferBindingSize,
      maxBufferSize: lim.maxBufferSize,
      maxStorageBuffersPerShaderStage: lim.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: lim.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: lim.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: lim.maxComputeWorkgroupSizeX,
    },
  });
  const name = adapter.info?.description || adapter.info?.vendor || "unknown adapter";
  return new Gpu(device, f16, name, shaderF16);
}

/** Creates GPU buffers, counts their bytes (live and peak) and destroys them together. */
export class BufferSet {
  readonly gpu: Gpu;
  /** A set whose counts include this one's (a request's total over its per-pass sets). */
  readonly parent: BufferSet | null;
  #buffers = new Set<GPUBuffer>();
  #textures = new Map<GPUTexture, number>();
  liveBytes = 0;
  peakBytes = 0;

  /**
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { BufferSet, createGpu } from "./gpu.ts";
   * const gpu = await createGpu();
   * const set = new BufferSet(gpu);
   * set.storage(1024, "scratch");
   * assert.equal(set.peakBytes, 1024);
   * assert.equal(set.liveBytes, 1024);
   * set.destroy();
   * gpu.destroy();
   * ```
   */
  constructor(gpu: Gpu, options: { parent?: BufferSet } = {}) {
    this.gpu = gpu;
    this.parent = options.parent ?? null;
  }

  #count(bytes: number): void {
    this.liveBytes += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    if (this.parent) this.parent.#count(bytes);
  }

  /**
   * A storage buffer (read/write, copyable) of at least `bytes` bytes (rounded up to 16). It may
   * also be bound as a uniform buffer: kernels read small inputs that every lane shares that way
   * where it is faster (kernels/matvec_quant_texture.ts).
   */
  storage(bytes: number, label: string): GPUBuffer {
    return this.create(
      bytes,
      GPUBufferUsage.STORAGE | GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      label,
    );
  }

  /** A storage buffer holding `data`. */
  upload(data: ArrayBufferView, label: string): GPUBuffer {
    const buffer = this.storage(data.byteLength, label);
    writeBuffer(this.gpu, buffer, 0, data);
    return buffer;
  }

  /** A uniform buffer holding `data` (u32/f32 parameters of a kernel). */
  uniform(data: ArrayBufferView, label: string): GPUBuffer {
    const buffer = this.create(data.byteLength, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST, label);
    writeBuffer(this.gpu, buffer, 0, data);
    return buffer;
  }

  /** Creates a buffer with explicit usage; errors name the buffer. */
  create(bytes: number, usage: number, label: string): GPUBuffer {
    this.gpu.checkAlive();
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    if (size > this.gpu.device.limits.maxBufferSize) {
      throw new GpuError(`Cannot create buffer ${label}: ${size} bytes exceeds maxBufferSize`, label);
    }
    let buffer: GPUBuffer;
    try {
      buffer = this.gpu.device.createBuffer({ label, size, usage });
    } catch (err) {
      throw new GpuError(`Cannot create buffer ${label}: ${(err as Error).message}`, label, { cause: err });
    }
    this.#buffers.add(buffer);
    this.#count(size);
    return buffer;
  }

  /** A texture made by this set (destroyed with it); `bytes` counts toward live and peak bytes. */
  texture(descriptor: GPUTextureDescriptor, bytes: number): GPUTexture {
    this.gpu.checkAlive();
    let texture: GPUTexture;
    try {
      texture = this.gpu.device.createTexture(descriptor);
    } catch (err) {
      throw new GpuError(
        `Cannot create texture ${descriptor.label}: ${(err as Error).message}`,
        descriptor.label ?? "texture",
        { cause: err },
      );
    }
    this.#textures.set(texture, bytes);
    this.#count(bytes);
    return texture;
  }

  /** Destroys one buffer made by this set. */
  release(buffer: GPUBuffer): void {
    if (!this.#buffers.delete(buffer)) return;
    this.#count(-buffer.size);
    buffer.destroy();
  }

  /** Destroys every buffer made by this set. */
  destroy(): void {
    for (const b of this.#buffers) b.destroy();
    this.#buffers.clear();
    for (const t of this.#textures.keys()) t.destroy();
    this.#textures.clear();
    this.#count(-this.liveBytes);
  }
}

/** Writes a typed array into a buffer, padding the tail to 4 bytes as WebGPU requires. */
export function writeBuffer(gpu: Gpu, buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
  const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  const whole = bytes.byteLength & ~3;
  const chunk = 64 << 20;
  for (let at = 0; at < whole; at += chunk) {
    const n = Math.min(chunk, whole - at);
    gpu.device.queue.writeBuffer(buffer, offset + at, bytes, at, n);
  }
  if (whole < bytes.byteLength) {
    const tail = new Uint8Array(4);
    tail.set(bytes.subarray(whole));
    gpu.device.queue.writeBuffer(buffer, offset + whole, tail);
  }
}

/**
 * Splits `count` workgroups into a 2-D grid that respects {@link MAX_GRID}. Kernels recover the
 * linear index as `wid.x + wid.y * nwg.x` and skip indices ≥ count.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { grid } from "./gpu.ts";
 * assert.deepEqual(grid(70000), [35000, 2, 1]); // at most 65535 workgroups per dimension
 * assert.deepEqual(grid(3), [3, 1, 1]);
 * ```
 */
export function grid(count: number): [number, number, number] {
  if (count <= MAX_GRID) return [count, 1, 1];
  const y = Math.ceil(count / MAX_GRID);
  return [Math.ceil(count / y), y, 1];
}

/**
 * Reads several buffer ranges with one mapAsync (Deno waits ~10 ms per map, so batch readbacks).
 * Returns one ArrayBuffer per range.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu, readRanges } from "./gpu.ts";
 * const gpu = await createGpu();
 * const set = new BufferSet(gpu);
 * const a = set.upload(new Uint32Array([1, 2, 3, 4]), "a");
 * const [head, tail] = await readRanges(gpu, [{ buffer: a, offset: 0, size: 4 }, { buffer: a, offset: 12, size: 4 }]);
 * assert.deepEqual(new Uint32Array(head), new Uint32Array([1]));
 * assert.deepEqual(new Uint32Array(tail), new Uint32Array([4]));
 * set.destroy();
 * gpu.destroy();
 * ```
 */
export async function readRanges(
  gpu: Gpu,
  ranges: ReadRange[],
): Promise<ArrayBuffer[]> {
  gpu.checkAlive();
  const offsets: number[] = [];
  let total = 0;
  for (const r of ranges) {
    offsets.push(total);
    total += Math.ceil(r.size / 4) * 4;
  }
  const staging = gpu.device.createBuffer({
    size: Math.max(16, total),
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const encoder = gpu.device.createCommandEncoder();
    ranges.forEach((r, i) =>
      encoder.copyBufferToBuffer(r.buffer, r.offset, staging, offsets[i], Math.ceil(r.size / 4) * 4)
    );
    gpu.device.queue.submit([encoder.finish()]);
    await gpu.mapped(staging);
    const all = staging.getMappedRange();
    const copies = ranges.map((r, i) => all.slice(offsets[i], offsets[i] + r.size));
    staging.unmap();
    return copies;
  } finally {
    staging.destroy();
  }
}
