/**
 * The contract between the generation loop and a compute backend ("cpu" or "webgpu"). The loop
 * (runtime/engine/generate.ts) owns requests, stopping, streaming and stats; a backend owns weights and
 * runs forward passes, calling the policy plan at its prune layer. GPU-free types only.
 * @module
 */
import type { PolicyPlan } from "../core/policy.ts";
import type { PromptRows } from "../core/sequence.ts";
import type { KvDtype, KvLedger } from "../core/sparse_kv.ts";
import type { PassRecord } from "./pass.ts";

/** Loading progress: bytes of tensors loaded so far out of the total. */
export interface LoadProgress {
  /** Bytes of tensors loaded so far. */
  loadedBytes: number;
  /** Bytes of all the tensors to load. */
  totalBytes: number;
  /** Name of the tensor just loaded. */
  tensor: string;
}

/** Sampling settings of a request. temperature ≤ 0 = greedy. */
export interface Sampling {
  temperature: number;
  topP: number;
  seed: number;
}

/** Projected image features [images·N, C], held by the backend that made them. */
export interface ImageFeatures {
  rows: number;
  /** GPU bytes the features occupy (0 when held in CPU memory). */
  readonly gpuBytes: number;
  dispose(): void;
}

/** What a session needs to run one request. */
export interface SessionInput {
  rows: PromptRows;
  images: ImageFeatures | null;
  plan: PolicyPlan;
  sampling: Sampling;
  /** Upper bound on generated tokens (sizes buffers). */
  maxNewTokens: number;
  /** false when the session will only `recompute` (sizes buffers for the whole context). */
  kvCache: boolean;
  /** Element type of the KV cache (default: the backend's `kvDtype`; one of its `kvDtypes`). */
  kvDtype?: KvDtype;
  /** Stop ids: `decode` returns early after sampling one (its later steps are neither kept nor counted). */
  stop?: number[];
}

/** Outcome of a prefill (KV mode) or of one no-cache recompute. */
export interface PassResult {
  /** Next token sampled from the last row's logits. */
  token: number;
  /** Image-token indices kept at the prune layer (ascending), or null when nothing was pruned. */
  visualKept: number[] | null;
  /** Logits of the last row when asked for. */
  logits?: Float32Array;
}

/** One request's state on a backend. */
export interface BackendSession {
  /** KV mode: runs the prompt, fills the cache, samples the first token. */
  prefill(options: { wantLogits: boolean }): Promise<PassResult>;
  /**
   * KV mode: feeds back `steps` tokens, starting with the last sampled one; each step samples the
   * next. Returns the sampled tokens (fewer when one is a stop id: it comes last) and, per fed
   * token, whether it entered layers ≥ admitLayer.
   * With `forced`, the fed tokens are these instead of the sampled ones, and `logProbs` holds
   * log p(forced[i+1] | …) per step (teacher forcing).
   */
  decode(steps: number, options?: { forced?: number[] }): Promise<{
    tokens: number[];
    admitted: boolean[];
    logProbs?: number[];
  }>;
  /**
   * No-cache mode: recomputes the prompt plus `generated` (all tokens generated so far, fed back);
   * returns the next token and, in `outputKept`, the indices of generated tokens (except the last)
   * that stayed in the context at the prune layer.
   */
  recompute(
    generated: number[],
    options?: { wantLogits?: boolean },
  ): Promise<PassResult & { outputKept: number[] }>;
  /** Rows held per layer and bytes, kept by the backend as it runs. */
  readonly ledger: KvLedger;
  /** Per forward pass, the rows each layer handled (for exact FLOPs). */
  readonly passes: PassRecord[];
  /** Bytes of all GPU buffers of this request at their peak (0 on the CPU). */
  gpuPeakBytes(): number;
  /** Frees everything the session holds. */
  dispose(): void;
}

/** A loaded model on one device. */
export interface Backend {
  readonly kind: "cpu" | "webgpu";
  /** The KV cache's element type of sessions that do not choose one. */
  readonly kvDtype: KvDtype;
  /** The KV element types this backend can hold (f16 on WebGPU needs `shader-f16`). */
  readonly kvDtypes: readonly KvDtype[];
  /** Runs the vision tower and projector on preprocessed images ([3, S, S] each). */
  encodeImages(pixels: Float32Array[]): Promise<ImageFeatures>;
  openSession(input: SessionInput): BackendSession;
  /** GPU readbacks (mapAsync calls) made so far; 0 on the CPU. */
  readonly readbacks: number;
  /** Decode steps run batched with other requests so far (one row each per step); 0 on the CPU. */
  readonly batchedSteps: number;
  /** Frees the weights (and the device). */
  dispose(): void;
}
