//! `damselfly-sim`: runs swarm simulations and prints a table and JSON.
//!
//! ```sh
//! cargo run --release -p damselfly-sim -- --peers 1000 --size-mib 128
//! cargo run --release -p damselfly-sim -- --suite   # the issue's set (N = 1,000 takes minutes today)
//! ```

use clap::Parser;
use damselfly_sim::{Config, Report, run};

#[derive(Parser, Debug)]
#[command(about = "Deterministic swarm simulation over the real scheduling core and piece choice")]
struct Args {
    /// Peer hosts that download.
    #[arg(long, default_value_t = 16)]
    peers: usize,
    /// Total size in MiB (split over --layers tasks).
    #[arg(long, default_value_t = 128)]
    size_mib: u64,
    /// Tasks (image layers), asked at once; sizes differ (1, 2, ..., K parts of the total).
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Every host's rate each way, Mbit/s.
    #[arg(long, default_value_t = 100.0)]
    rate_mbit: f64,
    /// One-way latency per host link, milliseconds.
    #[arg(long, default_value_t = 0.1)]
    latency_ms: f64,
    /// Share of peers killed at --kill-at x S/U.
    #[arg(long, default_value_t = 0.0)]
    kill_share: f64,
    #[arg(long, default_value_t = 0.5)]
    kill_at: f64,
    /// Share of peers on links --slow-factor x the rate.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,
    #[arg(long, default_value_t = 0.25)]
    slow_factor: f64,
    /// The scheduler's candidate_parent_limit.
    #[arg(long, default_value_t = 8)]
    parents: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs the standard set instead (N = 8, 16, 1,000, 10,000; 10 layers on 1,000; 5 % killed).
    #[arg(long)]
    suite: bool,
    /// Writes the reports as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn config(a: &Args) -> Config {
    let total = a.size_mib << 20;
    let parts: u64 = (1..=a.layers as u64).sum();
    let mut layers: Vec<u64> = (1..=a.layers as u64).map(|k| total * k / parts).collect();
    let rest = total - layers.iter().sum::<u64>();
    *layers.last_mut().expect("at least one layer") += rest;
    Config {
        layers,
        rate_bits: a.rate_mbit * 1e6,
        latency: a.latency_ms / 1000.0,
        kill_share: a.kill_share,
        kill_at: a.kill_at,
        slow_share: a.slow_share,
        slow_factor: a.slow_factor,
        candidate_parent_limit: a.parents,
        seed: a.seed,
        ..Config::lab(a.peers, total)
    }
}

fn command(a: &Args) -> String {
    format!(
        "damselfly-sim --peers {} --size-mib {} --layers {} --rate-mbit {} --latency-ms {} --kill-share {} --kill-at {} --slow-share {} --slow-factor {} --parents {} --seed {}",
        a.peers,
        a.size_mib,
        a.layers,
        a.rate_mbit,
        a.latency_ms,
        a.kill_share,
        a.kill_at,
        a.slow_share,
        a.slow_factor,
        a.parents,
        a.seed
    )
}

fn main() {
    let args = Args::parse();
    if args.layers == 0 || args.peers == 0 {
        eprintln!("--peers and --layers must be at least 1");
        std::process::exit(2);
    }
    let json_path = args.json.clone();
    let runs: Vec<Args> = if args.suite {
        let base = |peers, size_mib, layers, kill_share| Args {
            peers,
            size_mib,
            layers,
            kill_share,
            suite: false,
            json: None,
            ..Args::parse_from(["damselfly-sim"])
        };
        vec![
            base(8, 128, 1, 0.0),
            base(16, 128, 1, 0.0),
            base(1000, 128, 1, 0.0),
            base(1000, 128, 1, 0.05),
            base(10_000, 32, 1, 0.0),
            base(1000, 128, 10, 0.0),
        ]
    } else {
        vec![args]
    };
    let mut reports: Vec<(String, Report)> = Vec::new();
    println!(
        "{}",
        Report::TABLE_HEADER
            .replacen("| peers", "| command | peers", 1)
            .replacen("| ---", "| --- | ---", 1)
    );
    for a in &runs {
        let r = run(&config(a));
        println!("| `{}` {}", command(a), r.table_row());
        reports.push((command(a), r));
    }
    let json = serde_json::to_string_pretty(
        &reports
            .iter()
            .map(|(c, r)| serde_json::json!({ "command": c, "report": r }))
            .collect::<Vec<_>>(),
    )
    .expect("reports serialize");
    match &json_path {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &json) {
                eprintln!("write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        None => println!("{json}"),
    }
}
