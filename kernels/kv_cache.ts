/**
 * How KV-cache elements are stored on the GPU: the one file that knows. A cache of dtype "f32"
 * holds one element per 4-byte word; "f16" packs two elements into a u32 word (`pack2x16float`,
 * element 2i in the low half) and reads them back with `unpack2x16float`, so shaders need no
 * `enable f16;` (as for f16 weights, runtime/device/weights_gpu.ts) and attention still sums in f32.
 *
 * Kernels never index a cache buffer themselves: they include the WGSL from {@link kvCacheShader},
 * which declares the binding `NAME` and, by `view`:
 * - "vec4": `NAME_vec4(i: u32) -> vec4f`, elements [4i, 4i + 4) (a row holds a multiple of 4);
 * - "scalar": `NAME_at(i: u32) -> f32`, element i;
 * - "store" (read_write): `const NAME_PER_WORD: u32` (1 or 2) and `NAME_word(e: u32)`, the stored
 *   word of elements [e, e + NAME_PER_WORD) of the kernel's own `src: array<f32>`, to be written at
 *   `NAME[e / NAME_PER_WORD]` (e a multiple of NAME_PER_WORD).
 * f32 values beyond f16's range have no defined f16 word (WGSL's pack2x16float); K/V values of
 * real models stay far inside it.
 * @module
 */
import type { KvDtype } from "../runtime/core/sparse_kv.ts";

/** Cache elements per stored 4-byte word, by element type. */
export const KV_ELEMENTS_PER_WORD: Readonly<Record<KvDtype, number>> = { f32: 1, f16: 2 };

/** Options of {@link kvCacheShader}. */
export interface KvCacheShaderOptions {
  /** The buffer's WGSL name (snake_case), also the accessors' prefix. */
  name: string;
  binding: number;
  /** The accessors to declare: "vec4" and "scalar" read, "store" writes. */
  view: "vec4" | "scalar" | "store";
}

/**
 * WGSL declaring a KV cache buffer of `dtype` and its accessors (see the module comment).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { kvCacheShader } from "./kv_cache.ts";
 * const f16 = kvCacheShader("f16", { name: "keys", binding: 2, view: "vec4" });
 * assert.ok(f16.includes("var<storage, read> keys: array<vec2u>;"));
 * assert.ok(f16.includes("fn keys_vec4(i: u32) -> vec4f"));
 * const f32 = kvCacheShader("f32", { name: "cache", binding: 3, view: "store" });
 * assert.ok(f32.includes("const CACHE_PER_WORD = 1u;"));
 * ```
 */
export function kvCacheShader(dtype: KvDtype, options: KvCacheShaderOptions): string {
  const { name, binding, view } = options;
  const at = `@group(0) @binding(${binding})`;
  if (view === "store") {
    const perWord = KV_ELEMENTS_PER_WORD[dtype];
    const word = dtype === "f16" ? "u32" : "f32";
    const pack = dtype === "f16" ? "pack2x16float(vec2f(src[e], src[e + 1u]))" : "src[e]";
    return `${at} var<storage, read_write> ${name}: array<${word}>;
const ${name.toUpperCase()}_PER_WORD = ${perWord}u;

// The stored word of elements [e, e + ${name.toUpperCase()}_PER_WORD) of src.
fn ${name}_word(e: u32) -> ${word} {
  return ${pack};
}
`;
  }
  if (view === "vec4") {
    const body = dtype === "f16"
      ? `let w = ${name}[i];\n  return vec4f(unpack2x16float(w.x), unpack2x16float(w.y));`
      : `return ${name}[i];`;
    return `${at} var<storage, read> ${name}: array<${dtype === "f16" ? "vec2u" : "vec4f"}>;

// Elements [4i, 4i + 4) of ${name}.
fn ${name}_vec4(i: u32) -> vec4f {
  ${body}
}
`;
  }
  const body = dtype === "f16"
    ? `let pair = unpack2x16float(${name}[i >> 1u]);\n  return select(pair.x, pair.y, (i & 1u) == 1u);`
    : `return ${name}[i];`;
  return `${at} var<storage, read> ${name}: array<${dtype === "f16" ? "u32" : "f32"}>;

// Element i of ${name}.
fn ${name}_at(i: u32) -> f32 {
  ${body}
}
`;
}
