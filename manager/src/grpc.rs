//! The `Manager` gRPC service (see `proto/proto/manager.proto`).
//!
//! Handlers call the store and return `crate::error::Result`; the one
//! conversion into `tonic::Status` lives in `error`.

use crate::Ctx;
use crate::error::{Error, Result};
use crate::scope::PeerFacts;
use crate::store::clusters::{self, SchedulerCluster};
use crate::store::instances::{self, InstanceKind, Registration};
use crate::store::preheat::{self, TaskReport};
use damselfly_proto::manager as pb;
use damselfly_proto::manager::manager_server::{Manager, ManagerServer};
use damselfly_service::tls::{PeerIdentity, Role};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

pub fn service(ctx: Ctx) -> InterceptedService<ManagerServer<Service>, TokenGuard> {
    let guard = TokenGuard {
        expected: ctx
            .config
            .grpc_token
            .as_ref()
            .map(|t| crate::auth::sha256(&format!("Bearer {}", t.expose()))),
    };
    ManagerServer::with_interceptor(Service { ctx }, guard)
}

/// Checks `authorization: Bearer <grpc_token>` when a token is configured
/// (comparing SHA-256 digests, so the time taken says nothing about the token).
#[derive(Clone)]
pub struct TokenGuard {
    expected: Option<[u8; 32]>,
}

impl Interceptor for TokenGuard {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = self.expected else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(crate::auth::sha256);
        if got == Some(expected) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong grpc token"))
        }
    }
}

pub struct Service {
    ctx: Ctx,
}

/// With mutual TLS, what a call's client certificate may do: `Ok(Some(subject id))` when it
/// holds one of `roles` (the id the instances it registers are bound to), `Ok(None)` on a
/// plain connection (TLS off: the network is trusted), else PERMISSION_DENIED.
fn caller<T>(req: &Request<T>, roles: &[Role]) -> Result<Option<String>> {
    let Some(id) = req.extensions().get::<PeerIdentity>().filter(|i| i.verified) else {
        return Ok(None);
    };
    if !roles.iter().any(|r| id.has(*r)) {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(Error::Forbidden(format!(
            "this call needs a certificate with the {} role",
            names.join(" or ")
        )));
    }
    Ok(Some(id.subject.clone().unwrap_or_default()))
}

fn settings_pb(c: &SchedulerCluster) -> pb::ClusterSettings {
    let s = &c.settings;
    pb::ClusterSettings {
        candidate_parent_limit: s.candidate_parent_limit,
        filter_parent_limit: s.filter_parent_limit,
        peer_upload_concurrency: s.peer_upload_concurrency,
        peer_download_concurrency: s.peer_download_concurrency,
        min_piece_length: s.min_piece_length,
        max_piece_length: s.max_piece_length,
    }
}

fn config_pb(c: &SchedulerCluster) -> pb::SchedulerClusterConfig {
    pb::SchedulerClusterConfig {
        cluster_id: c.id as u64,
        cluster_name: c.name.clone(),
        settings: Some(settings_pb(c)),
        version: c.updated_at,
    }
}

fn id(v: u64, field: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(field, "out of range"))
}

impl Service {
    /// Scheduler clusters best first for a peer or scheduler with these facts.
    async fn ranked(&self, facts: &PeerFacts) -> Result<Vec<SchedulerCluster>> {
        let all = clusters::list_scheduler_clusters(&self.ctx.db).await?;
        Ok(crate::scope::rank(&all, facts).into_iter().cloned().collect())
    }

