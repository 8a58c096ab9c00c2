//! The scheduling core: events in, commands out.
//!
//! [`Core::handle`] takes one [`Event`] (a host announced itself, a peer
//! registered, reported pieces, lost a parent, finished, left; a GC tick)
//! with the time it happened, changes [`State`] and returns the
//! [`Command`]s to deliver (parents, seed triggers, back to source, layout
//! and digest relays). It never awaits, does no I/O and never reads the
//! clock, so tests and the swarm simulator drive it in-process; the gRPC
//! [`service`](crate::service) only decodes stream messages into events and
//! encodes commands onto the streams.

use crate::config::ColdSource;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::schedule::{Planner, parent_addrs};
use crate::state::{Host, Peer, PeerState, State, Task};
use damselfly_proto::layout::LayoutError;
use damselfly_proto::piece::Layout;
use damselfly_proto::ring;
use damselfly_proto::scheduler::{FailReason, HostInfo, Parent, PiecesDone, TaskSpec};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

pub mod cache;
pub use cache::{CacheImport, CacheMeta, StoredCache};

/// Most peers re-planned because of one event (bounds the work per message).
const REPLAN_BATCH: usize = 256;
/// Most peers that get a newcomer offered as an extra parent when it registers.
const REPLAN_ON_REGISTER: usize = 16;

/// A peer's registration on a task, decoded and checked by the transport.
#[derive(Debug, Clone)]
pub struct Registration {
    pub host_id: String,
    pub peer_id: String,
    pub spec: TaskSpec,
    /// The peer fetches from the origin by itself (a seed, or it holds the task).
    pub from_source: bool,
    /// Known when the peer already holds pieces (a restart), with how many.
    pub layout: Option<Layout>,
    pub pieces_held: u32,
}

/// Something that happened, as the core sees it.
#[derive(Debug, Clone)]
pub enum Event {
    /// A host stream opened; `conn` tells it apart from a reconnection's.
    HostAnnounced {
        info: HostInfo,
        conn: u64,
    },
    /// A hello or keepalive on a host stream (the load, if it carried one).
    HostAlive {
        host_id: String,
        active_uploads: Option<u32>,
    },
    /// A restarted host still holds these complete tasks.
    HostStored {
        host_id: String,
        tasks: Vec<(String, Layout)>,
    },
    /// A host stream ended (`conn`), or the host timed out (`None`).
    HostLeft {
        host_id: String,
        conn: Option<u64>,
    },
    Registered(Registration),
    /// A source reported the task's layout.
    SourceInfo {
        task_id: String,
        peer_id: String,
        layout: Layout,
    },
    PiecesReported {
        task_id: String,
        peer_id: String,
        report: PiecesDone,
    },
    PieceFailed {
        task_id: String,
        peer_id: String,
        parent_peer_id: String,
        index: u32,
        reason: FailReason,
    },
    RescheduleAsked {
        task_id: String,
        peer_id: String,
    },
    Finished {
        task_id: String,
        peer_id: String,
    },
    Failed {
        task_id: String,
        peer_id: String,
        reason: String,
    },
    /// The peer's task stream ended.
    StreamClosed {
        task_id: String,
        peer_id: String,
    },
    /// Time for GC: hosts silent past the timeout, tasks idle past the TTL.
    Tick,
    /// A host imported a file as a cache task.
    CacheImported(CacheImport),
    /// A host holds these cache tasks (a new host stream, a replica fetched).
    CacheStored {
        host_id: String,
        tasks: Vec<StoredCache>,
    },
    /// Delete a cache task everywhere, asked by `host_id`.
    CacheDeleted {
        id: String,
        host_id: String,
    },
    /// Cache expiry and replica placement (more often than [`Event::Tick`]).
    CacheTick,
}

