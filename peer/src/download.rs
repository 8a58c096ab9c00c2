//! The download engine: drives one task to completion.
//!
//! [`Downloader::start`] starts a task (or joins the one already running) and
//! returns its shared [`Task`]; callers watch it. The engine registers with
//! the scheduler that owns the task (consistent hash over the configured
//! schedulers), connects to the parents it is given, requests the lowest
//! missing pieces from several parents at once (other peers before the
//! source, whose uplink is scarce), verifies, stores, reports in batches,
//! and goes back to source when told to, when the scheduler is gone, or when
//! no parent delivers for a while.

use crate::config::PeerConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::parent::{self, ParentConn, ParentEvent, Target};
use crate::rate::RateLimiter;
use crate::source::{self, SourceEvent};
use crate::task::{Task, Tasks, sha256};
use damselfly_proto::piece::Layout;
use damselfly_proto::ring;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    FailReason, Failed, Finished, PieceCost, PieceDigest, PieceFailed, PiecesDone, Register, Reschedule,
    SourceInfo, TaskCommand, TaskMessage, TaskSpec, task_command, task_message,
};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

/// Requests outstanding per parent: enough to keep a link busy across one
/// round trip, few enough that a slow parent holds little. With few parents
/// each gets more, so that the requests in flight stay at about
/// [`TOTAL_WINDOW`] (one fast parent on a fast link needs a deep pipeline).
const PARENT_WINDOW: usize = 2;
const TOTAL_WINDOW: usize = 32;
const TICK: Duration = Duration::from_millis(50);
const SAVE_EVERY: Duration = Duration::from_millis(500);
const REPORT_EVERY: Duration = Duration::from_millis(250);
const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(5);
/// A parent that said it is busy is not connected to again for this long.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// One configured scheduler.
#[derive(Clone)]
pub struct SchedulerEndpoint {
    pub addr: String,
    pub channel: Channel,
}

pub struct Downloader {
    pub tasks: Arc<Tasks>,
    pub config: PeerConfig,
    pub host_id: String,
    pub metrics: Metrics,
    pub http: reqwest::Client,
    /// Fixed, or the manager's latest answer (see [`Downloader::set_schedulers`]).
    schedulers: std::sync::RwLock<Vec<SchedulerEndpoint>>,
    pub download_limiter: Arc<RateLimiter>,
    /// The cluster's peer settings in force (from the manager, if any).
    pub limits: Arc<crate::limits::Limits>,
    running: Mutex<HashSet<String>>,
}

pub struct Request {
    pub spec: TaskSpec,
    /// A seed peer told to fetch from the origin.
    pub seed: bool,
}

