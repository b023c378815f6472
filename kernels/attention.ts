/**
 * Scaled dot-product attention over one layer's KV cache, grouped-query heads, softmax in f32
 * with max subtraction. CPU twins: `attention` and `attentionProbsMean` in runtime/cpu_ops.ts.
 *
 * q [M, heads, D]; keys, values [capacity, kvHeads, D]; out [M, heads, D]; query head h reads kv
 * head h / (heads / kvHeads). Query row m sees key rows [0, visible(m)), visible(m) =
 * counts[countIndex] + m + 1 when causal (the rows of this call were appended at counts[...]
 * beforehand), counts[countIndex] when not (vision); clamped to the capacity. The row count is
 * read on the GPU, so a decode step re-encodes the same dispatches.
 *
 * One kernel template, two instances: a workgroup serves one head and a block of query rows (1 row
 * when rows < 8, i.e. decode; 8 rows for prefill), its 64 threads walk the visible keys in tiles
 * of 64: thread j scores key j against the block's queries, every thread keeps the block's online
 * softmax (running max and sum), and thread t accumulates output dims t and t + 64. Keys and
 * values are read once per block. headDim is a multiple of 4, at most 128.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { GpuError } from "../runtime/core/errors.ts";

/** Arguments of {@link AttentionKernel.bind}. */
export interface AttentionArgs {
  /** f32 [M, heads, headDim]. */
  q: GPUBuffer;
  /** f32 [capacity, kvHeads, headDim]. */
  keys: GPUBuffer;
  /** f32 [capacity, kvHeads, headDim]. */
  values: GPUBuffer;
  /** f32 [M, heads, headDim]. */
  out: GPUBuffer;
  /** u32 key-row counts; counts[countIndex] rows precede this call's rows. */
  counts: GPUBuffer;
  countIndex: number;
  rows: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
}

/** Arguments of {@link AttentionKernel.bindProbsMean}. */
export interface AttentionProbsMeanArgs {
  /** f32 [M, heads, headDim]; only row `row` is used. */
  q: GPUBuffer;
  row: number;
  /** f32 [capacity, kvHeads, headDim]. */
  keys: GPUBuffer;
  /** f32 [visible(row)]: mean over heads of the row's softmax probabilities. */
  out: GPUBuffer;
  counts: GPUBuffer;
  countIndex: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  causal: boolean;
}

/** Compiled attention pipelines. */
export interface AttentionKernel {
  /** The dispatch computing attention outputs. */
  bind(buffers: BufferSet, args: AttentionArgs): Dispatch[];
  /** Two dispatches computing one query row's head-averaged probabilities (FastV). */
  bindProbsMean(buffers: BufferSet, args: AttentionProbsMeanArgs): Dispatch[];
}

/** Largest supported head dimension (two output dims per thread; sizes workgroup arrays). */
export const MAX_HEAD_DIM = 128;

const COMMON = `
struct Params {
  rows: u32,
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  count_index: u32,
  causal: u32,
  capacity: u32,   // key rows the cache buffers hold
  scale: f32,      // 1 / sqrt(head_dim)
  row: u32,        // probs mean: the query row
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;

fn visible_keys(m: u32) -> u32 {
  var n = counts[params.count_index];
  if (params.causal != 0u) { n += m + 1u; }
  return min(n, params.capacity);
}

fn key_offset(r: u32, kv_head: u32) -> u32 {
  return (r * params.kv_heads + kv_head) * params.head_dim;
}

fn kv_head_of(h: u32) -> u32 {
  return h / (params.heads / params.kv_heads);
}
`;

/** How many query rows a workgroup serves: `groups` variables of `width` (1: f32, 4: vec4f) rows. */
interface QueryBlock {
  groups: number;
  width: 1 | 4;
}

/** Decode (rows < 8): one query row per workgroup. */
const DECODE_BLOCK: QueryBlock = { groups: 1, width: 1 };
/** Calls with at least this many query rows use {@link PREFILL_BLOCK}. */
const PREFILL_ROWS = 8;
/** Prefill: 8 query rows per workgroup, held as 2 vec4s (more rows compile slowly on GL drivers). */
const PREFILL_BLOCK: QueryBlock = { groups: 2, width: 4 };
const KEY_TILE = 64;

/**
 * Workgroup (block of query rows, head h), 64 threads, keys in tiles of 64:
 * 1. thread j scores key j of the tile against every query of the block (q in workgroup memory);
 * 2. every thread takes the tile's max of those scores (the same in all threads) and rescales its
 *    running sum and outputs; thread j turns its scores into probabilities;
 * 3. thread t accumulates dims t and t + 64 of every query's output over the tile's values.
 * Per-thread state is a fixed set of scalar or vec4 variables: no indexed private arrays, which
 * some drivers spill or compile very slowly.
 */
