/**
 * The import structure of src/ as a test, so CI fails on a new circle or an import that runs back up
 * a layer. Type-only imports count too: a type circle is still two modules that cannot be understood
 * (or moved) one without the other. eslint's import-x/no-cycle skips type imports, hence this test.
 */
import assert from "node:assert/strict";
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { repoRoot } from "../helpers/paths.js";

const srcDir = path.join(repoRoot, "src");

/**
 * Layers from the bottom up. A folder may import its own files and folders of a lower rank only;
 * folders of the same rank stay apart (they share through a lower layer).
 */
export const LAYERS: Record<string, number> = {
  common: 0,
  config: 1,
  storage: 2,
  fileformat: 3,
  // The stored-backup contract (keys, metadata, control file, listing): everything that reads or
  // writes backups goes through it.
  catalog: 4,
  wal: 5,
  monitoring: 6,
  basebackup: 7,
  restore: 7,
  daemon: 8,
  commands: 9,
};

function listTs(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...listTs(full));
    else if (name.endsWith(".ts") && !name.endsWith(".d.ts")) out.push(full);
  }
  return out;
}

// Static imports/re-exports (type-only included) and dynamic imports with a literal specifier.
const IMPORT_RE =
  /(?:^|\n)\s*(?:import|export)\s[^;]*?\sfrom\s*"([^"]+)"|(?:^|\n)\s*import\s*"([^"]+)"|\bimport\(\s*"([^"]+)"\s*\)/g;

function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8")
    .replace(/\/\*[\s\S]*?\*\//g, "")
    .replace(/^\s*\/\/.*$/gm, "");
  const targets: string[] = [];
  for (const m of text.matchAll(IMPORT_RE)) {
    const spec = m[1] ?? m[2] ?? m[3];
    if (!spec.startsWith(".")) continue;
    const resolved = path.resolve(path.dirname(file), spec).replace(/\.js$/, ".ts");
    targets.push(resolved);
  }
  return targets;
}

function buildGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of listTs(srcDir)) graph.set(file, importsOf(file));
  return graph;
}

/** Strongly connected components with more than one file (Tarjan). */
function circles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, idx.get(w)!));
      }
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(path.relative(srcDir, w));
      } while (w !== v);
      if (comp.length > 1) found.push(comp.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return found;
}

function layerOf(file: string): string {
  return path.relative(srcDir, file).split(path.sep)[0];
}

test("every import in src/ resolves to a file of src/", () => {
  const graph = buildGraph();
  const missing: string[] = [];
  for (const [file, targets] of graph) {
    for (const t of targets) {
      if (!graph.has(t)) missing.push(`${path.relative(srcDir, file)} -> ${path.relative(srcDir, t)}`);
    }
  }
  assert.deepEqual(missing, []);
});

test("src/ has no import circle (type-only imports included)", () => {
  assert.deepEqual(circles(buildGraph()), []);
});

test("every src/ folder is a known layer, and imports only run down the layers", () => {
  const graph = buildGraph();
  const unknown = [...new Set([...graph.keys()].map(layerOf))].filter((l) => !(l in LAYERS) && !l.endsWith(".ts"));
  assert.deepEqual(unknown, [], "add the new folder to LAYERS with its rank");
  const upward: string[] = [];
  for (const [file, targets] of graph) {
    const from = layerOf(file);
    for (const t of targets) {
      const to = layerOf(t);
      if (from === to || from.endsWith(".ts")) continue;
      if (!(LAYERS[to] < LAYERS[from])) upward.push(`${path.relative(srcDir, file)} -> ${path.relative(srcDir, t)}`);
    }
  }
  assert.deepEqual(upward, []);
});

test("source file names are snake_case", () => {
  const bad = listTs(srcDir)
    .map((f) => path.relative(srcDir, f))
    .filter((rel) => !/^[a-z0-9_/]+\.ts$/.test(rel));
  assert.deepEqual(bad, []);
});