/// What the transport must deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Tell a seed host to fetch the task from its origin.
    SeedTask { host_id: String, spec: TaskSpec },
    /// Tell a seed host to copy the task from its peers (the first requester is its source,
    /// see [`ColdSource::Requester`]); `spec` has no origin headers.
    SeedCopy { host_id: String, spec: TaskSpec },
    /// The task's layout, to one peer.
    Info {
        task_id: String,
        peer_id: String,
        layout: Layout,
    },
    /// Trusted piece digests, to one peer.
    Digests {
        task_id: String,
        peer_id: String,
        pieces: Vec<(u32, [u8; 32])>,
    },
    /// The peer's parents from now on (replaces the previous set).
    Parents {
        task_id: String,
        peer_id: String,
        parents: Vec<Parent>,
    },
    BackToSource {
        task_id: String,
        peer_id: String,
        reason: String,
    },
    /// Tell a host to fetch a cache task through the mesh and keep it.
    Replicate {
        host_id: String,
        spec: TaskSpec,
        meta: CacheMeta,
    },
    /// Tell a host to drop a task from its store.
    DeleteTask { host_id: String, task_id: String },
}

/// How long hosts and idle tasks are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub host_timeout: Duration,
    pub task_ttl: Duration,
}

pub struct Core {
    pub state: State,
    /// Cache tasks ([`cache`]).
    pub caches: cache::Caches,
    pub planner: Arc<Planner>,
    pub metrics: Metrics,
    retention: Retention,
    rng: StdRng,
    /// Who fetches a new task from its origin (`cold_source`).
    cold_source: ColdSource,
}

impl Core {
    /// `seed` drives the candidate sampling of large swarms (fixed in
    /// simulations, random in the service).
    pub fn new(planner: Arc<Planner>, metrics: Metrics, retention: Retention, seed: u64) -> Self {
        Self {
            state: State::default(),
            caches: cache::Caches::default(),
            planner,
            metrics,
            retention,
            rng: StdRng::seed_from_u64(seed),
            cold_source: ColdSource::default(),
        }
    }

    /// Who fetches new tasks from their origin from now on (see [`ColdSource`]).
    pub fn with_cold_source(mut self, cold_source: ColdSource) -> Self {
        self.cold_source = cold_source;
        self
    }

    /// Applies one event that happened at `now`; returns what to send.
    pub fn handle(&mut self, now: Instant, event: Event) -> Result<Vec<Command>, Error> {
        let mut out = Vec::new();
        match event {
            Event::HostAnnounced { info, conn } => {
                info!(
                    host_id = info.host_id,
                    ip = info.ip,
                    seed = info.seed,
                    "host announced"
                );
                self.state.hosts.insert(
                    info.host_id.clone(),
                    Host {
                        info,
                        conn,
                        last_seen: now,
                        active_uploads: 0,
                        costs: Default::default(),
                    },
                );
            }
            Event::HostAlive {
                host_id,
                active_uploads,
            } => {
                if let Some(h) = self.state.hosts.get_mut(&host_id) {
                    h.last_seen = now;
                    if let Some(n) = active_uploads {
                        h.active_uploads = n;
                    }
                }
            }
            Event::HostStored { host_id, tasks } => self.host_stored(now, &host_id, tasks, &mut out),
            Event::HostLeft { host_id, conn } => {
                if self.host_gone(&host_id, conn, &mut out) {
                    self.cache_host_left(now, &host_id, &mut out);
                }
            }
            Event::Registered(reg) => self.register(now, reg, &mut out)?,
            Event::SourceInfo {
                task_id,
                peer_id,
                layout,
            } => self.source_info(now, &task_id, &peer_id, layout, &mut out),
            Event::PiecesReported {
                task_id,
                peer_id,
                report,
            } => self.pieces(now, &task_id, &peer_id, report, &mut out),
            Event::PieceFailed {
                task_id,
                peer_id,
                parent_peer_id,
                index,
                reason,
            } => self.piece_failed(now, &task_id, &peer_id, &parent_peer_id, index, reason, &mut out),
            Event::RescheduleAsked { task_id, peer_id } => {
                if self.touch(now, &task_id, &peer_id) {
                    self.reschedule(&task_id, &peer_id, &mut out);
                }
            }
            Event::Finished { task_id, peer_id } => {
                if self.touch(now, &task_id, &peer_id) {
                    let task = self.state.tasks.get_mut(&task_id).expect("touched");
                    let pieces = task.layout.map(|l| l.piece_count());
                    let peer = task.peers.get_mut(&peer_id).expect("touched");
                    peer.state = PeerState::Succeeded;
                    if let Some(n) = pieces {
                        peer.pieces = n;
                    }
                    // It needs no parents any more: their upload slots go
                    // to peers still downloading.
                    task.set_parents(&peer_id, Vec::new());
                    info!(task_id, peer_id, "peer finished");
                    self.replan(&task_id, REPLAN_BATCH, &mut out);
                }
            }
            Event::Failed {
                task_id,
                peer_id,
                reason,
            } => {
                if self.touch(now, &task_id, &peer_id) {
                    let peer = self
                        .state
                        .tasks
                        .get_mut(&task_id)
                        .expect("touched")
                        .peers
                        .get_mut(&peer_id);
                    let peer = peer.expect("touched");
                    peer.state = PeerState::Failed;
                    let host_id = peer.host_id.clone();
                    warn!(task_id, peer_id, reason, "peer failed");
                    let mut children: Vec<String> = peer.children.iter().cloned().collect();
                    children.sort();
                    self.replan_orphans(vec![(task_id.clone(), children)], &mut out);
                    self.cache_placement_failed(now, &task_id, &host_id, &mut out);
                }
            }
            Event::StreamClosed { task_id, peer_id } => self.stream_closed(&task_id, &peer_id, &mut out),
            Event::Tick => self.gc(now, &mut out),
            Event::CacheImported(imp) => self.cache_import(now, imp, &mut out)?,
            Event::CacheStored { host_id, tasks } => self.cache_stored(now, &host_id, tasks, &mut out),
            Event::CacheDeleted { id, host_id } => self.cache_delete(&id, &host_id, &mut out)?,
            Event::CacheTick => self.cache_tick(now, &mut out),
        }
        self.update_gauges();
        Ok(out)
    }

