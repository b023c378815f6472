/**
 * An OpenAI-compatible server for one checkpoint (`deno task serve --help`): listens at once,
 * answers `/health` with 503 while the model loads, then serves `POST /v1/chat/completions`
 * (JSON or streamed) and `GET /v1/models` — see serve/server.ts.
 * @module
 */
import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import { loadModel } from "../mod.ts";
import { createChatServer } from "../serve/server.ts";
import {
  chooseBackend,
  type CommandSpec,
  describeBackend,
  type Flags,
  numberFlag,
  progressBar,
  runCommand,
} from "./cli_options.ts";
import { InputError } from "../mod.ts";

/** The command line of the server. */
export const SERVE_COMMAND: CommandSpec = {
  usage: "deno task serve (--model DIR|URL | --demo) [options]",
  summary:
    "Serves a checkpoint over an OpenAI-compatible HTTP API: POST /v1/chat/completions (text and image_url parts,\n" +
    "streaming), GET /v1/models, GET /health, GET /v1/dynllava/status (K/V memory). Extra request fields:\n" +
    "policy (dense|dynamic|fastv), kv_cache.",
  options: {
    model: { type: "string", value: "DIR|URL", description: "checkpoint directory, file: or http(s): URL" },
    demo: { type: "boolean", description: "serve the bundled demo checkpoint (trained on the shapes task)" },
    "model-name": {
      type: "string",
      value: "NAME",
      description: "model id in the API (default: the folder name)",
    },
    host: { type: "string", value: "HOST", default: "127.0.0.1", description: "address to listen on" },
    port: {
      type: "string",
      value: "PORT",
      default: "8000",
      description: "port to listen on (0: any free port)",
    },
    backend: {
      type: "string",
      value: "webgpu|cpu",
      description: "compute backend (default: webgpu when an adapter exists, else cpu)",
    },
    "api-key": { type: "string", value: "KEY", description: "require `Authorization: Bearer KEY` on /v1/*" },
    cors: {
      type: "string",
      value: "ORIGIN",
      description: 'allow browser calls from ORIGIN ("*" for any); off by default',
    },
    "max-body-mib": {
      type: "string",
      value: "MIB",
      default: "32",
      description: "largest request body or fetched image",
    },
    "max-batch": { type: "string", value: "N", default: "8", description: "most requests decoded together" },
    "kv-budget-mib": {
      type: "string",
      value: "MIB",
      description: "K/V cache memory the running requests may reserve (default: no limit but --max-batch)",
    },
  },
  examples: [
    "deno task serve --demo --backend cpu",
    "deno task serve --model ./llava-v1.5-7b --port 8080 --api-key secret",
  ],
};

async function main(flags: Flags): Promise<void> {
  const modelPath = typeof flags.model === "string"
    ? flags.model
    : flags.demo
    ? new URL("../assets/demo/", import.meta.url)
    : undefined;
  if (!modelPath) throw new InputError("Cannot start: give --model DIR, or --demo", "--model");
  const port = numberFlag(flags, "port", { integer: true, min: 0, max: 65535 })!;
  const maxBodyBytes = numberFlag(flags, "max-body-mib", { min: 0.001 })! * 2 ** 20;
  const maxBatch = numberFlag(flags, "max-batch", { integer: true, min: 1 })!;
  const kvBudgetMib = numberFlag(flags, "kv-budget-mib", { min: 0.001 });
  const modelName = (flags["model-name"] as string | undefined) ??
    (flags.demo ? "dynllava-demo" : basename(String(modelPath).replace(/\/+$/, "")) || "model");
  const choice = await chooseBackend(flags.backend as string | undefined);
  const server = createChatServer({
    modelName,
    apiKey: flags["api-key"] as string | undefined,
    cors: flags.cors as string | undefined,
    maxBodyBytes,
    maxBatch,
    kvBudgetBytes: kvBudgetMib === undefined ? undefined : Math.floor(kvBudgetMib * 2 ** 20),
  });
  const http = Deno.serve({
    hostname: flags.host as string,
    port,
    onListen: ({ hostname, port }) =>
      console.error(`listening on http://${hostname}:${port} (model ${modelName})`),
  }, server.handler);
  console.error(describeBackend(choice));
  try {
    const model = await loadModel(modelPath instanceof URL ? fileURLToPath(modelPath) : modelPath, {
      backend: choice.backend,
      onProgress: progressBar(),
    });
    server.ready(model);
    console.error(`ready: ${modelName}, default policy ${model.defaultPolicy}`);
  } catch (err) {
    await http.shutdown();
    throw err;
  }
  await http.finished;
}

if (import.meta.main) await runCommand(SERVE_COMMAND, Deno.args, main);
