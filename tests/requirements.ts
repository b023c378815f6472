/**
 * Tests that need something a machine may lack (NLTK, an adapter with `shader-f16`). Where it is
 * missing the test is reported as ignored, its name saying what it needs; with `CI=true` it runs
 * and fails instead, naming what is missing, so a CI run cannot pass by skipping.
 * @module
 */

/** Whether missing requirements fail the run (CI=true) instead of being ignored. */
export const STRICT = Deno.env.get("CI") === "true";

/**
 * Registers a test that needs something: `missing` is null when it is there, else what is missing.
 * @example
 * ```ts
 * import { testNeeding } from "./requirements.ts";
 * testNeeding({ name: "1 + 1 is 2", missing: null, fn: () => {} });
 * ```
 */
export function testNeeding(
  options: { name: string; missing: string | null; fn: () => void | Promise<void> },
): void {
  const { name, missing, fn } = options;
  if (missing === null) {
    Deno.test(name, fn);
    return;
  }
  Deno.test({
    name: `${name} (needs ${missing})`,
    ignore: !STRICT,
    fn() {
      throw new Error(`Cannot run "${name}": ${missing} is missing, and CI=true forbids skipping it`);
    },
  });
}

/**
 * Whether the WebGPU adapter offers `shader-f16` (f16 KV caches need it); false without WebGPU.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { adapterHasShaderF16 } from "./requirements.ts";
 * assert.equal(typeof await adapterHasShaderF16(), "boolean");
 * ```
 */
export async function adapterHasShaderF16(): Promise<boolean> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  const adapter = await gpu?.requestAdapter({ powerPreference: "high-performance" });
  return adapter?.features.has("shader-f16") ?? false;
}
