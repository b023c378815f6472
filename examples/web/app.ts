/**
 * The script of `examples/web/index.html` (built to `dist/web/app.js` by `deno task bundle`, beside
 * `dist/dynllava.js`, which it imports). Loads a checkpoint by URL (`?model=URL`, default the demo
 * checkpoint in `assets/demo/`) on WebGPU when the browser gives an adapter, else on the CPU backend
 * (`?backend=cpu|webgpu` chooses), takes an image from the file input, a drop or the sample button,
 * and streams the answer: the image with the patches the vision predictor pruned blanked, the
 * output tokens refused entry to the KV cache greyed (the demo's view, `deno task demo --html`).
 *
 * For tests, `globalThis.dynllavaPage` holds the backend and the last result, `<body data-state>`
 * says "loading", "ready", "running", "done" or "error", and `data-image` "ready" once an image is in.
 * @module
 */
import { decodeImage, type GenerateResult, loadModel, type Model, type RgbImage } from "../../mod.ts";

/** The parts of the page's DOM this script uses (Deno's types do not describe a page). */
interface PageElement {
  textContent: string | null;
  value: string;
  disabled: boolean;
  className: string;
  files: ArrayLike<Blob> | null;
  classList: { toggle(name: string, on?: boolean): void };
  dataset: Record<string, string>;
  addEventListener(type: string, listener: (event: PageEvent) => void): void;
  append(...nodes: (PageElement | string)[]): void;
  replaceChildren(...nodes: (PageElement | string)[]): void;
  getContext(kind: "2d"): PageCanvas2d;
}
interface PageEvent {
  preventDefault(): void;
  dataTransfer?: { files: ArrayLike<Blob> } | null;
}
interface PageCanvas2d {
  fillStyle: string;
  fillRect(x: number, y: number, width: number, height: number): void;
  drawImage(image: ImageBitmap, x: number, y: number, width: number, height: number): void;
}
interface PageDocument {
  body: PageElement;
  getElementById(id: string): PageElement | null;
  createElement(tag: string): PageElement;
}

/** What tests read. */
export interface PageState {
  /** The backend the model runs on. */
  backend: "webgpu" | "cpu";
  /** The last answer's result. */
  lastResult: GenerateResult | null;
  /** The last error's message. */
  lastError: string | null;
}

const page = (globalThis as unknown as { document: PageDocument }).document;
const $ = (id: string): PageElement => page.getElementById(id)!;
const CANVAS_SIDE = 336;

function setState(state: "loading" | "ready" | "running" | "done" | "error", status?: string): void {
  page.body.dataset.state = state;
  if (status !== undefined) $("status").textContent = status;
}

/** The backend asked for, else WebGPU when the browser gives an adapter, else the CPU. */
async function chooseBackend(asked: string | null): Promise<{ backend: "webgpu" | "cpu"; note: string }> {
  if (asked === "cpu" || asked === "webgpu") return { backend: asked, note: `${asked} backend (asked)` };
  const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
  if (adapter) return { backend: "webgpu", note: "WebGPU" };
  return {
    backend: "cpu",
    note: "CPU backend: this browser gave no WebGPU adapter (Chrome/Edge 113+, or enable WebGPU)",
  };
}

/** Draws the image as the model sees it (padded to a square, centred) and blanks the pruned patches. */
async function drawImage(bytes: Uint8Array, image: RgbImage, kept: number[] | null, grid: number) {
  const context = $("image").getContext("2d");
  const side = Math.max(image.width, image.height), scale = CANVAS_SIDE / side;
  const [w, h] = [image.width * scale, image.height * scale];
  context.fillStyle = "#7a7468"; // LLaVA pads with the CLIP mean colour
  context.fillRect(0, 0, CANVAS_SIDE, CANVAS_SIDE);
  const bitmap = await createImageBitmap(new Blob([bytes as Uint8Array<ArrayBuffer>]));
  context.drawImage(bitmap, (CANVAS_SIDE - w) / 2, (CANVAS_SIDE - h) / 2, w, h);
  bitmap.close();
  if (kept === null) return;
  const keptSet = new Set(kept), cell = CANVAS_SIDE / grid;
  context.fillStyle = "rgba(255, 255, 255, 0.85)";
  for (let i = 0; i < grid * grid; i++) {
    if (!keptSet.has(i)) context.fillRect((i % grid) * cell, Math.floor(i / grid) * cell, cell, cell);
  }
  $("kept").textContent = `${kept.length} of ${grid * grid} image patches kept`;
}

