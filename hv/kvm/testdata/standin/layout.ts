/**
 * Where the stand-in kernel keeps everything (guest-physical = virtual: its
 * page tables identity-map the first 4 GiB). The code is loaded at 16 MiB as
 * a vmlinux would be; the system tables (page tables, GDT, IDT, TSS) follow
 * as a second ELF segment; everything else is plain RAM the stand-in clears
 * or overwrites itself, so a cold boot and a restored snapshot see the same
 * picture. Guest RAM must reach {@link STANDIN.HEAP} plus the largest file
 * the tests write (the stand-in reads its RAM end from the e820 map).
 *
 * ```
 * 0x0100_0000  code (ELF segment 1)
 * 0x0110_0000  system tables (ELF segment 2): PML4, PDPT, 4 PDs, GDT, IDT, TSS
 * 0x0111_0000  top of the CPL0 stack (interrupts and the idle call)
 * 0x0112_0000  top of the CPL3 stack
 * 0x0112_0000  globals (driver and agent state), cleared at boot
 * 0x0114_0000  virtqueues rx / tx / event (one 16 KiB block each)
 * 0x0118_0000  connection table, process table, file table (cleared at boot)
 * 0x0130_0000  request buffers, one per connection slot
 * 0x0140_0000  tx packet slots (header + up to 64 KiB payload each)
 * 0x0190_0000  rx buffers posted to the device
 * 0x0200_0000  per-connection receive rings
 * 0x0300_0000  file data (bump allocator) up to the end of RAM
 * ```
 *
 * @module
 */

const KiB = 1024;
const MiB = 1024 * KiB;

/** Addresses and sizes of the stand-in (see the module comment). */
export const STANDIN = {
  /** Load address of the code (where Debian's vmlinux loads too). */
  CODE: 16 * MiB,
  /** Largest code size. */
  CODE_MAX: 1 * MiB,
  /** The system tables segment. */
  TABLES: 17 * MiB,
  /** Top of the CPL0 stack (TSS.RSP0). */
  KSTACK_TOP: 17 * MiB + 64 * KiB,
  /** Top of the CPL3 stack. */
  USTACK_TOP: 17 * MiB + 128 * KiB,
  /** Driver and agent globals (4 KiB, cleared at boot). */
  GLOBALS: 17 * MiB + 128 * KiB,
  /** Virtqueue blocks: queue q at VQ + q × VQ_STRIDE. */
  VQ: 17 * MiB + 256 * KiB,
  VQ_STRIDE: 16 * KiB,
  /** Connection, process and file tables (cleared at boot). */
  TABLE_AREA: 17 * MiB + 512 * KiB,
  TABLE_AREA_SIZE: 1 * MiB + 512 * KiB,
  /** Request buffers: one of REQ_BUF bytes per connection slot. */
  REQ_BUFS: 19 * MiB,
  /** Tx packet slots: TX_SLOTS × TX_SLOT bytes. */
  TX_BUFS: 20 * MiB,
  /** Rx buffers: RX_QUEUE × RX_SLOT bytes. */
  RX_BUFS: 25 * MiB,
  /** Connection receive rings: CONNS × CONN_RING bytes. */
  RINGS: 32 * MiB,
  /** File data, up to the end of RAM. */
  HEAP: 48 * MiB,
} as const;

/** Sizes of the driver's and agent's tables. */
export const SIZES = {
  /** Descriptors in each virtqueue (a power of two, ≤ the device's 256). */
  QUEUE: 64,
  /** Bytes of one rx buffer: a packet header and up to 64 KiB of payload. */
  RX_SLOT: 44 + 64 * KiB,
  /** Bytes of one tx slot (same shape). */
  TX_SLOT: 44 + 64 * KiB,
  /** Connection slots. */
  CONNS: 64,
  /** Bytes of one connection slot in the table. */
  CONN: 1024,
  /** Receive ring per connection (the `buf_alloc` the stand-in advertises). */
  CONN_RING: 256 * KiB,
  /** Largest request payload the stand-in takes (the real agent: 1 MiB). */
  REQ_BUF: 16 * KiB,
  /** Process slots (running commands). */
  PROCS: 32,
  /** Bytes of one process slot. */
  PROC: 128,
  /** File table entries. */
  FILES: 256,
  /** Bytes of one file entry: path (up to FILE_PATH bytes with the NUL) and fields. */
  FILE: 512,
  FILE_PATH: 480,
} as const;
