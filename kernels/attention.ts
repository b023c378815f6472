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
 * - rows < 8 (decode): one workgroup per (query row, head); its 64 threads split the keys, keep
 *   an online softmax each, and merge at the end.
 * - rows ≥ 8 (prefill): one workgroup per (64 query rows, head), one query row per thread; key and
 *   value tiles of 16 rows go through workgroup memory, so each is read once per 64 queries.
 * headDim ≤ 128.
 * @module
 */
import { type BufferSet, type Dispatch, type Gpu, grid } from "../runtime/gpu.ts";
import { GpuError } from "../runtime/errors.ts";

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

/** Largest supported head dimension (sizes private and workgroup arrays). */
export const MAX_HEAD_DIM = 128;
const DECODE_MAX_ROWS = 8;
const QUERY_BLOCK = 64;
const KEY_TILE = 16;

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
@group(0) @binding(2) var<storage, read> keys: array<f32>;

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

/** Decode: workgroup (m, h); thread t takes keys t, t + 64, ... in groups of 8, then all merge. */
const DECODE_SOURCE = `${COMMON}
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
var<workgroup> red_max: array<f32, 64>;
var<workgroup> red_sum: array<f32, 64>;
var<workgroup> red_acc: array<f32, 2048>;   // [64 threads][32 dims]

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let linear = wid.x + wid.y * nwg.x;
  if (linear >= params.rows * params.heads) { return; }
  let m = linear / params.heads;
  let h = linear % params.heads;
  let kvh = kv_head_of(h);
  let d_len = params.head_dim;
  let n = visible_keys(m);
  var qv: array<f32, ${MAX_HEAD_DIM}>;
  var acc: array<f32, ${MAX_HEAD_DIM}>;
  let q_base = (m * params.heads + h) * d_len;
  for (var d = 0u; d < d_len; d++) {
    qv[d] = q[q_base + d] * params.scale;
    acc[d] = 0.0;
  }
  var run_max = -3.0e38;
  var run_sum = 0.0;
  for (var r0 = lid; r0 < n; r0 += 512u) {
    var s: array<f32, 8>;
    var group_max = run_max;
    var count = 0u;
    for (var j = 0u; j < 8u; j++) {
      let r = r0 + 64u * j;
      if (r >= n) { break; }
      let k_base = key_offset(r, kvh);
      var dot_qk = 0.0;
      for (var d = 0u; d < d_len; d++) { dot_qk += qv[d] * keys[k_base + d]; }
      s[j] = dot_qk;
      group_max = max(group_max, dot_qk);
      count = j + 1u;
    }
    let rescale = exp(run_max - group_max);
    run_sum *= rescale;
    for (var d = 0u; d < d_len; d++) { acc[d] *= rescale; }
    run_max = group_max;
    for (var j = 0u; j < count; j++) {
      let p = exp(s[j] - run_max);
      run_sum += p;
      let v_base = key_offset(r0 + 64u * j, kvh);
      for (var d = 0u; d < d_len; d++) { acc[d] += p * values[v_base + d]; }
    }
  }
  // Merge the 64 partial softmaxes: common max, then sums and accumulators.
  red_max[lid] = run_max;
  workgroupBarrier();
  for (var st = 32u; st > 0u; st >>= 1u) {
    if (lid < st) { red_max[lid] = max(red_max[lid], red_max[lid + st]); }
    workgroupBarrier();
  }
  let rescale = exp(run_max - red_max[0]);
  red_sum[lid] = run_sum * rescale;
  workgroupBarrier();
  for (var st = 32u; st > 0u; st >>= 1u) {
    if (lid < st) { red_sum[lid] += red_sum[lid + st]; }
    workgroupBarrier();
  }
  let total = red_sum[0];
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var d0 = 0u; d0 < d_len; d0 += 32u) {
    for (var dd = 0u; dd < 32u; dd++) {
      if (d0 + dd < d_len) { red_acc[lid * 32u + dd] = acc[d0 + dd] * rescale; }
    }
    workgroupBarrier();
    if (lid < 32u && d0 + lid < d_len) {
      var v = 0.0;
      for (var t = 0u; t < 64u; t++) { v += red_acc[t * 32u + lid]; }
      out[q_base + d0 + lid] = v * inv;
    }
    workgroupBarrier();
  }
}
`;

