//! The local API on a unix socket: `damselfly get` and friends.
//!
//! Downloads run in the daemon; the client gets progress. The finished file
//! is copied (in-kernel, `copy_file_range`) to a temporary name next to the
//! output and renamed, so an output path never holds a partial file.

use crate::download::{self, Downloader, Request};
use crate::error::Error;
use damselfly_proto::daemon::daemon_server::Daemon;
use damselfly_proto::daemon::{
    DeleteTaskRequest, DeleteTaskResponse, DownloadProgress, DownloadRequest, ListTasksRequest,
    ListTasksResponse, TaskEntry,
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
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::BadRequest(format!(
            "unsupported URL scheme {:?} (http and https are)",
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
    })
}

/// Copies the finished content to `output` through a temporary file and a rename.
pub fn copy_out(content: &Path, output: &Path) -> Result<(), Error> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"));
    let name = output
        .file_name()
        .ok_or_else(|| Error::BadRequest(format!("output path {} has no file name", output.display())))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.damselfly-{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    std::fs::copy(content, &tmp).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("rename to {}", output.display()), e)
    })
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
        let task = self.downloader.start(Request { spec, seed: false })?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut changes = task.subscribe();
            let snapshot = |done: bool| {
                let p = task.progress();
                DownloadProgress {
                    task_id: task.id.clone(),
                    content_length: p.layout.map(|l| l.content_length).unwrap_or(0),
                    completed_length: p.completed_bytes,
                    done,
                    bytes_from_peers: p.bytes_from_peers,
                    bytes_from_source: p.bytes_from_source,
                }
            };
            let mut last_sent: Option<std::time::Instant> = None;
            let result = loop {
                let p = task.progress();
                if let Some(f) = p.failed {
                    break Err(Status::from(Error::Failed(f)));
                }
                if p.done {
                    break Ok(());
                }
                if last_sent.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                    if tx.send(Ok(snapshot(false))).await.is_err() {
                        return;
                    }
                    last_sent = Some(std::time::Instant::now());
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break Err(Status::aborted("task dropped")) },
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                }
            };
            let result = match result {
                Ok(()) if !output.is_empty() => {
                    let (content, out) = (task.content_path().to_path_buf(), PathBuf::from(&output));
                    match tokio::task::spawn_blocking(move || copy_out(&content, &out)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(Status::from(e)),
                        Err(e) => Err(Status::internal(e.to_string())),
                    }
                }
                other => other,
            };
            let _ = tx.send(result.map(|()| snapshot(true))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_tasks(
        &self,
        _: GrpcRequest<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let records = self.downloader.tasks.store.list()?;
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
        if !self.downloader.tasks.evict(&id)? {
            return Err(Status::failed_precondition(format!("task {id} is in use")));
        }
        Ok(Response::new(DeleteTaskResponse {}))
    }
}

/// Waits for a task started through [`Downloader::start`]; re-exported for embedders.
pub use download::wait;

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