    fn update_gauges(&self) {
        let s = &self.state;
        self.metrics.hosts.set(s.hosts.len() as i64);
        self.metrics.tasks.set(s.tasks.len() as i64);
        self.metrics
            .peers
            .set(s.tasks.values().map(|t| t.peers.len() as i64).sum());
    }

    /// Marks the task active; false when the task or the peer is unknown
    /// (the event is then ignored).
    fn touch(&mut self, now: Instant, task_id: &str, peer_id: &str) -> bool {
        let Some(task) = self.state.tasks.get_mut(task_id) else {
            return false;
        };
        task.last_active = now;
        task.peers.contains_key(peer_id)
    }

    /// Sends a command to one peer if its stream is open.
    fn send(&self, task_id: &str, peer_id: &str, out: &mut Vec<Command>, make: impl FnOnce() -> Command) {
        let open = self
            .state
            .tasks
            .get(task_id)
            .and_then(|t| t.peers.get(peer_id))
            .is_some_and(|p| p.open);
        if open {
            out.push(make());
        }
    }

    /// Sends a command to every peer of the task with an open stream except `except`.
    fn broadcast(&self, task_id: &str, except: &str, out: &mut Vec<Command>, make: impl Fn(&str) -> Command) {
        let Some(task) = self.state.tasks.get(task_id) else {
            return;
        };
        for p in task.peers.values() {
            if p.id != except && p.open {
                out.push(make(&p.id));
            }
        }
    }

    /// Chooses parents for one peer and queues the set.
    fn schedule(&mut self, task_id: &str, peer_id: &str, out: &mut Vec<Command>) -> usize {
        let Some(chosen) = self
            .planner
            .schedule(&mut self.state, task_id, peer_id, &mut self.rng)
        else {
            return 0;
        };
        self.send_parents(task_id, peer_id, &chosen, out);
        self.reciprocate(task_id, peer_id, out);
        chosen.len()
    }

    fn replan(&mut self, task_id: &str, max: usize, out: &mut Vec<Command>) {
        for (peer_id, chosen) in self.planner.replan(&mut self.state, task_id, max, &mut self.rng) {
            self.send_parents(task_id, &peer_id, &chosen, out);
            self.reciprocate(task_id, &peer_id, out);
        }
    }

