//! The download engine: drives one task to completion.
//!
//! [`Downloader::start`] starts a task (or joins the one already running) and
//! returns its shared [`Task`]; callers watch it. The engine registers with
//! the scheduler that owns the task (consistent hash over the configured
//! schedulers), connects to the parents it is given, requests the lowest
//! missing pieces from several parents at once (other peers before the
//! source, whose uplink is scarce), verifies, stores, reports in batches,
//! and goes back to source when told to, when the scheduler is gone, or when
//! no parent delivers for a while. Which piece goes to which parent and when
//! to give up are [`crate::picker`]'s (plain code, clock passed in); this
//! file wires them to the scheduler stream, the parent connections and the
//! store.

use crate::config::PeerConfig;
use crate::error::Error;
use crate::memory::PieceMemory;
use crate::metrics::Metrics;
use crate::parent::{self, ParentConn, ParentEvent, Target};
use crate::picker::{BusyParents, Picker, Report, TICK, TOTAL_WINDOW, Timers};
use crate::rate::RateLimiter;
use crate::source::{self, SourceEvent};
use crate::store::blocking;
use crate::task::{Task, Tasks, sha256};
use crate::whole_digest::WholeDigest;
use damselfly_proto::piece::Layout;
use damselfly_proto::ring;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    FailReason, Failed, Finished, PieceDigest, PieceFailed, PiecesDone, Register, Reschedule, SourceInfo,
    TaskCommand, TaskMessage, TaskSpec, task_command, task_message,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};

