//! `damselfly cache`: files in the mesh with no origin behind them.
//!
//! An import copies the file into the store (in-kernel `copy_file_range`,
//! which reflinks where the file system can), hashes that copy once (the
//! whole file and every piece), records it as a finished task named
//! `cache://ID` and tells the scheduler, which places the replicas
//! (`crate::announcer` fetches them when told) and deletes the task
//! everywhere when it expires or is deleted. Each holder keeps what the
//! scheduler needs in `DATA_DIR/cache/<task>.json` and announces it, with
//! the piece digests from the task record, on every new host stream, so a
//! scheduler restart loses nothing. The store's GC leaves cache tasks alone;
//! a holder drops an expired one by itself too.

use crate::download::{self, Downloader, Request};
use crate::error::{Error, FailKind};
use crate::store::{TaskRecord, blocking, now_unix};
use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    CacheDeleteRequest, CacheEntry, CacheImportRequest, CacheListRequest, CacheStatRequest, CacheTask,
    StoredTask, TaskSpec,
};
use damselfly_proto::task_id::{cache_task_id, cache_url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Replicas when the importer does not say.
pub const DEFAULT_REPLICAS: u32 = 2;

pub fn is_cache_url(url: &str) -> bool {
    url.starts_with("cache://")
}

/// What a holder keeps beside the task record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheMeta {
    pub id: String,
    pub digest: String,
    pub replicas: u32,
    pub created_unix: i64,
    pub expires_unix: i64,
    pub owner_host_id: String,
    /// Placed here by the scheduler (not the importer's or an exporter's copy).
    pub replica: bool,
}

impl CacheMeta {
    fn from_wire(c: &CacheTask, replica: bool) -> Self {
        Self {
            id: c.id.clone(),
            digest: c.digest.clone(),
            replicas: c.replicas,
            created_unix: c.created_unix,
            expires_unix: c.expires_unix,
            owner_host_id: c.owner_host_id.clone(),
            replica,
        }
    }

    fn from_entry(e: &CacheEntry, replica: bool) -> Self {
        Self {
            id: e.id.clone(),
            digest: e.digest.clone(),
            replicas: e.replicas_wanted,
            created_unix: e.created_unix,
            expires_unix: e.expires_unix,
            owner_host_id: e.owner_host_id.clone(),
            replica,
        }
    }

    fn expired(&self, now: i64) -> bool {
        self.expires_unix != 0 && now >= self.expires_unix
    }
}

fn meta_dir(d: &Downloader) -> PathBuf {
    d.config.data_dir.join("cache")
}

fn meta_path(d: &Downloader, task_id: &str) -> PathBuf {
    meta_dir(d).join(format!("{task_id}.json"))
}

fn write_meta(d: &Downloader, task_id: &str, m: &CacheMeta) -> Result<(), Error> {
    let dir = meta_dir(d);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let path = meta_path(d, task_id);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(m)?)
        .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("rename {}", path.display()), e))
}

