//! `damselfly`: a scheduler, one seed peer and a peer daemon on every host;
//! each host runs `damselfly get` through its own daemon.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::bench::swarm::{BLOB, Download, Method, SCHEDULER, SEED, Swarm};
use crate::mesh::Mesh;

pub struct Damselfly {
    bin: Option<PathBuf>,
    mesh: Option<Mesh>,
}

impl Damselfly {
    /// `bin`: the `damselfly` binary, or `None` to locate it.
    pub fn new(bin: Option<PathBuf>) -> Self {
        Damselfly { bin, mesh: None }
    }
}

impl Method for Damselfly {
    fn name(&self) -> &'static str {
        "damselfly"
    }

    fn notes(&self) -> String {
        "scheduler, one seed peer, a peer daemon per host (default settings); daemons keep serving \
         until every host is done"
            .to_string()
    }

    fn prepare(&mut self, swarm: &Swarm, workdir: &Path) -> Result<()> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => crate::bins::damselfly()?,
        };
        let peers: Vec<&str> = swarm.peers.iter().map(String::as_str).collect();
        let mesh = Mesh::start(&swarm.lab, &bin, &workdir.join("state"), SCHEDULER, SEED, &peers)
            .context("start the damselfly mesh")?;
        self.mesh = Some(mesh);
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

    fn stop(&mut self) {
        self.mesh = None;
    }
}
