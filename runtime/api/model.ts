/**
 * `loadModel()` and the {@link Model} users call: `generate()` (awaitable and async-iterable),
 * `chat()`, `generateBatch()`, `streamBatch()`, `logits()`, `logProbs()`, `planPolicy()`,
 * `dispose()`. Turns user requests (prompt, ids or chat messages, images, policy, sampling) into
 * validated loop requests and runs one call at a time on the chosen backend (a batch call runs its
 * requests together, their decode steps shared).
 * @module
 */
import { fileURLToPath } from "node:url";
import type { Backend, BackendSession, ImageFeatures } from "../engine/backend.ts";
import { type Checkpoint, openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
import { isGgufCheckpoint, openGgufCheckpoint } from "../io/gguf_checkpoint.ts";
import type { ModelConfig } from "../core/config.ts";
import { createCpuBackend } from "../cpu/cpu_backend.ts";
import { logSoftmaxAt } from "../core/cpu_ops.ts";
import { CheckpointError, InputError } from "../core/errors.ts";
import {
  type GenerateEvent,
  type GenerateResult,
  type LoopRequest,
  runGeneration,
} from "../engine/generate.ts";
import {
  type GenerateRequest,
  type ImageInput,
  type RequestLimits,
  validateRequest,
} from "../engine/request.ts";
export type { GenerateRequest, ImageInput } from "../engine/request.ts";
import { createGpuBackend } from "../webgpu/gpu_backend.ts";
import { decodeVideoFrames, DEFAULT_MAX_PIXELS } from "../image/image_decode.ts";
import { checkedPlan, type PolicyModelInfo, type PolicyPlan } from "../core/policy.ts";
import { resolvePolicy } from "../core/policies.ts";
import { loadPredictors } from "../core/predictors.ts";
import { DEFAULT_MAX_NEW_TOKENS } from "../core/planner.ts";
import { PREDICTOR_PREFIXES } from "../core/weights.ts";
import { preprocessImage } from "../image/preprocess.ts";
import { diskCache, fetchCheckpoint } from "../io/remote.ts";
import { pageCache } from "../io/page_cache.ts";
import type { FileStore } from "../core/files.ts";
import { hasFileSystem, localFiles } from "../io/files.ts";
import { buildPromptRows, type PromptRows } from "../core/sequence.ts";
import { KV_DTYPES, type KvDtype } from "../core/sparse_kv.ts";
import { encodeWithImages, formatLlavaV1, formatLlavaV1Chat } from "../text/template.ts";
import { loadTokenizer, type Tokenizer } from "../text/tokenizer.ts";
import { tokenizerFromPieces } from "../text/sentencepiece.ts";

/**
 * Loading progress, per phase: "download" (files of an http(s) checkpoint, `item` = the file;
 * bytes of that file) then "weights" (tensors read or uploaded, `item` = the tensor; bytes of all).
 */
export interface LoadProgress {
  /** "download" (an http(s) checkpoint's files) or "weights" (tensors read or uploaded). */
  phase: "download" | "weights";
  /** Bytes done: of the current file (download) or of all tensors (weights). */
  loadedBytes: number;
  /** Bytes in all: of the current file (download; 0 when the server does not say) or of all tensors. */
  totalBytes: number;
  /** The file or tensor just handled. */
  item: string;
}

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /** "webgpu" (default) or "cpu". */
  backend?: "webgpu" | "cpu";
  /** Called as tensors load, with the bytes loaded so far. */
  onProgress?: (progress: LoadProgress) => void;
  /**
   * GPU weight storage: "auto" (default) keeps F32 checkpoints in f32 and stores F16/BF16 ones as
   * f16 where the device has shader-f16; "f16" or "f32" force it.
   */
  weightDtype?: "auto" | "f16" | "f32";
  /**
   * GPU matrix storage: "auto" (default) times a short matvec both ways once per adapter and keeps
   * storage buffers unless storage textures read clearly faster (as on Mesa's lavapipe); "buffer"
   * or "texture" force it. Results do not depend on it.
   */
  weightStorage?: "auto" | "buffer" | "texture";
  /**
   * Element type of the KV cache, the default of every request (a request's `kvDtype` overrides
   * it): "auto" (default) is "f16" on a WebGPU device with `shader-f16` (half the KV bytes;
   * attention still sums in f32) and "f32" elsewhere and on the CPU backend. "f16" on a WebGPU
   * device without `shader-f16` is an InputError naming `kvDtype`; the CPU backend holds both
   * (its f16 cache rounds every value as the GPU does, so the two backends agree).
   */
  kvDtype?: "auto" | KvDtype;
  /**
   * GPU decode kernels: true (default) computes q, k, v in one dispatch, gate/up with SwiGLU in
   * one, and RoPE on q and k in one, where matrices sit in storage textures; false runs one kernel
   * per op, for comparisons. Results agree within f32 rounding.
   */
  fusedKernels?: boolean;
  /**
   * Scan every weight for NaN and ±Inf while loading (reads each tensor once more; off by default).
   * A non-finite weight is a CheckpointError naming the tensor and its file.
   */
  checkTensors?: boolean;
  /**
   * Refuse images and video frames with more pixels than this, before decoding (default
   * 16,777,216 = 4096²). Counts a GIF's logical screen, not only its first frame.
   */
  maxImagePixels?: number;
  /**
   * Read a checkpoint path through this store instead of the file system (for example
   * `memoryFiles(...)` over files a page already holds). http(s) URLs are downloaded as always.
   */
  files?: FileStore;
}