function attentionSource(block: QueryBlock): string {
  const { groups, width } = block;
  const queries = groups * width;
  const vec = width === 4 ? "vec4f" : "f32";
  const uvec = width === 4 ? "vec4u" : "u32";
  const each = (line: (g: number) => string) =>
    Array.from({ length: groups }, (_, g) => line(g)).join("\n  ");
  /** WGSL building a `uvec`/`vec` from per-row expressions of query rows g·width + c. */
  const rowsOf = (type: string, g: number, row: (i: number) => string) =>
    width === 1 ? row(g) : `${type}(${[0, 1, 2, 3].map((c) => row(4 * g + c)).join(", ")})`;
  const component = (expr: string, c: string) => width === 1 ? expr : `${expr}[${c}]`;
  const qIndex = width === 1 ? "(d / 4u) * GROUPS + i" : "d * GROUPS + i / 4u";
  const qComponent = width === 1 ? "d % 4u" : "i % 4u";
  const score = (g: number) =>
    width === 1
      ? `dot${g} += dot(q_tile[d4 * GROUPS + ${g}u], k);`
      : `dot${g} += q_tile[4u * d4 * GROUPS + ${g}u] * k.x + q_tile[(4u * d4 + 1u) * GROUPS + ${g}u] * k.y +
          q_tile[(4u * d4 + 2u) * GROUPS + ${g}u] * k.z + q_tile[(4u * d4 + 3u) * GROUPS + ${g}u] * k.w;`;
  return `${COMMON}
@group(0) @binding(2) var<storage, read> keys: array<vec4f>;
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
const GROUPS = ${groups}u;
const QUERIES = ${queries}u;
const MASKED = -3.0e38;
// q · scale: width 1: [d / 4][query] as vec4 over d; width 4: [d][group] as vec4 over 4 queries.
var<workgroup> q_tile: array<vec4f, ${MAX_HEAD_DIM * groups / (4 / width)}>;
var<workgroup> s_tile: array<${vec}, ${KEY_TILE * groups}>;       // [key][group]: scores
var<workgroup> p_tile: array<${vec}, ${KEY_TILE * groups}>;       // [key][group]: probabilities

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = (params.rows + QUERIES - 1u) / QUERIES;
  let linear = wid.x + wid.y * nwg.x;
  if (linear >= blocks * params.heads) { return; }
  let h = linear % params.heads;
  let first = (linear / params.heads) * QUERIES;
  let kvh = kv_head_of(h);
  let d_len = params.head_dim;
  for (var e = lid; e < d_len * QUERIES; e += 64u) {
    let i = e / d_len;
    let d = e % d_len;
    let m = first + i;
    var v = 0.0;
    if (m < params.rows) { v = q[(m * params.heads + h) * d_len + d] * params.scale; }
    q_tile[${qIndex}][${qComponent}] = v;
  }
  // Keys visible to each query row of the block (0 for rows past the end).
  ${
    each((g) =>
      `let visible${g} = select(${uvec}(0u), ${rowsOf(uvec, g, (i) => `visible_keys(first + ${i}u)`)}, ${
        rowsOf(uvec, g, (i) => `first + ${i}u`)
      } < ${uvec}(params.rows));`
    )
  }
  let block_keys = visible_keys(min(params.rows, first + QUERIES) - 1u);   // most in the block
  let d0 = lid;
  let d1 = lid + 64u;
  ${
    each((g) =>
      `var out${g}a = ${vec}(0.0);
  var out${g}b = ${vec}(0.0);
  var run_max${g} = ${vec}(MASKED);
  var run_sum${g} = ${vec}(0.0);`
    )
  }
  for (var r0 = 0u; r0 < block_keys; r0 += ${KEY_TILE}u) {
    workgroupBarrier();
    let tile_keys = min(${KEY_TILE}u, block_keys - r0);
    let r = r0 + lid;
    ${each((g) => `var s${g} = ${vec}(MASKED);`)}
    if (lid < tile_keys) {
      let k_base = key_offset(r, kvh) / 4u;
      ${each((g) => `var dot${g} = ${vec}(0.0);`)}
      for (var d4 = 0u; d4 < d_len / 4u; d4++) {
        let k = keys[k_base + d4];
        ${each(score)}
      }
      ${each((g) => `s${g} = select(dot${g}, ${vec}(MASKED), ${uvec}(r) >= visible${g});`)}
      ${each((g) => `s_tile[lid * GROUPS + ${g}u] = s${g};`)}
    }
    workgroupBarrier();
    ${each((g) => `var tile_max${g} = run_max${g};`)}
    for (var j = 0u; j < tile_keys; j++) {
      ${each((g) => `tile_max${g} = max(tile_max${g}, s_tile[j * GROUPS + ${g}u]);`)}
    }
    ${
    each((g) =>
      `let factor${g} = exp(run_max${g} - tile_max${g});
    run_max${g} = tile_max${g};
    run_sum${g} *= factor${g};
    out${g}a *= factor${g};
    out${g}b *= factor${g};`
    )
  }
    if (lid < tile_keys) {
      ${
    each((g) =>
      `p_tile[lid * GROUPS + ${g}u] = select(exp(s${g} - run_max${g}), ${vec}(0.0), s${g} <= ${vec}(MASKED));`
    )
  }
    }
    workgroupBarrier();
    for (var j = 0u; j < tile_keys; j++) {
      let v_base = key_offset(r0 + j, kvh);
      // Lanes past head_dim read a valid element and accumulate junk that is never written.
      let va = values[v_base + min(d0, d_len - 1u)];
      var vb = 0.0;
      if (d_len > 64u) { vb = values[v_base + min(d1, d_len - 1u)]; }
      ${
    each((g) =>
      `let p${g} = p_tile[j * GROUPS + ${g}u];
      run_sum${g} += p${g};
      out${g}a += p${g} * va;
      out${g}b += p${g} * vb;`
    )
  }
    }
  }
  ${each((g) => `write_rows(first + ${g * width}u, h, d0, run_sum${g}, out${g}a, out${g}b);`)}
}

/** Writes dims d0 and d0 + 64 of query rows m.. (those < rows), divided by their sums. */
fn write_rows(m: u32, h: u32, d0: u32, sums: ${vec}, a: ${vec}, b: ${vec}) {
  let inv = select(${vec}(0.0), 1.0 / sums, sums > ${vec}(0.0));
  for (var c = 0u; c < ${width}u; c++) {
    if (m + c >= params.rows) { return; }
    let base = ((m + c) * params.heads + h) * params.head_dim;
    if (d0 < params.head_dim) { out[base + d0] = ${component("a", "c")} * ${component("inv", "c")}; }
    if (d0 + 64u < params.head_dim) { out[base + d0 + 64u] = ${component("b", "c")} * ${
    component("inv", "c")
  }; }
  }
}
`;
}

