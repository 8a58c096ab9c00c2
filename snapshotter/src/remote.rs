//! Remote layers: a Prepare that names an image layer (containerd's snapshotter labels, which
//! CRI adds) gets the layer from the local peer through the mesh, unpacked while its bytes
//! arrive, committed under its chain id, and answered with AlreadyExists so containerd neither
//! fetches nor unpacks it. The first such Prepare of an image starts every later layer named in
//! `cri.image-layers` at once (at most `concurrency` at a time).
//!
//! Blobs come from the peer's registry proxy (`GET /v2/<repo>/blobs/<digest>?ns=<registry>`),
//! which serves them from the mesh only after the origin accepted this node's credentials for
//! the repository. A layer is unpacked into `ROOT/staging/` and moved into place only once its
//! blob digest matched, so a bad layer leaves no snapshot, directory or mount. When the blob
//! cannot be had (the proxy is down, refuses, or the stream breaks) the Prepare falls back to a
//! plain one and containerd pulls as usual: logged with the reason and counted in `/metrics`.

use crate::model::{Info, Labels, Mount, Usage};
use crate::overlay::Overlay;
use crate::snapshotter::Snapshotter;
use crate::unpack::{Hashing, unpack};
use crate::{Error, Result};
use bytes::Bytes;
use damselfly_registry_proxy::reference::ImageRef;
use futures::future::{BoxFuture, FutureExt, Shared};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sha2::Digest as _;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc};

pub const REF_LABEL: &str = "containerd.io/snapshot.ref";
pub const LAYER_DIGEST_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";
pub const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
pub const IMAGE_LAYERS_LABEL: &str = "containerd.io/snapshot/cri.image-layers";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Serve labelled Prepares from the mesh; off: a plain overlayfs snapshotter.
    pub enabled: bool,
    /// The local peer's registry proxy.
    pub proxy: String,
    /// Layers fetched and unpacked at once. Every layer of a usual image at once: the mesh
    /// spreads each layer as its own swarm, and a layer left waiting is time lost (8 layers of
    /// 16 MiB to 8 hosts: 1.78 x S/U with 4 at once, 1.29 x with all of them).
    pub concurrency: usize,
}

