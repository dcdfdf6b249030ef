// L0: the typed QMP commands against a scripted QMP server on a Unix socket.
import { deepStrictEqual, match, ok, rejects, strictEqual } from "node:assert/strict";
import { QmpClient } from "./qmp.ts";
import { MigrationError, QmpError } from "./qmp_types.ts";

type Reply = Record<string, unknown>;

/**
 * A QMP server that greets, answers `qmp_capabilities`, and answers every
 * other command with `script(command, args)`: a reply (`{return}` or
 * `{error}`) plus events to send after it.
 */
async function withQmp(
  script: (
    cmd: string,
    args: Record<string, unknown> | undefined,
  ) => { reply: Reply; events?: Reply[] },
  fn: (qmp: QmpClient, seen: string[]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-qmptest-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/qmp.sock` });
  const seen: string[] = [];
  const server = (async () => {
    const conn = await listener.accept();
    const enc = new TextEncoder();
    const send = (o: unknown) => conn.write(enc.encode(JSON.stringify(o) + "\n"));
    await send({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 } }, capabilities: [] } });
    let buf = "";
    const dec = new TextDecoder();
    const chunk = new Uint8Array(4096);
    for (;;) {
      const n = await conn.read(chunk).catch(() => null);
      if (n === null) break;
      buf += dec.decode(chunk.subarray(0, n));
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        seen.push(msg.execute);
        if (msg.execute === "qmp_capabilities") {
          await send({ return: {}, id: msg.id });
          continue;
        }
        if (msg.execute === "hangup") {
          conn.close();
          return;
        }
        const { reply, events } = script(msg.execute, msg.arguments);
        await send({ ...reply, id: msg.id });
        for (const e of events ?? []) await send(e);
      }
    }
    conn.close();
  })();
  const qmp = new QmpClient(await Deno.connect({ transport: "unix", path: `${dir}/qmp.sock` }));
  try {
    deepStrictEqual(await qmp.handshake(), { major: 7, minor: 2, micro: 22 });
    await fn(qmp, seen);
  } finally {
    await qmp.close();
    await server;
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("QMP errors name the command, QEMU's class and message", async () => {
  await withQmp(
    () => ({ reply: { error: { class: "GenericError", desc: "Duplicate device ID 'fs0'" } } }),
    async (qmp) => {
      await rejects(
        qmp.deviceAdd("vhost-user-fs-pci", "fs0", { bus: "rp0" }),
        (e: Error) =>
          e instanceof QmpError && e.command === "device_add" && e.errorClass === "GenericError" &&
          e.qemuMessage === "Duplicate device ID 'fs0'" &&
          e.message === "QMP device_add failed: Duplicate device ID 'fs0'",
      );
    },
  );
});

Deno.test("waitMigration: events then completed; failed names QEMU's reason; no timer left", async () => {
  let status = "active";
  await withQmp((cmd, args) => {
    if (cmd === "migrate-set-capabilities") {
      deepStrictEqual(args, {
        capabilities: [
          { capability: "events", state: true },
          { capability: "x-ignore-shared", state: true },
        ],
      });
      return { reply: { return: {} } };
    }
    if (cmd === "migrate") {
      match(String(args?.uri), /^exec:cat > '\/tmp\/x y\/state'$/);
      return { reply: { return: {} } };
    }
    if (cmd === "query-migrate") {
      const reply = { return: { status } };
      if (status === "active") {
        // Completes right after this answer, announced by an event.
        status = "completed";
        return { reply, events: [{ event: "MIGRATION", data: { status: "completed" } }] };
      }
      if (status === "failed") return { reply: { return: { status, "error-desc": "disk full" } } };
      return { reply };
    }
    return { reply: { return: {} } };
  }, async (qmp) => {
    await qmp.setMigrationCapabilities({ events: true, "x-ignore-shared": true });
    strictEqual((await qmp.migrateToFile("/tmp/x y/state")).status, "completed");
    // Already over when the wait starts: one query, and the event waiter is cancelled.
    strictEqual((await qmp.waitMigration()).status, "completed");
    strictEqual(qmp.pendingWaits, 0);
    status = "failed";
    await rejects(
      qmp.waitMigration(),
      (e: Error) =>
        e instanceof MigrationError && e.status === "failed" &&
        e.message === "migration failed: disk full",
    );
  });
});

Deno.test("deviceDel waits for DEVICE_DELETED; a refusal leaves no waiter behind", async () => {
  await withQmp((cmd, args) => {
    if (cmd === "device_del" && args?.id === "fs0") {
      return {
        reply: { return: {} },
        events: [
          { event: "DEVICE_DELETED", data: { path: "/machine/peripheral/fs0/virtio-backend" } },
          { event: "DEVICE_DELETED", data: { device: "fs0", path: "/machine/peripheral/fs0" } },
        ],
      };
    }
    return {
      reply: { error: { class: "DeviceNotFound", desc: `Device '${args?.id}' not found` } },
    };
  }, async (qmp, seen) => {
    await qmp.deviceDel("fs0");
    await rejects(qmp.deviceDel("nope"), /QMP device_del failed: Device 'nope' not found/);
    strictEqual(qmp.pendingWaits, 0);
    deepStrictEqual(seen.slice(-2), ["device_del", "device_del"]);
  });
});

Deno.test("waitEvent rejects when QEMU goes away, on abort and on its bound", async () => {
  await withQmp(() => ({ reply: { return: {} } }), async (qmp) => {
    const ac = new AbortController();
    const aborted = qmp.waitEvent(() => true, "anything", { signal: ac.signal });
    ac.abort(new Error("stop waiting"));
    await rejects(aborted, /stop waiting/);
    await rejects(
      qmp.waitEvent(() => false, "nothing", { timeoutMs: 10 }),
      /no nothing within 10 ms/,
    );
    const gone = qmp.waitEvent(() => false, "SHUTDOWN");
    qmp.execute("hangup").catch(() => {});
    await rejects(gone, /QMP connection closed while waiting for SHUTDOWN/);
    ok(qmp.closed);
    await rejects(qmp.stop(), /QMP stop: connection closed/);
  });
});

Deno.test("execute: QEMU gone while the command is written is one rejection, none unhandled", async () => {
  // The reader sees the end (and fails the pending command) while the write is
  // still in flight; the write then fails too. Only the write's error may surface:
  // an unhandled rejection here fails the test module.
  let writing!: () => void;
  const writeStarted = new Promise<void>((r) => writing = r);
  const client: { qmp?: QmpClient } = {};
  const conn = {
    read: async () => {
      await writeStarted;
      return null;
    },
    write: async () => {
      writing();
      await client.qmp!.ended;
      throw new Error("broken pipe");
    },
    close: () => {},
  } as unknown as Deno.Conn;
  const qmp = client.qmp = new QmpClient(conn);
  await rejects(qmp.execute("query-status"), /QMP query-status: write failed: broken pipe/);
  // A turn of the event loop, in which a stray rejection would be reported (no timing involved).
  await new Promise((r) => setTimeout(r, 0));
});
