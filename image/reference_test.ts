import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import { isLoopbackRegistry, parseReference, registryBaseUrl } from "./reference.ts";

const D = `sha256:${"a".repeat(64)}`;

Deno.test("reference: Docker Hub defaults (docker.io, library/, latest)", () => {
  deepStrictEqual(parseReference("busybox"), {
    kind: "registry",
    registry: "docker.io",
    repository: "library/busybox",
    tag: "latest",
    digest: null,
    name: "docker.io/library/busybox:latest",
  });
  strictEqual(parseReference("user/app:1.2").name, "docker.io/user/app:1.2");
  strictEqual(
    parseReference("index.docker.io/library/alpine").name,
    "docker.io/library/alpine:latest",
  );
  strictEqual(parseReference("docker.io/alpine:3").name, "docker.io/library/alpine:3");
});

Deno.test("reference: registries with ports, ghcr, localhost, IPv6, digests", () => {
  const r = parseReference("localhost:5000/a/b:v1");
  deepStrictEqual([r.kind, (r as { registry: string }).registry], ["registry", "localhost:5000"]);
  strictEqual(r.name, "localhost:5000/a/b:v1");
  strictEqual(parseReference("ghcr.io/owner/img").name, "ghcr.io/owner/img:latest");
  strictEqual(parseReference("[::1]:5000/x").name, "[::1]:5000/x:latest");
  const d = parseReference(`alpine@${D}`);
  deepStrictEqual([(d as { tag: unknown }).tag, (d as { digest: unknown }).digest], [null, D]);
  strictEqual(parseReference(`alpine:3@${D}`).name, `docker.io/library/alpine:3@${D}`);
  strictEqual(parseReference("localhost/x").name, "localhost/x:latest");
});

Deno.test("reference: oci: and docker-archive: resolve paths", () => {
  deepStrictEqual(parseReference("oci:lay:v1", "/work"), {
    kind: "oci",
    dir: "/work/lay",
    tag: "v1",
    name: "oci:/work/lay:v1",
  });
  deepStrictEqual(parseReference("oci:/abs", "/x"), {
    kind: "oci",
    dir: "/abs",
    tag: null,
    name: "oci:/abs",
  });
  deepStrictEqual(parseReference("docker-archive:img.tar", "/w"), {
    kind: "docker-archive",
    file: "/w/img.tar",
    name: "docker-archive:/w/img.tar",
  });
});

Deno.test("reference: clear errors for bad references", () => {
  const bad: [string, RegExp][] = [
    ["", /empty image reference/],
    ["Busybox", /lowercase/],
    ["busybox:", /invalid tag ''/],
    ["busybox:-x", /invalid tag/],
    ["a//b", /invalid repository name component ''/],
    ["busybox@sha256:abc", /64 lowercase hex/],
    ["busybox@md5:abc", /unsupported digest algorithm 'md5'/],
    ["oci:", /expected oci:DIR/],
    ["oci:dir:", /empty tag/],
    ["docker-archive:", /expected docker-archive:FILE/],
    ["docker://busybox", /'docker:' transport is not supported/],
    ["exa_mple.com/x", /invalid registry host/],
    [`x/${"a".repeat(300)}`, /longer than 255/],
  ];
  for (const [text, re] of bad) throws(() => parseReference(text), re, text);
});

Deno.test("reference: HTTP only for loopback registries", () => {
  strictEqual(registryBaseUrl("docker.io"), "https://registry-1.docker.io/v2/");
  strictEqual(registryBaseUrl("127.0.0.1:5000"), "http://127.0.0.1:5000/v2/");
  strictEqual(registryBaseUrl("[::1]:80"), "http://[::1]:80/v2/");
  strictEqual(registryBaseUrl("localhost"), "http://localhost/v2/");
  strictEqual(
    registryBaseUrl("localhost.example.com:5000"),
    "https://localhost.example.com:5000/v2/",
  );
  strictEqual(isLoopbackRegistry("127.0.0.2:5000"), false);
});
