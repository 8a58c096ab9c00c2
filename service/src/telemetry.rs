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

/// The same metrics in Prometheus' text format 0.0.4 (what `promtool check
/// metrics`, curl and older scrapers read): OpenMetrics names a counter family
/// without `_total` and ends with `# EOF`; the text format names it with it.
pub fn render_text(registry: &Registry) -> String {
    let open = render(registry);
    let mut counters = std::collections::HashSet::new();
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(open.len() + 64);
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").map(|r| ("# HELP ", r));
        let meta = meta.or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) && !name.ends_with("_total") {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                out.push_str(&format!("{kind}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// An axum router with `GET /metrics` for this registry: OpenMetrics when
/// the client asks for it (Prometheus does), else the text format 0.0.4.
pub fn metrics_router(registry: Arc<Registry>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let registry = registry.clone();
            async move {
                let open = headers
                    .get_all(axum::http::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                if open {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(&registry),
                    )
                } else {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render_text(&registry),
                    )
                }
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

/// Said once at start-up by every networked role whose `[tls]` is off:
/// whoever reaches its ports is believed.
pub fn warn_trusted_network(role: &str, tls: &crate::tls::TlsConfig) {
    if !tls.enabled() {
        tracing::warn!(
            role,
            "no TLS between components: the network must be trusted (any host that reaches this {role} is believed)"
        );
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::registry::Registry;

    #[test]
    fn text_format_names_counters_with_total_and_has_no_eof() {
        let mut r = Registry::default();
        let c = Counter::<u64>::default();
        r.register("pieces", "Pieces", c.clone());
        c.inc();
        let text = super::render_text(&r);
        assert!(text.contains("# HELP pieces_total Pieces."), "{text}");
        assert!(text.contains("# TYPE pieces_total counter"), "{text}");
        assert!(text.contains("pieces_total 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
