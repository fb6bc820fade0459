#!/usr/bin/env python3
"""Builds the OCI image layouts the image tests push to a real registry, from the busybox rootfs.

  oci-images.py ROOTFS OUT
  oci-images.py --single ROOTFS OUT TAG [ENV=VALUE...]   one gzip layer of ROOTFS, tagged TAG

OUT/layout holds (tags): busybox (2 layers: deletions, replacements, an opaque directory, Docker
process defaults), multi (an index: linux/amd64 and a marked linux/arm64), and hostile images
(evil-dotdot, evil-symlink, evil-hardlink), each tar entry written byte for byte.
Idempotent: an existing complete OUT is left alone.
"""
import gzip, hashlib, io, json, os, sys, tarfile

single = sys.argv[1] == "--single"
if single:
    rootfs, out, single_tag, single_env = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
else:
    rootfs, out = sys.argv[1], sys.argv[2]
layout = os.path.join(out, "layout")
if os.path.exists(os.path.join(out, ".complete")) and (single or os.path.exists(os.path.join(out, ".v2"))):
    sys.exit(0)
if not single and os.path.exists(out):
    import shutil
    shutil.rmtree(out)
os.makedirs(out, exist_ok=True)
os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)

def tar_of(build):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        build(t)
    return buf.getvalue()

def add_file(t, name, data=b"", mode=0o644, uid=0):
    ti = tarfile.TarInfo(name); ti.size = len(data); ti.mode = mode; ti.uid = ti.gid = uid
    t.addfile(ti, io.BytesIO(data))

def add_dir(t, name, mode=0o755):
    ti = tarfile.TarInfo(name); ti.type = tarfile.DIRTYPE; ti.mode = mode
    t.addfile(ti)

def add_link(t, name, target, kind):
    ti = tarfile.TarInfo(name); ti.type = kind; ti.linkname = target
    t.addfile(ti)

def image(layers, config_extra, arch="amd64"):
    """Writes layers (uncompressed tars), a config and a manifest; returns the manifest descriptor."""
    descs, diff_ids = [], []
    for raw in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        digest, size = put(gzip.compress(raw, mtime=0))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
    config = {"architecture": arch, "os": "linux", "config": config_extra, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdigest, csize = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                "layers": descs}
    mdigest, msize = put(json.dumps(manifest).encode())
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
            "platform": {"architecture": arch, "os": "linux"}}

def tag(desc, name):
    d = dict(desc); d["annotations"] = {"org.opencontainers.image.ref.name": name}
    index["manifests"].append(d)

def whole_tree(t):
    t.add(rootfs, arcname=".", recursive=True, filter=lambda ti: None if ti.name in ("./.complete",) else ti)

if single:
    desc = image([tar_of(whole_tree)], {"Env": single_env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]})
    tag(desc, single_tag)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    open(os.path.join(out, ".complete"), "w").close()
    sys.exit(0)

def base(t):
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            arc = os.path.relpath(full, rootfs)
            if arc == ".complete":
                continue
            t.add(full, arcname=arc, recursive=False)
    add_dir(t, "opt/data"); add_file(t, "opt/data/old.txt", b"old\n")
    add_file(t, "etc/replaced", b"first\n")

def changes(t):
    add_file(t, "etc/.wh.motd")                         # delete /etc/motd
    add_file(t, "etc/replaced", b"second\n")            # replace a file
    add_dir(t, "opt/data"); add_file(t, "opt/data/.wh..wh..opq")   # opaque: old.txt gone
    add_file(t, "opt/data/new.txt", b"new\n")
    add_dir(t, "app"); add_file(t, "app/hello.txt", b"hello from the image\n", 0o640, 1000)
    add_file(t, "usr/local/bin/suid-tool", b"#!/bin/sh\n", 0o4755)

busybox = image([tar_of(base), tar_of(changes)], {
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello"],
    "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo \"$GREETING from $(pwd) as $(id -un)\""],
    "WorkingDir": "/app", "User": "app"})
tag(busybox, "busybox")

def marked(arch):
    return lambda t: (base(t), add_file(t, "arch", (arch + "\n").encode()))
amd = image([tar_of(marked("amd64"))], {"Env": ["PATH=/bin"]}, "amd64")
arm = image([tar_of(marked("arm64"))], {"Env": ["PATH=/bin"]}, "arm64")
nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [arm, amd]}
ndigest, nsize = put(json.dumps(nested).encode())
tag({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": ndigest, "size": nsize}, "multi")

hostile = {
    "evil-dotdot": lambda t: add_file(t, "../../escaped-dotdot", b"x"),
    "evil-symlink": lambda t: (add_link(t, "link", "/tmp", tarfile.SYMTYPE), add_file(t, "link/escaped-symlink", b"x")),
    "evil-hardlink": lambda t: add_link(t, "h", "../../etc/passwd", tarfile.LNKTYPE),
}
for name, build in hostile.items():
    tag(image([tar_of(base), tar_of(build)], {"Env": ["PATH=/bin"]}), name)

def numbered(n):
    return lambda t: add_file(t, "layers/%d" % n, ("layer %d\n" % n).encode())
tag(image([tar_of(base)] + [tar_of(numbered(n)) for n in range(1, 61)], {"Env": ["PATH=/bin"]}), "many")

with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
open(os.path.join(out, ".complete"), "w").close()
if not single:
    open(os.path.join(out, ".v2"), "w").close()
