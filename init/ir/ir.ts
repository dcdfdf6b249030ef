/**
 * The init IR: a flat list of operations over 64-bit global variables,
 * static data and labels. Helpers ({@link ./helpers.ts}) return
 * {@link Fragment}s; `init/codegen` turns a program into x86-64.
 *
 * Values ({@link Val}) are immediates, variables ({@link v}), the address of a
 * NUL-terminated string ({@link str}), of static bytes ({@link bytes}), of a
 * zeroed scratch buffer ({@link buf}), or of a NULL-terminated pointer array
 * built at run time ({@link strv}, for argv/envp).
 *
 * A `syscall` with a `step` is checked: a result in [-4095, -1] stores the step
 * name and the positive errno, then jumps to the program's error handler (or
 * to the op's own `fail` label). That is how the init reports which step
 * failed with which errno.
 *
 * @module
 */

/** A 64-bit global variable. */
export interface VarRef {
  readonly kind: "var";
  readonly name: string;
}
/** Address of a NUL-terminated UTF-8 string in the program's data. */
export interface StrRef {
  readonly kind: "str";
  readonly value: string;
}
/** Address of static bytes in the program's data. */
export interface BytesRef {
  readonly kind: "bytes";
  readonly value: Uint8Array;
}
/** Address of a zero-initialised scratch buffer; the same name is the same buffer. */
export interface BufRef {
  readonly kind: "buf";
  readonly name: string;
  readonly size: number;
}
/** Address of a NULL-terminated array of pointers, filled in just before use. */
export interface StrvRef {
  readonly kind: "strv";
  readonly values: readonly Val[];
}
/** Address of a label (code or data) — e.g. a routine to call indirectly. */
export interface LabelAddrRef {
  readonly kind: "labeladdr";
  readonly name: string;
}

/** Any value an operation can take. */
export type Val = number | bigint | VarRef | StrRef | BytesRef | BufRef | StrvRef | LabelAddrRef;

/** Arithmetic operators (64-bit, unsigned for `div`/`mod`/`shr`). */
export type ArithKind =
  | "add"
  | "sub"
  | "and"
  | "or"
  | "xor"
  | "shl"
  | "shr"
  | "mul"
  | "div"
  | "mod";

/** Comparisons; `*u` are unsigned, the others signed. */
export type Cmp = "eq" | "ne" | "lt" | "le" | "gt" | "ge" | "ltu" | "leu" | "gtu" | "geu";

/** The runtime routines codegen provides (System V argument registers, result in rax). */
export type Routine =
  /** (s) → length */
  | "strlen"
  /** (dst, src) → pointer to the copied NUL in dst */
  | "strcpy"
  /** (a, b) → 1 when equal, else 0 */
  | "streq"
  /** (dst, n) → pointer after the decimal digits (NUL-terminated) */
  | "utoa"
  /** (fd, s) → write(2) result */
  | "write_str"
  /** (path) → 0 or -errno; creates every missing component (EEXIST is fine) */
  | "mkdir_p"
  /** (dst, src, n) → dst */
  | "memcpy"
  /** (ms) → 0 */
  | "sleep_ms"
  /** (file, argv, envp, searchPath) → -errno (returns only on failure) */
  | "execvp"
  /** (name, out) → 0 when `/dev/<vport>` for the virtio-console port `name` is in `out`, else -ENOENT */
  | "find_port"
  /** (fd, step, errno) → writes "skiff-init: <step> failed: <NAME> (errno N)\n" */
  | "write_error"
  /** (base) → 0 or -EINVAL: turns a command record's offsets into pointers (see init/record.ts) */
  | "relocate"
  /** (path, buf, size) → bytes read or -errno (whole file, up to size) */
  | "read_file"
  /** (fd, buf, n) → bytes read (fewer than n only at end of file) or -errno; retries EINTR */
  | "read_full"
  /** (fd, buf, n) → 0 once all n bytes are written, or -errno; retries EINTR and short writes */
  | "write_all";