    async fn register_scheduler(
        &self,
        r: pb::RegisterSchedulerRequest,
        owner: Option<String>,
    ) -> Result<pb::RegisterSchedulerResponse> {
        let cluster = if r.cluster_id == 0 {
            let facts = PeerFacts {
                hostname: r.hostname.clone(),
                ip: r.ip.parse().ok(),
                idc: r.idc.clone(),
                location: r.location.clone(),
            };
            self.ranked(&facts)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::not_found("scheduler cluster"))?
        } else {
            clusters::get_scheduler_cluster(&self.ctx.db, id(r.cluster_id, "cluster_id")?).await?
        };
        let inst = instances::register(
            &self.ctx.db,
            &Registration {
                kind: InstanceKind::Scheduler,
                hostname: r.hostname,
                ip: r.ip,
                port: r.port as i64,
                download_port: 0,
                idc: r.idc,
                location: r.location,
                cluster_id: cluster.id,
                owner: owner.unwrap_or_default(),
            },
        )
        .await?;
        tracing::info!(instance = inst.id, hostname = %inst.hostname, cluster = cluster.id, "scheduler registered");
        Ok(pb::RegisterSchedulerResponse {
            instance_id: inst.id as u64,
            config: Some(config_pb(&cluster)),
        })
    }

    async fn list_schedulers(&self, r: pb::ListSchedulersRequest) -> Result<pb::ListSchedulersResponse> {
        let facts = PeerFacts {
            hostname: r.hostname,
            ip: r.ip.parse().ok(),
            idc: r.idc,
            location: r.location,
        };
        let ranked = self.ranked(&facts).await?;
        let timeout = self.ctx.keepalive_timeout_ms();
        for c in &ranked {
            let live = instances::active_in_cluster(&self.ctx.db, "scheduler", c.id, timeout).await?;
            if !live.is_empty() {
                return Ok(pb::ListSchedulersResponse {
                    cluster_id: c.id as u64,
                    schedulers: live
                        .into_iter()
                        .map(|i| pb::SchedulerInfo {
                            id: i.id as u64,
                            hostname: i.hostname,
                            ip: i.ip,
                            port: i.port as u32,
                            idc: i.idc,
                            location: i.location,
                        })
                        .collect(),
                    settings: Some(settings_pb(c)),
                });
            }
        }
        let best = ranked
            .first()
            .ok_or_else(|| Error::not_found("scheduler cluster"))?;
        Ok(pb::ListSchedulersResponse {
            cluster_id: best.id as u64,
            schedulers: vec![],
            settings: Some(settings_pb(best)),
        })
    }

    /// Registers the sender of a session's `hello`: a seed peer in its seed
    /// peer cluster, a peer in the scheduler cluster that serves it.
    async fn register_session(
        &self,
        kind: InstanceKind,
        hello: &pb::SeedPeerHello,
        owner: Option<String>,
    ) -> Result<(instances::Instance, pb::SeedPeerWelcome)> {
        let ctx = &self.ctx;
        let (cluster_id, welcome) = if kind == InstanceKind::Peer {
            let served = self
                .list_schedulers(pb::ListSchedulersRequest {
                    hostname: hello.hostname.clone(),
                    ip: hello.ip.clone(),
                    idc: hello.idc.clone(),
                    location: hello.location.clone(),
                })
                .await?;
            let cid = id(served.cluster_id, "cluster_id")?;
            (
                cid,
                pb::SeedPeerWelcome {
                    scheduler_cluster_id: served.cluster_id,
                    ..Default::default()
                },
            )
        } else {
            let cluster = if hello.seed_peer_cluster_id == 0 {
                clusters::default_seed_peer_cluster(&ctx.db).await?
            } else {
                clusters::get_seed_peer_cluster(
                    &ctx.db,
                    id(hello.seed_peer_cluster_id, "seed_peer_cluster_id")?,
                )
                .await?
            };
            (
                cluster.id,
                pb::SeedPeerWelcome {
                    seed_peer_cluster_id: cluster.id as u64,
                    scheduler_cluster_id: cluster.scheduler_cluster_id as u64,
                    ..Default::default()
                },
            )
        };
        let inst = instances::register(
            &ctx.db,
            &Registration {
                kind,
                hostname: hello.hostname.clone(),
                ip: hello.ip.clone(),
                port: hello.port as i64,
                download_port: hello.download_port as i64,
                idc: hello.idc.clone(),
                location: hello.location.clone(),
                cluster_id,
                owner: owner.unwrap_or_default(),
            },
        )
        .await?;
        let welcome = pb::SeedPeerWelcome {
            instance_id: inst.id as u64,
            ..welcome
        };
        Ok((inst, welcome))
    }

    /// Runs one seed peer or peer session until its stream ends.
    async fn session(
        &self,
        kind: InstanceKind,
        mut inbound: Streaming<pb::SeedPeerMessage>,
        tx: crate::hub::CommandTx,
        owner: Option<String>,
    ) {
        let ctx = self.ctx.clone();
        let hello = match inbound.next().await {
            Some(Ok(pb::SeedPeerMessage {
                message: Some(pb::seed_peer_message::Message::Hello(h)),
            })) => h,
            _ => {
                let _ = tx
                    .send(Err(Status::invalid_argument("the first message must be hello")))
                    .await;
                return;
            }
        };
        let (inst, welcome) = match self.register_session(kind, &hello, owner).await {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let welcome = pb::SeedPeerCommand {
            command: Some(pb::seed_peer_command::Command::Welcome(welcome)),
        };
        if tx.send(Ok(welcome)).await.is_err() {
            return;
        }
        let conn = ctx.hub.join(inst.id, tx);
        let what = kind.as_str();
        tracing::info!(instance = inst.id, hostname = %inst.hostname, kind = what, "session opened");
        ctx.wake.notify_one();
        let policy = crate::preheat::retry_policy(&ctx);
        loop {
            let msg = tokio::select! {
                m = inbound.next() => m,
                _ = ctx.closed() => None,
            };
            let Some(Ok(msg)) = msg else { break };
            let result = match msg.message {
                Some(pb::seed_peer_message::Message::Keepalive(_)) => {
                    instances::keepalive(&ctx.db, inst.id).await.map(|_| ())
                }
                Some(pb::seed_peer_message::Message::Progress(pr)) => {
                    let report = match pr.state() {
                        pb::preheat_progress::State::Succeeded => TaskReport::Succeeded,
                        pb::preheat_progress::State::Failed => TaskReport::Failed,
                        _ => TaskReport::Running,
                    };
                    let r = preheat::report_task(
                        &ctx.db,
                        pr.task_id as i64,
                        inst.id,
                        report,
                        pr.bytes as i64,
                        &pr.error,
                        &policy,
                    )
                    .await;
                    ctx.wake.notify_one();
                    r
                }
                Some(pb::seed_peer_message::Message::Hello(_)) | None => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(instance = inst.id, kind = what, error = %e, "session message not applied");
            }
        }
        ctx.hub.leave(inst.id, conn);
        if *ctx.closing.borrow() {
            // This manager is stopping, not the seed: it reconnects elsewhere.
            return;
        }
        if let Err(e) = instances::mark_inactive(&ctx.db, inst.id).await {
            tracing::warn!(instance = inst.id, kind = what, error = %e, "could not mark the instance inactive");
        }
        tracing::info!(instance = inst.id, kind = what, "session closed");
    }
}

