//! `damselfly proxy`: the registry mirror proxy on its own, with blobs
//! fetched straight from the origin. `damselfly peer` serves the same proxy
//! with the mesh as its blob source. `GET /metrics` on the same address.

use anyhow::Context as _;
use damselfly_registry_proxy::{Proxy, ProxyConfig, router_with_metrics, serve};
use damselfly_service::shutdown::run_until_signal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Address to serve the distribution API on.
    #[arg(long, default_value = "127.0.0.1:65001")]
    listen: SocketAddr,
    /// Proxy config file (TOML); defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log level when RUST_LOG is unset.
    #[arg(long, default_value = "info")]
    log_level: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    damselfly_service::telemetry::init_logging(&args.log_level, false);
    let config: ProxyConfig = damselfly_service::config::load(args.config.as_deref())?;
    config.validate()?;
    let proxy = Proxy::direct(config).context("start the proxy")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "registry proxy listening");
    println!("listening on {addr}");
    let router = router_with_metrics(Arc::new(proxy));
    run_until_signal(|stop| serve(listener, router, stop))
        .await
        .context("serve")?;
    Ok(())
}
