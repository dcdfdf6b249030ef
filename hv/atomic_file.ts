/**
 * Replacing a cache file so that a reader sees the whole old file or the
 * whole new one, never a part: the bytes go to a temporary name beside it
 * (`<path>.<pid>.tmp`, so concurrent writers do not share one), which is
 * then renamed over `path` (rename(2) is atomic within a file system).
 *
 * @module
 */

import { dirname } from "node:path";

/** The temporary name {@link writeFileAtomic} writes `path`'s bytes to first. */
export function atomicTempPath(path: string): string {
  return `${path}.${Deno.pid}.tmp`;
}

/**
 * Writes `data` to `path` atomically, creating its directory. On failure the
 * temporary file is removed and the error thrown; `path` is unchanged.
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  options: { mode?: number } = {},
): Promise<void> {
  const tmp = atomicTempPath(path);
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    if (typeof data === "string") await Deno.writeTextFile(tmp, data, options);
    else await Deno.writeFile(tmp, data, options);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