/// See [`RemoteConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 16;

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            proxy: "http://127.0.0.1:65001".into(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl RemoteConfig {
    pub fn validate(&self) -> Result<(), damselfly_service::config::ConfigError> {
        use damselfly_service::config::ConfigError;
        let uri: http::Uri = self
            .proxy
            .parse()
            .map_err(|e| ConfigError::invalid("remote.proxy", format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ConfigError::invalid(
                "remote.proxy",
                "must be http://HOST:PORT (the local peer's proxy)",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(ConfigError::invalid("remote.concurrency", "must be 1 to 64"));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct RemoteMetrics {
    pub layers: Counter,
    pub bytes: Counter,
    pub fallbacks: Counter,
    pub failures: Counter,
    /// Prepare latency by `outcome`: `mesh` (a remote layer committed: AlreadyExists), `plain`
    /// (mounts returned: no labels, or a fallback), `error`.
    pub prepare: PrepareLatency,
}

type PrepareLatency = Family<Vec<(&'static str, &'static str)>, Histogram, fn() -> Histogram>;

impl Default for RemoteMetrics {
    fn default() -> Self {
        Self {
            layers: Counter::default(),
            bytes: Counter::default(),
            fallbacks: Counter::default(),
            failures: Counter::default(),
            prepare: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 18))),
        }
    }
}

impl RemoteMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("damselfly_snapshotter");
        r.register(
            "remote_layers",
            "Layers unpacked from the mesh",
            self.layers.clone(),
        );
        r.register(
            "remote_bytes",
            "Layer blob bytes received from the peer",
            self.bytes.clone(),
        );
        r.register(
            "fallbacks",
            "Labelled prepares that fell back to a plain prepare (containerd pulls)",
            self.fallbacks.clone(),
        );
        r.register(
            "layer_failures",
            "Layers refused (digest mismatch, bad tar)",
            self.failures.clone(),
        );
        r.register(
            "prepare_seconds",
            "Prepare latency by outcome (mesh: the layer came from the mesh; plain; error)",
            self.prepare.clone(),
        );
    }

    fn observe_prepare<T>(&self, result: &Result<T>, started: std::time::Instant) {
        let outcome = match result {
            Err(Error::AlreadyExists(_)) => "mesh",
            Ok(_) => "plain",
            Err(_) => "error",
        };
        self.prepare
            .get_or_create(&vec![("outcome", outcome)])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Why a fetch did not produce a layer.
#[derive(Debug, Clone)]
enum FetchError {
    /// Nothing of the snapshot was touched: containerd can pull the layer itself.
    Fallback(Arc<str>),
    /// The layer is bad: the pull must fail.
    Refused(Arc<str>),
}

/// An unpacked layer waiting for its Prepare.
struct Staged {
    dir: Mutex<Option<PathBuf>>,
    diff_id: String,
    implied_dirs: Vec<PathBuf>,
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Staged>, FetchError>>>;

/// What a labelled Prepare asks for.
struct LayerRequest {
    chain_id: String,
    digest: String,
    registry: String,
    repo: String,
    later: Vec<String>,
}

pub struct Remote {
    overlay: Arc<Overlay>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
    proxy: String,
    enabled: bool,
    permits: Arc<Semaphore>,
    fetches: Arc<Mutex<HashMap<String, Fetch>>>,
    metrics: RemoteMetrics,
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl LayerRequest {
    fn from_labels(labels: &Labels) -> Option<Self> {
        let chain_id = labels.get(REF_LABEL)?;
        let digest = labels.get(LAYER_DIGEST_LABEL)?;
        let image = ImageRef::parse(labels.get(IMAGE_REF_LABEL)?).ok()?;
        let (registry, repo) = (image.registry, image.repository);
        if !is_digest(chain_id) || !is_digest(digest) {
            return None;
        }
        let later = labels
            .get(IMAGE_LAYERS_LABEL)
            .map(|l| {
                l.split(',')
                    .map(str::trim)
                    .filter(|d| is_digest(d))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            chain_id: chain_id.clone(),
            digest: digest.clone(),
            registry,
            repo,
            later,
        })
    }
}

/// Feeds a blocking reader from the HTTP body task.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn chain_id(parent: &str, diff_id: &str) -> String {
    if parent.is_empty() {
        return diff_id.to_string();
    }
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(format!("{parent} {diff_id}")))
    )
}

impl Remote {
    pub fn new(overlay: Arc<Overlay>, config: &RemoteConfig, metrics: RemoteMetrics) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self {
            overlay,
            client,
            proxy: config.proxy.trim_end_matches('/').to_string(),
            enabled: config.enabled,
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            fetches: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Starts fetching `digest` unless a fetch of it is running or waiting to be taken.
    fn start(&self, registry: &str, repo: &str, digest: &str) -> Fetch {
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fetches.get(digest) {
            return f.clone();
        }
        let fetch = fetch_layer(
            self.client.clone(),
            format!(
                "{}/v2/{repo}/blobs/{digest}?ns={}",
                self.proxy,
                encode_host(registry)
            ),
            digest.to_string(),
            self.overlay.clone(),
            self.permits.clone(),
            self.metrics.clone(),
        )
        .boxed()
        .shared();
        fetches.insert(digest.to_string(), fetch.clone());
        // Runs whether or not anyone waits yet: later layers start with the first.
        tokio::spawn(fetch.clone().map(|_| ()));
        fetch
    }

    /// The committed snapshot containerd will look for: labelled with the chain id, on `parent`.
    async fn find_committed(&self, ns: &str, chain: &str, parent: &str) -> Result<Option<Info>> {
        let all = self.overlay.list(ns.to_string(), Vec::new()).await?;
        Ok(all.into_iter().find(|i| {
            i.kind == crate::model::Kind::Committed
                && i.parent == parent
                && i.labels.get(REF_LABEL).map(String::as_str) == Some(chain)
        }))
    }

    /// The chain id of committed snapshot `parent`: its `snapshot.ref` label, else the last part
    /// of its name (containerd names the layers it commits `<ns>/<n>/<chain id>`).
    async fn chain_of(&self, ns: &str, parent: &str) -> Result<String> {
        if parent.is_empty() {
            return Ok(String::new());
        }
        let info = self.overlay.stat(ns.to_string(), parent.to_string()).await?;
        Ok(match info.labels.get(REF_LABEL) {
            Some(chain) => chain.clone(),
            None => parent.rsplit('/').next().unwrap_or(parent).to_string(),
        })
    }

    async fn prepare_remote(
        &self,
        ns: String,
        key: String,
        parent: String,
        labels: Labels,
        req: LayerRequest,
    ) -> Result<Vec<Mount>> {
        let exists = || Error::AlreadyExists(format!("snapshot {} already exists", req.chain_id));
        if self.find_committed(&ns, &req.chain_id, &parent).await?.is_some() {
            return Err(exists());
        }
        let fetch = self.start(&req.registry, &req.repo, &req.digest);
        for later in req.later.iter().filter(|d| **d != req.digest) {
            let _started = self.start(&req.registry, &req.repo, later);
        }
        let outcome = fetch.await;
        self.fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.digest);
        let staged = match outcome {
            Ok(staged) => staged,
            Err(FetchError::Fallback(why)) => {
                self.metrics.fallbacks.inc();
                tracing::warn!(layer = req.digest, reason = %why, "layer not from the mesh: containerd pulls it");
                return self.overlay.prepare(ns, key, parent, labels).await;
            }
            Err(FetchError::Refused(why)) => {
                return Err(Error::FailedPrecondition(format!("layer {}: {why}", req.digest)));
            }
        };
        let Some(dir) = staged.dir.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            // Another Prepare took this unpacked copy: containerd pulls this one.
            self.metrics.fallbacks.inc();
            tracing::warn!(
                layer = req.digest,
                "layer already taken by another prepare: containerd pulls it"
            );
            return self.overlay.prepare(ns, key, parent, labels).await;
        };
        let parent_chain = match self.chain_of(&ns, &parent).await {
            Ok(c) => c,
            Err(e) => {
                let o = self.overlay.clone();
                let _ = tokio::task::spawn_blocking(move || o.discard_blocking(&dir)).await;
                return Err(e);
            }
        };
        let expected = chain_id(&parent_chain, &staged.diff_id);
        let overlay = self.overlay.clone();
        let chain = req.chain_id.clone();
        // Committed under the Prepare's key: unique, and namespaced by containerd. containerd
        // finds it by its `snapshot.ref` label and parent.
        let adopted = tokio::task::spawn_blocking(move || {
            if expected != chain {
                overlay.discard_blocking(&dir);
                return Err(Error::FailedPrecondition(format!(
                    "layer unpacks to chain id {expected}, containerd expects {chain}"
                )));
            }
            let r = overlay.adopt_blocking(&ns, &key, &parent, labels, &dir, &staged.implied_dirs);
            if r.is_err() {
                overlay.discard_blocking(&dir);
            }
            r
        })
        .await?;
        match adopted {
            Ok(()) => {
                self.metrics.layers.inc();
                tracing::info!(
                    layer = req.digest,
                    chain_id = req.chain_id,
                    "layer unpacked from the mesh"
                );
                Err(exists())
            }
            Err(e) => Err(Error::FailedPrecondition(format!("layer {}: {e}", req.digest))),
        }
    }
}

/// `host:port` for a query string.
fn encode_host(host: &str) -> String {
    host.replace(':', "%3A").replace('[', "%5B").replace(']', "%5D")
}

async fn fetch_layer(
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
    url: String,
    digest: String,
    overlay: Arc<Overlay>,
    permits: Arc<Semaphore>,
    metrics: RemoteMetrics,
) -> Result<Arc<Staged>, FetchError> {
    let fallback = |why: String| FetchError::Fallback(why.into());
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|e| fallback(e.to_string()))?;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| fallback(format!("blob URL {url}: {e}")))?;
    let resp = client
        .get(uri)
        .await
        .map_err(|e| fallback(format!("peer proxy unreachable: {e}")))?;
    if resp.status() != http::StatusCode::OK {
        return Err(fallback(format!("peer proxy answered {}", resp.status())));
    }
    let o = overlay.clone();
    let dir = tokio::task::spawn_blocking(move || o.stage_blocking())
        .await
        .map_err(|e| fallback(e.to_string()))?
        .map_err(|e| fallback(e.to_string()))?;
    let (tx, rx) = mpsc::channel(16);
    let fs = dir.join("fs");
    let unpacking = tokio::task::spawn_blocking(move || {
        let mut blob = Hashing::new(ChannelReader {
            rx,
            current: Bytes::new(),
        });
        let stats = unpack(&mut blob, None, &fs);
        (stats, blob.digest())
    });
    let mut body = resp.into_body();
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    metrics.bytes.inc_by(data.len() as u64);
                    if tx.send(Ok(data)).await.is_err() {
                        break; // the unpacker stopped: its error says why
                    }
                }
            }
            Err(e) => {
                broken = Some(format!("blob stream broke: {e}"));
                let _ = tx.send(Err(std::io::Error::other("blob stream broke"))).await;
                break;
            }
        }
    }
    drop(tx);
    let (stats, seen) = unpacking.await.map_err(|e| fallback(e.to_string()))?;
    let refused = match (&broken, stats) {
        (Some(why), _) => Err(fallback(why.clone())),
        (None, Err(e)) => Err(FetchError::Refused(format!("cannot unpack: {e}").into())),
        (None, Ok(_)) if seen != digest => Err(FetchError::Refused(
            format!("blob digest is {seen}, not {digest}").into(),
        )),
        (None, Ok(stats)) => Ok(stats),
    };
    match refused {
        Ok(stats) => Ok(Arc::new(Staged {
            dir: Mutex::new(Some(dir)),
            diff_id: stats.diff_id,
            implied_dirs: stats.implied_dirs,
        })),
        Err(e) => {
            if matches!(e, FetchError::Refused(_)) {
                metrics.failures.inc();
            }
            let _ = tokio::task::spawn_blocking(move || overlay.discard_blocking(&dir)).await;
            Err(e)
        }
    }
}

