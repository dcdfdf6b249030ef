/**
 * KVM's userspace ABI for x86-64: ioctl request numbers, constants and struct
 * layouts, transcribed from `<linux/kvm.h>` and `<asm/kvm.h>`.
 * `layout_test.ts` compiles a C program against the system headers and checks
 * every size, offset and request number here.
 *
 * Layouts are plain tables: the struct's C name, its `sizeof`, and the byte
 * offset of each field keyed by its C member designator (`"io.port"` is
 * `offsetof(struct kvm_run, io.port)`).
 *
 * @module
 */

import { io, ior, iow, iowr } from "./ioc.ts";

/** A C struct's size and field offsets. */
export interface StructLayout {
  /** The struct's C tag, e.g. `kvm_run`. */
  readonly name: string;
  /** `sizeof(struct name)`. */
  readonly size: number;
  /** `offsetof(struct name, designator)` per member designator. */
  readonly fields: Readonly<Record<string, number>>;
}

function layout<F extends Record<string, number>>(
  name: string,
  size: number,
  fields: F,
): { readonly name: string; readonly size: number; readonly fields: Readonly<F> } {
  return { name, size, fields };
}

/** `struct kvm_run`, the per-vCPU page shared with the kernel (mmap of the vCPU fd). */
export const KVM_RUN_LAYOUT = layout("kvm_run", 2352, {
  request_interrupt_window: 0,
  immediate_exit: 1,
  exit_reason: 8,
  ready_for_interrupt_injection: 12,
  if_flag: 13,
  flags: 14,
  cr8: 16,
  apic_base: 24,
  "hw.hardware_exit_reason": 32,
  "fail_entry.hardware_entry_failure_reason": 32,
  "fail_entry.cpu": 40,
  "ex.exception": 32,
  "ex.error_code": 36,
  "io.direction": 32,
  "io.size": 33,
  "io.port": 34,
  "io.count": 36,
  "io.data_offset": 40,
  "mmio.phys_addr": 32,
  "mmio.data": 40,
  "mmio.len": 48,
  "mmio.is_write": 52,
  "internal.suberror": 32,
  "internal.ndata": 36,
  "internal.data": 40,
  "emulation_failure.suberror": 32,
  "emulation_failure.ndata": 36,
  "emulation_failure.flags": 40,
  "emulation_failure.insn_size": 48,
  "emulation_failure.insn_bytes": 49,
  "system_event.type": 32,
  "system_event.ndata": 36,
  "system_event.data": 40,
  kvm_valid_regs: 288,
  kvm_dirty_regs: 296,
  s: 304,
});

/** `struct kvm_regs`: 18 u64 general registers, in this order. */
export const KVM_REGS_LAYOUT = layout("kvm_regs", 144, {
  rax: 0,
  rbx: 8,
  rcx: 16,
  rdx: 24,
  rsi: 32,
  rdi: 40,
  rsp: 48,
  rbp: 56,
  r8: 64,
  r9: 72,
  r10: 80,
  r11: 88,
  r12: 96,
  r13: 104,
  r14: 112,
  r15: 120,
  rip: 128,
  rflags: 136,
});

/** `struct kvm_segment`. */
export const KVM_SEGMENT_LAYOUT = layout("kvm_segment", 24, {
  base: 0,
  limit: 8,
  selector: 12,
  type: 14,
  present: 15,
  dpl: 16,
  db: 17,
  s: 18,
  l: 19,
  g: 20,
  avl: 21,
  unusable: 22,
});

/** `struct kvm_dtable` (GDT/IDT base and limit). */
export const KVM_DTABLE_LAYOUT = layout("kvm_dtable", 16, { base: 0, limit: 8 });

