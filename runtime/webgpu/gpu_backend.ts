/**
 * The WebGPU backend: opens the device, uploads a checkpoint tensor by tensor (matrices as
 * WeightTensors, f16 where chosen; vectors as f32 buffers), compiles every kernel once, and
 * hands requests to {@link GpuSession} (runtime/gpu_session.ts) and images to the vision encoder
 * (runtime/gpu_vision.ts).
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
import type { ModelConfig } from "../core/config.ts";
import { BufferSet, createGpu, type Gpu } from "../device/gpu.ts";
import { createKernels, type Kernels } from "./gpu_kernels.ts";
import {
  type GpuTextPredictor,
  type GpuVisionPredictor,
  uploadTextPredictor,
  uploadVisionPredictor,
} from "./gpu_predictors.ts";
import { GpuSession } from "./gpu_session.ts";
import { DecodeBatcher } from "./gpu_batch.ts";
import { encodeImagesGpu, type VisionLayerWeights, visionLayerWeights } from "./gpu_vision.ts";
import { loadPredictors } from "../core/predictors.ts";
import { uploadWeight, type WeightTensor } from "../device/weights_gpu.ts";
import { type GpuMatrix, type QuantType, uploadQuantWeight } from "../../kernels/matmul_quant.ts";

/** One decoder layer's weights. */
export interface LayerWeights {
  attnNorm: GPUBuffer;
  mlpNorm: GPUBuffer;
  wq: GpuMatrix;
  wk: GpuMatrix;
  wv: GpuMatrix;
  wo: GpuMatrix;
  wGate: GpuMatrix;
  wUp: GpuMatrix;
  wDown: GpuMatrix;
}

/**
 * Every weight on the GPU: matrices as WeightTensors, vectors as f32 buffers; decoder matrices
 * stored in GGML blocks (GGUF) stay in their blocks (`quantized`), dequantized inside the matmul.
 */
export interface GpuWeights {
  matrices: Map<string, WeightTensor>;
  quantized: Map<string, GpuMatrix>;
  vectors: Map<string, GPUBuffer>;
}

const QUANT_TYPES: string[] = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"];
/** Decoder matrices that may stay quantized (the embedding table is read by rows, in float). */
const QUANTIZABLE = /^(layers\.\d+\.(wq|wk|wv|wo|w_gate|w_up|w_down)|lm_head)$/;

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
  options: { onProgress?: (p: LoadProgress) => void; weightDtype: "auto" | "f16" | "f32" },
): Promise<Backend> {
  // Quantized blocks dequantize to values f16 cannot hold exactly: those stay f32.
  const types = [...checkpoint.tensors.values()].map((t) => t.storedType);
  const sixteenBit = types.some((type) => type === "F16" || type === "BF16") &&
    types.every((type) => type === "F16" || type === "BF16" || type === "F32");
  const allowF16 = options.weightDtype === "f16" || (options.weightDtype === "auto" && sixteenBit);
  const gpu = await createGpu({ allowF16 });
  const buffers = new BufferSet(gpu);
  try {
    const kernels = await createKernels(gpu);
    const weights: GpuWeights = { matrices: new Map(), quantized: new Map(), vectors: new Map() };
    const predictorTensors = new Map<string, Float32Array>();
    const total = [...checkpoint.tensors.values()].reduce((n, t) => n + t.byteLength, 0);
    let loaded = 0;
    for (const [name, t] of checkpoint.tensors) {
      if (t.readBlocks && QUANT_TYPES.includes(t.storedType) && QUANTIZABLE.test(name)) {
        const [rows, cols] = t.shape;
        const type = t.storedType as QuantType;
        weights.quantized.set(
          name,
          uploadQuantWeight(buffers, await t.readBlocks(), { rows, cols, type, label: name }),
        );
        loaded += t.byteLength;
        options.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: t.sourceName });
        continue;
      }
      const values = await readCheckpointTensor(checkpoint, name);
      if (name.includes("_score_predictor.")) predictorTensors.set(name, values);
      else if (t.shape.length >= 2 && name !== "vision.pos_embed") {
        const rows = t.shape[0], cols = values.length / rows;
        weights.matrices.set(name, uploadWeight(buffers, values, { rows, cols, label: name }));
      } else {
        weights.vectors.set(name, buffers.upload(values, name));
      }
      loaded += t.byteLength;
      options.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: t.sourceName });
    }
    const cpuPredictors = loadPredictors(checkpoint.config, (n) => predictorTensors.get(n));
    const predictors = {
      vision: cpuPredictors.vision ? await uploadVisionPredictor(buffers, cpuPredictors.vision) : null,
      text: cpuPredictors.text ? await uploadTextPredictor(buffers, cpuPredictors.text) : null,
    };
    await gpu.sync();
    return new GpuBackend(gpu, buffers, checkpoint.config, weights, kernels, predictors);
  } catch (err) {
    buffers.destroy();
    gpu.destroy();
    throw err;
  }
}

/** The WebGPU backend of a loaded model: weights, kernels and predictors on one device. */
export class GpuBackend implements Backend {
  readonly kind = "webgpu" as const;
  /** Runs the decode steps of concurrent requests together (generateBatch). */
  readonly batcher: DecodeBatcher = new DecodeBatcher(this);
  readonly layers: LayerWeights[];
  readonly visionLayers: VisionLayerWeights[];
  constructor(
    readonly gpu: Gpu,
    readonly buffers: BufferSet,
    readonly config: ModelConfig,
    readonly weights: GpuWeights,
    readonly kernels: Kernels,
    readonly predictors: { vision: GpuVisionPredictor | null; text: GpuTextPredictor | null },
  ) {
    const m = (n: string) => weights.matrices.get(n)!;
    const v = (n: string) => weights.vectors.get(n)!;
    const q = (n: string) => weights.quantized.get(n) ?? m(n);
    this.layers = Array.from({ length: config.text.numLayers }, (_, i) => {
      const p = `layers.${i}.`;
      return {
        attnNorm: v(p + "attn_norm"),
        mlpNorm: v(p + "mlp_norm"),
        wq: q(p + "wq"),
        wk: q(p + "wk"),
        wv: q(p + "wv"),
        wo: q(p + "wo"),
        wGate: q(p + "w_gate"),
        wUp: q(p + "w_up"),
        wDown: q(p + "w_down"),
      };
    });
    this.visionLayers = visionLayerWeights(config, m, v);
  }

  matrix(name: string): WeightTensor {
    return this.weights.matrices.get(name)!;
  }
  vector(name: string): GPUBuffer {
    return this.weights.vectors.get(name)!;
  }

  encodeImages(pixels: Float32Array[]): Promise<ImageFeatures> {
    return encodeImagesGpu(this, pixels);
  }

  openSession(input: SessionInput): BackendSession {
    return new GpuSession(this, input);
  }

  get readbacks(): number {
    return this.gpu.readbacks;
  }

  get batchedSteps(): number {
    return this.batcher.batchedSteps;
  }

  dispose(): void {
    this.buffers.destroy();
    this.gpu.destroy();
  }
}
