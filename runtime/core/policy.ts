/**
 * The sparsification policy contract: one interface covering the three decisions —
 * prefill row selection, per-token KV admission with cache, output-token selection without cache.
 * Pure TypeScript and GPU-free; both backends call these functions, so the rules live in one place.
 *
 * Rows are the sequence positions entering the decoder. Each row has a kind: "text" (prompt text,
 * never pruned), "image" (visual token), "output" (a generated token fed back in no-cache mode).
 * @module
 */
import { PolicyError } from "./errors.ts";

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

/**
 * Wraps a plan so that a policy's mistakes become {@link PolicyError}s instead of wrong results:
 * `pruneLayer` and `admitLayer` must be layers of the model, `admission` "all" or "predictor", and
 * every `selectRows` answer must be ascending, unique, in range, and keep every text row and the
 * last row. Both backends run the checked plan, so they refuse the same policies.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkedPlan, type PolicyPlan } from "./policy.ts";
 * import { PolicyError } from "./errors.ts";
 * const plan: PolicyPlan = {
 *   pruneLayer: 1, needs: { visionScores: false, textLogits: false, lastRowAttention: false },
 *   selectRows: () => [999, -1], admission: "all", admitLayer: 2, admit: () => true,
 * };
 * const checked = checkedPlan(plan, { numLayers: 2, name: "mine" });
 * assert.throws(() => checked.selectRows(["text", "image", "text"], {}), PolicyError);
 * ```
 */
export function checkedPlan(plan: PolicyPlan, model: { numLayers: number; name: string }): PolicyPlan {
  const where = `policy ${model.name}`;
  const fail = (why: string) => new PolicyError(`Cannot run the ${model.name} policy: ${why}`, where);
  if (typeof plan !== "object" || plan === null) throw fail("plan() returned no plan");
  const { pruneLayer, admitLayer, admission } = plan;
  if (
    pruneLayer !== null && !(Number.isInteger(pruneLayer) && pruneLayer >= 0 && pruneLayer < model.numLayers)
  ) {
    throw fail(`pruneLayer ${pruneLayer} is not a layer of this ${model.numLayers}-layer model`);
  }
  if (!(Number.isInteger(admitLayer) && admitLayer >= 0 && admitLayer <= model.numLayers)) {
    throw fail(`admitLayer ${admitLayer} is outside 0..${model.numLayers}`);
  }
  if (admission !== "all" && admission !== "predictor") {
    throw fail(`admission ${JSON.stringify(admission)} is unknown`);
  }
  if (typeof plan.selectRows !== "function" || typeof plan.admit !== "function") {
    throw fail("the plan lacks selectRows or admit");
  }
  return {
    ...plan,
    selectRows(kinds, signals) {
      const rows = plan.selectRows(kinds, signals);
      if (!Array.isArray(rows)) throw fail("selectRows did not return an array");
      let next = 0;
      for (const row of rows) {
        if (!Number.isInteger(row) || row < next || row >= kinds.length) {
          throw fail(
            `selectRows returned row ${row}; rows must be ascending, unique, in 0..${kinds.length - 1}`,
          );
        }
        for (let skipped = next; skipped < row; skipped++) {
          if (kinds[skipped] === "text") throw fail(`selectRows dropped text row ${skipped}`);
        }
        next = row + 1;
      }
      for (let skipped = next; skipped < kinds.length; skipped++) {
        if (kinds[skipped] === "text" || skipped === kinds.length - 1) {
          throw fail(`selectRows dropped ${kinds[skipped] === "text" ? "text " : "the last "}row ${skipped}`);
        }
      }
      return rows;
    },
  };
}
