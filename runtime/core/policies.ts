/**
 * The sparsification policies, implementing the contract of `policy.ts`:
 * dense, Dynamic-LLaVA (predictor-driven), FastV (attention-ranked image pruning), a composition
 * of two policies, and name resolution. Pure TypeScript and GPU-free: every decision is a pure
 * function of the row kinds and the signals the backend computed, so both backends share it.
 *
 * Shared rules: selected indices are ascending (original order, so rows keep their original
 * positions); "text" rows and the last row are always kept; among equal scores the lower index
 * wins. The official implementation ranks with `torch.argsort(descending=True)` (not stable, so
 * its order among exact ties is unspecified); lower-index-first is what the stable variant
 * (`stable=True`) gives. NaN ranks above every number, as in torch's sort.
 * @module
 */
import { InputError, PolicyError } from "./errors.ts";
import type { Policy, PolicyModelInfo, PolicyPlan, PruneSignals, RowKind } from "./policy.ts";

/** Options of {@link dynamicPolicy}; unset fields come from the checkpoint's sparse_config. */
export interface DynamicPolicyOptions {
  /** Image tokens to keep, as a count (clamped to N); exclusive with `visionKeepRate`. */
  visionKeep?: number;
  /** Fraction of image tokens to keep, in (0, 1]: k = floor(N × rate). Default vision_keep_rate. */
  visionKeepRate?: number;
  /** Decoder layer l at which rows are pruned and tokens admitted. Default sparse_layer. */
  sparseLayer?: number;
  /** Prune image tokens with the vision predictor. Default use_vision_predictor. */
  vision?: boolean;
  /**
   * Use the output text predictor: KV admission with cache, output-row selection without cache.
   * Default use_output_text_predictor.
   */
  textAdmission?: boolean;
}

/** Options of {@link fastvPolicy}. */
export interface FastvPolicyOptions {
  /** Layer K at which image rows are pruned, ranked by layer K-1's attention. Default 2. */
  k?: number;
  /** Fraction of image tokens dropped, in [0, 1): keep floor(N × (1 - r)). Default 0.5. */
  r?: number;
}

/** The two policies a {@link composePolicy} combines. */
export interface ComposedParts {
  /** Decides which "image" rows are kept. */
  images: Policy;
  /** Decides which "output" rows are kept (no cache) and the KV admission (with cache). */
  outputs: Policy;
}

/**
 * `admitLayer` of plans that admit every token: no layer decides (layers below it always append).
 */
function noAdmissionLayer(model: PolicyModelInfo): number {
  return model.numLayers;
}

/** Keep count for `total` rows at `rate`: floor(total × rate), at least 1 when there are rows. */
function keepCount(total: number, rate: number): number {
  return total === 0 ? 0 : Math.max(1, Math.floor(total * rate));
}

/** Positions (into `scores`) of the k largest scores, ascending; ties: lower position first. */
function topKInOrder(scores: ArrayLike<number>, k: number): number[] {
  const order = Array.from({ length: scores.length }, (_, i) => i);
  order.sort((a, b) => {
    const x = scores[a], y = scores[b];
    if (Number.isNaN(x) !== Number.isNaN(y)) return Number.isNaN(x) ? -1 : 1;
    if (x !== y && !Number.isNaN(x)) return y > x ? 1 : -1;
    return a - b;
  });
  return order.slice(0, k).sort((a, b) => a - b);
}

/** Row indices of one kind, ascending. */
function rowsOfKind(kinds: readonly RowKind[], kind: RowKind): number[] {
  return allRows(kinds).filter((i) => kinds[i] === kind);
}

/** Every row index, ascending. */
function allRows(kinds: readonly RowKind[]): number[] {
  return kinds.map((_, i) => i);
}

/**
 * Keeps text rows, the last row, and the image/output rows each chooser returns (all of a kind
 * when its chooser is absent). Choosers get that kind's row indices and return the kept subset.
 */
function keepRows(
  kinds: readonly RowKind[],
  choose: { image?: (rows: number[]) => number[]; output?: (rows: number[]) => number[] },
): number[] {
  const keep = new Uint8Array(kinds.length);
  kinds.forEach((kind, i) => keep[i] = kind === "text" || i === kinds.length - 1 ? 1 : 0);
  const images = rowsOfKind(kinds, "image"), outputs = rowsOfKind(kinds, "output");
  for (const i of choose.image ? choose.image(images) : images) keep[i] = 1;
  for (const i of choose.output ? choose.output(outputs) : outputs) keep[i] = 1;
  return allRows(kinds).filter((i) => keep[i] === 1);
}