fn read_meta(d: &Downloader, task_id: &str) -> Option<CacheMeta> {
    let bytes = std::fs::read(meta_path(d, task_id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn scheduler(d: &Downloader, task_id: &str) -> Result<SchedulerClient<tonic::transport::Channel>, Error> {
    let s = d.scheduler_for(task_id).ok_or_else(|| Error::Refused {
        kind: FailKind::Unavailable,
        message: "no scheduler is configured or reachable".into(),
    })?;
    Ok(SchedulerClient::new(s.channel))
}

/// A scheduler's refusal, kind kept.
fn refused(s: tonic::Status) -> Error {
    let kind = match s.code() {
        tonic::Code::NotFound => FailKind::NotFound,
        tonic::Code::PermissionDenied | tonic::Code::AlreadyExists => FailKind::PermissionDenied,
        tonic::Code::InvalidArgument => FailKind::InvalidArgument,
        tonic::Code::Unavailable => FailKind::Unavailable,
        _ => FailKind::Internal,
    };
    Error::Refused {
        kind,
        message: format!("scheduler: {}", s.message()),
    }
}

/// Whole-file and per-piece sha256 of a file read in order.
fn hash_pieces(path: &Path, layout: Layout) -> Result<(String, Vec<[u8; 32]>), Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut whole = Sha256::new();
    let mut pieces = Vec::with_capacity(layout.piece_count() as usize);
    let mut buf = vec![0u8; layout.piece_length as usize];
    for i in 0..layout.piece_count() {
        let chunk = &mut buf[..layout.len_of(i) as usize];
        f.read_exact(chunk)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        whole.update(&*chunk);
        pieces.push(Sha256::digest(&*chunk).into());
    }
    Ok((format!("sha256:{}", hex::encode(whole.finalize())), pieces))
}

pub struct Import {
    pub path: PathBuf,
    pub id: Option<String>,
    pub replicas: u32,
    pub ttl: Option<Duration>,
}

/// Imports a local file as a cache task held here; the scheduler places replicas.
pub async fn import(d: &Arc<Downloader>, req: Import) -> Result<CacheEntry, Error> {
    if !req.path.is_absolute() {
        return Err(Error::BadRequest(format!(
            "path {} must be absolute",
            req.path.display()
        )));
    }
    if let Some(id) = &req.id {
        cache_task_id(id).map_err(Error::BadRequest)?;
    }
    let store = d.tasks.store.clone();
    let tmp = store
        .dir()
        .join("content")
        .join(format!(".import-{:016x}", rand::random::<u64>()));
    let (src, dst) = (req.path.clone(), tmp.clone());
    let length = blocking(move || {
        std::fs::copy(&src, &dst).map_err(|e| Error::io(format!("copy {} into the store", src.display()), e))
    })
    .await?;
    let result = import_copied(d, &req, &tmp, length).await;
    let _ = std::fs::remove_file(&tmp);
    result
}

async fn import_copied(
    d: &Arc<Downloader>,
    req: &Import,
    tmp: &Path,
    length: u64,
) -> Result<CacheEntry, Error> {
    let layout = Layout::try_new(length, d.limits.piece_length_for(length))
        .map_err(|e| Error::BadRequest(format!("{}: {e}", req.path.display())))?;
    let path = tmp.to_path_buf();
    let (digest, pieces) = blocking(move || hash_pieces(&path, layout)).await?;
    let id = req
        .id
        .clone()
        .unwrap_or_else(|| digest.trim_start_matches("sha256:").to_string());
    let task_id = cache_task_id(&id).map_err(Error::BadRequest)?;
    if !d.tasks.evict(&task_id)? {
        return Err(Error::BadRequest(format!(
            "cache id {id} is in use here; try again"
        )));
    }
    let content = d.tasks.store.content_path(&task_id)?;
    std::fs::rename(tmp, &content).map_err(|e| Error::io(format!("rename into {}", content.display()), e))?;
    let record = TaskRecord {
        task_id: task_id.clone(),
        url: cache_url(&id),
        content_length: length,
        piece_length: layout.piece_length,
        digest: Some(digest.clone()),
        piece_digests: pieces.iter().map(hex::encode).collect(),
        bitmap: vec![0xff; layout.piece_count().div_ceil(8) as usize],
        done: true,
        last_access_unix: now_unix(),
        // The only holder until replicas land: it super-seeds, as a seed does.
        source: true,
    };
    d.tasks.store.put(&record)?;
    let request = CacheImportRequest {
        host_id: d.host_id.clone(),
        spec: Some(TaskSpec {
            task_id: task_id.clone(),
            url: cache_url(&id),
            ..Default::default()
        }),
        content_length: length,
        piece_length: layout.piece_length,
        cache: Some(CacheTask {
            id: id.clone(),
            digest,
            replicas: req.replicas,
            piece_digests: pieces.concat(),
            ..Default::default()
        }),
        ttl_seconds: req.ttl.map_or(0, |t| t.as_secs().max(1)),
    };
    let entry = match scheduler(d, &task_id)?.cache_import(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let _ = d.tasks.evict(&task_id);
            return Err(refused(s));
        }
    };
    write_meta(d, &task_id, &CacheMeta::from_entry(&entry, false))?;
    info!(id, task_id, bytes = length, "cache task imported");
    Ok(entry)
}

/// The scheduler's entry for a cache id.
pub async fn stat(d: &Downloader, id: &str) -> Result<CacheEntry, Error> {
    let task_id = cache_task_id(id).map_err(Error::BadRequest)?;
    let req = CacheStatRequest { id: id.to_string() };
    Ok(scheduler(d, &task_id)?
        .cache_stat(req)
        .await
        .map_err(refused)?
        .into_inner())
}

/// Every scheduler's cache entries.
pub async fn list(d: &Downloader) -> Result<Vec<CacheEntry>, Error> {
    let mut out = Vec::new();
    for s in d.schedulers() {
        let r = SchedulerClient::new(s.channel)
            .cache_list(CacheListRequest {})
            .await;
        out.extend(r.map_err(refused)?.into_inner().entries);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Deletes a cache task everywhere (the scheduler tells every holder).
pub async fn delete(d: &Downloader, id: &str) -> Result<(), Error> {
    let task_id = cache_task_id(id).map_err(Error::BadRequest)?;
    let req = CacheDeleteRequest {
        id: id.to_string(),
        host_id: d.host_id.clone(),
    };
    scheduler(d, &task_id)?.cache_delete(req).await.map_err(refused)?;
    Ok(())
}

/// The local API's view of an entry.
pub fn info(e: CacheEntry) -> damselfly_proto::daemon::CacheInfo {
    damselfly_proto::daemon::CacheInfo {
        id: e.id,
        task_id: e.task_id,
        digest: e.digest,
        content_length: e.content_length,
        piece_length: e.piece_length,
        replicas_wanted: e.replicas_wanted,
        replica_hosts: e.replica_hosts,
        other_holders: e.other_holders,
        created_unix: e.created_unix,
        expires_unix: e.expires_unix,
        owner_host_id: e.owner_host_id,
    }
}

/// Before an export: the entry, if some host holds it (else a not-found error at once).
pub async fn held(d: &Downloader, id: &str) -> Result<CacheEntry, Error> {
    let e = stat(d, id).await?;
    if e.replica_hosts.is_empty() && e.other_holders.is_empty() {
        return Err(Error::Refused {
            kind: FailKind::NotFound,
            message: format!("cache id {id}: no host holds it now"),
        });
    }
    Ok(e)
}

/// The mesh download of a cache task.
pub async fn start(d: &Arc<Downloader>, e: &CacheEntry) -> Result<Arc<crate::task::Task>, Error> {
    let spec = TaskSpec {
        task_id: e.task_id.clone(),
        url: cache_url(&e.id),
        ..Default::default()
    };
    d.start(Request { spec, seed: false }).await
}

/// `sha256:<hex>` of a whole file, read in 1 MiB chunks.
fn file_digest(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read content", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Checks a finished cache task's whole-file digest (a mismatch drops it).
pub async fn verify(d: &Downloader, task_id: &str, digest: &str) -> Result<(), Error> {
    let content = d.tasks.store.content_path(task_id)?;
    let actual = blocking(move || file_digest(&content)).await?;
    if actual != digest {
        let _ = d.tasks.evict(task_id);
        return Err(Error::DigestMismatch {
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// After an export here: this host holds it too (announced after a restart,
/// dropped when the scheduler says so).
pub fn keep(d: &Downloader, e: &CacheEntry) -> Result<(), Error> {
    if read_meta(d, &e.task_id).is_none() {
        write_meta(d, &e.task_id, &CacheMeta::from_entry(e, false))?;
    }
    Ok(())
}

/// Puts the content of a finished task at `output`: a hard link when the
/// output is on the store's file system, else a copy; atomically either way.
pub async fn link_out(content: PathBuf, output: PathBuf) -> Result<(), Error> {
    blocking(move || {
        let dir = output.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(".damselfly-export-{:016x}", rand::random::<u64>()));
        if std::fs::hard_link(&content, &tmp).is_ok() {
            return std::fs::rename(&tmp, &output).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(format!("rename to {}", output.display()), e)
            });
        }
        crate::local_api::copy_out(&content, &output)
    })
    .await
}

/// The scheduler placed a replica here: fetch it through the mesh, check
/// it, keep it; returns what to announce.
pub async fn replicate(d: &Arc<Downloader>, spec: TaskSpec, cache: CacheTask) -> Result<StoredTask, Error> {
    if !is_cache_url(&spec.url) || cache_task_id(&cache.id).ok().as_ref() != Some(&spec.task_id) {
        return Err(Error::BadRequest(format!(
            "replicate: {} is not a cache task",
            spec.url
        )));
    }
    let task_id = spec.task_id.clone();
    let task = d.start(Request { spec, seed: false }).await?;
    download::wait(&task).await?;
    drop(task);
    verify(d, &task_id, &cache.digest).await?;
    write_meta(d, &task_id, &CacheMeta::from_wire(&cache, true))?;
    let this = d.clone();
    let id = task_id.clone();
    let stored = blocking(move || stored_tasks(&this, Some(&id))).await?;
    stored
        .into_iter()
        .next()
        .ok_or_else(|| Error::Failed(format!("replica {task_id} not in the store after its download")))
}

/// The finished tasks to announce (`only`: just that one), cache tasks with
/// their metadata and piece digests. Blocking.
pub fn stored_tasks(d: &Downloader, only: Option<&str>) -> Result<Vec<StoredTask>, Error> {
    let now = now_unix();
    let mut out = Vec::new();
    for r in d.tasks.store.list()? {
        if !r.done || only.is_some_and(|o| o != r.task_id) {
            continue;
        }
        let cache = if is_cache_url(&r.url) {
            let Some(m) = read_meta(d, &r.task_id) else {
                continue; // an import that never reached the scheduler
            };
            let mut digests = Vec::with_capacity(r.piece_digests.len() * 32);
            for h in &r.piece_digests {
                let mut d = [0u8; 32];
                if hex::decode_to_slice(h, &mut d).is_err() {
                    break;
                }
                digests.extend_from_slice(&d);
            }
            Some(CacheTask {
                id: m.id,
                digest: m.digest,
                replicas: m.replicas,
                created_unix: m.created_unix,
                expires_unix: if m.expires_unix != 0 && m.expires_unix <= now {
                    now
                } else {
                    m.expires_unix
                },
                owner_host_id: m.owner_host_id,
                piece_digests: digests,
                replica: m.replica,
            })
        } else {
            None
        };
        out.push(StoredTask {
            task_id: r.task_id,
            content_length: r.content_length,
            piece_length: r.piece_length,
            cache,
        });
    }
    Ok(out)
}

/// Drops a task from the store and its cache metadata (the scheduler said so).
pub fn delete_local(d: &Downloader, task_id: &str) -> Result<(), Error> {
    if !d.tasks.evict(task_id)? {
        return Err(Error::Failed(format!(
            "task {task_id} is in use; dropped at the next sweep"
        )));
    }
    let _ = std::fs::remove_file(meta_path(d, task_id));
    info!(task_id, "cache task dropped");
    Ok(())
}

/// Drops cache tasks past their expiry (the scheduler does too; this holds
/// when it cannot be reached). Blocking.
pub fn sweep(d: &Downloader) {
    let Ok(dir) = std::fs::read_dir(meta_dir(d)) else {
        return;
    };
    let now = now_unix();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(task_id) = name.strip_suffix(".json") else {
            continue;
        };
        if read_meta(d, task_id).is_some_and(|m| m.expired(now))
            && let Err(e) = delete_local(d, task_id)
        {
            warn!(task_id, error = %e, "expired cache task not dropped yet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_whole_file_are_hashed_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let layout = Layout::new(data.len() as u64, 128 * 1024);
        let (whole, pieces) = hash_pieces(&p, layout).unwrap();
        assert_eq!(whole, format!("sha256:{}", hex::encode(Sha256::digest(&data))));
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[2], <[u8; 32]>::from(Sha256::digest(&data[256 * 1024..])));
    }

    #[test]
    fn expiry() {
        let m = CacheMeta {
            id: "a".into(),
            digest: String::new(),
            replicas: 2,
            created_unix: 0,
            expires_unix: 100,
            owner_host_id: "h".into(),
            replica: true,
        };
        assert!(!m.expired(99) && m.expired(100));
        assert!(!CacheMeta { expires_unix: 0, ..m }.expired(i64::MAX));
    }
}
