//! The piece store: one content file per task, metadata in redb.
//!
//! `DATA_DIR/content/<task_id>` holds the bytes, each piece at its offset.
//! `DATA_DIR/meta.redb` holds one [`TaskRecord`] per task: layout, piece
//! bitmap, trusted piece digests, access time.
//!
//! Content files are not fsynced while downloading (that would tie every
//! download to the disk's sync speed). Instead `DATA_DIR/unclean` exists
//! while a daemon runs and is removed after a clean shutdown has synced
//! everything. After a crash the marker is still there, and every stored
//! piece is re-hashed against its trusted digest when its task is first
//! loaded: a bit set in a bitmap is only trusted once its bytes matched.
//!
//! Records are committed without an fsync too. On ext4 (`data=ordered`) an
//! fsync of `meta.redb` commits the journal, which first writes out every
//! content file's freshly allocated blocks: twice a second, that tied cold
//! downloads to the disk. A crash loses at most the records written since
//! the last [`Store::flush`] (every [`FLUSH_EVERY`] and at shutdown); their
//! content files are then orphans, removed at start-up, and downloaded again.
//!
//! Every call here (and every piece read or write of a [`crate::task::Task`])
//! blocks on the disk: async code runs it through [`blocking`], on tokio's
//! blocking pool, so a write stalled by writeback never stalls the runtime
//! threads that serve uploads and scheduler streams.

use crate::error::Error;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

/// How often the daemon makes recent records durable ([`Store::flush`]).
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub task_id: String,
    /// The URL without signing parameters; request headers are never stored.
    pub url: String,
    pub content_length: u64,
    pub piece_length: u32,
    /// `sha256:<hex>` of the whole content, when the requester knew it.
    pub digest: Option<String>,
    /// Hex sha256 per piece ("" while unknown).
    pub piece_digests: Vec<String>,
    /// Little-endian piece bitmap.
    pub bitmap: Vec<u8>,
    pub done: bool,
    pub last_access_unix: i64,
    /// This host is the task's source (it fetched it from the origin, or imported it into the
    /// cache): it keeps super-seeding it after a restart.
    #[serde(default)]
    pub source: bool,
}

/// Runs blocking file or database work on tokio's blocking pool, never on a
/// runtime thread.
pub async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Failed(format!("blocking I/O task: {e}")))?
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Store {
    dir: PathBuf,
    db: Database,
    /// The previous daemon did not shut down cleanly: verify pieces on load.
    recovering: bool,
}

/// Task ids name files: only accept what a task id can be.
fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!("invalid task id {id:?}")))
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let content = dir.join("content");
        std::fs::create_dir_all(&content)
            .map_err(|e| Error::io(format!("create {}", content.display()), e))?;
        let db = Database::create(dir.join("meta.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(TASKS)?;
        txn.commit()?;
        let marker = dir.join("unclean");
        let recovering = marker.exists();
        std::fs::write(&marker, b"").map_err(|e| Error::io(format!("write {}", marker.display()), e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
            recovering,
        })
    }

    /// Did the previous daemon stop without syncing its content files?
    pub fn recovering(&self) -> bool {
        self.recovering
    }

    /// Called after every content file was synced at shutdown.
    pub fn mark_clean(&self) -> Result<(), Error> {
        let marker = self.dir.join("unclean");
        std::fs::remove_file(&marker).map_err(|e| Error::io(format!("remove {}", marker.display()), e))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn content_path(&self, task_id: &str) -> Result<PathBuf, Error> {
        check_id(task_id)?;
        Ok(self.dir.join("content").join(task_id))
    }

    pub fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        match table.get(task_id)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn put(&self, record: &TaskRecord) -> Result<(), Error> {
        check_id(&record.task_id)?;
        let bytes = serde_json::to_vec(record)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut table = txn.open_table(TASKS)?;
            table.insert(record.task_id.as_str(), bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes every record written so far durable (one fsync).
    pub fn flush(&self) -> Result<(), Error> {
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    /// Removes the record first, then the file: a crash in between leaves an
    /// orphan file, never a record pointing at missing bytes.
    pub fn delete(&self, task_id: &str) -> Result<(), Error> {
        let path = self.content_path(task_id)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TASKS)?;
            table.remove(task_id)?;
        }
        txn.commit()?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    pub fn list(&self) -> Result<Vec<TaskRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Content files with no record (left by a crash between the two steps
    /// of a delete, or by a download that never saved): removed at start-up.
    pub fn remove_orphans(&self) -> Result<usize, Error> {
        let known: std::collections::HashSet<String> = self.list()?.into_iter().map(|r| r.task_id).collect();
        let dir = self.dir.join("content");
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))? {
            let entry = entry.map_err(|e| Error::io("read content dir", e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !known.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Reads or creates the host id: stable across restarts of one peer.
pub fn host_id(dir: &Path) -> Result<String, Error> {
    let path = dir.join("host-id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id = format!("{}-{:08x}", host.trim(), rand::random::<u32>());
    std::fs::write(&path, &id).map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            url: "http://o/f".into(),
            content_length: 10,
            piece_length: 4,
            piece_digests: vec!["aa".into(), "".into(), "cc".into()],
            bitmap: vec![0b101],
            last_access_unix: now_unix(),
            ..Default::default()
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put(&record("t1")).unwrap();
            std::fs::write(s.content_path("t1").unwrap(), b"0123456789").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(s.recovering(), "no clean shutdown was recorded");
        s.mark_clean().unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert!(!s.recovering());
        assert_eq!(s.get("t1").unwrap(), Some(record("t1")));
        assert_eq!(s.list().unwrap().len(), 1);
        assert_eq!(s.remove_orphans().unwrap(), 0);
        s.delete("t1").unwrap();
        assert!(s.get("t1").unwrap().is_none());
        assert!(!s.content_path("t1").unwrap().exists());
    }

    #[test]
    fn orphans_and_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("content/stray"), b"x").unwrap();
        assert_eq!(s.remove_orphans().unwrap(), 1);
        assert!(s.content_path("../etc/passwd").is_err());
        assert!(s.put(&record("a/b")).is_err());
        let id = host_id(dir.path()).unwrap();
        assert_eq!(host_id(dir.path()).unwrap(), id);
    }
}
