/**
 * The generation request and its validation: every field is checked by type and range here, in one
 * place, before any tokenizing, decoding or GPU work. `Model.generate`, `Model.generateBatch`,
 * the HTTP server and the command line all call {@link validateRequest}; an invalid field is an
 * {@link InputError} whose `where` names the field (`requests[2].temperature`).
 *
 * What is checked without a model: types, integer-ness, finite numbers, ranges that hold for every
 * model (topP in (0, 1], frames 1..4096), prompt or inputIds (not both), unknown fields (a typo such
 * as `max_tokens` is refused, not ignored). With {@link RequestLimits} from a loaded model: stop and
 * input ids inside the vocabulary, maxNewTokens and prompt length within the context, images only
 * for models with a vision tower, and the prompt's character count against the most characters
 * the context can hold (so a huge prompt is refused before it is tokenized).
 * @module
 */
import { InputError } from "../core/errors.ts";
import { IMAGE_TOKEN_INDEX } from "../core/config.ts";
import type { Policy } from "../core/policy.ts";
import { KV_DTYPES, type KvDtype } from "../core/sparse_kv.ts";
import type { RgbImage } from "../image/image_decode.ts";

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
  /** Most tokens to generate (default 256), 0..context. */
  maxNewTokens?: number;
  /** 0 = greedy (default 0); a finite number (values ≤ 0 are greedy). */
  temperature?: number;
  /** Nucleus sampling: sample among the most likely tokens whose probabilities sum to topP, in (0, 1] (default 1). */
  topP?: number;
  /** Seed of the sampler's random numbers, a safe integer (default 0): the same seed gives the same tokens. */
  seed?: number;
  /**
   * Stop ids and stop strings (the text ends before the string); default [`</s>`]; [] never stops
   * early. A special token's text (`"</s>"`) never appears in the text: give its id.
   */
  stop?: (number | string)[];
  /** Aborts the run within one decode step; see `onAbort`. */
  signal?: AbortSignal;
  /** "throw" (default): an abort rejects with the signal's reason; "finish": resolves with what was generated, finishReason "abort". */
  onAbort?: "throw" | "finish";
  /**
   * Sparsification: "dense", "dynamic" (Dynamic-LLaVA), "fastv", or a custom {@link Policy}.
   * Default: the model's `defaultPolicy` (dynamic when the checkpoint has predictors, else dense).
   */
  policy?: "dense" | "dynamic" | "fastv" | Policy;
  /** false = the paper's no-cache decoding (recompute the context every step). Default true. */
  kvCache?: boolean;
  /**
   * Element type of this request's KV cache: "f16" (half the bytes) or "f32". Default: the model's
   * (`loadModel`'s `kvDtype`); "f16" on WebGPU needs a device with `shader-f16`.
   */
  kvDtype?: KvDtype;
}

/** What a loaded model allows; every field is optional (absent: not checked). */
export interface RequestLimits {
  /** Ids must be below this (stop ids, inputIds). */
  vocabSize?: number;
  /** The context: prompt rows + maxNewTokens must fit. */
  maxPositions?: number;
  /** Rows one image takes (video frames × this must fit the context). */
  tokensPerImage?: number;
  /** False: images and video are refused. */
  hasVision?: boolean;
  /** The most prompt characters the context can hold; longer prompts are refused before tokenizing. */
  maxPromptChars?: number;
  /** Texts of special tokens (`<s>`, `</s>`): never in decoded text, so refused as stop strings. */
  specialTexts?: readonly string[];
  /** The KV element types the backend can hold (others are refused). */
  kvDtypes?: readonly KvDtype[];
}

/** Options of {@link validateRequest}. */
export interface ValidateOptions {
  /** The loaded model's limits. */
  limits?: RequestLimits;
  /** Extra field names the caller handles itself (for example a server's `stream`); left as they are. */
  extraKeys?: readonly string[];
}

