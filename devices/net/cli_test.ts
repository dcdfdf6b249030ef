/** `skiff net` argument handling (no root needed: every case fails before a TAP is made). */

import { strictEqual } from "node:assert/strict";
import { EXIT_FAILURE, main } from "../../main.ts";

Deno.test("skiff net: bad usage exits 125", async () => {
  const errors: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => void errors.push(a.join(" "));
  try {
    strictEqual(await main(["net", "tap"]), EXIT_FAILURE);
    strictEqual(await main(["net", "tap", "--netns", "x", "--net=foo"]), EXIT_FAILURE);
    strictEqual(await main(["net", "tap", "--netns", "x", "--publish", "1:2:3:4"]), EXIT_FAILURE);
    strictEqual(await main(["net", "tap", "--netns", "x", "--mtu", "big"]), EXIT_FAILURE);
  } finally {
    console.error = orig;
  }
  strictEqual(errors.length, 4);
  strictEqual(
    errors[1],
    "skiff net: --net must be host-loopback, got 'foo' (see skiff net --help)",
  );
});