/** Probs mean, pass 1: workgroup h finds the max and the exp-sum of row \`row\`'s scores. */
const STATS_SOURCE = `${COMMON}
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;   // [heads][max, sum]
var<workgroup> red_max: array<f32, 64>;
var<workgroup> red_sum: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let kvh = kv_head_of(h);
  let n = visible_keys(params.row);
  let q_base = (params.row * params.heads + h) * params.head_dim;
  var run_max = -3.0e38;
  var run_sum = 0.0;
  for (var r = lid; r < n; r += 64u) {
    let k_base = key_offset(r, kvh);
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) { s += q[q_base + d] * keys[k_base + d]; }
    s *= params.scale;
    let new_max = max(run_max, s);
    run_sum = run_sum * exp(run_max - new_max) + exp(s - new_max);
    run_max = new_max;
  }
  red_max[lid] = run_max;
  workgroupBarrier();
  for (var st = 32u; st > 0u; st >>= 1u) {
    if (lid < st) { red_max[lid] = max(red_max[lid], red_max[lid + st]); }
    workgroupBarrier();
  }
  red_sum[lid] = run_sum * exp(run_max - red_max[0]);
  workgroupBarrier();
  for (var st = 32u; st > 0u; st >>= 1u) {
    if (lid < st) { red_sum[lid] += red_sum[lid + st]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    stats[2u * h] = red_max[0];
    stats[2u * h + 1u] = red_sum[0];
  }
}
`;

/** Probs mean, pass 2: thread r averages key r's probability over heads. */
const MEAN_SOURCE = `${COMMON}
@group(0) @binding(2) var<storage, read> keys: array<f32>;
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * 64u;
  if (r >= visible_keys(params.row)) { return; }
  var mean = 0.0;
  for (var h = 0u; h < params.heads; h++) {
    let q_base = (params.row * params.heads + h) * params.head_dim;
    let k_base = key_offset(r, kv_head_of(h));
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) { s += q[q_base + d] * keys[k_base + d]; }
    mean += exp(s * params.scale - stats[2u * h]) / stats[2u * h + 1u];
  }
  out[r] = mean / f32(params.heads);
}
`;