/** Streams one answer into #answer; refused tokens are greyed when the result arrives. */
async function ask(model: Model, state: PageState, bytes: Uint8Array): Promise<void> {
  setState("running", "Answering…");
  $("run").disabled = true;
  const answer = $("answer");
  answer.replaceChildren();
  $("stats").textContent = "";
  try {
    const image = await decodeImage(bytes);
    const grid = Math.round(Math.sqrt(model.config.vision?.tokensPerImage ?? 1));
    await drawImage(bytes, image, null, grid);
    const policy = $("policy").value;
    const run = model.generate({
      prompt: $("question").value,
      image,
      maxNewTokens: Number($("max-tokens").value),
      ...(policy ? { policy: policy as "dynamic" | "dense" | "fastv" } : {}),
    });
    const pieces: PageElement[] = [];
    for await (const event of run) {
      const piece = page.createElement("span");
      piece.textContent = event.text;
      pieces.push(piece);
      answer.append(piece);
    }
    const result = await run;
    result.tokens.forEach((_, i) => pieces[i]?.classList.toggle("refused", result.admitted[i] === false));
    await drawImage(bytes, image, result.visualKept, grid);
    const s = result.stats;
    $("stats").textContent = `${s.newTokens} tokens, ${s.tokensPerSecond.toFixed(1)} tokens/s; ` +
      `${s.admittedCount} admitted to the KV cache; KV cache ${(s.kvCache.bytes / 1024).toFixed(1)} KiB`;
    state.lastResult = result;
    setState("done", `Done (${state.backend}).`);
  } catch (err) {
    state.lastError = (err as Error).message;
    setState("error", `Error: ${(err as Error).message}`);
  } finally {
    $("run").disabled = false;
  }
}

async function start(): Promise<void> {
  const params = new URLSearchParams(location.search);
  const { backend, note } = await chooseBackend(params.get("backend"));
  const state: PageState = { backend, lastResult: null, lastError: null };
  (globalThis as { dynllavaPage?: PageState }).dynllavaPage = state;
  const progress = $("progress") as unknown as { value: number; max: number };
  setState("loading", `Loading the model (${note})…`);
  const model = await loadModel(params.get("model") ?? "../../assets/demo/", {
    backend,
    onProgress(p) {
      progress.max = Math.max(p.totalBytes, 1);
      progress.value = p.loadedBytes;
      $("status").textContent = `Loading (${p.phase}: ${p.item})…`;
    },
  });
  setState("ready", `Ready: ${note}. Choose an image and ask.`);
  let bytes: Uint8Array | null = null;
  const take = async (file: Blob | undefined) => {
    if (!file) return;
    bytes = new Uint8Array(await file.arrayBuffer());
    const image = await decodeImage(bytes).catch((err) => {
      setState("error", `Error: ${(err as Error).message}`);
      return null;
    });
    if (image) await drawImage(bytes, image, null, 1);
    page.body.dataset.image = image ? "ready" : "bad";
  };
  $("file").addEventListener("change", () => take($("file").files?.[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.toggle("over", true);
  });
  drop.addEventListener("dragleave", () => drop.classList.toggle("over", false));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.toggle("over", false);
    take(event.dataTransfer?.files[0]);
  });
  $("sample").addEventListener("click", async () => {
    take(await (await fetch(new URL("../../assets/demo/sample.png", location.href))).blob());
  });
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    if (bytes === null) setState("error", "Choose an image first (file, drop or the sample).");
    else ask(model, state, bytes);
  });
  $("run").disabled = false;
}

start().catch((err) => setState("error", `Error: ${(err as Error).message}`));
