/** The example scripts as users run them: the demo, JSON output, policies, the saving summary, --help, errors, backend choice. */
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

Deno.test("generate.ts --demo describes the sample scene and prints the saving summary", async () => {
  const { code, stdout, stderr } = await generate("--demo", "--max-new-tokens", "12");
  assert.equal(code, 0, stderr);
  assert.match(stdout, /^The image shows /);
  const line = stdout.match(
    /\[webgpu dynamic\] visual tokens kept 12\/64; KV rows (\d+) vs dense (\d+) \(([\d.]+)%\)/,
  );
  assert.ok(line, stdout);
  const [held, dense, percent] = [Number(line[1]), Number(line[2]), Number(line[3])];
  // The same request as JSON: the printed rows are what the run held, and they follow from its
  // decisions (layers from the sparse layer on hold neither the 52 pruned image tokens nor the
  // refused output tokens).
  const json = await generate("--demo", "--max-new-tokens", "12", "--json");
  assert.equal(json.code, 0, json.stderr);
  const result = JSON.parse(json.stdout);
  const config = JSON.parse(await Deno.readTextFile(new URL("../assets/demo/config.json", import.meta.url)));
  const sparseLayer: number = config.sparse_config.sparse_layer;
  const s = result.stats, layers = s.kvCache.rowsPerLayer.length;
  assert.equal(held, s.kvCache.rowsPerLayer.reduce((a: number, b: number) => a + b, 0));
  assert.equal(dense, layers * (s.promptTokens + s.newTokens - 1));
  const refused = result.admitted.filter((a: boolean) => !a).length;
  assert.equal(held, dense - (layers - sparseLayer) * (64 - 12 + refused));
  assert.equal(percent, Number((100 * held / dense).toFixed(1)));
});

Deno.test("demo.ts answers the sample, maps the kept patches and writes the HTML view (the README's demo)", async () => {
  const html = await Deno.makeTempFile({ suffix: ".html" });
  try {
    const script = new URL("../examples/demo.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", script, "--html", html] })
      .output();
    const stdout = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(
      stdout,
      /^Q: What shape is the blue object\?\nA: (circle|square|triangle|star) {4}\(dense: \w+\)/,
    );
    assert.match(stdout, /image patches kept by the vision predictor: 12 of 64/);
    const map = stdout.split("\n").filter((line) => /^ {2}[·rgbypo+](?: [·rgbypo+]){7}$/.test(line));
    assert.equal(map.length, 8);
    assert.equal(map.join("").replace(/[ ·]/g, "").length, 12);
    assert.match(stdout, /output tokens admitted to the KV cache: \d+ of \d+/);
    assert.match(stdout, /KV cache at the end [\d.]+ KiB vs [\d.]+ KiB \(\d+% less\)/);
    const page = await Deno.readTextFile(html);
    assert.equal(page.match(/background:#fff/g)?.length, 64 - 12);
    assert.match(page, /data:image\/png;base64,iVBOR/);
  } finally {
    await Deno.remove(html);
  }
});

Deno.test("generate.ts --json reports tokens and decisions per policy and KV mode", async () => {
  for (const [policy, kept] of [["dense", null], ["fastv", 32], ["dynamic", 12]] as const) {
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

/** Runs an example script with `args` (and extra environment). */
async function script(
  name: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`../examples/${name}.ts`, import.meta.url).pathname, ...args],
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("every script prints --help from its option table, and a user mistake as one line without a stack", async () => {
  const flags: Record<string, string[]> = {
    generate: ["--max-new-tokens N", "--backend webgpu|cpu", "--policy NAME"],
    bench: ["--new-tokens LIST", "--cost-only", "--out DIR", "--weight-types LIST", "--kv-dtype f16|f32"],
    eval: ["--demo-set", "--policies LIST"],
    charts: ["--config FILE", "--rows FILE"],
    serve: ["--host HOST", "--api-key KEY", "--cors ORIGIN", "--max-body-mib MIB", "--kv-budget-mib MIB"],
  };
  for (const [name, expected] of Object.entries(flags)) {
    const help = await script(name, ["--help"]);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /^Usage: deno task /);
    for (const flag of [...expected, "--help", "--debug"]) {
      assert.ok(help.stdout.includes(flag), `${name}: ${flag}`);
    }
    const wrong = await script(name, ["--no-such-flag"]);
    assert.equal(wrong.code, 2);
    assert.equal(
      wrong.stderr,
      "error: Cannot read the command line: unknown option --no-such-flag (see --help)\n",
    );
  }
  const missing = await script("generate", ["--demo", "--backend", "cpu", "--image", "/no/such.png"]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /^error: Cannot read --image \/no\/such.png: No such file or directory/m);
  assert.doesNotMatch(missing.stderr, /\n\s+at /, "no stack trace");
  const debug = await script("generate", [
    "--demo",
    "--backend",
    "cpu",
    "--image",
    "/no/such.png",
    "--debug",
  ]);
  assert.match(debug.stderr, /\n\s+at /, "--debug shows the stack");
  const badNumber = await script("generate", ["--demo", "--max-new-tokens", "lots"]);
  assert.equal(badNumber.stderr, 'error: Cannot read --max-new-tokens: "lots" is not a number\n');
});

Deno.test("without a WebGPU adapter the scripts fall back to the CPU with a notice; --backend webgpu fails clearly", async () => {
  // No dx12 on Linux: the adapter request finds nothing, as on a machine without Vulkan drivers.
  const noAdapter = { DENO_WEBGPU_BACKEND: "dx12" };
  const fallback = await script("generate", ["--demo", "--max-new-tokens", "2"], noAdapter);
  assert.equal(fallback.code, 0, fallback.stderr);
  assert.match(
    fallback.stderr,
    /no WebGPU adapter found: running on the CPU \(.*mesa-vulkan-drivers.*--backend cpu\)/,
  );
  assert.match(fallback.stderr, /backend: cpu/);
  assert.match(fallback.stdout, /\[cpu dynamic\]/);
  const forced = await script("generate", ["--demo", "--backend", "webgpu"], noAdapter);
  assert.equal(forced.code, 2);
  assert.match(forced.stderr, /^error: Cannot open WebGPU: no adapter found; .*--backend cpu/);
  const found = await script("generate", ["--demo", "--max-new-tokens", "1"]);
  assert.match(found.stderr, /backend: webgpu on .+ \((software|hardware)\)/);
});

Deno.test("generate.ts refuses a bad flag value with the request validator, before loading the model", async () => {
  const { code, stderr } = await generate("--demo", "--backend", "cpu", "--top-p", "0");
  assert.equal(code, 2);
  assert.match(stderr, /Cannot generate: topP must be in \(0, 1\], got 0/);
  assert.doesNotMatch(stderr, /RANDOM weights/);
});
