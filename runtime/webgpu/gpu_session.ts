/**
 * One request on the WebGPU backend: prefill, the on-GPU decode loop, no-cache recomputes.
 * Every pass is one command encoder; pruning reads predictor scores back once and calls the
 * pure-TS policy plan; decode steps chain on the GPU through the state buffer and are read back
 * in batches (shared with concurrent sessions, see Gpu.submitAndRead).
 *
 * Buffers (f32 unless noted; M = rows of the pass, C hidden, Q = heads·D, K = kvHeads·D, I inter.):
 * x [M, C] residual stream, h [M, C], q [M, Q], k/v [M, K], attn [M, Q], gate/up/act [M, I],
 * positions u32 [M], keep u32 [M], logits [V], kv cache per layer K/V [capacity_l, K],
 * state u32 [4 + layers] (kernels/decode_state.ts), tokens u32 [maxNew + 2], flags u32 [maxNew + 2].
 * @module
 */
import type { BackendSession, PassResult, SessionInput } from "../engine/backend.ts";
import type { TextConfig } from "../core/config.ts";
import type { LayerRows } from "../core/cost.ts";
import { logSoftmaxAt } from "../core/cpu_ops.ts";
import { BufferSet, type Dispatch, type ReadRange, writeBuffer } from "../device/gpu.ts";
import {
  allocLayerActivations,
  bindHead,
  bindLayerInput,
  bindLayerOutput,
  type LayerActivations,
} from "./gpu_layers.ts";
import type { GpuBackend } from "./gpu_backend.ts";
import { bindTextAdmission, bindTextLogits, bindVisionScores } from "./gpu_predictors.ts";
import type { GpuImageFeatures } from "./gpu_vision.ts";
import type { PruneSignals, RowKind } from "../core/policy.ts";
import { KvLedger } from "../core/sparse_kv.ts";
import { contextRows, fedTokensKept, keepRows, type RowMeta } from "../core/sequence.ts";
import { STATE_COUNTS } from "../../kernels/decode_state.ts";

/** Results of decode steps: tokens sampled, admission of each fed token, last logits if asked. */
export interface StepResults {
  tokens: number[];
  admitted: boolean[];
  logits?: Float32Array;
}

/** One session's share of a batched decode step; see {@link GpuSession.batchParts}. */
export interface BatchParts {
  /** The session's activations: batch rows are copied into q, k, v (and x) and out of attn, logits. */
  act: Activations;
  /** Decode state u32: [1] the fed token, [2] its position. */
  state: GPUBuffer;
  admitLayer: number;
  /** Admission flag from act.x (empty when every token is admitted). */
  admit: Dispatch[];
  /** Per layer: KV append and attention from act.q/k/v into act.attn. */
  attention: Dispatch[][];
  /** Sampling from act.logits and `advance`. */
  tail: Dispatch[];
}

/** Activation buffers of one request: a layer's, plus pruning, ids and logits. */
export interface Activations extends LayerActivations {
  x2: GPUBuffer;
  positions: GPUBuffer;
  positions2: GPUBuffer;
  keep: GPUBuffer;
  ids: GPUBuffer;
  probs: GPUBuffer;
  scores: GPUBuffer;
  textLogits: GPUBuffer;
  logits: GPUBuffer;
}

/** The state of one request on the GPU. */
export class GpuSession implements BackendSession {
  readonly ledger: KvLedger;
  readonly passes: { phase: "prefill" | "decode"; layers: LayerRows[] }[] = [];
  readonly buffers: BufferSet;
  readonly #text: TextConfig;
  readonly #act: Activations;
  /** Decode state u32 [4 + layers]; tokens and flags u32 [maxNew + 2]. */
  readonly #state: GPUBuffer;
  readonly #tokens: GPUBuffer;
  readonly #flags: GPUBuffer;
  #keys: GPUBuffer[] = [];
  #values: GPUBuffer[] = [];
  /** Rows each layer's cache can hold now (grown per layer, so refused tokens save memory). */
  #capacity: number[];
  /** Rows per layer as last read back. */
  #rows: number[];
  #paperRows: number[];
  #decodeDispatches: Dispatch[] | null = null;
  #decodeBuffers: BufferSet | null = null;
  #batchParts: BatchParts | null = null;
  #batchBuffers: BufferSet | null = null;
  #decoded = 0;
  #maxRows: number;
  /** No-cache passes: vision scores of the image rows (fixed by the prompt). */
  #visionScores: Float32Array | null = null;
  /** No-cache passes: text-predictor logits [2 per output row] known so far. */
  #outputLogits: number[] = [];
  /** This pass computes the last output row's logits into this buffer (read back with the token). */
  #lastOutputLogits: GPUBuffer | null = null;

