/**
 * Whole-model tests: the WebGPU backend against the CPU backend on every fixture (logits and greedy
 * tokens, both KV modes), and the Dynamic-LLaVA sparsification rules checked case by case with
 * expectations derived here from the predictors' raw outputs, independently of the runtime's
 * selection code.
 */
import assert from "node:assert/strict";
import { ensureFixture, FIXTURES } from "../tools/make_fixtures.ts";
import {
  dynamicPolicy,
  InputError,
  type KvDtype,
  kvRowBytes,
  loadModel,
  type Model,
  type Policy,
  PolicyError,
} from "../mod.ts";
import { nmse } from "./kernel_util.ts";
import { adapterHasShaderF16, testNeeding } from "./requirements.ts";

const IMAGE = (() => {
  const width = 30, height = 20, data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + (i % 7) * 11) % 256;
  return { width, height, data };
})();

/** A fixture on `backend`, its KV cache in f32 unless asked (the GPU's default would be f16). */
async function open(name: string, backend: "cpu" | "webgpu", kvDtype: KvDtype = "f32"): Promise<Model> {
  const dir = await ensureFixture(name);
  if (FIXTURES[name].tower === "hub") Deno.env.set("HF_HOME", `${dir}/hf`);
  return await loadModel(dir, { backend, kvDtype });
}

