//! `damselfly snapshotter`: containerd's proxy snapshotter on a unix socket.

use anyhow::Context as _;
use damselfly_service::shutdown::run_until_signal;
use damselfly_snapshotter::server::{SnapshotterConfig, run as serve};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Snapshotter config file (TOML); defaults when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where snapshots live (overrides the config's `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The unix socket to serve on (overrides the config's `socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// `/metrics` address (overrides the config's `metrics_listen`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log level when RUST_LOG is unset.
    #[arg(long, default_value = "info")]
    log_level: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    damselfly_service::telemetry::init_logging(&args.log_level, false);
    let mut config: SnapshotterConfig = damselfly_service::config::load(args.config.as_deref())?;
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = addr;
    }
    config.validate()?;
    run_until_signal(|stop| serve(config, stop))
        .await
        .context("snapshotter")?;
    Ok(())
}
