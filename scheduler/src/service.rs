//! The gRPC wrapper: decodes stream messages into [`Event`]s for the
//! scheduling [`Core`] and encodes the [`Command`]s it returns onto the
//! streams.
//!
//! Every handler takes the lock, hands the core one event and queues the
//! replies on unbounded channels; nothing awaits while holding the lock, and
//! commands leave in the order the core produced them.

use crate::admission;
use crate::core::cache::CacheEntry;
use crate::core::{CacheImport, CacheMeta, Command, Core, Event, Registration, StoredCache};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::schedule::Planner;
use crate::state::State;
use damselfly_proto::scheduler as proto;
use damselfly_proto::scheduler::scheduler_server::Scheduler;
use damselfly_proto::scheduler::{
    BackToSource, CacheTask, DeleteTask, Digests, FailReason, HostCommand, HostMessage, Parents, PieceDigest,
    Register, Replicate, SeedKey, SeedKeys, SeedTask, StoredTask, TaskCommand, TaskInfo, TaskMessage,
    TicketKey, host_command, host_message, task_command, task_message,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

type HostTx = mpsc::UnboundedSender<Result<HostCommand, Status>>;
type TaskTx = mpsc::UnboundedSender<Result<TaskCommand, Status>>;

/// The open streams, by host and by (task, peer) with the peer's certificate subject.
#[derive(Default)]
struct Links {
    /// By host id: the stream's number, its sender, and (TLS on) its certificate's subject.
    hosts: HashMap<String, (u64, HostTx, Option<String>)>,
    peers: HashMap<(String, String), (TaskTx, Option<String>)>,
    next_conn: u64,
    /// With TLS on: signs the piece ticket of every parent list.
    tickets: Option<Arc<TicketSigner>>,
}

struct Inner {
    core: Core,
    links: Links,
}

pub struct Shared {
    inner: Mutex<Inner>,
    pub planner: Arc<Planner>,
    pub metrics: Metrics,
    /// The manager link's view (default when there is no manager).
    pub manager: Arc<Mutex<crate::manager::ManagerStatus>>,
}

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Shared {
    pub fn new(core: Core, manager: Arc<Mutex<crate::manager::ManagerStatus>>) -> Self {
        Self::with_tickets(core, manager, None)
    }

    /// Like [`Shared::new`]; with `tickets`, every parent list carries a piece ticket for its
    /// peer's certificate and every host stream starts with the key that checks them.
    pub fn with_tickets(
        core: Core,
        manager: Arc<Mutex<crate::manager::ManagerStatus>>,
        tickets: Option<TicketSigner>,
    ) -> Self {
        Self {
            planner: core.planner.clone(),
            metrics: core.metrics.clone(),
            inner: Mutex::new(Inner {
                core,
                links: Links {
                    tickets: tickets.map(Arc::new),
                    ..Links::default()
                },
            }),
            manager,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("scheduler state lock poisoned")
    }

    fn with_core<R>(&self, f: impl FnOnce(&Core) -> R) -> R {
        f(&self.lock().core)
    }

    /// Reads the scheduling state (for `/tasks/{id}`).
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock().core.state)
    }

    /// Hands one event to the core and delivers what it answers.
    fn handle(&self, event: Event) -> Result<(), Error> {
        let mut inner = self.lock();
        let commands = inner.core.handle(Instant::now(), event)?;
        inner.links.deliver(commands);
        Ok(())
    }

    /// GC: hosts that stopped announcing, tasks nobody touched for the TTL.
    pub fn gc(&self) {
        let _ = self.handle(Event::Tick);
    }

    fn on_host_message(&self, host_id: &str, msg: host_message::Msg) {
        let event = match msg {
            host_message::Msg::Hello(_) => Event::HostAlive {
                host_id: host_id.to_string(),
                active_uploads: None,
            },
            host_message::Msg::Keepalive(load) => Event::HostAlive {
                host_id: host_id.to_string(),
                active_uploads: Some(load.active_uploads),
            },
            host_message::Msg::Stored(stored) => {
                let (caches, plain): (Vec<_>, Vec<_>) =
                    stored.tasks.into_iter().partition(|st| st.cache.is_some());
                let caches = caches
                    .into_iter()
                    .filter_map(|st| match stored_cache(&st) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            warn!(host_id, task_id = st.task_id, error = %e, "stored cache task refused");
                            None
                        }
                    })
                    .collect::<Vec<_>>();
                if !caches.is_empty() {
                    let _ = self.handle(Event::CacheStored {
                        host_id: host_id.to_string(),
                        tasks: caches,
                    });
                }
                Event::HostStored {
                    host_id: host_id.to_string(),
                    tasks: plain
                        .into_iter()
                        .filter_map(|st| Some((st.task_id.clone(), admission::stored_layout(&st)?)))
                        .collect(),
                }
            }
        };
        let _ = self.handle(event);
    }

    /// Cache expiry and replica placement.
    pub fn cache_tick(&self) {
        let _ = self.handle(Event::CacheTick);
    }

    /// A cache entry as `damselfly cache stat` shows it.
    fn cache_entry(&self, find: impl Fn(&Core) -> Option<&CacheEntry>) -> Option<proto::CacheEntry> {
        let inner = self.lock();
        let core = &inner.core;
        let e = find(core)?;
        let name = |h: &String| {
            core.state
                .hosts
                .get(h)
                .map(|h| h.info.hostname.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| h.clone())
        };
        Some(proto::CacheEntry {
            id: e.meta.id.clone(),
            task_id: e.task_id.clone(),
            digest: e.meta.digest.clone(),
            content_length: e.layout.content_length,
            piece_length: e.layout.piece_length,
            replicas_wanted: e.meta.replicas,
            replica_hosts: e.replicas.iter().map(name).collect(),
            other_holders: e.others.iter().map(name).collect(),
            created_unix: e.meta.created_unix,
            expires_unix: e.meta.expires_unix,
            owner_host_id: e.meta.owner_host_id.clone(),
            piece_digests: e.digests.concat(),
        })
    }

    /// Registers a peer on a task: decodes, then the core decides who feeds it.
    fn register(
        &self,
        mut reg: Register,
        tx: TaskTx,
        subject: Option<String>,
    ) -> Result<(String, String), Error> {
        let admitted = admission::registration(&reg)?;
        let spec = reg.spec.take().expect("checked by admission");
        let registration = Registration {
            host_id: reg.host_id,
            peer_id: reg.peer_id.clone(),
            pieces_held: admitted.held,
            from_source: reg.from_source,
            layout: admitted.layout,
            spec,
        };
        let key = (registration.spec.task_id.clone(), reg.peer_id);
        let started = Instant::now();
        let mut inner = self.lock();
        let commands = inner.core.handle(started, Event::Registered(registration))?;
        inner.links.peers.insert(key.clone(), (tx, subject));
        inner.links.deliver(commands);
        self.metrics
            .schedule_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(key)
    }

    fn on_task_message(&self, task_id: &str, peer_id: &str, msg: task_message::Msg) {
        let (task_id, peer_id) = (task_id.to_string(), peer_id.to_string());
        let event = match msg {
            task_message::Msg::Register(_) => return,
            task_message::Msg::SourceInfo(info) => match admission::source_layout(None, &info) {
                Ok(layout) => Event::SourceInfo {
                    task_id,
                    peer_id,
                    layout,
                },
                Err(e) => {
                    warn!(task_id, peer_id, error = %e, "source layout refused");
                    return;
                }
            },
            task_message::Msg::Pieces(report) => Event::PiecesReported {
                task_id,
                peer_id,
                report,
            },
            task_message::Msg::PieceFailed(f) => Event::PieceFailed {
                task_id,
                peer_id,
                parent_peer_id: f.parent_peer_id,
                index: f.index,
                reason: FailReason::try_from(f.reason).unwrap_or(FailReason::Unspecified),
            },
            task_message::Msg::Reschedule(_) => Event::RescheduleAsked { task_id, peer_id },
            task_message::Msg::Finished(_) => Event::Finished { task_id, peer_id },
            task_message::Msg::Failed(f) => Event::Failed {
                task_id,
                peer_id,
                reason: f.reason,
            },
        };
        let _ = self.handle(event);
    }

    /// The task stream ended: its sender goes, and the core decides whether the peer stays.
    fn task_stream_closed(&self, task_id: &str, peer_id: &str) {
        let mut inner = self.lock();
        inner
            .links
            .peers
            .remove(&(task_id.to_string(), peer_id.to_string()));
        let event = Event::StreamClosed {
            task_id: task_id.to_string(),
            peer_id: peer_id.to_string(),
        };
        if let Ok(commands) = inner.core.handle(Instant::now(), event) {
            inner.links.deliver(commands);
        }
    }

    /// With TLS on: `host_id` must be a host whose stream is open under the caller's
    /// certificate, so a member cannot act for another host by naming its id (cache ownership
    /// is by host id). Plain connections pass (TLS off: the network is trusted).
    fn announced_by(&self, host_id: &str, identity: Option<&PeerIdentity>) -> Result<(), Error> {
        let Some(subject) = identity.filter(|i| i.verified).and_then(|i| i.subject.as_ref()) else {
            return Ok(());
        };
        match self.lock().links.hosts.get(host_id) {
            Some((_, _, Some(held))) if held == subject => Ok(()),
            _ => Err(Error::Forbidden(format!(
                "host id {host_id} is not announced with this certificate"
            ))),
        }
    }

    /// A host stream ended: the core forgets the host unless it reconnected since.
    fn host_stream_closed(&self, host_id: &str, conn: u64) {
        let mut inner = self.lock();
        if inner.links.hosts.get(host_id).is_some_and(|(c, _, _)| *c == conn) {
            inner.links.hosts.remove(host_id);
        }
        let had_key = inner.seal_key_of(host_id);
        let event = Event::HostLeft {
            host_id: host_id.to_string(),
            conn: Some(conn),
        };
        if let Ok(commands) = inner.core.handle(Instant::now(), event) {
            inner.links.deliver(commands);
        }
        if had_key && !inner.seal_key_of(host_id) {
            inner.send_seed_keys(None);
        }
    }
}

