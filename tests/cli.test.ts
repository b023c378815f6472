/** examples/generate.ts as users run it: the demo, JSON output, policies and the saving summary. */
import assert from "node:assert/strict";

async function generate(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = new URL("../examples/generate.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("generate.ts --demo streams text and prints the saving summary (the README's demo)", async () => {
  const { code, stdout, stderr } = await generate("--demo", "--max-new-tokens", "12");
  assert.equal(code, 0, stderr);
  assert.match(stderr, /RANDOM weights/);
  const line = stdout.match(
    /\[webgpu dynamic\] visual tokens kept 7\/36; KV rows (\d+) vs dense (\d+) \(([\d.]+)%\)/,
  );
  assert.ok(line, stdout);
  const [held, dense, percent] = [Number(line[1]), Number(line[2]), Number(line[3])];
  // The same request as JSON: the printed rows are what the run held, and they follow from its
  // decisions (layers ≥ 2 hold neither the 29 pruned image tokens nor the refused output tokens).
  const json = await generate("--demo", "--max-new-tokens", "12", "--json");
  assert.equal(json.code, 0, json.stderr);
  const result = JSON.parse(json.stdout);
  const s = result.stats, layers = s.kvCache.rowsPerLayer.length;
  assert.equal(held, s.kvCache.rowsPerLayer.reduce((a: number, b: number) => a + b, 0));
  assert.equal(dense, layers * (s.promptTokens + s.newTokens - 1));
  const refused = result.admitted.filter((a: boolean) => !a).length;
  assert.equal(held, dense - (layers - 2) * (36 - 7 + refused));
  assert.equal(percent, Number((100 * held / dense).toFixed(1)));
});

Deno.test("generate.ts --json reports tokens and decisions per policy and KV mode", async () => {
  for (const [policy, kept] of [["dense", null], ["fastv", 18], ["dynamic", 7]] as const) {
    for (const cache of [[], ["--no-kv-cache"]]) {
      const { code, stdout, stderr } = await generate(
        "--demo",
        "--backend",
        "cpu",
        "--json",
        "--policy",
        policy,
        "--max-new-tokens",
        "6",
        ...cache,
      );
      assert.equal(code, 0, stderr);
      const result = JSON.parse(stdout);
      assert.ok(result.tokens.length >= 1 && result.tokens.length <= 6);
      assert.equal(result.visualKept === null ? null : result.visualKept.length, kept);
      assert.equal(result.admitted.length, result.tokens.length - 1);
    }
  }
  const bad = await generate("--demo", "--backend", "cpu", "--policy", "fastv", "--vision-keep", "3");
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /--vision-keep applies to --policy dynamic only/);
});

Deno.test("tools/device_check.ts --shape tiny writes the bench and check reports", async () => {
  const out = await Deno.makeTempDir();
  try {
    const script = new URL("../tools/device_check.ts", import.meta.url).pathname;
    const run = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        script,
        "--shape",
        "tiny",
        "--out",
        out,
        "--new-tokens",
        "4",
        "--no-cache-tokens",
        "2",
      ]
        .concat(["--repeat", "1"]),
      env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(run.code, 0, new TextDecoder().decode(run.stderr));
    const bench = JSON.parse(await Deno.readTextFile(`${out}/bench.json`));
    assert.equal(bench.rows.length, 3 * 2 + 3); // KV at batch 1 and 4, no-cache at batch 1
    assert.ok(bench.rows.every((row: { visualTokens: number }) => row.visualTokens === 36));
    const check = JSON.parse(await Deno.readTextFile(`${out}/check.json`));
    assert.match(check.adapter.name, /\w/);
    // GPU-vs-CPU parity ran on every fixture and held.
    assert.equal(check.parity.length, 7);
    for (const c of check.parity) {
      assert.ok(
        c.tokensEqual && c.nmse < 1e-6,
        `${c.fixture}: NMSE ${c.nmse}, tokens equal ${c.tokensEqual}`,
      );
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
