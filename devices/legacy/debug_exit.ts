/**
 * A debug-exit port (as QEMU's `isa-debug-exit`): a guest write of value V
 * powers the VM off with exit code V. Test guests and the init use it to end
 * a run without ACPI.
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../../hv/device.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";

/** The conventional debug-exit port (QEMU's default iobase). */
export const DEBUG_EXIT_PORT = 0x501;

/** Worker factory: see {@link debugExitSpec}. */
export function create(_config: unknown, ctx: DeviceContext): WorkerDevice {
  return {
    read(_offset: number, data: Uint8Array) {
      data.fill(0);
    },
    write(_offset: number, data: Uint8Array) {
      let code = 0;
      for (let i = data.length - 1; i >= 0; i--) code = code * 256 + data[i];
      ctx.requestStop({ kind: "poweroff", source: ctx.name, code });
    },
  };
}

/** The spec adding a debug-exit device at `port` (1..4-byte writes). */
export function debugExitSpec(port: number = DEBUG_EXIT_PORT, name = "debug-exit"): DeviceSpec {
  return {
    name,
    module: runtimeModuleUrl("devices/legacy/debug_exit.ts"),
    ports: [{ base: port, length: 4 }],
  };
}
