/**
 * Memory planner: which requests fit a GPU memory budget now and which wait, from a model's config,
 * its weight and K/V types and each request's policy. Pure TypeScript: no GPU, no files, no `Deno`
 * (an edge router runs it).
 *
 * Budget: `budgetBytes` of GPU memory; with a `weightType` the weights' bytes (weight_bytes.ts) come
 * off it first, the rest holds K/V caches. A request reserves the most K/V bytes it can hold at once
 * under its policy with all `maxNewTokens` generated (`estimateCost(...).kv.peakBytes`, one
 * sequence), with the expected keep rates: Dynamic-LLaVA keeps `vision_keep_rate` of each image's
 * tokens and admits `output_text_keep_rate` of the output tokens (the config's `sparse_config`)
 * until measurements say otherwise.
 *
 * Admission ({@link MemoryPlanner.admit}) is in arrival order: requests are admitted while they
 * fit; the first that does not, and every later one, wait (no overtaking, so a large request is
 * never starved by small ones). A request larger than the whole K/V budget is refused.
 *
 * Measurements ({@link MemoryPlanner.observe}): the `stats.kvCache` of a finished request (rows
 * per layer and their bytes) sets the bytes of one cached row (so the K/V element type the runtime
 * really used), and, for Dynamic-LLaVA with a KV cache, how many output tokens its layers ≥ l
 * admitted: the pooled admitted fraction replaces `output_text_keep_rate` in later estimates.
 * Reservations are expected values, not bounds: a request that admits more than expected can hold
 * more than it reserved.
 * @module
 */
import type { ModelConfig } from "./config.ts";
import { costConfig, type CostPlan, DEFAULT_PROMPT_TOKENS, estimateCost, KV_DTYPE_BYTES } from "./cost.ts";
import type { KvDtype } from "./sparse_kv.ts";
import { InputError } from "./errors.ts";
import type { StoredWeightType, WeightBytes } from "./weight_bytes.ts";

/** Tokens a request generates at most when it does not say (the runtime's default `maxNewTokens`). */
export const DEFAULT_MAX_NEW_TOKENS = 256;

/** What a {@link MemoryPlanner} plans for. */
export interface PlannerOptions {
  /** The model's config: parsed, or a raw config.json object (see `costConfig`). */
  config: ModelConfig | unknown;
  /** GPU memory for the weights (with `weightType`) and the K/V caches, in bytes (Infinity: no limit). */
  budgetBytes: number;
  /** How the weights are stored; their bytes come off the budget (omit when it is for K/V only). */
  weightType?: StoredWeightType;
  /** K/V element type assumed until a request is measured (default "f16"). */
  kvDtype?: KvDtype;
}

/** One request as the planner sees it. */
export interface PlannedRequest {
  /** Names the request in {@link Admission}. */
  id: string;
  /** Its policy (default: "dynamic" when the config has a `sparse_config`, else "dense"). */
  policy?: "dense" | "fastv" | "dynamic";
  /** Text tokens of the prompt, BOS included, image tokens excluded (default 48). */
  promptTokens?: number;
  /** Images in the prompt (default 0). */
  images?: number;
  /** Most tokens it may generate (default {@link DEFAULT_MAX_NEW_TOKENS}). */
  maxNewTokens?: number;
  /** Decode with a KV cache (default true). */
  kvCache?: boolean;
}

/** What a finished request measured: its `stats.newTokens` and `stats.kvCache`. */
export interface MeasuredRequest {
  /** Tokens it generated. */
  newTokens: number;
  /** The KV cache at the end: rows each layer held and their bytes. */
  kvCache: { rowsPerLayer: readonly number[]; bytes: number };
}

/** The outcome of {@link MemoryPlanner.admit}. */
export interface Admission {
  /** Ids that start now, in order. */
  admitted: string[];
  /** Ids that wait for memory, in order. */
  waiting: string[];
  /** Ids that can never fit: more K/V bytes than the whole budget. */
  refused: string[];
  /** K/V bytes reserved for each request, by id. */
  bytes: Record<string, number>;
  /** K/V bytes reserved once the admitted ones start (`usedBytes` given + theirs). */
  usedBytes: number;
  /** K/V bytes still free after them. */
  freeBytes: number;
}

