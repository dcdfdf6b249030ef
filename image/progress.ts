/**
 * Pull progress on stderr, shown only for downloads that take a while (more
 * than a second): on a terminal one status line rewritten in place (at most
 * five times a second), elsewhere a line every five seconds.
 *
 * @module
 */

const enc = new TextEncoder();

/** Options of a {@link PullProgress}. */
export interface ProgressOptions {
  /** Where lines go (default: stderr). */
  write?: (text: string) => void;
  /** Rewrite one line in place (default: whether stderr is a terminal). */
  tty?: boolean;
  /** Clock in ms (tests). */
  now?: () => number;
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(1);
}

/** Counts the bytes of a pull and reports them. */
export class PullProgress {
  #name: string;
  #write: (t: string) => void;
  #tty: boolean;
  #now: () => number;
  #start: number;
  #last = 0;
  #shown = false;
  #total = 0;
  #done = 0;
  #layers = 0;
  #layersDone = 0;

  constructor(name: string, o: ProgressOptions = {}) {
    this.#name = name;
    this.#write = o.write ?? ((t) => void Deno.stderr.writeSync(enc.encode(t)));
    this.#tty = o.tty ?? Deno.stderr.isTerminal();
    this.#now = o.now ?? (() => performance.now());
    this.#start = this.#now();
  }

  /** The layers to fetch and their total compressed size. */
  plan(layers: number, bytes: number): void {
    this.#layers = layers;
    this.#total = bytes;
  }

  /** `n` more bytes arrived. */
  add(n: number): void {
    this.#done += n;
    this.#tick(false);
  }

  /** One layer is unpacked. */
  layerDone(): void {
    this.#layersDone++;
    this.#tick(false);
  }

  #line(): string {
    return `skiff: pulling ${this.#name}: ${mib(this.#done)}/${mib(this.#total)} MiB, ` +
      `${this.#layersDone}/${this.#layers} layers`;
  }

  #tick(force: boolean): void {
    const t = this.#now();
    if (!force && t - this.#start < 1000) return;
    if (!force && t - this.#last < (this.#tty ? 200 : 5000)) return;
    this.#last = t;
    this.#shown = true;
    this.#write(this.#tty ? `\r${this.#line()}\x1b[K` : `${this.#line()}\n`);
  }

  /** Ends the status line (if one was shown). */
  finish(): void {
    if (!this.#shown) return;
    if (this.#tty) this.#write(`\r${this.#line()}\x1b[K\n`);
    else this.#write(`${this.#line()}\n`);
  }
}
