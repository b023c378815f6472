/**
 * An edge router in front of `deno task serve` GPU workers: a `Deno.serve` handler that imports only
 * `core.ts` (no GPU, no files, so it runs on Deno Deploy) and forwards OpenAI-style
 * `POST /v1/chat/completions` requests to the worker with the most free K/V memory, or queues them
 * until one has room.
 *
 * ```sh
 * DYNLLAVA_WORKERS=http://gpu-1:8000,http://gpu-2:8000 deno run --allow-net --allow-env examples/edge_router.ts
 * ```
 * Environment: `DYNLLAVA_WORKERS` (comma-separated base URLs), `PORT` (default 8000),
 * `DYNLLAVA_WORKER_KEY` (API key sent to the workers), `DYNLLAVA_API_KEY` (key clients must send).
 *
 * Each worker reports its K/V budget, reservations and model config at `GET /v1/dynllava/status`
 * (serve/server.ts, started with `--kv-budget-mib`). Per worker the router keeps a `MemoryPlanner`
 * built from that config: a request reserves its planned K/V bytes (its prompt estimated from its
 * text, `max_tokens`, images, policy and KV mode; the expected keep rates), and goes to the worker
 * where it fits with the most memory left (ties: fewer requests in flight, then list order). Used
 * memory of a worker = the larger of what this router has in flight there and what the worker
 * reserves, so traffic from elsewhere counts too. Requests wait in arrival order while none fits
 * (no overtaking); a request larger than every worker's whole budget is a 400
 * (`kv_budget_exceeded`). A worker whose status does not answer is skipped until it does; a
 * forward that fails to connect goes back to the head of the queue. A reservation ends when the
 * response has been passed on; the `dynllava` fields of finished completions (non-streamed, or
 * streamed with `include_usage`) are measured `stats.kvCache` and tighten the planner.
 *
 * Routes: `POST /v1/chat/completions`, `GET /v1/models` (from the first live worker), `GET /health`
 * (the router's view: workers, free memory, queue). Errors use OpenAI's shape.
 * @module
 */
import {
  DEFAULT_MAX_NEW_TOKENS,
  DEFAULT_PROMPT_TOKENS,
  MemoryPlanner,
  type PlannedRequest,
} from "../core.ts";

/** Options of {@link createEdgeRouter}. */
export interface EdgeRouterOptions {
  /** Base URLs of the workers, e.g. `http://gpu-1:8000`. */
  workers: string[];
  /** Sent to the workers as `Authorization: Bearer KEY`. */
  workerApiKey?: string;
  /** When set, clients must send `Authorization: Bearer KEY`. */
  apiKey?: string;
  /** Most requests waiting; more are answered 429 (default 256). */
  maxQueue?: number;
  /** Largest request body (default 32 MiB). */
  maxBodyBytes?: number;
  /** How long a worker's status may take before it counts as down (default 2000 ms). */
  statusTimeoutMs?: number;
  /** While requests wait, how often the workers are asked again (default 250 ms). */
  pollMs?: number;
}

/** One worker as the router sees it. */
export interface WorkerView {
  url: string;
  /** Its status answered at the last look. */
  up: boolean;
  /** Its K/V budget (null: unlimited, or never seen). */
  kvBudgetBytes: number | null;
  /** Budget minus the memory counted as used (null when unlimited or never seen). */
  kvFreeBytes: number | null;
  /** Requests this router has in flight there, and their reserved K/V bytes. */
  inFlight: number;
  inFlightBytes: number;
  /** Requests forwarded there so far. */
  forwarded: number;
}

/** The router: its handler, its view of the workers and queue, and a way to stop it. */
export interface EdgeRouter {
  handler(request: Request): Promise<Response>;
  /** Requests waiting, and each worker's state. */
  status(): { queued: number; workers: WorkerView[] };
  /** Stops polling and answers every waiting request with 503. */
  close(): void;
}

/** The fields of a worker's `GET /v1/dynllava/status` the router reads. */
interface WorkerStatus {
  default_policy: "dense" | "dynamic";
  kv_budget_bytes: number | null;
  kv_reserved_bytes: number;
  kv_waiting_bytes: number;
  kv_bytes_per_element: number;
  config: unknown;
}

