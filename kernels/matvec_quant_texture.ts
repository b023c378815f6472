/**
 * Matrix products with a quantized weight stored in textures, dequantized inside the kernel:
 * out[M, N] (= or +=) x[M, K] · W[N, K]ᵀ (+ bias[N]), W in Q8_0, Q4_0, Q4_K or Q6_K in the layout of
 * runtime/device/weights_quant_texture.ts. CPU twin: `dequantize` (runtime/core/ggml_quants.ts)
 * then `linear` (runtime/core/cpu_ops.ts).
 *
 * A workgroup of 8 lanes computes one 64-row block of W for a tile of rows of x (1 in decode, 4
 * for more rows): lane l owns the block's rows 8l .. 8l + 7 and walks K one GGML block at a time,
 * reading its rows' texels (the lanes' are adjacent) and keeping their sums in registers: no
 * workgroup memory, no reduction. Codes become floats with `unpack4xI8` / `unpack4xU8` (4 per u32);
 * the block's scales multiply sums, not elements, as GGML's own kernels do:
 *   Σ d·q·x = d·Σ q·x;  Σ (d·sc·q − dmin·m)·x = d·sc·Σ q·x − dmin·m·Σ x;  Σ d·s·(q − 32)·x = d·s·(Σ q·x − 32·Σ x)
 * so results equal the twin's up to f32 rounding (order and grouping of the sums), not bit for bit.
 * One dispatch per texture chunk; the grid is (row blocks of the chunk) × (tiles of x rows).
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { GpuError } from "../runtime/core/errors.ts";
import { ROW_BLOCK, type WeightTextureChunk } from "../runtime/device/weights_texture.ts";
import {
  quantTextureLayout,
  quantTextureShader,
  type QuantTextureType,
} from "../runtime/device/weights_quant_texture.ts";
import { checkBufferFloats, defineUniforms, packUniforms, uniformInput } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** A quantized W [rows, cols] in storage textures. */
export interface QuantTextureWeight {
  rows: number;
  cols: number;
  type: QuantTextureType;
  textures: WeightTextureChunk[];
}

/** Arguments of {@link QuantTextureMatvecKernel.bind}. */
export interface QuantTextureMatvecArgs {
  /** f32 [xRowOffset + rows, K]. */
  x: GPUBuffer;
  weight: QuantTextureWeight;
  /** f32 [N], optional. */
  bias?: GPUBuffer;
  /** f32 [outRowOffset + rows, N]; a different buffer from x. */
  out: GPUBuffer;
  /** M: rows of x multiplied. */
  rows: number;
  /** out += result instead of out = result. */
  accumulate?: boolean;
  /** First row of x read (default 0). */
  xRowOffset?: number;
  /** First row of out written (default 0). */
  outRowOffset?: number;
}

/** The compiled quantized texture matvec, one pipeline per block type and tile height. */
export interface QuantTextureMatvecKernel {
  /** Dispatches computing `args` (one per texture chunk). */
  bind(buffers: BufferSet, args: QuantTextureMatvecArgs): Dispatch[];
}

const LANES = 8;
/** Rows of x per workgroup: 1 for up to this many rows of x, {@link WIDE_TILE} above. */
const NARROW_ROWS = 2;
const WIDE_TILE = 4;
const TYPES: QuantTextureType[] = ["Q8_0", "Q4_0", "Q4_K", "Q6_K"];

const PARAMS = defineUniforms("matvec_quant_texture", {
  rows: "u32", //          M
  outCols: "u32", //       N (all chunks)
  inCols: "u32", //        K
  chunkRows: "u32", //     weight rows in this chunk
  chunkStart: "u32", //    first weight row of this chunk
  xRowOffset: "u32",
  outRowOffset: "u32",
  flags: "u32", //         bit 0: accumulate, bit 1: bias
});

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const sum = (terms: string[]) => terms.join(" + ");
const WORD = ["x", "y", "z", "w"];

/** `let x{i}_{v} = …` for the `vectors` vec4s of x at vec4 offset `at`, every x row i of the tile. */
function loadX(tile: number, vectors: number, at: string): string {
  return range(tile).flatMap((i) =>
    range(vectors).map((v) => `    let x${i}_${v} = x[x_base${i} + ${at} + ${v}u];`)
  ).join("\n");
}