  constructor(readonly backend: GpuBackend, readonly input: SessionInput) {
    const t = backend.config.text;
    this.#text = t;
    this.buffers = new BufferSet(backend.gpu);
    this.ledger = new KvLedger(t.numLayers, 2 * t.numKvHeads * t.headDim * 4);
    const promptLen = input.rows.ids.length;
    // Decode steps run one row at a time: only no-cache recomputes need room for the whole context.
    this.#maxRows = promptLen + (input.kvCache ? 0 : input.maxNewTokens) + 1;
    const m = this.#maxRows, b = this.buffers, f = (n: number, label: string) => b.storage(n * 4, label);
    try {
      this.#act = {
        ...allocLayerActivations(b, t, { rows: m, label: "request" }),
        x2: f(m * t.hiddenSize, "x2"),
        positions: f(m, "positions"),
        positions2: f(m, "positions2"),
        keep: f(m, "keep"),
        ids: f(m, "ids"),
        probs: f(m, "probs"),
        scores: f(m, "scores"),
        textLogits: f(m * 2, "textLogits"),
        logits: f(t.vocabSize, "logits"),
      };
      this.#state = b.storage((STATE_COUNTS + t.numLayers) * 4, "state");
      this.#tokens = b.storage((input.maxNewTokens + 2) * 4, "tokens");
      this.#flags = b.storage((input.maxNewTokens + 2) * 4, "flags");
    } catch (err) {
      this.buffers.destroy(); // a buffer over the device limits: free what was made
      throw err;
    }
    this.#rows = new Array(t.numLayers).fill(0);
    this.#capacity = new Array(t.numLayers).fill(0);
    this.#paperRows = new Array(t.numLayers).fill(0);
  }

  /** Makes layer l's cache hold at least `need[l]` rows, keeping the rows it has. */
  #ensureCapacity(need: number[]): void {
    const t = this.#text, width = t.numKvHeads * t.headDim * 4;
    const grow = need.flatMap((rows, l) => rows > this.#capacity[l] ? [l] : []);
    if (grow.length === 0) return;
    const enc = this.backend.gpu.device.createCommandEncoder();
    const old: GPUBuffer[] = [];
    for (const l of grow) {
      const capacity = Math.max(need[l], Math.ceil(this.#capacity[l] * 1.5), 16);
      for (const caches of [this.#keys, this.#values]) {
        const fresh = this.buffers.storage(capacity * width, `kv.${l}`);
        if (caches[l]) {
          if (this.#rows[l] > 0) enc.copyBufferToBuffer(caches[l], 0, fresh, 0, this.#rows[l] * width);
          old.push(caches[l]);
        }
        caches[l] = fresh;
      }
      this.#capacity[l] = capacity;
    }
    this.backend.gpu.device.queue.submit([enc.finish()]);
    for (const buffer of old) this.buffers.release(buffer);
    this.#decodeDispatches = null; // bound to the old buffers
    this.#batchParts = null;
  }

  #writeState(values: { step?: number; token?: number; position?: number; counts?: number[] }): void {
    const gpu = this.backend.gpu;
    const u = (n: number) => new Uint32Array([n]);
    if (values.step !== undefined) writeBuffer(gpu, this.#state, 0, u(values.step));
    if (values.token !== undefined) writeBuffer(gpu, this.#state, 4, u(values.token));
    if (values.position !== undefined) writeBuffer(gpu, this.#state, 8, u(values.position));
    writeBuffer(gpu, this.#state, 12, u(this.input.sampling.seed >>> 0));
    if (values.counts) writeBuffer(gpu, this.#state, STATE_COUNTS * 4, Uint32Array.from(values.counts));
  }

  /** Dispatches of decoder layer `l` over `rows` rows of `x` (positions from `positions[offset..]`). */
  #layer(
    set: BufferSet,
    l: number,
    args: { x: GPUBuffer; rows: number; positions: GPUBuffer; positionsOffset: number },
  ): Dispatch[] {
    const act = { ...this.#act, x: args.x };
    return [
      ...bindLayerInput(this.backend, set, l, {
        act,
        rows: args.rows,
        positions: args.positions,
        positionsOffset: args.positionsOffset,
      }),
      ...this.#attention(set, l, args.rows),
      ...bindLayerOutput(this.backend, set, l, { act, rows: args.rows }),
    ];
  }

  /** K/V of the pass's rows appended to layer l's cache, then attention of q over it into attn. */
  #attention(set: BufferSet, l: number, rows: number): Dispatch[] {
    const k = this.backend.kernels, t = this.#text, a = this.#act;
    const kw = t.numKvHeads * t.headDim;
    const counts = this.#state, countIndex = STATE_COUNTS + l;
    return [
      ...k.kvAppend.bind(set, { src: a.k, cache: this.#keys[l], counts, countIndex, rows, cols: kw }),
      ...k.kvAppend.bind(set, { src: a.v, cache: this.#values[l], counts, countIndex, rows, cols: kw }),
      ...k.attention.bind(set, {
        q: a.q,
        keys: this.#keys[l],
        values: this.#values[l],
        out: a.attn,
        counts,
        countIndex,
        rows,
        heads: t.numHeads,
        kvHeads: t.numKvHeads,
        headDim: t.headDim,
        causal: true,
      }),
    ];
  }

  /** Final norm of row `row` of x and lm_head into logits. */
  #head(set: BufferSet, x: GPUBuffer, row: number): Dispatch[] {
    return bindHead(this.backend, set, { x, h: this.#act.h, logits: this.#act.logits, first: row, rows: 1 });
  }

  /**
   * One full pass over `kinds.length` rows already embedded in x (prefill, or a no-cache step with
   * a fresh cache): layers, pruning at the plan's layer via a readback, head, sampling at `step`.
   */
  async #pass(
    rows: RowMeta,
    options: { step: number; wantLogits: boolean; phase: "prefill" | "decode" },
  ): Promise<PassResult & { outputKept: number[] | null; positionsPerLayer: number[][] }> {
    const gpu = this.backend.gpu, plan = this.input.plan, t = this.#text, a = this.#act;
    const set = new BufferSet(gpu, { parent: this.buffers });
    try {
      this.#rows.fill(0);
      this.#paperRows.fill(0);
      // Layers from the prune layer on only ever hold the kept rows: they are sized after the choice.
      const pruneAt = plan.pruneLayer ?? t.numLayers;
      this.#ensureCapacity(this.#rows.map((_, l) => l < pruneAt ? rows.kinds.length : 0));
      this.#writeState({ step: options.step, counts: this.#rows });
      writeBuffer(gpu, a.positions, 0, Uint32Array.from(rows.positions));
      let x = a.x, xAlt = a.x2, positions = a.positions, positionsAlt = a.positions2;
      let visualKept: number[] | null = null, outputKept: number[] | null = null;
      const layers: LayerRows[] = [];
      const positionsPerLayer: number[][] = [];
      const pending: Dispatch[] = [];
      for (let l = 0; l < t.numLayers; l++) {
        if (l === plan.pruneLayer) {
          const signals = await this.#signals(set, pending, x, rows.kinds);
          const keep = plan.selectRows(rows.kinds, signals);
          this.#ensureCapacity(this.#rows.map((_, l) => l >= pruneAt ? keep.length : 0));
          writeBuffer(gpu, a.keep, 0, Uint32Array.from(keep));
          const k = this.backend.kernels;
          pending.push(
            ...k.gatherRows.bind(set, {
              x,
              indices: a.keep,
              out: xAlt,
              rows: keep.length,
              cols: t.hiddenSize,
            }),
          );
          pending.push(
            ...k.gatherRows.bind(set, {
              x: positions,
              indices: a.keep,
              out: positionsAlt,
              rows: keep.length,
              cols: 1,
            }),
          );
          [x, xAlt] = [xAlt, x];
          [positions, positionsAlt] = [positionsAlt, positions];
          const kept = keepRows(rows, keep);
          rows = kept;
          visualKept = kept.visualKept;
          outputKept = kept.outputKept;
        }
        const m = rows.kinds.length, paper = rows.kinds.filter((kind) => kind !== "text").length;
        layers.push({ newRows: m, cachedRows: 0, paperNewRows: paper, paperCachedRows: 0 });
        positionsPerLayer.push(rows.positions);
        pending.push(...this.#layer(set, l, { x, rows: m, positions, positionsOffset: 0 }));
        if (plan.needs.lastRowAttention && l === (plan.pruneLayer ?? 0) - 1) {
          pending.push(...this.backend.kernels.attention.bindProbsMean(set, {
            q: a.q,
            row: m - 1,
            keys: this.#keys[l],
            out: a.probs,
            counts: this.#state,
            countIndex: STATE_COUNTS + l,
            heads: t.numHeads,
            kvHeads: t.numKvHeads,
            headDim: t.headDim,
            causal: true,
          }));
        }
        this.#rows[l] = m;
        this.#paperRows[l] = paper;
      }
      const m = rows.kinds.length;
      pending.push(...this.#head(set, x, m - 1));
      pending.push(...this.backend.kernels.sampler.bind(set, {
        logits: a.logits,
        vocab: t.vocabSize,
        state: this.#state,
        tokensOut: this.#tokens,
        temperature: this.input.sampling.temperature,
        topP: this.input.sampling.topP,
      }));
      const ranges = [{ buffer: this.#tokens, offset: options.step * 4, size: 4 }];
      if (options.wantLogits) ranges.push({ buffer: a.logits, offset: 0, size: t.vocabSize * 4 });
      const lastLogits = this.#lastOutputLogits;
      if (lastLogits) ranges.push({ buffer: lastLogits, offset: 0, size: 8 });
      const data = await gpu.submitAndRead((enc) => gpu.encode(enc, pending), ranges);
      const [tokenBytes] = data, logitBytes = options.wantLogits ? data[1] : undefined;
      if (lastLogits) this.#outputLogits.push(...new Float32Array(data.at(-1)!));
      this.#lastOutputLogits = null;
      this.passes.push({ phase: options.phase, layers });
      this.#writeState({ counts: this.#rows });
      return {
        token: new Uint32Array(tokenBytes)[0],
        visualKept,
        outputKept,
        logits: logitBytes ? new Float32Array(logitBytes) : undefined,
        positionsPerLayer,
      };
    } finally {
      set.destroy();
    }
  }

  /**
   * The signals the plan needs at its prune layer. In no-cache passes most are already known:
   * image rows and every output row but the last depend only on their prefix, so their scores
   * equal the previous passes' (layers below the prune layer see every row). Then nothing is read
   * back mid-pass: the last output row's logits (ignored now, the last row is always kept) are
   * computed in this pass and read back with its token. Otherwise (first pass, FastV) `pending`
   * and the signal kernels are submitted and read back here, and `pending` is emptied.
   */
  async #signals(set: BufferSet, pending: Dispatch[], x: GPUBuffer, kinds: RowKind[]): Promise<PruneSignals> {
    const plan = this.input.plan, a = this.#act, gpu = this.backend.gpu, c = this.#text.hiddenSize;
    const k = this.backend.kernels, P = this.backend.predictors;
    const take = (kind: RowKind) => kinds.flatMap((kk, i) => kk === kind ? [i] : []);
    const images = take("image"), outputs = take("output");
    const needVision = plan.needs.visionScores && images.length > 0;
    const needText = plan.needs.textLogits && outputs.length > 0;
    const signals: PruneSignals = {};
    if (plan.needs.visionScores) signals.visionScores = new Float32Array(0);
    if (plan.needs.textLogits) signals.textLogits = new Float32Array(0);
    const visionKnown = !needVision || this.#visionScores?.length === images.length;
    const textKnown = !needText || this.#outputLogits.length >= 2 * (outputs.length - 1);
    if (!plan.needs.lastRowAttention && visionKnown && textKnown) {
      if (needVision) signals.visionScores = this.#visionScores!;
      if (needText) {
        const logits = new Float32Array(2 * outputs.length); // the last pair stays 0: ignored
        logits.set(this.#outputLogits.slice(0, 2 * (outputs.length - 1)));
        signals.textLogits = logits;
        if (this.#outputLogits.length < 2 * outputs.length) {
          const last = set.upload(new Uint32Array([outputs.at(-1)!]), "last output row");
          const out = set.storage(8, "last output logits");
          pending.push(...k.gatherRows.bind(set, { x, indices: last, out: a.attn, rows: 1, cols: c }));
          pending.push(...bindTextLogits(P.text!, set, { x: a.attn, rows: 1, logitsOut: out }));
          this.#lastOutputLogits = out;
        }
      }
      return signals;
    }
    const d = pending.splice(0);
    const ranges: { buffer: GPUBuffer; offset: number; size: number }[] = [];
    const want: (keyof PruneSignals)[] = [];
    if (needVision) {
      const indices = set.upload(Uint32Array.from(images), "image rows");
      d.push(...k.gatherRows.bind(set, { x, indices, out: a.h, rows: images.length, cols: c }));
      d.push(...bindVisionScores(P.vision!, set, { x: a.h, rows: images.length, scoresOut: a.scores }));
      ranges.push({ buffer: a.scores, offset: 0, size: images.length * 4 });
      want.push("visionScores");
    }
    if (needText) {
      const indices = set.upload(Uint32Array.from(outputs), "output rows");
      d.push(...k.gatherRows.bind(set, { x, indices, out: a.attn, rows: outputs.length, cols: c }));
      d.push(...bindTextLogits(P.text!, set, { x: a.attn, rows: outputs.length, logitsOut: a.textLogits }));
      ranges.push({ buffer: a.textLogits, offset: 0, size: outputs.length * 8 });
      want.push("textLogits");
    }
    if (plan.needs.lastRowAttention) {
      ranges.push({ buffer: a.probs, offset: 0, size: kinds.length * 4 });
      want.push("lastRowAttention");
    }
    if (ranges.length === 0) {
      gpu.submit(d);
      return signals;
    }
    const data = await gpu.submitAndRead((enc) => gpu.encode(enc, d), ranges);
    want.forEach((key, i) => (signals[key] = new Float32Array(data[i])));
    if (signals.visionScores) this.#visionScores = signals.visionScores;
    if (needText) this.#outputLogits = Array.from(signals.textLogits!);
    return signals;
  }

  /** Embeds prompt rows (+ generated tokens) into x. */
  #embed(generated: number[]): RowMeta {
    const { rows } = this.input;
    const gpu = this.backend.gpu, a = this.#act, c = this.#text.hiddenSize, k = this.backend.kernels;
    const promptLen = rows.ids.length, m = promptLen + generated.length;
    const ids = new Uint32Array(m);
    for (let i = 0; i < promptLen; i++) ids[i] = Math.max(0, rows.ids[i]);
    generated.forEach((id, j) => (ids[promptLen + j] = id));
    writeBuffer(gpu, a.ids, 0, ids);
    const set = new BufferSet(gpu, { parent: this.buffers });
    try {
      const enc = gpu.device.createCommandEncoder();
      gpu.encode(
        enc,
        k.embedding.bind(set, { ids: a.ids, table: this.backend.matrix("embed"), out: a.x, rows: m }),
      );
      const image = this.input.images as GpuImageFeatures | null;
      for (let i = 0; i < promptLen; i++) {
        if (rows.kinds[i] !== "image") continue;
        let j = i;
        while (
          j + 1 < promptLen && rows.kinds[j + 1] === "image" && rows.imageRow[j + 1] === rows.imageRow[j] + 1
        ) j++;
        enc.copyBufferToBuffer(image!.buffer, rows.imageRow[i] * c * 4, a.x, i * c * 4, (j - i + 1) * c * 4);
        i = j;
      }
      gpu.device.queue.submit([enc.finish()]);
    } finally {
      set.destroy();
    }
    return contextRows(rows, generated.length);
  }

  async prefill(options: { wantLogits: boolean }): Promise<PassResult> {
    const rows = this.#embed([]);
    const out = await this.#pass(rows, { step: 0, wantLogits: options.wantLogits, phase: "prefill" });
    out.positionsPerLayer.forEach((positions, l) => this.ledger.append([l], positions));
    this.#writeState({ step: 1, token: out.token, position: this.input.rows.ids.length });
    return { token: out.token, visualKept: out.visualKept, logits: out.logits };
  }

  /** Dispatches of one decode step, bound once per cache allocation. */
  /** Sampling from logits into the state, then `advance` (the end of every decode step). */
  #sampleAndAdvance(set: BufferSet): Dispatch[] {
    const k = this.backend.kernels, t = this.#text, plan = this.input.plan;
    return [
      ...k.sampler.bind(set, {
        logits: this.#act.logits,
        vocab: t.vocabSize,
        state: this.#state,
        tokensOut: this.#tokens,
        temperature: this.input.sampling.temperature,
        topP: this.input.sampling.topP,
      }),
      ...k.advance.bind(set, {
        state: this.#state,
        flags: this.#flags,
        layers: t.numLayers,
        admitLayer: plan.admitLayer,
        admitAll: plan.admission === "all",
      }),
    ];
  }

  #decodeStep(): Dispatch[] {
    if (this.#decodeDispatches) return this.#decodeDispatches;
    this.#decodeBuffers?.destroy();
    const set = new BufferSet(this.backend.gpu, { parent: this.buffers });
    this.#decodeBuffers = set;
    const k = this.backend.kernels, a = this.#act, t = this.#text, plan = this.input.plan;
    const d: Dispatch[] = [];
    d.push(
      ...k.embedding.bind(set, {
        ids: this.#state,
        idsOffset: 1,
        table: this.backend.matrix("embed"),
        out: a.x,
        rows: 1,
      }),
    );
    for (let l = 0; l < t.numLayers; l++) {
      if (l === plan.admitLayer && plan.admission === "predictor") {
        d.push(
          ...bindTextAdmission(this.backend.predictors.text!, set, {
            x: a.x,
            state: this.#state,
            flags: this.#flags,
          }),
        );
      }
      d.push(...this.#layer(set, l, { x: a.x, rows: 1, positions: this.#state, positionsOffset: 2 }));
    }
    d.push(...this.#head(set, a.x, 0));
    d.push(...this.#sampleAndAdvance(set));
    this.#decodeDispatches = d;
    return d;
  }

  async decode(steps: number, options: { forced?: number[] } = {}) {
    const forced = options.forced;
    // Concurrent sessions of this model (generateBatch) decode together, one row each.
    if (!forced) return await this.backend.batcher.decode(this, steps);
    // Teacher forcing: one step per token, the fed token written into the state before each step.
    const tokens: number[] = [], admitted: boolean[] = [], logProbs: number[] = [];
    for (let s = 0; s < steps; s++) {
      this.#writeState({ token: forced[s] });
      const out = await this.runSteps(1, { withLogits: s + 1 < forced.length, stopEarly: false });
      tokens.push(...out.tokens);
      admitted.push(...out.admitted);
      if (out.logits) logProbs.push(logSoftmaxAt(out.logits, forced[s + 1]));
    }
    return { tokens, admitted, logProbs };
  }

  /** Runs `steps` decode steps of this session alone, then reads the results back once. */
  async runSteps(steps: number, options: { withLogits: boolean; stopEarly: boolean }): Promise<StepResults> {
    const gpu = this.backend.gpu;
    const ranges = this.beginSteps(steps, options);
    const step = this.#decodeStep();
    const data = await gpu.submitAndRead((enc) => {
      for (let s = 0; s < steps; s++) gpu.encode(enc, step);
    }, ranges);
    return this.endSteps(steps, data, options);
  }

  /**
   * Before `steps` decode steps: grows the caches so they fit, and returns the ranges to read back
   * afterwards (tokens, admission flags, state, and the last logits when asked).
   */
  beginSteps(steps: number, options: { withLogits: boolean }): ReadRange[] {
    const t = this.#text;
    this.#ensureCapacity(this.#rows.map((n) => n + steps + 1));
    const first = this.#decoded + 1;
    const ranges = [
      { buffer: this.#tokens, offset: first * 4, size: steps * 4 },
      { buffer: this.#flags, offset: first * 4, size: steps * 4 },
      { buffer: this.#state, offset: 0, size: (STATE_COUNTS + t.numLayers) * 4 },
    ];
    if (options.withLogits) ranges.push({ buffer: this.#act.logits, offset: 0, size: t.vocabSize * 4 });
    return ranges;
  }

  /** After `steps` decode steps: books the rows each layer gained from the data of {@link beginSteps}. */
  endSteps(steps: number, data: ArrayBuffer[], options: { stopEarly: boolean }): StepResults {
    const t = this.#text, plan = this.input.plan;
    const [tokenBytes, flagBytes, stateBytes, logitBytes] = data;
    const tokens = [...new Uint32Array(tokenBytes)];
    const admitted = Array.from(new Uint32Array(flagBytes), (f) => plan.admission === "all" || f === 1);
    const promptLen = this.input.rows.ids.length;
    // Steps after a stop id ran on the GPU but belong to no result: they are not counted.
    const stopAt = options.stopEarly ? tokens.findIndex((id) => this.input.stop?.includes(id)) : -1;
    const used = stopAt < 0 ? steps : stopAt + 1;
    for (let s = 0; s < steps; s++) {
      if (s >= used) {
        for (let l = 0; l < t.numLayers; l++) if (l < plan.admitLayer || admitted[s]) this.#rows[l]++;
        continue;
      }
      this.passes.push({
        phase: "decode",
        layers: this.#rows.map((cached, l) => ({
          newRows: 1,
          cachedRows: cached,
          paperNewRows: 1,
          paperCachedRows: this.#paperRows[l],
        })),
      });
      for (let l = 0; l < t.numLayers; l++) {
        if (l < plan.admitLayer || admitted[s]) {
          this.#rows[l]++;
          this.#paperRows[l]++;
        }
      }
      this.ledger.admit(promptLen + this.#decoded + s, { fromLayer: plan.admitLayer, admitted: admitted[s] });
    }
    const counts = Array.from(new Uint32Array(stateBytes).subarray(STATE_COUNTS));
    if (counts.some((n, l) => n !== this.#rows[l])) {
      throw new Error(`internal: GPU row counts ${counts} differ from the ledger ${this.#rows}`);
    }
    this.#decoded += steps;
    return {
      tokens: tokens.slice(0, used),
      admitted: admitted.slice(0, used),
      logits: logitBytes ? new Float32Array(logitBytes) : undefined,
    };
  }

  /**
   * This session's share of a batched decode step (runtime/gpu_batch.ts), bound to its own
   * buffers: it reads its row of q/k/v (and of x, at its admission layer) copied into `act`, and
   * leaves its attention output in `act.attn` and its logits row to sample from in `act.logits`.
   * Rebuilt after the caches grow (call {@link beginSteps} first).
   */
  batchParts(): BatchParts {
    if (this.#batchParts) return this.#batchParts;
    this.#batchBuffers?.destroy();
    const set = new BufferSet(this.backend.gpu, { parent: this.buffers });
    this.#batchBuffers = set;
    const plan = this.input.plan, a = this.#act;
    const admit = plan.admission === "predictor"
      ? bindTextAdmission(this.backend.predictors.text!, set, {
        x: a.x,
        state: this.#state,
        flags: this.#flags,
      })
      : [];
    this.#batchParts = {
      act: a,
      state: this.#state,
      admitLayer: plan.admitLayer,
      admit,
      attention: this.backend.layers.map((_, l) => this.#attention(set, l, 1)),
      tail: this.#sampleAndAdvance(set),
    };
    return this.#batchParts;
  }

  async recompute(generated: number[], options: { wantLogits?: boolean } = {}) {
    const rows = this.#embed(generated);
    const out = await this.#pass(rows, {
      step: generated.length,
      wantLogits: options.wantLogits ?? false,
      phase: generated.length === 0 ? "prefill" : "decode",
    });
    const outputKept = fedTokensKept(out.outputKept, generated.length);
    return { token: out.token, visualKept: out.visualKept, outputKept, logits: out.logits };
  }

  gpuPeakBytes(): number {
    return this.buffers.peakBytes;
  }

  dispose(): void {
    this.#decodeBuffers?.destroy();
    this.#batchBuffers?.destroy();
    this.buffers.destroy();
  }
}