impl Snapshotter for Remote {
    async fn prepare(&self, ns: String, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        let started = std::time::Instant::now();
        let result = match LayerRequest::from_labels(&labels).filter(|_| self.enabled) {
            Some(req) => self.prepare_remote(ns, key, parent, labels, req).await,
            None => self.overlay.prepare(ns, key, parent, labels).await,
        };
        self.metrics.observe_prepare(&result, started);
        result
    }

    async fn view(&self, ns: String, key: String, parent: String, labels: Labels) -> Result<Vec<Mount>> {
        self.overlay.view(ns, key, parent, labels).await
    }

    async fn mounts(&self, ns: String, key: String) -> Result<Vec<Mount>> {
        self.overlay.mounts(ns, key).await
    }

    async fn commit(
        &self,
        ns: String,
        name: String,
        key: String,
        parent: String,
        labels: Labels,
    ) -> Result<()> {
        self.overlay.commit(ns, name, key, parent, labels).await
    }

    async fn remove(&self, ns: String, key: String) -> Result<()> {
        self.overlay.remove(ns, key).await
    }

    async fn stat(&self, ns: String, key: String) -> Result<Info> {
        self.overlay.stat(ns, key).await
    }

    async fn update(&self, ns: String, name: String, labels: Labels, paths: Vec<String>) -> Result<Info> {
        self.overlay.update(ns, name, labels, paths).await
    }

    async fn list(&self, ns: String, filters: Vec<String>) -> Result<Vec<Info>> {
        self.overlay.list(ns, filters).await
    }

    async fn usage(&self, ns: String, key: String) -> Result<Usage> {
        self.overlay.usage(ns, key).await
    }

    async fn cleanup(&self, ns: String) -> Result<()> {
        self.overlay.cleanup(ns).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = "sha256:aaaa";
        assert_eq!(chain_id("", d), d);
        let expected = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(b"sha256:p sha256:aaaa"))
        );
        assert_eq!(chain_id("sha256:p", d), expected);
    }
}
