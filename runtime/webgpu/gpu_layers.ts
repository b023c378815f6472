/**
 * The weight-bound parts of a decoder layer on the GPU, shared by one request's passes
 * (runtime/webgpu/gpu_session.ts) and batched decode steps (runtime/webgpu/gpu_batch.ts): everything but the
 * attention over a request's own KV cache, which sits between {@link bindLayerInput} and
 * {@link bindLayerOutput}.
 *
 * Activations (f32, M rows): x [M, C] residual stream, h [M, C], q [M, H·D], k/v [M, KvH·D],
 * attn [M, H·D] (attention output), gate/up/act [M, I], logits [rows, V].
 *
 * Few rows (decode steps, batched or not) over weights in single textures take the fused kernels
 * (kernels/matvec_texture_fused.ts) unless the model was loaded without them: q, k and v are one
 * dispatch, gate/up with SwiGLU another (gate and up are not written), and RoPE turns q and k in one
 * dispatch (for any number of rows). Per layer that is 7 dispatches instead of 12 besides the
 * attention's.
 * @module
 */
import type { TextConfig } from "../core/config.ts";
import type { BufferSet, Dispatch } from "../device/gpu.ts";
import type { WeightTensor } from "../device/weights_gpu.ts";
import type { GpuMatrix } from "../../kernels/matmul_quant.ts";
import { MATVEC_TEXTURE_MAX_ROWS } from "../../kernels/matvec_texture.ts";
import { inOneTexture } from "../../kernels/matvec_texture_fused.ts";
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
 * import assert from "node:assert/strict";
 * import { allocLayerActivations } from "./gpu_layers.ts";
 * import { BufferSet, createGpu } from "../device/gpu.ts";
 * import { parseTextConfig } from "../core/config.ts";
 * const text = parseTextConfig({
 *   hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 1,
 * }, "config.json");
 * const gpu = await createGpu();
 * const set = new BufferSet(gpu);
 * const act = allocLayerActivations(set, text, { rows: 3, label: "batch" });
 * assert.equal(act.x.size, 3 * 8 * 4); // [rows, C] f32
 * assert.equal(act.gate.size, 3 * 16 * 4); // [rows, I]
 * assert.equal(set.liveBytes, 3 * 4 * (2 * 8 + 4 * 8 + 3 * 16)); // x, h; q, k, v, attn; gate, up, act
 * set.destroy();
 * gpu.destroy();
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
 * import assert from "node:assert/strict";
 * import { BufferSet } from "../device/gpu.ts";
 * import { addInPlace, linear, rmsNorm, rope, swiglu } from "../core/cpu_ops.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { describeWeights, type WeightSpec } from "../core/weights.ts";
 * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
 * import { allocLayerActivations, bindLayerInput } from "./gpu_layers.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const backend = await createGpuBackend(checkpoint, { weightDtype: "f32" }) as GpuBackend;
 * const model = backend.model;
 * const t = model.config.text, specs = describeWeights(model.config), W = specs.layers[0];
 * const w = (spec: WeightSpec) => readCheckpointTensor(checkpoint, spec.name);
 * const set = new BufferSet(model.gpu);
 * const act = allocLayerActivations(set, t, { rows: 2, label: "example" });
 * const x = new Float32Array(2 * t.hiddenSize).map((_, i) => Math.sin(i)); // [2, C]
 * model.gpu.device.queue.writeBuffer(act.x, 0, x);
 * const close = async (buffer: GPUBuffer, want: Float32Array) => {
 *   const got = new Float32Array(await model.gpu.read(buffer, 0, want.length * 4));
 *   got.forEach((value, i) => assert.ok(Math.abs(value - want[i]) < 1e-4, `${i}: ${value} vs ${want[i]}`));
 * };
 * const positions = set.upload(new Uint32Array([9, 4, 5]), "positions"); // the two rows sit at positions 4 and 5
 * model.gpu.submit(bindLayerInput(model, set, 0, { act, rows: 2, positions, positionsOffset: 1 }));
 * // The CPU twin: RMSNorm, the projections, RoPE on q and k.
 * const h = rmsNorm(x, await w(W.attnNorm), t.rmsNormEps);
 * const q = linear(h, await w(W.wq), { rows: 2 }), k = linear(h, await w(W.wk), { rows: 2 });
 * const rotate = { headDim: t.headDim, theta: t.ropeTheta };
 * rope(q, [4, 5], { heads: t.numHeads, ...rotate });
 * rope(k, [4, 5], { heads: t.numKvHeads, ...rotate });
 * await close(act.q, q);
 * await close(act.k, k);
 * await close(act.v, linear(h, await w(W.wv), { rows: 2 }));
 * set.destroy();
 * backend.dispose();
 * ```
 */
export function bindLayerInput(
  model: GpuModel,
  set: BufferSet,
  l: number,
  args: { act: LayerActivations; rows: number; positions: GPUBuffer; positionsOffset: number },
): Dispatch[] {
  const k = model.kernels, t = model.config.text, W = model.weights.layers[l], { act: a, rows } = args;
  const rotate = {
    positions: args.positions,
    positionsOffset: args.positionsOffset,
    rows,
    headDim: t.headDim,
    theta: t.ropeTheta,
  };
  // RoPE on q and k: one dispatch, or one each without fusion.
  const rope = () =>
    model.fused
      ? k.rope.bind(set, { ...rotate, x: a.q, heads: t.numHeads, second: { x: a.k, heads: t.numKvHeads } })
      : [
        ...k.rope.bind(set, { ...rotate, x: a.q, heads: t.numHeads }),
        ...k.rope.bind(set, { ...rotate, x: a.k, heads: t.numKvHeads }),
      ];
  const projections = [W.wq, W.wk, W.wv];
  const qkv = fuses(model, rows, projections)
    ? k.matvecTextureMulti.bind(set, {
      x: a.h,
      projections: [
        { weight: projections[0], out: a.q },
        { weight: projections[1], out: a.k },
        { weight: projections[2], out: a.v },
      ],
      rows,
    })
    : [
      ...k.matmul.bind(set, { x: a.h, weight: W.wq, out: a.q, rows }),
      ...k.matmul.bind(set, { x: a.h, weight: W.wk, out: a.k, rows }),
      ...k.matmul.bind(set, { x: a.h, weight: W.wv, out: a.v, rows }),
    ];
  return [
    ...k.rmsNorm.bind(set, {
      x: a.x,
      weight: W.attnNorm,
      out: a.h,
      rows,
      cols: t.hiddenSize,
      eps: t.rmsNormEps,
    }),
    ...qkv,
    ...rope(),
  ];
}

/**
 * x += attn·Wo; x += SwiGLU MLP of RMSNorm(x).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet } from "../device/gpu.ts";
 * import { addInPlace, linear, rmsNorm, rope, swiglu } from "../core/cpu_ops.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { describeWeights, type WeightSpec } from "../core/weights.ts";
 * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
 * import { allocLayerActivations, bindLayerOutput } from "./gpu_layers.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const backend = await createGpuBackend(checkpoint, { weightDtype: "f32" }) as GpuBackend;
 * const model = backend.model;
 * const t = model.config.text, specs = describeWeights(model.config), W = specs.layers[0];
 * const w = (spec: WeightSpec) => readCheckpointTensor(checkpoint, spec.name);
 * const set = new BufferSet(model.gpu);
 * const act = allocLayerActivations(set, t, { rows: 2, label: "example" });
 * const x = new Float32Array(2 * t.hiddenSize).map((_, i) => Math.sin(i)); // [2, C]
 * model.gpu.device.queue.writeBuffer(act.x, 0, x);
 * const close = async (buffer: GPUBuffer, want: Float32Array) => {
 *   const got = new Float32Array(await model.gpu.read(buffer, 0, want.length * 4));
 *   got.forEach((value, i) => assert.ok(Math.abs(value - want[i]) < 1e-4, `${i}: ${value} vs ${want[i]}`));
 * };
 * const attn = new Float32Array(2 * t.numHeads * t.headDim).map((_, i) => Math.cos(i)); // an attention output
 * model.gpu.device.queue.writeBuffer(act.attn, 0, attn);
 * model.gpu.submit(bindLayerOutput(model, set, 0, { act, rows: 2 }));
 * // The CPU twin: x += attn·Wo, then x += the SwiGLU MLP of RMSNorm(x).
 * addInPlace(x, linear(attn, await w(W.wo), { rows: 2 }));
 * const h = rmsNorm(x, await w(W.mlpNorm), t.rmsNormEps);
 * const mlp = swiglu(linear(h, await w(W.wGate), { rows: 2 }), linear(h, await w(W.wUp), { rows: 2 }));
 * addInPlace(x, linear(mlp, await w(W.wDown), { rows: 2 }));
 * await close(act.x, x);
 * set.destroy();
 * backend.dispose();
 * ```
 */
