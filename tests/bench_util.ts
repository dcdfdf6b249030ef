/**
 * Helpers shared by `*_bench.ts` modules (tests/bench.ts runs them): the
 * median of samples, timing a call, and pumping bytes through a pipe.
 *
 * @module
 */

/** The median of `xs` (the upper one for an even count); NaN for none. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Milliseconds `fn` takes, once. */
export async function timeOnce(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** The median of `n` timings of `fn`, in ms. */
export async function timeIt(n: number, fn: () => Promise<unknown>): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < n; i++) t.push(await timeOnce(fn));
  return median(t);
}

/**
 * Writes `size` bytes into `w` in `chunkSize` chunks (then closes it) while
 * reading `r` to the end; resolves with the number of bytes read.
 */
export async function pump(
  w: WritableStream<Uint8Array>,
  r: ReadableStream<Uint8Array>,
  size: number,
  chunkSize = 1 << 20,
): Promise<number> {
  const chunk = new Uint8Array(chunkSize).fill(0x5a);
  const writing = (async () => {
    const wr = w.getWriter();
    for (let off = 0; off < size; off += chunkSize) {
      await wr.write(off + chunkSize <= size ? chunk : chunk.subarray(0, size - off));
    }
    await wr.close();
  })();
  // A failed read leaves the writer stuck or failing: its error is not the news then.
  writing.catch(() => {});
  let got = 0;
  for await (const c of r) got += c.length;
  await writing;
  return got;
}
