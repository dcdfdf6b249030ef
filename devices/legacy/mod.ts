/**
 * Legacy PC devices: the 8250 UART (serial console), the i8042 (reset line)
 * a debug-exit port for test guests, and the ACPI hardware-reduced sleep
 * register (power-off).
 *
 * @module
 */

export {
  COM1,
  RX_RING,
  TX_RING,
  Uart,
  UART_BITS,
  UART_REG,
  UART_STATE_BYTES,
  UartRegisters,
} from "./uart.ts";
export type { UartConfig, UartOptions, UartSnapshot, UartVm } from "./uart.ts";
export { I8042, I8042_CTR, I8042_STATUS, I8042Device, I8042Registers } from "./i8042.ts";
export type { I8042Snapshot } from "./i8042.ts";
export { parseUartSnapshot } from "./uart_persist.ts";
export { parseI8042Snapshot } from "./i8042_persist.ts";
export { DEBUG_EXIT_PORT, debugExitSpec } from "./debug_exit.ts";
export { isPowerOff, sleepSpec } from "./acpi_sleep.ts";
