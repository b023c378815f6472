/**
 * The sparsification policy contract: one interface covering the three decisions —
 * prefill row selection, per-token KV admission with cache, output-token selection without cache.
 * Pure TypeScript and GPU-free; both backends call these functions, so the rules live in one place.
 *
 * Rows are the sequence positions entering the decoder. Each row has a kind: "text" (prompt text,
 * never pruned), "image" (visual token), "output" (a generated token fed back in no-cache mode).
 * @module
 */

/** What one decoder input row holds. */
export type RowKind = "text" | "image" | "output";

/** Model facts a policy needs to plan. */
export interface PolicyModelInfo {
  /** Decoder layers. */
  numLayers: number;
  /** Dynamic-LLaVA sparse_config, or null when the checkpoint has none. */
  sparse: {
    sparseLayer: number;
    visionKeepRate: number;
    useVisionPredictor: boolean;
    useOutputTextPredictor: boolean;
  } | null;
  /** True when the checkpoint carries the image score predictor's weights. */
  hasVisionPredictor: boolean;
  /** True when the checkpoint carries the output text score predictor's weights. */
  hasTextPredictor: boolean;
}

/** Signals a policy may ask for at its prune layer; the backend computes only what `needs` lists. */
export interface PruneSignals {
  /** VisionPredictor scores log_softmax(·)[:,0], one per image row, in row order. */
  visionScores?: Float32Array;
  /** TextPredictor logits [n, 2] (row-major), one pair per "output" row, in row order. */
  textLogits?: Float32Array;
  /**
   * Attention the last row pays to every row in layer `pruneLayer - 1`, mean over heads, one per
   * row (FastV).
   */
  lastRowAttention?: Float32Array;
}

/** The decisions a policy takes for one model. Produced by {@link Policy.plan}. */
export interface PolicyPlan {
  /** Layer index at which rows are pruned (prefill and no-cache steps); null = never prune. */
  pruneLayer: number | null;
  /** Which signals the backend must compute at `pruneLayer` to call {@link PolicyPlan.selectRows}. */
  needs: { visionScores: boolean; textLogits: boolean; lastRowAttention: boolean };
  /**
   * Given the kinds of the rows entering `pruneLayer` and the signals, the indices of the rows to
   * keep, ascending. Text rows and the last row are always kept.
   */
  selectRows(kinds: readonly RowKind[], signals: PruneSignals): number[];
  /**
   * KV mode: how a decoded token is admitted to the cache of layers ≥ `admitLayer`.
   * "all": always; "predictor": TextPredictor logit0 > logit1 (decided on the GPU by the runtime
   * from this descriptor, and by {@link PolicyPlan.admit} on the CPU).
   */
  admission: "all" | "predictor";
  /**
   * First layer whose cache admission is decided (layers below always append). Plans that admit
   * every token set it to the model's layer count.
   */
  admitLayer: number;
  /** CPU form of the admission rule: `logits` = TextPredictor output [2]. */
  admit(logits: ArrayLike<number>): boolean;
}

/** A sparsification policy: validated against a model, then planned. */
export interface Policy {
  /** "dense", "dynamic", "fastv" or a user name. */
  readonly name: string;
  /** Checks the model can run this policy (throws PolicyError) and returns its plan. */
  plan(model: PolicyModelInfo): PolicyPlan;
}
