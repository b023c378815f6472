/**
 * Writes the tokenised training and validation sequences of the shapes task for
 * `tools/train/train.py`: one JSON object per line,
 * `{ seed, scene, ids, labels, longSpan }` where `ids` holds LLaMA token ids with -200 where the
 * image goes (the llava_v1 template, multi-turn as LLaVA's instruction data), `labels` the
 * target id at answer positions and -100 elsewhere, and `longSpan` the [start, end) of a long
 * answer (a description) in `ids`, or null.
 *
 * ```sh
 * deno run -A tools/train/make_data.ts --out tools/train/out [--train 60000] [--val 256]
 * ```
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { encodeWithImages, formatLlavaV1 } from "../../runtime/text/template.ts";
import { loadTokenizer, type Tokenizer, tokenizerFromJson } from "../../runtime/text/tokenizer.ts";
import { reduceVocabulary } from "./vocab.ts";
import {
  makeScene,
  type QuestionKind,
  type Scene,
  type SceneQuestion,
  sceneQuestions,
  seededRandom,
  type Split,
  SPLIT_SEEDS,
} from "../fixtures/scenes.ts";

/** One training sequence. */
export interface TrainSequence {
  seed: number;
  scene: Scene;
  ids: number[];
  labels: number[];
  longSpan: [number, number] | null;
}

const SHORT_KINDS: QuestionKind[] = ["color", "shape", "count", "exists", "where"];

/**
 * The turns of one sequence: a description alone (3 in 10) or 2–7 short questions (many answers per
 * image: the vision tower is the expensive part of a step, the extra turns cost little).
 */
function chooseTurns(all: Record<QuestionKind, SceneQuestion[]>, random: () => number): SceneQuestion[] {
  if (random() < 0.3) return all.describe;
  const wanted = 2 + Math.floor(random() * 6);
  const turns: SceneQuestion[] = [];
  for (let attempt = 0; turns.length < wanted && attempt < 20; attempt++) {
    const pool = all[SHORT_KINDS[Math.floor(random() * SHORT_KINDS.length)]];
    if (pool.length === 0) continue;
    const question = pool[Math.floor(random() * pool.length)];
    if (!turns.includes(question)) turns.push(question);
  }
  return turns;
}

/** Tokenises the turns: prompt ids get label -100, answer ids (and `</s>`) are their own labels. */
function tokenise(tokenizer: Tokenizer, turns: SceneQuestion[]): Omit<TrainSequence, "seed" | "scene"> {
  const ids: number[] = [], labels: number[] = [];
  let longSpan: [number, number] | null = null;
  turns.forEach((turn, i) => {
    const prompt = i === 0
      ? encodeWithImages(tokenizer, formatLlavaV1(`<image>\n${turn.question}`, { images: 1 }))
      : tokenizer.encode(`USER: ${turn.question} ASSISTANT:`, { addSpecialTokens: false });
    ids.push(...prompt);
    labels.push(...prompt.map(() => -100));
    const answer = [...tokenizer.encode(turn.answer, { addSpecialTokens: false }), tokenizer.eosId];
    if (turn.kind === "describe") longSpan = [ids.length, ids.length + answer.length];
    ids.push(...answer);
    labels.push(...answer);
  });
  return { ids, labels, longSpan };
}

/** `count` sequences of a split, scene seeds taken in order from its range. */
export function makeSequences(tokenizer: Tokenizer, split: Split, count: number): TrainSequence[] {
  const sequences: TrainSequence[] = [];
  for (let i = 0; i < count; i++) {
    const seed = SPLIT_SEEDS[split] + i, scene = makeScene(seed);
    const turns = chooseTurns(sceneQuestions(scene, seed), seededRandom(seed * 7 + 1));
    sequences.push({ seed, scene, ...tokenise(tokenizer, turns) });
  }
  return sequences;
}

async function writeJsonl(path: string, sequences: TrainSequence[]): Promise<void> {
  await Deno.writeTextFile(path, sequences.map((s) => JSON.stringify(s)).join("\n") + "\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string" }, train: { type: "string" }, val: { type: "string" } },
  });
  const out = values.out ?? "tools/train/out";
  await Deno.mkdir(out, { recursive: true });
  const fullPath = new URL("llama2_tokenizer.json", import.meta.url).pathname;
  const full = await loadTokenizer(fullPath);
  const counts = { train: Number(values.train ?? 40000), val: Number(values.val ?? 256), test: 2000 };
  const used = new Set<number>();
  for (const split of ["train", "val", "test"] as const) {
    for (const s of makeSequences(full, split, counts[split])) s.ids.forEach((id) => id >= 0 && used.add(id));
  }
  const reduced = reduceVocabulary(await Deno.readTextFile(fullPath), used);
  await Deno.writeTextFile(join(out, "tokenizer.json"), reduced.json);
  const tokenizer = tokenizerFromJson(reduced.json, "tokenizer.json");
  const train = makeSequences(tokenizer, "train", counts.train);
  const val = makeSequences(tokenizer, "val", counts.val);
  const check = makeSequences(full, "train", counts.train);
  check.forEach((s, i) => {
    const mapped = s.ids.map((id) => id < 0 ? id : reduced.idMap.get(id));
    if (mapped.join() !== train[i].ids.join()) {
      throw new Error(`reduced vocabulary differs on seed ${s.seed}`);
    }
  });
  console.log(`vocabulary: ${reduced.idMap.size} tokens`);
  await writeJsonl(join(out, "train.jsonl"), train);
  await writeJsonl(join(out, "val.jsonl"), val);
  const longest = Math.max(...train.map((s) => s.ids.length));
  console.log(
    `wrote ${train.length} train and ${val.length} val sequences (longest ${longest} ids) to ${out}`,
  );
}
