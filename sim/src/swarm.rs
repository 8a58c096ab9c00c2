//! The event loop: hosts, downloads, connections and the scheduling core
//! over virtual time.

use crate::net::{Link, Net, Reschedule};
use crate::{Config, Report};
use damselfly_peer::picker::{Picker, Report as PieceReport, TICK, TOTAL_WINDOW, Timers};
use damselfly_peer::piece_server::SuperSeed;
use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::{FailReason, HostInfo, TaskSpec};
use damselfly_scheduler::config::EvaluatorConfig;
use damselfly_scheduler::core::{Command, Core, Event, Registration, Retention};
use damselfly_scheduler::evaluator::DefaultEvaluator;
use damselfly_scheduler::metrics::Metrics;
use damselfly_scheduler::schedule::Planner;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod flowq;
mod transfer;

const ORIGIN: usize = 0;
const SEED: usize = 1;
/// Back to source: block size and connections (the peer's defaults).
const SOURCE_BLOCK: u64 = 8 << 20;
const SOURCE_CONNECTIONS: usize = 2;
/// How often a source re-evaluates what its children may see (the piece server's tick).
const SUPER_TICK: f64 = 0.25;

#[derive(Debug, Clone, Copy)]
enum Tag {
    Piece { conn: usize, index: u32 },
    Source { dl: usize, worker: usize, index: u32 },
}

enum Ev {
    Start(usize),
    ToCore(Box<Event>),
    Cmd(Box<Command>),
    FlowDone { flow: usize, version: u64 },
    Connected(usize),
    Bitmap { conn: usize, have: Vec<bool> },
    Request { conn: usize, index: u32 },
    Piece { conn: usize, index: u32 },
    Have { conn: usize, index: u32 },
    Closed(usize),
    Tick(usize),
    SuperTick(usize),
    Probed(usize),
    SourceBlock { dl: usize, worker: usize },
    Kill,
}

struct Entry {
    at: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Earliest first (the heap is a max-heap).
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

struct Host {
    id: String,
    lat: f64,
    alive: bool,
    killed: bool,
}

struct Dl {
    host: usize,
    task: usize,
    peer_id: String,
    started: bool,
    /// The task stream to the scheduler is open.
    registered: bool,
    done_at: Option<f64>,
    layout: Option<Layout>,
    have: Vec<bool>,
    digest: Vec<bool>,
    held: usize,
    picker: Picker,
    timers: Timers,
    /// parent peer id -> connection.
    conns: BTreeMap<String, usize>,
    blocklist: HashSet<String>,
    sourcing: bool,
    blocks: VecDeque<VecDeque<u32>>,
    workers: Vec<VecDeque<u32>>,
    report: PieceReport,
    /// Connections on which this download is the parent.
    children: Vec<usize>,
    super_seed: SuperSeed,
    super_tick: bool,
}

struct Conn {
    child: usize,
    parent: usize,
    open: bool,
    connected: bool,
    queue: VecDeque<u32>,
    flow: Option<usize>,
    told: Vec<bool>,
    asked: HashMap<u32, f64>,
}

struct Sim {
    cfg: Config,
    now: f64,
    t0: Instant,
    seq: u64,
    queue: BinaryHeap<Entry>,
    /// Flow completions, one per flow (see [`flowq`]).
    flow_queue: flowq::FlowQueue,
    hosts: Vec<Host>,
    net: Net<Tag>,
    dls: Vec<Dl>,
    conns: Vec<Conn>,
    peer_index: HashMap<String, usize>,
    task_ids: Vec<String>,
    core: Core,
    rng: StdRng,
    origin_bytes: u64,
    seed_sent: u64,
    sched_in: u64,
    sched_out: u64,
    back_to_source: u64,
    timed_out: u64,
    events: u64,
    remaining: usize,
    /// Per second of virtual time: (bytes the seed sent, bytes peers sent).
    trace: Vec<(u64, u64)>,
    /// (task, piece) the seed has sent once, and bytes of second copies it
    /// sent before holding the whole task.
    seed_copies: HashSet<(usize, u32)>,
    seed_repeats_while_fetching: u64,
}

/// Runs one simulation to the end (every surviving peer has every task, or
/// virtual time ran out) and reports.
pub fn run(cfg: &Config) -> Report {
    let wall = Instant::now();
    let mut sim = Sim::new(cfg.clone());
    let limit = 30.0 * cfg.s_over_u() + 120.0;
    while sim.remaining > 0 {
        let Some((at, ev)) = sim.next_event() else {
            break;
        };
        if at > limit {
            break;
        }
        sim.now = at;
        sim.events += 1;
        sim.dispatch(ev);
    }
    sim.report(wall.elapsed().as_secs_f64())
}

/// The digest every source reports for a piece (stands in for its sha256).
fn digest_of(task: usize, index: u32) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&(task as u64).to_le_bytes());
    d[8..12].copy_from_slice(&index.to_le_bytes());
    d
}

