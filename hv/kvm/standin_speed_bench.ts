/**
 * What guest code costs on this host's /dev/kvm, at CPL0 and at CPL3 — the
 * facts the stand-in kernel (testdata/standin/) is designed around. Runs
 * testdata/standin/speed_probe.ts on a machine from the kvm engine's builder
 * and prints one line per section with the CPL0/CPL3 ratio as reference:
 * the same `dec; jnz` loop and the same `rep movsb` in both modes, an
 * interrupt-gate round trip, port-I/O and MMIO exits from CPL3, and HLT
 * woken by the local APIC timer (time per HLT against the timer period).
 *
 * @module
 */

import { join } from "node:path";
import { buildKvmMachine } from "./builder.ts";
import { MarksDevice } from "./testdata/marks_device.ts";
import { PROBE, PROBE_SECTIONS, speedProbeElf } from "./testdata/standin/speed_probe.ts";
import type { VmConfig } from "../config.ts";
import { median } from "../../tests/bench_util.ts";

/** Only catches a hang: the probe needs a few seconds. */
const HANG_MS = 120_000;

/** Runs the probe once; milliseconds per section. */
export async function probeOnce(): Promise<Record<keyof typeof PROBE_SECTIONS, number>> {
  const dir = await Deno.makeTempDir({ prefix: "skiff-speed-probe-" });
  try {
    const kernel = join(dir, "vmlinux");
    await Deno.writeFile(kernel, speedProbeElf());
    const config: VmConfig = {
      kernel,
      cpus: 1,
      memoryMiB: PROBE.MEMORY_MIB,
      cmdlineExtra: "",
      root: null,
      volumes: [],
      net: null,
      hostname: "probe",
      verbose: false,
    };
    let log = "";
    await using m = await buildKvmMachine(config, {
      onConsole: (b) => log += new TextDecoder().decode(b),
    });
    const marks = new MarksDevice(PROBE.MARKS);
    m.vm.addDevice(marks.spec);
    await m.vm.start();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const hang = new Promise<never>((_, reject) =>
      timer = setTimeout(() => reject(new Error(`probe: no power-off in ${HANG_MS} ms`)), HANG_MS)
    );
    try {
      const stop = await Promise.race([m.vm.wait(), hang]);
      if (stop.kind !== "poweroff") {
        throw new Error(`probe stopped: ${JSON.stringify(stop)} ${log}`);
      }
    } finally {
      clearTimeout(timer);
    }
    const out = {} as Record<keyof typeof PROBE_SECTIONS, number>;
    for (const [k, [a, b]] of Object.entries(PROBE_SECTIONS)) {
      out[k as keyof typeof PROBE_SECTIONS] = marks.between(a, b);
    }
    return out;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** `deno task bench standin`: three probe runs, medians. */
export async function bench(): Promise<string[]> {
  const runs: Awaited<ReturnType<typeof probeOnce>>[] = [];
  for (let i = 0; i < 3; i++) runs.push(await probeOnce());
  const m = (k: keyof typeof PROBE_SECTIONS) => median(runs.map((r) => r[k]));
  const ns = (ms: number, n: number) => (ms * 1e6) / n;
  const loop0 = ns(m("cpl0Loop"), PROBE.CPL0_LOOP * 2);
  const loop3 = ns(m("cpl3Loop"), PROBE.CPL3_LOOP * 2);
  const copy0 = ns(m("cpl0Copy"), PROBE.CPL0_COPY);
  const copy3 = ns(m("cpl3CopyWarm"), PROBE.CPL3_COPY);
  const copy3cold = ns(m("cpl3CopyCold"), PROBE.CPL3_COPY);
  const port0 = ns(m("cpl0Ports"), PROBE.PORT_EXITS) / 1000;
  const port3 = ns(m("cpl3Ports"), PROBE.PORT_EXITS) / 1000;
  const f = (x: number, d = 2) => x.toFixed(d);
  return [
    `standin-speed instruction cpl0=${f(loop0)}ns cpl3=${f(loop3, 3)}ns ratio=${
      f(loop0 / loop3, 0)
    }`,
    `standin-speed rep-movsb-byte cpl0=${f(copy0)}ns cpl3=${f(copy3, 4)}ns ratio=${
      f(copy0 / copy3, 0)
    } (cpl3 first touch ${f(copy3cold, 4)}ns)`,
    `standin-speed port-exit cpl0=${f(port0)}us cpl3=${f(port3)}us ratio=${f(port0 / port3)}`,
    `standin-speed int-gate-roundtrip cpl3=${f(ns(m("cpl3Int"), PROBE.INTS) / 1000)}us`,
    `standin-speed mmio-exit cpl3=${f(ns(m("cpl3Mmio"), PROBE.MMIO_EXITS) / 1000)}us`,
    `standin-speed ioeventfd-notify cpl3=${f(ns(m("cpl3Notify"), PROBE.NOTIFIES) / 1000)}us`,
    `standin-speed rdtsc cpl3=${f(ns(m("cpl3Rdtsc"), PROBE.RDTSCS))}ns pause cpl3=${
      f(ns(m("cpl3Pause"), PROBE.PAUSES))
    }ns`,
    `standin-speed hlt-timer-wake per=${f(m("cpl3Hlt") / PROBE.HLTS, 3)}ms period=${
      f(PROBE.TIMER_NS / 1e6, 3)
    }ms ratio=${f(m("cpl3Hlt") / PROBE.HLTS / (PROBE.TIMER_NS / 1e6))}`,
  ];
}

if (import.meta.main) { for (const l of await bench()) console.log(l); }
