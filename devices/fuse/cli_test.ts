/**
 * L3 acceptance of `skiff fuse mount`, run through the `./skiff` launcher as
 * a user would: `./skiff fuse mount /usr/share/doc MNT --ro` gives a mount
 * on which `diff -r /usr/share/doc MNT` is clean and `touch MNT/x` fails
 * with "Read-only file system"; Ctrl-C (SIGINT) unmounts and exits 0.
 *
 * `diff -r` follows symlinks, and /usr/share/doc holds relative ones that
 * point outside it (`../../build-essential/list`). The client's kernel
 * resolves those against the mount point, so MNT is made a sibling of
 * /usr/share/doc (a fresh directory in /usr/share, removed afterwards): then
 * they reach the same files as from /usr/share/doc itself.
 */

import { ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { HANG_MS, hangBound, until } from "../../tests/waits.ts";
import { FORCED_EXIT, fuseMountCommand } from "./cli.ts";

const SKIFF = new URL("../../skiff", import.meta.url).pathname;
const SOURCE = "/usr/share/doc";
/** Bounds (only to catch a hang): mount appearing, the whole diff, the exit after SIGINT. */
const MOUNT_MS = HANG_MS;
const DIFF_S = HANG_MS / 1000;
const EXIT_MS = HANG_MS;

function isMountpoint(path: string): boolean {
  const mountinfo = Deno.readTextFileSync("/proc/self/mountinfo");
  return mountinfo.split("\n").some((l) => l.split(" ")[4] === path);
}

async function sh(script: string): Promise<{ code: number; out: string }> {
  const o = await new Deno.Command("bash", {
    args: ["-c", script],
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
}

hostTest(
  "fuse L3: ./skiff fuse mount /usr/share/doc MNT --ro: diff -r clean, touch is EROFS, Ctrl-C unmounts",
  ["fuse", "root"],
  async () => {
    const mnt = Deno.makeTempDirSync({ dir: "/usr/share", prefix: ".skiff-fuse-test-" });
    const child = new Deno.Command(SKIFF, {
      args: ["fuse", "mount", SOURCE, mnt, "--ro"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
    ]).then(([o, e]) => o + e);
    let exited = false;
    const status = child.status.then((s) => {
      exited = true;
      return s;
    });
    try {
      const deadline = Date.now() + MOUNT_MS;
      while (!isMountpoint(mnt)) {
        if (exited) throw new Error(`skiff fuse mount exited early: ${await output}`);
        if (Date.now() > deadline) throw new Error(`no mount at ${mnt} after ${MOUNT_MS} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const diff = await sh(`timeout ${DIFF_S} diff -r ${SOURCE} ${mnt}`);
      strictEqual(diff.code, 0, `diff -r ${SOURCE} ${mnt}:\n${diff.out.slice(0, 4000)}`);
      const touch = await sh(`touch ${mnt}/x`);
      strictEqual(touch.code, 1);
      ok(touch.out.includes("Read-only file system"), touch.out);

      child.kill("SIGINT");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const s = await Promise.race([
        status,
        new Promise<null>((r) => timer = setTimeout(() => r(null), EXIT_MS)),
      ]);
      clearTimeout(timer);
      if (s === null) throw new Error(`skiff did not exit ${EXIT_MS} ms after SIGINT`);
      strictEqual(s.code, 0, await output);
      ok(!isMountpoint(mnt), "still mounted after skiff exited");
      ok((await output).includes("serving /usr/share/doc"), await output);
    } finally {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch {
          // already gone
        }
        await status;
      }
      await output;
      if (isMountpoint(mnt)) await sh(`umount -l ${mnt}`);
      Deno.removeSync(mnt);
    }
  },
);

/** `./skiff fuse mount SRC MNT` in a fresh directory, once its mount shows. */
async function startMount(): Promise<{
  base: string;
  mnt: string;
  child: Deno.ChildProcess;
  output: Promise<string>;
  status: Promise<Deno.CommandStatus>;
}> {
  const base = Deno.makeTempDirSync({ prefix: "skiff-fuse-cli-" });
  const mnt = `${base}/mnt`;
  Deno.mkdirSync(`${base}/src`);
  Deno.mkdirSync(mnt);
  const child = new Deno.Command(SKIFF, {
    args: ["fuse", "mount", `${base}/src`, mnt],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Read as it comes: signals are handled once the "serving" line is out.
  let err = "";
  const output = Promise.all([
    new Response(child.stdout).text(),
    child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (c) => void (err += c) }),
    ),
  ]).then(([o]) => o + err);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  await until(() => exited || err.includes("to stop"), `skiff serving at ${mnt}`, MOUNT_MS);
  if (exited) throw new Error(`skiff fuse mount exited early: ${await output}`);
  return { base, mnt, child, output, status };
}

/** Unmounts everything left at `mnt` (top first), then removes `base`. */
async function cleanUp(
  base: string,
  mnt: string,
  status: Promise<unknown>,
  child: Deno.ChildProcess,
) {
  try {
    child.kill("SIGKILL");
  } catch {
    // already gone
  }
  await status;
  while (isMountpoint(mnt)) {
    if ((await sh(`umount -l ${mnt}`)).code !== 0) break;
  }
  Deno.removeSync(base, { recursive: true });
}

hostTest(
  "fuse: Ctrl-C with another mount on top leaves that one alone and exits 0",
  ["fuse", "root"],
  async () => {
    const { base, mnt, child, output, status } = await startMount();
    try {
      strictEqual((await sh(`mount -t tmpfs skiff-test-top ${mnt}`)).code, 0);
      child.kill("SIGINT");
      const s = await hangBound(status, () => "skiff did not exit after SIGINT", EXIT_MS);
      strictEqual(s.code, 0, await output);
      const top = Deno.readTextFileSync("/proc/self/mountinfo").split("\n")
        .filter((l) => l.split(" ")[4] === mnt).at(-1) ?? "";
      ok(top.includes(" - tmpfs skiff-test-top "), `the tmpfs on top was unmounted: ${top}`);
      ok((await output).includes("left the mount at"), await output);
    } finally {
      await cleanUp(base, mnt, status, child);
    }
  },
);

hostTest(
  "fuse: Ctrl-C with a process in the mount exits; a second signal cuts the stop short",
  ["fuse", "root"],
  async () => {
    for (const second of [false, true]) {
      const { base, mnt, child, output, status } = await startMount();
      // Holds the mount busy (its cwd) past skiff's exit; killed in finally.
      const holder = new Deno.Command("sleep", { args: ["600"], cwd: mnt }).spawn();
      try {
        child.kill("SIGINT");
        if (second) {
          // The lazy unmount is the start of the stop, which then waits for the busy mount.
          await until(() => !isMountpoint(mnt), `${mnt} detached`, EXIT_MS);
          child.kill("SIGTERM");
        }
        const s = await hangBound(status, () => "skiff did not exit after SIGINT", EXIT_MS);
        ok(!isMountpoint(mnt), "still mounted after skiff exited");
        const out = await output;
        if (second && s.code !== 0) {
          strictEqual(s.code, FORCED_EXIT, out);
          ok(out.includes("cut short by a second signal"), out);
        } else {
          // Without a second signal, or when the stop finished before it came.
          strictEqual(s.code, 0, out);
        }
      } finally {
        holder.kill("SIGKILL");
        await holder.status;
        await cleanUp(base, mnt, status, child);
      }
    }
  },
);

Deno.test("fuse mount: an empty or missing HOST_DIR is named in quotes", async () => {
  const err = await fuseMountCommand({ hostDir: "", mountpoint: "/", readOnly: true })
    .then(() => null, (e: Error) => e.message);
  strictEqual(err, "HOST_DIR '' does not exist");
});
