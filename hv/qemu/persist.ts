/**
 * Snapshots of a running q35 QEMU (the qemu engine's snapshot cache), as
 * measured in the spike (variant "b"): guest RAM is a
 * `memory-backend-file,share=on` on tmpfs, the `x-ignore-shared` migration
 * capability leaves it out of the migration stream, so the stream carries
 * only device state (~300 KiB on q35) and the RAM file is copied sparse.
 *
 * - {@link captureQemu}: `stop`, `migrate` to a file, a sparse copy of the
 *   RAM file into a staging file on the same tmpfs (the guest may `cont`
 *   once it returns), then the entry is written and published atomically on
 *   a Worker (`published`).
 * - {@link restoreQemu}: a sparse copy of the cached RAM into a fresh tmpfs
 *   file (the cached file is never mapped: a `share=off` copy-on-write
 *   mapping restores, but a hot-plugged vhost-user back-end then maps the
 *   file rather than the guest's pages and silently never works), or none
 *   when the file is a spare copy of that RAM made ahead
 *   (snapshot/ram_spares.ts, `ramHolds`); the copy runs while QEMU starts
 *   `-incoming defer -S`, and the device state loads once it is done (the
 *   same capabilities, `migrate-incoming` from a Unix socket, a check that
 *   it `completed`: a device's post-load may read guest RAM). The guest stays paused:
 *   the caller hot-plugs its devices (hv/qemu/hotplug.ts) and then sends
 *   `cont`.
 *
 * QEMU 7.2 cannot migrate vhost-user devices, so captures are taken with
 * none plugged; a failed incoming migration makes QEMU exit, so a failed
 * restore is a {@link SnapshotError} and the caller cold-boots.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { mapPath } from "../../devices/vhost_user/file_mapping.ts";
import { SnapshotError } from "../../snapshot/errors.ts";
import { type PublishResult } from "../../snapshot/store.ts";
import {
  QEMU_RAM_FILE,
  type QemuEntry,
  readQemuEntry,
  writeQemuEntry,
  writeQemuEntryInWorker,
} from "../../snapshot/qemu_entry.ts";
import { copySparse, copySparseInBackground } from "../../snapshot/sparse_copy.ts";
import type { StateValue } from "../../snapshot/codec.ts";
import { machineDescription, type QemuLaunchSpec } from "./cmdline.ts";
import { QemuProcess, type QemuStartOptions } from "./process.ts";
import { discardEarly } from "./early_restore.ts";
import type { QemuVersion } from "./qmp_types.ts";

/**
 * Migration capabilities on both sides (QAPI `MigrationCapability`):
 * `x-ignore-shared` skips RAM blocks backed by shared memory (the RAM file),
 * `events` sends `MIGRATION` events so completion is awaited, not polled.
 * A destination without `x-ignore-shared` fails the load ("Capability
 * x-ignore-shared is off, but received capability is on") and exits.
 */
export const MIGRATION_CAPABILITIES = { events: true, "x-ignore-shared": true } as const;

/** `7.2.22`. */
export function versionString(v: QemuVersion): string {
  return `${v.major}.${v.minor}.${v.micro}`;
}

/** The machine cannot be captured as it is (a device is plugged, no RAM file, wrong machine). */
export class QemuCaptureError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "QemuCaptureError";
  }
}

/** Options of {@link captureQemu}. */
export interface CaptureQemuOptions {
  /** What the entry was built from (`skiff snapshot list`); `engine: "qemu"` is added. */
  source?: Record<string, StateValue>;
  /** Write the entry on the calling thread instead of a Worker (tests, tools). */
  inline?: boolean;
  /** Aborts waiting for the migration. */
  signal?: AbortSignal;
  /** Bound on the migration (default 60 s: it takes ~10–20 ms; this only catches hangs). */
  timeoutMs?: number;
}

