/**
 * Batched decoding: requests of one model that decode at the same time (`generateBatch`) run
 * their steps together, one row per request, so every weight matrix is read once per step for
 * the whole batch. Each request keeps its own ragged KV cache, state, admission and sampling.
 *
 * One batched step, for B sessions (batch activations: x/h [B, C], q/attn [B, H·D], k/v
 * [B, KvH·D], gate/up/act [B, I], logits [B, V]; tokens and positions u32 [B]):
 *   copy each session's fed token and position in → embed B rows → per layer: (at a session's
 *   admission layer: copy its x row out, admission flag) → norm, q/k/v, RoPE on B rows → copy
 *   q/k/v rows out → each session's KV append + attention (in its own kvDtype) → copy attention rows in → out-proj and
 *   MLP on B rows → final norm and lm_head on B rows → copy logits rows out → each session samples
 *   and advances its own state.
 * A session alone runs its own single-row step (GpuSession.runSteps).
 *
 * One loop runs the group: each round takes in every call that arrived since the last round (a
 * request that starts while others decode joins them at the next round boundary), runs as many
 * steps as the shortest call asked for, and resolves the calls that are done. Sessions whose call
 * was just resolved usually ask again within an event-loop turn (the generation loop yields, then
 * asks for its next steps): the loop waits up to {@link REJOIN_MS} for them, so that running
 * requests stay in step instead of alternating alone. While a session opened after the loop started
 * has not asked yet (its prefill is on its way: each of its GPU round trips queues behind a round),
 * rounds are at most {@link FRESH_ROUND_STEPS} steps and the loop yields before each, so the
 * prefill finishes in a few short rounds and the request joins soon instead of after the others.
 * @module
 */
import { BufferSet, type Dispatch } from "../device/gpu.ts";
import { allocLayerActivations, bindHead, bindLayerInput, bindLayerOutput } from "./gpu_layers.ts";
import type { GpuModel } from "./gpu_model.ts";
import type { BatchParts, DecodeQueue, GpuSession, StepResults } from "./gpu_session.ts";

interface Waiting {
  session: GpuSession;
  remaining: number;
  tokens: number[];
  admitted: boolean[];
  done: PromiseWithResolvers<{ tokens: number[]; admitted: boolean[] }>;
}

/**
 * How long a decode call waits, at most, for the model's other open KV sessions to ask too (they are
 * usually a prefill or an event-loop turn behind). A session that never asks only delays the others
 * by this much.
 */
const GATHER_MS = 40;

/** How long the loop waits, at most, after a round for the sessions it resolved to ask again. */
const REJOIN_MS = 20;

/** Steps per round while a newly opened session prefills. */
const FRESH_ROUND_STEPS = 2;

/** Collects concurrent decode calls of one model and runs them as batched steps. */
export class DecodeBatcher implements DecodeQueue {
  readonly model: GpuModel;
  #waiting: Waiting[] = [];
  /** Open KV-mode sessions that are neither waiting here nor decoding in a running group. */
  #idle = new Set<GpuSession>();
  /** When the oldest waiting call arrived (ms), or null when none waits. */
  #since: number | null = null;
  /** Whether the group loop runs (new calls then join it at its next round). */
  #running = false;
  /** Open KV-mode sessions that have not asked for steps yet (their prefill runs). */
  #fresh = new Set<GpuSession>();
  /** Batched steps run so far (for tests and reports). */
  batchedSteps = 0;

