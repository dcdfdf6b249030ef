/**
 * KVM bindings: libc FFI, the ioctl encoding, KVM struct layouts and one class
 * per KVM file descriptor.
 *
 * @module
 */

export * from "./ioc.ts";
export * from "./kvm_sys.ts";
export * from "./structs.ts";
export * from "./kvm.ts";
export { check, SysError } from "./libc.ts";
