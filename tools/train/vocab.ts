/**
 * A smaller vocabulary in LLaMA-2's own tokenizer.json format: the special tokens and the 256
 * byte-fallback tokens keep their ids (0–258), then the LLaMA-2 tokens a corpus uses, with every
 * token their BPE merges pass through, renumbered from 259 in LLaMA-2 order. Merges are kept when
 * both parts and the result are kept, in LLaMA-2's order, so the corpus tokenises into the same
 * pieces as with the full tokenizer; other text falls back to bytes.
 * @module
 */

interface TokenizerJson {
  model: { vocab: Record<string, number>; merges: string[] };
  [key: string]: unknown;
}

/** First id after the special and byte tokens. */
const FIRST_FREE_ID = 259;

/** The reduced tokenizer.json text and the map from LLaMA-2 ids to the new ids. */
export interface ReducedVocabulary {
  json: string;
  /** LLaMA-2 id → reduced id, for every kept token. */
  idMap: Map<number, number>;
}

/**
 * Keeps the tokens of `usedIds` and everything their merges need.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { reduceVocabulary } from "./vocab.ts";
 * const full = { model: { vocab: { "<unk>": 0, "▁": 259, "a": 260, "▁a": 261, "b": 262 }, merges: ["▁ a"] } };
 * const reduced = reduceVocabulary(JSON.stringify(full), new Set([261]));
 * assert.deepEqual(JSON.parse(reduced.json).model.vocab, { "<unk>": 0, "▁": 259, "a": 260, "▁a": 261 });
 * ```
 */
export function reduceVocabulary(fullJson: string, usedIds: Set<number>): ReducedVocabulary {
  const full = JSON.parse(fullJson) as TokenizerJson;
  const tokenOf = new Map(Object.entries(full.model.vocab).map(([token, id]) => [id, token]));
  const producers = new Map<string, [string, string][]>();
  for (const merge of full.model.merges) {
    const [a, b] = merge.split(" ");
    const list = producers.get(a + b) ?? [];
    list.push([a, b]);
    producers.set(a + b, list);
  }
  const kept = new Set<string>();
  const work = [...usedIds].filter((id) => id >= FIRST_FREE_ID).map((id) => tokenOf.get(id)!);
  while (work.length > 0) {
    const token = work.pop()!;
    if (kept.has(token)) continue;
    kept.add(token);
    for (const [a, b] of producers.get(token) ?? []) {
      if (a in full.model.vocab && b in full.model.vocab) work.push(a, b);
    }
  }
  const vocab: Record<string, number> = {};
  const idMap = new Map<number, number>();
  const ordered = Object.entries(full.model.vocab).sort((x, y) => x[1] - y[1]);
  let next = FIRST_FREE_ID;
  for (const [token, id] of ordered) {
    if (id < FIRST_FREE_ID || kept.has(token)) {
      const newId = id < FIRST_FREE_ID ? id : next++;
      vocab[token] = newId;
      idMap.set(id, newId);
    }
  }
  const merges = full.model.merges.filter((merge) => {
    const [a, b] = merge.split(" ");
    return kept.has(a + b) && a in vocab && b in vocab;
  });
  const json = JSON.stringify({ ...full, model: { ...full.model, vocab, merges } });
  return { json, idMap };
}
