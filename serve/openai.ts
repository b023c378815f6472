/**
 * The OpenAI chat-completions wire format, both ways: a request body (`messages` with text and
 * `image_url` parts, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`,
 * `stream`, `stream_options.include_usage`, and our `policy` / `kv_cache`) becomes a
 * {@link ChatRequest}; a result becomes a `chat.completion` object or `chat.completion.chunk`s, with
 * the Dynamic-LLaVA statistics in an extra `dynllava` field; failures become OpenAI's error object.
 * Only the wire shape is checked here; the model checks the values it runs.
 * @module
 */
import { Buffer } from "node:buffer";
import {
  type ChatContentPart,
  type ChatMessage,
  type ChatRequest,
  DynllavaError,
  type GenerateResult,
  GpuError,
} from "../mod.ts";

/** An error with its HTTP status and OpenAI's `{ error: { message, type, param, code } }` fields. */
export class ApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  /**
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { ApiError } from "./openai.ts";
   * assert.equal(new ApiError(404, "Cannot route: no such path", { code: "not_found" }).status, 404);
   * ```
   */
  constructor(
    status: number,
    message: string,
    options: { type?: string; param?: string | null; code?: string | null } = {},
  ) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = options.type ?? (status >= 500 ? "server_error" : "invalid_request_error");
    this.param = options.param ?? null;
    this.code = options.code ?? null;
  }

  /** OpenAI's error body. */
  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** Request fields of the library → the API's names (errors name what the client sent). */
const API_FIELDS: Record<string, string> = {
  maxNewTokens: "max_tokens",
  topP: "top_p",
  kvCache: "kv_cache",
  inputIds: "messages",
  prompt: "messages",
  image: "messages",
};

/**
 * The {@link ApiError} for any failure: our own errors keep their message and name the field
 * (`param`); request mistakes are 400, a failing device or checkpoint 500; anything else is 500
 * without its internals.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { InputError } from "../mod.ts";
 * import { apiErrorOf } from "./openai.ts";
 * const err = apiErrorOf(new InputError("Cannot generate: too long", "maxNewTokens"));
 * assert.deepEqual([err.status, err.param], [400, "max_tokens"]);
 * ```
 */
export function apiErrorOf(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof GpuError) return new ApiError(500, err.message, { code: "device_error" });
  if (err instanceof DynllavaError) {
    const field = err.where.split(/[.[]/)[0];
    return new ApiError(400, err.message, { param: API_FIELDS[field] ?? err.where, code: err.name });
  }
  return new ApiError(500, "Cannot complete the request: internal error", { code: "internal_error" });
}

/** Reads an image URL's bytes (http(s) URLs; `data:` URIs are decoded without it). */
export type ImageFetcher = (url: URL, param: string) => Promise<Uint8Array>;

/** A parsed `POST /v1/chat/completions` body. */
export interface ParsedCompletion {
  request: ChatRequest;
  model: string;
  stream: boolean;
  includeUsage: boolean;
}

type Body = Record<string, unknown>;

function fail(param: string, message: string): never {
  throw new ApiError(400, `Cannot read the request: ${message}`, { param, code: "invalid_value" });
}