    /// Running parents of `peer_id` take it as a parent too (see
    /// [`Planner::reciprocate`]); each is sent its grown set.
    fn reciprocate(&mut self, task_id: &str, peer_id: &str, out: &mut Vec<Command>) {
        for other in self.planner.reciprocate(&mut self.state, task_id, peer_id) {
            let set = self.state.tasks[task_id].peers[&other].parents.clone();
            self.send_parents(task_id, &other, &set, out);
        }
    }

    fn send_parents(&self, task_id: &str, peer_id: &str, chosen: &[String], out: &mut Vec<Command>) {
        let parents = parent_addrs(&self.state, task_id, chosen);
        self.send(task_id, peer_id, out, || Command::Parents {
            task_id: task_id.to_string(),
            peer_id: peer_id.to_string(),
            parents,
        });
    }

    fn replan_orphans(&mut self, orphans: Vec<(String, Vec<String>)>, out: &mut Vec<Command>) {
        for (task_id, children) in orphans {
            for c in children.into_iter().take(REPLAN_BATCH) {
                self.schedule(&task_id, &c, out);
            }
        }
    }

    /// A host stream ended or timed out: forget it and re-plan its peers' children.
    /// Returns whether the host was removed.
    fn host_gone(&mut self, host_id: &str, conn: Option<u64>, out: &mut Vec<Command>) -> bool {
        if let Some(c) = conn
            && self.state.hosts.get(host_id).map(|h| h.conn) != Some(c)
        {
            return false; // replaced by a newer connection of the same host
        }
        let orphans = self.state.remove_host(host_id);
        self.replan_orphans(orphans, out);
        info!(host_id, "host removed");
        true
    }

    fn host_stored(
        &mut self,
        now: Instant,
        host_id: &str,
        tasks: Vec<(String, Layout)>,
        out: &mut Vec<Command>,
    ) {
        let Some(host) = self.state.hosts.get_mut(host_id) else {
            return;
        };
        host.last_seen = now;
        for (task_id, layout) in tasks {
            let Some(task) = self.state.tasks.get_mut(&task_id) else {
                continue;
            };
            if task.layout != Some(layout) || task.digests_known() < layout.piece_count() as usize {
                continue; // only tasks whose trusted digests we hold
            }
            task.add_peer(stored_peer(host_id, layout.piece_count(), now));
            task.last_active = now;
            self.replan(&task_id, REPLAN_BATCH, out);
        }
    }

