//! One task's shared state: what every part of the peer looks at.
//!
//! The download engine writes pieces; the piece server reads them and tells
//! children what is new; the local API and the registry proxy stream progress
//! and bytes. They share an `Arc<Task>`: a mutex over small metadata, the
//! content file for positional reads and writes, and a `watch` counter that
//! ticks on every change, so anyone can wait for "something new" without
//! falling behind.

use crate::error::Error;
use crate::store::{Store, TaskRecord, now_unix};
use damselfly_proto::piece::Layout;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub layout: Option<Layout>,
    pub completed_bytes: u64,
    pub bytes_from_peers: u64,
    pub bytes_from_source: u64,
    pub done: bool,
    pub failed: Option<crate::error::Failure>,
}

#[derive(Default)]
pub struct TaskState {
    pub layout: Option<Layout>,
    pub have: Vec<bool>,
    pub digests: Vec<Option<[u8; 32]>>,
    pub progress: Progress,
    /// This peer fetched the task from the origin: its digests are the trusted ones.
    pub source: bool,
    pub digest: Option<String>,
    pub url: String,
    /// Unsaved changes since the last [`Task::save`].
    pub dirty: bool,
}

impl TaskState {
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.have
            .iter()
            .enumerate()
            .filter(|(_, h)| !**h)
            .map(|(i, _)| i as u32)
    }

    pub fn count(&self) -> u32 {
        self.have.iter().filter(|h| **h).count() as u32
    }

    pub fn bitmap(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.have.len().div_ceil(8)];
        for (i, h) in self.have.iter().enumerate() {
            if *h {
                out[i / 8] |= 1 << (i % 8);
            }
        }
        out
    }
}

