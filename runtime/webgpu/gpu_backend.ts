/**
 * The WebGPU backend: opens the device, uploads a checkpoint tensor by tensor (each weight as the
 * model's weight description says: matrices as WeightTensors, f16 where chosen; vectors as f32
 * buffers), compiles every kernel once into a {@link GpuModel}, and hands requests to
 * {@link GpuSession} (runtime/webgpu/gpu_session.ts), their concurrent decode steps to
 * {@link DecodeBatcher} (runtime/webgpu/gpu_batch.ts) and images to the vision encoder
 * (runtime/webgpu/gpu_vision.ts).
 * @module
 */
import type {
  Backend,
  BackendSession,
  ImageFeatures,
  LoadProgress,
  SessionInput,
} from "../engine/backend.ts";
import { type Checkpoint, readCheckpointTensor } from "../io/checkpoint.ts";
import { BufferSet, createGpu } from "../device/gpu.ts";
import { createKernels } from "./gpu_kernels.ts";
import { uploadTextPredictor, uploadVisionPredictor } from "./gpu_predictors.ts";
import { GpuSession } from "./gpu_session.ts";
import { DecodeBatcher } from "./gpu_batch.ts";
import { encodeImagesGpu } from "./gpu_vision.ts";
import type { GpuModel, GpuPredictors, GpuWeights } from "./gpu_model.ts";
import { loadPredictors } from "../core/predictors.ts";
import {
  bindWeights,
  describeWeights,
  isPredictorWeight,
  type ModelWeightSpecs,
  weightList,
} from "../core/weights.ts";
import { uploadWeight, type WeightStorage, type WeightTensor } from "../device/weights_gpu.ts";
import { type GpuMatrix, type QuantType, uploadQuantWeight } from "../../kernels/matmul_quant.ts";
import { prepareQuantTextureMatvec } from "../../kernels/matvec_quant_texture.ts";
import { chooseWeightStorage, type WeightStorageOption } from "./weight_storage.ts";
import { InputError } from "../core/errors.ts";
import { KV_DTYPES, type KvDtype } from "../core/sparse_kv.ts";

const QUANT_TYPES: string[] = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"];

/**
 * The matrices that may stay in their GGML blocks (dequantized inside the matmul): the decoder
 * layers' and the output head's (the embedding table is read by rows, in float).
 */
function quantizable(specs: ModelWeightSpecs): Set<string> {
  const layers = specs.layers.flatMap((l) => [l.wq, l.wk, l.wv, l.wo, l.wGate, l.wUp, l.wDown]);
  return new Set([...layers, ...(specs.lmHead ? [specs.lmHead] : [])].map((spec) => spec.name));
}

/**
 * Opens WebGPU and uploads a checkpoint tensor by tensor (each read, converted, uploaded, dropped).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { openCheckpoint } from "../io/checkpoint.ts";
 * import { createGpuBackend } from "./gpu_backend.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const progress: number[] = [];
 * const backend = await createGpuBackend(checkpoint, {
 *   weightDtype: "auto",
 *   onProgress: ({ loadedBytes, totalBytes }) => progress.push(loadedBytes / totalBytes),
 * });
 * assert.equal(backend.kind, "webgpu");
 * assert.equal(progress.length, checkpoint.tensors.size); // one report per tensor
 * assert.equal(progress.at(-1), 1);
 * backend.dispose();
 * ```
 */
