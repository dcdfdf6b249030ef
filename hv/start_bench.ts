/**
 * What a skiff VMM process costs before and while it runs a guest
 * (`deno task bench start`), each against bare Deno in the same run:
 *
 * - `start-to-first-instruction engine=kvm ms=<ms> deno_start=<ms>`: from
 *   spawning `deno run hv/testing/vmm_child.ts` (a 1-vCPU, 256 MiB VM) to the
 *   guest's first port write, stamped by the device that sees it, against
 *   spawning `deno run` of an empty file until it exits. Goal: ms ≤
 *   deno_start + 40.
 * - `vmm-rss engine=kvm mem=256 rss_extra=<MiB>`: the VMM process's resident
 *   memory beyond the guest pages it holds (from /proc/<pid>/smaps), with
 *   the guest idle after touching 64 MiB, against `deno_rss`, the resident
 *   memory of a bare Deno process waiting the same way. Goal: rss_extra ≤ 50
 *   MiB. The line also says where it goes: Deno's binary (code and
 *   read-only data, file-backed), anonymous memory (both isolates' V8
 *   heaps, thread stacks, malloc), the rest.
 * - `vmm-rss-floor engine=kvm deno+worker+ffi=<MiB>`: the same measure of a
 *   bare Deno process that starts one idle Worker and binds and calls one
 *   libc function through `Deno.dlopen` in each isolate: what any Deno VMM
 *   with a vCPU Worker pays before its own code (the Worker's runtime and
 *   isolate, the FFI call trampolines' JIT). `skiff_own` is rss_extra minus
 *   it: skiff's modules, heaps and VM.
 *
 * Rounds alternate between the reference and skiff; medians of `ROUNDS`.
 *
 * @module
 */

import { join } from "node:path";
import { Assembler, mem } from "../init/asm/mod.ts";
import { CODE, STAMP_PORT } from "./testing/vmm_child.ts";
import { median } from "../tests/bench_util.ts";

const ROUNDS = 5;
const MIB = 256;
const TOUCH_MIB = 64;
const CHILD = new URL("./testing/vmm_child.ts", import.meta.url).pathname;

const now = () => performance.timeOrigin + performance.now();

/** The guest's first instruction writes the stamp port. */
function firstProgram(): string {
  const a = new Assembler();
  a.mov("edx", STAMP_PORT);
  a.out("dx", "al");
  a.hlt();
  return a.assemble({ origin: CODE }).bytes.toHex();
}

/** Touches `mib` MiB from 16 MiB up (a byte per page), announces it, then halts with IF=0 for good. */
function idleProgram(mib: number): string {
  const a = new Assembler();
  a.mov("rdi", 16 << 20);
  a.mov("ecx", (mib << 20) / 4096);
  a.label("touch");
  a.mov(mem({ base: "rdi", size: 8 }), 1);
  a.add("rdi", 4096);
  a.dec("ecx");
  a.jnz("touch");
  a.mov("edx", STAMP_PORT + 1);
  a.out("dx", "al");
  a.label("idle");
  a.hlt();
  a.jmp("idle");
  return a.assemble({ origin: CODE }).bytes.toHex();
}

async function denoStart(empty: string): Promise<number> {
  const t0 = now();
  const p = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", empty] }).output();
  if (!p.success) throw new Error(`deno run of an empty file failed (${p.code})`);
  return now() - t0;
}

async function vmmFirst(hex: string): Promise<number> {
  const t0 = now();
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CHILD, "first", String(MIB), hex],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!p.success) {
    throw new Error(`vmm_child first failed (${p.code}): ${new TextDecoder().decode(p.stderr)}`);
  }
  return Number(new TextDecoder().decode(p.stdout).trim()) - t0;
}

/** Resident memory of a process, from /proc/<pid>/smaps, in MiB. */
interface Resident {
  total: number;
  guest: number;
  binary: number;
  anon: number;
  other: number;
}

function resident(pid: number): Resident {
  const r: Resident = { total: 0, guest: 0, binary: 0, anon: 0, other: 0 };
  const exe = Deno.realPathSync(Deno.execPath());
  let kind: keyof Resident = "other";
  for (const line of Deno.readTextFileSync(`/proc/${pid}/smaps`).split("\n")) {
    const m = line.match(/^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/);
    if (m) {
      const path = m[1];
      kind = path.includes("memfd:skiff-guest")
        ? "guest"
        : path === exe
        ? "binary"
        : path === "" || path === "[heap]" || path.startsWith("[anon")
        ? "anon"
        : "other";
    } else if (line.startsWith("Rss:")) {
      const kib = Number(line.split(/\s+/)[1]);
      r[kind] += kib / 1024;
      r.total += kib / 1024;
    }
  }
  return r;
}