const KNOWN_KEYS = new Set([
  "prompt",
  "inputIds",
  "image",
  "video",
  "maxNewTokens",
  "temperature",
  "topP",
  "seed",
  "stop",
  "signal",
  "onAbort",
  "policy",
  "kvCache",
  "kvDtype",
]);

/** Most ids a request may carry (prompt ids or stop ids), whatever the model. */
export const MAX_REQUEST_IDS = 1 << 24;

/**
 * Checks a request (from code, JSON or flags) and returns it typed. Throws {@link InputError} naming
 * the field as `where.field` (or just `field` when `where` is ""). Unset fields stay unset (the
 * model fills defaults).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { validateRequest } from "./request.ts";
 * import { InputError } from "../core/errors.ts";
 * const request = validateRequest({ prompt: "Hi", maxNewTokens: 4 }, "request");
 * assert.equal(request.maxNewTokens, 4);
 * assert.throws(() => validateRequest({ prompt: "Hi", temperature: "hot" }, "request"), (err) =>
 *   err instanceof InputError && err.where === "request.temperature");
 * assert.throws(() => validateRequest({ prompt: "Hi", stop: [7] }, "", { limits: { vocabSize: 5 } }), InputError);
 * ```
 */
export function validateRequest(raw: unknown, where: string, options: ValidateOptions = {}): GenerateRequest {
  const at = (field: string) => (where === "" ? field : `${where}.${field}`);
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new InputError("Cannot generate: the request is not an object", where || "request");
  }
  const r = raw as Record<string, unknown>;
  const limits = options.limits ?? {};
  const extra = new Set(options.extraKeys ?? []);
  for (const key of Object.keys(r)) {
    if (!KNOWN_KEYS.has(key) && !extra.has(key)) {
      throw new InputError(`Cannot generate: unknown request field ${JSON.stringify(key)}`, at(key));
    }
  }
  const out: GenerateRequest = {};
  checkPromptOrIds(r, out, at, limits);
  checkImages(r, out, at, limits);
  if (r.maxNewTokens !== undefined) {
    out.maxNewTokens = integerIn(
      r.maxNewTokens,
      0,
      limits.maxPositions ?? MAX_REQUEST_IDS,
      at("maxNewTokens"),
    );
  }
  if (r.temperature !== undefined) {
    out.temperature = finiteNumber(r.temperature, at("temperature"));
  }
  if (r.topP !== undefined) {
    const topP = finiteNumber(r.topP, at("topP"));
    if (!(topP > 0 && topP <= 1)) {
      throw new InputError(`Cannot generate: topP must be in (0, 1], got ${topP}`, at("topP"));
    }
    out.topP = topP;
  }
  if (r.seed !== undefined) {
    out.seed = integerIn(r.seed, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, at("seed"));
  }
  if (r.stop !== undefined) out.stop = stopList(r.stop, at("stop"), limits);
  if (r.onAbort !== undefined) {
    if (r.onAbort !== "throw" && r.onAbort !== "finish") {
      throw new InputError(
        `Cannot generate: onAbort must be "throw" or "finish", got ${show(r.onAbort)}`,
        at("onAbort"),
      );
    }
    out.onAbort = r.onAbort;
  }
  if (r.signal !== undefined) {
    if (!(r.signal instanceof AbortSignal)) {
      throw new InputError("Cannot generate: signal must be an AbortSignal", at("signal"));
    }
    out.signal = r.signal;
  }
  if (r.policy !== undefined) out.policy = checkPolicy(r.policy, at("policy"));
  if (r.kvCache !== undefined) {
    if (typeof r.kvCache !== "boolean") {
      throw new InputError(
        `Cannot generate: kvCache must be true or false, got ${show(r.kvCache)}`,
        at("kvCache"),
      );
    }
    out.kvCache = r.kvCache;
  }
  if (r.kvDtype !== undefined) out.kvDtype = checkKvDtype(r.kvDtype, at("kvDtype"), limits);
  const rows = (out.inputIds?.length ?? 0) + (out.maxNewTokens ?? 0);
  if (limits.maxPositions !== undefined && rows > limits.maxPositions) {
    throw new InputError(
      `Cannot generate: inputIds (${out.inputIds?.length ?? 0}) + maxNewTokens (${
        out.maxNewTokens ?? 0
      }) exceed the context of ${limits.maxPositions}`,
      at("maxNewTokens"),
    );
  }
  for (const key of extra) if (key in r) (out as Record<string, unknown>)[key] = r[key];
  return out;
}

