import { rejects } from "node:assert/strict";
import { VirtioVsock } from "../../devices/virtio/vsock/device.ts";
import { MockVsockGuest } from "../../devices/virtio/vsock/mock_guest.ts";
import { VmError } from "../errors.ts";
import { vsockReady } from "./vsock_transport.ts";

const NEVER = new Promise<never>(() => {});

Deno.test("vsockReady: resolves when the driver sets the device up; its deadline is a VmError; stop ends it", async () => {
  const up = new VirtioVsock({ guestCid: 3 });
  const waiting = vsockReady(up, NEVER);
  new MockVsockGuest(up); // the driver reaches DRIVER_OK
  await waiting;
  await vsockReady(up, NEVER, 1); // at once when already up

  await rejects(
    vsockReady(new VirtioVsock({ guestCid: 3 }), NEVER, 20),
    (e) => e instanceof VmError && /vsock device \(20 ms\)/.test(e.message),
  );
  const died = Promise.reject(new Error("the guest died"));
  died.catch(() => {});
  await rejects(vsockReady(new VirtioVsock({ guestCid: 3 }), died), /the guest died/);
});