    /// Registers a peer on a task and decides who feeds it.
    fn register(&mut self, now: Instant, reg: Registration, out: &mut Vec<Command>) -> Result<(), Error> {
        let task_id = reg.spec.task_id.clone();
        let s = &mut self.state;
        let Some(host) = s.hosts.get(&reg.host_id) else {
            return Err(Error::UnknownHost(reg.host_id));
        };
        // Only a seed is a source by its own word; anyone else fetches from
        // the origin when the scheduler sends it there.
        let requester_is_seed = host.info.seed;
        let from_source = reg.from_source && requester_is_seed;
        // The task keeps no origin headers: they go (sealed, see service/src/seal.rs) to the
        // one seed triggered below.
        let kept = TaskSpec {
            headers: Default::default(),
            sealed_headers: Vec::new(),
            ..reg.spec.clone()
        };
        let task = s
            .tasks
            .entry(task_id.clone())
            .or_insert_with(|| Task::new(task_id.clone(), kept.clone(), now));
        if task.spec.url.is_empty() {
            task.spec = kept;
        }
        if let Some(claimed) = reg.layout {
            // A restarted holder's layout: a source sets it, anyone else must agree.
            match task.layout {
                Some(known) if known != claimed => {
                    return Err(Error::BadRequest(
                        LayoutError::Mismatch { known, claimed }.to_string(),
                    ));
                }
                None if !from_source => {}
                _ => {
                    task.set_layout(claimed);
                }
            }
        }
        task.last_active = now;
        let mut peer = new_peer(
            reg.peer_id.clone(),
            &reg.host_id,
            PeerState::Running,
            from_source,
            0,
            true,
            now,
        );
        if task.layout.is_some() && task.layout == reg.layout {
            peer.pieces = reg.pieces_held;
        }
        task.remove_peer(&reg.peer_id);
        task.add_peer(peer);

        let needs_source = !task.has_source() && !has_complete_peer(task) && !from_source;
        if needs_source && self.caches.entries.contains_key(&task_id) {
            // A cache task has no origin: nobody holds it now.
            self.back_to_source(&task_id, &reg.peer_id, "no host holds this cache task", out);
        } else if needs_source
            && task.seed_host.is_none()
            && self.cold_source == ColdSource::Requester
            && !requester_is_seed
            && !reg.spec.digest.is_empty()
        {
            // The first requester fetches from the origin with its own headers and becomes the
            // source; a seed copies the task from it through the mesh (a durable copy on a
            // seed). Only for a task named by its digest: everyone, the seed too, checks the
            // whole file against it, so a requester that lies about the origin's bytes makes
            // every copy fail, never pass.
            let seed = {
                let seeds = s
                    .hosts
                    .values()
                    .filter(|h| h.info.seed && h.info.host_id != reg.host_id)
                    .map(|h| h.info.host_id.as_str());
                ring::pick(&task_id, seeds, &reg.host_id)
            };
            let requester = reg.peer_id.clone();
            if let Some(seed) = seed {
                let spec = TaskSpec {
                    headers: Default::default(),
                    sealed_headers: Vec::new(),
                    ..reg.spec.clone()
                };
                s.tasks.get_mut(&task_id).expect("inserted").seed_host = Some(seed.clone());
                out.push(Command::SeedCopy {
                    host_id: seed.clone(),
                    spec,
                });
                self.metrics.seed_triggers.inc();
                info!(
                    task_id,
                    seed_host = seed,
                    "seed peer to copy from the first requester"
                );
            }
            self.back_to_source(
                &task_id,
                &requester,
                "first requester fetches from the origin",
                out,
            );
        } else if needs_source && task.seed_host.is_none() {
            let mut seeds: Vec<&str> = s
                .hosts
                .values()
                .filter(|h| h.info.seed && h.info.host_id != reg.host_id)
                .map(|h| h.info.host_id.as_str())
                .collect();
            // Headers sealed to some seeds: one of those, so the headers reach the origin.
            let sealed = &reg.spec.sealed_headers;
            if seeds.iter().any(|h| sealed.iter().any(|e| e.seed_host_id == *h)) {
                seeds.retain(|h| sealed.iter().any(|e| e.seed_host_id == *h));
            }
            match ring::pick(&task_id, seeds, &reg.host_id) {
                Some(seed) => {
                    let mut spec = reg.spec;
                    spec.sealed_headers.retain(|e| e.seed_host_id == seed);
                    spec.sealed_headers.truncate(1);
                    out.push(Command::SeedTask {
                        host_id: seed.clone(),
                        spec,
                    });
                    s.tasks.get_mut(&task_id).expect("inserted").seed_host = Some(seed.clone());
                    self.metrics.seed_triggers.inc();
                    info!(task_id, seed_host = seed, "seed peer triggered");
                }
                None => self.back_to_source(&task_id, &reg.peer_id, "no seed peer available", out),
            }
        }
        let task = &self.state.tasks[&task_id];
        if let Some(layout) = task.layout {
            let pieces = known_digests(task);
            self.send(&task_id, &reg.peer_id, out, || Command::Info {
                task_id: task_id.clone(),
                peer_id: reg.peer_id.clone(),
                layout,
            });
            self.send(&task_id, &reg.peer_id, out, || Command::Digests {
                task_id: task_id.clone(),
                peer_id: reg.peer_id.clone(),
                pieces,
            });
        }
        self.schedule(&task_id, &reg.peer_id, out);
        // A small task: the peers short of parents are re-planned with the
        // newcomer among their candidates. A large one: the newcomer is
        // offered to them as one parent more (a decision each would make a
        // registration cost 17 decisions).
        let small = self.state.tasks[&task_id].order.len() <= self.planner.config().filter_parent_limit + 1;
        if small {
            self.replan(&task_id, REPLAN_ON_REGISTER, out);
        } else {
            for other in self
                .planner
                .offer(&mut self.state, &task_id, &reg.peer_id, REPLAN_ON_REGISTER)
            {
                let set = self.state.tasks[&task_id].peers[&other].parents.clone();
                self.send_parents(&task_id, &other, &set, out);
            }
        }
        Ok(())
    }