  /**
   * A batcher for `model`'s sessions (each backend holds one).
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { DecodeBatcher } from "./gpu_batch.ts";
   * import { openCheckpoint } from "../io/checkpoint.ts";
   * import { buildPromptRows } from "../core/sequence.ts";
   * import { densePolicy } from "../core/policies.ts";
   * import { createGpuBackend, type GpuBackend } from "./gpu_backend.ts";
   * import type { GpuSession } from "./gpu_session.ts";
   * const backend = await createGpuBackend(await openCheckpoint("tests/fixtures/out/llama-f32"), {
   *   weightDtype: "f32",
   * }) as GpuBackend;
   * const { numLayers, vocabSize, maxPositions } = backend.model.config.text;
   * const open = (ids: number[]) => {
   *   const session = backend.openSession({
   *     rows: buildPromptRows(ids, { tokensPerImage: 0, images: 0, vocabSize, maxPositions }),
   *     images: null,
   *     plan: densePolicy().plan({ numLayers, sparse: null, hasVisionPredictor: false, hasTextPredictor: false }),
   *     sampling: { temperature: 0, topP: 1, seed: 0 },
   *     maxNewTokens: 8,
   *     kvCache: true,
   *   }) as GpuSession;
   *   return session.prefill({ wantLogits: false }).then(() => session);
   * };
   * const batcher = new DecodeBatcher(backend.model);
   * const [a, b] = await Promise.all([open([1, 5, 9]), open([1, 7])]);
   * const together = await Promise.all([batcher.decode(a, 4), batcher.decode(b, 4)]); // asked at once: batched
   * assert.equal(batcher.batchedSteps, 4);
   * const c = await open([1, 7]);
   * const alone = await batcher.decode(c, 4); // the second prompt on its own
   * assert.deepEqual(together[1].tokens, alone.tokens);
   * for (const session of [a, b, c]) session.dispose();
   * backend.dispose();
   * ```
   */
  constructor(model: GpuModel) {
    this.model = model;
  }

