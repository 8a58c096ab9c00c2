//! Images pulled through the mesh: a registry in an `origin` host, a
//! scheduler, a seed and peer hosts, each peer host with its own containerd
//! whose `certs.d/<registry>/hosts.toml` (written by `damselfly init
//! containerd`) names that host's peer proxy (`127.0.0.1:65001` in the
//! host's namespace) as mirror.
//!
//! The registry-mirror end-to-end test and `damselfly demo` both run this.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::lab::Lab;
use crate::mesh::Mesh;
use crate::oci::{Access, Containerd, RegistryHost, TestImage};
use crate::process::wait_all;
use crate::tls::Certs;

pub const REGISTRY_PORT: u16 = 5000;
/// The peer proxy's address inside each host (its default `[proxy] listen`).
pub const MIRROR: &str = "http://127.0.0.1:65001";
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// What to build.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Lab prefix and subnet octet (see [`Lab::new`]).
    pub prefix: String,
    pub subnet: u8,
    pub peers: usize,
    /// Random layers on top of the busybox layer, and their size.
    pub layers: usize,
    pub layer_bytes: u64,
    /// `tc` rate of every link, e.g. `100mbit`; `None`: unshaped.
    pub rate: Option<String>,
    /// The `damselfly` binary.
    pub bin: PathBuf,
    /// `user:password`: the registry demands basic auth and every pull
    /// brings these credentials (the peers are configured with none).
    pub credentials: Option<String>,
    /// Mutual TLS between scheduler, seed and peers (certificates from `damselfly certs init`
    /// in the lab's directory).
    pub tls: bool,
}

/// The running set-up. Dropping it stops containerds, daemons and the
/// registry, then removes the lab.
pub struct MirrorLab {
    // Fields drop in this order: containerds before the lab's namespaces.
    pub containerds: Vec<Containerd>,
    pub mesh: Mesh,
    pub registry: RegistryHost,
    pub image: String,
    pub blobs: Vec<(String, u64)>,
    pub peer_hosts: Vec<String>,
    credentials: Option<String>,
    bin: PathBuf,
    pub lab: Lab,
}

/// One peer host's pull.
#[derive(Debug, Clone)]
pub struct PullResult {
    pub host: String,
    pub elapsed: Duration,
}

