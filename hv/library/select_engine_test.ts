import { strictEqual, throws } from "node:assert/strict";
import { chooseEngine, type HostProbe } from "./select_engine.ts";
import { EngineUnavailableError } from "../errors.ts";

function host(o: { kvm?: boolean; opens?: boolean; pvm?: boolean; qemu?: boolean }): HostProbe {
  return {
    exists: (p) => (p === "/dev/kvm" && !!o.kvm) || (p === "/sys/module/kvm_pvm" && !!o.pvm),
    kvmOpens: () => o.opens ?? !!o.kvm,
    which: (n) => (n === "qemu-system-x86_64" && o.qemu ? "/usr/bin/qemu-system-x86_64" : null),
  };
}

Deno.test("auto: kvm on real KVM, qemu/TCG on emulated kvm_pvm or without /dev/kvm", () => {
  strictEqual(chooseEngine("auto", host({ kvm: true, qemu: true })).name, "kvm");
  const pvm = chooseEngine("auto", host({ kvm: true, pvm: true, qemu: true }));
  strictEqual(pvm.name, "qemu");
  strictEqual(pvm.qemuAccel, "tcg");
  strictEqual(pvm.why.includes("kvm_pvm"), true);
  strictEqual(chooseEngine("auto", host({ qemu: true })).name, "qemu");
  strictEqual(chooseEngine("qemu", host({ kvm: true, qemu: true })).qemuAccel, "kvm");
});

Deno.test("explicit choices are honoured or fail naming the way out", () => {
  strictEqual(chooseEngine("kvm", host({ kvm: true, pvm: true })).name, "kvm");
  throws(
    () => chooseEngine("kvm", host({})),
    /engine kvm is unavailable: \/dev\/kvm does not exist/,
  );
  throws(() => chooseEngine("qemu", host({ kvm: true })), /apt-get install qemu-system-x86/);
  throws(
    () => chooseEngine("auto", host({ kvm: true, pvm: true })),
    (e: unknown) =>
      e instanceof EngineUnavailableError && /hardware virtualization/.test(e.message) &&
      /install QEMU/.test(e.message),
  );
  throws(() => chooseEngine("bogus" as "auto", host({ qemu: true })), /unknown engine 'bogus'/);
});
