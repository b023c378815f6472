/**
 * One request on the WebGPU backend: full passes (prefill, no-cache recomputes), the on-GPU decode
 * loop, and this request's share of batched decode steps. A full pass is walked by
 * runtime/engine/pass.ts (pruning, row accounting); this file supplies its GPU primitives, records
 * the whole pass into one command encoder, and reads back once at its end (plus once at the prune
 * layer when a signal is not known yet). Decode steps chain on the GPU through the state buffer
 * (the device's own copy of the rows each layer holds, advanced by the same rule as the book) and
 * are read back in batches (shared with concurrent sessions, see Gpu.submitAndRead).
 *
 * Buffers (f32 unless noted; M = rows of the pass, C hidden, Q = heads·D, K = kvHeads·D, I inter.):
 * x/x2 [M, C] residual stream (x2 its pruned copy), h [M, C], q [M, Q], k/v [M, K], attn [M, Q],
 * gate/up/act [M, I], positions/positions2 u32 [M], keep u32 [M], logits [V], kv cache per layer
 * K/V [capacity_l, K] in the session's kvDtype (f32, or f16 packed in pairs: kernels/kv_cache.ts),
 * state u32 [4 + layers] (kernels/decode_state.ts), tokens u32 [maxNew + 2], flags u32 [maxNew + 2].
 * @module
 */
import type { BackendSession, PassResult, SessionInput } from "../engine/backend.ts";
import type { TextConfig } from "../core/config.ts";
import { logSoftmaxAt } from "../core/cpu_ops.ts";
import { BufferSet, type Dispatch, type ReadRange, writeBuffer } from "../device/gpu.ts";
import {
  allocLayerActivations,
  bindHead,
  bindLayerInput,
  bindLayerOutput,
  type LayerActivations,
} from "./gpu_layers.ts";
import type { GpuModel } from "./gpu_model.ts";
import { bindTextAdmission, bindTextLogits, bindVisionScores } from "./gpu_predictors.ts";
import type { GpuImageFeatures } from "./gpu_vision.ts";
import type { PruneSignals, RowKind } from "../core/policy.ts";
import { type KvDtype, kvElementBytes, type KvLedger, kvRowBytes } from "../core/sparse_kv.ts";
import { contextRows, fedTokensKept, type RowMeta } from "../core/sequence.ts";
import {
  decodeStep,
  fullPass,
  KvRows,
  type PassRecord,
  type Phase,
  type SignalRows,
  signalRows,
} from "../engine/pass.ts";
import { STATE_COUNTS } from "../../kernels/decode_state.ts";

/** Results of decode steps: tokens sampled, admission of each fed token, last logits if asked. */
export interface StepResults {
  tokens: number[];
  admitted: boolean[];
  logits?: Float32Array;
}

/** Runs the decode steps of concurrent sessions of one model together (runtime/webgpu/gpu_batch.ts). */
export interface DecodeQueue {
  decode(session: GpuSession, steps: number): Promise<{ tokens: number[]; admitted: boolean[] }>;
  /** A KV-mode session opened: it will probably decode soon (the queue may wait for it briefly). */
  open(session: GpuSession): void;
  /** The session is gone: the queue no longer waits for it. */
  close(session: GpuSession): void;
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

/** A full pass in the making: the current residual stream and positions, and the dispatches so far. */
interface PassStream {
  x: GPUBuffer;
  positions: GPUBuffer;
  /** Where the rows kept at the prune layer go. */
  xAlt: GPUBuffer;
  positionsAlt: GPUBuffer;
  /** Recorded, not yet submitted. */
  pending: Dispatch[];
}

/** The state of one request on the GPU. */
export class GpuSession implements BackendSession {
  /** Rows each layer holds (the device's counts follow it), the ledger and every pass's rows. */
  readonly book: KvRows;
  readonly buffers: BufferSet;
  readonly #text: TextConfig;
  /** Element type of this session's KV cache. */
  readonly #kvDtype: KvDtype;
  readonly #act: Activations;
  /** Decode state u32 [4 + layers]; tokens and flags u32 [maxNew + 2]. */
  readonly #state: GPUBuffer;
  readonly #tokens: GPUBuffer;
  readonly #flags: GPUBuffer;
  #keys: GPUBuffer[] = [];
  #values: GPUBuffer[] = [];
  /** Rows each layer's cache can hold now (grown per layer, so refused tokens save memory). */
  #capacity: number[];
  #decodeDispatches: Dispatch[] | null = null;
  #decodeBuffers: BufferSet | null = null;
  #batchParts: BatchParts | null = null;
  #batchBuffers: BufferSet | null = null;
  #decoded = 0;
  /** No-cache passes: vision scores of the image rows (fixed by the prompt). */
  #visionScores: Float32Array | null = null;
  /** No-cache passes: text-predictor logits [2 per output row] known so far. */
  #outputLogits: number[] = [];
  /** This pass computes the last output row's logits into this buffer (read back with the token). */
  #lastOutputLogits: GPUBuffer | null = null;

