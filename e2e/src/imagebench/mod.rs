//! The image benchmark (issue 11): N containerd hosts with CRI pull one image at once and
//! start a container of it, three ways: straight from the registry (`direct`), through each
//! host's peer proxy as registry mirror (`mirror`), and through the proxy with `damselfly
//! snapshotter` as CRI's snapshotter (`snapshotter`). Then one node's unpack throughput with
//! the layers already local: the snapshotter's unpack from the peer's store against
//! containerd's own unpack from its content store.
//!
//! Layout: [`run`] builds the lab (a registry host, a scheduler host, a seed host and the
//! containerd hosts, every link shaped), pushes the image, and measures each method on fresh
//! state (new containerd roots, new snapshotter roots, a new mesh with empty stores), so no
//! method reuses another's bytes; [`report`] holds the results.

pub mod report;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

use crate::bench::units::{Rate, Size};
use crate::cri::{CriNode, CriOptions, PEER_PROXY, Pod};
use crate::lab::Lab;
use crate::mesh::Mesh;
use crate::oci::{RegistryHost, TestImage};
use report::{ImageHostReport, ImageMethodReport, ImageReport, ImageSetup, UnpackReport, UnpackRun, median};

const REGISTRY_PORT: u16 = 5000;
const MIB: f64 = 1024.0 * 1024.0;
/// The container each host starts: it only has to run.
const COMMAND: &[&str] = &["/bin/busybox", "sleep", "3600"];

/// How the containerd hosts get the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMethod {
    /// containerd pulls from the registry itself (hosts.toml: the registry, no mirror).
    Direct,
    /// containerd pulls through its host's peer proxy (`damselfly init containerd`).
    Mirror,
    /// Through the proxy, with `damselfly snapshotter` as CRI's snapshotter.
    Snapshotter,
}

impl ImageMethod {
    pub const ALL: [ImageMethod; 3] = [ImageMethod::Direct, ImageMethod::Mirror, ImageMethod::Snapshotter];

    pub fn name(self) -> &'static str {
        match self {
            ImageMethod::Direct => "direct",
            ImageMethod::Mirror => "mirror",
            ImageMethod::Snapshotter => "snapshotter",
        }
    }

    fn notes(self) -> &'static str {
        match self {
            ImageMethod::Direct => {
                "containerd 1.6 CRI pulls from the registry (3 layers at a time), unpacks with overlayfs"
            }
            ImageMethod::Mirror => {
                "containerd 1.6 CRI pulls through the host's peer proxy (hosts.toml mirror), unpacks with overlayfs"
            }
            ImageMethod::Snapshotter => {
                "containerd 1.6 CRI with damselfly snapshotter: every layer from the host's peer proxy, unpacked while it streams"
            }
        }
    }

    fn mesh(self) -> bool {
        self != ImageMethod::Direct
    }
}

impl fmt::Display for ImageMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ImageMethod {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match ImageMethod::ALL.into_iter().find(|m| m.name() == s) {
            Some(m) => Ok(m),
            None => bail!("unknown method {s:?} (direct, mirror, snapshotter)"),
        }
    }
}

pub struct Config {
    pub hosts: usize,
    pub rate: Rate,
    /// Random layers on top of busybox, and the size of each.
    pub layers: usize,
    pub layer_size: Size,
    pub methods: Vec<ImageMethod>,
    /// Runs of each unpacker on one node (0 skips the unpack measurement).
    pub unpack_runs: usize,
    /// The snapshotter's `[remote] concurrency` (None: its default).
    pub snapshotter_concurrency: Option<usize>,
    pub out: PathBuf,
    pub damselfly_bin: Option<PathBuf>,
    pub prefix: String,
    pub subnet: u8,
    /// Longest a host may take from the start to a running container.
    pub timeout: Duration,
    /// The command line, for the report.
    pub command: String,
}

/// The lab and image every method shares.
struct Bench<'a> {
    config: &'a Config,
    lab: Lab,
    /// Stops with the lab (after every method's containerds).
    _registry: RegistryHost,
    bin: PathBuf,
    registry: String,
    image: String,
    pause: String,
    /// The image config's digest.
    config_blob: String,
    layers: Vec<(String, u64)>,
    peer_config: PathBuf,
    peer_hosts: Vec<String>,
}

