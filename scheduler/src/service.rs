//! The gRPC wrapper: turns stream messages into calls on [`Shared`].
//!
//! Every handler takes the state lock, changes plain data and queues replies
//! on unbounded channels; nothing awaits while holding the lock.

use crate::admission;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::schedule::Planner;
use crate::state::{Host, Peer, PeerState, State, Task, TaskTx};
use damselfly_proto::piece::Layout;
use damselfly_proto::ring;
use damselfly_proto::scheduler::scheduler_server::Scheduler;
use damselfly_proto::scheduler::{
    BackToSource, Digests, FailReason, HostCommand, HostMessage, PieceDigest, Register, SeedTask,
    TaskCommand, TaskInfo, TaskMessage, host_command, host_message, task_command, task_message,
};
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// Most peers re-planned because of one event (bounds the work per message).
const REPLAN_BATCH: usize = 256;
/// Most peers that get a newcomer offered as an extra parent when it registers.
const REPLAN_ON_REGISTER: usize = 16;

pub struct Shared {
    pub state: Mutex<State>,
    pub planner: Arc<Planner>,
    pub metrics: Metrics,
    /// The manager link's view (default when there is no manager).
    pub manager: Arc<Mutex<crate::manager::ManagerStatus>>,
}

type ReplyStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn cmd(c: task_command::Cmd) -> TaskCommand {
    TaskCommand { cmd: Some(c) }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("scheduler state lock poisoned")
    }

    fn update_gauges(&self, s: &State) {
        self.metrics.hosts.set(s.hosts.len() as i64);
        self.metrics.tasks.set(s.tasks.len() as i64);
        self.metrics
            .peers
            .set(s.tasks.values().map(|t| t.peers.len() as i64).sum());
    }

    fn replan_orphans(&self, s: &mut State, orphans: Vec<(String, Vec<String>)>) {
        for (task_id, children) in orphans {
            for c in children.into_iter().take(REPLAN_BATCH) {
                self.planner.schedule(s, &task_id, &c);
            }
        }
    }

    /// A host stream ended or timed out: forget it and re-plan its peers' children.
    pub fn host_gone(&self, host_id: &str, conn: Option<u64>) {
        let mut s = self.lock();
        if let Some(c) = conn
            && s.hosts.get(host_id).map(|h| h.conn) != Some(c)
        {
            return; // replaced by a newer connection of the same host
        }
        let orphans = s.remove_host(host_id);
        self.replan_orphans(&mut s, orphans);
        self.update_gauges(&s);
        info!(host_id, "host removed");
    }

    fn on_host_message(&self, host_id: &str, msg: host_message::Msg) {
        let mut s = self.lock();
        let Some(host) = s.hosts.get_mut(host_id) else {
            return;
        };
        host.last_seen = Instant::now();
        match msg {
            host_message::Msg::Hello(_) => {}
            host_message::Msg::Keepalive(load) => host.active_uploads = load.active_uploads,
            host_message::Msg::Stored(stored) => {
                for st in stored.tasks {
                    let Some(layout) = admission::stored_layout(&st) else {
                        continue;
                    };
                    let Some(task) = s.tasks.get_mut(&st.task_id) else {
                        continue;
                    };
                    if task.layout != Some(layout) || task.digests_known() < layout.piece_count() as usize {
                        continue; // only tasks whose trusted digests we hold
                    }
                    let peer_id = format!("{host_id}/stored");
                    task.peers.insert(
                        peer_id.clone(),
                        new_peer(
                            peer_id.clone(),
                            host_id,
                            PeerState::Succeeded,
                            false,
                            layout.piece_count(),
                            None,
                        ),
                    );
                    task.order.push(peer_id);
                    task.last_active = Instant::now();
                    let id = task.id.clone();
                    self.planner.replan(&mut s, &id, REPLAN_BATCH);
                }
            }
        }
    }

    /// Registers a peer on a task and decides who feeds it.
    fn register(&self, mut reg: Register, tx: TaskTx) -> Result<(String, String), Error> {
        let admitted = admission::registration(&reg)?;
        let spec = reg.spec.take().expect("checked by admission");
        let task_id = spec.task_id.clone();
        let started = Instant::now();
        let mut s = self.lock();
        let Some(host) = s.hosts.get(&reg.host_id) else {
            return Err(Error::UnknownHost(reg.host_id));
        };
        // Only a seed is a source by its own word; anyone else fetches from
        // the origin when the scheduler sends it there.
        let from_source = reg.from_source && host.info.seed;
        // The task keeps no origin headers: they go to the one seed triggered below.
        let kept = damselfly_proto::scheduler::TaskSpec {
            headers: Default::default(),
            ..spec.clone()
        };
        let task = s
            .tasks
            .entry(task_id.clone())
            .or_insert_with(|| Task::new(task_id.clone(), kept.clone()));
        if task.spec.url.is_empty() {
            task.spec = kept;
        }
        if let Some(l) = admitted.layout {
            // A restarted holder's layout: a source sets it, anyone else must agree.
            match task.layout {
                Some(known) if known != l => {
                    return Err(Error::BadRequest(
                        damselfly_proto::layout::LayoutError::Mismatch { known, claimed: l }.to_string(),
                    ));
                }
                None if !from_source => {}
                _ => {
                    task.set_layout(l);
                }
            }
        }
        task.last_active = Instant::now();
        let mut peer = new_peer(
            reg.peer_id.clone(),
            &reg.host_id,
            PeerState::Running,
            from_source,
            0,
            Some(tx),
        );
        if task.layout.is_some() && task.layout == admitted.layout {
            peer.pieces = admitted.held;
        }
        task.remove_peer(&reg.peer_id);
        task.peers.insert(reg.peer_id.clone(), peer);
        task.order.push(reg.peer_id.clone());

        let needs_source = !task.has_source() && !has_complete_peer(task) && !from_source;
        if needs_source && task.seed_host.is_none() {
            let seeds: Vec<&str> = s
                .hosts
                .values()
                .filter(|h| h.info.seed)
                .map(|h| h.info.host_id.as_str())
                .collect();
            match ring::pick(&task_id, seeds, &reg.host_id) {
                Some(seed) => {
                    let host = &s.hosts[&seed];
                    let trigger = HostCommand {
                        cmd: Some(host_command::Cmd::SeedTask(SeedTask { spec: Some(spec) })),
                    };
                    if host.tx.send(Ok(trigger)).is_ok() {
                        s.tasks.get_mut(&task_id).expect("inserted").seed_host = Some(seed.clone());
                        self.metrics.seed_triggers.inc();
                        info!(task_id, seed_host = seed, "seed peer triggered");
                    }
                }
                None => self.back_to_source(&mut s, &task_id, &reg.peer_id, "no seed peer available"),
            }
        }
        let task = &s.tasks[&task_id];
        if let Some(l) = task.layout {
            task.send(&reg.peer_id, cmd(task_command::Cmd::Info(info_of(l))));
            task.send(&reg.peer_id, cmd(task_command::Cmd::Digests(known_digests(task))));
        }
        self.planner.schedule(&mut s, &task_id, &reg.peer_id);
        self.planner.replan(&mut s, &task_id, REPLAN_ON_REGISTER);
        self.metrics
            .schedule_seconds
            .observe(started.elapsed().as_secs_f64());
        self.update_gauges(&s);
        Ok((task_id, reg.peer_id))
    }

    fn back_to_source(&self, s: &mut State, task_id: &str, peer_id: &str, reason: &str) {
        let Some(task) = s.tasks.get_mut(task_id) else {
            return;
        };
        let Some(peer) = task.peers.get_mut(peer_id) else {
            return;
        };
        peer.source = true;
        task.set_parents(peer_id, Vec::new());
        task.send(
            peer_id,
            cmd(task_command::Cmd::BackToSource(BackToSource {
                reason: reason.into(),
            })),
        );
        self.metrics.back_to_source.inc();
        info!(task_id, peer_id, reason, "peer sent back to source");
        self.planner.replan(s, task_id, REPLAN_BATCH);
    }

    fn on_task_message(&self, task_id: &str, peer_id: &str, msg: task_message::Msg) {
        let mut s = self.lock();
        let Some(task) = s.tasks.get_mut(task_id) else {
            return;
        };
        task.last_active = Instant::now();
        let Some(peer) = task.peers.get_mut(peer_id) else {
            return;
        };
        let is_source = peer.source;
        match msg {
            task_message::Msg::Register(_) => {}
            task_message::Msg::SourceInfo(info) if is_source => {
                match admission::source_layout(task.layout, &info) {
                    Ok(layout) => {
                        task.set_layout(layout);
                        task.broadcast(&cmd(task_command::Cmd::Info(info_of(layout))), peer_id);
                        self.planner.replan(&mut s, task_id, REPLAN_BATCH);
                    }
                    Err(e) => warn!(task_id, peer_id, error = %e, "source layout refused"),
                }
            }
            task_message::Msg::SourceInfo(_) => {
                warn!(task_id, peer_id, "source info from a non-source peer ignored")
            }
            task_message::Msg::Pieces(done) => {
                let count = task.layout.map_or(0, |l| l.piece_count());
                peer.pieces = peer.pieces.saturating_add(done.pieces.len() as u32).min(count);
                self.metrics.bytes_from_peers.inc_by(done.bytes_from_peers);
                self.metrics.bytes_from_source.inc_by(done.bytes_from_source);
                if is_source {
                    let mut fresh = Vec::new();
                    for p in done.pieces {
                        let Ok(d) = <[u8; 32]>::try_from(p.sha256.as_slice()) else {
                            continue;
                        };
                        match task.digests.get_mut(p.index as usize) {
                            Some(slot @ None) => {
                                *slot = Some(d);
                                fresh.push(PieceDigest {
                                    index: p.index,
                                    sha256: d.to_vec(),
                                });
                            }
                            Some(Some(known)) if *known != d => {
                                warn!(
                                    task_id,
                                    peer_id,
                                    index = p.index,
                                    "source digest disagrees with the first source"
                                )
                            }
                            _ => {}
                        }
                    }
                    if !fresh.is_empty() {
                        task.broadcast(
                            &cmd(task_command::Cmd::Digests(Digests { pieces: fresh })),
                            peer_id,
                        );
                    }
                }
                let parents: Vec<(String, u32, u32)> = done
                    .costs
                    .iter()
                    .map(|c| (c.parent_peer_id.clone(), c.pieces, c.mean_millis))
                    .collect();
                for (parent, n, ms) in parents {
                    let Some(host_id) = s.tasks[task_id].peers.get(&parent).map(|p| p.host_id.clone()) else {
                        continue;
                    };
                    if let Some(h) = s.hosts.get_mut(&host_id) {
                        h.costs.add(ms as f64, n as u64);
                    }
                }
            }
            task_message::Msg::PieceFailed(f) => {
                let reason = FailReason::try_from(f.reason).unwrap_or(FailReason::Unspecified);
                if reason != FailReason::Busy {
                    peer.blocklist.insert(f.parent_peer_id.clone());
                }
                let parent_host = task.peers.get(&f.parent_peer_id).map(|p| p.host_id.clone());
                if reason == FailReason::Corrupt {
                    self.metrics.piece_failed("corrupt");
                    if let Some(h) = parent_host {
                        let reporters = task.corrupt_reports.entry(h.clone()).or_default();
                        reporters.insert(peer_id.to_string());
                        if reporters.len() >= self.planner.config().corrupt_reports_for_bad_host {
                            warn!(
                                task_id,
                                host_id = h,
                                "host excluded: several peers got corrupt pieces from it"
                            );
                            task.bad_hosts.insert(h);
                        }
                    }
                    warn!(
                        task_id,
                        peer_id,
                        parent = f.parent_peer_id,
                        index = f.index,
                        "corrupt piece reported"
                    );
                } else if reason == FailReason::Busy {
                    self.metrics.piece_failed("busy");
                    debug!(
                        task_id,
                        peer_id,
                        parent = f.parent_peer_id,
                        "parent busy; offered again later"
                    );
                } else {
                    self.metrics.piece_failed("unreachable");
                    debug!(task_id, peer_id, parent = f.parent_peer_id, "parent unreachable");
                }
                self.reschedule(&mut s, task_id, peer_id);
            }
            task_message::Msg::Reschedule(_) => self.reschedule(&mut s, task_id, peer_id),
            task_message::Msg::Finished(_) => {
                peer.state = PeerState::Succeeded;
                if let Some(l) = task.layout {
                    peer.pieces = l.piece_count();
                }
                info!(task_id, peer_id, "peer finished");
            }
            task_message::Msg::Failed(f) => {
                peer.state = PeerState::Failed;
                warn!(task_id, peer_id, reason = f.reason, "peer failed");
                let children: Vec<String> = peer.children.iter().cloned().collect();
                self.replan_orphans(&mut s, vec![(task_id.to_string(), children)]);
            }
        }
    }

    /// New parents for a peer; if none can serve it and nothing is fetching
    /// from the origin, that peer goes to the origin itself.
    fn reschedule(&self, s: &mut State, task_id: &str, peer_id: &str) {
        let got = self.planner.schedule(s, task_id, peer_id);
        let task = &s.tasks[task_id];
        let source_usable = task.peers.values().any(|p| {
            (p.source || p.state == PeerState::Succeeded)
                && p.id != peer_id
                && !task.peers[peer_id].blocklist.contains(&p.id)
                && !task.bad_hosts.contains(&p.host_id)
        });
        if got == 0 || !source_usable {
            self.back_to_source(s, task_id, peer_id, "no usable parent holds the task");
        }
    }

    /// The task stream ended. A finished peer stays as a parent (its host is
    /// still alive); anyone else leaves the task.
    fn task_stream_closed(&self, task_id: &str, peer_id: &str) {
        let mut s = self.lock();
        let Some(task) = s.tasks.get_mut(task_id) else {
            return;
        };
        let keep = task
            .peers
            .get(peer_id)
            .is_some_and(|p| p.state == PeerState::Succeeded);
        if keep {
            if let Some(p) = task.peers.get_mut(peer_id) {
                p.tx = None;
            }
            task.set_parents(peer_id, Vec::new());
        } else {
            let orphans = task.remove_peer(peer_id);
            self.replan_orphans(&mut s, vec![(task_id.to_string(), orphans)]);
        }
        self.update_gauges(&s);
    }

    /// Drops hosts that stopped announcing and tasks nobody touched for `ttl`.
    pub fn gc(&self, host_timeout: Duration, ttl: Duration) {
        let stale: Vec<String> = {
            let s = self.lock();
            s.hosts
                .values()
                .filter(|h| h.last_seen.elapsed() > host_timeout)
                .map(|h| h.info.host_id.clone())
                .collect()
        };
        for h in stale {
            warn!(host_id = h, "host stopped announcing");
            self.host_gone(&h, None);
        }
        let mut s = self.lock();
        s.tasks
            .retain(|_, t| !t.peers.is_empty() || t.last_active.elapsed() < ttl);
        self.update_gauges(&s);
    }
}

