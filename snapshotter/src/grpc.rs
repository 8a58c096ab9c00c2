//! The thin gRPC wrapper: containerd's `Snapshots` service over any [`Snapshotter`].
//!
//! A client may name a namespace in the `containerd-namespace` request header (containerd's Go
//! snapshots client does). containerd itself, as a proxy plugin's user, sends none: its metadata
//! layer already prefixes every key with its namespace, so those calls share one keyspace.

use crate::model::{Info, Kind, Labels, Mount};
use crate::proto::snapshots::{self as pb, snapshots_server};
use crate::proto::types;
use crate::snapshotter::Snapshotter;
use crate::{Error, Result};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// How many infos one List message carries.
const LIST_BATCH: usize = 100;

pub struct SnapshotsService<S> {
    snapshotter: Arc<S>,
}

impl<S: Snapshotter> SnapshotsService<S> {
    pub fn new(snapshotter: Arc<S>) -> Self {
        Self { snapshotter }
    }

    pub fn into_server(self) -> snapshots_server::SnapshotsServer<Self> {
        snapshots_server::SnapshotsServer::new(self)
    }
}

fn namespace<T>(req: &Request<T>) -> Result<String> {
    match req.metadata().get("containerd-namespace") {
        None => Ok(String::new()),
        Some(v) => v
            .to_str()
            .map(str::to_string)
            .map_err(|_| Error::InvalidArgument("containerd-namespace header is not text".into())),
    }
}

fn labels(map: std::collections::HashMap<String, String>) -> Labels {
    map.into_iter().collect()
}

fn mounts(m: Vec<Mount>) -> Vec<types::Mount> {
    m.into_iter()
        .map(|m| types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn info(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels.into_iter().collect(),
    }
}

type InfoStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Snapshotter> snapshots_server::Snapshots for SnapshotsService<S> {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let m = self
            .snapshotter
            .prepare(ns, r.key, r.parent, labels(r.labels))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: mounts(m) }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let m = self
            .snapshotter
            .view(ns, r.key, r.parent, labels(r.labels))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: mounts(m) }))
    }

    async fn mounts(&self, req: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let ns = namespace(&req)?;
        let m = self.snapshotter.mounts(ns, req.into_inner().key).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, req: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        self.snapshotter
            .commit(ns, r.name, r.key, r.parent, labels(r.labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.snapshotter.remove(ns, req.into_inner().key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let i = self.snapshotter.stat(ns, req.into_inner().key).await?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(info(i)) }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        let i = r
            .info
            .ok_or_else(|| Error::InvalidArgument("update names no snapshot".into()))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self
            .snapshotter
            .update(ns, i.name, labels(i.labels), paths)
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info(updated)),
        }))
    }

    type ListStream = InfoStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&req)?;
        let infos = self.snapshotter.list(ns, req.into_inner().filters).await?;
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(pb::ListSnapshotsResponse {
                    info: c.iter().cloned().map(info).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let ns = namespace(&req)?;
        let u = self.snapshotter.usage(ns, req.into_inner().key).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&req)?;
        self.snapshotter.cleanup(ns).await?;
        Ok(Response::new(()))
    }
}
