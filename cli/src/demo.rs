//! `damselfly demo`: the whole system on one machine (needs root).
//!
//! Installs what is missing (Debian packages), then builds a lab of network
//! namespace hosts: a CNCF registry with a generated test image, a scheduler,
//! a seed peer and three peer hosts, each with its own containerd whose
//! `hosts.toml` names that host's peer proxy. All three pull the image at
//! once through the mesh and run it; the demo prints what the registry sent
//! and where each peer's bytes came from, then removes everything (also on
//! Ctrl-C). The lab itself is `damselfly-e2e`'s, the one the tests use.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::mirror::{MirrorLab, MirrorOptions, human};
use damselfly_e2e::oci::{PACKAGES, missing_programs, which};
use std::process::Command;

/// Lab programs beyond [`damselfly_e2e::oci::PROGRAMS`].
const LAB_PROGRAMS: &[&str] = &["ip", "tc", "nsenter"];

#[derive(clap::Args)]
pub struct Args {
    /// Peer hosts, each with its own containerd.
    #[arg(long, default_value_t = 3)]
    peers: usize,
    /// Random layers in the test image (on top of a busybox layer).
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Size of each random layer, in MiB.
    #[arg(long, default_value_t = 16)]
    layer_mib: u64,
    /// Rate of every host's link (a `tc` rate), or `none`.
    #[arg(long, default_value = "100mbit")]
    rate: String,
    /// Prefix of the lab's namespace and bridge names.
    #[arg(long, default_value = "dfdemo")]
    prefix: String,
    /// The lab's subnet is 10.213.N.0/24.
    #[arg(long, default_value_t = 240)]
    subnet: u8,
    /// Run the mesh without mutual TLS (by default scheduler, seed and peers use certificates
    /// from `damselfly certs init`, written into the lab's directory).
    #[arg(long)]
    no_tls: bool,
    /// Skip the comparison with pulls straight from the registry.
    #[arg(long)]
    no_compare: bool,
    /// Do not install missing Debian packages; fail instead.
    #[arg(long)]
    no_install: bool,
}

pub async fn run(args: Args) -> Result<()> {
    tokio::task::spawn_blocking(move || demo(args))
        .await
        .context("demo thread")?
}

fn demo(args: Args) -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "the demo builds network namespaces and runs containerd: run it as root"
    );
    damselfly_e2e::wait::install_interrupt_handler()?;
    ensure_programs(args.no_install)?;
    let opts = MirrorOptions {
        prefix: args.prefix,
        subnet: args.subnet,
        peers: args.peers,
        layers: args.layers,
        layer_bytes: args.layer_mib << 20,
        rate: (args.rate != "none").then_some(args.rate),
        bin: std::env::current_exe().context("locate this binary")?,
        credentials: None,
        tls: !args.no_tls,
    };
    let m = MirrorLab::start(&opts, |line| println!("==> {line}"))?;
    println!(
        "==> pulling {} on {} hosts at once (ctr image pull, through each host's peer proxy)",
        m.image,
        m.peer_hosts.len()
    );
    let before = m.lab.tx_bytes("origin")?;
    let pulls = m.pull_all()?;
    let mesh_sent = m.lab.tx_bytes("origin")? - before;
    println!("==> running it (ctr run)");
    for (host, out) in m.run_all(&["/bin/busybox", "sh", "-c", "echo hello from the image; ls /data"])? {
        println!(
            "  {host}: {}",
            out.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    println!("\n{}", m.report(&pulls)?);
    let slowest = |p: &[damselfly_e2e::mirror::PullResult]| {
        p.iter().map(|p| p.elapsed.as_secs_f64()).fold(0.0, f64::max)
    };
    println!(
        "through the mesh: last host done after {:.1} s, the registry host sent {}",
        slowest(&pulls),
        human(mesh_sent)
    );
    if !args.no_compare {
        println!("==> for comparison: the same pulls straight from the registry (no mirror)");
        let before = m.lab.tx_bytes("origin")?;
        let direct = m.pull_all_direct()?;
        let sent = m.lab.tx_bytes("origin")? - before;
        println!(
            "straight from the registry: last host done after {:.1} s, the registry host sent {}",
            slowest(&direct),
            human(sent)
        );
    }
    println!("==> cleaning up (containerds, daemons, registry, namespaces)");
    drop(m);
    Ok(())
}

/// Installs the Debian packages of the lab when a program is missing.
fn ensure_programs(no_install: bool) -> Result<()> {
    let mut missing = missing_programs();
    missing.extend(LAB_PROGRAMS.iter().filter(|p| which(p).is_none()));
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        !no_install,
        "missing {}; install: apt-get install {}",
        missing.join(", "),
        PACKAGES.join(" ")
    );
    println!(
        "==> installing {} (missing {})",
        PACKAGES.join(" "),
        missing.join(", ")
    );
    apt(&["update"])?;
    apt(&[&["install", "-y", "--no-install-recommends"][..], PACKAGES].concat())?;
    let still = missing_programs();
    ensure!(
        still.is_empty(),
        "still missing after apt-get: {}",
        still.join(", ")
    );
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("run apt-get")?;
    ensure!(status.success(), "apt-get {} failed: {status}", args.join(" "));
    Ok(())
}
