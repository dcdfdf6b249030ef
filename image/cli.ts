/**
 * `skiff image pull|list|rm`: the image store from the command line.
 *
 * @module
 */

import { parseReference } from "./reference.ts";
import { isDigest, shortDigest } from "./digest.ts";
import { type PulledImage, pullImage } from "./pull.ts";
import { type ImageRecord, ImageStore } from "./store.ts";
import { withInterrupt } from "../hv/interrupt.ts";

export { withInterrupt } from "../hv/interrupt.ts";

/** `skiff image pull REF`: prints the manifest digest on stdout. */
export async function imagePullCommand(text: string, store = new ImageStore()): Promise<number> {
  const ref = parseReference(text);
  const r = await withInterrupt((signal) => pullImage(ref, { store, signal }));
  console.error(pullSummary(r));
  console.log(r.record.manifestDigest);
  return 0;
}

/** The line `skiff image pull` ends with on stderr (`1 layer`, `2 layers`). */
export function pullSummary(r: Pick<PulledImage, "record" | "fetched">): string {
  const n = r.record.layers.length;
  return `skiff image: pulled ${r.record.name} (${n} layer${n === 1 ? "" : "s"}, ` +
    `${r.fetched} fetched, ${mib(r.record.layers.reduce((s, l) => s + l.bytes, 0))} MiB unpacked)`;
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(1);
}

function age(iso: string, now = Date.now()): string {
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return "?";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** `skiff image list [--json]`: name, digest, size, age. */
export function imageListCommand(json: boolean, store = new ImageStore()): number {
  const recs = store.records();
  if (json) {
    console.log(JSON.stringify(
      recs.map((r) => ({ ...r, bytes: r.layers.reduce((n, l) => n + l.bytes, 0) })),
      null,
      2,
    ));
    return 0;
  }
  const rows = [["NAME", "DIGEST", "SIZE", "AGE"]];
  for (const r of recs) {
    rows.push([
      r.name,
      shortDigest(r.manifestDigest),
      `${mib(r.layers.reduce((n, l) => n + l.bytes, 0))} MiB`,
      age(r.pulled),
    ]);
  }
  if (recs.length === 0) {
    console.error("skiff image list: no images (skiff image pull REF)");
    return 0;
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) {
    console.log(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]))).join("  "));
  }
  return 0;
}

/** The records `arg` names: a reference, a manifest digest, or a digest prefix (≥ 6 hex digits). */
function matching(arg: string, recs: ImageRecord[]): ImageRecord[] {
  const hex = arg.replace(/^sha256:/, "");
  if (isDigest(arg) || (/^[0-9a-f]{6,64}$/.test(hex) && !arg.includes("/"))) {
    const byDigest = recs.filter((r) => r.manifestDigest.startsWith(`sha256:${hex}`));
    if (byDigest.length) return byDigest;
  }
  const name = parseReference(arg).name;
  return recs.filter((r) => r.name === name);
}

/** `skiff image rm REF|DIGEST…`: removes the records, then layers and blobs nothing uses. */
export async function imageRmCommand(args: string[], store = new ImageStore()): Promise<number> {
  using _lock = await store.lock(
    true,
    () =>
      console.error(
        "skiff image rm: waiting for other skiff processes (pulls, running VMs) to finish…",
      ),
  );
  const recs = store.records();
  const gone = new Set<string>();
  for (const a of args) {
    const hit = matching(a, recs);
    if (hit.length === 0) throw new Error(`no image ${a} in the store (see skiff image list)`);
    for (const r of hit) gone.add(r.name);
  }
  for (const name of gone) {
    store.removeRecord(name);
    console.log(`removed ${name}`);
  }
  const gc = store.gc();
  console.error(
    `skiff image rm: ${gc.layers} unreferenced layers (${
      mib(gc.bytes)
    } MiB) and ${gc.blobs} blobs removed`,
  );
  return 0;
}
