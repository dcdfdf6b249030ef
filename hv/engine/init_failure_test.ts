import { match, strictEqual } from "node:assert/strict";
import { initFailure } from "./init_failure.ts";
import { AGENT_BOOT_ERROR_PREFIX } from "../../init/agent/protocol.ts";

Deno.test("initFailure: none until the line is whole; the step, with a hint where the cause is known", () => {
  strictEqual(initFailure("[    1.0] booting\n"), null);
  strictEqual(initFailure(`x\n${AGENT_BOOT_ERROR_PREFIX}vsock sock`), null); // not whole yet
  const plain = initFailure(`x\n${AGENT_BOOT_ERROR_PREFIX}mount /proc: ENOMEM\nmore`)!;
  strictEqual(plain.message, "the guest init failed at mount /proc: ENOMEM");
  const vsock = initFailure(`${AGENT_BOOT_ERROR_PREFIX}vsock socket: EAFNOSUPPORT\r\n`)!;
  match(
    vsock.message,
    /^the guest init failed at vsock socket: EAFNOSUPPORT \(the kernel has no virtio-vsock: with --kernel, also pass --modules DIR/,
  );
});
