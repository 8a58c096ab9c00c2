//! The snapshots API on overlayfs, laid out like containerd's own overlay snapshotter:
//! `ROOT/snapshots/<id>/fs` is a snapshot's tree (the upper directory while active),
//! `ROOT/snapshots/<id>/work` overlayfs' work directory, `ROOT/metadata.redb` the records.
//!
//! A snapshot without parents mounts its `fs` with a bind mount; one with parents mounts an
//! overlay whose lower directories are its parents' `fs`, nearest first. A view of one parent is
//! a read-only bind mount of that parent. Every file-system and database call runs in
//! `spawn_blocking`.

use crate::filter::Filters;
use crate::meta::{MetaStore, New, Record, check_namespace};
use crate::model::{Info, Kind, Labels, Mount, Usage};
use crate::snapshotter::Snapshotter;
use crate::{Error, Result};
use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Overlay {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    meta: MetaStore,
    /// The kernel knows overlayfs' `index` option: mounts pass `index=off` (as containerd does),
    /// so lower directories can be moved or copied without invalidating an index.
    index_off: bool,
    /// Held while a snapshot directory is created and while Cleanup looks for unused ones, so
    /// Cleanup never takes a directory whose record is not committed yet.
    dirs: std::sync::Mutex<()>,
}

impl Overlay {
    /// Opens (or creates) the snapshotter at `root`. Blocks: call it before serving, or in
    /// `spawn_blocking`.
    pub fn open(root: &Path) -> Result<Self> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots)
            .map_err(|e| Error::io(format!("create {}", snapshots.display()), e))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", root.display()), e))?;
        let meta = MetaStore::open(&root.join("metadata.redb"))?;
        // Layers being unpacked when the last process stopped: never adopted, so never used.
        remove_tree(&root.join("staging"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                meta,
                index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
                dirs: std::sync::Mutex::new(()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Blocking: a fresh directory `ROOT/staging/<n>` with an empty `fs/` to unpack a layer
    /// into before it becomes a snapshot ([`Overlay::adopt_blocking`]).
    pub fn stage_blocking(&self) -> Result<PathBuf> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self
            .inner
            .root
            .join("staging")
            .join(format!("{}-{n}", std::process::id()));
        for sub in ["fs", "work"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(format!("create {}", p.display()), e))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(format!("chmod {}", p.display()), e))?;
        }
        Ok(dir)
    }

    /// Blocking: removes a staging directory that will not be adopted.
    pub fn discard_blocking(&self, staged: &Path) {
        if let Err(e) = remove_tree(staged) {
            tracing::warn!(dir = %staged.display(), error = %e, "staging directory left behind");
        }
    }

    /// Blocking: makes the staged tree committed snapshot `name` on `parent`; the directories
    /// the layer only `implied` first take their attributes from the parents' trees.
    pub fn adopt_blocking(
        &self,
        ns: &str,
        name: &str,
        parent: &str,
        labels: Labels,
        staged: &Path,
        implied: &[PathBuf],
    ) -> Result<()> {
        check_namespace(ns)?;
        let inner = &self.inner;
        if !parent.is_empty() && !implied.is_empty() {
            let (record, ids) = inner.meta.get_with_parents(ns, parent)?;
            let lowers: Vec<PathBuf> = std::iter::once(record.id)
                .chain(ids)
                .map(|id| inner.dir(id).join("fs"))
                .collect();
            crate::inherit::inherit_dirs(&staged.join("fs"), implied, &lowers)?;
        }
        let usage = disk_usage(&staged.join("fs"))?;
        let _dirs = inner.dirs.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .meta
            .insert_committed(ns, name, parent, labels, usage, |id| {
                let dir = inner.dir(id);
                std::fs::rename(staged, &dir)
                    .map_err(|e| Error::io(format!("move {} into place", staged.display()), e))
            })
    }

    /// Blocking: whether `name` exists in `ns`.
    pub fn exists_blocking(&self, ns: &str, name: &str) -> Result<bool> {
        match self.inner.meta.get(ns, name) {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await?
    }

    async fn create(
        &self,
        ns: String,
        kind: Kind,
        key: String,
        parent: String,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        check_namespace(&ns)?;
        self.blocking(move |inner| {
            let _dirs = inner.dirs.lock().unwrap_or_else(|e| e.into_inner());
            let created = inner.meta.create(
                &ns,
                New {
                    kind,
                    key: &key,
                    parent: &parent,
                    labels,
                    usage: None,
                },
                |id| inner.make_dir(id),
            )?;
            tracing::debug!(ns, key, id = created.record.id, ?kind, "snapshot created");
            Ok(inner.mounts(&created.record, &created.parent_ids))
        })
        .await
    }
}