/** A KV element type the backend holds: "f16" (needs shader-f16 on WebGPU) or "f32". */
function checkKvDtype(value: unknown, where: string, limits: RequestLimits): KvDtype {
  if (!KV_DTYPES.includes(value as KvDtype)) {
    throw new InputError(`Cannot generate: kvDtype must be "f16" or "f32", got ${show(value)}`, where);
  }
  const kvDtype = value as KvDtype;
  if (limits.kvDtypes && !limits.kvDtypes.includes(kvDtype)) {
    throw new InputError(
      `Cannot generate: kvDtype "${kvDtype}" needs a WebGPU device with shader-f16, which this one lacks`,
      where,
    );
  }
  return kvDtype;
}

function checkPromptOrIds(
  r: Record<string, unknown>,
  out: GenerateRequest,
  at: (field: string) => string,
  limits: RequestLimits,
): void {
  if (r.prompt !== undefined && r.inputIds !== undefined) {
    throw new InputError("Cannot generate: give prompt or inputIds, not both", at("prompt"));
  }
  if (r.prompt === undefined && r.inputIds === undefined) {
    throw new InputError("Cannot generate: prompt or inputIds is required", at("prompt"));
  }
  if (r.prompt !== undefined) {
    if (typeof r.prompt !== "string") {
      throw new InputError(`Cannot generate: prompt must be a string, got ${show(r.prompt)}`, at("prompt"));
    }
    const maxChars = limits.maxPromptChars;
    if (maxChars !== undefined && r.prompt.length > maxChars) {
      throw new InputError(
        `Cannot generate: the prompt has ${r.prompt.length} characters, more than the context of ${limits.maxPositions} tokens can hold (at most ${maxChars})`,
        at("prompt"),
      );
    }
    out.prompt = r.prompt;
    return;
  }
  out.inputIds = idList(r.inputIds, at("inputIds"), limits.vocabSize, true);
  if (limits.maxPositions !== undefined && out.inputIds.length > limits.maxPositions) {
    throw new InputError(
      `Cannot generate: ${out.inputIds.length} inputIds exceed the context of ${limits.maxPositions}`,
      at("inputIds"),
    );
  }
}

function checkImages(
  r: Record<string, unknown>,
  out: GenerateRequest,
  at: (field: string) => string,
  limits: RequestLimits,
): void {
  if (r.image !== undefined) {
    const list = Array.isArray(r.image) ? r.image : [r.image];
    list.forEach((image, i) =>
      checkImageInput(image, Array.isArray(r.image) ? at(`image[${i}]`) : at("image"))
    );
    if (list.length > 0 && limits.hasVision === false) {
      throw new InputError("Cannot use images: this checkpoint has no vision tower", at("image"));
    }
    out.image = Array.isArray(r.image) ? [...list] as ImageInput[] : r.image as ImageInput;
  }
  if (r.video !== undefined) {
    const video = r.video as Record<string, unknown>;
    if (typeof video !== "object" || video === null || !(video.data instanceof Uint8Array)) {
      throw new InputError("Cannot use video: expected { data: Uint8Array, frames }", at("video.data"));
    }
    const frames = integerIn(video.frames, 1, 4096, at("video.frames"));
    if (limits.hasVision === false) {
      throw new InputError("Cannot use video: this checkpoint has no vision tower", at("video"));
    }
    const perImage = limits.tokensPerImage ?? 0;
    if (limits.maxPositions !== undefined && frames * perImage > limits.maxPositions) {
      throw new InputError(
        `Cannot use video: ${frames} frames × ${perImage} tokens exceed the context of ${limits.maxPositions}`,
        at("video.frames"),
      );
    }
    out.video = { data: video.data, frames };
  }
}

