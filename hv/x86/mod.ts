/**
 * x86-64 CPU setup shared by the Linux loader and test guests.
 *
 * @module
 */

export * from "./long_mode.ts";
export * from "./cpuid.ts";
