/**
 * Engine selection for `--engine kvm|qemu|auto`. `auto` picks `kvm` when
 * /dev/kvm can run real guests, otherwise `qemu` when `qemu-system-x86_64`
 * is installed, otherwise fails naming both ways out.
 *
 * "Can run real guests" excludes emulated KVM: the `kvm_pvm` module
 * (`/sys/module/kvm_pvm`) implements the whole KVM API but emulates guest
 * instructions at ~2 MIPS, so a Linux guest never finishes booting on it
 * (DESIGN.md, "This workplace's KVM").
 *
 * @module
 */

import { type Engine } from "../engine/types.ts";
import { EngineUnavailableError } from "../errors.ts";

/** The `--engine` choices. */
export type EngineChoice = "kvm" | "qemu" | "auto";

/** Host facts the choice depends on (injectable for tests). */
export interface HostProbe {
  /** Whether a path exists. */
  exists(path: string): boolean;
  /** Whether /dev/kvm opens read-write. */
  kvmOpens(): boolean;
  /** Absolute path of an executable on PATH, or null. */
  which(name: string): string | null;
}

/** The real host. */
export const realHost: HostProbe = {
  exists(path) {
    try {
      Deno.statSync(path);
      return true;
    } catch {
      return false;
    }
  },
  kvmOpens() {
    try {
      Deno.openSync("/dev/kvm", { read: true, write: true }).close();
      return true;
    } catch {
      return false;
    }
  },
  which(name) {
    for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
      if (!dir) continue;
      try {
        const st = Deno.statSync(`${dir}/${name}`);
        if (st.isFile && ((st.mode ?? 0) & 0o111)) return `${dir}/${name}`;
      } catch {
        // not here
      }
    }
    return null;
  },
};

/** Why /dev/kvm cannot run real guests here, or null when it can. */
export function kvmUnusableReason(host: HostProbe = realHost): string | null {
  if (!host.exists("/dev/kvm")) return "/dev/kvm does not exist";
  if (!host.kvmOpens()) return "/dev/kvm cannot be opened read-write (add yourself to group kvm)";
  if (host.exists("/sys/module/kvm_pvm")) {
    return "/dev/kvm is the emulated kvm_pvm module, which cannot boot a Linux guest in useful time";
  }
  return null;
}

/** Why QEMU cannot be used, or null. */
export function qemuUnusableReason(host: HostProbe = realHost): string | null {
  return host.which("qemu-system-x86_64") ? null : "qemu-system-x86_64 is not installed";
}

/** The result of {@link chooseEngine}: the name, and why `auto` chose it. */
export interface EngineDecision {
  name: "kvm" | "qemu";
  /** Human-readable reason (printed with `--verbose`). */
  why: string;
  /** Use KVM acceleration inside QEMU (qemu engine only). */
  qemuAccel: "kvm" | "tcg";
}

/** Decides which engine `choice` means on `host`; throws {@link EngineUnavailableError}. */
export function chooseEngine(choice: EngineChoice, host: HostProbe = realHost): EngineDecision {
  const kvmWhy = kvmUnusableReason(host);
  const qemuWhy = qemuUnusableReason(host);
  const accel = kvmWhy === null ? "kvm" : "tcg";
  switch (choice) {
    case "kvm":
      // An explicit choice is honoured even on emulated KVM (the user asked).
      if (!host.exists("/dev/kvm") || !host.kvmOpens()) {
        throw new EngineUnavailableError(`engine kvm is unavailable: ${kvmWhy}`);
      }
      return { name: "kvm", why: "--engine kvm", qemuAccel: accel };
    case "qemu":
      if (qemuWhy) {
        throw new EngineUnavailableError(
          `engine qemu is unavailable: ${qemuWhy} (\`skiff setup\` installs it: apt-get install qemu-system-x86)`,
        );
      }
      return { name: "qemu", why: `--engine qemu (accel ${accel})`, qemuAccel: accel };
    case "auto":
      if (kvmWhy === null) {
        return { name: "kvm", why: "auto: /dev/kvm runs guests", qemuAccel: accel };
      }
      if (qemuWhy === null) {
        return { name: "qemu", why: `auto: ${kvmWhy}; using QEMU (TCG)`, qemuAccel: accel };
      }
      throw new EngineUnavailableError(
        `no engine can run guests here: ${kvmWhy}, and ${qemuWhy}. ` +
          "Either run on a host with hardware virtualization (/dev/kvm), " +
          "or install QEMU for --engine qemu (`skiff setup` does: apt-get install qemu-system-x86)",
      );
    default:
      throw new EngineUnavailableError(`unknown engine '${choice}' (kvm, qemu or auto)`);
  }
}

/** Factories for the engines (injectable for tests). */
export interface EngineFactories {
  kvm?: () => Engine;
  qemu?: (accel: "kvm" | "tcg") => Engine;
  /** Progress lines (`--verbose`). */
  log?: (line: string) => void;
}

/**
 * Chooses and constructs the engine for `choice`. Only the chosen engine's
 * modules are loaded (the kvm engine's are ≈46 modules a qemu run does not
 * need, ≈10 ms of a `skiff run`'s start here).
 */
export async function selectEngine(
  choice: EngineChoice,
  factories: EngineFactories = {},
  host: HostProbe = realHost,
): Promise<{ engine: Engine; decision: EngineDecision }> {
  const decision = chooseEngine(choice, host);
  const log = factories.log;
  let engine: Engine;
  if (decision.name === "kvm") {
    engine = factories.kvm ? factories.kvm() : new (await import("../kvm/mod.ts")).KvmEngine();
  } else {
    engine = factories.qemu
      ? factories.qemu(decision.qemuAccel)
      : new (await import("../qemu/engine.ts")).QemuEngine({ accel: decision.qemuAccel, log });
  }
  return { engine, decision };
}