export async function createGpuBackend(
  checkpoint: Checkpoint,
  options: {
    onProgress?: (p: LoadProgress) => void;
    weightDtype: "auto" | "f16" | "f32";
    /** Matrix storage: measured per adapter ("auto", default) or forced (runtime/webgpu/weight_storage.ts). */
    weightStorage?: WeightStorageOption;
    /**
     * KV cache element type of sessions that do not choose one: "auto" (default) f16 where the
     * device has `shader-f16`, else f32; "f16" there only (InputError naming `kvDtype` elsewhere).
     */
    kvDtype?: "auto" | KvDtype;
    /** Fused decode kernels where they apply (default true; {@link GpuModel.fused}). */
    fusedKernels?: boolean;
  },
): Promise<Backend> {
  // Quantized blocks dequantize to values f16 cannot hold exactly: those stay f32.
  const types = [...checkpoint.tensors.values()].map((t) => t.storedType);
  const sixteenBit = types.some((type) => type === "F16" || type === "BF16") &&
    types.every((type) => type === "F16" || type === "BF16" || type === "F32");
  const allowF16 = options.weightDtype === "f16" || (options.weightDtype === "auto" && sixteenBit);
  const gpu = await createGpu({ allowF16 });
  const buffers = new BufferSet(gpu);
  try {
    const kvDtype = options.kvDtype === undefined || options.kvDtype === "auto"
      ? (gpu.shaderF16 ? "f16" : "f32")
      : options.kvDtype;
    checkKvDtype(gpu.shaderF16, kvDtype, gpu.adapterName);
    const kernels = await createKernels(gpu);
    const storage = await chooseWeightStorage(gpu, kernels, options.weightStorage ?? "auto");
    const specs = describeWeights(checkpoint.config), roles = weightList(specs);
    const matrices = new Map<string, WeightTensor>(), vectors = new Map<string, GPUBuffer>();
    const quantized = new Map<string, GpuMatrix>(), mayStayQuantized = quantizable(specs);
    const predictorTensors = new Map<string, Float32Array>();
    const total = [...checkpoint.tensors.values()].reduce((n, t) => n + t.byteLength, 0);
    let loaded = 0;
    for (const [name, t] of checkpoint.tensors) {
      if (t.readBlocks && QUANT_TYPES.includes(t.storedType) && mayStayQuantized.has(name)) {
        const [rows, cols] = t.shape;
        const type = t.storedType as QuantType;
        quantized.set(
          name,
          uploadQuantWeight(buffers, await t.readBlocks(), { rows, cols, type, label: name, storage }),
        );
        loaded += t.byteLength;
        options.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: t.sourceName });
        continue;
      }
      const values = await readCheckpointTensor(checkpoint, name);
      if (isPredictorWeight(name)) predictorTensors.set(name, values);
      else if (roles.get(name)!.role === "matrix") {
        const rows = t.shape[0], cols = values.length / rows;
        // The embedding table is gathered by rows (kernels/embedding.ts): it stays in buffers.
        const stored = name === specs.embed.name ? "buffer" : storage;
        matrices.set(name, uploadWeight(buffers, values, { rows, cols, label: name, storage: stored }));
      } else {
        vectors.set(name, buffers.upload(values, name));
      }
      loaded += t.byteLength;
      options.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: t.sourceName });
    }
    const cpuPredictors = loadPredictors(checkpoint.config, (n) => predictorTensors.get(n));
    const predictors: GpuPredictors = {
      vision: cpuPredictors.vision ? await uploadVisionPredictor(buffers, cpuPredictors.vision) : null,
      text: cpuPredictors.text ? await uploadTextPredictor(buffers, cpuPredictors.text) : null,
    };
    // Decode reads x through a uniform binding for each quantized texture shape (compiled once).
    const shapes = [...quantized.values()].flatMap((w) => "type" in w && w.textures ? [w] : []);
    await prepareQuantTextureMatvec(gpu, shapes);
    await gpu.sync();
    const bound = bindWeights(specs, {
      matrix: (spec): GpuMatrix => quantized.get(spec.name) ?? matrices.get(spec.name)!,
      vector: (spec) => vectors.get(spec.name)!,
    });
    const weights: GpuWeights = { ...bound, embed: matrices.get(specs.embed.name)! };
    const fused = options.fusedKernels ?? true;
    const model = { gpu, buffers, config: checkpoint.config, weights, kernels, predictors, fused };
    return new GpuBackend(model, storage, kvDtype);
  } catch (err) {
    buffers.destroy();
    gpu.destroy();
    throw err;
  }
}

/** Refuses an f16 KV cache on a device without `shader-f16` (InputError naming `kvDtype`). */
function checkKvDtype(shaderF16: boolean, kvDtype: KvDtype, adapterName: string): void {
  if (kvDtype === "f16" && !shaderF16) {
    throw new InputError(
      `Cannot use kvDtype "f16": the WebGPU device (${adapterName}) has no shader-f16; use "f32" or "auto"`,
      "kvDtype",
    );
  }
}

/** The WebGPU backend of a loaded model: weights, kernels and predictors on one device. */
export class GpuBackend implements Backend {
  readonly kind = "webgpu" as const;
  /** Runs the decode steps of concurrent requests together (generateBatch). */
  readonly batcher: DecodeBatcher;
  readonly kvDtypes: readonly KvDtype[];
  constructor(
    readonly model: GpuModel,
    /** Where the matrices (all but the embedding table) live. */
    readonly weightStorage: WeightStorage = "buffer",
    /** The KV cache element type of sessions that do not choose one. */
    readonly kvDtype: KvDtype = "f32",
  ) {
    this.batcher = new DecodeBatcher(model);
    this.kvDtypes = model.gpu.shaderF16 ? KV_DTYPES : ["f32"];
    checkKvDtype(model.gpu.shaderF16, kvDtype, model.gpu.adapterName);
  }

  encodeImages(pixels: Float32Array[]): Promise<ImageFeatures> {
    return encodeImagesGpu(this.model, pixels);
  }

  openSession(input: SessionInput): BackendSession {
    const kvDtype = input.kvDtype ?? this.kvDtype;
    checkKvDtype(this.model.gpu.shaderF16, kvDtype, this.model.gpu.adapterName);
    return new GpuSession(this.model, { ...input, kvDtype }, this.batcher);
  }

  get readbacks(): number {
    return this.model.gpu.readbacks;
  }

  get batchedSteps(): number {
    return this.batcher.batchedSteps;
  }

  dispose(): void {
    this.model.buffers.destroy();
    this.model.gpu.destroy();
  }
}
