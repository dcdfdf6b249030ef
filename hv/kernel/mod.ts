/**
 * The guest kernel: fetching Debian's cloud kernel into a per-user cache,
 * finding the kernel to boot ({@link findKernel}), and module dependencies.
 *
 * @module
 */

export {
  bootImage,
  bzImageRelease,
  defaultCachedKernel,
  detectKernelFormat,
  findKernel,
  kernelCacheDir,
  KernelFileError,
  KernelMissingError,
  kernelModules,
  listCachedKernels,
  readCachedKernel,
  setDefaultKernel,
} from "./cache.ts";
export type { KernelFormat, KernelInfo, KernelJson } from "./cache.ts";
export {
  AptListsError,
  DEFAULT_KERNEL_PACKAGE,
  extractVmlinux,
  fetchKernel,
  KernelFetchError,
  resolveKernelPackage,
  stderrProgress,
} from "./fetch.ts";
export type { AptPackage, FetchOptions, FetchProgress, FetchResult } from "./fetch.ts";
export { buildModulesDep, moduleName, ModulesDep, readModinfo } from "./modules.ts";
export { decodeLz4Legacy, Lz4Error } from "./lz4.ts";
