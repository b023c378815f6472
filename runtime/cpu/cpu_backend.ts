/**
 * The CPU backend: the whole model in plain TypeScript (f32; the KV cache f32, or rounded to f16
 * as the GPU stores it with `kvDtype: "f16"`, held in f32 arrays). It is the reference the GPU
 * backend is tested against and the fallback where no GPU exists. A pass reads top to bottom: embed rows →
 * the layers (runtime/engine/pass.ts walks them: pruning, admission, row accounting; this file
 * runs one layer: RMSNorm, q/k/v, RoPE, attention over the layer's cache, out-proj, SwiGLU MLP) →
 * final norm → lm_head on the last row → sample.
 * @module
 */
import type { Backend, BackendSession, ImageFeatures, PassResult, SessionInput } from "../engine/backend.ts";
import type { ModelConfig, TextConfig } from "../core/config.ts";
import {
  addInPlace,
  attention,
  attentionProbsMean,
  gatherRows,
  kvAppend,
  linear,
  logSoftmaxAt,
  rmsNorm,
  rope,
  swiglu,
} from "../core/cpu_ops.ts";
import { encodeImageCpu } from "./cpu_vision.ts";
import type { PruneSignals } from "../core/policy.ts";
import {
  type TextPredictor,
  textPredictorLogits,
  type VisionPredictor,
  visionScores,
} from "../core/predictors.ts";
import { sampleToken } from "../core/sampling.ts";
import { KV_DTYPES, type KvDtype, type KvLedger, kvRowBytes } from "../core/sparse_kv.ts";
import { contextRows, fedTokensKept, type RowMeta } from "../core/sequence.ts";
import {
  bindWeights,
  type BoundWeights,
  describeWeights,
  type ModelWeightSpecs,
  type WeightSpec,
} from "../core/weights.ts";
import { decodeStep, fullPass, KvRows, type PassRecord, type Phase, signalRows } from "../engine/pass.ts";

/** The CPU backend's weights: the model's weight description bound to f32 arrays. */
type CpuWeights = BoundWeights<ModelWeightSpecs, Float32Array, Float32Array>;

/** Image features held in CPU memory: [rows, C]. */
class CpuImageFeatures implements ImageFeatures {
  readonly gpuBytes = 0;
  constructor(readonly rows: number, readonly data: Float32Array) {}
  dispose(): void {}
}

/**
 * One layer's cache storage: K and V rows [capacity, kvHeads·D], grown by doubling; an f16 cache
 * holds the f16-rounded values (kernels/kv_append.ts's twin).
 */
class LayerCache {
  keys: Float32Array;
  values: Float32Array;
  constructor(readonly width: number, readonly kvDtype: KvDtype) {
    this.keys = new Float32Array(width * 16);
    this.values = new Float32Array(width * 16);
  }
  /** Writes `rows` K/V rows after the first `at` rows (the rows held), growing when full. */
  write(at: number, k: Float32Array, v: Float32Array, rows: number): void {
    const need = (at + rows) * this.width;
    if (need > this.keys.length) {
      const size = Math.max(need, this.keys.length * 2);
      const grow = (a: Float32Array) => {
        const b = new Float32Array(size);
        b.set(a.subarray(0, at * this.width));
        return b;
      };
      this.keys = grow(this.keys);
      this.values = grow(this.values);
    }
    const where = { base: at, cols: this.width, kvDtype: this.kvDtype };
    kvAppend(this.keys, k.subarray(0, rows * this.width), where);
    kvAppend(this.values, v.subarray(0, rows * this.width), where);
  }
}

/** The CPU backend of a loaded model. Create with {@link createCpuBackend}. */
class CpuBackend implements Backend {
  readonly kind = "cpu" as const;
  readonly readbacks = 0;
  readonly batchedSteps = 0;
  readonly kvDtypes = KV_DTYPES;
  #weights: CpuWeights | null;
  constructor(
    readonly config: ModelConfig,
    weights: CpuWeights,
    readonly predictors: { vision: VisionPredictor | null; text: TextPredictor | null },
    readonly kvDtype: KvDtype,
  ) {
    this.#weights = weights;
  }

