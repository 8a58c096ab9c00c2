//! Unpacking one OCI layer (a tar stream, gzip, zstd or uncompressed) into a snapshot's upper
//! directory, as overlayfs expects it.
//!
//! Layers are hostile input. Every entry's parent directory is opened with `openat2` and
//! `RESOLVE_BENEATH`: a symlinked parent that stays inside the snapshot directory is followed,
//! one that leads out of it (`../..`, an absolute target) fails the layer. Every node is created
//! or changed relative to that directory handle, never following a symlink at the last component. Entry names and hard-link targets with `..`
//! or a leading `/` are refused outright. Extension headers (PAX, GNU long names) are bounded
//! before the tar reader buffers them.
//!
//! OCI whiteouts become overlay whiteouts: `.wh.<name>` a 0:0 character device `<name>`,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its directory. Owners, modes
//! (setuid included), xattrs (`SCHILY.xattr.*`), mtimes, hard links, symlinks and devices are
//! kept. Runs synchronously: call it in `spawn_blocking`.

use crate::{Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// The most header bytes (PAX records, GNU long names) the reader may consume for one entry.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an OCI/Docker layer media type, when it says.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Some(Self::Gzip)
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
            Some(Self::Zstd)
        } else if media_type.ends_with(".tar") {
            Some(Self::None)
        } else {
            None
        }
    }

    fn sniff(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            _ => Self::None,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's diff id.
    pub diff_id: String,
    /// Directories created only as parents of entries (the layer has no entry of their own):
    /// they take their attributes from the layers below ([`crate::inherit`]).
    pub implied_dirs: Vec<PathBuf>,
}

/// Hashes what passes through.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    pub bytes: u64,
}

impl<R> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// `sha256:<hex>` of everything read so far.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn bad(entry: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("layer entry {entry:?}: {why}"))
}

fn sys(entry: &str, what: &str, e: Errno) -> Error {
    Error::io(format!("layer entry {entry:?}: {what}"), e.into())
}

/// Counts what the tar reader consumes while it looks for the next entry.
struct Metered<R> {
    inner: R,
    in_header: Rc<Cell<bool>>,
    header_bytes: Rc<Cell<u64>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.in_header.get() {
            let total = self.header_bytes.get() + n as u64;
            self.header_bytes.set(total);
            if total > MAX_HEADER_BYTES + 1024 {
                return Err(std::io::Error::other(format!(
                    "entry headers larger than {MAX_HEADER_BYTES} bytes"
                )));
            }
        }
        Ok(n)
    }
}

/// Unpacks `blob` (compression detected from its first bytes unless `compression` says) into
/// the empty directory `dest`. Reads `blob` to its end, so a digest computed by a wrapping
/// reader covers every byte.
pub fn unpack(blob: impl Read, compression: Option<Compression>, dest: &Path) -> Result<Stats> {
    let mut blob = BufReader::new(blob);
    let head = blob.fill_buf().map_err(|e| Error::io("read the layer", e))?;
    let compression = compression.unwrap_or_else(|| Compression::sniff(head));
    let tar: Box<dyn Read> = match compression {
        Compression::None => Box::new(&mut blob),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut blob)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(&mut blob)
                .map_err(|e| Error::InvalidArgument(format!("layer is not valid zstd: {e}")))?,
        ),
    };
    let mut tar = Hashing::new(tar);
    let mut stats = unpack_tar(&mut tar, dest)?;
    // The tar reader stops at the end-of-archive blocks; the diff id covers the whole stream.
    std::io::copy(&mut tar, &mut std::io::sink()).map_err(|e| Error::io("read the layer to its end", e))?;
    stats.diff_id = tar.digest();
    drop(tar);
    std::io::copy(&mut blob, &mut std::io::sink()).map_err(|e| Error::io("read the layer to its end", e))?;
    Ok(stats)
}

