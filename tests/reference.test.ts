/**
 * Both backends against an independent reference: tools/reference/forward.py (PyTorch, float64,
 * written from the LLaVA / Dynamic-LLaVA definitions, sharing no code with the runtime) wrote
 * tests/fixtures/reference/ from the fixture checkpoints. For every fixture, policy (dense, FastV,
 * dynamic where the checkpoint allows) and KV mode, 64 greedy tokens are compared with the golden:
 * prefill logits, tokens, kept image indices, admissions, per-step log-probabilities and KV rows
 * per layer. A comparison stops only at a recorded near-tie (a decision whose two sides differ by
 * less than the golden's `nearTie` margin, which f32 summation order may flip); the golden names
 * the step and the margin, and every run here is trusted for at least `MIN_TRUSTED` tokens.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { ensureFixture, FIXTURES } from "../tools/make_fixtures.ts";
import { loadModel, type Model } from "../mod.ts";

const REFERENCE = new URL("./fixtures/reference/", import.meta.url);

interface GoldenRun {
  policy: "dense" | "fastv" | "dynamic";
  kvCache: boolean;
  tokens: number[];
  visualKept: number[] | null;
  admitted: boolean[];
  logProbs: number[];
  rowsPerLayer: number[] | null;
  trustedTokens: number;
  nearTie: { step: number; unit: "logit" | "prob"; margin: number } | null;
}

interface GoldenFixture {
  dtype: string;
  sha256: Record<string, string>;
  inputIds: number[];
  image: { width: number; height: number; data: string } | null;
  runs: GoldenRun[];
}

const golden: { newTokens: number; fixtures: Record<string, GoldenFixture> } = JSON.parse(
  await Deno.readTextFile(new URL("golden.json", REFERENCE)),
);

/** Largest |logit − reference| allowed (f32 arithmetic against float64 on the same weights). */
const LOGIT_TOLERANCE = 2e-5;
/** Largest |log p − reference| allowed per generated token. */
const LOG_PROB_TOLERANCE = 2e-5;

function decodeBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** Fails when the fixture on disk is not the one the golden was computed from. */
async function checkFixtureBytes(expected: Record<string, string>): Promise<void> {
  const root = new URL("./fixtures/out/", import.meta.url).pathname;
  for (const [file, sha] of Object.entries(expected)) {
    const digest = createHash("sha256").update(await Deno.readFile(`${root}${file}`)).digest("hex");
    assert.equal(
      digest,
      sha,
      `${file}: fixture bytes differ from the golden's (rerun tools/reference/forward.py)`,
    );
  }
}

/** Last-position prefill logits of the golden's KV runs, in run order. */
async function prefillLogits(name: string, vocab: number): Promise<Float32Array[]> {
  const bytes = await Deno.readFile(new URL(`${name}.f32`, REFERENCE));
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return Array.from({ length: all.length / vocab }, (_, i) => all.subarray(i * vocab, (i + 1) * vocab));
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    assert.ok(Number.isFinite(a[i]), `non-finite value at ${i}`);
    worst = Math.max(worst, Math.abs(a[i] - b[i]));
  }
  return worst;
}

/** The admission decisions a run may be held to: those made before its first near-tie. */
function trustedAdmissions(run: GoldenRun): number {
  if (run.trustedTokens === golden.newTokens) return run.admitted.length;
  // KV mode: fed token i is admitted in step i + 1, before token i + 1 is chosen.
  return run.kvCache ? Math.max(0, run.trustedTokens - 1) : 0;
}

function imageOf(fixture: GoldenFixture) {
  const image = fixture.image;
  return image ? { width: image.width, height: image.height, data: decodeBase64(image.data) } : undefined;
}