/** One IR operation. */
export type Op =
  | { readonly op: "label"; readonly name: string }
  | {
    readonly op: "syscall";
    readonly nr: number;
    readonly args: readonly Val[];
    /** Stores rax here. */
    readonly dst?: VarRef;
    /** Checked: a failure is reported as this step. */
    readonly step?: string;
    /** errnos (positive) that count as success for the check. */
    readonly allow?: readonly number[];
    /** Jump here on failure instead of the program's error handler. */
    readonly fail?: string;
  }
  | { readonly op: "set"; readonly dst: VarRef; readonly src: Val }
  | {
    readonly op: "arith";
    readonly kind: ArithKind;
    readonly dst: VarRef;
    readonly a: Val;
    readonly b: Val;
  }
  | {
    readonly op: "load";
    readonly dst: VarRef;
    readonly addr: Val;
    readonly offset: number;
    readonly size: 1 | 2 | 4 | 8;
  }
  | {
    readonly op: "store";
    readonly addr: Val;
    readonly offset: number;
    readonly size: 1 | 2 | 4 | 8;
    readonly src: Val;
  }
  | { readonly op: "jump"; readonly target: string }
  | {
    readonly op: "branch";
    readonly cond: Cmp;
    readonly a: Val;
    readonly b: Val;
    readonly target: string;
  }
  | {
    readonly op: "call";
    readonly routine: Routine;
    readonly args: readonly Val[];
    readonly dst?: VarRef;
  }
  /** Reports `step` with positive errno `errno` through the error path. */
  | { readonly op: "fail"; readonly step: string; readonly errno: Val; readonly target?: string }
  /** Ends the program: `exit_group(value)`. */
  | { readonly op: "exit"; readonly value: Val };

/** A sequence of operations. */
export class Fragment {
  readonly ops: Op[];
  constructor(ops: Op[] = []) {
    this.ops = ops;
  }
  /** Appends operations or other fragments; returns this. */
  push(...items: (Op | Fragment)[]): this {
    for (const it of items) {
      if (it instanceof Fragment) this.ops.push(...it.ops);
      else this.ops.push(it);
    }
    return this;
  }
}

/** Concatenates fragments and operations into one fragment. */
export function seq(...items: (Op | Fragment)[]): Fragment {
  return new Fragment().push(...items);
}

/** A variable by name. */
export function v(name: string): VarRef {
  return { kind: "var", name };
}
/** The address of the NUL-terminated string `value`. */
export function str(value: string): StrRef {
  if (value.includes("\0")) throw new Error(`string contains a NUL: ${JSON.stringify(value)}`);
  return { kind: "str", value };
}
/** The address of static bytes. */
export function bytes(value: Uint8Array): BytesRef {
  return { kind: "bytes", value };
}
/** The address of the zeroed scratch buffer `name` (`size` bytes). */
export function buf(name: string, size: number): BufRef {
  if (!Number.isInteger(size) || size <= 0) throw new Error(`buffer ${name}: bad size ${size}`);
  return { kind: "buf", name, size };
}
/** A NULL-terminated pointer array; strings become {@link str}. */
export function strv(values: readonly (string | Val)[]): StrvRef {
  return { kind: "strv", values: values.map((x) => typeof x === "string" ? str(x) : x) };
}
/** The address of a label. */
export function labelAddr(name: string): LabelAddrRef {
  return { kind: "labeladdr", name };
}

let unique = 0;
/** A fresh label name starting with `hint`. */
export function uniqueLabel(hint: string): string {
  return `${hint}.${unique++}`;
}

/** A string argument: a literal (interned as data) or a run-time value. */
export type StrArg = string | Val;
/** Turns a {@link StrArg} into a value. */
export function sval(s: StrArg): Val {
  return typeof s === "string" ? str(s) : s;
}
