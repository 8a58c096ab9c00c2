//! A layer unpacked on its own (remote layers arrive in parallel, before the layers below them)
//! has to create the parents of its entries when it does not list them, with no lower layer
//! to look at. In the merged overlay the upper directory's attributes win, so such a directory
//! would show 0755 root-owned where the image says otherwise. Before the layer is committed on
//! its parents, each of those directories takes mode, owner, xattrs and mtime from the same
//! directory as the layers below show it (nearest first, stopping at a whiteout or an opaque
//! directory), as containerd's own applier does when it creates a missing parent.

use crate::{Error, Result};
use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// For every directory in `implied` (relative to `upper`), copies the attributes of the same
/// directory in `lowers` (the parents' trees, nearest first), if the layers below have it.
pub fn inherit_dirs(upper: &Path, implied: &[PathBuf], lowers: &[PathBuf]) -> Result<()> {
    for rel in implied {
        let target = upper.join(rel);
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {}
            _ => continue, // replaced by a later entry of the layer
        }
        if let Some(source) = find_below(rel, lowers)? {
            copy_attributes(&source, &target)?;
        }
    }
    Ok(())
}

/// The directory `rel` as the merged lower layers show it: the nearest layer that has it as a
/// directory, unless a nearer layer hides it (a whiteout or a non-directory at `rel` or one of
/// its parents, or an opaque parent). Every part is checked without following symlinks, so the
/// answer always lies inside a layer.
fn find_below(rel: &Path, lowers: &[PathBuf]) -> Result<Option<PathBuf>> {
    for lower in lowers {
        let mut path = lower.clone();
        let parts: Vec<&OsStr> = rel.iter().collect();
        let mut opaque_above = false;
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
                Ok(m) if !m.is_dir() => return Ok(None), // a whiteout or a file hides it below
                Ok(_) if i + 1 == parts.len() => return Ok(Some(path)),
                Ok(_) => opaque_above |= is_opaque(&path)?,
            }
        }
        if opaque_above {
            return Ok(None);
        }
    }
    Ok(None)
}

fn is_opaque(dir: &Path) -> Result<bool> {
    let mut value = [0u8; 1];
    match rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut value) {
        Ok(n) => Ok(n == 1 && value[0] == b'y'),
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(Error::io(format!("read xattrs of {}", dir.display()), e.into())),
    }
}

fn copy_attributes(source: &Path, target: &Path) -> Result<()> {
    let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", target.display()), e);
    let meta = std::fs::symlink_metadata(source).map_err(|e| io("stat the lower of", e))?;
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid())).map_err(|e| io("chown", e))?;
    rustix::fs::chmodat(
        rustix::fs::CWD,
        target,
        Mode::from_raw_mode(meta.mode() & 0o7777),
        AtFlags::empty(),
    )
    .map_err(|e| io("chmod", e.into()))?;
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(source, &mut names[..]).map_err(|e| io("list xattrs for", e.into()))?;
    let mut value = vec![0u8; 64 * 1024];
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        // overlay's own markers (opaque, redirects) stay with the layer that has them.
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let len = rustix::fs::lgetxattr(source, name, &mut value[..])
            .map_err(|e| io("read xattr for", e.into()))?;
        rustix::fs::lsetxattr(target, name, &value[..len], rustix::fs::XattrFlags::empty())
            .map_err(|e| io("set xattr on", e.into()))?;
    }
    let mtime = Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec(),
    };
    let times = Timestamps {
        last_access: mtime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(rustix::fs::CWD, target, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io("set times on", e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(path: &Path, mode: u32, owner: u32) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::lchown(path, Some(owner), Some(owner + 1)).unwrap();
    }

    fn attrs(path: &Path) -> (u32, u32, u32) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    }

    #[test]
    fn implied_parents_take_the_lower_attributes_unless_hidden() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: needs root (chown)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (upper, near, far) = (
            t.path().join("upper"),
            t.path().join("near"),
            t.path().join("far"),
        );
        for d in [&upper, &near, &far] {
            std::fs::create_dir(d).unwrap();
        }
        // `srv` only in the far layer; `etc` in both (the near one wins); `gone` whited out by
        // the near layer; `opq/sub` below an opaque `opq` of the near layer.
        dir(&far.join("srv"), 0o750, 7);
        rustix::fs::lsetxattr(
            far.join("srv"),
            "user.origin",
            b"far",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        dir(&far.join("etc"), 0o700, 3);
        dir(&near.join("etc"), 0o711, 4);
        dir(&far.join("gone"), 0o700, 5);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            near.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        dir(&far.join("opq/sub"), 0o700, 6);
        dir(&near.join("opq"), 0o755, 0);
        rustix::fs::lsetxattr(
            near.join("opq"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let implied: Vec<PathBuf> = ["srv", "etc", "gone", "opq/sub", "new"]
            .iter()
            .map(PathBuf::from)
            .collect();
        for rel in &implied {
            dir(&upper.join(rel), 0o755, 0);
        }
        inherit_dirs(&upper, &implied, &[near, far]).unwrap();
        assert_eq!(attrs(&upper.join("srv")), (0o750, 7, 8));
        let mut v = [0u8; 8];
        let n = rustix::fs::lgetxattr(upper.join("srv"), "user.origin", &mut v).unwrap();
        assert_eq!(&v[..n], b"far");
        assert_eq!(attrs(&upper.join("etc")), (0o711, 4, 5));
        assert_eq!(attrs(&upper.join("gone")), (0o755, 0, 1), "hidden by a whiteout");
        assert_eq!(
            attrs(&upper.join("opq/sub")),
            (0o755, 0, 1),
            "hidden by an opaque parent"
        );
        assert_eq!(attrs(&upper.join("new")), (0o755, 0, 1), "nowhere below");
    }
}
