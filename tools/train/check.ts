/**
 * Checks an exported checkpoint against the training framework: for every item of the
 * checkpoint's `check.json` (written by train.py from the F16-rounded weights), runs the same
 * prompt ids and image through our runtime and compares the last-position logits, dense and with
 * Dynamic-LLaVA's prefill pruning, and the kept visual tokens. Prints the max abs difference per
 * item; exits 1 when a difference exceeds the tolerance or the kept tokens differ.
 *
 * ```sh
 * deno run -A tools/train/check.ts [--model DIR] [--backend cpu|webgpu] [--tolerance 1e-3]
 * ```
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loadModel } from "../../mod.ts";

/** One check item as train.py writes it. */
interface CheckItem {
  seed: number;
  image: string;
  ids: number[];
  visualKept: number[];
  dense: number[];
  dynamic: number[];
}

/** Largest |a[i] - b[i]|. */
function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string", default: "tools/train/out/model" },
      backend: { type: "string", default: "cpu" },
      tolerance: { type: "string", default: "1e-3" },
    },
  });
  const tolerance = Number(values.tolerance);
  const items = JSON.parse(await Deno.readTextFile(join(values.model, "check.json"))) as CheckItem[];
  const model = await loadModel(values.model, { backend: values.backend as "cpu" | "webgpu" });
  let worst = 0, keptAgree = true;
  try {
    for (const item of items) {
      const image = await Deno.readFile(join(values.model, item.image));
      const dense = await model.logits({ inputIds: item.ids, image, policy: "dense" });
      const dynamic = await model.logits({ inputIds: item.ids, image, policy: "dynamic" });
      const run = await model.generate({ inputIds: item.ids, image, policy: "dynamic", maxNewTokens: 1 });
      const sameKept = JSON.stringify(run.visualKept) === JSON.stringify(item.visualKept);
      keptAgree &&= sameKept;
      const dDense = maxAbsDiff(dense, item.dense), dDynamic = maxAbsDiff(dynamic, item.dynamic);
      worst = Math.max(worst, dDense, dDynamic);
      console.log(
        `seed ${item.seed}: max |logit diff| dense ${dDense.toExponential(2)}, dynamic ${
          dDynamic.toExponential(2)
        }, kept tokens ${sameKept ? "equal" : "DIFFER"} (${item.visualKept.length} of the image's)`,
      );
    }
  } finally {
    model.dispose();
  }
  console.log(`${values.backend} runtime vs PyTorch: max abs logit difference ${worst.toExponential(2)}`);
  if (worst > tolerance || !keptAgree) Deno.exit(1);
}
