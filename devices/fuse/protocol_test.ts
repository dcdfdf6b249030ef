/**
 * Checks every wire struct, opcode and flag in `protocol.ts` against
 * `/usr/include/linux/fuse.h`: a C program generated here prints what gcc
 * computes from the header (offsetof and sizeof of each field, sizeof of
 * each struct, each constant), and each must match.
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import {
  ATTR_OUT_SIZE,
  ATTR_SIZE,
  DIRENT_NAME_OFFSET,
  DIRENTPLUS_NAME_OFFSET,
  ENTRY_OUT_SIZE,
  FATTR,
  FOPEN,
  FUSE_FSYNC_FDATASYNC,
  FUSE_GETATTR_FH,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_READ_BUFFER,
  FUSE_RELEASE_FLUSH,
  FUSE_ROOT_ID,
  IN_HEADER_SIZE,
  InitFlag,
  offsets,
  Op,
  OUT_HEADER_SIZE,
  sizeOf,
  type StructName,
  STRUCTS,
} from "./protocol.ts";

const HEADER = "/usr/include/linux/fuse.h";
/**
 * Flags skiff knows from a newer protocol than the host header may have;
 * FUSE_CREATE_SUPP_GROUP is 7.39 (`1ULL << 34`), Debian's header is 7.38.
 */
const NEWER_THAN_HEADER = new Set([
  "FUSE_CREATE_SUPP_GROUP",
  // 7.39/7.40 (Linux 6.6/6.9); this host's header is 7.38.
  "FUSE_DIRECT_IO_ALLOW_MMAP",
  "FUSE_PASSTHROUGH",
  "FOPEN_PASSTHROUGH",
]);

function cProgram(): { source: string; expected: Map<string, bigint> } {
  const lines: string[] = [];
  const expected = new Map<string, bigint>();
  const emit = (key: string, expr: string, value: number | bigint) => {
    lines.push(`  printf("%s %llu\\n", "${key}", (unsigned long long)(${expr}));`);
    expected.set(key, BigInt(value));
  };
  for (const name of Object.keys(STRUCTS) as StructName[]) {
    emit(`sizeof.${name}`, `sizeof(struct ${name})`, sizeOf(name));
    const offs = offsets(name);
    for (const [field, size] of STRUCTS[name]) {
      emit(`offsetof.${name}.${field}`, `offsetof(struct ${name}, ${field})`, offs[field]);
      emit(`sizeof.${name}.${field}`, `sizeof(((struct ${name} *)0)->${field})`, size);
    }
  }
  for (const [k, v] of Object.entries(Op)) emit(`FUSE_${k}`, `FUSE_${k}`, v);
  // Flags are macros: one newer than the header (NEWER_THAN_HEADER) may be absent.
  const emitMacro = (key: string, value: number | bigint) => {
    lines.push(`#ifdef ${key}`);
    // `(1 << 31)` is a negative int in C: the flags words are uint32_t.
    emit(key, BigInt(value) < 1n << 32n ? `(uint32_t)(${key})` : key, value);
    lines.push("#else", `  printf("%s absent\\n", "${key}");`, "#endif");
  };
  for (const [k, v] of Object.entries(InitFlag)) emitMacro(`FUSE_${k}`, v);
  for (const [k, v] of Object.entries(FATTR)) emitMacro(`FATTR_${k}`, v);
  for (const [k, v] of Object.entries(FOPEN)) emitMacro(`FOPEN_${k}`, v);
  const consts: [string, number][] = [
    ["FUSE_KERNEL_VERSION", FUSE_KERNEL_VERSION],
    ["FUSE_ROOT_ID", FUSE_ROOT_ID],
    ["FUSE_MIN_READ_BUFFER", FUSE_MIN_READ_BUFFER],
    ["FUSE_GETATTR_FH", FUSE_GETATTR_FH],
    ["FUSE_FSYNC_FDATASYNC", FUSE_FSYNC_FDATASYNC],
    ["FUSE_RELEASE_FLUSH", FUSE_RELEASE_FLUSH],
    ["FUSE_NAME_OFFSET", DIRENT_NAME_OFFSET],
    ["FUSE_NAME_OFFSET_DIRENTPLUS", DIRENTPLUS_NAME_OFFSET],
  ];
  for (const [k, v] of consts) emit(k, k, v);
  const sizes: [string, number][] = [
    ["fuse_in_header", IN_HEADER_SIZE],
    ["fuse_out_header", OUT_HEADER_SIZE],
    ["fuse_attr", ATTR_SIZE],
    ["fuse_entry_out", ENTRY_OUT_SIZE],
    ["fuse_attr_out", ATTR_OUT_SIZE],
  ];
  for (const [s, v] of sizes) emit(`const.sizeof.${s}`, `sizeof(struct ${s})`, v);
  // skiff may implement an older minor than the header; never a newer one.
  lines.push(`  printf("minor %llu\\n", (unsigned long long)FUSE_KERNEL_MINOR_VERSION);`);
  const source = [
    "#include <stdio.h>",
    "#include <stddef.h>",
    "#include <stdint.h>",
    "#include <linux/fuse.h>",
    "int main(void) {",
    ...lines,
    "  return 0;",
    "}",
    "",
  ].join("\n");
  return { source, expected };
}

hostTest(`fuse protocol structs, opcodes and flags match ${HEADER}`, ["gcc"], async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-fuse-layout-" });
  try {
    const { source, expected } = cProgram();
    await Deno.writeTextFile(`${dir}/layout.c`, source);
    const cc = await new Deno.Command("gcc", {
      args: ["-O0", "-w", "-o", `${dir}/layout`, `${dir}/layout.c`],
    }).output();
    if (!cc.success) throw new Error(`gcc failed:\n${new TextDecoder().decode(cc.stderr)}`);
    const run = await new Deno.Command(`${dir}/layout`).output();
    strictEqual(run.success, true);
    const actual = new Map<string, bigint | "absent">();
    for (const line of new TextDecoder().decode(run.stdout).trim().split("\n")) {
      const [k, v] = line.split(" ");
      actual.set(k, v === "absent" ? v : BigInt(v));
    }
    const mismatches: string[] = [];
    for (const [k, v] of expected) {
      const h = actual.get(k);
      if (h === "absent" && NEWER_THAN_HEADER.has(k)) continue;
      if (h !== v) mismatches.push(`${k}: skiff ${v}, header ${h}`);
    }
    deepStrictEqual(mismatches, []);
    const minor = actual.get("minor") as bigint;
    ok(
      BigInt(FUSE_KERNEL_MINOR_VERSION) <= minor,
      `skiff speaks 7.${FUSE_KERNEL_MINOR_VERSION}, the header only 7.${minor}`,
    );
    strictEqual(actual.size, expected.size + 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
