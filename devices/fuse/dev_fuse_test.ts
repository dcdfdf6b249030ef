/**
 * L3: skiff's FUSE server mounted through /dev/fuse on this host's kernel,
 * exercised by real programs (cp, diff, tar, find, git, fio, getfattr).
 * Every test unmounts in a finally block.
 */

import { ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { type DevFuseMount, type DevFuseOptions, mountDevFuse } from "./dev_fuse.ts";
import { mountDevice } from "./readahead.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

async function sh(
  script: string,
  cwd?: string,
): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command("bash", {
    args: ["-c", `set -o pipefail\n${script}`],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { GIT_CONFIG_NOSYSTEM: "1", HOME: "/nonexistent", LC_ALL: "C" },
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout), err: dec.decode(o.stderr) };
}

async function must(script: string, cwd?: string): Promise<string> {
  const r = await sh(script, cwd);
  if (r.code !== 0) throw new Error(`\`${script}\` exited ${r.code}:\n${r.out}\n${r.err}`);
  return r.out;
}

/** `diff -r --no-dereference` that accepts FIFOs on both sides (diff reports any two FIFOs as differing). */
async function sameTree(a: string, b: string): Promise<void> {
  const r = await sh(`diff -r --no-dereference ${a} ${b}`);
  const lines = (r.out + r.err).split("\n").filter((l) =>
    l !== "" && !/^File .* is a fifo while file .* is a fifo$/.test(l)
  );
  strictEqual(lines.join("\n"), "", `diff ${a} ${b}`);
}

async function withMount(
  options: Partial<DevFuseOptions>,
  fn: (mnt: string, host: string) => Promise<void>,
): Promise<void> {
  const base = await Deno.makeTempDir({ prefix: "skiff-fuse-l3-" });
  const host = options.hostDir ?? `${base}/host`;
  const mnt = `${base}/mnt`;
  if (!options.hostDir) await Deno.mkdir(host);
  await Deno.mkdir(mnt);
  let m: DevFuseMount | null = null;
  try {
    m = await mountDevFuse({ ...options, hostDir: host, mountpoint: mnt });
    await fn(mnt, host);
  } finally {
    if (m) await m.close();
    await Deno.remove(base, { recursive: true });
  }
}

/** A tree with regular files, a subdirectory, symlinks, hard links, a FIFO and xattrs. */
const MAKE_TREE = `
mkdir -p "$1/sub/deeper"
printf 'hello\\n' > "$1/a.txt"
head -c 300000 /dev/urandom > "$1/sub/blob.bin"
printf 'x%.0s' $(seq 1 5000) > "$1/sub/deeper/x"
ln -s a.txt "$1/link-rel"
ln -s /etc/hostname "$1/link-abs"
ln -s ../a.txt "$1/sub/link-up"
ln "$1/a.txt" "$1/sub/hard"
mkfifo "$1/fifo"
chmod 0751 "$1/sub"
chmod 0640 "$1/sub/blob.bin"
setfattr -n user.color -v blue "$1/a.txt"
setfattr -n user.bin -v 0x00ff10 "$1/sub/blob.bin"
touch -d '2001-02-03 04:05:06.789' "$1/sub/deeper/x"
`;

/** A command running a script (written into `dir`) that builds the tree in its first argument. */
async function treeScript(dir: string): Promise<string> {
  const f = `${dir}/make-tree.sh`;
  await Deno.writeTextFile(f, `set -e\n${MAKE_TREE}`);
  return `bash ${f}`;
}

hostTest("fuse L3: cp -a and diff -r of a tree with symlinks, hard links, FIFOs, xattrs", [
  "fuse",
  "root",
], async () => {
  await withMount({}, async (mnt, host) => {
    const src = `${host}/../src`;
    await must(`set -e; mkdir ${src}; ${await treeScript(`${host}/..`)} ${src}`);
    await must(`cp -a ${src} ${mnt}/copy`);
    await sameTree(src, `${mnt}/copy`);
    await sameTree(src, `${host}/copy`);
    const xa = await must(`cd ${src} && getfattr -R -d -m user. . | sort`);
    const xb = await must(`cd ${mnt}/copy && getfattr -R -d -m user. . | sort`);
    strictEqual(xb, xa);
    ok(xa.includes("user.color"));
    // Hard links stay hard links, FIFOs stay FIFOs, times and modes survive.
    strictEqual(await must(`stat -c %h ${mnt}/copy/a.txt`), "2\n");
    strictEqual(
      await must(`stat -c %i ${mnt}/copy/a.txt ${mnt}/copy/sub/hard | uniq | wc -l`),
      "1\n",
    );
    strictEqual(await must(`stat -c %F ${mnt}/copy/fifo`), "fifo\n");
    strictEqual(await must(`stat -c %a ${mnt}/copy/sub`), "751\n");
    strictEqual(
      await must(`stat -c %y ${mnt}/copy/sub/deeper/x`),
      await must(`stat -c %y ${src}/sub/deeper/x`),
    );
    strictEqual(await must(`readlink ${mnt}/copy/link-abs`), "/etc/hostname\n");
    // And back out again.
    await must(`cp -a ${mnt}/copy ${host}/../back`);
    await sameTree(src, `${host}/../back`);
  });
}, opts);