fn unpack_tar(tar: impl Read, dest: &Path) -> Result<Stats> {
    let in_header = Rc::new(Cell::new(false));
    let header_bytes = Rc::new(Cell::new(0));
    let metered = Metered {
        inner: tar,
        in_header: in_header.clone(),
        header_bytes: header_bytes.clone(),
    };
    let mut archive = tar::Archive::new(metered);
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys(&dest.display().to_string(), "open the snapshot directory", e))?;
    let mut unpacker = Unpacker {
        root,
        dirs: Vec::new(),
        implied: BTreeSet::new(),
        last_dir: None,
        stats: Stats::default(),
    };
    let mut entries = archive.entries().map_err(|e| Error::io("read the layer", e))?;
    loop {
        in_header.set(true);
        header_bytes.set(0);
        let next = entries.next();
        in_header.set(false);
        let Some(entry) = next else { break };
        let mut entry =
            entry.map_err(|e| Error::InvalidArgument(format!("layer is not a valid tar stream: {e}")))?;
        unpacker.entry(&mut entry)?;
        // Whatever the entry did not read is skipped here, not counted as header bytes.
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| Error::io("read the layer", e))?;
    }
    unpacker.finish()?;
    unpacker.stats.implied_dirs = std::mem::take(&mut unpacker.implied).into_iter().collect();
    Ok(unpacker.stats)
}

/// A name inside the layer, without `.` parts; `..` and absolute names are refused.
fn clean(entry: &str, raw: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad(entry, "`..` in a layer path")),
            Component::RootDir | Component::Prefix(_) => return Err(bad(entry, "absolute layer path")),
        }
    }
    if out.as_os_str().len() > 4096 {
        return Err(bad(entry, "path longer than 4096 bytes"));
    }
    Ok(out)
}

struct Unpacker {
    root: OwnedFd,
    /// Directories and their mtimes, set last (creating entries inside changes them).
    dirs: Vec<(PathBuf, Timestamps)>,
    /// Directories made as parents and not (yet) named by an entry of their own.
    implied: BTreeSet<PathBuf>,
    /// The parent directory of the last entry: the next regular file usually shares it.
    last_dir: Option<(PathBuf, OwnedFd)>,
    stats: Stats,
}

struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker {
    /// Opens directory `rel` inside the root, each prefix resolved from the root with
    /// `RESOLVE_BENEATH` (a symlink out of the root is an error), creating missing parts (0755,
    /// root-owned) when `create`.
    fn dir(&mut self, entry: &str, rel: &Path, create: bool) -> Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        if let Some((cached, fd)) = &self.last_dir
            && cached == rel
        {
            return fd
                .try_clone()
                .map_err(|e| Error::io(format!("layer entry {entry:?}: dup"), e));
        }
        let mut fd = rustix::fs::openat2(&self.root, ".", flags, Mode::empty(), resolve)
            .map_err(|e| sys(entry, "open the snapshot directory", e))?;
        let mut prefix = PathBuf::new();
        for part in rel.components() {
            prefix.push(part);
            if create {
                match rustix::fs::mkdirat(&fd, part.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        self.implied.insert(prefix.clone());
                    }
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(sys(entry, "create a parent directory", e)),
                }
            }
            fd = rustix::fs::openat2(&self.root, &prefix, flags, Mode::empty(), resolve).map_err(
                |e| match e {
                    Errno::XDEV => bad(
                        entry,
                        "a parent is a symlink that leads out of the snapshot directory",
                    ),
                    e => sys(entry, "open a parent directory", e),
                },
            )?;
        }
        let copy = fd
            .try_clone()
            .map_err(|e| Error::io(format!("layer entry {entry:?}: dup"), e))?;
        self.last_dir = Some((rel.to_path_buf(), copy));
        Ok(fd)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry
            .path()
            .map_err(|e| Error::InvalidArgument(format!("layer entry name: {e}")))?;
        let shown = raw.display().to_string();
        let rel = clean(&shown, &raw)?;
        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            return Ok(()); // the root itself ("./"): nothing to create
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = self.dir(&shown, &parent_rel, true)?;
        self.stats.entries += 1;
        if !matches!(entry.header().entry_type(), tar::EntryType::Regular) {
            // Anything else may change what a cached path resolves to.
            self.last_dir = None;
        }
        let name_str = name.to_string_lossy().into_owned();
        if name_str == OPAQUE {
            return xattr(&parent, None, "trusted.overlay.opaque", b"y")
                .map_err(|e| sys(&shown, "mark opaque", e));
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT) {
            if hidden.starts_with(WHITEOUT) {
                return Ok(()); // other AUFS metadata (`.wh..wh.plnk` ...): not for overlayfs
            }
            if hidden.is_empty() {
                return Err(bad(&shown, "whiteout without a name"));
            }
            remove_existing(&parent, hidden.as_ref()).map_err(|e| sys(&shown, "replace", e))?;
            return rustix::fs::mknodat(&parent, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|e| sys(&shown, "create the whiteout", e));
        }
        let xattrs = xattrs(entry, &shown)?;
        let header = entry.header().clone();
        let meta = Meta {
            mode: header.mode().map_err(|e| bad(&shown, e))? & 0o7777,
            uid: header
                .uid()
                .map_err(|e| bad(&shown, e))?
                .try_into()
                .map_err(|_| bad(&shown, "uid out of range"))?,
            gid: header
                .gid()
                .map_err(|e| bad(&shown, e))?
                .try_into()
                .map_err(|_| bad(&shown, "gid out of range"))?,
            times: {
                let t = Timespec {
                    tv_sec: header.mtime().map_err(|e| bad(&shown, e))?.min(i64::MAX as u64) as i64,
                    tv_nsec: 0,
                };
                Timestamps {
                    last_access: t,
                    last_modification: t,
                }
            },
            xattrs,
        };
        let kind = header.entry_type();
        let perm = Mode::from_raw_mode(meta.mode & 0o777);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        remove_existing(&parent, &name).map_err(|e| sys(&shown, "replace", e))?;
                        mkdir(&parent, &name, &shown)?;
                    }
                    Err(Errno::NOENT) => mkdir(&parent, &name, &shown)?,
                    Err(e) => return Err(sys(&shown, "stat", e)),
                }
                self.apply(&parent, &name, &shown, &meta, false)?;
                self.implied.remove(&rel);
                self.dirs.push((rel, meta.times));
                return Ok(());
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                remove_existing(&parent, &name).map_err(|e| sys(&shown, "replace", e))?;
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    perm,
                )
                .map_err(|e| sys(&shown, "create", e))?;
                let mut file = std::fs::File::from(fd);
                let n = std::io::copy(entry, &mut file)
                    .map_err(|e| Error::io(format!("layer entry {shown:?}: write"), e))?;
                self.stats.bytes += n;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(&shown, e))?
                    .ok_or_else(|| bad(&shown, "symlink without a target"))?;
                remove_existing(&parent, &name).map_err(|e| sys(&shown, "replace", e))?;
                rustix::fs::symlinkat(target.as_ref(), &parent, &name)
                    .map_err(|e| sys(&shown, "create the symlink", e))?;
                return self.apply(&parent, &name, &shown, &meta, true);
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(&shown, e))?
                    .ok_or_else(|| bad(&shown, "hard link without a target"))?;
                let target_rel = clean(&shown, &target)?;
                let target_name = target_rel
                    .file_name()
                    .ok_or_else(|| bad(&shown, "hard link to the root"))?;
                let target_parent = self.dir(&shown, target_rel.parent().unwrap_or(Path::new("")), false)?;
                let st = rustix::fs::statat(&target_parent, target_name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| sys(&shown, "find the hard link's target in this layer", e))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(bad(&shown, "hard link to a directory"));
                }
                remove_existing(&parent, &name).map_err(|e| sys(&shown, "replace", e))?;
                // Without AT_SYMLINK_FOLLOW a symlink target is linked itself, never followed.
                return rustix::fs::linkat(&target_parent, target_name, &parent, &name, AtFlags::empty())
                    .map_err(|e| sys(&shown, "create the hard link", e));
            }
            T::Char | T::Block | T::Fifo => {
                let file_type = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let (major, minor) = if kind == T::Fifo {
                    (0, 0)
                } else {
                    (
                        header.device_major().map_err(|e| bad(&shown, e))?.unwrap_or(0),
                        header.device_minor().map_err(|e| bad(&shown, e))?.unwrap_or(0),
                    )
                };
                remove_existing(&parent, &name).map_err(|e| sys(&shown, "replace", e))?;
                rustix::fs::mknodat(&parent, &name, file_type, perm, rustix::fs::makedev(major, minor))
                    .map_err(|e| sys(&shown, "create the device", e))?;
            }
            T::XGlobalHeader => return Ok(()),
            other => return Err(bad(&shown, format!("unsupported entry type {other:?}"))),
        }
        self.apply(&parent, &name, &shown, &meta, false)
    }

    /// Owner, then mode (chown clears setuid), then xattrs, then times.
    fn apply(
        &self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        shown: &str,
        meta: &Meta,
        symlink: bool,
    ) -> Result<()> {
        let nofollow = AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            nofollow,
        )
        .map_err(|e| sys(shown, "chown", e))?;
        if !symlink {
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| sys(shown, "chmod", e))?;
        }
        for (key, value) in &meta.xattrs {
            xattr(parent, Some(name), key, value).map_err(|e| sys(shown, &format!("set xattr {key}"), e))?;
        }
        rustix::fs::utimensat(parent, name, &meta.times, nofollow).map_err(|e| sys(shown, "set times", e))
    }

    fn finish(&mut self) -> Result<()> {
        // Deepest first, so setting a child's times cannot change its parent's afterwards.
        self.dirs
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, times) in std::mem::take(&mut self.dirs) {
            let shown = rel.display().to_string();
            let (Some(name), parent) = (rel.file_name(), rel.parent().unwrap_or(Path::new(""))) else {
                continue;
            };
            let parent = self.dir(&shown, parent, false)?;
            rustix::fs::utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| sys(&shown, "set times", e))?;
        }
        Ok(())
    }
}

