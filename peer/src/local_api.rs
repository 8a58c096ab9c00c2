//! The local API on a unix socket: `damselfly get` and friends.
//!
//! Downloads run in the daemon; the client gets progress. Verified pieces
//! are copied in order to a temporary file next to the output while the
//! download runs ([`OutputFile`]), and the file is renamed into place when
//! the task is done, so an output path never holds a partial file and the
//! copy costs nothing at the end. A task already in the store is copied
//! in-kernel (`copy_file_range`).

use crate::download::{Downloader, Request};
use crate::error::Error;
use damselfly_proto::daemon::daemon_server::Daemon;
use damselfly_proto::daemon::{
    CacheDeleteResponse, CacheExportRequest, CacheIdRequest, CacheImportRequest, CacheInfo, CacheListRequest,
    CacheListResponse, DeleteTaskRequest, DeleteTaskResponse, DownloadProgress, DownloadRequest,
    ListTasksRequest, ListTasksResponse, StoreDeleteRequest, StoreDeleteResponse, StoreObject,
    StorePutRequest, StoreStatRequest, TaskEntry,
};
use damselfly_proto::scheduler::TaskSpec;
use damselfly_proto::task_id::{Sha256Digest, task_id};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status};

const PROGRESS_EVERY: Duration = Duration::from_millis(200);

pub struct LocalApi {
    pub downloader: Arc<Downloader>,
}

/// Checks a download request and turns it into a task spec.
pub fn spec_of(req: &DownloadRequest) -> Result<TaskSpec, Error> {
    let url =
        url::Url::parse(&req.url).map_err(|e| Error::BadRequest(format!("bad URL {:?}: {e}", req.url)))?;
    if !crate::origin::supported_scheme(url.scheme()) {
        return Err(Error::BadRequest(format!(
            "unsupported URL scheme {:?} (http, https, s3 and oss are)",
            url.scheme()
        )));
    }
    let digest = if req.digest.is_empty() {
        None
    } else {
        Some(Sha256Digest::parse(&req.digest).map_err(Error::BadRequest)?)
    };
    if !req.output_path.is_empty() && !Path::new(&req.output_path).is_absolute() {
        return Err(Error::BadRequest(format!(
            "output path {:?} must be absolute",
            req.output_path
        )));
    }
    let id = task_id(&req.url, digest.as_ref(), &req.tag, &req.application).map_err(Error::BadRequest)?;
    Ok(TaskSpec {
        task_id: id,
        url: req.url.clone(),
        headers: req.headers.clone(),
        digest: digest.map(|d| d.to_string()).unwrap_or_default(),
        piece_length: 0,
        tag: req.tag.clone(),
        application: req.application.clone(),
        content_length: 0, // the seed learns it from the origin
        sealed_headers: Vec::new(),
    })
}

/// Copies the finished content to `output` through a temporary file and a rename.
pub fn copy_out(content: &Path, output: &Path) -> Result<(), Error> {
    let tmp = temp_name(output)?;
    std::fs::copy(content, &tmp).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("rename to {}", output.display()), e)
    })
}

/// The output of one download, written in order as pieces land.
pub struct OutputFile {
    tmp: PathBuf,
    output: PathBuf,
    file: std::fs::File,
    /// The task's content file, read in order (opened with the first piece).
    content: Option<std::fs::File>,
    next: u32,
}

