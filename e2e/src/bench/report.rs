//! The bench's results: `report.json` (these types, serialised) and
//! `report.md` (a table for people and for README.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::disturb::DisturbanceReport;
use super::scale::ScaleReport;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Unix time the run started.
    pub started_unix: u64,
    /// The command line that reproduces the run.
    pub command: String,
    pub setup: Setup,
    pub methods: Vec<MethodReport>,
    /// The single-peer measurement on unshaped links, if it ran.
    pub single: Option<SingleReport>,
    /// The scheduler alone under simulated load, if it ran.
    #[serde(default)]
    pub scale: Option<ScaleReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub hosts: usize,
    /// tc rate of every link, or "none".
    pub rate: String,
    pub rate_bits_per_sec: Option<u64>,
    pub size: String,
    pub size_bytes: u64,
    pub blob_sha256: String,
    /// S/U: the time one link needs to carry the blob once (None if unshaped).
    pub su_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    pub method: String,
    /// True when every host finished and every copy has the blob's sha256.
    pub ok: bool,
    /// Why the method failed as a whole (set-up error, timeout), if it did.
    pub error: Option<String>,
    /// How the method was set up (e.g. seeding policy), for the reader.
    pub notes: String,
    pub hosts: Vec<HostReport>,
    /// Last host done, seconds after all downloads started (None unless ok).
    pub makespan_s: Option<f64>,
    pub median_s: Option<f64>,
    /// makespan / (S/U).
    pub makespan_over_su: Option<f64>,
    /// Bytes the origin host sent during the method (interface counter).
    pub origin_tx_bytes: Option<u64>,
    /// origin_tx_bytes / S.
    pub origin_over_size: Option<f64>,
    /// GETs of the object an object store served (methods `store`, `s3-direct`), from the
    /// server's log.
    #[serde(default)]
    pub storage_gets: Option<usize>,
    /// Body bytes of those GETs, as the server counted them.
    #[serde(default)]
    pub storage_bytes: Option<u64>,
    /// storage_bytes / S.
    #[serde(default)]
    pub storage_over_size: Option<f64>,
    /// Bytes the seed host sent (only the damselfly method uses it).
    #[serde(default)]
    pub seed_tx_bytes: Option<u64>,
    /// Every host's upload counter over time, from the common start.
    #[serde(default)]
    pub timeline: Option<Timeline>,
    /// Largest peak RSS (VmHWM) of the per-host agents: peer daemons for
    /// damselfly, aria2c for bittorrent, curl for direct.
    pub peak_rss_bytes: Option<u64>,
    /// CPU seconds the method's daemons used together (damselfly: scheduler, seed and peer
    /// daemons) from the start of the downloads until the last host was done.
    #[serde(default)]
    pub daemon_cpu_s: Option<f64>,
    /// The same per daemon, and the whole machine's busy seconds (`machine`).
    #[serde(default)]
    pub cpu_s: BTreeMap<String, f64>,
    /// MiB of free memory the guest kernel handed back to the hypervisor during the run
    /// (`process::memory_reported_to_host_kib`; none without free page reporting).
    #[serde(default)]
    pub reported_to_host_mib: Option<f64>,
    /// Whether the method's daemons talked mutual TLS (`--tls`, damselfly only).
    #[serde(default)]
    pub tls: bool,
    /// What else ran on the machine around this method (`--disturb`).
    #[serde(default)]
    pub disturbances: Vec<DisturbanceReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// Seconds from the common start until this host had the blob.
    pub done_s: Option<f64>,
    pub sha256: Option<String>,
    pub sha256_ok: bool,
    pub peak_rss_bytes: Option<u64>,
    /// Bytes this host sent to others during the method (its uploads).
    #[serde(default)]
    pub tx_bytes: Option<u64>,
    pub error: Option<String>,
}

