//! One peer, on unshaped links or links shaped to a rate of their own: a cold `damselfly
//! get` and a cached one against `curl` from the origin (`runs` times, each on a blob of
//! its own), the CPU seconds of each hop per GiB, and the peer daemon's peak RSS while it
//! serves several downloads at once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::cpu::CpuMeter;
use super::report::{SingleReport, SingleRun};
use super::units::{Rate, Size};
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
    /// Links of this lab (its own, not the swarm's).
    pub rate: Rate,
    /// Runs of curl and a cold get, each on a blob of its own.
    pub runs: usize,
    /// The scheduler's `cold_source` (`seed` or `requester`).
    pub cold_source: String,
    /// Each get names the blob's digest (`--digest`; `cold_source = "requester"` needs it).
    pub digest: bool,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn blob_name(run: usize) -> String {
    if run == 0 {
        "blob".into()
    } else {
        format!("blob-run{run}")
    }
}

/// Runs the measurement; failures are recorded in the report's `errors`.
pub fn measure(config: &SingleConfig) -> Result<SingleReport> {
    let runs = config.runs.max(1);
    let lab = Lab::new(
        &config.prefix,
        config.subnet,
        &[ORIGIN, SCHEDULER, SEED, PEER],
        config.rate.tc(),
    )?;
    // The blobs, the seed's and the peer's stores, and the outputs.
    let needed = 4 * (runs as u64 * config.size.0 + CONCURRENT as u64 * config.concurrent_size.0);
    ensure_space(lab.dir(), needed, "the one-peer measurement")?;
    let www = lab.dir().join("www");
    fs::create_dir_all(&www)?;
    let mut expected = Vec::new();
    for run in 0..runs {
        let path = www.join(blob_name(run));
        write_random_file(&path, config.size.0)?;
        expected.push(sha256_file(&path)?);
    }
    for i in 0..CONCURRENT {
        write_random_file(&www.join(format!("blob{i}")), config.concurrent_size.0)?;
    }
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
        rate: config.rate.to_string(),
        cold_source: config.cold_source.clone(),
        digest: config.digest,
        runs: vec![SingleRun::default(); runs],
    };

    for (run, expected) in expected.iter().enumerate() {
        eprintln!("bench: single: curl {} (run {})", config.size, run + 1);
        let curl_out = out.join("curl");
        let mut curl = Command::new("curl");
        curl.args(["-sSf", "-o"])
            .arg(&curl_out)
            .arg(origin.url(&blob_name(run)));
        let cpu = CpuMeter::start(named(&[("origin", origin.proc())]));
        let curl_result = timed(&lab, &curl);
        let r = &mut report.runs[run];
        r.curl_cpu_s = cpu.stop();
        r.curl_cpu_s_per_gib = per_gib(&r.curl_cpu_s, config.size.0);
        match curl_result.and_then(|s| verify(&curl_out, expected).map(|()| s)) {
            Ok(secs) => r.curl_s = Some(secs),
            Err(e) => report.errors.push(format!("curl: {e:#}")),
        }
        let _ = fs::remove_file(&curl_out);
    }
    report.curl_s = report.runs[0].curl_s;
    report.curl_cpu_s = report.runs[0].curl_cpu_s.clone();

    if let Err(e) = measure_damselfly(config, &lab, &origin, &out, &expected, &mut report) {
        report.errors.push(format!("damselfly: {e:#}"));
    }
    for r in &mut report.runs {
        if let (Some(curl), Some(cold)) = (r.curl_s, r.cold_get_s) {
            r.cold_vs_curl = Some(curl / cold);
        }
    }
    if let Some(curl) = report.curl_s {
        report.cold_vs_curl = report.cold_get_s.map(|cold| curl / cold);
        report.cached_vs_curl = report.cached_get_s.map(|cached| curl / cached);
    }
    Ok(report)
}

/// CPU seconds per GiB of a blob of `bytes`.
fn per_gib(
    cpu: &std::collections::BTreeMap<String, f64>,
    bytes: u64,
) -> std::collections::BTreeMap<String, f64> {
    let gib = bytes as f64 / GIB;
    cpu.iter().map(|(k, v)| (k.clone(), v / gib)).collect()
}

fn measure_damselfly(
    config: &SingleConfig,
    lab: &Lab,
    origin: &Origin,
    out: &Path,
    expected: &[String],
    report: &mut SingleReport,
) -> Result<()> {
    let bin = match &config.damselfly_bin {
        Some(bin) => bin.clone(),
        None => crate::bins::damselfly()?,
    };
    let state = lab.dir().join("state");
    fs::create_dir_all(&state)?;
    let scheduler_toml = state.join("scheduler.toml");
    fs::write(
        &scheduler_toml,
        format!("cold_source = {:?}\n", config.cold_source),
    )?;
    let mesh = Mesh::start_with_scheduler_args(
        lab,
        &bin,
        &state,
        SCHEDULER,
        SEED,
        &[PEER],
        &["--config".to_string(), scheduler_toml.display().to_string()],
    )?;
    let get = |url: &str, path: &Path, expected: &str| {
        let mut cmd = mesh.get_command(PEER, url, path);
        if config.digest {
            cmd.arg("--digest").arg(format!("sha256:{expected}"));
        }
        cmd
    };

    for (run, expected) in expected.iter().enumerate() {
        eprintln!("bench: single: cold damselfly get (run {})", run + 1);
        let url = origin.url(&blob_name(run));
        let path = out.join("cold");
        let before = (lab.link_counters(ORIGIN)?, lab.link_counters(SEED)?);
        let cpu = CpuMeter::start(named(&[
            ("origin", origin.proc()),
            ("seed", &mesh.seed.proc),
            ("peer", &mesh.peer(PEER).proc),
        ]));
        let secs = timed(lab, &get(&url, &path, expected)).context("cold get")?;
        let r = &mut report.runs[run];
        r.cold_get_cpu_s = cpu.stop();
        std::thread::sleep(Duration::from_secs(1));
        let after = (lab.link_counters(ORIGIN)?, lab.link_counters(SEED)?);
        let size = config.size.0 as f64;
        r.origin_tx_over_size = Some(after.0.tx_bytes.saturating_sub(before.0.tx_bytes) as f64 / size);
        r.seed_rx_over_size = Some(after.1.rx_bytes.saturating_sub(before.1.rx_bytes) as f64 / size);
        r.cold_get_cpu_s_per_gib = per_gib(&r.cold_get_cpu_s, config.size.0);
        verify(&path, expected).context("cold get")?;
        r.cold_get_s = Some(secs);
        fs::remove_file(&path)?;
    }
    report.cold_get_s = report.runs[0].cold_get_s;
    report.cold_get_cpu_s = report.runs[0].cold_get_cpu_s.clone();

    eprintln!("bench: single: cached damselfly get");
    let path = out.join("cached");
    let secs = timed(lab, &get(&origin.url(&blob_name(0)), &path, &expected[0])).context("cached get")?;
    verify(&path, &expected[0]).context("cached get")?;
    report.cached_get_s = Some(secs);
    fs::remove_file(&path)?;
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
