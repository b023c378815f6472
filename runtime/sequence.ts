/**
 * Turns prompt ids (with image markers) into decoder input rows: the token id, kind and original
 * position of every row, with each image expanded to its N visual tokens. Positions count the image
 * as N rows, and they never change afterwards, whatever is pruned (DESIGN §1). GPU-free.
 * @module
 */
import { IMAGE_TOKEN_INDEX } from "./config.ts";
import { InputError } from "./errors.ts";
import type { RowKind } from "./policy.ts";

/** The rows of a prompt, in sequence order. Shapes: [L] each. */
export interface PromptRows {
  /** Token id per row; -1 on image rows. */
  ids: Int32Array;
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
 * import { buildPromptRows } from "./sequence.ts";
 * const rows = buildPromptRows([1, -200, 5], { tokensPerImage: 2, images: 1, vocabSize: 32000, maxPositions: 64 });
 * console.log(rows.kinds, [...rows.positions]); // ["text", "image", "image", "text"] [0, 1, 2, 3]
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
