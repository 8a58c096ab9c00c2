//! The registry proxy on a peer: blobs come from the mesh.
//!
//! [`MeshSource`] is the proxy's [`BlobSource`]: a blob request starts (or
//! joins) the mesh task named by the blob's digest, and the requested range
//! streams to the client in order, piece by piece, as verified pieces land.
//! The client's download overlaps the swarm's; memory stays at one chunk
//! (at most a piece, at most [`CHUNK`]) per client.
//!
//! Errors before the first byte (the task failed, no layout in time) are
//! [`ProxyError::Source`], so the proxy's fallback fetches from the origin
//! instead. A failure after the first byte ends the stream with an error:
//! the client sees a broken download and retries, never wrong bytes.
//!
//! [`serve_proxy`] mounts the proxy in the peer daemon (`[proxy]` in the
//! peer's config).

use crate::config::ProxyListenConfig;
use crate::download::{Downloader, Request};
use crate::error::Error;
use crate::task::Task;
use bytes::Bytes;
use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::TaskSpec;
use damselfly_registry_proxy::{BlobBody, BlobRequest, BlobSource, Proxy, ProxyError, router, serve};
use damselfly_service::shutdown::Shutdown;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::info;

/// The largest chunk handed to a client at once.
pub const CHUNK: u64 = 1 << 20;
/// How long a blob request waits for the task's layout (the seed's first
/// answer from the origin) before the proxy falls back to the origin.
const LAYOUT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open blob streams may keep the proxy alive after shutdown.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Serves blobs from the mesh: one task per blob digest.
pub struct MeshSource {
    downloader: Arc<Downloader>,
}

impl MeshSource {
    pub fn new(downloader: Arc<Downloader>) -> Self {
        Self { downloader }
    }

    async fn fetch_inner(&self, req: BlobRequest) -> Result<BlobBody, ProxyError> {
        if req.content_length == Some(0) {
            return Ok(BlobBody {
                total_length: 0,
                stream: futures::stream::empty().boxed(),
            });
        }
        let task = self
            .downloader
            .start(Request {
                spec: spec_of(&req),
                seed: false,
            })
            .await
            .map_err(|e| ProxyError::Source(e.to_string()))?;
        let layout = tokio::time::timeout(LAYOUT_TIMEOUT, wait_layout(&task))
            .await
            .map_err(|_| ProxyError::Source(format!("no layout for {} in {LAYOUT_TIMEOUT:?}", req.digest)))?
            .map_err(|e| ProxyError::Source(e.to_string()))?;
        let total = layout.content_length;
        if let Some(expected) = req.content_length
            && expected != total
        {
            return Err(ProxyError::Source(format!(
                "the mesh has {total} bytes for {}, the origin says {expected}",
                req.digest
            )));
        }
        let (start, end) = match req.range {
            Some(r) if r.end < total => (r.start, r.end + 1),
            Some(_) => return Err(ProxyError::RangeNotSatisfiable { total }),
            None => (0, total),
        };
        Ok(BlobBody {
            total_length: total,
            stream: stream_range(task, layout, start, end),
        })
    }
}

impl BlobSource for MeshSource {
    fn fetch(&self, req: BlobRequest) -> BoxFuture<'_, Result<BlobBody, ProxyError>> {
        self.fetch_inner(req).boxed()
    }
}

/// The mesh task of a blob: named by its digest, fetched from its origin URL
/// with the Authorization the origin accepted (a seed needs it for a private
/// blob; the scheduler relays it, nobody logs it).
pub fn spec_of(req: &BlobRequest) -> TaskSpec {
    TaskSpec {
        task_id: req.digest.hex(),
        url: req.url.clone(),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect(),
        digest: req.digest.to_string(),
        // From the origin's HEAD: the seed skips its own length probe.
        content_length: req.content_length.unwrap_or(0),
        ..Default::default()
    }
}

/// Waits until the task knows its layout; an error if it fails first.
pub async fn wait_layout(task: &Task) -> Result<Layout, Error> {
    let mut changes = task.subscribe();
    loop {
        changes.borrow_and_update();
        let p = task.progress();
        if let Some(l) = p.layout {
            return Ok(l);
        }
        if let Some(f) = p.failed {
            return Err(Error::Ended(f));
        }
        if changes.changed().await.is_err() {
            return Err(Error::Failed("task dropped".into()));
        }
    }
}

