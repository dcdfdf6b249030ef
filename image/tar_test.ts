import { deepStrictEqual, ok, rejects, strictEqual } from "node:assert/strict";
import { binaryToBytes, bytesToBinary, type TarEntry, TarReader } from "./tar.ts";
import { makeTar } from "./testing/tar_writer.ts";
import { hostTest } from "../tests/requirements.ts";

interface Got {
  e: TarEntry;
  data: string;
}

async function readAll(bytes: Uint8Array, chunk = 4096, limits = {}): Promise<Got[]> {
  const pieces: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += chunk) pieces.push(bytes.slice(i, i + chunk));
  const r = new TarReader(ReadableStream.from(pieces), limits);
  const out: Got[] = [];
  for (let e = await r.next(); e; e = await r.next()) {
    const parts: Uint8Array[] = [];
    await r.read((p) => parts.push(p.slice()));
    out.push({ e, data: bytesToBinary(new Uint8Array(parts.flatMap((p) => [...p]))) });
  }
  return out;
}

Deno.test("tar: ustar entries of every type, data across odd chunk sizes", async () => {
  const tar = makeTar([
    { name: "dir/", type: "5", mode: 0o750, uid: 5, gid: 6 },
    { name: "dir/file", data: "x".repeat(1000), mode: 0o4755 },
    { name: "dir/link", type: "2", linkname: "../elsewhere" },
    { name: "dir/hard", type: "1", linkname: "dir/file" },
    { name: "dev/null", type: "3", devmajor: 1, devminor: 3, mode: 0o666 },
    { name: "dev/sda", type: "4", devmajor: 8, devminor: 0 },
    { name: "fifo", type: "6" },
    { name: `${"p".repeat(120)}/${"n".repeat(90)}`, data: "prefixed" },
  ]);
  for (const chunk of [1, 511, 512, 513, 100000]) {
    const got = await readAll(tar, chunk);
    deepStrictEqual(got.map((g) => [g.e.name, g.e.type]), [
      ["dir/", "dir"],
      ["dir/file", "file"],
      ["dir/link", "symlink"],
      ["dir/hard", "hardlink"],
      ["dev/null", "char"],
      ["dev/sda", "block"],
      ["fifo", "fifo"],
      [`${"p".repeat(120)}/${"n".repeat(90)}`, "file"],
    ]);
    strictEqual(got[1].data, "x".repeat(1000));
    strictEqual(got[1].e.mode, 0o4755);
    deepStrictEqual([got[0].e.uid, got[0].e.gid, got[0].e.mode], [5, 6, 0o750]);
    strictEqual(got[2].e.linkname, "../elsewhere");
    deepStrictEqual([got[4].e.devmajor, got[4].e.devminor], [1, 3]);
    strictEqual(got[7].data, "prefixed");
  }
});

Deno.test("tar: pax path, linkpath, size, ids, fractional mtime and xattrs", async () => {
  const long = "d/".repeat(200) + "file";
  const got = await readAll(makeTar([
    {
      name: long,
      data: "abc",
      pax: {
        path: long,
        uid: "4000000000",
        gid: "7",
        mtime: "1700000000.123456789",
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
        "SCHILY.xattr.user.k": "v",
      },
    },
    { name: "l", type: "2", pax: { linkpath: "t".repeat(300) } },
    { name: "neg", pax: { mtime: "-1.25" } },
  ]));
  strictEqual(got[0].e.name, long);
  strictEqual(got[0].data, "abc");
  deepStrictEqual([got[0].e.uid, got[0].e.gid], [4000000000, 7]);
  deepStrictEqual([got[0].e.mtime, got[0].e.mtimeNsec], [1700000000, 123456789]);
  deepStrictEqual([...got[0].e.xattrs.keys()], ["security.capability", "user.k"]);
  deepStrictEqual([...got[0].e.xattrs.get("security.capability")!], [1, 0, 0, 2]);
  strictEqual(got[1].e.linkname, "t".repeat(300));
  deepStrictEqual([got[2].e.mtime, got[2].e.mtimeNsec], [-2, 750000000]);
});

