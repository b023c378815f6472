/**
 * Writes the demo's sample scene, assets/demo/sample.png: three shapes of the shapes task drawn
 * by the TypeScript rasteriser (not the renderer the model was trained with).
 *
 * ```sh
 * deno run -A tools/train/sample_scene.ts
 * ```
 * @module
 */
import { encodeImage } from "../fixtures/images.ts";
import { renderScene, type Scene } from "../fixtures/scenes.ts";

/** The sample: a red circle top left, a blue star in the center, a green square bottom right. */
export const SAMPLE_SCENE: Scene = {
  background: "beige",
  shapes: [
    { kind: "circle", color: "red", cx: 62, cy: 66, size: 84 },
    { kind: "star", color: "blue", cx: 170, cy: 172, size: 100 },
    { kind: "square", color: "green", cx: 272, cy: 270, size: 70 },
  ],
};

if (import.meta.main) {
  const path = new URL("../../assets/demo/sample.png", import.meta.url);
  await Deno.writeFile(path, await encodeImage(renderScene(SAMPLE_SCENE), "png"));
  console.log(`wrote ${path.pathname}`);
}