/** Options of {@link Model.generateBatch}. */
export interface BatchOptions {
  /**
   * true: never reject; return each request's outcome (`{ status: "fulfilled", value }` or
   * `{ status: "rejected", reason }`), the bad ones refused before any work. false (default):
   * reject with the first failure (a request refused by validation stops the batch before any work).
   */
  settle?: boolean;
}

/** A part of a chat message: text, or an image (encoded bytes or decoded RGB). */
export type ChatContentPart = { type: "text"; text: string } | { type: "image"; image: ImageInput };

/** A chat message. A leading system message replaces the template's system prompt. */
export interface ChatMessage {
  /** Who speaks: the system prompt, the user, or an earlier answer of the assistant. */
  role: "system" | "user" | "assistant";
  /** Text, or text and image parts in order (each image goes where its part is). */
  content: string | ChatContentPart[];
}

/**
 * A chat request: the conversation, formatted with the checkpoint's chat template (llava_v1 for
 * LLaVA-1.5 checkpoints of either layout); `stop` adds ids and strings to `</s>`. An abort ends it
 * with finishReason "abort" unless `onAbort` is "throw".
 */
export interface ChatRequest extends Omit<GenerateRequest, "prompt" | "inputIds" | "image" | "video"> {
  /** The conversation so far; the last message is the user's. */
  messages: ChatMessage[];
}

/** A running `generate()`: await it for the result, or iterate it for streamed tokens. */
export class GenerateRun implements PromiseLike<GenerateResult>, AsyncIterable<GenerateEvent> {
  #events: GenerateEvent[] = [];
  #wake: (() => void) | null = null;
  #finished = false;
  /** The run's result, resolved when generation ends. */
  readonly result: Promise<GenerateResult>;

  /** Starts `start`, which calls `emit` per token. */
  constructor(start: (emit: (event: GenerateEvent) => void) => Promise<GenerateResult>) {
    this.result = start((event) => {
      this.#events.push(event);
      this.#wake?.();
    }).finally(() => {
      this.#finished = true;
      this.#wake?.();
    });
    this.result.catch(() => {});
  }

  /** Awaiting the run awaits {@link GenerateRun.result}. */
  then<A = GenerateResult, B = never>(
    onFulfilled?: ((value: GenerateResult) => A | PromiseLike<A>) | null,
    onRejected?: ((reason: unknown) => B | PromiseLike<B>) | null,
  ): Promise<A | B> {
    return this.result.then(onFulfilled, onRejected);
  }

  /** Streams one event per generated token, in order; rethrows the run's failure at the end. */
  async *[Symbol.asyncIterator](): AsyncIterator<GenerateEvent> {
    while (true) {
      if (this.#events.length > 0) {
        yield this.#events.shift()!;
        continue;
      }
      if (this.#finished) {
        await this.result; // rethrows a failure
        return;
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = null;
    }
  }
}

/** A loaded model. Create with {@link loadModel}. */
export class Model {
  /** The checkpoint's architecture. */
  readonly config: ModelConfig;
  /** The checkpoint's tokenizer. */
  readonly tokenizer: Tokenizer;
  readonly #backend: Backend;
  /** What a request may ask of this model (checked by {@link validateRequest} before any work). */
  readonly limits: Readonly<RequestLimits>;
  readonly #policyInfo: PolicyModelInfo;
  readonly #maxImagePixels: number;
  #queue: Promise<unknown> = Promise.resolve();
  #batchGroup: { add(request: GenerateRequest): GenerateRun } | null = null;
  #disposed = false;