/** A signal checked to hold `expected` values (absent is fine when none are expected). */
function signal(values: Float32Array | undefined, expected: number, name: keyof PruneSignals): Float32Array {
  if (values === undefined && expected === 0) return new Float32Array(0);
  if (values === undefined || values.length !== expected) {
    throw new PolicyError(
      `Cannot select rows: ${name} has ${values?.length ?? "no"} values, expected ${expected}`,
      `signals.${name}`,
    );
  }
  return values;
}

/**
 * Rule 3 (no cache): among the output rows except the last row, n = count(logit0 > logit1); keep
 * the n with the largest logit0. `outputs` are all output row indices, `logits` [outputs.length, 2].
 */
function selectOutputRows(outputs: number[], logits: Float32Array, lastRow: number): number[] {
  const candidates = outputs.map((row, j) => ({ row, j })).filter((c) => c.row !== lastRow);
  const logit0 = candidates.map((c) => logits[2 * c.j]);
  const n = candidates.filter((c) => logits[2 * c.j] > logits[2 * c.j + 1]).length;
  return topKInOrder(logit0, n).map((i) => candidates[i].row);
}

function checkLayer(layer: number, model: PolicyModelInfo, policy: string, field: string): void {
  if (layer >= model.numLayers) {
    throw new PolicyError(
      `Cannot plan the ${policy} policy: ${field} ${layer} is not below the model's ${model.numLayers} layers`,
      field,
    );
  }
}

function checkOption(ok: boolean, message: string, where: string): void {
  if (!ok) throw new InputError(message, where);
}

/**
 * The dense baseline (rule 6): nothing pruned, every token admitted.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { densePolicy } from "./policies.ts";
 * const plan = densePolicy().plan({ numLayers: 4, sparse: null, hasVisionPredictor: false, hasTextPredictor: false });
 * assert.equal(plan.pruneLayer, null);
 * assert.deepEqual(plan.selectRows(["text", "image", "image"], {}), [0, 1, 2]);
 * ```
 */
export function densePolicy(): Policy {
  return {
    name: "dense",
    plan(model: PolicyModelInfo): PolicyPlan {
      return {
        pruneLayer: null,
        needs: { visionScores: false, textLogits: false, lastRowAttention: false },
        selectRows: (kinds) => allRows(kinds),
        admission: "all",
        admitLayer: noAdmissionLayer(model),
        admit: () => true,
      };
    },
  };
}

/**
 * Dynamic-LLaVA (rules 1–4). At layer l: keep the top k image rows by vision score
 * (k = floor(N × rate) or the given count, at least 1), and without cache keep the output rows
 * chosen by rule 3; with cache, admit a token when TextPredictor logit0 > logit1. Text rows and the
 * last row are never pruned. `plan` throws PolicyError when the model lacks sparse_config or a
 * needed predictor's weights, or l is not a layer of the model.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dynamicPolicy } from "./policies.ts";
 * const plan = dynamicPolicy({ visionKeep: 1 }).plan({
 *   numLayers: 4,
 *   sparse: { sparseLayer: 2, visionKeepRate: 0.2, useVisionPredictor: true, useOutputTextPredictor: true },
 *   hasVisionPredictor: true,
 *   hasTextPredictor: true,
 * });
 * const kept = plan.selectRows(["text", "image", "image", "text"], { visionScores: new Float32Array([-2, -0.1]) });
 * assert.deepEqual(kept, [0, 2, 3]); // the image token with the higher score stays
 * assert.equal(plan.admit([1, 0]), true);
 * ```
 */
