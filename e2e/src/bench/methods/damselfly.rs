//! `damselfly`: a scheduler, one seed peer and a peer daemon on every host;
//! each host runs `damselfly get` through its own daemon. With `tls`, every
//! daemon runs with mutual TLS on, each with its own certificate of one CA.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::bench::swarm::{BLOB, Download, Method, SCHEDULER, SEED, Swarm};
use crate::mesh::Mesh;
use crate::tls::Certs;

pub struct Damselfly {
    bin: Option<PathBuf>,
    tls: bool,
    mesh: Option<Mesh>,
    /// The scheduler's `cold_source` (empty: its default).
    cold_source: String,
    /// Each get names the blob's digest.
    digest: bool,
}

impl Damselfly {
    /// `bin`: the `damselfly` binary, or `None` to locate it; `tls`: mutual TLS on.
    pub fn new(bin: Option<PathBuf>, tls: bool) -> Self {
        Damselfly {
            bin,
            tls,
            mesh: None,
            cold_source: String::new(),
            digest: false,
        }
    }

    /// The scheduler's `cold_source` (`seed`, `requester`), and gets with `--digest`.
    pub fn shape(mut self, cold_source: &str, digest: bool) -> Self {
        self.cold_source = cold_source.to_string();
        self.digest = digest;
        self
    }
}

impl Method for Damselfly {
    fn name(&self) -> &'static str {
        "damselfly"
    }

    fn notes(&self) -> String {
        let tls = if self.tls {
            "; mutual TLS on, every daemon with its own certificate of one CA"
        } else {
            ""
        };
        let shape = match (self.cold_source.as_str(), self.digest) {
            ("", false) => String::new(),
            (c, d) => format!(
                "; cold_source = {c:?}{}",
                if d { ", gets with --digest" } else { "" }
            ),
        };
        format!(
            "scheduler, one seed peer, a peer daemon per host (default settings{tls}{shape}); daemons \
             keep serving until every host is done"
        )
    }

    fn tls(&self) -> bool {
        self.tls
    }

    fn prepare(&mut self, swarm: &Swarm, workdir: &Path) -> Result<()> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => crate::bins::damselfly()?,
        };
        let peers: Vec<&str> = swarm.peers.iter().map(String::as_str).collect();
        let state = workdir.join("state");
        let mesh = if self.tls {
            let mut nodes = vec![format!("scheduler:{SCHEDULER}"), format!("seed:{SEED}")];
            nodes.extend(peers.iter().map(|p| format!("peer:{p}")));
            let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
            let certs = Certs::init(&bin, &workdir.join("certs"), &nodes)?;
            Mesh::start_tls(&swarm.lab, &bin, &state, &certs, SCHEDULER, SEED, &peers)
        } else if !self.cold_source.is_empty() {
            std::fs::create_dir_all(&state)?;
            let toml = state.join("scheduler.toml");
            std::fs::write(&toml, format!("cold_source = {:?}\n", self.cold_source))?;
            let args = ["--config".to_string(), toml.display().to_string()];
            Mesh::start_with_scheduler_args(&swarm.lab, &bin, &state, SCHEDULER, SEED, &peers, &args)
        } else {
            Mesh::start(&swarm.lab, &bin, &state, SCHEDULER, SEED, &peers)
        };
        self.mesh = Some(mesh.context("start the damselfly mesh")?);
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        let mesh = self.mesh.as_ref().context("mesh not started")?;
        let output = out_dir.join(BLOB);
        let mut cmd = mesh.get_command(host, &swarm.blob_url(), &output);
        if self.digest {
            cmd.arg("--digest").arg(format!("sha256:{}", swarm.blob_sha256));
        }
        let job = swarm.lab.start(host, "get", &cmd)?;
        let agent_pid = mesh.peer(host).proc.pid();
        Ok(Download {
            job,
            output,
            done_marker: None,
            agent_pid,
        })
    }

    fn daemons(&self) -> Vec<(String, u32)> {
        self.mesh.as_ref().map(super::mesh_daemons).unwrap_or_default()
    }

    fn stop(&mut self) {
        self.mesh = None;
    }
}