  /** Use {@link loadModel}. */
  constructor(
    config: ModelConfig,
    tokenizer: Tokenizer,
    backend: Backend,
    policyInfo: PolicyModelInfo,
    options: { maxImagePixels?: number } = {},
  ) {
    this.config = config;
    this.tokenizer = tokenizer;
    this.#backend = backend;
    this.#policyInfo = policyInfo;
    this.#maxImagePixels = options.maxImagePixels ?? DEFAULT_MAX_PIXELS;
    this.limits = {
      vocabSize: config.text.vocabSize,
      maxPositions: config.text.maxPositions,
      tokensPerImage: config.vision?.tokensPerImage ?? 0,
      hasVision: config.vision !== null,
      maxPromptChars: config.text.maxPositions * longestTokenChars(tokenizer),
      kvDtypes: backend.kvDtypes,
      specialTexts: [tokenizer.bosId, tokenizer.eosId, tokenizer.unkId]
        .map((id) => (id >= 0 ? tokenizer.idToToken(id) : undefined))
        .filter((text): text is string => text !== undefined),
    };
  }

  /**
   * The KV cache's element type of requests that do not choose one (`loadModel`'s `kvDtype`,
   * "auto" resolved: "f16" on WebGPU devices with `shader-f16`, else "f32").
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const demo = new URL("../../assets/demo/", import.meta.url);
   * const model = await loadModel(demo, { backend: "cpu" });
   * assert.equal(model.kvDtype, "f32"); // the CPU backend's default
   * const f32 = await model.generate({ prompt: "Hi", maxNewTokens: 2 });
   * const f16 = await model.generate({ prompt: "Hi", maxNewTokens: 2, kvDtype: "f16" });
   * assert.equal(f16.stats.kvCache.bytes * 2, f32.stats.kvCache.bytes); // half the bytes, same rows
   * model.dispose();
   * ```
   */
  get kvDtype(): KvDtype {
    return this.#backend.kvDtype;
  }

