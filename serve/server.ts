/**
 * An OpenAI-compatible HTTP handler around one model, independent of the HTTP server that calls it
 * (`Deno.serve` in examples/serve.ts): `POST /v1/chat/completions` (JSON or server-sent events),
 * `GET /v1/models`, `GET /health` (503 until {@link ChatServer.ready} is called, so a server can
 * listen while the model loads), `GET /v1/dynllava/status` (its K/V memory: budget, reserved, free,
 * and the model's config, for an edge router such as examples/edge_router.ts). Bearer API key, CORS
 * for one origin, a body-size limit, OpenAI's error shape with the right status before any stream
 * starts, 405 for a wrong method.
 *
 * Every request joins the model's running batch (`model.streamBatch`: decode steps shared), up to
 * `maxBatch` at a time and, with `kvBudgetBytes`, as many as the memory planner (core's
 * `MemoryPlanner`) fits in that K/V budget, in arrival order; each reserves its planned K/V bytes
 * until it ends, and its measured `stats.kvCache` tightens the planner. A request larger than the
 * whole budget is a 400 (`kv_budget_exceeded`). A client that disconnects aborts its request, which
 * stops within one decode step.
 * @module
 */
import {
  DEFAULT_MAX_NEW_TOKENS,
  type GenerateRequest,
  type GenerateResult,
  type GenerateRun,
  IMAGE_TOKEN_INDEX,
  MemoryPlanner,
  type Model,
  type PlannedRequest,
} from "../mod.ts";
import {
  ApiError,
  apiErrorOf,
  completionChunk,
  type CompletionMeta,
  completionObject,
  type ImageFetcher,
  parseCompletion,
} from "./openai.ts";

/** Options of {@link createChatServer}. */
export interface ServerOptions {
  /** The id clients name in `model` and see in `/v1/models`. */
  modelName: string;
  /** When set, `/v1/*` needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** The one origin allowed to call from a browser ("*" for any); CORS is off without it. */
  cors?: string;
  /** Largest request body, and largest image fetched from a URL (default 32 MiB). */
  maxBodyBytes?: number;
  /** Most requests decoded together; later ones wait (default 8). */
  maxBatch?: number;
  /** Reads http(s) image URLs (default: `fetch` with the body limit and a 30 s timeout). */
  fetchImage?: ImageFetcher;
  /**
   * K/V cache bytes the running requests may reserve together (the memory planner's budget; K/V
   * assumed f32 until a request is measured). Default: no limit but `maxBatch`.
   */
  kvBudgetBytes?: number;
}

/** The handler and the switch that makes it serve a model. */
export interface ChatServer {
  handler(request: Request): Promise<Response>;
  /** Serves `model` from now on. */
  ready(model: Model): void;
}

const ROUTES: Record<string, string[]> = {
  "/health": ["GET"],
  "/v1/models": ["GET"],
  "/v1/chat/completions": ["POST"],
  "/v1/dynllava/status": ["GET"],
};

