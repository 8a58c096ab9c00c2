//! The methods the bench compares. Each one implements
//! [`super::swarm::Method`].

mod bittorrent;
mod cache;
mod damselfly;
mod direct;
mod s3;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Result, bail};

pub use bittorrent::BitTorrent;
pub use cache::Cache;
pub use damselfly::Damselfly;
pub use direct::Direct;
pub use s3::{S3Direct, Store};

use super::swarm::{BLOB, Download, Method, SCHEDULER, SEED, Swarm};
use crate::mesh::Mesh;

/// A method as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodName {
    Damselfly,
    Direct,
    BitTorrent,
    /// `damselfly store get` through the mesh, the object in S3 (moto).
    Store,
    /// Every host reads the object straight from S3.
    S3Direct,
    /// `damselfly cache import` on one host, `cache export` on every host.
    Cache,
}

impl MethodName {
    pub const ALL: [MethodName; 6] = [
        MethodName::Damselfly,
        MethodName::Direct,
        MethodName::BitTorrent,
        MethodName::Store,
        MethodName::S3Direct,
        MethodName::Cache,
    ];

    /// Whether the method runs damselfly daemons (and so needs the binary).
    pub fn uses_damselfly(self) -> bool {
        matches!(
            self,
            MethodName::Damselfly | MethodName::Store | MethodName::Cache
        )
    }

    /// The method itself; `damselfly_bin` is looked at by the methods that run damselfly, `tls`
    /// (mutual TLS on) only by `damselfly`.
    pub fn build(self, damselfly_bin: Option<PathBuf>, tls: bool) -> Box<dyn Method> {
        match self {
            MethodName::Damselfly => Box::new(Damselfly::new(damselfly_bin, tls)),
            MethodName::Direct => Box::new(Direct),
            MethodName::BitTorrent => Box::new(BitTorrent::default()),
            MethodName::Store => Box::new(Store::new(damselfly_bin)),
            MethodName::S3Direct => Box::new(S3Direct::default()),
            MethodName::Cache => Box::new(Cache::new(damselfly_bin)),
        }
    }
}

impl FromStr for MethodName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match MethodName::ALL.into_iter().find(|m| m.to_string() == s) {
            Some(m) => Ok(m),
            None => {
                bail!("unknown method {s:?} (known: damselfly, direct, bittorrent, store, s3-direct, cache)")
            }
        }
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MethodName::Damselfly => "damselfly",
            MethodName::Direct => "direct",
            MethodName::BitTorrent => "bittorrent",
            MethodName::Store => "store",
            MethodName::S3Direct => "s3-direct",
            MethodName::Cache => "cache",
        })
    }
}

/// Starts `damselfly ARGS -o OUTPUT --socket PEER` on `host` against its peer daemon
/// (`store get`, `cache export`): the blob lands at `out_dir/blob`.
fn mesh_client_download(
    swarm: &Swarm,
    mesh: &Mesh,
    host: &str,
    out_dir: &Path,
    name: &str,
    args: &[&str],
) -> Result<Download> {
    let output = out_dir.join(BLOB);
    let mut cmd = Command::new(mesh.bin());
    cmd.args(args)
        .arg("-o")
        .arg(&output)
        .arg("--socket")
        .arg(&mesh.peer(host).socket);
    let job = swarm.lab.start(host, name, &cmd)?;
    Ok(Download {
        job,
        output,
        done_marker: None,
        agent_pid: mesh.peer(host).proc.pid(),
    })
}

/// A mesh's long-running daemons (name, pid): the scheduler, the seed and every peer.
fn mesh_daemons(mesh: &Mesh) -> Vec<(String, u32)> {
    let mut daemons = vec![
        (SCHEDULER.to_string(), mesh.scheduler.pid()),
        (SEED.to_string(), mesh.seed.proc.pid()),
    ];
    daemons.extend(mesh.peers.iter().map(|p| (p.host.clone(), p.proc.pid())));
    daemons
}