/** `let sx{i}_{g} = Σ x` over `groups` consecutive groups of `per` vec4s. */
function groupSumsX(tile: number, groups: number, per: number): string {
  return range(tile).flatMap((i) =>
    range(groups).map((g) =>
      `    let sx${i}_${g} = dot(${sum(range(per).map((v) => `x${i}_${g * per + v}`))}, vec4f(1.0));`
    )
  ).join("\n");
}

/** `fma(q_n, x_n, … fma(q_1, x_1, q_0 · x_0))`: a vec4 dot product chain, summed across lanes later. */
function fmaChain(terms: [string, string][]): string {
  return terms.slice(1).reduce((acc, [q, x]) => `fma(${q}, ${x}, ${acc})`, `${terms[0][0]} * ${terms[0][1]}`);
}

/**
 * WGSL for one K-block of `type` with a tile of `tile` rows of x: adds each of the lane's 8 rows'
 * dot products into lo{i} (rows 0..3) and hi{i} (rows 4..7).
 */
function blockCode(type: QuantTextureType, tile: number): string {
  const rowsOf = (fn: (i: number) => string) => range(tile).map(fn).join("\n");
  // Blocks of 32 with the 8 rows' d in the header texel: rows unrolled.
  if (type === "Q8_0" || type === "Q4_0") {
    const q8 = type === "Q8_0";
    const rows = range(8).map((j) => {
      const texels = q8
        ? `    let a${j} = quant_texel(body + ${2 * j}u);\n    let c${j} = quant_texel(body + ${2 * j + 1}u);`
        : `    let a${j} = quant_texel(body + ${j}u);`;
      // Q8_0: word w of texels a, c holds elements 4w ..; Q4_0: low nibbles 4w .., high 16 + 4w ..
      const codes = q8
        ? range(8).map((w) => `    let q${j}_${w} = i8_bytes(${w < 4 ? "a" : "c"}${j}.${WORD[w % 4]});`)
        : range(8).map((w) =>
          `    let q${j}_${w} = byte_fields(${
            w < 4 ? `a${j}.${WORD[w]}` : `a${j}.${WORD[w - 4]} >> 4u`
          }, 15u);`
        );
      const dots = rowsOf((i) => {
        const chain = fmaChain(range(8).map((w) => [`q${j}_${w}`, `x${i}_${w}`]));
        return q8
          ? `    let s${j}_${i} = dot(${chain}, vec4f(1.0));`
          : `    let s${j}_${i} = dot(${chain}, BYTE_FIELD_SCALE) - 8.0 * sx${i}_0;`;
      });
      return [texels, ...codes, dots].join("\n");
    }).join("\n");
    // Q8_0's codes come scaled by 2^24: so does d.
    const scale = q8 ? " * I8_BYTE_SCALE" : "";
    return `    let xv = b * 8u;
${loadX(tile, 8, "xv")}
${q8 ? "" : groupSumsX(tile, 1, 8)}
    let h = quant_texel(seg + lid);
    let d_lo = vec4f(unpack2x16float(h.x), unpack2x16float(h.y))${scale};
    let d_hi = vec4f(unpack2x16float(h.z), unpack2x16float(h.w))${scale};
${rows}
${
      rowsOf((i) =>
        `    lo${i} += d_lo * vec4f(s0_${i}, s1_${i}, s2_${i}, s3_${i});\n    hi${i} += d_hi * vec4f(s4_${i}, s5_${i}, s6_${i}, s7_${i});`
      )
    }`;
  }
  // Super-blocks of 256: x loaded once, rows in a loop (one-hot into lo/hi).
  const accumulate = rowsOf((i) =>
    `      lo${i} += select(vec4f(0.0), vec4f(total${i}), vec4u(j) == vec4u(0u, 1u, 2u, 3u));
      hi${i} += select(vec4f(0.0), vec4f(total${i}), vec4u(j) == vec4u(4u, 5u, 6u, 7u));`
  );
  if (type === "Q4_K") {
    // Pair p: texels 1 + 2p, 2 + 2p hold qs[32p .. 32p + 32): low nibbles sub-block 2p, high 2p + 1.
    const pairs = range(4).map((p) => {
      const texels = `      let e${2 * p} = quant_texel(r + ${1 + 2 * p}u);\n      let e${
        2 * p + 1
      } = quant_texel(r + ${2 + 2 * p}u);`;
      const codes = range(8).flatMap((n) => {
        const word = `e${2 * p + (n >> 2)}.${WORD[n & 3]}`;
        return [
          `      let ql${p}_${n} = byte_fields(${word}, 15u);`,
          `      let qh${p}_${n} = byte_fields(${word} >> 4u, 15u);`,
        ];
      });
      const dots = rowsOf((i) => {
        const lo = fmaChain(range(8).map((n) => [`ql${p}_${n}`, `x${i}_${16 * p + n}`]));
        const hi = fmaChain(range(8).map((n) => [`qh${p}_${n}`, `x${i}_${16 * p + 8 + n}`]));
        return `      let sq${i}_${2 * p} = dot(${lo}, BYTE_FIELD_SCALE);
      let sq${i}_${2 * p + 1} = dot(${hi}, BYTE_FIELD_SCALE);`;
      });
      return [texels, ...codes, dots].join("\n");
    }).join("\n");
    const totals = rowsOf((i) =>
      `      let total${i} = dd.x * (dot(sc_a, vec4f(sq${i}_0, sq${i}_1, sq${i}_2, sq${i}_3)) + dot(sc_b, vec4f(sq${i}_4, sq${i}_5, sq${i}_6, sq${i}_7)))
        - dd.y * (dot(m_a, vec4f(sx${i}_0, sx${i}_1, sx${i}_2, sx${i}_3)) + dot(m_b, vec4f(sx${i}_4, sx${i}_5, sx${i}_6, sx${i}_7)));`
    );
    return `    let xv = b * 64u;
${loadX(tile, 64, "xv")}
${groupSumsX(tile, 8, 8)}
    for (var j = 0u; j < 8u; j++) {
      let r = body + j * QUANT_BODY_TEXELS;
      let head = quant_texel(r);
      let dd = unpack2x16float(head.x); // d, dmin
      let b1 = unpack4xU8(head.y);
      let b2 = unpack4xU8(head.z);
      let b3 = unpack4xU8(head.w);
      // 6-bit scales and mins of sub-blocks 0..3 (a) and 4..7 (b)
      let sc_a = vec4f(bitcast<vec4i>(b1 & vec4u(63u)));
      let m_a = vec4f(bitcast<vec4i>(b2 & vec4u(63u)));
      let sc_b = vec4f(bitcast<vec4i>((b3 & vec4u(15u)) | ((b1 >> vec4u(6u)) << vec4u(4u))));
      let m_b = vec4f(bitcast<vec4i>((b3 >> vec4u(4u)) | ((b2 >> vec4u(6u)) << vec4u(4u))));
${pairs}
${totals}
${accumulate}
    }`;
  }
  // Q6_K: half hf, quarter k, 16-element group u: ql texel 4hf + 2(k & 1) + u (nibble k >> 1),
  // qh texel 8 + 2hf + u (bits 2k); elements 128hf + 32k + 16u + 4w + 0..3; scale group 8hf + 2k + u.
  const groups: string[][] = range(tile).map(() => range(16).map(() => ""));
  const codes: string[] = [];
  for (let hf = 0; hf < 2; hf++) {
    for (let k = 0; k < 4; k++) {
      for (let u = 0; u < 2; u++) {
        const g = 8 * hf + 2 * k + u;
        const terms: [string, string][][] = range(tile).map(() => []);
        for (let w = 0; w < 4; w++) {
          const ql = `l${4 * hf + 2 * (k & 1) + u}.${WORD[w]}`, qh = `h${2 * hf + u}.${WORD[w]}`;
          const low = k >> 1 ? `(${ql} >> 4u)` : ql;
          const high = k ? `((${qh} >> ${2 * k}u) & 0x03030303u)` : `(${qh} & 0x03030303u)`;
          codes.push(`      let q${g}_${w} = byte_fields((${low} & 0x0f0f0f0fu) | (${high} << 4u), 63u);`);
          for (let i = 0; i < tile; i++) {
            terms[i].push([`q${g}_${w}`, `x${i}_${32 * hf + 8 * k + 4 * u + w}`]);
          }
        }
        for (let i = 0; i < tile; i++) {
          groups[i][g] = `dot(${fmaChain(terms[i])}, BYTE_FIELD_SCALE) - 32.0 * sx${i}_${g}`;
        }
      }
    }
  }
  const totals = rowsOf((i) => {
    const quads = range(4).map((a) =>
      `dot(sc${a}, vec4f(${range(4).map((n) => `g${i}_${4 * a + n}`).join(", ")}))`
    );
    return `${range(16).map((g) => `      let g${i}_${g} = ${groups[i][g]};`).join("\n")}
      let total${i} = d * (${sum(quads)});`;
  });
  return `    let xv = b * 64u;
${loadX(tile, 64, "xv")}
${groupSumsX(tile, 16, 4)}
    let h = quant_texel(seg + lid);
    for (var j = 0u; j < 8u; j++) {
      let r = body + j * QUANT_BODY_TEXELS;
      let d = unpack2x16float(h[j >> 1u])[j & 1u];
${range(8).map((t) => `      let l${t} = quant_texel(r + ${t}u);`).join("\n")}
${range(4).map((t) => `      let h${t} = quant_texel(r + ${8 + t}u);`).join("\n")}
      let s = quant_texel(r + 12u);
${range(4).map((a) => `      let sc${a} = vec4f(unpack4xI8(s.${WORD[a]}));`).join("\n")}
${codes.join("\n")}
${totals}
${accumulate}
    }`;
}