pub struct Task {
    pub id: String,
    state: Mutex<TaskState>,
    file: OnceLock<File>,
    changed: watch::Sender<u64>,
    path: std::path::PathBuf,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Task {
    pub fn new(id: String, url: String, digest: Option<String>, path: std::path::PathBuf) -> Arc<Self> {
        let state = TaskState {
            url,
            digest,
            ..Default::default()
        };
        Arc::new(Self {
            id,
            state: Mutex::new(state),
            file: OnceLock::new(),
            changed: watch::channel(0).0,
            path,
        })
    }

    /// Rebuilds a task from its stored record (after a restart). With
    /// `verify`, every held piece is re-hashed and dropped if it does not
    /// match its digest (recovery after a crash).
    pub fn from_record(r: &TaskRecord, path: std::path::PathBuf, verify: bool) -> Result<Arc<Self>, Error> {
        let t = Self::new(r.task_id.clone(), r.url.clone(), r.digest.clone(), path);
        if r.piece_length > 0 {
            let layout = Layout::new(r.content_length, r.piece_length);
            t.set_layout(layout)?;
            let mut s = t.lock();
            for i in 0..layout.piece_count() as usize {
                s.have[i] = r.bitmap.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
                s.digests[i] = r.piece_digests.get(i).and_then(|h| {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(h, &mut d).ok().map(|_| d)
                });
                if s.have[i] && s.digests[i].is_none() {
                    s.have[i] = false; // never serve what we cannot check
                }
            }
            if verify {
                let file = t.file()?;
                for i in 0..layout.piece_count() {
                    if !s.have[i as usize] {
                        continue;
                    }
                    let mut buf = vec![0u8; layout.len_of(i) as usize];
                    let ok = file.read_exact_at(&mut buf, layout.offset(i)).is_ok()
                        && Some(sha256(&buf)) == s.digests[i as usize];
                    if !ok {
                        s.have[i as usize] = false;
                        s.dirty = true;
                    }
                }
            }
            s.progress.completed_bytes = (0..layout.piece_count())
                .filter(|i| s.have[*i as usize])
                .map(|i| layout.len_of(i) as u64)
                .sum();
            s.progress.done = r.done && s.have.iter().all(|h| *h);
            s.source = r.source;
        }
        Ok(t)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, TaskState> {
        self.state.lock().expect("task state lock poisoned")
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn layout(&self) -> Option<Layout> {
        self.lock().layout
    }

    pub fn progress(&self) -> Progress {
        self.lock().progress.clone()
    }

    /// Fixes the layout and sizes the content file. Idempotent for the same layout.
    pub fn set_layout(&self, layout: Layout) -> Result<(), Error> {
        {
            let mut s = self.lock();
            if let Some(l) = s.layout {
                return if l == layout {
                    Ok(())
                } else {
                    Err(Error::Failed(format!("layout changed from {l:?} to {layout:?}")))
                };
            }
            let n = layout.piece_count() as usize;
            s.layout = Some(layout);
            s.progress.layout = Some(layout);
            s.have = vec![false; n];
            if s.digests.len() != n {
                s.digests = vec![None; n];
            }
            s.dirty = true;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| Error::io(format!("open {}", self.path.display()), e))?;
        file.set_len(layout.content_length)
            .map_err(|e| Error::io("size content file", e))?;
        let _ = self.file.set(file);
        self.notify();
        Ok(())
    }

    /// Records trusted digests (from the scheduler or computed by the source).
    pub fn set_digests(&self, digests: impl IntoIterator<Item = (u32, [u8; 32])>) {
        let mut s = self.lock();
        let mut changed = false;
        for (i, d) in digests {
            if let Some(slot) = s.digests.get_mut(i as usize)
                && slot.is_none()
            {
                *slot = Some(d);
                changed = true;
            }
        }
        if changed {
            s.dirty = true;
            drop(s);
            self.notify();
        }
    }

    pub fn expected_digest(&self, index: u32) -> Option<[u8; 32]> {
        self.lock().digests.get(index as usize).copied().flatten()
    }

    pub fn has(&self, index: u32) -> bool {
        self.lock().have.get(index as usize).copied().unwrap_or(false)
    }

    fn file(&self) -> Result<&File, Error> {
        self.file
            .get()
            .ok_or_else(|| Error::Failed("task layout not known yet".into()))
    }

    /// Stores a piece whose digest was checked by the caller, and publishes it.
    pub fn write_piece(&self, index: u32, bytes: &[u8], from_source: bool) -> Result<(), Error> {
        let layout = self
            .layout()
            .ok_or_else(|| Error::Failed("task layout not known yet".into()))?;
        if bytes.len() != layout.len_of(index) as usize {
            return Err(Error::Failed(format!(
                "piece {index} has {} bytes, expected {}",
                bytes.len(),
                layout.len_of(index)
            )));
        }
        self.file()?
            .write_all_at(bytes, layout.offset(index))
            .map_err(|e| Error::io(format!("write piece {index} of task {}", self.id), e))?;
        {
            let mut s = self.lock();
            if s.have[index as usize] {
                return Ok(());
            }
            s.have[index as usize] = true;
            s.progress.completed_bytes += bytes.len() as u64;
            if from_source {
                s.progress.bytes_from_source += bytes.len() as u64;
            } else {
                s.progress.bytes_from_peers += bytes.len() as u64;
            }
            s.dirty = true;
        }
        self.notify();
        Ok(())
    }

    /// Reads a piece that this peer holds.
    pub fn read_piece(&self, index: u32) -> Result<Vec<u8>, Error> {
        let layout = self
            .layout()
            .ok_or_else(|| Error::Failed("task layout not known yet".into()))?;
        if !self.has(index) {
            return Err(Error::BadRequest(format!("piece {index} not held")));
        }
        let mut buf = vec![0u8; layout.len_of(index) as usize];
        self.file()?
            .read_exact_at(&mut buf, layout.offset(index))
            .map_err(|e| Error::io(format!("read piece {index} of task {}", self.id), e))?;
        Ok(buf)
    }

    /// Reads any byte range of held pieces (for streaming to local clients).
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let mut buf = vec![0u8; len];
        self.file()?
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(format!("read task {}", self.id), e))?;
        Ok(buf)
    }

    pub fn mark_done(&self) {
        {
            let mut s = self.lock();
            s.progress.done = true;
            s.dirty = true;
        }
        self.notify();
    }

    pub fn mark_failed(&self, why: crate::error::Failure) {
        self.lock().progress.failed = Some(why);
        self.notify();
    }

    pub fn content_path(&self) -> &std::path::Path {
        &self.path
    }

    /// Flushes the content file to disk (at shutdown; see [`crate::store`]).
    pub fn sync(&self) -> Result<(), Error> {
        match self.file.get() {
            Some(f) => f.sync_data().map_err(|e| Error::io("sync content file", e)),
            None => Ok(()),
        }
    }

    /// Saves the metadata (see [`crate::store`] for why without an fsync).
    pub fn save(&self, store: &Store) -> Result<(), Error> {
        let record = {
            let s = self.lock();
            if !s.dirty {
                return Ok(());
            }
            let Some(l) = s.layout else { return Ok(()) };
            TaskRecord {
                task_id: self.id.clone(),
                url: s.url.clone(),
                content_length: l.content_length,
                piece_length: l.piece_length,
                digest: s.digest.clone(),
                piece_digests: s
                    .digests
                    .iter()
                    .map(|d| d.map(hex::encode).unwrap_or_default())
                    .collect(),
                bitmap: s.bitmap(),
                done: s.progress.done,
                last_access_unix: now_unix(),
                source: s.source,
            }
        };
        store.put(&record)?;
        self.lock().dirty = false;
        Ok(())
    }
}

/// The tasks this peer has in memory: running downloads, and finished ones
/// loaded on demand from the store to serve other peers.
pub struct Tasks {
    pub store: Arc<Store>,
    map: Mutex<HashMap<String, Arc<Task>>>,
}

impl Tasks {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.map.lock().expect("tasks lock").get(id).cloned()
    }

