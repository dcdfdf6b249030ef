import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { unpackLayer } from "./unpack.ts";
import { makeTar, type TestEntry } from "./testing/tar_writer.ts";
import { readLayerIndex } from "../devices/fuse/layer_index.ts";

/** Every path under `dir` with its type (f, d, l, other), relative, sorted. */
export function hostTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of Deno.readDirSync(d)) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const st = Deno.lstatSync(`${d}/${e.name}`);
      const t = st.isFile ? "f" : st.isDirectory ? "d" : st.isSymlink ? "l" : "?";
      out.push(`${t} ${r}`);
      if (st.isDirectory) walk(`${d}/${e.name}`, r);
    }
  };
  walk(dir, "");
  return out.sort();
}

async function withDir(fn: (base: string) => Promise<void>): Promise<void> {
  const base = await Deno.makeTempDir({ prefix: "skiff-unpack-test-" });
  try {
    await fn(base);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}

async function unpack(base: string, entries: TestEntry[], limits = {}) {
  const dir = `${base}/layer`;
  await Deno.mkdir(dir);
  const r = await unpackLayer(ReadableStream.from([makeTar(entries)]), dir, "layer L", limits);
  return { dir, r };
}

Deno.test("unpack: files and dirs on the host, everything else in the index", async () => {
  await withDir(async (base) => {
    const { dir, r } = await unpack(base, [
      { name: "./", type: "5", mode: 0o755 },
      { name: "./bin/", type: "5", mode: 0o755 },
      { name: "./bin/su", data: "SU", mode: 0o4755, uid: 0 },
      { name: "./bin/sh", type: "2", linkname: "/bin/busybox" },
      { name: "./bin/sh2", type: "1", linkname: "./bin/su" },
      { name: "./dev/null", type: "3", devmajor: 1, devminor: 3, mode: 0o666 },
      { name: "./tmp/", type: "5", mode: 0o1777 },
      { name: "./fifo", type: "6" },
      { name: "/abs/file", data: "A" },
      { name: "./etc/.wh.gone", data: "" },
      { name: "./var/.wh..wh..opq", data: "" },
      { name: "./var/.wh..wh.plnk", data: "" },
      {
        name: "./bin/ping",
        data: "P",
        uid: 1000,
        gid: 1001,
        pax: { "SCHILY.xattr.security.capability": "cap", "SCHILY.xattr.trusted.x": "t" },
      },
    ]);
    deepStrictEqual(hostTree(`${dir}/root`), [
      "d abs",
      "d bin",
      "d dev",
      "d etc",
      "d tmp",
      "d var",
      "f abs/file",
      "f bin/ping",
      "f bin/su",
    ]);
    // setuid stripped on the host, the invoking user owns everything.
    strictEqual(Deno.statSync(`${dir}/root/bin/su`).mode! & 0o7777, 0o644);
    strictEqual(Deno.statSync(`${dir}/root/tmp`).mode! & 0o7777, 0o755);
    strictEqual(Deno.readTextFileSync(`${dir}/root/bin/su`), "SU");
    const idx = new Map(readLayerIndex(dir).map((e) => [`${e.kind} ${e.path}`, e]));
    strictEqual(idx.get("file bin/su")!.mode, 0o4755);
    strictEqual(idx.get("symlink bin/sh")!.link, "/bin/busybox");
    strictEqual(idx.get("hardlink bin/sh2")!.link, "bin/su");
    strictEqual(idx.get("char dev/null")!.rdev, 0x103);
    strictEqual(idx.get("dir tmp")!.mode, 0o1777);
    ok(idx.get("fifo fifo"));
    ok(idx.get("implicit-dir dev"));
    ok(idx.get("whiteout etc/gone"));
    ok(idx.get("opaque var"));
    ok(idx.get("dir "));
    deepStrictEqual(idx.get("file bin/ping")!.xattrs, { "security.capability": btoa("cap") });
    deepStrictEqual([idx.get("file bin/ping")!.uid, idx.get("file bin/ping")!.gid], [1000, 1001]);
    strictEqual([...idx.keys()].some((k) => k.includes("plnk")), false);
    deepStrictEqual(r, { entries: idx.size, bytes: 4 });
  });
});

/** Each hostile case: the error names the entry, and nothing exists outside the layer dir. */
const HOSTILE: [string, TestEntry[], RegExp, object?][] = [
  ["dot-dot", [{ name: "../escape", data: "x" }], /entry "..\/escape": the path contains '..'/],
  ["dot-dot deep", [{ name: "a/../../escape", data: "x" }], /entry "a\/..\/..\/escape"/],
  [
    "write through a symlink",
    [{ name: "ln", type: "2", linkname: "/tmp" }, { name: "ln/evil", data: "x" }],
    /entry "ln\/evil": its parent "ln" is a symlink of this layer, not a directory \(no writing through symlinks\)/,
  ],
  [
    "write through a relative symlink",
    [{ name: "up", type: "2", linkname: "../../.." }, { name: "up/x/y", data: "x" }],
    /entry "up\/x\/y": its parent "up" is a symlink/,
  ],
  [
    "hard link out of the layer",
    [{ name: "h", type: "1", linkname: "../../etc/passwd" }],
    /entry "h": hard link target: the path contains '..'/,
  ],
  [
    "hard link to a directory",
    [{ name: "d/", type: "5" }, { name: "h", type: "1", linkname: "d" }],
    /entry "h": hard link to a directory/,
  ],
  [
    "duplicate file",
    [{ name: "f", data: "1" }, { name: "f", data: "2" }],
    /entry "f": duplicate entry \(already a file\)/,
  ],
  [
    "file over a directory",
    [{ name: "d/x", data: "1" }, { name: "d", data: "2" }],
    /entry "d": duplicate entry \(already a implicit-dir\)/,
  ],
  ["NUL in a pax path", [{ name: "n", pax: { path: "a\u0000b" } }], /the path contains NUL/],
  ["root as a file", [{ name: "./", type: "0", data: "" }], /the layer's root is a file/],
  [
    "oversized entry",
    [{ name: "big", data: "x".repeat(5000) }],
    /big: 5000 bytes is more than the 4096-byte limit per entry/,
    { entryMax: 4096 },
  ],
  [
    "oversized layer",
    [{ name: "a", data: "x".repeat(3000) }, { name: "b", data: "x".repeat(3000) }],
    /entry "b": the layer's data exceeds the 5000-byte limit per layer/,
    { layerMax: 5000 },
  ],
  [
    "too many entries",
    [{ name: "a" }, { name: "b" }, { name: "c" }],
    /entry "c": more than 2 entries in one layer/,
    { entriesMax: 2 },
  ],
  ["whiteout of ..", [{ name: "a/.wh...", data: "" }], /whiteout of nothing/],
];

for (const [name, entries, re, limits] of HOSTILE) {
  Deno.test(`unpack: hostile archive refused — ${name}`, async () => {
    await withDir(async (base) => {
      await Deno.mkdir(`${base}/outside`);
      await rejects(unpack(base, entries, limits), (e: Error) => {
        ok(re.test(e.message), `${e.message} !~ ${re}`);
        ok(e.message.startsWith("layer L: "), e.message);
        strictEqual(e.message.includes("\n"), false);
        return true;
      });
      // Nothing outside the layer directory: the base holds only it and the witness dir.
      deepStrictEqual(
        hostTree(base).filter((p) => !p.startsWith("d layer") && !p.includes(" layer/")),
        [
          "d outside",
        ],
      );
      deepStrictEqual(hostTree(`${base}/outside`), []);
      // And inside it no symlink, device or fifo was ever created.
      ok(hostTree(`${base}/layer`).every((p) => p.startsWith("d ") || p.startsWith("f ")));
    });
  });
}

Deno.test("unpack: a repeated directory takes the last metadata; absolute names are confined", async () => {
  await withDir(async (base) => {
    const { dir } = await unpack(base, [
      { name: "d/", type: "5", mode: 0o700 },
      { name: "d/f", data: "x" },
      { name: "d/", type: "5", mode: 0o750, uid: 7 },
      { name: "/etc/passwd", data: "not the host's" },
      { name: "//x///y", data: "z" },
    ]);
    const idx = readLayerIndex(dir);
    const d = idx.filter((e) => e.path === "d");
    deepStrictEqual(d.map((e) => [e.kind, e.mode, e.uid]), [["dir", 0o750, 7]]);
    strictEqual(Deno.readTextFileSync(`${dir}/root/etc/passwd`), "not the host's");
    strictEqual(Deno.readTextFileSync(`${dir}/root/x/y`), "z");
  });
});
