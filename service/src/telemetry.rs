//! Logs and metrics.
//!
//! Logs go to stderr through `tracing`; `RUST_LOG` (or the role's `log_level`)
//! filters them. Metrics: each role registers its metrics in one
//! [`prometheus_client::registry::Registry`] and serves it with [`serve_metrics`].

use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::shutdown::Shutdown;

/// Installs the global tracing subscriber once (later calls are no-ops).
pub fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// An axum router with `GET /metrics` for this registry.
pub fn metrics_router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&registry),
                )
            }
        }),
    )
}

/// Serves `/metrics` on `addr` until shutdown. Returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_router(addr, metrics_router(registry), shutdown).await
}

/// Serves `app` (e.g. [`metrics_router`] merged with
/// [`crate::health::Health::router`]) on `addr` until shutdown.
pub async fn serve_router(
    addr: SocketAddr,
    app: axum::Router,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let stop = shutdown.clone();
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await;
        drop(shutdown);
    });
    Ok((bound, handle))
}

/// Said once at start-up by every networked role: there is no TLS between
/// components yet, so whoever reaches their ports is believed.
pub fn warn_trusted_network(role: &str) {
    tracing::warn!(
        role,
        "no TLS between components: the network must be trusted (any host that reaches this {role} is believed)"
    );
}
