/**
 * The method's forward orchestration, shared by both backends. A pass walks the decoder layers
 * top to bottom; this module decides, in one place, where rows are pruned (the plan's prune layer:
 * signals → `plan.selectRows` → kept rows), where a decoded token's admission is asked (the plan's
 * admission layer), what a refused token means (layers from the admission layer on do not hold
 * it), and books the rows every layer computed and holds ({@link KvRows}). A backend supplies only
 * its primitives: computing signals, keeping rows, running one layer ({@link FullPassSteps},
 * {@link DecodeSteps}).
 *
 * Rows of a pass (M of them, after pruning M' ≤ M): kinds/positions/tags [M] (runtime/core/sequence.ts).
 * @module
 */
import type { LayerRows } from "../core/cost.ts";
import type { PolicyPlan, PruneSignals, RowKind } from "../core/policy.ts";
import { keepRows, type RowMeta } from "../core/sequence.ts";
import { KvLedger } from "../core/sparse_kv.ts";

/** Which part of a request a pass belongs to. */
export type Phase = "prefill" | "decode";

/** The rows each layer handled in one forward pass (for exact FLOPs). */
export interface PassRecord {
  phase: Phase;
  layers: LayerRows[];
}

/**
 * The one book of a request's KV rows: how many rows each layer's cache holds (what attention
 * reads; a backend's cache storage follows it), how many of those the paper's formula counts
 * (image and generated-token rows), the ledger of held positions and bytes, and every pass's rows.
 */
export class KvRows {
  readonly ledger: KvLedger;
  readonly passes: PassRecord[] = [];
  /** Rows held per layer. */
  readonly rows: number[];
  /** Of `rows`, the image and generated-token rows. */
  readonly paperRows: number[];

  /**
   * @param layers decoder layers
   * @param bytesPerRow 2 × kvHeads × headDim × bytes per element
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { KvRows } from "./pass.ts";
   * const book = new KvRows(2, 64);
   * assert.deepEqual(book.rows, [0, 0]);
   * ```
   */
  constructor(layers: number, bytesPerRow: number) {
    this.ledger = new KvLedger(layers, bytesPerRow);
    this.rows = new Array(layers).fill(0);
    this.paperRows = new Array(layers).fill(0);
  }

  /** Decoder layers. */
  get layers(): number {
    return this.rows.length;
  }

  /** Every cache empty (a full pass starts over). */
  clear(): void {
    this.rows.fill(0);
    this.paperRows.fill(0);
  }

  /** Layer l computes `rows`: their count against what the layer holds. */
  enter(l: number, rows: RowMeta): LayerRows {
    return {
      newRows: rows.kinds.length,
      cachedRows: this.rows[l],
      paperNewRows: paperRows(rows.kinds),
      paperCachedRows: this.paperRows[l],
    };
  }

  /** Layer l holds the rows it computed. */
  hold(l: number, rows: RowMeta): void {
    this.rows[l] += rows.kinds.length;
    this.paperRows[l] += paperRows(rows.kinds);
  }

  /**
   * A decode step that ran but belongs to no result (after a stop id): its row occupies the
   * caches it entered, and is counted nowhere else.
   */
  holdUncounted(plan: PolicyPlan, admitted: boolean): void {
    for (let l = 0; l < this.layers; l++) if (l < plan.admitLayer || admitted) this.rows[l]++;
  }
}

/** Of `kinds`, the rows the paper's formula counts (image and generated-token rows). */
function paperRows(kinds: readonly RowKind[]): number {
  return kinds.filter((kind) => kind !== "text").length;
}

/** A backend's primitives for a full pass (prefill, or a no-cache recompute). */
export interface FullPassSteps {
  /** The signals `plan.needs` lists, for `rows` entering the prune layer. */
  signals(rows: RowMeta): PruneSignals | Promise<PruneSignals>;
  /** Keeps rows `keep` (ascending indices) of the residual stream and positions. */
  keep(keep: number[]): void;
  /**
   * Decoder layer l over `rows`, appending their K/V after the `book.rows[l]` rows held; with
   * `lastRowAttention`, also keeps the attention the last row pays every row (FastV's signal).
   */
  layer(l: number, rows: RowMeta, options: { lastRowAttention: boolean }): void;
}

/** What a full pass kept at its prune layer, and the positions each layer holds. */
export interface FullPassOutcome {
  /** The rows leaving the last layer. */
  rows: RowMeta;
  /** Image-token indices kept at the prune layer, or null when nothing was pruned. */
  visualKept: number[] | null;
  /** Generated-token indices kept at the prune layer, or null when nothing was pruned. */
  outputKept: number[] | null;
}

/**
 * One full pass over `rows` with every cache empty: at the plan's prune layer the plan chooses the
 * rows to keep from the signals; every layer's rows are booked, and the pass recorded. In KV mode
 * (`phase` "prefill" of a session that then decodes) the held positions enter the ledger.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fullPass, KvRows } from "./pass.ts";
 * import { densePolicy } from "../core/policies.ts";
 * const plan = densePolicy().plan({ numLayers: 2, sparse: null, hasVisionPredictor: false, hasTextPredictor: false });
 * const book = new KvRows(2, 8);
 * const rows = { kinds: ["text", "image"] as ("text" | "image")[], positions: [0, 1], tags: [-1, 0] };
 * const seen: number[] = [];
 * const out = await fullPass(book, plan, rows, {
 *   signals: () => ({}),
 *   keep: () => {},
 *   layer: (l) => seen.push(l),
 * }, { phase: "prefill", ledger: true });
 * assert.deepEqual(seen, [0, 1]);
 * assert.deepEqual(book.rows, [2, 2]);
 * assert.equal(out.visualKept, null);
 * ```
 */
