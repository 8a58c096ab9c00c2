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
use crate::metrics::Metrics;
use crate::parent::{self, ParentConn, ParentEvent, Target};
use crate::picker::{BusyParents, Picker, Report, TICK, TOTAL_WINDOW, Timers};
use crate::rate::RateLimiter;
use crate::source::{self, SourceEvent};
use crate::task::{Task, Tasks, sha256};
use damselfly_proto::piece::Layout;
use damselfly_proto::ring;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    FailReason, Failed, Finished, PieceDigest, PieceFailed, PiecesDone, Register, Reschedule, SourceInfo,
    TaskCommand, TaskMessage, TaskSpec, task_command, task_message,
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

const SCHEDULER_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The schedulers' piece-ticket keys (from their host streams), for the piece server.
    pub ticket_keys: Arc<damselfly_service::ticket::TicketKeys>,
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
            ticket_keys: Arc::default(),
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
                let bytes = task.layout().map_or(0, |l| l.content_length);
                self.metrics.bytes_from_cache.inc_by(bytes);
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
    events_tx: mpsc::UnboundedSender<ParentEvent>,
    events_rx: mpsc::UnboundedReceiver<ParentEvent>,
    source_tx: mpsc::UnboundedSender<SourceEvent>,
    source_rx: mpsc::UnboundedReceiver<SourceEvent>,
    sourcing: bool,
    origin: Option<Arc<dyn crate::origin::Origin>>,
    report: Report,
    timers: Timers,
}

fn msg(m: task_message::Msg) -> TaskMessage {
    TaskMessage { msg: Some(m) }
}

impl Engine {
    fn new(d: Arc<Downloader>, task: Arc<Task>, req: Request) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (source_tx, source_rx) = mpsc::unbounded_channel();
        let peer_id = format!("{}-{:08x}", d.host_id, rand::random::<u32>());
        let timers = Timers::new(Instant::now(), d.config.stall_timeout);
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
            None => {
                let (origin, tx) = (self.origin()?, self.source_tx.clone());
                tokio::spawn(async move {
                    let ev = match origin.stat().await {
                        Ok(s) => SourceEvent::Length(s.length),
                        Err(e) => SourceEvent::Failed(e),
                    };
                    let _ = tx.send(ev);
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

    fn fetch_missing(&mut self, layout: Layout) -> Result<(), Error> {
        let origin = self.origin()?;
        let missing: Vec<u32> = self.task.lock().missing().collect();
        let blocks = source::blocks(layout, &missing);
        let connections = blocks.len().min(self.d.config.source.connections as usize);
        let blocks = Arc::new(std::sync::Mutex::new(blocks));
        for _ in 0..connections {
            tokio::spawn(source::fetch(
                origin.clone(),
                layout,
                blocks.clone(),
                self.d.config.source.clone(),
                self.source_tx.clone(),
            ));
        }
        Ok(())
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
                self.fetch_missing(layout)?;
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
                self.report.from_source(index, data.len() as u64, digest);
                self.timers.progress(Instant::now());
            }
            SourceEvent::Done => {}
            SourceEvent::Answered(t) => self.d.metrics.source_request_seconds.observe(t.as_secs_f64()),
            SourceEvent::Failed(e) => return Err(e),
        }
        Ok(())
    }

    fn on_parent_event(&mut self, ev: ParentEvent) -> Result<(), Error> {
        match ev {
            ParentEvent::Bitmap { parent, have } => self.picker.bitmap(&parent, have),
            ParentEvent::Have { parent, pieces } => self.picker.have(&parent, pieces),
            ParentEvent::Piece {
                parent,
                index,
                data,
                verified,
                elapsed,
            } => {
                self.picker.arrived(&parent, index, Instant::now());
                if self.task.has(index) || !self.picker.has_parent(&parent) {
                    return Ok(());
                }
                let ok = verified.or_else(|| self.task.expected_digest(index).map(|d| sha256(&data) == d));
                match ok {
                    Some(true) => {
                        self.task.write_piece(index, &data, false)?;
                        self.d.metrics.bytes_from_peers.inc_by(data.len() as u64);
                        self.d.metrics.piece_seconds.observe(elapsed.as_secs_f64());
                        self.report.from_parent(index, data.len() as u64, parent, elapsed);
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
        let total = self.d.limits.download_concurrency(TOTAL_WINDOW);
        let conns = &self.conns;
        self.picker.fill(
            Instant::now(),
            s.have.len(),
            |i| !s.have[i] && s.digests[i].is_some(),
            total,
            |parent, i| conns.get(parent).is_some_and(|c| c.request(i)),
        );
    }

    fn on_tick(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let due = self.timers.tick(now, self.sourcing, self.sched_tx.is_some());
        if due.report {
            self.flush_report();
        }
        if due.save {
            self.task.save(&self.d.tasks.store)?;
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
