/**
 * Mutation check of the test suite: applies known mistakes, one at a time, to a temporary copy of
 * the repository, runs the tests that should notice, and reports which mutations they catch (a
 * mutation is caught when a test fails). The list holds the regressions that once passed every
 * test (a rope sign flip in both backends, FastV ranking one layer early in both, the GPU's FastV
 * ranking by the first row, a CPU attention cache keeping refused rows, an abort honoured late, a
 * false claim in core.ts's example) and one mistake per GPU kernel file.
 *
 *   deno task mutate [--only NAME,NAME] [--list] [--json FILE]
 *
 * Exit status 1 when a mutation is missed or no longer applies (its code moved: update the entry).
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";

/** One known mistake: replace `find` by `replace` in `file` (every occurrence must exist). */
interface Edit {
  file: string;
  find: string;
  replace: string;
  /** Replace every occurrence (default: exactly one must exist). */
  all?: boolean;
}

/** A mutation and the test runs expected to catch it. */
interface Mutation {
  name: string;
  what: string;
  edits: Edit[];
  /** `deno test` arguments per run (files, --filter, --doc). */
  runs: string[][];
}

const REFERENCE = "tests/reference.test.ts";

/** The mutations, each with the tests that must fail on it. */
export const MUTATIONS: Mutation[] = [
  {
    name: "rope-sign-both",
    what: "RoPE rotates the wrong way in both backends",
    edits: [
      {
        file: "runtime/core/cpu_ops.ts",
        find: "x[base + i + half] = b * cos + a * sin;",
        replace: "x[base + i + half] = b * cos - a * sin;",
      },
      {
        file: "kernels/rope.ts",
        find: "x[base + i + half] = b * c + a * s;",
        replace: "x[base + i + half] = b * c - a * s;",
      },
    ],
    runs: [[REFERENCE, "--filter", "llama-f32 ("]],
  },
  {
    name: "fastv-layer-k-minus-2-both",
    what: "FastV ranks by the attention of layer K−2 (the pass logic both backends share)",
    edits: [
      {
        file: "runtime/engine/pass.ts",
        find: "l === (plan.pruneLayer ?? 0) - 1",
        replace: "l === (plan.pruneLayer ?? 0) - 2",
      },
    ],
    runs: [[REFERENCE, "--filter", "llava-hf-f32 ("]],
  },
  {
    name: "gpu-fastv-row-0",
    what: "the GPU's FastV ranks image tokens by the attention of row 0",
    edits: [{ file: "runtime/webgpu/gpu_session.ts", find: "row: rows - 1,", replace: "row: 0," }],
    runs: [[REFERENCE, "--filter", "llava-hf-f32 (webgpu)"]],
  },
  {
    name: "refused-rows-kept",
    what:
      "a refused token's K/V stays in the attention of the layers from the admission layer on, while the ledger says it is gone",
    edits: [{
      file: "runtime/engine/pass.ts",
      find: "if (l < plan.admitLayer || admitted) book.hold(l, rows);",
      replace: "book.hold(l, rows);",
    }],
    runs: [[REFERENCE, "--filter", "llava-f32-dyn (cpu)"]],
  },
  {
    name: "abort-after-400",
    what: "abort is honoured only after 400 tokens",
    edits: [{
      file: "runtime/engine/generate.ts",
      find: "if (abortedNow(request)) {",
      replace: "if (output.tokens.length > 400 && abortedNow(request)) {",
      all: true,
    }],
    runs: [["tests/model.test.ts", "--filter", "abort"]],
  },
  {
    name: "core-example-claim",
    what: "core.ts's module example claims a different figure",
    edits: [{ file: "core.ts", find: '"10.1"', replace: '"10.2"' }],
    runs: [["--doc", "core.ts"]],
  },
  // One per kernel file.
  kernel("attention", "a query row no longer sees itself", "n += m + 1u;", "n += m;", "kernels_lm"),
  kernel(
    "decode_state",
    "the decode position advances by 2",
    "state[2] = state[2] + 1u;",
    "state[2] = state[2] + 2u;",
    "kernels_misc",
  ),
  kernel(
    "elementwise",
    "silu(g) becomes g·sigmoid(−g)",
    "out[i] = g / (1.0 + exp(-g)) * up[i];",
    "out[i] = g / (1.0 + exp(g)) * up[i];",
    "kernels_lm",
  ),
  kernel(
    "embedding",
    "the lookup reads the next row",
    "min(ids[params.ids_offset + m], params.table_rows - 1u)",
    "min(ids[params.ids_offset + m] + 1u, params.table_rows - 1u)",
    "kernels_lm",
  ),
  kernel(
    "kv_append",
    "K/V rows land one row late",
    "let row = counts[params.count_index] + e / params.cols;",
    "let row = counts[params.count_index] + e / params.cols + 1u;",
    "kernels_lm",
  ),
  kernel(
    "kv_cache",
    "an f16 cache reads the two halves of a word swapped",
    "return select(pair.x, pair.y, (i & 1u) == 1u);",
    "return select(pair.y, pair.x, (i & 1u) == 1u);",
    "kernels_lm",
  ),
  kernel(
    "layernorm",
    "the bias is subtracted",
    "* scale * weight[c] + bias[c];",
    "* scale * weight[c] - bias[c];",
    "kernels_misc",
  ),
  kernel(
    "matmul",
    "the bias is subtracted",
    "if (params.add_bias != 0u) { v += bias[column]; }",
    "if (params.add_bias != 0u) { v -= bias[column]; }",
    "kernels_lm",
  ),
  kernel(
    "patches",
    "patch rows and columns swapped",
    "(py * p + ky) * size + px * p + kx",
    "(py * p + kx) * size + px * p + ky",
    "kernels_misc",
  ),
  kernel(
    "predictor_ops",
    "the global half averages over N + 1 rows",
    "let mean = workgroup_sum(lid, sum) / f32(rows);",
    "let mean = workgroup_sum(lid, sum) / f32(rows + 1u);",
    "kernels_misc",
  ),
  kernel(
    "rmsnorm",
    "the mean square divides by C − 1",
    "workgroup_sum(lid, sum) / f32(params.cols) + params.eps",
    "workgroup_sum(lid, sum) / f32(params.cols - 1u) + params.eps",
    "kernels_lm",
  ),
  kernel(
    "rope",
    "the frequencies use i instead of 2i",
    "exp2(-f32(2u * i) / f32(params.head_dim)",
    "exp2(-f32(i) / f32(params.head_dim)",
    "kernels_lm",
  ),
  kernel(
    "rows",
    "the gather reads the next row",
    "let source = indices[row] * cols;",
    "let source = (indices[row] + 1u) * cols;",
    "kernels_misc",
  ),
  kernel(
    "sample",
    "greedy sampling keeps the smallest logit",
    "if (v > best_value) { best_value = v; best_index = f32(i); }",
    "if (v < best_value) { best_value = v; best_index = f32(i); }",
    "sampling",
  ),
];