/// Runs every selected method, then the unpack measurement, writing the report to
/// `config.out` after each step so an interrupted run keeps what it measured.
pub fn run(config: &Config) -> Result<ImageReport> {
    ensure!(config.hosts >= 1, "--hosts must be at least 1");
    ensure!(config.layers >= 1, "--layers must be at least 1");
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bench = Bench::build(config)?;
    let s: u64 = bench.layers.iter().map(|l| l.1).sum();
    let mut report = ImageReport {
        started_unix,
        command: config.command.clone(),
        setup: ImageSetup {
            hosts: config.hosts,
            rate: config.rate.to_string(),
            rate_bits_per_sec: config.rate.bits_per_sec(),
            random_layers: config.layers,
            random_layer_bytes: config.layer_size.0,
            image: bench.image.clone(),
            layers: bench.layers.clone(),
            layer_bytes: s,
            su_seconds: config.rate.bits_per_sec().map(|u| s as f64 * 8.0 / u as f64),
            snapshotter_concurrency: config.snapshotter_concurrency,
        },
        methods: Vec::new(),
        unpack: None,
    };
    report.write(&config.out)?;
    for &method in &config.methods {
        crate::wait::check_interrupted()?;
        eprintln!("image-bench: {method}: {} hosts pull at once", config.hosts);
        let measured = bench.measure(method, &report.setup);
        match &measured.error {
            Some(e) => eprintln!("image-bench: {method} failed: {e}"),
            None => eprintln!(
                "image-bench: {method}: last container running after {}",
                measured.makespan_s.map_or("-".into(), |s| format!("{s:.1} s"))
            ),
        }
        report.methods.push(measured);
        report.write(&config.out)?;
    }
    if config.unpack_runs > 0 {
        crate::wait::check_interrupted()?;
        eprintln!(
            "image-bench: unpack on one node, layers local ({} runs each)",
            config.unpack_runs
        );
        report.unpack = Some(bench.unpack());
        report.write(&config.out)?;
    }
    Ok(report)
}

