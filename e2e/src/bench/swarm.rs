//! The swarm lab and the runner that measures one method in it.
//!
//! Hosts: `origin` (serves the blob over HTTP), `sched` (scheduler or
//! tracker), `seed`, and `peer1`..`peerN` that download. A method starts
//! what it needs (daemons, trackers) in `prepare`, then the runner starts
//! all N downloads at once and records when each host has the blob.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cpu::{CpuMeter, MACHINE};
use super::report::{HostReport, MethodReport, Timeline, TimelineSample};
use super::units::{Rate, Size};
use crate::data::{ensure_space, sha256_file, write_random_file};
use crate::lab::Lab;
use crate::origin::Origin;
use crate::process::{Job, memory_reported_to_host_kib, peak_rss_bytes, tail};
use crate::wait::check_interrupted;

pub const ORIGIN: &str = "origin";
pub const SCHEDULER: &str = "sched";
pub const SEED: &str = "seed";
pub const ORIGIN_PORT: u16 = 8080;
pub const BLOB: &str = "blob";
/// Unshaped veth links carry roughly this much; used only for timeouts.
const UNSHAPED_BITS_PER_SEC: f64 = 1e9;
/// How often the runner samples the agents' peak RSS.
const RSS_SAMPLE: Duration = Duration::from_millis(100);
/// How often the runner samples every host's interface counters.
const TIMELINE_SAMPLE: Duration = Duration::from_millis(250);

/// The lab, the blob and its origin, shared by every method of a run.
pub struct Swarm {
    pub lab: Lab,
    pub origin: Origin,
    pub peers: Vec<String>,
    pub blob: PathBuf,
    pub blob_sha256: String,
    pub size: Size,
    pub rate: Rate,
}

impl Swarm {
    pub fn build(prefix: &str, subnet: u8, peers: usize, rate: Rate, size: Size) -> Result<Swarm> {
        let peers: Vec<String> = (1..=peers).map(|i| format!("peer{i}")).collect();
        let mut hosts = vec![ORIGIN, SCHEDULER, SEED];
        hosts.extend(peers.iter().map(String::as_str));
        let lab = Lab::new(prefix, subnet, &hosts, rate.tc())?;
        // The blob, and per peer host a copy in its store plus the output file.
        let needed = size.0 * (2 * peers.len() as u64 + 2);
        ensure_space(
            lab.dir(),
            needed,
            &format!("a swarm of {} hosts with a {size} blob", peers.len()),
        )?;
        let www = lab.dir().join("www");
        fs::create_dir_all(&www)?;
        let blob = www.join(BLOB);
        write_random_file(&blob, size.0)?;
        let blob_sha256 = sha256_file(&blob)?;
        let origin = Origin::start(&lab, ORIGIN, &www, ORIGIN_PORT)?;
        Ok(Swarm {
            lab,
            origin,
            peers,
            blob,
            blob_sha256,
            size,
            rate,
        })
    }

    pub fn blob_url(&self) -> String {
        self.origin.url(BLOB)
    }

    /// S/U in seconds, if links are shaped.
    pub fn su_seconds(&self) -> Option<f64> {
        self.rate
            .bits_per_sec()
            .map(|bits| self.size.0 as f64 * 8.0 / bits as f64)
    }

    /// Generous: every host fetching the whole blob through one link, 4 times over.
    fn timeout(&self) -> Duration {
        let one_copy = self
            .su_seconds()
            .unwrap_or(self.size.0 as f64 * 8.0 / UNSHAPED_BITS_PER_SEC);
        Duration::from_secs_f64(60.0 + 4.0 * one_copy * self.peers.len() as f64)
    }
}

/// One host's download, as a method started it.
pub struct Download {
    pub job: Job,
    /// Where the blob will be.
    pub output: PathBuf,
    /// If set, the host is done when this file exists (the client keeps
    /// running, e.g. to seed); otherwise when the client exits 0.
    pub done_marker: Option<PathBuf>,
    /// The process whose peak RSS counts for this host (a peer daemon, or
    /// the client itself).
    pub agent_pid: u32,
}

/// A way to get the blob onto every peer host.
pub trait Method {
    fn name(&self) -> &'static str;
    /// How the method is set up, for the report.
    fn notes(&self) -> String;
    /// Starts trackers, seeds or daemons in the lab; `workdir` is the
    /// method's own directory.
    fn prepare(&mut self, swarm: &Swarm, workdir: &Path) -> Result<()>;
    /// Starts the download on `host` into `out_dir`.
    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download>;
    /// Whether the method's own connections use TLS, for the report.
    fn tls(&self) -> bool {
        false
    }
    /// The long-running processes `prepare` started (name, pid), whose CPU time the report
    /// counts from the start of the downloads until the last host is done.
    fn daemons(&self) -> Vec<(String, u32)> {
        Vec::new()
    }
    /// (GETs of the object, body bytes) an object store served during the method, counted at
    /// the server; `None` for methods without one.
    fn storage_served(&self) -> Option<(usize, u64)> {
        None
    }
    /// Stops whatever `prepare` started.
    fn stop(&mut self);
}

