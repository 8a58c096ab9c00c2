//! Damselfly's manager: the control plane.
//!
//! It never carries file bytes. It keeps clusters and their dynamic
//! settings, knows which schedulers and seed peers are alive, tells peers
//! which schedulers serve them, runs preheat jobs through seed peers, and
//! serves a REST API (with its OpenAPI document), a web console and metrics.
//! Several managers can run side by side over one PostgreSQL: all state is
//! in the database, and work is handed out with leases.
//!
//! Layout:
//! - [`config`]: the TOML config, defaults and validation.
//! - [`db`]: the pool over SQLite or PostgreSQL, and the migrations.
//! - [`store`]: every query, one module per table family.
//! - [`auth`]: scopes, principals, password and token hashing.
//! - [`scope`]: which scheduler cluster serves a peer.
//! - [`grpc`]: the `Manager` gRPC service for schedulers, seed peers and peers.
//! - [`hub`]: seed peers and peers connected to this manager.
//! - [`preheat`] and [`registry`]: the preheat engine and the OCI resolver.
//! - [`seal`]: registry credentials of preheat jobs, sealed at rest.
//! - [`api`]: REST handlers under `/api/v1` (+ `/api/v1/openapi.json`).
//! - [`console`]: the server-rendered web console at `/`.
//! - [`metrics`]: Prometheus metrics.
//!
//! Errors: one [`error::Error`] whose variants say what the caller can do
//! about it; it converts to an HTTP response in one place (`api`) and to a
//! `tonic::Status` in one place (`error`).

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod grpc;
pub mod hub;
pub mod metrics;
pub mod preheat;
pub mod registry;
pub mod scope;
pub mod seal;
pub mod store;

use damselfly_service::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Everything a handler needs, shared behind one `Arc`.
pub struct Inner {
    pub db: db::Db,
    pub config: config::Config,
    pub hasher: auth::Hasher,
    pub metrics: metrics::Metrics,
    pub hub: hub::SessionHub,
    /// Wakes the preheat engine (a job was created, a seed connected, a report came in).
    pub wake: tokio::sync::Notify,
    /// Names this manager in leases.
    pub owner: String,
    /// Turns true when the manager shuts down; long-lived gRPC streams end then.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// `/healthz`, `/readyz`: ready once the database is open and both listeners are bound.
    pub health: damselfly_service::health::Health,
}

pub type Ctx = Arc<Inner>;

impl Inner {
    pub fn keepalive_timeout_ms(&self) -> i64 {
        self.config.keepalive_timeout.as_millis() as i64
    }

