//! The methods the bench compares. Each one implements
//! [`super::swarm::Method`].

mod bittorrent;
mod damselfly;
mod direct;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, bail};

pub use bittorrent::BitTorrent;
pub use damselfly::Damselfly;
pub use direct::Direct;

use super::swarm::Method;

/// A method as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodName {
    Damselfly,
    Direct,
    BitTorrent,
}

impl MethodName {
    pub const ALL: [MethodName; 3] = [MethodName::Damselfly, MethodName::Direct, MethodName::BitTorrent];

    /// The method itself; `damselfly_bin` and `tls` (mutual TLS on) are only looked at by
    /// `damselfly`.
    pub fn build(self, damselfly_bin: Option<PathBuf>, tls: bool) -> Box<dyn Method> {
        match self {
            MethodName::Damselfly => Box::new(Damselfly::new(damselfly_bin, tls)),
            MethodName::Direct => Box::new(Direct),
            MethodName::BitTorrent => Box::new(BitTorrent::default()),
        }
    }
}

impl FromStr for MethodName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match MethodName::ALL.into_iter().find(|m| m.to_string() == s) {
            Some(m) => Ok(m),
            None => bail!("unknown method {s:?} (known: damselfly, direct, bittorrent)"),
        }
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MethodName::Damselfly => "damselfly",
            MethodName::Direct => "direct",
            MethodName::BitTorrent => "bittorrent",
        })
    }
}
