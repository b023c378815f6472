/**
 * The CPU backend: the whole model in plain TypeScript (f32). It is the reference the GPU backend
 * is tested against and the fallback where no GPU exists. One forward pass reads top to bottom:
 * embed rows → per layer (prune at the policy's layer, attention over the layer's cache, MLP) →
 * final norm → lm_head on the last row → sample.
 * @module
 */
import type { Backend, BackendSession, ImageFeatures, PassResult, SessionInput } from "../engine/backend.ts";
import type { ModelConfig, TextConfig } from "../core/config.ts";
import type { LayerRows } from "../core/cost.ts";
import {
  addInPlace,
  attention,
  attentionProbsMean,
  gatherRows,
  linear,
  logSoftmaxAt,
  rmsNorm,
  rope,
  swiglu,
} from "../core/cpu_ops.ts";
import { encodeImageCpu } from "./cpu_vision.ts";
import type { PruneSignals, RowKind } from "../core/policy.ts";
import {
  type TextPredictor,
  textPredictorLogits,
  type VisionPredictor,
  visionScores,
} from "../core/predictors.ts";
import { sampleToken } from "../core/sampling.ts";
import { KvLedger } from "../core/sparse_kv.ts";
import { contextRows, fedTokensKept, keepRows, type RowMeta } from "../core/sequence.ts";

/** Weights of the CPU backend by canonical name (f32). */
export type CpuWeights = Map<string, Float32Array>;

/** Image features held in CPU memory: [rows, C]. */
class CpuImageFeatures implements ImageFeatures {
  readonly gpuBytes = 0;
  constructor(readonly rows: number, readonly data: Float32Array) {}
  dispose(): void {}
}

/** Rows flowing through the decoder in one pass. x [M, C]; the rest [M]. */
interface Rows extends RowMeta {
  x: Float32Array;
}

/**
 * One layer's cache: K and V rows [rows, kvHeads·D], grown by doubling, and the original position
 * of every row held (the session's ledger is written from these, so the two cannot disagree).
 */
class LayerCache {
  keys: Float32Array;
  values: Float32Array;
  rows = 0;
  readonly positions: number[] = [];
  paperRows = 0;
  constructor(readonly width: number) {
    this.keys = new Float32Array(width * 16);
    this.values = new Float32Array(width * 16);
  }
  append(k: Float32Array, v: Float32Array, positions: number[]): void {
    const rows = positions.length;
    const need = (this.rows + rows) * this.width;
    if (need > this.keys.length) {
      const size = Math.max(need, this.keys.length * 2);
      const grow = (a: Float32Array) => {
        const b = new Float32Array(size);
        b.set(a.subarray(0, this.rows * this.width));
        return b;
      };
      this.keys = grow(this.keys);
      this.values = grow(this.values);
    }
    this.keys.set(k, this.rows * this.width);
    this.values.set(v, this.rows * this.width);
    this.rows += rows;
    this.positions.push(...positions);
  }
  /** Drops the last row (a refused token): nothing reads it again. */
  dropLast(): void {
    this.rows -= 1;
    this.positions.pop();
  }
}

/** The CPU backend of a loaded model. Create with {@link createCpuBackend}. */
class CpuBackend implements Backend {
  readonly kind = "cpu" as const;
  readonly readbacks = 0;
  readonly batchedSteps = 0;
  constructor(
    readonly config: ModelConfig,
    readonly weights: CpuWeights,
    readonly predictors: { vision: VisionPredictor | null; text: TextPredictor | null },
  ) {}

  w = (name: string): Float32Array => {
    const t = this.weights.get(name);
    if (!t) throw new Error(`internal: weight ${name} not loaded`);
    return t;
  };

  encodeImages(pixels: Float32Array[]): Promise<ImageFeatures> {
    const n = this.config.vision!.tokensPerImage, c = this.config.text.hiddenSize;
    const data = new Float32Array(pixels.length * n * c);
    pixels.forEach((p, i) => data.set(encodeImageCpu(p, this.config, this.w), i * n * c));
    return Promise.resolve(new CpuImageFeatures(pixels.length * n, data));
  }

  openSession(input: SessionInput): BackendSession {
    return new CpuSession(this, input);
  }

  dispose(): void {
    this.weights.clear();
  }
}