/** Prefill: workgroup (block of 64 query rows, h); one query row per thread, key tiles shared. */
const ROWS_SOURCE = `${COMMON}
@group(0) @binding(3) var<storage, read> values: array<f32>;
@group(0) @binding(4) var<storage, read> counts: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
var<workgroup> k_tile: array<f32, ${KEY_TILE * MAX_HEAD_DIM}>;
var<workgroup> v_tile: array<f32, ${KEY_TILE * MAX_HEAD_DIM}>;

@compute @workgroup_size(${QUERY_BLOCK})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let blocks = (params.rows + ${QUERY_BLOCK - 1}u) / ${QUERY_BLOCK}u;
  let linear = wid.x + wid.y * nwg.x;
  if (linear >= blocks * params.heads) { return; }
  let h = linear % params.heads;
  let first = (linear / params.heads) * ${QUERY_BLOCK}u;
  let kvh = kv_head_of(h);
  let d_len = params.head_dim;
  let m = first + lid;
  let in_range = m < params.rows;
  let block_keys = visible_keys(min(params.rows, first + ${QUERY_BLOCK}u) - 1u);  // most in the block
  let my_keys = select(0u, visible_keys(m), in_range);
  let q_base = (m * params.heads + h) * d_len;
  var qv: array<f32, ${MAX_HEAD_DIM}>;
  var acc: array<f32, ${MAX_HEAD_DIM}>;
  for (var d = 0u; d < d_len; d++) {
    if (in_range) { qv[d] = q[q_base + d] * params.scale; }
    acc[d] = 0.0;
  }
  var run_max = -3.0e38;
  var run_sum = 0.0;
  for (var t0 = 0u; t0 < block_keys; t0 += ${KEY_TILE}u) {
    let tile_rows = min(${KEY_TILE}u, block_keys - t0);
    for (var e = lid; e < tile_rows * d_len; e += ${QUERY_BLOCK}u) {
      let j = e / d_len;
      let src = key_offset(t0 + j, kvh) + (e - j * d_len);
      k_tile[e] = keys[src];
      v_tile[e] = values[src];
    }
    workgroupBarrier();
    let n = select(0u, min(${KEY_TILE}u, my_keys - t0), my_keys > t0);
    if (n > 0u) {
      var s: array<f32, ${KEY_TILE}>;
      var tile_max = run_max;
      for (var j = 0u; j < n; j++) {
        var dot_qk = 0.0;
        for (var d = 0u; d < d_len; d++) { dot_qk += qv[d] * k_tile[j * d_len + d]; }
        s[j] = dot_qk;
        tile_max = max(tile_max, dot_qk);
      }
      let rescale = exp(run_max - tile_max);
      run_sum *= rescale;
      for (var d = 0u; d < d_len; d++) { acc[d] *= rescale; }
      run_max = tile_max;
      for (var j = 0u; j < n; j++) {
        let p = exp(s[j] - run_max);
        run_sum += p;
        for (var d = 0u; d < d_len; d++) { acc[d] += p * v_tile[j * d_len + d]; }
      }
    }
    workgroupBarrier();
  }
  if (in_range) {
    let inv = select(0.0, 1.0 / run_sum, run_sum > 0.0);
    for (var d = 0u; d < d_len; d++) { out[q_base + d] = acc[d] * inv; }
  }
}
`;

/** Probs mean, pass 1: workgroup h finds the max and the exp-sum of row \`row\`'s scores. */
const STATS_SOURCE = `${COMMON}
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
 * import { BufferSet, createGpu } from "../runtime/gpu.ts";
 * import { createAttention } from "./attention.ts";
 * const gpu = await createGpu();
 * const buffers = new BufferSet(gpu);
 * const attention = await createAttention(gpu);
 * const q = buffers.upload(new Float32Array([1, 0]), "q");
 * const keys = buffers.upload(new Float32Array([1, 0, 0, 1]), "keys");
 * const values = buffers.upload(new Float32Array([1, 2, 3, 4]), "values");
 * const counts = buffers.upload(new Uint32Array([1]), "counts"); // one cached row, then this query's
 * const out = buffers.storage(8, "out");
 * gpu.submit(attention.bind(buffers, {
 *   q, keys, values, out, counts, countIndex: 0, rows: 1, heads: 1, kvHeads: 1, headDim: 2, causal: true,
 * }));
 * console.log(new Float32Array(await gpu.read(out, 0, 8))); // ≈ [1.66, 2.66]
 * buffers.destroy();
 * gpu.destroy();
 * ```
 */
export async function createAttention(gpu: Gpu): Promise<AttentionKernel> {
  const [decode, rows, stats, mean] = await Promise.all([
    gpu.pipeline("attention_decode", DECODE_SOURCE),
    gpu.pipeline("attention_rows", ROWS_SOURCE),
    gpu.pipeline("attention_probs_stats", STATS_SOURCE),
    gpu.pipeline("attention_probs_mean", MEAN_SOURCE),
  ]);
  return {
    bind(buffers: BufferSet, args: AttentionArgs): Dispatch[] {
      const params = paramsBuffer(buffers, args, args.keys, 0);
      const bindings = [params, args.q, args.keys, args.values, args.counts, args.out];
      if (args.rows < DECODE_MAX_ROWS) {
        return [gpu.dispatch(decode, bindings, grid(args.rows * args.heads))];
      }
      const blocks = Math.ceil(args.rows / QUERY_BLOCK) * args.heads;
      return [gpu.dispatch(rows, bindings, grid(blocks))];
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
  if (headDim > MAX_HEAD_DIM || headDim < 1) {
    throw new GpuError(
      `Cannot bind attention: head dim ${headDim} is outside 1..${MAX_HEAD_DIM}`,
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
