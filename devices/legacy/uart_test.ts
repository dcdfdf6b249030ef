import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { RX_RING, TX_RING, Uart, UART_BITS as B, UART_REG as R, UartRegisters } from "./uart.ts";

function regs() {
  const irq: number[] = [];
  const r = new UartRegisters(UartRegisters.newState(), (l) => irq.push(l));
  return { r, irq, rd: (o: number) => r.read(o).value };
}

Deno.test("uart: transmit goes to the ring, THRE interrupt when enabled, cleared by IIR read", () => {
  const { r, irq, rd } = regs();
  strictEqual(rd(R.IIR_FCR), B.IIR_NO_INT);
  strictEqual(rd(R.LSR), B.LSR_THRE | B.LSR_TEMT);
  strictEqual(r.write(R.RBR_THR_DLL, 0x68), "tx-started");
  strictEqual(r.write(R.RBR_THR_DLL, 0x69), null);
  deepStrictEqual([...r.drainTx()], [0x68, 0x69]);
  deepStrictEqual(irq, []); // IER is 0: no interrupt
  r.write(R.IER_DLM, B.IER_THRI); // enabling THRI with THR empty raises it at once
  deepStrictEqual(irq, [1]);
  strictEqual(rd(R.IIR_FCR), B.IIR_THRI);
  deepStrictEqual(irq, [1, 0]);
  strictEqual(rd(R.IIR_FCR), B.IIR_NO_INT);
  r.write(R.RBR_THR_DLL, 0x21);
  deepStrictEqual(irq, [1, 0, 1]);
});

Deno.test("uart: receive, data-ready interrupt and priorities, FIFO bits in IIR", () => {
  const { r, irq, rd } = regs();
  r.write(R.IIR_FCR, B.FCR_ENABLE);
  r.write(R.IER_DLM, B.IER_RDI | B.IER_THRI);
  strictEqual(rd(R.IIR_FCR), B.IIR_THRI | B.IIR_FIFO_ENABLED);
  strictEqual(r.receive(new TextEncoder().encode("ok")), 2);
  strictEqual(irq.at(-1), 1);
  strictEqual(rd(R.LSR) & B.LSR_DR, B.LSR_DR);
  strictEqual(rd(R.IIR_FCR), B.IIR_RDI | B.IIR_FIFO_ENABLED); // data beats THRE
  strictEqual(rd(R.RBR_THR_DLL), 0x6f);
  strictEqual(rd(R.RBR_THR_DLL), 0x6b);
  strictEqual(rd(R.LSR) & B.LSR_DR, 0);
  strictEqual(irq.at(-1), 0);
  strictEqual(rd(R.RBR_THR_DLL), 0); // empty reads 0
});

Deno.test("uart: receive overrun sets OE once, host is told when the ring drains", () => {
  const { r, rd } = regs();
  const big = new Uint8Array(RX_RING + 10).fill(0x41);
  strictEqual(r.receive(big), RX_RING);
  let drained = false;
  for (let i = 0; i < RX_RING; i++) drained = r.read(R.RBR_THR_DLL).rxDrained || drained;
  strictEqual(drained, true);
  strictEqual(rd(R.LSR) & B.LSR_OE, 0); // receive() never overflows: the host keeps the rest
});

Deno.test("uart: divisor latch, LCR, MCR, scratch, loopback and MSR", () => {
  const { r, rd } = regs();
  strictEqual(rd(R.LCR), 0);
  r.write(R.LCR, B.LCR_DLAB | 0x03);
  strictEqual(rd(R.RBR_THR_DLL), 12); // reset divisor: 9600 baud
  r.write(R.RBR_THR_DLL, 1);
  r.write(R.IER_DLM, 0);
  strictEqual(rd(R.RBR_THR_DLL), 1);
  r.write(R.LCR, 0x03);
  strictEqual(rd(R.IER_DLM), 0); // IER, not DLM
  r.write(R.SCR, 0x5a);
  strictEqual(rd(R.SCR), 0x5a);
  strictEqual(rd(R.MSR), B.MSR_DCD | B.MSR_DSR | B.MSR_CTS);
  // Linux's autoconfig loopback check: MCR = LOOP|OUT2|RTS → MSR high nibble 0x90.
  r.write(R.MCR, B.MCR_LOOP | B.MCR_OUT2 | B.MCR_RTS);
  strictEqual(rd(R.MSR) & 0xf0, 0x90);
  r.write(R.RBR_THR_DLL, 0x33); // looped back, not transmitted
  strictEqual(r.txLen(), 0);
  strictEqual(rd(R.RBR_THR_DLL), 0x33);
  strictEqual(rd(R.MCR), 0x1a);
});

Deno.test("uart: full transmit ring reports tx-full and counts drops", () => {
  const { r } = regs();
  for (let i = 0; i < TX_RING; i++) r.write(R.RBR_THR_DLL, i);
  strictEqual(r.write(R.RBR_THR_DLL, 1), "tx-full");
  r.dropTx();
  strictEqual(r.txDropped, 1);
  strictEqual(r.drainTx().length, TX_RING);
  strictEqual(r.write(R.RBR_THR_DLL, 1), "tx-started");
});

Deno.test("uart: host side delivers output, queues input beyond the ring, save/restore", () => {
  const out: number[] = [];
  const lines: [number, number][] = [];
  const u = new Uart({ output: (b) => out.push(...b) });
  const vm = {
    addDevice() {},
    onDeviceMessage() {},
    setIrqLine: (gsi: number, level: 0 | 1) => lines.push([gsi, level]),
  };
  u.attach(vm);
  const guest = new UartRegisters(u.state, () => {});
  guest.write(R.RBR_THR_DLL, 0x41);
  u.flush();
  deepStrictEqual(out, [0x41]);
  guest.write(R.IER_DLM, B.IER_RDI);
  u.receive(new Uint8Array(RX_RING + 3).fill(7));
  deepStrictEqual(lines, [[4, 1]]); // data ready with RDI enabled: the host raised IRQ 4
  for (let i = 0; i < RX_RING; i++) guest.read(R.RBR_THR_DLL);
  const snapBefore = u.save();
  strictEqual(snapBefore.rx.length, 0);
  u.receive(new Uint8Array(0)); // the "rx" message makes the host feed the rest
  const snap = u.save();
  strictEqual(snap.rx.length, 3);
  strictEqual(snap.ier, B.IER_RDI);
  const u2 = new Uart();
  u2.restore(snap);
  deepStrictEqual(u2.save(), snap);
});
