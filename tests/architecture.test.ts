/**
 * The floor plan, enforced: every local module belongs to a room, rooms sit on floors, and an import
 * may only go to the same room or to a lower floor (never sideways into another room of the same
 * floor, never up). No import cycle may exist anywhere, type-only imports included. The graph comes
 * from `deno info --json`, so it is the graph Deno itself resolves. ARCHITECTURE.md draws the same plan.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { relative } from "node:path";

/** Room → floor. A module's room is the longest prefix below that matches its path. */
const FLOORS: Record<string, number> = {
  "runtime/core/": 0,
  "runtime/io/": 1,
  "runtime/text/": 1,
  "runtime/image/": 1,
  "runtime/eval/": 1,
  "runtime/device/": 1,
  "kernels/": 2,
  "runtime/engine/": 2,
  "runtime/cpu/": 3,
  "runtime/webgpu/": 3,
  "runtime/api/": 4,
  "core.ts": 5,
  "mod.ts": 6,
  "serve/": 7,
  "tools/fixtures/": 7,
  "tools/make_fixtures.ts": 8,
  "examples/": 9,
  "tools/": 10,
  "tests/": 11,
};

const ROOT = fileURLToPath(new URL("../", import.meta.url));

function roomOf(path: string): string {
  const rooms = Object.keys(FLOORS).filter((room) => path === room || path.startsWith(room));
  if (rooms.length === 0) throw new Error(`${path} is in no room of the floor plan`);
  return rooms.sort((a, b) => b.length - a.length)[0];
}

interface Dependency {
  code?: { specifier: string };
  type?: { specifier: string };
}
interface GraphModule {
  specifier: string;
  dependencies?: Dependency[];
}

/** Local module path → local paths it imports (code and type imports). */
async function importGraph(entries: string[]): Promise<Map<string, Set<string>>> {
  const graph = new Map<string, Set<string>>();
  for (const entry of entries) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: GraphModule[] };
    for (const module of info.modules) {
      const from = localPath(module.specifier);
      if (from === null) continue;
      const targets = graph.get(from) ?? new Set<string>();
      graph.set(from, targets);
      for (const dep of module.dependencies ?? []) {
        for (const resolved of [dep.code?.specifier, dep.type?.specifier]) {
          const to = resolved === undefined ? null : localPath(resolved);
          if (to !== null && to !== from) targets.add(to);
        }
      }
    }
  }
  return graph;
}

function localPath(specifier: string): string | null {
  if (!specifier.startsWith("file://")) return null;
  const path = relative(ROOT, fileURLToPath(specifier)).replaceAll("\\", "/");
  return path.startsWith("..") ? null : path;
}

/** Every cycle's members (strongly connected components of more than one module). */
function cycles(graph: Map<string, Set<string>>): string[][] {
  let counter = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (node: string) => {
    index.set(node, counter);
    low.set(node, counter++);
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!index.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (onStack.has(next)) low.set(node, Math.min(low.get(node)!, index.get(next)!));
    }
    if (low.get(node) === index.get(node)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const node of graph.keys()) if (!index.has(node)) visit(node);
  return found;
}

async function entryPoints(): Promise<string[]> {
  const entries = ["mod.ts", "core.ts"];
  for (const dir of ["examples", "examples/web", "serve", "tools", "tests"]) {
    for await (const entry of Deno.readDir(`${ROOT}${dir}`)) {
      if (entry.isFile && entry.name.endsWith(".ts")) entries.push(`${dir}/${entry.name}`);
    }
  }
  return entries.sort();
}

const graph = await importGraph(await entryPoints());

Deno.test("the import graph has no cycle, type-only imports included", () => {
  assert.deepEqual(cycles(graph), []);
});

Deno.test("every import goes to the same room or to a lower floor", () => {
  const violations: string[] = [];
  for (const [from, targets] of graph) {
    const fromRoom = roomOf(from);
    for (const to of targets) {
      const toRoom = roomOf(to);
      if (toRoom === fromRoom) continue;
      if (FLOORS[toRoom] >= FLOORS[fromRoom]) {
        violations.push(`${from} (floor ${FLOORS[fromRoom]}) imports ${to} (floor ${FLOORS[toRoom]})`);
      }
    }
  }
  assert.deepEqual(violations, []);
});

Deno.test("the ground floor touches neither Deno, the GPU nor files", async () => {
  const offenders: string[] = [];
  for (const path of graph.keys()) {
    if (roomOf(path) !== "runtime/core/") continue;
    const code = (await Deno.readTextFile(`${ROOT}${path}`))
      .replace(/\/\*[\s\S]*?\*\//g, "")
      .replace(/\/\/.*$/gm, "");
    if (/\bDeno\.|navigator\.gpu|from "node:fs|from "node:path/.test(code)) offenders.push(path);
  }
  assert.deepEqual(offenders, []);
});

Deno.test("the edge router reaches only core.ts and the ground floor (it runs without a GPU or files)", () => {
  const reached = new Set<string>();
  const visit = (path: string) => {
    if (reached.has(path)) return;
    reached.add(path);
    for (const next of graph.get(path) ?? []) visit(next);
  };
  visit("examples/edge_router.ts");
  reached.delete("examples/edge_router.ts");
  assert.deepEqual([...reached].filter((path) => path !== "core.ts" && roomOf(path) !== "runtime/core/"), []);
  assert.ok(reached.has("core.ts"));
});

Deno.test("cycles() finds a planted cycle and roomOf() refuses a stray file", () => {
  const planted = new Map([["a.ts", new Set(["b.ts"])], ["b.ts", new Set(["a.ts"])], [
    "c.ts",
    new Set(["a.ts"]),
  ]]);
  assert.deepEqual(cycles(planted), [["a.ts", "b.ts"]]);
  assert.throws(() => roomOf("stray/file.ts"), /in no room/);
});
