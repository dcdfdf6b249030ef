import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  decodeRecord,
  encodeRecord,
  netmaskOf,
  REC,
  RecordError,
  type RecordSpec,
  SHARE,
} from "./record.ts";
import { defaultInitConfig, parseStatusLine, recordFor } from "./config.ts";
import { RECORD_MAGIC } from "./codegen/mod.ts";

const SPEC: RecordSpec = {
  rootTag: "root",
  hostname: "skiff",
  shares: [
    { tag: "data", guestPath: "/data", readOnly: true, fsType: "virtiofs" },
    { tag: "w", guestPath: "/work/dir", readOnly: false, fsType: "virtiofs" },
  ],
  modules: ["/lib/modules/x/virtio.ko", "/lib/modules/x/virtio_mmio.ko"],
  ports: { stdin: "a", stdout: "b", stderr: "b", status: "s" },
  argv: ["sh", "-c", "echo ü"],
  env: ["PATH=/bin", "X="],
  cwd: "/work",
  path: "/bin",
  net: {
    address: "10.42.0.2",
    prefixLength: 24,
    gateway: "10.42.0.1",
    resolvConf: "nameserver 10.42.0.1\n",
    hosts: "127.0.0.1 localhost\n",
  },
};

Deno.test("record: encode/decode round trip, header and relocation table", () => {
  const b = encodeRecord(SPEC);
  deepStrictEqual(decodeRecord(b), SPEC);
  const withUser = { ...SPEC, user: { uid: 1000, gid: 100, groups: [100, 27, 4000000000] } };
  deepStrictEqual(decodeRecord(encodeRecord(withUser)), withUser);
  const d = new DataView(b.buffer);
  strictEqual(d.getBigUint64(REC.MAGIC, true), RECORD_MAGIC);
  strictEqual(d.getUint32(REC.VERSION, true), 1);
  strictEqual(d.getUint32(REC.SIZE, true), b.length);
  strictEqual(b.length % 8, 0);
  // Every relocated slot lies inside the record (what the init's relocate checks)
  // and points inside it; the NULL terminators of argv/envp are not relocated.
  const n = d.getUint32(REC.NRELOCS, true);
  const table = d.getUint32(REC.RELOCS, true);
  ok(table + 4 * n <= b.length);
  for (let i = 0; i < n; i++) {
    const slot = d.getUint32(table + 4 * i, true);
    ok(slot + 8 <= b.length, `slot ${slot}`);
    const target = Number(d.getBigUint64(slot, true));
    ok(target > 0 && target < b.length, `target ${target}`);
  }
  // 2 shares × 3 pointers, 2 modules, 3 argv, 2 env and the header's pointers.
  strictEqual(n, 6 + 2 + 3 + 2 + 14);
  strictEqual(Number(d.getBigUint64(REC.NSHARES, true)), 2);
  const shares = Number(d.getBigUint64(REC.SHARES, true));
  strictEqual(d.getBigUint64(shares + SHARE.MOUNT_FLAGS, true), 1n);
  // Network byte order in memory: 10.42.0.2 is the bytes 10, 42, 0, 2.
  deepStrictEqual([...b.subarray(REC.NET_ADDRESS, REC.NET_ADDRESS + 4)], [10, 42, 0, 2]);
  deepStrictEqual([...b.subarray(REC.NET_NETMASK, REC.NET_NETMASK + 4)], [255, 255, 255, 0]);
});

Deno.test("record: no root, no net, no shares", () => {
  const spec = { ...SPEC, rootTag: null, net: null, shares: [] };
  const b = encodeRecord(spec);
  const back = decodeRecord(b);
  strictEqual(back.rootTag, null);
  strictEqual(back.net, null);
  deepStrictEqual(back.shares, []);
  strictEqual(new DataView(b.buffer).getBigUint64(REC.ROOT_TAG, true), 0n);
});

Deno.test("record: bad input is refused with the field named", () => {
  const bad: [Partial<RecordSpec>, RegExp][] = [
    [{ argv: [] }, /argv is empty/],
    [{ argv: [""] }, /argv\[0\] is empty/],
    [{ env: ["NOEQUALS"] }, /without '='/],
    [{ cwd: "rel" }, /cwd must be absolute/],
    [{ rootTag: "" }, /root tag is empty/],
    [{ hostname: "" }, /bad hostname/],
    [{ argv: ["a\0b"] }, /argv\[0\] contains a NUL/],
    [{ shares: [{ tag: "t", guestPath: "x", readOnly: false }] }, /must be absolute/],
    [{ net: { ...SPEC.net!, prefixLength: 33 } }, /bad prefix length 33/],
    [{ net: { ...SPEC.net!, address: "10.0.0" } }, /bad IPv4 address/],
  ];
  for (const [patch, re] of bad) {
    throws(() => encodeRecord({ ...SPEC, ...patch }), re);
  }
  throws(() => decodeRecord(new Uint8Array(8)), RecordError);
  const b = encodeRecord(SPEC);
  b[8] = 9;
  throws(() => decodeRecord(b), /unsupported record version 9/);
});

Deno.test("record: netmaskOf", () => {
  deepStrictEqual([0, 8, 24, 30, 32].map(netmaskOf), [
    "0.0.0.0",
    "255.0.0.0",
    "255.255.255.0",
    "255.255.255.252",
    "255.255.255.255",
  ]);
});

Deno.test("config: recordFor takes PATH from the environment, default hosts with the name", () => {
  const c = defaultInitConfig(["ls"]);
  c.command.env = ["A=1", "PATH=/opt/bin:/bin"];
  c.net = { address: "10.42.0.2", prefixLength: 24, gateway: "10.42.0.1", dns: "10.42.0.1" };
  c.hostname = "box";
  const r = decodeRecord(recordFor(c, ["/m.ko"]));
  strictEqual(r.path, "/opt/bin:/bin");
  strictEqual(r.net!.resolvConf, "nameserver 10.42.0.1\n");
  ok(r.net!.hosts.includes("10.42.0.2\tbox\n"));
  deepStrictEqual(r.modules, ["/m.ko"]);
  c.command.env = [];
  strictEqual(decodeRecord(recordFor(c, [])).path.split(":").includes("/usr/bin"), true);
});

Deno.test("parseStatusLine: exit, signal, error; junk refused", () => {
  deepStrictEqual(parseStatusLine("exit 0\n"), { kind: "exited", code: 0 });
  deepStrictEqual(parseStatusLine("exit 255"), { kind: "exited", code: 255 });
  deepStrictEqual(parseStatusLine("signal 15\n"), { kind: "signaled", signal: 15 });
  deepStrictEqual(parseStatusLine("error mount share a at /x: ENODEV\n"), {
    kind: "error",
    step: "mount share a at /x",
    errno: "ENODEV",
  });
  deepStrictEqual(parseStatusLine("error find port status: errno-200"), {
    kind: "error",
    step: "find port status",
    errno: "errno-200",
  });
  for (const bad of ["", "exit", "exit -1", "exit 1 2", "signal x", "error : EIO", "hello"]) {
    throws(() => parseStatusLine(bad), /bad init status line/);
  }
});
