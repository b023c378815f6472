/**
 * Sparse KV cache bookkeeping, GPU-free: which original positions each decoder layer holds, how
 * many bytes that is now and at peak, and the element type of the cache ({@link KvDtype}: f32, or
 * f16 at half the bytes). Both backends keep one ledger per request and report from it; the GPU
 * backend feeds it the admission flags it reads back in batches.
 * @module
 */

/** Element type of a KV cache: "f32", or "f16" (half the bytes; attention still sums in f32). */
export type KvDtype = "f16" | "f32";

/** The KV element types, in the order options name them. */
export const KV_DTYPES: readonly KvDtype[] = ["f16", "f32"];

/**
 * Bytes one row of one layer's cache takes: K and V, each kvHeads × headDim elements of `dtype`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kvRowBytes } from "./sparse_kv.ts";
 * assert.equal(kvRowBytes({ numKvHeads: 32, headDim: 128 }, "f32"), 32768); // LLaVA-1.5-7B
 * assert.equal(kvRowBytes({ numKvHeads: 32, headDim: 128 }, "f16"), 16384);
 * ```
 */
export function kvRowBytes(text: { numKvHeads: number; headDim: number }, dtype: KvDtype): number {
  return 2 * text.numKvHeads * text.headDim * kvElementBytes(dtype);
}

/**
 * Bytes of one cache element of `dtype`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kvElementBytes } from "./sparse_kv.ts";
 * assert.deepEqual([kvElementBytes("f16"), kvElementBytes("f32")], [2, 4]);
 * ```
 */
export function kvElementBytes(dtype: KvDtype): number {
  return dtype === "f16" ? 2 : 4;
}

/** Rows held per layer, with their original positions. */
export class KvLedger {
  /** Bytes of one row in one layer: 2 × kvHeads × headDim × bytes per element. */
  readonly bytesPerRow: number;
  /** positions[layer] = original position ids of the rows held, in storage order. */
  readonly positions: number[][];
  /** The most bytes held at any point so far. */
  peakBytes = 0;

  /**
   * An empty ledger for `layers` decoder layers.
   *
   * @param layers decoder layers
   * @param bytesPerRow 2 × kvHeads × headDim × bytes per element
   * @example
   * ```ts
   * import assert from "node:assert/strict";
   * import { KvLedger } from "./sparse_kv.ts";
   * const kv = new KvLedger(2, 64);
   * kv.append([0, 1], [0, 1, 2]);
   * kv.admit(3, { fromLayer: 1, admitted: false });
   * assert.deepEqual(kv.rowsPerLayer(), [4, 3]);
   * assert.equal(kv.bytes(), 448);
   * assert.deepEqual(kv.positions[1], [0, 1, 2]);
   * ```
   */
  constructor(layers: number, bytesPerRow: number) {
    this.bytesPerRow = bytesPerRow;
    this.positions = Array.from({ length: layers }, () => []);
  }

  /** Appends the same positions to the listed layers (prefill). */
  append(layers: number[], positions: ArrayLike<number>): void {
    for (const l of layers) for (let i = 0; i < positions.length; i++) this.positions[l].push(positions[i]);
    this.#track();
  }

  /** One decoded token: layers < fromLayer always store it, layers ≥ fromLayer only if admitted. */
  admit(position: number, options: { fromLayer: number; admitted: boolean }): void {
    for (let l = 0; l < this.positions.length; l++) {
      if (l < options.fromLayer || options.admitted) this.positions[l].push(position);
    }
    this.#track();
  }

  /** Rows held per layer. */
  rowsPerLayer(): number[] {
    return this.positions.map((p) => p.length);
  }

  /** Bytes held now. */
  bytes(): number {
    return this.positions.reduce((n, p) => n + p.length, 0) * this.bytesPerRow;
  }

  #track(): void {
    this.peakBytes = Math.max(this.peakBytes, this.bytes());
  }
}

/**
 * CPU twin of the GPU `advance` kernel (kernels/decode_state.ts): updates a decode state in place.
 * state: [0] step, [1] token, [2] position, [3] seed, [4 + l] rows of layer l.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { advanceState } from "./sparse_kv.ts";
 * const state = new Uint32Array([0, 7, 10, 0, 5, 5]);
 * advanceState(state, new Uint32Array([0]), { layers: 2, admitLayer: 1, admitAll: false });
 * assert.deepEqual([...state], [1, 7, 11, 0, 6, 5]);
 * ```
 */
export function advanceState(
  state: Uint32Array,
  flags: Uint32Array,
  options: { layers: number; admitLayer: number; admitAll: boolean },
): void {
  const admitted = options.admitAll || flags[state[0]] === 1;
  for (let l = 0; l < options.layers; l++) if (l < options.admitLayer || admitted) state[4 + l]++;
  state[0]++;
  state[2]++;
}
