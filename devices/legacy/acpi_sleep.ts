/**
 * The hardware-reduced ACPI sleep registers (ACPI 6.5 §4.8.3.7): an 8-bit
 * sleep control register at `port` and an 8-bit sleep status register at
 * `port + 1`, as the FADT's SLEEP_CONTROL_REG/SLEEP_STATUS_REG announce.
 * A guest write of SLP_EN with SLP_TYP = 5 (skiff's `_S5` value) is a
 * power-off: the device ends the VM with `{ kind: "poweroff" }`. This is
 * what Linux's `poweroff` does on a hardware-reduced platform
 * (acpi_hw_extended_sleep). Other sleep states are not offered (no `_S1`–
 * `_S4` in the DSDT) and writes asking for them are ignored.
 *
 * @module
 */

import type { DeviceContext, DeviceSpec, WorkerDevice } from "../../hv/device.ts";
import { LAYOUT } from "../../hv/boot/layout.ts";
import { SLEEP } from "../../hv/acpi/tables.ts";
import { runtimeModuleUrl } from "../../hv/module_url.ts";

/** Whether a sleep control register value asks for S5 (soft off). */
export function isPowerOff(value: number): boolean {
  return (value & SLEEP.SLP_EN) !== 0 &&
    ((value & SLEEP.SLP_TYP_MASK) >> SLEEP.SLP_TYP_SHIFT) === SLEEP.S5_TYPE;
}

/** Worker factory (hv/device.ts): offset 0 is the control register, 1 the status register. */
export function create(_config: unknown, ctx: DeviceContext): WorkerDevice {
  return {
    read(_offset: number, data: Uint8Array) {
      // Control reads as 0; status has WAK_STS clear: the guest never sleeps and wakes.
      data.fill(0);
    },
    write(offset: number, data: Uint8Array) {
      if (offset === 0 && data.length >= 1 && isPowerOff(data[0])) {
        ctx.requestStop({ kind: "poweroff", source: ctx.name, code: 0 });
      }
      // Status writes (write-1-to-clear WAK_STS) need no state: it is always clear.
    },
  };
}

/** The spec adding the sleep register pair at `port` and `port + 1`. */
export function sleepSpec(port: number = LAYOUT.SLEEP_PORT, name = "acpi-sleep"): DeviceSpec {
  return {
    name,
    module: runtimeModuleUrl("devices/legacy/acpi_sleep.ts"),
    ports: [{ base: port, length: 2 }],
  };
}
