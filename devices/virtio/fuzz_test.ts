/**
 * Fuzz: random descriptor tables, ring indices and register writes against
 * the mmio transport with real devices. The VMM must never throw and never
 * attempt a guest-memory access outside guest memory.
 */
import { ok, strictEqual } from "node:assert/strict";
import { type GuestMemory, RegionMemory } from "../../hv/memory.ts";
import { STATUS, type VirtioDevice } from "./device.ts";
import { MockMmioDriver } from "./mock_driver.ts";
import { VirtioMmioTransport } from "./mmio.ts";
import { PORT_NAMES, VirtioConsole } from "./console/device.ts";
import { VirtioFs } from "./fs/device.ts";
import { VirtioNet } from "./net/device.ts";
import { VirtioVsock } from "./vsock/device.ts";
import { FileSystem } from "../fuse/filesystem.ts";
import { FuseServer } from "../fuse/server.ts";

/** mulberry32: small, seeded, good enough for fuzzing. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Wraps guest memory; records any access that is not wholly inside it. */
class CheckingMemory implements GuestMemory {
  readonly inner: RegionMemory;
  violations: string[] = [];
  accesses = 0;
  constructor(inner: RegionMemory) {
    this.inner = inner;
  }
  get regions() {
    return this.inner.regions;
  }
  #check(addr: number, len: number, what: string): void {
    this.accesses++;
    if (!this.inner.contains(addr, len)) {
      this.violations.push(`${what} 0x${addr.toString(16)}+${len}`);
    }
  }
  contains(addr: number, length: number): boolean {
    return this.inner.contains(addr, length);
  }
  slice(addr: number, length: number) {
    this.#check(addr, length, "slice");
    return this.inner.slice(addr, length);
  }
  read(addr: number, dest: Uint8Array): void {
    this.#check(addr, dest.length, "read");
    this.inner.read(addr, dest);
  }
  write(addr: number, src: Uint8Array): void {
    this.#check(addr, src.length, "write");
    this.inner.write(addr, src);
  }
  readU8(addr: number) {
    this.#check(addr, 1, "readU8");
    return this.inner.readU8(addr);
  }
  readU16(addr: number) {
    this.#check(addr, 2, "readU16");
    return this.inner.readU16(addr);
  }
  readU32(addr: number) {
    this.#check(addr, 4, "readU32");
    return this.inner.readU32(addr);
  }
  readU64(addr: number) {
    this.#check(addr, 8, "readU64");
    return this.inner.readU64(addr);
  }
  writeU8(addr: number, v: number) {
    this.#check(addr, 1, "writeU8");
    this.inner.writeU8(addr, v);
  }
  writeU16(addr: number, v: number) {
    this.#check(addr, 2, "writeU16");
    this.inner.writeU16(addr, v);
  }
  writeU32(addr: number, v: number) {
    this.#check(addr, 4, "writeU32");
    this.inner.writeU32(addr, v);
  }
  writeU64(addr: number, v: bigint) {
    this.#check(addr, 8, "writeU64");
    this.inner.writeU64(addr, v);
  }
}

const MEM_BASE = 0x10_0000;
const MEM_SIZE = 0x10_0000;

