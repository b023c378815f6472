/**
 * The generation loop, shared by both backends: validates a request, runs prefill and decode (with
 * KV cache) or recompute steps (without), stops on stop ids / stop strings / maxNewTokens / abort,
 * streams tokens, and assembles the result and its stats from the session's ledger and the cost
 * model. It yields to the event loop before every decode call, so timers, I/O (a server's other
 * requests, a client disconnect) and AbortSignal run between steps even on a backend that computes
 * synchronously (the CPU).
 * @module
 */
import type { Backend, BackendSession, ImageFeatures } from "./backend.ts";
import type { ModelConfig } from "../core/config.ts";
import { kvBytes, type PassFlops, passFlops } from "../core/cost.ts";
import { InputError } from "../core/errors.ts";
import type { PolicyPlan } from "../core/policy.ts";
import type { PromptRows } from "../core/sequence.ts";
import type { KvDtype } from "../core/sparse_kv.ts";
import type { Tokenizer } from "../text/tokenizer.ts";
import type { Phase } from "./pass.ts";

/** One streamed token. */
export interface GenerateEvent {
  /** The generated token id. */
  token: number;
  /** Text this token added to the decoded output (may be "" while a UTF-8 sequence is incomplete). */
  text: string;
}

/** Stats of one request. */
export interface GenerateStats {
  /** Decoder input rows of the prompt: text tokens plus every image's tokens. */
  promptTokens: number;
  /** Image tokens in the prompt (images × tokens per image). */
  visualTokens: number;
  /** Image tokens kept at the prune layer, or null when nothing was pruned. */
  visualKeptCount: number | null;
  /** Tokens generated. */
  newTokens: number;
  /** KV mode: generated tokens admitted to layers ≥ the sparse layer; no-cache: kept in context. */
  admittedCount: number;
  /** Wall time of the prefill (the first token), in milliseconds. */
  prefillMs: number;
  /** Wall time of the tokens after the first, in milliseconds. */
  decodeMs: number;
  /** Decode speed: tokens after the first per second of decodeMs (0 with fewer than 2 tokens). */
  tokensPerSecond: number;
  /** FLOPs of the passes actually run, prefill and decode. */
  flops: { prefill: PassFlops; decode: PassFlops };
  /** The KV cache at the end: rows each layer holds, their bytes, and the most bytes held at once. */
  kvCache: { rowsPerLayer: number[]; bytes: number; peakBytes: number };
  /** Most GPU bytes the request's buffers and image features held at once (0 on the CPU). */
  gpuPeakBytes: number;
  /** Rows computed summed over layers and passes (prefill, decode). */
  rowsComputed: { prefill: number; decode: number };
}

/**
 * Why generation ended: "stop" (a stop id was sampled or a stop string appeared), "length"
 * (maxNewTokens reached) or "abort" (the signal fired; only when the request asks for a partial
 * result instead of an AbortError).
 */
export type FinishReason = "stop" | "length" | "abort";

/** Token counts of one request (image tokens count as prompt tokens). */
export interface Usage {
  /** Rows of the prompt (each image counts its tokens). */
  promptTokens: number;
  /** Tokens generated. */
  completionTokens: number;
  /** promptTokens + completionTokens. */
  totalTokens: number;
}

/** The awaited result of `generate()`. */
export interface GenerateResult {
  /** Generated token ids, the stop id included when one ended the run. */
  tokens: number[];
  /** The generated tokens decoded, special tokens skipped, cut before the first stop string. */
  text: string;
  /** Indices of the image tokens kept at the prune layer (ascending), or null when nothing was pruned. */
  visualKept: number[] | null;
  /** Per generated token fed back (all but the last): admitted to the KV cache at layers ≥ the sparse layer (KV mode), or kept in the context (no-cache mode). */
  admitted: boolean[];
  /** Why generation ended. */
  finishReason: FinishReason;
  /** Prompt and generated token counts. */
  usage: Usage;
  /** Counts, timings, FLOPs and memory of the run. */
  stats: GenerateStats;
}