impl Inner {
    /// Whether `host_id` is a seed with a seal key.
    fn seal_key_of(&self, host_id: &str) -> bool {
        self.core
            .state
            .hosts
            .get(host_id)
            .is_some_and(|h| h.info.seed && !h.info.seal_key.is_empty())
    }

    /// Sends the seeds' seal keys to `host_id`'s stream, or to every host stream.
    fn send_seed_keys(&self, host_id: Option<&str>) {
        let keys = self
            .core
            .state
            .hosts
            .values()
            .filter(|h| h.info.seed && !h.info.seal_key.is_empty())
            .map(|h| SeedKey {
                host_id: h.info.host_id.clone(),
                public_key: h.info.seal_key.clone(),
            })
            .collect();
        let cmd = HostCommand {
            cmd: Some(host_command::Cmd::SeedKeys(SeedKeys { keys })),
        };
        match host_id {
            Some(h) => {
                if let Some((_, tx, _)) = self.links.hosts.get(h) {
                    let _ = tx.send(Ok(cmd));
                }
            }
            None => {
                for (_, tx, _) in self.links.hosts.values() {
                    let _ = tx.send(Ok(cmd.clone()));
                }
            }
        }
    }
}

impl Links {
    /// Encodes each command onto its stream; a closed stream drops it.
    fn deliver(&self, commands: Vec<Command>) {
        for c in commands {
            let through_mesh = matches!(c, Command::SeedCopy { .. });
            let (task_id, peer_id, c) = match c {
                Command::SeedTask { host_id, spec } | Command::SeedCopy { host_id, spec } => {
                    let trigger = HostCommand {
                        cmd: Some(host_command::Cmd::SeedTask(SeedTask {
                            spec: Some(spec),
                            through_mesh,
                        })),
                    };
                    if let Some((_, tx, _)) = self.hosts.get(&host_id)
                        && tx.send(Ok(trigger)).is_err()
                    {
                        warn!(host_id, "seed host stream closed; trigger lost");
                    }
                    continue;
                }
                Command::Replicate { host_id, spec, meta } => {
                    let cache = cache_task(&meta, &spec, false);
                    let cmd = host_command::Cmd::Replicate(Replicate {
                        spec: Some(spec),
                        cache: Some(cache),
                    });
                    if let Some((_, tx, _)) = self.hosts.get(&host_id) {
                        let _ = tx.send(Ok(HostCommand { cmd: Some(cmd) }));
                    }
                    continue;
                }
                Command::DeleteTask { host_id, task_id } => {
                    let cmd = host_command::Cmd::DeleteTask(DeleteTask { task_id });
                    if let Some((_, tx, _)) = self.hosts.get(&host_id) {
                        let _ = tx.send(Ok(HostCommand { cmd: Some(cmd) }));
                    }
                    continue;
                }
                Command::Info {
                    task_id,
                    peer_id,
                    layout,
                } => (
                    task_id,
                    peer_id,
                    task_command::Cmd::Info(TaskInfo {
                        content_length: layout.content_length,
                        piece_length: layout.piece_length,
                    }),
                ),
                Command::Digests {
                    task_id,
                    peer_id,
                    pieces,
                } => (
                    task_id,
                    peer_id,
                    task_command::Cmd::Digests(Digests {
                        pieces: pieces
                            .into_iter()
                            .map(|(index, d)| PieceDigest {
                                index,
                                sha256: d.to_vec(),
                            })
                            .collect(),
                    }),
                ),
                Command::Parents {
                    task_id,
                    peer_id,
                    parents,
                } => {
                    let ticket = match (&self.tickets, self.peers.get(&(task_id.clone(), peer_id.clone()))) {
                        (Some(signer), Some((_, Some(subject)))) => {
                            signer.issue(&task_id, subject, std::time::SystemTime::now())
                        }
                        _ => Vec::new(),
                    };
                    (
                        task_id,
                        peer_id,
                        task_command::Cmd::Parents(Parents { parents, ticket }),
                    )
                }
                Command::BackToSource {
                    task_id,
                    peer_id,
                    reason,
                } => (
                    task_id,
                    peer_id,
                    task_command::Cmd::BackToSource(BackToSource { reason }),
                ),
            };
            if let Some((tx, _)) = self.peers.get(&(task_id, peer_id)) {
                let _ = tx.send(Ok(TaskCommand { cmd: Some(c) }));
            }
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The wire form of a cache entry's metadata (digests travel in the task's `Digests`).
fn cache_task(meta: &CacheMeta, _spec: &damselfly_proto::scheduler::TaskSpec, replica: bool) -> CacheTask {
    CacheTask {
        id: meta.id.clone(),
        digest: meta.digest.clone(),
        replicas: meta.replicas,
        created_unix: meta.created_unix,
        expires_unix: meta.expires_unix,
        owner_host_id: meta.owner_host_id.clone(),
        piece_digests: Vec::new(),
        replica,
    }
}

/// A holder's stored cache task, decoded; its expiry becomes time left.
fn stored_cache(st: &StoredTask) -> Result<StoredCache, Error> {
    let c = st.cache.as_ref().expect("partitioned on cache");
    let spec = damselfly_proto::scheduler::TaskSpec {
        task_id: st.task_id.clone(),
        url: damselfly_proto::task_id::cache_url(&c.id),
        ..Default::default()
    };
    let admission::CheckedCache {
        spec,
        layout,
        digests,
        meta,
    } = admission::cache_task(Some(&spec), st.content_length, st.piece_length, Some(c))?;
    let remaining = (meta.expires_unix != 0)
        .then(|| std::time::Duration::from_secs(meta.expires_unix.saturating_sub(now_unix()).max(0) as u64));
    Ok(StoredCache {
        task_id: spec.task_id.clone(),
        spec,
        layout,
        digests,
        meta,
        remaining,
        replica: c.replica,
    })
}

/// The tonic service.
#[derive(Clone)]
pub struct SchedulerService {
    pub shared: Arc<Shared>,
}

use damselfly_service::ticket::TicketSigner;
use damselfly_service::tls::PeerIdentity;

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type AnnounceHostStream = ReplyStream<HostCommand>;
    type AnnounceTaskStream = ReplyStream<TaskCommand>;

    async fn announce_host(
        &self,
        request: Request<Streaming<HostMessage>>,
    ) -> Result<Response<Self::AnnounceHostStream>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|m| m.msg);
        let Some(host_message::Msg::Hello(info)) = first else {
            return Err(Error::BadRequest("the first host message must be hello".into()).into());
        };
        admission::hello(&info)?;
        admission::certificate(identity.as_ref(), info.seed)?;
        let host_id = info.host_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let key = self.shared.lock().links.tickets.as_ref().map(|t| t.public_key());
        if let Some(public_key) = key {
            let _ = tx.send(Ok(HostCommand {
                cmd: Some(host_command::Cmd::TicketKey(TicketKey { public_key })),
            }));
        }
        let conn = {
            let mut inner = self.shared.lock();
            inner.links.next_conn += 1;
            let conn = inner.links.next_conn;
            // A host id whose stream is open under another certificate is not taken over.
            let subject = identity
                .as_ref()
                .filter(|i| i.verified)
                .and_then(|i| i.subject.clone());
            if let Some((_, _, Some(held))) = inner.links.hosts.get(&host_id)
                && subject.as_ref() != Some(held)
            {
                return Err(Error::Forbidden(format!(
                    "host id {host_id} is announced by another certificate"
                ))
                .into());
            }
            inner.links.hosts.insert(host_id.clone(), (conn, tx, subject));
            let commands = inner
                .core
                .handle(Instant::now(), Event::HostAnnounced { info, conn })?;
            inner.links.deliver(commands);
            // A new seed key goes to every host; anyone else gets the current keys.
            let everyone = inner.seal_key_of(&host_id);
            inner.send_seed_keys((!everyone).then_some(host_id.as_str()));
            conn
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(msg) = m.msg {
                    shared.on_host_message(&host_id, msg);
                }
            }
            shared.host_stream_closed(&host_id, conn);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn announce_task(
        &self,
        request: Request<Streaming<TaskMessage>>,
    ) -> Result<Response<Self::AnnounceTaskStream>, Status> {
        let identity = request.extensions().get::<PeerIdentity>();
        admission::certificate(identity, false)?;
        let subject = identity.filter(|i| i.verified).and_then(|i| i.subject.clone());
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|m| m.msg);
        let Some(task_message::Msg::Register(reg)) = first else {
            return Err(Error::BadRequest("the first task message must be register".into()).into());
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (task_id, peer_id) = self.shared.register(reg, tx, subject)?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(msg) = m.msg {
                    shared.on_task_message(&task_id, &peer_id, msg);
                }
            }
            shared.task_stream_closed(&task_id, &peer_id);
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn cache_import(
        &self,
        request: Request<proto::CacheImportRequest>,
    ) -> Result<Response<proto::CacheEntry>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        admission::certificate(identity.as_ref(), false)?;
        let req = request.into_inner();
        self.shared.announced_by(&req.host_id, identity.as_ref())?;
        let admission::CheckedCache {
            spec,
            layout,
            digests,
            mut meta,
        } = admission::cache_task(
            req.spec.as_ref(),
            req.content_length,
            req.piece_length,
            req.cache.as_ref(),
        )?;
        // The owner is the host that imports; times are the scheduler's.
        meta.owner_host_id = req.host_id.clone();
        meta.created_unix = now_unix();
        let ttl = (req.ttl_seconds > 0).then(|| std::time::Duration::from_secs(req.ttl_seconds));
        meta.expires_unix = ttl.map_or(0, |t| meta.created_unix.saturating_add(t.as_secs() as i64));
        let import = CacheImport {
            host_id: req.host_id,
            task_id: spec.task_id.clone(),
            spec,
            layout,
            digests,
            meta,
            ttl,
        };
        let task_id = import.task_id.clone();
        self.shared.handle(Event::CacheImported(import))?;
        let entry = self.shared.cache_entry(|c| c.caches.entries.get(&task_id));
        entry
            .map(Response::new)
            .ok_or_else(|| Status::internal("cache entry vanished after import"))
    }

    async fn cache_stat(
        &self,
        request: Request<proto::CacheStatRequest>,
    ) -> Result<Response<proto::CacheEntry>, Status> {
        let id = request.into_inner().id;
        self.shared
            .cache_entry(|c| c.caches.by_id(&id))
            .map(Response::new)
            .ok_or_else(|| Error::NotFound(format!("cache id {id}: no such cache task")).into())
    }

    async fn cache_delete(
        &self,
        request: Request<proto::CacheDeleteRequest>,
    ) -> Result<Response<proto::CacheDeleteResponse>, Status> {
        let identity = request.extensions().get::<PeerIdentity>().cloned();
        admission::certificate(identity.as_ref(), false)?;
        let req = request.into_inner();
        self.shared.announced_by(&req.host_id, identity.as_ref())?;
        self.shared.handle(Event::CacheDeleted {
            id: req.id,
            host_id: req.host_id,
        })?;
        Ok(Response::new(proto::CacheDeleteResponse {}))
    }

    async fn cache_list(
        &self,
        _: Request<proto::CacheListRequest>,
    ) -> Result<Response<proto::CacheListResponse>, Status> {
        let ids: Vec<String> = self
            .shared
            .with_core(|c| c.caches.entries.keys().cloned().collect());
        let mut entries: Vec<proto::CacheEntry> = ids
            .iter()
            .filter_map(|t| self.shared.cache_entry(|c| c.caches.entries.get(t)))
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(proto::CacheListResponse { entries }))
    }
}
