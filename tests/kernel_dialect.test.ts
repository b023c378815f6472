/**
 * The kernels' shared dialect, checked on their source text and on the registry: parameters only
 * through kernels/uniforms.ts (so the uniform is binding 0 and packed by name; uniform inputs are
 * declared there too), snake_case WGSL,
 * workgroup tree reductions only in the prelude (the sampler's argmax and 15-way sums excepted),
 * and every kernel compile function registered once in runtime/webgpu/gpu_kernels.ts.
 * @module
 */
import assert from "node:assert/strict";
import { KERNELS } from "../runtime/webgpu/gpu_kernels.ts";

const KERNEL_DIR = new URL("../kernels/", import.meta.url);

/** Every kernels/*.ts file: name and text without comment lines (JSDoc examples build buffers). */
const files = [...Deno.readDirSync(KERNEL_DIR)]
  .filter((entry) => entry.isFile && entry.name.endsWith(".ts"))
  .map((entry) => {
    const text = Deno.readTextFileSync(new URL(entry.name, KERNEL_DIR));
    const code = text.split("\n").filter((line) => !/^\s*(\*|\/\*\*|\/\/)/.test(line)).join("\n");
    return { name: entry.name, code };
  });

Deno.test("kernel parameters are declared only through defineUniforms() and packed by name", () => {
  assert.ok(files.length >= 13, `${files.length} kernel files`);
  for (const { name, code } of files) {
    if (name === "uniforms.ts") continue;
    assert.ok(!code.includes("var<uniform>"), `${name} declares its own uniform`);
    for (const packing of ["new Uint32Array(", "new Float32Array(", "new ArrayBuffer(", "DataView"]) {
      assert.ok(!code.includes(packing), `${name} packs parameters by index (${packing})`);
    }
    if (code.includes("params.")) {
      assert.ok(code.includes("defineUniforms("), `${name} reads undeclared params`);
    }
  }
});

Deno.test("WGSL functions and variables are snake_case, workgroup sizes come from the prelude", () => {
  for (const { name, code } of files) {
    for (const match of code.matchAll(/\b(?:fn|let|var(?:<[^>]*>)?)\s+([A-Za-z_][A-Za-z0-9_]*)/g)) {
      assert.match(match[1], /^[a-z][a-z0-9_]*$/, `${name}: ${match[0]}`);
    }
    for (const match of code.matchAll(/@workgroup_size\(([^)]*)\)/g)) {
      assert.ok(["WORKGROUP_SIZE", "1"].includes(match[1]), `${name}: ${match[0]}`);
    }
  }
});

Deno.test("workgroup tree reductions live in the prelude (the sampler's special ones excepted)", () => {
  const reducing = files.filter(({ code }) => code.includes(">>= 1u")).map(({ name }) => name).sort();
  assert.deepEqual(reducing, ["sample.ts", "wgsl_prelude.ts"]);
  const users = files.filter(({ code }) => /workgroup_(sum|max|min)/.test(code)).map(({ name }) => name);
  for (
    const kernel of [
      "attention.ts",
      "layernorm.ts",
      "matmul.ts",
      "predictor_ops.ts",
      "rmsnorm.ts",
      "sample.ts",
    ]
  ) {
    assert.ok(users.includes(kernel), `${kernel} does not use the prelude's reductions`);
  }
});

Deno.test("every kernel compile function is registered exactly once", async () => {
  const registered = Object.values(KERNELS) as unknown[];
  assert.equal(new Set(registered).size, registered.length, "a kernel is registered twice");
  for (const { name } of files) {
    const module: Record<string, unknown> = await import(new URL(name, KERNEL_DIR).href);
    for (const [exported, value] of Object.entries(module)) {
      if (exported.startsWith("create") && typeof value === "function") {
        assert.ok(registered.includes(value), `${name}: ${exported} is not in KERNELS`);
      }
    }
  }
});