/** A validated request as the loop runs it. */
export interface LoopRequest {
  rows: PromptRows;
  images: ImageFeatures | null;
  plan: PolicyPlan;
  sampling: { temperature: number; topP: number; seed: number };
  maxNewTokens: number;
  /** Stop ids. */
  stop: number[];
  /** Stop strings: the text ends before the first one that appears (it is not streamed either). Default none. */
  stopStrings?: string[];
  kvCache: boolean;
  /** Element type of the KV cache (default: the backend's). */
  kvDtype?: KvDtype;
  signal?: AbortSignal;
  /** "throw" (default): an abort rejects with the signal's reason; "finish": returns what was generated. */
  onAbort?: "throw" | "finish";
  /** KV mode: decode steps per GPU submission between readbacks. */
  decodeBatch: number;
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException("The request was aborted", "AbortError");
}

/** True when the loop must end now because of an abort it reports as finishReason "abort". */
function abortedNow(request: LoopRequest): boolean {
  if (request.onAbort !== "finish") checkAbort(request.signal);
  return request.signal?.aborted === true;
}

/** Resolves on a later turn of the event loop (after pending I/O and timers had their chance). */
function yieldToEventLoop(): Promise<void> {
  const immediate = (globalThis as { setImmediate?: (callback: () => void) => void }).setImmediate;
  if (immediate) return new Promise((resolve) => immediate(resolve));
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

/** Index of the first stop string in `text` (searching from `from`), or -1. */
function findStopString(text: string, stopStrings: string[], from: number): number {
  let found = -1;
  for (const stop of stopStrings) {
    const at = text.indexOf(stop, from);
    if (at >= 0 && (found < 0 || at < found)) found = at;
  }
  return found;
}

/** Length of the longest end of `text` that begins some stop string (held back from streaming). */
function heldBackLength(text: string, stopStrings: string[]): number {
  let held = 0;
  for (const stop of stopStrings) {
    for (let n = Math.min(stop.length - 1, text.length); n > held; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        held = n;
        break;
      }
    }
  }
  return held;
}

/**
 * Runs one request on `backend`, calling `emit` for every generated token.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { runGeneration } from "./generate.ts";
 * import { createCpuBackend } from "../cpu/cpu_backend.ts";
 * import { openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
 * import { loadTokenizer } from "../text/tokenizer.ts";
 * import { buildPromptRows } from "../core/sequence.ts";
 * import { densePolicy } from "../core/policies.ts";
 * const checkpoint = await openCheckpoint("tests/fixtures/out/llama-f32");
 * const { config } = checkpoint, { numLayers, vocabSize, maxPositions } = config.text;
 * const weights = new Map<string, Float32Array>();
 * for (const name of checkpoint.tensors.keys()) weights.set(name, await readCheckpointTensor(checkpoint, name));
 * const backend = createCpuBackend(config, weights, { vision: null, text: null });
 * const tokenizer = await loadTokenizer(checkpoint.tokenizerPath);
 * const request = {
 *   rows: buildPromptRows(tokenizer.encode("Hello"), { tokensPerImage: 0, images: 0, vocabSize, maxPositions }),
 *   images: null,
 *   plan: densePolicy().plan({ numLayers, sparse: null, hasVisionPredictor: false, hasTextPredictor: false }),
 *   sampling: { temperature: 0, topP: 1, seed: 0 },
 *   maxNewTokens: 5,
 *   stop: [],
 *   kvCache: true,
 *   decodeBatch: 4,
 * };
 * const streamed: number[] = [];
 * const result = await runGeneration(backend, tokenizer, config, request, (event) => streamed.push(event.token));
 * assert.equal(result.tokens.length, 5); // no stop ids: exactly maxNewTokens
 * assert.deepEqual(streamed, result.tokens);
 * assert.deepEqual(result.stats.kvCache.rowsPerLayer, new Array(numLayers).fill(request.rows.ids.length + 4));
 * const again = await runGeneration(backend, tokenizer, config, { ...request, kvCache: false }, () => {});
 * assert.deepEqual(again.tokens, result.tokens); // with or without a KV cache, the same greedy tokens
 * backend.dispose();
 * ```
 */