/** `struct kvm_sregs`: segments, descriptor tables, control registers, pending-interrupt bitmap. */
export const KVM_SREGS_LAYOUT = layout("kvm_sregs", 312, {
  cs: 0,
  ds: 24,
  es: 48,
  fs: 72,
  gs: 96,
  ss: 120,
  tr: 144,
  ldt: 168,
  gdt: 192,
  idt: 208,
  cr0: 224,
  cr2: 232,
  cr3: 240,
  cr4: 248,
  cr8: 256,
  efer: 264,
  apic_base: 272,
  interrupt_bitmap: 280,
});

/** `struct kvm_fpu` (legacy FXSAVE-like view; snapshots use XSAVE when available). */
export const KVM_FPU_LAYOUT = layout("kvm_fpu", 416, {
  fpr: 0,
  fcw: 128,
  fsw: 130,
  ftwx: 132,
  last_opcode: 134,
  last_ip: 136,
  last_dp: 144,
  xmm: 152,
  mxcsr: 408,
});

/** `struct kvm_lapic_state`: the 1 KiB local-APIC register page. */
export const KVM_LAPIC_STATE_LAYOUT = layout("kvm_lapic_state", 1024, { regs: 0 });

/** `struct kvm_msr_entry`. */
export const KVM_MSR_ENTRY_LAYOUT = layout("kvm_msr_entry", 16, { index: 0, reserved: 4, data: 8 });
/** `struct kvm_msrs` header; `entries` follow. */
export const KVM_MSRS_LAYOUT = layout("kvm_msrs", 8, { nmsrs: 0, pad: 4, entries: 8 });
/** `struct kvm_msr_list` header; `indices` (u32) follow. */
export const KVM_MSR_LIST_LAYOUT = layout("kvm_msr_list", 4, { nmsrs: 0, indices: 4 });

/** `struct kvm_cpuid_entry2`. */
export const KVM_CPUID_ENTRY2_LAYOUT = layout("kvm_cpuid_entry2", 40, {
  function: 0,
  index: 4,
  flags: 8,
  eax: 12,
  ebx: 16,
  ecx: 20,
  edx: 24,
  padding: 28,
});
/** `struct kvm_cpuid2` header; `entries` follow. */
export const KVM_CPUID2_LAYOUT = layout("kvm_cpuid2", 8, { nent: 0, padding: 4, entries: 8 });

/** `struct kvm_userspace_memory_region`. */
export const KVM_USERSPACE_MEMORY_REGION_LAYOUT = layout("kvm_userspace_memory_region", 32, {
  slot: 0,
  flags: 4,
  guest_phys_addr: 8,
  memory_size: 16,
  userspace_addr: 24,
});

/** `struct kvm_irq_level`. */
export const KVM_IRQ_LEVEL_LAYOUT = layout("kvm_irq_level", 8, { irq: 0, status: 0, level: 4 });

/** `struct kvm_irqchip`: chip id and a 512-byte union (PIC or IOAPIC state). */
export const KVM_IRQCHIP_LAYOUT = layout("kvm_irqchip", 520, {
  chip_id: 0,
  pad: 4,
  chip: 8,
  "chip.pic": 8,
  "chip.ioapic": 8,
});
/** `struct kvm_pic_state`. */
export const KVM_PIC_STATE_LAYOUT = layout("kvm_pic_state", 16, {
  last_irr: 0,
  irr: 1,
  imr: 2,
  isr: 3,
  priority_add: 4,
  irq_base: 5,
  read_reg_select: 6,
  poll: 7,
  special_mask: 8,
  init_state: 9,
  auto_eoi: 10,
  rotate_on_auto_eoi: 11,
  special_fully_nested_mode: 12,
  init4: 13,
  elcr: 14,
  elcr_mask: 15,
});
/** `struct kvm_ioapic_state` (24 redirection entries). */
export const KVM_IOAPIC_STATE_LAYOUT = layout("kvm_ioapic_state", 216, {
  base_address: 0,
  ioregsel: 8,
  id: 12,
  irr: 16,
  pad: 20,
  redirtbl: 24,
});