fn mkdir(parent: &OwnedFd, name: &std::ffi::OsStr, shown: &str) -> Result<()> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755))
        .map_err(|e| sys(shown, "create the directory", e))
}

/// Sets an xattr on `parent/name` (or `parent` itself) without following a final symlink.
fn xattr(
    parent: &OwnedFd,
    name: Option<&std::ffi::OsStr>,
    key: &str,
    value: &[u8],
) -> rustix::io::Result<()> {
    use rustix::fd::AsRawFd;
    let dir = PathBuf::from(format!("/proc/self/fd/{}", parent.as_fd().as_raw_fd()));
    match name {
        // The magic link to the directory itself must be followed.
        None => rustix::fs::setxattr(&dir, key, value, XattrFlags::empty()),
        Some(name) => rustix::fs::lsetxattr(dir.join(name), key, value, XattrFlags::empty()),
    }
}

/// Makes way for a new node: removes what has its name (a whole tree for a directory).
fn remove_existing(parent: &OwnedFd, name: &std::ffi::OsStr) -> rustix::io::Result<()> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            use rustix::fd::AsRawFd;
            let path = PathBuf::from(format!("/proc/self/fd/{}", parent.as_fd().as_raw_fd())).join(name);
            // std's remove_dir_all never follows symlinks inside the tree.
            std::fs::remove_dir_all(path).map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
        }
        Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()),
    }
}

/// `SCHILY.xattr.<name>` PAX records of the entry.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions().map_err(|e| bad(shown, e))? {
        for ext in exts {
            let ext = ext.map_err(|e| bad(shown, e))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}