    /// The in-memory task, else the stored one; `None` when unknown here.
    pub fn get_or_load(&self, id: &str) -> Result<Option<Arc<Task>>, Error> {
        if let Some(t) = self.get(id) {
            return Ok(Some(t));
        }
        let Some(record) = self.store.get(id)? else {
            return Ok(None);
        };
        let task = Task::from_record(&record, self.store.content_path(id)?, self.store.recovering())?;
        let mut map = self.map.lock().expect("tasks lock");
        Ok(Some(map.entry(id.to_string()).or_insert(task).clone()))
    }

    /// Returns (task, created): the existing task, or a new one from `make`.
    pub fn get_or_insert(
        &self,
        id: &str,
        make: impl FnOnce() -> Result<Arc<Task>, Error>,
    ) -> Result<(Arc<Task>, bool), Error> {
        if let Some(t) = self.get_or_load(id)? {
            return Ok((t, false));
        }
        let mut map = self.map.lock().expect("tasks lock");
        if let Some(t) = map.get(id) {
            return Ok((t.clone(), false));
        }
        let t = make()?;
        map.insert(id.to_string(), t.clone());
        Ok((t, true))
    }

    /// Drops a task from memory and the store, unless someone is using it.
    pub fn evict(&self, id: &str) -> Result<bool, Error> {
        let mut map = self.map.lock().expect("tasks lock");
        if let Some(t) = map.get(id) {
            if Arc::strong_count(t) > 1 {
                return Ok(false);
            }
            map.remove(id);
        }
        drop(map);
        self.store.delete(id)?;
        Ok(true)
    }

    pub fn in_use(&self, id: &str) -> bool {
        self.map
            .lock()
            .expect("tasks lock")
            .get(id)
            .is_some_and(|t| Arc::strong_count(t) > 1)
    }

    /// Forgets a task from memory only (a failed download), keeping nothing in the store.
    pub fn forget(&self, id: &str) {
        self.map.lock().expect("tasks lock").remove(id);
    }

    pub fn all(&self) -> Vec<Arc<Task>> {
        self.map.lock().expect("tasks lock").values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keeps_verified_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let path = store.content_path("t").unwrap();
        let t = Task::new("t".into(), "http://o/f".into(), None, path.clone());
        t.set_layout(Layout::new(10, 4)).unwrap();
        t.set_digests([(0, sha256(b"abcd")), (2, sha256(b"ij"))]);
        t.write_piece(0, b"abcd", true).unwrap();
        t.write_piece(2, b"ij", true).unwrap();
        assert!(t.write_piece(1, b"short", true).is_err());
        t.lock().source = true;
        t.save(&store).unwrap();

        let r = store.get("t").unwrap().unwrap();
        let back = Task::from_record(&r, path.clone(), false).unwrap();
        assert!(back.has(0) && !back.has(1) && back.has(2));
        // A source keeps super-seeding after a restart.
        assert!(back.lock().source);
        assert_eq!(back.read_piece(0).unwrap(), b"abcd");
        assert_eq!(back.read_piece(2).unwrap(), b"ij");
        assert!(back.read_piece(1).is_err());
        assert_eq!(back.progress().completed_bytes, 6);
        assert!(!back.progress().done);

        // After a crash, bytes that do not match their digest are not trusted.
        std::fs::write(&path, b"abcdXXXXzz").unwrap();
        let checked = Task::from_record(&r, path, true).unwrap();
        assert!(checked.has(0) && !checked.has(2));
    }

    #[test]
    fn pieces_without_digest_are_not_trusted_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut r = TaskRecord {
            task_id: "u".into(),
            content_length: 8,
            piece_length: 4,
            piece_digests: vec![hex::encode(sha256(b"abcd")), String::new()],
            bitmap: vec![0b11],
            done: true,
            ..Default::default()
        };
        store.put(&r).unwrap();
        std::fs::write(store.content_path("u").unwrap(), b"abcdefgh").unwrap();
        let t = Task::from_record(&r, store.content_path("u").unwrap(), false).unwrap();
        assert!(t.has(0) && !t.has(1));
        assert!(!t.progress().done);
        r.bitmap = vec![0];
        let t = Task::from_record(&r, store.content_path("u").unwrap(), false).unwrap();
        assert!(!t.has(0));
    }
}