/// Bytes each host had sent (its interface counter) at several moments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// Host names, in the order of `TimelineSample::tx_bytes`.
    pub hosts: Vec<String>,
    pub samples: Vec<TimelineSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineSample {
    /// Seconds after all downloads started.
    pub t_s: f64,
    /// Cumulative bytes sent by each host (counters, not deltas).
    pub tx_bytes: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SingleReport {
    pub size_bytes: u64,
    pub curl_s: Option<f64>,
    pub cold_get_s: Option<f64>,
    pub cached_get_s: Option<f64>,
    /// Cold get throughput / curl throughput (target >= 0.9).
    pub cold_vs_curl: Option<f64>,
    /// Cached get throughput / curl throughput (target >= 2).
    pub cached_vs_curl: Option<f64>,
    /// Concurrent downloads served by one peer daemon for the RSS figure.
    pub concurrent_downloads: usize,
    pub concurrent_size_bytes: u64,
    /// Peak RSS of that peer daemon (target < 100 MiB).
    pub peer_peak_rss_bytes: Option<u64>,
    /// CPU seconds the origin used during curl, and each process (origin,
    /// seed, peer) during the cold get: what the machine's cores had to do.
    #[serde(default)]
    pub curl_cpu_s: BTreeMap<String, f64>,
    #[serde(default)]
    pub cold_get_cpu_s: BTreeMap<String, f64>,
    pub sha256_ok: bool,
    pub errors: Vec<String>,
    /// Links of the one-peer lab (tc rate, or "none").
    #[serde(default)]
    pub rate: String,
    /// The scheduler's `cold_source` ("seed": origin -> seed -> peer; "requester": origin ->
    /// peer, a seed copying from it).
    #[serde(default)]
    pub cold_source: String,
    /// Whether each get named the blob's digest (`--digest`).
    #[serde(default)]
    pub digest: bool,
    /// Every run of curl and a cold get (the fields above are the first run's), each on a blob
    /// of its own.
    #[serde(default)]
    pub runs: Vec<SingleRun>,
}

/// One run of the one-peer measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SingleRun {
    pub curl_s: Option<f64>,
    pub cold_get_s: Option<f64>,
    pub cold_vs_curl: Option<f64>,
    /// CPU seconds during curl (origin, machine) and the cold get (origin, seed, peer, machine).
    pub curl_cpu_s: BTreeMap<String, f64>,
    pub cold_get_cpu_s: BTreeMap<String, f64>,
    /// The same per GiB of the blob: what each hop costs for every GiB it carries.
    pub curl_cpu_s_per_gib: BTreeMap<String, f64>,
    pub cold_get_cpu_s_per_gib: BTreeMap<String, f64>,
    /// Bytes the origin host sent for the cold get, and the seed host received, from its start
    /// to 1 s after it returned (a seed copying from the requester may finish after it), / S.
    #[serde(default)]
    pub origin_tx_over_size: Option<f64>,
    #[serde(default)]
    pub seed_rx_over_size: Option<f64>,
}

impl MethodReport {
    /// Bytes all peer hosts sent together (what they shared with each other).
    pub fn peer_uploads(&self) -> Option<u64> {
        self.hosts.iter().map(|h| h.tx_bytes).sum()
    }

    /// A method that failed before producing per-host results.
    pub fn failed(method: &str, notes: &str, error: String) -> Self {
        MethodReport {
            method: method.to_string(),
            ok: false,
            error: Some(error),
            notes: notes.to_string(),
            hosts: Vec::new(),
            makespan_s: None,
            median_s: None,
            makespan_over_su: None,
            origin_tx_bytes: None,
            origin_over_size: None,
            storage_gets: None,
            storage_bytes: None,
            storage_over_size: None,
            seed_tx_bytes: None,
            timeline: None,
            peak_rss_bytes: None,
            daemon_cpu_s: None,
            reported_to_host_mib: None,
            cpu_s: BTreeMap::new(),
            tls: false,
            disturbances: Vec::new(),
        }
    }
}

impl Report {
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        fs::write(dir.join("report.json"), json + "\n").context("write report.json")?;
        fs::write(dir.join("report.md"), self.markdown()).context("write report.md")?;
        fs::write(dir.join("completion.svg"), super::chart::completion_svg(self))
            .context("write completion.svg")?;
        for method in &self.methods {
            if let Some(svg) = super::chart::uploads_svg(method, &self.setup) {
                let name = format!("uploads-{}.svg", method.method);
                fs::write(dir.join(&name), svg).with_context(|| format!("write {name}"))?;
            }
        }
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Report> {
        let text = fs::read_to_string(dir.join("report.json")).context("read report.json")?;
        serde_json::from_str(&text).context("parse report.json")
    }

