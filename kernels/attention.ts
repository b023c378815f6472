/**
 * Scaled dot-product attention over one layer's KV cache, grouped-query heads, softmax in f32
 * with max subtraction. CPU twins: `attention` and `attentionProbsMean` in runtime/core/cpu_ops.ts.
 *
 * q [M, heads, D]; keys, values [capacity, kvHeads, D]; out [M, heads, D]; query head h reads kv
 * head h / (heads / kvHeads). Query row m sees key rows [0, visible(m)), visible(m) =
 * counts[countIndex] + m + 1 when causal (the rows of this call were appended at counts[...]
 * beforehand), counts[countIndex] when not (vision); clamped to the capacity. The row count is
 * read on the GPU, so a decode step re-encodes the same dispatches.
 *
 * Two attention pipelines, each written out whole: `decodeSource` (rows < 8: a workgroup
 * serves one query row of one head) and `prefillSource` (a workgroup serves 8 query rows of
 * one head). Either way its 64 lanes walk the visible keys in tiles of 64: lane j scores key j,
 * every lane keeps the online softmax (running max and sum), and lane t accumulates output dims t
 * and t + 64. headDim is a multiple of 4, at most 128. Two more pipelines give one query row's
 * head-averaged probabilities (FastV's signal): per-head max and exp-sum, then the mean.
 *
 * Each pipeline comes in two variants from one source, by the cache's element type (`kvDtype`,
 * kernels/kv_cache.ts): f32, or f16 widened to f32 as it is read (scores, softmax and the weighted
 * sum stay f32). The f16 variants exist on devices with `shader-f16`.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/device/gpu.ts";
import { InputError } from "../runtime/core/errors.ts";
import { type KvDtype, kvElementBytes } from "../runtime/core/sparse_kv.ts";
import { kvCacheShader } from "./kv_cache.ts";
import { defineUniforms, packUniforms } from "./uniforms.ts";
import { wgslPrelude } from "./wgsl_prelude.ts";

/** Arguments of {@link AttentionKernel.bind}. */
export interface AttentionArgs {
  /** f32 [M, heads, headDim]. */
  q: GPUBuffer;
  /** [capacity, kvHeads, headDim] of `kvDtype`. */
  keys: GPUBuffer;
  /** [capacity, kvHeads, headDim] of `kvDtype`. */
  values: GPUBuffer;
  /** Element type of keys and values (default "f32"). */
  kvDtype?: KvDtype;
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
  /** [capacity, kvHeads, headDim] of `kvDtype`. */
  keys: GPUBuffer;
  /** Element type of keys (default "f32"). */
  kvDtype?: KvDtype;
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

const PARAMS = defineUniforms("attention", {
  rows: "u32",
  heads: "u32",
  kvHeads: "u32",
  headDim: "u32",
  countIndex: "u32",
  causal: "u32",
  capacity: "u32", // key rows the cache buffers hold
  scale: "f32", //    1 / sqrt(head_dim)
  row: "u32", //      probs mean: the query row
});

/** Lanes per workgroup: keys per tile, and output dims per lane pass (two passes cover 128). */
const LANES = 64;
/** Calls with at least this many query rows use the prefill variant. */
const PREFILL_ROWS = 8;
/** Query rows per workgroup of the prefill variant (as 2 vec4s; more compile slowly on GL drivers). */
const PREFILL_BLOCK = 8;

/** Uniform, q, and the row arithmetic every attention pipeline shares (`counts` is bound by each). */
const ATTENTION_COMMON = /* wgsl */ `${PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> q: array<f32>;
const MASKED = -3.0e38;
const MAX_HEAD_DIM = ${MAX_HEAD_DIM}u;

// Key rows visible to query row m: the cached rows, plus rows ≤ m of this call when causal.
fn visible_keys(m: u32) -> u32 {
  var n = counts[params.count_index];
  if (params.causal != 0u) { n += m + 1u; }
  return min(n, params.capacity);
}

// Offset of key (or value) row r, kv head kv_head, in the cache.
fn key_offset(r: u32, kv_head: u32) -> u32 {
  return (r * params.kv_heads + kv_head) * params.head_dim;
}

// The kv head that query head h reads (grouped-query attention).
fn kv_head_of(h: u32) -> u32 {
  return h / (params.heads / params.kv_heads);
}
`;

/**
 * Decode (rows < 8): workgroup (row m, head h). Its 64 lanes walk the visible keys in tiles of 64:
 * 1. lane j scores key j of the tile against q (q · scale in workgroup memory, as vec4 over d);
 * 2. every lane takes the tile's max score and rescales its running sum and outputs; lane j turns
 *    its score into a probability;
 * 3. lane t accumulates output dims t and t + 64 over the tile's values.
 */
function decodeSource(kvDtype: KvDtype): string {
  return /* wgsl */ `${wgslPrelude({ workgroupSize: LANES })}
${ATTENTION_COMMON}
${kvCacheShader(kvDtype, { name: "keys", binding: 2, view: "vec4" })}
${kvCacheShader(kvDtype, { name: "values", binding: 3, view: "scalar" })}
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
var<workgroup> q_tile: array<vec4f, MAX_HEAD_DIM / 4u>;   // q · scale, [d / 4] as vec4 over d
var<workgroup> s_tile: array<f32, WORKGROUP_SIZE>;        // [key]: scores
var<workgroup> p_tile: array<f32, WORKGROUP_SIZE>;        // [key]: probabilities

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let block = workgroup_index(wid, nwg);
  if (block >= params.rows * params.heads) { return; }
  let h = block % params.heads;
  let m = block / params.heads;
  let kvh = kv_head_of(h);
  let d_len = params.head_dim;
  for (var d = lid; d < d_len; d += WORKGROUP_SIZE) {
    q_tile[d / 4u][d % 4u] = q[(m * params.heads + h) * d_len + d] * params.scale;
  }
  let visible = visible_keys(m);
  let d0 = lid;                  // output dims of this lane: d0 and d1
  let d1 = lid + WORKGROUP_SIZE;
  var out0 = 0.0;
  var out1 = 0.0;
  var run_max = MASKED;
  var run_sum = 0.0;
  for (var r0 = 0u; r0 < visible; r0 += WORKGROUP_SIZE) {
    workgroupBarrier();
    let tile_keys = min(WORKGROUP_SIZE, visible - r0);
    var s = MASKED;
    if (lid < tile_keys) {
      let k_base = key_offset(r0 + lid, kvh) / 4u;
      var dot_qk = 0.0;
      for (var d4 = 0u; d4 < d_len / 4u; d4++) { dot_qk += dot(q_tile[d4], keys_vec4(k_base + d4)); }
      s = dot_qk;
      s_tile[lid] = s;
    }
    workgroupBarrier();
    var tile_max = run_max;
    for (var j = 0u; j < tile_keys; j++) { tile_max = max(tile_max, s_tile[j]); }
    let factor = exp(run_max - tile_max);
    run_max = tile_max;
    run_sum *= factor;
    out0 *= factor;
    out1 *= factor;
    if (lid < tile_keys) { p_tile[lid] = select(exp(s - run_max), 0.0, s <= MASKED); }
    workgroupBarrier();
    for (var j = 0u; j < tile_keys; j++) {
      let v_base = key_offset(r0 + j, kvh);
      // Lanes past head_dim read a valid element and accumulate junk that is never written.
      let v0 = values_at(v_base + min(d0, d_len - 1u));
      var v1 = 0.0;
      if (d_len > WORKGROUP_SIZE) { v1 = values_at(v_base + min(d1, d_len - 1u)); }
      let p = p_tile[j];
      run_sum += p;
      out0 += p * v0;
      out1 += p * v1;
    }
  }
  let inv = select(0.0, 1.0 / run_sum, run_sum > 0.0);
  let base = (m * params.heads + h) * d_len;
  if (d0 < d_len) { out[base + d0] = out0 * inv; }
  if (d1 < d_len) { out[base + d1] = out1 * inv; }
}
`;
}

/**
 * Prefill (rows ≥ 8): workgroup (block of 8 query rows, head h), the decode steps for 8 queries
 * at once. Per-lane state holds the 8 rows as two vec4s, rows 0–3 (\`_a\`) and rows 4–7 (\`_b\`):
 * fixed variables, no indexed private arrays, which some drivers spill or compile very slowly.
 * Keys and values are read once per block.
 */
function prefillSource(kvDtype: KvDtype): string {
  return /* wgsl */ `${wgslPrelude({ workgroupSize: LANES })}
${ATTENTION_COMMON}
${kvCacheShader(kvDtype, { name: "keys", binding: 2, view: "vec4" })}
${kvCacheShader(kvDtype, { name: "values", binding: 3, view: "scalar" })}
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
const BLOCK = ${PREFILL_BLOCK}u;
var<workgroup> q_tile: array<vec4f, MAX_HEAD_DIM * 2u>;  // q · scale, [d][a | b] as vec4 over 4 rows
var<workgroup> s_tile: array<vec4f, WORKGROUP_SIZE * 2u>; // [key][a | b]: scores
var<workgroup> p_tile: array<vec4f, WORKGROUP_SIZE * 2u>; // [key][a | b]: probabilities

// Keys visible to rows first..first + 3 (0 for rows past the end).
fn visible4(first: u32) -> vec4u {
  let rows = vec4u(first, first + 1u, first + 2u, first + 3u);
  let visible = vec4u(visible_keys(rows.x), visible_keys(rows.y), visible_keys(rows.z), visible_keys(rows.w));
  return select(vec4u(0u), visible, rows < vec4u(params.rows));
}

// Scores of key row k (4 dims of it, d4) against the 4 queries of half \`half\` (0: a, 1: b).
fn score4(d4: u32, half: u32, k: vec4f) -> vec4f {
  return q_tile[(4u * d4) * 2u + half] * k.x + q_tile[(4u * d4 + 1u) * 2u + half] * k.y +
    q_tile[(4u * d4 + 2u) * 2u + half] * k.z + q_tile[(4u * d4 + 3u) * 2u + half] * k.w;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = (params.rows + BLOCK - 1u) / BLOCK;
  let block = workgroup_index(wid, nwg);
  if (block >= blocks * params.heads) { return; }
  let h = block % params.heads;
  let first = (block / params.heads) * BLOCK;
  let kvh = kv_head_of(h);
  let d_len = params.head_dim;
  for (var e = lid; e < d_len * BLOCK; e += WORKGROUP_SIZE) {
    let i = e / d_len;
    let d = e % d_len;
    let m = first + i;
    var v = 0.0;
    if (m < params.rows) { v = q[(m * params.heads + h) * d_len + d] * params.scale; }
    q_tile[d * 2u + i / 4u][i % 4u] = v;
  }
  let visible_a = visible4(first);
  let visible_b = visible4(first + 4u);
  let block_keys = visible_keys(min(params.rows, first + BLOCK) - 1u);   // most in the block
  let d0 = lid;
  let d1 = lid + WORKGROUP_SIZE;
  var out0_a = vec4f(0.0);
  var out1_a = vec4f(0.0);
  var run_max_a = vec4f(MASKED);
  var run_sum_a = vec4f(0.0);
  var out0_b = vec4f(0.0);
  var out1_b = vec4f(0.0);
  var run_max_b = vec4f(MASKED);
  var run_sum_b = vec4f(0.0);
  for (var r0 = 0u; r0 < block_keys; r0 += WORKGROUP_SIZE) {
    workgroupBarrier();
    let tile_keys = min(WORKGROUP_SIZE, block_keys - r0);
    let r = r0 + lid;
    var s_a = vec4f(MASKED);
    var s_b = vec4f(MASKED);
    if (lid < tile_keys) {
      let k_base = key_offset(r, kvh) / 4u;
      var dot_a = vec4f(0.0);
      var dot_b = vec4f(0.0);
      for (var d4 = 0u; d4 < d_len / 4u; d4++) {
        let k = keys_vec4(k_base + d4);
        dot_a += score4(d4, 0u, k);
        dot_b += score4(d4, 1u, k);
      }
      s_a = select(dot_a, vec4f(MASKED), vec4u(r) >= visible_a);
      s_b = select(dot_b, vec4f(MASKED), vec4u(r) >= visible_b);
      s_tile[lid * 2u] = s_a;
      s_tile[lid * 2u + 1u] = s_b;
    }
    workgroupBarrier();
    var tile_max_a = run_max_a;
    var tile_max_b = run_max_b;
    for (var j = 0u; j < tile_keys; j++) {
      tile_max_a = max(tile_max_a, s_tile[j * 2u]);
      tile_max_b = max(tile_max_b, s_tile[j * 2u + 1u]);
    }
    let factor_a = exp(run_max_a - tile_max_a);
    run_max_a = tile_max_a;
    run_sum_a *= factor_a;
    out0_a *= factor_a;
    out1_a *= factor_a;
    let factor_b = exp(run_max_b - tile_max_b);
    run_max_b = tile_max_b;
    run_sum_b *= factor_b;
    out0_b *= factor_b;
    out1_b *= factor_b;
    if (lid < tile_keys) {
      p_tile[lid * 2u] = select(exp(s_a - run_max_a), vec4f(0.0), s_a <= vec4f(MASKED));
      p_tile[lid * 2u + 1u] = select(exp(s_b - run_max_b), vec4f(0.0), s_b <= vec4f(MASKED));
    }
    workgroupBarrier();
    for (var j = 0u; j < tile_keys; j++) {
      let v_base = key_offset(r0 + j, kvh);
      // Lanes past head_dim read a valid element and accumulate junk that is never written.
      let v0 = values_at(v_base + min(d0, d_len - 1u));
      var v1 = 0.0;
      if (d_len > WORKGROUP_SIZE) { v1 = values_at(v_base + min(d1, d_len - 1u)); }
      let p_a = p_tile[j * 2u];
      run_sum_a += p_a;
      out0_a += p_a * v0;
      out1_a += p_a * v1;
      let p_b = p_tile[j * 2u + 1u];
      run_sum_b += p_b;
      out0_b += p_b * v0;
      out1_b += p_b * v1;
    }
  }
  write_rows(first, h, d0, run_sum_a, out0_a, out1_a);
  write_rows(first + 4u, h, d0, run_sum_b, out0_b, out1_b);
}

// Writes dims d0 and d0 + 64 of query rows m..m + 3 (those < rows), divided by their sums.
fn write_rows(m: u32, h: u32, d0: u32, sums: vec4f, out0: vec4f, out1: vec4f) {
  let inv = select(vec4f(0.0), 1.0 / sums, sums > vec4f(0.0));
  for (var c = 0u; c < 4u; c++) {
    if (m + c >= params.rows) { return; }
    let base = ((m + c) * params.heads + h) * params.head_dim;
    if (d0 < params.head_dim) { out[base + d0] = out0[c] * inv[c]; }
    if (d0 + WORKGROUP_SIZE < params.head_dim) { out[base + d0 + WORKGROUP_SIZE] = out1[c] * inv[c]; }
  }
}
`;
}

/** Probs mean, pass 1: workgroup h finds the max and the exp-sum of row `row`'s scores. */
function statsSource(kvDtype: KvDtype): string {
  return /* wgsl */ `${wgslPrelude({ workgroupSize: LANES, reductions: ["max", "sum"] })}
${ATTENTION_COMMON}
${kvCacheShader(kvDtype, { name: "keys", binding: 2, view: "scalar" })}
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;   // [heads][max, sum]

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let kvh = kv_head_of(h);
  let n = visible_keys(params.row);
  let q_base = (params.row * params.heads + h) * params.head_dim;
  var run_max = MASKED;
  var run_sum = 0.0;
  for (var r = lid; r < n; r += WORKGROUP_SIZE) {
    let k_base = key_offset(r, kvh);
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) { s += q[q_base + d] * keys_at(k_base + d); }
    s *= params.scale;
    let new_max = max(run_max, s);
    run_sum = run_sum * exp(run_max - new_max) + exp(s - new_max);
    run_max = new_max;
  }
  let row_max = workgroup_max(lid, run_max);
  let row_sum = workgroup_sum(lid, run_sum * exp(run_max - row_max));
  if (lid == 0u) {
    stats[2u * h] = row_max;
    stats[2u * h + 1u] = row_sum;
  }
}
`;
}

/** Probs mean, pass 2: thread r averages key r's probability over heads. */
function meanSource(kvDtype: KvDtype): string {
  return /* wgsl */ `${wgslPrelude({ workgroupSize: LANES })}
${ATTENTION_COMMON}
${kvCacheShader(kvDtype, { name: "keys", binding: 2, view: "scalar" })}
@group(0) @binding(3) var<storage, read> counts: array<u32>;
@group(0) @binding(4) var<storage, read> stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let r = thread_index(wid, nwg, lid);
  if (r >= visible_keys(params.row)) { return; }
  var mean = 0.0;
  for (var h = 0u; h < params.heads; h++) {
    let q_base = (params.row * params.heads + h) * params.head_dim;
    let k_base = key_offset(r, kv_head_of(h));
    var s = 0.0;
    for (var d = 0u; d < params.head_dim; d++) { s += q[q_base + d] * keys_at(k_base + d); }
    mean += exp(s * params.scale - stats[2u * h]) / stats[2u * h + 1u];
  }
  out[r] = mean / f32(params.heads);
}
`;
}

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
  const compile = async (kvDtype: KvDtype): Promise<AttentionPipelines> => {
    const suffix = kvDtype === "f16" ? "_f16" : "";
    const [decode, prefill, stats, mean] = await Promise.all([
      gpu.pipeline(`attention_decode${suffix}`, decodeSource(kvDtype)),
      gpu.pipeline(`attention_prefill${suffix}`, prefillSource(kvDtype)),
      gpu.pipeline(`attention_probs_stats${suffix}`, statsSource(kvDtype)),
      gpu.pipeline(`attention_probs_mean${suffix}`, meanSource(kvDtype)),
    ]);
    return { decode, prefill, stats, mean };
  };
  const [f32, f16] = await Promise.all([compile("f32"), gpu.shaderF16 ? compile("f16") : null]);
  const pipelinesFor = (kvDtype: KvDtype = "f32"): AttentionPipelines => {
    const pipelines = kvDtype === "f16" ? f16 : f32;
    if (!pipelines) {
      throw new InputError(
        `Cannot bind attention: an f16 cache needs a device with shader-f16 (${gpu.adapterName} has none)`,
        "attention.kvDtype",
      );
    }
    return pipelines;
  };
  return {
    bind(buffers: BufferSet, args: AttentionArgs): Dispatch[] {
      const { decode, prefill } = pipelinesFor(args.kvDtype);
      const params = paramsBuffer(buffers, args, 0);
      const bindings = [params, args.q, args.keys, args.values, args.counts, args.out];
      if (args.rows < PREFILL_ROWS) return [gpu.dispatch(decode, bindings, grid(args.rows * args.heads))];
      const blocks = Math.ceil(args.rows / PREFILL_BLOCK) * args.heads;
      return [gpu.dispatch(prefill, bindings, grid(blocks))];
    },
    bindProbsMean(buffers: BufferSet, args: AttentionProbsMeanArgs): Dispatch[] {
      const { stats, mean } = pipelinesFor(args.kvDtype);
      const params = paramsBuffer(buffers, { ...args, rows: args.row + 1 }, args.row);
      const statsBuffer = buffers.storage(args.heads * 2 * 4, "attention probs stats");
      const capacity = keyCapacity(args);
      return [
        gpu.dispatch(stats, [params, args.q, args.keys, args.counts, statsBuffer], [args.heads, 1, 1]),
        gpu.dispatch(
          mean,
          [params, args.q, args.keys, args.counts, statsBuffer, args.out],
          grid(Math.ceil(capacity / LANES)),
        ),
      ];
    },
  };
}