function optionalNumber(body: Body, key: string, check: (n: number) => boolean, rule: string) {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isFinite(value) || !check(value)) {
    fail(key, `${key} must be ${rule}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function optionalBoolean(body: Body, key: string): boolean | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") fail(key, `${key} must be true or false, got ${JSON.stringify(value)}`);
  return value;
}

/** `data:[type][;base64],payload` → bytes. */
function decodeDataUri(uri: string, param: string): Uint8Array {
  const match = /^data:([^,]*?),(.*)$/s.exec(uri);
  if (!match) fail(param, "the data: URI has no comma");
  if (!match[1].endsWith(";base64")) fail(param, "only base64 data: URIs are supported");
  const bytes = new Uint8Array(Buffer.from(match[2], "base64"));
  if (bytes.length === 0) fail(param, "the data: URI holds no bytes");
  return bytes;
}

async function imagePart(part: Body, param: string, fetchImage: ImageFetcher): Promise<ChatContentPart> {
  const field = part.image_url;
  const url = typeof field === "string" ? field : (field as Body | null)?.url;
  if (typeof url !== "string") fail(`${param}.image_url`, "image_url must be { url: string }");
  if (url.startsWith("data:")) return { type: "image", image: decodeDataUri(url, `${param}.image_url`) };
  if (!/^https?:\/\//i.test(url)) {
    fail(`${param}.image_url`, "image_url.url must be a data: URI or an http(s) URL");
  }
  return { type: "image", image: await fetchImage(new URL(url), `${param}.image_url`) };
}

async function message(value: unknown, param: string, fetchImage: ImageFetcher): Promise<ChatMessage> {
  if (typeof value !== "object" || value === null) fail(param, "a message must be an object");
  const { role, content } = value as Body;
  const mapped = role === "developer" ? "system" : role;
  if (mapped !== "system" && mapped !== "user" && mapped !== "assistant") {
    fail(`${param}.role`, `role must be system, developer, user or assistant, got ${JSON.stringify(role)}`);
  }
  if (typeof content === "string") return { role: mapped, content };
  if (!Array.isArray(content)) fail(`${param}.content`, "content must be a string or an array of parts");
  const parts: ChatContentPart[] = [];
  for (const [j, part] of content.entries()) {
    const partParam = `${param}.content[${j}]`;
    const type = (part as Body | null)?.type;
    if (type === "text" && typeof (part as Body).text === "string") {
      parts.push({ type: "text", text: (part as Body).text as string });
    } else if (type === "image_url") parts.push(await imagePart(part as Body, partParam, fetchImage));
    else fail(partParam, `a part must be { type: "text", text } or { type: "image_url", image_url }`);
  }
  return { role: mapped, content: parts };
}

function stopStrings(value: unknown): string[] | undefined {
  if (value === undefined || value === null) return undefined;
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list) || list.length > 4 || list.some((s) => typeof s !== "string" || s === "")) {
    fail("stop", "stop must be a non-empty string or up to 4 of them");
  }
  return list;
}

/**
 * Maps a chat-completions body to a {@link ChatRequest} (images of `image_url` parts decoded or
 * fetched, in order). Unsupported options that change the answer's shape (`n` > 1, `tools`,
 * `logprobs`, a non-text `response_format`) are refused; the rest OpenAI defines are ignored.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseCompletion } from "./openai.ts";
 * const parsed = await parseCompletion(
 *   { model: "m", messages: [{ role: "user", content: "Hi" }], max_tokens: 5, stop: "\n", stream: true },
 *   { fetchImage: () => Promise.reject(new Error("offline")) },
 * );
 * assert.deepEqual([parsed.request.maxNewTokens, parsed.request.stop, parsed.stream], [5, ["\n"], true]);
 * ```
 */
export async function parseCompletion(
  body: unknown,
  options: { fetchImage: ImageFetcher },
): Promise<ParsedCompletion> {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    fail("body", "the body must be a JSON object");
  }
  const b = body as Body;
  if (typeof b.model !== "string") fail("model", "model must be a string");
  if (!Array.isArray(b.messages) || b.messages.length === 0) {
    fail("messages", "messages must be a non-empty array");
  }
  optionalNumber(b, "n", (v) => v === 1, "1 (one choice per request)");
  if (b.tools !== undefined || b.functions !== undefined) fail("tools", "tools are not supported");
  if (b.logprobs === true) fail("logprobs", "logprobs are not supported");
  const format = (b.response_format as Body | undefined)?.type;
  if (format !== undefined && format !== "text") {
    fail("response_format", "only the text response_format is supported");
  }
  const maxTokens = optionalNumber(b, "max_completion_tokens", Number.isInteger, "a positive integer") ??
    optionalNumber(b, "max_tokens", Number.isInteger, "a positive integer");
  if (maxTokens !== undefined && maxTokens < 1) fail("max_tokens", "max_tokens must be a positive integer");
  const policy = b.policy;
  if (policy !== undefined && policy !== "dense" && policy !== "dynamic" && policy !== "fastv") {
    fail("policy", `policy must be dense, dynamic or fastv, got ${JSON.stringify(policy)}`);
  }
  const streamOptions = b.stream_options as Body | undefined | null;
  const messages: ChatMessage[] = [];
  for (const [i, value] of b.messages.entries()) {
    messages.push(await message(value, `messages[${i}]`, options.fetchImage));
  }
  return {
    model: b.model,
    stream: optionalBoolean(b, "stream") ?? false,
    includeUsage: streamOptions ? optionalBoolean(streamOptions, "include_usage") ?? false : false,
    request: {
      messages,
      maxNewTokens: maxTokens,
      temperature: optionalNumber(b, "temperature", (v) => v >= 0 && v <= 2, "a number in [0, 2]"),
      topP: optionalNumber(b, "top_p", (v) => v > 0 && v <= 1, "a number in (0, 1]"),
      seed: optionalNumber(b, "seed", Number.isSafeInteger, "an integer"),
      stop: stopStrings(b.stop),
      policy,
      kvCache: optionalBoolean(b, "kv_cache"),
    },
  };
}

/** Identity of one completion, shared by its object or its chunks. */
export interface CompletionMeta {
  id: string;
  created: number;
  model: string;
  policy: string;
  kvCache: boolean;
}

/** Usage in OpenAI's names. */
function usageOf(result: GenerateResult) {
  return {
    prompt_tokens: result.usage.promptTokens,
    completion_tokens: result.usage.completionTokens,
    total_tokens: result.usage.totalTokens,
  };
}

/**
 * Our extension field: the policy and KV mode that ran, and what Dynamic-LLaVA saved.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModel } from "../mod.ts";
 * import { dynllavaFields } from "./openai.ts";
 * const model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
 * const result = await model.generate({ prompt: "Hi", image: { width: 4, height: 4, data: new Uint8Array(48) }, maxNewTokens: 2 });
 * const fields = dynllavaFields(result, { id: "c", created: 0, model: "m", policy: "dynamic", kvCache: true });
 * assert.deepEqual([fields.visual_tokens, fields.visual_kept], [64, 12]);
 * model.dispose();
 * ```
 */
export function dynllavaFields(result: GenerateResult, meta: CompletionMeta) {
  const s = result.stats;
  return {
    policy: meta.policy,
    kv_cache: meta.kvCache,
    visual_tokens: s.visualTokens,
    visual_kept: s.visualKeptCount,
    output_tokens_admitted: s.admittedCount,
    kv_rows_per_layer: s.kvCache.rowsPerLayer,
    kv_bytes: s.kvCache.bytes,
    kv_peak_bytes: s.kvCache.peakBytes,
    gpu_peak_bytes: s.gpuPeakBytes,
    flops_prefill: s.flops.prefill.flopsExact,
    flops_decode: s.flops.decode.flopsExact,
    prefill_ms: s.prefillMs,
    decode_ms: s.decodeMs,
    tokens_per_second: s.tokensPerSecond,
  };
}

/** OpenAI's finish_reason of a result (an aborted one is never sent: its client is gone). */
function finishReasonOf(result: GenerateResult): "stop" | "length" {
  return result.finishReason === "length" ? "length" : "stop";
}

/**
 * The `chat.completion` object of a finished request.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { loadModel } from "../mod.ts";
 * import { completionObject } from "./openai.ts";
 * const model = await loadModel(new URL("../assets/demo/", import.meta.url), { backend: "cpu" });
 * const result = await model.chat({ messages: [{ role: "user", content: "Hi" }], maxNewTokens: 2 });
 * const object = completionObject(result, { id: "c", created: 0, model: "m", policy: "dynamic", kvCache: true });
 * assert.equal(object.choices[0].message.content, result.text);
 * assert.equal(object.usage.completion_tokens, 2);
 * model.dispose();
 * ```
 */
export function completionObject(result: GenerateResult, meta: CompletionMeta) {
  return {
    id: meta.id,
    object: "chat.completion",
    created: meta.created,
    model: meta.model,
    choices: [{
      index: 0,
      message: { role: "assistant", content: result.text },
      logprobs: null,
      finish_reason: finishReasonOf(result),
    }],
    usage: usageOf(result),
    dynllava: dynllavaFields(result, meta),
  };
}

/**
 * One `chat.completion.chunk`: a text delta (the first one with the role), the last one with
 * finish_reason, or (choices empty) the usage chunk of `stream_options.include_usage`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { completionChunk } from "./openai.ts";
 * const meta = { id: "c", created: 0, model: "m", policy: "dense", kvCache: true };
 * assert.deepEqual(completionChunk(meta, { content: "Hi", first: true }).choices[0].delta, { role: "assistant", content: "Hi" });
 * ```
 */
export function completionChunk(
  meta: CompletionMeta,
  part: { content?: string; first?: boolean; result?: GenerateResult; usage?: boolean },
) {
  const base = { id: meta.id, object: "chat.completion.chunk", created: meta.created, model: meta.model };
  if (part.usage && part.result) {
    return {
      ...base,
      choices: [],
      usage: usageOf(part.result),
      dynllava: dynllavaFields(part.result, meta),
    };
  }
  const delta = part.result
    ? {}
    : { ...(part.first ? { role: "assistant" } : {}), content: part.content ?? "" };
  return {
    ...base,
    choices: [{
      index: 0,
      delta,
      logprobs: null,
      finish_reason: part.result ? finishReasonOf(part.result) : null,
    }],
  };
}