  /** The policy a request without one runs: "dynamic" when the checkpoint has its predictors, else "dense". */
  get defaultPolicy(): "dynamic" | "dense" {
    try {
      resolvePolicy("dynamic").plan(this.#policyInfo);
      return "dynamic";
    } catch {
      return "dense";
    }
  }

  /**
   * Plans a policy for this model (throws PolicyError when it cannot run here). A user policy's
   * plan is checked, and so is every row selection it makes (indices in range, ascending, text
   * rows and the last row kept).
   */
  planPolicy(policy: GenerateRequest["policy"] = this.defaultPolicy): PolicyPlan {
    const resolved = resolvePolicy(policy);
    return checkedPlan(resolved.plan(this.#policyInfo), {
      numLayers: this.config.text.numLayers,
      name: resolved.name,
    });
  }

  /**
   * Generates text. Await the returned run for the result, or iterate it to stream tokens.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const result = await model.generate({ prompt: "Hello", maxNewTokens: 4 });
   * assert.ok(result.tokens.length >= 1 && result.tokens.length <= 4);
   * assert.equal(result.text, model.tokenizer.decode(result.tokens, { skipSpecialTokens: true }));
   * // Iterating a run streams the same tokens (greedy decoding is deterministic):
   * const streamed: number[] = [];
   * for await (const event of model.generate({ prompt: "Hello", maxNewTokens: 4 })) streamed.push(event.token);
   * assert.deepEqual(streamed, result.tokens);
   * model.dispose();
   * ```
   */
  generate(request: GenerateRequest): GenerateRun {
    let checked: GenerateRequest;
    try {
      checked = validateRequest(request, "", { limits: this.limits });
    } catch (err) {
      return new GenerateRun(() => Promise.reject(err));
    }
    return new GenerateRun((emit) => this.#exclusive(() => this.#generate(checked, emit)));
  }

  /**
   * Answers a conversation: the messages are formatted with the chat template, images go where
   * their parts are, and the run streams like `generate()`. The result's `text` is the reply,
   * `finishReason` says why it ended and `usage` counts the tokens.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const reply = await model.chat({ messages: [{ role: "user", content: "Hi" }], maxNewTokens: 3, stop: ["zzz"] });
   * assert.ok(["stop", "length"].includes(reply.finishReason));
   * assert.equal(reply.usage.completionTokens, reply.tokens.length);
   * model.dispose();
   * ```
   */
  chat(request: ChatRequest): GenerateRun {
    return this.generate(this.chatRequest(request));
  }

  /**
   * The generate request a chat request runs: prompt ids from the chat template (`<image>` markers
   * where the image parts are), the images in order, `</s>` plus the request's stops.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const request = model.chatRequest({ messages: [{ role: "user", content: "Hi" }], stop: ["."] });
   * assert.deepEqual(request.stop, [2, "."]);
   * model.dispose();
   * ```
   */
  chatRequest(request: ChatRequest): GenerateRequest {
    const { messages, stop, ...rest } = request;
    if (!Array.isArray(messages) || messages.length === 0) {
      throw new InputError("Cannot chat: messages must be a non-empty array", "messages");
    }
    const images: ImageInput[] = [];
    const turns = messages.map((message, i) => {
      if (!["system", "user", "assistant"].includes(message?.role)) {
        throw new InputError(
          `Cannot chat: unknown role ${JSON.stringify(message?.role)}`,
          `messages[${i}].role`,
        );
      }
      if (typeof message.content === "string") return { role: message.role, text: message.content };
      if (!Array.isArray(message.content)) {
        throw new InputError(
          "Cannot chat: content must be a string or an array of parts",
          `messages[${i}].content`,
        );
      }
      const pieces = message.content.map((part, j) => {
        if (part?.type === "text" && typeof part.text === "string") return part.text;
        if (part?.type === "image" && part.image !== undefined) {
          images.push(part.image);
          return "<image>";
        }
        throw new InputError(
          'Cannot chat: a part must be { type: "text", text } or { type: "image", image }',
          `messages[${i}].content[${j}]`,
        );
      });
      return { role: message.role, text: pieces.join("\n") };
    });
    const text = formatLlavaV1Chat(turns);
    if (images.length > 0 && !this.config.vision) {
      throw new InputError("Cannot use images: this checkpoint has no vision tower", "messages");
    }
    return {
      ...rest,
      onAbort: rest.onAbort ?? "finish",
      inputIds: encodeWithImages(this.tokenizer, text),
      image: images.length > 0 ? images : undefined,
      stop: [this.tokenizer.eosId, ...(stop ?? [])],
    };
  }

  /**
   * Runs several requests together and streams each: their decode steps share GPU submissions and
   * readbacks, and every run resolves (or fails) on its own. Requests given to `streamBatch` while
   * an earlier batch runs join it (they start at once and decode with it); the model takes its next
   * other call once every member is done. Results equal running them one by one.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const runs = model.streamBatch([{ prompt: "Hi", maxNewTokens: 2 }, { inputIds: [1, 99999] }]);
   * const [joined] = model.streamBatch([{ prompt: "Yo", maxNewTokens: 2 }]); // joins the running batch
   * assert.equal((await runs[0]).tokens.length <= 2, true);
   * await assert.rejects(async () => await runs[1]);
   * assert.equal((await joined).tokens.length <= 2, true);
   * model.dispose();
   * ```
   */
  streamBatch(requests: GenerateRequest[]): GenerateRun[] {
    const group = this.#batchGroup ?? this.#openBatchGroup();
    return requests.map((request) => {
      let checked: GenerateRequest;
      try {
        // Each run fails alone, so its error names the field as generate() does.
        checked = validateRequest(request, "", { limits: this.limits });
      } catch (err) {
        return new GenerateRun(() => Promise.reject(err));
      }
      return group.add(checked);
    });
  }

  /** A batch group: one exclusive turn of the model that lasts while any member runs. */
  #openBatchGroup(): { add(request: GenerateRequest): GenerateRun } {
    const turn = Promise.withResolvers<void>();
    const running = new Set<Promise<unknown>>();
    const group = {
      add: (request: GenerateRequest) => {
        const run = new GenerateRun(async (emit) => {
          await turn.promise;
          if (this.#disposed) throw new InputError("Cannot run: the model was disposed", "model");
          return await this.#generate(request, emit);
        });
        const settled = run.result.then(() => {}, () => {});
        running.add(settled);
        settled.then(() => running.delete(settled));
        return run;
      },
    };
    this.#batchGroup = group;
    const close = () => {
      if (this.#batchGroup === group) this.#batchGroup = null;
    };
    this.#exclusive(async () => {
      turn.resolve();
      // Members may join until the last one is done; no await between that check and closing.
      while (running.size > 0) await Promise.all([...running]);
      close();
    }).catch((err) => {
      close();
      turn.reject(err);
    });
    return group;
  }

  /**
   * Runs several requests together: their decode steps share GPU submissions and readbacks (each
   * sequence keeps its own KV cache, ragged), and results equal running them one by one.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const results = await model.generateBatch([{ prompt: "Hi", maxNewTokens: 2 }, { prompt: "Yo", maxNewTokens: 2 }]);
   * assert.equal(results.length, 2);
   * assert.deepEqual(results[1].tokens, (await model.generate({ prompt: "Yo", maxNewTokens: 2 })).tokens);
   * // settle: each request's outcome; the bad one is refused before any work, the others run.
   * const settled = await model.generateBatch(
   *   [{ prompt: "Hi", maxNewTokens: 2 }, { prompt: "Yo", temperature: "hot" as unknown as number }],
   *   { settle: true },
   * );
   * assert.deepEqual(settled.map((s) => s.status), ["fulfilled", "rejected"]);
   * model.dispose();
   * ```
   */
  generateBatch(requests: GenerateRequest[], options?: { settle?: false }): Promise<GenerateResult[]>;
  /** With `settle: true`: each request's outcome, in order; never rejects for one bad request. */
  generateBatch(
    requests: GenerateRequest[],
    options: { settle: true },
  ): Promise<PromiseSettledResult<GenerateResult>[]>;
  generateBatch(
    requests: GenerateRequest[],
    options: BatchOptions = {},
  ): Promise<GenerateResult[] | PromiseSettledResult<GenerateResult>[]> {
    if (!Array.isArray(requests)) {
      return Promise.reject(new InputError("Cannot generate: requests must be an array", "requests"));
    }
    // Every request is validated before any of them runs; without settle, one bad request stops all.
    const checked: ({ request: GenerateRequest } | { error: unknown })[] = [];
    for (const [i, request] of requests.entries()) {
      try {
        checked.push({ request: validateRequest(request, `requests[${i}]`, { limits: this.limits }) });
      } catch (err) {
        if (!options.settle) return Promise.reject(err);
        checked.push({ error: err });
      }
    }
    const valid = checked.flatMap((c) => ("request" in c ? [c.request] : []));
    const runs = valid.length > 0 ? this.streamBatch(valid) : [];
    let next = 0;
    const outcomes = checked.map((c) => ("request" in c ? runs[next++].result : Promise.reject(c.error)));
    return Promise.allSettled(outcomes).then((settled) => {
      if (options.settle) return settled;
      const failed = settled.find((s) => s.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      return settled.map((s) => (s as PromiseFulfilledResult<GenerateResult>).value);
    });
  }

  /**
   * Logits of the last position (Float32Array of the vocabulary size), with the policy applied.
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const logits = await model.logits({ inputIds: [1, 450] });
   * assert.equal(logits.length, model.config.text.vocabSize); // 952
   * assert.ok(logits.every(Number.isFinite));
   * model.dispose();
   * ```
   */
  logits(
    request: Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy" | "kvDtype">,
  ): Promise<Float32Array> {
    return this.#exclusive(() => {
      const checked = validateRequest(request, "", { limits: this.limits });
      return this.#withSession(checked, {
        maxNewTokens: 1,
        kvCache: true,
        kvDtype: checked.kvDtype,
      }, async (session) => {
        return (await session.prefill({ wantLogits: true })).logits!;
      });
    });
  }

  /**
   * Teacher-forced log-probabilities: log p(target[i] | prompt, target[0..i-1]) for every i, with
   * the policy's sparsification applied as in generation (KV admission with cache, context
   * pruning without). Perplexity = exp(-mean).
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { loadModel } from "../../mod.ts";
   * import { logSoftmaxAt } from "../core/cpu_ops.ts";
   * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
   * const lp = await model.logProbs({ prompt: "Say hi", target: [450, 300] });
   * assert.equal(lp.length, 2);
   * // The first is the log-softmax of the prompt's next-token logits at target[0]:
   * const logits = await model.logits({ prompt: "Say hi" });
   * assert.ok(Math.abs(lp[0] - logSoftmaxAt(logits, 450)) < 1e-4);
   * model.dispose();
   * ```
   */
  logProbs(
    request:
      & Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy" | "kvCache" | "kvDtype">
      & { target: number[] },
  ): Promise<number[]> {
    return this.#exclusive(async () => {
      const { target } = request;
      if (!Array.isArray(target)) {
        throw new InputError("Cannot score: target must be an array of ids", "target");
      }
      const { target: _target, ...rest } = request;
      const checked = validateRequest(rest, "", { limits: this.limits });
      if (target.length === 0) throw new InputError("Cannot score: target is empty", "target");
      for (const [i, id] of target.entries()) {
        if (!Number.isInteger(id) || id < 0 || id >= this.config.text.vocabSize) {
          throw new InputError(`Cannot score: target id ${id} is outside the vocabulary`, `target[${i}]`);
        }
      }
      const kvCache = checked.kvCache ?? true;
      return await this.#withSession(
        checked,
        { maxNewTokens: target.length + 1, kvCache, kvDtype: checked.kvDtype },
        async (session, rows) => {
          if (rows.ids.length + target.length > this.config.text.maxPositions) {
            throw new InputError("Cannot score: prompt + target exceed the context", "target");
          }
          if (kvCache) {
            const first = await session.prefill({ wantLogits: true });
            const lp = [logSoftmaxAt(first.logits!, target[0])];
            if (target.length > 1) {
              for (const value of (await session.decode(target.length - 1, { forced: target })).logProbs!) {
                lp.push(value);
              }
            }
            return lp;
          }
          const lp: number[] = [];
          for (let i = 0; i < target.length; i++) {
            const out = await session.recompute(target.slice(0, i), { wantLogits: true });
            lp.push(logSoftmaxAt(out.logits!, target[i]));
          }
          return lp;
        },
      );
    });
  }

  /** The backend the model runs on. */
  get backendKind(): "cpu" | "webgpu" {
    return this.#backend.kind;
  }

  /** GPU readbacks (buffer maps) the backend has made so far; always 0 on the CPU backend. */
  get readbacks(): number {
    return this.#backend.readbacks;
  }

  /** Decode steps the backend has run for several requests at once so far; 0 on the CPU backend. */
  get batchedSteps(): number {
    return this.#backend.batchedSteps;
  }

  /** Frees the weights and the device. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#backend.dispose();
  }

  /** Prepares `request`, opens a session for it, runs `body`, and frees both whatever happens. */
  async #withSession<T>(
    request: Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy">,
    options: { maxNewTokens: number; kvCache: boolean; kvDtype?: KvDtype },
    body: (session: BackendSession, rows: PromptRows) => Promise<T>,
  ): Promise<T> {
    const { rows, images, plan } = await this.#prepare(request);
    try {
      const session = this.#backend.openSession({
        rows,
        images,
        plan,
        sampling: { temperature: 0, topP: 1, seed: 0 },
        ...options,
      });
      try {
        return await body(session, rows);
      } finally {
        session.dispose();
      }
    } finally {
      images?.dispose();
    }
  }

  #exclusive<T>(run: () => Promise<T>): Promise<T> {
    if (this.#disposed) return Promise.reject(new InputError("Cannot run: the model was disposed", "model"));
    const next = this.#queue.then(run, run);
    this.#queue = next.catch(() => {});
    return next;
  }

  /** Turns a validated request into prompt rows, image features and a plan. */
  async #prepare(request: Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy">) {
    const plan = this.planPolicy(request.policy);
    const imageInputs: ImageInput[] = request.image === undefined
      ? []
      : Array.isArray(request.image)
      ? [...request.image]
      : [request.image];
    if (request.video) {
      const frames = await decodeVideoFrames(request.video.data, {
        frames: request.video.frames,
        maxPixels: this.#maxImagePixels,
      });
      for (const frame of frames) imageInputs.push(frame);
    }
    // The request was checked by validateRequest: prompt xor inputIds, images only with a tower.
    const ids = request.inputIds ??
      encodeWithImages(this.tokenizer, formatLlavaV1(request.prompt!, { images: imageInputs.length }));
    const rows = buildPromptRows(ids, {
      tokensPerImage: this.config.vision?.tokensPerImage ?? 0,
      images: imageInputs.length,
      vocabSize: this.config.text.vocabSize,
      maxPositions: this.config.text.maxPositions,
      imageTokenId: this.config.imageTokenId,
    });
    let images: ImageFeatures | null = null;
    if (imageInputs.length > 0) {
      const v = this.config.vision!;
      const pixels: Float32Array[] = [];
      for (const input of imageInputs) {
        pixels.push(
          await preprocessImage(input, {
            imageSize: v.imageSize,
            mean: v.imageMean,
            std: v.imageStd,
            maxPixels: this.#maxImagePixels,
          }),
        );
      }
      images = await this.#backend.encodeImages(pixels);
    }
    return { rows, images, plan };
  }

  async #generate(request: GenerateRequest, emit: (event: GenerateEvent) => void): Promise<GenerateResult> {
    const { rows, images, plan } = await this.#prepare(request);
    try {
      const stop = request.stop ?? [this.tokenizer.eosId];
      if (!Array.isArray(stop)) throw new InputError("Cannot generate: stop must be an array", "stop");
      const loopRequest: LoopRequest = {
        rows,
        images,
        plan,
        sampling: { temperature: request.temperature ?? 0, topP: request.topP ?? 1, seed: request.seed ?? 0 },
        maxNewTokens: request.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
        stop: stop.filter((s): s is number => typeof s === "number"),
        stopStrings: stop.filter((s): s is string => typeof s !== "number"),
        kvCache: request.kvCache ?? true,
        kvDtype: request.kvDtype,
        signal: request.signal,
        onAbort: request.onAbort,
        // One step per call on the CPU, so the loop yields (to I/O, timers, aborts) after each token.
        decodeBatch: this.#backend.kind === "cpu" ? 1 : 16,
      };
      return await runGeneration(this.#backend, this.tokenizer, this.config, loopRequest, emit);
    } finally {
      images?.dispose();
    }
  }
}

