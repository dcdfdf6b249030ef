/**
 * The kvm engine: skiff's own VMM over /dev/kvm. It boots skiff's guest
 * agent (init/agent) and drives it over vsock, as the qemu engine does:
 * {@link KvmEngine.boot} restores the machine from the snapshot cache or
 * cold-boots it to the agent's READY and captures it there, then sets the
 * run's session up (hv/kvm/agent_boot.ts); {@link KvmEngine.restore} starts
 * a copy of a VM that `vm.snapshot()` captured.
 *
 * On a host whose /dev/kvm emulates guest code (the kvm_pvm module, see
 * DESIGN.md) the command line gets `noxsave clearcpuid=cx16`, and a Linux
 * kernel still stops with KVM_EXIT_INTERNAL_ERROR early in boot; the boot
 * then rejects with a one-line `VmExitError` saying guest code is emulated,
 * with the exit reason, RIP and instruction bytes — never a hang, and no
 * cache entry is written.
 *
 * @module
 */

import { ConfigError } from "../errors.ts";
import type { VmConfig } from "../config.ts";
import type { BootOptions, Engine, RunningVm, SnapshotRef } from "../engine/types.ts";
import type { SnapshotCache } from "../../snapshot/cache.ts";
import { bootAgentVm, restoreAgentVm } from "./agent_boot.ts";
import { EMULATED_NOTE, isEmulatedKvm } from "./emulated.ts";

/** Options of {@link KvmEngine}. */
export interface KvmEngineOptions {
  /** Kernel log (UART output) goes here as it arrives; default: stderr when `verbose`. */
  onKernelLog?: (bytes: Uint8Array) => void;
  /**
   * Receives the one-line note that guest code is emulated on this host
   * ({@link EMULATED_NOTE}) when a boot starts there; default: stderr; null: silent.
   */
  onNote?: ((line: string) => void) | null;
  /**
   * `--snapshot`/`--no-snapshot`: use the snapshot cache (default true) when
   * {@link BootOptions.snapshot} does not say. With false the VM cold-boots
   * and nothing in the cache is read or written.
   */
  snapshot?: boolean;
  /** The snapshot cache (default: `SnapshotCache` at `${XDG_CACHE_HOME:-~/.cache}/skiff/snapshots`). */
  cache?: SnapshotCache;
  /** One-line cache warnings (bad entry deleted, capture failed); default: stderr. */
  onWarning?: (line: string) => void;
}

/** The kvm engine. */
export class KvmEngine implements Engine {
  readonly name = "kvm";
  #opts: KvmEngineOptions;

  constructor(opts: KvmEngineOptions = {}) {
    this.#opts = opts;
  }

  /**
   * Boots the guest agent (or restores it from the snapshot cache) and sets
   * the session up: hv/kvm/agent_boot.ts.
   */
  boot(config: VmConfig, o: BootOptions = {}): Promise<RunningVm> {
    if (this.#opts.onNote !== null && isEmulatedKvm()) {
      (this.#opts.onNote ?? ((l: string) => console.error(l)))(EMULATED_NOTE);
    }
    return bootAgentVm(config, {
      ...o,
      log: this.#log(config, o),
      snapshot: o.snapshot ?? this.#opts.snapshot,
      cache: this.#opts.cache,
      warn: this.#warn(),
      onConsole: this.#console(config),
    });
  }

  /**
   * Starts a copy of a running VM that `vm.snapshot()` captured (it goes on
   * with the same shares and network; its wall clock is set again).
   */
  restore(
    snapshot: SnapshotRef,
    config: VmConfig = snapshot.config,
    o: BootOptions = {},
  ): Promise<RunningVm> {
    if (snapshot.engine !== "kvm") {
      return Promise.reject(
        new ConfigError(`snapshot ${snapshot.dir} is of the ${snapshot.engine} engine`),
      );
    }
    return restoreAgentVm(snapshot, config, {
      ...o,
      log: this.#log(config, o),
      cache: this.#opts.cache,
      warn: this.#warn(),
      onConsole: this.#console(config),
    });
  }

  #warn(): (line: string) => void {
    return this.#opts.onWarning ?? ((l: string) => console.error(`skiff: ${l}`));
  }

  #log(config: VmConfig, o: BootOptions): ((line: string) => void) | undefined {
    return o.log ?? (config.verbose ? (l: string) => console.error(`skiff: ${l}`) : undefined);
  }

  #console(config: VmConfig): ((bytes: Uint8Array) => void) | undefined {
    return this.#opts.onKernelLog ??
      (config.verbose ? (b: Uint8Array) => Deno.stderr.writeSync(b) : undefined);
  }
}
