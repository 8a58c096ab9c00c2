//! The image bench's results: `report.json` (these types, serialised) and `report.md` (tables
//! for people and for README.md).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageReport {
    /// Unix time the run started.
    pub started_unix: u64,
    /// The command line that reproduces the run.
    pub command: String,
    pub setup: ImageSetup,
    pub methods: Vec<ImageMethodReport>,
    /// One node's unpack throughput with the layers already local, if it ran.
    pub unpack: Option<UnpackReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSetup {
    /// containerd hosts pulling at once.
    pub hosts: usize,
    /// tc rate of every link, or "none".
    pub rate: String,
    pub rate_bits_per_sec: Option<u64>,
    /// Random layers on top of the busybox layer, and the size of each.
    pub random_layers: usize,
    pub random_layer_bytes: u64,
    /// The image's reference at the lab registry.
    pub image: String,
    /// Every layer blob (compressed), busybox first: `(digest, bytes)`.
    pub layers: Vec<(String, u64)>,
    /// S: the image's compressed layer bytes together.
    pub layer_bytes: u64,
    /// S/U: the time one link needs to carry the layers once (None if unshaped).
    pub su_seconds: Option<f64>,
    /// The snapshotter's `[remote] concurrency` (None: its default).
    pub snapshotter_concurrency: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMethodReport {
    pub method: String,
    /// True when every host ran a container of the image and it saw every layer.
    pub ok: bool,
    /// Why the method failed as a whole (set-up error, timeout), if it did.
    pub error: Option<String>,
    /// How the method pulls and unpacks, for the reader.
    pub notes: String,
    pub hosts: Vec<ImageHostReport>,
    /// Last host with a running container, seconds after every `crictl pull` started.
    pub makespan_s: Option<f64>,
    pub median_s: Option<f64>,
    /// makespan / (S/U).
    pub makespan_over_su: Option<f64>,
    /// Last `crictl pull` to return.
    pub last_pull_s: Option<f64>,
    /// Bytes the registry host sent from the start until every container ran (interface
    /// counter; manifests, config and layers, all hosts).
    pub registry_tx_bytes: Option<u64>,
    /// registry_tx_bytes / S.
    pub registry_over_size: Option<f64>,
    /// Bytes the seed host sent (the mesh methods).
    pub seed_tx_bytes: Option<u64>,
    /// Layers the snapshotters took from the mesh, and Prepares that fell back to
    /// containerd's own pull, over all hosts (the snapshotter method).
    pub remote_layers: Option<u64>,
    pub fallbacks: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageHostReport {
    pub host: String,
    /// Seconds from the common start until this host's `crictl pull` returned.
    pub pulled_s: Option<f64>,
    /// ... until `crictl start` of a container of the image returned (the task runs then).
    pub running_s: Option<f64>,
    /// The snapshotter's counters on this host (the snapshotter method).
    pub remote_layers: Option<u64>,
    pub fallbacks: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnpackReport {
    /// The layer bytes (compressed) every run makes into ready snapshots.
    pub layer_bytes: u64,
    /// `damselfly snapshotter`, the layers already in the local peer's store.
    pub snapshotter: Vec<UnpackRun>,
    /// containerd's own unpack (overlayfs), the layers already in its content store.
    pub containerd: Vec<UnpackRun>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnpackRun {
    /// `crictl pull` on one node, layers local: time to ready snapshots for every layer.
    pub seconds: f64,
    /// Layer bytes / seconds, in MiB/s.
    pub mib_per_s: f64,
    /// Bytes the registry host sent during the pull (manifest and config only, when the
    /// layers really were local).
    pub registry_tx_bytes: u64,
    /// The snapshotter's counters after the pull (its runs only).
    pub remote_layers: Option<u64>,
    pub fallbacks: Option<u64>,
}

impl ImageMethodReport {
    pub fn failed(method: &str, notes: &str, error: String) -> Self {
        ImageMethodReport {
            method: method.to_string(),
            ok: false,
            error: Some(error),
            notes: notes.to_string(),
            hosts: Vec::new(),
            makespan_s: None,
            median_s: None,
            makespan_over_su: None,
            last_pull_s: None,
            registry_tx_bytes: None,
            registry_over_size: None,
            seed_tx_bytes: None,
            remote_layers: None,
            fallbacks: None,
        }
    }
}

/// The median of `values` (None if empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn opt(v: Option<f64>, unit: &str, digits: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.digits$}{unit}"))
}

fn runs_range(runs: &[UnpackRun], f: impl Fn(&UnpackRun) -> f64, digits: usize) -> String {
    let values: Vec<f64> = runs.iter().map(f).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match values.len() {
        0 => "-".to_string(),
        1 => format!("{lo:.digits$}"),
        _ => format!("{lo:.digits$}-{hi:.digits$}"),
    }
}

impl UnpackReport {
    /// Median throughput of the snapshotter's runs and containerd's.
    pub fn median_mib_per_s(&self) -> (Option<f64>, Option<f64>) {
        let m = |runs: &[UnpackRun]| median(&runs.iter().map(|r| r.mib_per_s).collect::<Vec<_>>());
        (m(&self.snapshotter), m(&self.containerd))
    }
}

impl ImageReport {
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        fs::write(dir.join("report.json"), json + "\n").context("write report.json")?;
        fs::write(dir.join("report.md"), self.markdown()).context("write report.md")?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<ImageReport> {
        let text = fs::read_to_string(dir.join("report.json")).context("read report.json")?;
        serde_json::from_str(&text).context("parse report.json")
    }

    pub fn markdown(&self) -> String {
        let s = &self.setup;
        let mut md = String::new();
        let su = s
            .su_seconds
            .map_or("n/a (unshaped)".to_string(), |v| format!("{v:.1} s"));
        let _ = writeln!(md, "# damselfly-image-bench\n");
        let _ = writeln!(md, "`{}`\n", self.command);
        let _ = writeln!(
            md,
            "{} containerd hosts (CRI, `crictl`), links {} each way; image {}: busybox + {} x {:.1} MiB \
             random layers, S = {:.1} MiB of compressed layers in {} blobs, S/U = {su}. Time: from \
             `crictl pull` starting on every host at once to `crictl start` of a container of the \
             image returning on the host (its pod sandbox was up before).\n",
            s.hosts,
            s.rate,
            s.image,
            s.random_layers,
            s.random_layer_bytes as f64 / MIB,
            s.layer_bytes as f64 / MIB,
            s.layers.len(),
        );
        let _ = writeln!(
            md,
            "| method | last host running | median host running | last pull done | makespan / (S/U) | registry sent / S | layers from the mesh / fallbacks |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
        for m in &self.methods {
            let mesh = match (m.remote_layers, m.fallbacks) {
                (Some(l), Some(f)) => format!("{l} / {f}"),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {mesh} |",
                m.method,
                if m.ok {
                    opt(m.makespan_s, " s", 1)
                } else {
                    "FAILED".to_string()
                },
                opt(m.median_s, " s", 1),
                opt(m.last_pull_s, " s", 1),
                opt(m.makespan_over_su, " x", 2),
                opt(m.registry_over_size, " x", 2),
            );
        }
        let _ = writeln!(md);
        for m in &self.methods {
            let _ = writeln!(md, "- {}: {}", m.method, m.notes);
            if let Some(e) = &m.error {
                let _ = writeln!(md, "  - error: {e}");
            }
            for h in &m.hosts {
                let snap = match (h.remote_layers, h.fallbacks) {
                    (Some(l), Some(f)) => format!(", snapshotter: {l} layers from the mesh, {f} fallbacks"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    md,
                    "  - {}: pulled {}, running {}{snap}{}",
                    h.host,
                    opt(h.pulled_s, " s", 2),
                    opt(h.running_s, " s", 2),
                    h.error
                        .as_deref()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                );
            }
        }
        if let Some(u) = &self.unpack {
            let _ = writeln!(
                md,
                "\n## Unpack on one node, layers already local\n\n{:.1} MiB of compressed layers to ready \
                 snapshots (`crictl pull` with every layer blob local; the registry serves only the \
                 manifest and config).\n",
                u.layer_bytes as f64 / MIB
            );
            let _ = writeln!(
                md,
                "| unpacker | runs | time to ready snapshots | MiB/s of layer data | registry bytes during the pull |"
            );
            let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
            for (name, runs) in [
                ("damselfly snapshotter (from the peer's store)", &u.snapshotter),
                (
                    "containerd 1.6 (overlayfs, from its content store)",
                    &u.containerd,
                ),
            ] {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} s | {} | {} |",
                    runs.len(),
                    runs_range(runs, |r| r.seconds, 2),
                    runs_range(runs, |r| r.mib_per_s, 0),
                    runs_range(runs, |r| r.registry_tx_bytes as f64, 0),
                );
            }
            if let (Some(a), Some(b)) = u.median_mib_per_s() {
                let _ = writeln!(
                    md,
                    "\nMedian: snapshotter {a:.0} MiB/s, containerd {b:.0} MiB/s ({:.2} x).",
                    a / b
                );
            }
            for e in &u.errors {
                let _ = writeln!(md, "- error: {e}");
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