  constructor(readonly model: GpuModel, readonly input: SessionInput, readonly queue: DecodeQueue) {
    const t = model.config.text;
    this.#text = t;
    this.#kvDtype = input.kvDtype ?? "f32";
    if (input.kvCache) queue.open(this);
    this.buffers = new BufferSet(model.gpu);
    this.book = new KvRows(t.numLayers, kvRowBytes(t, this.#kvDtype));
    // Decode steps run one row at a time: only no-cache recomputes need room for the whole context.
    const m = input.rows.ids.length + (input.kvCache ? 0 : input.maxNewTokens) + 1;
    const b = this.buffers, f = (n: number, label: string) => b.storage(n * 4, label);
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
    this.#capacity = new Array(t.numLayers).fill(0);
  }

  get ledger(): KvLedger {
    return this.book.ledger;
  }

  get passes(): PassRecord[] {
    return this.book.passes;
  }

  async prefill(options: { wantLogits: boolean }): Promise<PassResult> {
    const rows = this.#embed([]);
    const out = await this.#pass(rows, {
      step: 0,
      wantLogits: options.wantLogits,
      phase: "prefill",
      ledger: true,
    });
    this.#writeState({ step: 1, token: out.token, position: this.input.rows.ids.length });
    return { token: out.token, visualKept: out.visualKept, logits: out.logits };
  }