export async function runGeneration(
  backend: Backend,
  tokenizer: Tokenizer,
  config: ModelConfig,
  request: LoopRequest,
  emit: (event: GenerateEvent) => void,
): Promise<GenerateResult> {
  if (!Number.isInteger(request.maxNewTokens) || request.maxNewTokens < 0) {
    throw new InputError(`Cannot generate: maxNewTokens must be a non-negative integer`, "maxNewTokens");
  }
  const promptLen = request.rows.ids.length;
  if ((request.stopStrings ?? []).some((stop) => typeof stop !== "string" || stop === "")) {
    throw new InputError("Cannot generate: a stop string must be a non-empty string", "stop");
  }
  if (promptLen + request.maxNewTokens > config.text.maxPositions) {
    throw new InputError(
      `Cannot generate: prompt (${promptLen} rows) + maxNewTokens (${request.maxNewTokens}) exceeds the context of ${config.text.maxPositions}`,
      "maxNewTokens",
    );
  }
  checkAbort(request.signal);
  const session = backend.openSession(request);
  try {
    return await loop(session, tokenizer, config, request, emit);
  } finally {
    session.dispose();
  }
}

async function loop(
  session: BackendSession,
  tokenizer: Tokenizer,
  config: ModelConfig,
  request: LoopRequest,
  emit: (event: GenerateEvent) => void,
): Promise<GenerateResult> {
  const output = new Output(tokenizer, request, emit);
  const t0 = performance.now();
  const run = request.kvCache ? withCache : withoutCache;
  const { visualKept, admitted, prefillMs, finishReason } = await run(
    session,
    request,
    output,
    () => performance.now() - t0,
  );
  const decodeMs = performance.now() - t0 - prefillMs;
  const { tokens, text } = output;
  return {
    tokens,
    text,
    visualKept,
    admitted,
    finishReason,
    usage: {
      promptTokens: request.rows.ids.length,
      completionTokens: tokens.length,
      totalTokens: request.rows.ids.length + tokens.length,
    },
    stats: {
      promptTokens: request.rows.ids.length,
      visualTokens: request.rows.imageTokens,
      visualKeptCount: visualKept ? visualKept.length : null,
      newTokens: tokens.length,
      admittedCount: admitted.filter(Boolean).length,
      prefillMs,
      decodeMs,
      tokensPerSecond: tokens.length > 1 && decodeMs > 0 ? (tokens.length - 1) / (decodeMs / 1000) : 0,
      flops: {
        prefill: phaseFlops(session, config, "prefill"),
        decode: phaseFlops(session, config, "decode"),
      },
      kvCache: cacheStats(session, config),
      gpuPeakBytes: session.gpuPeakBytes() + (request.images?.gpuBytes ?? 0),
      rowsComputed: { prefill: rowsComputed(session, "prefill"), decode: rowsComputed(session, "decode") },
    },
  };
}

/** The generated tokens and their text, streamed as it becomes safe to show. */
class Output {
  readonly tokens: number[] = [];
  text = "";
  /** Characters of `text` already streamed. */
  #shown = 0;
  readonly #stopStrings: string[];
  readonly #longestStop: number;
  constructor(
    readonly tokenizer: Tokenizer,
    readonly request: LoopRequest,
    readonly emit: (event: GenerateEvent) => void,
  ) {
    this.#stopStrings = request.stopStrings ?? [];
    this.#longestStop = Math.max(0, ...this.#stopStrings.map((stop) => stop.length));
  }

