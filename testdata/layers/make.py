#!/usr/bin/env python3
"""Generates the crafted layers the unpack tests read (tests/unpack.rs). Run from anywhere:
    python3 testdata/layers/make.py
Deterministic (fixed mtimes, owners), so the files only change when this script does. Needs the
`gzip` and `zstd` commands for the compressed copies of good.tar."""
import io, os, subprocess, tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
MTIME = 1_700_000_000


def info(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, **kw):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.uid, t.gid, t.mtime = kind, mode, uid, gid, MTIME
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def write(name, members, fmt=tarfile.PAX_FORMAT):
    """members: (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for t, data in members:
            if data is not None:
                t.size = len(data)
                tar.addfile(t, io.BytesIO(data))
            else:
                tar.addfile(t)
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(buf.getvalue())


def file(name, data, **kw):
    return (info(name, **kw), data)


def node(name, kind, **kw):
    return (info(name, kind, **kw), None)


# A well-formed layer with everything the unpacker must keep.
setuid = info("bin/su", mode=0o4755, uid=0, gid=0)
xattr_file = info("etc/tagged", mode=0o600, uid=1000, gid=1001)
xattr_file.pax_headers = {"SCHILY.xattr.user.origin": "damselfly", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}
write("good.tar", [
    node("bin", tarfile.DIRTYPE, mode=0o755),
    (setuid, b"#!/bin/sh\n"),
    node("etc", tarfile.DIRTYPE, mode=0o750, uid=0, gid=42),
    file("etc/hostname", b"damselfly\n", mode=0o644, uid=1000, gid=1000),
    (xattr_file, b"tagged\n"),
    node("etc/hostname.link", tarfile.LNKTYPE, linkname="etc/hostname"),
    node("etc/motd", tarfile.SYMTYPE, linkname="../etc/hostname", uid=7, gid=8),
    node("dev", tarfile.DIRTYPE),
    node("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    node("dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9),
    node("dev/pipe", tarfile.FIFOTYPE, mode=0o600),
    # Whiteouts: a deleted file and an opaque directory (their lower layers live elsewhere).
    node("etc/.wh.removed", tarfile.REGTYPE),
    node("opaque", tarfile.DIRTYPE, mode=0o755),
    node("opaque/.wh..wh..opq", tarfile.REGTYPE),
    file("opaque/kept", b"only me\n"),
    # A symlinked parent that stays inside the layer.
    node("usr", tarfile.DIRTYPE),
    node("usr/lib", tarfile.DIRTYPE),
    node("lib", tarfile.SYMTYPE, linkname="usr/lib"),
    file("lib/via-link", b"through lib\n"),
    # A parent not listed before its child is created with 0755.
    file("implicit/dir/file", b"deep\n"),
])
for cmd, ext in (("gzip", "gz"), ("zstd", "zst")):
    with open(os.path.join(HERE, "good.tar"), "rb") as src, open(os.path.join(HERE, f"good.tar.{ext}"), "wb") as dst:
        subprocess.run([cmd, "-c", "-n"] if cmd == "gzip" else [cmd, "-c", "-q"], stdin=src, stdout=dst, check=True)

# Escapes: each must be refused (or stay inside) and write nothing outside the snapshot.
write("escape-dotdot.tar", [file("a/../../outside-dotdot", b"x")])
write("escape-absolute.tar", [file("/tmp/outside-absolute", b"x")])
write("escape-symlink-parent.tar", [
    node("up", tarfile.SYMTYPE, linkname="../../../../../../../.."),
    file("up/tmp/outside-symlink", b"x"),
])
write("escape-absolute-symlink.tar", [
    node("etc", tarfile.SYMTYPE, linkname="/etc"),
    file("etc/outside-abs-symlink", b"x"),
])
write("escape-hardlink.tar", [node("passwd", tarfile.LNKTYPE, linkname="../../../../../../etc/passwd")])
write("escape-hardlink-abs.tar", [node("passwd", tarfile.LNKTYPE, linkname="/etc/passwd")])
write("escape-hardlink-via-symlink.tar", [
    node("root", tarfile.SYMTYPE, linkname="/"),
    node("passwd", tarfile.LNKTYPE, linkname="root/etc/passwd"),
])
# A PAX header claiming 4 GiB, with 2 MiB of records present (gzip keeps the file small): a
# reader that buffers headers whole would try to hold all of it.
pax = tarfile.TarInfo("././@PaxHeader")
pax.type, pax.size = tarfile.XHDTYPE, 4 << 30
import gzip
with gzip.GzipFile(os.path.join(HERE, "huge-header.tar.gz"), "wb", mtime=0) as f:
    f.write(pax.tobuf(tarfile.USTAR_FORMAT) + b"8 a=bcd\n" * ((2 << 20) // 8))

# Two layers stacked on the e2e test image (busybox in /bin, data/layer-N.bin) by
# e2e/tests/snapshotter.rs, then run by containerd's CRI: the second deletes what the first
# made, makes a directory opaque and deletes a file of a lower image layer.
owned = info("srv/owned", mode=0o640, uid=1000, gid=1001)
owned.pax_headers = {"SCHILY.xattr.user.damselfly": "rich"}
write("image-upper-1.tar", [
    node("opq", tarfile.DIRTYPE, mode=0o755),
    file("opq/old-a", b"old a\n"),
    node("opq/sub", tarfile.DIRTYPE, mode=0o700, uid=5, gid=6),
    file("opq/sub/old-b", b"old b\n"),
    file("etc/gone", b"deleted by the next layer\n"),
    node("srv", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8),
    file("srv/setuid", b"#!/bin/sh\n", mode=0o4755),
    (owned, b"owned by 1000\n"),
    node("srv/link", tarfile.SYMTYPE, linkname="owned"),
    node("srv/hard", tarfile.LNKTYPE, linkname="srv/owned"),
])
second = info("srv/second", mode=0o600, uid=2, gid=3)
second.pax_headers = {"SCHILY.xattr.user.second": "2"}
write("image-upper-2.tar", [
    node("etc/.wh.gone", tarfile.REGTYPE),
    node("data/.wh.layer-1.bin", tarfile.REGTYPE),
    node("opq", tarfile.DIRTYPE, mode=0o755),
    node("opq/.wh..wh..opq", tarfile.REGTYPE),
    file("opq/new-c", b"new c\n"),
    (second, b"second\n"),
])
