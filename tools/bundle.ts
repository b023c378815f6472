/**
 * `deno task bundle`: the browser build. esbuild turns `mod.ts` into one ES module,
 * `dist/dynllava.js`, exporting the same API (`loadModel` of a checkpoint URL first of all), and
 * `examples/web/app.ts` into `dist/web/app.js`, the page's script, which imports `../dynllava.js`.
 *
 * esbuild reads TypeScript and relative `.ts` imports itself; the plugin here resolves what only
 * Deno knows:
 * - `npm:` packages imported statically: their files in Deno's npm cache (the package's `browser`,
 *   `module` or `main` entry). Imported dynamically (ffmpeg, which decodes video): left out, the
 *   import kept as written; the runtime never reaches it in a page and says so if asked for video.
 * - `node:` builtins: `node:path` is `path-browserify` (POSIX paths: the runtime joins names inside
 *   a checkpoint's folder); `node:crypto` and `node:url` serve only the file-system paths (the disk
 *   cache, `file:` URLs), so their stand-ins throw if ever called. Any other builtin fails the build,
 *   so nothing unplanned reaches the page.
 *
 * deno run -A tools/bundle.ts [--out DIR] [--no-minify]
 * @module
 */
import { dirname, join, relative, resolve } from "node:path";
import { gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";
// deno-lint-ignore no-import-prefix
import * as esbuild from "npm:esbuild@0.28.2";
// Imported so that Deno fetches it into its npm cache; the bundle takes its files from there.
// deno-lint-ignore no-import-prefix
import "npm:path-browserify@1.0.1";
import { type CommandSpec, type Flags, runCommand } from "../examples/cli_options.ts";
import { InputError } from "../mod.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** The command line of `deno task bundle`. */
export const BUNDLE_COMMAND: CommandSpec = {
  usage: "deno task bundle [--out DIR]",
  summary:
    "Builds the browser bundle: DIR/dynllava.js (the API of mod.ts as one ES module) and DIR/web/app.js (the script of examples/web/index.html).",
  options: {
    out: { type: "string", value: "DIR", default: "dist", description: "output folder" },
    "no-minify": { type: "boolean", description: "keep the output readable" },
  },
  examples: ["deno task bundle", "deno task bundle --out /tmp/site --no-minify"],
};

/** Browser stand-ins for `node:` builtins that only the file-system paths use. */
const NODE_STANDINS: Record<string, string> = {
  "node:crypto": `export function createHash() {
  throw new Error("node:crypto is not in the browser build (only the disk cache hashes with it)");
}`,
  "node:url": `export function fileURLToPath(url) {
  throw new Error("Cannot load " + url + ": file: URLs need Deno; in a page give an http(s) URL");
}`,
};

/** `node:` builtins bundled from an npm package instead. */
const NODE_PACKAGES: Record<string, string> = { "node:path": "npm:path-browserify@1.0.1" };

/** Deno's npm cache folder. */
async function npmCacheDir(): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" }).output();
  return (JSON.parse(new TextDecoder().decode(out.stdout)) as { npmCache: string }).npmCache;
}

/** The file of an `npm:name@version[/sub]` specifier in Deno's npm cache. */
async function npmFile(specifier: string, cache: string): Promise<string> {
  const m = specifier.match(/^npm:\/?((?:@[^/]+\/)?[^@/]+)@([^/]+)(\/.*)?$/);
  if (!m) {
    throw new InputError(`Cannot bundle ${specifier}: give npm packages as npm:name@version`, specifier);
  }
  const [, name, version, sub] = m;
  for await (const registry of Deno.readDir(cache)) {
    const dir = join(cache, registry.name, name, version);
    let manifest: Record<string, unknown>;
    try {
      manifest = JSON.parse(await Deno.readTextFile(join(dir, "package.json")));
    } catch {
      continue;
    }
    if (sub) return join(dir, sub);
    const entry = [manifest.browser, manifest.module, manifest.main].find((e) => typeof e === "string");
    return join(dir, (entry as string | undefined) ?? "index.js");
  }
  throw new InputError(`Cannot bundle ${specifier}: not in Deno's npm cache (${cache})`, specifier);
}

