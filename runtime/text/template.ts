/**
 * The llava_v1 conversation template and LLaVA's prompt tokenisation: the text is split at each
 * `<image>`, each piece is encoded on its own (as LLaVA's `tokenizer_image_token` does, so every
 * piece gets the tokenizer's leading-space handling), BOS kept once, and -200 marks each image.
 * @module
 */
import { IMAGE_TOKEN_INDEX } from "../core/config.ts";
import { InputError } from "../core/errors.ts";
import type { Tokenizer } from "./bpe.ts";

/** The llava_v1 system prompt. */
export const LLAVA_V1_SYSTEM =
  "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";

/**
 * Formats a user prompt with the llava_v1 template. When the prompt holds no `<image>` marker and
 * `images` > 0, the markers go first, one line each.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatLlavaV1 } from "./template.ts";
 * assert.ok(formatLlavaV1("What is it?", { images: 1 }).endsWith("USER: <image>\nWhat is it? ASSISTANT:"));
 * assert.ok(formatLlavaV1("Hi", { images: 0 }).endsWith("USER: Hi ASSISTANT:"));
 * ```
 */
export function formatLlavaV1(prompt: string, options: { images: number }): string {
  const withImages = prompt.includes("<image>") || options.images === 0
    ? prompt
    : "<image>\n".repeat(options.images) + prompt;
  return `${LLAVA_V1_SYSTEM} USER: ${withImages} ASSISTANT:`;
}

/** One turn of a conversation; `text` holds an `<image>` marker where each of its images goes. */
export interface ChatTurn {
  /** Who speaks. */
  role: "system" | "user" | "assistant";
  /** What is said, with an `<image>` marker per image. */
  text: string;
}

/**
 * Formats a conversation with the llava_v1 template: the system prompt (a leading system turn
 * replaces the default one), then `USER: … ASSISTANT: …</s>` per exchange, ending with
 * `ASSISTANT:` for the reply to come. One user turn gives exactly {@link formatLlavaV1}'s text.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { formatLlavaV1, formatLlavaV1Chat } from "./template.ts";
 * assert.equal(formatLlavaV1Chat([{ role: "user", text: "<image>\nHi" }]), formatLlavaV1("Hi", { images: 1 }));
 * assert.equal(
 *   formatLlavaV1Chat([{ role: "system", text: "Be brief." }, { role: "user", text: "Hi" },
 *     { role: "assistant", text: "Hello." }, { role: "user", text: "Bye" }]),
 *   "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT:",
 * );
 * ```
 */
export function formatLlavaV1Chat(turns: ChatTurn[]): string {
  const system = turns[0]?.role === "system" ? turns[0].text : LLAVA_V1_SYSTEM;
  const dialogue = turns[0]?.role === "system" ? turns.slice(1) : turns;
  if (dialogue.length === 0 || dialogue.at(-1)!.role !== "user") {
    throw new InputError("Cannot format the chat: the last message must be from the user", "messages");
  }
  let text = `${system} `;
  for (const [i, turn] of dialogue.entries()) {
    if (turn.role === "system") {
      throw new InputError(
        "Cannot format the chat: a system message may only come first",
        `messages[${i + turns.length - dialogue.length}]`,
      );
    }
    text += turn.role === "user" ? `USER: ${turn.text} ` : `ASSISTANT: ${turn.text}</s>`;
  }
  return `${text}ASSISTANT:`;
}

/**
 * Encodes text holding `<image>` markers into ids with -200 at each marker, BOS first.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeWithImages } from "./template.ts";
 * import { loadTokenizer } from "./tokenizer.ts";
 * const tokenizer = await loadTokenizer("tests/fixtures/out/llama-f32");
 * const ids = encodeWithImages(tokenizer, "USER: <image>\nHi");
 * assert.equal(ids[0], tokenizer.bosId); // BOS once, first
 * assert.equal(ids.filter((id) => id === -200).length, 1); // one marker where <image> was
 * assert.equal(ids.filter((id) => id === tokenizer.bosId).length, 1);
 * ```
 */
export function encodeWithImages(tokenizer: Tokenizer, text: string): number[] {
  const pieces = text.split("<image>").map((piece) => tokenizer.encode(piece, { addSpecialTokens: true }));
  const ids: number[] = [];
  pieces.forEach((piece, i) => {
    if (i > 0) ids.push(IMAGE_TOKEN_INDEX);
    const skip = (i > 0 || ids.length > 0) && piece[0] === tokenizer.bosId ? 1 : 0;
    ids.push(...piece.slice(skip));
  });
  return ids;
}