/**
 * The kernel's WGSL: `tile` rows of x per workgroup, x read from a storage buffer, or (`uniformCols`
 * set) the tile's rows of that many columns bound as a uniform buffer (one tile per dispatch).
 */
function source(type: QuantTextureType, tile: number, uniformCols?: number): string {
  const perTile = range(tile);
  const xDeclaration = uniformCols
    ? uniformInput(1, "x", (tile * uniformCols) / 4)
    : "@group(0) @binding(1) var<storage, read> x: array<vec4f>;";
  const xBase = (i: number) =>
    uniformCols
      ? `  let x_base${i} = ${(i * uniformCols) / 4}u; // the binding starts at the tile`
      : `  let x_base${i} = (params.x_row_offset + min(m0 + ${i}u, params.rows - 1u)) * (params.in_cols >> 2u);`;
  return `${wgslPrelude({ workgroupSize: LANES })}
${PARAMS.wgsl}
${xDeclaration}
@group(0) @binding(2) var<storage, read> bias: array<f32>;
${quantTextureShader(type, 3)}
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const TILE = ${tile}u;

// Codes become floats without shifting them down: component k of byte_fields(w, mask) is
// (w & (mask << 8k)) = field_k · 2^(8k), and of i8_bytes(w) the signed byte k · 2^24 (moved to the
// top of the word). The powers of two are exact: BYTE_FIELD_SCALE and I8_BYTE_SCALE undo them on
// the sums, so each product and sum rounds as it would unscaled.
const BYTE_FIELD_SCALE = vec4f(1.0, 0.00390625, 0.0000152587890625, 0.000000059604644775390625);
const I8_BYTE_SCALE = 0.000000059604644775390625;
fn byte_fields(w: u32, mask: u32) -> vec4f {
  return vec4f(bitcast<vec4i>(vec4u(w) & vec4u(mask, mask << 8u, mask << 16u, mask << 24u)));
}
fn i8_bytes(w: u32) -> vec4f {
  return vec4f(bitcast<vec4i>(vec4u(w << 24u, w << 16u, w << 8u, w) & vec4u(0xff000000u)));
}

// out[m, chunk_start + n] (=|+=) value (+ bias).
fn store(m: u32, n: u32, value: f32) {
  let column = params.chunk_start + n;
  let at = (params.out_row_offset + m) * params.out_cols + column;
  var v = value;
  if ((params.flags & 2u) != 0u) { v += bias[column]; }
  if ((params.flags & 1u) != 0u) { v += out[at]; }
  out[at] = v;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = (params.chunk_rows + ${ROW_BLOCK - 1}u) / ${ROW_BLOCK}u;
  let tiles = (params.rows + TILE - 1u) / TILE;
  let g = workgroup_index(wid, nwg);
  if (g >= blocks * tiles) { return; }
  let block = g % blocks;
  let m0 = (g / blocks) * TILE;
  let k_blocks = params.in_cols / QUANT_BLOCK_ELEMENTS;
${perTile.map(xBase).join("\n")}
${perTile.map((i) => `  var lo${i} = vec4f(0.0);\n  var hi${i} = vec4f(0.0);`).join("\n")}
  for (var b = 0u; b < k_blocks; b++) {
    let seg = (block * k_blocks + b) * QUANT_SEGMENT_TEXELS;
    let body = seg + QUANT_HEADER_TEXELS + lid * 8u * QUANT_BODY_TEXELS;
${blockCode(type, tile)}
  }
  let row0 = block * ${ROW_BLOCK}u + lid * 8u;
${
    perTile.map((i) =>
      `  if (m0 + ${i}u < params.rows) {
    for (var j = 0u; j < 4u; j++) {
      if (row0 + j < params.chunk_rows) { store(m0 + ${i}u, row0 + j, lo${i}[j]); }
      if (row0 + 4u + j < params.chunk_rows) { store(m0 + ${i}u, row0 + 4u + j, hi${i}[j]); }
    }
  }`
    ).join("\n")
  }
}
`;
}

