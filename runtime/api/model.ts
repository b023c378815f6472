/**
 * `loadModel()` and the {@link Model} users call: `generate()` (awaitable and async-iterable),
 * `generateBatch()`, `logits()`, `logProbs()`, `planPolicy()`, `dispose()`. Turns user requests
 * (prompt or ids, images, policy, sampling) into validated loop requests and runs one call at a time
 * on the chosen backend (a `generateBatch` call runs its requests together).
 * @module
 */
import { fileURLToPath } from "node:url";
import type { Backend, BackendSession, ImageFeatures, LoadProgress } from "../engine/backend.ts";
export type { LoadProgress } from "../engine/backend.ts";
import { type Checkpoint, openCheckpoint, readCheckpointTensor } from "../io/checkpoint.ts";
import type { ModelConfig } from "../core/config.ts";
import { createCpuBackend } from "../cpu/cpu_backend.ts";
import { logSoftmaxAt } from "../core/cpu_ops.ts";
import { InputError } from "../core/errors.ts";
import { type GenerateEvent, type GenerateResult, runGeneration } from "../engine/generate.ts";
import { createGpuBackend } from "../webgpu/gpu_backend.ts";
import { decodeVideoFrames, type RgbImage } from "../image/image_decode.ts";
import type { Policy, PolicyModelInfo, PolicyPlan } from "../core/policy.ts";
import { resolvePolicy } from "../core/policies.ts";
import { loadPredictors } from "../core/predictors.ts";
import { preprocessImage } from "../image/preprocess.ts";
import { fetchCheckpoint } from "../io/remote.ts";
import { buildPromptRows, type PromptRows } from "../core/sequence.ts";
import { encodeWithImages, formatLlavaV1 } from "../text/template.ts";
import { loadTokenizer, type Tokenizer } from "../text/tokenizer.ts";

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
}

/** An image: encoded bytes (PNG, JPEG, WebP, GIF, BMP) or decoded RGB. */
export type ImageInput = Uint8Array | RgbImage;

/** A generation request. */
export interface GenerateRequest {
  /** User prompt, formatted with the llava_v1 template (`<image>` first when images are given). */
  prompt?: string;
  /** Raw ids instead of `prompt`; -200 marks each image. */
  inputIds?: number[];
  /** One image or several (one per marker). */
  image?: ImageInput | ImageInput[];
  /** A video: `frames` evenly spaced frames, each one image. */
  video?: { data: Uint8Array; frames: number };
  /** Most tokens to generate (default 256). */
  maxNewTokens?: number;
  /** ≤ 0 = greedy (default 0). */
  temperature?: number;
  /** Nucleus sampling: sample among the most likely tokens whose probabilities sum to topP (default 1). */
  topP?: number;
  /** Seed of the sampler's random numbers (default 0): the same seed gives the same tokens. */
  seed?: number;
  /** Stop ids; default [`</s>`]; [] never stops early. */
  stop?: number[];
  /** Aborts the run; it then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Sparsification: "dense" (default), "dynamic" (Dynamic-LLaVA), "fastv", or a custom {@link Policy}. */
  policy?: "dense" | "dynamic" | "fastv" | Policy;
  /** false = the paper's no-cache decoding (recompute the context every step). Default true. */
  kvCache?: boolean;
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
  readonly #policyInfo: PolicyModelInfo;
  #queue: Promise<unknown> = Promise.resolve();
  #disposed = false;

  /** Use {@link loadModel}. */
  constructor(config: ModelConfig, tokenizer: Tokenizer, backend: Backend, policyInfo: PolicyModelInfo) {
    this.config = config;
    this.tokenizer = tokenizer;
    this.#backend = backend;
    this.#policyInfo = policyInfo;
  }