    fn back_to_source(&mut self, task_id: &str, peer_id: &str, reason: &str, out: &mut Vec<Command>) {
        let Some(task) = self.state.tasks.get_mut(task_id) else {
            return;
        };
        if !task.peers.contains_key(peer_id) {
            return;
        }
        task.mark_source(peer_id);
        task.set_parents(peer_id, Vec::new());
        self.send(task_id, peer_id, out, || Command::BackToSource {
            task_id: task_id.to_string(),
            peer_id: peer_id.to_string(),
            reason: reason.into(),
        });
        self.metrics.back_to_source.inc();
        info!(task_id, peer_id, reason, "peer sent back to source");
        self.replan(task_id, REPLAN_BATCH, out);
    }

    fn source_info(
        &mut self,
        now: Instant,
        task_id: &str,
        peer_id: &str,
        layout: Layout,
        out: &mut Vec<Command>,
    ) {
        if !self.touch(now, task_id, peer_id) {
            return;
        }
        let task = self.state.tasks.get_mut(task_id).expect("touched");
        if !task.peers[peer_id].source {
            warn!(task_id, peer_id, "source info from a non-source peer ignored");
            return;
        }
        if task.set_layout(layout) {
            self.broadcast(task_id, peer_id, out, |to| Command::Info {
                task_id: task_id.to_string(),
                peer_id: to.to_string(),
                layout,
            });
            self.replan(task_id, REPLAN_BATCH, out);
        } else {
            warn!(task_id, peer_id, "source reported a different layout; ignored");
        }
    }

