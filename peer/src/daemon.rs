//! Starts a peer daemon: store, piece server, scheduler streams, local API,
//! metrics, GC; stops them all on shutdown.

use crate::config::PeerConfig;
use crate::download::Downloader;
use crate::error::Error;
use crate::gc::{self, GcPolicy};
use crate::local_api::LocalApi;
use crate::metrics::Metrics;
use crate::piece_server::PieceServer;
use crate::rate::RateLimiter;
use crate::source;
use crate::store::{self, FLUSH_EVERY, Store};
use crate::task::Tasks;
use damselfly_proto::daemon::daemon_server::DaemonServer;
use damselfly_proto::scheduler::HostInfo;
use damselfly_service::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tracing::{info, warn};

/// How long start-up waits for the first scheduler hello before serving
/// anyway (downloads then go to the origin until the scheduler answers).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// Runs a peer until `shutdown` fires. `on_ready` gets the downloader once
/// every listener is bound, so embedders can mount more services on it.
pub async fn run(config: PeerConfig, shutdown: Shutdown) -> Result<(), Error> {
    config.validate()?;
    damselfly_service::tls::install(damselfly_service::tls::Tls::start(&config.tls, &shutdown).await?);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    // Readiness (/readyz): see `HEALTH_CONDITIONS`.
    let health = damselfly_service::health::Health::new("peer", HEALTH_CONDITIONS);
    health.register(&mut registry);
    let supervisor = damselfly_service::tasks::Supervisor::new();
    let store = Arc::new(Store::open(&config.data_dir)?);
    health.set("store", true);
    let orphans = store.remove_orphans()?;
    if orphans > 0 {
        info!(orphans, "removed content files without metadata");
    }
    let host_id = store::host_id(&config.data_dir)?;
    let tasks = Arc::new(Tasks::new(store));

    let http = source::client(&config.source)?;
    let downloader = Downloader::new(
        tasks.clone(),
        config.clone(),
        host_id.clone(),
        metrics.clone(),
        http,
        Vec::new(),
    );

    // Piece server.
    let piece_listener = tokio::net::TcpListener::bind(config.piece_listen)
        .await
        .map_err(|e| Error::io(format!("bind piece_listen {}", config.piece_listen), e))?;
    let piece_port = piece_listener
        .local_addr()
        .map_err(|e| Error::io("piece listener", e))?
        .port();
    let uploads = Arc::new(RateLimiter::new(config.upload_rate.as_u64()));
    downloader.limits.register(&mut registry);
    let server = PieceServer::new(
        tasks.clone(),
        uploads,
        metrics.clone(),
        downloader.limits.clone(),
        downloader.ticket_keys.clone(),
    );
    let mut handles = vec![supervisor.watch(
        format!("piece server on {}", config.piece_listen),
        tokio::spawn(server.serve(piece_listener, shutdown.clone())),
        shutdown.clone(),
    )];

    // Scheduler host streams.
    let ip = advertise_ip(&config);
    let info = HostInfo {
        host_id: host_id.clone(),
        hostname: if config.manager.hostname.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string()
        } else {
            config.manager.hostname.clone()
        },
        ip: ip.clone(),
        piece_port: piece_port as u32,
        seed: config.seed,
        idc: config.idc.clone(),
        location: config.location.clone(),
        upload_slots: config.upload_slots,
        upload_rate: config.upload_rate.as_u64(),
        seal_key: downloader
            .seal_key
            .as_ref()
            .map(|k| k.public_key())
            .unwrap_or_default(),
    };
    // Fixed schedulers, or the manager's list (followed while the daemon runs).
    let (announced, followers) = crate::schedulers::start(&config, &downloader, &info, &shutdown).await?;
    handles.extend(followers);
    for mut rx in announced.iter().cloned() {
        let health = health.clone();
        tokio::spawn(async move {
            if rx.wait_for(|a| *a).await.is_ok() {
                health.set("scheduler", true);
            }
        });
    }
    for mut rx in announced {
        if tokio::time::timeout(ANNOUNCE_WAIT, rx.wait_for(|a| *a))
            .await
            .is_err()
        {
            warn!("a scheduler did not answer at start-up; downloads go to the origin until it does");
        }
    }

    // GC.
    let gc_tasks = tasks.clone();
    let policy = Arc::new(GcPolicy {
        ttl: config.task_ttl,
        high: config.disk_high_watermark,
        low: config.disk_low_watermark,
    });
    let (gc_every, data_dir, gc_stop) = (config.gc_interval, config.data_dir.clone(), shutdown.clone());
    let gc_downloader = downloader.clone();
    handles.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(gc_every);
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        tick.tick().await;
        flush.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (tasks, policy, dir) = (gc_tasks.clone(), policy.clone(), data_dir.clone());
                    let d = gc_downloader.clone();
                    let _ = store::blocking(move || {
                        gc::collect(&tasks, &policy, || gc::disk_used_percent(&dir));
                        crate::cache::sweep(&d);
                        Ok(())
                    })
                    .await;
                }
                _ = flush.tick() => {
                    let tasks = gc_tasks.clone();
                    if let Err(e) = store::blocking(move || tasks.store.flush()).await {
                        tracing::warn!(error = %e, "cannot flush the task records");
                    }
                }
                _ = gc_stop.wait() => return,
            }
        }
    }));

    // Registry mirror proxy, blobs from the mesh.
    if config.proxy.enabled {
        let proxy =
            crate::blob::serve_proxy(&config.proxy, downloader.clone(), &mut registry, shutdown.clone());
        let proxy = proxy.await?;
        handles.push(supervisor.watch(
            format!("registry proxy on {}", config.proxy.listen),
            proxy,
            shutdown.clone(),
        ));
    }

    // Metrics.
    let app = damselfly_service::telemetry::metrics_router(Arc::new(registry)).merge(health.router());
    // Beyond loopback with [tls] on: HTTPS, any client certificate of the cluster.
    let app = damselfly_service::https::restrict(app, damselfly_service::https::Allow::Member);
    let tls = damselfly_service::tls::installed();
    let (metrics_addr, h) = damselfly_service::https::bind_and_serve(
        config.metrics_listen,
        app,
        tls.clone(),
        damselfly_service::tls::ClientAuth::Required,
        shutdown.clone(),
    )
    .await
    .map_err(|e| Error::io(format!("bind metrics_listen {}", config.metrics_listen), e))?;
    handles.push(supervisor.watch(format!("metrics server on {metrics_addr}"), h, shutdown.clone()));
    // Kubelet probes cannot present a certificate: /healthz and /readyz alone, plain.
    if let Some((addr, h)) =
        damselfly_service::https::serve_health(config.health_addr, &health, tls.is_some(), shutdown.clone())
            .await
            .map_err(|e| Error::io(format!("bind health_addr {}", config.health_addr), e))?
    {
        handles.push(supervisor.watch(format!("health server on {addr}"), h, shutdown.clone()));
    }

    // Local API, last: its socket appearing means the daemon is ready.
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let _ = std::fs::remove_file(&config.socket);
    let uds = UnixListener::bind(&config.socket)
        .map_err(|e| Error::io(format!("bind socket {}", config.socket.display()), e))?;
    info!(host_id, ip, piece_port, metrics = %metrics_addr, socket = %config.socket.display(), seed = config.seed, "peer serving");
    let api = LocalApi {
        downloader: downloader.clone(),
    };
    health.set("listeners", true);
    let stop = shutdown.clone();
    let result = tonic::transport::Server::builder()
        .add_service(DaemonServer::new(api))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(uds), async move {
            stop.wait().await
        })
        .await;
    let _ = std::fs::remove_file(&config.socket);
    shutdown.trigger();
    let tasks = downloader.tasks.clone();
    let _ = store::blocking(move || {
        let mut clean = true;
        for t in tasks.all() {
            clean &= t.sync().is_ok() && t.save(&tasks.store).is_ok();
        }
        if clean && tasks.store.flush().is_ok() {
            let _ = tasks.store.mark_clean();
        }
        Ok(())
    })
    .await;
    for h in handles {
        let _ = h.await;
    }
    result.map_err(|e| Error::Failed(format!("local API: {e}")))?;
    supervisor.result().map_err(|e| Error::Failed(e.to_string()))
}

/// What `/readyz` waits for on a peer: the store is open, every listener
/// (piece server, proxy, metrics, local API) is bound, and one of its
/// schedulers answered its host stream. A peer whose schedulers are all down
/// stays not ready (it would serve `get`s from the origin only) until one answers.
pub const HEALTH_CONDITIONS: &[&str] = &["store", "listeners", "scheduler"];

/// The configured address, else the local address used to reach the first
/// scheduler (or the manager), else loopback.
fn advertise_ip(config: &PeerConfig) -> String {
    if !config.advertise_ip.is_empty() {
        return config.advertise_ip.clone();
    }
    let manager = config
        .manager
        .enabled()
        .then(|| config.manager.url(config.tls.enabled()));
    let target = config
        .schedulers
        .first()
        .cloned()
        .or(manager)
        .and_then(|s| url::Url::parse(&s).ok())
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)));
    target
        .and_then(|t| {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            sock.connect(t).ok()?;
            Some(sock.local_addr().ok()?.ip().to_string())
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}