/** The readahead window (KiB) of the skiff mount at `mnt`, from its bdi in sysfs. */
async function readaheadOf(mnt: string): Promise<number> {
  const dev = mountDevice(
    await Deno.readTextFile("/proc/self/mountinfo"),
    await Deno.realPath(mnt),
    "fuse.skiff",
  );
  ok(dev, `no skiff mount at ${mnt}`);
  return Number((await Deno.readTextFile(`/sys/class/bdi/${dev}/read_ahead_kb`)).trim());
}

hostTest("fuse L3: the readahead window is raised; large READs read the right bytes", [
  "fuse",
  "root",
], async () => {
  await withMount({}, async (mnt, host) => {
    strictEqual(await readaheadOf(mnt), 512);
    // Not a multiple of the window or a page, so the last READ is short.
    await must(`head -c 3146001 /dev/urandom > ${host}/f`);
    await must(`cmp ${host}/f ${mnt}/f && dd if=${mnt}/f bs=7777 status=none | cmp - ${host}/f`);
  });
  await withMount({ maxWrite: 256 << 10, readaheadKib: 192 }, async (mnt) => {
    strictEqual(await readaheadOf(mnt), 192);
  });
}, opts);

hostTest("fuse L3: tar round trip and find", ["fuse", "root"], async () => {
  await withMount({}, async (mnt, host) => {
    await must(`${await treeScript(`${host}/..`)} ${mnt}/t`);
    await must(`cd ${mnt} && tar cf - t | (mkdir x && cd x && tar xpf -)`);
    await sameTree(`${mnt}/t`, `${mnt}/x/t`);
    const a = await must(`cd ${mnt} && find . -printf '%p %y %m %s\\n' | sort`);
    const b = await must(`cd ${host} && find . -printf '%p %y %m %s\\n' | sort`);
    strictEqual(a, b);
    ok(a.includes("./x/t/fifo p 644"));
  });
}, opts);

hostTest("fuse L3: git init/add/commit/status inside the share", ["fuse", "root"], async () => {
  await withMount({}, async (mnt) => {
    const git = "git -c user.name=t -c user.email=t@e -c init.defaultBranch=main";
    await must(
      `cd ${mnt} && ${git} init -q r && cd r && printf 'one\\n' > f && mkdir d && ` +
        `printf 'two\\n' > d/g && ${git} add -A && ${git} commit -qm first && ` +
        `printf 'three\\n' >> f && ${git} commit -qam second && ${git} mv d/g d/h && ` +
        `${git} commit -qm mv`,
    );
    strictEqual(await must(`cd ${mnt}/r && git status --porcelain`), "");
    strictEqual(await must(`cd ${mnt}/r && git log --oneline | wc -l`), "3\n");
    await must(`cd ${mnt}/r && git fsck --strict 2>&1`);
    await must(`cd ${mnt}/r && printf 'x\\n' > new`);
    strictEqual(await must(`cd ${mnt}/r && git status --porcelain`), "?? new\n");
  });
}, opts);

hostTest(
  "fuse L3: fio sequential and random read/write with verify",
  ["fuse", "root", "fio"],
  async () => {
    await withMount({}, async (mnt) => {
      for (const rw of ["write", "randwrite", "randrw"]) {
        const r = await sh(
          `fio --name=v --directory=${mnt} --size=8m --bs=4k --rw=${rw} --ioengine=psync ` +
            `--verify=crc32c --do_verify=1 --verify_fatal=1 --numjobs=1 --output-format=terse ` +
            // fio otherwise writes *-verify.state files into the cwd
            `--verify_state_save=0`,
        );
        strictEqual(r.code, 0, `fio ${rw}: ${r.err}${r.out}`);
      }
      const r = await sh(
        `fio --name=seq --directory=${mnt} --size=16m --bs=128k --rw=write --verify=md5 ` +
          `--do_verify=1 --verify_fatal=1 --ioengine=psync --output-format=terse --verify_state_save=0`,
      );
      strictEqual(r.code, 0, r.err);
    });
  },
  opts,
);