for (const name of Object.keys(FIXTURES)) {
  Deno.test(`loadModel() on ${name}: WebGPU equals CPU on logits, tokens and decisions, every policy, both KV modes`, async () => {
    const cpu = await open(name, "cpu"), gpu = await open(name, "webgpu");
    try {
      const image = cpu.config.vision ? IMAGE : undefined;
      const policies: ("dense" | "fastv" | "dynamic")[] = ["dense"];
      if (image) policies.push("fastv");
      if (cpu.config.sparse) policies.push("dynamic");
      const sixteenBit = FIXTURES[name].dtype !== "F32";
      for (const policy of policies) {
        const request = { prompt: "Tell me a story about a red fox.", image, policy };
        const [a, b] = [await cpu.logits(request), await gpu.logits(request)];
        const bound = sixteenBit ? 1e-6 : 1e-8;
        assert.ok(nmse(b, a) < bound, `${policy}: logits NMSE ${nmse(b, a)} ≥ ${bound}`);
        for (const kvCache of [true, false]) {
          const what = `${policy}, kvCache ${kvCache}`;
          const r = { ...request, maxNewTokens: kvCache ? 16 : 8, stop: [], kvCache };
          const [x, y] = [await cpu.generate(r), await gpu.generate(r)];
          assert.equal(x.tokens.length, r.maxNewTokens);
          assert.deepEqual(y.tokens, x.tokens, what);
          assert.equal(y.text, x.text);
          assert.deepEqual(y.visualKept, x.visualKept, what);
          assert.deepEqual(y.admitted, x.admitted, what);
          assert.deepEqual(y.stats.kvCache.rowsPerLayer, x.stats.kvCache.rowsPerLayer, what);
          if (!kvCache) continue;
          // Every decode step's logits, teacher-forced on the same tokens.
          const target = x.tokens;
          const [p, q] = [
            await cpu.logProbs({ ...request, target }),
            await gpu.logProbs({ ...request, target }),
          ];
          const worst = Math.max(...p.map((v, i) => Math.abs(v - q[i])));
          assert.ok(worst < (sixteenBit ? 1e-2 : 1e-4), `${what}: log-probabilities differ by ${worst}`);
        }
      }
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
  });
}

/** Why f16 KV caches cannot run on WebGPU here, or null (reported as ignored; a failure under CI=true). */
const KV_F16_MISSING = await adapterHasShaderF16() ? null : "an adapter with shader-f16";

/**
 * Logits NMSE bound of an f16 KV cache against an f32 one on the same backend: rounding K and V to
 * f16 (relative error ≤ 2⁻¹¹) moved the fixtures' logits by NMSE ≤ 2.3e-7 (README, "Measured").
 */
const F16_KV_NMSE = 2e-6;

for (const name of Object.keys(FIXTURES)) {
  testNeeding({
    name:
      `loadModel({ kvDtype: "f16" }) on ${name}: WebGPU equals CPU, KV bytes halve, logits stay close to f32 KV`,
    missing: KV_F16_MISSING,
    fn: async () => {
      const cpu = await open(name, "cpu", "f16"), gpu = await open(name, "webgpu", "f16");
      try {
        assert.deepEqual([cpu.kvDtype, gpu.kvDtype], ["f16", "f16"]);
        const image = cpu.config.vision ? IMAGE : undefined;
        const policies: ("dense" | "fastv" | "dynamic")[] = ["dense"];
        if (image) policies.push("fastv");
        if (cpu.config.sparse) policies.push("dynamic");
        const sixteenBit = FIXTURES[name].dtype !== "F32";
        const rowBytes = kvRowBytes(cpu.config.text, "f16");
        for (const policy of policies) {
          const request = { prompt: "Tell me a story about a red fox.", image, policy };
          const [a, b] = [await cpu.logits(request), await gpu.logits(request)];
          const bound = sixteenBit ? 1e-6 : 1e-7;
          assert.ok(nmse(b, a) < bound, `${policy}: logits NMSE ${nmse(b, a)} ≥ ${bound}`);
          const f32 = await cpu.logits({ ...request, kvDtype: "f32" });
          assert.ok(nmse(a, f32) < F16_KV_NMSE, `${policy}: f16 vs f32 KV logits NMSE ${nmse(a, f32)}`);
          assert.ok(nmse(a, f32) > 0, `${policy}: an f16 cache should round something`);
          const r = { ...request, maxNewTokens: 16, stop: [] };
          const [x, y] = [await cpu.generate(r), await gpu.generate(r)];
          assert.deepEqual(y.tokens, x.tokens, policy);
          assert.deepEqual(y.visualKept, x.visualKept, policy);
          assert.deepEqual(y.admitted, x.admitted, policy);
          assert.deepEqual(y.stats.kvCache, x.stats.kvCache, policy);
          const rows = x.stats.kvCache.rowsPerLayer.reduce((n, v) => n + v, 0);
          assert.equal(x.stats.kvCache.bytes, rows * rowBytes, policy);
          if (policy !== "dense") continue;
          // The same request with an f32 cache holds the same rows in exactly twice the bytes.
          for (const model of [cpu, gpu]) {
            const wide = await model.generate({ ...r, kvDtype: "f32" });
            assert.deepEqual(wide.stats.kvCache.rowsPerLayer, x.stats.kvCache.rowsPerLayer);
            assert.equal(wide.stats.kvCache.bytes, 2 * x.stats.kvCache.bytes);
            assert.equal(wide.stats.kvCache.peakBytes, 2 * x.stats.kvCache.peakBytes);
          }
          // Batched decoding with one f16 and one f32 request gives each its result alone.
          const batch = await gpu.generateBatch([r, { ...r, kvDtype: "f32" }]);
          assert.deepEqual(batch[0].tokens, y.tokens);
          assert.deepEqual(batch[0].stats.kvCache, y.stats.kvCache);
          assert.equal(batch[1].stats.kvCache.bytes, 2 * y.stats.kvCache.bytes);
        }
      } finally {
        cpu.dispose();
        gpu.dispose();
      }
    },
  });
}

Deno.test("kvDtype: WebGPU defaults to f16 with shader-f16, the CPU to f32; bad values are refused by name", async () => {
  const dir = await ensureFixture("llama-f32");
  const gpu = await loadModel(dir, { backend: "webgpu" }), cpu = await loadModel(dir, { backend: "cpu" });
  try {
    assert.equal(gpu.kvDtype, KV_F16_MISSING ? "f32" : "f16");
    assert.equal(cpu.kvDtype, "f32");
    await assert.rejects(
      async () => await cpu.generate({ prompt: "Hi", kvDtype: "bf16" as KvDtype }),
      (e: InputError) => e instanceof InputError && e.where === "kvDtype",
    );
    await assert.rejects(
      () => loadModel(dir, { backend: "cpu", kvDtype: "f8" as KvDtype }),
      (e: InputError) => e instanceof InputError && e.where === "kvDtype",
    );
  } finally {
    gpu.dispose();
    cpu.dispose();
  }
  // Without shader-f16, asking for f16 names the option (at load, and per request).
  if (KV_F16_MISSING) {
    const named = (e: InputError) => e instanceof InputError && e.where === "kvDtype";
    await assert.rejects(() => loadModel(dir, { backend: "webgpu", kvDtype: "f16" }), named);
    const plain = await loadModel(dir, { backend: "webgpu" });
    try {
      await assert.rejects(async () => await plain.generate({ prompt: "Hi", kvDtype: "f16" }), named);
    } finally {
      plain.dispose();
    }
  }
});

/** A policy that runs `inner` and records every signal and admission input it is given. */
function probe(inner: Policy) {
  const seen = { vision: [] as Float32Array[], text: [] as Float32Array[], admitLogits: [] as number[][] };
  const policy: Policy = {
    name: "probe",
    plan(model) {
      const plan = inner.plan(model);
      return {
        ...plan,
        selectRows(kinds, signals) {
          if (signals.visionScores) seen.vision.push(signals.visionScores.slice());
          if (signals.textLogits) seen.text.push(signals.textLogits.slice());
          return plan.selectRows(kinds, signals);
        },
        admit(logits) {
          seen.admitLogits.push([logits[0], logits[1]]);
          return plan.admit(logits);
        },
      };
    },
  };
  return { policy, seen };
}

/** Indices of the k largest values, ascending (ties: lower index first). */
function topK(values: ArrayLike<number>, k: number): number[] {
  return Array.from(values, (v, i) => [v, i]).sort((p, q) => q[0] - p[0] || p[1] - q[1]).slice(0, k).map((
    p,
  ) => p[1])
    .sort((p, q) => p - q);
}

for (const name of ["llava-f32-dyn", "llava-f16-gqa-dyn-hub"]) {
  Deno.test(`generate() on ${name}: dynamic policy follows the Dynamic-LLaVA rules in both KV modes on both backends`, async () => {
    const cpu = await open(name, "cpu");
    try {
      const n = 16, N = cpu.config.vision!.tokensPerImage, layers = cpu.config.text.numLayers;
      const k = Math.floor(N * cpu.config.sparse!.visionKeepRate);
      // KV mode on the CPU, probed: admission = logit0 > logit1 per fed token.
      const kv = probe(dynamicPolicy());
      const base = { prompt: "What is in the picture?", image: IMAGE, maxNewTokens: n, stop: [] };
      const withCache = await cpu.generate({ ...base, policy: kv.policy });
      assert.deepEqual(withCache.visualKept, topK(kv.seen.vision[0], k));
      assert.equal(withCache.visualKept!.length, Math.max(1, k));
      const expectAdmit = kv.seen.admitLogits.map(([a, b]) => a > b);
      assert.equal(expectAdmit.length, n - 1);
      assert.deepEqual(withCache.admitted, expectAdmit);
      assert.ok(expectAdmit.includes(true) && expectAdmit.includes(false), "fixture should mix decisions");
      const prompt = withCache.stats.promptTokens, textRows = prompt - N;
      const admittedCount = expectAdmit.filter(Boolean).length;
      const sparseLayer = cpu.config.sparse!.sparseLayer;
      assert.deepEqual(
        withCache.stats.kvCache.rowsPerLayer,
        Array.from(
          { length: layers },
          (_, l) => l < sparseLayer ? prompt + n - 1 : textRows + k + admittedCount,
        ),
      );
      // No-cache mode, probed: the last recompute's output keep set is rule 3's.
      const nc = probe(dynamicPolicy());
      const noCache = await cpu.generate({ ...base, policy: nc.policy, kvCache: false });
      const last = nc.seen.text.at(-1)!; // [n-1 outputs fed, 2]
      const fed = last.length / 2;
      const logit0 = Array.from({ length: fed - 1 }, (_, j) => last[2 * j]);
      const count = logit0.filter((_, j) => last[2 * j] > last[2 * j + 1]).length;
      const keep = new Set(topK(logit0, count));
      assert.deepEqual(noCache.admitted, Array.from({ length: fed }, (_, j) => j === fed - 1 || keep.has(j)));
      assert.deepEqual(noCache.visualKept, withCache.visualKept);
      // The GPU gives the same decisions and tokens.
      const gpu = await open(name, "webgpu");
      try {
        const g1 = await gpu.generate({ ...base, policy: "dynamic" });
        assert.deepEqual(g1.visualKept, withCache.visualKept);
        assert.deepEqual(g1.admitted, withCache.admitted);
        assert.deepEqual(g1.tokens, withCache.tokens);
        assert.deepEqual(g1.stats.kvCache.rowsPerLayer, withCache.stats.kvCache.rowsPerLayer);
        const g2 = await gpu.generate({ ...base, policy: "dynamic", kvCache: false });
        assert.deepEqual(g2.admitted, noCache.admitted);
        assert.deepEqual(g2.tokens, noCache.tokens);
      } finally {
        gpu.dispose();
      }
    } finally {
      cpu.dispose();
    }
  });
}

Deno.test("generate() with fastv and dense runs on a checkpoint without predictors; dynamic is refused", async () => {
  for (const backend of ["cpu", "webgpu"] as const) {
    const model = await open("llava-bf16", backend);
    try {
      const base = { prompt: "Hi", image: IMAGE, maxNewTokens: 4, stop: [] };
      const dense = await model.generate({ ...base, policy: "dense" });
      assert.equal(dense.visualKept, null);
      const fastv = await model.generate({ ...base, policy: "fastv" });
      const N = model.config.vision!.tokensPerImage;
      assert.equal(fastv.visualKept!.length, Math.floor(N * 0.5));
      assert.deepEqual(fastv.admitted, [true, true, true]);
      await assert.rejects(async () => await model.generate({ ...base, policy: "dynamic" }), PolicyError);
    } finally {
      model.dispose();
    }
  }
});

Deno.test("generate() under dynamic holds fewer KV bytes than dense, in proportion to refused tokens", async () => {
  const model = await open("llava-f32-dyn", "webgpu");
  try {
    const base = { prompt: "Describe it.", image: IMAGE, maxNewTokens: 200, stop: [] };
    const dense = await model.generate({ ...base, policy: "dense" });
    const dyn = await model.generate({ ...base, policy: "dynamic" });
    const t = model.config.text, rowBytes = 2 * t.numKvHeads * t.headDim * 4;
    const refused = dyn.admitted.filter((a) => !a).length;
    const N = dyn.stats.visualTokens,
      kept = dyn.visualKept!.length,
      sparse = t.numLayers - model.config.sparse!.sparseLayer;
    assert.ok(refused > 20, `refused ${refused}`);
    assert.equal(
      dense.stats.kvCache.peakBytes - dyn.stats.kvCache.peakBytes,
      sparse * (refused + N - kept) * rowBytes,
    );
    assert.ok(dyn.stats.gpuPeakBytes < dense.stats.gpuPeakBytes, "allocated GPU bytes follow the rows kept");
  } finally {
    model.dispose();
  }
});

Deno.test("generate() streams the same tokens it returns", async () => {
  const model = await open("llama-f32", "webgpu");
  try {
    const run = model.generate({ prompt: "Count", maxNewTokens: 10, stop: [] });
    const streamed: number[] = [];
    for await (const ev of run) streamed.push(ev.token);
    assert.deepEqual(streamed, (await run).tokens);
  } finally {
    model.dispose();
  }
});

/** Steps one submission runs before the next abort check: 16 on WebGPU, 1 on the CPU. */
const STEPS_PER_SUBMISSION = { webgpu: 16, cpu: 1 };

for (const backend of ["cpu", "webgpu"] as const) {
  Deno.test(`generate() on ${backend} ends within ${STEPS_PER_SUBMISSION[backend]} step(s) of an abort, with its reason`, async () => {
    const model = await open("llama-f32", backend);
    try {
      for (const [abortAt, kvCache] of [[3, true], [20, true], [5, false]] as const) {
        const controller = new AbortController();
        const reason = new Error(`stop at ${abortAt}`);
        const run = model.generate({
          prompt: "Count",
          maxNewTokens: 500,
          stop: [],
          kvCache,
          signal: controller.signal,
        });
        let seen = 0;
        await assert.rejects(async () => {
          for await (const _ of run) if (++seen === abortAt) controller.abort(reason);
        }, (e) => e === reason);
        const bound = abortAt + (kvCache ? STEPS_PER_SUBMISSION[backend] : 1);
        assert.ok(
          seen >= abortAt && seen <= bound,
          `kvCache ${kvCache}: aborted at ${abortAt}, ran to ${seen} > ${bound}`,
        );
      }
      assert.equal((await model.generate({ prompt: "Count", maxNewTokens: 2, stop: [] })).tokens.length, 2);
    } finally {
      model.dispose();
    }
  });
}

Deno.test("generate() rejects bad requests with InputError naming the field", async () => {
  const model = await open("llava-f32-dyn", "cpu");
  try {
    await assert.rejects(
      async () => await model.generate({ inputIds: [1, 40000] }),
      (e: InputError) => e.where === "inputIds[1]",
    );
    await assert.rejects(async () => await model.generate({ inputIds: [1, -200, 5] }), InputError);
    await assert.rejects(
      async () => await model.generate({ inputIds: [1, -200, 5], image: [IMAGE, IMAGE] }),
      InputError,
    );
    await assert.rejects(async () => await model.generate({ prompt: "x ".repeat(3000) }), InputError);
    await assert.rejects(async () => await model.generate({ prompt: "x", maxNewTokens: 5000 }), InputError);
    const ok = await model.generate({ inputIds: [1, -200, 5], image: IMAGE, maxNewTokens: 1 });
    assert.equal(ok.tokens.length, 1);
  } finally {
    model.dispose();
  }
});

Deno.test("generateBatch() of 4 mixed requests equals the 4 run alone, decoding in shared GPU steps", async () => {
  const other = { width: 12, height: 40, data: new Uint8Array(12 * 40 * 3).map((_, i) => (i * 13) % 256) };
  const requests = [
    { prompt: "What is it?", image: IMAGE, maxNewTokens: 24, stop: [], policy: "dynamic" as const },
    { prompt: "Describe the colours.", image: other, maxNewTokens: 9, stop: [], policy: "fastv" as const },
    {
      prompt: "Count to ten.",
      maxNewTokens: 17,
      stop: [],
      policy: "dense" as const,
      temperature: 0.8,
      seed: 3,
    },
    { prompt: "Hi", image: IMAGE, maxNewTokens: 5, stop: [], policy: "dynamic" as const, kvCache: false },
  ];
  for (const backend of ["cpu", "webgpu"] as const) {
    const model = await open("llava-f32-dyn", backend);
    try {
      const alone = [];
      const before = model.readbacks;
      for (const r of requests) alone.push(await model.generate(r));
      const aloneReadbacks = model.readbacks - before;
      const batch = await model.generateBatch(requests);
      const batchReadbacks = model.readbacks - before - aloneReadbacks;
      for (let i = 0; i < requests.length; i++) {
        assert.deepEqual(batch[i].tokens, alone[i].tokens, `request ${i}`);
        assert.deepEqual(batch[i].admitted, alone[i].admitted, `request ${i}`);
        assert.deepEqual(batch[i].visualKept, alone[i].visualKept, `request ${i}`);
        assert.deepEqual(batch[i].stats.kvCache, alone[i].stats.kvCache, `request ${i}`);
      }
      if (backend === "webgpu") {
        assert.ok(batchReadbacks < aloneReadbacks, `${batchReadbacks} ≥ ${aloneReadbacks}`);
        assert.ok(model.batchedSteps >= 8, `batched steps ${model.batchedSteps}`);
      }
    } finally {
      model.dispose();
    }
  }
});

Deno.test("streamBatch(): a request started while another decodes joins its batched steps, tokens unchanged", async () => {
  const model = await open("llava-f32-dyn", "webgpu");
  try {
    const long = {
      prompt: "Tell me everything.",
      image: IMAGE,
      maxNewTokens: 96,
      stop: [],
      policy: "dynamic" as const,
    };
    const late = { prompt: "Count to ten.", maxNewTokens: 20, stop: [], policy: "dense" as const };
    const [longAlone, lateAlone] = [await model.generate(long), await model.generate(late)];
    const before = model.batchedSteps;
    const [running] = model.streamBatch([long]);
    let lateRun: ReturnType<Model["generate"]> | null = null;
    let seen = 0, tokensWhenLateStarted = 0;
    for await (const _event of running) {
      seen++;
      if (lateRun === null && seen >= 16) {
        tokensWhenLateStarted = seen;
        [lateRun] = model.streamBatch([late]); // as the server does for each new request
      }
    }
    const [longResult, lateResult] = [await running, await lateRun!];
    assert.ok(tokensWhenLateStarted > 0 && tokensWhenLateStarted < long.maxNewTokens);
    assert.deepEqual(longResult.tokens, longAlone.tokens);
    assert.deepEqual(lateResult.tokens, lateAlone.tokens);
    assert.deepEqual(lateResult.stats.kvCache, lateAlone.stats.kvCache);
    // Every decode step of the late request after its first ran together with the long one.
    assert.ok(model.batchedSteps - before >= 8, `batched steps ${model.batchedSteps - before}`);
  } finally {
    model.dispose();
  }
});

Deno.test("generate() stops at a stop id inside a decode batch and counts only the tokens it returns", async () => {
  for (const backend of ["cpu", "webgpu"] as const) {
    const model = await open("llava-f32-dyn", backend);
    try {
      const base = { prompt: "Go on.", image: IMAGE, maxNewTokens: 12, policy: "dense" as const };
      const free = await model.generate({ ...base, stop: [] });
      const stopId = free.tokens[4];
      const firstAt = free.tokens.indexOf(stopId);
      const stopped = await model.generate({ ...base, stop: [stopId] });
      assert.deepEqual(stopped.tokens, free.tokens.slice(0, firstAt + 1));
      const short = await model.generate({ ...base, stop: [], maxNewTokens: firstAt + 1 });
      assert.deepEqual(stopped.stats.kvCache, short.stats.kvCache, backend);
      assert.deepEqual(stopped.stats.flops, short.stats.flops, backend);
      assert.deepEqual(stopped.stats.rowsComputed, short.stats.rowsComputed, backend);
    } finally {
      model.dispose();
    }
  }
});
