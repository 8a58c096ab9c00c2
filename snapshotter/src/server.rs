//! The role: the snapshots service on a unix socket, `/metrics` on TCP.

use crate::grpc::SnapshotsService;
use crate::overlay::Overlay;
use crate::remote::{Remote, RemoteConfig, RemoteMetrics};
use crate::{Error, Result};
use damselfly_service::config::ConfigError;
use damselfly_service::shutdown::Shutdown;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub const DEFAULT_ROOT: &str = "/var/lib/damselfly/snapshotter";
pub const DEFAULT_SOCKET: &str = "/run/damselfly/snapshotter.sock";
pub const DEFAULT_METRICS: &str = "127.0.0.1:65010";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotterConfig {
    /// Where snapshots and their metadata live (containerd's `exports.root` of the plugin).
    pub root: PathBuf,
    /// The unix socket containerd's proxy plugin dials.
    pub socket: PathBuf,
    pub metrics_listen: SocketAddr,
    pub remote: RemoteConfig,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        Self {
            root: DEFAULT_ROOT.into(),
            socket: DEFAULT_SOCKET.into(),
            metrics_listen: DEFAULT_METRICS.parse().expect("valid default address"),
            remote: RemoteConfig::default(),
        }
    }
}

impl SnapshotterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.root.is_absolute() {
            return Err(ConfigError::invalid("root", "must be an absolute path"));
        }
        if !self.socket.is_absolute() {
            return Err(ConfigError::invalid("socket", "must be an absolute path"));
        }
        self.remote.validate()
    }
}

/// Serves until `shutdown` triggers. The socket appears once the snapshotter is ready.
pub async fn run(config: SnapshotterConfig, shutdown: Shutdown) -> Result<()> {
    let root = config.root.clone();
    let overlay = tokio::task::spawn_blocking(move || Overlay::open(&root)).await??;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RemoteMetrics::default();
    metrics.register(&mut registry);
    // Ready (/readyz, systemd READY=1) once the store is open and the socket is bound.
    let health = damselfly_service::health::Health::new("snapshotter", &["store", "listeners"]);
    health.register(&mut registry);
    health.set("store", true);
    let snapshotter = Remote::new(Arc::new(overlay), &config.remote, metrics);
    let app = damselfly_service::telemetry::metrics_router(Arc::new(registry)).merge(health.router());
    let (metrics_addr, metrics_task) =
        damselfly_service::telemetry::serve_router(config.metrics_listen, app, shutdown.clone())
            .await
            .map_err(|e| Error::io(format!("bind metrics_listen {}", config.metrics_listen), e))?;
    let socket = config.socket.clone();
    let uds = tokio::task::spawn_blocking(move || {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove stale {}", socket.display()), e)),
        }
        let std_listener = std::os::unix::net::UnixListener::bind(&socket)
            .map_err(|e| Error::io(format!("bind socket {}", socket.display()), e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("set the socket non-blocking", e))?;
        Ok(std_listener)
    })
    .await??;
    let uds = tokio::net::UnixListener::from_std(uds).map_err(|e| Error::io("register the socket", e))?;
    tracing::info!(root = %config.root.display(), socket = %config.socket.display(), metrics = %metrics_addr, "snapshotter serving");
    health.set("listeners", true);
    let supervisor = damselfly_service::tasks::Supervisor::new();
    let metrics_task = supervisor.watch(
        format!("metrics server on {metrics_addr}"),
        metrics_task,
        shutdown.clone(),
    );
    let stop = shutdown.clone();
    let served = tonic::transport::Server::builder()
        .add_service(SnapshotsService::new(Arc::new(snapshotter)).into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(uds), async move {
            stop.wait().await
        })
        .await;
    let socket = config.socket.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(socket)).await;
    shutdown.trigger();
    let _ = metrics_task.await;
    served.map_err(|e| Error::Task(format!("snapshots service: {e}")))?;
    supervisor.result().map_err(|e| Error::Task(e.to_string()))
}
