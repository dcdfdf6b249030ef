/**
 * Port-I/O exit round trip: skiff's vCPU loop (synchronous `KVM_RUN` in a
 * Worker, exit decoded and dispatched to a bus device) against the same loop
 * in C, on the same guest image and register state, in one run.
 *
 * The guest does N `out 0x80, al` in a loop between two timestamp marks
 * (ports 0x81/0x82) and powers off through port 0x501. Both sides time
 * between the marks, so VM creation and Worker start-up are excluded.
 *
 * Prints `exit-cost skiff=<µs> c=<µs> ratio=<r>` (medians of alternating
 * rounds); goal ratio ≤ 1.1.
 *
 * @module
 */

import { Assembler } from "../init/asm/mod.ts";
import { debugExitSpec } from "../devices/legacy/debug_exit.ts";
import { KVM_REGS_LAYOUT, KVM_SREGS_LAYOUT } from "../kvm_ffi/kvm_sys.ts";
import { encodeRegs, encodeSregs } from "../kvm_ffi/structs.ts";
import { codeAddr, GUEST_RAM, testGuest } from "./testing/guest.ts";
import { TimerDeviceHost } from "./testing/timer_device.ts";

/** Exits per measurement. */
export const EXITS = 20_000;

function guestProgram(n: number): Uint8Array {
  const a = new Assembler();
  a.mov("ecx", n);
  a.out(0x81, "al"); // start mark
  a.label("loop");
  a.out(0x80, "al");
  a.dec("ecx");
  a.jnz("loop");
  a.out(0x82, "al"); // end mark
  a.mov("dx", 0x501);
  a.out("dx", "al");
  a.hlt();
  return a.assemble({ origin: codeAddr(0) }).bytes;
}

const C_SOURCE = String.raw`
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }
static void load(const char *path, void *dst, size_t len) {
  FILE *f = fopen(path, "rb");
  if (!f || fread(dst, 1, len, f) != len) die(path);
  fclose(f);
}
static double now_us(void) {
  struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: image size sregs regs\n"); return 2; }
  size_t size = strtoul(argv[2], 0, 0);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC); if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0); if (vm < 0) die("KVM_CREATE_VM");
  __u64 idmap = 0xfffbc000;
  if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) die("KVM_SET_IDENTITY_MAP_ADDR");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) die("KVM_SET_TSS_ADDR");
  void *mem = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  load(argv[1], mem, size);
  struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0,
    .memory_size = size, .userspace_addr = (unsigned long)mem };
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0); if (vcpu < 0) die("KVM_CREATE_VCPU");
  int runsz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(0, runsz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  struct kvm_sregs sregs; struct kvm_regs regs;
  load(argv[3], &sregs, sizeof sregs);
  load(argv[4], &regs, sizeof regs);
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
  double t0 = 0, t1 = 0; long sink = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit %u\n", run->exit_reason); return 1; }
    unsigned char *data = (unsigned char *)run + run->io.data_offset;
    switch (run->io.port) {
      case 0x80: sink += data[0]; break;
      case 0x81: t0 = now_us(); break;
      case 0x82: t1 = now_us(); break;
      case 0x501: printf("%f %ld\n", t1 - t0, sink); return 0;
    }
  }
}
`;

/** Writes and compiles the C loop and its inputs into `dir`. */
async function buildC(
  dir: string,
  image: Uint8Array,
  sregs: Uint8Array,
  regs: Uint8Array,
): Promise<void> {
  await Deno.writeTextFile(`${dir}/exit_cost.c`, C_SOURCE);
  const cc = await new Deno.Command("gcc", {
    args: ["-O2", "-o", `${dir}/exit_cost`, `${dir}/exit_cost.c`],
  }).output();
  if (!cc.success) throw new Error(`gcc failed: ${new TextDecoder().decode(cc.stderr)}`);
  await Deno.writeFile(`${dir}/image`, image);
  await Deno.writeFile(`${dir}/sregs`, sregs);
  await Deno.writeFile(`${dir}/regs`, regs);
}

/** Runs the C loop built by {@link buildC}; returns µs between the marks. */
async function runC(dir: string, size: number): Promise<number> {
  const out = await new Deno.Command(`${dir}/exit_cost`, {
    args: [`${dir}/image`, String(size), `${dir}/sregs`, `${dir}/regs`],
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  const us = Number(text.split(" ")[0]);
  if (!out.success || !(us > 0)) {
    throw new Error(`C loop failed (${text}): ${new TextDecoder().decode(out.stderr)}`);
  }
  return us;
}

/** Measurement rounds; skiff and C alternate so load changes hit both alike. */
export const ROUNDS = 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** One skiff run of the guest; returns µs per exit and the start state for the C side. */
async function runSkiff(program: Uint8Array): Promise<{
  us: number;
  image: Uint8Array;
  sregs: Uint8Array;
  regs: Uint8Array;
}> {
  const timer = new TimerDeviceHost(0x80);
  await using g = testGuest({ programs: [program], devices: [timer.spec, debugExitSpec()] });
  // Capture the exact start state and image before running, for the C side.
  const fd = g.vm.vcpus[0].fd;
  const sregs = encodeSregs(fd.getSregs());
  const regs = encodeRegs(fd.getRegs());
  if (sregs.length !== KVM_SREGS_LAYOUT.size || regs.length !== KVM_REGS_LAYOUT.size) {
    throw new Error(
      `register encoding size mismatch: sregs ${sregs.length}/${KVM_SREGS_LAYOUT.size}, ` +
        `regs ${regs.length}/${KVM_REGS_LAYOUT.size}`,
    );
  }
  const image = g.memory.slice(0, GUEST_RAM).slice();
  await g.vm.start();
  const stop = await g.vm.wait();
  if (stop.kind !== "poweroff") throw new Error(`skiff guest ended with ${stop.kind}`);
  return { us: timer.elapsedMs() * 1000 / EXITS, image, sregs, regs };
}

/**
 * Alternates {@link ROUNDS} skiff and C runs; returns the `exit-cost` line
 * with the median µs per exit of each side.
 */
export async function bench(): Promise<string[]> {
  const program = guestProgram(EXITS);
  const dir = await Deno.makeTempDir({ prefix: "skiff-exit-cost-" });
  try {
    const skiff: number[] = [];
    const c: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const s = await runSkiff(program);
      skiff.push(s.us);
      if (i === 0) await buildC(dir, s.image, s.sregs, s.regs);
      c.push((await runC(dir, s.image.length)) / EXITS);
    }
    const skiffUs = median(skiff);
    const cUs = median(c);
    return [
      `exit-cost skiff=${skiffUs.toFixed(2)} c=${cUs.toFixed(2)} ratio=${
        (skiffUs / cUs).toFixed(2)
      }`,
    ];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) console.log((await bench()).join("\n"));
