//! Remote layers through the gRPC socket, with a small HTTP server standing in for the peer's
//! registry proxy: a labelled Prepare unpacks the layer and answers AlreadyExists; later layers
//! start at once; a blob that does not match its digest fails naming the layer and leaves
//! nothing; a blob the proxy does not have falls back to a plain Prepare, counted in /metrics.
//! Needs root (the test layer has owners and devices); skipped otherwise.

use axum::extract::{Path as UrlPath, RawQuery, State};
use damselfly_service::shutdown::Shutdown;
use damselfly_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient;
use damselfly_snapshotter::proto::snapshots::*;
use damselfly_snapshotter::remote::{
    IMAGE_LAYERS_LABEL, IMAGE_REF_LABEL, LAYER_DIGEST_LABEL, REF_LABEL, RemoteConfig,
};
use damselfly_snapshotter::server::{SnapshotterConfig, run};
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tonic::transport::Channel;

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn layer(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/layers")
            .join(name),
    )
    .unwrap()
}

#[derive(Clone, Default)]
struct Blobs {
    /// digest -> bytes served for it.
    blobs: Arc<HashMap<String, Vec<u8>>>,
    /// Request paths with their query, in order.
    seen: Arc<Mutex<Vec<String>>>,
    /// The first digest is held back until a request for the second has arrived.
    hold: Option<(String, String)>,
    arrived: Arc<tokio::sync::Notify>,
}

