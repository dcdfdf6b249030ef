/**
 * The init's mailbox mode: the boot program's setup (pseudo-filesystems, the
 * boot record, kernel modules, the virtio-fs root under a tmpfs overlay and
 * switch root, shares, host name, network) followed by the mailbox loop
 * (`mailbox_loop.ts`) instead of the one-shot tail (open the ports, run one
 * command, report it on the status port, power off).
 *
 * This is the init a snapshot is taken of: it rings READY once set up, and
 * the host sends each run's command record through the mailbox. So its
 * initramfs carries a **boot record** whose command fields are a fixed
 * placeholder ({@link bootInitConfig}): two runs that differ only in their
 * command get byte-identical initramfs images and so the same snapshot-cache
 * key.
 *
 * The mailbox-mode init sits at {@link MAILBOX_INIT_PATH} in the initramfs,
 * next to the one-shot `/init`; the kernel is told to run it with
 * {@link MAILBOX_RDINIT} on its command line (`rdinit=`,
 * Documentation/admin-guide/kernel-parameters.txt).
 *
 * How the setup is obtained: `bootProgram({ tail })` with an empty tail
 * stops before the one-shot part (opening the ports, the command, the status
 * line, power-off) and keeps its error handler.
 *
 * @module
 */

import type { KernelInfo } from "../hv/kernel/mod.ts";
import { compileElf, type Program } from "./codegen/mod.ts";
import { exit, type Fragment, seq, v, type VarRef } from "./ir/mod.ts";
import { type BootOptions, bootProgram, findPort, RECORD_PATH } from "./boot_program.ts";
import type { InitConfig } from "./config.ts";
import { buildInitramfs } from "./initramfs.ts";
import { mailboxLoop, type MailboxLoopOptions } from "./mailbox_loop.ts";
import { REC } from "./record.ts";

/** Where the mailbox-mode init lives in the initramfs. */
export const MAILBOX_INIT_PATH = "/skiff/mailbox-init";

/** The kernel command-line option that runs the mailbox-mode init. */
export const MAILBOX_RDINIT = `rdinit=${MAILBOX_INIT_PATH}`;

/**
 * The command fields of a boot record. The command itself comes later
 * through the mailbox; these are never run.
 */
export const BOOT_RECORD_COMMAND = {
  argv: ["skiff-mailbox-boot"],
  env: [] as string[],
  cwd: "/",
} as const;

/** Options of {@link mailboxBootProgram}. */
export interface MailboxBootOptions {
  /** Where the boot record comes from and the native test variant (as `bootProgram`). */
  boot?: BootOptions;
  /** Options of the mailbox loop (defaults: `/dev/mem`, virtio ports). */
  loop?: MailboxLoopOptions;
  /**
   * Wait (up to `PORT_WAIT_MS`) for the record's stdin, stdout and stderr
   * virtio-console ports before ringing READY, so a snapshot is taken with
   * the ports present (default true; the native variant has port files).
   */
  waitForPorts?: boolean;
}

/** The boot program's operations up to (not including) its one-shot tail. */
export function bootSetup(o: BootOptions = {}): { setup: Fragment; onError?: Fragment } {
  const prog = bootProgram({ ...o, tail: seq() });
  return { setup: prog.body, onError: prog.onError };
}

/** Waits for the virtio-console port whose name is at record offset `at`. */
function waitForPort(rec: VarRef, at: number, what: string): Fragment {
  const name = v(`mbm_port_${what}`);
  const path = { kind: "buf" as const, name: "mbm_port_path", size: 512 };
  return seq(
    { op: "load", dst: name, addr: rec, offset: at, size: 8 },
    findPort(name, path, `find port ${what}`, {}),
  );
}

/**
 * The mailbox-mode init: boot setup, then (in a VM) a wait for the stdio
 * ports, then the mailbox loop. A setup failure is reported as in one-shot
 * mode (`error <step>: <ERRNO>` on the status port and /dev/kmsg, then
 * power-off).
 */
export function mailboxBootProgram(o: MailboxBootOptions = {}): Program {
  const boot = o.boot ?? { record: { path: RECORD_PATH } };
  const { setup, onError } = bootSetup(boot);
  const body = seq(setup);
  if (o.waitForPorts ?? !boot.native) {
    const rec = v("rec"); // the boot program's record pointer (relocated)
    body.push(
      waitForPort(rec, REC.PORT_STDIN, "stdin"),
      waitForPort(rec, REC.PORT_STDOUT, "stdout"),
      waitForPort(rec, REC.PORT_STDERR, "stderr"),
    );
  }
  // The native variant runs on the host: SHUTDOWN must exit, never power the host off.
  const loop = boot.native ? { ...o.loop, onShutdown: seq(exit(0)) } : (o.loop ?? {});
  body.push(mailboxLoop(loop));
  return { body, onError };
}

let mailboxElf: Uint8Array | undefined;

/** The mailbox-mode init ELF (reads its boot record from `/skiff/record`; compiled once). */
export function buildMailboxInitElf(): Uint8Array {
  mailboxElf ??= compileElf(mailboxBootProgram()).bytes;
  return mailboxElf.slice();
}

/**
 * The boot configuration of `config`: the same mounts, shares, host name,
 * network and ports, with the placeholder command — what a mailbox-mode
 * initramfs carries, independent of the command to run.
 */
export function bootInitConfig(config: InitConfig): InitConfig {
  return {
    ...config,
    command: {
      argv: [...BOOT_RECORD_COMMAND.argv],
      env: [...BOOT_RECORD_COMMAND.env],
      cwd: BOOT_RECORD_COMMAND.cwd,
    },
  };
}

/**
 * The gzip'd initramfs for mailbox mode: the usual one (the one-shot
 * `/init`, modules, `/skiff/record` — here the boot record of
 * {@link bootInitConfig}) plus the mailbox-mode init at
 * {@link MAILBOX_INIT_PATH}. Boot it with {@link MAILBOX_RDINIT}.
 */
export function mailboxInitramfs(kernel: KernelInfo, config: InitConfig): Promise<Uint8Array> {
  return buildInitramfs({
    kernel,
    config: bootInitConfig(config),
    extraFiles: [{ path: MAILBOX_INIT_PATH, data: buildMailboxInitElf(), mode: 0o755 }],
  });
}
