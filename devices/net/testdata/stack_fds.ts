/**
 * Checks that {@link NetStack} leaves no file descriptor behind, in a process
 * of its own: `deno test --parallel` runs test modules on threads of one
 * process, so /proc/self/fd there also holds other tests' descriptors, which
 * come and go (a CI run saw six appear during the check).
 *
 * Usage: deno run -A stack_fds.ts failed-publish|cycles — exits 0 when no
 * descriptor leaked, 1 with the difference on stderr.
 *
 * @module
 */

import { NetStack } from "../service.ts";

function openFds(): string[] {
  return [...Deno.readDirSync("/proc/self/fd")].map((e) => e.name).sort();
}

function fail(what: string): never {
  console.error(what);
  Deno.exit(1);
}

/** A stack whose second `--publish` rule cannot bind: the first rule's listener is closed too. */
function failedPublish(): void {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const before = openFds();
  try {
    new NetStack({
      publish: [
        { hostIp: "127.0.0.1", hostPort: 0, guestPort: 22, proto: "tcp" },
        { hostIp: "127.0.0.1", hostPort: taken.addr.port, guestPort: 80, proto: "tcp" },
      ],
    });
    fail("the taken port did not fail the stack");
  } catch {
    // expected: EADDRINUSE (the message is checked by service_test.ts)
  }
  const after = openFds();
  taken.close();
  if (after.join() !== before.join()) fail(`fds before: ${before}; after: ${after}`);
}

/** Five stacks started, used and closed: none leaves a descriptor. */
async function cycles(): Promise<void> {
  const cycle = async () => {
    const stack = new NetStack({
      publish: [{ hostIp: "127.0.0.1", hostPort: 0, guestPort: 80, proto: "tcp" }],
    });
    await stack.ready;
    const c = await Deno.connect({ hostname: "127.0.0.1", port: stack.publishedAddrs[0].port });
    while ((await stack.settledCounters()).publishAccepted === 0) {
      await new Promise((r) => setTimeout(r, 5));
    }
    c.close();
    await stack.close();
  };
  await cycle();
  const after1 = openFds().length;
  for (let i = 0; i < 4; i++) await cycle();
  // Deno tears a terminated Worker's own event loop down in the background
  // (an eventfd and an epoll fd linger a while): wait for that (the
  // bound only catches a leak), then no stack may have left an fd behind.
  const give = performance.now() + 60_000;
  while (openFds().length > after1 + 2) {
    if (performance.now() > give) fail(`${openFds().length} fds after 5 stacks, ${after1} after 1`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const scenario = Deno.args[0];
if (scenario === "failed-publish") failedPublish();
else if (scenario === "cycles") await cycles();
else fail(`unknown scenario ${scenario}`);
