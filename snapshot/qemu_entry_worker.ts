/**
 * Worker half of `writeQemuEntryInWorker` (qemu_entry.ts): writes one qemu
 * entry off the main thread. Copying ~100 MiB of RAM to disk with zero-page
 * elision, digest and fsync is synchronous FFI work of 0.3–0.5 s here; on
 * the main thread it would stall the guest's devices (vhost-user, console)
 * that the same event loop serves while the restored-to-be VM runs on.
 *
 * Message in: `{ dir, contents }`; out: `{ ok: true, result }` or
 * `{ ok: false, problem, path, message }`.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import { SnapshotError } from "./errors.ts";
import { type QemuEntryContents, writeQemuEntry } from "./qemu_entry.ts";

self.onmessage = async (ev: MessageEvent<{ dir: string; contents: QemuEntryContents }>) => {
  try {
    const result = await writeQemuEntry(ev.data.dir, ev.data.contents);
    self.postMessage({ ok: true, result });
  } catch (e) {
    const se = e instanceof SnapshotError ? e : null;
    self.postMessage({
      ok: false,
      problem: se?.problem ?? "io",
      path: se?.path ?? ev.data.dir,
      message: (e as Error).message ?? String(e),
    });
  }
};
