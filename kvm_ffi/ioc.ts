/**
 * The Linux ioctl request encoding (`include/uapi/asm-generic/ioctl.h`, which
 * x86-64 uses unchanged): `dir << 30 | size << 16 | type << 8 | nr`.
 *
 * @module
 */

/** No data transfer. */
export const IOC_NONE = 0;
/** Userspace writes, the kernel reads (`_IOW`). */
export const IOC_WRITE = 1;
/** The kernel writes, userspace reads (`_IOR`). */
export const IOC_READ = 2;

/** `_IOC(dir, type, nr, size)` as a bigint request number. */
export function ioc(dir: number, type: number, nr: number, size: number): bigint {
  if (dir < 0 || dir > 3) throw new RangeError(`ioctl dir ${dir} out of range 0..3`);
  if (type < 0 || type > 0xff) throw new RangeError(`ioctl type ${type} out of range 0..255`);
  if (nr < 0 || nr > 0xff) throw new RangeError(`ioctl nr ${nr} out of range 0..255`);
  if (size < 0 || size > 0x3fff) throw new RangeError(`ioctl size ${size} out of range 0..16383`);
  return (BigInt(dir) << 30n) | (BigInt(size) << 16n) | (BigInt(type) << 8n) | BigInt(nr);
}

/** `_IO(type, nr)`: no argument struct. */
export function io(type: number, nr: number): bigint {
  return ioc(IOC_NONE, type, nr, 0);
}

/** `_IOR(type, nr, size)`: the kernel fills a struct of `size` bytes. */
export function ior(type: number, nr: number, size: number): bigint {
  return ioc(IOC_READ, type, nr, size);
}

/** `_IOW(type, nr, size)`: the kernel reads a struct of `size` bytes. */
export function iow(type: number, nr: number, size: number): bigint {
  return ioc(IOC_WRITE, type, nr, size);
}

/** `_IOWR(type, nr, size)`: both directions. */
export function iowr(type: number, nr: number, size: number): bigint {
  return ioc(IOC_READ | IOC_WRITE, type, nr, size);
}
