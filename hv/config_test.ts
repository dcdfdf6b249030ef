import { strictEqual, throws } from "node:assert/strict";
import { checkHostname, MAX_HOSTNAME_BYTES } from "./config.ts";
import { ConfigError } from "./errors.ts";

Deno.test("checkHostname: 1 to 64 bytes of UTF-8, as the guest's init and agent take", () => {
  strictEqual(MAX_HOSTNAME_BYTES, 64);
  for (const ok of ["a", "skiff", "x".repeat(64), "é".repeat(32)]) checkHostname(ok);
  const cases: [string, string][] = [
    ["", "--hostname '': expected 1 to 64 bytes"],
    ["x".repeat(65), `--hostname '${"x".repeat(65)}': expected 1 to 64 bytes (it has 65)`],
    ["é".repeat(33), `--hostname '${"é".repeat(33)}': expected 1 to 64 bytes (it has 66)`],
  ];
  for (const [name, message] of cases) {
    throws(
      () => checkHostname(name),
      (e: unknown) => e instanceof ConfigError && e.message === message,
    );
  }
  throws(() => checkHostname("", "hostname"), /^ConfigError: hostname '': /);
});
