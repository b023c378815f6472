/**
 * The weight-bound parts of a decoder layer on the GPU, shared by one request's passes
 * (runtime/webgpu/gpu_session.ts) and batched decode steps (runtime/webgpu/gpu_batch.ts): everything but the
 * attention over a request's own KV cache, which sits between {@link bindLayerInput} and
 * {@link bindLayerOutput}.
 *
 * Activations (f32, M rows): x [M, C] residual stream, h [M, C], q [M, H·D], k/v [M, KvH·D],
 * attn [M, H·D] (attention output), gate/up/act [M, I], logits [rows, V].
 * @module
 */
import type { TextConfig } from "../core/config.ts";
import type { BufferSet, Dispatch } from "../device/gpu.ts";
import type { GpuModel } from "./gpu_model.ts";

/** The activation buffers a layer reads and writes. */
export interface LayerActivations {
  x: GPUBuffer;
  h: GPUBuffer;
  q: GPUBuffer;
  k: GPUBuffer;
  v: GPUBuffer;
  attn: GPUBuffer;
  gate: GPUBuffer;
  up: GPUBuffer;
  act: GPUBuffer;
}

/**
 * Allocates layer activations for `rows` rows in `set`.
 * @example
 * ```ts
 * import { allocLayerActivations } from "./gpu_layers.ts";
 * // const act = allocLayerActivations(set, model.config.text, { rows: 8, label: "batch" });
 * ```
 */
export function allocLayerActivations(
  set: BufferSet,
  text: TextConfig,
  options: { rows: number; label: string },
): LayerActivations {
  const { rows, label } = options;
  const f = (floats: number, name: string) => set.storage(rows * floats * 4, `${label} ${name}`);
  const qw = text.numHeads * text.headDim, kw = text.numKvHeads * text.headDim;
  return {
    x: f(text.hiddenSize, "x"),
    h: f(text.hiddenSize, "h"),
    q: f(qw, "q"),
    k: f(kw, "k"),
    v: f(kw, "v"),
    attn: f(qw, "attn"),
    gate: f(text.intermediateSize, "gate"),
    up: f(text.intermediateSize, "up"),
    act: f(text.intermediateSize, "act"),
  };
}

/**
 * h = RMSNorm(x); q, k, v = h·Wq, h·Wk, h·Wv; RoPE on q and k at positions[offset + m].
 * @example
 * ```ts
 * import { bindLayerInput } from "./gpu_layers.ts";
 * // const dispatches = bindLayerInput(model, set, 0, { act, rows: 1, positions: state, positionsOffset: 2 });
 * ```
 */
export function bindLayerInput(
  model: GpuModel,
  set: BufferSet,
  l: number,
  args: { act: LayerActivations; rows: number; positions: GPUBuffer; positionsOffset: number },
): Dispatch[] {
  const k = model.kernels, t = model.config.text, W = model.weights.layers[l], { act: a, rows } = args;
  const rope = (x: GPUBuffer, heads: number) =>
    k.rope.bind(set, {
      x,
      positions: args.positions,
      positionsOffset: args.positionsOffset,
      rows,
      heads,
      headDim: t.headDim,
      theta: t.ropeTheta,
    });
  return [
    ...k.rmsNorm.bind(set, {
      x: a.x,
      weight: W.attnNorm,
      out: a.h,
      rows,
      cols: t.hiddenSize,
      eps: t.rmsNormEps,
    }),
    ...k.matmul.bind(set, { x: a.h, weight: W.wq, out: a.q, rows }),
    ...k.matmul.bind(set, { x: a.h, weight: W.wk, out: a.k, rows }),
    ...k.matmul.bind(set, { x: a.h, weight: W.wv, out: a.v, rows }),
    ...rope(a.q, t.numHeads),
    ...rope(a.k, t.numKvHeads),
  ];
}

/**
 * x += attn·Wo; x += SwiGLU MLP of RMSNorm(x).
 * @example
 * ```ts
 * import { bindLayerOutput } from "./gpu_layers.ts";
 * // const dispatches = bindLayerOutput(model, set, 0, { act, rows: 1 });
 * ```
 */
export function bindLayerOutput(
  model: GpuModel,
  set: BufferSet,
  l: number,
  args: { act: LayerActivations; rows: number },
): Dispatch[] {
  const k = model.kernels, t = model.config.text, W = model.weights.layers[l], { act: a, rows } = args;
  return [
    ...k.matmul.bind(set, { x: a.attn, weight: W.wo, out: a.x, rows, accumulate: true }),
    ...k.rmsNorm.bind(set, {
      x: a.x,
      weight: W.mlpNorm,
      out: a.h,
      rows,
      cols: t.hiddenSize,
      eps: t.rmsNormEps,
    }),
    ...k.matmul.bind(set, { x: a.h, weight: W.wGate, out: a.gate, rows }),
    ...k.matmul.bind(set, { x: a.h, weight: W.wUp, out: a.up, rows }),
    ...k.swiglu.bind(set, { gate: a.gate, up: a.up, out: a.act, count: rows * t.intermediateSize }),
    ...k.matmul.bind(set, { x: a.act, weight: W.wDown, out: a.x, rows, accumulate: true }),
  ];
}

/**
 * Final RMSNorm and lm_head: logits[i] for rows first .. first + rows - 1 of x.
 * @example
 * ```ts
 * import { bindHead } from "./gpu_layers.ts";
 * // const dispatches = bindHead(model, set, { x, h, logits, first: m - 1, rows: 1 });
 * ```
 */
export function bindHead(
  model: GpuModel,
  set: BufferSet,
  args: { x: GPUBuffer; h: GPUBuffer; logits: GPUBuffer; first: number; rows: number },
): Dispatch[] {
  const k = model.kernels, t = model.config.text, W = model.weights;
  const rows = args.first + args.rows;
  return [
    ...k.rmsNorm.bind(set, {
      x: args.x,
      weight: W.norm,
      out: args.h,
      rows,
      cols: t.hiddenSize,
      eps: t.rmsNormEps,
    }),
    ...k.matmul.bind(set, {
      x: args.h,
      weight: W.lmHead ?? W.embed,
      out: args.logits,
      rows: args.rows,
      xRowOffset: args.first,
    }),
  ];
}
