// L3q: snapshots and hot-plug of the q35 machine with the Debian kernel under
// QEMU TCG. A busybox guest (hv/qemu/testing.ts hotplugTestInitramfs) boots to
// its ready line; it is captured with no device plugged, continues, and gets
// skiff's FUSE server hot-plugged as vhost-user-fs-pci; then the entry is
// restored in new QEMUs (and in a new Deno process), side by side, and
// corrupted. Every wait ends on a condition (console text, QMP event, process
// exit) with an overall bound that only catches hangs.
import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { createHash } from "node:crypto";
import { hostTest } from "../../tests/requirements.ts";
import { bootCached } from "../../snapshot/boot_cached.ts";
import { SnapshotCache } from "../../snapshot/cache.ts";
import { SnapshotError } from "../../snapshot/errors.ts";
import {
  encodeQemuManifest,
  QEMU_MANIFEST,
  QEMU_RAM_FILE,
  QEMU_STATE_FILE,
  readQemuEntry,
} from "../../snapshot/qemu_entry.ts";
import { copySparse } from "../../snapshot/sparse_copy.ts";
import { HotplugError, plugNet, plugVirtioFs, plugVsock } from "./hotplug.ts";
import { captureQemu, QemuCaptureError, restoreQemu } from "./persist.ts";
import { QemuRamDir } from "./ram_dir.ts";
import { QemuProcess } from "./process.ts";
import { hotplugTestInitramfs, ShellConsole, TEST_READY_LINE, testKernel } from "./testing.ts";
import {
  plugMountRead,
  processesWith,
  serveShare,
  testLaunch,
  umountUnplug,
} from "./testdata/snapshot_guest.ts";

const kernel = await testKernel();

/** hostTest for a test that needs QEMU and the cached kernel (ignored, with the reason, without). */
function qemuTest(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  hostTest(name, ["qemu", "kernel"], fn);
}

/** SHA-256 of a file, to show that restores leave the cached entry alone. */
function sha(path: string): string {
  return createHash("sha256").update(Deno.readFileSync(path)).digest("hex");
}

const READY = new RegExp(TEST_READY_LINE);