    pub fn markdown(&self) -> String {
        let s = &self.setup;
        let mut md = String::new();
        let su = s
            .su_seconds
            .map_or("n/a (unshaped)".to_string(), |v| format!("{v:.1} s"));
        // `--single-only` ran no method: no swarm table.
        if !self.methods.is_empty() {
            let _ = writeln!(
                md,
                "N = {} hosts, links {}, blob {} ({} bytes), S/U = {su}\n",
                s.hosts, s.rate, s.size, s.size_bytes
            );
            md.push_str(
                "| method | last host done | median host done | makespan / (S/U) | origin bytes / S \
                 | storage bytes / S | peer uploads / S | peak RSS per host | CPU s: daemons / machine \
                 | sha256 |\n",
            );
            md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        }
        for m in &self.methods {
            let sha = if m.hosts.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{}/{} ok",
                    m.hosts.iter().filter(|h| h.sha256_ok).count(),
                    m.hosts.len()
                )
            };
            let cpu = match (m.daemon_cpu_s, m.cpu_s.get(super::cpu::MACHINE)) {
                (None, None) => "-".to_string(),
                (daemons, machine) => format!(
                    "{} / {}",
                    opt(daemons, |v| format!("{v:.2}")),
                    opt(machine.copied(), |v| format!("{v:.2}"))
                ),
            };
            let tls = if m.tls { " (TLS)" } else { "" };
            let _ = writeln!(
                md,
                "| {}{tls} | {} | {} | {} | {} | {} | {} | {} | {cpu} | {sha} |",
                m.method,
                opt(m.makespan_s, seconds),
                opt(m.median_s, seconds),
                opt(m.makespan_over_su, |v| format!("{v:.2} x")),
                opt(m.origin_over_size, |v| format!("{v:.2} x")),
                opt(m.storage_over_size, |v| format!("{v:.3} x")),
                opt(m.peer_uploads(), |v| format!(
                    "{:.2} x",
                    v as f64 / s.size_bytes as f64
                )),
                opt(m.peak_rss_bytes, |v| format!("{:.0} MiB", v as f64 / MIB)),
            );
        }
        for m in &self.methods {
            if !m.notes.is_empty() {
                let _ = writeln!(md, "\n`{}`: {}", m.method, m.notes);
            }
            if !m.disturbances.is_empty() {
                let all: Vec<String> = m.disturbances.iter().map(|d| d.summary()).collect();
                let _ = writeln!(md, "\n`{}` ran disturbed by: {}", m.method, all.join("; "));
            }
            if let Some(mib) = m.reported_to_host_mib {
                let _ = writeln!(
                    md,
                    "\n`{}`: the guest handed {mib:.0} MiB of free memory back to the hypervisor during \
                     the run (its next first touch costs a host page fault; ARCHITECTURE.md)",
                    m.method
                );
            }
            if let (Some(gets), Some(over)) = (m.storage_gets, m.storage_over_size) {
                let _ = writeln!(
                    md,
                    "\n`{}`: storage served {over:.3} x S in {gets} GETs of the object (counted by the server)",
                    m.method
                );
            }
            if let Some(seed) = m.seed_tx_bytes.filter(|b| *b > s.size_bytes / 100) {
                let _ = writeln!(
                    md,
                    "\n`{}`: the seed host sent {:.2} x S",
                    m.method,
                    seed as f64 / s.size_bytes as f64
                );
            }
            if let Some(error) = &m.error {
                let _ = writeln!(md, "\n`{}` failed: {}", m.method, first_lines(error, 6));
            }
            for h in m.hosts.iter().filter(|h| h.error.is_some()) {
                let _ = writeln!(
                    md,
                    "\n`{}` on {}: {}",
                    m.method,
                    h.host,
                    first_lines(h.error.as_deref().unwrap_or(""), 4)
                );
            }
        }
        if let Some(single) = &self.single {
            md.push_str(&single.markdown());
        }
        if let Some(scale) = &self.scale {
            md.push_str(&scale_markdown(scale));
        }
        let _ = writeln!(md, "\nReproduce: `{}`", self.command);
        md
    }
}

