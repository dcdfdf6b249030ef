import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { runIn } from "./run.ts";
import type { GuestProcess, RunningVm } from "./types.ts";

/** A host stream that records what happens to it. */
function recordingSink() {
  const got: string[] = [];
  const events: string[] = [];
  const stream = new WritableStream<Uint8Array>({
    write: (b) => void got.push(new TextDecoder().decode(b)),
    close: () => void events.push("close"),
    abort: () => void events.push("abort"),
  });
  return { stream, got, events };
}

/** A VM whose one command writes `out`, then its stdout fails (QEMU killed) and it exits 130. */
function vmWithFailingStdout(out: string): RunningVm {
  let sent = false;
  const child = {
    pid: 7,
    stdin: null,
    stdout: new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent) return c.error(new Error("connection reset"));
        sent = true;
        c.enqueue(new TextEncoder().encode(out));
      },
    }, { highWaterMark: 0 }),
    stderr: new ReadableStream<Uint8Array>({ start: (c) => c.close() }),
    status: Promise.resolve({ code: 130, signal: null }),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  } as unknown as GuestProcess;
  return { spawn: () => Promise.resolve(child) } as unknown as RunningVm;
}

Deno.test("runIn: a guest stream that fails neither closes nor aborts the host's streams", async () => {
  const stdout = recordingSink(), stderr = recordingSink();
  const status = await runIn(vmWithFailingStdout("partial"), { argv: ["x"], env: {} } as never, {
    stdin: null,
    stdout: stdout.stream,
    stderr: stderr.stream,
  });
  deepStrictEqual(status, { kind: "exited", code: 130 });
  deepStrictEqual(stdout.got, ["partial"]);
  // Deno.stdout/stderr.writable close fd 1/2's resource when closed or aborted,
  // and skiff still has its own last line to print.
  deepStrictEqual(stdout.events, []);
  deepStrictEqual(stderr.events, []);
  // Both stay usable.
  const w = stderr.stream.getWriter();
  await w.write(new TextEncoder().encode("skiff run: stopped by SIGINT"));
  strictEqual(stderr.got.at(-1), "skiff run: stopped by SIGINT");
});
