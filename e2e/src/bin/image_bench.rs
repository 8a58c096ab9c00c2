//! `damselfly-image-bench`: containerd hosts pull one image at once and start a container of
//! it, straight from the registry, through the peer proxy, and through the proxy with the
//! remote snapshotter. See `damselfly_e2e::imagebench` and README.md ("Performance").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use damselfly_e2e::bench::units::{Rate, Size};
use damselfly_e2e::imagebench::{self, Config, ImageMethod};

#[derive(Parser)]
#[command(
    name = "damselfly-image-bench",
    about = "Image pulls on a lab of containerd hosts: direct, through the registry mirror, and with the remote snapshotter (needs root)"
)]
struct Args {
    /// Number of containerd hosts pulling at once.
    #[arg(long, default_value_t = 8)]
    hosts: usize,
    /// Rate of every link each way, in tc notation, or "none".
    #[arg(long, default_value = "100mbit")]
    rate: Rate,
    /// Random layers on top of the busybox layer.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Size of each random layer.
    #[arg(long, default_value = "16MiB")]
    layer_size: Size,
    /// Methods to compare, comma-separated: direct, mirror, snapshotter.
    #[arg(long, value_delimiter = ',', default_value = "direct,mirror,snapshotter")]
    methods: Vec<ImageMethod>,
    /// Runs of each unpacker in the one-node unpack measurement (0 skips it).
    #[arg(long, default_value_t = 3)]
    unpack_runs: usize,
    /// The snapshotter's `[remote] concurrency` (layers fetched and unpacked at once;
    /// default: the snapshotter's own default).
    #[arg(long)]
    snapshotter_concurrency: Option<usize>,
    /// Longest a host may take from the start to a running container, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Directory for report.json and report.md.
    #[arg(long, default_value = "image-bench-out")]
    out: PathBuf,
    /// The damselfly binary (default: $DAMSELFLY_BIN, else next to this one, else target/debug).
    #[arg(long)]
    damselfly_bin: Option<PathBuf>,
    /// Lab name prefix (namespaces, bridge).
    #[arg(long, default_value = "dfsn")]
    prefix: String,
    /// Third octet of the lab subnet 10.213.X.0/24.
    #[arg(long, default_value_t = 130)]
    subnet: u8,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("damselfly-image-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// True when every method and the unpack measurement succeeded.
fn run() -> Result<bool> {
    damselfly_e2e::wait::install_interrupt_handler()?;
    let args = Args::parse();
    let config = Config {
        hosts: args.hosts,
        rate: args.rate,
        layers: args.layers,
        layer_size: args.layer_size,
        methods: args.methods,
        unpack_runs: args.unpack_runs,
        snapshotter_concurrency: args.snapshotter_concurrency,
        out: args.out,
        damselfly_bin: args.damselfly_bin,
        prefix: args.prefix,
        subnet: args.subnet,
        timeout: Duration::from_secs(args.timeout),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = imagebench::run(&config)?;
    print!("{}", report.markdown());
    eprintln!("image-bench: report in {}", config.out.display());
    let unpack_ok = report.unpack.as_ref().is_none_or(|u| u.errors.is_empty());
    Ok(report.methods.iter().all(|m| m.ok) && unpack_ok)
}
