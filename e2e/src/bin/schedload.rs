//! `damselfly-schedload --scheduler http://IP:PORT`: announces many
//! simulated peers to a running scheduler and prints scheduling decisions
//! per second and latency percentiles as JSON. See `damselfly_e2e::schedload`.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use damselfly_e2e::schedload::{self, LoadConfig};

#[derive(Parser)]
#[command(
    name = "damselfly-schedload",
    about = "Load generator for the Damselfly scheduler (simulated peers)"
)]
struct Args {
    /// The scheduler's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8002")]
    scheduler: String,
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    #[arg(long, default_value_t = 4)]
    seeds: usize,
    /// Registrations waiting for their decision at once.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let config = LoadConfig {
        scheduler: args.scheduler,
        peers: args.peers,
        tasks: args.tasks,
        hosts: args.hosts,
        seeds: args.seeds,
        concurrency: args.concurrency,
        timeout: Duration::from_secs(60),
        ..LoadConfig::default()
    };
    let report = schedload::run(&config).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
