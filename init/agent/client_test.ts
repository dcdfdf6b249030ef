// The agent client against a scripted in-memory transport: limits and typed
// errors that need no agent (the native agent's tests are agent_test.ts).
import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { SkiffError } from "../../hv/errors.ts";
import { AgentClient, READ_FILE_DEFAULT_MAX_BYTES } from "./client.ts";
import {
  AgentError,
  AgentProtocolError,
  AgentRequestError,
  AgentStepError,
  FileTooLargeError,
} from "./errors.ts";
import type { AgentConnection, AgentListener, AgentTransport } from "./transport.ts";

const enc = new TextEncoder();

/** One connection whose guest side is `source`: it serves the reply (pulled on demand). */
class FakeConnection implements AgentConnection {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  closed = false;
  served = 0;
  constructor(source: (served: number) => Uint8Array | null) {
    this.readable = new ReadableStream<Uint8Array>({
      pull: (c) => {
        const chunk = this.closed ? null : source(this.served);
        if (chunk === null) return c.close();
        this.served += chunk.length;
        c.enqueue(chunk);
      },
    }, { highWaterMark: 0 });
    this.writable = new WritableStream<Uint8Array>();
  }
  closeWrite(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {
    this.closed = true;
  }
}

/** Hands out one scripted connection per `connect`; refuses `listen`. */
class FakeTransport implements AgentTransport {
  connections: FakeConnection[] = [];
  constructor(readonly script: (served: number) => Uint8Array | null) {}
  connect(): Promise<AgentConnection> {
    const c = new FakeConnection(this.script);
    this.connections.push(c);
    return Promise.resolve(c);
  }
  listen(): Promise<AgentListener> {
    return Promise.reject(new Error("the fake transport does not listen"));
  }
}

/** A reply line, then `data` in 64 KiB chunks (`total` bytes; Infinity: endless). */
function replyThen(line: string, total: number): (served: number) => Uint8Array | null {
  const head = enc.encode(`${line}\n`);
  return (served) => {
    if (served === 0) return head;
    const left = total - (served - head.length);
    return left > 0 ? new Uint8Array(Math.min(left, 1 << 16)) : null;
  };
}

Deno.test("client: readFile of an endless file stops at maxBytes and closes the connection", async () => {
  const t = new FakeTransport(replyThen("ok", Infinity));
  const a = new AgentClient(t);
  await rejects(a.readFile("/dev/zero", { maxBytes: 1 << 20 }), (err: unknown) => {
    ok(err instanceof FileTooLargeError && err instanceof SkiffError);
    strictEqual(err.message, "read /dev/zero: the file is larger than maxBytes (1048576 bytes)");
    deepStrictEqual([err.path, err.maxBytes], ["/dev/zero", 1 << 20]);
    return true;
  });
  for (const c of t.connections) {
    ok(c.closed, "the connection is released");
    ok(c.served <= (1 << 20) + 3 + 2 * (1 << 16), `read on after the limit: ${c.served}`);
  }
});

Deno.test("client: readFile refuses an announced size over maxBytes without reading it", async () => {
  const t = new FakeTransport(replyThen("ok 5000000", 5_000_000));
  const a = new AgentClient(t);
  await rejects(
    a.readFile("/big", { maxBytes: 1000 }),
    (e: unknown) =>
      e instanceof FileTooLargeError &&
      e.message === "read /big: the file is larger than maxBytes (5000000 > 1000 bytes)",
  );
  ok(t.connections[0].closed);
  strictEqual(t.connections[0].served, "ok 5000000\n".length);
});

Deno.test("client: readFile of exactly maxBytes succeeds, announced or not", async () => {
  for (const line of ["ok", "ok 100000"]) {
    const a = new AgentClient(new FakeTransport(replyThen(line, 100_000)));
    strictEqual((await a.readFile("/f", { maxBytes: 100_000 })).length, 100_000);
    await rejects(a.readFile("/f", { maxBytes: 99_999 }), FileTooLargeError);
  }
  strictEqual(READ_FILE_DEFAULT_MAX_BYTES, 1024 ** 3);
});

Deno.test("client: a bad maxBytes is refused before connecting", async () => {
  const t = new FakeTransport(replyThen("ok", 0));
  const a = new AgentClient(t);
  for (const maxBytes of [-1, NaN, 1.5, Infinity]) {
    await rejects(a.readFile("/f", { maxBytes }), AgentRequestError);
  }
  strictEqual(t.connections.length, 0);
});

Deno.test("client: the agent's errors are SkiffErrors", async () => {
  const a = new AgentClient(new FakeTransport(replyThen("error open /nonexistent: ENOENT", 0)));
  await rejects(a.readFile("/nonexistent"), (e: unknown) => {
    ok(e instanceof AgentStepError && e instanceof AgentError && e instanceof SkiffError);
    strictEqual(e.message, "read /nonexistent: open /nonexistent failed: ENOENT");
    strictEqual(e.name, "AgentStepError");
    deepStrictEqual([e.step, e.errno], ["open /nonexistent", "ENOENT"]);
    return true;
  });
  const cut = new AgentClient(new FakeTransport(() => null));
  await rejects(
    cut.readFile("/x"),
    (e: unknown) => e instanceof AgentProtocolError && e instanceof SkiffError,
  );
});

Deno.test("client: requests refused on the host are SkiffErrors, and nothing is sent", async () => {
  const t = new FakeTransport(replyThen("ok", 0));
  const a = new AgentClient(t);
  const refused = (e: unknown) => e instanceof AgentRequestError && e instanceof SkiffError;
  await rejects(a.readFile("relative/path"), refused);
  await rejects(a.writeFile("/x", "data", { mode: 0o1000000 }), refused);
  await rejects(a.exec(["echo", "a\0b"]), refused);
  await rejects(a.kill(1, "SIGBOGUS" as Deno.Signal), (e: unknown) => {
    ok(refused(e));
    strictEqual((e as Error).message, "signal SIGBOGUS does not exist on Linux");
    return true;
  });
  strictEqual(t.connections.length, 0);
});