fn temp_name(output: &Path) -> Result<PathBuf, Error> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let name = output
        .file_name()
        .ok_or_else(|| Error::BadRequest(format!("output path {} has no file name", output.display())))?;
    Ok(dir.join(format!(
        ".{}.damselfly-{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    )))
}

impl OutputFile {
    pub async fn create(output: &Path) -> Result<Self, Error> {
        let tmp = temp_name(output)?;
        let path = tmp.clone();
        let file = crate::store::blocking(move || {
            std::fs::File::create(&path).map_err(|e| Error::io(format!("create {}", path.display()), e))
        })
        .await?;
        Ok(Self {
            tmp,
            output: output.to_path_buf(),
            file,
            content: None,
            next: 0,
        })
    }

    /// Appends every piece that has landed since the last call, in order,
    /// with an in-kernel copy from the content file (`copy_file_range`).
    pub async fn catch_up(&mut self, task: &crate::task::Task) -> Result<(), Error> {
        let mut end = self.next;
        while task.has(end) {
            end += 1;
        }
        if end == self.next {
            return Ok(());
        }
        let layout = task
            .layout()
            .ok_or_else(|| Error::Failed("task layout not known yet".into()))?;
        let len = layout.offset(end - 1) + layout.len_of(end - 1) as u64 - layout.offset(self.next);
        if self.content.is_none() {
            let path = task.content_path();
            let f =
                std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
            self.content = Some(f);
        }
        // Clones share the file offsets, which advance with every copy: both
        // files are read and written strictly in order.
        let clone = |f: &std::fs::File| f.try_clone().map_err(|e| Error::io("duplicate a file handle", e));
        let (src, mut dst) = (
            clone(self.content.as_ref().expect("opened above"))?,
            clone(&self.file)?,
        );
        let tmp = self.tmp.clone();
        let copied = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            std::io::copy(&mut src.take(len), &mut dst)
        })
        .await
        .map_err(|e| Error::Failed(format!("output copy: {e}")))?
        .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        if copied != len {
            return Err(Error::Failed(format!(
                "output copy stopped after {copied} of {len} bytes"
            )));
        }
        self.next = end;
        Ok(())
    }

    /// Writes what is left and renames the file into place.
    pub async fn finish(mut self, task: &crate::task::Task) -> Result<(), Error> {
        self.catch_up(task).await?;
        let expected = task.layout().map(|l| l.piece_count()).unwrap_or(0);
        if self.next != expected {
            return Err(Error::Failed(format!(
                "output has {} of {expected} pieces",
                self.next
            )));
        }
        tokio::fs::rename(&self.tmp, &self.output)
            .await
            .map_err(|e| Error::io(format!("rename to {}", self.output.display()), e))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn snapshot(task: &crate::task::Task, done: bool) -> DownloadProgress {
    let p = task.progress();
    DownloadProgress {
        task_id: task.id.clone(),
        content_length: p.layout.map(|l| l.content_length).unwrap_or(0),
        completed_length: p.completed_bytes,
        done,
        bytes_from_peers: p.bytes_from_peers,
        bytes_from_source: p.bytes_from_source,
    }
}

/// Streams progress until the task ends, writing the output as pieces land.
async fn follow(
    task: &crate::task::Task,
    output: &str,
    tx: &mpsc::Sender<Result<DownloadProgress, Status>>,
) -> Result<(), Status> {
    if task.progress().done {
        if !output.is_empty() {
            let (content, out) = (task.content_path().to_path_buf(), PathBuf::from(output));
            tokio::task::spawn_blocking(move || copy_out(&content, &out))
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
        }
        return Ok(());
    }
    let mut out = match output {
        "" => None,
        path => Some(OutputFile::create(Path::new(path)).await?),
    };
    let mut changes = task.subscribe();
    let mut last_sent: Option<std::time::Instant> = None;
    loop {
        let p = task.progress();
        if let Some(f) = p.failed {
            return Err(Status::from(f));
        }
        if p.done {
            if let Some(out) = out {
                out.finish(task).await?;
            }
            return Ok(());
        }
        if let Some(out) = out.as_mut() {
            out.catch_up(task).await?;
        }
        if last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            if tx.send(Ok(snapshot(task, false))).await.is_err() {
                return Err(Status::cancelled("client went away"));
            }
            last_sent = Some(std::time::Instant::now());
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Err(Status::aborted("task dropped")) },
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<DownloadProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Daemon for LocalApi {
    type DownloadStream = ProgressStream;

    async fn download(
        &self,
        request: GrpcRequest<DownloadRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let req = request.into_inner();
        let mut spec = spec_of(&req)?;
        if req.force_source {
            spec.piece_length = 0;
        }
        let output = req.output_path.clone();
        let task = self.downloader.start(Request { spec, seed: false }).await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let result = follow(&task, &output, &tx).await;
            let _ = tx.send(result.map(|()| snapshot(&task, true))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_tasks(
        &self,
        _: GrpcRequest<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let store = self.downloader.tasks.store.clone();
        let records = crate::store::blocking(move || store.list()).await?;
        let tasks = records
            .into_iter()
            .map(|r| {
                let completed = self
                    .downloader
                    .tasks
                    .get(&r.task_id)
                    .map(|t| t.progress().completed_bytes)
                    .unwrap_or(if r.done { r.content_length } else { 0 });
                TaskEntry {
                    task_id: r.task_id,
                    url: r.url,
                    content_length: r.content_length,
                    completed_length: completed,
                    done: r.done,
                    last_access_unix: r.last_access_unix,
                }
            })
            .collect();
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn delete_task(
        &self,
        request: GrpcRequest<DeleteTaskRequest>,
    ) -> Result<Response<DeleteTaskResponse>, Status> {
        let id = request.into_inner().task_id;
        let (tasks, task_id) = (self.downloader.tasks.clone(), id.clone());
        if !crate::store::blocking(move || tasks.evict(&task_id)).await? {
            return Err(Status::failed_precondition(format!("task {id} is in use")));
        }
        Ok(Response::new(DeleteTaskResponse {}))
    }

    async fn store_put(
        &self,
        request: GrpcRequest<StorePutRequest>,
    ) -> Result<Response<StoreObject>, Status> {
        let req = request.into_inner();
        let object = crate::objects::put(&self.downloader, Path::new(&req.path), &req.url).await?;
        Ok(Response::new(object))
    }

    async fn cache_import(
        &self,
        request: GrpcRequest<CacheImportRequest>,
    ) -> Result<Response<CacheInfo>, Status> {
        let req = request.into_inner();
        let import = crate::cache::Import {
            path: PathBuf::from(&req.path),
            id: (!req.id.is_empty()).then_some(req.id),
            replicas: if req.replicas == 0 {
                crate::cache::DEFAULT_REPLICAS
            } else {
                req.replicas
            },
            ttl: (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds)),
        };
        let entry = crate::cache::import(&self.downloader, import).await?;
        Ok(Response::new(crate::cache::info(entry)))
    }

    type CacheExportStream = ProgressStream;

    async fn cache_export(
        &self,
        request: GrpcRequest<CacheExportRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let req = request.into_inner();
        if !Path::new(&req.output_path).is_absolute() {
            return Err(
                Error::BadRequest(format!("output path {:?} must be absolute", req.output_path)).into(),
            );
        }
        let d = self.downloader.clone();
        // Fails at once when nobody holds it.
        let entry = crate::cache::held(&d, &req.id).await?;
        let task = crate::cache::start(&d, &entry).await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let result = async {
                follow(&task, "", &tx).await?;
                crate::cache::verify(&d, &entry.task_id, &entry.digest).await?;
                crate::cache::keep(&d, &entry)?;
                let content = task.content_path().to_path_buf();
                crate::cache::link_out(content, PathBuf::from(&req.output_path)).await?;
                Ok::<_, Status>(())
            }
            .await;
            let _ = tx.send(result.map(|()| snapshot(&task, true))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cache_stat(&self, request: GrpcRequest<CacheIdRequest>) -> Result<Response<CacheInfo>, Status> {
        let id = request.into_inner().id;
        let e = crate::cache::stat(&self.downloader, &id).await?;
        Ok(Response::new(crate::cache::info(e)))
    }

    async fn cache_delete(
        &self,
        request: GrpcRequest<CacheIdRequest>,
    ) -> Result<Response<CacheDeleteResponse>, Status> {
        let id = request.into_inner().id;
        crate::cache::delete(&self.downloader, &id).await?;
        Ok(Response::new(CacheDeleteResponse {}))
    }

    async fn cache_list(
        &self,
        _: GrpcRequest<CacheListRequest>,
    ) -> Result<Response<CacheListResponse>, Status> {
        let entries = crate::cache::list(&self.downloader).await?;
        Ok(Response::new(CacheListResponse {
            entries: entries.into_iter().map(crate::cache::info).collect(),
        }))
    }

    async fn store_stat(
        &self,
        request: GrpcRequest<StoreStatRequest>,
    ) -> Result<Response<StoreObject>, Status> {
        let url = request.into_inner().url;
        Ok(Response::new(crate::objects::stat(&self.downloader, &url).await?))
    }

    async fn store_delete(
        &self,
        request: GrpcRequest<StoreDeleteRequest>,
    ) -> Result<Response<StoreDeleteResponse>, Status> {
        let url = request.into_inner().url;
        crate::objects::delete(&self.downloader, &url).await?;
        Ok(Response::new(StoreDeleteResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str, out: &str, digest: &str) -> DownloadRequest {
        DownloadRequest {
            url: url.into(),
            output_path: out.into(),
            digest: digest.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(
            spec_of(&req("ftp://x/y", "/tmp/o", ""))
                .unwrap_err()
                .to_string()
                .contains("scheme")
        );
        assert!(
            spec_of(&req("nope", "/tmp/o", ""))
                .unwrap_err()
                .to_string()
                .contains("bad URL")
        );
        assert!(
            spec_of(&req("http://x/y", "rel/o", ""))
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        assert!(
            spec_of(&req("http://x/y", "/o", "sha256:zz"))
                .unwrap_err()
                .to_string()
                .contains("digest")
        );
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            spec_of(&req("http://x/y", "/o", &d)).unwrap().task_id,
            "0".repeat(64)
        );
    }

    #[tokio::test]
    async fn output_follows_pieces_in_order() {
        use crate::task::{Task, sha256};
        let dir = tempfile::tempdir().unwrap();
        let t = Task::new("t".into(), "http://o/f".into(), None, dir.path().join("content"));
        t.set_layout(damselfly_proto::piece::Layout::new(10, 4)).unwrap();
        t.set_digests([(0, sha256(b"abcd")), (1, sha256(b"efgh")), (2, sha256(b"ij"))]);
        let out = dir.path().join("out");
        let mut f = OutputFile::create(&out).await.unwrap();
        t.write_piece(1, b"efgh", false).unwrap();
        f.catch_up(&t).await.unwrap();
        assert_eq!(f.next, 0, "piece 0 is missing: nothing can be appended yet");
        t.write_piece(0, b"abcd", false).unwrap();
        f.catch_up(&t).await.unwrap();
        assert_eq!(f.next, 2);
        assert!(!out.exists(), "no partial output under the final name");
        t.write_piece(2, b"ij", false).unwrap();
        f.finish(&t).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"abcdefghij");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "temporary file renamed"
        );
    }

    #[test]
    fn copy_out_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("c");
        std::fs::write(&src, b"content").unwrap();
        let out = dir.path().join("out");
        std::fs::write(&out, b"old").unwrap();
        copy_out(&src, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"content");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
        assert!(copy_out(&src, &dir.path().join("missing/out")).is_err());
    }
}
