//! The object storage methods (issue 13): a moto S3 server on the origin
//! host holds the blob as `s3://bkt/blob`.
//!
//! - `store`: a damselfly mesh whose peers have `[source.s3]`; every host
//!   runs `damselfly store get` (one HEAD for the ETag, then the mesh task of
//!   that version; the seed reads the object in parallel ranges);
//! - `s3-direct`: every host reads the object straight from the server
//!   (`curl` of a presigned GET URL: one signed GET of the whole object, as
//!   an S3 client's single-stream download sends).
//!
//! Both count the bytes storage served from the server's own log
//! ([`crate::s3::Moto::served`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::bench::swarm::{BLOB, Download, Method, ORIGIN, SCHEDULER, SEED, Swarm};
use crate::mesh::Mesh;
use crate::s3::Moto;

pub const BUCKET: &str = "bkt";

/// The object's path in the server's log.
fn object_path() -> String {
    format!("/{BUCKET}/{BLOB}")
}

fn start_moto(swarm: &Swarm) -> Result<Moto> {
    Moto::start(&swarm.lab, ORIGIN, BUCKET, BLOB, &swarm.blob).context("start moto on the origin host")
}

#[derive(Default)]
pub struct Store {
    bin: Option<PathBuf>,
    moto: Option<Moto>,
    mesh: Option<Mesh>,
}

impl Store {
    pub fn new(bin: Option<PathBuf>) -> Self {
        Store {
            bin,
            ..Store::default()
        }
    }
}

impl Method for Store {
    fn name(&self) -> &'static str {
        "store"
    }

    fn notes(&self) -> String {
        "moto S3 on the origin host; scheduler, one seed peer and a peer daemon per host with \
         `[source.s3]` (default settings); every host runs `damselfly store get s3://bkt/blob`; \
         storage bytes counted in moto's log"
            .to_string()
    }

    fn prepare(&mut self, swarm: &Swarm, workdir: &Path) -> Result<()> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => crate::bins::damselfly()?,
        };
        let moto = start_moto(swarm)?;
        let config = workdir.join("peer.toml");
        std::fs::write(&config, moto.peer_config())?;
        let args = vec!["--config".to_string(), config.display().to_string()];
        let peers: Vec<&str> = swarm.peers.iter().map(String::as_str).collect();
        let mesh = Mesh::start_with_args(
            &swarm.lab,
            &bin,
            &workdir.join("state"),
            SCHEDULER,
            SEED,
            &peers,
            &args,
        )
        .context("start the damselfly mesh")?;
        self.moto = Some(moto);
        self.mesh = Some(mesh);
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        let mesh = self.mesh.as_ref().context("mesh not started")?;
        let url = format!("s3://{BUCKET}/{BLOB}");
        super::mesh_client_download(swarm, mesh, host, out_dir, "store-get", &["store", "get", &url])
    }

    fn daemons(&self) -> Vec<(String, u32)> {
        self.mesh.as_ref().map(super::mesh_daemons).unwrap_or_default()
    }

    fn storage_served(&self) -> Option<(usize, u64)> {
        self.moto.as_ref().map(|m| m.served(&object_path()))
    }

    fn stop(&mut self) {
        self.mesh = None;
        self.moto = None;
    }
}

#[derive(Default)]
pub struct S3Direct {
    moto: Option<Moto>,
    url: String,
}

impl Method for S3Direct {
    fn name(&self) -> &'static str {
        "s3-direct"
    }

    fn notes(&self) -> String {
        "moto S3 on the origin host; every host runs `curl -o` of a presigned GET URL of the \
         object at the same time; storage bytes counted in moto's log"
            .to_string()
    }

    fn prepare(&mut self, swarm: &Swarm, _workdir: &Path) -> Result<()> {
        let moto = start_moto(swarm)?;
        self.url = moto.presigned_url(&swarm.lab, ORIGIN, BUCKET, BLOB)?;
        self.moto = Some(moto);
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        anyhow::ensure!(!self.url.is_empty(), "moto not started");
        let output = out_dir.join(BLOB);
        let mut curl = Command::new("curl");
        curl.args(["-sSf", "-o"]).arg(&output).arg(&self.url);
        let job = swarm.lab.start(host, "curl", &curl)?;
        let agent_pid = job.pid();
        Ok(Download {
            job,
            output,
            done_marker: None,
            agent_pid,
        })
    }

    fn storage_served(&self) -> Option<(usize, u64)> {
        self.moto.as_ref().map(|m| m.served(&object_path()))
    }

    fn stop(&mut self) {
        self.moto = None;
    }
}