function checkImageInput(image: unknown, where: string): void {
  if (image instanceof Uint8Array) return;
  const ok = typeof image === "object" && image !== null &&
    (image as RgbImage).data instanceof Uint8Array;
  if (!ok) {
    throw new InputError(
      "Cannot use image: expected encoded bytes (Uint8Array) or { width, height, data }",
      where,
    );
  }
}

function checkPolicy(policy: unknown, where: string): GenerateRequest["policy"] {
  if (policy === "dense" || policy === "dynamic" || policy === "fastv") return policy;
  if (typeof policy === "object" && policy !== null && typeof (policy as Policy).plan === "function") {
    return policy as Policy;
  }
  throw new InputError(
    `Cannot generate: policy must be "dense", "dynamic", "fastv" or a Policy, got ${show(policy)}`,
    where,
  );
}

/** Stop ids (inside the vocabulary) and stop strings (non-empty, not a special token's text). */
function stopList(value: unknown, where: string, limits: RequestLimits): (number | string)[] {
  if (!Array.isArray(value)) {
    throw new InputError(
      `Cannot generate: stop must be an array of ids and strings, got ${show(value)}`,
      where,
    );
  }
  return value.map((item, i) => {
    if (typeof item !== "string") return tokenId(item, `${where}[${i}]`, limits.vocabSize);
    if (item.length === 0) throw new InputError("Cannot generate: a stop string is empty", `${where}[${i}]`);
    if (limits.specialTexts?.includes(item)) {
      throw new InputError(
        `Cannot generate: stop string ${
          JSON.stringify(item)
        } is a special token, never in the text; give its id`,
        `${where}[${i}]`,
      );
    }
    return item;
  });
}

/** An array of token ids (inputIds may also hold the image marker -200). */
function idList(
  value: unknown,
  where: string,
  vocabSize: number | undefined,
  imageMarkers: boolean,
): number[] {
  if (!Array.isArray(value)) {
    throw new InputError(`Cannot generate: expected an array of token ids, got ${show(value)}`, where);
  }
  if (value.length > MAX_REQUEST_IDS) {
    throw new InputError(`Cannot generate: ${value.length} ids, more than ${MAX_REQUEST_IDS}`, where);
  }
  for (let i = 0; i < value.length; i++) {
    if (!(imageMarkers && value[i] === IMAGE_TOKEN_INDEX)) tokenId(value[i], `${where}[${i}]`, vocabSize);
  }
  return [...value];
}

/** One token id: an integer in 0..vocabSize − 1. */
function tokenId(id: unknown, where: string, vocabSize: number | undefined): number {
  if (typeof id === "string") {
    throw new InputError(
      `Cannot generate: ${show(id)} is a string; token ids are numbers (tokenizer.tokenToId gives them)`,
      where,
    );
  }
  if (
    typeof id !== "number" || !Number.isInteger(id) || id < 0 || (vocabSize !== undefined && id >= vocabSize)
  ) {
    const range = vocabSize === undefined ? "a non-negative integer" : `an integer in 0..${vocabSize - 1}`;
    throw new InputError(`Cannot generate: token id ${show(id)} is not ${range}`, where);
  }
  return id;
}

function integerIn(value: unknown, min: number, max: number, where: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw new InputError(`Cannot generate: expected an integer in ${min}..${max}, got ${show(value)}`, where);
  }
  return value;
}

function finiteNumber(value: unknown, where: string): number {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new InputError(`Cannot generate: expected a finite number, got ${show(value)}`, where);
  }
  return value;
}

/** A short printable form of any value (never the whole of a large one). */
function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "number" || typeof value === "boolean" || value == null) return String(value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  return typeof value;
}
