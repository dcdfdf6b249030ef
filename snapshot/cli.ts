/**
 * `skiff snapshot list|clear`: the work behind the CLI entries in main.ts.
 *
 * @module
 */

import { type CacheEntry, SnapshotCache } from "./cache.ts";

export { SnapshotCache };

/** `1.5 MiB`-style size. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

/** `42s`, `5m`, `3h`, `2d`. */
export function formatAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** One-line description of what an entry was built from. */
export function describeSource(source: Record<string, unknown> | null): string {
  if (!source) return "?";
  return Object.entries(source)
    .map(([k, v]) => {
      let s = typeof v === "string"
        ? v
        : JSON.stringify(v, (_k, x) => typeof x === "bigint" ? String(x) : x);
      if (s.length > 60) s = `${s.slice(0, 57)}...`;
      return /[\s"]/.test(s) ? `${k}=${JSON.stringify(s)}` : `${k}=${s}`;
    })
    .join(" ");
}

/** The table printed by `skiff snapshot list` (header plus one line per entry). */
export function listTable(entries: CacheEntry[], now = Date.now()): string[] {
  const rows = entries.map((e) => [
    e.key.slice(0, 16),
    e.engine,
    formatBytes(e.diskBytes),
    e.memoryBytes ? formatBytes(e.memoryBytes) : "-",
    formatAge(now - e.createdAt.getTime()),
    e.problem ? `UNUSABLE: ${e.problem}` : describeSource(e.source),
  ]);
  const header = ["KEY", "ENGINE", "ON DISK", "MEMORY", "AGE", "BUILT FROM"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]) =>
    r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ");
  return [fmt(header), ...rows.map(fmt)];
}

/** `skiff snapshot list`: prints the cache table (or JSON) to stdout. */
export function snapshotList(cache: SnapshotCache, json = false): void {
  const entries = cache.list();
  if (json) {
    console.log(JSON.stringify(
      entries.map((e) => ({ ...e, createdAt: e.createdAt.toISOString() })),
      (_k, v) => typeof v === "bigint" ? String(v) : v,
      2,
    ));
    return;
  }
  if (entries.length === 0) {
    console.log(`no snapshots in ${cache.root}`);
    return;
  }
  for (const line of listTable(entries)) console.log(line);
}

/** `skiff snapshot clear`: removes every entry; prints how many. */
export function snapshotClear(cache: SnapshotCache): void {
  const n = cache.clear();
  console.log(`removed ${n} snapshot${n === 1 ? "" : "s"} from ${cache.root}`);
}