/** `struct kvm_pit_channel_state`. */
export const KVM_PIT_CHANNEL_STATE_LAYOUT = layout("kvm_pit_channel_state", 24, {
  count: 0,
  latched_count: 4,
  count_latched: 6,
  status_latched: 7,
  status: 8,
  read_state: 9,
  write_state: 10,
  write_latch: 11,
  rw_mode: 12,
  mode: 13,
  bcd: 14,
  gate: 15,
  count_load_time: 16,
});
/** `struct kvm_pit_state2`. */
export const KVM_PIT_STATE2_LAYOUT = layout("kvm_pit_state2", 112, {
  channels: 0,
  flags: 72,
  reserved: 76,
});
/** `struct kvm_pit_config` (KVM_CREATE_PIT2). */
export const KVM_PIT_CONFIG_LAYOUT = layout("kvm_pit_config", 64, { flags: 0, pad: 4 });

/** `struct kvm_clock_data`. */
export const KVM_CLOCK_DATA_LAYOUT = layout("kvm_clock_data", 48, {
  clock: 0,
  flags: 8,
  pad0: 12,
  realtime: 16,
  host_tsc: 24,
  pad: 32,
});

/** `struct kvm_xsave`: the 4 KiB legacy XSAVE area (KVM_GET_XSAVE2 may return more). */
export const KVM_XSAVE_LAYOUT = layout("kvm_xsave", 4096, { region: 0, extra: 4096 });

/** `struct kvm_xcr`. */
export const KVM_XCR_LAYOUT = layout("kvm_xcr", 16, { xcr: 0, reserved: 4, value: 8 });
/** `struct kvm_xcrs`. */
export const KVM_XCRS_LAYOUT = layout("kvm_xcrs", 392, {
  nr_xcrs: 0,
  flags: 4,
  xcrs: 8,
  padding: 264,
});

/** `struct kvm_mp_state`. */
export const KVM_MP_STATE_LAYOUT = layout("kvm_mp_state", 4, { mp_state: 0 });

/** `struct kvm_vcpu_events`. */
export const KVM_VCPU_EVENTS_LAYOUT = layout("kvm_vcpu_events", 64, {
  "exception.injected": 0,
  "exception.nr": 1,
  "exception.has_error_code": 2,
  "exception.pending": 3,
  "exception.error_code": 4,
  "interrupt.injected": 8,
  "interrupt.nr": 9,
  "interrupt.soft": 10,
  "interrupt.shadow": 11,
  "nmi.injected": 12,
  "nmi.pending": 13,
  "nmi.masked": 14,
  sipi_vector: 16,
  flags: 20,
  "smi.smm": 24,
  "smi.pending": 25,
  "smi.smm_inside_nmi": 26,
  "smi.latched_init": 27,
  "triple_fault.pending": 28,
  exception_has_payload: 55,
  exception_payload: 56,
});

/** `struct kvm_debugregs`. */
export const KVM_DEBUGREGS_LAYOUT = layout("kvm_debugregs", 128, {
  db: 0,
  dr6: 32,
  dr7: 40,
  flags: 48,
  reserved: 56,
});

/** `struct kvm_irqfd`. */
export const KVM_IRQFD_LAYOUT = layout("kvm_irqfd", 32, {
  fd: 0,
  gsi: 4,
  flags: 8,
  resamplefd: 12,
  pad: 16,
});

/** `struct kvm_ioeventfd`. */
export const KVM_IOEVENTFD_LAYOUT = layout("kvm_ioeventfd", 64, {
  datamatch: 0,
  addr: 8,
  len: 16,
  fd: 20,
  flags: 24,
  pad: 28,
});

/** `struct kvm_translation` (KVM_TRANSLATE: guest-virtual to guest-physical). */
export const KVM_TRANSLATION_LAYOUT = layout("kvm_translation", 24, {
  linear_address: 0,
  physical_address: 8,
  valid: 16,
  writeable: 17,
  usermode: 18,
});

