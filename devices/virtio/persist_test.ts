/**
 * L0: the virtio devices' saved states (console, net, fs) round-trip through
 * JSON and are checked field by field: a bad one is a StateError naming it.
 * The transport's state is in mmio_shared_test.ts.
 */

import { deepStrictEqual, ok, throws } from "node:assert/strict";
import { StateError } from "../../hv/state.ts";
import { FileSystem } from "../fuse/filesystem.ts";
import { FuseServer } from "../fuse/server.ts";
import { PORT_NAMES, VirtioConsole } from "./console/device.ts";
import { parseConsoleState } from "./console/persist.ts";
import { VirtioFs } from "./fs/device.ts";
import { parseVirtioFsState } from "./fs/persist.ts";
import { VirtioNet } from "./net/device.ts";
import { parseNetState } from "./net/persist.ts";

const json = <T>(v: T): unknown => JSON.parse(JSON.stringify(v));

Deno.test("console persist: pending bytes and port state round-trip; bad fields named", () => {
  const c = new VirtioConsole({ portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout] });
  c.port(PORT_NAMES.stdin).send(new TextEncoder().encode("kept"));
  c.resize({ columns: 120, rows: 40 });
  const saved = c.save();
  const c2 = new VirtioConsole({ portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout] });
  c2.restore(json(saved));
  deepStrictEqual(c2.save(), saved);
  deepStrictEqual(parseConsoleState(json(saved), 3), saved);
  throws(
    () => c2.restore({ ...saved, ports: saved.ports.slice(1) }),
    (e) => e instanceof StateError && e.path === "$.ports" && /expected 3 elements/.test(e.message),
  );
  const bad = structuredClone(saved);
  (bad.ports[1] as unknown as Record<string, unknown>).guestOpen = "yes";
  throws(
    () => c2.restore(bad),
    (e) => e instanceof StateError && e.path === "$.ports[1].guestOpen",
  );
  throws(
    () => c2.restore({ ...saved, size: { columns: 1 << 20, rows: 1 } }),
    (e) => e instanceof StateError && e.path === "$.size.columns",
  );
});

Deno.test("virtio-net persist: link state round-trips; bad fields named", () => {
  const n = new VirtioNet({ mac: new Uint8Array(6) });
  n.setLink(false);
  const saved = n.save();
  const n2 = new VirtioNet({ mac: new Uint8Array(6) });
  n2.restore(json(saved));
  deepStrictEqual(n2.save(), saved);
  deepStrictEqual(parseNetState(json(saved)), saved);
  throws(() => n2.restore({}), (e) => e instanceof StateError && e.path === "$.linkUp");
});

Deno.test("virtio-fs persist: the server state's shape is checked before the server sees it", () => {
  const fs = new VirtioFs({ tag: "t", server: new FuseServer(new FileSystem()) });
  const saved = fs.save();
  ok(parseVirtioFsState(json(saved)).server);
  throws(
    () => fs.restore({ server: null }),
    (e) => e instanceof StateError && e.path === "$.server",
  );
  throws(
    () => fs.restore({ server: { ...saved.server, version: 2 } }),
    (e) => e instanceof StateError && e.path === "$.server.version",
  );
  throws(
    () => fs.restore({ server: { version: 1, proto: { major: 7 }, fs: null } }),
    (e) => e instanceof StateError && e.path === "$.server.proto.minor",
  );
});