impl Inner {
    pub(crate) fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn make_dir(&self, id: u64) -> Result<()> {
        let dir = self.dir(id);
        if dir.exists() {
            // Left by a crash between creating a directory and committing its record.
            remove_tree(&dir)?;
        }
        let made = (|| {
            std::fs::create_dir(&dir)?;
            for sub in ["fs", "work"] {
                let p = dir.join(sub);
                std::fs::create_dir(&p)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        })();
        made.map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            Error::io(format!("create {}", dir.display()), e)
        })
    }

    fn fs(&self, id: u64) -> String {
        self.dir(id).join("fs").to_string_lossy().into_owned()
    }

    fn mounts(&self, record: &Record, parents: &[u64]) -> Vec<Mount> {
        let bind = |source: String, ro: bool| Mount {
            kind: "bind".into(),
            source,
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        let lower = || {
            format!(
                "lowerdir={}",
                parents
                    .iter()
                    .map(|id| self.fs(*id))
                    .collect::<Vec<_>>()
                    .join(":")
            )
        };
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        match (record.kind, parents.len()) {
            (Kind::Active, 0) => vec![bind(self.fs(record.id), false)],
            (Kind::View, 0) => vec![bind(self.fs(record.id), true)],
            (Kind::View, 1) => vec![bind(self.fs(parents[0]), true)],
            (Kind::View, _) => {
                options.push(lower());
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
            (_, _) => {
                let dir = self.dir(record.id);
                options.push(format!("workdir={}", dir.join("work").display()));
                options.push(format!("upperdir={}", dir.join("fs").display()));
                options.push(lower());
                vec![Mount {
                    kind: "overlay".into(),
                    source: "overlay".into(),
                    options,
                }]
            }
        }
    }

    /// Removes directories that no record names (removed snapshots, crashed creations).
    fn cleanup(&self) -> Result<usize> {
        let _dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let known: HashSet<u64> = self.meta.all_ids()?;
        let snapshots = self.root.join("snapshots");
        let entries = std::fs::read_dir(&snapshots)
            .map_err(|e| Error::io(format!("read {}", snapshots.display()), e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("read {}", snapshots.display()), e))?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| known.contains(&id));
            if !keep {
                remove_tree(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// Disk use of a tree: allocated bytes and inodes, each hard-linked inode once.
pub(crate) fn disk_usage(path: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| Error::io(format!("stat {}", p.display()), e))?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() {
            let entries = std::fs::read_dir(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
            for entry in entries {
                stack.push(
                    entry
                        .map_err(|e| Error::io(format!("read {}", p.display()), e))?
                        .path(),
                );
            }
        }
    }
    Ok(usage)
}

impl Snapshotter for Overlay {
    async fn prepare(&self, ns: String, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        self.create(ns, Kind::Active, key, parent, labels).await
    }

    async fn view(&self, ns: String, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        self.create(ns, Kind::View, key, parent, labels).await
    }

    async fn mounts(&self, ns: String, key: String) -> Result<Vec<Mount>> {
        check_namespace(&ns)?;
        self.blocking(move |inner| {
            let (record, parents) = inner.meta.get_with_parents(&ns, &key)?;
            if record.kind == Kind::Committed {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is committed: only active snapshots and views have mounts"
                )));
            }
            Ok(inner.mounts(&record, &parents))
        })
        .await
    }

    async fn commit(
        &self,
        ns: String,
        name: String,
        key: String,
        parent: String,
        labels: Labels,
    ) -> Result<()> {
        check_namespace(&ns)?;
        self.blocking(move |inner| {
            let record = inner.meta.get(&ns, &key)?;
            if record.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            if !parent.is_empty() && parent != record.parent {
                return Err(Error::InvalidArgument(format!(
                    "cannot change the parent of active snapshot {key:?} on commit"
                )));
            }
            let usage = disk_usage(&inner.dir(record.id).join("fs"))?;
            inner.meta.commit(&ns, &key, &name, labels, usage)?;
            tracing::debug!(ns, key, name, id = record.id, "snapshot committed");
            Ok(())
        })
        .await
    }

    async fn remove(&self, ns: String, key: String) -> Result<()> {
        check_namespace(&ns)?;
        self.blocking(move |inner| {
            let id = inner.meta.remove(&ns, &key)?;
            tracing::debug!(ns, key, id, "snapshot removed");
            // The record is gone; if the directory cannot go now, Cleanup removes it later.
            if let Err(e) = remove_tree(&inner.dir(id)) {
                tracing::warn!(id, error = %e, "snapshot directory left for cleanup");
            }
            Ok(())
        })
        .await
    }

    async fn stat(&self, ns: String, key: String) -> Result<Info> {
        check_namespace(&ns)?;
        self.blocking(move |inner| Ok(inner.meta.get(&ns, &key)?.info(&key)))
            .await
    }

    async fn update(&self, ns: String, name: String, labels: Labels, paths: Vec<String>) -> Result<Info> {
        check_namespace(&ns)?;
        self.blocking(move |inner| Ok(inner.meta.update(&ns, &name, &labels, &paths)?.info(&name)))
            .await
    }

    async fn list(&self, ns: String, filters: Vec<String>) -> Result<Vec<Info>> {
        check_namespace(&ns)?;
        let filters = Filters::parse(&filters)?;
        self.blocking(move |inner| {
            Ok(inner
                .meta
                .list(&ns)?
                .into_iter()
                .map(|(name, r)| r.info(&name))
                .filter(|i| filters.matches(i))
                .collect())
        })
        .await
    }

    async fn usage(&self, ns: String, key: String) -> Result<Usage> {
        check_namespace(&ns)?;
        self.blocking(move |inner| {
            let record = inner.meta.get(&ns, &key)?;
            match record.usage {
                Some(u) => Ok(u),
                None => disk_usage(&inner.dir(record.id).join("fs")),
            }
        })
        .await
    }

    async fn cleanup(&self, ns: String) -> Result<()> {
        check_namespace(&ns)?;
        let removed = self.blocking(|inner| inner.cleanup()).await?;
        tracing::info!(removed, "cleanup removed unused snapshot directories");
        Ok(())
    }
}
