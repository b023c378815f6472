/**
 * Turns prompt ids (with image markers) into decoder input rows: the token id, kind and original
 * position of every row, with each image expanded to its N visual tokens. Positions count the image
 * as N rows, and they never change afterwards, whatever is pruned. GPU-free.
 * @module
 */
import { IMAGE_TOKEN_INDEX } from "./config.ts";
import { InputError } from "./errors.ts";
import type { RowKind } from "./policy.ts";

/** The rows of a prompt, in sequence order. Shapes: [L] each. */
export interface PromptRows {
  /** Token id per row; -1 on image rows. */
  ids: Int32Array;
  /** Kind of each row: prompt text or image. */
  kinds: RowKind[];
  /** Original position id per row (0..L-1). */
  positions: Uint32Array;
  /** Row index into the concatenated image features [images·N, C]; -1 on text rows. */
  imageRow: Int32Array;
  /** Total image rows (images · N). */
  imageTokens: number;
}

/**
 * Expands image markers (-200, or the in-vocabulary image id of llava-hf checkpoints) into N rows each.
 * Throws {@link InputError} when ids fall outside the vocabulary, the number of images differs from
 * the number of markers, or the sequence exceeds `maxPositions`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildPromptRows } from "./sequence.ts";
 * const rows = buildPromptRows([1, -200, 5], { tokensPerImage: 2, images: 1, vocabSize: 32000, maxPositions: 64 });
 * assert.deepEqual(rows.kinds, ["text", "image", "image", "text"]);
 * assert.deepEqual([...rows.positions], [0, 1, 2, 3]);
 * assert.deepEqual([...rows.imageRow], [-1, 0, 1, -1]);
 * ```
 */
export function buildPromptRows(
  inputIds: ArrayLike<number>,
  options: {
    tokensPerImage: number;
    images: number;
    vocabSize: number;
    maxPositions: number;
    imageTokenId?: number | null;
  },
): PromptRows {
  const ids: number[] = [], kinds: RowKind[] = [], imageRow: number[] = [];
  let markers = 0;
  for (let i = 0; i < inputIds.length; i++) {
    const id = inputIds[i];
    if (id === IMAGE_TOKEN_INDEX || (options.imageTokenId != null && id === options.imageTokenId)) {
      if (markers >= options.images) {
        throw new InputError(
          `Cannot build prompt: ${
            countMarkers(inputIds, options.imageTokenId)
          } image markers but ${options.images} image(s) given`,
          "inputIds",
        );
      }
      for (let t = 0; t < options.tokensPerImage; t++) {
        ids.push(-1);
        kinds.push("image");
        imageRow.push(markers * options.tokensPerImage + t);
      }
      markers++;
      continue;
    }
    if (!Number.isInteger(id) || id < 0 || id >= options.vocabSize) {
      throw new InputError(
        `Cannot build prompt: id ${id} at index ${i} is outside the vocabulary (0..${options.vocabSize - 1})`,
        `inputIds[${i}]`,
      );
    }
    ids.push(id);
    kinds.push("text");
    imageRow.push(-1);
  }
  if (markers !== options.images) {
    throw new InputError(
      `Cannot build prompt: ${markers} image markers but ${options.images} image(s) given`,
      "inputIds",
    );
  }
  if (ids.length === 0) throw new InputError("Cannot build prompt: no input ids", "inputIds");
  if (ids.length > options.maxPositions) {
    throw new InputError(
      `Cannot build prompt: ${ids.length} rows exceed the model's context of ${options.maxPositions}`,
      "inputIds",
    );
  }
  return {
    ids: Int32Array.from(ids),
    kinds,
    positions: Uint32Array.from(ids, (_, i) => i),
    imageRow: Int32Array.from(imageRow),
    imageTokens: markers * options.tokensPerImage,
  };
}

function countMarkers(ids: ArrayLike<number>, imageTokenId?: number | null): number {
  let n = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] === IMAGE_TOKEN_INDEX || ids[i] === imageTokenId) n++;
  return n;
}

/** What each row entering the decoder is, in sequence order. Shapes: [M] each. */
export interface RowMeta {
  kinds: RowKind[];
  /** Original position ids. */
  positions: number[];
  /** Image rows: image-token index; output rows: generated-token index; text rows: -1. */
  tags: number[];
}

/**
 * The rows of a full context: the prompt, then `generated` tokens fed back as "output" rows at the
 * positions after it.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildPromptRows, contextRows } from "./sequence.ts";
 * const prompt = buildPromptRows([1, 5], { tokensPerImage: 0, images: 0, vocabSize: 32000, maxPositions: 64 });
 * assert.deepEqual(contextRows(prompt, 2), {
 *   kinds: ["text", "text", "output", "output"],
 *   positions: [0, 1, 2, 3],
 *   tags: [-1, -1, 0, 1],
 * });
 * ```
 */
export function contextRows(prompt: PromptRows, generated: number): RowMeta {
  const promptLen = prompt.ids.length;
  const outputs = Array.from({ length: generated }, (_, j) => j);
  return {
    kinds: [...prompt.kinds, ...outputs.map(() => "output" as const)],
    positions: [...prompt.positions, ...outputs.map((j) => promptLen + j)],
    tags: [...Array.from(prompt.imageRow), ...outputs],
  };
}

/**
 * The rows left after pruning to `keep` (row indices, ascending), with the kept image-token
 * indices and kept output-token indices.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { keepRows } from "./sequence.ts";
 * const rows = { kinds: ["text", "image", "image", "output"] as const, positions: [0, 1, 2, 3], tags: [-1, 0, 1, 0] };
 * assert.deepEqual(keepRows({ ...rows, kinds: [...rows.kinds] }, [0, 2, 3]).visualKept, [1]);
 * ```
 */
export function keepRows(
  rows: RowMeta,
  keep: number[],
): RowMeta & { visualKept: number[]; outputKept: number[] } {
  const kept = {
    kinds: keep.map((i) => rows.kinds[i]),
    positions: keep.map((i) => rows.positions[i]),
    tags: keep.map((i) => rows.tags[i]),
  };
  const tagsOf = (kind: RowKind) => kept.tags.filter((_, i) => kept.kinds[i] === kind);
  return { ...kept, visualKept: tagsOf("image"), outputKept: tagsOf("output") };
}

/**
 * No-cache step: the generated tokens that stayed in the context at the prune layer, except the
 * last one fed (always kept); every fed token when nothing was pruned (`outputKept` null).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fedTokensKept } from "./sequence.ts";
 * assert.deepEqual(fedTokensKept([0, 2, 3], 4), [0, 2]);
 * assert.deepEqual(fedTokensKept(null, 3), [0, 1]);
 * ```
 */
export function fedTokensKept(outputKept: number[] | null, generated: number): number[] {
  return (outputKept ?? Array.from({ length: generated }, (_, j) => j)).filter((j) => j < generated - 1);
}