  async recompute(generated: number[], options: { wantLogits?: boolean } = {}) {
    const rows = this.#embed(generated);
    const out = await this.#pass(rows, {
      step: generated.length,
      wantLogits: options.wantLogits ?? false,
      phase: generated.length === 0 ? "prefill" : "decode",
      ledger: false,
    });
    const outputKept = fedTokensKept(out.outputKept, generated.length);
    return { token: out.token, visualKept: out.visualKept, outputKept, logits: out.logits };
  }

  async decode(steps: number, options: { forced?: number[] } = {}) {
    const forced = options.forced;
    // Concurrent sessions of this model (generateBatch) decode together, one row each.
    if (!forced) return await this.queue.decode(this, steps);
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
    const gpu = this.model.gpu;
    const ranges = this.beginSteps(steps, options);
    const step = this.#decodeStep();
    const data = await gpu.submitAndRead((enc) => {
      for (let s = 0; s < steps; s++) gpu.encode(enc, step);
    }, ranges);
    return this.endSteps(steps, data, options);
  }

  /**
   * Before `steps` decode steps: grows the caches so they fit, and returns the ranges to read back
   * afterwards (tokens, admission flags, and the last logits when asked).
   */
  beginSteps(steps: number, options: { withLogits: boolean }): ReadRange[] {
    const t = this.#text;
    this.#ensureCapacity(this.book.rows.map((n) => n + steps + 1), this.book.rows);
    const first = this.#decoded + 1;
    const ranges = [
      { buffer: this.#tokens, offset: first * 4, size: steps * 4 },
      { buffer: this.#flags, offset: first * 4, size: steps * 4 },
    ];
    if (options.withLogits) ranges.push({ buffer: this.#act.logits, offset: 0, size: t.vocabSize * 4 });
    return ranges;
  }

  /**
   * After `steps` decode steps: books each step from the admission flags read back (the GPU took
   * the same decisions on its own copy of the counts), from the data of {@link beginSteps}.
   */
  endSteps(steps: number, data: ArrayBuffer[], options: { stopEarly: boolean }): StepResults {
    const plan = this.input.plan;
    const [tokenBytes, flagBytes, logitBytes] = data;
    const tokens = [...new Uint32Array(tokenBytes)];
    const admitted = Array.from(new Uint32Array(flagBytes), (f) => plan.admission === "all" || f === 1);
    const promptLen = this.input.rows.ids.length;
    // Steps after a stop id ran on the GPU but belong to no result: they are not counted.
    const stopAt = options.stopEarly ? tokens.findIndex((id) => this.input.stop?.includes(id)) : -1;
    const used = stopAt < 0 ? steps : stopAt + 1;
    for (let s = 0; s < steps; s++) {
      if (s >= used) {
        this.book.holdUncounted(plan, admitted[s]);
        continue;
      }
      const tag = this.#decoded + s;
      decodeStep(this.book, plan, { position: promptLen + tag, tag }, {
        admit: () => admitted[s],
        layer: () => {}, // ran on the GPU
      });
    }
    this.#decoded += steps;
    return {
      tokens: tokens.slice(0, used),
      admitted: admitted.slice(0, used),
      logits: logitBytes ? new Float32Array(logitBytes) : undefined,
    };
  }

  /**
   * This session's share of a batched decode step (runtime/webgpu/gpu_batch.ts), bound to its own
   * buffers: it reads its row of q/k/v (and of x, at its admission layer) copied into `act`, and
   * leaves its attention output in `act.attn` and its logits row to sample from in `act.logits`.
   * Rebuilt after the caches grow (call {@link beginSteps} first).
   */
  batchParts(): BatchParts {
    if (this.#batchParts) return this.#batchParts;
    this.#batchBuffers?.destroy();
    const set = new BufferSet(this.model.gpu, { parent: this.buffers });
    this.#batchBuffers = set;
    const plan = this.input.plan;
    this.#batchParts = {
      act: this.#act,
      state: this.#state,
      admitLayer: plan.admitLayer,
      admit: plan.admission === "predictor" ? this.#admission(set) : [],
      attention: Array.from({ length: this.#text.numLayers }, (_, l) => this.#attention(set, l, 1)),
      tail: this.#sampleAndAdvance(set),
    };
    return this.#batchParts;
  }

  gpuPeakBytes(): number {
    return this.buffers.peakBytes;
  }

  dispose(): void {
    this.queue.close(this);
    this.#decodeBuffers?.destroy();
    this.#batchBuffers?.destroy();
    this.buffers.destroy();
  }

  // ---- Full passes -------------------------------------------------------------------------------

  /** Embeds prompt rows (+ generated tokens) into x; returns what each row is. */
  #embed(generated: number[]): RowMeta {
    const { rows } = this.input;
    const gpu = this.model.gpu, a = this.#act, k = this.model.kernels;
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
        k.embedding.bind(set, { ids: a.ids, table: this.model.weights.embed, out: a.x, rows: m }),
      );
      this.#copyImageRows(enc);
      gpu.device.queue.submit([enc.finish()]);
    } finally {
      set.destroy();
    }
    return contextRows(rows, generated.length);
  }

  /** Copies the image features over the image rows of x, one copy per run of consecutive rows. */
  #copyImageRows(enc: GPUCommandEncoder): void {
    const { rows } = this.input, c = this.#text.hiddenSize, promptLen = rows.ids.length;
    const image = this.input.images as GpuImageFeatures | null;
    for (let i = 0; i < promptLen; i++) {
      if (rows.kinds[i] !== "image") continue;
      let j = i;
      while (
        j + 1 < promptLen && rows.kinds[j + 1] === "image" && rows.imageRow[j + 1] === rows.imageRow[j] + 1
      ) j++;
      enc.copyBufferToBuffer(
        image!.buffer,
        rows.imageRow[i] * c * 4,
        this.#act.x,
        i * c * 4,
        (j - i + 1) * c * 4,
      );
      i = j;
    }
  }

  /**
   * One full pass over the rows embedded in x: the layers (pruned at the plan's layer), the head,
   * sampling at `step`, one readback of the token (and logits when asked).
   */
  async #pass(
    rows: RowMeta,
    options: { step: number; wantLogits: boolean; phase: Phase; ledger: boolean },
  ): Promise<PassResult & { outputKept: number[] | null }> {
    const set = new BufferSet(this.model.gpu, { parent: this.buffers });
    try {
      const stream = this.#beginPass(rows, options.step);
      const out = await fullPass(this.book, this.input.plan, rows, {
        signals: (entering) => this.#signals(set, stream, entering.kinds),
        keep: (keep) => this.#keep(set, stream, keep),
        layer: (l, layerRows, { lastRowAttention }) =>
          stream.pending.push(...this.#passLayer(set, stream, l, layerRows.kinds.length, lastRowAttention)),
      }, options);
      stream.pending.push(...this.#head(set, stream.x, out.rows.kinds.length - 1), ...this.#sample(set));
      const read = await this.#submitPass(stream.pending, options);
      this.#writeState({ counts: this.book.rows });
      return { ...read, visualKept: out.visualKept, outputKept: out.outputKept };
    } finally {
      set.destroy();
    }
  }

  /** Sizes the caches of the layers before the prune layer, clears the counts, uploads positions. */
  #beginPass(rows: RowMeta, step: number): PassStream {
    const a = this.#act, empty = this.book.rows.map(() => 0);
    // Layers from the prune layer on only ever hold the kept rows: they are sized after the choice.
    const pruneAt = this.input.plan.pruneLayer ?? this.#text.numLayers;
    this.#ensureCapacity(empty.map((_, l) => l < pruneAt ? rows.kinds.length : 0), empty);
    this.#writeState({ step, counts: empty });
    writeBuffer(this.model.gpu, a.positions, 0, Uint32Array.from(rows.positions));
    return { x: a.x, positions: a.positions, xAlt: a.x2, positionsAlt: a.positions2, pending: [] };
  }

  /** Decoder layer l over the pass's `rows` rows; FastV's last-row attention into probs when asked. */
  #passLayer(
    set: BufferSet,
    stream: PassStream,
    l: number,
    rows: number,
    lastRowAttention: boolean,
  ): Dispatch[] {
    const t = this.#text;
    const dispatches = this.#layer(set, l, {
      x: stream.x,
      rows,
      positions: stream.positions,
      positionsOffset: 0,
    });
    if (!lastRowAttention) return dispatches;
    return [
      ...dispatches,
      ...this.model.kernels.attention.bindProbsMean(set, {
        q: this.#act.q,
        row: rows - 1,
        keys: this.#keys[l],
        kvDtype: this.#kvDtype,
        out: this.#act.probs,
        counts: this.#state,
        countIndex: STATE_COUNTS + l,
        heads: t.numHeads,
        kvHeads: t.numKvHeads,
        headDim: t.headDim,
        causal: true,
      }),
    ];
  }

  /** At the prune layer: sizes the later layers' caches for the kept rows and gathers x and positions. */
  #keep(set: BufferSet, stream: PassStream, keep: number[]): void {
    const k = this.model.kernels, a = this.#act, pruneAt = this.input.plan.pruneLayer!;
    this.#ensureCapacity(this.book.rows.map((_, l) => l >= pruneAt ? keep.length : 0), this.book.rows);
    writeBuffer(this.model.gpu, a.keep, 0, Uint32Array.from(keep));
    const rows = keep.length, cols = this.#text.hiddenSize;
    stream.pending.push(
      ...k.gatherRows.bind(set, { x: stream.x, indices: a.keep, out: stream.xAlt, rows, cols }),
    );
    stream.pending.push(
      ...k.gatherRows.bind(set, {
        x: stream.positions,
        indices: a.keep,
        out: stream.positionsAlt,
        rows,
        cols: 1,
      }),
    );
    [stream.x, stream.xAlt] = [stream.xAlt, stream.x];
    [stream.positions, stream.positionsAlt] = [stream.positionsAlt, stream.positions];
  }

  /** Submits the pass and reads back the sampled token, the logits when asked, the last output row's predictor logits. */
  async #submitPass(
    pending: Dispatch[],
    options: { step: number; wantLogits: boolean },
  ): Promise<{ token: number; logits?: Float32Array }> {
    const gpu = this.model.gpu, vocab = this.#text.vocabSize;
    const ranges = [{ buffer: this.#tokens, offset: options.step * 4, size: 4 }];
    if (options.wantLogits) ranges.push({ buffer: this.#act.logits, offset: 0, size: vocab * 4 });
    const lastLogits = this.#lastOutputLogits;
    if (lastLogits) ranges.push({ buffer: lastLogits, offset: 0, size: 8 });
    const data = await gpu.submitAndRead((enc) => gpu.encode(enc, pending), ranges);
    if (lastLogits) this.#outputLogits.push(...new Float32Array(data.at(-1)!));
    this.#lastOutputLogits = null;
    return {
      token: new Uint32Array(data[0])[0],
      logits: options.wantLogits ? new Float32Array(data[1]) : undefined,
    };
  }

  /**
   * The signals the plan needs at its prune layer. In no-cache passes most are already known:
   * image rows and every output row but the last depend only on their prefix, so their scores
   * equal the previous passes' (layers below the prune layer see every row). Then nothing is read
   * back mid-pass (see {@link #knownSignals}). Otherwise (first pass, FastV) the pass so far and
   * the signal kernels are submitted and read back here (see {@link #readSignals}).
   */
  async #signals(set: BufferSet, stream: PassStream, kinds: readonly RowKind[]): Promise<PruneSignals> {
    const { rows, signals } = signalRows(this.input.plan.needs, kinds);
    const visionKnown = rows.images.length === 0 || this.#visionScores?.length === rows.images.length;
    const textKnown = rows.outputs.length === 0 || this.#outputLogits.length >= 2 * (rows.outputs.length - 1);
    if (!this.input.plan.needs.lastRowAttention && visionKnown && textKnown) {
      return this.#knownSignals(set, stream, rows, signals);
    }
    return await this.#readSignals(set, stream, { rows, signals, count: kinds.length });
  }

  /**
   * Signals from earlier passes. The last output row's logits (ignored now: the last row is always
   * kept) are computed in this pass and read back with its token.
   */
  #knownSignals(set: BufferSet, stream: PassStream, rows: SignalRows, signals: PruneSignals): PruneSignals {
    const k = this.model.kernels, a = this.#act, outputs = rows.outputs;
    if (rows.images.length > 0) signals.visionScores = this.#visionScores!;
    if (outputs.length === 0) return signals;
    const logits = new Float32Array(2 * outputs.length); // the last pair stays 0: ignored
    logits.set(this.#outputLogits.slice(0, 2 * (outputs.length - 1)));
    signals.textLogits = logits;
    if (this.#outputLogits.length < 2 * outputs.length) {
      const last = set.upload(new Uint32Array([outputs.at(-1)!]), "last output row");
      const out = set.storage(8, "last output logits");
      const cols = this.#text.hiddenSize;
      stream.pending.push(
        ...k.gatherRows.bind(set, { x: stream.x, indices: last, out: a.attn, rows: 1, cols }),
      );
      stream.pending.push(
        ...bindTextLogits(this.model.predictors.text!, set, { x: a.attn, rows: 1, logitsOut: out }),
      );
      this.#lastOutputLogits = out;
    }
    return signals;
  }

  /** Submits the pass so far with the signal kernels, and reads the signals back. */
  async #readSignals(
    set: BufferSet,
    stream: PassStream,
    needed: { rows: SignalRows; signals: PruneSignals; count: number },
  ): Promise<PruneSignals> {
    const gpu = this.model.gpu, k = this.model.kernels, a = this.#act, P = this.model.predictors;
    const { rows: { images, outputs }, signals } = needed, cols = this.#text.hiddenSize, x = stream.x;
    const d = stream.pending.splice(0);
    const ranges: ReadRange[] = [];
    const want: (keyof PruneSignals)[] = [];
    if (images.length > 0) {
      const indices = set.upload(Uint32Array.from(images), "image rows");
      d.push(...k.gatherRows.bind(set, { x, indices, out: a.h, rows: images.length, cols }));
      d.push(...bindVisionScores(P.vision!, set, { x: a.h, rows: images.length, scoresOut: a.scores }));
      ranges.push({ buffer: a.scores, offset: 0, size: images.length * 4 });
      want.push("visionScores");
    }
    if (outputs.length > 0) {
      const indices = set.upload(Uint32Array.from(outputs), "output rows");
      d.push(...k.gatherRows.bind(set, { x, indices, out: a.attn, rows: outputs.length, cols }));
      d.push(...bindTextLogits(P.text!, set, { x: a.attn, rows: outputs.length, logitsOut: a.textLogits }));
      ranges.push({ buffer: a.textLogits, offset: 0, size: outputs.length * 8 });
      want.push("textLogits");
    }
    if (this.input.plan.needs.lastRowAttention) {
      ranges.push({ buffer: a.probs, offset: 0, size: needed.count * 4 });
      want.push("lastRowAttention");
    }
    if (ranges.length === 0) {
      gpu.submit(d);
      return signals;
    }
    const data = await gpu.submitAndRead((enc) => gpu.encode(enc, d), ranges);
    want.forEach((key, i) => (signals[key] = new Float32Array(data[i])));
    if (signals.visionScores) this.#visionScores = signals.visionScores;
    if (outputs.length > 0) this.#outputLogits = Array.from(signals.textLogits!);
    return signals;
  }

  // ---- Decode steps ------------------------------------------------------------------------------

  /** Dispatches of one decode step, bound once per cache allocation. */
  #decodeStep(): Dispatch[] {
    if (this.#decodeDispatches) return this.#decodeDispatches;
    this.#decodeBuffers?.destroy();
    const set = new BufferSet(this.model.gpu, { parent: this.buffers });
    this.#decodeBuffers = set;
    const k = this.model.kernels, a = this.#act, plan = this.input.plan;
    const d: Dispatch[] = [];
    d.push(
      ...k.embedding.bind(set, {
        ids: this.#state,
        idsOffset: 1,
        table: this.model.weights.embed,
        out: a.x,
        rows: 1,
      }),
    );
    for (let l = 0; l < this.#text.numLayers; l++) {
      if (l === plan.admitLayer && plan.admission === "predictor") d.push(...this.#admission(set));
      d.push(...this.#layer(set, l, { x: a.x, rows: 1, positions: this.#state, positionsOffset: 2 }));
    }
    d.push(...this.#head(set, a.x, 0));
    d.push(...this.#sampleAndAdvance(set));
    this.#decodeDispatches = d;
    return d;
  }

  /** The fed token's admission flag from x [1, C], decided on the GPU. */
  #admission(set: BufferSet): Dispatch[] {
    return bindTextAdmission(this.model.predictors.text!, set, {
      x: this.#act.x,
      state: this.#state,
      flags: this.#flags,
    });
  }

  /** Sampling from logits into the state, then `advance` (the end of every decode step). */
  #sampleAndAdvance(set: BufferSet): Dispatch[] {
    const k = this.model.kernels, t = this.#text, plan = this.input.plan;
    return [
      ...this.#sample(set),
      ...k.advance.bind(set, {
        state: this.#state,
        flags: this.#flags,
        layers: t.numLayers,
        admitLayer: plan.admitLayer,
        admitAll: plan.admission === "all",
      }),
    ];
  }

  // ---- Shared binders and buffers ----------------------------------------------------------------

  /** Dispatches of decoder layer `l` over `rows` rows of `x` (positions from `positions[offset..]`). */
  #layer(
    set: BufferSet,
    l: number,
    args: { x: GPUBuffer; rows: number; positions: GPUBuffer; positionsOffset: number },
  ): Dispatch[] {
    const act = { ...this.#act, x: args.x };
    return [
      ...bindLayerInput(this.model, set, l, {
        act,
        rows: args.rows,
        positions: args.positions,
        positionsOffset: args.positionsOffset,
      }),
      ...this.#attention(set, l, args.rows),
      ...bindLayerOutput(this.model, set, l, { act, rows: args.rows }),
    ];
  }

  /** K/V of the pass's rows appended to layer l's cache, then attention of q over it into attn. */
  #attention(set: BufferSet, l: number, rows: number): Dispatch[] {
    const k = this.model.kernels, t = this.#text, a = this.#act;
    const kw = t.numKvHeads * t.headDim;
    const counts = this.#state, countIndex = STATE_COUNTS + l, kvDtype = this.#kvDtype;
    const append = { counts, countIndex, rows, cols: kw, kvDtype };
    return [
      ...k.kvAppend.bind(set, { src: a.k, cache: this.#keys[l], ...append }),
      ...k.kvAppend.bind(set, { src: a.v, cache: this.#values[l], ...append }),
      ...k.attention.bind(set, {
        q: a.q,
        keys: this.#keys[l],
        values: this.#values[l],
        kvDtype,
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
    return bindHead(this.model, set, { x, h: this.#act.h, logits: this.#act.logits, first: row, rows: 1 });
  }

  /** Sampling from logits into tokens[state[0]]. */
  #sample(set: BufferSet): Dispatch[] {
    return this.model.kernels.sampler.bind(set, {
      logits: this.#act.logits,
      vocab: this.#text.vocabSize,
      state: this.#state,
      tokensOut: this.#tokens,
      temperature: this.input.sampling.temperature,
      topP: this.input.sampling.topP,
    });
  }

  /** Makes layer l's cache hold at least `need[l]` rows, keeping the `held[l]` rows it has. */
  #ensureCapacity(need: number[], held: number[]): void {
    const t = this.#text, width = t.numKvHeads * t.headDim * kvElementBytes(this.#kvDtype);
    const grow = need.flatMap((rows, l) => rows > this.#capacity[l] ? [l] : []);
    if (grow.length === 0) return;
    const enc = this.model.gpu.device.createCommandEncoder();
    const old: GPUBuffer[] = [];
    for (const l of grow) {
      const capacity = Math.max(need[l], Math.ceil(this.#capacity[l] * 1.5), 16);
      for (const caches of [this.#keys, this.#values]) {
        const fresh = this.buffers.storage(capacity * width, `kv.${l}`);
        if (caches[l]) {
          if (held[l] > 0) enc.copyBufferToBuffer(caches[l], 0, fresh, 0, held[l] * width);
          old.push(caches[l]);
        }
        caches[l] = fresh;
      }
      this.#capacity[l] = capacity;
    }
    this.model.gpu.device.queue.submit([enc.finish()]);
    for (const buffer of old) this.buffers.release(buffer);
    this.#decodeDispatches = null; // bound to the old buffers
    this.#batchParts = null;
  }

  #writeState(values: { step?: number; token?: number; position?: number; counts?: number[] }): void {
    const gpu = this.model.gpu;
    const u = (n: number) => new Uint32Array([n]);
    if (values.step !== undefined) writeBuffer(gpu, this.#state, 0, u(values.step));
    if (values.token !== undefined) writeBuffer(gpu, this.#state, 4, u(values.token));
    if (values.position !== undefined) writeBuffer(gpu, this.#state, 8, u(values.position));
    writeBuffer(gpu, this.#state, 12, u(this.input.sampling.seed >>> 0));
    if (values.counts) writeBuffer(gpu, this.#state, STATE_COUNTS * 4, Uint32Array.from(values.counts));
  }
}
