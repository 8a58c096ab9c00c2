//! `cache`: `damselfly cache import` of the blob on one extra host (the
//! origin host, so its interface counter is what the importer served), then
//! `damselfly cache export` on every host at once. The import asks for one
//! replica, which the scheduler places on the seed host while the exports
//! run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::bench::swarm::{Download, Method, ORIGIN, SCHEDULER, SEED, Swarm};
use crate::mesh::Mesh;

pub struct Cache {
    bin: Option<PathBuf>,
    mesh: Option<Mesh>,
    id: String,
}

impl Cache {
    pub fn new(bin: Option<PathBuf>) -> Self {
        Cache {
            bin,
            mesh: None,
            id: String::new(),
        }
    }
}

impl Method for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn notes(&self) -> String {
        "scheduler, one seed peer, a peer daemon per host and one on the origin host, which runs \
         `damselfly cache import --replicas 1` before the start (the replica goes to the seed \
         host during the run); every host runs `damselfly cache export`; origin bytes are what \
         the importer's host sent"
            .to_string()
    }

    fn prepare(&mut self, swarm: &Swarm, workdir: &Path) -> Result<()> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => crate::bins::damselfly()?,
        };
        let mut hosts: Vec<&str> = vec![ORIGIN];
        hosts.extend(swarm.peers.iter().map(String::as_str));
        let mesh = Mesh::start(&swarm.lab, &bin, &workdir.join("state"), SCHEDULER, SEED, &hosts)
            .context("start the damselfly mesh")?;
        let mut import = Command::new(&bin);
        import
            .args(["cache", "import"])
            .arg(&swarm.blob)
            .args(["--replicas", "1", "--socket"])
            .arg(&mesh.peer(ORIGIN).socket);
        let id = swarm
            .lab
            .run_ok(ORIGIN, &import)
            .context("cache import on the origin host")?;
        self.id = id.trim().to_string();
        self.mesh = Some(mesh);
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        let mesh = self.mesh.as_ref().context("mesh not started")?;
        let args = ["cache", "export", &self.id, "--quiet"];
        super::mesh_client_download(swarm, mesh, host, out_dir, "cache-export", &args)
    }

    fn daemons(&self) -> Vec<(String, u32)> {
        self.mesh.as_ref().map(super::mesh_daemons).unwrap_or_default()
    }

    fn stop(&mut self) {
        self.mesh = None;
    }
}
