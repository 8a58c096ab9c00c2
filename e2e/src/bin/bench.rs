//! `damselfly-bench`: the swarm benchmark. See `damselfly_e2e::bench` and
//! README.md ("Performance").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use damselfly_e2e::bench::disturb::{DisturbConfig, Kind};
use damselfly_e2e::bench::methods::MethodName;
use damselfly_e2e::bench::units::{Rate, Size};
use damselfly_e2e::bench::{self, Config};

#[derive(Parser)]
#[command(
    name = "damselfly-bench",
    about = "Damselfly vs HTTP vs BitTorrent (and store, s3-direct, cache) on a lab of shaped network-namespace hosts (needs root)"
)]
struct Args {
    /// Number of downloading peer hosts.
    #[arg(long, default_value_t = 8)]
    hosts: usize,
    /// Rate of every link each way, in tc notation, or "none".
    #[arg(long, default_value = "100mbit")]
    rate: Rate,
    /// Size of the blob.
    #[arg(long, default_value = "128MiB")]
    size: Size,
    /// Methods to compare, comma-separated: damselfly, direct, bittorrent (the blob over HTTP);
    /// store, s3-direct (the blob as an object in moto S3 on the origin host; needs the moto
    /// venv of scripts/install-deps.sh); cache (cache import on the origin host, export on
    /// every host).
    #[arg(long, value_delimiter = ',', default_value = "damselfly,direct,bittorrent")]
    methods: Vec<MethodName>,
    /// Directory for report.json, report.md and completion.svg.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// The damselfly binary (default: $DAMSELFLY_BIN, else next to this one, else target/debug).
    #[arg(long)]
    damselfly_bin: Option<PathBuf>,
    /// Mutual TLS on for every daemon of the damselfly method (scheduler, seed, peers).
    #[arg(long)]
    tls: bool,
    /// Run something else around each measured method, comma-separated or repeated: `cpu`
    /// (a spinner per core), `disk` (a buffered writer), `dirty` (page cache left dirty just
    /// before the start), `bittorrent` (the bittorrent method first, not counted).
    #[arg(long, value_enum, value_delimiter = ',')]
    disturb: Vec<Kind>,
    /// Spinner processes of `--disturb cpu` (0: one per core).
    #[arg(long, default_value_t = 0)]
    disturb_cpu_procs: usize,
    /// Nice value of the spinners and the disk writer (0: normal priority, even if the bench is niced).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    disturb_nice: i32,
    /// Size of the file `--disturb disk` keeps rewriting from its start (make it larger than
    /// the kernel's background dirty threshold, or the rewrites never reach the disk).
    #[arg(long, default_value = "4GiB")]
    disturb_disk_file_size: Size,
    /// Bytes `--disturb dirty` writes to the page cache before the start.
    #[arg(long, default_value = "2GiB")]
    disturb_dirty_size: Size,
    /// Skip the one-peer measurement.
    #[arg(long)]
    no_single: bool,
    /// Only the one-peer measurement: no swarm lab, no method, no scale run.
    #[arg(long, conflicts_with = "no_single")]
    single_only: bool,
    /// Links of the one-peer lab, in tc notation, or "none" (unshaped).
    #[arg(long, default_value = "none")]
    single_rate: Rate,
    /// Runs of curl and a cold get in the one-peer lab, each on a blob of its own.
    #[arg(long, default_value_t = 1)]
    single_runs: usize,
    /// The scheduler's `cold_source` for the damselfly method and the one-peer lab: `seed`
    /// (origin -> seed -> peer) or `requester` (the first requester fetches from the origin and
    /// is the source, a seed copies it through the mesh; implies --digest).
    #[arg(long, default_value = "seed", value_parser = ["seed", "requester"])]
    cold_source: String,
    /// Every `damselfly get` names the blob's sha256 (`--digest`).
    #[arg(long)]
    digest: bool,
    /// Blob size of the one-peer measurement.
    #[arg(long, default_value = "256MiB")]
    single_size: Size,
    /// Size of each of the 8 blobs the one peer downloads at once (peak RSS).
    #[arg(long, default_value = "64MiB")]
    single_concurrent_size: Size,
    /// Simulated peers for the scheduler scale run (0 skips it; it also needs the damselfly method).
    #[arg(long, default_value_t = 10_000)]
    scale_peers: usize,
    /// Tasks the simulated peers are spread across.
    #[arg(long, default_value_t = 100)]
    scale_tasks: usize,
    /// Lab name prefix (namespaces, bridge).
    #[arg(long, default_value = "dfbench")]
    prefix: String,
    /// Third octet of the lab subnet 10.213.X.0/24 (the one-peer and scale labs use X+1, X+2).
    #[arg(long, default_value_t = 10)]
    subnet: u8,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("damselfly-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// True when every method succeeded.
fn run() -> Result<bool> {
    damselfly_e2e::wait::install_interrupt_handler()?;
    let args = Args::parse();
    let damselfly = args.methods.contains(&MethodName::Damselfly);
    let single = args.single_only || (!args.no_single && damselfly);
    let methods = if args.single_only {
        Vec::new()
    } else {
        args.methods
    };
    let config = Config {
        hosts: args.hosts,
        rate: args.rate,
        size: args.size,
        methods,
        out: args.out,
        damselfly_bin: args.damselfly_bin,
        tls: args.tls,
        disturb: DisturbConfig {
            kinds: args.disturb,
            cpu_procs: args.disturb_cpu_procs,
            nice: args.disturb_nice,
            disk_file_size: args.disturb_disk_file_size,
            dirty_size: args.disturb_dirty_size,
        },
        single,
        single_size: args.single_size,
        single_concurrent_size: args.single_concurrent_size,
        single_rate: args.single_rate,
        single_runs: args.single_runs,
        digest: args.digest || args.cold_source == "requester",
        cold_source: args.cold_source,
        scale_peers: if damselfly && !args.single_only {
            args.scale_peers
        } else {
            0
        },
        scale_tasks: args.scale_tasks,
        prefix: args.prefix,
        subnet: args.subnet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = bench::run(&config)?;
    print!("{}", report.markdown());
    eprintln!("bench: report in {}", config.out.display());
    let single_ok = report.single.as_ref().is_none_or(|s| s.errors.is_empty());
    let scale_ok = report.scale.as_ref().is_none_or(|s| s.error.is_none());
    Ok(report.methods.iter().all(|m| m.ok) && single_ok && scale_ok)
}
