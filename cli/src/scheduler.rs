//! `damselfly scheduler`

use anyhow::Context;
use damselfly_scheduler::SchedulerConfig;
use damselfly_service::shutdown;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Config file (TOML); defaults apply to what it leaves out.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC address for peers (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of /metrics and /tasks/{id} (overrides `http_listen`).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// With `[tls]` on: plain /healthz and /readyz here (overrides `health_addr`).
    #[arg(long)]
    health_addr: Option<SocketAddr>,
    /// Manager gRPC address, HOST:PORT or a URL (overrides `manager.addr`).
    #[arg(long)]
    manager: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config: SchedulerConfig = damselfly_service::config::load(args.config.as_deref())?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(l) = args.metrics_listen {
        config.http_listen = l;
    }
    if let Some(h) = args.health_addr {
        config.health_addr = h;
    }
    if let Some(m) = args.manager {
        config.manager.addr = m;
    }
    config.validate()?;
    damselfly_service::telemetry::init_logging(&config.log_level, false);
    damselfly_service::telemetry::warn_trusted_network("scheduler", &config.tls);
    shutdown::run_until_signal(|stop| damselfly_scheduler::run(config, stop))
        .await
        .context("scheduler")?;
    Ok(())
}
