/**
 * The stand-in agent's data: globals, connection slots, process slots, file
 * entries and the virtqueue layout, as byte offsets (all little-endian), and
 * small helpers that make memory operands for them.
 *
 * @module
 */

import { type Mem, mem, type Reg64, type Size } from "../../../../init/asm/mod.ts";
import { SIZES, STANDIN } from "./layout.ts";

/** Globals at {@link STANDIN.GLOBALS}. */
export const G = {
  /** u64 MMIO window of the vsock device; u32 its GSI. */
  DEV_BASE: 0,
  DEV_GSI: 8,
  /** Per queue (rx, tx, event): u32 our avail index, used index seen, avail index at the last kick. */
  AVAIL: 16, // + 4 × q
  SEEN: 32, // + 4 × q
  KICKED: 48, // + 4 × q
  /** u32 free tx slots on the stack at {@link G.TX_FREE}. */
  TX_NFREE: 64,
  /** u32 next guest port for connections to the host, next pid. */
  NEXT_PORT: 68,
  NEXT_PID: 72,
  /** u32 set by anything that did work in this loop turn. */
  PROGRESS: 76,
  /** u64 file data allocator: top, end of RAM, the writer holding the top (a connection) or 0. */
  HEAP_TOP: 80,
  HEAP_END: 88,
  HEAP_OWNER: 96,
  /** u32 1 once POWEROFF was answered: the loop powers off after its kick. */
  POWEROFF: 104,
  /** u32[QUEUE] stack of free tx slot ids. */
  TX_FREE: 128,
  /** A connection-shaped scratch slot for RST replies to unknown connections (first 128 bytes). */
  RAW_CONN: 512,
  /** 64 bytes for number formatting. */
  NUMBUF: 704,
  SIZE: 1024,
} as const;

/** Connection slot states. */
export const CS = { FREE: 0, CONNECTING: 1, OPEN: 2, CLOSING: 3, DEAD: 4 } as const;
/** Connection flags (what the peer did). */
export const CF = {
  /** SHUTDOWN RCV: the host reads no more. */
  PEER_RCV: 1,
  /** SHUTDOWN SEND: the host sends no more (EOF after the buffered bytes). */
  PEER_SEND: 2,
  /** RST received (or a transport reset). */
  RESET: 4,
} as const;
/** Control packets a connection still has to send. */
export const CP = { REQUEST: 1, RESPONSE: 2, CREDIT: 4, SHUTDOWN: 8, RST: 16 } as const;
/** Connection roles. */
export const ROLE = { NONE: 0, REQUEST: 1 } as const;

/** A connection slot ({@link SIZES.CONN} bytes). */
export const C = {
  STATE: 0,
  LPORT: 4,
  PPORT: 8,
  FLAGS: 12,
  PENDING: 16,
  /** u32 counters: bytes received into the ring, consumed, fwd_cnt as last sent, bytes sent. */
  RX_CNT: 20,
  FWD_CNT: 24,
  LAST_FWD: 28,
  TX_CNT: 32,
  /** u32 the host's buf_alloc and fwd_cnt as last seen. */
  PEER_BUF: 36,
  PEER_FWD: 40,
  ROLE: 44,
  PHASE: 48,
  REQ_KIND: 52,
  REQ_LEN: 56,
  /** u32 reply line bytes queued and already sent. */
  LINE_LEN: 60,
  LINE_OFF: 64,
  INDEX: 68,
  /** u64 receive ring, request buffer, owning process, file, byte offset. */
  RING: 72,
  REQBUF: 80,
  PROC: 88,
  FILE: 96,
  OFF: 104,
  /** u32 control EOF already turned into SIGKILL. */
  EOF_KILLED: 112,
  LINE: 128,
  LINE_MAX: SIZES.CONN - 128,
} as const;

/** Process slot states. */
export const PS = { FREE: 0, CONNECTING: 1, RUNNING: 2 } as const;

/** A process slot ({@link SIZES.PROC} bytes). */
export const P = {
  STATE: 0,
  PID: 4,
  KIND: 8,
  /** u32 signal to act on (0 none). */
  SIGNAL: 12,
  /** u32 exit code for the commands that know it at start. */
  CODE: 16,
  /** u32 lines: which of the two lines of this round is being written. */
  STAGE: 20,
  /** u64 connections (0 = /dev/null). */
  CTL: 24,
  IN: 32,
  OUT: 40,
  ERR: 48,
  /** u64 argv (relocated pointers into the control connection's request buffer). */
  ARGV: 56,
  /** u64 lines: how many, done so far. */
  COUNT: 64,
  I: 72,
  /** u32 text being written from {@link P.BUF}: length, sent; u64 its connection. */
  TEXT_LEN: 80,
  TEXT_OFF: 84,
  TEXT_CONN: 88,
  /** u64 a 4 KiB scratch buffer of this slot. */
  BUF: 96,
} as const;

/** Bytes of a process's scratch buffer. */
export const PROC_BUF = 4096;

/** A file entry ({@link SIZES.FILE} bytes). */
export const F = {
  USED: 0,
  MODE: 4,
  SIZE: 8,
  DATA: 16,
  CAP: 24,
  PATH: 32,
} as const;

/** Where the tables live inside {@link STANDIN.TABLE_AREA}. */
export const TABLES = {
  CONNS: STANDIN.TABLE_AREA,
  PROCS: STANDIN.TABLE_AREA + SIZES.CONNS * SIZES.CONN,
  FILES: STANDIN.TABLE_AREA + SIZES.CONNS * SIZES.CONN + SIZES.PROCS * SIZES.PROC,
  PROC_BUFS: STANDIN.TABLE_AREA + SIZES.CONNS * SIZES.CONN + SIZES.PROCS * SIZES.PROC +
    SIZES.FILES * SIZES.FILE,
} as const;

/** virtio-vsock packet header fields (`struct virtio_vsock_hdr`, virtio 1.2 §5.10.6). */
export const HDR = {
  SRC_CID: 0,
  DST_CID: 8,
  SRC_PORT: 16,
  DST_PORT: 20,
  LEN: 24,
  TYPE: 28,
  OP: 30,
  FLAGS: 32,
  BUF_ALLOC: 36,
  FWD_CNT: 40,
  SIZE: 44,
} as const;

/** §5.10.6 ops. */
export const OP = {
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** Largest payload of one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const MAX_PKT = 64 * 1024;

/** Virtqueue indices (§5.10.2) and the layout of each queue's block (split ring, §2.7). */
export const VQ = {
  RX: 0,
  TX: 1,
  EVENT: 2,
  /** Descriptor table (16 bytes each). */
  DESC: 0x0000,
  /** Driver area: flags, idx, ring[QUEUE], used_event. */
  AVAIL: 0x0400,
  /** Device area: flags, idx, ring[QUEUE] of (id, len), avail_event. */
  USED: 0x1000,
  /** The event queue's 8-byte buffers. */
  EVENT_BUFS: 0x2000,
} as const;

/** Base of queue `q`'s block. */
export function vq(q: number): number {
  return STANDIN.VQ + q * STANDIN.VQ_STRIDE;
}

/** `[GLOBALS + off]` of `size` bits. */
export function g(off: number, size: Size = 32): Mem {
  return mem({ disp: STANDIN.GLOBALS + off, size });
}

/** `[base + off]` of `size` bits. */
export function at(base: Reg64, off: number, size: Size = 32): Mem {
  return mem({ base, disp: off, size });
}