/** The four attention pipelines for one cache element type. */
interface AttentionPipelines {
  decode: GPUComputePipeline;
  prefill: GPUComputePipeline;
  stats: GPUComputePipeline;
  mean: GPUComputePipeline;
}

/** The shape and cache of one attention call. */
interface Shape {
  keys: GPUBuffer;
  kvDtype?: KvDtype;
  rows: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  countIndex: number;
  causal: boolean;
}

/** Checks the shape (InputError) and uploads the parameters; `row` is the probs-mean query row. */
function paramsBuffer(buffers: BufferSet, shape: Shape, row: number): GPUBuffer {
  const { rows, heads, kvHeads, headDim, countIndex } = shape;
  if (headDim > MAX_HEAD_DIM || headDim < 4 || headDim % 4 !== 0) {
    throw new InputError(
      `Cannot bind attention: head dim ${headDim} is not a multiple of 4 in 4..${MAX_HEAD_DIM}`,
      "attention.headDim",
    );
  }
  if (!(kvHeads > 0 && heads % kvHeads === 0)) {
    throw new InputError(
      `Cannot bind attention: ${heads} heads are not a multiple of ${kvHeads} kv heads`,
      "attention.kvHeads",
    );
  }
  const params = packUniforms(PARAMS, {
    rows,
    heads,
    kvHeads,
    headDim,
    countIndex,
    causal: shape.causal ? 1 : 0,
    capacity: keyCapacity(shape),
    scale: 1 / Math.sqrt(headDim),
    row,
  });
  return buffers.uniform(params, "attention params");
}

/** Key rows that fit in the cache buffer (a row counted from its 16-byte padding still lies inside it). */
function keyCapacity(
  shape: { keys: GPUBuffer; kvDtype?: KvDtype; kvHeads: number; headDim: number },
): number {
  return Math.floor(
    shape.keys.size / (shape.kvHeads * shape.headDim * kvElementBytes(shape.kvDtype ?? "f32")),
  );
}