export function dynamicPolicy(options: DynamicPolicyOptions = {}): Policy {
  const { visionKeep, visionKeepRate } = options;
  checkOption(
    visionKeep === undefined || visionKeepRate === undefined,
    "Cannot create the dynamic policy: give visionKeep or visionKeepRate, not both",
    "options.visionKeep",
  );
  checkOption(
    visionKeep === undefined || (Number.isInteger(visionKeep) && visionKeep > 0),
    `Cannot create the dynamic policy: visionKeep must be a positive integer, got ${visionKeep}`,
    "options.visionKeep",
  );
  checkOption(
    visionKeepRate === undefined || (visionKeepRate > 0 && visionKeepRate <= 1),
    `Cannot create the dynamic policy: visionKeepRate must be in (0, 1], got ${visionKeepRate}`,
    "options.visionKeepRate",
  );
  checkOption(
    options.sparseLayer === undefined || (Number.isInteger(options.sparseLayer) && options.sparseLayer >= 0),
    `Cannot create the dynamic policy: sparseLayer must be a non-negative integer, got ${options.sparseLayer}`,
    "options.sparseLayer",
  );
  return {
    name: "dynamic",
    plan(model: PolicyModelInfo): PolicyPlan {
      const sparse = model.sparse;
      if (sparse === null) {
        throw new PolicyError(
          "Cannot plan the dynamic policy: the checkpoint has no sparse_config (not a Dynamic-LLaVA model)",
          "config.json sparse_config",
        );
      }
      const vision = options.vision ?? sparse.useVisionPredictor;
      const text = options.textAdmission ?? sparse.useOutputTextPredictor;
      if (vision && !model.hasVisionPredictor) {
        throw new PolicyError(
          "Cannot plan the dynamic policy: the checkpoint has no vision predictor weights",
          "model.image_score_predictor",
        );
      }
      if (text && !model.hasTextPredictor) {
        throw new PolicyError(
          "Cannot plan the dynamic policy: the checkpoint has no output text predictor weights",
          "model.output_text_score_predictor",
        );
      }
      const layer = options.sparseLayer ?? sparse.sparseLayer;
      checkLayer(layer, model, "dynamic", "sparseLayer");
      const rate = visionKeepRate ?? sparse.visionKeepRate;
      const chooseImages = (signals: PruneSignals) => (rows: number[]) => {
        const scores = signal(signals.visionScores, rows.length, "visionScores");
        const k = visionKeep === undefined ? keepCount(rows.length, rate) : Math.min(visionKeep, rows.length);
        return topKInOrder(scores, k).map((i) => rows[i]);
      };
      const chooseOutputs = (kinds: readonly RowKind[], signals: PruneSignals) => (rows: number[]) =>
        selectOutputRows(rows, signal(signals.textLogits, 2 * rows.length, "textLogits"), kinds.length - 1);
      return {
        pruneLayer: vision || text ? layer : null,
        needs: { visionScores: vision, textLogits: text, lastRowAttention: false },
        selectRows: (kinds, signals) =>
          keepRows(kinds, {
            image: vision ? chooseImages(signals) : undefined,
            output: text ? chooseOutputs(kinds, signals) : undefined,
          }),
        admission: text ? "predictor" : "all",
        admitLayer: text ? layer : noAdmissionLayer(model),
        admit: (logits) => !text || logits[0] > logits[1],
      };
    },
  };
}

/**
 * FastV baseline (rule 5): at layer K keep the top floor(N × (1 - R)) image rows (at least 1) by
 * the attention the last row pays them in layer K-1 (mean over heads), in original order. Output
 * rows are never pruned and every token is admitted. Needs no predictor.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fastvPolicy } from "./policies.ts";
 * const plan = fastvPolicy({ k: 1, r: 0.5 }).plan({ numLayers: 4, sparse: null, hasVisionPredictor: false, hasTextPredictor: false });
 * const kept = plan.selectRows(["text", "image", "image", "text"], {
 *   lastRowAttention: new Float32Array([0.5, 0.1, 0.3, 0.1]),
 * });
 * assert.deepEqual(kept, [0, 2, 3]); // the less attended image token is dropped
 * ```
 */