/** `struct kvm_enable_cap`. */
export const KVM_ENABLE_CAP_LAYOUT = layout("kvm_enable_cap", 104, {
  cap: 0,
  flags: 4,
  args: 8,
  pad: 40,
});

/** Every layout, for the header check. */
export const ALL_LAYOUTS: readonly StructLayout[] = [
  KVM_RUN_LAYOUT,
  KVM_REGS_LAYOUT,
  KVM_SEGMENT_LAYOUT,
  KVM_DTABLE_LAYOUT,
  KVM_SREGS_LAYOUT,
  KVM_FPU_LAYOUT,
  KVM_LAPIC_STATE_LAYOUT,
  KVM_MSR_ENTRY_LAYOUT,
  KVM_MSRS_LAYOUT,
  KVM_MSR_LIST_LAYOUT,
  KVM_CPUID_ENTRY2_LAYOUT,
  KVM_CPUID2_LAYOUT,
  KVM_USERSPACE_MEMORY_REGION_LAYOUT,
  KVM_IRQ_LEVEL_LAYOUT,
  KVM_IRQCHIP_LAYOUT,
  KVM_PIC_STATE_LAYOUT,
  KVM_IOAPIC_STATE_LAYOUT,
  KVM_PIT_CHANNEL_STATE_LAYOUT,
  KVM_PIT_STATE2_LAYOUT,
  KVM_PIT_CONFIG_LAYOUT,
  KVM_CLOCK_DATA_LAYOUT,
  KVM_XSAVE_LAYOUT,
  KVM_XCR_LAYOUT,
  KVM_XCRS_LAYOUT,
  KVM_MP_STATE_LAYOUT,
  KVM_VCPU_EVENTS_LAYOUT,
  KVM_DEBUGREGS_LAYOUT,
  KVM_IRQFD_LAYOUT,
  KVM_IOEVENTFD_LAYOUT,
  KVM_TRANSLATION_LAYOUT,
  KVM_ENABLE_CAP_LAYOUT,
];

/** The KVM ioctl type byte (`KVMIO`). */
export const KVMIO = 0xae;

const L = {
  msrList: KVM_MSR_LIST_LAYOUT.size,
  cpuid2: KVM_CPUID2_LAYOUT.size,
};

