/**
 * One-call check and measurement for a machine with a real GPU (it needs no network once Deno's
 * module cache holds this script's imports). It:
 * 1. prints the adapter and whether shader-f16 is granted;
 * 2. checks WebGPU against the CPU backend on every tiny fixture (logits NMSE, greedy tokens, both
 *    KV modes; the CPU's KV cache in the GPU's default kvDtype) — correctness on real hardware;
 * 3. writes a random-weight checkpoint of a real shape (`--shape 7b`: LLaVA-1.5-7B's decoder with
 *    CLIP ViT-L/14-336 and Dynamic-LLaVA predictors; `1b`: a smaller decoder; `tiny`: the fixture
 *    sizes, to try the script here), F16;
 * 4. benchmarks dense, FastV and dynamic in both KV modes on it (examples/bench.ts) and writes
 *    bench.json, bench.md, the SVG charts and check.json into `--out`.
 *
 *   deno run -A tools/device_check.ts --out DIR [--shape 7b|1b|tiny] [--new-tokens 64,256]
 *     [--no-cache-tokens 8,16] [--repeat 2] [--skip-parity]
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { loadModel } from "../mod.ts";
import { createGpu } from "../runtime/device/gpu.ts";
import { gradientImage, runBench } from "../examples/bench.ts";
import { benchMarkdown, renderBenchCharts } from "../examples/charts.ts";
import { type FixtureSizes, TINY_DEFAULT, writeFixture } from "./fixtures/checkpoint.ts";
import { ensureFixture, FIXTURES } from "./make_fixtures.ts";

/** Benchmark shapes: decoder sizes with a CLIP ViT-L/14-336 tower (or the tiny one). */
const CLIP_L = { hidden: 1024, heads: 16, layers: 24, intermediate: 4096, imageSize: 336, patchSize: 14 };
const SHAPES: Record<string, { sizes: FixtureSizes; layers: number }> = {
  "7b": {
    sizes: {
      ...TINY_DEFAULT,
      hidden: 4096,
      heads: 32,
      intermediate: 11008,
      vision: CLIP_L,
      sparse: releasedSparseConfig(),
    },
    layers: 32,
  },
  "1b": {
    sizes: {
      ...TINY_DEFAULT,
      hidden: 2048,
      heads: 16,
      intermediate: 5632,
      vision: CLIP_L,
      sparse: releasedSparseConfig(),
    },
    layers: 22,
  },
  tiny: { sizes: TINY_DEFAULT, layers: 4 },
};

/** Dynamic-LLaVA's released sparse_config. */
function releasedSparseConfig(): FixtureSizes["sparse"] {
  return {
    d_model: 512,
    nhead: 8,
    dim_feedforward: 2048,
    num_layers: 2,
    sparse_layer: 2,
    vision_keep_rate: 0.2,
  };
}

function nmse(a: Float32Array, b: Float32Array): number {
  let err = 0, ref = 0;
  for (let i = 0; i < a.length; i++) {
    err += (a[i] - b[i]) ** 2;
    ref += b[i] ** 2;
  }
  return err / ref;
}

