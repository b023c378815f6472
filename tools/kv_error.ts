/**
 * What an f16 KV cache costs in accuracy: per checkpoint and policy, the logits NMSE of the
 * prompt's next token with an f16 cache against an f32 one, and the largest difference of the
 * teacher-forced log-probabilities of the f32 run's greedy tokens (every decode step reads the
 * cache). Same backend, same weights; the tiny fixtures and the trained demo model by default.
 *
 *   deno run -A tools/kv_error.ts [--backend cpu|webgpu] [--tokens 32] [--model DIR]
 * @module
 */
import { parseArgs } from "node:util";
import { loadModel, type Model } from "../mod.ts";
import { ensureFixture, FIXTURES } from "./make_fixtures.ts";
import { makeTestImage } from "./fixtures/images.ts";
import { nmse } from "../examples/peer.ts";

/** One line per policy the model runs: f16 against f32 KV. */
async function measure(label: string, model: Model, tokens: number): Promise<void> {
  const image = model.config.vision ? makeTestImage(40, 30, { pattern: "photo", seed: 1 }) : undefined;
  const policies: ("dense" | "fastv" | "dynamic")[] = ["dense"];
  if (image) policies.push("fastv");
  if (model.config.sparse) policies.push("dynamic");
  for (const policy of policies) {
    const request = { prompt: "Describe the image in detail.", image, policy };
    const [f16, f32] = [
      await model.logits({ ...request, kvDtype: "f16" }),
      await model.logits({ ...request, kvDtype: "f32" }),
    ];
    const greedy = await model.generate({ ...request, maxNewTokens: tokens, stop: [], kvDtype: "f32" });
    const target = greedy.tokens;
    const [a, b] = [
      await model.logProbs({ ...request, target, kvDtype: "f16" }),
      await model.logProbs({ ...request, target, kvDtype: "f32" }),
    ];
    const worst = Math.max(...a.map((v, i) => Math.abs(v - b[i])));
    const short = await model.generate({ ...request, maxNewTokens: tokens, stop: [], kvDtype: "f16" });
    const same = short.tokens.findIndex((id, i) => id !== target[i]);
    console.log(
      `${label} ${policy}: prompt logits NMSE ${nmse(f16, f32).toExponential(2)}, ` +
        `log-prob max |diff| over ${target.length} tokens ${worst.toExponential(2)}, ` +
        `greedy tokens ${same < 0 ? "equal" : `differ from token ${same}`}; ` +
        `KV bytes ${short.stats.kvCache.bytes} (f16) vs ${greedy.stats.kvCache.bytes} (f32)`,
    );
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      backend: { type: "string", default: "cpu" },
      tokens: { type: "string", default: "32" },
      model: { type: "string" },
    },
  });
  const backend = values.backend as "cpu" | "webgpu";
  if (backend !== "cpu" && backend !== "webgpu") throw new Error("--backend must be cpu or webgpu");
  const tokens = Number(values.tokens);
  const models: [string, string | URL][] = values.model ? [[values.model, values.model]] : [
    ...Object.keys(FIXTURES).map((name): [string, string] => [name, name]),
    ["demo", new URL("../assets/demo/", import.meta.url)],
  ];
  for (const [label, where] of models) {
    const dir = typeof where === "string" && where in FIXTURES ? await ensureFixture(where) : where;
    if (typeof where === "string" && FIXTURES[where]?.tower === "hub") Deno.env.set("HF_HOME", `${dir}/hf`);
    const model = await loadModel(dir, { backend });
    try {
      await measure(label, model, tokens);
    } finally {
      model.dispose();
    }
  }
}

if (import.meta.main) await main();