async fn blob(
    State(b): State<Blobs>,
    UrlPath((repo1, repo2, digest)): UrlPath<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Vec<u8>, axum::http::StatusCode> {
    b.seen
        .lock()
        .unwrap()
        .push(format!("{repo1}/{repo2}/{digest}?{}", q.unwrap_or_default()));
    if let Some((first, second)) = &b.hold {
        if digest == *second {
            b.arrived.notify_one();
        } else if digest == *first {
            b.arrived.notified().await;
        }
    }
    b.blobs
        .get(&digest)
        .cloned()
        .ok_or(axum::http::StatusCode::NOT_FOUND)
}

async fn serve_blobs(b: Blobs) -> String {
    let app = axum::Router::new()
        .route("/v2/{r1}/{r2}/blobs/{digest}", axum::routing::get(blob))
        .with_state(b);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn connect(socket: &Path) -> SnapshotsClient<Channel> {
    let socket = socket.to_path_buf();
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap();
    SnapshotsClient::new(channel)
}

fn in_ns<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("containerd-namespace", "k8s.io".parse().unwrap());
    req
}

fn labels(chain: &str, digest: &str, layers: &[&str]) -> HashMap<String, String> {
    [
        (REF_LABEL, chain.to_string()),
        (LAYER_DIGEST_LABEL, digest.to_string()),
        (IMAGE_REF_LABEL, "127.0.0.1:5000/test/img:v1".to_string()),
        (IMAGE_LAYERS_LABEL, layers.join(",")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn prepare(
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> tonic::Request<PrepareSnapshotRequest> {
    in_ns(PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        labels,
        ..Default::default()
    })
}

struct Daemon {
    stop: Shutdown,
    task: tokio::task::JoinHandle<()>,
    client: SnapshotsClient<Channel>,
    root: PathBuf,
    metrics: String,
    _dir: tempfile::TempDir,
}

async fn start(proxy: String) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = SnapshotterConfig {
        root: dir.path().join("root"),
        socket: dir.path().join("snap.sock"),
        metrics_listen: format!("127.0.0.1:{port}").parse().unwrap(),
        remote: RemoteConfig {
            proxy,
            ..Default::default()
        },
    };
    let (stop, _drain) = Shutdown::new();
    let (c, s) = (config.clone(), stop.clone());
    let task = tokio::spawn(async move { run(c, s).await.unwrap() });
    let client = connect(&config.socket).await;
    Daemon {
        stop,
        task,
        client,
        root: config.root,
        metrics: format!("http://127.0.0.1:{port}/metrics"),
        _dir: dir,
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

async fn metric(url: &str, name: &str) -> u64 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

#[tokio::test]
async fn layers_from_the_proxy() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (gz, zst) = (layer("good.tar.gz"), layer("good.tar.zst"));
    let diff_id = sha(&layer("good.tar"));
    let (d1, d2) = (sha(&gz), sha(&zst));
    let chain1 = diff_id.clone();
    let chain2 = sha(format!("{chain1} {diff_id}").as_bytes());
    // d3 claims to be the digest of other bytes: served bytes do not match it.
    let d3 = sha(b"not this layer");
    let missing = sha(b"nobody has this");
    let blobs = Blobs {
        blobs: Arc::new([(d1.clone(), gz.clone()), (d2.clone(), zst), (d3.clone(), gz)].into()),
        hold: Some((d1.clone(), d2.clone())),
        ..Default::default()
    };
    let mut d = start(serve_blobs(blobs.clone()).await).await;

    // Two layers: the first is only served once the second was asked for, so this completes
    // only if the first Prepare started both.
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        d.client
            .prepare(prepare("extract-1", "", labels(&chain1, &d1, &[&d1, &d2]))),
    )
    .await
    .expect("first layer served: the second was requested at once")
    .unwrap_err();
    assert_eq!(first.code(), tonic::Code::AlreadyExists, "{first:?}");
    let second = d
        .client
        .prepare(prepare("extract-2", "extract-1", labels(&chain2, &d2, &[&d2])))
        .await
        .unwrap_err();
    assert_eq!(second.code(), tonic::Code::AlreadyExists, "{second:?}");
    let seen = blobs.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "each layer fetched once: {seen:?}");
    assert!(
        seen.contains(&format!("test/img/{d1}?ns=127.0.0.1%3A5000")),
        "{seen:?}"
    );
    let info = d
        .client
        .stat(in_ns(StatSnapshotRequest {
            key: "extract-2".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    // Committed under the Prepare's key; containerd finds it by its label and parent.
    let info = info.into_inner().info.unwrap();
    assert_eq!(
        (info.kind, info.parent.as_str()),
        (Kind::Committed as i32, "extract-1")
    );
    assert_eq!(info.labels.get(REF_LABEL), Some(&chain2));
    let again = d
        .client
        .prepare(prepare("extract-2b", "extract-1", labels(&chain2, &d2, &[&d2])))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        tonic::Code::AlreadyExists,
        "a committed layer is not fetched again"
    );
    let mounts = d
        .client
        .view(in_ns(ViewSnapshotRequest {
            key: "v".into(),
            parent: "extract-1".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let fs = PathBuf::from(&mounts[0].source);
    assert_eq!(std::fs::read(fs.join("etc/hostname")).unwrap(), b"damselfly\n");
    assert_eq!(
        metric(&d.metrics, "damselfly_snapshotter_remote_layers_total").await,
        2
    );

    // A blob that does not match its digest: the error names the layer, nothing is left.
    let dirs_before = entries(&d.root.join("snapshots"));
    let chain3 = sha(format!("{chain1} sha256:other").as_bytes());
    let err = d
        .client
        .prepare(prepare("extract-3", "extract-1", labels(&chain3, &d3, &[&d3])))
        .await
        .unwrap_err();
    assert!(err.message().contains(&d3), "{err:?}");
    assert_ne!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        entries(&d.root.join("snapshots")),
        dirs_before,
        "no snapshot directory left"
    );
    assert_eq!(entries(&d.root.join("staging")), 0, "no partial directory left");
    let exists = d
        .client
        .stat(in_ns(StatSnapshotRequest {
            key: "extract-3".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(exists.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(
        metric(&d.metrics, "damselfly_snapshotter_layer_failures_total").await,
        1
    );

    // A blob the proxy does not have: a plain Prepare, counted.
    let chain4 = sha(format!("{chain1} sha256:missing").as_bytes());
    let mounts = d
        .client
        .prepare(prepare(
            "extract-4",
            "extract-1",
            labels(&chain4, &missing, &[&missing]),
        ))
        .await
        .unwrap();
    assert_eq!(mounts.into_inner().mounts[0].r#type, "overlay");
    assert_eq!(
        metric(&d.metrics, "damselfly_snapshotter_fallbacks_total").await,
        1
    );

    d.stop.trigger();
    drop(d.client);
    d.task.await.unwrap();
}
