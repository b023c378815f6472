/**
 * Tests of runtime/core/sampling.ts (the sampling rule) and kernels/sample.ts (its GPU twin): greedy
 * ties and -∞, nucleus truncation, draw frequencies against the softmax, the counter-based random
 * stream, and token-for-token GPU/CPU parity over many (logits, seed, step, temperature, topP).
 * @module
 */
import assert from "node:assert/strict";
import { BufferSet, writeBuffer } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { sampleToken, uniformRandom } from "../runtime/core/sampling.ts";
import { createKernels } from "../runtime/webgpu/gpu_kernels.ts";
import { randomArray, testGpu } from "./kernel_util.ts";

/** softmax(logits / temperature) in f64. */
function softmax(logits: Float32Array, temperature: number): number[] {
  const max = Math.max(...logits);
  const e = [...logits].map((l) => Math.exp((l - max) / temperature));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** Token counts of `draws` CPU samples at steps 0..draws-1. */
function drawCounts(logits: Float32Array, options: { temperature: number; topP: number; draws: number }) {
  const counts = new Array<number>(logits.length).fill(0);
  for (let step = 0; step < options.draws; step++) {
    counts[sampleToken(logits, { ...options, seed: 5, step })]++;
  }
  return counts;
}

/** Asserts each frequency is within 5 standard errors of its probability. */
function assertFrequencies(counts: number[], probs: number[], draws: number): void {
  for (let i = 0; i < probs.length; i++) {
    const sigma = Math.sqrt(Math.max(probs[i] * (1 - probs[i]), 1e-12) / draws);
    const freq = counts[i] / draws;
    assert.ok(Math.abs(freq - probs[i]) <= 5 * sigma + 1e-9, `token ${i}: freq ${freq} vs p ${probs[i]}`);
  }
}

Deno.test("uniformRandom() is deterministic, in [0, 1), 24-bit and uniform", () => {
  assert.equal(uniformRandom(3, 9), uniformRandom(3, 9));
  assert.notEqual(uniformRandom(3, 9), uniformRandom(4, 9));
  assert.notEqual(uniformRandom(3, 9), uniformRandom(3, 10));
  const n = 20000;
  const bins = new Array<number>(10).fill(0);
  let sum = 0;
  for (let step = 0; step < n; step++) {
    const u = uniformRandom(12345, step);
    assert.ok(u >= 0 && u < 1, `u = ${u}`);
    assert.equal(u * 16777216, Math.floor(u * 16777216), "24-bit mantissa");
    bins[Math.floor(u * 10)]++;
    sum += u;
  }
  assert.ok(Math.abs(sum / n - 0.5) < 0.01, `mean ${sum / n}`);
  for (const b of bins) assert.ok(Math.abs(b - n / 10) < 5 * Math.sqrt(n * 0.09), `bin count ${b}`);
});

Deno.test("sampleToken() with temperature ≤ 0 is argmax, first index on ties", () => {
  assert.equal(sampleToken(new Float32Array([1, 5, 5, 2]), { temperature: 0 }), 1);
  assert.equal(sampleToken(new Float32Array([1, 5, 5, 2]), { temperature: -1, seed: 9, step: 4 }), 1);
  assert.equal(sampleToken(new Float32Array([-Infinity, -Infinity, -3]), {}), 2);
  assert.equal(sampleToken(new Float32Array([-Infinity, -Infinity]), { temperature: 1 }), 0);
});

Deno.test("sampleToken() frequencies match softmax(logits / T) with topP 1", () => {
  const logits = new Float32Array([0.3, -1.2, 1.1, 0.0, 2.0, -0.5]);
  const draws = 40000;
  const counts = drawCounts(logits, { temperature: 0.8, topP: 1, draws });
  assertFrequencies(counts, softmax(logits, 0.8), draws);
});

Deno.test("sampleToken() top-p keeps the smallest head with mass ≥ topP, renormalized", () => {
  // softmax ≈ [0.0321, 0.5923, 0.2179, 0.0802, 0.0775]: 0.5923 + 0.2179 ≥ 0.7 > 0.5923.
  const logits = new Float32Array([-1, 2, 1, 0, -0.034]);
  const probs = softmax(logits, 1);
  const draws = 20000;
  const counts = drawCounts(logits, { temperature: 1, topP: 0.7, draws });
  assert.equal(counts[0] + counts[3] + counts[4], 0, `tail drawn: ${counts}`);
  const head = probs[1] + probs[2];
  assertFrequencies(counts, [0, probs[1] / head, probs[2] / head, 0, 0], draws);
  // topP 0 keeps only the most probable token(s); ties are then drawn evenly.
  assert.deepEqual(drawCounts(logits, { temperature: 1, topP: 0, draws: 200 }), [0, 200, 0, 0, 0]);
  const tied = drawCounts(new Float32Array([3, 0, 3]), { temperature: 1, topP: 0, draws: 4000 });
  assert.equal(tied[1], 0);
  assertFrequencies(tied, [0.5, 0, 0.5], 4000);
});

Deno.test("sampleToken() never draws -inf logits and rejects bad options", () => {
  const logits = new Float32Array([-Infinity, 0, -Infinity, 0.5]);
  const counts = drawCounts(logits, { temperature: 2, topP: 1, draws: 2000 });
  assert.equal(counts[0] + counts[2], 0);
  assert.ok(counts[1] > 0 && counts[3] > 0);
  assert.throws(() => sampleToken(logits, { temperature: 1, topP: 1.5 }), InputError);
  assert.throws(() => sampleToken(logits, { temperature: NaN }), InputError);
  assert.throws(() => sampleToken(new Float32Array(0), {}), InputError);
});

/** One parity case: logits and sampling options. */
interface Case {
  logits: Float32Array;
  temperature: number;
  topP: number;
  seed: number;
}

/** Parity cases: awkward sizes, ties, -inf, greedy, topP 1 / 0.9 / 0.5 / 0.1 / 0, random settings. */
function parityCases(): Case[] {
  const cases: Case[] = [];
  const sizes = [1, 2, 7, 63, 65, 255, 256, 257, 1000, 3001];
  const settings: [number, number][] = [[0, 1], [1, 1], [0.7, 0.9], [1.3, 0.5], [1, 0.1], [0.5, 0]];
  let seed = 1;
  for (const size of sizes) {
    for (const [temperature, topP] of settings) {
      cases.push({ logits: randomArray(size, seed * 7919, 4), temperature, topP, seed: seed++ });
    }
  }
  for (const [temperature, topP] of settings) {
    // Ties: logits quantized to a few levels.
    const tied = randomArray(517, seed * 31).map((v) => Math.round(v * 2));
    cases.push({ logits: tied, temperature, topP, seed: seed++ });
    // -inf on most entries, including index 0.
    const masked = randomArray(300, seed * 131, 3).map((v, i) => (i % 5 === 2 ? v : -Infinity));
    cases.push({ logits: masked, temperature, topP, seed: seed++ });
    // A dominant token far from the rest.
    const peaked = randomArray(129, seed * 17);
    peaked[77] = 30;
    cases.push({ logits: peaked, temperature, topP, seed: seed++ });
  }
  // Random sizes, temperatures, nucleus masses and logit scales.
  for (let j = 0; j < 100; j++) {
    const [a, b, c, d] = randomArray(4, 4242 + j);
    const logits = randomArray(2 + Math.floor((a + 1) * 300), seed * 13, 1 + (d + 1) * 4);
    cases.push({
      logits,
      temperature: 0.3 + (b + 1) * 0.9,
      topP: Math.min(1, 0.05 + (c + 1) * 0.5),
      seed: seed++,
    });
  }
  cases.push({ logits: new Float32Array(40).fill(-Infinity), temperature: 1, topP: 0.5, seed: seed++ });
  cases.push({ logits: new Float32Array(40).fill(-Infinity), temperature: 0, topP: 1, seed: seed++ });
  for (const [temperature, topP] of [[0, 1], [0.9, 0.95], [1, 1]]) {
    cases.push({ logits: randomArray(32000, seed * 3, 8), temperature, topP, seed: seed++ });
  }
  return cases;
}

Deno.test("createSampler() picks the same token as sampleToken() on every case", async () => {
  const gpu = await testGpu();
  const buffers = new BufferSet(gpu);
  try {
    const { sampler } = await createKernels(gpu, { only: ["sampler"] });
    const cases = parityCases();
    const firstStep = 1000; // steps 1000.. exercise the hash beyond small counters
    const tokensOut = buffers.storage((firstStep + cases.length) * 4, "tokens");
    writeBuffer(gpu, tokensOut, 0, new Uint32Array(firstStep + cases.length).fill(0xffffffff));
    const states: GPUBuffer[] = [];
    const dispatches = cases.flatMap((c, j) => {
      const logits = buffers.upload(c.logits, "logits");
      const state = buffers.upload(new Uint32Array([firstStep + j, 0xffffffff, 0, c.seed]), "state");
      states.push(state);
      const { temperature, topP } = c;
      return sampler.bind(buffers, { logits, vocab: c.logits.length, state, tokensOut, temperature, topP });
    });
    gpu.submit(dispatches);
    const tokens = new Uint32Array(await gpu.read(tokensOut, 0, (firstStep + cases.length) * 4));
    assert.ok(tokens.subarray(0, firstStep).every((t) => t === 0xffffffff), "only tokensOut[step] written");
    const mismatches: string[] = [];
    cases.forEach((c, j) => {
      const expected = sampleToken(c.logits, { ...c, step: firstStep + j });
      if (tokens[firstStep + j] !== expected) {
        mismatches.push(
          `case ${j} (V ${c.logits.length}, T ${c.temperature}, topP ${c.topP}): ` +
            `gpu ${tokens[firstStep + j]} cpu ${expected}`,
        );
      }
    });
    assert.deepEqual(mismatches, []);
    const last = cases.length - 1;
    const state = new Uint32Array(await gpu.read(states[last], 0, 16));
    assert.deepEqual([...state], [firstStep + last, tokens[firstStep + last], 0, cases[last].seed]);
    // Sampling (not greedy) on the big vocabulary really spreads over several tokens.
    const big = cases[cases.length - 1];
    const spread = new Set(
      Array.from({ length: 10 }, (_, step) => sampleToken(big.logits, { ...big, step })),
    );
    assert.ok(big.temperature === 1 && spread.size >= 3, `draws ${[...spread]}`);
  } finally {
    buffers.destroy();
    gpu.destroy();
  }
});

Deno.test("createSampler() writes state[1] but not tokensOut when step is past its end", async () => {
  const gpu = await testGpu();
  const buffers = new BufferSet(gpu);
  try {
    const { sampler } = await createKernels(gpu, { only: ["sampler"] });
    const logits = buffers.upload(new Float32Array([0, 1, 9, 2, 3]), "logits");
    const state = buffers.upload(new Uint32Array([4, 0, 0, 1]), "state");
    const tokensOut = buffers.upload(new Uint32Array([7, 7, 7, 7]), "tokens"); // capacity 4
    gpu.submit(sampler.bind(buffers, { logits, vocab: 5, state, tokensOut, temperature: 1, topP: 0.5 }));
    assert.deepEqual([...new Uint32Array(await gpu.read(state, 0, 16))], [4, 2, 0, 1]);
    assert.deepEqual([...new Uint32Array(await gpu.read(tokensOut, 0, 16))], [7, 7, 7, 7]);
    assert.throws(
      () => sampler.bind(buffers, { logits, vocab: 5, state, tokensOut, temperature: 1, topP: -0.1 }),
      InputError,
    );
  } finally {
    buffers.destroy();
    gpu.destroy();
  }
});
