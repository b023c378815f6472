/**
 * Kernel parameters: one declared field list per kernel gives both the WGSL uniform (`struct
 * Params` at `@group(0) @binding(0)`, named `params`) and the bytes the wrapper uploads, so a
 * field is written by name, never by slot.
 *
 * Fields are 32-bit scalars (`u32`, `i32`, `f32`) packed in declaration order, 4 bytes each; the
 * byte length is rounded up to 16 as uniform buffers need. TypeScript names are camelCase, their
 * WGSL fields the same words in snake_case (`headDim` → `head_dim`, `log2Theta` → `log2_theta`).
 * A value that its type cannot hold (a negative or fractional u32, NaN) is the caller's mistake:
 * {@link packUniforms} throws {@link InputError} naming the kernel and the field.
 * @module
 */
import { InputError } from "../runtime/core/errors.ts";

/** WGSL type of one uniform field. */
export type UniformType = "u32" | "i32" | "f32";

/** Field names to their WGSL types, in upload order. */
export type UniformFields = Record<string, UniformType>;

/** A kernel's parameter layout; see the module doc. */
export interface UniformLayout<F extends UniformFields> {
  /** Kernel name, for error messages and buffer labels. */
  readonly kernel: string;
  readonly fields: F;
  /** WGSL: `struct Params { … }` and `@group(0) @binding(0) var<uniform> params: Params;`. */
  readonly wgsl: string;
}

/** Values of every field of a layout, by name. */
export type UniformValues<F extends UniformFields> = { [K in keyof F]: number };

/**
 * Declares a kernel's parameters.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { defineUniforms } from "./uniforms.ts";
 * const params = defineUniforms("rope", { rows: "u32", headDim: "u32", log2Theta: "f32" });
 * assert.ok(params.wgsl.includes("head_dim: u32,"));
 * assert.ok(params.wgsl.includes("@group(0) @binding(0) var<uniform> params: Params;"));
 * ```
 */
export function defineUniforms<const F extends UniformFields>(kernel: string, fields: F): UniformLayout<F> {
  const members = Object.entries(fields).map(([name, type]) => `  ${snakeCase(name)}: ${type},`);
  const wgsl = `struct Params {\n${
    members.join("\n")
  }\n}\n@group(0) @binding(0) var<uniform> params: Params;\n`;
  return { kernel, fields, wgsl };
}

/**
 * WGSL declaring a read-only input of `vec4s` vec4f at `@group(0) @binding(binding)` as a uniform
 * buffer (not a parameter: the wrapper binds a byte range of a storage buffer made by
 * `BufferSet.storage`). For small inputs that every lane reads whole at the same addresses, such as
 * the row of x in a decode matvec: software adapters (lavapipe) load uniform data once per
 * workgroup but storage-buffer data lane by lane.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { uniformInput } from "./uniforms.ts";
 * assert.equal(uniformInput(1, "x", 256), "@group(0) @binding(1) var<uniform> x: array<vec4f, 256>;");
 * ```
 */
export function uniformInput(binding: number, name: string, vec4s: number): string {
  return `@group(0) @binding(${binding}) var<uniform> ${name}: array<vec4f, ${vec4s}>;`;
}

/**
 * Packs `values` in the layout's order (bytes for a uniform buffer, a multiple of 16 long).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { InputError } from "../runtime/core/errors.ts";
 * import { defineUniforms, packUniforms } from "./uniforms.ts";
 * const params = defineUniforms("rmsnorm", { rows: "u32", cols: "u32", eps: "f32" });
 * const bytes = packUniforms(params, { rows: 2, cols: 3, eps: 0.5 });
 * assert.equal(bytes.byteLength, 16);
 * assert.deepEqual([...new Uint32Array(bytes.buffer, 0, 2)], [2, 3]);
 * assert.equal(new Float32Array(bytes.buffer)[2], 0.5);
 * assert.throws(() => packUniforms(params, { rows: -1, cols: 3, eps: 0 }), InputError);
 * ```
 */
export function packUniforms<F extends UniformFields>(
  layout: UniformLayout<F>,
  values: UniformValues<F>,
): Uint8Array {
  const names = Object.keys(layout.fields);
  const bytes = new ArrayBuffer(Math.max(16, Math.ceil(names.length / 4) * 16));
  const view = new DataView(bytes);
  names.forEach((name, i) => {
    const type = layout.fields[name];
    const value = values[name];
    if (!fits(value, type)) {
      throw new InputError(
        `Cannot bind ${layout.kernel}: ${name} = ${value} is not a ${type}`,
        `${layout.kernel}.${name}`,
      );
    }
    if (type === "u32") view.setUint32(4 * i, value, true);
    else if (type === "i32") view.setInt32(4 * i, value, true);
    else view.setFloat32(4 * i, value, true);
  });
  return new Uint8Array(bytes);
}

/** Whether `value` is representable as `type` (f32: any number but NaN). */
function fits(value: number, type: UniformType): boolean {
  if (typeof value !== "number" || Number.isNaN(value)) return false;
  if (type === "f32") return true;
  const [min, max] = type === "u32" ? [0, 2 ** 32 - 1] : [-(2 ** 31), 2 ** 31 - 1];
  return Number.isInteger(value) && value >= min && value <= max;
}

/** `headDim` → `head_dim`. */
function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * The check every matmul-family wrapper makes before binding: `buffer` holds at least `floats` f32
 * values. Throws InputError naming the kernel (`label` in the message, `kernel.name` as where).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { InputError } from "../runtime/core/errors.ts";
 * import { checkBufferFloats } from "./uniforms.ts";
 * const small = { size: 8 } as GPUBuffer;
 * checkBufferFloats(small, 2, { kernel: "matmul", label: "matmul", name: "x" });
 * assert.throws(
 *   () => checkBufferFloats(small, 3, { kernel: "matmul", label: "matmul", name: "x" }),
 *   (e) => e instanceof InputError && e.where === "matmul.x" && /holds 8 bytes, needs 12/.test(e.message),
 * );
 * ```
 */
export function checkBufferFloats(
  buffer: GPUBuffer,
  floats: number,
  at: { kernel: string; label: string; name: string },
): void {
  if (buffer.size < floats * 4) {
    throw new InputError(
      `Cannot bind ${at.label}: ${at.name} holds ${buffer.size} bytes, needs ${floats * 4}`,
      `${at.kernel}.${at.name}`,
    );
  }
}
