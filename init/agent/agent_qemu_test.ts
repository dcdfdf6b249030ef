// L3q: the agent's initramfs booted by the Debian kernel under QEMU TCG.
// There is no vsock device (this host has no /dev/vhost-vsock, and the
// vhost-user vsock back-end is another piece of work), which is the case this
// proves: with vsock.ko and the virtio transport loaded but no device, the
// agent binds and listens on its vsock port and says READY — what the qemu
// engine needs, since it hot-plugs the vsock device after READY. The modules
// (virtio_pci on a machine without PCI included) load, or the agent would
// report the failing step instead. A bad boot record shows that failure path.
import { match, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { QemuProcess } from "../../hv/qemu/process.ts";
import { testKernel } from "../../hv/qemu/testing.ts";
import { agentInitramfs } from "./initramfs.ts";
import { AGENT_BOOT_ERROR_PREFIX, AGENT_BOOT_PATH, AGENT_READY_MARKER } from "./protocol.ts";
import { encodeBootRecord } from "./wire.ts";
import { type CpioEntry, gzip, writeCpio } from "../cpio.ts";

const kernel = await testKernel();
/** Hang guard only (boot ≈ 3 s; TCG on a loaded 2-core host is slower). */
const DEADLINE_MS = 120_000;

/** Boots the agent initramfs; resolves with the console text once `done(text)` holds. */
async function boot(
  done: (text: string) => boolean,
  append: CpioEntry[] = [],
): Promise<{ console: string; exited: boolean }> {
  if (typeof kernel === "string") throw new Error(kernel);
  const dir = await Deno.makeTempDir({ prefix: "skiff-agent-q-" });
  let vm: QemuProcess | null = null;
  try {
    const initrd = await agentInitramfs(kernel);
    // A further archive replaces files of earlier ones (init/initramfs.c opens with O_TRUNC).
    const more = append.length ? await gzip(writeCpio(append)) : new Uint8Array(0);
    await Deno.writeFile(`${dir}/initrd`, new Uint8Array([...initrd, ...more]));
    vm = await QemuProcess.start({
      dir,
      accel: "tcg",
      cpus: 1,
      memoryMiB: 256,
      kernel: kernel.bzImage!,
      initrd: `${dir}/initrd`,
      append: "console=ttyS0 quiet panic=-1",
      portNames: [],
      console: true,
      fs: [],
      netSocket: null,
    });
    const signal = AbortSignal.timeout(DEADLINE_MS);
    let text = "";
    let ended = false;
    const dec = new TextDecoder();
    const buf = new Uint8Array(65536);
    const onAbort = () => vm?.console?.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      while (!done(text)) {
        const n = await vm.console!.read(buf).catch(() => null);
        if (n === null) {
          ended = !signal.aborted;
          break;
        }
        text += dec.decode(buf.subarray(0, n), { stream: true });
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
    if (signal.aborted) throw new Error(`guest hung; console:\n${text}`);
    // The console closes as QEMU exits: then its exit is the next thing to happen.
    const exited = ended ? (await vm.exited, true) : false;
    return { console: text, exited };
  } finally {
    await vm?.stop(0);
    await Deno.remove(dir, { recursive: true });
  }
}

hostTest("agent under QEMU: modules load and it listens on vsock before any vsock device exists", [
  "qemu",
  "kernel",
], async () => {
  const r = await boot((t) =>
    t.includes(AGENT_READY_MARKER) || t.includes(AGENT_BOOT_ERROR_PREFIX)
  );
  ok(r.console.includes(AGENT_READY_MARKER), `no READY; console:\n${r.console}`);
  strictEqual(r.console.includes(AGENT_BOOT_ERROR_PREFIX), false, r.console);
  strictEqual(r.exited, false);
});

hostTest("agent under QEMU: a boot failure names the step on the console and powers off", [
  "qemu",
  "kernel",
], async () => {
  const bad: CpioEntry = {
    kind: "file",
    path: AGENT_BOOT_PATH.slice(1),
    data: encodeBootRecord(["/lib/modules/skiff-missing.ko"]),
    mode: 0o644,
  };
  // Read to the end: the guest powers off, QEMU (-no-reboot) exits, the console closes.
  const r = await boot(() => false, [bad]);
  match(
    r.console,
    new RegExp(`${AGENT_BOOT_ERROR_PREFIX}open module /lib/modules/skiff-missing\\.ko: ENOENT`),
  );
  strictEqual(r.console.includes(AGENT_READY_MARKER), false);
  ok(r.exited, "QEMU exited by itself (the guest powered off)");
});
