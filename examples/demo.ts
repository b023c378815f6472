/**
 * The demo: the embedded checkpoint (a tiny LLaVA-1.5 with Dynamic-LLaVA predictors, trained on
 * the shapes task by tools/train/) answers a short question and describes the bundled sample
 * scene. It prints the answers, a map of the image patches the vision predictor kept, the output
 * tokens the text predictor admitted to the KV cache, and the savings against dense decoding of
 * the same requests; `--html FILE` writes the same as a page (pruned patches blanked, refused
 * output tokens greyed).
 *
 * ```sh
 * deno run -A examples/demo.ts [--image FILE --question TEXT] [--backend cpu|webgpu] [--html FILE] \
 *   [--model DIR]   # another checkpoint of the same task
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { Buffer } from "node:buffer";
import {
  decodeImage,
  DynllavaError,
  type GenerateResult,
  InputError,
  loadModel,
  type Model,
  type RgbImage,
} from "../mod.ts";

const DEMO_DIR = new URL("../assets/demo/", import.meta.url);
/** The bundled sample scene and the short question the demo asks about it. */
export const SAMPLE_IMAGE = new URL("sample.png", DEMO_DIR);
export const SAMPLE_QUESTION = "What shape is the blue object?";
const SHORT_SUFFIX = "\nAnswer the question using a single word or phrase.";
const DESCRIBE = "Describe the image in detail.";

/** Named colours for the plain-text patch map (first letter shown for a kept patch). */
const PALETTE: [string, [number, number, number]][] = [
  ["r", [220, 40, 40]],
  ["g", [40, 170, 60]],
  ["b", [40, 80, 220]],
  ["y", [235, 200, 40]],
  ["p", [140, 60, 180]],
  ["o", [240, 140, 30]],
  ["+", [255, 255, 255]],
  ["+", [210, 210, 210]],
  ["+", [245, 235, 215]],
];

/** Mean colour of each cell of a grid×grid split of the image: [grid·grid][3]. */
function cellColours(image: RgbImage, grid: number): [number, number, number][] {
  const cells: [number, number, number][] = [];
  for (let gy = 0; gy < grid; gy++) {
    for (let gx = 0; gx < grid; gx++) {
      const sum = [0, 0, 0];
      let count = 0;
      const x0 = Math.floor(gx * image.width / grid), x1 = Math.floor((gx + 1) * image.width / grid);
      const y0 = Math.floor(gy * image.height / grid), y1 = Math.floor((gy + 1) * image.height / grid);
      for (let y = y0; y < y1; y++) {
        for (let x = x0; x < x1; x++) {
          for (let c = 0; c < 3; c++) sum[c] += image.data[(y * image.width + x) * 3 + c];
          count++;
        }
      }
      cells.push(sum.map((v) => Math.round(v / Math.max(1, count))) as [number, number, number]);
    }
  }
  return cells;
}

/** Letter of the palette colour nearest to `rgb`. */
function nearestLetter(rgb: [number, number, number]): string {
  let best = PALETTE[0][0], bestDistance = Infinity;
  for (const [letter, ref] of PALETTE) {
    const distance = ref.reduce((d, v, c) => d + (v - rgb[c]) ** 2, 0);
    if (distance < bestDistance) [best, bestDistance] = [letter, distance];
  }
  return best;
}

/**
 * The kept-patch map as text: one row per patch row; a kept patch shows the letter of its
 * nearest shape colour (r g b y p o, + for background), a pruned one `·`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { keptMap } from "./demo.ts";
 * const image = { width: 2, height: 2, data: new Uint8Array([220, 40, 40, 255, 255, 255, 255, 255, 255, 40, 80, 220]) };
 * assert.equal(keptMap(image, { grid: 2, kept: [0, 1] }), "r +\n· ·");
 * ```
 */
export function keptMap(image: RgbImage, options: { grid: number; kept: number[] | null }): string {
  const { grid, kept } = options;
  const keptSet = new Set(kept ?? Array.from({ length: grid * grid }, (_, i) => i));
  const cells = cellColours(image, grid);
  const rows: string[] = [];
  for (let gy = 0; gy < grid; gy++) {
    const row: string[] = [];
    for (let gx = 0; gx < grid; gx++) {
      const i = gy * grid + gx;
      row.push(keptSet.has(i) ? nearestLetter(cells[i]) : "·");
    }
    rows.push(row.join(" "));
  }
  return rows.join("\n");
}

/** Generated tokens as text pieces with their admission: the last token (never fed back) counts as admitted. */
function tokenPieces(model: Model, result: GenerateResult): { text: string; admitted: boolean }[] {
  return result.tokens
    .filter((id) => id !== model.tokenizer.eosId)
    .map((id, i) => ({
      text: (model.tokenizer.idToToken(id) ?? "").replaceAll("▁", " "),
      admitted: result.admitted[i] ?? true,
    }));
}

/** The description with refused tokens in [brackets]. */
function markedText(pieces: { text: string; admitted: boolean }[]): string {
  return pieces.map((p) => p.admitted ? p.text : p.text.replace(/^( ?)(.*)$/, "$1[$2]")).join("").trim();
}

function percentLess(value: number, dense: number): string {
  return `${Math.round(100 * (1 - value / dense))}% less`;
}

