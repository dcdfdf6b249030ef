/**
 * `Deno.dlopen` with symbols bound when first used.
 *
 * Deno compiles a call trampoline for every symbol a `dlopen` names: about
 * 0.08 ms each here, so libc.ts's ~80 symbols cost ~6.5 ms on the main thread
 * at import and again in every vCPU Worker before its first `KVM_RUN`,
 * although a VM's start uses about ten of them. {@link lazyDlopen} binds the
 * `eager` symbols at once and each other symbol, in its own `dlopen`, on its
 * first property access (~0.15 ms, once per isolate); from then on it is a
 * plain data property.
 *
 * `errno` readers (`__errno_location`) must be eager: binding a symbol runs
 * `dlopen`, which may change errno between a failing call and its reading.
 *
 * @module
 */

/**
 * Opens `path` with `symbols`: the names in `eager` now, the others on first
 * access. The result has every symbol, typed as `Deno.dlopen` would give them.
 */
export function lazyDlopen<S extends Deno.ForeignLibraryInterface>(
  path: string,
  symbols: S,
  eager: readonly (keyof S & string)[],
): Deno.DynamicLibrary<S>["symbols"] {
  // Handles stay referenced for the life of the isolate (symbols point into them).
  const handles: Deno.DynamicLibrary<Deno.ForeignLibraryInterface>[] = [];
  const out = {} as Record<string, unknown>;
  const now: Record<string, Deno.ForeignFunction | Deno.ForeignStatic> = {};
  for (const name of eager) now[name] = symbols[name];
  const first = eager.length > 0 ? Deno.dlopen(path, now) : null;
  if (first) handles.push(first);
  for (const name of Object.keys(symbols)) {
    if (first && name in now) {
      out[name] = (first.symbols as Record<string, unknown>)[name];
      continue;
    }
    Object.defineProperty(out, name, {
      configurable: true,
      enumerable: true,
      get() {
        const lib = Deno.dlopen(path, { [name]: symbols[name] });
        handles.push(lib);
        const value = (lib.symbols as Record<string, unknown>)[name];
        Object.defineProperty(out, name, { value, enumerable: true, writable: false });
        return value;
      },
    });
  }
  return out as Deno.DynamicLibrary<S>["symbols"];
}