  /** The weights, until {@link dispose} lets them go. */
  get weights(): CpuWeights {
    if (!this.#weights) throw new Error("internal: the weights of a disposed backend");
    return this.#weights;
  }

  encodeImages(pixels: Float32Array[]): Promise<ImageFeatures> {
    const n = this.config.vision!.tokensPerImage, c = this.config.text.hiddenSize;
    const data = new Float32Array(pixels.length * n * c);
    const tower = { config: this.config, vision: this.weights.vision!, projector: this.weights.projector! };
    pixels.forEach((p, i) => data.set(encodeImageCpu(p, tower), i * n * c));
    return Promise.resolve(new CpuImageFeatures(pixels.length * n, data));
  }

  openSession(input: SessionInput): BackendSession {
    return new CpuSession(this, input);
  }

  dispose(): void {
    this.#weights = null;
  }
}

/**
 * Builds the CPU backend from f32 weights by canonical name (runtime/core/weights.ts); sessions
 * keep their KV cache in `options.kvDtype` unless they choose (default "f32").
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createCpuBackend } from "./cpu_backend.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { buildPromptRows } from "../core/sequence.ts";
 * import { densePolicy } from "../core/policies.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const { config } = checkpoint, { numLayers, vocabSize, maxPositions } = config.text;
 * const weights = new Map<string, Float32Array>();
 * for (const name of checkpoint.tensors.keys()) weights.set(name, await readCheckpointTensor(checkpoint, name));
 * const backend = createCpuBackend(config, weights, { vision: null, text: null });
 * const input = {
 *   rows: buildPromptRows([1, 5, 9], { tokensPerImage: 0, images: 0, vocabSize, maxPositions }),
 *   images: null,
 *   plan: densePolicy().plan({ numLayers, sparse: null, hasVisionPredictor: false, hasTextPredictor: false }),
 *   sampling: { temperature: 0, topP: 1, seed: 0 },
 *   maxNewTokens: 2,
 *   kvCache: true,
 * };
 * const withCache = backend.openSession(input);
 * const { token, logits } = await withCache.prefill({ wantLogits: true });
 * assert.equal(token, logits!.indexOf(Math.max(...logits!))); // greedy: the largest logit
 * assert.deepEqual(withCache.ledger.rowsPerLayer(), new Array(numLayers).fill(3)); // the prompt's rows, cached
 * const withoutCache = backend.openSession({ ...input, kvCache: false });
 * assert.equal((await withoutCache.recompute([])).token, token); // recomputing agrees with the cache
 * withCache.dispose();
 * withoutCache.dispose();
 * backend.dispose();
 * ```
 */
export function createCpuBackend(
  config: ModelConfig,
  weights: Map<string, Float32Array>,
  predictors: { vision: VisionPredictor | null; text: TextPredictor | null },
  options: { kvDtype?: KvDtype } = {},
): Backend {
  const get = (spec: WeightSpec) => {
    const tensor = weights.get(spec.name);
    if (!tensor) throw new Error(`internal: weight ${spec.name} not loaded`);
    return tensor;
  };
  return new CpuBackend(
    config,
    bindWeights(describeWeights(config), { matrix: get, vector: get }),
    predictors,
    options.kvDtype ?? "f32",
  );
}

/** The residual stream of one pass: x [M, C], one row per row of the pass. */
interface Stream {
  x: Float32Array;
  /** FastV: the attention the last row pays every row, kept by the layer before the prune layer. */
  lastRowAttention?: Float32Array;
}

class CpuSession implements BackendSession {
  readonly book: KvRows;
  #caches: LayerCache[] = [];
  #last = -1;
  #step = 0;
  /** Tokens fed back so far in KV mode. */
  #decoded = 0;
  #text: TextConfig;
  readonly #kvDtype: KvDtype;