/**
 * Where a checkpoint's files are read: a path or `file:` URL on the file system (or in
 * `options.files`), or an http(s) URL downloaded once into a cache (a folder on disk in Deno; memory
 * and Cache Storage in a page, where a relative URL is taken from the page's address).
 */
async function checkpointSource(
  path: string | URL,
  options: LoadOptions,
): Promise<{ dir: string; files: FileStore }> {
  let text = String(path);
  const page = !hasFileSystem();
  const hasScheme = /^[a-z][a-z0-9+.-]*:/i.test(text);
  if (page && !options.files && !hasScheme && typeof location !== "undefined") {
    text = new URL(text, location.href).href;
  }
  if (/^https?:/.test(text)) {
    const onProgress = options.onProgress;
    const cache = page ? pageCache() : diskCache();
    const dir = await fetchCheckpoint(new URL(text), {
      cache,
      onProgress: onProgress && ((p) => onProgress({ phase: "download", ...p })),
    });
    return { dir, files: cache.files };
  }
  if (options.files) return { dir: text, files: options.files };
  if (page) {
    throw new InputError(
      `Cannot load ${text}: a page has no file system; give the checkpoint's http(s) URL or options.files`,
      text,
    );
  }
  if (/^file:/.test(text)) return { dir: fileURLToPath(text), files: localFiles };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new InputError(`Cannot load ${text}: only paths, file: and http(s): URLs are supported`, text);
  }
  return { dir: text, files: localFiles };
}

