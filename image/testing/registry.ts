/**
 * Debian's `docker-registry` (the CNCF distribution registry) started for a
 * test on 127.0.0.1 with a random free port, temporary storage and its own
 * config file; stopped and removed on dispose.
 *
 * @module
 */

/** A running registry. */
export interface LocalRegistry extends AsyncDisposable {
  /** `127.0.0.1:PORT`. */
  host: string;
  /** The storage directory (`docker/registry/v2/…` below it). */
  storage: string;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Starts a registry in `dir` (which must exist); waits until it answers `/v2/`. */
export async function startRegistry(dir: string): Promise<LocalRegistry> {
  for (let attempt = 0;; attempt++) {
    const port = freePort();
    const host = `127.0.0.1:${port}`;
    const storage = `${dir}/storage`;
    await Deno.mkdir(storage, { recursive: true });
    await Deno.writeTextFile(
      `${dir}/config.yml`,
      [
        "version: 0.1",
        "log:",
        "  level: error",
        "storage:",
        "  filesystem:",
        `    rootdirectory: ${storage}`,
        "  delete:",
        "    enabled: true",
        "http:",
        `  addr: ${host}`,
        "",
      ].join("\n"),
    );
    const child = new Deno.Command("docker-registry", {
      args: ["serve", `${dir}/config.yml`],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const exited = child.status.then(() => "exited" as const);
    // Wait for the condition (the API answers), bounded so a broken registry cannot hang the test.
    const deadline = AbortSignal.timeout(30_000);
    let up = false;
    while (!deadline.aborted) {
      const r = await Promise.race([
        fetch(`http://${host}/v2/`).then((r) => (r.body?.cancel(), r.status === 200), () => false),
        exited,
      ]);
      if (r === "exited") break;
      if (r) {
        up = true;
        break;
      }
      await new Promise((res) => setTimeout(res, 50));
    }
    if (up) {
      return {
        host,
        storage,
        async [Symbol.asyncDispose]() {
          try {
            child.kill("SIGTERM");
          } catch {
            // already gone
          }
          await child.status;
          await stderr.catch(() => "");
        },
      };
    }
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
    await child.status;
    const err = await stderr.catch(() => "");
    // Another process may have taken the port between freePort() and the bind: try again.
    if (attempt < 3 && /address already in use/.test(err)) continue;
    throw new Error(`docker-registry did not start on ${host}: ${err.trim().split("\n").at(-1)}`);
  }
}