/**
 * Compiles the attention pipelines.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { BufferSet, createGpu } from "../runtime/device/gpu.ts";
 * import { createAttention } from "./attention.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const attention = await createAttention(gpu);
 * const q = buffers.upload(new Float32Array([2, 0, 0, 0]), "q");
 * const keys = buffers.upload(new Float32Array([1, 0, 0, 0, 0, 1, 0, 0]), "keys");
 * const values = buffers.upload(new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]), "values");
 * const counts = buffers.upload(new Uint32Array([1]), "counts"); // one cached row, then this query's
 * const out = buffers.storage(16, "out");
 * gpu.submit(attention.bind(buffers, {
 *   q, keys, values, out, counts, countIndex: 0, rows: 1, heads: 1, kvHeads: 1, headDim: 4, causal: true,
 * }));
 * const got = new Float32Array(await gpu.read(out, 0, 16));
 * // softmax(q·k / √4) = softmax([1, 0]) weighs the value rows [1, 2, 3, 4] and [5, 6, 7, 8]:
 * [2.0758, 3.0758, 4.0758, 5.0758].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-4, `${got}`));
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createAttention(gpu: Gpu): Promise<AttentionKernel> {
  const [decode, prefill, stats, mean] = await Promise.all([
    gpu.pipeline("attention_decode", attentionSource(DECODE_BLOCK)),
    gpu.pipeline("attention_prefill", attentionSource(PREFILL_BLOCK)),
    gpu.pipeline("attention_probs_stats", STATS_SOURCE),
    gpu.pipeline("attention_probs_mean", MEAN_SOURCE),
  ]);
  return {
    bind(buffers: BufferSet, args: AttentionArgs): Dispatch[] {
      const params = paramsBuffer(buffers, args, args.keys, 0);
      const bindings = [params, args.q, args.keys, args.values, args.counts, args.out];
      const block = args.rows < PREFILL_ROWS ? DECODE_BLOCK : PREFILL_BLOCK;
      const blocks = Math.ceil(args.rows / (block.groups * block.width)) * args.heads;
      return [gpu.dispatch(block === DECODE_BLOCK ? decode : prefill, bindings, grid(blocks))];
    },
    bindProbsMean(buffers: BufferSet, args: AttentionProbsMeanArgs): Dispatch[] {
      const params = paramsBuffer(buffers, { ...args, rows: args.row + 1 }, args.keys, args.row);
      const statsBuffer = buffers.storage(args.heads * 2 * 4, "attention probs stats");
      const capacity = keyCapacity(args.keys, args);
      return [
        gpu.dispatch(stats, [params, args.q, args.keys, args.counts, statsBuffer], [args.heads, 1, 1]),
        gpu.dispatch(
          mean,
          [params, args.q, args.keys, args.counts, statsBuffer, args.out],
          grid(Math.ceil(capacity / 64)),
        ),
      ];
    },
  };
}

interface Shape {
  rows: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  countIndex: number;
  causal: boolean;
}

function paramsBuffer(buffers: BufferSet, shape: Shape, keys: GPUBuffer, row: number): GPUBuffer {
  const { heads, kvHeads, headDim } = shape;
  if (headDim > MAX_HEAD_DIM || headDim < 4 || headDim % 4 !== 0) {
    throw new GpuError(
      `Cannot bind attention: head dim ${headDim} is not a multiple of 4 in 4..${MAX_HEAD_DIM}`,
      "attention",
    );
  }
  if (heads % kvHeads !== 0) {
    throw new GpuError(`Cannot bind attention: ${heads} heads are not a multiple of ${kvHeads}`, "attention");
  }
  const data = new Uint32Array([
    shape.rows,
    heads,
    kvHeads,
    headDim,
    shape.countIndex,
    shape.causal ? 1 : 0,
    keyCapacity(keys, shape),
    0,
    row,
  ]);
  new Float32Array(data.buffer)[7] = 1 / Math.sqrt(headDim);
  return buffers.uniform(data, "attention params");
}

/** Key rows that fit in the cache buffer (a row counted from its 16-byte padding still lies inside it). */
function keyCapacity(keys: GPUBuffer, shape: { kvHeads: number; headDim: number }): number {
  return Math.floor(keys.size / (shape.kvHeads * shape.headDim * 4));
}
