#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets that take files (tests/fuzz/corpus/TARGET):
real layers with the hostile shapes the unpacker must refuse, real OCI documents, the
examples' YAML and the hostile YAML of the security tests, and virtqueues laid out as a
driver lays them out. agent_frames' seeds come from `cargo run -p guest-agent --example
fuzz_seeds`. Re-run after a format changes:  python3 tests/fuzz/seeds.py
"""
import io, json, os, pathlib, struct, tarfile

here = pathlib.Path(__file__).resolve().parent
root = here.parent.parent
corpus = here / "corpus"


def out(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for kind, name, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            data = b""
            if kind == "file":
                data = extra
                info.size = len(data)
                info.mode = 0o644
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = extra
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = extra
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = extra
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            t.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


# tar_unpack: an ordinary layer, then each hostile shape.
out("tar_unpack", "plain", layer([("dir", "etc", None), ("file", "etc/motd", b"hi\n"), ("symlink", "bin", "usr/bin"), ("hardlink", "etc/motd2", "etc/motd")]))
out("tar_unpack", "whiteouts", layer([("file", "etc/.wh.passwd", b""), ("dir", "opt", None), ("file", "opt/.wh..wh..opq", b"")]))
out("tar_unpack", "dotdot", layer([("file", "../escape", b"x"), ("file", "a/../../escape", b"x")]))
out("tar_unpack", "symlink-then-write", layer([("symlink", "evil", "/"), ("file", "evil/escape", b"x"), ("symlink", "up", ".."), ("file", "up/escape", b"x")]))
out("tar_unpack", "hardlink-out", layer([("hardlink", "passwd", "/etc/passwd"), ("hardlink", "x", "../outside/sentinel")]))
out("tar_unpack", "devices", layer([("chr", "dev/kvm", (10, 232)), ("fifo", "pipe", None)]))

# oci_json: the documents an image consists of.
digest = "sha256:" + "a" * 64
out("oci_json", "index.json", json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 500, "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 500, "platform": {"architecture": "arm64", "os": "linux"}}]}))
out("oci_json", "manifest.json", json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 100},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": 1000}]}))
out("oci_json", "config.json", json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin", "A=1=2", "broken"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "WorkingDir": "/app", "User": "app"}, "rootfs": {"type": "layers", "diff_ids": [digest]}}))

# spec_yaml: every example, and the hostile shapes.
for f in sorted((root / "examples").rglob("*.yaml")):
    out("spec_yaml", f.name, f.read_text())
out("spec_yaml", "alias-bomb.yaml", "a: &a [lol,lol,lol]\nb: &b [*a,*a,*a]\nc: &c [*b,*b,*b]\nd: [*c,*c,*c]\n")
out("spec_yaml", "deep.yaml", "a: " + "[" * 80 + "]" * 80 + "\n")
out("spec_yaml", "errors.yaml", "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: Bad_Name }\nspec:\n  image: dir:/\n  memroy: 1Gi\n  cpus: two\n  disk: 1Mi\n  limits: { pids: '5', fsize: 12XB }\n")

# plugin_patches: arbitrary's bytes; a few shapes to start from.
out("plugin_patches", "small", bytes(range(64)))
out("plugin_patches", "paths", b"\x01/etc/motd\x00hello\x00\x03/evil\x00/\x00" * 4)


# virtio_*: memory laid out as fuzzing::Guest expects: descriptor table at 0, available ring at
# 0x1000, used ring at 0x2000, buffers from 0x3000; one request chain.
def desc(addr, length, flags, nxt):
    return struct.pack("<QIHH", addr, length, flags, nxt)


NEXT, WRITE, INDIRECT = 1, 2, 4


def memory(descs, heads, buffers):
    mem = bytearray(0x4000)
    for i, d in enumerate(descs):
        mem[16 * i:16 * i + 16] = d
    avail = struct.pack("<HH", 0, len(heads)) + b"".join(struct.pack("<H", h) for h in heads)
    mem[0x1000:0x1000 + len(avail)] = avail
    for at, data in buffers:
        mem[at:at + len(data)] = data
    return bytes(mem)


blk_in = memory([desc(0x3000, 16, NEXT, 1), desc(0x3100, 512, WRITE | NEXT, 2), desc(0x3400, 1, WRITE, 0)], [0], [(0x3000, struct.pack("<IIQ", 0, 0, 0))])
blk_out = memory([desc(0x3000, 16, NEXT, 1), desc(0x3100, 512, NEXT, 2), desc(0x3400, 1, WRITE, 0)], [0], [(0x3000, struct.pack("<IIQ", 1, 0, 1)), (0x3100, b"data" * 128)])
blk_cycle = memory([desc(0x3000, 16, NEXT, 1), desc(0x3100, 512, WRITE | NEXT, 0)], [0], [(0x3000, struct.pack("<IIQ", 0, 0, 0))])
blk_indirect = memory([desc(0x3800, 48, INDIRECT, 0)], [0], [(0x3800, desc(0x3000, 16, NEXT, 1) + desc(0x3100, 512, WRITE | NEXT, 2) + desc(0x3400, 1, WRITE, 0)), (0x3000, struct.pack("<IIQ", 0, 0, 0))])
# Guest memory past the input is zero: trailing zeros need not be stored.
for name, mem in [("in", blk_in), ("out", blk_out), ("cycle", blk_cycle), ("indirect", blk_indirect)]:
    out("virtio_block", name, b"\x04" + mem.rstrip(b"\0"))
out("virtio_rng", "one", b"\x04" + memory([desc(0x3000, 64, WRITE, 0)], [0], []).rstrip(b"\0"))
out("virtio_rng", "chain", b"\x04" + memory([desc(0x3000, 64, WRITE | NEXT, 1), desc(0x3100, 64, WRITE, 0)], [0, 0], []).rstrip(b"\0"))
# vsock: a connection request from the guest (cid 3, port 1024) to the agent port on the host.
hdr = struct.pack("<QQIIIHHIII", 3, 2, 1024, 1024, 0, 1, 1, 0, 65536, 0)
tx = memory([desc(0x3000, len(hdr), 0, 0)], [0], [(0x3000, hdr)])
rx = memory([desc(0x3000, 44 + 4096, WRITE, 0)], [0], [])
out("virtio_vsock", "request", b"\x04\x04" + tx + rx)


# Guest packets for the network stack: IPv4 and IPv6 UDP, a TCP SYN, a ping, a TLS ClientHello.
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(proto, payload, src=bytes([10, 0, 2, 15]), dst=bytes([203, 0, 113, 10])):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


udp = struct.pack("!HHHH", 40000, 53, 8 + 5, 0) + b"hello"
out("net_packets", "udp4", ipv4(17, udp))
out("net_packets", "udp6", struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, bytes(15) + b"\x15", bytes(15) + b"\x02") + udp)
out("net_packets", "syn", ipv4(6, struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x02, 65535, 0, 0)))
out("net_packets", "ping", ipv4(1, struct.pack("!BBHHH", 8, 0, 0, 7, 1) + b"abcdefgh"))
name = b"packages.example"
sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
ext = struct.pack("!HH", 0, len(sni)) + sni
body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
out("net_packets", "client-hello", b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs)


# DNS queries as a sandbox sends them, and one with an answer (as upstream would send it).
def qname(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"


out("dns_gateway", "a", struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname("web.test") + struct.pack("!HH", 1, 1))
out("dns_gateway", "aaaa-edns", struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 1) + qname("www.example") + struct.pack("!HH", 28, 1) + b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0))
out("dns_gateway", "blocked", struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + qname("evil.example") + struct.pack("!HH", 1, 1))
answer = struct.pack("!HH", 0xC00C, 1) + struct.pack("!HIH", 1, 60, 4) + bytes([10, 1, 2, 3])
out("dns_gateway", "with-answer", struct.pack("!HHHHHH", 9, 0x0100, 1, 1, 0, 0) + qname("rebind.test") + struct.pack("!HH", 1, 1) + answer)


# virtio-net: a tx chain (header + a frame the guest sends) and an rx buffer for what comes back.
frame = bytes(6) + bytes([0x52, 0x54, 0, 0x6F, 0x72, 0x15]) + b"\x08\x00" + ipv4(17, udp)
net_tx = memory([desc(0x3000, 12 + len(frame), 0, 0)], [0], [(0x3000, bytes(12) + frame)])
net_rx = memory([desc(0x3000, 2048, WRITE, 0), desc(0x3800, 2048, WRITE, 0)], [0, 1], [])
out("virtio_net", "one-each", b"\x22" + net_tx + net_rx)
net_chain = memory([desc(0x3000, 12, NEXT, 1), desc(0x3100, len(frame), 0, 0)], [0], [(0x3000, bytes(12)), (0x3100, frame)])
out("virtio_net", "split-header", b"\x22" + net_chain + net_rx)


# mmio_transport: register accesses as `arbitrary` reads a Vec of them (a "more" byte, then the
# write flag, u16 offset, width index into [1, 2, 4, 8], u64 value: 13 bytes each), a driver
# bringing the probe up by the book, then a reset; and one that asks for an unoffered feature and
# a queue outside memory.
def access(write, offset, value=0, width=2):
    return struct.pack("<BBHBQ", 1, 1 if write else 0, offset, width, value)


ACK, DRIVER, FEATURES_OK, DRIVER_OK = 1, 2, 8, 4
bring_up = [
    access(True, 0x70, ACK), access(True, 0x70, ACK | DRIVER),
    access(True, 0x14, 1), access(False, 0x10), access(True, 0x24, 1), access(True, 0x20, 1),
    access(True, 0x24, 0), access(True, 0x20, 1),
    access(True, 0x70, ACK | DRIVER | FEATURES_OK), access(False, 0x70),
    access(True, 0x30, 0), access(False, 0x34), access(True, 0x38, 256),
    access(True, 0x80, 0), access(True, 0x90, 0x1000), access(True, 0xA0, 0x2000), access(True, 0x44, 1),
    access(True, 0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK),
    access(False, 0x00), access(False, 0x04), access(False, 0x08), access(False, 0x60), access(False, 0x100, 0, 3),
    access(True, 0x50, 0), access(True, 0x64, 1),
    access(True, 0x70, 0), access(False, 0x70), access(False, 0x60),
]
out("mmio_transport", "bring-up-and-reset", b"".join(bring_up))
lies = [
    access(True, 0x70, ACK | DRIVER), access(True, 0x24, 0), access(True, 0x20, 0xFFFFFFFF),
    access(True, 0x70, ACK | DRIVER | FEATURES_OK), access(True, 0x30, 1), access(True, 0x38, 4096),
    access(True, 0x80, 0xFFFFF000), access(True, 0x84, 0xFFFFFFFF), access(True, 0x44, 1),
    access(True, 0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK), access(False, 0x70),
    access(True, 0x30, 0xFFFFFFFF), access(False, 0x34), access(False, 0x1F0, 0, 3), access(True, 0x104, 7, 0),
]
out("mmio_transport", "lying-driver", b"".join(lies))

# agent_requests and plugin_outputs take `arbitrary` structures: seeds are the texts they read.
out("agent_requests", "passwd", b"\x01\x03app" + b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n" + b"staff:x:50:app\n")
out("agent_requests", "numeric", b"\x01\x091000:staff" + b"app:x:1000:1000::/home/app:/bin/sh\n")
out("plugin_outputs", "secret", b"\x05vault\x07API_KEY\x00\x10sk-live-abcdefgh" + b"\x00" + b"\x0bnot allowed" + struct.pack("<I", 60))
out("plugin_outputs", "error", b"\x05vault\x07API_KEY\x01\x07denied!" + b"\x00" + b"\x00" + struct.pack("<I", 0xFFFFFFFF))
# tls_rewrite takes an `arbitrary` structure: seeds are request targets and header values with
# the placeholders' markers (\x00A, \x00B) where a guest would put them.
out("tls_rewrite", "bearer", b"/v1/models?key=\x00A\x0dauthorization\x13Bearer \x00A\x00B\x08a.example\x08a.example\x08a.example\x07")
out("tls_rewrite", "basic-elsewhere", b"/\x04host\x09b.example\x01user:\x00B\x0bevil.example\x00\x00\x01")