export function fastvPolicy(options: FastvPolicyOptions = {}): Policy {
  const { k = 2, r = 0.5 } = options;
  checkOption(
    Number.isInteger(k) && k >= 1,
    `Cannot create the fastv policy: k must be an integer ≥ 1, got ${k}`,
    "options.k",
  );
  checkOption(r >= 0 && r < 1, `Cannot create the fastv policy: r must be in [0, 1), got ${r}`, "options.r");
  return {
    name: "fastv",
    plan(model: PolicyModelInfo): PolicyPlan {
      checkLayer(k, model, "fastv", "k");
      return {
        pruneLayer: k,
        needs: { visionScores: false, textLogits: false, lastRowAttention: true },
        selectRows: (kinds, signals) => {
          const attention = signal(signals.lastRowAttention, kinds.length, "lastRowAttention");
          return keepRows(kinds, {
            image: (rows) =>
              topKInOrder(rows.map((i) => attention[i]), keepCount(rows.length, 1 - r)).map((i) => rows[i]),
          });
        },
        admission: "all",
        admitLayer: noAdmissionLayer(model),
        admit: () => true,
      };
    },
  };
}

/**
 * Combines two policies: image rows are kept as `images` decides, output rows and KV admission as
 * `outputs` decides; text rows and the last row are always kept. Both parts must prune at the same
 * layer (or one never prunes); the backend computes the union of their signals, so give each part
 * only the decisions it owns, e.g. `{ images: fastvPolicy(), outputs: dynamicPolicy({ vision: false }) }`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { composePolicy, dynamicPolicy, fastvPolicy } from "./policies.ts";
 * const policy = composePolicy({ images: fastvPolicy(), outputs: dynamicPolicy({ vision: false }) });
 * const plan = policy.plan({
 *   numLayers: 4,
 *   sparse: { sparseLayer: 2, visionKeepRate: 0.2, useVisionPredictor: true, useOutputTextPredictor: true },
 *   hasVisionPredictor: false,
 *   hasTextPredictor: true,
 * });
 * assert.equal(policy.name, "fastv+dynamic");
 * assert.equal(plan.pruneLayer, 2);
 * assert.equal(plan.admission, "predictor");
 * ```
 */
export function composePolicy(parts: ComposedParts): Policy {
  const { images, outputs } = parts;
  const name = `${images.name}+${outputs.name}`;
  return {
    name,
    plan(model: PolicyModelInfo): PolicyPlan {
      const imagePlan = images.plan(model), outputPlan = outputs.plan(model);
      const layers = [imagePlan.pruneLayer, outputPlan.pruneLayer].filter((l) => l !== null);
      if (layers.length === 2 && layers[0] !== layers[1]) {
        throw new PolicyError(
          `Cannot plan the ${name} policy: its parts prune at different layers (${layers[0]} and ${
            layers[1]
          })`,
          "composePolicy",
        );
      }
      const part = (plan: PolicyPlan, kinds: readonly RowKind[], signals: PruneSignals) => {
        if (plan.pruneLayer === null) return undefined;
        const kept = new Set(plan.selectRows(kinds, signals));
        return (rows: number[]) => rows.filter((i) => kept.has(i));
      };
      return {
        pruneLayer: layers[0] ?? null,
        needs: {
          visionScores: imagePlan.needs.visionScores || outputPlan.needs.visionScores,
          textLogits: imagePlan.needs.textLogits || outputPlan.needs.textLogits,
          lastRowAttention: imagePlan.needs.lastRowAttention || outputPlan.needs.lastRowAttention,
        },
        selectRows: (kinds, signals) =>
          keepRows(kinds, {
            image: part(imagePlan, kinds, signals),
            output: part(outputPlan, kinds, signals),
          }),
        admission: outputPlan.admission,
        admitLayer: outputPlan.admitLayer,
        admit: (logits) => outputPlan.admit(logits),
      };
    },
  };
}

/**
 * A policy from its name ("dense", "dynamic", "fastv", with default options) or the policy itself.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { resolvePolicy } from "./policies.ts";
 * import { InputError } from "./errors.ts";
 * assert.equal(resolvePolicy("fastv").name, "fastv");
 * assert.throws(() => resolvePolicy("sparse" as "dense"), InputError);
 * ```
 */
export function resolvePolicy(spec: "dense" | "dynamic" | "fastv" | Policy): Policy {
  if (spec === "dense") return densePolicy();
  if (spec === "dynamic") return dynamicPolicy();
  if (spec === "fastv") return fastvPolicy();
  if (typeof spec === "object" && spec !== null && typeof spec.plan === "function") return spec;
  throw new InputError(
    `Cannot resolve the policy: expected "dense", "dynamic", "fastv" or a Policy, got ${
      JSON.stringify(spec)
    }`,
    "policy",
  );
}