/** KVM ioctl request numbers (`<linux/kvm.h>`), keyed by their C macro names. */
export const KVM = {
  // /dev/kvm
  KVM_GET_API_VERSION: io(KVMIO, 0x00),
  KVM_CREATE_VM: io(KVMIO, 0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(KVMIO, 0x02, L.msrList),
  KVM_CHECK_EXTENSION: io(KVMIO, 0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(KVMIO, 0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(KVMIO, 0x05, L.cpuid2),
  KVM_GET_MSR_FEATURE_INDEX_LIST: iowr(KVMIO, 0x0a, L.msrList),
  // VM fd
  KVM_CREATE_VCPU: io(KVMIO, 0x41),
  KVM_SET_USER_MEMORY_REGION: iow(KVMIO, 0x46, KVM_USERSPACE_MEMORY_REGION_LAYOUT.size),
  KVM_SET_TSS_ADDR: io(KVMIO, 0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(KVMIO, 0x48, 8),
  KVM_CREATE_IRQCHIP: io(KVMIO, 0x60),
  KVM_IRQ_LINE: iow(KVMIO, 0x61, KVM_IRQ_LEVEL_LAYOUT.size),
  KVM_GET_IRQCHIP: iowr(KVMIO, 0x62, KVM_IRQCHIP_LAYOUT.size),
  KVM_SET_IRQCHIP: ior(KVMIO, 0x63, KVM_IRQCHIP_LAYOUT.size),
  KVM_IRQ_LINE_STATUS: iowr(KVMIO, 0x67, KVM_IRQ_LEVEL_LAYOUT.size),
  KVM_IRQFD: iow(KVMIO, 0x76, KVM_IRQFD_LAYOUT.size),
  KVM_CREATE_PIT2: iow(KVMIO, 0x77, KVM_PIT_CONFIG_LAYOUT.size),
  KVM_IOEVENTFD: iow(KVMIO, 0x79, KVM_IOEVENTFD_LAYOUT.size),
  KVM_SET_CLOCK: iow(KVMIO, 0x7b, KVM_CLOCK_DATA_LAYOUT.size),
  KVM_GET_CLOCK: ior(KVMIO, 0x7c, KVM_CLOCK_DATA_LAYOUT.size),
  KVM_GET_PIT2: ior(KVMIO, 0x9f, KVM_PIT_STATE2_LAYOUT.size),
  KVM_SET_PIT2: iow(KVMIO, 0xa0, KVM_PIT_STATE2_LAYOUT.size),
  KVM_ENABLE_CAP: iow(KVMIO, 0xa3, KVM_ENABLE_CAP_LAYOUT.size),
  // vCPU fd
  KVM_RUN: io(KVMIO, 0x80),
  KVM_GET_REGS: ior(KVMIO, 0x81, KVM_REGS_LAYOUT.size),
  KVM_SET_REGS: iow(KVMIO, 0x82, KVM_REGS_LAYOUT.size),
  KVM_GET_SREGS: ior(KVMIO, 0x83, KVM_SREGS_LAYOUT.size),
  KVM_SET_SREGS: iow(KVMIO, 0x84, KVM_SREGS_LAYOUT.size),
  KVM_TRANSLATE: iowr(KVMIO, 0x85, KVM_TRANSLATION_LAYOUT.size),
  KVM_GET_MSRS: iowr(KVMIO, 0x88, KVM_MSRS_LAYOUT.size),
  KVM_SET_MSRS: iow(KVMIO, 0x89, KVM_MSRS_LAYOUT.size),
  KVM_GET_FPU: ior(KVMIO, 0x8c, KVM_FPU_LAYOUT.size),
  KVM_SET_FPU: iow(KVMIO, 0x8d, KVM_FPU_LAYOUT.size),
  KVM_GET_LAPIC: ior(KVMIO, 0x8e, KVM_LAPIC_STATE_LAYOUT.size),
  KVM_SET_LAPIC: iow(KVMIO, 0x8f, KVM_LAPIC_STATE_LAYOUT.size),
  KVM_SET_CPUID2: iow(KVMIO, 0x90, L.cpuid2),
  KVM_GET_CPUID2: iowr(KVMIO, 0x91, L.cpuid2),
  KVM_GET_MP_STATE: ior(KVMIO, 0x98, KVM_MP_STATE_LAYOUT.size),
  KVM_SET_MP_STATE: iow(KVMIO, 0x99, KVM_MP_STATE_LAYOUT.size),
  KVM_GET_VCPU_EVENTS: ior(KVMIO, 0x9f, KVM_VCPU_EVENTS_LAYOUT.size),
  KVM_SET_VCPU_EVENTS: iow(KVMIO, 0xa0, KVM_VCPU_EVENTS_LAYOUT.size),
  KVM_GET_DEBUGREGS: ior(KVMIO, 0xa1, KVM_DEBUGREGS_LAYOUT.size),
  KVM_SET_DEBUGREGS: iow(KVMIO, 0xa2, KVM_DEBUGREGS_LAYOUT.size),
  KVM_GET_XSAVE: ior(KVMIO, 0xa4, KVM_XSAVE_LAYOUT.size),
  KVM_SET_XSAVE: iow(KVMIO, 0xa5, KVM_XSAVE_LAYOUT.size),
  KVM_GET_XCRS: ior(KVMIO, 0xa6, KVM_XCRS_LAYOUT.size),
  KVM_SET_XCRS: iow(KVMIO, 0xa7, KVM_XCRS_LAYOUT.size),
  KVM_KVMCLOCK_CTRL: io(KVMIO, 0xad),
  KVM_GET_XSAVE2: ior(KVMIO, 0xcf, KVM_XSAVE_LAYOUT.size),
} as const;

/** The API version every KVM since Linux 2.6.22 reports (`KVM_API_VERSION`). */
export const KVM_API_VERSION = 12;

/** `KVM_EXIT_*` exit reasons (the ones skiff handles by name). */
export const KVM_EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

/** `KVM_EXIT_IO_*` directions. */
export const KVM_EXIT_IO = { IN: 0, OUT: 1 } as const;

/** `KVM_INTERNAL_ERROR_*` sub-errors of KVM_EXIT_INTERNAL_ERROR. */
export const KVM_INTERNAL_ERROR = {
  EMULATION: 1,
  SIMUL_EX: 2,
  DELIVERY_EV: 3,
  UNEXPECTED_EXIT_REASON: 4,
} as const;

/** `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES`. */
export const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1;

/** `KVM_SYSTEM_EVENT_*` types of KVM_EXIT_SYSTEM_EVENT. */
export const KVM_SYSTEM_EVENT = {
  SHUTDOWN: 1,
  RESET: 2,
  CRASH: 3,
  WAKEUP: 4,
  SUSPEND: 5,
  SEV_TERM: 6,
} as const;

/** `KVM_MP_STATE_*`. */
export const KVM_MP_STATE = {
  RUNNABLE: 0,
  UNINITIALIZED: 1,
  INIT_RECEIVED: 2,
  HALTED: 3,
  SIPI_RECEIVED: 4,
  STOPPED: 5,
  CHECK_STOP: 6,
  OPERATING: 7,
  LOAD: 8,
  AP_RESET_HOLD: 9,
  SUSPENDED: 10,
} as const;

/** `KVM_IRQCHIP_*` chip ids for KVM_GET/SET_IRQCHIP. */
export const KVM_IRQCHIP = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;

/** `KVM_PIT_SPEAKER_DUMMY`: KVM_CREATE_PIT2 flag giving a dummy port 0x61. */
export const KVM_PIT_SPEAKER_DUMMY = 1;

/** `KVM_IRQFD_FLAG_*`. */
export const KVM_IRQFD_FLAG = { DEASSIGN: 1, RESAMPLE: 2 } as const;

/** `KVM_IOEVENTFD_FLAG_*`. */
export const KVM_IOEVENTFD_FLAG = { DATAMATCH: 1, PIO: 2, DEASSIGN: 4 } as const;

/** `KVM_MEM_*` memory-slot flags. */
export const KVM_MEM = { LOG_DIRTY_PAGES: 1, READONLY: 2 } as const;

/** `KVM_CAP_*` capability numbers (the ones skiff checks). */
export const KVM_CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  PIT: 11,
  MP_STATE: 14,
  SYNC_MMU: 16,
  IOMMU: 18,
  SET_IDENTITY_MAP_ADDR: 37,
  IRQFD: 32,
  PIT2: 33,
  SET_BOOT_CPU_ID: 34,
  PIT_STATE2: 35,
  IOEVENTFD: 36,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  DEBUGREGS: 50,
  XSAVE: 55,
  XCRS: 56,
  IMMEDIATE_EXIT: 136,
  MAX_VCPUS: 66,
  EXIT_ON_EMULATION_FAILURE: 204,
  XSAVE2: 208,
  SYSTEM_EVENT_DATA: 215,
} as const;

/** x86 MSR numbers used by boot and snapshots (Intel SDM vol. 4). */
export const MSR = {
  IA32_TSC: 0x10,
  IA32_APICBASE: 0x1b,
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  IA32_PAT: 0x277,
  EFER: 0xc0000080,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  FS_BASE: 0xc0000100,
  GS_BASE: 0xc0000101,
  KERNEL_GS_BASE: 0xc0000102,
  TSC_AUX: 0xc0000103,
  KVM_SYSTEM_TIME_NEW: 0x4b564d01,
  KVM_WALL_CLOCK_NEW: 0x4b564d00,
} as const;