Deno.test("tar: non-UTF-8 names round-trip as bytes", async () => {
  const name = bytesToBinary(new Uint8Array([0x66, 0xff, 0xfe, 0x2e, 0x74]));
  const h = makeTar([{ name: "placeholder", data: "q" }]);
  // Patch the raw name bytes in (the writer encodes strings as UTF-8) and fix the checksum.
  h.fill(0, 0, 100);
  h.set(binaryToBytes(name), 0);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += h[i];
  h.set(new TextEncoder().encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
  const got = await readAll(h);
  strictEqual(got[0].e.name, name);
});

Deno.test("tar: truncated data, truncated header, dangling pax header, bad checksum", async () => {
  const tar = makeTar([{ name: "a", data: "x".repeat(2000) }, { name: "b", data: "y" }]);
  await rejects(
    readAll(tar.slice(0, 512 + 1000)),
    /truncated archive: the stream ends inside the data of a/,
  );
  await rejects(
    readAll(tar.slice(0, 512 + 2048 + 100)),
    /truncated archive: the stream ends inside the header after a/,
  );
  const pax = makeTar([{ name: "a", data: "", pax: { path: "zz" } }], false).slice(0, 1024);
  await rejects(readAll(pax), /extended header has no entry/);
  const bad = tar.slice();
  bad[10] ^= 1;
  await rejects(readAll(bad), /bad header checksum at the first header/);
  await rejects(readAll(new TextEncoder().encode("not a tar".repeat(100))), /bad header checksum/);
});

Deno.test("tar: caps per entry and per extended header; sparse and unknown types refused", async () => {
  await rejects(
    readAll(makeTar([{ name: "big", data: "x".repeat(5000) }]), 4096, { entryMax: 4096 }),
    /big: 5000 bytes is more than the 4096-byte limit per entry/,
  );
  await rejects(
    readAll(makeTar([{ name: "a", pax: { path: "p".repeat(3000) } }]), 4096, { metaMax: 1024 }),
    /the pax header at the first header: 3\d{3} bytes is more than the 1024-byte limit/,
  );
  await rejects(
    readAll(makeTar([{ name: "s", type: "S" }])),
    /s: GNU sparse files are not supported/,
  );
  await rejects(readAll(makeTar([{ name: "q", type: "Z" }])), /q: unknown entry type 'Z'/);
  await rejects(
    readAll(makeTar([{ name: "p", pax: { "GNU.sparse.major": "1" } }])),
    /pax sparse files are not supported/,
  );
  await rejects(
    readAll(makeTar([{ name: "n".repeat(5000), pax: { path: "n".repeat(5000) } }])),
    /longer than 4095/,
  );
});

Deno.test("tar: the stream is drained after the end blocks; no end blocks is accepted", async () => {
  const tar = makeTar([{ name: "a", data: "1" }]);
  const padded = new Uint8Array(tar.length + 10240);
  padded.set(tar);
  let read = 0;
  const counted = ReadableStream.from([padded]).pipeThrough(
    new TransformStream({
      transform(c, ctl) {
        read += c.length;
        ctl.enqueue(c);
      },
    }),
  );
  const r = new TarReader(counted);
  ok(await r.next());
  strictEqual(await r.next(), null);
  strictEqual(read, padded.length);
  strictEqual((await readAll(makeTar([{ name: "a", data: "1" }], false))).length, 1);
});

hostTest(
  "tar: reads GNU tar's gnu and pax archives (long names, big ids, xattrs)",
  ["root"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "skiff-tar-test-" });
    try {
      const long = `${"l".repeat(150)}/${"m".repeat(120)}`;
      await Deno.mkdir(`${dir}/src/${long}`, { recursive: true });
      await Deno.writeTextFile(`${dir}/src/${long}/f`, "hello");
      await Deno.symlink("t".repeat(200), `${dir}/src/ln`);
      await Deno.writeTextFile(`${dir}/src/big-ids`, "i");
      await Deno.chown(`${dir}/src/big-ids`, 3_000_000, 3_000_001);
      for (const format of ["gnu", "pax"]) {
        const p = new Deno.Command("tar", {
          args: [
            "-C",
            `${dir}/src`,
            `--format=${format}`,
            "--xattrs",
            "-cf",
            `${dir}/${format}.tar`,
            ".",
          ],
        }).outputSync();
        strictEqual(p.code, 0, new TextDecoder().decode(p.stderr));
        const got = await readAll(await Deno.readFile(`${dir}/${format}.tar`));
        const byName = new Map(got.map((g) => [g.e.name.replace(/^\.\//, ""), g]));
        strictEqual(byName.get(`${long}/f`)?.data, "hello", format);
        strictEqual(byName.get("ln")?.e.linkname, "t".repeat(200), format);
        deepStrictEqual([byName.get("big-ids")?.e.uid, byName.get("big-ids")?.e.gid], [
          3_000_000,
          3_000_001,
        ]);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
