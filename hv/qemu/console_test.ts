// L0: guestReady's four ends, over a scripted console and a stand-in QEMU.
import { rejects, strictEqual } from "node:assert/strict";
import { AGENT_READY_MARKER } from "../../init/agent/protocol.ts";
import { VmError } from "../errors.ts";
import { ConsoleWatch, guestReady } from "./console.ts";
import type { QemuProcess } from "./process.ts";

/** A console whose text arrives when `say` is called; `hangUp` is EOF. */
function scriptedConsole() {
  const chunks: (Uint8Array | null)[] = [];
  let wake: (() => void) | null = null;
  const push = (c: Uint8Array | null) => {
    chunks.push(c);
    wake?.();
  };
  const conn = {
    read: async (buf: Uint8Array) => {
      while (chunks.length === 0) await new Promise<void>((r) => wake = r);
      const c = chunks.shift()!;
      if (c === null) return null;
      buf.set(c);
      return c.length;
    },
  } as unknown as Deno.Conn;
  return {
    watch: new ConsoleWatch(conn),
    say: (text: string) => push(new TextEncoder().encode(text)),
    hangUp: () => push(null),
  };
}

/** A QEMU that exits when `exit` is called. */
function standInQemu() {
  let exit!: () => void;
  const exited = new Promise<Deno.CommandStatus>((r) =>
    exit = () => r({ success: false, code: 1, signal: null })
  );
  return { p: { exited, diagnostics: "no kernel" } as unknown as QemuProcess, exit };
}

Deno.test("guestReady: READY, QEMU's exit, the deadline and an abort each end the wait", async () => {
  {
    const c = scriptedConsole();
    const q = standInQemu();
    const waiting = guestReady(q.p, c.watch, 60_000);
    c.say(`booting\n${AGENT_READY_MARKER}\n`);
    await waiting;
    c.hangUp();
  }
  {
    const c = scriptedConsole();
    const q = standInQemu();
    const waiting = guestReady(q.p, c.watch, 60_000);
    q.exit();
    await rejects(
      waiting,
      (e) => e instanceof VmError && /QEMU exited .*no kernel/.test(e.message),
    );
    c.hangUp();
  }
  {
    const c = scriptedConsole();
    const q = standInQemu();
    c.say("still booting\n");
    await rejects(
      guestReady(q.p, c.watch, 10),
      (e) =>
        e instanceof VmError && /not ready after 0\.01 s; console:\nstill booting/.test(e.message),
    );
    c.hangUp();
  }
  {
    const c = scriptedConsole();
    const q = standInQemu();
    const ac = new AbortController();
    const waiting = guestReady(q.p, c.watch, 60_000, ac.signal);
    ac.abort(new Error("user stop"));
    await rejects(waiting, /user stop/);
    c.hangUp();
    await c.watch.closed;
    strictEqual(c.watch.tail(), "");
  }
});
