/**
 * GPU weight storage does not change results: the same fixture loaded with weights in storage
 * buffers and in storage textures (with the fused decode kernels and without) gives the CPU
 * backend's greedy tokens (dense and dynamic, alone and in a decode batch) and logits within f32
 * rounding; "auto" picks textures on Mesa's lavapipe.
 * @module
 */
import assert from "node:assert/strict";
import { ensureFixture } from "../tools/make_fixtures.ts";
import { dynamicPolicy, loadModel, type Model } from "../mod.ts";
import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import { createGpuBackend, type GpuBackend } from "../runtime/webgpu/gpu_backend.ts";
import { createKernels } from "../runtime/webgpu/gpu_kernels.ts";
import { allocLayerActivations, bindLayerInput, bindLayerOutput } from "../runtime/webgpu/gpu_layers.ts";
import { chooseWeightStorage, measureWeightStorage } from "../runtime/webgpu/weight_storage.ts";
import { nmse } from "./kernel_util.ts";

const IMAGE = (() => {
  const width = 30, height = 20, data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + (i % 7) * 11) % 256;
  return { width, height, data };
})();

for (const name of ["llava-f32-dyn", "llama-f16-gqa"]) {
  Deno.test(`loadModel() on ${name}: weights in buffers and in textures, fused or not, give the CPU's results`, async () => {
    const dir = await ensureFixture(name);
    const cpu = await loadModel(dir, { backend: "cpu" });
    const gpus: [string, Model][] = [
      ["buffer", await loadModel(dir, { backend: "webgpu", weightStorage: "buffer", kvDtype: "f32" })],
      ["texture", await loadModel(dir, { backend: "webgpu", weightStorage: "texture", kvDtype: "f32" })],
      [
        "texture, unfused",
        await loadModel(dir, {
          backend: "webgpu",
          weightStorage: "texture",
          fusedKernels: false,
          kvDtype: "f32",
        }),
      ],
    ];
    try {
      const image = cpu.config.vision ? IMAGE : undefined;
      const request = { prompt: "Tell me a story about a red fox.", image };
      const policy = cpu.config.sparse ? dynamicPolicy() : undefined;
      const greedy = { ...request, maxNewTokens: 6, stop: [], policy };
      const expectedLogits = await cpu.logits(request);
      const expected = await cpu.generate(greedy);
      const other = await cpu.generate({ prompt: "Name three colors.", maxNewTokens: 4, stop: [] });
      for (const [storage, gpu] of gpus) {
        const error = nmse(await gpu.logits(request), expectedLogits);
        assert.ok(error < 1e-6, `${storage}: logits NMSE ${error}`);
        assert.deepEqual((await gpu.generate(greedy)).tokens, expected.tokens, `${storage}: greedy tokens`);
        const batch = await gpu.generateBatch([greedy, {
          prompt: "Name three colors.",
          maxNewTokens: 4,
          stop: [],
        }]);
        assert.deepEqual(
          batch.map((r) => r.tokens),
          [expected.tokens, other.tokens],
          `${storage}: batch tokens`,
        );
      }
    } finally {
      cpu.dispose();
      for (const [, gpu] of gpus) gpu.dispose();
    }
  });
}

Deno.test("chooseWeightStorage() keeps a forced choice and, on lavapipe, picks textures", async () => {
  const gpu = await createGpu();
  try {
    const kernels = await createKernels(gpu, { only: ["matmul"] });
    assert.equal(await chooseWeightStorage(gpu, kernels, "buffer"), "buffer");
    assert.equal(await chooseWeightStorage(gpu, kernels, "texture"), "texture");
    const rates = await measureWeightStorage(gpu, kernels, { rows: 128, cols: 256, repeat: 2 });
    assert.ok(rates.buffer > 0 && rates.texture > 0, JSON.stringify(rates));
    if (gpu.adapterName.startsWith("llvmpipe")) {
      assert.equal(await chooseWeightStorage(gpu, kernels, "auto"), "texture");
    }
  } finally {
    gpu.destroy();
  }
});

Deno.test("fused decode kernels: a layer binds 7 dispatches instead of 12", async () => {
  const checkpoint = await openCheckpoint(await ensureFixture("llama-f16-gqa"));
  // [fused, rows, layer dispatches]: fused matvecs up to 8 rows (the texture matvec's), RoPE on q
  // and k in one dispatch for any number of rows
  const cases = [[true, 1, 7], [true, 8, 7], [true, 9, 11], [false, 1, 12]] as const;
  for (const [fusedKernels, rows, layerDispatches] of cases) {
    const backend = await createGpuBackend(checkpoint, {
      weightDtype: "auto",
      weightStorage: "texture",
      fusedKernels,
    }) as GpuBackend;
    const model = backend.model, set = new BufferSet(model.gpu);
    try {
      const act = allocLayerActivations(set, model.config.text, { rows, label: "count" });
      const positions = set.storage(rows * 4, "positions");
      // fused: norm, q/k/v, RoPE q and k | o, norm, gate/up+SwiGLU, down
      const layer = [
        ...bindLayerInput(model, set, 0, { act, rows, positions, positionsOffset: 0 }),
        ...bindLayerOutput(model, set, 0, { act, rows }),
      ];
      assert.equal(layer.length, layerDispatches, `fused ${fusedKernels}, ${rows} rows`);
    } finally {
      set.destroy();
      backend.dispose();
    }
  }
});
