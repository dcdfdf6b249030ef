import { rejects, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { clearStaleSocket, socketListening } from "./cli.ts";
import { ConfigError } from "../../hv/errors.ts";

const exists = (p: string) => Deno.lstat(p).then(() => true, () => false);

Deno.test("virtiofsd --socket-path: a stale socket is removed, a live one or a file is refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-vufs-cli-" });
  try {
    const path = join(dir, "fs.sock");
    await clearStaleSocket(path); // nothing there
    // A live server's socket.
    const live = Deno.listen({ transport: "unix", path });
    await rejects(
      clearStaleSocket(path),
      (e) => e instanceof ConfigError && /in use/.test(e.message),
    );
    strictEqual(await exists(path), true);
    live.close(); // (which removes the path)
    // A killed daemon's socket: the file stays, nobody answers.
    const daemon = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `Deno.listen({ transport: "unix", path: ${
          JSON.stringify(path)
        } }); setInterval(() => {}, 1e6);`,
      ],
    }).spawn();
    while (!(await exists(path))) await new Promise((r) => setTimeout(r, 10)); // the test's bound catches a hang
    daemon.kill("SIGKILL");
    await daemon.status;
    strictEqual(await exists(path), true);
    await clearStaleSocket(path);
    strictEqual(await exists(path), false);
    // Not a socket.
    await Deno.writeTextFile(path, "");
    await rejects(clearStaleSocket(path), /exists and is not a socket/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("socketListening: /proc/net/unix's listening flag for the path, without connecting", () => {
  const table = [
    "Num       RefCount Protocol Flags    Type St Inode Path",
    "0000000000000000: 00000002 00000000 00010000 0001 01 1234 /run/a.sock",
    "0000000000000000: 00000003 00000000 00000000 0001 03 1235 /run/b.sock",
    "0000000000000000: 00000002 00000000 00010000 0001 01 1236 /run/with space.sock",
    "",
  ].join("\n");
  strictEqual(socketListening("/run/a.sock", table), true);
  strictEqual(socketListening("/run/b.sock", table), false); // connected, not listening
  strictEqual(socketListening("/run/with space.sock", table), true);
  strictEqual(socketListening("/run/c.sock", table), false);
});
