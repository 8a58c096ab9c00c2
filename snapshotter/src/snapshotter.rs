//! The domain trait: containerd's snapshots API, one method per RPC. `grpc.rs` wraps it.

use crate::Result;
use crate::model::{Info, Labels, Mount, Usage};
use std::future::Future;

/// Every call names the containerd namespace it acts in; namespaces never see each other.
pub trait Snapshotter: Send + Sync + 'static {
    fn prepare(
        &self,
        ns: String,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn view(
        &self,
        ns: String,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn mounts(&self, ns: String, key: String) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    /// `parent`, when not empty, must be the active snapshot's parent.
    fn commit(
        &self,
        ns: String,
        name: String,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove(&self, ns: String, key: String) -> impl Future<Output = Result<()>> + Send;
    fn stat(&self, ns: String, key: String) -> impl Future<Output = Result<Info>> + Send;
    /// Only labels are mutable; `paths` as in containerd (`labels`, `labels.<key>`, or none).
    fn update(
        &self,
        ns: String,
        name: String,
        labels: Labels,
        paths: Vec<String>,
    ) -> impl Future<Output = Result<Info>> + Send;
    fn list(&self, ns: String, filters: Vec<String>) -> impl Future<Output = Result<Vec<Info>>> + Send;
    fn usage(&self, ns: String, key: String) -> impl Future<Output = Result<Usage>> + Send;
    /// Frees the disk of removed snapshots.
    fn cleanup(&self, ns: String) -> impl Future<Output = Result<()>> + Send;
}