export async function fullPass(
  book: KvRows,
  plan: PolicyPlan,
  rows: RowMeta,
  steps: FullPassSteps,
  options: { phase: Phase; ledger: boolean },
): Promise<FullPassOutcome> {
  book.clear();
  const layers: LayerRows[] = [];
  let visualKept: number[] | null = null, outputKept: number[] | null = null;
  for (let l = 0; l < book.layers; l++) {
    if (l === plan.pruneLayer) {
      const keep = plan.selectRows(rows.kinds, await steps.signals(rows));
      steps.keep(keep);
      const kept = keepRows(rows, keep);
      rows = { kinds: kept.kinds, positions: kept.positions, tags: kept.tags };
      visualKept = kept.visualKept;
      outputKept = kept.outputKept;
    }
    layers.push(book.enter(l, rows));
    if (options.ledger) book.ledger.append([l], rows.positions);
    const lastRowAttention = plan.needs.lastRowAttention && l === (plan.pruneLayer ?? 0) - 1;
    steps.layer(l, rows, { lastRowAttention });
    book.hold(l, rows);
  }
  book.passes.push({ phase: options.phase, layers });
  return { rows, visualKept, outputKept };
}

/** A backend's primitives for one decode step (one fed token, KV mode). */
export interface DecodeSteps {
  /** The fed token's admission, asked once at the plan's admission layer when it uses a predictor. */
  admit(): boolean;
  /** Decoder layer l over the fed token's row, appending its K/V after the `book.rows[l]` rows held. */
  layer(l: number, rows: RowMeta): void;
}

/**
 * One decode step: the fed token (generated token `tag`, at `position`) runs through every layer;
 * at the plan's admission layer its admission is decided, and layers from there on hold it only
 * when admitted (a refused row is overwritten by the next one). Returns the admission.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decodeStep, KvRows } from "./pass.ts";
 * import { dynamicPolicy } from "../core/policies.ts";
 * const plan = dynamicPolicy().plan({
 *   numLayers: 3,
 *   sparse: { sparseLayer: 1, visionKeepRate: 0.5, useVisionPredictor: false, useOutputTextPredictor: true },
 *   hasVisionPredictor: false,
 *   hasTextPredictor: true,
 * });
 * const book = new KvRows(3, 8);
 * const admitted = decodeStep(book, plan, { position: 5, tag: 0 }, { admit: () => false, layer: () => {} });
 * assert.equal(admitted, false);
 * assert.deepEqual(book.rows, [1, 0, 0]);
 * assert.deepEqual(book.ledger.rowsPerLayer(), [1, 0, 0]);
 * ```
 */
export function decodeStep(
  book: KvRows,
  plan: PolicyPlan,
  token: { position: number; tag: number },
  steps: DecodeSteps,
): boolean {
  const rows: RowMeta = { kinds: ["output"], positions: [token.position], tags: [token.tag] };
  const layers: LayerRows[] = [];
  let admitted = true; // decided at the admission layer, applies to every layer from there on
  for (let l = 0; l < book.layers; l++) {
    if (l === plan.admitLayer && plan.admission === "predictor") admitted = steps.admit();
    layers.push(book.enter(l, rows));
    steps.layer(l, rows);
    if (l < plan.admitLayer || admitted) book.hold(l, rows);
  }
  book.passes.push({ phase: "decode", layers });
  book.ledger.admit(token.position, { fromLayer: plan.admitLayer, admitted });
  return admitted;
}

/** The rows the plan's signals are computed on, for rows of `kinds` entering the prune layer. */
export interface SignalRows {
  /** Image rows, when vision scores are needed and there are any. */
  images: number[];
  /** Output rows, when text-predictor logits are needed and there are any. */
  outputs: number[];
}

/**
 * Which rows each needed signal is computed on (empty when not needed), and the signals object
 * with every needed signal present (empty arrays until computed).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { signalRows } from "./pass.ts";
 * const needs = { visionScores: true, textLogits: false, lastRowAttention: false };
 * const { rows, signals } = signalRows(needs, ["text", "image", "image", "output"]);
 * assert.deepEqual(rows, { images: [1, 2], outputs: [] });
 * assert.deepEqual(signals, { visionScores: new Float32Array(0) });
 * ```
 */
export function signalRows(
  needs: PolicyPlan["needs"],
  kinds: readonly RowKind[],
): { rows: SignalRows; signals: PruneSignals } {
  const take = (kind: RowKind) => kinds.flatMap((k, i) => k === kind ? [i] : []);
  const signals: PruneSignals = {};
  if (needs.visionScores) signals.visionScores = new Float32Array(0);
  if (needs.textLogits) signals.textLogits = new Float32Array(0);
  return {
    rows: {
      images: needs.visionScores ? take("image") : [],
      outputs: needs.textLogits ? take("output") : [],
    },
    signals,
  };
}