impl<'a> Bench<'a> {
    fn build(config: &'a Config) -> Result<Bench<'a>> {
        let bin = match &config.damselfly_bin {
            Some(p) => p.clone(),
            None => crate::bins::damselfly()?,
        };
        let peer_hosts: Vec<String> = (1..=config.hosts).map(|i| format!("p{i}")).collect();
        let mut hosts = vec!["origin", "sched", "seed"];
        hosts.extend(peer_hosts.iter().map(String::as_str));
        eprintln!(
            "image-bench: lab of {} hosts ({}-*), links {}",
            hosts.len(),
            config.prefix,
            config.rate
        );
        let lab = Lab::new(&config.prefix, config.subnet, &hosts, config.rate.tc())?;
        // Per host at most: the content store, the snapshots and the peer's store, each about
        // the image; plus the registry and the image's build.
        let image_bytes = (config.layers as u64 * config.layer_size.0).max(1 << 20) + (2 << 20);
        crate::data::ensure_space(
            lab.dir(),
            image_bytes * (3 * config.hosts as u64 + 6),
            "damselfly-image-bench",
        )?;
        let registry = RegistryHost::start(&lab, "origin", REGISTRY_PORT, None)?;
        let reg = registry.name();
        eprintln!(
            "image-bench: building the image (busybox + {} x {})",
            config.layers, config.layer_size
        );
        let built = TestImage::build(
            &lab.dir().join("image"),
            "app",
            config.layers,
            config.layer_size.0,
        )?;
        let image = format!("{reg}/bench/app:latest");
        built.push(&image, None)?;
        let blobs = built.blobs()?;
        let (config_blob, layers) = (blobs[0].0.clone(), blobs[1..].to_vec());
        let pause_image = TestImage::build_distinct(&lab.dir().join("pause"), "pause", 0, 0)?;
        pause_image.set_cmd(&["/bin/busybox", "sleep", "2147483647"])?;
        let pause = format!("{reg}/bench/pause:latest");
        pause_image.push(&pause, None)?;
        // The sandboxes start before the measurement: they must not bring any of its layers.
        for (digest, _) in &pause_image.blobs()?[1..] {
            ensure!(
                !layers.iter().any(|l| &l.0 == digest),
                "the pause image shares layer {digest} with the image: the measurement would reuse it"
            );
        }
        let peer_config = lab.dir().join("peer.toml");
        std::fs::write(
            &peer_config,
            format!(
                "[proxy]\ndefault_registry = \"{reg}\"\n\n[proxy.registries.\"{reg}\"]\nendpoint = \"http://{reg}\"\n"
            ),
        )?;
        Ok(Bench {
            config,
            lab,
            _registry: registry,
            bin,
            registry: reg,
            image,
            pause,
            config_blob,
            layers,
            peer_config,
            peer_hosts,
        })
    }

    fn peer_args(&self) -> Vec<String> {
        vec!["--config".into(), self.peer_config.display().to_string()]
    }

    fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.1).sum()
    }

    fn options(&self, method: ImageMethod, dir: PathBuf) -> CriOptions<'_> {
        CriOptions {
            dir,
            registry: &self.registry,
            pause: &self.pause,
            mirror: method.mesh().then_some(PEER_PROXY),
            snapshotter: method == ImageMethod::Snapshotter,
            snapshotter_concurrency: self.config.snapshotter_concurrency,
            containerd2: None,
        }
    }

    fn measure(&self, method: ImageMethod, setup: &ImageSetup) -> ImageMethodReport {
        let dir = self.lab.dir().join(method.name());
        let report = self
            .measure_in(method, setup, &dir)
            .unwrap_or_else(|e| ImageMethodReport::failed(method.name(), method.notes(), format!("{e:#}")));
        // Free the disk for the next method (containerd unmounted what it had on drop).
        let _ = std::fs::remove_dir_all(&dir);
        report
    }

    fn measure_in(&self, method: ImageMethod, setup: &ImageSetup, dir: &Path) -> Result<ImageMethodReport> {
        let lab = &self.lab;
        let peers: Vec<&str> = self.peer_hosts.iter().map(String::as_str).collect();
        // Fields of this scope drop in reverse order: containerds, then the mesh.
        let _mesh = match method.mesh() {
            true => Some(Mesh::start_with_args(
                lab,
                &self.bin,
                &dir.join("mesh"),
                "sched",
                "seed",
                &peers,
                &self.peer_args(),
            )?),
            false => None,
        };
        let nodes = self
            .peer_hosts
            .iter()
            .map(|h| CriNode::start(lab, h, &self.bin, &self.options(method, dir.join(h))))
            .collect::<Result<Vec<_>>>()?;
        let _clean = Cleanup { lab, nodes: &nodes };
        // Sandboxes first, as kubelet does: the pause image is not part of the measurement.
        let pods = nodes
            .iter()
            .map(|n| n.crictl.run_pod(lab, &dir.join(&n.host).join("pod"), "bench"))
            .collect::<Result<Vec<_>>>()?;
        // The sandboxes' layers count in the snapshotters' counters too: take them as zero.
        let counters = |node: &CriNode| -> Result<(u64, u64)> {
            match method {
                ImageMethod::Snapshotter => Ok((
                    node.counter(lab, "remote_layers_total")?,
                    node.counter(lab, "fallbacks_total")?,
                )),
                _ => Ok((0, 0)),
            }
        };
        let counters_before = nodes.iter().map(counters).collect::<Result<Vec<_>>>()?;
        let registry_before = lab.link_counters("origin")?.tx_bytes;
        let seed_before = lab.link_counters("seed")?.tx_bytes;

        let start = Instant::now();
        let outcomes: Vec<HostOutcome> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .zip(&pods)
                .map(|(node, pod)| s.spawn(move || self.pull_and_start(node, pod, start)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| HostOutcome::failed("panicked")))
                .collect()
        });
        let registry_tx = lab.link_counters("origin")?.tx_bytes - registry_before;
        let seed_tx = lab.link_counters("seed")?.tx_bytes - seed_before;

        let mut hosts = Vec::new();
        let (mut remote_layers, mut fallbacks) = (0, 0);
        for ((node, outcome), before) in nodes.iter().zip(outcomes).zip(counters_before) {
            let mut error = outcome.error;
            if let (None, Some(id)) = (&error, &outcome.container) {
                error = self.check_container(node, id).err().map(|e| format!("{e:#}"));
            }
            let after = counters(node)?;
            let (layers, fell_back) = match method {
                ImageMethod::Snapshotter => (Some(after.0 - before.0), Some(after.1 - before.1)),
                _ => (None, None),
            };
            remote_layers += layers.unwrap_or(0);
            fallbacks += fell_back.unwrap_or(0);
            hosts.push(ImageHostReport {
                host: node.host.clone(),
                pulled_s: outcome.pulled_s,
                running_s: outcome.running_s,
                remote_layers: layers,
                fallbacks: fell_back,
                error,
            });
        }
        let ok = hosts.iter().all(|h| h.error.is_none() && h.running_s.is_some());
        let running: Vec<f64> = hosts.iter().filter_map(|h| h.running_s).collect();
        let makespan = ok.then(|| running.iter().copied().fold(0.0, f64::max));
        let last_pull = hosts
            .iter()
            .filter_map(|h| h.pulled_s)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let s = setup.layer_bytes as f64;
        Ok(ImageMethodReport {
            method: method.name().to_string(),
            ok,
            error: (!ok).then(|| "a host did not run the image (see hosts)".to_string()),
            notes: method.notes().to_string(),
            hosts,
            makespan_s: makespan,
            median_s: ok.then(|| median(&running)).flatten(),
            makespan_over_su: makespan.zip(setup.su_seconds).map(|(m, su)| m / su),
            last_pull_s: last_pull,
            registry_tx_bytes: Some(registry_tx),
            registry_over_size: Some(registry_tx as f64 / s),
            seed_tx_bytes: method.mesh().then_some(seed_tx),
            remote_layers: (method == ImageMethod::Snapshotter).then_some(remote_layers),
            fallbacks: (method == ImageMethod::Snapshotter).then_some(fallbacks),
        })
    }

    /// One host's measurement: `crictl pull`, then a container of the image started in `pod`.
    fn pull_and_start(&self, node: &CriNode, pod: &Pod, start: Instant) -> HostOutcome {
        let mut out = HostOutcome::default();
        let pull = self
            .lab
            .run_ok(&node.host, &node.crictl.command(&["pull", &self.image]));
        if let Err(e) = pull {
            out.error = Some(format!("crictl pull: {e:#}"));
            return out;
        }
        out.pulled_s = Some(start.elapsed().as_secs_f64());
        match node
            .crictl
            .start_container(&self.lab, pod, "app", &self.image, COMMAND)
        {
            Ok(id) => {
                out.running_s = Some(start.elapsed().as_secs_f64());
                out.container = Some(id);
            }
            Err(e) => out.error = Some(format!("start the container: {e:#}")),
        }
        if start.elapsed() > self.config.timeout {
            out.error = Some(format!("took longer than {:?}", self.config.timeout));
        }
        out
    }

    /// The container runs and sees every random layer's file at its size.
    fn check_container(&self, node: &CriNode, id: &str) -> Result<()> {
        let (state, _) = node.crictl.state(&self.lab, id)?;
        ensure!(state == "CONTAINER_RUNNING", "container state {state}");
        let sizes = node.crictl.run(
            &self.lab,
            &["exec", id, "/bin/sh", "-c", "/bin/busybox stat -c %s /data/*"],
        )?;
        let want = self.config.layer_size.0.to_string();
        let seen: Vec<&str> = sizes.split_whitespace().collect();
        ensure!(
            seen.len() == self.config.layers && seen.iter().all(|s| *s == want),
            "the container's /data holds {seen:?}, not {} files of {want} bytes",
            self.config.layers
        );
        Ok(())
    }

    /// One node (`p1`), the layers already local: the snapshotter's unpack from the peer's
    /// store, and containerd's own from its content store, `unpack_runs` times each on fresh
    /// containerd (and snapshotter) state.
    fn unpack(&self) -> UnpackReport {
        let dir = self.lab.dir().join("unpack");
        let mut report = UnpackReport {
            layer_bytes: self.layer_bytes(),
            snapshotter: Vec::new(),
            containerd: Vec::new(),
            errors: Vec::new(),
        };
        if let Err(e) = self.unpack_snapshotter(&dir, &mut report.snapshotter) {
            report.errors.push(format!("snapshotter: {e:#}"));
        }
        if let Err(e) = self.unpack_containerd(&dir, &mut report.containerd) {
            report.errors.push(format!("containerd: {e:#}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        report
    }

    fn unpack_snapshotter(&self, dir: &Path, runs: &mut Vec<UnpackRun>) -> Result<()> {
        let lab = &self.lab;
        let host = "p1";
        let _mesh = Mesh::start_with_args(
            lab,
            &self.bin,
            &dir.join("mesh"),
            "sched",
            "seed",
            &[host],
            &self.peer_args(),
        )?;
        // Every blob (config and layers) into the peer's store, through its proxy, before any
        // run: a run then times the unpack, not the mesh.
        let repo = self.image_repository();
        let ns = self.registry.replace(':', "%3A");
        let blobs = std::iter::once(&self.config_blob).chain(self.layers.iter().map(|l| &l.0));
        for digest in blobs {
            lab.run_ok(
                host,
                std::process::Command::new("curl").args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("{PEER_PROXY}/v2/{repo}/blobs/{digest}?ns={ns}"),
                ]),
            )
            .with_context(|| format!("warm the peer's store with {digest}"))?;
        }
        for r in 0..self.config.unpack_runs {
            crate::wait::check_interrupted()?;
            let opts = self.options(ImageMethod::Snapshotter, dir.join(format!("snapshotter-{r}")));
            let node = CriNode::start(lab, host, &self.bin, &opts)?;
            let _clean = Cleanup {
                lab,
                nodes: std::slice::from_ref(&node),
            };
            node.crictl.run_pod(lab, &opts.dir.join("pod"), "unpack")?;
            let layers_before = node.counter(lab, "remote_layers_total")?;
            let fallbacks_before = node.counter(lab, "fallbacks_total")?;
            let mut run = self.timed_pull(&node)?;
            run.remote_layers = Some(node.counter(lab, "remote_layers_total")? - layers_before);
            run.fallbacks = Some(node.counter(lab, "fallbacks_total")? - fallbacks_before);
            ensure!(
                run.remote_layers == Some(self.layers.len() as u64) && run.fallbacks == Some(0),
                "run {r}: {} layers from the peer, {} fallbacks (want {} and 0)",
                run.remote_layers.unwrap_or(0),
                run.fallbacks.unwrap_or(0),
                self.layers.len()
            );
            runs.push(run);
        }
        Ok(())
    }

    fn unpack_containerd(&self, dir: &Path, runs: &mut Vec<UnpackRun>) -> Result<()> {
        let lab = &self.lab;
        let host = "p1";
        for r in 0..self.config.unpack_runs {
            crate::wait::check_interrupted()?;
            let opts = self.options(ImageMethod::Direct, dir.join(format!("containerd-{r}")));
            let node = CriNode::start(lab, host, &self.bin, &opts)?;
            let _clean = Cleanup {
                lab,
                nodes: std::slice::from_ref(&node),
            };
            node.crictl.run_pod(lab, &opts.dir.join("pod"), "unpack")?;
            // Every blob into containerd's content store (CRI's namespace), unpacked by nothing.
            lab.run_ok(
                host,
                node.ctd
                    .ctr()
                    .args(["-n", "k8s.io", "content", "fetch", "--hosts-dir"])
                    .arg(node.ctd.certs_d())
                    .arg(&self.image),
            )
            .context("ctr content fetch")?;
            runs.push(self.timed_pull(&node)?);
        }
        Ok(())
    }

    /// `crictl pull` of the image on `node`, timed, with what the registry sent meanwhile.
    fn timed_pull(&self, node: &CriNode) -> Result<UnpackRun> {
        let before = self.lab.link_counters("origin")?.tx_bytes;
        let t = Instant::now();
        self.lab
            .run_ok(&node.host, &node.crictl.command(&["pull", &self.image]))
            .context("crictl pull")?;
        let seconds = t.elapsed().as_secs_f64();
        let registry_tx_bytes = self.lab.link_counters("origin")?.tx_bytes - before;
        Ok(UnpackRun {
            seconds,
            mib_per_s: self.layer_bytes() as f64 / MIB / seconds,
            registry_tx_bytes,
            remote_layers: None,
            fallbacks: None,
        })
    }

    /// `bench/app` of `HOST:PORT/bench/app:latest`.
    fn image_repository(&self) -> String {
        let path = self.image.split_once('/').map_or("", |(_, p)| p);
        path.rsplit_once(':').map_or(path, |(r, _)| r).to_string()
    }
}

/// What one host's measurement saw.
#[derive(Default)]
struct HostOutcome {
    pulled_s: Option<f64>,
    running_s: Option<f64>,
    container: Option<String>,
    error: Option<String>,
}

impl HostOutcome {
    fn failed(why: &str) -> Self {
        HostOutcome {
            pulled_s: None,
            running_s: None,
            container: None,
            error: Some(why.to_string()),
        }
    }
}

/// Removes every container and pod of `nodes` when dropped (before their containerds stop).
struct Cleanup<'a> {
    lab: &'a Lab,
    nodes: &'a [CriNode],
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for n in self.nodes {
            n.crictl.clean(self.lab);
        }
    }
}
