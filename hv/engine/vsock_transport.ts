/**
 * The guest agent's transport over skiff's virtio-vsock device (the same
 * device object whether the kvm engine runs it behind its MMIO transport or
 * the qemu engine behind vhost-user): connections to the agent's port on the
 * guest, and listeners on host ports the guest connects back to for each
 * process's stdin, stdout and stderr.
 *
 * @module
 */

import type { VirtioVsock } from "../../devices/virtio/vsock/device.ts";
import { abortRace } from "../abort.ts";
import { VmError } from "../errors.ts";
import type { VsockStream } from "../../devices/virtio/vsock/connection.ts";
import type { AgentConnection, AgentListener, AgentTransport } from "../../init/agent/transport.ts";

/** First host port handed out for process streams (above the well-known range). */
const FIRST_EPHEMERAL_PORT = 49152;
/** Last one (then the allocator wraps, skipping ports in use). */
const LAST_EPHEMERAL_PORT = 0x7fff_ffff;

function connection(s: VsockStream): AgentConnection {
  return {
    readable: s.readable,
    writable: s.writable,
    closeWrite: () => s.closeWrite(),
    close: () => s.close(),
  };
}

/** {@link AgentTransport} over a {@link VirtioVsock} device's host side. */
export class VsockAgentTransport implements AgentTransport {
  #device: VirtioVsock;
  #next = FIRST_EPHEMERAL_PORT;
  #inUse = new Set<number>();

  constructor(device: VirtioVsock) {
    this.#device = device;
  }

  async connect(guestPort: number, signal?: AbortSignal): Promise<AgentConnection> {
    return connection(await this.#device.connect(guestPort, { signal }));
  }

  #allocate(): number {
    for (let tries = 0; tries <= LAST_EPHEMERAL_PORT - FIRST_EPHEMERAL_PORT; tries++) {
      const port = this.#next;
      this.#next = port >= LAST_EPHEMERAL_PORT ? FIRST_EPHEMERAL_PORT : port + 1;
      if (!this.#inUse.has(port)) return port;
    }
    throw new RangeError("no free vsock host port");
  }

  listen(hostPort?: number): Promise<AgentListener> {
    const port = hostPort ?? this.#allocate();
    const listener = this.#device.listen(port);
    this.#inUse.add(port);
    const close = () => {
      if (!this.#inUse.delete(port)) return;
      listener.close();
    };
    return Promise.resolve({
      port,
      accept: async (signal?: AbortSignal) => {
        signal?.throwIfAborted();
        const onAbort = () => close();
        signal?.addEventListener("abort", onAbort, { once: true });
        try {
          const s = await listener.accept();
          signal?.throwIfAborted();
          if (!s) throw new Error(`vsock host port ${port}: the listener was closed`);
          return connection(s);
        } finally {
          signal?.removeEventListener("abort", onAbort);
        }
      },
      close,
    });
  }
}

/** How long the guest may take to set its vsock device up: a hang, not a slow machine. */
export const VSOCK_WAIT_MS = 120_000;

/**
 * Resolves when the guest's driver has set `vsock` up (the agent can be
 * reached); rejects with a {@link VmError} after `ms`, or as `stop` does
 * (the guest died, the caller aborted).
 */
export async function vsockReady(
  vsock: VirtioVsock,
  stop: Promise<never>,
  ms: number = VSOCK_WAIT_MS,
): Promise<void> {
  const deadline = AbortSignal.timeout(ms);
  using late = abortRace(deadline);
  try {
    await Promise.race([vsock.whenActive(), stop, late.promise]);
  } catch (e) {
    if (deadline.aborted && e === deadline.reason) {
      throw new VmError(`timed out waiting for the guest's vsock device (${ms} ms)`);
    }
    throw e;
  }
}