/** One request under dynamic and dense. */
async function askBoth(model: Model, image: RgbImage, prompt: string, maxNewTokens: number) {
  const dynamic = await model.generate({ prompt, image, policy: "dynamic", maxNewTokens });
  const dense = await model.generate({ prompt, image, policy: "dense", maxNewTokens });
  return { dynamic, dense };
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

/** The Figure-6 style page: the image with pruned patches blanked, the description with refused tokens greyed. */
function htmlPage(input: {
  png: Uint8Array;
  grid: number;
  kept: number[];
  question: string;
  answer: string;
  pieces: { text: string; admitted: boolean }[];
  savings: string;
}): string {
  const keptSet = new Set(input.kept), cell = 100 / input.grid;
  const blanks = Array.from({ length: input.grid * input.grid }, (_, i) => i).filter((i) => !keptSet.has(i))
    .map((i) =>
      `<div style="position:absolute;left:${(i % input.grid) * cell}%;top:${
        Math.floor(i / input.grid) * cell
      }%;width:${cell}%;height:${cell}%;background:#fff"></div>`
    ).join("");
  const tokens = input.pieces.map((p) =>
    p.admitted ? escapeHtml(p.text) : `<span style="color:#bbb">${escapeHtml(p.text)}</span>`
  ).join("");
  return `<!doctype html><meta charset="utf-8"><title>dynllava demo</title>
<body style="font-family:sans-serif;max-width:60em;margin:2em auto;display:flex;gap:2em">
<div><div style="position:relative;width:336px;height:336px;outline:1px solid #888">
<img src="data:image/png;base64,${
    Buffer.from(input.png).toString("base64")
  }" width="336" height="336" style="display:block">${blanks}</div>
<p>${input.kept.length} of ${input.grid * input.grid} image patches kept</p></div>
<div><p><b>Q:</b> ${escapeHtml(input.question)}<br><b>A:</b> ${escapeHtml(input.answer)}</p>
<p><b>Q:</b> ${DESCRIBE}<br><b>A:</b> ${tokens}</p>
<p style="color:#666">Grey tokens were refused entry to the KV cache. ${escapeHtml(input.savings)}</p></div>
</body>
`;
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      image: { type: "string" },
      question: { type: "string" },
      backend: { type: "string", default: "cpu" },
      html: { type: "string" },
      model: { type: "string" },
    },
  });
  if (values.backend !== "cpu" && values.backend !== "webgpu") {
    throw new InputError(`Cannot start: --backend must be cpu or webgpu, got ${values.backend}`, "--backend");
  }
  const png = values.image
    ? await Deno.readFile(values.image)
    : new Uint8Array(await (await fetch(SAMPLE_IMAGE)).arrayBuffer());
  const question = values.question ?? (values.image ? undefined : SAMPLE_QUESTION);
  if (question === undefined) throw new InputError("Cannot start: --image needs --question", "--question");
  const image = await decodeImage(png);
  const model = await loadModel(values.model ?? DEMO_DIR, { backend: values.backend });
  try {
    const grid = model.config.vision!.imageSize / model.config.vision!.patchSize;
    const short = await askBoth(model, image, question + SHORT_SUFFIX, 8);
    const long = await askBoth(model, image, DESCRIBE, 160);
    const kept = long.dynamic.visualKept ?? [];
    const pieces = tokenPieces(model, long.dynamic);
    const fed = long.dynamic.admitted.length, admitted = long.dynamic.admitted.filter(Boolean).length;
    const s = long.dynamic.stats, d = long.dense.stats;
    const decodePerToken = (stats: typeof s) => stats.flops.decode.flopsExact / Math.max(1, stats.newTokens);
    const savings = `Against dense on the description: KV cache at the end ${
      (s.kvCache.bytes / 1024).toFixed(1)
    } KiB vs ${(d.kvCache.bytes / 1024).toFixed(1)} KiB (${
      percentLess(s.kvCache.bytes, d.kvCache.bytes)
    }), prefill FLOPs ${
      percentLess(s.flops.prefill.flopsExact, d.flops.prefill.flopsExact)
    }, decode FLOPs per token ${percentLess(decodePerToken(s), decodePerToken(d))}.`;
    console.log(`Q: ${question}`);
    console.log(`A: ${short.dynamic.text.trim()}    (dense: ${short.dense.text.trim()})`);
    console.log(`\nimage patches kept by the vision predictor: ${kept.length} of ${grid * grid}`);
    console.log(keptMap(image, { grid, kept }).split("\n").map((line) => "  " + line).join("\n"));
    console.log(`\nQ: ${DESCRIBE}`);
    console.log(`A: ${markedText(pieces)}`);
    console.log(
      `\noutput tokens admitted to the KV cache: ${admitted} of ${fed} ([refused] ones in brackets)`,
    );
    console.log(savings);
    if (values.html) {
      const answer = short.dynamic.text.trim();
      await Deno.writeTextFile(values.html, htmlPage({ png, grid, kept, question, answer, pieces, savings }));
      console.error(`wrote ${values.html}`);
    }
  } finally {
    model.dispose();
  }
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    if (!(error instanceof DynllavaError)) throw error;
    console.error(`${error.name}: ${error.message} (${error.where})`);
    Deno.exit(2);
  }
}
