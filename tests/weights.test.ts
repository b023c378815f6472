/**
 * The model's weight description (runtime/core/weights.ts) against real checkpoints of every
 * layout: the tensors a checkpoint carries are exactly the described ones plus the predictors',
 * with the described shapes, and binding keeps the description's tree.
 */
import assert from "node:assert/strict";
import { ensureFixture, FIXTURES } from "../tools/make_fixtures.ts";
import { openCheckpoint } from "../runtime/io/checkpoint.ts";
import {
  bindWeights,
  describeWeights,
  isPredictorWeight,
  PREDICTOR_PREFIXES,
  visionLayerOf,
  weightList,
} from "../runtime/core/weights.ts";

for (const name of Object.keys(FIXTURES)) {
  Deno.test(`describeWeights() names and shapes every tensor of ${name}`, async () => {
    const dir = await ensureFixture(name);
    if (FIXTURES[name].tower === "hub") Deno.env.set("HF_HOME", `${dir}/hf`);
    const checkpoint = await openCheckpoint(dir);
    const described = weightList(describeWeights(checkpoint.config));
    const carried = [...checkpoint.tensors.keys()].filter((n) => !isPredictorWeight(n));
    assert.deepEqual(carried.sort(), [...described.keys()].sort());
    for (const [weight, spec] of described) {
      assert.deepEqual(checkpoint.tensors.get(weight)!.shape, spec.shape);
    }
    const predictors = [...checkpoint.tensors.keys()].filter(isPredictorWeight);
    assert.equal(predictors.length > 0, FIXTURES[name].predictors === true);
  });
}

Deno.test("bindWeights() keeps the tree: layers, tied head, vision tower, projector", async () => {
  const checkpoint = await openCheckpoint(await ensureFixture("llava-f32-dyn"));
  const config = checkpoint.config;
  const bound = bindWeights(describeWeights(config), {
    matrix: (spec) => ({ matrix: spec.name, rows: spec.shape[0] }),
    vector: (spec) => spec.name,
  });
  assert.equal(bound.layers.length, config.text.numLayers);
  assert.deepEqual(bound.layers[1].wDown, { matrix: "layers.1.w_down", rows: config.text.hiddenSize });
  assert.equal(bound.layers[1].mlpNorm, "layers.1.mlp_norm");
  assert.equal(bound.vision!.layers.length, config.vision!.layersToRun);
  assert.equal(bound.vision!.layers[0].fc2.bias, "vision.layers.0.fc2.bias");
  assert.equal(bound.vision!.posEmbed, "vision.pos_embed");
  assert.equal(bound.projector!.second!.weight.matrix, "projector.2.weight");
  assert.equal(bound.lmHead === null, config.text.tieWordEmbeddings);
});

Deno.test("visionLayerOf() and isPredictorWeight() read canonical names only", () => {
  assert.equal(visionLayerOf("vision.layers.12.ln1.weight"), 12);
  assert.equal(visionLayerOf("vision.layers.x.ln1.weight"), null);
  assert.equal(visionLayerOf("vision.pre_norm.weight"), null);
  assert.equal(isPredictorWeight(`${PREDICTOR_PREFIXES.text}output_mlp.1.weight`), true);
  assert.equal(isPredictorWeight(`model.${PREDICTOR_PREFIXES.text}output_mlp.1.weight`), false);
});
