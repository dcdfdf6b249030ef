/**
 * Private directories named after the process that made them
 * (`<prefix><pid>n<pid namespace>-<random>`), and the sweep of those whose
 * process is gone: a skiff killed with SIGKILL cannot remove its own (a VM's
 * RAM and scratch directories, a kernel fetch's staging), and the next start
 * does. The pid namespace is in the name because a pid means something only
 * there: a container sharing /tmp sees other pids, and must not take another
 * namespace's live directory for a dead one.
 *
 * @module
 */

import { join } from "node:path";

let pidNsCache: string | null = null;

/** This process's pid namespace (the inode of /proc/self/ns/pid), or "0" when unknown. */
export function pidNamespace(): string {
  if (pidNsCache === null) {
    try {
      pidNsCache = /\[(\d+)\]/.exec(Deno.readLinkSync("/proc/self/ns/pid"))?.[1] ?? "0";
    } catch {
      pidNsCache = "0";
    }
  }
  return pidNsCache;
}

/** Creates `<root>/<prefix><pid>n<pid namespace>-<random>`, mode 0700. */
export function makePidDir(root: string, prefix: string): string {
  const dir = Deno.makeTempDirSync({
    dir: root,
    prefix: `${prefix}${Deno.pid}n${pidNamespace()}-`,
  });
  Deno.chmodSync(dir, 0o700);
  return dir;
}

/**
 * Removes the directories under `root` named `<prefix><pid>[n<ns>]-…` of
 * this pid namespace (a name without one is an older skiff's, taken as this
 * namespace's) whose process no longer runs; returns their paths. Never
 * throws.
 */
export function sweepPidDirs(root: string, prefix: string): string[] {
  const removed: string[] = [];
  let names: Deno.DirEntry[];
  try {
    names = [...Deno.readDirSync(root)];
  } catch {
    return removed;
  }
  const named = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(\\d+)(?:n(\\d+))?-`);
  const ns = pidNamespace();
  for (const ent of names) {
    const m = named.exec(ent.name);
    if (!m || !ent.isDirectory) continue;
    if (m[2] !== undefined && m[2] !== ns) continue; // another namespace's pid
    if (processRunning(m[1])) continue;
    try {
      Deno.removeSync(join(root, ent.name), { recursive: true });
      removed.push(join(root, ent.name));
    } catch {
      // another sweeper was first, or not ours to remove
    }
  }
  return removed;
}

/**
 * Whether process `pid` exists and is not a zombie (a killed process whose
 * parent has not waited for it yet owns nothing any more).
 */
export function processRunning(pid: number | string): boolean {
  let stat: string;
  try {
    stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return false;
  }
  // proc_pid_stat(5): "pid (comm) state …"; comm may hold spaces and parentheses.
  const close = stat.lastIndexOf(")");
  return stat.slice(close + 2, close + 3) !== "Z";
}

/** Where `Deno.makeTempDir` puts directories by default: `$TMPDIR`, else `/tmp`. */
export function tempRoot(): string {
  return Deno.env.get("TMPDIR") || "/tmp";
}
