//! The snapshotter's domain types, independent of the wire format.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

pub type Labels = BTreeMap<String, String>;

/// containerd's limit on one label (key and value together).
pub const MAX_LABEL_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub name: String,
    /// Empty when the snapshot has no parent.
    pub parent: String,
    pub kind: Kind,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// One mount, in the shape of containerd's `types.Mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

pub fn check_labels(labels: &Labels) -> crate::Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(crate::Error::InvalidArgument(
                "label key must not be empty".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(crate::Error::InvalidArgument(format!(
                "label {k:?}: key and value together exceed {MAX_LABEL_BYTES} bytes"
            )));
        }
    }
    Ok(())
}
