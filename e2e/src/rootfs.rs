//! What a root file system holds, entry by entry (kind, mode, owner, content digest, link
//! target, `user.*` xattrs), to compare a container's view with an independent unpack of its
//! image. Entries on another device than the root (the runtime's mounts: `/proc`, `/dev`,
//! `/etc/hosts`...) are left out with what is under them.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One entry, as text so that a difference prints readably.
pub type Tree = BTreeMap<String, String>;

pub fn read(root: &Path) -> Result<Tree> {
    // Followed: `/proc/PID/root` is a link to the process's root.
    let dev = std::fs::metadata(root)
        .with_context(|| format!("{}", root.display()))?
        .dev();
    let mut tree = Tree::new();
    walk(root, root, dev, &mut tree)?;
    Ok(tree)
}

fn walk(root: &Path, dir: &Path, dev: u64, tree: &mut Tree) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.dev() != dev {
            continue;
        }
        let name = path.strip_prefix(root)?.display().to_string();
        let ft = meta.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink -> {}", std::fs::read_link(&path)?.display())
        } else if ft.is_file() {
            let bytes = std::fs::read(&path)?;
            format!(
                "file {} sha256:{}",
                bytes.len(),
                hex::encode(Sha256::digest(&bytes))
            )
        } else {
            format!("special rdev {:x}", meta.rdev())
        };
        let line = format!(
            "{what} mode {:o} owner {}:{}{}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid(),
            user_xattrs(&path)?
        );
        tree.insert(name, line);
        if ft.is_dir() {
            walk(root, &path, dev, tree)?;
        }
    }
    Ok(())
}

/// ` xattr NAME=VALUE` for every `user.*` attribute, sorted (others belong to the runtime:
/// overlay's `trusted.*`, SELinux labels).
fn user_xattrs(path: &Path) -> Result<String> {
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut names[..]).context("llistxattr")?;
    let mut out: Vec<String> = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
        let name = std::str::from_utf8(name)?;
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..]).context("lgetxattr")?;
        out.push(format!(
            " xattr {name}={}",
            String::from_utf8_lossy(&value[..len])
        ));
    }
    out.sort();
    Ok(out.concat())
}