  /** Plans a policy for this model (throws PolicyError when it cannot run here). */
  planPolicy(policy: GenerateRequest["policy"] = "dense"): PolicyPlan {
    return resolvePolicy(policy).plan(this.#policyInfo);
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
    return new GenerateRun((emit) => this.#exclusive(() => this.#generate(request, emit)));
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
   * model.dispose();
   * ```
   */
  generateBatch(requests: GenerateRequest[]): Promise<GenerateResult[]> {
    return this.#exclusive(async () => {
      // Every request finishes before the model takes the next call, even when one fails.
      const settled = await Promise.allSettled(requests.map((request) => this.#generate(request, () => {})));
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
   * const logits = await model.logits({ inputIds: [1, 15043] });
   * assert.equal(logits.length, model.config.text.vocabSize); // 32000
   * assert.ok(logits.every(Number.isFinite));
   * model.dispose();
   * ```
   */
  logits(
    request: Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy">,
  ): Promise<Float32Array> {
    return this.#exclusive(() =>
      this.#withSession(request, { maxNewTokens: 1, kvCache: true }, async (session) => {
        return (await session.prefill({ wantLogits: true })).logits!;
      })
    );
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
   * const lp = await model.logProbs({ prompt: "Say hi", target: [6324, 29991] });
   * assert.equal(lp.length, 2);
   * // The first is the log-softmax of the prompt's next-token logits at target[0]:
   * const logits = await model.logits({ prompt: "Say hi" });
   * assert.ok(Math.abs(lp[0] - logSoftmaxAt(logits, 6324)) < 1e-4);
   * model.dispose();
   * ```
   */
  logProbs(
    request: Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy" | "kvCache"> & {
      target: number[];
    },
  ): Promise<number[]> {
    return this.#exclusive(async () => {
      const target = request.target;
      if (target.length === 0) throw new InputError("Cannot score: target is empty", "target");
      for (const [i, id] of target.entries()) {
        if (!Number.isInteger(id) || id < 0 || id >= this.config.text.vocabSize) {
          throw new InputError(`Cannot score: target id ${id} is outside the vocabulary`, `target[${i}]`);
        }
      }
      const kvCache = request.kvCache ?? true;
      return await this.#withSession(
        request,
        { maxNewTokens: target.length + 1, kvCache },
        async (session, rows) => {
          if (rows.ids.length + target.length > this.config.text.maxPositions) {
            throw new InputError("Cannot score: prompt + target exceed the context", "target");
          }
          if (kvCache) {
            const first = await session.prefill({ wantLogits: true });
            const lp = [logSoftmaxAt(first.logits!, target[0])];
            if (target.length > 1) {
              lp.push(...(await session.decode(target.length - 1, { forced: target })).logProbs!);
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
    options: { maxNewTokens: number; kvCache: boolean },
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

  async #prepare(request: Pick<GenerateRequest, "prompt" | "inputIds" | "image" | "video" | "policy">) {
    const plan = this.planPolicy(request.policy);
    const imageInputs = request.image === undefined
      ? []
      : Array.isArray(request.image)
      ? [...request.image]
      : [request.image];
    if (request.video) {
      imageInputs.push(...await decodeVideoFrames(request.video.data, { frames: request.video.frames }));
    }
    if (imageInputs.length > 0 && !this.config.vision) {
      throw new InputError("Cannot use images: this checkpoint has no vision tower", "image");
    }
    let ids: number[];
    if (request.inputIds) {
      if (request.prompt !== undefined) {
        throw new InputError("Cannot generate: give prompt or inputIds, not both", "prompt");
      }
      ids = request.inputIds;
    } else if (typeof request.prompt === "string") {
      ids = encodeWithImages(this.tokenizer, formatLlavaV1(request.prompt, { images: imageInputs.length }));
    } else {
      throw new InputError("Cannot generate: prompt or inputIds is required", "prompt");
    }
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
          await preprocessImage(input, { imageSize: v.imageSize, mean: v.imageMean, std: v.imageStd }),
        );
      }
      images = await this.#backend.encodeImages(pixels);
    }
    return { rows, images, plan };
  }

  async #generate(request: GenerateRequest, emit: (event: GenerateEvent) => void): Promise<GenerateResult> {
    const { rows, images, plan } = await this.#prepare(request);
    try {
      return await runGeneration(this.#backend, this.tokenizer, this.config, {
        rows,
        images,
        plan,
        sampling: { temperature: request.temperature ?? 0, topP: request.topP ?? 1, seed: request.seed ?? 0 },
        maxNewTokens: request.maxNewTokens ?? 256,
        stop: request.stop ?? [this.tokenizer.eosId],
        kvCache: request.kvCache ?? true,
        signal: request.signal,
        // GPU steps per submission; the CPU has no submission to amortise, so it steps one at a
        // time (an abort is then honoured after the token it was raised on).
        decodeBatch: this.#backend.kind === "cpu" ? 1 : 16,
      }, emit);
    } finally {
      images?.dispose();
    }
  }
}

/** A local directory for a path, a file: URL, or an http(s) URL (downloaded once into a cache). */
async function localDir(path: string | URL): Promise<string> {
  const text = String(path);
  if (/^file:/.test(text)) return fileURLToPath(text);
  if (/^https?:/.test(text)) return await fetchCheckpoint(new URL(text));
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new InputError(`Cannot load ${text}: only paths, file: and http(s): URLs are supported`, text);
  }
  return text;
}

/**
 * Loads a checkpoint (any supported layout) onto WebGPU or the CPU. `path` is a directory, a
 * `file:` URL, or an `http(s):` URL whose files are downloaded once into a local cache.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModel } from "../../mod.ts";
 * const model = await loadModel(new URL("../../assets/demo/", import.meta.url), { backend: "cpu" });
 * assert.equal(model.config.layout, "llava_llama");
 * assert.equal(model.backendKind, "cpu");
 * assert.equal(model.config.sparse?.sparseLayer, 2); // from the sparse_config of assets/demo/config.json
 * model.dispose();
 * ```
 */
export async function loadModel(path: string | URL, options: LoadOptions = {}): Promise<Model> {
  const dir = await localDir(path);
  const checkpoint = await openCheckpoint(dir);
  const tokenizer = await loadTokenizer(checkpoint.tokenizerPath);
  const config = checkpoint.config;
  const policyInfo: PolicyModelInfo = {
    numLayers: config.text.numLayers,
    sparse: config.sparse,
    hasVisionPredictor: [...checkpoint.tensors.keys()].some((n) => n.startsWith("image_score_predictor.")),
    hasTextPredictor: [...checkpoint.tensors.keys()].some((n) =>
      n.startsWith("output_text_score_predictor.")
    ),
  };
  const backend = options.backend === "cpu"
    ? await loadCpu(checkpoint, options)
    : await createGpuBackend(checkpoint, {
      onProgress: options.onProgress,
      weightDtype: options.weightDtype ?? "auto",
    });
  return new Model(config, tokenizer, backend, policyInfo);
}

/** Reads every tensor as f32 into memory and builds the CPU backend. */
async function loadCpu(checkpoint: Checkpoint, options: LoadOptions): Promise<Backend> {
  const weights = new Map<string, Float32Array>();
  const total = [...checkpoint.tensors.values()].reduce((n, t) => n + t.location.entry.byteLength, 0);
  let loaded = 0;
  for (const [name, t] of checkpoint.tensors) {
    weights.set(name, await readCheckpointTensor(checkpoint, name));
    loaded += t.location.entry.byteLength;
    options.onProgress?.({ loadedBytes: loaded, totalBytes: total, tensor: t.sourceName });
  }
  const predictors = loadPredictors(checkpoint.config, (name) => weights.get(name));
  return createCpuBackend(checkpoint.config, weights, predictors);
}