async function checkRun(
  model: Model,
  fixture: GoldenFixture,
  run: GoldenRun,
  options: { logits: Float32Array | null; backend: "cpu" | "webgpu" },
) {
  const what = `${run.policy} kvCache ${run.kvCache}`;
  const request = { inputIds: fixture.inputIds, image: imageOf(fixture), policy: run.policy };
  const logits = options.logits;
  if (logits) {
    const ours = await model.logits(request);
    const diff = maxAbsDiff(ours, logits);
    assert.ok(diff < LOGIT_TOLERANCE, `${what}: prefill logits differ by ${diff}`);
  }
  const result = await model.generate({
    ...request,
    kvCache: run.kvCache,
    maxNewTokens: golden.newTokens,
    stop: [],
  });
  const n = run.trustedTokens;
  assert.deepEqual(result.tokens.slice(0, n), run.tokens.slice(0, n), `${what}: tokens`);
  if (n > 0 || run.nearTie?.unit === "logit") {
    assert.deepEqual(result.visualKept, run.visualKept, `${what}: kept`);
  }
  const a = trustedAdmissions(run);
  assert.deepEqual(result.admitted.slice(0, a), run.admitted.slice(0, a), `${what}: admitted`);
  if (n === golden.newTokens && run.rowsPerLayer) {
    assert.deepEqual(result.stats.kvCache.rowsPerLayer, run.rowsPerLayer, `${what}: KV rows per layer`);
  }
  // Per-step decode logits, teacher-forced (on the GPU where admission shapes them: dynamic).
  if (run.kvCache && n > 0 && (options.backend === "cpu" || run.policy === "dynamic")) {
    // Teacher-forced on the reference's tokens: the decode logits of every trusted step.
    const lp = await model.logProbs({
      ...request,
      kvCache: true,
      target: run.tokens.slice(0, Math.max(1, a + 1)),
    });
    const diff = maxAbsDiff(lp, run.logProbs.slice(0, lp.length));
    assert.ok(diff < LOG_PROB_TOLERANCE, `${what}: log-probabilities differ by ${diff}`);
  }
}

/** Every run is held to at least this many tokens unless its golden explains the near-tie. */
const MIN_TRUSTED = 64;

/** Largest |logit − reference| allowed for the GPU's default f16 weights on a 16-bit checkpoint. */
const F16_WEIGHTS_LOGIT_TOLERANCE = 1e-2;

for (const [name, fixture] of Object.entries(golden.fixtures)) {
  for (const backend of ["cpu", "webgpu"] as const) {
    Deno.test(`generate() on ${name} (${backend}) equals the PyTorch reference: dense, FastV, dynamic; both KV modes`, async () => {
      const dir = await ensureFixture(name);
      await checkFixtureBytes(fixture.sha256);
      if (FIXTURES[name].tower === "hub") Deno.env.set("HF_HOME", `${dir}/hf`);
      for (const run of fixture.runs) {
        assert.ok(
          run.trustedTokens >= MIN_TRUSTED || run.nearTie !== null,
          `${run.policy} kvCache ${run.kvCache}: trusted ${run.trustedTokens} without a recorded near-tie`,
        );
      }
      // f32 weights and KV cache everywhere: the reference computes with the checkpoint's values, unrounded.
      const model = await loadModel(dir, { backend, weightDtype: "f32", kvDtype: "f32" });
      try {
        const logits = await prefillLogits(name, model.config.text.vocabSize);
        let kvRun = 0;
        for (const run of fixture.runs) {
          await checkRun(model, fixture, run, { logits: run.kvCache ? logits[kvRun++] : null, backend });
        }
      } finally {
        model.dispose();
      }
      if (backend === "webgpu" && fixture.dtype !== "F32") {
        // The default on a 16-bit checkpoint: every weight rounded to f16 on the device (KV in f32).
        const f16 = await loadModel(dir, { backend, kvDtype: "f32" });
        try {
          const run = fixture.runs[0];
          const ours = await f16.logits({
            inputIds: fixture.inputIds,
            image: imageOf(fixture),
            policy: run.policy,
          });
          const diff = maxAbsDiff(ours, (await prefillLogits(name, f16.config.text.vocabSize))[0]);
          assert.ok(diff < F16_WEIGHTS_LOGIT_TOLERANCE, `f16 weights: prefill logits differ by ${diff}`);
        } finally {
          f16.dispose();
        }
      }
    });
  }
}