/** What {@link captureQemu} did, and the pending publication. */
export interface QemuCapture {
  /** Bytes of the migration stream. */
  stateBytes: number;
  /** Bytes of RAM data copied to staging (holes excluded). */
  ramDataBytes: number;
  /** Milliseconds the guest was paused for the capture (stop → staging copy done). */
  pausedMs: number;
  /**
   * Resolves once the entry is written and published (`"exists"` when
   * another writer was first) and the staging files are gone; rejects with
   * a {@link SnapshotError}. Always settles; the staging is removed either way.
   * The staging lives in the RAM file's directory: keep that directory (and
   * the process) until this settles, or the entry is lost.
   */
  published: Promise<PublishResult>;
}

/**
 * Captures a paused-or-running q35 QEMU with a RAM file into snapshot
 * directory `dir` (a cache entry path). The guest is paused (`stop`), QEMU
 * writes its device state, and the RAM file is copied sparse to a staging
 * file beside it; then this resolves and the guest may `cont` while the
 * entry is written on a Worker (`published`). The guest is left paused
 * (`postmigrate`); `cont` resumes it.
 *
 * Refuses (a {@link QemuCaptureError}, before pausing) a QEMU without a RAM
 * file or with a device in a hot-plug port: the stream would not describe
 * what a freshly started QEMU has (and vhost-user devices block migration).
 */
