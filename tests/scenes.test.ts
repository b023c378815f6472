/** The shapes task: grammar rules, descriptions' length, question rules, and two renderers agreeing. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { decodeImage } from "../runtime/image/image_decode.ts";
import { loadTokenizer } from "../runtime/text/tokenizer.ts";
import { DEBIAN_PYTHON } from "../tools/fixtures/nltk_data.ts";
import {
  BACKGROUNDS,
  describeScene,
  makeScene,
  renderScene,
  type Scene,
  SCENE_SIZE,
  sceneQuestions,
  SHAPE_COLOURS,
  shapeHeight,
  SPLIT_SEEDS,
  testItems,
} from "../tools/fixtures/scenes.ts";

Deno.test("makeScene() keeps to the grammar: 1–4 shapes, 48–120 px boxes inside the image, no overlap", () => {
  for (let seed = SPLIT_SEEDS.test; seed < SPLIT_SEEDS.test + 500; seed++) {
    const scene = makeScene(seed);
    assert.ok(scene.background in BACKGROUNDS);
    assert.ok(scene.shapes.length >= 1 && scene.shapes.length <= 4, `seed ${seed}`);
    const boxes = scene.shapes.map((s) => {
      assert.ok(s.color in SHAPE_COLOURS && s.size >= 48 && s.size <= 120, `seed ${seed}`);
      const h = shapeHeight(s.kind, s.size);
      const box = [s.cx - s.size / 2, s.cy - h / 2, s.cx + s.size / 2, s.cy + h / 2];
      assert.ok(box[0] >= 0 && box[1] >= 0 && box[2] <= SCENE_SIZE && box[3] <= SCENE_SIZE, `seed ${seed}`);
      return box;
    });
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [a, b] = [boxes[i], boxes[j]];
        assert.ok(a[2] <= b[0] || b[2] <= a[0] || a[3] <= b[1] || b[3] <= a[1], `seed ${seed}: overlap`);
      }
    }
  }
});

Deno.test("describeScene() gives at least 50 LLaMA-2 tokens and names every shape", async () => {
  const tokenizer = await loadTokenizer(
    new URL("../tools/train/llama2_tokenizer.json", import.meta.url).pathname,
  );
  for (let seed = SPLIT_SEEDS.val; seed < SPLIT_SEEDS.val + 200; seed++) {
    const scene = makeScene(seed), text = describeScene(scene);
    assert.ok(tokenizer.encode(text, { addSpecialTokens: false }).length >= 50, text);
    for (const shape of scene.shapes) assert.ok(text.includes(`${shape.color} ${shape.kind}`), text);
    assert.ok(text.includes(`${scene.background} background`));
  }
});

Deno.test("sceneQuestions() asks only what has a unique answer", () => {
  const scene: Scene = {
    background: "white",
    shapes: [
      { kind: "circle", color: "red", cx: 60, cy: 60, size: 60 },
      { kind: "circle", color: "blue", cx: 280, cy: 280, size: 60 },
      { kind: "star", color: "red", cx: 170, cy: 170, size: 60 },
    ],
  };
  const q = sceneQuestions(scene, 1);
  assert.deepEqual(q.color.map((x) => x.answer), ["red"]); // only the star is unique: "What color is the star?"
  assert.match(q.color[0].question, /^What color is the star\?\nAnswer the question/);
  assert.deepEqual(q.shape.map((x) => x.answer), ["circle"]); // only blue is unique
  assert.deepEqual(q.where.map((x) => x.answer), ["top left", "bottom right", "center"]);
  assert.equal(q.count[0].answer, "3");
  assert.deepEqual(q.exists.map((x) => x.answer), ["yes", "no"]);
});

Deno.test("testItems() covers every question kind from the test seeds only", () => {
  const items = testItems({ perKind: 40, describe: 8 });
  assert.equal(items.length, 208);
  assert.ok(items.every((item) => item.seed >= SPLIT_SEEDS.test));
  for (const kind of ["color", "shape", "count", "exists", "where", "describe"]) {
    assert.ok(items.some((item) => item.kind === kind), kind);
  }
});

Deno.test("renderScene() and the Pillow renderer draw the same scenes up to edge pixels", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const scenes = [3_000_000, 3_000_001, 3_000_002].map((seed) => ({ seed, scene: makeScene(seed) }));
    await Deno.writeTextFile(join(dir, "scenes.json"), JSON.stringify(scenes));
    const script = new URL("../tools/train/render_pillow.py", import.meta.url).pathname;
    const run = await new Deno.Command(DEBIAN_PYTHON, { args: [script, join(dir, "scenes.json"), dir] })
      .output();
    assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
    for (const { seed, scene } of scenes) {
      const pillow = await decodeImage(await Deno.readFile(join(dir, `${seed}.png`)));
      const ours = renderScene(scene);
      let differing = 0;
      for (let i = 0; i < ours.data.length; i += 3) {
        const diff = Math.abs(ours.data[i] - pillow.data[i]) +
          Math.abs(ours.data[i + 1] - pillow.data[i + 1]) +
          Math.abs(ours.data[i + 2] - pillow.data[i + 2]);
        if (diff > 30) differing++;
      }
      assert.ok(differing / (SCENE_SIZE * SCENE_SIZE) < 0.02, `seed ${seed}: ${differing} pixels differ`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
