//! `damselfly peer [--seed]`

use anyhow::Context;
use damselfly_peer::PeerConfig;
use damselfly_service::shutdown;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Config file (TOML); defaults apply to what it leaves out.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Run as a seed peer: fetch from origins when the scheduler asks.
    #[arg(long)]
    seed: bool,
    /// Scheduler gRPC URL, e.g. http://10.0.0.2:8002 (repeatable; replaces `schedulers`).
    #[arg(long = "scheduler")]
    schedulers: Vec<String>,
    /// Manager gRPC address, e.g. http://10.0.0.1:65003: schedulers come from
    /// it (overrides `manager.addr`).
    #[arg(long)]
    manager: Option<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Unix socket of the local API.
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long)]
    piece_listen: Option<SocketAddr>,
    /// IP other peers use to reach this one.
    #[arg(long)]
    advertise_ip: Option<String>,
    /// /metrics, /healthz, /readyz (HTTPS beyond loopback with `[tls]` on).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// With `[tls]` on: plain /healthz and /readyz here (overrides `health_addr`).
    #[arg(long)]
    health_addr: Option<SocketAddr>,
    /// Where the registry mirror proxy listens (`[proxy] listen`; default 127.0.0.1:65001).
    #[arg(long)]
    proxy_listen: Option<SocketAddr>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config: PeerConfig = damselfly_service::config::load(args.config.as_deref())?;
    config.seed |= args.seed;
    if !args.schedulers.is_empty() {
        config.schedulers = args.schedulers;
    }
    if let Some(v) = args.manager {
        config.manager.addr = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.socket {
        config.socket = v;
    }
    if let Some(v) = args.piece_listen {
        config.piece_listen = v;
    }
    if let Some(v) = args.advertise_ip {
        config.advertise_ip = v;
    }
    if let Some(v) = args.metrics_listen {
        config.metrics_listen = v;
    }
    if let Some(v) = args.health_addr {
        config.health_addr = v;
    }
    if let Some(v) = args.proxy_listen {
        config.proxy.listen = v;
    }
    config.validate()?;
    damselfly_service::telemetry::init_logging(&config.log_level, false);
    damselfly_service::telemetry::warn_trusted_network("peer", &config.tls);
    if config.tls.enabled() && config.proxy.enabled && !config.proxy.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.proxy.listen,
            "the registry proxy serves plain HTTP to containerd even with [tls] on; keep proxy.listen on loopback"
        );
    }
    shutdown::run_until_signal(|stop| damselfly_peer::daemon::run(config, stop))
        .await
        .context("peer")?;
    Ok(())
}
