/**
 * The init IR and its helpers. A program is a {@link Fragment} of operations
 * over 64-bit variables, labels and static data; `init/codegen` compiles it.
 *
 * @example
 * ```ts
 * import { mkdirP, mount, seq, spawn, v } from "./mod.ts";
 * const status = v("status");
 * const body = seq(
 *   mkdirP("/run/x"),
 *   mount("tmpfs", "/run/x", "tmpfs"),
 *   spawn({ argv: ["/bin/true"], envp: [], status }),
 * );
 * ```
 *
 * @module
 */

export * from "./ir.ts";
export * from "./helpers.ts";
export { E, ERRNO_NAMES, MS, NET, O, REBOOT, SIG, SOCK, SYS } from "./linux.ts";