#[tonic::async_trait]
impl Manager for Service {
    async fn register_scheduler(
        &self,
        req: Request<pb::RegisterSchedulerRequest>,
    ) -> Result<Response<pb::RegisterSchedulerResponse>, Status> {
        self.ctx.metrics.grpc_call("RegisterScheduler");
        let owner = caller(&req, &[Role::Scheduler])?;
        Ok(Response::new(
            self.register_scheduler(req.into_inner(), owner).await?,
        ))
    }

    async fn keep_alive(
        &self,
        req: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        self.ctx.metrics.grpc_call("KeepAlive");
        let owner = caller(&req, &[Role::Scheduler])?;
        // The stream is read in its own task: when the client dies, its
        // connection goes away and the server drops this handler, but the
        // task still sees the stream end and marks the instance inactive.
        let ctx = self.ctx.clone();
        match tokio::spawn(keepalive_stream(ctx, req.into_inner(), owner)).await {
            Ok(r) => r.map(|()| Response::new(pb::KeepAliveResponse {})),
            Err(_) => Err(Status::internal("keepalive task failed")),
        }
    }

    async fn get_scheduler_cluster_config(
        &self,
        req: Request<pb::GetSchedulerClusterConfigRequest>,
    ) -> Result<Response<pb::SchedulerClusterConfig>, Status> {
        self.ctx.metrics.grpc_call("GetSchedulerClusterConfig");
        caller(&req, &[Role::Scheduler])?;
        let cid = id(req.into_inner().cluster_id, "cluster_id")?;
        let c = clusters::get_scheduler_cluster(&self.ctx.db, cid).await?;
        Ok(Response::new(config_pb(&c)))
    }

    async fn list_schedulers(
        &self,
        req: Request<pb::ListSchedulersRequest>,
    ) -> Result<Response<pb::ListSchedulersResponse>, Status> {
        self.ctx.metrics.grpc_call("ListSchedulers");
        caller(&req, &[Role::Peer, Role::Scheduler])?;
        Ok(Response::new(self.list_schedulers(req.into_inner()).await?))
    }

