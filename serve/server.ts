/**
 * An OpenAI-compatible HTTP handler around one model, independent of the HTTP server that calls it
 * (`Deno.serve` in examples/serve.ts): `POST /v1/chat/completions` (JSON or server-sent events),
 * `GET /v1/models`, `GET /health` (503 until {@link ChatServer.ready} is called, so a server can
 * listen while the model loads). Bearer API key, CORS for one origin, a body-size limit, OpenAI's
 * error shape with the right status before any stream starts, 405 for a wrong method.
 *
 * Every request joins the model's running batch (`model.streamBatch`: decode steps shared), up to
 * `maxBatch` at a time; a client that disconnects aborts its request, which stops within one
 * decode step.
 * @module
 */
import type { GenerateRequest, GenerateResult, GenerateRun, Model } from "../mod.ts";
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

/**
 * Starts each request in the model's running batch (`streamBatch` joins it, so its decode steps
 * are shared), with at most `maxBatch` running; the others wait their turn in arrival order.
 */
class BatchQueue {
  readonly #model: Model;
  readonly #maxBatch: number;
  #waiting: { request: GenerateRequest; start: (started: { run: GenerateRun }) => void }[] = [];
  #running = 0;

  constructor(model: Model, maxBatch: number) {
    this.#model = model;
    this.#maxBatch = maxBatch;
  }

  /** Resolves with the request's run once it starts (wrapped: a run is itself awaitable). */
  submit(request: GenerateRequest): Promise<{ run: GenerateRun }> {
    return new Promise((start) => {
      this.#waiting.push({ request, start });
      this.#startWaiting();
    });
  }

  #startWaiting(): void {
    while (this.#running < this.#maxBatch && this.#waiting.length > 0) {
      const { request, start } = this.#waiting.shift()!;
      const [run] = this.#model.streamBatch([request]);
      this.#running++;
      run.result.catch(() => {}).finally(() => {
        this.#running--;
        this.#startWaiting();
      });
      start({ run });
    }
  }
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
    const { run } = await queue.submit(generateRequest);
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
      queue = new BatchQueue(loaded, options.maxBatch ?? 8);
    },
  };
}