function fuzzDevice(
  name: string,
  make: () => VirtioDevice,
  seed: number,
  ITERATIONS = 100_000,
): void {
  Deno.test(`fuzz: ${ITERATIONS} random descriptor tables and register writes (${name})`, () => {
    const rnd = prng(seed);
    const int = (n: number) => Math.floor(rnd() * n);
    const mem = new CheckingMemory(RegionMemory.fromBytes(MEM_SIZE, MEM_BASE));
    const dev = make();
    let needsReset = 0;
    const t = new VirtioMmioTransport(dev, mem, () => {}, {
      onDeviceError: () => needsReset++,
    });
    // The driver side writes memory directly; only the VMM's accesses are checked.
    const drv = new MockMmioDriver(t, mem.inner, MEM_BASE + 0x1000, MEM_SIZE - 0x2000);
    const nq = dev.queueMaxSizes.length;
    const all = (1n << 64n) - 1n;
    // Addresses: mostly inside memory, sometimes at its edges or far outside.
    const addr = () => {
      switch (int(6)) {
        case 0:
          return int(2 ** 32);
        case 1:
          return MEM_BASE + MEM_SIZE - int(64);
        case 2:
          return MEM_BASE - int(64);
        default:
          return MEM_BASE + int(MEM_SIZE);
      }
    };
    const len = () => [0, 1, 16, 32, 4096, int(256), int(2 ** 32)][int(7)];
    let inits = 0;
    for (let i = 0; i < ITERATIONS; i++) {
      if (!t.active || (t.status & STATUS.DEVICE_NEEDS_RESET) || int(500) === 0) {
        drv.init(all ^ (int(2) ? 0n : 1n << 29n), nq, [1, 2, 4, 8, 16][int(5)]);
        inits++;
      }
      const qi = int(nq);
      const q = drv.queues[qi];
      // Scribble over a few descriptors, ring slots and indices.
      for (let k = int(4); k >= 0; k--) {
        const flags = int(8);
        q.writeDesc(
          int(4) === 0 ? MEM_BASE + Math.floor(int(MEM_SIZE - 0x200) / 16) * 16 : q.rings.desc,
          int(q.size + 1),
          addr(),
          len(),
          flags,
          int(4) === 0 ? int(65536) : int(q.size + 1),
        );
      }
      mem.inner.writeU16(q.rings.avail + 4 + 2 * int(q.size), int(4) ? int(q.size) : int(65536));
      if (int(3) === 0) mem.inner.writeU16(q.rings.avail, int(2));
      if (int(3) === 0) mem.inner.writeU16(q.rings.avail + 4 + 2 * q.size, int(65536));
      const ahead = int(10) === 0 ? int(65536) : int(q.size + 1);
      mem.inner.writeU16(q.rings.avail + 2, (t.queues[qi].nextAvail + ahead) & 0xffff);
      drv.kick(qi);
      if (int(8) === 0) {
        // A random register write anywhere in the window, any width.
        const off = int(0x200);
        const width = [1, 2, 4, 8][int(4)];
        const b = new Uint8Array(width);
        for (let j = 0; j < width; j++) b[j] = int(256);
        t.write(off, b);
      }
      if (int(16) === 0) t.read(int(0x200), new Uint8Array([1, 2, 4, 8][int(4)]));
      if (dev instanceof VirtioNet && int(4) === 0) dev.toGuest(new Uint8Array(int(3000) + 14));
      if (dev instanceof VirtioConsole && int(4) === 0) {
        dev.ports[int(dev.ports.length)].send(new Uint8Array(int(300) + 1));
        if (int(50) === 0) {
          dev.ports[int(dev.ports.length)].pending = [];
          dev.ports[int(dev.ports.length)].pendingBytes = 0;
        }
      }
    }
    console.log(
      `fuzz ${name}: ${inits} inits, ${needsReset} device errors, ${mem.accesses} checked accesses`,
    );
    strictEqual(mem.violations.length, 0, mem.violations.slice(0, 5).join("; "));
    ok(needsReset > 100, `bad chains were detected (${needsReset})`);
    ok(inits > 100);
  });
}

fuzzDevice("console", () => {
  return new VirtioConsole({ portNames: [PORT_NAMES.stdin, PORT_NAMES.stdout] });
}, 0x5eed);

fuzzDevice(
  "virtio-fs",
  () => {
    return new VirtioFs({ tag: "fuzz", server: new FuseServer(new FileSystem()) });
  },
  0xf5,
  30_000,
);

fuzzDevice(
  "virtio-net",
  () => {
    return new VirtioNet({ mac: new Uint8Array([2, 0, 0, 0, 0, 1]) });
  },
  0x4e7,
  30_000,
);

fuzzDevice(
  "virtio-vsock",
  () => {
    const dev = new VirtioVsock({ guestCid: 3 });
    dev.listen(1, () => {});
    return dev;
  },
  0x75c,
  30_000,
);
