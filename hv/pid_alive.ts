/**
 * Whether a process still runs, for the sweeps of what a killed skiff left
 * behind (RAM directories, scratch directories, spare RAM copies): their
 * names carry the pid of the process that owns them.
 *
 * @module
 */

/**
 * Whether process `pid` exists and is not a zombie (a killed process whose
 * parent has not waited for it yet owns nothing any more).
 */
export function processRunning(pid: number | string): boolean {
  let stat: string;
  try {
    stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return false;
  }
  // proc_pid_stat(5): "pid (comm) state …"; comm may hold spaces and parentheses.
  const close = stat.lastIndexOf(")");
  return stat.slice(close + 2, close + 3) !== "Z";
}
