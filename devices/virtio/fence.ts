/**
 * A full memory fence for the device side of virtio's notification
 * handshake (§2.7.10, §2.7.7): the device stores `avail_event` (or the used
 * index) and must then load the driver's avail index (or `used_event`); the
 * driver does the mirror image. x86 lets a load pass an earlier store to
 * another address, so without a fence between them both sides can read the
 * other's old value and both wait — the guest for an interrupt, the device
 * for a kick (Linux: `virtio_mb()`; rust-vmm's virtio-queue: a SeqCst fence
 * in `enable_notification` and `needs_notification`).
 *
 * Guest memory is a plain (non-shared) buffer, so JavaScript cannot fence
 * it directly; any sequentially consistent read-modify-write is a locked
 * instruction on x86 (`lock xadd`), a full barrier for every memory access
 * of the thread, and V8 keeps typed-array accesses in program order around
 * it.
 *
 * @module
 */

/** A word of this thread's own: nothing else touches it, so the fence never contends. */
const word = new Int32Array(new SharedArrayBuffer(4));

/** Orders every earlier store before every later load (and all other accesses). */
export function fullFence(): void {
  Atomics.add(word, 0, 1);
}