/// Measures `method`: all downloads at once, per-host completion, origin
/// bytes, peak RSS, the daemons' CPU time, and the sha256 of every copy.
/// Failures end up in the report, never as an error.
pub fn measure(swarm: &Swarm, method: &mut dyn Method) -> MethodReport {
    let name = method.name();
    let tls = if method.tls() { " (TLS on)" } else { "" };
    eprintln!("bench: {name}{tls}: {} hosts", swarm.peers.len());
    let mut report = match Measurement::run(swarm, method) {
        Ok(measurement) => {
            let mut report = measurement.into_report(swarm, name, method.notes());
            if let Some((gets, bytes)) = method.storage_served() {
                report.storage_gets = Some(gets);
                report.storage_bytes = Some(bytes);
                report.storage_over_size = Some(bytes as f64 / swarm.size.0 as f64);
            }
            report
        }
        Err(e) => MethodReport::failed(name, &method.notes(), format!("{e:#}")),
    };
    report.tls = method.tls();
    method.stop();
    let workdir = swarm.lab.dir().join(name);
    if std::env::var(crate::lab::KEEP_ENV).is_err() {
        let _ = fs::remove_dir_all(workdir);
    }
    match (&report.error, report.makespan_s) {
        (Some(e), _) => eprintln!("bench: {name}: failed: {}", e.lines().next().unwrap_or("")),
        (None, Some(m)) => eprintln!("bench: {name}: last host done after {m:.1} s"),
        (None, None) => eprintln!("bench: {name}: some hosts failed"),
    }
    report
}

struct HostState {
    host: String,
    download: Download,
    done: Option<Duration>,
    error: Option<String>,
    peak_rss: Option<u64>,
    tx_bytes: Option<u64>,
}

struct Measurement {
    hosts: Vec<HostState>,
    origin_tx: u64,
    seed_tx: u64,
    timeline: Timeline,
    cpu_s: BTreeMap<String, f64>,
    reported_to_host_mib: Option<f64>,
}