/**
 * Plans GPU memory for one model: K/V reservations per request, admission against the budget,
 * and estimates tightened by measured requests (see the module notes).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryPlanner } from "./planner.ts";
 * const config = {
 *   model_type: "llava_llama", hidden_size: 4096, intermediate_size: 11008, num_attention_heads: 32,
 *   num_hidden_layers: 32, vocab_size: 32000, mm_vision_tower: "openai/clip-vit-large-patch14-336",
 *   mm_hidden_size: 1024, mm_projector_type: "mlp2x_gelu", mm_vision_select_layer: -2,
 *   sparse_config: { vision_keep_rate: 0.2, output_text_keep_rate: 0.5, sparse_layer: 2 },
 * };
 * // LLaVA-1.5-7B in Q4_K_M on a 6 GB GPU, f16 K/V: how many 4K-context requests fit?
 * const planner = new MemoryPlanner({ config, budgetBytes: 6e9, weightType: "q4_k_m", kvDtype: "f16" });
 * const request = (id: string) => ({ id, policy: "dynamic" as const, images: 1, maxNewTokens: 4096 - 48 - 576 });
 * const admission = planner.admit(["a", "b", "c"].map(request));
 * assert.deepEqual(admission.admitted, ["a"]); // ~1.0 GiB of K/V each, 1.2 GiB left after the weights
 * assert.deepEqual(admission.waiting, ["b", "c"]);
 * ```
 */
export class MemoryPlanner {
  /** The model's config as parsed. */
  readonly config: ModelConfig;
  /** The weights' bytes, or null without a weight type. */
  readonly weights: WeightBytes | null;
  /** GPU bytes left for K/V caches. */
  readonly kvBudgetBytes: number;
  #bytesPerElement: number;
  #admittedRows = 0;
  #candidateRows = 0;

  /** A planner for `options.config` under `options.budgetBytes` (InputError when the weights exceed it). */
  constructor(options: PlannerOptions) {
    this.config = costConfig(options.config);
    const budget = options.budgetBytes;
    if (typeof budget !== "number" || !(budget > 0)) {
      throw new InputError(
        `Cannot plan memory: options.budgetBytes must be a number > 0, got ${budget}`,
        "options.budgetBytes",
      );
    }
    const kvDtype = options.kvDtype ?? "f16";
    if (!Object.hasOwn(KV_DTYPE_BYTES, kvDtype)) {
      throw new InputError(
        `Cannot plan memory: options.kvDtype ${JSON.stringify(kvDtype)} is not f32 or f16`,
        "options.kvDtype",
      );
    }
    this.#bytesPerElement = KV_DTYPE_BYTES[kvDtype];
    this.weights = options.weightType === undefined
      ? null
      : estimateCost(options.config, { policy: "dense", weightType: options.weightType }).weights;
    const weightBytes = this.weights?.total ?? 0;
    if (weightBytes >= budget) {
      throw new InputError(
        `Cannot plan memory: the ${options.weightType} weights (${weightBytes} bytes) leave nothing of ` +
          `the ${budget}-byte budget`,
        "options.budgetBytes",
      );
    }
    this.kvBudgetBytes = budget - weightBytes;
  }

  /** Bytes per cached K/V element: the `kvDtype`'s until a request is measured, then as measured. */
  get bytesPerElement(): number {
    return this.#bytesPerElement;
  }