/** Uniform-x pipelines compiled for a device, by `${type}/${cols}/${tile}` (see {@link prepareQuantTextureMatvec}). */
const uniformPipelines = new WeakMap<Gpu, Map<string, GPUComputePipeline>>();

/**
 * Compiles the variants that read x through a uniform binding for each (type, cols) given (a
 * decode row, and tiles of rows where they fit the binding limit); without them
 * {@link QuantTextureMatvecKernel.bind} reads x from storage (same results, slower on adapters such
 * as lavapipe, which loads storage buffers lane by lane). The loader calls it once per model for
 * the shapes of its quantized matrices.
 * @example
 * ```ts
 * import { createGpu } from "../runtime/device/gpu.ts";
 * import { prepareQuantTextureMatvec } from "./matvec_quant_texture.ts";
 * const gpu = await createGpu();
 * await prepareQuantTextureMatvec(gpu, [{ type: "Q4_K", cols: 256 }]);
 * gpu.destroy();
 * ```
 */
export async function prepareQuantTextureMatvec(
  gpu: Gpu,
  shapes: { type: QuantTextureType; cols: number }[],
): Promise<void> {
  let compiled = uniformPipelines.get(gpu);
  if (!compiled) uniformPipelines.set(gpu, compiled = new Map());
  for (const { type, cols } of shapes) {
    for (const tile of [1, WIDE_TILE]) {
      const key = `${type}/${cols}/${tile}`;
      if (compiled.has(key) || !uniformFits(gpu, tile * cols)) continue;
      const label = `matvec_quant_texture_${type}_x${tile}_uniform${cols}`;
      compiled.set(key, await gpu.pipeline(label, source(type, tile, cols)));
    }
  }
}

