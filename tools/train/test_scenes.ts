/**
 * Writes the shapes test set's scenes as JSON (`[{ seed, scene }]`) for another renderer:
 * `tools/train/render_pillow.py` draws them with Pillow into `{seed}.png` files, which
 * `deno task eval --demo --images DIR` reads instead of its own rasteriser.
 *
 * ```sh
 * deno run -A tools/train/test_scenes.ts --out scenes.json [--per-kind 40] [--describe 16]
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { testItems } from "../fixtures/scenes.ts";

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string" }, "per-kind": { type: "string" }, describe: { type: "string" } },
  });
  const items = testItems({
    perKind: Number(values["per-kind"] ?? 40),
    describe: Number(values.describe ?? 16),
  });
  const scenes = items.map(({ seed, scene }) => ({ seed, scene }));
  await Deno.writeTextFile(values.out ?? "scenes.json", JSON.stringify(scenes));
  console.log(`wrote ${scenes.length} scenes to ${values.out ?? "scenes.json"}`);
}