  /**
   * The fraction of output tokens Dynamic-LLaVA is expected to admit: measured over the finished
   * requests, or `sparse_config.output_text_keep_rate` (0.5 without one) before any.
   */
  get textKeepRate(): number {
    if (this.#candidateRows > 0) return this.#admittedRows / this.#candidateRows;
    return this.config.sparse?.outputTextKeepRate ?? 0.5;
  }

  /**
   * K/V bytes reserved for `request`: its peak with every `maxNewTokens` generated at the
   * expected keep rates.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { MemoryPlanner } from "./planner.ts";
   * const config = { model_type: "llama", hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 2 };
   * const planner = new MemoryPlanner({ config, budgetBytes: 1e6, kvDtype: "f32" });
   * // dense: (10 prompt + 4 fed tokens) rows × 2 layers × (K, V) × 8 wide × 4 bytes
   * assert.equal(planner.requestBytes({ id: "r", policy: "dense", promptTokens: 10, maxNewTokens: 5 }), 14 * 2 * 2 * 8 * 4);
   * ```
   */
  requestBytes(request: PlannedRequest): number {
    const maxNewTokens = request.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
    const estimate = estimateCost(this.config, this.#plan(request, maxNewTokens, this.textKeepRate));
    return Math.ceil(estimate.kv.peakBytes * this.#bytesPerElement);
  }

  /**
   * Admits `requests` in order against the K/V budget, `usedBytes` (default 0) of it already
   * reserved by running requests: see the module notes. Ids must be unique.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { MemoryPlanner } from "./planner.ts";
   * const config = { model_type: "llama", hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 2 };
   * const planner = new MemoryPlanner({ config, budgetBytes: 3000, kvDtype: "f32" });
   * const r = (id: string, maxNewTokens: number) => ({ id, policy: "dense" as const, promptTokens: 10, maxNewTokens });
   * // 14 rows = 1792 bytes, 12 rows = 1536, 50 rows = 6400: more than the whole budget.
   * const admission = planner.admit([r("a", 5), r("huge", 41), r("b", 3), r("c", 1)], { usedBytes: 0 });
   * assert.deepEqual([admission.admitted, admission.waiting, admission.refused], [["a"], ["b", "c"], ["huge"]]);
   * assert.equal(admission.freeBytes, 3000 - 1792);
   * ```
   */
  admit(requests: readonly PlannedRequest[], options: { usedBytes?: number } = {}): Admission {
    let used = options.usedBytes ?? 0;
    if (typeof used !== "number" || !(used >= 0)) {
      throw new InputError(`Cannot plan memory: usedBytes must be ≥ 0, got ${used}`, "options.usedBytes");
    }
    const admission: Admission = {
      admitted: [],
      waiting: [],
      refused: [],
      bytes: {},
      usedBytes: 0,
      freeBytes: 0,
    };
    let blocked = false;
    for (const [index, request] of requests.entries()) {
      if (typeof request?.id !== "string" || Object.hasOwn(admission.bytes, request.id)) {
        throw new InputError(
          `Cannot plan memory: requests[${index}].id must be a string no other request has`,
          `requests[${index}].id`,
        );
      }
      const bytes = this.requestBytes(request);
      admission.bytes[request.id] = bytes;
      if (bytes > this.kvBudgetBytes) {
        admission.refused.push(request.id);
      } else if (!blocked && used + bytes <= this.kvBudgetBytes) {
        admission.admitted.push(request.id);
        used += bytes;
      } else {
        blocked = true;
        admission.waiting.push(request.id);
      }
    }
    admission.usedBytes = used;
    admission.freeBytes = this.kvBudgetBytes - used;
    return admission;
  }

  /**
   * Learns from a finished request: `measured` is its `stats.newTokens` and `stats.kvCache`
   * (see the module notes); `request` describes it with its real prompt.
   *
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { MemoryPlanner } from "./planner.ts";
   * const config = {
   *   model_type: "llama", hidden_size: 8, intermediate_size: 16, num_attention_heads: 2, num_hidden_layers: 4,
   *   sparse_config: { sparse_layer: 2, output_text_keep_rate: 0.5 },
   * };
   * const planner = new MemoryPlanner({ config, budgetBytes: 1e6 });
   * // 11 tokens generated, 10 fed back: layers 0-1 hold 10 + 10 rows, layers 2-3 admitted 2 of the 10.
   * const rowsPerLayer = [20, 20, 12, 12];
   * planner.observe({ id: "r", policy: "dynamic", promptTokens: 10 }, {
   *   newTokens: 11, kvCache: { rowsPerLayer, bytes: 64 * 16 * 4 }, // 64 rows of (K, V) × 8 wide, 4 bytes each
   * });
   * assert.equal(planner.textKeepRate, 0.2);
   * assert.equal(planner.bytesPerElement, 4); // the runtime held f32 K/V
   * ```
   */
  observe(request: PlannedRequest, measured: MeasuredRequest): void {
    const text = this.config.text;
    const rowsPerLayer = measured?.kvCache?.rowsPerLayer;
    if (!Array.isArray(rowsPerLayer) || rowsPerLayer.length !== text.numLayers) {
      throw new InputError(
        `Cannot learn from a request: kvCache.rowsPerLayer must hold ${text.numLayers} layers`,
        "measured.kvCache.rowsPerLayer",
      );
    }
    const rows = rowsPerLayer.reduce((sum, n) => sum + n, 0);
    const bytes = measured.kvCache.bytes;
    if (
      !Number.isSafeInteger(rows) || rows < 0 || !(bytes >= 0) || !Number.isSafeInteger(measured.newTokens)
    ) {
      throw new InputError(
        "Cannot learn from a request: its rows, bytes and newTokens must be whole numbers ≥ 0",
        "measured",
      );
    }
    if (rows > 0 && bytes > 0) this.#bytesPerElement = bytes / (rows * 2 * text.numKvHeads * text.headDim);
    if (this.#policyOf(request) !== "dynamic" || request.kvCache === false) return;
    const rowsAt = (rate: number) =>
      estimateCost(this.config, this.#plan(request, measured.newTokens, rate)).kv.rowsPerLayer
        .reduce((sum, n) => sum + n, 0);
    const none = rowsAt(0), all = rowsAt(1);
    if (all <= none) return;
    this.#admittedRows += Math.min(Math.max(rows - none, 0), all - none);
    this.#candidateRows += all - none;
  }

  #policyOf(request: PlannedRequest): "dense" | "fastv" | "dynamic" {
    return request.policy ?? (this.config.sparse ? "dynamic" : "dense");
  }

  /** The cost plan of one sequence of `request` generating `newTokens`, K/V counted in elements. */
  #plan(request: PlannedRequest, newTokens: number, textKeepRate: number): CostPlan {
    return {
      policy: this.#policyOf(request),
      promptTokens: request.promptTokens ?? DEFAULT_PROMPT_TOKENS,
      images: request.images ?? 0,
      newTokens,
      kvCache: request.kvCache ?? true,
      bytesPerElement: 1,
      dynamic: { textKeepRate },
    };
  }
}