const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a task with origin headers waits for its scheduler's first seed keys (they come
/// right after the host stream opens).
const SEED_KEYS_WAIT: Duration = Duration::from_secs(2);
/// Events (pieces, a few MiB each) waiting for the engine, from all parents
/// together and from the origin. The engine writes one piece at a time; when
/// the disk is slower than the network these fill, the connections stop
/// reading and TCP pushes back. What bounds the bytes is the peer's
/// [`PieceMemory`] (`download_memory`): a piece is read off its socket only
/// once it has room there.
const PARENT_EVENTS: usize = 8;
const SOURCE_EVENTS: usize = 4;

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
    /// Bytes of pieces held between sockets and the disk, over all downloads (`download_memory`).
    pub memory: Arc<PieceMemory>,
    /// The cluster's peer settings in force (from the manager, if any).
    pub limits: Arc<crate::limits::Limits>,
    /// The schedulers' piece-ticket keys (from their host streams), for the piece server.
    pub ticket_keys: Arc<damselfly_service::ticket::TicketKeys>,
    /// The seeds' keys that origin headers are sealed to, by scheduler (from the host streams).
    pub seed_keys: crate::sealing::SeedKeys,
    /// A seed's own key for the headers sealed to it (made at start-up, never stored).
    pub seal_key: Option<damselfly_service::seal::SealKey>,
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
        let memory = Arc::new(PieceMemory::new(config.download_memory.as_u64()));
        metrics.schedulers.set(schedulers.len() as i64);
        let seal_key = match config.seed.then(damselfly_service::seal::SealKey::generate) {
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => {
                warn!(error = %e, "no seal key: seed tasks will come without their origin headers");
                None
            }
            None => None,
        };
        Arc::new(Self {
            tasks,
            config,
            host_id,
            metrics,
            http,
            schedulers: std::sync::RwLock::new(schedulers),
            download_limiter,
            memory,
            limits: Arc::default(),
            ticket_keys: Arc::default(),
            seed_keys: Default::default(),
            seal_key,
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
    pub async fn start(self: &Arc<Self>, req: Request) -> Result<Arc<Task>, Error> {
        let id = req.spec.task_id.clone();
        let url = damselfly_proto::task_id::canonical_url(&req.spec.url).unwrap_or_default();
        let digest = (!req.spec.digest.is_empty()).then(|| req.spec.digest.clone());
        let (tasks, task_id) = (self.tasks.clone(), id.clone());
        let (task, done) = blocking(move || {
            let path = tasks.store.content_path(&task_id)?;
            let (task, _) =
                tasks.get_or_insert(&task_id, || Ok(Task::new(task_id.clone(), url, digest, path)))?;
            let done = task.progress().done;
            if done {
                task.lock().dirty = true; // records the access time for GC
                task.save(&tasks.store)?;
            }
            Ok((task, done))
        })
        .await?;
        if done && !req.seed {
            let bytes = task.layout().map_or(0, |l| l.content_length);
            self.metrics.bytes_from_cache.inc_by(bytes);
            return Ok(task);
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
                let (store, t, mismatch) = (
                    self.tasks.store.clone(),
                    task.clone(),
                    matches!(e, Error::DigestMismatch { .. }),
                );
                let _ = blocking(move || {
                    if mismatch {
                        store.delete(&t.id)
                    } else {
                        t.save(&store)
                    }
                })
                .await;
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

struct Engine {
    d: Arc<Downloader>,
    task: Arc<Task>,
    spec: TaskSpec,
    seed: bool,
    peer_id: String,
    sched_tx: Option<mpsc::UnboundedSender<TaskMessage>>,
    sched_rx: Option<tonic::Streaming<TaskCommand>>,
    /// Open connections, one per parent the picker knows.
    conns: HashMap<String, ParentConn>,
    picker: Picker,
    blocklist: HashSet<String>,
    /// Parents that were at their upload limit, and when they said so.
    busy: BusyParents,
    /// The piece ticket of the latest parent list (empty without TLS).
    ticket: Vec<u8>,
    events_tx: mpsc::Sender<ParentEvent>,
    events_rx: mpsc::Receiver<ParentEvent>,
    source_tx: mpsc::Sender<SourceEvent>,
    source_rx: mpsc::Receiver<SourceEvent>,
    sourcing: bool,
    origin: Option<Arc<dyn crate::origin::Origin>>,
    report: Report,
    timers: Timers,
    /// The whole-content digest so far, when the task names one (see [`WholeDigest`]).
    whole: Option<Arc<Mutex<WholeDigest>>>,
    /// A layout from the length the requester knew, until the origin's first
    /// answer confirms it (only then is it set and reported).
    unconfirmed: Option<Layout>,
}

fn msg(m: task_message::Msg) -> TaskMessage {
    TaskMessage { msg: Some(m) }
}

impl Engine {
    fn new(d: Arc<Downloader>, task: Arc<Task>, req: Request) -> Self {
        let (events_tx, events_rx) = mpsc::channel(PARENT_EVENTS);
        let (source_tx, source_rx) = mpsc::channel(SOURCE_EVENTS);
        let peer_id = format!("{}-{:08x}", d.host_id, rand::random::<u32>());
        let timers = Timers::new(Instant::now(), d.config.stall_timeout);
        let whole = task.lock().digest.is_some().then(Arc::default);
        Self {
            d,
            task,
            spec: req.spec,
            seed: req.seed,
            peer_id,
            sched_tx: None,
            sched_rx: None,
            conns: HashMap::new(),
            picker: Picker::default(),
            blocklist: HashSet::new(),
            busy: BusyParents::default(),
            ticket: Vec::new(),
            events_tx,
            events_rx,
            source_tx,
            source_rx,
            sourcing: false,
            origin: None,
            report: Report::default(),
            timers,
            whole,
            unconfirmed: None,
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
                    Some(c) => self.on_command(c).await?,
                    None => {
                        self.sched_rx = None;
                        self.sched_tx = None;
                        warn!("scheduler stream lost");
                        self.start_source("scheduler lost")?;
                    }
                },
                Some(ev) = self.events_rx.recv() => self.on_parent_event(ev).await?,
                Some(ev) = self.source_rx.recv() => self.on_source_event(ev).await?,
                _ = tick.tick() => self.on_tick().await?,
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
        // Origin headers only sealed to the seeds (a seed fetching itself sends none).
        let keys = if self.seed || self.spec.headers.is_empty() {
            Vec::new()
        } else {
            self.d.seed_keys.get(&ep.addr, SEED_KEYS_WAIT).await
        };
        let register = Register {
            host_id: self.d.host_id.clone(),
            peer_id: self.peer_id.clone(),
            spec: Some(crate::sealing::for_scheduler(&self.spec, &keys)),
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

    /// Runs `f` on the task off the runtime's threads (see [`blocking`]).
    async fn io<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Task) -> Result<T, Error> + Send + 'static,
    {
        let task = self.task.clone();
        blocking(move || f(&task)).await
    }

    /// Stores a checked piece and hashes what it adds to the in-order prefix.
    async fn write(&self, index: u32, data: bytes::Bytes, from_source: bool) -> Result<(), Error> {
        let whole = self.whole.clone();
        self.io(move |t| {
            t.write_piece(index, &data, from_source)?;
            match whole {
                Some(w) => w.lock().expect("whole digest lock").landed(t, index, &data),
                None => Ok(()),
            }
        })
        .await
    }

    async fn save(&self) -> Result<(), Error> {
        let store = self.d.tasks.store.clone();
        self.io(move |t| t.save(&store)).await
    }

    async fn on_command(&mut self, c: TaskCommand) -> Result<(), Error> {
        match c.cmd {
            Some(task_command::Cmd::Info(i)) => {
                let layout = Layout::try_new(i.content_length, i.piece_length)
                    .map_err(|e| Error::Failed(format!("the scheduler's layout: {e}")))?;
                self.io(move |t| t.set_layout(layout)).await?;
            }
            Some(task_command::Cmd::Digests(d)) => {
                self.task.set_digests(
                    d.pieces
                        .into_iter()
                        .filter_map(|p| Some((p.index, <[u8; 32]>::try_from(p.sha256.as_slice()).ok()?))),
                );
            }
            Some(task_command::Cmd::Parents(p)) => {
                self.ticket = p.ticket;
                self.set_parents(p.parents);
            }
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
        debug!(parents = ?wanted, "parents from the scheduler");
        let gone: Vec<String> = self
            .picker
            .parent_ids()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for g in gone {
            self.drop_parent(&g);
        }
        for p in list {
            if self.picker.has_parent(&p.peer_id)
                || self.blocklist.contains(&p.peer_id)
                || self.busy.skip(&p.peer_id, Instant::now())
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
                self.ticket.clone(),
                self.events_tx.clone(),
                self.d.download_limiter.clone(),
                self.d.memory.clone(),
            );
            self.picker.add_parent(&p.peer_id, p.seed);
            self.conns.insert(p.peer_id, conn);
        }
    }

    fn drop_parent(&mut self, id: &str) {
        self.conns.remove(id);
        self.picker.remove_parent(id);
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
        self.conns.clear();
        self.picker.clear();
        self.task.lock().source = true;
        match self.task.layout() {
            Some(l) => self.fetch_missing(l)?,
            None if self.spec.content_length > 0 => {
                // The requester knew the length: no probe. The first answer's
                // stated length confirms it (see `on_source_event`).
                let layout = self.layout_for(self.spec.content_length)?;
                self.unconfirmed = Some(layout);
                self.fetch(layout, &(0..layout.piece_count()).collect::<Vec<_>>())?;
            }
            None => {
                let (origin, tx) = (self.origin()?, self.source_tx.clone());
                tokio::spawn(async move {
                    let ev = match origin.stat().await {
                        Ok(s) => SourceEvent::Length(s.length),
                        Err(e) => SourceEvent::Failed(e),
                    };
                    let _ = tx.send(ev).await;
                });
            }
        }
        Ok(())
    }

    /// The task's origin, opened once per download.
    fn origin(&mut self) -> Result<Arc<dyn crate::origin::Origin>, Error> {
        if let Some(o) = &self.origin {
            return Ok(o.clone());
        }
        let o = crate::origin::open(
            &self.spec.url,
            &self.spec.headers,
            &self.d.http,
            &self.d.config.source,
        )?;
        self.origin = Some(o.clone());
        Ok(o)
    }

    /// The layout for content of `n` bytes: the spec's piece length, else the cluster's rule.
    fn layout_for(&self, n: u64) -> Result<Layout, Error> {
        let piece_length = if self.spec.piece_length > 0 {
            self.spec.piece_length
        } else {
            self.d.limits.piece_length_for(n)
        };
        Layout::try_new(n, piece_length).map_err(|e| Error::Failed(format!("{}: {e}", self.spec.url)))
    }

    /// Fixes the layout from the origin's length and tells the scheduler.
    async fn publish(&mut self, layout: Layout) -> Result<(), Error> {
        self.io(move |t| t.set_layout(layout)).await?;
        self.send(task_message::Msg::SourceInfo(SourceInfo {
            content_length: layout.content_length,
            piece_length: layout.piece_length,
        }));
        Ok(())
    }

    fn fetch_missing(&mut self, layout: Layout) -> Result<(), Error> {
        let missing: Vec<u32> = self.task.lock().missing().collect();
        self.fetch(layout, &missing)
    }

    /// Streams `pieces` from the origin over `source.connections` connections.
    fn fetch(&mut self, layout: Layout, pieces: &[u32]) -> Result<(), Error> {
        let origin = self.origin()?;
        let blocks = source::blocks(layout, pieces);
        let connections = blocks.len().min(self.d.config.source.connections as usize);
        let blocks = Arc::new(std::sync::Mutex::new(blocks));
        for _ in 0..connections {
            tokio::spawn(source::fetch(
                origin.clone(),
                layout,
                blocks.clone(),
                self.d.config.source.clone(),
                self.source_tx.clone(),
                self.d.memory.clone(),
            ));
        }
        Ok(())
    }

    async fn on_source_event(&mut self, ev: SourceEvent) -> Result<(), Error> {
        match ev {
            SourceEvent::Length(n) => {
                let layout = self.layout_for(n)?;
                self.publish(layout).await?;
                self.fetch_missing(layout)?;
            }
            SourceEvent::Piece {
                index,
                data,
                digest,
                reserved: _reserved, // given back once the piece is stored
            } => {
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
                let n = data.len() as u64;
                self.write(index, data, true).await?;
                self.d.metrics.bytes_from_source.inc_by(n);
                self.report.from_source(index, n, digest);
                self.timers.progress(Instant::now());
            }
            SourceEvent::Done => {}
            SourceEvent::Answered(t) => {
                self.d.metrics.source_request_seconds.observe(t.as_secs_f64());
                // An answer that came this far stated the expected length (or none).
                if let Some(layout) = self.unconfirmed.take() {
                    self.publish(layout).await?;
                }
            }
            SourceEvent::Failed(Error::LengthMismatch { expected, actual })
                if self.unconfirmed.is_some_and(|l| l.content_length == expected) =>
            {
                // The requester's length was wrong; nothing was written or
                // reported yet, so the origin's length wins.
                warn!(
                    expected,
                    actual, "the origin's length differs from the requester's"
                );
                self.unconfirmed = None;
                let layout = self.layout_for(actual)?;
                self.publish(layout).await?;
                self.fetch_missing(layout)?;
            }
            SourceEvent::Failed(Error::LengthMismatch { expected, .. })
                if self.task.layout().is_some_and(|l| l.content_length != expected) => {} // a connection of the dropped layout
            SourceEvent::Failed(e) => return Err(e),
        }
        Ok(())
    }

    async fn on_parent_event(&mut self, ev: ParentEvent) -> Result<(), Error> {
        match ev {
            ParentEvent::Bitmap { parent, have } => self.picker.bitmap(&parent, have),
            ParentEvent::Have { parent, pieces } => self.picker.have(&parent, pieces),
            ParentEvent::Piece {
                parent,
                index,
                data,
                verified,
                elapsed,
                reserved: _reserved, // given back once the piece is stored
            } => {
                self.picker.arrived(&parent, index, Instant::now());
                if self.task.has(index) || !self.picker.has_parent(&parent) {
                    return Ok(());
                }
                let ok = verified.or_else(|| self.task.expected_digest(index).map(|d| sha256(&data) == d));
                match ok {
                    Some(true) => {
                        let n = data.len() as u64;
                        self.write(index, data, false).await?;
                        self.d.metrics.bytes_from_peers.inc_by(n);
                        self.d.metrics.piece_seconds.observe(elapsed.as_secs_f64());
                        self.report.from_parent(index, n, parent, elapsed);
                        self.timers.progress(Instant::now());
                    }
                    Some(false) => {
                        warn!(parent, index, "corrupt piece from parent; blocklisted");
                        self.fail_parent(&parent, index, FailReason::Corrupt);
                    }
                    None => {} // digest unknown yet: requested again once it is
                }
            }
            ParentEvent::Closed { parent, error, fault } => {
                debug!(parent, error, ?fault, "parent connection ended");
                if self.picker.has_parent(&parent) {
                    debug!(parent, error, "parent connection closed");
                    if fault == FailReason::Busy {
                        // Not a fault: connected again when offered after BUSY_RETRY
                        // (the engine asks for parents then if it has none).
                        self.drop_parent(&parent);
                        self.busy.refused(&parent, Instant::now());
                        self.d.metrics.piece_failed("busy");
                        self.send(task_message::Msg::PieceFailed(PieceFailed {
                            index: 0,
                            parent_peer_id: parent,
                            reason: fault as i32,
                        }));
                    } else {
                        self.fail_parent(&parent, 0, fault);
                    }
                    if self.picker.is_empty() {
                        self.send(task_message::Msg::Reschedule(Reschedule {}));
                    }
                }
            }
        }
        Ok(())
    }

    /// Requests the lowest missing pieces (see [`Picker::fill`]).
    fn fill(&mut self) {
        if self.sourcing || self.picker.is_empty() {
            return;
        }
        let s = self.task.lock();
        if s.layout.is_none() {
            return;
        }
        let total = window(
            self.d.limits.download_concurrency(TOTAL_WINDOW),
            self.d.config.download_window.as_u64(),
            s.layout.map_or(1, |l| l.piece_length),
        );
        let conns = &self.conns;
        self.picker.fill(
            Instant::now(),
            s.have.len(),
            |i| !s.have[i] && s.digests[i].is_some(),
            total,
            |parent, i| conns.get(parent).is_some_and(|c| c.request(i)),
        );
    }

    async fn on_tick(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let due = self.timers.tick(now, self.sourcing, self.sched_tx.is_some());
        if due.report {
            self.flush_report();
        }
        if due.save {
            self.save().await?;
        }
        if self.sourcing {
            return Ok(());
        }
        for (i, p) in self.picker.late(now, self.timers.request_timeout()) {
            warn!(parent = p, index = i, "piece request timed out");
            self.fail_parent(&p, i, FailReason::Unreachable);
        }
        let busy_expired = self.busy.expired(now);
        if due.back_to_source {
            self.start_source("no progress from parents")?;
        } else if due.reschedule || (busy_expired && self.picker.is_empty()) {
            self.send(task_message::Msg::Reschedule(Reschedule {}));
        }
        Ok(())
    }

    fn flush_report(&mut self) {
        if let Some(r) = self.report.take() {
            self.send(task_message::Msg::Pieces(r));
        }
    }

    async fn finish(mut self) -> Result<(), Error> {
        self.conns.clear();
        self.picker.clear();
        let expected = self.task.lock().digest.clone();
        if let (Some(expected), Some(whole)) = (expected, self.whole.clone()) {
            // Normally all hashed already; reads only what was not (see WholeDigest).
            let actual = self
                .io(move |t| whole.lock().expect("whole digest lock").finish(t))
                .await?;
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
        self.save().await?;
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

/// Piece requests one download keeps in flight: `requests` (the cluster's
/// or the default count), but no more than `bytes` (`download_window`) of
/// pieces of `piece_length`, and at least one.
fn window(requests: usize, bytes: u64, piece_length: u32) -> usize {
    let by_bytes = (bytes / u64::from(piece_length.max(1))).max(1);
    requests.min(usize::try_from(by_bytes).unwrap_or(usize::MAX))
}

async fn next_command(rx: &mut Option<tonic::Streaming<TaskCommand>>) -> Option<TaskCommand> {
    match rx {
        Some(s) => s.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;
    use crate::store::Store;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An origin on loopback that honours `Range` and records every range asked.
    async fn origin(body: Vec<u8>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/blob", listener.local_addr().unwrap());
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (body, log) = (body.clone(), log.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let req = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    let range = req
                        .lines()
                        .find_map(|l| l.strip_prefix("range: bytes="))
                        .map(|r| r.trim().to_string());
                    log.lock().unwrap().push(range.clone().unwrap_or_default());
                    let total = body.len();
                    let head = match &range {
                        Some(r) => {
                            let (a, b) = r.split_once('-').unwrap();
                            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                            let b = b.min(total - 1);
                            let h = format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                b + 1 - a
                            );
                            (h, &body[a..=b])
                        }
                        None => (
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
                            ),
                            &body[..],
                        ),
                    };
                    let _ = conn.write_all(head.0.as_bytes()).await;
                    let _ = conn.write_all(head.1).await;
                });
            }
        });
        (url, asked)
    }

    fn downloader(dir: &std::path::Path) -> Arc<Downloader> {
        let store = Arc::new(Store::open(dir).unwrap());
        let config = PeerConfig {
            data_dir: dir.to_path_buf(),
            ..PeerConfig::default()
        };
        let http = source::client(&config.source).unwrap();
        // No scheduler: the download goes to the origin at once.
        Downloader::new(
            Arc::new(Tasks::new(store)),
            config,
            "h".into(),
            Metrics::default(),
            http,
            Vec::new(),
        )
    }

    fn spec(url: &str, data: &[u8], content_length: u64) -> TaskSpec {
        let digest = damselfly_proto::task_id::Sha256Digest(sha256(data));
        TaskSpec {
            task_id: digest.hex(),
            url: url.into(),
            digest: digest.to_string(),
            piece_length: 64 * 1024,
            content_length,
            ..Default::default()
        }
    }

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn run(d: &Arc<Downloader>, spec: TaskSpec) -> Result<Arc<Task>, Error> {
        let task = d.start(Request { spec, seed: true }).await?;
        wait(&task).await?;
        Ok(task)
    }

    #[test]
    fn the_window_is_bounded_by_bytes_and_count() {
        let mib = 1024 * 1024;
        // A 1 GiB file's 2 MiB pieces: 16 of the default 32 MiB.
        assert_eq!(window(TOTAL_WINDOW, 32 * mib, 2 * mib as u32), 16);
        // Small pieces: the count bounds it.
        assert_eq!(window(TOTAL_WINDOW, 32 * mib, 256 * 1024), TOTAL_WINDOW);
        // A piece larger than the window: one at a time, never none.
        assert_eq!(window(TOTAL_WINDOW, mib, 16 * mib as u32), 1);
    }

    #[tokio::test]
    async fn a_known_length_skips_the_probe_and_the_digest_is_checked_as_pieces_land() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(300 * 1024 + 5);
        let (url, asked) = origin(data.clone()).await;
        let d = downloader(dir.path());
        let task = run(&d, spec(&url, &data, data.len() as u64)).await.unwrap();
        assert_eq!(std::fs::read(task.content_path()).unwrap(), data);
        let asked = asked.lock().unwrap().clone();
        assert!(!asked.contains(&"0-0".to_string()), "no length probe: {asked:?}");
        assert_eq!(asked.len(), 1, "one block, one request: {asked:?}");
    }

    #[tokio::test]
    async fn an_unknown_length_is_probed() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(100 * 1024);
        let (url, asked) = origin(data.clone()).await;
        let d = downloader(dir.path());
        run(&d, spec(&url, &data, 0)).await.unwrap();
        assert_eq!(asked.lock().unwrap()[0], "0-0");
    }

    #[tokio::test]
    async fn the_origins_length_wins_over_a_wrong_one_in_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(200 * 1024 + 1);
        let (url, asked) = origin(data.clone()).await;
        let d = downloader(dir.path());
        for (i, wrong) in [data.len() as u64 - 1000, data.len() as u64 + 70_000]
            .into_iter()
            .enumerate()
        {
            let mut s = spec(&url, &data, wrong);
            s.task_id = format!("wrong{i}");
            let task = run(&d, s).await.unwrap();
            assert_eq!(task.layout().unwrap().content_length, data.len() as u64);
            assert_eq!(std::fs::read(task.content_path()).unwrap(), data);
        }
        assert!(!asked.lock().unwrap().contains(&"0-0".to_string()));
    }

    #[tokio::test]
    async fn a_wrong_whole_digest_fails_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let data = blob(150 * 1024);
        let (url, _) = origin(data.clone()).await;
        let d = downloader(dir.path());
        let mut s = spec(&url, &data, data.len() as u64);
        let other = damselfly_proto::task_id::Sha256Digest(sha256(b"other"));
        (s.task_id, s.digest) = (other.hex(), other.to_string());
        let e = run(&d, s).await.err().expect("the digest differs");
        assert!(e.to_string().contains("digest mismatch"), "{e}");
    }
}