interface Worker {
  url: string;
  up: boolean;
  status: WorkerStatus | null;
  planner: MemoryPlanner | null;
  plannerBudget: number | null;
  inFlight: number;
  inFlightBytes: number;
  forwarded: number;
}

/** What the router reads from a completion request's body. */
interface RequestShape {
  policy: PlannedRequest["policy"];
  promptTokens: number;
  images: number;
  maxNewTokens: number;
  kvCache: boolean;
}

interface Queued {
  body: Uint8Array<ArrayBuffer>;
  shape: RequestShape;
  signal: AbortSignal;
  resolve: (response: Response) => void;
}

type Choice = { kind: "forward"; worker: Worker; bytes: number } | { kind: "wait" } | {
  kind: "refuse";
  response: Response;
};

const JSON_HEADERS = { "content-type": "application/json" };

function apiError(status: number, message: string, code: string, type = "invalid_request_error"): Response {
  return new Response(JSON.stringify({ error: { message, type, param: null, code } }), {
    status,
    headers: JSON_HEADERS,
  });
}

/**
 * The planner's view of a chat completion body: text tokens estimated at 48 (the llava_v1 template
 * around a short question) + one per two UTF-8 bytes of text (LLaMA's vocabulary averages about
 * four), images counted from `image_url` parts, `max_tokens` (or `max_completion_tokens`, default
 * 256), `policy` and `kv_cache`. Fields the worker will refuse are left for it to name.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { requestShape } from "./edge_router.ts";
 * const shape = requestShape({
 *   messages: [{ role: "user", content: [{ type: "text", text: "What is it?" }, { type: "image_url", image_url: { url: "x" } }] }],
 *   max_tokens: 32,
 * });
 * assert.deepEqual(shape, { policy: undefined, promptTokens: 48 + 6, images: 1, maxNewTokens: 32, kvCache: true });
 * ```
 */
export function requestShape(body: unknown): RequestShape {
  const b = (typeof body === "object" && body !== null ? body : {}) as Record<string, unknown>;
  let textBytes = 0, images = 0;
  const encoder = new TextEncoder();
  for (const message of Array.isArray(b.messages) ? b.messages : []) {
    const content = (message as { content?: unknown } | null)?.content;
    if (typeof content === "string") textBytes += encoder.encode(content).length;
    for (const part of Array.isArray(content) ? content : []) {
      const p = part as { type?: unknown; text?: unknown } | null;
      if (p?.type === "image_url") images++;
      if (p?.type === "text" && typeof p.text === "string") textBytes += encoder.encode(p.text).length;
    }
  }
  const maxTokens = b.max_completion_tokens ?? b.max_tokens;
  const policy = b.policy === "dense" || b.policy === "fastv" || b.policy === "dynamic"
    ? b.policy
    : undefined;
  return {
    policy,
    promptTokens: DEFAULT_PROMPT_TOKENS + Math.ceil(textBytes / 2),
    images,
    maxNewTokens: Number.isSafeInteger(maxTokens) && (maxTokens as number) > 0
      ? maxTokens as number
      : DEFAULT_MAX_NEW_TOKENS,
    kvCache: b.kv_cache !== false,
  };
}

/** A body's bytes, or null past `limit` bytes (it stops reading there). */
async function readLimited(
  stream: ReadableStream<Uint8Array> | null,
  limit: number,
): Promise<Uint8Array<ArrayBuffer> | null> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of stream ?? []) {
    size += chunk.length;
    if (size > limit) return null;
    chunks.push(chunk);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) bytes.set(chunk, (at += chunk.length) - chunk.length);
  return bytes;
}

function bearerMatches(header: string | null, key: string): boolean {
  const given = new TextEncoder().encode(header ?? "");
  const wanted = new TextEncoder().encode(`Bearer ${key}`);
  let diff = given.length ^ wanted.length;
  for (let i = 0; i < wanted.length; i++) diff |= wanted[i] ^ (given[i] ?? 0);
  return diff === 0;
}

