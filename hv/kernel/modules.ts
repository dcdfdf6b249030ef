/**
 * Kernel modules: reading `modules.dep` and resolving load order, and writing
 * `modules.dep` for a module tree that has none (Debian's package leaves it
 * to `depmod` at install time, which skiff does not run).
 *
 * `modules.dep` format (kmod depmod(8), modules.dep(5)): one line per module,
 * `path/to/mod.ko: dep1.ko dep2.ko …`, paths relative to the modules
 * directory; the list holds every transitive dependency, ordered so that a
 * module precedes what it depends on: modprobe loads the list from its end.
 *
 * @module
 */

import { join, relative } from "node:path";
import { Elf64 } from "../boot/elf.ts";

/** The canonical module name: file stem with `-` turned into `_` (as kmod does). */
export function moduleName(pathOrName: string): string {
  const base = pathOrName.slice(pathOrName.lastIndexOf("/") + 1);
  return base.replace(/\.ko(\.(xz|gz|zst))?$/, "").replaceAll("-", "_");
}

/** `key=value` pairs of a module's `.modinfo` section (repeated keys keep all values). */
export function readModinfo(ko: Uint8Array, name = "module"): Map<string, string[]> {
  const info = new Map<string, string[]>();
  const section = new Elf64(ko, name).section(".modinfo");
  if (!section) return info;
  for (const entry of new TextDecoder().decode(section).split("\0")) {
    const eq = entry.indexOf("=");
    if (eq <= 0) continue;
    const key = entry.slice(0, eq);
    const list = info.get(key) ?? [];
    list.push(entry.slice(eq + 1));
    info.set(key, list);
  }
  return info;
}

/** Parsed `modules.dep`: module name → its path and transitive dependency paths. */
export class ModulesDep {
  /** name → { path, deps } with paths relative to the modules directory. */
  readonly entries: ReadonlyMap<string, { path: string; deps: readonly string[] }>;

  constructor(entries: Map<string, { path: string; deps: string[] }>) {
    this.entries = entries;
  }

  /** Parses the text of a `modules.dep` file. */
  static parse(text: string): ModulesDep {
    const entries = new Map<string, { path: string; deps: string[] }>();
    for (const line of text.split("\n")) {
      const colon = line.indexOf(":");
      if (colon <= 0) continue;
      const path = line.slice(0, colon).trim();
      const deps = line.slice(colon + 1).trim().split(/\s+/).filter((d) => d !== "");
      entries.set(moduleName(path), { path, deps });
    }
    return new ModulesDep(entries);
  }

  /** Reads and parses `modules.dep` from a file. */
  static async read(path: string): Promise<ModulesDep> {
    return ModulesDep.parse(await Deno.readTextFile(path));
  }

  /** Formats as `modules.dep` text (sorted by path, stable across runs). */
  format(): string {
    return [...this.entries.values()]
      .sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0)
      .map((e) => `${e.path}:${e.deps.length ? " " + e.deps.join(" ") : ""}\n`)
      .join("");
  }

  /**
   * Paths (relative to the modules directory) to load, in order, so that
   * every module in `names` is loaded after its dependencies; each path once.
   * Names are module names (`virtio_net`) or file names (`virtio-net.ko`).
   * Throws naming the first module that is not in the map.
   */
  loadOrder(names: readonly string[]): string[] {
    const order: string[] = [];
    const seen = new Set<string>();
    for (const n of names) {
      const e = this.entries.get(moduleName(n));
      if (!e) throw new Error(`module ${n} is not in modules.dep`);
      // modprobe loads the dependency list from its end, then the module itself.
      for (const p of [...e.deps].reverse().concat(e.path)) {
        if (!seen.has(p)) {
          seen.add(p);
          order.push(p);
        }
      }
    }
    return order;
  }
}

/** Every `*.ko` file below `dir`, as paths relative to `dir`. */
async function listModules(dir: string, sub = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(dir, sub))) {
    const rel = sub ? `${sub}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listModules(dir, rel));
    else if (e.isFile && e.name.endsWith(".ko")) out.push(rel);
  }
  return out;
}

/**
 * Builds `modules.dep` for the modules below `modulesDir` from each module's
 * `.modinfo` `depends=` field, as depmod does for uncompressed modules.
 * Throws naming a module whose dependency is missing or cyclic.
 */
export async function buildModulesDep(modulesDir: string): Promise<ModulesDep> {
  const direct = new Map<string, { path: string; depends: string[] }>();
  for (const rel of await listModules(modulesDir)) {
    const info = readModinfo(await Deno.readFile(join(modulesDir, rel)), rel);
    const name = moduleName(info.get("name")?.[0] ?? rel);
    const depends = (info.get("depends")?.[0] ?? "").split(",").filter((d) => d !== "")
      .map(moduleName);
    direct.set(name, { path: relative(modulesDir, join(modulesDir, rel)), depends });
  }
  const resolved = new Map<string, string[]>();
  const visiting = new Set<string>();
  // Post-order walk: a module's list is its direct deps, each followed by theirs,
  // so every module precedes what it depends on.
  const resolve = (name: string, from: string): string[] => {
    const done = resolved.get(name);
    if (done) return done;
    const mod = direct.get(name);
    if (!mod) throw new Error(`module ${from} depends on ${name}, which is not in ${modulesDir}`);
    if (visiting.has(name)) throw new Error(`module dependency cycle through ${name}`);
    visiting.add(name);
    const list: string[] = [];
    const emitted = new Set<string>();
    const add = (p: string) => {
      if (emitted.has(p)) {
        list.splice(list.indexOf(p), 1);
      }
      emitted.add(p);
      list.push(p);
    };
    for (const d of mod.depends) {
      const sub = resolve(d, name);
      add(direct.get(d)!.path);
      for (const p of sub) add(p);
    }
    visiting.delete(name);
    resolved.set(name, list);
    return list;
  };
  const entries = new Map<string, { path: string; deps: string[] }>();
  for (const [name, mod] of direct) {
    entries.set(name, { path: mod.path, deps: resolve(name, name) });
  }
  return new ModulesDep(entries);
}