fn new_peer(
    id: String,
    host_id: &str,
    state: PeerState,
    source: bool,
    pieces: u32,
    tx: Option<TaskTx>,
) -> Peer {
    Peer {
        id,
        host_id: host_id.to_string(),
        state,
        source,
        pieces,
        parents: Vec::new(),
        children: HashSet::new(),
        blocklist: HashSet::new(),
        tx,
        registered: Instant::now(),
    }
}

fn has_complete_peer(task: &Task) -> bool {
    task.layout
        .is_some_and(|l| task.digests_known() == l.piece_count() as usize)
        && task.peers.values().any(|p| p.state == PeerState::Succeeded)
}

fn info_of(l: Layout) -> TaskInfo {
    TaskInfo {
        content_length: l.content_length,
        piece_length: l.piece_length,
    }
}

fn known_digests(task: &Task) -> Digests {
    Digests {
        pieces: task
            .digests
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                d.map(|d| PieceDigest {
                    index: i as u32,
                    sha256: d.to_vec(),
                })
            })
            .collect(),
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct SchedulerService {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type AnnounceHostStream = ReplyStream<HostCommand>;
    type AnnounceTaskStream = ReplyStream<TaskCommand>;

    async fn announce_host(
        &self,
        request: Request<Streaming<HostMessage>>,
    ) -> Result<Response<Self::AnnounceHostStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|m| m.msg);
        let Some(host_message::Msg::Hello(info)) = first else {
            return Err(Error::BadRequest("the first host message must be hello".into()).into());
        };
        admission::hello(&info)?;
        let host_id = info.host_id.clone();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = {
            let mut s = self.shared.lock();
            let conn = s.next_conn();
            info!(host_id, ip = info.ip, seed = info.seed, "host announced");
            s.hosts.insert(
                host_id.clone(),
                Host {
                    info,
                    tx,
                    conn,
                    last_seen: Instant::now(),
                    active_uploads: 0,
                    costs: Default::default(),
                },
            );
            self.shared.update_gauges(&s);
            conn
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(msg) = m.msg {
                    shared.on_host_message(&host_id, msg);
                }
            }
            shared.host_gone(&host_id, Some(conn));
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn announce_task(
        &self,
        request: Request<Streaming<TaskMessage>>,
    ) -> Result<Response<Self::AnnounceTaskStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|m| m.msg);
        let Some(task_message::Msg::Register(reg)) = first else {
            return Err(Error::BadRequest("the first task message must be register".into()).into());
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (task_id, peer_id) = self.shared.register(reg, tx)?;
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
}