/**
 * Builds the CPU backend from f32 weights by canonical name.
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
  weights: CpuWeights,
  predictors: { vision: VisionPredictor | null; text: TextPredictor | null },
): Backend {
  return new CpuBackend(config, weights, predictors);
}

class CpuSession implements BackendSession {
  readonly ledger: KvLedger;
  readonly passes: { phase: "prefill" | "decode"; layers: LayerRows[] }[] = [];
  #caches: LayerCache[] = [];
  #last = -1;
  #step = 0;
  /** Tokens fed back so far in KV mode. */
  #decoded = 0;
  #text: TextConfig;

  constructor(readonly backend: CpuBackend, readonly input: SessionInput) {
    this.#text = backend.config.text;
    const t = this.#text;
    this.ledger = new KvLedger(t.numLayers, 2 * t.numKvHeads * t.headDim * 4);
  }

  #freshCaches(): LayerCache[] {
    const width = this.#text.numKvHeads * this.#text.headDim;
    return Array.from({ length: this.#text.numLayers }, () => new LayerCache(width));
  }

  /** Prompt rows (+ generated tokens as output rows) embedded. */
  #embedRows(generated: number[]): Rows {
    const { rows } = this.input;
    const c = this.#text.hiddenSize;
    const m = rows.ids.length + generated.length;
    const x = new Float32Array(m * c);
    const embed = this.backend.w("embed");
    const image = this.input.images as CpuImageFeatures | null;
    for (let i = 0; i < rows.ids.length; i++) {
      const src = rows.kinds[i] === "image"
        ? image!.data.subarray(rows.imageRow[i] * c, (rows.imageRow[i] + 1) * c)
        : embed.subarray(rows.ids[i] * c, (rows.ids[i] + 1) * c);
      x.set(src, i * c);
    }
    generated.forEach((id, j) => x.set(embed.subarray(id * c, (id + 1) * c), (rows.ids.length + j) * c));
    return { x, ...contextRows(rows, generated.length) };
  }

  /** Runs all layers over `rows` with `caches`; prunes at the plan's layer when `prune`. */
  #forward(
    rows: Rows,
    caches: LayerCache[],
    options: { prune: boolean; admitted?: boolean[] },
  ): {
    rows: Rows;
    layers: LayerRows[];
    visualKept: number[] | null;
    outputKept: number[] | null;
  } {
    const t = this.#text, plan = this.input.plan;
    const layers: LayerRows[] = [];
    let visualKept: number[] | null = null, outputKept: number[] | null = null;
    let lastRowAttention: Float32Array | undefined;
    let admit = true; // decided at the admission layer, applies to every layer from there on
    for (let l = 0; l < t.numLayers; l++) {
      if (options.prune && l === plan.pruneLayer) {
        const signals = this.#signals(rows, lastRowAttention);
        const keep = plan.selectRows(rows.kinds, signals);
        const kept = keepRows(rows, keep);
        rows = { x: gatherRows(rows.x, t.hiddenSize, keep), ...kept };
        visualKept = kept.visualKept;
        outputKept = kept.outputKept;
      }
      if (options.admitted && l === plan.admitLayer && plan.admission === "predictor") {
        admit = plan.admit(textPredictorLogits(this.backend.predictors.text!, rows.x));
        options.admitted.push(admit);
      }
      const cache = caches[l];
      const m = rows.kinds.length;
      const paper = rows.kinds.filter((k) => k !== "text").length;
      layers.push({
        newRows: m,
        cachedRows: cache.rows,
        paperNewRows: paper,
        paperCachedRows: cache.paperRows,
      });
      const wantProbs = options.prune && plan.needs.lastRowAttention && l === (plan.pruneLayer ?? 0) - 1;
      const probs = this.#layer(rows, cache, l, wantProbs);
      if (probs) lastRowAttention = probs;
      if (options.admitted && l >= plan.admitLayer && !admit) {
        cache.dropLast(); // refused: its K/V leaves the cache before anything else reads it
      } else {
        cache.paperRows += paper;
      }
    }
    return { rows, layers, visualKept, outputKept };
  }

  #signals(rows: Rows, lastRowAttention: Float32Array | undefined): PruneSignals {
    const plan = this.input.plan, c = this.#text.hiddenSize;
    const signals: PruneSignals = {};
    const pick = (kind: RowKind) => {
      const idx = rows.kinds.flatMap((k, i) => k === kind ? [i] : []);
      return { idx, x: gatherRows(rows.x, c, idx) };
    };
    if (plan.needs.visionScores) {
      const { idx, x } = pick("image");
      signals.visionScores = idx.length
        ? visionScores(this.backend.predictors.vision!, x)
        : new Float32Array(0);
    }
    if (plan.needs.textLogits) {
      const { idx, x } = pick("output");
      signals.textLogits = idx.length
        ? textPredictorLogits(this.backend.predictors.text!, x)
        : new Float32Array(0);
    }
    if (plan.needs.lastRowAttention) signals.lastRowAttention = lastRowAttention;
    return signals;
  }

  /** One decoder layer in place on rows.x; returns FastV probabilities of the last row when asked. */
  #layer(rows: Rows, cache: LayerCache, l: number, wantProbs: boolean): Float32Array | null {
    const t = this.#text, w = this.backend.w, p = `layers.${l}.`;
    const m = rows.kinds.length;
    const h = rmsNorm(rows.x, w(p + "attn_norm"), t.rmsNormEps);
    const q = linear(h, w(p + "wq"), { rows: m });
    const k = linear(h, w(p + "wk"), { rows: m });
    const v = linear(h, w(p + "wv"), { rows: m });
    rope(q, rows.positions, { heads: t.numHeads, headDim: t.headDim, theta: t.ropeTheta });
    rope(k, rows.positions, { heads: t.numKvHeads, headDim: t.headDim, theta: t.ropeTheta });
    const base = cache.rows;
    cache.append(k, v, rows.positions);
    const opts = { heads: t.numHeads, kvHeads: t.numKvHeads, headDim: t.headDim };
    const visible = Array.from({ length: m }, (_, i) => base + i + 1);
    const a = attention(q, cache.keys, cache.values, { ...opts, visible });
    let probs: Float32Array | null = null;
    if (wantProbs) {
      const qLast = q.subarray((m - 1) * t.numHeads * t.headDim, m * t.numHeads * t.headDim);
      probs = attentionProbsMean(qLast, cache.keys, { ...opts, visible: base + m }).subarray(base);
    }
    addInPlace(rows.x, linear(a, w(p + "wo"), { rows: m }));
    const h2 = rmsNorm(rows.x, w(p + "mlp_norm"), t.rmsNormEps);
    const gate = linear(h2, w(p + "w_gate"), { rows: m });
    const up = linear(h2, w(p + "w_up"), { rows: m });
    addInPlace(rows.x, linear(swiglu(gate, up), w(p + "w_down"), { rows: m }));
    return probs;
  }

  #lastLogits(rows: Rows): Float32Array {
    const t = this.#text, c = t.hiddenSize, m = rows.kinds.length;
    const last = rmsNorm(rows.x.subarray((m - 1) * c, m * c), this.backend.w("norm"), t.rmsNormEps);
    const head = this.backend.weights.get("lm_head") ?? this.backend.w("embed");
    return linear(last, head, { rows: 1 });
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

  prefill(options: { wantLogits: boolean }): Promise<PassResult> {
    this.#caches = this.#freshCaches();
    const out = this.#forward(this.#embedRows([]), this.#caches, { prune: true });
    this.passes.push({ phase: "prefill", layers: out.layers });
    this.#caches.forEach((cache, l) => this.ledger.append([l], cache.positions));
    const logits = this.#lastLogits(out.rows);
    this.#last = this.#sample(logits);
    return Promise.resolve({
      token: this.#last,
      visualKept: out.visualKept,
      logits: options.wantLogits ? logits : undefined,
    });
  }

  decode(steps: number, options: { forced?: number[] } = {}) {
    const tokens: number[] = [], admitted: boolean[] = [], logProbs: number[] = [];
    const t = this.#text;
    for (let s = 0; s < steps; s++) {
      const fed = options.forced ? options.forced[s] : this.#last;
      const pos = this.input.rows.ids.length + this.#decoded;
      const embed = this.backend.w("embed");
      const rows: Rows = {
        x: embed.slice(fed * t.hiddenSize, (fed + 1) * t.hiddenSize),
        positions: [pos],
        kinds: ["output"],
        tags: [this.#decoded],
      };
      const flags: boolean[] = [];
      const held = this.#caches.map((cache) => cache.rows);
      const out = this.#forward(rows, this.#caches, { prune: false, admitted: flags });
      this.passes.push({ phase: "decode", layers: out.layers });
      const admit = this.input.plan.admission === "all" ? true : flags[0];
      admitted.push(admit);
      // The ledger records what each layer's cache now holds, not what the decision implied.
      this.#caches.forEach((cache, l) => this.ledger.append([l], cache.positions.slice(held[l])));
      const logits = this.#lastLogits(out.rows);
      if (options.forced && s + 1 < options.forced.length) {
        logProbs.push(logSoftmaxAt(logits, options.forced[s + 1]));
      }
      this.#last = this.#sample(logits);
      tokens.push(this.#last);
      this.#decoded++;
      if (!options.forced && this.input.stop?.includes(this.#last)) break;
    }
    return Promise.resolve({ tokens, admitted, logProbs: options.forced ? logProbs : undefined });
  }

  recompute(generated: number[], options: { wantLogits?: boolean } = {}) {
    const caches = this.#freshCaches();
    const out = this.#forward(this.#embedRows(generated), caches, { prune: true });
    this.passes.push({ phase: generated.length === 0 ? "prefill" : "decode", layers: out.layers });
    const logits = this.#lastLogits(out.rows);
    const token = this.#sample(logits);
    const outputKept = fedTokensKept(out.outputKept, generated.length);
    return Promise.resolve({
      token,
      visualKept: out.visualKept,
      outputKept,
      logits: options.wantLogits ? logits : undefined,
    });
  }

  gpuPeakBytes(): number {
    return 0;
  }

  dispose(): void {
    this.#caches = [];
  }
}
