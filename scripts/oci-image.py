#!/usr/bin/env python3
"""Assembles the roomkeeper container image as an OCI image archive, without a
container engine (scripts/image.sh is the entry point; docs/install.md).

The image is what the Dockerfile's distroless stage holds, built from this
machine's Debian packages instead of a pulled base image:

- /usr/local/bin/roomkeeper, the entrypoint;
- the shared libraries the binary links (as `ldd` resolves them here, with
  every symlink on the way, so the ELF interpreter path works unchanged), and
  the copyright file and a dpkg status entry of each Debian package they come
  from (/var/lib/dpkg/status.d/<package>, where image scanners look, as in
  distroless);
- /etc/ssl/certs/ca-certificates.crt when the ca-certificates package is
  installed;
- /etc/passwd and /etc/group with root and nonroot (65532), /etc/nsswitch.conf,
  /tmp (1777) and /home/nonroot (65532, the working directory).

No shell and no package manager. The image runs as 65532:65532, the user the
chart's securityContext expects. One layer; every timestamp is
SOURCE_DATE_EPOCH, owners are numeric, entries are sorted and gzip carries no
name or time, so the same inputs give the same bytes (the same digest).

Output: an OCI archive (the image layout of the OCI image spec, as a tar):
`skopeo copy oci-archive:FILE docker://REGISTRY/roomkeeper:TAG`, `podman load
-i FILE`, or `docker load -i FILE` (Docker 25 and later).
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

NONROOT = 65532
ENTRYPOINT = "/usr/local/bin/roomkeeper"


def die(msg):
    print(f"oci-image.py: {msg}", file=sys.stderr)
    sys.exit(2)


class Layer:
    """The root filesystem as tar entries keyed by path (no leading slash)."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path -> (TarInfo, bytes or None)

    def _info(self, path, kind, mode, uid=0, gid=0):
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.dir(d)

    def dir(self, path, mode=0o755, uid=0, gid=0):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        self._parents(path)
        info = self._info(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path] = (info, data)

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[path] = (info, None)

    def host_path(self, path):
        """Adds a host path as the host resolves it: each symlink met on the
        way (a merged-/usr /lib, the library's soname link) is added as a
        symlink, and the file it ends at as a regular file."""
        parts = [p for p in path.split("/") if p]
        prefix = ""
        for i, part in enumerate(parts):
            prefix = f"{prefix}/{part}"
            if os.path.islink(prefix):
                target = os.readlink(prefix)
                self.symlink(prefix, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
                rest = "/".join(parts[i + 1:])
                return self.host_path(f"{resolved}/{rest}" if rest else resolved)
        st = os.stat(prefix)
        if not stat.S_ISREG(st.st_mode):
            die(f"{path} is not a regular file")
        with open(prefix, "rb") as f:
            self.file(prefix, f.read(), 0o755 if st.st_mode & 0o111 else 0o644)
        return prefix

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def linked_libraries(binary):
    """The paths `ldd` resolves for the binary, the ELF interpreter included."""
    try:
        out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        die(f"ldd {binary} failed: {e}")
    paths = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target == "not":
                die(f"{binary} needs a library this machine lacks: {line.strip()}")
            if target.startswith("/"):
                paths.append(target)
        elif words and words[0].startswith("/"):
            paths.append(words[0])
    if not paths:
        die(f"ldd found no libraries for {binary}: is it a dynamically linked ELF?")
    return paths


def owning_package(path):
    real = os.path.realpath(path)
    for candidate in (path, real, real.replace("/usr/lib/", "/lib/", 1)):
        r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout:
            return r.stdout.split(":")[0].strip()
    die(f"no Debian package owns {path} (dpkg -S): the image takes libraries only from packages")


def package_status(pkg):
    r = subprocess.run(["dpkg", "-s", pkg], capture_output=True, text=True)
    if r.returncode != 0:
        die(f"dpkg -s {pkg} failed: {r.stderr.strip()}")
    keep = ("Package", "Version", "Architecture", "Source", "Maintainer", "Homepage")
    lines = [line for line in r.stdout.splitlines() if line.split(":", 1)[0] in keep]
    return "\n".join(lines) + "\n"


def package_version(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(media_type, data):
    return {"mediaType": media_type, "digest": digest(data), "size": len(data)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", required=True, help="the roomkeeper binary to ship")
    ap.add_argument("--license", required=True, help="the project's LICENSE file")
    ap.add_argument("--version", required=True, help="the image version (Cargo.toml's)")
    ap.add_argument("--tag", help="the reference name in the archive (default: the version)")
    ap.add_argument("--revision", default="", help="the source commit, as a label")
    ap.add_argument("--out", required=True, help="the OCI archive to write")
    args = ap.parse_args()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    if arch is None:
        die(f"unknown machine {os.uname().machine}")
    if not os.access(args.binary, os.X_OK):
        die(f"{args.binary} is not an executable file")

    layer = Layer(epoch)
    for d, mode, owner in [("tmp", 0o1777, 0), ("home/nonroot", 0o700, NONROOT), ("etc", 0o755, 0)]:
        layer.dir(d, mode, owner, owner)
    with open(args.binary, "rb") as f:
        layer.file(ENTRYPOINT, f.read(), 0o755)
    with open(args.license, "rb") as f:
        layer.file("usr/share/doc/roomkeeper/LICENSE", f.read())

    packages = set()
    for lib in linked_libraries(args.binary):
        layer.host_path(lib)
        packages.add(owning_package(lib))
    certs = "/etc/ssl/certs/ca-certificates.crt"
    if os.path.isfile(certs) and package_version("ca-certificates"):
        with open(certs, "rb") as f:
            layer.file(certs, f.read())
        packages.add("ca-certificates")
    for pkg in sorted(packages):
        layer.file(f"var/lib/dpkg/status.d/{pkg}", package_status(pkg).encode())
        copyright_file = f"/usr/share/doc/{pkg}/copyright"
        if os.path.isfile(copyright_file):
            with open(copyright_file, "rb") as f:
                layer.file(copyright_file, f.read())

    layer.file("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
               b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    layer.file("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    layer.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")

    tar = layer.tar()
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as g:
        g.write(tar)
    layer_gz = compressed.getvalue()

    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    created = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    base = " ".join(f"{p}={package_version(p)}" for p in sorted(packages))
    labels = {
        "org.opencontainers.image.title": "roomkeeper",
        "org.opencontainers.image.description":
            "roomkeeper: operator, order-store node, drills and kubectl plugin in one binary",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "https://github.com/roomkeeper/roomkeeper",
        "dev.roomkeeper.image.debian-packages": base,
    }
    if args.revision:
        labels["org.opencontainers.image.revision"] = args.revision
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": [ENTRYPOINT],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin",
                    "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/home/nonroot",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
        "history": [{"created": created, "created_by": "scripts/image.sh (scripts/oci-image.py)"}],
    }
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob("application/vnd.oci.image.config.v1+json", config_bytes),
        "layers": [blob("application/vnd.oci.image.layer.v1.tar+gzip", layer_gz)],
        "annotations": {"org.opencontainers.image.created": created},
    }
    manifest_bytes = canonical(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [dict(blob("application/vnd.oci.image.manifest.v1+json", manifest_bytes),
                           annotations={"org.opencontainers.image.ref.name": args.tag or args.version},
                           platform={"architecture": arch, "os": "linux"})],
    }

    files = [
        ("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
        ("index.json", canonical(index)),
    ]
    for data in (config_bytes, manifest_bytes, layer_gz):
        files.append((f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{args.out}.tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = {"blobs", "blobs/sha256"}
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            t.addfile(info)
        for name, data in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, epoch
            t.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"image     {args.out}")
    print(f"manifest  {digest(manifest_bytes)}")
    print(f"layer     {len(layer_gz) / 1e6:.1f} MB compressed, {len(layer.entries)} entries")
    print(f"packages  {base}")


if __name__ == "__main__":
    main()
