import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { hostTest } from "../../tests/requirements.ts";
import { Assembler, mem, ref, rip } from "./mod.ts";

/** Disassembles `bytes` (at `origin`) into [address, text] pairs with objdump, Intel syntax. */
export async function objdump(bytes: Uint8Array, origin = 0): Promise<[number, string][]> {
  const file = await Deno.makeTempFile({ suffix: ".bin" });
  try {
    await Deno.writeFile(file, bytes);
    const out = await new Deno.Command("objdump", {
      args: [
        "-D",
        "-b",
        "binary",
        "-m",
        "i386:x86-64",
        "-M",
        "intel",
        `--adjust-vma=0x${origin.toString(16)}`,
        file,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(`objdump failed: ${new TextDecoder().decode(out.stderr)}`);
    const lines: [number, string][] = [];
    for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
      const m = /^\s*([0-9a-f]+):\t[0-9a-f ]+\t(.*)$/.exec(line);
      if (m) {
        lines.push([parseInt(m[1], 16), m[2].replace(/\s+#.*$/, "").replace(/\s+/g, " ").trim()]);
      }
    }
    return lines;
  } finally {
    await Deno.remove(file);
  }
}

type Case = [(a: Assembler) => unknown, string | ((labels: Map<string, number>) => string)];

const q = (base: Parameters<typeof mem>[0]) => mem(base);

const CASES: Case[] = [
  // mov register/register, all widths
  [(a) => a.mov("rax", "rcx"), "mov rax,rcx"],
  [(a) => a.mov("r15", "rsp"), "mov r15,rsp"],
  [(a) => a.mov("eax", "r9d"), "mov eax,r9d"],
  [(a) => a.mov("dx", "r12w"), "mov dx,r12w"],
  [(a) => a.mov("al", "bl"), "mov al,bl"],
  [(a) => a.mov("ah", "bh"), "mov ah,bh"],
  [(a) => a.mov("sil", "r8b"), "mov sil,r8b"],
  [(a) => a.mov("dil", "al"), "mov dil,al"],
  // mov immediate
  [(a) => a.mov("rax", 1), "mov rax,0x1"],
  [(a) => a.mov("rax", -1), "mov rax,0xffffffffffffffff"],
  [(a) => a.mov("r11", 0x80000000), "mov r11d,0x80000000"],
  [(a) => a.mov("rbx", 0x123456789abcn), "movabs rbx,0x123456789abc"],
  [(a) => a.movabs("rcx", 1), "movabs rcx,0x1"],
  [(a) => a.movabs("r9", 0xffffffffffffffffn), "movabs r9,0xffffffffffffffff"],
  [(a) => a.mov("ecx", 0xdeadbeef), "mov ecx,0xdeadbeef"],
  [(a) => a.mov("r14d", 5), "mov r14d,0x5"],
  [(a) => a.mov("si", 0x1234), "mov si,0x1234"],
  [(a) => a.mov("cl", 0xff), "mov cl,0xff"],
  [(a) => a.mov("r10b", -2), "mov r10b,0xfe"],
  [(a) => a.mov("spl", 7), "mov spl,0x7"],
  // mov memory
  [(a) => a.mov("rax", q({ base: "rbx" })), "mov rax,QWORD PTR [rbx]"],
  [(a) => a.mov(q({ base: "rsp", disp: 8 }), "rdi"), "mov QWORD PTR [rsp+0x8],rdi"],
  [(a) => a.mov("eax", q({ base: "rbp" })), "mov eax,DWORD PTR [rbp+0x0]"],
  [(a) => a.mov("eax", q({ base: "r13" })), "mov eax,DWORD PTR [r13+0x0]"],
  [(a) => a.mov("eax", q({ base: "r12", disp: -4 })), "mov eax,DWORD PTR [r12-0x4]"],
  [(a) => a.mov("cx", q({ base: "rsi", disp: 0x1000 })), "mov cx,WORD PTR [rsi+0x1000]"],
  [
    (a) => a.mov("dl", q({ base: "rax", index: "rcx", scale: 8, disp: 3 })),
    "mov dl,BYTE PTR [rax+rcx*8+0x3]",
  ],
  [
    (a) => a.mov("r8", q({ base: "r13", index: "r14", scale: 2 })),
    "mov r8,QWORD PTR [r13+r14*2+0x0]",
  ],
  [
    (a) => a.mov("rax", q({ index: "rbx", scale: 4, disp: 0x100 })),
    "mov rax,QWORD PTR [rbx*4+0x100]",
  ],
  [(a) => a.mov("eax", q({ disp: 0x5000 })), "mov eax,DWORD PTR ds:0x5000"],
  [
    (a) => a.mov("rax", q({ base: "rsp", index: "rbp", scale: 1 })),
    "mov rax,QWORD PTR [rsp+rbp*1]",
  ],
  [(a) => a.mov(q({ base: "rdi", size: 8 }), 0x41), "mov BYTE PTR [rdi],0x41"],
  [(a) => a.mov(q({ base: "rdi", size: 16 }), 0x4142), "mov WORD PTR [rdi],0x4142"],
  [(a) => a.mov(q({ base: "rdi", size: 32 }), 0xfffffffe), "mov DWORD PTR [rdi],0xfffffffe"],
  [(a) => a.mov(q({ base: "rsp", size: 64 }), -5), "mov QWORD PTR [rsp],0xfffffffffffffffb"],
  [(a) => a.mov(q({ base: "rcx", disp: 0x40, size: 8 }), "ah"), "mov BYTE PTR [rcx+0x40],ah"],
  // control, segment registers
  [(a) => a.mov("cr3", "rax"), "mov cr3,rax"],
  [(a) => a.mov("cr0", "r9"), "mov cr0,r9"],
  [(a) => a.mov("cr8", "rax"), "mov cr8,rax"],
  [(a) => a.mov("rdx", "cr4"), "mov rdx,cr4"],
  [(a) => a.mov("ds", "eax"), "mov ds,eax"],
  [(a) => a.mov("ax", "ss"), "mov eax,ss"],
  // movzx / movsx
  [(a) => a.movzx("eax", "al"), "movzx eax,al"],
  [(a) => a.movzx("rax", q({ base: "rsi", size: 8 })), "movzx rax,BYTE PTR [rsi]"],
  [(a) => a.movzx("r9d", "cx"), "movzx r9d,cx"],
  [(a) => a.movzx("ecx", "sil"), "movzx ecx,sil"],
  [(a) => a.movsx("rax", "bl"), "movsx rax,bl"],
  [(a) => a.movsx("ecx", q({ base: "rdi", size: 16 })), "movsx ecx,WORD PTR [rdi]"],
  [(a) => a.movsx("rax", "ecx"), "movsxd rax,ecx"],
  [(a) => a.movsx("rdx", q({ base: "rbx", size: 32 })), "movsxd rdx,DWORD PTR [rbx]"],
  // ALU
  [(a) => a.add("rax", "rbx"), "add rax,rbx"],
  [(a) => a.add("rax", 8), "add rax,0x8"],
  [(a) => a.add("rsp", 0x1000), "add rsp,0x1000"],
  [(a) => a.sub("rsp", 0x88), "sub rsp,0x88"],
  [(a) => a.sub("r12d", "eax"), "sub r12d,eax"],
  [(a) => a.and("eax", 0xfff), "and eax,0xfff"],
  [(a) => a.and("rax", -4096), "and rax,0xfffffffffffff000"],
  [(a) => a.and("eax", 0xffffffff), "and eax,0xffffffff"],
  [(a) => a.or("cl", 0x80), "or cl,0x80"],
  [(a) => a.or(q({ base: "rdi", disp: 4, size: 32 }), 1), "or DWORD PTR [rdi+0x4],0x1"],
  [(a) => a.xor("eax", "eax"), "xor eax,eax"],
  [(a) => a.xor("r8", q({ base: "rax" })), "xor r8,QWORD PTR [rax]"],
  [(a) => a.cmp("rax", -4095), "cmp rax,0xfffffffffffff001"],
  [(a) => a.cmp("al", 0x0a), "cmp al,0xa"],
  [(a) => a.cmp(q({ base: "rbx", size: 16 }), 0x1234), "cmp WORD PTR [rbx],0x1234"],
  [(a) => a.cmp(q({ base: "rbx", size: 8 }), "dl"), "cmp BYTE PTR [rbx],dl"],
  [(a) => a.adc("rdx", 0), "adc rdx,0x0"],
  [(a) => a.sbb("ecx", "ecx"), "sbb ecx,ecx"],
  [(a) => a.test("rax", "rax"), "test rax,rax"],
  [(a) => a.test("al", 1), "test al,0x1"],
  [(a) => a.test("ecx", 0x100), "test ecx,0x100"],
  [(a) => a.test(q({ base: "rsi", size: 8 }), 0x80), "test BYTE PTR [rsi],0x80"],
  [(a) => a.test("rdx", q({ base: "rsi" })), "test QWORD PTR [rsi],rdx"],
  [(a) => a.inc("rax"), "inc rax"],
  [(a) => a.inc(q({ base: "rax", size: 32 })), "inc DWORD PTR [rax]"],
  [(a) => a.dec("r13b"), "dec r13b"],
  [(a) => a.neg("rax"), "neg rax"],
  [(a) => a.not("ecx"), "not ecx"],
  [(a) => a.mul("rcx"), "mul rcx"],
  [(a) => a.div("r10"), "div r10"],
  [(a) => a.idiv(q({ base: "rsp", size: 32 })), "idiv DWORD PTR [rsp]"],
  [(a) => a.imul("rbx"), "imul rbx"],
  [(a) => a.imul("rax", "rcx"), "imul rax,rcx"],
  [(a) => a.imul("eax", q({ base: "rdi", size: 32 })), "imul eax,DWORD PTR [rdi]"],
  [(a) => a.imul("rax", 10), "imul rax,rax,0xa"],
  [(a) => a.imul("rdx", "rsi", 1000), "imul rdx,rsi,0x3e8"],
  [(a) => a.shl("rax", 12), "shl rax,0xc"],
  [(a) => a.shl("eax", 1), "shl eax,1"],
  [(a) => a.shr("rdx", "cl"), "shr rdx,cl"],
  [(a) => a.sar("r9", 63), "sar r9,0x3f"],
  [(a) => a.shr(q({ base: "rax", size: 16 }), 4), "shr WORD PTR [rax],0x4"],
  [(a) => a.rol("al", 4), "rol al,0x4"],
  [(a) => a.ror("ecx", "cl"), "ror ecx,cl"],
  [(a) => a.setcc("ne", "al"), "setne al"],
  [(a) => a.setcc("l", "r9b"), "setl r9b"],
  [(a) => a.cmov("e", "rax", "rdx"), "cmove rax,rdx"],
  [
    (a) => a.cmov("ge", "ecx", q({ base: "rbp", disp: -8, size: 32 })),
    "cmovge ecx,DWORD PTR [rbp-0x8]",
  ],
  [(a) => a.xchg("rax", "rbx"), "xchg rax,rbx"],
  // lea
  [
    (a) => a.lea("rax", q({ base: "rbx", index: "rcx", scale: 4, disp: 12 })),
    "lea rax,[rbx+rcx*4+0xc]",
  ],
  [(a) => a.lea("rsp", q({ base: "rsp", disp: -128 })), "lea rsp,[rsp-0x80]"],
  [(a) => a.lea("eax", q({ base: "rdi", disp: 1 })), "lea eax,[rdi+0x1]"],
  [
    (a) => a.lea("rsi", rip("target")),
    (l) => `lea rsi,[rip+0x${(l.get("target")! - l.get("after_lea")!).toString(16)}]`,
  ],
  [(a) => a.label("after_lea"), ""],
  // push/pop
  [(a) => a.push("rbp"), "push rbp"],
  [(a) => a.push("r12"), "push r12"],
  [(a) => a.push(0x10), "push 0x10"],
  [(a) => a.push(0x12345), "push 0x12345"],
  [(a) => a.push(q({ base: "rax", disp: 8 })), "push QWORD PTR [rax+0x8]"],
  [(a) => a.pop("rbp"), "pop rbp"],
  [(a) => a.pop("r15"), "pop r15"],
  [(a) => a.pop(q({ base: "rsp" })), "pop QWORD PTR [rsp]"],
  // I/O
  [(a) => a.in("al", 0x60), "in al,0x60"],
  [(a) => a.in("ax", 0x10), "in ax,0x10"],
  [(a) => a.in("eax", "dx"), "in eax,dx"],
  [(a) => a.in("al", "dx"), "in al,dx"],
  [(a) => a.out(0x80, "al"), "out 0x80,al"],
  [(a) => a.out("dx", "ax"), "out dx,ax"],
  [(a) => a.out("dx", "eax"), "out dx,eax"],
  [(a) => a.out(0xf4, "eax"), "out 0xf4,eax"],
  // system
  [(a) => a.hlt(), "hlt"],
  [(a) => a.syscall(), "syscall"],
  [(a) => a.cli(), "cli"],
  [(a) => a.sti(), "sti"],
  [(a) => a.pause(), "pause"],
  [(a) => a.nop(), "nop"],
  [(a) => a.int3(), "int3"],
  [(a) => a.int(0x80), "int 0x80"],
  [(a) => a.ud2(), "ud2"],
  [(a) => a.cpuid(), "cpuid"],
  [(a) => a.rdmsr(), "rdmsr"],
  [(a) => a.wrmsr(), "wrmsr"],
  [(a) => a.rdtsc(), "rdtsc"],
  [(a) => a.iretq(), "iretq"],
  [(a) => a.cld(), "cld"],
  [(a) => a.cqo(), "cqo"],
  [(a) => a.cdq(), "cdq"],
  [(a) => a.leave(), "leave"],
  [(a) => a.pushfq(), "pushf"],
  [(a) => a.popfq(), "popf"],
  [(a) => a.mfence(), "mfence"],
  [(a) => a.lgdt(q({ base: "rax" })), "lgdt [rax]"],
  [
    (a) => a.lidt(rip("target")),
    (l) => `lidt [rip+0x${(l.get("target")! - l.get("after_lidt")!).toString(16)}]`,
  ],
  [(a) => a.label("after_lidt"), ""],
  [(a) => a.ltr("ax"), "ltr ax"],
  [(a) => a.invlpg(q({ base: "rdi" })), "invlpg BYTE PTR [rdi]"],
  [(a) => a.repMovsb(), "rep movs BYTE PTR es:[rdi],BYTE PTR ds:[rsi]"],
  [(a) => a.repStosb(), "rep stos BYTE PTR es:[rdi],al"],
  [(a) => a.repMovsq(), "rep movs QWORD PTR es:[rdi],QWORD PTR ds:[rsi]"],
  [(a) => a.repStosq(), "rep stos QWORD PTR es:[rdi],rax"],
  [(a) => a.movsb(), "movs BYTE PTR es:[rdi],BYTE PTR ds:[rsi]"],
  [(a) => a.stosb(), "stos BYTE PTR es:[rdi],al"],
  // control flow (addresses checked against the label table)
  [(a) => a.jmp("back"), (l) => `jmp 0x${l.get("back")!.toString(16)}`],
  [(a) => a.jne("back"), (l) => `jne 0x${l.get("back")!.toString(16)}`],
  [(a) => a.jcc("le", "target"), (l) => `jle 0x${l.get("target")!.toString(16)}`],
  [(a) => a.call("target"), (l) => `call 0x${l.get("target")!.toString(16)}`],
  [(a) => a.call("rax"), "call rax"],
  [(a) => a.call(q({ base: "rbx", disp: 16 })), "call QWORD PTR [rbx+0x10]"],
  [(a) => a.jmp("r11"), "jmp r11"],
  [
    (a) => a.jmp(rip("table")),
    (l) => `jmp QWORD PTR [rip+0x${(l.get("table")! - l.get("after_jmp")!).toString(16)}]`,
  ],
  [(a) => a.label("after_jmp"), ""],
  [(a) => a.ret(), "ret"],
  [(a) => a.ret(8), "ret 0x8"],
  [(a) => a.mov("rax", ref("table")), (l) => `movabs rax,0x${l.get("table")!.toString(16)}`],
  [(a) => a.mov("eax", ref("table", 4)), (l) => `mov eax,0x${(l.get("table")! + 4).toString(16)}`],
  [
    (a) => a.mov("rax", mem({ label: "table", disp: 8 })),
    (l) => `mov rax,QWORD PTR ds:0x${(l.get("table")! + 8).toString(16)}`,
  ],
];

hostTest("asm: every form matches objdump", ["objdump"], async () => {
  const a = new Assembler();
  a.label("back");
  CASES.forEach(([emit], i) => {
    a.label(`case${i}`);
    emit(a);
  });
  a.label(`case${CASES.length}`);
  // Far enough away that the forward jumps need rel32.
  a.space(300, 0x90);
  a.label("target");
  a.nop();
  a.align(8);
  a.label("table");
  a.dq(ref("target"));
  const origin = 0x10000;
  const { bytes, labels } = a.assemble({ origin });
  const lines = await objdump(bytes, origin);
  const byAddr = new Map(lines);
  const failures: string[] = [];
  CASES.forEach(([, expect], i) => {
    const start = labels.get(`case${i}`)!;
    const end = labels.get(`case${i + 1}`)!;
    const got = lines.filter(([at]) => at >= start && at < end).map(([, t]) => t).join("; ");
    const want = typeof expect === "string" ? expect : expect(labels);
    if (got !== want) failures.push(`case ${i}: want '${want}', objdump says '${got}'`);
    if (start !== end && !byAddr.has(start)) {
      failures.push(`case ${i}: objdump did not start an instruction at 0x${start.toString(16)}`);
    }
  });
  deepStrictEqual(failures, []);
});

hostTest(
  "asm: branch relaxation picks rel8 and rel32 and objdump agrees",
  ["objdump"],
  async () => {
    const a = new Assembler();
    a.label("top");
    a.jmp("near_fwd");
    a.je("far_fwd");
    a.label("near_fwd");
    a.space(200, 0x90);
    a.jne("top"); // > 128 back: rel32
    a.label("far_fwd");
    a.jmp("near_fwd2");
    a.label("near_fwd2");
    const { bytes, labels } = a.assemble({ origin: 0 });
    strictEqual(bytes[0], 0xeb); // short jmp
    strictEqual(bytes[2], 0x0f); // near je (200+ bytes ahead)
    const lines = await objdump(bytes);
    const text = lines.map(([, t]) => t).filter((t) => t !== "nop");
    deepStrictEqual(text, [
      `jmp 0x${labels.get("near_fwd")!.toString(16)}`,
      `je 0x${labels.get("far_fwd")!.toString(16)}`,
      "jne 0x0",
      `jmp 0x${labels.get("near_fwd2")!.toString(16)}`,
    ]);
  },
);

Deno.test("asm: data directives and alignment", () => {
  const a = new Assembler();
  a.db(1, 2, "AB", -1);
  a.align(4, 0xcc);
  a.label("w");
  a.dw(0x1234, ref("w"));
  a.dd(0xdeadbeef);
  a.dq(-1n, ref("w", 2));
  a.ascii("hi");
  a.asciz("x");
  const { bytes, labels } = a.assemble({ origin: 0x100 });
  strictEqual(labels.get("w"), 0x108);
  deepStrictEqual(
    Array.from(bytes),
    [
      ...[1, 2, 0x41, 0x42, 0xff, 0xcc, 0xcc, 0xcc],
      ...[0x34, 0x12, 0x08, 0x01, 0xef, 0xbe, 0xad, 0xde],
      ...Array(8).fill(0xff),
      ...[0x0a, 0x01, 0, 0, 0, 0, 0, 0],
      ...[0x68, 0x69, 0x78, 0],
    ],
  );
});

Deno.test("asm: bad operands are rejected with a clear message", () => {
  const a = new Assembler();
  throws(() => a.mov("rax", "ecx"), /operand sizes differ/);
  throws(() => a.mov(mem({ base: "rax" }), 1), /needs a size/);
  throws(() => a.mov("ah", "r8b"), /cannot be combined/);
  throws(() => a.mov("ah", "sil"), /cannot be combined/);
  throws(() => a.mov(mem({ base: "r9" }), "ah"), /cannot be combined/);
  throws(() => a.add("rax", 0x100000000), /does not fit/);
  throws(() => a.in("cl" as "al", 0x60), /al, ax or eax/);
  throws(() => a.out(0x3f8, "al"), /does not fit in imm8/);
  throws(() => mem({ index: "rsp" }), /index/);
  throws(() => a.label("x").label("x"), /defined twice/);
  const b = new Assembler();
  b.jmp("nowhere");
  throws(() => b.assemble(), /undefined label 'nowhere'/);
  const c = new Assembler();
  c.lea("rax", rip("missing"));
  throws(() => c.assemble(), /undefined label 'missing'/);
});
