/**
 * The magic at the start of a relocatable record ("SKIFFREC" little-endian,
 * init/RECORD.md): written by the host's record writer (init/record.ts) and
 * checked by the runtime's `relocate` routine (init/codegen/runtime.ts). It
 * lives here, below both, so that the host side of the records does not
 * load the code generator.
 *
 * @module
 */

/** Magic at the start of a command record: "SKIFFREC" little-endian. */
export const RECORD_MAGIC = 0x4345524646494b53n;