/**
 * Starts `args`, waits for its first stdout line (`ready …`), measures its
 * resident memory, then closes its stdin and waits for it to exit.
 */
async function idleResident(args: string[]): Promise<Resident> {
  const p = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let r: Resident;
  try {
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${args.join(" ")} ended before it was ready`);
      text += value;
    }
    if (!text.startsWith("ready")) throw new Error(`unexpected output ${JSON.stringify(text)}`);
    r = resident(p.pid);
  } finally {
    await p.stdin.close(); // the child stops its VM and exits
    await reader.cancel();
  }
  const s = await p.status;
  if (!s.success) throw new Error(`${args.join(" ")} exited with ${s.code}`);
  return r;
}

/** Runs the benchmark; returns its output lines. */
export async function bench(): Promise<string[]> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-startbench-" });
  try {
    const empty = join(dir, "empty.ts");
    Deno.writeTextFileSync(empty, "");
    const idle = join(dir, "idle.ts");
    Deno.writeTextFileSync(
      idle,
      'console.log("ready");\nfor await (const _ of Deno.stdin.readable) { /* until closed */ }\n',
    );
    // The floor: a Worker and an FFI call in each isolate, nothing of skiff's.
    const ffi =
      'Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } }).symbols.getpid();\n';
    Deno.writeTextFileSync(join(dir, "floor_worker.ts"), `${ffi}self.postMessage("up");\n`);
    const floor = join(dir, "floor.ts");
    Deno.writeTextFileSync(
      floor,
      ffi +
        'const w = new Worker(new URL("./floor_worker.ts", import.meta.url).href, { type: "module" });\n' +
        "await new Promise((r) => w.onmessage = r);\n" +
        'console.log("ready");\n' +
        "for await (const _ of Deno.stdin.readable) { /* until closed */ }\n" +
        "w.terminate();\n",
    );
    const first = firstProgram();
    const touch = idleProgram(TOUCH_MIB);
    // Warm Deno's module cache for both (type-stripped once, like any installed skiff).
    await denoStart(empty);
    await vmmFirst(first);

    const deno: number[] = [], vmm: number[] = [];
    const denoRss: Resident[] = [], vmmRss: Resident[] = [], floorRss: Resident[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      deno.push(await denoStart(empty));
      vmm.push(await vmmFirst(first));
      denoRss.push(await idleResident(["run", "-A", idle]));
      floorRss.push(await idleResident(["run", "-A", floor]));
      vmmRss.push(
        await idleResident(["run", "-A", CHILD, "idle", String(MIB), touch]),
      );
    }
    const ms = median(vmm), base = median(deno);
    const pick = (rs: Resident[], f: (r: Resident) => number) => median(rs.map(f)).toFixed(1);
    const extra = (r: Resident) => r.total - r.guest;
    return [
      `start-to-first-instruction engine=kvm ms=${ms.toFixed(1)} deno_start=${
        base.toFixed(1)
      } (goal ≤ deno_start + 40; here deno_start + ${(ms - base).toFixed(1)})`,
      `vmm-rss engine=kvm mem=${MIB} rss_extra=${pick(vmmRss, extra)} deno_rss=${
        pick(denoRss, extra)
      } (goal ≤ 50 MiB; guest resident ${pick(vmmRss, (r) => r.guest)} of ${TOUCH_MIB} touched)`,
      `vmm-rss-parts engine=kvm deno-binary=${pick(vmmRss, (r) => r.binary)} anon=${
        pick(vmmRss, (r) => r.anon)
      } other=${pick(vmmRss, (r) => r.other)} | bare deno: deno-binary=${
        pick(denoRss, (r) => r.binary)
      } anon=${pick(denoRss, (r) => r.anon)} other=${pick(denoRss, (r) => r.other)} (MiB)`,
      `vmm-rss-floor engine=kvm deno+worker+ffi=${pick(floorRss, extra)} skiff_own=${
        (median(vmmRss.map(extra)) - median(floorRss.map(extra))).toFixed(1)
      } (MiB; a bare Deno with one idle Worker and one FFI call per isolate: deno-binary=${
        pick(floorRss, (r) => r.binary)
      } anon=${pick(floorRss, (r) => r.anon)})`,
    ];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
