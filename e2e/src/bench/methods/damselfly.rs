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
}

impl Damselfly {
    /// `bin`: the `damselfly` binary, or `None` to locate it; `tls`: mutual TLS on.
    pub fn new(bin: Option<PathBuf>, tls: bool) -> Self {
        Damselfly { bin, tls, mesh: None }
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
        format!(
            "scheduler, one seed peer, a peer daemon per host (default settings{tls}); daemons \
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
        } else {
            Mesh::start(&swarm.lab, &bin, &state, SCHEDULER, SEED, &peers)
        };
        self.mesh = Some(mesh.context("start the damselfly mesh")?);
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        let mesh = self.mesh.as_ref().context("mesh not started")?;
        let output = out_dir.join(BLOB);
        let job = mesh.start_get(&swarm.lab, host, &swarm.blob_url(), &output)?;
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
