import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { checkHostname, MAX_HOSTNAME_BYTES, volumeShare } from "./config.ts";
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

Deno.test("checkHostname: control characters and whitespace are refused, on one line", () => {
  for (const [name, shown] of [["a\0b", '"a\\u0000b"'], ["a\nb", '"a\\nb"'], ["a b", '"a b"']]) {
    throws(
      () => checkHostname(name),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.message === `--hostname ${shown}: control characters and whitespace are not allowed`,
    );
  }
});

Deno.test("volumeShare: refuses the root and /proc, /sys, /dev and below, as the guest resolves them", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const share = (guestPath: string) =>
      volumeShare({ hostPath: dir, guestPath, readOnly: true }, 2, "/", "--volume v");
    for (const g of ["/", "//", "/.", "/x/.."]) {
      throws(() => share(g), /^ConfigError: --volume v: cannot mount over the guest's root$/);
    }
    for (const g of ["/proc", "/proc/", "/sys", "//sys", "/dev", "/a/../dev"]) {
      throws(
        () => share(g),
        /^ConfigError: --volume v: cannot mount over the guest's \/(proc|sys|dev)$/,
      );
    }
    // Below them is the user's choice.
    for (
      const g of ["/dev/shm", "/dev/hugepages", "/process", "/devices", "/srv/proc", "/mnt/dev"]
    ) {
      deepStrictEqual(share(g), { tag: "vol2", hostPath: dir, guestPath: g, readOnly: true });
    }
    throws(() => share("rel"), /must be absolute/);
  } finally {
    Deno.removeSync(dir);
  }
});