/**
 * Loads a checkpoint (any supported layout) onto WebGPU or the CPU. `path` is a directory, a
 * `file:` URL, or an `http(s):` URL whose files are downloaded once into a local cache; or GGUF
 * files in llama.cpp's conventions (a text-model `.gguf`, or a folder holding it with its `mmproj`
 * and Dynamic-LLaVA predictor files). In a page (the browser bundle) `path` is a URL, relative ones
 * taken from the page's address; the files are kept in Cache Storage.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModel } from "../../mod.ts";
 * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
 * assert.equal(model.config.layout, "llava_llama");
 * assert.equal(model.backendKind, "cpu");
 * assert.equal(model.config.sparse?.sparseLayer, 1); // from the sparse_config of assets/demo/config.json
 * model.dispose();
 * // checkTensors: every weight scanned for NaN/Inf while loading.
 * (await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu", checkTensors: true })).dispose();
 * ```
 */
export async function loadModel(path: string | URL, options: LoadOptions = {}): Promise<Model> {
  checkLoadOptions(options);
  const { dir, files } = await checkpointSource(path, options);
  const checkpoint = files === localFiles && await isGgufCheckpoint(dir)
    ? await openGgufCheckpoint(dir)
    : await openCheckpoint(dir, { files });
  const tokenizer = checkpoint.vocab
    ? tokenizerFromPieces(checkpoint.vocab, checkpoint.tokenizerPath)
    : await loadTokenizer(checkpoint.tokenizerPath, { files });
  const config = checkpoint.config;
  checkVocabularies(tokenizer, config, checkpoint.dir);
  if (options.checkTensors) await checkFiniteTensors(checkpoint);
  const names = [...checkpoint.tensors.keys()];
  const policyInfo: PolicyModelInfo = {
    numLayers: config.text.numLayers,
    sparse: config.sparse,
    hasVisionPredictor: names.some((n) => n.startsWith(PREDICTOR_PREFIXES.vision)),
    hasTextPredictor: names.some((n) => n.startsWith(PREDICTOR_PREFIXES.text)),
  };
  const backend = options.backend === "cpu"
    ? await loadCpu(checkpoint, options)
    : await createGpuBackend(checkpoint, {
      onProgress: options.onProgress &&
        ((p) =>
          options.onProgress!({
            phase: "weights",
            loadedBytes: p.loadedBytes,
            totalBytes: p.totalBytes,
            item: p.tensor,
          })),
      weightDtype: options.weightDtype ?? "auto",
      weightStorage: options.weightStorage ?? "auto",
      kvDtype: options.kvDtype ?? "auto",
      fusedKernels: options.fusedKernels ?? true,
    });
  return new Model(config, tokenizer, backend, policyInfo, { maxImagePixels: options.maxImagePixels });
}