/// Bytes `start..end` of the task, in order, each chunk as soon as the piece
/// holding it is verified. The chunk that ends the blob waits until the
/// whole blob has matched its digest, so a client never holds a complete
/// but wrong blob.
pub fn stream_range(
    task: Arc<Task>,
    layout: Layout,
    start: u64,
    end: u64,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    struct State {
        task: Arc<Task>,
        changes: tokio::sync::watch::Receiver<u64>,
        layout: Layout,
        pos: u64,
        end: u64,
    }
    let changes = task.subscribe();
    let state = State {
        task,
        changes,
        layout,
        pos: start,
        end: end.min(layout.content_length),
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.pos >= s.end {
            return None;
        }
        let index = s.layout.index_of(s.pos);
        let piece_end = s.layout.offset(index) + s.layout.len_of(index) as u64;
        let len = (piece_end.min(s.end) - s.pos).min(CHUNK);
        let last = s.pos + len == s.layout.content_length;
        loop {
            s.changes.borrow_and_update();
            let p = s.task.progress();
            if let Some(f) = p.failed {
                s.pos = s.end;
                return Some((
                    Err(std::io::Error::other(format!("mesh download failed: {f}"))),
                    s,
                ));
            }
            if s.task.has(index) && (!last || p.done) {
                break;
            }
            if s.changes.changed().await.is_err() {
                s.pos = s.end;
                return Some((Err(std::io::Error::other("mesh task dropped")), s));
            }
        }
        let (task, pos) = (s.task.clone(), s.pos);
        let read = tokio::task::spawn_blocking(move || task.read_at(pos, len as usize)).await;
        match read {
            Ok(Ok(bytes)) => {
                s.pos += len;
                Some((Ok(Bytes::from(bytes)), s))
            }
            Ok(Err(e)) => {
                s.pos = s.end;
                Some((Err(std::io::Error::other(e.to_string())), s))
            }
            Err(e) => {
                s.pos = s.end;
                Some((Err(std::io::Error::other(e.to_string())), s))
            }
        }
    })
    .boxed()
}