impl Sim {
    fn new(cfg: Config) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let up = cfg.rate_bits / 8.0;
        let mut links = vec![Link::new(up, up), Link::new(up, up)];
        let mut hosts = vec![
            Host {
                id: "origin".into(),
                lat: cfg.latency,
                alive: true,
                killed: false,
            },
            Host {
                id: "seed".into(),
                lat: cfg.latency,
                alive: true,
                killed: false,
            },
        ];
        let mut order: Vec<usize> = (0..cfg.peers).collect();
        order.shuffle(&mut rng);
        let slow: HashSet<usize> = order
            .iter()
            .take((cfg.slow_share * cfg.peers as f64).round() as usize)
            .copied()
            .collect();
        for i in 0..cfg.peers {
            let f = if slow.contains(&i) { cfg.slow_factor } else { 1.0 };
            links.push(Link::new(up * f, up * f));
            hosts.push(Host {
                id: format!("peer{}", i + 1),
                lat: cfg.latency,
                alive: true,
                killed: false,
            });
        }
        let config = EvaluatorConfig {
            candidate_parent_limit: cfg.candidate_parent_limit,
            filter_parent_limit: cfg.filter_parent_limit,
            ..EvaluatorConfig::default()
        };
        let planner = Arc::new(Planner::new(
            Box::new(DefaultEvaluator {
                config: config.clone(),
            }),
            config,
        ));
        let retention = Retention {
            host_timeout: Duration::from_secs(30),
            task_ttl: Duration::from_secs(3600),
        };
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let core = Core::new(planner, metrics, retention, cfg.seed);
        let t0 = Instant::now();
        let stall = Duration::from_secs_f64(cfg.stall_timeout);
        let task_ids: Vec<String> = (0..cfg.layers.len()).map(|t| format!("task{t}")).collect();
        let mut dls = Vec::new();
        let mut peer_index = HashMap::new();
        for (h, host) in hosts.iter().enumerate().skip(1) {
            for t in 0..cfg.layers.len() {
                let peer_id = format!("{}-t{t}", host.id);
                peer_index.insert(peer_id.clone(), dls.len());
                dls.push(Dl {
                    host: h,
                    task: t,
                    peer_id,
                    started: false,
                    registered: false,
                    done_at: None,
                    layout: None,
                    have: Vec::new(),
                    digest: Vec::new(),
                    held: 0,
                    picker: Picker::default(),
                    timers: Timers::new(t0, stall),
                    conns: BTreeMap::new(),
                    blocklist: HashSet::new(),
                    sourcing: false,
                    blocks: VecDeque::new(),
                    workers: vec![VecDeque::new(); SOURCE_CONNECTIONS],
                    report: PieceReport::default(),
                    children: Vec::new(),
                    super_seed: SuperSeed::default(),
                    super_tick: false,
                });
            }
        }
        let remaining = cfg.peers * cfg.layers.len();
        let mut sim = Self {
            now: 0.0,
            t0,
            seq: 0,
            queue: BinaryHeap::new(),
            flow_queue: flowq::FlowQueue::default(),
            net: Net::new(links),
            dls,
            conns: Vec::new(),
            peer_index,
            task_ids,
            core,
            rng,
            origin_bytes: 0,
            seed_sent: 0,
            sched_in: 0,
            sched_out: 0,
            back_to_source: 0,
            timed_out: 0,
            events: 0,
            remaining,
            trace: Vec::new(),
            seed_copies: HashSet::new(),
            seed_repeats_while_fetching: 0,
            hosts,
            cfg,
        };
        for h in 1..sim.hosts.len() {
            let info = HostInfo {
                host_id: sim.hosts[h].id.clone(),
                ip: format!("10.0.{}.{}", h / 250, h % 250),
                piece_port: 65000,
                upload_slots: sim.cfg.upload_slots,
                seed: h == SEED,
                ..Default::default()
            };
            sim.core_now(Event::HostAnnounced { info, conn: 1 });
        }
        for d in 0..sim.dls.len() {
            if sim.dls[d].host != SEED {
                let jitter = sim.rng.random_range(0.0..0.02);
                sim.at(jitter, Ev::Start(d));
            }
        }
        if sim.cfg.kill_share > 0.0 {
            let at = sim.cfg.kill_at * sim.cfg.s_over_u();
            sim.at(at, Ev::Kill);
        }
        sim
    }

    /// The earliest of the next event and the next flow completion.
    fn next_event(&mut self) -> Option<(f64, Ev)> {
        let flow_first = match (self.queue.peek(), self.flow_queue.peek()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(e), Some(d)) => d.at.total_cmp(&e.at).then(d.seq.cmp(&e.seq)).is_lt(),
        };
        if flow_first {
            let d = self.flow_queue.pop().expect("peeked");
            let ev = Ev::FlowDone {
                flow: d.flow,
                version: d.version,
            };
            return Some((d.at, ev));
        }
        self.queue.pop().map(|e| (e.at, e.ev))
    }

    fn at(&mut self, delay: f64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry {
            at: self.now + delay.max(0.0),
            seq: self.seq,
            ev,
        });
    }

    fn instant(&self) -> Instant {
        self.t0 + Duration::from_secs_f64(self.now)
    }

    fn path(&self, a: usize, b: usize) -> f64 {
        self.hosts[a].lat + self.hosts[b].lat
    }

    /// A message from `host` to the scheduler (on an unshaped host).
    fn send_to_core(&mut self, host: usize, ev: Event) {
        let lat = self.hosts[host].lat;
        self.at(lat, Ev::ToCore(Box::new(ev)));
    }

    fn core_now(&mut self, ev: Event) {
        self.sched_in += 1;
        let Ok(mut commands) = self.core.handle(self.instant(), ev) else {
            return;
        };
        self.sched_out += commands.len() as u64;
        // Deterministic order (the core's maps are not): by recipient, stable.
        commands.sort_by(|a, b| recipient(a).cmp(&recipient(b)));
        for c in commands {
            let host = match &c {
                Command::SeedTask { .. } | Command::SeedCopy { .. } => SEED,
                other => match self.peer_index.get(recipient(other).1) {
                    Some(d) => self.dls[*d].host,
                    None => continue,
                },
            };
            let lat = self.hosts[host].lat;
            self.at(lat, Ev::Cmd(Box::new(c)));
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(d) => self.start(d, false),
            Ev::ToCore(e) => self.core_now(*e),
            Ev::Cmd(c) => self.command(*c),
            Ev::FlowDone { flow, version } => self.flow_done(flow, version),
            Ev::Connected(c) => self.connected(c),
            Ev::Bitmap { conn, have } => {
                if self.conns[conn].open {
                    let (child, parent) = (self.conns[conn].child, self.conns[conn].parent);
                    let pid = self.dls[parent].peer_id.clone();
                    self.dls[child].picker.bitmap(&pid, have);
                    self.fill(child);
                }
            }
            Ev::Request { conn, index } => {
                if !self.conns[conn].open {
                    return;
                }
                let now = self.instant();
                let (child, parent) = (self.conns[conn].child, self.conns[conn].parent);
                let child_id = self.dls[child].peer_id.clone();
                self.dls[parent].super_seed.requested(&child_id, now);
                self.conns[conn].queue.push_back(index);
                if self.conns[conn].flow.is_none() {
                    self.serve_next(conn);
                }
            }
            Ev::Piece { conn, index } => self.piece_arrived(conn, index),
            Ev::Have { conn, index } => {
                if self.conns[conn].open {
                    let (child, parent) = (self.conns[conn].child, self.conns[conn].parent);
                    let pid = self.dls[parent].peer_id.clone();
                    self.dls[child].picker.have(&pid, [index]);
                    self.fill(child);
                }
            }
            Ev::Closed(c) => self.closed(c),
            Ev::Tick(d) => self.tick(d),
            Ev::SuperTick(d) => {
                self.dls[d].super_tick = false;
                let dl = &self.dls[d];
                if self.hosts[dl.host].alive && dl.sourcing && !dl.children.is_empty() {
                    for c in dl.children.clone() {
                        self.reveal(c);
                    }
                    self.arm_super_tick(d);
                }
            }
            Ev::Probed(d) => {
                if !self.hosts[self.dls[d].host].alive {
                    return;
                }
                let size = self.cfg.layers[self.dls[d].task];
                let layout = Layout::for_length(size);
                self.set_layout(d, layout);
                let (task_id, peer_id) = self.ids(d);
                self.send_to_core(
                    self.dls[d].host,
                    Event::SourceInfo {
                        task_id,
                        peer_id,
                        layout,
                    },
                );
                self.fetch_missing(d);
            }
            Ev::SourceBlock { dl, worker } => self.source_next_piece(dl, worker),
            Ev::Kill => self.kill(),
        }
    }

    /// Counts bytes sent per second of virtual time (for DAMSELFLY_SIM_TRACE).
    fn trace_sent(&mut self, seed: bool, bytes: u64) {
        let sec = self.now as usize;
        if self.trace.len() <= sec {
            self.trace.resize(sec + 1, (0, 0));
        }
        if seed {
            self.trace[sec].0 += bytes;
        } else {
            self.trace[sec].1 += bytes;
        }
    }

    fn ids(&self, d: usize) -> (String, String) {
        (
            self.task_ids[self.dls[d].task].clone(),
            self.dls[d].peer_id.clone(),
        )
    }

    fn start(&mut self, d: usize, seed: bool) {
        if self.dls[d].started || !self.hosts[self.dls[d].host].alive {
            return;
        }
        self.dls[d].started = true;
        self.dls[d].registered = true;
        let (task_id, peer_id) = self.ids(d);
        let reg = Registration {
            host_id: self.hosts[self.dls[d].host].id.clone(),
            peer_id,
            spec: TaskSpec {
                task_id,
                url: "http://origin/blob".into(),
                ..Default::default()
            },
            from_source: seed,
            layout: None,
            pieces_held: 0,
        };
        self.send_to_core(self.dls[d].host, Event::Registered(reg));
        self.dls[d].timers = Timers::new(self.instant(), Duration::from_secs_f64(self.cfg.stall_timeout));
        self.at(TICK.as_secs_f64(), Ev::Tick(d));
        if seed {
            self.start_source(d);
        }
    }

    fn command(&mut self, c: Command) {
        let d = match &c {
            Command::SeedTask { spec, .. } | Command::SeedCopy { spec, .. } => {
                let Some(t) = self.task_ids.iter().position(|t| *t == spec.task_id) else {
                    return;
                };
                let d = (SEED - 1) * self.cfg.layers.len() + t;
                let from_origin = matches!(c, Command::SeedTask { .. });
                return self.start(d, from_origin);
            }
            other => self.peer_index[recipient(other).1],
        };
        if !self.hosts[self.dls[d].host].alive || self.dls[d].done_at.is_some() {
            return;
        }
        match c {
            Command::SeedTask { .. } | Command::SeedCopy { .. } => {}
            Command::Info { layout, .. } => {
                if self.dls[d].layout.is_none() {
                    self.set_layout(d, layout);
                }
            }
            Command::Digests { pieces, .. } => {
                let dl = &mut self.dls[d];
                for (i, _) in pieces {
                    if let Some(k) = dl.digest.get_mut(i as usize) {
                        *k = true;
                    }
                }
                self.fill(d);
            }
            Command::Parents { parents, .. } => self.set_parents(d, parents),
            Command::BackToSource { .. } => self.start_source(d),
            Command::Replicate { .. } | Command::DeleteTask { .. } => {}
        }
    }

    fn set_layout(&mut self, d: usize, layout: Layout) {
        let dl = &mut self.dls[d];
        let n = layout.piece_count() as usize;
        dl.layout = Some(layout);
        dl.have = vec![false; n];
        dl.digest = vec![false; n];
        for c in self.dls[d].children.clone() {
            if self.conns[c].open {
                self.send_bitmap(c);
            }
        }
    }

    fn set_parents(&mut self, d: usize, list: Vec<damselfly_proto::scheduler::Parent>) {
        if self.dls[d].sourcing {
            return;
        }
        let wanted: HashSet<&str> = list.iter().map(|p| p.peer_id.as_str()).collect();
        let mut gone: Vec<String> = self.dls[d]
            .picker
            .parent_ids()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        gone.sort();
        for g in gone {
            self.drop_parent(d, &g);
        }
        for p in list {
            let dl = &self.dls[d];
            if dl.picker.has_parent(&p.peer_id)
                || dl.blocklist.contains(&p.peer_id)
                || p.peer_id == dl.peer_id
            {
                continue;
            }
            let Some(&parent) = self.peer_index.get(&p.peer_id) else {
                continue;
            };
            self.dls[d].picker.add_parent(&p.peer_id, p.seed);
            let c = self.conns.len();
            self.conns.push(Conn {
                child: d,
                parent,
                open: true,
                connected: false,
                queue: VecDeque::new(),
                flow: None,
                told: Vec::new(),
                asked: HashMap::new(),
            });
            self.dls[d].conns.insert(p.peer_id, c);
            // TCP handshake and Hello: 1.5 round trips.
            let delay = 3.0 * self.path(self.dls[d].host, self.dls[parent].host);
            self.at(delay, Ev::Connected(c));
        }
    }

    fn finish(&mut self, d: usize) {
        self.dls[d].done_at = Some(self.now);
        if self.dls[d].host != SEED {
            self.remaining -= 1;
        }
        let parents: Vec<String> = self.dls[d].conns.keys().cloned().collect();
        for p in parents {
            self.drop_parent(d, &p);
        }
        self.dls[d].picker.clear();
        self.flush_report(d);
        let (task_id, peer_id) = self.ids(d);
        let host = self.dls[d].host;
        self.send_to_core(
            host,
            Event::Finished {
                task_id: task_id.clone(),
                peer_id: peer_id.clone(),
            },
        );
        self.send_to_core(host, Event::StreamClosed { task_id, peer_id });
        self.dls[d].registered = false;
    }

    fn tick(&mut self, d: usize) {
        let dl = &self.dls[d];
        if dl.done_at.is_some() || !self.hosts[dl.host].alive {
            return;
        }
        let now = self.instant();
        let (sourcing, registered) = (dl.sourcing, dl.registered);
        let due = self.dls[d].timers.tick(now, sourcing, registered);
        if due.report {
            self.flush_report(d);
        }
        if !sourcing {
            let timeout = self.dls[d].timers.request_timeout();
            for (i, p) in self.dls[d].picker.late(now, timeout) {
                self.timed_out += 1;
                self.fail_parent(d, &p, i, FailReason::Unreachable);
            }
            if due.back_to_source {
                self.start_source(d);
            } else if due.reschedule {
                let (task_id, peer_id) = self.ids(d);
                self.send_to_core(self.dls[d].host, Event::RescheduleAsked { task_id, peer_id });
            }
            self.fill(d);
        }
        self.at(TICK.as_secs_f64(), Ev::Tick(d));
    }

    fn flush_report(&mut self, d: usize) {
        let Some(report) = self.dls[d].report.take() else {
            return;
        };
        if !self.dls[d].registered {
            return;
        }
        let (task_id, peer_id) = self.ids(d);
        self.send_to_core(
            self.dls[d].host,
            Event::PiecesReported {
                task_id,
                peer_id,
                report,
            },
        );
    }

    fn kill(&mut self) {
        let mut candidates: Vec<usize> = (SEED + 1..self.hosts.len()).collect();
        candidates.shuffle(&mut self.rng);
        let n = (self.cfg.kill_share * self.cfg.peers as f64).round() as usize;
        for h in candidates.into_iter().take(n) {
            self.hosts[h].alive = false;
            self.hosts[h].killed = true;
            for f in self.net.flows_of(h) {
                if let Some((flow, times)) = self.net.stop(self.now, f) {
                    if let Tag::Piece { conn, .. } = flow.tag {
                        self.conns[conn].flow = None;
                    }
                    self.reschedule(times);
                }
            }
            let tasks = self.cfg.layers.len();
            for d in (h - 1) * tasks..h * tasks {
                if self.dls[d].done_at.is_none() {
                    self.remaining -= 1;
                }
                // Its children learn that the connections broke.
                for c in self.dls[d].children.clone() {
                    let lat = self.path(h, self.dls[self.conns[c].child].host);
                    self.close_conn(c);
                    self.at(lat, Ev::Closed(c));
                }
                let parents: Vec<usize> = self.dls[d].conns.values().copied().collect();
                for c in parents {
                    self.close_conn(c);
                }
                if self.dls[d].registered {
                    let (task_id, peer_id) = self.ids(d);
                    self.send_to_core(h, Event::StreamClosed { task_id, peer_id });
                }
            }
            let host_id = self.hosts[h].id.clone();
            self.send_to_core(
                h,
                Event::HostLeft {
                    host_id,
                    conn: Some(1),
                },
            );
        }
    }

    fn report(&self, wall: f64) -> Report {
        let s = self.cfg.total_bytes() as f64;
        let su = self.cfg.s_over_u();
        let tasks = self.cfg.layers.len();
        let mut done: Vec<f64> = Vec::new();
        let mut unfinished = 0;
        for h in SEED + 1..self.hosts.len() {
            if self.hosts[h].killed {
                continue;
            }
            let last = (0..tasks).map(|t| self.dls[(h - 1) * tasks + t].done_at);
            match last.collect::<Option<Vec<f64>>>() {
                Some(v) => done.push(v.into_iter().fold(0.0, f64::max)),
                None => unfinished += 1,
            }
        }
        if std::env::var_os("DAMSELFLY_SIM_TRACE").is_some() {
            // Per download: when it finished and the parents the scheduler left it.
            for d in &self.dls {
                let task = self.core.state.tasks.get(&self.task_ids[d.task]);
                let parents = task
                    .and_then(|t| t.peers.get(&d.peer_id))
                    .map(|p| p.parents.clone());
                eprintln!(
                    "{} done {:?} parents {:?}",
                    d.peer_id,
                    d.done_at,
                    parents.unwrap_or_default()
                );
            }
        }
        if std::env::var_os("DAMSELFLY_SIM_TRACE").is_some() {
            let u = self.cfg.rate_bits / 8.0;
            for (sec, (seed, peers)) in self.trace.iter().enumerate() {
                let finished = done.iter().filter(|t| **t < sec as f64 + 1.0).count();
                eprintln!(
                    "t={sec:3} seed {:.2} U, peers {:5.2} U, finished {finished}",
                    *seed as f64 / u,
                    *peers as f64 / u
                );
            }
        }
        done.sort_by(f64::total_cmp);
        let makespan = if unfinished > 0 {
            f64::INFINITY
        } else {
            done.last().copied().unwrap_or(0.0)
        };
        let median = done.get(done.len() / 2).copied().unwrap_or(f64::INFINITY);
        let span = self.now.max(1e-9);
        Report {
            peers: self.cfg.peers,
            layers: tasks,
            total_bytes: self.cfg.total_bytes(),
            s_over_u: su,
            makespan,
            makespan_ratio: makespan / su,
            median_ratio: median / su,
            origin_ratio: self.origin_bytes as f64 / s,
            seed_sent_ratio: self.seed_sent as f64 / s,
            seed_repeats_while_fetching_ratio: self.seed_repeats_while_fetching as f64 / s,
            killed: self.hosts.iter().filter(|h| h.killed).count(),
            unfinished,
            back_to_source: self.back_to_source,
            scheduler_in_per_s: self.sched_in as f64 / span,
            scheduler_out_per_s: self.sched_out as f64 / span,
            piece_requests_timed_out: self.timed_out,
            events: self.events,
            wall_seconds: wall,
        }
    }
}

/// The (task, peer) a command goes to (empty for a host command).
fn recipient(c: &Command) -> (&str, &str) {
    match c {
        Command::SeedTask { host_id, .. }
        | Command::SeedCopy { host_id, .. }
        | Command::Replicate { host_id, .. }
        | Command::DeleteTask { host_id, .. } => ("", host_id),
        Command::Info { task_id, peer_id, .. }
        | Command::Digests { task_id, peer_id, .. }
        | Command::Parents { task_id, peer_id, .. }
        | Command::BackToSource { task_id, peer_id, .. } => (task_id, peer_id),
    }
}
