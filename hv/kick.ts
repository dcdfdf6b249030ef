/**
 * Kicking a vCPU thread out of a blocked `KVM_RUN`.
 *
 * `KVM_RUN` returns `EINTR` as soon as its thread has a signal pending, and
 * when `kvm_run.immediate_exit` is set it returns before entering the guest.
 * The host sets `immediate_exit` (closing the race where the thread is about
 * to enter `KVM_RUN`) and then sends {@link KICK_SIGNAL} to that thread with
 * `tgkill`.
 *
 * The signal needs a real handler: a signal whose disposition is SIG_DFL
 * either kills the process or (for default-ignored signals) is discarded
 * before it ever becomes pending, and then `KVM_RUN` would not notice it. A
 * JavaScript handler cannot run on a foreign thread inside a syscall, so the
 * handler is a libc function that does nothing harmful with its argument
 * (`getpid`, async-signal-safe), installed once per process with
 * `sigaction`. Deno does not use real-time signals, so SIGRTMIN+8 is ours.
 *
 * @module
 */

import { checkSyscall, cstr, errno, libc, SysError } from "../kvm_ffi/libc.ts";

/** The real-time signal skiff uses to kick vCPU threads (SIGRTMIN+8 = 42 with glibc). */
export const KICK_SIGNAL = 42;

/** x86-64 syscall numbers. */
const SYS_gettid = 186n;
const SYS_tgkill = 234n;

/** glibc x86-64 `struct sigaction`: handler, 128-byte mask, flags, restorer. */
const SIGACTION_SIZE = 152;
const SA_FLAGS_OFFSET = 136;
const SA_RESTART = 0x10000000;

let installed = false;

/** Installs the no-op handler for {@link KICK_SIGNAL} (idempotent, process-wide). */
export function installKickHandler(): void {
  if (installed) return;
  const handler = libc.dlsym(null, cstr("getpid"));
  if (handler === null) throw new Error("dlsym(getpid) returned null");
  const act = new Uint8Array(SIGACTION_SIZE);
  const v = new DataView(act.buffer);
  v.setBigUint64(0, Deno.UnsafePointer.value(handler) as bigint, true);
  v.setInt32(SA_FLAGS_OFFSET, SA_RESTART, true);
  if (libc.sigaction(KICK_SIGNAL, act, null) < 0) {
    throw new SysError(`sigaction(${KICK_SIGNAL})`, errno());
  }
  installed = true;
}

/** The calling thread's kernel thread id. */
export function gettid(): number {
  return checkSyscall("gettid", libc.syscall(SYS_gettid, 0n, 0n, 0n, 0n, 0n, 0n));
}

/** Sends {@link KICK_SIGNAL} to thread `tid` of this process. */
export function kickThread(tid: number): void {
  checkSyscall(
    `tgkill(${tid}, ${KICK_SIGNAL})`,
    libc.syscall(SYS_tgkill, BigInt(Deno.pid), BigInt(tid), BigInt(KICK_SIGNAL), 0n, 0n, 0n),
  );
}
