// L3q: the mailbox-mode initramfs (init/mailbox_mode.ts) booted by the Debian
// kernel under QEMU TCG with `rdinit=/skiff/mailbox-init`. QEMU has no skiff
// mailbox device, so the run ends at the mailbox's magic check — which is the
// point: the kernel ran the mailbox-mode init (not /init), the boot record
// was read, the modules loaded (virtio_console: the ports appeared and the
// init found them), the init opened /dev/mem and mapped the register page at
// 0xd000_0000, found no mailbox there, and reported that as a named step on
// the status port before powering off. No command ran: the boot record's
// command is a placeholder.
import { strictEqual } from "node:assert/strict";
import { hostTest } from "../tests/requirements.ts";
import { QemuProcess } from "../hv/qemu/process.ts";
import { assertKernel, readAll, testKernel } from "../hv/qemu/testing.ts";
import { defaultInitConfig } from "./config.ts";
import { MAILBOX_RDINIT, mailboxInitramfs } from "./mailbox_mode.ts";
import { GUEST_HANG_MS } from "../tests/waits.ts";

const kernel = await testKernel();
/** Bound on one guest run, only to catch a hang (a run takes seconds; more on a busy machine). */
const DEADLINE_MS = GUEST_HANG_MS;

hostTest("mailbox-mode init under QEMU: setup, ports, then the mailbox check (no device here)", [
  "kernel",
  "qemu",
], async () => {
  assertKernel(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-mbmode-q-" });
  let vm: QemuProcess | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const config = { ...defaultInitConfig(["sh", "-c", "echo must-not-run"]), rootTag: null };
    await Deno.writeFile(`${dir}/initrd`, await mailboxInitramfs(kernel, config));
    const p = config.ports;
    vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 256,
      kernel: kernel.bzImage!,
      initrd: `${dir}/initrd`,
      append: `console=ttyS0 panic=-1 ${MAILBOX_RDINIT}`,
      portNames: [p.stdin, p.stdout, p.stderr, p.status],
      console: true,
      fs: [],
      netSocket: null,
    });
    const consoleText = readAll(vm.console!);
    const read = (name: string) => readAll(vm!.ports.get(name)!);
    const work = Promise.all([read(p.stdout), read(p.status), vm.exited]);
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(new Error(`guest did not finish within ${DEADLINE_MS} ms`));
        vm?.stop(0);
      }, DEADLINE_MS);
    });
    let stdout: string, status: string;
    try {
      [stdout, status] = await Promise.race([work, deadline]);
    } catch (e) {
      await vm.stop(0);
      throw new Error(`${(e as Error).message}; console:\n${await consoleText}`);
    }
    const log = await consoleText;
    strictEqual(status, "error mailbox magic: ENODEV\n", `console:\n${log}`);
    strictEqual(stdout, "");
    strictEqual(log.includes("must-not-run"), false);
  } finally {
    clearTimeout(timer);
    await vm?.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
