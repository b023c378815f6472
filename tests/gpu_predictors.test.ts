/**
 * Parity of the GPU predictors (runtime/webgpu/gpu_predictors.ts) with the CPU predictors: the CPU side
 * uses the weights as the GPU stores them (f16-rounded Linear weights on f16 devices), outputs are
 * poisoned with NaN, and shapes cover the decode (N < 8) and tiled (N ≥ 8, not a multiple of 64)
 * attention paths and a hidden size that is not a multiple of 8.
 * @module
 */
import assert from "node:assert/strict";
import { type Gpu, writeBuffer } from "../runtime/device/gpu.ts";
import {
  bindTextAdmission,
  bindTextLogits,
  bindVisionScores,
  uploadTextPredictor,
  uploadVisionPredictor,
} from "../runtime/webgpu/gpu_predictors.ts";
import {
  loadTextPredictor,
  loadVisionPredictor,
  type PredictorSizes,
  type TensorSpec,
  textPredictorLogits,
  textPredictorTensors,
  visionPredictorTensors,
  visionScores,
} from "../runtime/core/predictors.ts";
import { storedWeightValues, weightDtype } from "../runtime/device/weights_gpu.ts";
import { assertClose, poisoned, randomArray, readF32, withGpu } from "./kernel_util.ts";

const SIZES: PredictorSizes = {
  hidden: 100,
  sparse: { dModel: 32, nhead: 4, dimFeedforward: 48, numLayers: 2 },
};

/**
 * Random weights for every spec (LayerNorm scales near 1, Linear weights ~ 1/√in), with the 2-D
 * Linear weights rounded as the GPU stores them.
 */
function storedWeights(gpu: Gpu, specs: TensorSpec[], seed: number): Map<string, Float32Array> {
  const weights = new Map<string, Float32Array>();
  specs.forEach(({ name, shape }, i) => {
    const values = randomArray(shape.reduce((a, b) => a * b, 1), seed * 1000 + i + 1);
    if (shape.length === 2) {
      weights.set(
        name,
        storedWeightValues(values.map((v) => (1.5 * v) / Math.sqrt(shape[1])), weightDtype(gpu)),
      );
    } else {
      weights.set(
        name,
        name.endsWith(".weight") ? values.map((v) => 1 + 0.3 * v) : values.map((v) => 0.2 * v),
      );
    }
  });
  return weights;
}

Deno.test("bindVisionScores() matches visionScores() for N = 1, 7 and 65", async () => {
  await withGpu(async (gpu, buffers) => {
    const weights = storedWeights(gpu, visionPredictorTensors(SIZES.hidden, SIZES.sparse), 1);
    const cpu = loadVisionPredictor((name) => weights.get(name), SIZES);
    const predictor = await uploadVisionPredictor(buffers, cpu);
    for (const rows of [1, 7, 65]) {
      const input = randomArray(rows * SIZES.hidden, 10 + rows, 2).map((v) => v + 0.3);
      const scoresOut = poisoned(buffers, rows, "scores");
      gpu.submit(bindVisionScores(predictor, buffers, { x: buffers.upload(input, "x"), rows, scoresOut }));
      const gpuScores = await readF32(gpu, scoresOut, rows);
      const cpuScores = visionScores(cpu, input);
      assertClose(gpuScores, cpuScores, 1e-9, `N = ${rows}`);
      if (rows > 1) assert.notEqual(cpuScores[0], cpuScores[1]); // the rows really differ
    }
  });
});

Deno.test("bindTextLogits() matches textPredictorLogits() for n = 1, 9 and 65", async () => {
  await withGpu(async (gpu, buffers) => {
    const weights = storedWeights(gpu, textPredictorTensors(SIZES.hidden, SIZES.sparse), 2);
    const cpu = loadTextPredictor((name) => weights.get(name), SIZES);
    const predictor = await uploadTextPredictor(buffers, cpu);
    for (const rows of [1, 9, 65]) {
      const input = randomArray(rows * SIZES.hidden, 20 + rows, 2);
      const logitsOut = poisoned(buffers, rows * 2, "logits");
      gpu.submit(bindTextLogits(predictor, buffers, { x: buffers.upload(input, "x"), rows, logitsOut }));
      assertClose(
        await readF32(gpu, logitsOut, rows * 2),
        textPredictorLogits(cpu, input),
        1e-9,
        `n = ${rows}`,
      );
    }
  });
});

Deno.test("bindTextAdmission() writes flags[state[0]] = logit0 > logit1, reusing its dispatches", async () => {
  await withGpu(async (gpu, buffers) => {
    const weights = storedWeights(gpu, textPredictorTensors(SIZES.hidden, SIZES.sparse), 3);
    const cpu = loadTextPredictor((name) => weights.get(name), SIZES);
    const predictor = await uploadTextPredictor(buffers, cpu);
    const x = buffers.storage(SIZES.hidden * 4, "x");
    const state = buffers.upload(new Uint32Array(4), "state");
    const capacity = 12;
    const flags = buffers.upload(new Uint32Array(capacity).fill(7), "flags");
    const dispatches = bindTextAdmission(predictor, buffers, { x, state, flags });
    const expected = new Uint32Array(capacity).fill(7);
    for (let step = 0; step < 10; step++) {
      const input = randomArray(SIZES.hidden, 40 + step, 3);
      const [logit0, logit1] = textPredictorLogits(cpu, input);
      if (Math.abs(logit0 - logit1) < 1e-4) continue; // too close to call across summation orders
      expected[step] = logit0 > logit1 ? 1 : 0;
      writeBuffer(gpu, x, 0, input);
      writeBuffer(gpu, state, 0, new Uint32Array([step]));
      gpu.submit(dispatches);
    }
    const flagsRead = new Uint32Array(await gpu.read(flags, 0, capacity * 4));
    assert.deepEqual(Array.from(flagsRead), Array.from(expected));
    // Both decisions occurred, and steps 10 and 11 were never written.
    assert.ok(expected.includes(0) && expected.includes(1), `decisions ${expected}`);
    assert.equal(flagsRead[11], 7);
  });
});