    async fn list_seed_peers(
        &self,
        req: Request<pb::ListSeedPeersRequest>,
    ) -> Result<Response<pb::ListSeedPeersResponse>, Status> {
        self.ctx.metrics.grpc_call("ListSeedPeers");
        caller(&req, &[Role::Peer, Role::Scheduler])?;
        let cid = id(req.into_inner().scheduler_cluster_id, "scheduler_cluster_id")?;
        let seeds = instances::active_seed_peers(&self.ctx.db, cid, self.ctx.keepalive_timeout_ms())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::ListSeedPeersResponse {
            seed_peers: seeds
                .into_iter()
                .map(|i| pb::SeedPeerInfo {
                    id: i.id as u64,
                    hostname: i.hostname,
                    ip: i.ip,
                    port: i.port as u32,
                    download_port: i.download_port as u32,
                    seed_peer_cluster_id: i.cluster_id as u64,
                    idc: i.idc,
                    location: i.location,
                })
                .collect(),
        }))
    }

    async fn report_traffic(
        &self,
        req: Request<pb::ReportTrafficRequest>,
    ) -> Result<Response<pb::ReportTrafficResponse>, Status> {
        self.ctx.metrics.grpc_call("ReportTraffic");
        let owner = caller(&req, &[Role::Scheduler])?;
        let r = req.into_inner();
        let cid = id(r.scheduler_cluster_id, "scheduler_cluster_id")?;
        let iid = id(r.instance_id, "instance_id")?;
        instances::check_owner(&self.ctx.db, iid, InstanceKind::Scheduler, owner.as_deref()).await?;
        crate::store::traffic::report(
            &self.ctx.db,
            cid,
            id(r.instance_id, "instance_id")?,
            r.timestamp_ms,
            id(r.origin_bytes, "origin_bytes")?,
            id(r.peer_bytes, "peer_bytes")?,
        )
        .await?;
        Ok(Response::new(pb::ReportTrafficResponse {}))
    }

    type SeedPeerSessionStream = ReceiverStream<Result<pb::SeedPeerCommand, Status>>;

    async fn seed_peer_session(
        &self,
        req: Request<Streaming<pb::SeedPeerMessage>>,
    ) -> Result<Response<Self::SeedPeerSessionStream>, Status> {
        self.ctx.metrics.grpc_call("SeedPeerSession");
        let owner = caller(&req, &[Role::Seed])?;
        Ok(Response::new(self.open_session(
            InstanceKind::SeedPeer,
            req.into_inner(),
            owner,
        )))
    }

    type PeerSessionStream = ReceiverStream<Result<pb::SeedPeerCommand, Status>>;

    async fn peer_session(
        &self,
        req: Request<Streaming<pb::SeedPeerMessage>>,
    ) -> Result<Response<Self::PeerSessionStream>, Status> {
        self.ctx.metrics.grpc_call("PeerSession");
        let owner = caller(&req, &[Role::Peer])?;
        Ok(Response::new(self.open_session(
            InstanceKind::Peer,
            req.into_inner(),
            owner,
        )))
    }
}

impl Service {
    /// Runs the session in its own task; the returned stream carries its commands.
    fn open_session(
        &self,
        kind: InstanceKind,
        inbound: Streaming<pb::SeedPeerMessage>,
        owner: Option<String>,
    ) -> ReceiverStream<Result<pb::SeedPeerCommand, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let me = Service {
            ctx: self.ctx.clone(),
        };
        tokio::spawn(async move { me.session(kind, inbound, tx, owner).await });
        ReceiverStream::new(rx)
    }
}

/// Records each keepalive of one stream; when the stream ends (not because
/// this manager stops) the instance turns inactive at once.
async fn keepalive_stream(
    ctx: Ctx,
    mut stream: Streaming<pb::KeepAliveRequest>,
    owner: Option<String>,
) -> Result<(), Status> {
    let mut current: Option<i64> = None;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            // On shutdown the stream ends but the instance is left as it is:
            // another manager (or this one, restarted) takes its keepalives.
            _ = ctx.closed() => return Ok(()),
        };
        let Some(Ok(msg)) = msg else { break };
        let iid = id(msg.instance_id, "instance_id")?;
        if current != Some(iid) {
            // Only the certificate that registered a scheduler keeps it alive.
            match instances::check_owner(&ctx.db, iid, InstanceKind::Scheduler, owner.as_deref()).await {
                Err(e @ (Error::NotFound { .. } | Error::Forbidden(_))) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(instance = iid, error = %e, "keepalive owner not checked; not recorded");
                    continue;
                }
                Ok(()) => {}
            }
        }
        match instances::keepalive(&ctx.db, iid).await {
            Ok(true) => tracing::info!(instance = iid, "instance is back and active again"),
            Ok(false) => {}
            Err(e @ Error::NotFound { .. }) => return Err(e.into()),
            Err(e) => tracing::warn!(instance = iid, error = %e, "keepalive not recorded"),
        }
        current = Some(iid);
    }
    if let Some(iid) = current {
        tracing::info!(instance = iid, "keepalive stream ended; instance inactive");
        instances::mark_inactive(&ctx.db, iid).await?;
    }
    Ok(())
}
