/**
 * L3q: `skiff run`'s standard streams end to end on the qemu engine, as a
 * user pipes them: byte-exact in both directions at any size, backpressure
 * (a slow reader on either side waits, it does not lose bytes), a host
 * reader that stops (`| head -1`) ends the guest command as a pipe would,
 * and an empty stdin is an immediate EOF. Each run is a real `skiff` process.
 */

import { ok, strictEqual } from "node:assert/strict";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { hostTest } from "./requirements.ts";
import { GUEST_HANG_MS } from "./waits.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
const NEEDS = ["qemu", "kernel"] as const;

/** `skiff run --engine qemu ARGS` with piped stdio; killed only if it hangs. */
function skiff(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "run", "--engine", "qemu", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** `child`'s status, or a failure if it does not end (only catches a hang). */
async function ended(child: Deno.ChildProcess): Promise<Deno.CommandStatus> {
  const timer = setTimeout(() => child.kill("SIGKILL"), GUEST_HANG_MS);
  try {
    const s = await child.status;
    if (s.signal === "SIGKILL") throw new Error("skiff run did not end");
    return s;
  } finally {
    clearTimeout(timer);
  }
}

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
  return b;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Writes `data` to `w` in 1 MiB pieces (each write waits for room), then closes it. */
async function feed(w: WritableStream<Uint8Array>, data: Uint8Array): Promise<void> {
  const writer = w.getWriter();
  for (let i = 0; i < data.length; i += 1 << 20) await writer.write(data.slice(i, i + (1 << 20)));
  await writer.close();
}

hostTest(
  "skiff run (qemu) stdio: 64 MiB through cat, byte-exact by hash, a slow host reader",
  NEEDS,
  async () => {
    const data = randomBytes(64 << 20);
    const child = skiff(["--", "cat"]);
    const writing = feed(child.stdin, data);
    // The host reads slowly: the guest's cat (and skiff's stdin pump) must wait, not drop.
    const hash = createHash("sha256");
    let n = 0, reads = 0;
    for await (const chunk of child.stdout) {
      hash.update(chunk);
      n += chunk.length;
      if (++reads % 32 === 0) await new Promise((r) => setTimeout(r, 10));
    }
    await writing;
    const err = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
    strictEqual((await ended(child)).code, 0, err);
    strictEqual(n, data.length);
    strictEqual(hash.digest("hex"), sha(data));
  },
);

hostTest(
  "skiff run (qemu) stdio: a guest that reads slowly makes the host wait; stdout apart from stderr",
  NEEDS,
  async () => {
    const data = randomBytes(8 << 20);
    // The guest waits before it reads anything, then counts: skiff must hold the bytes back.
    const child = skiff(["--", "sh", "-c", "sleep 2; wc -c; echo done >&2"]);
    const writing = feed(child.stdin, data);
    const [out, err] = await Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
    ]);
    await writing;
    strictEqual((await ended(child)).code, 0, err);
    strictEqual(out.trim(), String(data.length));
    strictEqual(err, "done\n");
  },
);

hostTest(
  "skiff run (qemu) stdio: `yes | head -1` ends promptly; an empty stdin is EOF",
  NEEDS,
  async () => {
    // A host reader that stops after one line: the guest's yes gets EPIPE and ends.
    const child = skiff(["--", "yes"]);
    await child.stdin.close();
    const reader = child.stdout.getReader();
    const first = await reader.read();
    ok(!first.done && new TextDecoder().decode(first.value).startsWith("y\n"));
    await reader.cancel();
    const [s, err] = await Promise.all([ended(child), new Response(child.stderr).text()]);
    // vsock reports a reset stream as EPIPE (no SIGPIPE): coreutils' yes says so and exits 1.
    strictEqual(s.code, 1, err);
    ok(err.includes("Broken pipe"), err);
    // Through a real shell pipeline, as the README says.
    const sh = new Deno.Command("sh", {
      args: ["-c", `"${Deno.execPath()}" run -A "${MAIN}" run --engine qemu -- yes | head -1`],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const out = await new Response(sh.stdout).text();
    await sh.stderr.cancel();
    strictEqual((await ended(sh)).code, 0);
    strictEqual(out, "y\n");
    // An empty stdin: the guest reads EOF at once.
    const empty = skiff(["--", "wc", "-c"]);
    await empty.stdin.close();
    const [count] = await Promise.all([new Response(empty.stdout).text(), empty.stderr.cancel()]);
    strictEqual((await ended(empty)).code, 0);
    strictEqual(count.trim(), "0");
  },
);
