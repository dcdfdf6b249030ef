/**
 * A file's identity: device, inode, size and modification and change times.
 * Any rewrite, replacement or touch of the file changes it, so two equal
 * identities are the same unchanged file. The content-hash memo keys on it
 * (content_hash.ts), and the restore pool uses memory mapped ahead only while
 * the snapshot's path still has the identity of the file it mapped
 * (restore_pool.ts).
 *
 * @module
 */

/** `dev|ino|size|mtime|ctime` of `st` (an absent field is empty). */
export function fileIdentity(st: Deno.FileInfo): string {
  return [st.dev, st.ino, st.size, st.mtime?.getTime() ?? "", st.ctime?.getTime() ?? ""].join("|");
}