    fn pieces(
        &mut self,
        now: Instant,
        task_id: &str,
        peer_id: &str,
        done: PiecesDone,
        out: &mut Vec<Command>,
    ) {
        if !self.touch(now, task_id, peer_id) {
            return;
        }
        let task = self.state.tasks.get_mut(task_id).expect("touched");
        let peer = task.peers.get_mut(peer_id).expect("touched");
        let count = task.layout.map_or(0, |l| l.piece_count());
        peer.pieces = peer.pieces.saturating_add(done.pieces.len() as u32).min(count);
        self.metrics.bytes_from_peers.inc_by(done.bytes_from_peers);
        self.metrics.bytes_from_source.inc_by(done.bytes_from_source);
        if peer.source {
            let mut fresh = Vec::new();
            for p in done.pieces {
                let Ok(d) = <[u8; 32]>::try_from(p.sha256.as_slice()) else {
                    continue;
                };
                match task.digests.get_mut(p.index as usize) {
                    Some(slot @ None) => {
                        *slot = Some(d);
                        fresh.push((p.index, d));
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
                self.broadcast(task_id, peer_id, out, |to| Command::Digests {
                    task_id: task_id.to_string(),
                    peer_id: to.to_string(),
                    pieces: fresh.clone(),
                });
            }
        }
        for c in done.costs {
            let Some(host_id) = self.state.tasks[task_id]
                .peers
                .get(&c.parent_peer_id)
                .map(|p| p.host_id.clone())
            else {
                continue;
            };
            if let Some(h) = self.state.hosts.get_mut(&host_id) {
                h.costs.add(c.mean_millis as f64, c.pieces as u64);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn piece_failed(
        &mut self,
        now: Instant,
        task_id: &str,
        peer_id: &str,
        parent_peer_id: &str,
        index: u32,
        reason: FailReason,
        out: &mut Vec<Command>,
    ) {
        if !self.touch(now, task_id, peer_id) {
            return;
        }
        let reports_for_bad_host = self.planner.config().corrupt_reports_for_bad_host;
        let task = self.state.tasks.get_mut(task_id).expect("touched");
        let parent_host = task.peers.get(parent_peer_id).map(|p| p.host_id.clone());
        let peer = task.peers.get_mut(peer_id).expect("touched");
        if reason != FailReason::Busy {
            peer.blocklist.insert(parent_peer_id.to_string());
        }
        if reason == FailReason::Corrupt {
            self.metrics.piece_failed("corrupt");
            if let Some(h) = parent_host {
                let reporters = task.corrupt_reports.entry(h.clone()).or_default();
                reporters.insert(peer_id.to_string());
                if reporters.len() >= reports_for_bad_host {
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
                parent = parent_peer_id,
                index,
                "corrupt piece reported"
            );
        } else if reason == FailReason::Busy {
            self.metrics.piece_failed("busy");
            debug!(
                task_id,
                peer_id,
                parent = parent_peer_id,
                "parent busy; offered again later"
            );
        } else {
            self.metrics.piece_failed("unreachable");
            debug!(task_id, peer_id, parent = parent_peer_id, "parent unreachable");
        }
        self.reschedule(task_id, peer_id, out);
    }

    /// New parents for a peer; if none can serve it and nothing is fetching
    /// from the origin, that peer goes to the origin itself.
    fn reschedule(&mut self, task_id: &str, peer_id: &str, out: &mut Vec<Command>) {
        let got = self.schedule(task_id, peer_id, out);
        let task = &self.state.tasks[task_id];
        let usable = |p: &Peer| {
            (p.source || p.state == PeerState::Succeeded)
                && p.id != peer_id
                && !task.peers[peer_id].blocklist.contains(&p.id)
                && !task.bad_hosts.contains(&p.host_id)
        };
        // The sources first (an index): the whole task only when none is usable.
        let source_usable = task
            .sources
            .iter()
            .filter_map(|id| task.peers.get(id))
            .any(usable)
            || task.peers.values().any(usable);
        if got == 0 || !source_usable {
            self.back_to_source(task_id, peer_id, "no usable parent holds the task", out);
        }
    }

    /// The task stream ended. A finished peer stays as a parent (its host is
    /// still alive); anyone else leaves the task.
    fn stream_closed(&mut self, task_id: &str, peer_id: &str, out: &mut Vec<Command>) {
        let Some(task) = self.state.tasks.get_mut(task_id) else {
            return;
        };
        let keep = task
            .peers
            .get(peer_id)
            .is_some_and(|p| p.state == PeerState::Succeeded);
        if keep {
            if let Some(p) = task.peers.get_mut(peer_id) {
                p.open = false;
            }
            task.set_parents(peer_id, Vec::new());
        } else {
            let orphans = task.remove_peer(peer_id);
            self.replan_orphans(vec![(task_id.to_string(), orphans)], out);
        }
    }

    /// Drops hosts that stopped announcing and tasks nobody touched for the TTL.
    fn gc(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Retention {
            host_timeout,
            task_ttl,
        } = self.retention;
        let stale: Vec<String> = self
            .state
            .hosts
            .values()
            .filter(|h| now.saturating_duration_since(h.last_seen) > host_timeout)
            .map(|h| h.info.host_id.clone())
            .collect();
        for h in stale {
            warn!(host_id = h, "host stopped announcing");
            self.host_gone(&h, None, out);
            self.cache_host_left(now, &h, out);
        }
        self.state
            .tasks
            .retain(|_, t| !t.peers.is_empty() || now.saturating_duration_since(t.last_active) < task_ttl);
    }
}

/// The peer entry of a host that holds a whole task in its store (announced after a restart,
/// or a cache replica), with no download stream of its own.
fn stored_peer(host_id: &str, pieces: u32, now: Instant) -> Peer {
    let id = format!("{host_id}/stored");
    new_peer(id, host_id, PeerState::Succeeded, false, pieces, false, now)
}

fn new_peer(
    id: String,
    host_id: &str,
    state: PeerState,
    source: bool,
    pieces: u32,
    open: bool,
    now: Instant,
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
        open,
        registered: now,
        seq: 0,
    }
}

fn has_complete_peer(task: &Task) -> bool {
    task.layout
        .is_some_and(|l| task.digests_known() == l.piece_count() as usize)
        && task.peers.values().any(|p| p.state == PeerState::Succeeded)
}

fn known_digests(task: &Task) -> Vec<(u32, [u8; 32])> {
    task.digests
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.map(|d| (i as u32, d)))
        .collect()
}

#[cfg(test)]
mod tests;
