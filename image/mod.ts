/**
 * OCI images as guest roots: references (`oci:DIR[:TAG]`,
 * `docker-archive:FILE`, `[REGISTRY/]NAME[:TAG|@DIGEST]`), sources (OCI
 * layout, `docker save` archive, registry over the distribution API), the
 * content-addressed store (layers unpacked once by diff ID, as the invoking
 * user, hostile archives contained), pulling, and the image config applied to
 * a command. The merged root itself is `devices/fuse/layered.ts`.
 *
 * ```ts
 * const img = await prepareImage("docker.io/library/busybox:latest");
 * await using vm = VirtualMachine.create({ image: img });
 * await vm.run(["cat", "/etc/os-release"]);
 * ```
 *
 * @module
 */

export { type ImageRef, parseReference, ReferenceError } from "./reference.ts";
export { type Digest, DigestMismatchError, parseDigest } from "./digest.ts";
export {
  type Descriptor,
  type ImageConfig,
  type ImageIndex,
  type ImageManifest,
  ManifestError,
  MEDIA,
  type RunDefaults,
} from "./manifest.ts";
export type { ImageSource, ResolvedManifest } from "./source.ts";
export { OciLayoutSource } from "./oci_layout.ts";
export { DockerArchiveSource } from "./docker_archive.ts";
export { RegistryError, RegistrySource } from "./registry.ts";
export { defaultImageRoot, type ImageRecord, ImageStore, StoreError } from "./store.ts";
export { openSource, type PulledImage, PullError, pullImage, type PullOptions } from "./pull.ts";
export { PullProgress } from "./progress.ts";
export { UnpackError, unpackLayer, type UnpackLimits } from "./unpack.ts";
export { TarError, TarReader } from "./tar.ts";
export {
  type ImageCommand,
  imageCommand,
  ImageRunError,
  type PreparedImage,
  prepareImage,
  resolveUser,
} from "./run.ts";