impl Downloader {
    pub fn new(
        tasks: Arc<Tasks>,
        config: PeerConfig,
        host_id: String,
        metrics: Metrics,
        http: reqwest::Client,
        schedulers: Vec<SchedulerEndpoint>,
    ) -> Arc<Self> {
        let download_limiter = Arc::new(RateLimiter::new(config.download_rate.as_u64()));
        metrics.schedulers.set(schedulers.len() as i64);
        Arc::new(Self {
            tasks,
            config,
            host_id,
            metrics,
            http,
            schedulers: std::sync::RwLock::new(schedulers),
            download_limiter,
            limits: Arc::default(),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// The scheduler that owns `task_id` (every peer of a task picks the same one).
    pub fn scheduler_for(&self, task_id: &str) -> Option<SchedulerEndpoint> {
        let list = self.schedulers.read().expect("schedulers lock");
        let addr = ring::pick(task_id, list.iter().map(|s| s.addr.as_str()), "")?;
        list.iter().find(|s| s.addr == addr).cloned()
    }

    /// The schedulers new tasks are spread over.
    pub fn schedulers(&self) -> Vec<SchedulerEndpoint> {
        self.schedulers.read().expect("schedulers lock").clone()
    }

    /// Replaces the scheduler list (the manager's answer changed). Tasks
    /// already running keep the scheduler they registered with.
    pub fn set_schedulers(&self, list: Vec<SchedulerEndpoint>) {
        self.metrics.schedulers.set(list.len() as i64);
        *self.schedulers.write().expect("schedulers lock") = list;
    }

    /// Starts the task, or joins it if it is running or done.
    pub fn start(self: &Arc<Self>, req: Request) -> Result<Arc<Task>, Error> {
        let id = req.spec.task_id.clone();
        let url = damselfly_proto::task_id::canonical_url(&req.spec.url).unwrap_or_default();
        let digest = (!req.spec.digest.is_empty()).then(|| req.spec.digest.clone());
        let path = self.tasks.store.content_path(&id)?;
        let (task, _) = self
            .tasks
            .get_or_insert(&id, || Ok(Task::new(id.clone(), url, digest, path)))?;
        let done = task.progress().done;
        if done {
            task.lock().dirty = true; // records the access time for GC
            task.save(&self.tasks.store)?;
            if !req.seed {
                return Ok(task);
            }
        }
        if self.running.lock().expect("running lock").insert(id.clone()) {
            let this = self.clone();
            let t = task.clone();
            let span =
                info_span!("download", task_id = %id, seed = req.seed, peer_id = tracing::field::Empty);
            tokio::spawn(async move { this.drive(t, req).await }.instrument(span));
        }
        Ok(task)
    }

    async fn drive(self: Arc<Self>, task: Arc<Task>, req: Request) {
        self.metrics.active_downloads.inc();
        let id = task.id.clone();
        let started = Instant::now();
        let result = Engine::new(self.clone(), task.clone(), req).run().await;
        match result {
            Ok(()) => {
                self.metrics.task_ended("success");
                info!(elapsed = ?started.elapsed(), "download finished");
            }
            Err(e) => {
                warn!(error = %e, "download failed");
                self.metrics.task_ended("failure");
                if matches!(e, Error::DigestMismatch { .. }) {
                    let _ = self.tasks.store.delete(&id);
                } else {
                    let _ = task.save(&self.tasks.store);
                }
                task.mark_failed(e.failure());
                self.tasks.forget(&id);
            }
        }
        self.running.lock().expect("running lock").remove(&id);
        self.metrics.active_downloads.dec();
    }
}

/// Waits until the task is done (Ok) or failed (Err).
pub async fn wait(task: &Task) -> Result<(), Error> {
    let mut changes = task.subscribe();
    loop {
        let p = task.progress();
        if let Some(f) = p.failed {
            return Err(Error::Ended(f));
        }
        if p.done {
            return Ok(());
        }
        if changes.changed().await.is_err() {
            return Err(Error::Failed("task dropped".into()));
        }
    }
}

struct ParentState {
    conn: ParentConn,
    have: Vec<bool>,
    held: usize,
    inflight: usize,
    seed: bool,
}

impl ParentState {
    /// A source still fetching from the origin: its uplink spreads new
    /// pieces, so it is asked only for what no other parent has.
    fn scarce(&self) -> bool {
        self.seed && self.held < self.have.len()
    }
}

#[derive(Default)]
struct Report {
    pieces: Vec<PieceDigest>,
    bytes_from_peers: u64,
    bytes_from_source: u64,
    costs: HashMap<String, (u32, u64)>,
}

struct Engine {
    d: Arc<Downloader>,
    task: Arc<Task>,
    spec: TaskSpec,
    seed: bool,
    peer_id: String,
    sched_tx: Option<mpsc::UnboundedSender<TaskMessage>>,
    sched_rx: Option<tonic::Streaming<TaskCommand>>,
    parents: HashMap<String, ParentState>,
    blocklist: HashSet<String>,
    /// Parents that were at their upload limit, and when they said so.
    busy: HashMap<String, Instant>,
    inflight: HashMap<u32, (String, Instant)>,
    events_tx: mpsc::UnboundedSender<ParentEvent>,
    events_rx: mpsc::UnboundedReceiver<ParentEvent>,
    source_tx: mpsc::UnboundedSender<SourceEvent>,
    source_rx: mpsc::UnboundedReceiver<SourceEvent>,
    sourcing: bool,
    report: Report,
    last_progress: Instant,
    last_report: Instant,
    last_save: Instant,
    last_reschedule: Instant,
}

fn msg(m: task_message::Msg) -> TaskMessage {
    TaskMessage { msg: Some(m) }
}

impl Engine {
    fn new(d: Arc<Downloader>, task: Arc<Task>, req: Request) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (source_tx, source_rx) = mpsc::unbounded_channel();
        let peer_id = format!("{}-{:08x}", d.host_id, rand::random::<u32>());
        let now = Instant::now();
        Self {
            d,
            task,
            spec: req.spec,
            seed: req.seed,
            peer_id,
            sched_tx: None,
            sched_rx: None,
            parents: HashMap::new(),
            blocklist: HashSet::new(),
            busy: HashMap::new(),
            inflight: HashMap::new(),
            events_tx,
            events_rx,
            source_tx,
            source_rx,
            sourcing: false,
            report: Report::default(),
            last_progress: now,
            last_report: now,
            last_save: now,
            last_reschedule: now,
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        tracing::Span::current().record("peer_id", self.peer_id.as_str());
        self.connect_scheduler().await;
        if self.seed || self.sched_tx.is_none() {
            self.start_source("seed or no scheduler")?;
        }
        let mut tick = tokio::time::interval(TICK);
        loop {
            if self.complete() {
                return self.finish().await;
            }
            self.fill();
            tokio::select! {
                cmd = next_command(&mut self.sched_rx) => match cmd {
                    Some(c) => self.on_command(c)?,
                    None => {
                        self.sched_rx = None;
                        self.sched_tx = None;
                        warn!("scheduler stream lost");
                        self.start_source("scheduler lost")?;
                    }
                },
                Some(ev) = self.events_rx.recv() => self.on_parent_event(ev)?,
                Some(ev) = self.source_rx.recv() => self.on_source_event(ev)?,
                _ = tick.tick() => self.on_tick()?,
            }
        }
    }

    async fn connect_scheduler(&mut self) {
        let Some(ep) = self.d.scheduler_for(&self.spec.task_id) else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (bitmap, layout, source) = {
            let s = self.task.lock();
            (s.bitmap(), s.layout, s.source || self.seed)
        };
        let done = self.task.progress().done;
        let register = Register {
            host_id: self.d.host_id.clone(),
            peer_id: self.peer_id.clone(),
            spec: Some(self.spec.clone()),
            from_source: source || done,
            bitmap,
            content_length: layout.map(|l| l.content_length).unwrap_or(0),
            piece_length: layout.map(|l| l.piece_length).unwrap_or(0),
        };
        let _ = tx.send(msg(task_message::Msg::Register(register)));
        let mut client = SchedulerClient::new(ep.channel.clone());
        match tokio::time::timeout(
            SCHEDULER_TIMEOUT,
            client.announce_task(UnboundedReceiverStream::new(rx)),
        )
        .await
        {
            Ok(Ok(resp)) => {
                self.sched_rx = Some(resp.into_inner());
                self.sched_tx = Some(tx);
                if source || done {
                    self.announce_held_digests();
                }
            }
            Ok(Err(status)) => {
                warn!(scheduler = ep.addr, error = %status.message(), "scheduler refused the task")
            }
            Err(_) => warn!(scheduler = ep.addr, "scheduler did not answer"),
        }
    }

    /// A source that already holds pieces (a restarted seed) hands their digests over.
    fn announce_held_digests(&mut self) {
        let s = self.task.lock();
        let Some(l) = s.layout else { return };
        let info = SourceInfo {
            content_length: l.content_length,
            piece_length: l.piece_length,
        };
        let pieces = (0..l.piece_count())
            .filter_map(|i| {
                let d = s.digests[i as usize]?;
                s.have[i as usize].then(|| PieceDigest {
                    index: i,
                    sha256: d.to_vec(),
                })
            })
            .collect();
        drop(s);
        self.send(task_message::Msg::SourceInfo(info));
        self.send(task_message::Msg::Pieces(PiecesDone {
            pieces,
            ..Default::default()
        }));
    }

    fn send(&self, m: task_message::Msg) {
        if let Some(tx) = &self.sched_tx {
            let _ = tx.send(msg(m));
        }
    }

    fn complete(&self) -> bool {
        let s = self.task.lock();
        s.layout.is_some() && s.have.iter().all(|h| *h)
    }

    fn on_command(&mut self, c: TaskCommand) -> Result<(), Error> {
        match c.cmd {
            Some(task_command::Cmd::Info(i)) => {
                let layout = Layout::try_new(i.content_length, i.piece_length)
                    .map_err(|e| Error::Failed(format!("the scheduler's layout: {e}")))?;
                self.task.set_layout(layout)?;
            }
            Some(task_command::Cmd::Digests(d)) => {
                self.task.set_digests(
                    d.pieces
                        .into_iter()
                        .filter_map(|p| Some((p.index, <[u8; 32]>::try_from(p.sha256.as_slice()).ok()?))),
                );
            }
            Some(task_command::Cmd::Parents(p)) => self.set_parents(p.parents),
            Some(task_command::Cmd::BackToSource(b)) => self.start_source(&b.reason)?,
            None => {}
        }
        Ok(())
    }

    fn set_parents(&mut self, list: Vec<damselfly_proto::scheduler::Parent>) {
        if self.sourcing {
            return;
        }
        let wanted: HashSet<String> = list.iter().map(|p| p.peer_id.clone()).collect();
        let gone: Vec<String> = self
            .parents
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for g in gone {
            self.drop_parent(&g);
        }
        for p in list {
            if self.parents.contains_key(&p.peer_id)
                || self.blocklist.contains(&p.peer_id)
                || self
                    .busy
                    .get(&p.peer_id)
                    .is_some_and(|at| at.elapsed() < BUSY_RETRY)
                || p.peer_id == self.peer_id
            {
                continue;
            }
            let target = Target {
                peer_id: p.peer_id.clone(),
                addr: format!("{}:{}", p.ip, p.piece_port),
            };
            debug!(parent = p.peer_id, addr = target.addr, "connecting to parent");
            let conn = parent::connect(
                target,
                self.task.clone(),
                self.peer_id.clone(),
                self.events_tx.clone(),
                self.d.download_limiter.clone(),
            );
            self.parents.insert(
                p.peer_id,
                ParentState {
                    conn,
                    have: Vec::new(),
                    held: 0,
                    inflight: 0,
                    seed: p.seed,
                },
            );
        }
    }

    fn drop_parent(&mut self, id: &str) {
        self.parents.remove(id);
        self.inflight.retain(|_, (p, _)| p != id);
    }

    /// A parent failed: forget it for this task and tell the scheduler.
    fn fail_parent(&mut self, id: &str, index: u32, reason: FailReason) {
        self.drop_parent(id);
        self.blocklist.insert(id.to_string());
        self.d.metrics.piece_failed(if reason == FailReason::Corrupt {
            "corrupt"
        } else {
            "unreachable"
        });
        self.send(task_message::Msg::PieceFailed(PieceFailed {
            index,
            parent_peer_id: id.to_string(),
            reason: reason as i32,
        }));
    }

    fn start_source(&mut self, why: &str) -> Result<(), Error> {
        if self.sourcing {
            return Ok(());
        }
        info!(reason = why, "fetching from the origin");
        self.sourcing = true;
        self.parents.clear();
        self.inflight.clear();
        self.task.lock().source = true;
        match self.task.layout() {
            Some(l) => self.fetch_missing(l),
            None => {
                let (http, url, headers, cfg, tx) = (
                    self.d.http.clone(),
                    self.spec.url.clone(),
                    self.spec.headers.clone(),
                    self.d.config.source.clone(),
                    self.source_tx.clone(),
                );
                tokio::spawn(async move {
                    let ev = match source::content_length(&http, &url, &headers, &cfg).await {
                        Ok(n) => SourceEvent::Length(n),
                        Err(e) => SourceEvent::Failed(e),
                    };
                    let _ = tx.send(ev);
                });
            }
        }
        Ok(())
    }

    fn fetch_missing(&self, layout: Layout) {
        let missing: Vec<u32> = self.task.lock().missing().collect();
        let blocks = source::blocks(layout, &missing);
        let connections = blocks.len().min(self.d.config.source.connections as usize);
        let blocks = Arc::new(std::sync::Mutex::new(blocks));
        for _ in 0..connections {
            tokio::spawn(source::fetch(
                self.d.http.clone(),
                self.spec.url.clone(),
                self.spec.headers.clone(),
                layout,
                blocks.clone(),
                self.d.config.source.clone(),
                self.source_tx.clone(),
            ));
        }
    }

    fn on_source_event(&mut self, ev: SourceEvent) -> Result<(), Error> {
        match ev {
            SourceEvent::Length(n) => {
                let piece_length = if self.spec.piece_length > 0 {
                    self.spec.piece_length
                } else {
                    self.d.limits.piece_length_for(n)
                };
                let layout = Layout::try_new(n, piece_length)
                    .map_err(|e| Error::Failed(format!("{}: {e}", self.spec.url)))?;
                self.task.set_layout(layout)?;
                self.send(task_message::Msg::SourceInfo(SourceInfo {
                    content_length: n,
                    piece_length,
                }));
                self.fetch_missing(layout);
            }
            SourceEvent::Piece { index, data, digest } => {
                if self.task.has(index) {
                    return Ok(());
                }
                if let Some(expected) = self.task.expected_digest(index)
                    && expected != digest
                {
                    return Err(Error::Failed(format!(
                        "the origin's piece {index} differs from the swarm's: the content changed at the origin"
                    )));
                }
                self.task.set_digests([(index, digest)]);
                self.task.write_piece(index, &data, true)?;
                self.d.metrics.bytes_from_source.inc_by(data.len() as u64);
                self.report.bytes_from_source += data.len() as u64;
                self.report.pieces.push(PieceDigest {
                    index,
                    sha256: digest.to_vec(),
                });
                self.last_progress = Instant::now();
            }
            SourceEvent::Done => {}
            SourceEvent::Failed(e) => return Err(e),
        }
        Ok(())
    }

    fn on_parent_event(&mut self, ev: ParentEvent) -> Result<(), Error> {
        match ev {
            ParentEvent::Bitmap { parent, have } => {
                if let Some(p) = self.parents.get_mut(&parent) {
                    p.held = have.iter().filter(|h| **h).count();
                    p.have = have;
                }
            }
            ParentEvent::Have { parent, pieces } => {
                if let Some(p) = self.parents.get_mut(&parent) {
                    for i in pieces {
                        if let Some(h) = p.have.get_mut(i as usize)
                            && !*h
                        {
                            *h = true;
                            p.held += 1;
                        }
                    }
                }
            }
            ParentEvent::Piece {
                parent,
                index,
                data,
                verified,
                elapsed,
            } => {
                if let Some(p) = self.parents.get_mut(&parent) {
                    p.inflight = p.inflight.saturating_sub(1);
                }
                if self.inflight.get(&index).is_some_and(|(p, _)| *p == parent) {
                    self.inflight.remove(&index);
                }
                if self.task.has(index) || !self.parents.contains_key(&parent) {
                    return Ok(());
                }
                let ok = verified.or_else(|| self.task.expected_digest(index).map(|d| sha256(&data) == d));
                match ok {
                    Some(true) => {
                        self.task.write_piece(index, &data, false)?;
                        self.d.metrics.bytes_from_peers.inc_by(data.len() as u64);
                        self.report.bytes_from_peers += data.len() as u64;
                        self.report.pieces.push(PieceDigest {
                            index,
                            sha256: Vec::new(),
                        });
                        let c = self.report.costs.entry(parent).or_default();
                        c.0 += 1;
                        c.1 += elapsed.as_millis() as u64;
                        self.last_progress = Instant::now();
                    }
                    Some(false) => {
                        warn!(parent, index, "corrupt piece from parent; blocklisted");
                        self.fail_parent(&parent, index, FailReason::Corrupt);
                    }
                    None => {} // digest unknown yet: requested again once it is
                }
            }
            ParentEvent::Closed { parent, error, fault } => {
                if self.parents.contains_key(&parent) {
                    debug!(parent, error, "parent connection closed");
                    if fault == FailReason::Busy {
                        // Not a fault: asked again once the scheduler offers it after BUSY_RETRY.
                        self.drop_parent(&parent);
                        self.busy.insert(parent.clone(), Instant::now());
                        self.d.metrics.piece_failed("busy");
                        self.send(task_message::Msg::PieceFailed(PieceFailed {
                            index: 0,
                            parent_peer_id: parent,
                            reason: fault as i32,
                        }));
                    } else {
                        self.fail_parent(&parent, 0, fault);
                    }
                    if self.parents.is_empty() {
                        self.send(task_message::Msg::Reschedule(Reschedule {}));
                    }
                }
            }
        }
        Ok(())
    }

    /// Requests the lowest missing pieces, each from the least busy parent that
    /// has it (a source still fetching only when nobody else has the piece).
    fn fill(&mut self) {
        if self.sourcing || self.parents.is_empty() {
            return;
        }
        let s = self.task.lock();
        if s.layout.is_none() {
            return;
        }
        let total = self.d.limits.download_concurrency(TOTAL_WINDOW);
        let window = PARENT_WINDOW.max(total / self.parents.len());
        let mut free: usize = self
            .parents
            .values()
            .map(|p| window.saturating_sub(p.inflight))
            .sum::<usize>()
            .min(total.saturating_sub(self.inflight.len()));
        for i in 0..s.have.len() {
            if free == 0 {
                break;
            }
            if s.have[i] || s.digests[i].is_none() || self.inflight.contains_key(&(i as u32)) {
                continue;
            }
            let best = self
                .parents
                .iter()
                .filter(|(_, p)| p.inflight < window && p.have.get(i).copied().unwrap_or(false))
                .min_by_key(|(id, p)| (p.scarce(), p.inflight, *id))
                .map(|(id, _)| id.clone());
            let Some(id) = best else { continue };
            let p = self.parents.get_mut(&id).expect("just found");
            if p.conn.request(i as u32) {
                p.inflight += 1;
                free -= 1;
                self.inflight.insert(i as u32, (id, Instant::now()));
            }
        }
    }

    fn on_tick(&mut self) -> Result<(), Error> {
        let interval = if self.sourcing { TICK } else { REPORT_EVERY };
        if self.last_report.elapsed() >= interval {
            self.flush_report();
        }
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.task.save(&self.d.tasks.store)?;
            self.last_save = Instant::now();
        }
        if self.sourcing {
            return Ok(());
        }
        let stall = self.d.config.stall_timeout;
        let late: Vec<(u32, String)> = self
            .inflight
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > stall * 2)
            .map(|(i, (p, _))| (*i, p.clone()))
            .collect();
        for (i, p) in late {
            warn!(parent = p, index = i, "piece request timed out");
            self.fail_parent(&p, i, FailReason::Unreachable);
        }
        let idle = self.last_progress.elapsed();
        if idle > stall * 3 || (self.sched_tx.is_none() && idle > stall) {
            self.start_source("no progress from parents")?;
        } else if idle > stall && self.last_reschedule.elapsed() > stall {
            self.last_reschedule = Instant::now();
            self.send(task_message::Msg::Reschedule(Reschedule {}));
        }
        Ok(())
    }

    fn flush_report(&mut self) {
        self.last_report = Instant::now();
        let r = std::mem::take(&mut self.report);
        if r.pieces.is_empty() && r.bytes_from_peers == 0 && r.bytes_from_source == 0 {
            return;
        }
        let costs = r
            .costs
            .into_iter()
            .map(|(parent_peer_id, (n, total))| PieceCost {
                parent_peer_id,
                pieces: n,
                mean_millis: (total / n.max(1) as u64) as u32,
            })
            .collect();
        self.send(task_message::Msg::Pieces(PiecesDone {
            pieces: r.pieces,
            bytes_from_peers: r.bytes_from_peers,
            bytes_from_source: r.bytes_from_source,
            costs,
        }));
    }

    async fn finish(mut self) -> Result<(), Error> {
        self.parents.clear();
        let expected = self.task.lock().digest.clone();
        if let Some(expected) = expected {
            let path = self.task.content_path().to_path_buf();
            let actual = tokio::task::spawn_blocking(move || file_digest(&path))
                .await
                .map_err(|e| Error::Failed(format!("digest task: {e}")))??;
            if actual != expected {
                let e = Error::DigestMismatch { expected, actual };
                self.send(task_message::Msg::Failed(Failed {
                    reason: e.to_string(),
                }));
                self.close_scheduler().await;
                return Err(e);
            }
        }
        self.task.mark_done();
        self.task.save(&self.d.tasks.store)?;
        self.flush_report();
        self.send(task_message::Msg::Finished(Finished {
            digest: self.spec.digest.clone(),
        }));
        self.close_scheduler().await;
        Ok(())
    }

    /// Ends our side of the task stream and waits for the scheduler to end
    /// its side: dropping the call outright would cancel it and lose the
    /// last reports still in flight.
    async fn close_scheduler(&mut self) {
        self.sched_tx = None;
        if let Some(mut rx) = self.sched_rx.take() {
            let _ = tokio::time::timeout(SCHEDULER_TIMEOUT, async move {
                while let Ok(Some(_)) = rx.message().await {}
            })
            .await;
        }
    }
}

async fn next_command(rx: &mut Option<tonic::Streaming<TaskCommand>>) -> Option<TaskCommand> {
    match rx {
        Some(s) => s.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// `sha256:<hex>` of a whole file.
pub fn file_digest(path: &std::path::Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read content", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}