function checkLoadOptions(options: LoadOptions): void {
  const backend = options.backend ?? "webgpu";
  if (backend !== "webgpu" && backend !== "cpu") {
    throw new InputError(
      `Cannot load: backend must be "webgpu" or "cpu", got ${JSON.stringify(backend)}`,
      "backend",
    );
  }
  const files = options.files;
  if (
    files !== undefined &&
    !["stat", "list", "read", "readAt"].every((m) => typeof files?.[m as "read"] === "function")
  ) {
    throw new InputError("Cannot load: files must be a FileStore (stat, list, read, readAt)", "files");
  }
  const kvDtype = options.kvDtype ?? "auto";
  if (kvDtype !== "auto" && !KV_DTYPES.includes(kvDtype)) {
    throw new InputError(
      `Cannot load: kvDtype must be "auto", "f16" or "f32", got ${JSON.stringify(kvDtype)}`,
      "kvDtype",
    );
  }
  const pixels = options.maxImagePixels;
  if (pixels !== undefined && !(Number.isSafeInteger(pixels) && pixels > 0)) {
    throw new InputError(
      `Cannot load: maxImagePixels must be a positive integer, got ${pixels}`,
      "maxImagePixels",
    );
  }
}

/**
 * The tokenizer must not make ids the model cannot embed, and must cover the model's vocabulary up
 * to the padding real checkpoints add (vocab_size rounded up to a multiple of 128 at most).
 */
