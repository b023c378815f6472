/**
 * An HTTP server around one loaded model (`Deno.serve`):
 *
 *   deno run -A examples/serve.ts --model DIR | --demo [--port 8000] [--backend webgpu|cpu]
 *
 * - `GET /health` → `{ layout, backend, vocabSize, visualTokens }`.
 * - `POST /generate` with JSON `{ prompt | inputIds, image?: base64 | base64[], maxNewTokens?, temperature?,
 *   topP?, seed?, stop?, policy?: "dense" | "dynamic" | "fastv", kvCache?, stream? }` → the result as JSON,
 *   or with `stream: true` server-sent events: one `token` event per token (`{ token, text }`), then a
 *   `result` event. Bad requests answer 400 with `{ error, where }`.
 * Requests are served one at a time by the model's own queue.
 * @module
 */
import { parseArgs } from "node:util";
import { Buffer } from "node:buffer";
import { DynllavaError, type GenerateRequest, InputError, loadModel, type Model } from "../mod.ts";

/** Body of `POST /generate`. */
export interface GenerateBody extends Omit<GenerateRequest, "image" | "video" | "signal" | "policy"> {
  image?: string | string[];
  policy?: "dense" | "dynamic" | "fastv";
  stream?: boolean;
}

function toRequest(body: GenerateBody, signal: AbortSignal): GenerateRequest {
  if (typeof body !== "object" || body === null) {
    throw new InputError("Cannot serve: the body is not a JSON object", "body");
  }
  const images = body.image === undefined ? [] : Array.isArray(body.image) ? body.image : [body.image];
  const decoded = images.map((text, i) => {
    if (typeof text !== "string") {
      throw new InputError("Cannot serve: an image must be a base64 string", `image[${i}]`);
    }
    return new Uint8Array(Buffer.from(text, "base64"));
  });
  const { stream: _stream, image: _image, ...rest } = body;
  return { ...rest, image: decoded.length > 0 ? decoded : undefined, signal };
}

function json(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), { status, headers: { "content-type": "application/json" } });
}

/**
 * The request handler for `model` (usable with `Deno.serve` or called directly in tests).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { createHandler } from "./serve.ts";
 * import { loadModel } from "../mod.ts";
 * const model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
 * const handler = createHandler(model);
 * const response = await handler(new Request("http://x/generate", {
 *   method: "POST", body: JSON.stringify({ prompt: "Hi", maxNewTokens: 2 }),
 * }));
 * assert.equal(response.status, 200);
 * const body = await response.json();
 * assert.ok(body.tokens.length >= 1 && body.tokens.length <= 2);
 * model.dispose();
 * ```
 */
export function createHandler(model: Model): (request: Request) => Promise<Response> {
  return async (request) => {
    const url = new URL(request.url);
    if (request.method === "GET" && url.pathname === "/health") {
      return json({
        layout: model.config.layout,
        backend: model.backendKind,
        vocabSize: model.config.text.vocabSize,
        visualTokens: model.config.vision?.tokensPerImage ?? 0,
      });
    }
    if (request.method !== "POST" || url.pathname !== "/generate") return json({ error: "not found" }, 404);
    try {
      let body: GenerateBody;
      try {
        body = await request.json();
      } catch {
        throw new InputError("Cannot serve: the body is not valid JSON", "body");
      }
      const run = model.generate(toRequest(body, request.signal));
      if (!body.stream) return json(await run);
      const encoder = new TextEncoder();
      const events = new ReadableStream<Uint8Array>({
        async start(controller) {
          const send = (event: string, data: unknown) =>
            controller.enqueue(encoder.encode(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
          try {
            for await (const ev of run) send("token", ev);
            send("result", await run);
          } catch (err) {
            send("error", { error: (err as Error).message });
          }
          controller.close();
        },
      });
      return new Response(events, { headers: { "content-type": "text/event-stream" } });
    } catch (err) {
      if (err instanceof DynllavaError) return json({ error: err.message, where: err.where }, 400);
      throw err;
    }
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      demo: { type: "boolean", default: false },
      port: { type: "string", default: "8000" },
      backend: { type: "string", default: "webgpu" },
    },
  });
  const path = values.model ?? (values.demo ? new URL("../assets/demo/", import.meta.url) : undefined);
  if (!path) throw new InputError("Cannot start: give --model DIR, or --demo", "--model");
  if (values.backend !== "cpu" && values.backend !== "webgpu") {
    throw new InputError(`Cannot start: --backend must be webgpu or cpu, got ${values.backend}`, "--backend");
  }
  const model = await loadModel(path, { backend: values.backend });
  Deno.serve({ port: Number(values.port) }, createHandler(model));
}