  /** Decodes `steps` tokens for `session`, together with every session that asks at the same time. */
  decode(session: GpuSession, steps: number): Promise<{ tokens: number[]; admitted: boolean[] }> {
    const done = Promise.withResolvers<{ tokens: number[]; admitted: boolean[] }>();
    this.#idle.delete(session);
    this.#fresh.delete(session);
    if (!this.#running && this.#since === null) {
      this.#since = performance.now();
      setTimeout(() => this.#gather(), 0);
    }
    this.#waiting.push({ session, remaining: steps, tokens: [], admitted: [], done });
    return done.promise;
  }

  /** Registers a KV-mode session that will probably decode soon. */
  open(session: GpuSession): void {
    this.#idle.add(session);
    this.#fresh.add(session);
  }

  /** Forgets a session (disposed). */
  close(session: GpuSession): void {
    this.#idle.delete(session);
    this.#fresh.delete(session);
  }

  /** Flushes once every open session asks, or after {@link GATHER_MS}. */
  #gather(): void {
    if (this.#idle.size > 0 && performance.now() - this.#since! < GATHER_MS) {
      setTimeout(() => this.#gather(), 1);
      return;
    }
    this.#since = null;
    this.#run();
  }

  /** The group loop: rounds of shared steps until no call is left (see the module comment). */
  async #run(): Promise<void> {
    this.#running = true;
    const group: Waiting[] = [];
    try {
      while (true) {
        group.push(...this.#waiting.splice(0));
        if (group.length === 0) break;
        let steps = Math.min(...group.map((w) => w.remaining));
        if (this.#fresh.size > 0) {
          steps = Math.min(steps, FRESH_ROUND_STEPS);
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
        let results: StepResults[];
        try {
          results = group.length === 1
            ? [await group[0].session.runSteps(steps, { withLogits: false, stopEarly: true })]
            : await this.#together(group.map((w) => w.session), steps);
        } catch (err) {
          for (const w of group.splice(0)) w.done.reject(err);
          continue;
        }
        group.forEach((w, i) => {
          w.tokens.push(...results[i].tokens);
          w.admitted.push(...results[i].admitted);
          // A request that sampled a stop id is finished, whatever it asked for.
          w.remaining = results[i].tokens.length < steps ? 0 : w.remaining - steps;
        });
        const resolved = new Set<GpuSession>();
        for (let i = group.length - 1; i >= 0; i--) {
          if (group[i].remaining > 0) continue;
          this.#idle.add(group[i].session); // until it asks again or is disposed
          resolved.add(group[i].session);
          group[i].done.resolve({ tokens: group[i].tokens, admitted: group[i].admitted });
          group.splice(i, 1);
        }
        await this.#awaitRejoin(resolved);
      }
    } finally {
      this.#running = false;
    }
  }

  /** Yields until every session in `resolved` asked again or closed, or {@link REJOIN_MS} passed. */
  async #awaitRejoin(resolved: Set<GpuSession>): Promise<void> {
    const start = performance.now();
    const pending = () => [...resolved].some((session) => this.#idle.has(session));
    while (pending() && performance.now() - start < REJOIN_MS) {
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  /** `steps` batched steps over `sessions`, read back once. */
  async #together(sessions: GpuSession[], steps: number): Promise<StepResults[]> {
    const gpu = this.model.gpu, set = new BufferSet(gpu);
    try {
      const ranges = sessions.map((s) => s.beginSteps(steps, { withLogits: false }));
      const parts = sessions.map((s) => s.batchParts());
      const step = this.#bindStep(set, parts);
      const data = await gpu.submitAndRead((enc) => {
        for (let s = 0; s < steps; s++) step(enc);
      }, ranges.flat());
      this.batchedSteps += steps;
      let at = 0;
      return sessions.map((session, i) => {
        const slice = data.slice(at, at + ranges[i].length);
        at += ranges[i].length;
        return session.endSteps(steps, slice, { stopEarly: true });
      });
    } finally {
      set.destroy();
    }
  }

  /** Binds one batched step; returns a function that encodes it. */
  #bindStep(set: BufferSet, parts: BatchParts[]): (enc: GPUCommandEncoder) => void {
    const model = this.model, gpu = model.gpu, t = model.config.text, k = model.kernels, B = parts.length;
    const qw = t.numHeads * t.headDim, kw = t.numKvHeads * t.headDim, c = t.hiddenSize;
    const act = allocLayerActivations(set, t, { rows: B, label: "batch" });
    const logits = set.storage(B * t.vocabSize * 4, "batch logits");
    const tokens = set.storage(B * 4, "batch tokens"), positions = set.storage(B * 4, "batch positions");
    const embed = k.embedding.bind(set, { ids: tokens, table: model.weights.embed, out: act.x, rows: B });
    const layers = model.weights.layers.map((_, l) => ({
      admitting: parts.flatMap((p, b) => p.admitLayer === l && p.admit.length > 0 ? [b] : []),
      input: bindLayerInput(model, set, l, { act, rows: B, positions, positionsOffset: 0 }),
      attention: parts.flatMap((p) => p.attention[l]),
      output: bindLayerOutput(model, set, l, { act, rows: B }),
    }));
    const head = bindHead(model, set, { x: act.x, h: act.h, logits, first: 0, rows: B });
    const tails: Dispatch[] = parts.flatMap((p) => p.tail);
    /** Copies row b of a [B, width] batch buffer to or from a session's row 0. */
    const rowCopy = (
      enc: GPUCommandEncoder,
      from: GPUBuffer,
      fromRow: number,
      to: GPUBuffer,
      toRow: number,
      width: number,
    ) => enc.copyBufferToBuffer(from, fromRow * width * 4, to, toRow * width * 4, width * 4);
    return (enc) => {
      parts.forEach((p, b) => {
        enc.copyBufferToBuffer(p.state, 4, tokens, b * 4, 4);
        enc.copyBufferToBuffer(p.state, 8, positions, b * 4, 4);
      });
      gpu.encode(enc, embed);
      for (const layer of layers) {
        if (layer.admitting.length > 0) {
          for (const b of layer.admitting) rowCopy(enc, act.x, b, parts[b].act.x, 0, c);
          gpu.encode(enc, layer.admitting.flatMap((b) => parts[b].admit));
        }
        gpu.encode(enc, layer.input);
        parts.forEach((p, b) => {
          rowCopy(enc, act.q, b, p.act.q, 0, qw);
          rowCopy(enc, act.k, b, p.act.k, 0, kw);
          rowCopy(enc, act.v, b, p.act.v, 0, kw);
        });
        gpu.encode(enc, layer.attention);
        parts.forEach((p, b) => rowCopy(enc, p.act.attn, 0, act.attn, b, qw));
        gpu.encode(enc, layer.output);
      }
      gpu.encode(enc, head);
      parts.forEach((p, b) => rowCopy(enc, logits, b, p.act.logits, 0, t.vocabSize));
      gpu.encode(enc, tails);
    };
  }
}