impl Measurement {
    fn run(swarm: &Swarm, method: &mut dyn Method) -> Result<Measurement> {
        let workdir = swarm.lab.dir().join(method.name());
        fs::create_dir_all(&workdir)?;
        let tx_before = swarm.lab.tx_bytes(ORIGIN)?;
        let seed_tx_before = swarm.lab.tx_bytes(SEED)?;
        let peers_tx_before = swarm
            .peers
            .iter()
            .map(|h| swarm.lab.tx_bytes(h))
            .collect::<Result<Vec<_>>>()?;
        method.prepare(swarm, &workdir).context("prepare")?;

        let cpu = CpuMeter::start(method.daemons());
        let reported_before = memory_reported_to_host_kib();
        let start = Instant::now();
        let mut hosts = Vec::new();
        for host in &swarm.peers {
            let out_dir = workdir.join("out").join(host);
            fs::create_dir_all(&out_dir)?;
            let download = method
                .start(swarm, host, &out_dir)
                .with_context(|| format!("start on {host}"))?;
            hosts.push(HostState {
                host: host.clone(),
                download,
                done: None,
                error: None,
                peak_rss: None,
                tx_bytes: None,
            });
        }
        let deadline = start + swarm.timeout();
        let mut next_sample = Instant::now();
        let mut timeline = Timeline::new(swarm);
        let mut next_timeline = Instant::now();
        while hosts.iter().any(|h| h.done.is_none() && h.error.is_none()) {
            for h in hosts.iter_mut() {
                h.poll(start)?;
            }
            if Instant::now() >= next_sample {
                hosts.iter_mut().for_each(HostState::sample_rss);
                next_sample += RSS_SAMPLE;
            }
            if Instant::now() >= next_timeline {
                timeline.sample(swarm, start)?;
                next_timeline += TIMELINE_SAMPLE;
            }
            check_interrupted()?;
            if Instant::now() >= deadline {
                for h in hosts.iter_mut().filter(|h| h.done.is_none() && h.error.is_none()) {
                    h.error = Some(format!("not done after {:?}", swarm.timeout()));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        timeline.sample(swarm, start)?;
        let cpu_s = cpu.stop();
        let reported_to_host_mib = reported_before
            .zip(memory_reported_to_host_kib())
            .map(|(before, now)| now.saturating_sub(before) as f64 / 1024.0);
        // Daemons still run: their VmHWM now is their exact peak.
        hosts.iter_mut().for_each(HostState::sample_rss);
        let origin_tx = swarm.lab.tx_bytes(ORIGIN)? - tx_before;
        let seed_tx = swarm.lab.tx_bytes(SEED)? - seed_tx_before;
        for (h, before) in hosts.iter_mut().zip(peers_tx_before) {
            h.tx_bytes = Some(swarm.lab.tx_bytes(&h.host)? - before);
        }
        for h in hosts.iter_mut() {
            h.download.job.kill()?;
        }
        Ok(Measurement {
            hosts,
            origin_tx,
            seed_tx,
            timeline,
            cpu_s,
            reported_to_host_mib,
        })
    }

    fn into_report(self, swarm: &Swarm, name: &str, notes: String) -> MethodReport {
        let size = swarm.size.0 as f64;
        let hosts: Vec<HostReport> = self
            .hosts
            .into_iter()
            .map(|h| h.into_report(&swarm.blob_sha256))
            .collect();
        let ok = hosts.iter().all(|h| h.error.is_none() && h.sha256_ok);
        let mut done: Vec<f64> = hosts.iter().filter_map(|h| h.done_s).collect();
        done.sort_by(f64::total_cmp);
        let makespan = ok.then(|| done.last().copied()).flatten();
        let daemons = self.cpu_s.iter().filter(|(name, _)| *name != MACHINE);
        let daemon_cpu_s = (daemons.clone().count() > 0).then(|| daemons.map(|(_, s)| s).sum());
        MethodReport {
            method: name.to_string(),
            ok,
            error: None,
            notes,
            makespan_s: makespan,
            median_s: ok.then(|| median(&done)).flatten(),
            makespan_over_su: makespan.zip(swarm.su_seconds()).map(|(m, su)| m / su),
            origin_tx_bytes: Some(self.origin_tx),
            origin_over_size: Some(self.origin_tx as f64 / size),
            storage_gets: None,
            storage_bytes: None,
            storage_over_size: None,
            seed_tx_bytes: Some(self.seed_tx),
            timeline: Some(self.timeline),
            peak_rss_bytes: hosts.iter().filter_map(|h| h.peak_rss_bytes).max(),
            daemon_cpu_s,
            cpu_s: self.cpu_s,
            reported_to_host_mib: self.reported_to_host_mib,
            tls: false,
            disturbances: Vec::new(),
            hosts,
        }
    }
}

impl HostState {
    fn poll(&mut self, start: Instant) -> Result<()> {
        if self.done.is_some() || self.error.is_some() {
            return Ok(());
        }
        if let Some(marker) = &self.download.done_marker
            && marker.exists()
        {
            self.done = Some(start.elapsed());
            return Ok(());
        }
        let Some(result) = self.download.job.poll()? else {
            return Ok(());
        };
        if result.success() && self.download.done_marker.is_none() {
            self.done = Some(result.finished - start);
        } else {
            let log = fs::read_to_string(&result.log).unwrap_or_default();
            self.error = Some(format!(
                "{} ({}):\n{}",
                result.status,
                result.log.display(),
                tail(&log, 10)
            ));
        }
        Ok(())
    }

    fn sample_rss(&mut self) {
        if let Some(rss) = peak_rss_bytes(self.download.agent_pid) {
            self.peak_rss = Some(self.peak_rss.map_or(rss, |p| p.max(rss)));
        }
    }

    fn into_report(self, expected_sha256: &str) -> HostReport {
        let mut error = self.error;
        let sha256 = match (&error, sha256_file(&self.download.output)) {
            (None, Ok(sha)) => Some(sha),
            (None, Err(e)) => {
                error = Some(format!("{e:#}"));
                None
            }
            (Some(_), _) => None,
        };
        let sha256_ok = sha256.as_deref() == Some(expected_sha256);
        if error.is_none() && !sha256_ok {
            error = Some(format!("sha256 mismatch: {}", sha256.as_deref().unwrap_or("-")));
        }
        HostReport {
            host: self.host,
            done_s: self.done.map(|d| d.as_secs_f64()),
            sha256,
            sha256_ok,
            peak_rss_bytes: self.peak_rss,
            tx_bytes: self.tx_bytes,
            error,
        }
    }
}

impl Timeline {
    /// An empty timeline over the origin, the seed and every peer host.
    fn new(swarm: &Swarm) -> Timeline {
        let mut hosts = vec![ORIGIN.to_string(), SEED.to_string()];
        hosts.extend(swarm.peers.iter().cloned());
        Timeline {
            hosts,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, swarm: &Swarm, start: Instant) -> Result<()> {
        let t_s = start.elapsed().as_secs_f64();
        let tx_bytes = self
            .hosts
            .iter()
            .map(|h| swarm.lab.link_counters(h).map(|c| c.tx_bytes))
            .collect::<Result<Vec<_>>>()?;
        self.samples.push(TimelineSample { t_s, tx_bytes });
        Ok(())
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}