impl SingleReport {
    fn markdown(&self) -> String {
        let mut md = String::new();
        let mib = self.size_bytes as f64 / MIB;
        let rate = |secs: Option<f64>| opt(secs, |s| format!("{s:.2} s ({:.0} MiB/s)", mib / s));
        let links = if self.rate.is_empty() || self.rate == "none" {
            "unshaped links".to_string()
        } else {
            format!("links {}", self.rate)
        };
        let shape = if self.cold_source.is_empty() {
            String::new()
        } else {
            format!(", cold_source = {}", self.cold_source)
        };
        let digest = if self.digest { ", with --digest" } else { "" };
        let _ = writeln!(md, "\nOne peer, {links}, {mib:.0} MiB{shape}{digest}:\n");
        md.push_str("| measurement | result | target |\n| --- | --- | --- |\n");
        let _ = writeln!(md, "| curl from the origin | {} | |", rate(self.curl_s));
        let _ = writeln!(
            md,
            "| cold `damselfly get` | {} = {} of curl | >= 0.9 x |",
            rate(self.cold_get_s),
            opt(self.cold_vs_curl, |v| format!("{v:.2} x"))
        );
        let cpu = |m: &BTreeMap<String, f64>| {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
            parts.join(", ")
        };
        if !self.cold_get_cpu_s.is_empty() {
            let _ = writeln!(
                md,
                "| CPU seconds: curl / cold get | {} / {} | |",
                cpu(&self.curl_cpu_s),
                cpu(&self.cold_get_cpu_s)
            );
        }
        let _ = writeln!(
            md,
            "| cached `damselfly get` | {} = {} of curl | >= 2 x |",
            rate(self.cached_get_s),
            opt(self.cached_vs_curl, |v| format!("{v:.2} x"))
        );
        let _ = writeln!(
            md,
            "| peer daemon peak RSS, {} concurrent gets of {:.0} MiB | {} | < 100 MiB |",
            self.concurrent_downloads,
            self.concurrent_size_bytes as f64 / MIB,
            opt(self.peer_peak_rss_bytes, |v| format!("{:.0} MiB", v as f64 / MIB))
        );
        if self.runs.len() > 1 || self.runs.iter().any(|r| !r.cold_get_cpu_s_per_gib.is_empty()) {
            md.push_str(
                "\n| run | curl | cold get | cold / curl | CPU s per GiB, curl | CPU s per GiB, cold get | origin sent / S | seed received / S |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
            );
            for (i, r) in self.runs.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    i + 1,
                    rate(r.curl_s),
                    rate(r.cold_get_s),
                    opt(r.cold_vs_curl, |v| format!("{v:.2} x")),
                    cpu(&r.curl_cpu_s_per_gib),
                    cpu(&r.cold_get_cpu_s_per_gib),
                    opt(r.origin_tx_over_size, |v| format!("{v:.3}")),
                    opt(r.seed_rx_over_size, |v| format!("{v:.3}"))
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(md, "\nsingle-peer error: {}", first_lines(e, 6));
        }
        md
    }
}

fn scale_markdown(scale: &ScaleReport) -> String {
    let mut md = String::new();
    match (&scale.result, &scale.error) {
        (Some(r), _) => {
            let _ = writeln!(
                md,
                "\nScheduler alone: {} simulated peers on {} hosts across {} tasks ({} registrations in flight):\n",
                r.peers, r.hosts, r.tasks, r.concurrency
            );
            md.push_str("| decisions/s | p50 | p99 | max | errors |\n| --- | --- | --- | --- | --- |\n");
            let _ = writeln!(
                md,
                "| {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                r.decisions_per_sec, r.p50_ms, r.p99_ms, r.max_ms, r.errors
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(md, "\nScheduler scale run failed: {}", first_lines(e, 6));
        }
        (None, None) => {}
    }
    md
}

/// Seconds with one decimal, or more for short times.
fn seconds(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3} s")
    } else {
        format!("{v:.1} s")
    }
}

fn opt<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map_or("-".to_string(), show)
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" / ")
}
