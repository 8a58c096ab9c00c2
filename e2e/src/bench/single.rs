//! One peer on unshaped links: a cold `damselfly get` and a cached one
//! against `curl` from the origin, and the peer daemon's peak RSS while it
//! serves several downloads at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::cpu::CpuMeter;
use super::report::SingleReport;
use super::units::Size;
use crate::data::{ensure_space, sha256_file, write_random_file};
use crate::lab::Lab;
use crate::mesh::Mesh;
use crate::origin::Origin;
use crate::process::{Proc, wait_all};

const ORIGIN: &str = "origin";
const SCHEDULER: &str = "sched";
const SEED: &str = "seed";
const PEER: &str = "peer";
pub const CONCURRENT: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(600);

pub struct SingleConfig {
    pub prefix: String,
    pub subnet: u8,
    pub size: Size,
    /// Size of each of the concurrently downloaded blobs.
    pub concurrent_size: Size,
    pub damselfly_bin: Option<PathBuf>,
}

/// Runs the measurement; failures are recorded in the report's `errors`.
pub fn measure(config: &SingleConfig) -> Result<SingleReport> {
    let lab = Lab::new(
        &config.prefix,
        config.subnet,
        &[ORIGIN, SCHEDULER, SEED, PEER],
        None,
    )?;
    // The blobs, the seed's and the peer's stores, and the outputs.
    let needed = 4 * (config.size.0 + CONCURRENT as u64 * config.concurrent_size.0);
    ensure_space(lab.dir(), needed, "the one-peer measurement")?;
    let www = lab.dir().join("www");
    fs::create_dir_all(&www)?;
    write_random_file(&www.join("blob"), config.size.0)?;
    for i in 0..CONCURRENT {
        write_random_file(&www.join(format!("blob{i}")), config.concurrent_size.0)?;
    }
    let expected = sha256_file(&www.join("blob"))?;
    let origin = Origin::start(&lab, ORIGIN, &www, 8080)?;
    let out = lab.dir().join("out");
    fs::create_dir_all(&out)?;

    let mut report = SingleReport {
        size_bytes: config.size.0,
        curl_s: None,
        cold_get_s: None,
        cached_get_s: None,
        cold_vs_curl: None,
        cached_vs_curl: None,
        concurrent_downloads: CONCURRENT,
        concurrent_size_bytes: config.concurrent_size.0,
        peer_peak_rss_bytes: None,
        curl_cpu_s: Default::default(),
        cold_get_cpu_s: Default::default(),
        sha256_ok: false,
        errors: Vec::new(),
    };

    eprintln!("bench: single: curl {}", config.size);
    let curl_out = out.join("curl");
    let mut curl = Command::new("curl");
    curl.args(["-sSf", "-o"]).arg(&curl_out).arg(origin.url("blob"));
    let cpu = CpuMeter::start(named(&[("origin", origin.proc())]));
    let curl_result = timed(&lab, &curl);
    report.curl_cpu_s = cpu.stop();
    match curl_result.and_then(|s| verify(&curl_out, &expected).map(|()| s)) {
        Ok(secs) => report.curl_s = Some(secs),
        Err(e) => report.errors.push(format!("curl: {e:#}")),
    }
    let _ = fs::remove_file(&curl_out);

    if let Err(e) = measure_damselfly(config, &lab, &origin, &out, &expected, &mut report) {
        report.errors.push(format!("damselfly: {e:#}"));
    }
    if let Some(curl) = report.curl_s {
        report.cold_vs_curl = report.cold_get_s.map(|cold| curl / cold);
        report.cached_vs_curl = report.cached_get_s.map(|cached| curl / cached);
    }
    Ok(report)
}

fn measure_damselfly(
    config: &SingleConfig,
    lab: &Lab,
    origin: &Origin,
    out: &Path,
    expected: &str,
    report: &mut SingleReport,
) -> Result<()> {
    let bin = match &config.damselfly_bin {
        Some(bin) => bin.clone(),
        None => crate::bins::damselfly()?,
    };
    let mesh = Mesh::start(lab, &bin, &lab.dir().join("state"), SCHEDULER, SEED, &[PEER])?;
    let url = origin.url("blob");

    eprintln!("bench: single: cold and cached damselfly get");
    for (slot, name) in [
        (&mut report.cold_get_s, "cold"),
        (&mut report.cached_get_s, "cached"),
    ] {
        let path = out.join(name);
        let cpu = (name == "cold").then(|| {
            CpuMeter::start(named(&[
                ("origin", origin.proc()),
                ("seed", &mesh.seed.proc),
                ("peer", &mesh.peer(PEER).proc),
            ]))
        });
        let secs = timed(lab, &mesh.get_command(PEER, &url, &path)).with_context(|| format!("{name} get"))?;
        if let Some(cpu) = cpu {
            report.cold_get_cpu_s = cpu.stop();
        }
        verify(&path, expected).with_context(|| format!("{name} get"))?;
        *slot = Some(secs);
        fs::remove_file(&path)?;
    }
    report.sha256_ok = true;

    eprintln!(
        "bench: single: {CONCURRENT} concurrent gets of {}",
        config.concurrent_size
    );
    let mut jobs = (0..CONCURRENT)
        .map(|i| {
            mesh.start_get(
                lab,
                PEER,
                &origin.url(&format!("blob{i}")),
                &out.join(format!("c{i}")),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let results = wait_all(&mut jobs, TIMEOUT)?;
    report.peer_peak_rss_bytes = mesh.peer(PEER).proc.peak_rss_bytes();
    for result in &results {
        result.ensure_success().context("concurrent get")?;
    }
    Ok(())
}

fn named(procs: &[(&str, &Proc)]) -> Vec<(String, u32)> {
    procs.iter().map(|(n, p)| (n.to_string(), p.pid())).collect()
}

/// Runs `cmd` in the peer host and returns how long it took.
fn timed(lab: &Lab, cmd: &Command) -> Result<f64> {
    let mut job = lab.start(PEER, "timed", cmd)?;
    let result = job.wait(TIMEOUT)?;
    result.ensure_success()?;
    Ok(result.elapsed().as_secs_f64())
}

fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    ensure!(
        actual == expected,
        "{}: sha256 {actual}, expected {expected}",
        path.display()
    );
    Ok(())
}