/// Starts the registry proxy of this peer on `config.listen`, blobs from
/// the mesh (from the origin when the mesh fails before the first byte),
/// its metrics in `registry`. It stops when `shutdown` fires; streams still
/// open get [`STOP_GRACE`].
pub async fn serve_proxy(
    config: &ProxyListenConfig,
    downloader: Arc<Downloader>,
    registry: &mut Registry,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, Error> {
    let source = Arc::new(MeshSource::new(downloader));
    let proxy = Proxy::with_fallback(config.registry.clone(), source)
        .map_err(|e| Error::Failed(format!("registry proxy: {e}")))?;
    proxy.metrics().register(registry);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("bind proxy.listen {}", config.listen), e))?;
    info!(addr = %config.listen, "registry proxy serving");
    let app = router(Arc::new(proxy));
    Ok(tokio::spawn(async move {
        let server = serve(listener, app, shutdown.clone());
        tokio::pin!(server);
        let forced = async {
            shutdown.wait().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            r = &mut server => if let Err(e) = r { tracing::warn!(error = %e, "registry proxy stopped") },
            _ = forced => {}
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;
    use crate::metrics::Metrics;
    use crate::store::Store;
    use crate::task::{Tasks, sha256};
    use damselfly_proto::task_id::Sha256Digest;
    use damselfly_registry_proxy::ByteRange;

    const PIECE: u32 = 256 * 1024;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn empty_task(dir: &std::path::Path, data: &[u8]) -> Arc<Task> {
        let t = Task::new("t".into(), "http://o/b".into(), None, dir.join("content"));
        let layout = Layout::new(data.len() as u64, PIECE);
        t.set_layout(layout).unwrap();
        t.set_digests((0..layout.piece_count()).map(|i| (i, sha256(piece(data, layout, i)))));
        t
    }

    fn piece(data: &[u8], l: Layout, i: u32) -> &[u8] {
        &data[l.offset(i) as usize..(l.offset(i) + l.len_of(i) as u64) as usize]
    }

    async fn collect(mut s: BoxStream<'static, Result<Bytes, std::io::Error>>) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            match r {
                Ok(b) => {
                    assert!(b.len() as u64 <= CHUNK && b.len() as u32 <= PIECE);
                    out.extend_from_slice(&b)
                }
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn streams_pieces_in_order_as_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(PIECE as usize * 3 + 1000);
        let t = empty_task(dir.path(), &data);
        let layout = t.layout().unwrap();
        let mut s = stream_range(t.clone(), layout, 0, data.len() as u64);

        // Pieces land out of order: nothing until piece 0 is there.
        t.write_piece(2, piece(&data, layout, 2), false).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
        assert!(early.is_err(), "no bytes before piece 0");
        t.write_piece(0, piece(&data, layout, 0), true).unwrap();
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(&first[..], piece(&data, layout, 0));
        t.write_piece(1, piece(&data, layout, 1), false).unwrap();
        assert_eq!(&s.next().await.unwrap().unwrap()[..], piece(&data, layout, 1));
        assert_eq!(&s.next().await.unwrap().unwrap()[..], piece(&data, layout, 2));

        // The last piece is held back until the whole blob is verified.
        t.write_piece(3, piece(&data, layout, 3), false).unwrap();
        let held = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
        assert!(held.is_err(), "the blob's end waits for its digest");
        t.mark_done();
        assert_eq!(&s.next().await.unwrap().unwrap()[..], piece(&data, layout, 3));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn ranges_cut_across_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(PIECE as usize * 2 + 10);
        let t = empty_task(dir.path(), &data);
        let layout = t.layout().unwrap();
        for i in 0..layout.piece_count() {
            t.write_piece(i, piece(&data, layout, i), true).unwrap();
        }
        // Not done yet: a range that stops short of the end streams anyway.
        let (start, end) = (PIECE as u64 - 5, PIECE as u64 * 2 + 3);
        let (got, err) = collect(stream_range(t.clone(), layout, start, end)).await;
        assert_eq!((got.as_slice(), err), (&data[start as usize..end as usize], None));
        t.mark_done();
        let (got, err) = collect(stream_range(t, layout, 0, data.len() as u64)).await;
        assert_eq!((got, err), (data, None));
    }

    #[tokio::test]
    async fn a_failed_task_ends_the_stream_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(PIECE as usize * 2);
        let t = empty_task(dir.path(), &data);
        let layout = t.layout().unwrap();
        t.write_piece(0, piece(&data, layout, 0), true).unwrap();
        let s = stream_range(t.clone(), layout, 0, data.len() as u64);
        let failer = t.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            failer.mark_failed(crate::error::Failure::internal("origin gone"));
        });
        let (got, err) = collect(s).await;
        assert_eq!(got, piece(&data, layout, 0));
        assert!(err.unwrap().contains("origin gone"));
    }

    #[tokio::test]
    async fn wait_layout_sees_layout_or_failure() {
        let dir = tempfile::tempdir().unwrap();
        let t = Task::new("t".into(), "http://o/b".into(), None, dir.path().join("c"));
        let setter = t.clone();
        tokio::spawn(async move { setter.set_layout(Layout::new(10, PIECE)).unwrap() });
        assert_eq!(wait_layout(&t).await.unwrap().content_length, 10);
        let f = Task::new("f".into(), "http://o/b".into(), None, dir.path().join("d"));
        f.mark_failed(crate::error::Failure::internal("nope"));
        assert!(wait_layout(&f).await.unwrap_err().to_string().contains("nope"));
    }

    /// Through the `BlobSource` trait, with a finished task in the store:
    /// the mesh serves it without any scheduler or origin.
    #[tokio::test]
    async fn mesh_source_serves_a_stored_blob() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(PIECE as usize + 77);
        let digest = Sha256Digest(sha256(&data));
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let tasks = Arc::new(Tasks::new(store.clone()));
        let id = digest.hex();
        let (t, _) = tasks
            .get_or_insert(&id, || {
                Ok(Task::new(
                    id.clone(),
                    "http://o/b".into(),
                    Some(digest.to_string()),
                    store.content_path(&id)?,
                ))
            })
            .unwrap();
        let layout = Layout::new(data.len() as u64, PIECE);
        t.set_layout(layout).unwrap();
        for i in 0..layout.piece_count() {
            t.set_digests([(i, sha256(piece(&data, layout, i)))]);
            t.write_piece(i, piece(&data, layout, i), true).unwrap();
        }
        t.mark_done();
        let config = PeerConfig {
            data_dir: dir.path().to_path_buf(),
            ..PeerConfig::default()
        };
        let http = crate::source::client(&config.source).unwrap();
        let d = Downloader::new(tasks, config, "h".into(), Metrics::default(), http, Vec::new());
        let source = MeshSource::new(d);
        let req = |range: Option<ByteRange>| BlobRequest {
            digest: digest.clone(),
            url: "http://127.0.0.1:9/v2/r/blobs/x".into(),
            headers: vec![(
                "authorization".into(),
                damselfly_service::secret::Secret::new("Bearer t"),
            )],
            content_length: Some(data.len() as u64),
            range,
        };
        let body = source.fetch(req(None)).await.unwrap();
        assert_eq!(body.total_length, data.len() as u64);
        assert_eq!(collect(body.stream).await, (data.clone(), None));
        let r = ByteRange {
            start: 3,
            end: 262_000,
        };
        let body = source.fetch(req(Some(r))).await.unwrap();
        assert_eq!(collect(body.stream).await.0, &data[3..=262_000]);
        let spec = spec_of(&req(None));
        assert_eq!(spec.task_id, id);
        assert_eq!(spec.digest, digest.to_string());
        assert_eq!(spec.headers["authorization"], "Bearer t");
        assert_eq!(spec.content_length, data.len() as u64);
        // A length that disagrees with the origin's is the mesh's failure: fall back.
        let mut wrong = req(None);
        wrong.content_length = Some(5);
        assert!(matches!(source.fetch(wrong).await, Err(ProxyError::Source(_))));
    }
}