/** Resolves Deno's `npm:` and `node:` specifiers for the browser (see the module doc). */
function denoSpecifiers(cache: string): esbuild.Plugin {
  return {
    name: "deno-specifiers",
    setup(build) {
      build.onResolve({ filter: /^npm:/ }, async (args) => {
        if (args.kind === "dynamic-import") return { path: args.path, external: true };
        return { path: await npmFile(args.path, cache) };
      });
      build.onResolve({ filter: /^node:/ }, async (args) => {
        const aliased = NODE_PACKAGES[args.path];
        if (aliased) return { path: await npmFile(aliased, cache) };
        if (NODE_STANDINS[args.path] !== undefined) return { path: args.path, namespace: "node-standin" };
        return {
          errors: [{
            text:
              `${args.path} has no browser stand-in: keep it off the page's path or add one in tools/bundle.ts`,
          }],
        };
      });
      build.onLoad({ filter: /.*/, namespace: "node-standin" }, (args) => ({
        contents: NODE_STANDINS[args.path],
        loader: "js",
      }));
    },
  };
}

/** The page's script imports the library from the bundle beside it, not a second copy of it. */
function libraryFromBundle(): esbuild.Plugin {
  const modTs = join(ROOT, "mod.ts");
  return {
    name: "library-from-bundle",
    setup(build) {
      build.onResolve(
        { filter: /mod\.ts$/ },
        (args) =>
          resolve(args.resolveDir, args.path) === modTs
            ? { path: "../dynllava.js", external: true }
            : undefined,
      );
    },
  };
}

/** What one build wrote. */
export interface BundleOutput {
  /** The file written. */
  path: string;
  /** Its size in bytes. */
  bytes: number;
  /** Its size gzipped (level 9), in bytes. */
  gzipBytes: number;
}

/**
 * Builds the library and the page script into `out`; returns their sizes.
 * @example
 * ```ts ignore
 * const [library] = await bundle({ out: "dist", minify: true });
 * console.log(library.path, library.bytes, library.gzipBytes);
 * ```
 */
export async function bundle(options: { out: string; minify: boolean }): Promise<BundleOutput[]> {
  const cache = await npmCacheDir();
  const common: esbuild.BuildOptions = {
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    minify: options.minify,
    sourcemap: false,
    legalComments: "none",
    logLevel: "silent",
    absWorkingDir: ROOT,
  };
  const builds: [string, string, esbuild.Plugin[]][] = [
    ["mod.ts", join(options.out, "dynllava.js"), [denoSpecifiers(cache)]],
    ["examples/web/app.ts", join(options.out, "web", "app.js"), [libraryFromBundle(), denoSpecifiers(cache)]],
  ];
  const outputs: BundleOutput[] = [];
  try {
    for (const [entry, outfile, plugins] of builds) {
      await Deno.mkdir(dirname(resolve(ROOT, outfile)), { recursive: true });
      await esbuild.build({ ...common, entryPoints: [entry], outfile, plugins });
      const bytes = await Deno.readFile(resolve(ROOT, outfile));
      outputs.push({ path: outfile, bytes: bytes.length, gzipBytes: gzipSync(bytes, { level: 9 }).length });
    }
  } finally {
    await esbuild.stop();
  }
  return outputs;
}

async function main(flags: Flags): Promise<void> {
  const out = relative(ROOT, resolve(Deno.cwd(), flags.out as string));
  for (const written of await bundle({ out, minify: !flags["no-minify"] })) {
    const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
    console.log(`${written.path}: ${kib(written.bytes)} (${kib(written.gzipBytes)} gzipped)`);
  }
}

if (import.meta.main) await runCommand(BUNDLE_COMMAND, Deno.args, main);