  /** Records a sampled token, streams the text that is safe to show, and says whether to stop. */
  push(token: number): FinishReason | null {
    const stopStrings = this.#stopStrings;
    this.tokens.push(token);
    // Ids of a padded vocabulary beyond the tokenizer's have no text (as in Hugging Face's decode).
    const full = this.tokenizer.decode(this.tokens.filter((id) => id < this.tokenizer.vocabSize), {
      skipSpecialTokens: true,
    });
    if (!full.endsWith("\uFFFD")) this.text = full;
    const stopAt = findStopString(this.text, stopStrings, Math.max(0, this.#shown - this.#longestStop));
    let reason: FinishReason | null = null;
    if (stopAt >= 0) {
      this.text = this.text.slice(0, stopAt);
      reason = "stop";
    } else if (this.request.stop.includes(token)) reason = "stop";
    else if (this.tokens.length >= this.request.maxNewTokens) reason = "length";
    const visible = reason ? this.text.length : this.text.length - heldBackLength(this.text, stopStrings);
    this.emit({ token, text: this.text.slice(this.#shown, Math.max(this.#shown, visible)) });
    this.#shown = Math.max(this.#shown, visible);
    return reason;
  }
}

/** What a run of the loop decided, besides the tokens. */
interface RunOutcome {
  visualKept: number[] | null;
  admitted: boolean[];
  prefillMs: number;
  finishReason: FinishReason;
}

/** KV mode: prefill, then decode steps in batches of `decodeBatch` until done. */
async function withCache(
  session: BackendSession,
  request: LoopRequest,
  output: Output,
  elapsed: () => number,
): Promise<RunOutcome> {
  const admitted: boolean[] = [];
  const first = await session.prefill({ wantLogits: false });
  const prefillMs = elapsed();
  let finishReason = request.maxNewTokens === 0 ? "length" : output.push(first.token);
  while (!finishReason) {
    await yieldToEventLoop();
    if (abortedNow(request)) {
      finishReason = "abort";
      break;
    }
    const steps = Math.min(request.decodeBatch, request.maxNewTokens - output.tokens.length);
    const out = await session.decode(steps);
    for (let i = 0; i < out.tokens.length && !finishReason; i++) {
      admitted.push(out.admitted[i]);
      finishReason = output.push(out.tokens[i]);
    }
  }
  return { visualKept: first.visualKept, admitted, prefillMs, finishReason };
}

/** No-cache mode: one recompute of the whole context per token. */
async function withoutCache(
  session: BackendSession,
  request: LoopRequest,
  output: Output,
  elapsed: () => number,
): Promise<RunOutcome> {
  let outputKept: number[] = [];
  const first = await session.recompute([]);
  const prefillMs = elapsed();
  let finishReason = request.maxNewTokens === 0 ? "length" : output.push(first.token);
  while (!finishReason) {
    await yieldToEventLoop();
    if (abortedNow(request)) {
      finishReason = "abort";
      break;
    }
    const step = await session.recompute(output.tokens);
    outputKept = step.outputKept;
    finishReason = output.push(step.token);
  }
  // Final keep decision per generated token except the last, from the last recompute; the token
  // fed last in that recompute was its last row, which is always kept.
  const kept = new Set(outputKept);
  const fed = Math.max(0, output.tokens.length - 1);
  const admitted = Array.from({ length: fed }, (_, j) => j === fed - 1 || kept.has(j));
  return { visualKept: first.visualKept, admitted, prefillMs, finishReason };
}

/** FLOPs of a phase's passes, summed. */
function phaseFlops(session: BackendSession, config: ModelConfig, phase: Phase): PassFlops {
  const out = { flopsPaper: 0, flopsExact: 0 };
  for (const pass of session.passes) {
    if (pass.phase !== phase) continue;
    const f = passFlops(config.text, pass.layers);
    out.flopsPaper += f.flopsPaper;
    out.flopsExact += f.flopsExact;
  }
  return out;
}

/** Rows computed over a phase's passes, summed over layers. */
function rowsComputed(session: BackendSession, phase: Phase): number {
  return session.passes.filter((p) => p.phase === phase).reduce(
    (n, p) => n + p.layers.reduce((m, l) => m + l.newRows, 0),
    0,
  );
}

/** The rows and bytes the caches hold at the end, and their peak. */
function cacheStats(session: BackendSession, config: ModelConfig): GenerateStats["kvCache"] {
  const rowsPerLayer = session.ledger.rowsPerLayer();
  const bytesPerElement = session.ledger.bytesPerRow / (2 * config.text.numKvHeads * config.text.headDim);
  return {
    rowsPerLayer,
    bytes: kvBytes(config.text, rowsPerLayer, { bytesPerElement }),
    peakBytes: session.ledger.peakBytes,
  };
}