/** The `dynllava` and `usage` fields of a finished completion's text (JSON or server-sent events). */
function measuredFields(
  text: string,
): { dynllava: Record<string, unknown>; usage: Record<string, number> } | null {
  const candidates = text.trimStart().startsWith("{")
    ? [text]
    : text.split("\n").filter((line) => line.startsWith("data: {")).map((line) => line.slice(6));
  for (const candidate of candidates.reverse()) {
    try {
      const parsed = JSON.parse(candidate);
      if (parsed?.dynllava && parsed?.usage) return parsed;
    } catch {
      // not a complete JSON object: nothing to learn from it
    }
  }
  return null;
}

/**
 * Creates the router (see the module notes). Call `close()` when done.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createEdgeRouter } from "./edge_router.ts";
 * const router = createEdgeRouter({ workers: [] });
 * const health = await router.handler(new Request("http://router/health"));
 * assert.equal(health.status, 503); // no worker answers
 * assert.deepEqual((await health.json()).workers, []);
 * router.close();
 * ```
 */
export function createEdgeRouter(options: EdgeRouterOptions): EdgeRouter {
  const workers: Worker[] = options.workers.map((url) => ({
    url: url.replace(/\/+$/, ""),
    up: false,
    status: null,
    planner: null,
    plannerBudget: null,
    inFlight: 0,
    inFlightBytes: 0,
    forwarded: 0,
  }));
  const maxQueue = options.maxQueue ?? 256;
  const maxBodyBytes = options.maxBodyBytes ?? 32 * 2 ** 20;
  const queue: Queued[] = [];
  const workerHeaders: Record<string, string> = options.workerApiKey
    ? { authorization: `Bearer ${options.workerApiKey}` }
    : {};
  let pumping = false, again = false, closed = false;
  let timer: ReturnType<typeof setTimeout> | null = null;

  async function refresh(worker: Worker): Promise<void> {
    const abort = new AbortController();
    const timeout = setTimeout(() => abort.abort(), options.statusTimeoutMs ?? 2000);
    try {
      const response = await fetch(`${worker.url}/v1/dynllava/status`, {
        headers: workerHeaders,
        signal: abort.signal,
      });
      if (!response.ok) {
        await response.body?.cancel();
        worker.up = false;
        return;
      }
      const status = await response.json() as WorkerStatus;
      const budget = status.kv_budget_bytes ?? Infinity;
      if (worker.planner === null || worker.plannerBudget !== budget) {
        worker.planner = new MemoryPlanner({
          config: status.config,
          budgetBytes: budget,
          kvDtype: status.kv_bytes_per_element === 2 ? "f16" : "f32",
        });
        worker.plannerBudget = budget;
      }
      worker.status = status;
      worker.up = true;
    } catch {
      worker.up = false;
    } finally {
      clearTimeout(timeout);
    }
  }

  function usedBytes(worker: Worker): number {
    const reported = (worker.status?.kv_reserved_bytes ?? 0) + (worker.status?.kv_waiting_bytes ?? 0);
    return Math.max(worker.inFlightBytes, reported);
  }

  function choose(entry: Queued): Choice {
    let best: { worker: Worker; bytes: number; free: number } | null = null;
    let anyCouldFit = false;
    let lastError = "";
    for (const worker of workers) {
      if (!worker.up || !worker.planner || !worker.status) continue;
      let admission;
      try {
        admission = worker.planner.admit(
          [{ id: "r", ...entry.shape, policy: entry.shape.policy ?? worker.status.default_policy }],
          { usedBytes: Math.min(usedBytes(worker), worker.planner.kvBudgetBytes) },
        );
      } catch (error) {
        lastError = (error as Error).message;
        continue;
      }
      if (admission.refused.length === 0) anyCouldFit = true;
      if (admission.admitted.length === 0) continue;
      const better = best === null || admission.freeBytes > best.free ||
        (admission.freeBytes === best.free && worker.inFlight < best.worker.inFlight);
      if (better) best = { worker, bytes: admission.bytes.r, free: admission.freeBytes };
    }
    if (best) return { kind: "forward", worker: best.worker, bytes: best.bytes };
    if (anyCouldFit) return { kind: "wait" };
    if (!workers.some((worker) => worker.up)) {
      return {
        kind: "refuse",
        response: apiError(503, "Cannot route: no worker answers", "no_worker", "server_error"),
      };
    }
    return {
      kind: "refuse",
      response: apiError(
        400,
        lastError ||
          "Cannot route: the request's K/V cache is larger than every worker's budget; ask for fewer max_tokens",
        lastError ? "invalid_request" : "kv_budget_exceeded",
      ),
    };
  }

  function armTimer(): void {
    if (timer !== null || closed) return;
    timer = setTimeout(() => {
      timer = null;
      void pump();
    }, options.pollMs ?? 250);
  }

  /** Forwards waiting requests while some worker has room; one pump at a time. */
  async function pump(): Promise<void> {
    if (pumping) {
      again = true;
      return;
    }
    pumping = true;
    try {
      do {
        again = false;
        if (queue.length === 0 || closed) break;
        await Promise.all(workers.map(refresh));
        while (queue.length > 0 && !closed) {
          const head = queue[0];
          const choice = choose(head);
          if (choice.kind === "wait") break;
          queue.shift();
          if (choice.kind === "refuse") head.resolve(choice.response);
          else forward(head, choice.worker, choice.bytes);
        }
      } while (again);
    } finally {
      pumping = false;
    }
    if (queue.length > 0) armTimer();
  }

  function forward(entry: Queued, worker: Worker, bytes: number): void {
    worker.inFlight++;
    worker.inFlightBytes += bytes;
    worker.forwarded++;
    let settled = false;
    let seen = "";
    const decoder = new TextDecoder();
    const settle = () => {
      if (settled) return;
      settled = true;
      worker.inFlight--;
      worker.inFlightBytes -= bytes;
      learn(worker, entry, seen);
      void pump();
    };
    fetch(`${worker.url}/v1/chat/completions`, {
      method: "POST",
      headers: { ...JSON_HEADERS, ...workerHeaders },
      body: entry.body,
      signal: entry.signal,
    }).then((response) => {
      const reader = response.body?.getReader();
      if (!reader) {
        settle();
        entry.resolve(new Response(null, { status: response.status }));
        return;
      }
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          try {
            const { value, done } = await reader.read();
            if (done) {
              controller.close();
              settle();
              return;
            }
            if (seen.length < 4 * 2 ** 20) seen += decoder.decode(value, { stream: true });
            controller.enqueue(value);
          } catch (error) {
            controller.error(error);
            settle();
          }
        },
        async cancel(reason) {
          settle();
          await reader.cancel(reason);
        },
      });
      entry.resolve(
        new Response(body, {
          status: response.status,
          headers: {
            "content-type": response.headers.get("content-type") ?? "application/json",
            "cache-control": "no-cache",
            "x-dynllava-worker": worker.url,
          },
        }),
      );
    }, () => {
      // Could not connect: the worker is down; the request goes back to the head of the queue.
      settled = true;
      worker.inFlight--;
      worker.inFlightBytes -= bytes;
      worker.up = false;
      if (entry.signal.aborted) return;
      queue.unshift(entry);
      void pump();
    });
  }

  /** Tightens the worker's planner with a finished completion's measured K/V cache. */
  function learn(worker: Worker, entry: Queued, text: string): void {
    const fields = measuredFields(text);
    const d = fields?.dynllava;
    if (!d || !worker.planner || !Array.isArray(d.kv_rows_per_layer)) return;
    try {
      worker.planner.observe({
        id: "r",
        policy: d.policy as PlannedRequest["policy"],
        promptTokens: fields.usage.prompt_tokens - Number(d.visual_tokens ?? 0),
        images: entry.shape.images,
        kvCache: d.kv_cache !== false,
      }, {
        newTokens: fields.usage.completion_tokens,
        kvCache: { rowsPerLayer: d.kv_rows_per_layer as number[], bytes: Number(d.kv_bytes) },
      });
    } catch {
      // A completion that does not describe a run of this model: nothing to learn.
    }
  }

  function view(worker: Worker): WorkerView {
    const budget = worker.planner?.kvBudgetBytes;
    const known = worker.up && budget !== undefined && Number.isFinite(budget);
    return {
      url: worker.url,
      up: worker.up,
      kvBudgetBytes: known ? budget! : null,
      kvFreeBytes: known ? budget! - usedBytes(worker) : null,
      inFlight: worker.inFlight,
      inFlightBytes: worker.inFlightBytes,
      forwarded: worker.forwarded,
    };
  }

  async function complete(request: Request): Promise<Response> {
    const length = Number(request.headers.get("content-length") ?? 0);
    if (length > maxBodyBytes) {
      return apiError(413, `Cannot read the body: over ${maxBodyBytes} bytes`, "too_large");
    }
    const body = await readLimited(request.body, maxBodyBytes);
    if (body === null) return apiError(413, `Cannot read the body: over ${maxBodyBytes} bytes`, "too_large");
    let parsed: unknown;
    try {
      parsed = JSON.parse(new TextDecoder().decode(body));
    } catch {
      return apiError(400, "Cannot read the request: the body is not valid JSON", "invalid_json");
    }
    if (queue.length >= maxQueue) {
      return apiError(
        429,
        `Cannot queue the request: ${maxQueue} are already waiting`,
        "queue_full",
        "rate_limit_error",
      );
    }
    return await new Promise<Response>((resolve) => {
      const entry: Queued = { body, shape: requestShape(parsed), signal: request.signal, resolve };
      request.signal.addEventListener("abort", () => {
        const at = queue.indexOf(entry);
        if (at >= 0) {
          queue.splice(at, 1);
          resolve(apiError(499, "The client went away", "cancelled"));
        }
      }, { once: true });
      queue.push(entry);
      void pump();
    });
  }

  async function route(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname.replace(/\/+$/, "") || "/";
    const methods: Record<string, string> = {
      "/health": "GET",
      "/v1/models": "GET",
      "/v1/chat/completions": "POST",
    };
    if (!methods[path]) return apiError(404, `Cannot route ${path}: no such path`, "not_found");
    if (request.method !== methods[path]) {
      return apiError(405, `Cannot ${request.method} ${path}: use ${methods[path]}`, "method_not_allowed");
    }
    if (path === "/health") {
      await Promise.all(workers.map(refresh));
      const state = { queued: queue.length, workers: workers.map(view) };
      return new Response(JSON.stringify(state), {
        status: workers.some((w) => w.up) ? 200 : 503,
        headers: JSON_HEADERS,
      });
    }
    if (
      options.apiKey !== undefined && !bearerMatches(request.headers.get("authorization"), options.apiKey)
    ) {
      return apiError(
        401,
        "Cannot authorize: give the API key as `Authorization: Bearer KEY`",
        "invalid_api_key",
      );
    }
    if (path === "/v1/models") {
      for (const worker of workers) {
        try {
          const response = await fetch(`${worker.url}/v1/models`, { headers: workerHeaders });
          if (response.ok) return new Response(response.body, { headers: JSON_HEADERS });
          await response.body?.cancel();
        } catch {
          // down: try the next one
        }
      }
      return apiError(503, "Cannot list models: no worker answers", "no_worker", "server_error");
    }
    return await complete(request);
  }

  return {
    handler: route,
    status: () => ({ queued: queue.length, workers: workers.map(view) }),
    close() {
      closed = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      for (const entry of queue.splice(0)) {
        entry.resolve(apiError(503, "Cannot route: the router is closing", "closing", "server_error"));
      }
    },
  };
}

if (import.meta.main) {
  const workers = (Deno.env.get("DYNLLAVA_WORKERS") ?? "").split(",").map((url) => url.trim()).filter(
    Boolean,
  );
  if (workers.length === 0) {
    console.error("error: set DYNLLAVA_WORKERS to the workers' base URLs, comma-separated");
    Deno.exit(2);
  }
  const router = createEdgeRouter({
    workers,
    workerApiKey: Deno.env.get("DYNLLAVA_WORKER_KEY"),
    apiKey: Deno.env.get("DYNLLAVA_API_KEY"),
  });
  Deno.serve({ port: Number(Deno.env.get("PORT") ?? 8000) }, router.handler);
}
