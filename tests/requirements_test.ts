/**
 * The requirement mechanism itself: a test whose requirement is missing is
 * reported as ignored with its reason, and no test file skips on its own
 * (an early `return` counts as a pass).
 */

import { match, ok, strictEqual } from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function testFiles(dir = ROOT): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.startsWith(".") || e.name === "dist" || e.name === "node_modules") continue;
    const path = join(dir, e.name);
    if (e.isDirectory) out.push(...testFiles(path));
    else if (e.name.endsWith("_test.ts")) out.push(path);
  }
  return out;
}

Deno.test("requirements: no test file prints its own skip or returns early without a kernel", () => {
  const files = testFiles();
  ok(files.length > 50, `only ${files.length} test files found`);
  const self = fileURLToPath(import.meta.url);
  const offenders = files.filter((f) => f !== self).flatMap((f) => {
    const text = Deno.readTextFileSync(f);
    const bad = [];
    if (text.includes("skiff-test-skip")) bad.push(`${f}: prints skiff-test-skip itself`);
    if (/typeof kernel === "string"\)\s*return/.test(text)) bad.push(`${f}: returns early`);
    return bad;
  });
  strictEqual(offenders.join("\n"), "", "use hostTest(name, needs, fn) from tests/requirements.ts");
});

Deno.test("requirements: without a cached kernel a kernel test is ignored with the reason", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skiff-req-" });
  try {
    const file = join(dir, "k_test.ts");
    const req = new URL("./requirements.ts", import.meta.url).href;
    await Deno.writeTextFile(
      file,
      `import { hostTest } from ${JSON.stringify(req)};\n` +
        `hostTest("needs the kernel", ["kernel"], () => { throw new Error("ran"); });\n`,
    );
    // An empty cache directory: no kernel is cached there.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", "--no-check", file],
      env: { XDG_CACHE_HOME: dir, NO_COLOR: "1" },
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    strictEqual(out.code, 0, text);
    match(text, /skiff-test-skip: needs the kernel: no kernel is cached \(run tests\/setup\)/);
    match(text, /0 passed \| 0 failed \| 1 ignored/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
