//! `damselfly manager`: the control plane (clusters, liveness, preheat, REST API, console).

use anyhow::Context;
use damselfly_manager::config::Config;
use damselfly_service::shutdown::{self, Shutdown};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// TOML config file (defaults apply when omitted).
    #[arg(long)]
    config: Option<PathBuf>,
    /// REST API, web console and /metrics address (overrides `listen`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// gRPC address for schedulers and seed peers (overrides `grpc_listen`).
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// With `[tls]` on: plain /healthz and /readyz here (overrides `health_addr`).
    #[arg(long)]
    health_addr: Option<SocketAddr>,
    /// `sqlite://PATH?mode=rwc` or `postgres://user@host/db` (overrides `database`).
    #[arg(long, env = "DAMSELFLY_DATABASE")]
    database: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config: Config = damselfly_service::config::load(args.config.as_deref())?;
    if let Some(a) = args.listen {
        config.listen = a;
    }
    if let Some(a) = args.grpc_listen {
        config.grpc_listen = a;
    }
    if let Some(a) = args.health_addr {
        config.health_addr = a;
    }
    if let Some(d) = args.database {
        config.database = d;
    }
    config.validate()?;
    let scheme = match config.tls.enabled() && !config.listen.ip().is_loopback() {
        true => "https",
        false => "http",
    };
    damselfly_service::telemetry::init_logging(&config.log_level, false);
    damselfly_service::telemetry::warn_trusted_network("manager", &config.tls);
    let (stop, drain) = Shutdown::new();
    let running = damselfly_manager::start(config, stop.clone())
        .await
        .context("starting the manager")?;
    println!(
        "damselfly manager: console and API on {scheme}://{}, gRPC on {}",
        running.http_addr, running.grpc_addr
    );
    let mut tasks = running.tasks;
    let failed = {
        let waits = tasks.iter_mut().map(|(name, h)| {
            Box::pin(async move {
                let _ = h.await;
                *name
            })
        });
        tokio::select! {
            _ = shutdown::signal() => None,
            (name, _, _) = futures::future::select_all(waits) => Some(name),
        }
    };
    stop.trigger();
    drop(stop);
    drop(running.ctx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain.drained()).await;
    match failed {
        Some(name) => anyhow::bail!("the manager's {name} task stopped unexpectedly"),
        None => Ok(()),
    }
}