/** A mistake in one kernel file, for the parity tests in `tests/${test}.test.ts`. */
function kernel(file: string, what: string, find: string, replace: string, test: string): Mutation {
  return {
    name: `kernel-${file}`,
    what: `kernels/${file}.ts: ${what}`,
    edits: [{ file: `kernels/${file}.ts`, find, replace }],
    runs: [[`tests/${test}.test.ts`]],
  };
}

/** Outcome of one mutation. */
interface Outcome {
  name: string;
  what: string;
  status: "caught" | "missed" | "stale";
  /** Failing tests (caught), or why it did not apply (stale). */
  detail: string[];
  seconds: number;
}

async function sh(cmd: string[], cwd: string): Promise<{ code: number; out: string }> {
  const out = await new Deno.Command(cmd[0], { args: cmd.slice(1), cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, out: text };
}

/** Copies the working tree (tracked and untracked, not ignored) and the generated fixtures. */
async function copyRepo(root: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "dynllava-mutate-" });
  const listed = await sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], root);
  for (const file of listed.out.split("\0").filter((f) => f.length > 0)) {
    try {
      await Deno.mkdir(join(dir, dirname(file)), { recursive: true });
      await Deno.copyFile(join(root, file), join(dir, file));
    } catch { /* deleted in the working tree */ }
  }
  const fixtures = join(root, "tests/fixtures/out");
  if ((await Deno.stat(fixtures).catch(() => null))?.isDirectory) {
    await sh(["cp", "-a", fixtures, join(dir, "tests/fixtures/")], root);
  }
  return dir;
}

