//! Crafted layers from the workspace's `testdata/layers/` (made by `make.py` there) through
//! the unpacker: what a good layer holds arrives intact, every escape is refused and writes
//! nothing outside.
//! Needs root (owners, devices, `trusted.*` xattrs); skipped otherwise.

use damselfly_snapshotter::unpack::{Compression, unpack};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn layer(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/layers")
        .join(name)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A snapshot directory inside an outer directory, so writes beside it can be seen.
fn dirs() -> (tempfile::TempDir, PathBuf) {
    let outer = tempfile::tempdir().unwrap();
    let snap = outer.path().join("a/b/c/d/snap");
    std::fs::create_dir_all(&snap).unwrap();
    (outer, snap)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn check_good(snap: &Path) {
    let md = |p: &str| std::fs::symlink_metadata(snap.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(md("bin/su").mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(std::fs::read(snap.join("bin/su")).unwrap(), b"#!/bin/sh\n");
    let etc = md("etc");
    assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o750, 0, 42));
    assert_eq!(
        etc.mtime(),
        1_700_000_000,
        "directory mtime set after its children"
    );
    let host = md("etc/hostname");
    assert_eq!(
        (host.mode() & 0o7777, host.uid(), host.gid(), host.mtime()),
        (0o644, 1000, 1000, 1_700_000_000)
    );
    assert_eq!(
        md("etc/hostname.link").ino(),
        host.ino(),
        "hard link shares the inode"
    );
    assert_eq!(host.nlink(), 2);
    let motd = md("etc/motd");
    assert!(motd.file_type().is_symlink());
    assert_eq!((motd.uid(), motd.gid()), (7, 8));
    assert_eq!(
        std::fs::read_link(snap.join("etc/motd")).unwrap(),
        Path::new("../etc/hostname")
    );
    let tagged = snap.join("etc/tagged");
    assert_eq!(xattr(&tagged, "user.origin").as_deref(), Some(&b"damselfly"[..]));
    assert_eq!(xattr(&tagged, "security.capability").map(|v| v.len()), Some(20));
    assert_eq!((md("etc/tagged").uid(), md("etc/tagged").gid()), (1000, 1001));
    let null = md("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    let lp = md("dev/loop9");
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), rustix::fs::makedev(7, 9));
    assert!(md("dev/pipe").file_type().is_fifo());
    let wh = md("etc/removed");
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );
    assert!(!snap.join("etc/.wh.removed").exists());
    assert_eq!(
        xattr(&snap.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!snap.join("opaque/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(snap.join("opaque/kept")).unwrap(), b"only me\n");
    assert_eq!(
        std::fs::read(snap.join("usr/lib/via-link")).unwrap(),
        b"through lib\n"
    );
    assert_eq!(md("implicit/dir").permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(snap.join("implicit/dir/file")).unwrap(), b"deep\n");
}

fn good_diff_id() -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(std::fs::read(layer("good.tar")).unwrap()))
    )
}

#[test]
fn good_layer_every_compression() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    for (name, hint) in [
        ("good.tar", None),
        ("good.tar.gz", None),
        ("good.tar.zst", None),
        ("good.tar.gz", Some(Compression::Gzip)),
    ] {
        let (_outer, snap) = dirs();
        let stats =
            unpack(File::open(layer(name)).unwrap(), hint, &snap).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(stats.entries >= 20 && stats.bytes > 0, "{name}: {stats:?}");
        assert_eq!(
            stats.diff_id,
            good_diff_id(),
            "{name}: diff id is the uncompressed tar's digest"
        );
        check_good(&snap);
    }
}

/// Every file and directory under `root`, relative.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn escapes_are_refused_and_write_nothing_outside() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let passwd = std::fs::metadata("/etc/passwd").unwrap();
    for (name, why) in [
        ("escape-dotdot.tar", "`..`"),
        ("escape-absolute.tar", "absolute"),
        ("escape-symlink-parent.tar", "leads out"),
        ("escape-absolute-symlink.tar", "leads out"),
        ("escape-hardlink.tar", "`..`"),
        ("escape-hardlink-abs.tar", "absolute"),
        ("escape-hardlink-via-symlink.tar", "leads out"),
    ] {
        let (outer, snap) = dirs();
        let err = unpack(File::open(layer(name)).unwrap(), None, &snap)
            .expect_err(name)
            .to_string();
        assert!(err.contains(why), "{name}: {err}");
        let outside: Vec<_> = tree(outer.path())
            .into_iter()
            .filter(|p| !p.starts_with("a/b/c/d/snap/") && !"a/b/c/d/snap".starts_with(p.to_str().unwrap()))
            .collect();
        assert!(outside.is_empty(), "{name} wrote outside: {outside:?}");
    }
    for stray in [
        "/tmp/outside-absolute",
        "/tmp/outside-symlink",
        "/etc/outside-abs-symlink",
    ] {
        assert!(!Path::new(stray).exists(), "{stray} written");
    }
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd.nlink(),
        "no hard link to /etc/passwd"
    );
}

#[test]
fn huge_headers_are_refused_without_buffering_them() {
    let (_outer, snap) = dirs();
    let err = unpack(File::open(layer("huge-header.tar.gz")).unwrap(), None, &snap)
        .unwrap_err()
        .to_string();
    assert!(err.contains("headers larger than"), "{err}");
}

#[test]
fn not_a_layer_is_a_clear_error() {
    let (_outer, snap) = dirs();
    let err = unpack(&[0x1f, 0x8b, 0, 1, 2, 3][..], None, &snap)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer"), "{err}");
}