export function bindLayerOutput(
  model: GpuModel,
  set: BufferSet,
  l: number,
  args: { act: LayerActivations; rows: number },
): Dispatch[] {
  const k = model.kernels, t = model.config.text, W = model.weights.layers[l], { act: a, rows } = args;
  const gateUp = [W.wGate, W.wUp];
  const mlp = fuses(model, rows, gateUp)
    ? k.swigluTexture.bind(set, { x: a.h, gate: gateUp[0], up: gateUp[1], out: a.act, rows })
    : [
      ...k.matmul.bind(set, { x: a.h, weight: W.wGate, out: a.gate, rows }),
      ...k.matmul.bind(set, { x: a.h, weight: W.wUp, out: a.up, rows }),
      ...k.swiglu.bind(set, { gate: a.gate, up: a.up, out: a.act, count: rows * t.intermediateSize }),
    ];
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
    ...mlp,
    ...k.matmul.bind(set, { x: a.act, weight: W.wDown, out: a.x, rows, accumulate: true }),
  ];
}

/**
 * Final RMSNorm and lm_head: logits[i] for rows first .. first + rows - 1 of x.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet } from "../device/gpu.ts";
 * import { addInPlace, linear, rmsNorm, rope, swiglu } from "../core/cpu_ops.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { describeWeights, type WeightSpec } from "../core/weights.ts";
 * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
 * import { allocLayerActivations, bindHead } from "./gpu_layers.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const backend = await createGpuBackend(checkpoint, { weightDtype: "f32" }) as GpuBackend;
 * const model = backend.model;
 * const t = model.config.text, specs = describeWeights(model.config), W = specs.layers[0];
 * const w = (spec: WeightSpec) => readCheckpointTensor(checkpoint, spec.name);
 * const set = new BufferSet(model.gpu);
 * const act = allocLayerActivations(set, t, { rows: 2, label: "example" });
 * const x = new Float32Array(2 * t.hiddenSize).map((_, i) => Math.sin(i)); // [2, C]
 * model.gpu.device.queue.writeBuffer(act.x, 0, x);
 * const close = async (buffer: GPUBuffer, want: Float32Array) => {
 *   const got = new Float32Array(await model.gpu.read(buffer, 0, want.length * 4));
 *   got.forEach((value, i) => assert.ok(Math.abs(value - want[i]) < 1e-4, `${i}: ${value} vs ${want[i]}`));
 * };
 * const logits = set.storage(t.vocabSize * 4, "logits");
 * model.gpu.submit(bindHead(model, set, { x: act.x, h: act.h, logits, first: 1, rows: 1 })); // row 1 only
 * // The CPU twin: final RMSNorm, then lm_head.
 * const h = rmsNorm(x.subarray(t.hiddenSize), await w(specs.norm), t.rmsNormEps);
 * await close(logits, linear(h, await w(specs.lmHead ?? specs.embed), { rows: 1 }));
 * set.destroy();
 * backend.dispose();
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

/**
 * Whether `rows` rows through `weights` take the fused texture kernels: the model fuses, the rows
 * are few enough for the texture matvec, and every weight is a float matrix in one texture.
 */
function fuses(model: GpuModel, rows: number, weights: GpuMatrix[]): weights is WeightTensor[] {
  return model.fused && rows <= MATVEC_TEXTURE_MAX_ROWS &&
    weights.every((weight) => !("type" in weight) && inOneTexture(weight));
}