/** Applies `edits` in `dir`; returns the original texts, or a reason when an edit no longer applies. */
async function apply(dir: string, edits: Edit[]): Promise<Map<string, string> | string> {
  const originals = new Map<string, string>();
  for (const edit of edits) {
    const path = join(dir, edit.file);
    const text = originals.get(path) ?? await Deno.readTextFile(path).catch(() => null);
    if (text === null) {
      for (const [original, saved] of originals) await Deno.writeTextFile(original, saved);
      return `${edit.file} is missing`;
    }
    if (!originals.has(path)) originals.set(path, text);
    const current = await Deno.readTextFile(path);
    const count = current.split(edit.find).length - 1;
    if (count === 0 || (!edit.all && count > 1)) {
      for (const [original, text] of originals) await Deno.writeTextFile(original, text);
      return `${edit.file}: ${JSON.stringify(edit.find)} found ${count} times`;
    }
    await Deno.writeTextFile(path, current.replaceAll(edit.find, edit.replace));
  }
  return originals;
}

async function runMutation(dir: string, mutation: Mutation): Promise<Outcome> {
  const t0 = performance.now();
  const done = (status: Outcome["status"], detail: string[]): Outcome => ({
    name: mutation.name,
    what: mutation.what,
    status,
    detail,
    seconds: Math.round((performance.now() - t0) / 1000),
  });
  const originals = await apply(dir, mutation.edits);
  if (typeof originals === "string") return done("stale", [originals]);
  try {
    const failed: string[] = [];
    for (const args of mutation.runs) {
      const { code, out } = await sh([Deno.execPath(), "test", "-A", "--no-check", ...args], dir);
      if (code === 0) continue;
      const summary = out.slice(out.lastIndexOf(" FAILURES "));
      const names = [...summary.matchAll(/^(.+?) => \S+:\d+:\d+$/gm)].map((m) => m[1].trim());
      failed.push(...(names.length > 0 ? names : [`deno test ${args.join(" ")} exited ${code}`]));
    }
    return done(failed.length > 0 ? "caught" : "missed", failed);
  } finally {
    for (const [path, text] of originals) await Deno.writeTextFile(path, text);
  }
}

function report(outcomes: Outcome[]): string {
  const lines = [
    "| mutation | what | result | failing tests | s |",
    "| -------- | ---- | ------ | ------------- | - |",
    ...outcomes.map((o) =>
      `| ${o.name} | ${o.what} | ${o.status} | ${o.detail.slice(0, 3).join("; ")}${
        o.detail.length > 3 ? ` (+${o.detail.length - 3})` : ""
      } | ${o.seconds} |`
    ),
  ];
  const caught = outcomes.filter((o) => o.status === "caught").length;
  lines.push("", `${caught} of ${outcomes.length} mutations caught`);
  return lines.join("\n");
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { only: { type: "string" }, list: { type: "boolean" }, json: { type: "string" } },
  });
  const only = values.only?.split(",");
  const chosen = MUTATIONS.filter((m) => !only || only.includes(m.name));
  if (values.list) {
    for (const m of chosen) console.log(`${m.name}: ${m.what}`);
    Deno.exit(0);
  }
  const root = new URL("..", import.meta.url).pathname;
  const dir = await copyRepo(root);
  const outcomes: Outcome[] = [];
  try {
    for (const mutation of chosen) {
      const outcome = await runMutation(dir, mutation);
      console.error(`${outcome.name}: ${outcome.status} (${outcome.seconds} s) ${outcome.detail.join("; ")}`);
      outcomes.push(outcome);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.log(report(outcomes));
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(outcomes, null, 2));
  Deno.exit(outcomes.every((o) => o.status === "caught") ? 0 : 1);
}
