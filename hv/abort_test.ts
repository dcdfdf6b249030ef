import { deepStrictEqual, rejects, strictEqual } from "node:assert/strict";
import { abortRace } from "./abort.ts";

Deno.test("abortRace: rejects with the reason, at once when already aborted", async () => {
  const c = new AbortController();
  using race = abortRace(c.signal);
  c.abort(new Error("stop now"));
  await rejects(race.promise, /stop now/);
  using again = abortRace(c.signal);
  await rejects(again.promise, /stop now/);
});

Deno.test("abortRace: without an abort it loses every race; dispose removes the listener", async () => {
  const c = new AbortController();
  const removed: string[] = [];
  const remove = c.signal.removeEventListener.bind(c.signal);
  c.signal.removeEventListener = ((t: string, l: EventListener) => {
    removed.push(t);
    remove(t, l);
  }) as typeof c.signal.removeEventListener;
  {
    using race = abortRace(c.signal);
    strictEqual(await Promise.race([race.promise, Promise.resolve("work")]), "work");
  }
  deepStrictEqual(removed, ["abort"]);
  using none = abortRace();
  strictEqual(await Promise.race([none.promise, Promise.resolve(1)]), 1);
});