hostTest("fuse L3: concurrent readers and writers", ["fuse", "root"], async () => {
  await withMount({}, async (mnt, host) => {
    await must(`head -c 4000000 /dev/urandom > ${host}/shared.bin`);
    const want = (await must(`sha256sum < ${host}/shared.bin`)).split(" ")[0];
    const jobs: Promise<string>[] = [];
    for (let i = 0; i < 4; i++) {
      jobs.push(must(`for k in 1 2 3; do sha256sum < ${mnt}/shared.bin; done | sort -u`));
      jobs.push(
        must(
          `head -c 1000000 /dev/urandom > ${host}/../w${i} && for k in 1 2 3; do ` +
            `cp ${host}/../w${i} ${mnt}/w${i}.$k; done && ` +
            `cmp ${host}/../w${i} ${mnt}/w${i}.3 && cmp ${host}/../w${i} ${host}/w${i}.2 && echo ok`,
        ),
      );
    }
    const out = await Promise.all(jobs);
    for (let i = 0; i < out.length; i += 2) {
      strictEqual(out[i].trim().split(" ")[0], want);
      strictEqual(out[i + 1], "ok\n");
    }
  });
}, opts);

/** Whether this kernel has FUSE_PASSTHROUGH (Linux 6.9; CONFIG_FUSE_PASSTHROUGH, on in distributions). */
function passthroughKernel(): boolean {
  const [maj, min] = Deno.osRelease().split(".").map((x) => parseInt(x, 10));
  return maj > 6 || (maj === 6 && min >= 9);
}

/** Serves `host` at `mnt` with `options`, runs `script`; returns the requests the server read. */
async function requestsFor(
  host: string,
  mnt: string,
  options: Partial<DevFuseOptions>,
  script: string,
): Promise<number> {
  const m = await mountDevFuse({ ...options, hostDir: host, mountpoint: mnt });
  try {
    await must(script);
  } finally {
    await m.close();
  }
  return (await m.done).requests;
}