  constructor(readonly backend: CpuBackend, readonly input: SessionInput) {
    const t = backend.config.text;
    this.#text = t;
    this.#kvDtype = input.kvDtype ?? backend.kvDtype;
    this.book = new KvRows(t.numLayers, kvRowBytes(t, this.#kvDtype));
  }

  get ledger(): KvLedger {
    return this.book.ledger;
  }

  get passes(): PassRecord[] {
    return this.book.passes;
  }

  prefill(options: { wantLogits: boolean }): Promise<PassResult> {
    return this.#run([], { phase: "prefill", ledger: true, wantLogits: options.wantLogits }).then((out) => {
      this.#last = out.token;
      return { token: out.token, visualKept: out.visualKept, logits: out.logits };
    });
  }

  async recompute(generated: number[], options: { wantLogits?: boolean } = {}) {
    const phase = generated.length === 0 ? "prefill" : "decode";
    const out = await this.#run(generated, { phase, ledger: false, wantLogits: options.wantLogits ?? false });
    const outputKept = fedTokensKept(out.outputKept, generated.length);
    return { token: out.token, visualKept: out.visualKept, outputKept, logits: out.logits };
  }

  decode(steps: number, options: { forced?: number[] } = {}) {
    const tokens: number[] = [], admitted: boolean[] = [], logProbs: number[] = [];
    const forced = options.forced;
    for (let s = 0; s < steps; s++) {
      const fed = forced ? forced[s] : this.#last;
      const { admit, logits } = this.#decodeToken(fed);
      admitted.push(admit);
      if (forced && s + 1 < forced.length) logProbs.push(logSoftmaxAt(logits, forced[s + 1]));
      this.#last = this.#sample(logits);
      tokens.push(this.#last);
      this.#decoded++;
      if (!forced && this.input.stop?.includes(this.#last)) break;
    }
    return Promise.resolve({ tokens, admitted, logProbs: forced ? logProbs : undefined });
  }

  /** A full pass over the prompt and `generated` with empty caches, then the next token. */
  async #run(generated: number[], options: { phase: Phase; ledger: boolean; wantLogits: boolean }) {
    const t = this.#text, plan = this.input.plan;
    this.#caches = this.#freshCaches();
    const stream: Stream = { x: this.#embedRows(generated) };
    const out = await fullPass(this.book, plan, contextRows(this.input.rows, generated.length), {
      signals: (rows) => this.#signals(stream, rows),
      keep: (keep) => (stream.x = gatherRows(stream.x, t.hiddenSize, keep)),
      layer: (l, rows, { lastRowAttention }) => {
        const probs = this.#layer(stream.x, rows, l, lastRowAttention);
        if (probs) stream.lastRowAttention = probs;
      },
    }, options);
    const logits = this.#lastLogits(stream.x);
    return {
      token: this.#sample(logits),
      visualKept: out.visualKept,
      outputKept: out.outputKept,
      logits: options.wantLogits ? logits : undefined,
    };
  }

  /** One decode step: the fed token through every layer (admission at the plan's layer), its logits. */
  #decodeToken(fed: number): { admit: boolean; logits: Float32Array } {
    const c = this.#text.hiddenSize, plan = this.input.plan;
    const x = this.backend.weights.embed.slice(fed * c, (fed + 1) * c);
    const position = this.input.rows.ids.length + this.#decoded;
    const admit = decodeStep(this.book, plan, { position, tag: this.#decoded }, {
      admit: () => plan.admit(textPredictorLogits(this.backend.predictors.text!, x)),
      layer: (l, rows) => this.#layer(x, rows, l, false),
    });
    return { admit, logits: this.#lastLogits(x) };
  }

  #freshCaches(): LayerCache[] {
    const width = this.#text.numKvHeads * this.#text.headDim;
    return Array.from({ length: this.#text.numLayers }, () => new LayerCache(width, this.#kvDtype));
  }

  /** Prompt rows (+ generated tokens as output rows) embedded: x [M, C]. */
  #embedRows(generated: number[]): Float32Array {
    const { rows } = this.input;
    const c = this.#text.hiddenSize;
    const m = rows.ids.length + generated.length;
    const x = new Float32Array(m * c);
    const embed = this.backend.weights.embed;
    const image = this.input.images as CpuImageFeatures | null;
    for (let i = 0; i < rows.ids.length; i++) {
      const src = rows.kinds[i] === "image"
        ? image!.data.subarray(rows.imageRow[i] * c, (rows.imageRow[i] + 1) * c)
        : embed.subarray(rows.ids[i] * c, (rows.ids[i] + 1) * c);
      x.set(src, i * c);
    }
    generated.forEach((id, j) => x.set(embed.subarray(id * c, (id + 1) * c), (rows.ids.length + j) * c));
    return x;
  }

  /** The signals the plan needs, from the hidden states of the rows entering the prune layer. */
  #signals(stream: Stream, rows: RowMeta): PruneSignals {
    const plan = this.input.plan, c = this.#text.hiddenSize, predictors = this.backend.predictors;
    const { rows: at, signals } = signalRows(plan.needs, rows.kinds);
    if (at.images.length) {
      signals.visionScores = visionScores(predictors.vision!, gatherRows(stream.x, c, at.images));
    }
    if (at.outputs.length) {
      signals.textLogits = textPredictorLogits(predictors.text!, gatherRows(stream.x, c, at.outputs));
    }
    if (plan.needs.lastRowAttention) signals.lastRowAttention = stream.lastRowAttention;
    return signals;
  }

  /**
   * Decoder layer l in place on x [M, C]: its K/V written after the rows the layer holds; returns
   * the attention the last row pays every row (mean over heads) when asked.
   */
  #layer(x: Float32Array, rows: RowMeta, l: number, wantProbs: boolean): Float32Array | null {
    const t = this.#text, W = this.backend.weights.layers[l], cache = this.#caches[l];
    const m = rows.kinds.length, held = this.book.rows[l];
    const h = rmsNorm(x, W.attnNorm, t.rmsNormEps);
    const q = linear(h, W.wq, { rows: m });
    const k = linear(h, W.wk, { rows: m });
    const v = linear(h, W.wv, { rows: m });
    rope(q, rows.positions, { heads: t.numHeads, headDim: t.headDim, theta: t.ropeTheta });
    rope(k, rows.positions, { heads: t.numKvHeads, headDim: t.headDim, theta: t.ropeTheta });
    cache.write(held, k, v, m);
    const opts = { heads: t.numHeads, kvHeads: t.numKvHeads, headDim: t.headDim };
    const visible = Array.from({ length: m }, (_, i) => held + i + 1);
    const a = attention(q, cache.keys, cache.values, { ...opts, visible });
    let probs: Float32Array | null = null;
    if (wantProbs) {
      const qLast = q.subarray((m - 1) * t.numHeads * t.headDim, m * t.numHeads * t.headDim);
      probs = attentionProbsMean(qLast, cache.keys, { ...opts, visible: held + m }).subarray(held);
    }
    addInPlace(x, linear(a, W.wo, { rows: m }));
    const h2 = rmsNorm(x, W.mlpNorm, t.rmsNormEps);
    const gate = linear(h2, W.wGate, { rows: m });
    const up = linear(h2, W.wUp, { rows: m });
    addInPlace(x, linear(swiglu(gate, up), W.wDown, { rows: m }));
    return probs;
  }

  /** Final norm and lm_head on the last row of x [M, C]: logits [V]. */
  #lastLogits(x: Float32Array): Float32Array {
    const t = this.#text, c = t.hiddenSize, m = x.length / c, W = this.backend.weights;
    const last = rmsNorm(x.subarray((m - 1) * c, m * c), W.norm, t.rmsNormEps);
    return linear(last, W.lmHead ?? W.embed, { rows: 1 });
  }

  #sample(logits: Float32Array): number {
    const s = this.input.sampling;
    return sampleToken(logits, {
      temperature: s.temperature,
      topP: s.topP,
      seed: s.seed,
      step: this.#step++,
    });
  }

  gpuPeakBytes(): number {
    return 0;
  }

  dispose(): void {
    this.#caches = [];
  }
}
