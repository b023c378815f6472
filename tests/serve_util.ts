/**
 * Test helper: starts `examples/serve.ts` (`deno task serve`) as a child process on a free port and
 * stops it. Shared by the server and edge-router tests.
 * @module
 */

/** A running server: its base URL and how to stop it. */
export interface StartedServer {
  url: string;
  stop: () => Promise<void>;
}

/** Starts `deno task serve` with `args` and resolves with its base URL once /health says ok. */
export async function startServer(args: string[]): Promise<StartedServer> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../examples/serve.ts", import.meta.url).pathname, ...args, "--port", "0"],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "", url = "";
  while (!url) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited: ${log}`);
    log += value;
    url = /listening on (http:\/\/\S+)/.exec(log)?.[1] ?? "";
  }
  // Drain the rest of stderr so the child never blocks on it.
  const drained = (async () => {
    while (!(await reader.read()).done) { /* progress lines */ }
  })();
  while ((await fetch(`${url}/health`).then(async (r) => (await r.body?.cancel(), r.status))) !== 200) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
      await drained;
    },
  };
}