hostTest("fuse L3: passthrough: open files are read and written by the client itself", [
  "fuse",
  "root",
], async () => {
  const base = await Deno.makeTempDir({ prefix: "skiff-fuse-l3-" });
  const host = `${base}/host`;
  const mnt = `${base}/mnt`;
  try {
    await Deno.mkdir(host);
    await Deno.mkdir(mnt);
    await must(`head -c 4194304 /dev/urandom > ${host}/data.bin`);
    // 1024 O_DIRECT reads: each one a READ request unless the client reads the backing file.
    const read = `dd if=${mnt}/data.bin bs=4k iflag=direct status=none | cmp - ${host}/data.bin`;
    const ordinary = await requestsFor(host, mnt, { passthrough: false }, read);
    ok(ordinary >= 1024, `${ordinary} requests without passthrough`);
    const through = await requestsFor(host, mnt, { passthrough: true }, read);
    if (passthroughKernel()) ok(through < 100, `${through} requests with passthrough`);
    // Opens of one file in different modes share its backing file: a reader holding it
    // open sees an appender's data, a read-write open writes in place, a new file is
    // written through, and a program (execute bits: served the ordinary way) runs while
    // another process has it open.
    await requestsFor(
      host,
      mnt,
      { passthrough: true },
      `set -e; cd ${mnt}
      echo hello > a; exec 4<a; echo world >> a; cat <&4 > ${base}/seen; exec 4<&-
      printf abc > b; exec 5<>b; printf X >&5; exec 5>&-
      cp /bin/true tru; exec 6<tru; ./tru; exec 6<&-`,
    );
    strictEqual(await must(`cat ${base}/seen`), "hello\nworld\n");
    strictEqual(await must(`cat ${host}/a`), "hello\nworld\n");
    strictEqual(await must(`cat ${host}/b`), "Xbc");
    strictEqual(await must(`cmp /bin/true ${host}/tru && echo same`), "same\n");
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}, opts);

hostTest(
  "fuse L3: four readers: parallel clients creating, renaming, removing and reading stay consistent",
  [
    "fuse",
    "root",
  ],
  async () => {
    const base = await Deno.makeTempDir({ prefix: "skiff-fuse-l3-" });
    const host = `${base}/host`;
    const mnt = `${base}/mnt`;
    await Deno.mkdir(host);
    await Deno.mkdir(mnt);
    let m: DevFuseMount | null = null;
    try {
      // No attribute or name caching: every step of every client reaches a reader.
      m = await mountDevFuse({
        hostDir: host,
        mountpoint: mnt,
        readers: 4,
        attrTimeout: 0,
        entryTimeout: 0,
      });
      const CLIENTS = 8;
      const jobs: Promise<string>[] = [];
      for (let c = 0; c < CLIENTS; c++) {
        // Each client works in its own directory and in one they all share.
        jobs.push(must(`
        cd ${mnt} && mkdir -p shared c${c} && cd c${c}
        for i in $(seq 1 150); do echo "$i" > f$i; echo "${c}-$i" > ../shared/s${c}-$i; done
        for i in $(seq 1 50); do mv f$i g$i; done
        for i in $(seq 51 100); do rm f$i; done
        for i in $(seq 101 150); do echo more >> f$i; done
        cat g* f* | wc -l; ls | wc -l; stat -c %s f150 g1`));
      }
      const out = await Promise.all(jobs);
      for (const o of out) strictEqual(o, "150\n100\n9\n2\n");
      for (let c = 0; c < CLIENTS; c++) {
        const names = [...Deno.readDirSync(`${host}/c${c}`)].map((e) => e.name);
        strictEqual(names.length, 100);
        strictEqual(Deno.readTextFileSync(`${host}/c${c}/g7`), "7\n");
        strictEqual(Deno.readTextFileSync(`${host}/c${c}/f123`), "123\nmore\n");
      }
      strictEqual([...Deno.readDirSync(`${host}/shared`)].length, CLIENTS * 150);
      strictEqual(
        (await must(`cat ${mnt}/shared/* | sort | uniq | wc -l`)).trim(),
        String(CLIENTS * 150),
      );
    } finally {
      if (m) await m.close();
      await Deno.remove(base, { recursive: true });
    }
    const stats = await m!.done;
    strictEqual(stats.byReader?.length, 4);
    strictEqual(stats.byReader!.reduce((a, b) => a + b, 0), stats.requests);
    console.log(`requests by reader: ${stats.byReader!.join(", ")}`);
  },
  opts,
);

hostTest("fuse L3: read-only share gives EROFS; /usr/share/doc mirrors exactly", [
  "fuse",
  "root",
], async () => {
  await withMount({ hostDir: "/usr/share/doc", readOnly: true }, async (mnt) => {
    const t = await sh(`touch ${mnt}/x`);
    strictEqual(t.code, 1);
    ok(t.err.includes("Read-only file system"), t.err);
    const m = await sh(`mkdir ${mnt}/d`);
    ok(m.err.includes("Read-only file system"), m.err);
    const w = await sh(`echo x >> ${mnt}/$(ls ${mnt} | head -1)/copyright`);
    ok(w.err.includes("Read-only file system"), w.err);
    await must(`diff -r --no-dereference /usr/share/doc ${mnt}`);
  });
}, opts);

hostTest("fuse L3: read-only share keeps the page cache across opens, yet sees host changes", [
  "fuse",
  "root",
], async () => {
  // FOPEN_KEEP_CACHE on a read-only share: the kernel keeps a file's pages across opens.
  // FUSE_AUTO_INVAL_DATA drops them when fresh attributes show another size or mtime;
  // attrTimeout 0 makes every read fetch them, so the change shows at once.
  await withMount({ readOnly: true, attrTimeout: 0, entryTimeout: 0 }, async (mnt, host) => {
    await Deno.writeTextFile(`${host}/f`, "first\n");
    strictEqual(await must(`cat ${mnt}/f`), "first\n");
    strictEqual(await must(`cat ${mnt}/f`), "first\n");
    await Deno.writeTextFile(`${host}/f`, "second, longer\n"); // other size
    strictEqual(await must(`cat ${mnt}/f`), "second, longer\n");
    await must(`printf 'SECOND, LONGER\\n' > ${host}/f && touch -d '2001-01-01' ${host}/f`);
    strictEqual(await must(`cat ${mnt}/f`), "SECOND, LONGER\n", "same size, other mtime");
  });
}, opts);

hostTest("fuse L3: escapes through the real client stay inside", ["fuse", "root"], async () => {
  await withMount({}, async (mnt, host) => {
    await must(`echo secret > ${host}/../secret && ln -s ../secret ${host}/out`);
    // The kernel resolves symlinks on the client side: from the mount, ../secret is
    // relative to the mount's parent, which is the same base dir here — so use the
    // server-side view: the host share dir has no way to the secret through the mount.
    const r = await sh(
      `cat ${mnt}/out/.. 2>&1; ls ${mnt}/.. >/dev/null; cat ${mnt}/../../etc/hostname`,
    );
    ok(r.code !== 0 || !r.out.includes("secret"));
    // Creating a symlink inside the share and writing through it from the client goes
    // where the client's kernel resolves it, never via the server following it.
    await must(`ln -s /proc/self/root/etc/passwd ${mnt}/p && test -L ${host}/p`);
    strictEqual((await sh(`mknod ${mnt}/mem c 1 1`)).code !== 0, true);
    ok((await sh(`test -e ${host}/mem`)).code !== 0);
  });
}, opts);

hostTest("fuse L3: crossMounts false, hide and credentials through the real client", [
  "fuse",
  "root",
], async () => {
  const USER = 4321;
  const base = await Deno.makeTempDir({ prefix: "skiff-fuse-l3-opts-" });
  const host = `${base}/host`;
  let tmpfs = false;
  try {
    await must(
      `set -e; chmod 755 ${base}; mkdir -m 755 ${host}; cd ${host}; mkdir other home mine; ` +
        `mount -t tmpfs none other; echo x > other/onthemount; echo other > other2; ` +
        `mkdir -p home/alice; echo key > home/alice/key; echo hi > home/visible; ` +
        `echo t > top; ln top keylink; echo s > secret; chmod 600 secret; chown ${USER}:${USER} mine`,
    );
    tmpfs = true;
    await withMount({
      hostDir: host,
      crossMounts: false,
      hide: ["home/alice", "top"],
      credentials: { uid: USER, gid: USER },
    }, async (mnt) => {
      // Another mount shows as an empty directory.
      strictEqual(await must(`ls -A ${mnt}/other | wc -l`), "0\n");
      ok((await sh(`cat ${mnt}/other/onthemount`)).code !== 0);
      strictEqual(await must(`cat ${mnt}/other2`), "other\n");
      // Hidden paths (and a hard link to a hidden file) do not exist.
      strictEqual(await must(`ls -A ${mnt}/home`), "visible\n");
      ok((await sh(`cat ${mnt}/top`)).err.includes("No such file"));
      ok((await sh(`cat ${mnt}/home/alice/key`)).err.includes("No such file"));
      ok((await sh(`cat ${mnt}/keylink`)).err.includes("No such file"));
      ok((await sh(`rm -rf ${mnt}/home/alice`)).code === 0); // nothing to remove
      strictEqual(await must(`cat ${host}/home/alice/key`), "key\n");
      // The client is root, yet the host calls run as USER.
      ok((await sh(`cat ${mnt}/secret`)).err.includes("Permission denied"));
      ok((await sh(`touch ${mnt}/new`)).err.includes("Permission denied"));
      await must(`echo mine > ${mnt}/mine/f && mkdir ${mnt}/mine/d`);
      strictEqual(
        await must(`stat -c %u:%g ${host}/mine/f ${host}/mine/d`),
        `${USER}:${USER}\n${USER}:${USER}\n`,
      );
    });
  } finally {
    if (tmpfs) await sh(`umount ${host}/other`);
    await Deno.remove(base, { recursive: true });
  }
}, opts);

hostTest("fuse L3: close ends the readers and closes every fd of the share", [
  "fuse",
  "root",
], async () => {
  const base = await Deno.makeTempDir({ prefix: "skiff-fuse-l3-" });
  const host = `${base}/host`;
  /** This process's fds open on the share (the root's, nodes', handles'). */
  const shareFds = () =>
    [...Deno.readDirSync("/proc/self/fd")].filter((e) => {
      try {
        const to = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
        return to === host || to.startsWith(`${host}/`);
      } catch {
        return false; // closed meanwhile
      }
    }).length;
  try {
    await Deno.mkdir(host);
    await Deno.mkdir(`${base}/mnt`);
    const m = await mountDevFuse({ hostDir: host, mountpoint: `${base}/mnt` });
    try {
      // Nodes with cached fds (directories walked into), handles opened and released.
      await must(
        `cd ${base}/mnt && mkdir d && for i in $(seq 1 100); do mkdir d/$i && ` +
          `echo x > d/$i/f; done && find . -type f -printf '%s\\n' | wc -l && cat d/*/f | wc -l`,
      );
      ok(shareFds() > 100, "the share holds fds while mounted");
    } finally {
      await m.close();
    }
    strictEqual((await m.done).reason, "unmounted");
    strictEqual(shareFds(), 0);
    strictEqual(await Deno.readTextFile(`${host}/d/100/f`), "x\n");
  } finally {
    await Deno.remove(base, { recursive: true });
  }
}, opts);