export async function captureQemu(
  vm: QemuProcess,
  dir: string,
  o: CaptureQemuOptions = {},
): Promise<QemuCapture> {
  const ramFile = vm.spec.ramFile;
  if (!ramFile) {
    throw new QemuCaptureError("cannot capture a QEMU whose RAM is not a file (spec.ramFile)");
  }
  if (vm.spec.machine !== "q35") {
    throw new QemuCaptureError(`cannot capture machine ${vm.spec.machine ?? "microvm"}: q35 only`);
  }
  if (vm.slots.used.size > 0) {
    throw new QemuCaptureError(
      `cannot capture with hot-plugged devices (${
        [...vm.slots.used.values()].join(", ")
      }): unplug them first`,
    );
  }
  // A device added outside hotplug.ts still shows up behind a root port.
  for (const bus of await vm.qmp.queryPci()) {
    for (const d of bus.devices) {
      const behind = d.pci_bridge?.devices ?? [];
      if (behind.length > 0) {
        throw new QemuCaptureError(
          `cannot capture with a device behind root port '${d.qdev_id}' (${
            behind.map((b) => b.qdev_id || b.class_info.desc || "?").join(", ")
          })`,
        );
      }
    }
  }
  const t0 = performance.now();
  const staging = Deno.makeTempDirSync({ dir: dirname(ramFile), prefix: "capture-" });
  const removeStaging = () => {
    try {
      Deno.removeSync(staging, { recursive: true });
    } catch {
      // already gone
    }
  };
  let stateBytes: number;
  let ramDataBytes: number;
  try {
    await vm.qmp.setMigrationCapabilities(MIGRATION_CAPABILITIES);
    if ((await vm.qmp.status()).running) await vm.qmp.stop();
    const statePath = join(staging, "state");
    await vm.qmp.migrateToFile(statePath, { signal: o.signal, timeoutMs: o.timeoutMs });
    stateBytes = Deno.statSync(statePath).size;
    // The guest is paused: its RAM is consistent with the device state now.
    ramDataBytes = copySparse(ramFile, join(staging, QEMU_RAM_FILE)).dataBytes;
  } catch (e) {
    removeStaging();
    if (e instanceof QemuCaptureError) throw e;
    throw new QemuCaptureError(`capturing QEMU (pid ${vm.pid}) failed: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const pausedMs = performance.now() - t0;
  const contents = {
    statePath: join(staging, "state"),
    ramPath: join(staging, QEMU_RAM_FILE),
    qemuVersion: versionString(vm.version),
    machine: machineDescription(vm.spec),
    source: { ...(o.source ?? {}), engine: "qemu" },
  };
  const published = (o.inline ? writeQemuEntry : writeQemuEntryInWorker)(dir, contents)
    .finally(removeStaging);
  published.catch(() => {}); // the caller may never look; the staging is removed regardless
  return { stateBytes, ramDataBytes, pausedMs, published };
}

/** What {@link restoreQemu} needs: how to start QEMU (the same machine as at capture). */
export type RestoreQemuOptions = Omit<QemuStartOptions, "incoming" | "machine"> & {
  /** Where the RAM copy goes: a new file in a private tmpfs dir (`QemuRamDir`, ram_dir.ts), or `started`'s. */
  ramFile: string;
  /**
   * A QEMU already starting with these options (q35, incoming) on `ramFile`,
   * which exists at the entry's RAM size, all a hole (hv/qemu/early_restore.ts)
   * unless `ramHolds` says otherwise. Owned by this call from here: stopped on failure.
   */
  started?: Promise<QemuProcess>;
  /**
   * With `started`: `ramFile` is a spare copy of the RAM whose digest this is
   * (snapshot/ram_spares.ts). When it is the entry's RAM digest nothing is
   * copied; otherwise its data is dropped and the entry's copied in.
   */
  ramHolds?: string;
  /** Aborts waiting for the load. */
  signal?: AbortSignal;
  /** Bound on the load (default 60 s; it takes ~10 ms: this only catches hangs). */
  timeoutMs?: number;
  /**
   * Filled with the milliseconds of each step, for benchmarks: `start` (QEMU
   * up, the RAM copy running beside it), `copy` (what the copy took beyond
   * QEMU's start), `load` (the device state).
   */
  timings?: Record<string, number>;
};

/** The first place two argument vectors differ, for a mismatch message. */
function firstDifference(a: readonly string[], b: readonly string[]): string {
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      return `argument ${i}: snapshot has ${JSON.stringify(a[i] ?? null)}, this VM ${
        JSON.stringify(b[i] ?? null)
      }`;
    }
  }
  return "none";
}

/**
 * Starts a new QEMU from qemu entry `entry` (a directory, or one already
 * read with `readQemuEntry`) and loads it: RAM copied sparse into
 * `o.ramFile` (unless it holds a spare of that RAM already, `o.ramHolds`),
 * QEMU started `-incoming defer -S` with the capture's capabilities,
 * `migrate-incoming`, `completed` checked. Resolves to the
 * QEMU, paused where the capture paused it; the caller owns it and the RAM
 * file.
 *
 * A bad entry (manifest, sizes, state digest), a machine that differs from
 * the entry's, another QEMU version, or a stream QEMU refuses is a
 * {@link SnapshotError} naming what is wrong; by then the QEMU that was
 * started is stopped and the RAM copy removed. A QEMU that cannot start at
 * all is a `QemuStartError`, as for a cold boot.
 */
export async function restoreQemu(
  entry: string | QemuEntry,
  o: RestoreQemuOptions,
): Promise<QemuProcess> {
  const { signal, timeoutMs, timings, started, ramHolds, ...start } = o;
  // A failure before the copy: the early QEMU and its (empty) RAM file go.
  const abandon = () => started ? discardEarly(started, o.ramFile) : Promise.resolve();
  let e: QemuEntry;
  try {
    e = typeof entry === "string" ? readQemuEntry(entry) : entry;
  } catch (err) {
    await abandon();
    throw err;
  }
  const spec: QemuLaunchSpec = {
    ...start,
    machine: "q35",
    qmpSocket: "/q",
    consoleSocket: start.console ? "/c" : null,
    ports: start.portNames.map((name, i) => ({ id: `port${i}`, name, socketPath: "/p" })),
  };
  const want = machineDescription(spec);
  if (JSON.stringify(want) !== JSON.stringify(e.manifest.machine)) {
    await abandon();
    throw new SnapshotError(
      "mismatch",
      e.dir,
      `the machine differs from the snapshot's (${firstDifference(e.manifest.machine, want)})`,
    );
  }
  let t = performance.now();
  const step = (name: string) => {
    const now = performance.now();
    if (timings) timings[name] = now - t;
    t = now;
  };
  const copyFailed = (err: unknown) =>
    new SnapshotError("io", e.dir, `copying the RAM file failed: ${(err as Error).message}`, {
      cause: err,
    });
  // The RAM file exists at its size when this returns; its data moves while
  // QEMU starts (QEMU maps it but reads none of it before the incoming load).
  // A spare of this entry's RAM needs no copy (same digest, same bytes): a
  // QEMU started `-incoming` writes nothing into guest RAM before the load
  // either (rom_reset skips ROMs while the run state is inmigrate).
  const holds = started ? ramHolds : undefined;
  let copying: Promise<unknown>;
  try {
    copying = holds === e.manifest.ram.digest
      ? Promise.resolve()
      : copySparseInBackground(e.ramPath, o.ramFile, {
        existing: started === undefined ? undefined : holds === undefined ? "hole" : "reset",
      });
  } catch (err) {
    await abandon();
    throw copyFailed(err);
  }
  copying.catch(() => {});
  let vm: QemuProcess | null = null;
  try {
    vm = await (started ?? QemuProcess.start({ ...start, machine: "q35", incoming: true }));
    step("start");
    const version = versionString(vm.version);
    if (version !== e.manifest.qemuVersion) {
      throw new SnapshotError(
        "mismatch",
        e.dir,
        `written by QEMU ${e.manifest.qemuVersion}, this is QEMU ${version}`,
      );
    }
    await vm.qmp.setMigrationCapabilities(MIGRATION_CAPABILITIES);
    // The RAM must be complete before the device state loads: with
    // x-ignore-shared the stream carries no guest RAM, but a device's
    // post-load may read it — the TPR-patching `kvm-tpr-opt` (kvmvapic)
    // reads its option ROM in guest RAM below 1 MiB, and failed the load
    // ("Operation not permitted") under load when the copy had not written
    // it yet, as the two once overlapped.
    await copying.catch((err) => {
      throw copyFailed(err);
    });
    step("copy"); // what the copy took beyond QEMU's start
    // The devices' back-ends map this file when they start (SET_MEM_TABLE),
    // and the view of it starts a GC (file_mapping.ts): mapped while QEMU
    // loads the state (the mapping itself takes ~3 ms here, which no longer
    // delays the load), so that GC runs while the load is awaited instead of
    // stalling the guest's first device. Held until QEMU exits.
    // A mapping that fails is not a corrupt snapshot: it is thrown after the load.
    const loading = vm;
    const mapping: { failed?: { error: unknown } } = {};
    const mapRam = () => {
      try {
        const ram = mapPath(o.ramFile);
        loading.exited.then(() => ram.release(), () => ram.release());
      } catch (error) {
        mapping.failed = { error };
      }
    };
    try {
      await vm.migrateIncomingFromFile(e.statePath, { signal, timeoutMs, whileLoading: mapRam });
    } catch (err) {
      signal?.throwIfAborted();
      // QEMU 7.2 exits on a failed load; its stderr says why.
      await vm.stop(0);
      const why = vm.diagnostics.split("\n").filter((l) => l.trim()).slice(-3).join(" | ");
      throw new SnapshotError(
        "corrupt",
        e.dir,
        `QEMU could not load the state: ${why || (err as Error).message}`,
        { cause: err },
      );
    }
    if (mapping.failed) throw mapping.failed.error;
    const st = await vm.qmp.status();
    if (st.running || st.status !== "paused") {
      throw new SnapshotError(
        "corrupt",
        e.dir,
        `after loading, QEMU is ${st.status}${st.running ? " (running)" : ""}, not paused`,
      );
    }
    step("load");
    return vm;
  } catch (err) {
    await copying.catch(() => {}); // never leave the copy writing into a removed file
    if (vm) await vm.stop(0);
    try {
      Deno.removeSync(o.ramFile);
    } catch {
      // not created
    }
    throw err;
  }
}