function checkVocabularies(tokenizer: Tokenizer, config: ModelConfig, dir: string): void {
  const model = config.text.vocabSize, ids = tokenizer.vocabSize;
  if (ids > model) {
    throw new CheckpointError(
      `Cannot load checkpoint: the tokenizer has ${ids} ids, more than the model's vocab_size ${model}`,
      dir,
    );
  }
  if (model > Math.ceil(ids / 128) * 128) {
    throw new CheckpointError(
      `Cannot load checkpoint: the tokenizer has ${ids} ids, far fewer than the model's vocab_size ${model}`,
      dir,
    );
  }
}

/** Reads every tensor once and refuses the checkpoint at the first NaN or ±Inf. */
async function checkFiniteTensors(checkpoint: Checkpoint): Promise<void> {
  for (const [name, t] of checkpoint.tensors) {
    const values = await readCheckpointTensor(checkpoint, name);
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        throw new CheckpointError(
          `Cannot load checkpoint: tensor "${t.sourceName}" holds ${values[i]} at index ${i}`,
          t.path,
        );
      }
    }
  }
}

/** Characters of the longest token string: no token covers more of a prompt than this. */
function longestTokenChars(tokenizer: Tokenizer): number {
  let longest = 1;
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    longest = Math.max(longest, tokenizer.idToToken(id)?.length ?? 0);
  }
  return longest;
}

/** Reads every tensor as f32 into memory and builds the CPU backend. */
async function loadCpu(checkpoint: Checkpoint, options: LoadOptions): Promise<Backend> {
  const weights = new Map<string, Float32Array>();
  const total = [...checkpoint.tensors.values()].reduce((n, t) => n + t.byteLength, 0);
  let loaded = 0;
  for (const [name, t] of checkpoint.tensors) {
    weights.set(name, await readCheckpointTensor(checkpoint, name));
    loaded += t.byteLength;
    options.onProgress?.({ phase: "weights", loadedBytes: loaded, totalBytes: total, item: t.sourceName });
  }
  const predictors = loadPredictors(checkpoint.config, (name) => weights.get(name));
  // "auto" is f32 on the CPU: f16 would round without saving time or memory there.
  const kvDtype = options.kvDtype === "f16" ? "f16" : "f32";
  return createCpuBackend(checkpoint.config, weights, predictors, { kvDtype });
}
