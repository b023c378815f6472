/**
 * The browser build in a real browser: `tools/bundle.ts` builds `dist/dynllava.js` and the page's
 * script into a temporary folder, a local `Deno.serve` serves the repository with that folder as
 * `/dist/`, and headless Chromium (Debian's `chromium`, driven by `playwright-core`) opens
 * `examples/web/index.html`, loads the demo checkpoint by URL, takes the sample scene through the
 * file input and answers; the tokens, kept patches and admissions must equal Deno's for the same
 * request (greedy), on the page's CPU backend and on its WebGPU backend (Chromium's SwiftShader
 * adapter, `--enable-unsafe-webgpu`). The second visit must come from Cache Storage.
 */
import assert from "node:assert/strict";
import { extname, join } from "node:path";
import { fileURLToPath } from "node:url";
// deno-lint-ignore no-import-prefix
import { type Browser, chromium, type Page } from "npm:playwright-core@1.65.1";
import { loadModel } from "../mod.ts";
import { bundle } from "../tools/bundle.ts";
import { testNeeding } from "./requirements.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const CHROMIUM = "/usr/bin/chromium";
const SAMPLE = join(ROOT, "assets/demo/sample.png");
const QUESTION = "Describe the image in detail.";
const MAX_NEW_TOKENS = 40;
/** Chromium's flags: WebGPU on its built-in SwiftShader Vulkan adapter (no GPU, no display). */
const CHROMIUM_ARGS = ["--enable-unsafe-webgpu", "--ignore-gpu-blocklist"];

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
  ".safetensors": "application/octet-stream",
};

/** Serves the repository, `/dist/` from `dist`; counts requests per path. */
function serveRepo(dist: string) {
  const hits = new Map<string, number>();
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (request) => {
    const path = decodeURIComponent(new URL(request.url).pathname);
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const file = path.startsWith("/dist/") ? join(dist, path.slice(6)) : join(ROOT, path);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    try {
      const body = await Deno.readFile(file);
      return new Response(body, {
        headers: { "content-type": TYPES[extname(file)] ?? "application/octet-stream" },
      });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  return { server, hits, base: `http://localhost:${server.addr.port}/` };
}

/** Opens the page, asks about the sample scene through the UI, and returns what the page answered. */
async function askInPage(page: Page, url: string) {
  const messages: string[] = [];
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  await page.goto(url);
  const settled = (states: string[]) =>
    page.waitForFunction(`${JSON.stringify(states)}.includes(document.body.dataset.state)`, undefined, {
      timeout: 300_000,
    });
  await settled(["ready", "error"]);
  const status = async () => `${await page.textContent("#status")}\n${messages.join("\n")}`;
  assert.equal(await page.getAttribute("body", "data-state"), "ready", await status());
  await page.setInputFiles("#file", SAMPLE);
  await page.waitForFunction('document.body.dataset.image === "ready"');
  await page.fill("#question", QUESTION);
  await page.fill("#max-tokens", String(MAX_NEW_TOKENS));
  await page.click("#run");
  await settled(["done", "error"]);
  assert.equal(await page.getAttribute("body", "data-state"), "done", await status());
  const state = await page.evaluate("globalThis.dynllavaPage") as {
    backend: string;
    lastResult: { tokens: number[]; visualKept: number[] | null; admitted: boolean[]; text: string };
  };
  const { tokens, visualKept, admitted, text } = state.lastResult;
  return {
    backend: state.backend,
    tokens,
    visualKept,
    admitted,
    text,
    answer: await page.textContent("#answer"),
  };
}

/** Deno's answer to the same request (the sample's PNG bytes, decoded by the runtime). */
async function askInDeno(backend: "cpu" | "webgpu") {
  const model = await loadModel(join(ROOT, "assets/demo"), { backend });
  try {
    const result = await model.generate({
      prompt: QUESTION,
      image: await Deno.readFile(SAMPLE),
      maxNewTokens: MAX_NEW_TOKENS,
    });
    return {
      tokens: result.tokens,
      visualKept: result.visualKept,
      admitted: result.admitted,
      text: result.text,
    };
  } finally {
    model.dispose();
  }
}

async function denoHasAdapter(): Promise<boolean> {
  return (await navigator.gpu?.requestAdapter().catch(() => null)) != null;
}

let chromiumMissing: string | null = null;
try {
  if (!(await Deno.stat(CHROMIUM)).isFile) chromiumMissing = `${CHROMIUM}`;
} catch {
  chromiumMissing = `Debian's chromium (${CHROMIUM}; apt-get install -y chromium)`;
}

testNeeding({
  name: "the page in headless Chromium answers with Deno's tokens, on the CPU and on WebGPU",
  missing: chromiumMissing,
  async fn() {
    const dist = await Deno.makeTempDir();
    let browser: Browser | null = null;
    const { server, hits, base } = serveRepo(dist);
    try {
      const [library] = await bundle({ out: dist, minify: true });
      assert.ok(library.bytes > 0 && library.gzipBytes < library.bytes);
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
      const context = await browser.newContext();
      const page = `${base}examples/web/index.html`;

      // The page's CPU backend runs the same TypeScript as Deno's: every token, kept patch and admission equal.
      const onCpu = await askInPage(await context.newPage(), `${page}?backend=cpu`);
      const denoCpu = await askInDeno("cpu");
      assert.equal(onCpu.backend, "cpu");
      assert.ok(onCpu.tokens.length > 0);
      assert.deepEqual(onCpu.tokens, denoCpu.tokens);
      assert.deepEqual(onCpu.visualKept, denoCpu.visualKept);
      assert.deepEqual(onCpu.admitted, denoCpu.admitted);
      assert.equal(onCpu.text, denoCpu.text);
      assert.equal(onCpu.answer, denoCpu.text, "the streamed pieces make up the text");
      assert.equal(hits.get("/assets/demo/model.safetensors"), 1);

      // Without ?backend the page takes WebGPU when Chromium gives an adapter (SwiftShader here).
      const onGpu = await askInPage(await context.newPage(), page);
      assert.equal(onGpu.backend, "webgpu", "Chromium gave no WebGPU adapter");
      const denoGpu = await denoHasAdapter() ? await askInDeno("webgpu") : denoCpu;
      assert.deepEqual(onGpu.tokens, denoGpu.tokens);
      assert.deepEqual(onGpu.visualKept, denoGpu.visualKept);
      assert.deepEqual(onGpu.admitted, denoGpu.admitted);
      // The second visit read the checkpoint from Cache Storage, checked by its sha256.
      assert.equal(hits.get("/assets/demo/model.safetensors"), 1);
      assert.equal(hits.get("/assets/demo/clip/model.safetensors"), 1);
    } finally {
      await browser?.close();
      await server.shutdown();
      await Deno.remove(dist, { recursive: true });
    }
  },
});