/** `floats` f32 fit one uniform binding. */
function uniformFits(gpu: Gpu, floats: number): boolean {
  return floats % 4 === 0 && floats * 4 <= gpu.device.limits.maxUniformBufferBindingSize;
}

/**
 * Compiles the quantized texture matvec for every block type and both tile heights.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { quantize } from "../runtime/core/ggml_quants.ts";
 * import { uploadQuantTextures } from "../runtime/device/weights_quant_texture.ts";
 * import { createQuantTextureMatvec } from "./matvec_quant_texture.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const matvec = await createQuantTextureMatvec(gpu);
 * const bytes = quantize("Q8_0", new Float32Array(2 * 32).fill(127)); // d = 1, q = 127: exact
 * const textures = uploadQuantTextures(buffers, bytes, { rows: 2, cols: 32, type: "Q8_0", label: "w" });
 * const weight = { rows: 2, cols: 32, type: "Q8_0" as const, textures };
 * const x = buffers.upload(new Float32Array(32).fill(0.5), "x");
 * const out = buffers.storage(2 * 4, "out");
 * gpu.submit(matvec.bind(buffers, { x, weight, out, rows: 1 }));
 * assert.deepEqual([...new Float32Array(await gpu.read(out, 0, 8))], [2032, 2032]);
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createQuantTextureMatvec(gpu: Gpu): Promise<QuantTextureMatvecKernel> {
  const pipelines = new Map<string, GPUComputePipeline>();
  for (const type of TYPES) {
    for (const tile of [1, WIDE_TILE]) {
      const label = `matvec_quant_texture_${type}_x${tile}`;
      pipelines.set(`${type}/${tile}`, await gpu.pipeline(label, source(type, tile)));
    }
  }
  return {
    bind(buffers: BufferSet, args: QuantTextureMatvecArgs): Dispatch[] {
      const { weight, rows } = args;
      const tile = rows <= NARROW_ROWS ? 1 : WIDE_TILE;
      const pipeline = pipelines.get(`${weight.type}/${tile}`);
      if (!pipeline || weight.cols % quantTextureLayout(weight.type).blockElements !== 0) {
        throw new GpuError(
          `Cannot bind matvec_quant_texture: weight type ${weight.type} [${weight.rows}, ${weight.cols}]`,
          "matvec_quant_texture",
        );
      }
      const xRowOffset = args.xRowOffset ?? 0, outRowOffset = args.outRowOffset ?? 0;
      checkSize(args.x, (xRowOffset + rows) * weight.cols, "x");
      checkSize(args.out, (outRowOffset + rows) * weight.rows, "out");
      if (args.bias) checkSize(args.bias, weight.rows, "bias");
      const flags = (args.accumulate ? 1 : 0) | (args.bias ? 2 : 0);
      const dispatch = (
        chunk: WeightTextureChunk,
        use: GPUComputePipeline,
        x: GPUBuffer | GPUBufferBinding,
        at: { rows: number; xRowOffset: number; outRowOffset: number },
      ) => {
        const params = packUniforms(PARAMS, {
          ...at,
          outCols: weight.rows,
          inCols: weight.cols,
          chunkRows: chunk.rows,
          chunkStart: chunk.rowStart,
          flags,
        });
        const groups = Math.ceil(chunk.rows / ROW_BLOCK) * Math.ceil(at.rows / tile);
        // Without a bias, x's buffer stands in for the (unread) bias binding.
        const bindings = [
          buffers.uniform(params, "matvec_quant_texture params"),
          x,
          args.bias ?? args.x,
          chunk.view,
          args.out,
        ];
        return gpu.dispatch(use, bindings, grid(groups));
      };
      // Each tile of x rows bound as a uniform buffer (a dispatch per tile), where prepared and the
      // offsets allow it; a last, shorter tile and everything else read x from storage.
      const rowBytes = weight.cols * 4;
      const uniform = uniformPipelines.get(gpu)?.get(`${weight.type}/${weight.cols}/${tile}`);
      const alignment = gpu.device.limits.minUniformBufferOffsetAlignment;
      const full = Math.floor(rows / tile);
      const aligned = range(full).every((t) => ((xRowOffset + t * tile) * rowBytes) % alignment === 0);
      if (!uniform || full === 0 || !aligned || (args.x.usage & GPUBufferUsage.UNIFORM) === 0) {
        return weight.textures.map((chunk) =>
          dispatch(chunk, pipeline, args.x, { rows, xRowOffset, outRowOffset })
        );
      }
      const dispatches = range(full).flatMap((t) =>
        weight.textures.map((chunk) => {
          const offset = (xRowOffset + t * tile) * rowBytes;
          return dispatch(chunk, uniform, { buffer: args.x, offset, size: tile * rowBytes }, {
            rows: tile,
            xRowOffset: 0,
            outRowOffset: outRowOffset + t * tile,
          });
        })
      );
      const rest = rows - full * tile, first = full * tile;
      if (rest === 0) return dispatches;
      return dispatches.concat(weight.textures.map((chunk) =>
        dispatch(chunk, pipeline, args.x, {
          rows: rest,
          xRowOffset: xRowOffset + first,
          outRowOffset: outRowOffset + first,
        })
      ));
    },
  };
}

function checkSize(buffer: GPUBuffer, floats: number, name: string): void {
  checkBufferFloats(buffer, floats, { kernel: "matvec_quant_texture", label: "matvec_quant_texture", name });
}