/** Reads a stream into bytes, failing with 413 past `limit` bytes. */
async function readLimited(body: ReadableStream<Uint8Array> | null, limit: number, what: string) {
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (body) {
    for await (const chunk of body) {
      size += chunk.length;
      if (size > limit) {
        throw new ApiError(413, `Cannot read ${what}: it is larger than ${limit} bytes`, {
          code: "too_large",
        });
      }
      chunks.push(chunk);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) bytes.set(chunk, (at += chunk.length) - chunk.length);
  return bytes;
}

/** The default {@link ImageFetcher}: GET with a timeout and a size limit. */
function urlFetcher(limit: number): ImageFetcher {
  return async (url, param) => {
    let response: Response;
    try {
      response = await fetch(url, { signal: AbortSignal.timeout(30_000) });
    } catch (err) {
      throw new ApiError(400, `Cannot fetch the image ${url}: ${(err as Error).message}`, { param });
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw new ApiError(400, `Cannot fetch the image ${url}: HTTP ${response.status}`, { param });
    }
    return await readLimited(response.body, limit, `the image ${url}`);
  };
}

/** A queued request: its generate request, its plan and K/V reservation, and its start callback. */
interface QueuedRequest {
  request: GenerateRequest;
  planned: PlannedRequest;
  bytes: number;
  start: (started: { run: GenerateRun }) => void;
}

/**
 * Starts each request in the model's running batch (`streamBatch` joins it, so its decode steps
 * are shared), with at most `maxBatch` running and their K/V reservations within the planner's
 * budget; the others wait their turn in arrival order.
 */
class BatchQueue {
  readonly #model: Model;
  readonly #maxBatch: number;
  readonly planner: MemoryPlanner;
  #waiting: QueuedRequest[] = [];
  #running = 0;
  #reservedBytes = 0;

  constructor(model: Model, maxBatch: number, planner: MemoryPlanner) {
    this.#model = model;
    this.#maxBatch = maxBatch;
    this.planner = planner;
  }

  /** Requests running, waiting, and the K/V bytes each group reserves. */
  get load(): { running: number; waiting: number; reservedBytes: number; waitingBytes: number } {
    return {
      running: this.#running,
      waiting: this.#waiting.length,
      reservedBytes: this.#reservedBytes,
      waitingBytes: this.#waiting.reduce((sum, queued) => sum + queued.bytes, 0),
    };
  }

  /**
   * Resolves with the request's run once it starts (wrapped: a run is itself awaitable); a request
   * larger than the whole K/V budget is a 400.
   */
  submit(request: GenerateRequest, planned: PlannedRequest): Promise<{ run: GenerateRun }> {
    const bytes = this.planner.requestBytes(planned);
    if (bytes > this.planner.kvBudgetBytes) {
      throw new ApiError(
        400,
        `Cannot admit the request: its K/V cache is planned at ${bytes} bytes, more than the server's ` +
          `budget of ${this.planner.kvBudgetBytes}; ask for fewer max_tokens`,
        { param: "max_tokens", code: "kv_budget_exceeded" },
      );
    }
    return new Promise((start) => {
      this.#waiting.push({ request, planned, bytes, start });
      this.#startWaiting();
    });
  }

  #startWaiting(): void {
    while (this.#running < this.#maxBatch && this.#waiting.length > 0) {
      const { request, planned, bytes, start } = this.#waiting[0];
      if (this.#reservedBytes + bytes > this.planner.kvBudgetBytes) return; // no overtaking
      this.#waiting.shift();
      const [run] = this.#model.streamBatch([request]);
      this.#running++;
      this.#reservedBytes += bytes;
      run.result.then(
        (result) => this.planner.observe(planned, result.stats),
        () => {},
      ).finally(() => {
        this.#running--;
        this.#reservedBytes -= bytes;
        this.#startWaiting();
      });
      start({ run });
    }
  }
}

/** The planner's view of a chat request: text tokens, images, length, policy, KV mode. */
function plannedRequest(
  request: GenerateRequest,
  policy: string,
  imageTokenId: number | null,
): PlannedRequest {
  const ids = request.inputIds ?? [];
  const isImage = (id: number) => id === IMAGE_TOKEN_INDEX || id === imageTokenId;
  return {
    id: "request",
    policy: policy === "dense" || policy === "fastv" ? policy : "dynamic",
    promptTokens: ids.filter((id) => !isImage(id)).length,
    images: ids.filter(isImage).length,
    maxNewTokens: request.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS,
    kvCache: request.kvCache ?? true,
  };
}

function bearerMatches(header: string | null, key: string): boolean {
  const given = new TextEncoder().encode(header ?? "");
  const wanted = new TextEncoder().encode(`Bearer ${key}`);
  let diff = given.length ^ wanted.length;
  for (let i = 0; i < wanted.length; i++) diff |= wanted[i] ^ (given[i] ?? 0);
  return diff === 0;
}

/**
 * Creates the OpenAI-compatible handler; it answers 503 until `ready(model)`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModel } from "../mod.ts";
 * import { createChatServer } from "./server.ts";
 * const server = createChatServer({ modelName: "demo" });
 * assert.equal((await server.handler(new Request("http://x/health"))).status, 503);
 * const model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
 * server.ready(model);
 * const response = await server.handler(new Request("http://x/v1/chat/completions", {
 *   method: "POST",
 *   body: JSON.stringify({ model: "demo", messages: [{ role: "user", content: "Hi" }], max_tokens: 2 }),
 * }));
 * assert.equal((await response.json()).object, "chat.completion");
 * model.dispose();
 * ```
 */
export function createChatServer(options: ServerOptions): ChatServer {
  const maxBodyBytes = options.maxBodyBytes ?? 32 * 2 ** 20;
  const fetchImage = options.fetchImage ?? urlFetcher(maxBodyBytes);
  const created = Math.floor(Date.now() / 1000);
  let model: Model | null = null;
  let queue: BatchQueue | null = null;

  const corsHeaders = (): Record<string, string> =>
    options.cors ? { "access-control-allow-origin": options.cors, vary: "origin" } : {};
  const json = (value: unknown, status = 200, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify(value), {
      status,
      headers: { "content-type": "application/json", ...corsHeaders(), ...headers },
    });

  async function route(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname.replace(/\/+$/, "") || "/";
    const modelPath = path.startsWith("/v1/models/") ? "/v1/models" : path;
    const methods = ROUTES[modelPath];
    if (!methods) throw new ApiError(404, `Cannot route ${path}: no such path`, { code: "not_found" });
    if (request.method === "OPTIONS" && options.cors) {
      return new Response(null, {
        status: 204,
        headers: {
          ...corsHeaders(),
          "access-control-allow-methods": [...methods, "OPTIONS"].join(", "),
          "access-control-allow-headers": "authorization, content-type",
          "access-control-max-age": "600",
        },
      });
    }
    if (!methods.includes(request.method)) {
      throw new ApiError(405, `Cannot ${request.method} ${path}: use ${methods.join(" or ")}`, {
        code: "method_not_allowed",
      });
    }
    if (path === "/health") {
      if (!model) return json({ status: "loading" }, 503);
      return json({
        status: "ok",
        model: options.modelName,
        layout: model.config.layout,
        backend: model.backendKind,
        default_policy: model.defaultPolicy,
        vocab_size: model.config.text.vocabSize,
        visual_tokens: model.config.vision?.tokensPerImage ?? 0,
      });
    }
    if (
      options.apiKey !== undefined && !bearerMatches(request.headers.get("authorization"), options.apiKey)
    ) {
      throw new ApiError(401, "Cannot authorize: give the API key as `Authorization: Bearer KEY`", {
        code: "invalid_api_key",
      });
    }
    if (path === "/v1/dynllava/status") {
      if (!model || !queue) {
        throw new ApiError(503, "Cannot answer yet: the model is loading", {
          code: "loading",
          type: "server_error",
        });
      }
      return json(statusOf(model, queue));
    }
    if (modelPath === "/v1/models") {
      const card = { id: options.modelName, object: "model", created, owned_by: "dynllava" };
      if (path === "/v1/models") return json({ object: "list", data: [card] });
      if (decodeURIComponent(path.slice("/v1/models/".length)) !== options.modelName) {
        throw new ApiError(404, `Cannot find model ${path.slice(11)}`, { code: "model_not_found" });
      }
      return json(card);
    }
    if (!model || !queue) {
      throw new ApiError(503, "Cannot answer yet: the model is loading", {
        code: "loading",
        type: "server_error",
      });
    }
    return await complete(request, model, queue);
  }

  async function complete(request: Request, model: Model, queue: BatchQueue): Promise<Response> {
    const length = Number(request.headers.get("content-length") ?? 0);
    if (length > maxBodyBytes) {
      throw new ApiError(413, `Cannot read the body: it is larger than ${maxBodyBytes} bytes`, {
        code: "too_large",
      });
    }
    const text = new TextDecoder().decode(await readLimited(request.body, maxBodyBytes, "the body"));
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new ApiError(400, "Cannot read the request: the body is not valid JSON", { param: "body" });
    }
    const parsed = await parseCompletion(body, { fetchImage });
    if (parsed.model !== options.modelName) {
      throw new ApiError(404, `Cannot find model ${parsed.model}: this server has ${options.modelName}`, {
        param: "model",
        code: "model_not_found",
      });
    }
    const abort = new AbortController();
    const generateRequest = model.chatRequest({ ...parsed.request, signal: abort.signal, onAbort: "finish" });
    const meta: CompletionMeta = {
      id: `chatcmpl-${crypto.randomUUID()}`,
      created: Math.floor(Date.now() / 1000),
      model: options.modelName,
      policy: typeof generateRequest.policy === "string" ? generateRequest.policy : model.defaultPolicy,
      kvCache: generateRequest.kvCache ?? true,
    };
    const planned = plannedRequest(generateRequest, meta.policy, model.config.imageTokenId);
    const { run } = await queue.submit(generateRequest, planned);
    const events = run[Symbol.asyncIterator]();
    // Failures before the first token (bad image, prompt too long, policy) get their own status.
    const first = await events.next();
    const encoder = new TextEncoder();
    let cancelled = false;
    const body$ = new ReadableStream<Uint8Array>({
      async start(controller) {
        const send = (text: string) => {
          if (!cancelled) controller.enqueue(encoder.encode(text));
        };
        const sse = (value: unknown) => send(`data: ${JSON.stringify(value)}\n\n`);
        try {
          if (parsed.stream) {
            if (!first.done) sse(completionChunk(meta, { content: first.value.text, first: true }));
            for (let next = await events.next(); !next.done; next = await events.next()) {
              if (next.value.text) sse(completionChunk(meta, { content: next.value.text }));
            }
            const result: GenerateResult = await run;
            sse(completionChunk(meta, { result }));
            if (parsed.includeUsage) sse(completionChunk(meta, { result, usage: true }));
            send("data: [DONE]\n\n");
          } else {
            send(JSON.stringify(completionObject(await run, meta)));
          }
        } catch (err) {
          const error = apiErrorOf(err).toJSON();
          send(parsed.stream ? `data: ${JSON.stringify(error)}\n\n` : JSON.stringify(error));
        }
        if (!cancelled) controller.close();
      },
      cancel() {
        cancelled = true;
        abort.abort();
      },
    });
    return new Response(body$, {
      headers: {
        "content-type": parsed.stream ? "text/event-stream" : "application/json",
        "cache-control": "no-cache",
        ...corsHeaders(),
      },
    });
  }

  function statusOf(model: Model, queue: BatchQueue) {
    const load = queue.load, budget = queue.planner.kvBudgetBytes;
    return {
      object: "dynllava.status",
      model: options.modelName,
      default_policy: model.defaultPolicy,
      max_batch: options.maxBatch ?? 8,
      running: load.running,
      waiting: load.waiting,
      kv_budget_bytes: Number.isFinite(budget) ? budget : null,
      kv_reserved_bytes: load.reservedBytes,
      kv_waiting_bytes: load.waitingBytes,
      kv_free_bytes: Number.isFinite(budget) ? budget - load.reservedBytes : null,
      kv_bytes_per_element: queue.planner.bytesPerElement,
      text_keep_rate: queue.planner.textKeepRate,
      config: model.config,
    };
  }

  return {
    async handler(request) {
      try {
        return await route(request);
      } catch (err) {
        const error = apiErrorOf(err);
        const methods = ROUTES[new URL(request.url).pathname.replace(/\/+$/, "")] ?? [];
        const allow: Record<string, string> = error.status === 405 ? { allow: methods.join(", ") } : {};
        return json(error.toJSON(), error.status, allow);
      }
    },
    ready(loaded) {
      model = loaded;
      const planner = new MemoryPlanner({
        config: loaded.config,
        budgetBytes: options.kvBudgetBytes ?? Infinity,
        kvDtype: loaded.kvDtype,
      });
      queue = new BatchQueue(loaded, options.maxBatch ?? 8, planner);
    },
  };
}