qemuTest(
  "qemu snapshot: capture, hot-plug, restore (side by side, new process), corrupt entries",
  async (t) => {
    const k = kernel as Exclude<typeof kernel, string>;
    const dir = await Deno.makeTempDir({ prefix: "skiff-qsnap-" });
    const share = await Deno.makeTempDir({ prefix: "skiff-qsnap-share-" });
    const ramDirs: QemuRamDir[] = [];
    const ramDir = () => {
      const r = QemuRamDir.create();
      ramDirs.push(r);
      return r;
    };
    try {
      await Deno.writeTextFile(`${share}/hello`, "hello from the host\n");
      const initrd = `${dir}/initrd.gz`;
      await Deno.writeFile(initrd, await hotplugTestInitramfs(k));
      const entry = `${dir}/entry`;
      const launch = (sockDir: string, ram: QemuRamDir) =>
        testLaunch(k, initrd, sockDir, ram.ramFile);
      const sockDir = async (name: string) => {
        const d = `${dir}/${name}`;
        await Deno.mkdir(d);
        return d;
      };

      await t.step("cold boot → capture → cont → hot-plug virtio-fs → mount → read", async () => {
        const ram = ramDir();
        const sd = await sockDir("cold");
        const vm = await QemuProcess.start(launch(sd, ram));
        try {
          const con = new ShellConsole(vm.console!);
          await con.waitFor(READY);
          strictEqual((await con.run("echo before-capture > /tmp/mark")).code, 0);
          const cap = await captureQemu(vm, entry, { source: { test: "qsnap" } });
          ok(cap.stateBytes > 1000 && cap.stateBytes < 4 << 20, `state ${cap.stateBytes} bytes`);
          ok(cap.ramDataBytes > 1 << 20, `ram data ${cap.ramDataBytes} bytes`);
          strictEqual((await vm.qmp.status()).status, "postmigrate");
          await vm.qmp.cont();
          strictEqual(await cap.published, "published");
          // The staging copy is gone once published; only the RAM file stays.
          deepStrictEqual([...Deno.readDirSync(ram.dir)].map((e) => e.name), ["ram"]);
          const e = readQemuEntry(entry, { verifyRam: true });
          strictEqual(e.manifest.source.engine, "qemu");

          await using server = serveShare(`${sd}/fs.sock`, share);
          const r = await plugMountRead(vm, con, {
            id: "fs0",
            socketPath: `${sd}/fs.sock`,
            tag: "share0",
            file: "hello",
          });
          strictEqual(r.out, "hello from the host", `console:\n${con.text.slice(-2000)}`);
          strictEqual(r.device.port.id, "rp0");
          // The guest writes through the share too.
          strictEqual((await con.run("echo from-guest > /mnt/share0/written")).code, 0);
          strictEqual(await Deno.readTextFile(`${share}/written`), "from-guest\n");
          // No capture with a vhost-user device in a port.
          await rejects(captureQemu(vm, `${dir}/never`), QemuCaptureError);
          await umountUnplug(con, r.device, "share0");
          strictEqual(vm.slots.free, 4);
          ok(server.backend.counts.get("SET_MEM_TABLE")! >= 1);
        } finally {
          await vm.stop();
        }
      });

      await t.step(
        "hot-plug refusals are HotplugErrors naming QEMU's reason; the port is freed",
        async () => {
          const ram = ramDir();
          const sd = await sockDir("refusals");
          const vm = await restoreQemu(entry, launch(sd, ram));
          try {
            await vm.qmp.cont();
            const con = new ShellConsole(vm.console!);
            await rejects(
              plugVirtioFs(vm, { id: "fs9", socketPath: `${sd}/nobody.sock`, tag: "x" }),
              (e: Error) =>
                e instanceof HotplugError &&
                /^QEMU refused chardev-add of 'fs9-chr' .* into root port rp0: .*No such file or directory/
                  .test(e.message),
            );
            // A socket that hangs up on QEMU's first message: no vhost-user back-end
            // behind it, so QEMU refuses the device and the plug is rolled back.
            const dummy = Deno.listen({ transport: "unix", path: `${sd}/vsock.sock` });
            const hangUp = (async () => {
              for await (const c of dummy) c.close();
            })();
            try {
              await rejects(
                plugVsock(vm, { id: "vsock0", socketPath: `${sd}/vsock.sock` }),
                (e: Error) =>
                  e instanceof HotplugError &&
                  /^QEMU refused (device_add|chardev-add)/.test(e.message),
              );
            } finally {
              dummy.close();
              await hangUp.catch(() => {});
            }
            strictEqual(vm.slots.free, 4, "refused plugs free their port");
            // The chardev of the refused plug was removed: the same id plugs now.
            await using _server = serveShare(`${sd}/fs.sock`, share);
            const r = await plugMountRead(vm, con, {
              id: "fs9",
              socketPath: `${sd}/fs.sock`,
              tag: "again",
              file: "hello",
            });
            strictEqual(r.out, "hello from the host");

            // virtio-net over a stream netdev: the guest's frames reach the socket.
            const listener = Deno.listen({ transport: "unix", path: `${sd}/net.sock` });
            try {
              const accepted = listener.accept();
              const nic = await plugNet(vm, {
                id: "net0",
                backend: { type: "stream", socketPath: `${sd}/net.sock` },
                mac: "52:54:00:12:34:56",
              });
              const conn = await accepted;
              try {
                const up = await con.run(
                  "i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 3000 ]; do usleep 10000; i=$((i+1)); done; " +
                    "cat /sys/class/net/eth0/address; busybox ip link set eth0 up && " +
                    "busybox ip addr add 10.0.2.15/24 dev eth0 && busybox arping -c 1 -w 1 10.0.2.2",
                );
                match(up.out, /^52:54:00:12:34:56\n/, up.out);
                // -netdev stream frames: a 4-byte big-endian length, then the Ethernet frame.
                const buf = new Uint8Array(4096);
                const n = (await conn.read(buf)) ?? 0;
                ok(n >= 4 + 14, `read ${n} bytes`);
                const len = new DataView(buf.buffer).getUint32(0);
                ok(len >= 14 && len <= 1514, `frame length ${len}`);
                deepStrictEqual([...buf.subarray(4 + 6, 4 + 12)], [
                  0x52,
                  0x54,
                  0x00,
                  0x12,
                  0x34,
                  0x56,
                ]);
                await nic.unplug();
              } finally {
                conn.close();
              }
            } finally {
              listener.close();
            }
            await umountUnplug(con, r.device, "again");
            strictEqual(vm.slots.free, 4);
          } finally {
            await vm.stop();
          }
        },
      );

      const before = {
        ram: sha(`${entry}/${QEMU_RAM_FILE}`),
        state: sha(`${entry}/${QEMU_STATE_FILE}`),
      };

      await t.step(
        "restore in a new QEMU → hot-plug → mount → read; capture it again",
        async () => {
          const ram = ramDir();
          const sd = await sockDir("restore");
          const timings: Record<string, number> = {};
          const vm = await restoreQemu(entry, { ...launch(sd, ram), timings });
          try {
            // The RAM copy ends before the device state loads (a post-load may read RAM).
            deepStrictEqual(Object.keys(timings), ["start", "copy", "load"]);
            strictEqual((await vm.qmp.status()).status, "paused");
            const con = new ShellConsole(vm.console!);
            await using server = serveShare(`${sd}/fs.sock`, share);
            // Plugged while paused (the vhost-user handshake happens then), then cont.
            const r = await plugMountRead(vm, con, {
              id: "fs0",
              socketPath: `${sd}/fs.sock`,
              tag: "restored",
              file: "hello",
              cont: true,
            });
            strictEqual(r.out, "hello from the host", `console:\n${con.text.slice(-2000)}`);
            strictEqual((await con.run("cat /tmp/mark")).out.trim(), "before-capture");
            // A restored VM is captured again (devices out first) and that restores too.
            strictEqual((await con.run("echo after-restore > /tmp/mark2")).code, 0);
            await umountUnplug(con, r.device, "restored");
            const again = `${dir}/entry-again`;
            const cap = await captureQemu(vm, again);
            strictEqual(await cap.published, "published");
            await vm.stop();
            const ram2 = ramDir();
            const vm2 = await restoreQemu(again, launch(await sockDir("restore-again"), ram2));
            try {
              await vm2.qmp.cont();
              const con2 = new ShellConsole(vm2.console!);
              strictEqual(
                (await con2.run("cat /tmp/mark /tmp/mark2")).out.trim(),
                "before-capture\nafter-restore",
              );
            } finally {
              await vm2.stop();
            }
            void server;
          } finally {
            await vm.stop();
          }
        },
      );

      await t.step("two restores side by side, each with its own RAM", async () => {
        const started = await Promise.all(["a", "b"].map(async (name) => {
          const ram = ramDir();
          const sd = await sockDir(`side-${name}`);
          const vm = await restoreQemu(entry, launch(sd, ram));
          return { name, ram, sd, vm, con: new ShellConsole(vm.console!) };
        }));
        const servers = started.map((s) => serveShare(`${s.sd}/fs.sock`, share));
        try {
          await Promise.all(started.map((s) => s.vm.qmp.cont()));
          for (const s of started) {
            strictEqual((await s.con.run(`echo ${s.name} > /tmp/mark`)).code, 0);
          }
          for (const s of started) {
            strictEqual((await s.con.run("cat /tmp/mark")).out.trim(), s.name);
            const r = await plugMountRead(s.vm, s.con, {
              id: "fs0",
              socketPath: `${s.sd}/fs.sock`,
              tag: `side${s.name}`,
              file: "hello",
            });
            strictEqual(r.out, "hello from the host");
          }
          // Two separate RAM files; neither is the cached one.
          strictEqual(new Set(started.map((s) => s.ram.ramFile)).size, 2);
        } finally {
          for (const s of started) await s.vm.stop();
          for (const s of servers) await s.close();
        }
      });

      await t.step("restore in a new Deno process", async () => {
        const child = new URL("./testdata/restore_child.ts", import.meta.url).pathname;
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", child, entry, share, initrd],
          stdout: "piped",
          stderr: "piped",
        }).output();
        const stderr = new TextDecoder().decode(out.stderr);
        strictEqual(out.code, 0, stderr);
        const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
        deepStrictEqual({ hello: r.hello, mark: r.mark }, {
          hello: "hello from the host",
          mark: "before-capture",
        });
        // The child's QEMU is gone with it.
        let alive = true;
        try {
          Deno.statSync(`/proc/${r.pid}`);
        } catch {
          alive = false;
        }
        strictEqual(alive, false, `the child's QEMU (pid ${r.pid}) is still running`);
      });

      await t.step("the cached entry is unchanged after the restores", () => {
        deepStrictEqual(
          { ram: sha(`${entry}/${QEMU_RAM_FILE}`), state: sha(`${entry}/${QEMU_STATE_FILE}`) },
          before,
        );
        readQemuEntry(entry, { verifyRam: true });
      });

      await t.step("corrupt entries are SnapshotErrors and leave nothing running", async () => {
        /** A fresh copy of the good entry to damage. */
        const copyEntry = (name: string) => {
          const d = `${dir}/${name}`;
          Deno.mkdirSync(d);
          copySparse(`${entry}/${QEMU_RAM_FILE}`, `${d}/${QEMU_RAM_FILE}`);
          Deno.copyFileSync(`${entry}/${QEMU_STATE_FILE}`, `${d}/${QEMU_STATE_FILE}`);
          Deno.copyFileSync(`${entry}/${QEMU_MANIFEST}`, `${d}/${QEMU_MANIFEST}`);
          return d;
        };
        const attempt = async (bad: string, over: Record<string, unknown> = {}) => {
          const ram = ramDir();
          const sd = await sockDir(`corrupt-${bad.split("/").at(-1)}`);
          let err: unknown = null;
          try {
            const vm = await restoreQemu(bad, { ...launch(sd, ram), ...over });
            await vm.stop();
          } catch (e) {
            err = e;
          }
          ok(err instanceof SnapshotError, `expected a SnapshotError, got ${err}`);
          // Nothing left: no QEMU on this RAM path, no RAM copy, no sockets.
          deepStrictEqual(processesWith(ram.ramFile), []);
          deepStrictEqual([...Deno.readDirSync(ram.dir)], []);
          deepStrictEqual([...Deno.readDirSync(sd)], []);
          return err as SnapshotError;
        };

        const truncated = copyEntry("truncated");
        Deno.truncateSync(`${truncated}/${QEMU_RAM_FILE}`, 1 << 20);
        const e1 = await attempt(truncated);
        strictEqual(e1.problem, "truncated");
        match(e1.message, /ram is 1048576 bytes/);

        const garbage = copyEntry("garbage");
        const size = Deno.statSync(`${garbage}/${QEMU_STATE_FILE}`).size;
        const noise = new Uint8Array(size);
        for (let i = 0; i < size; i += 65536) crypto.getRandomValues(noise.subarray(i, i + 65536));
        Deno.writeFileSync(`${garbage}/${QEMU_STATE_FILE}`, noise);
        const e2 = await attempt(garbage);
        strictEqual(e2.problem, "corrupt");
        match(e2.message, /state digest/);

        // Garbage that the manifest vouches for: QEMU itself refuses it and exits.
        const vouched = copyEntry("vouched");
        Deno.writeFileSync(`${vouched}/${QEMU_STATE_FILE}`, noise);
        const good = readQemuEntry(entry).manifest;
        Deno.writeTextFileSync(
          `${vouched}/${QEMU_MANIFEST}`,
          encodeQemuManifest({
            ...good,
            state: {
              size,
              digest: `sha256:${createHash("sha256").update(noise).digest("hex")}`,
            },
          }),
        );
        const e3 = await attempt(vouched);
        strictEqual(e3.problem, "corrupt");
        match(e3.message, /QEMU could not load the state: .*Not a migration stream/);

        // Another machine (memory size) is refused before QEMU starts.
        const e4 = await attempt(copyEntry("other-machine"), { memoryMiB: 512 });
        strictEqual(e4.problem, "mismatch");
        match(
          e4.message,
          /the machine differs from the snapshot's \(argument \d+: snapshot has "256M", this VM "512M"\)/,
        );

        // Through the cache: reported in one line, deleted, booted and rebuilt.
        const warnings: string[] = [];
        const cache = new SnapshotCache(`${dir}/cache`, { warn: (w) => warnings.push(w) });
        const key = "f".repeat(64);
        Deno.mkdirSync(cache.root);
        Deno.renameSync(vouched, cache.pathOf(key));
        const log: string[] = [];
        const r = await bootCached({
          cache,
          key,
          read: readQemuEntry,
          warn: (w) => warnings.push(w),
          restore: async (e) => {
            log.push("restore");
            const ram = ramDir();
            return await restoreQemu(e, launch(await sockDir("cache-restore"), ram));
          },
          boot: () => {
            log.push("boot");
            return Promise.resolve(null);
          },
          capture: (_vm, d) => {
            log.push("capture");
            Deno.mkdirSync(d);
            for (const f of [QEMU_MANIFEST, QEMU_STATE_FILE]) {
              Deno.copyFileSync(`${entry}/${f}`, `${d}/${f}`);
            }
            copySparse(`${entry}/${QEMU_RAM_FILE}`, `${d}/${QEMU_RAM_FILE}`);
            return Promise.resolve();
          },
        });
        deepStrictEqual(log, ["restore", "boot", "capture"]);
        deepStrictEqual({ from: r.from, captured: r.captured }, { from: "boot", captured: true });
        strictEqual(warnings.length, 1, warnings.join("\n"));
        ok(!warnings[0].includes("\n"), warnings[0]);
        match(
          warnings[0],
          /QEMU could not load the state: .*; deleted it, booting without the snapshot$/,
        );
        readQemuEntry(cache.pathOf(key), { verifyRam: true });
      });
    } finally {
      for (const r of ramDirs) r.remove();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(share, { recursive: true });
    }
    // Nothing left behind: no QEMU of this test, no RAM directory.
    deepStrictEqual(processesWith(dir), []);
    for (const r of ramDirs) {
      let exists = true;
      try {
        Deno.statSync(r.dir);
      } catch {
        exists = false;
      }
      strictEqual(exists, false, `${r.dir} is left behind`);
    }
  },
);