/** GPU vs CPU on every fixture; returns one line per fixture. */
async function parity(): Promise<{ fixture: string; nmse: number; tokensEqual: boolean }[]> {
  const image = gradientImage(40, 30);
  const out = [];
  for (const name of Object.keys(FIXTURES)) {
    const dir = await ensureFixture(name);
    if (FIXTURES[name].tower === "hub") Deno.env.set("HF_HOME", `${dir}/hf`);
    // The CPU holds its KV cache as the GPU does (f16 where the device has shader-f16).
    const gpu = await loadModel(dir, { backend: "webgpu" });
    const cpu = await loadModel(dir, { backend: "cpu", kvDtype: gpu.kvDtype });
    try {
      const request = { prompt: "Describe the picture.", image: cpu.config.vision ? image : undefined };
      const error = nmse(await gpu.logits(request), await cpu.logits(request));
      let tokensEqual = true;
      for (const kvCache of [true, false]) {
        const r = {
          ...request,
          maxNewTokens: 8,
          stop: [],
          kvCache,
          policy: cpu.config.sparse ? "dynamic" as const : "dense" as const,
        };
        const [a, b] = [await cpu.generate(r), await gpu.generate(r)];
        tokensEqual &&= a.tokens.join() === b.tokens.join() && a.admitted.join() === b.admitted.join();
      }
      out.push({ fixture: name, nmse: error, tokensEqual });
      console.log(
        `parity ${name} (${gpu.kvDtype} KV): logits NMSE ${error.toExponential(2)}, tokens ${
          tokensEqual ? "equal" : "DIFFER"
        }`,
      );
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string", default: "device-out" },
      shape: { type: "string", default: "7b" },
      "new-tokens": { type: "string", default: "64,256" },
      "no-cache-tokens": { type: "string", default: "8,16" },
      repeat: { type: "string", default: "2" },
      "skip-parity": { type: "boolean", default: false },
    },
  });
  const shape = SHAPES[values.shape];
  if (!shape) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(", ")}`);
  await Deno.mkdir(values.out, { recursive: true });
  const gpu = await createGpu();
  const adapter = { name: gpu.adapterName, f16: gpu.f16, maxBindingBytes: gpu.maxBindingBytes };
  gpu.destroy();
  console.log(`adapter: ${adapter.name}, shader-f16 ${adapter.f16}`);
  const checks = values["skip-parity"] ? [] : await parity();

  const t0 = performance.now();
  const dir = await Deno.makeTempDir({ prefix: `dynllava-${values.shape}-` });
  await writeFixture(dir, {
    layout: "llava_llama",
    dtype: "F16",
    predictors: true,
    sizes: shape.sizes,
    layers: shape.layers,
    shards: values.shape === "tiny" ? 1 : 8,
  });
  const writeMs = performance.now() - t0;
  console.log(`wrote a random ${values.shape} checkpoint in ${(writeMs / 1000).toFixed(1)} s`);
  const t1 = performance.now();
  const model = await loadModel(dir, { backend: "webgpu" });
  const loadMs = performance.now() - t1;
  console.log(`loaded in ${(loadMs / 1000).toFixed(1)} s`);
  try {
    const policies = ["dense", "fastv", "dynamic"] as const;
    const options = {
      image: gradientImage(640, 480),
      onRow: (row: unknown) => console.error(JSON.stringify(row)),
    };
    const repeat = Number(values.repeat);
    // With KV cache at the requested lengths and batch 1 and 4; without (every step recomputes
    // the whole context) at short lengths only, to stay within a few minutes of device time.
    const rows = [
      ...await runBench(model, {
        policies: [...policies],
        kvModes: [true],
        newTokens: values["new-tokens"].split(",").map(Number),
        batches: [1, 4],
        repeat,
        warmup: 1,
      }, options),
      ...await runBench(model, {
        policies: [...policies],
        kvModes: [false],
        newTokens: values["no-cache-tokens"].split(",").map(Number),
        batches: [1],
        repeat,
        warmup: 1,
      }, options),
    ];
    await Deno.writeTextFile(
      join(values.out, "bench.json"),
      JSON.stringify({ shape: values.shape, adapter, rows }, null, 2),
    );
    await Deno.writeTextFile(join(values.out, "bench.md"), benchMarkdown(rows));
    await renderBenchCharts(rows, values.out);
    console.log(benchMarkdown(rows));
  } finally {
    model.dispose();
    await Deno.remove(dir, { recursive: true });
  }
  await Deno.writeTextFile(
    join(values.out, "check.json"),
    JSON.stringify({ adapter, parity: checks, writeMs, loadMs }, null, 2),
  );
  if (checks.some((c) => !c.tokensEqual || !(c.nmse < 1e-4))) {
    console.error("parity FAILED on this device");
    Deno.exit(1);
  }
}

if (import.meta.main) await main();
