/**
 * A loaded model's state on the GPU, as one typed record: the device, the buffers that own the
 * weights, the config, the weights (the model's weight description bound to GPU storage), the
 * compiled kernels and the predictors. The backend (runtime/webgpu/gpu_backend.ts) builds it; the
 * forward binders, sessions, batched decoding and the vision encoder read it.
 * @module
 */
import type { ModelConfig } from "../core/config.ts";
import type { BoundWeights, DecoderLayerSpec, ModelWeightSpecs } from "../core/weights.ts";
import type { BufferSet, Gpu } from "../device/gpu.ts";
import type { WeightTensor } from "../device/weights_gpu.ts";
import type { GpuMatrix } from "../../kernels/matmul_quant.ts";
import type { Kernels } from "./gpu_kernels.ts";
import type { GpuTextPredictor, GpuVisionPredictor } from "./gpu_predictors.ts";

/**
 * Every weight on the GPU: matrices as WeightTensors (f16 where chosen) or, for the decoder's and
 * the head's matrices of a GGUF checkpoint, in their GGML blocks; vectors as f32 buffers. The
 * embedding table is always a WeightTensor (read by rows).
 */
export type GpuWeights = Omit<BoundWeights<ModelWeightSpecs, GpuMatrix, GPUBuffer>, "embed"> & {
  embed: WeightTensor;
};

/** One decoder layer's weights on the GPU. */
export type GpuLayerWeights = BoundWeights<DecoderLayerSpec, GpuMatrix, GPUBuffer>;

/** The predictors on the GPU (null where the checkpoint has none). */
export interface GpuPredictors {
  vision: GpuVisionPredictor | null;
  text: GpuTextPredictor | null;
}

/** A loaded model on one device. */
export interface GpuModel {
  readonly gpu: Gpu;
  /** Owns every weight buffer. */
  readonly buffers: BufferSet;
  readonly config: ModelConfig;
  readonly weights: GpuWeights;
  readonly kernels: Kernels;
  readonly predictors: GpuPredictors;
  /**
   * Whether decoder layers take the fused kernels where they apply (few rows, weights in single
   * textures: runtime/webgpu/gpu_layers.ts); false runs one kernel per op (comparisons).
   */
  readonly fused: boolean;
}