    /// Resolves once the manager is shutting down.
    pub async fn closed(&self) {
        let mut rx = self.closing.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// A started manager.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub ctx: Ctx,
    /// Ends when every server and loop has stopped (after shutdown).
    pub tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// [`start_with`] with root's first password from `DAMSELFLY_ROOT_PASSWORD`
/// (generated and printed once when unset), and the secret key from
/// `DAMSELFLY_MANAGER_SECRET_KEY` when the config has none.
pub async fn start(mut config: config::Config, shutdown: Shutdown) -> error::Result<Running> {
    let root_pw = std::env::var("DAMSELFLY_ROOT_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if config.secret_key.is_none() {
        config.secret_key = std::env::var(seal::KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty())
            .map(damselfly_service::secret::Secret::new);
    }
    start_with(config, root_pw, shutdown).await
}

/// Connects to the database, applies migrations, creates the defaults and
/// the root user (on first start), binds both listeners and starts every loop.
pub async fn start_with(
    config: config::Config,
    root_password: Option<String>,
    shutdown: Shutdown,
) -> error::Result<Running> {
    install_crypto_provider();
    config
        .validate()
        .map_err(|e| error::Error::invalid("config", e.to_string()))?;
    // Bind first: a taken port fails the start before anything is written.
    let http = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| error::Error::Internal(format!("bind {}: {e}", config.listen)))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| error::Error::Internal(e.to_string()))?;
    let grpc = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|e| error::Error::Internal(format!("bind {}: {e}", config.grpc_listen)))?;
    let tls = damselfly_service::tls::Tls::start(&config.tls, &shutdown)
        .await
        .map_err(|e| error::Error::invalid("config", e.to_string()))?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| error::Error::Internal(e.to_string()))?;

    let key = seal::key_for(&config.database, config.secret_key.as_ref().map(|k| k.expose()))?;
    let db = db::Db::connect(&config.database, seal::Sealer::new(&key)).await?;
    store::clusters::ensure_defaults(&db).await?;
    let hasher = auth::Hasher::new(&config.auth);
    if let Some(generated) = store::users::ensure_root(&db, &hasher, root_password).await? {
        // Printed once, on the first start only; it is not stored anywhere in clear.
        eprintln!("damselfly manager: created user root with password {generated}");
    }
    let owner = format!("{}-{}", hostname(), &auth::random_secret()[..8]);
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let s = shutdown.clone();
    tokio::spawn(async move {
        s.wait().await;
        let _ = closing_tx.send(true);
    });
    let health = damselfly_service::health::Health::new("manager", &["database", "listeners"]);
    let ctx: Ctx = Arc::new(Inner {
        db,
        config: config.clone(),
        hasher,
        metrics: metrics::Metrics::new(&health),
        hub: hub::SessionHub::default(),
        wake: tokio::sync::Notify::new(),
        owner,
        closing,
        health,
    });
    ctx.health.set("database", true);

    let mut tasks = Vec::new();
    // HTTPS beyond loopback with [tls] on; a client certificate is optional (people sign in
    // with tokens or sessions), only /metrics asks for one (see `app`).
    let (_, http_task) = damselfly_service::https::serve(
        http,
        app(ctx.clone()),
        tls.clone(),
        damselfly_service::tls::ClientAuth::Optional,
        shutdown.clone(),
    )
    .map_err(|e| error::Error::Internal(format!("serve {}: {e}", config.listen)))?;
    tasks.push(("http", http_task));
    // Kubelet probes cannot present a certificate: /healthz and /readyz alone, plain.
    if let Some((_, h)) = damselfly_service::https::serve_health(
        config.health_addr,
        &ctx.health,
        tls.is_some(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| error::Error::Internal(format!("bind health_addr {}: {e}", config.health_addr)))?
    {
        tasks.push(("health", h));
    }
    let s = shutdown.clone();
    let svc = grpc::service(ctx.clone());
    tasks.push((
        "grpc",
        tokio::spawn(async move {
            let stop = s.clone();
            let incoming = damselfly_service::tls::incoming(grpc, tls);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move { stop.wait().await })
                .await
            {
                tracing::error!(error = %e, "grpc server failed");
            }
            drop(s);
        }),
    ));
    tasks.push(("sweeper", tokio::spawn(sweeper(ctx.clone(), shutdown.clone()))));
    tasks.push((
        "preheat",
        tokio::spawn(preheat::run(ctx.clone(), shutdown.clone())),
    ));
    tracing::info!(%http_addr, %grpc_addr, backend = ?ctx.db.backend, "manager started");
    ctx.health.set("listeners", true);
    Ok(Running {
        http_addr,
        grpc_addr,
        ctx,
        tasks,
    })
}

/// reqwest is built without a default TLS crypto provider: installs ring as
/// the process default (a no-op when one is installed already).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The whole HTTP surface: console, REST API, OpenAPI, metrics, health.
pub fn app(ctx: Ctx) -> axum::Router {
    // Over TLS only a client certificate of the cluster reads /metrics (Prometheus presents one).
    let metrics = damselfly_service::https::restrict(
        damselfly_service::telemetry::metrics_router(ctx.metrics.registry.clone()),
        damselfly_service::https::Allow::Member,
    );
    api::router(ctx.clone())
        .merge(console::router(ctx.clone()))
        .merge(metrics)
        .merge(ctx.health.router())
        .layer(axum::middleware::from_fn_with_state(ctx, api::observe))
}

/// Turns silent instances inactive and refreshes the gauges.
async fn sweeper(ctx: Ctx, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(ctx.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tick.tick() => {}
        }
        match store::instances::sweep(&ctx.db, ctx.keepalive_timeout_ms()).await {
            Ok(n) if n > 0 => {
                tracing::info!(count = n, "instances missed their keepalives and turned inactive")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "liveness sweep failed; retrying next interval"),
        }
        if let Ok(c) = store::instances::counts(&ctx.db).await {
            ctx.metrics.set_instances(&c);
        }
        if let Ok(c) = store::preheat::job_counts(&ctx.db).await {
            ctx.metrics.set_jobs(&c);
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "manager".into())
}