impl MirrorLab {
    pub fn start(opts: &MirrorOptions, progress: impl Fn(&str)) -> Result<MirrorLab> {
        let peer_hosts: Vec<String> = (1..=opts.peers).map(|i| format!("p{i}")).collect();
        let mut hosts = vec!["origin", "sched", "seed"];
        hosts.extend(peer_hosts.iter().map(String::as_str));
        progress(&format!(
            "network: {} hosts in namespaces {}-*, links {}",
            hosts.len(),
            opts.prefix,
            opts.rate.as_deref().unwrap_or("unshaped")
        ));
        let lab = Lab::new(&opts.prefix, opts.subnet, &hosts, opts.rate.as_deref())?;
        let user = opts.credentials.as_deref().and_then(|c| c.split_once(':'));
        let registry = RegistryHost::start(&lab, "origin", REGISTRY_PORT, user)?;
        let reg = registry.name();
        progress(&format!(
            "registry: docker-registry on {reg}; building a test image (busybox + {} x {} random layers)",
            opts.layers,
            human(opts.layer_bytes)
        ));
        let built = TestImage::build(&lab.dir().join("image"), "app", opts.layers, opts.layer_bytes)?;
        let image = format!("{reg}/demo/app:latest");
        built.push(&image, opts.credentials.as_deref())?;
        let blobs = built.blobs()?;

        let proxy_toml = format!(
            "[proxy]\ndefault_registry = \"{reg}\"\n\n[proxy.registries.\"{reg}\"]\nendpoint = \"http://{reg}\"\n"
        );
        progress(&format!(
            "mesh: a scheduler, a seed peer and a peer in each host (registry proxy on 127.0.0.1:65001), {}",
            if opts.tls {
                "mutual TLS on (certificates from `damselfly certs init`)"
            } else {
                "TLS off"
            }
        ));
        let refs: Vec<&str> = peer_hosts.iter().map(String::as_str).collect();
        let state = lab.dir().join("state");
        let mesh = if opts.tls {
            let mut nodes = vec!["scheduler:sched".to_string(), "seed:seed".to_string()];
            nodes.extend(peer_hosts.iter().map(|h| format!("peer:{h}")));
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let certs = Certs::init(&opts.bin, &lab.dir().join("certs"), &nodes)?;
            Mesh::start_tls_with(
                &lab,
                &opts.bin,
                &state,
                &certs,
                "sched",
                "seed",
                &refs,
                &proxy_toml,
            )?
        } else {
            let config = lab.dir().join("peer.toml");
            std::fs::write(&config, &proxy_toml)?;
            Mesh::start_with_args(
                &lab,
                &opts.bin,
                &state,
                "sched",
                "seed",
                &refs,
                &["--config".to_string(), config.display().to_string()],
            )?
        };
        let mut containerds = Vec::new();
        for h in &peer_hosts {
            let ctd = Containerd::start(&lab, h, &lab.dir().join(format!("containerd-{h}")))?;
            let mut init = Command::new(&opts.bin);
            init.args(["init", "containerd", "--config-path"])
                .arg(ctd.certs_d())
                .arg("--registry")
                .arg(format!("http://{reg}"))
                .args(["--mirror", MIRROR]);
            let out = init.output().context("damselfly init containerd")?;
            ensure!(
                out.status.success(),
                "damselfly init containerd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            containerds.push(ctd);
        }
        progress(&format!(
            "containerd: one per peer host, certs.d/{reg}/hosts.toml -> {MIRROR}"
        ));
        Ok(MirrorLab {
            containerds,
            mesh,
            registry,
            image,
            blobs,
            peer_hosts,
            credentials: opts.credentials.clone(),
            bin: opts.bin.clone(),
            lab,
        })
    }

    /// `ctr image pull` in every peer host at once, through its peer's
    /// proxy (in the host's network namespace: `ctr` 1.6 downloads in its
    /// own process).
    pub fn pull_all(&self) -> Result<Vec<PullResult>> {
        self.pull_with(|c| c.pull_command(&self.image, self.credentials.as_deref()))
    }

    /// Forgets the image in every containerd, then pulls it in every peer
    /// host at once straight from the registry (no mirror): the baseline.
    pub fn pull_all_direct(&self) -> Result<Vec<PullResult>> {
        for c in &self.containerds {
            // `--sync`: the content goes before the next pull starts.
            self.lab
                .run_ok(&c.host, c.ctr().args(["image", "rm", "--sync", &self.image]))?;
        }
        self.pull_with(|c| c.pull_direct_command(&self.image, self.credentials.as_deref()))
    }

    fn pull_with(&self, pull: impl Fn(&Containerd) -> Command) -> Result<Vec<PullResult>> {
        let mut jobs = self
            .containerds
            .iter()
            .map(|c| self.lab.start(&c.host, "ctr-pull", &pull(c)))
            .collect::<Result<Vec<_>>>()?;
        let results = wait_all(&mut jobs, PULL_TIMEOUT)?;
        let mut out = Vec::new();
        for (r, c) in results.iter().zip(&self.containerds) {
            r.ensure_success()
                .with_context(|| format!("ctr image pull in {}", c.host))?;
            out.push(PullResult {
                host: c.host.clone(),
                elapsed: r.elapsed(),
            });
        }
        Ok(out)
    }

    /// `ctr run` of the image in every peer host; returns each one's output.
    pub fn run_all(&self, args: &[&str]) -> Result<Vec<(String, String)>> {
        self.containerds
            .iter()
            .map(|c| {
                let id = format!("{}-{}", self.lab.prefix(), c.host);
                let out = self
                    .lab
                    .run_ok(&c.host, &c.run_command(&self.image, &id, args))
                    .with_context(|| format!("ctr run in {}", c.host))?;
                Ok((c.host.clone(), out))
            })
            .collect()
    }

    /// The host of a lab address, or the address itself.
    pub fn host_of(&self, ip: &str) -> String {
        self.lab
            .hosts()
            .iter()
            .find(|h| self.lab.ip(h).to_string() == ip)
            .cloned()
            .unwrap_or_else(|| ip.to_string())
    }

    /// GETs of each blob at the registry.
    pub fn blob_gets(&self) -> Vec<(String, u64, Vec<Access>)> {
        self.blobs
            .iter()
            .map(|(d, size)| (d.clone(), *size, self.registry.blob_gets(d)))
            .collect()
    }

    /// `damselfly_peer_<name>_total` of the daemon in `host`.
    pub fn peer_counter(&self, host: &str, name: &str) -> Result<u64> {
        self.counter(host, &format!("damselfly_peer_{name}_total"))
    }

    /// A counter (or the sum of its labelled series) from the metrics of
    /// the daemon in `host`.
    pub fn counter(&self, host: &str, metric: &str) -> Result<u64> {
        let text = self.mesh.peer_metrics(self.lab.ip(host))?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.strip_prefix(metric).is_some_and(|r| r.starts_with([' ', '{'])))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        ensure!(!values.is_empty(), "no {metric} in the metrics of {host}");
        Ok(values.iter().sum::<f64>() as u64)
    }

    /// A report for people: what the registry sent to whom, and where each
    /// peer's bytes came from.
    pub fn report(&self, pulls: &[PullResult]) -> Result<String> {
        let mut s = String::new();
        let image_bytes: u64 = self.blobs.iter().map(|b| b.1).sum();
        writeln!(
            s,
            "image {} ({} blobs, {})",
            self.image,
            self.blobs.len(),
            human(image_bytes)
        )?;
        writeln!(s, "\nthe registry's access log, blob GETs:")?;
        let mut origin_total = 0;
        for (digest, size, gets) in self.blob_gets() {
            let who: Vec<String> = gets
                .iter()
                .map(|a| format!("{} ({}, {})", self.host_of(&a.client), a.status, human(a.bytes)))
                .collect();
            origin_total += gets.iter().map(|a| a.bytes).sum::<u64>();
            writeln!(
                s,
                "  {}  {:>9}  {} GET(s): {}",
                &digest[..19],
                human(size),
                gets.len(),
                who.join(", ")
            )?;
        }
        writeln!(
            s,
            "  registry sent {} in blob bodies for {} pulls",
            human(origin_total),
            pulls.len()
        )?;
        writeln!(s, "\nper host (peer daemon metrics):")?;
        for h in std::iter::once("seed".to_string()).chain(self.peer_hosts.iter().cloned()) {
            let source = self.peer_counter(&h, "source_bytes")?;
            let peers = self.peer_counter(&h, "peer_bytes")?;
            let uploaded = self.peer_counter(&h, "uploaded_bytes")?;
            let pull = pulls
                .iter()
                .find(|p| p.host == h)
                .map(|p| format!("pulled in {:.1} s, ", p.elapsed.as_secs_f64()))
                .unwrap_or_default();
            writeln!(
                s,
                "  {h:<5} {pull}from the origin {}, from peers {}, served to peers {}",
                human(source),
                human(peers),
                human(uploaded)
            )?;
        }
        Ok(s)
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

/// A plain HTTP/1.0 GET; the body as text (over TLS: [`crate::tls::https_get`]).
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {addr}{path}: {head}"
    );
    Ok(body.to_string())
}

/// `12.3 MiB`
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
