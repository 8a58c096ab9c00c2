//! Hosts, tasks, peers and each task's parent->child DAG: plain data.
//!
//! One [`State`] lives in the scheduling [`Core`](crate::core::Core); nothing
//! here awaits, does I/O or reads the clock, so every operation is short and
//! testable on its own. The streams to hosts and peers belong to the
//! transport ([`service`](crate::service)), not to this data.

use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::{HostInfo, TaskSpec};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

/// Welford running statistics of one host's piece costs (milliseconds).
#[derive(Debug, Default, Clone)]
pub struct CostStats {
    pub samples: u64,
    pub mean: f64,
    m2: f64,
    /// The newest reported cost, and the history it is judged against.
    pub last: f64,
    pub before: (u64, f64, f64),
}

impl CostStats {
    pub fn add(&mut self, cost: f64, weight: u64) {
        self.before = (self.samples, self.mean, self.std_dev());
        for _ in 0..weight.max(1) {
            self.samples += 1;
            let delta = cost - self.mean;
            self.mean += delta / self.samples as f64;
            self.m2 += delta * (cost - self.mean);
        }
        self.last = cost;
    }

    pub fn std_dev(&self) -> f64 {
        if self.samples < 2 {
            0.0
        } else {
            (self.m2 / (self.samples - 1) as f64).sqrt()
        }
    }
}

pub struct Host {
    pub info: HostInfo,
    /// Distinguishes a reconnected host's stream from the one it replaced.
    pub conn: u64,
    pub last_seen: Instant,
    pub active_uploads: u32,
    pub costs: CostStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Running,
    Succeeded,
    Failed,
}

impl PeerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerState::Running => "running",
            PeerState::Succeeded => "succeeded",
            PeerState::Failed => "failed",
        }
    }
}

pub struct Peer {
    pub id: String,
    pub host_id: String,
    pub state: PeerState,
    /// Fetches from the origin; its piece digests are trusted.
    pub source: bool,
    pub pieces: u32,
    pub parents: Vec<String>,
    pub children: HashSet<String>,
    pub blocklist: HashSet<String>,
    /// Its task stream is open; false once the peer finished and closed it
    /// (it stays a parent for as long as its host is alive).
    pub open: bool,
    pub registered: Instant,
    /// Its place in the task's registration order (set by [`Task::add_peer`]).
    pub seq: u64,
}

pub struct Task {
    pub id: String,
    pub spec: TaskSpec,
    pub layout: Option<Layout>,
    pub digests: Vec<Option<[u8; 32]>>,
    pub peers: HashMap<String, Peer>,
    /// Registration order, oldest first (for fair re-planning); also what
    /// the planner samples candidates from by index.
    pub order: Vec<String>,
    /// Indexes kept as peers come and go, so that no decision scans the
    /// task's peers: the sources, and the running peers with an open stream
    /// that have fewer than `needy_limit` parents, by registration (entries
    /// may be stale; [`Task::needy`] checks and drops them).
    pub sources: BTreeSet<String>,
    needy: BTreeMap<u64, String>,
    needy_limit: usize,
    next_seq: u64,
    /// The seed host told to fetch this task, if any.
    pub seed_host: Option<String>,
    /// host id -> peers that reported a corrupt piece from it.
    pub corrupt_reports: HashMap<String, HashSet<String>>,
    pub bad_hosts: HashSet<String>,
    pub last_active: Instant,
}

impl Task {
    pub fn new(id: String, spec: TaskSpec, now: Instant) -> Self {
        Self {
            id,
            spec,
            layout: None,
            digests: Vec::new(),
            peers: HashMap::new(),
            order: Vec::new(),
            sources: BTreeSet::new(),
            needy: BTreeMap::new(),
            needy_limit: 0,
            next_seq: 0,
            seed_host: None,
            corrupt_reports: HashMap::new(),
            bad_hosts: HashSet::new(),
            last_active: now,
        }
    }

    /// Sets the layout once; later different answers are ignored (the first
    /// source wins) and reported as `false`.
    pub fn set_layout(&mut self, layout: Layout) -> bool {
        match self.layout {
            Some(l) => l == layout,
            None => {
                self.digests = vec![None; layout.piece_count() as usize];
                self.layout = Some(layout);
                true
            }
        }
    }

    pub fn has_source(&self) -> bool {
        self.sources
            .iter()
            .filter_map(|id| self.peers.get(id))
            .any(|p| p.source && p.state != PeerState::Failed)
    }

    /// Adds a peer at the end of the registration order (a peer of the same
    /// id is replaced; callers remove it first to re-plan its children).
    pub fn add_peer(&mut self, mut peer: Peer) {
        if self.peers.contains_key(&peer.id) {
            self.order.retain(|x| *x != peer.id);
        }
        peer.seq = self.next_seq;
        self.next_seq += 1;
        let id = peer.id.clone();
        if peer.source {
            self.sources.insert(id.clone());
        }
        self.order.push(id.clone());
        self.peers.insert(id.clone(), peer);
        self.refresh_needy(&id);
    }

    /// The peer fetches from the origin from now on.
    pub fn mark_source(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.source = true;
            self.sources.insert(peer.to_string());
        }
    }

    fn is_needy(p: &Peer, limit: usize) -> bool {
        !p.source && p.state == PeerState::Running && p.open && p.parents.len() < limit
    }

    /// Indexes the peer as short of parents if it is (never un-indexes: a
    /// stale entry is dropped when [`Task::needy`] meets it).
    fn refresh_needy(&mut self, peer: &str) {
        if let Some(p) = self.peers.get(peer)
            && Self::is_needy(p, self.needy_limit)
        {
            self.needy.insert(p.seq, p.id.clone());
        }
    }

    /// At most `max` running peers with an open stream and fewer than
    /// `limit` parents, oldest first. Linear only when `limit` changed (the
    /// index is rebuilt); otherwise in the entries it looks at.
    pub fn needy(&mut self, limit: usize, max: usize) -> Vec<String> {
        if limit != self.needy_limit {
            self.needy_limit = limit;
            self.needy = self
                .peers
                .values()
                .filter(|p| Self::is_needy(p, limit))
                .map(|p| (p.seq, p.id.clone()))
                .collect();
        }
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (seq, id) in &self.needy {
            if out.len() >= max {
                break;
            }
            match self.peers.get(id) {
                Some(p) if p.seq == *seq && Self::is_needy(p, limit) => out.push(id.clone()),
                _ => stale.push(*seq),
            }
        }
        for seq in stale {
            self.needy.remove(&seq);
        }
        out
    }

    pub fn digests_known(&self) -> usize {
        self.digests.iter().filter(|d| d.is_some()).count()
    }

    /// Is `candidate` reachable from `peer` along parent->child edges?
    /// (Then making `candidate` a parent of `peer` would close a cycle.)
    pub fn is_descendant(&self, peer: &str, candidate: &str) -> bool {
        // Only a peer with parents can be anyone's descendant (finished
        // peers give theirs up): no walk over the whole swarm for them.
        if self.peers.get(candidate).is_none_or(|c| c.parents.is_empty()) {
            return false;
        }
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([peer.to_string()]);
        while let Some(p) = queue.pop_front() {
            let Some(entry) = self.peers.get(&p) else { continue };
            for c in &entry.children {
                if c == candidate {
                    return true;
                }
                if seen.insert(c.clone()) {
                    queue.push_back(c.clone());
                }
            }
        }
        false
    }

    /// Replaces a peer's parents, keeping the children sets in step.
    pub fn set_parents(&mut self, peer: &str, parents: Vec<String>) {
        let old = match self.peers.get_mut(peer) {
            Some(p) => std::mem::replace(&mut p.parents, parents.clone()),
            None => return,
        };
        for o in old {
            if let Some(p) = self.peers.get_mut(&o) {
                p.children.remove(peer);
            }
        }
        for n in parents {
            if let Some(p) = self.peers.get_mut(&n) {
                p.children.insert(peer.to_string());
            }
        }
        self.refresh_needy(peer);
    }

    /// Removes a peer; returns its children (who need new parents).
    pub fn remove_peer(&mut self, peer: &str) -> Vec<String> {
        self.set_parents(peer, Vec::new());
        let Some(p) = self.peers.remove(peer) else {
            return Vec::new();
        };
        self.order.retain(|x| x != peer);
        self.sources.remove(peer);
        self.needy.remove(&p.seq);
        // Sorted: who is re-planned first must not depend on hashing.
        let mut children: Vec<String> = p.children.into_iter().collect();
        children.sort();
        for c in &children {
            if let Some(child) = self.peers.get_mut(c) {
                child.parents.retain(|x| x != peer);
            }
            self.refresh_needy(c);
        }
        children
    }
}

#[derive(Default)]
pub struct State {
    pub hosts: HashMap<String, Host>,
    pub tasks: HashMap<String, Task>,
}

impl State {
    /// Removes a host and every peer it ran; returns (task id, orphaned children) pairs.
    pub fn remove_host(&mut self, host_id: &str) -> Vec<(String, Vec<String>)> {
        self.hosts.remove(host_id);
        let mut orphans = Vec::new();
        for task in self.tasks.values_mut() {
            let mut ids: Vec<String> = task
                .peers
                .values()
                .filter(|p| p.host_id == host_id)
                .map(|p| p.id.clone())
                .collect();
            ids.sort();
            let mut children = Vec::new();
            for id in ids {
                children.extend(task.remove_peer(&id));
            }
            if task.seed_host.as_deref() == Some(host_id) {
                task.seed_host = None;
            }
            children.retain(|c| task.peers.contains_key(c));
            if !children.is_empty() {
                orphans.push((task.id.clone(), children));
            }
        }
        orphans.sort();
        orphans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Peer {
        Peer {
            id: id.into(),
            host_id: format!("h-{id}"),
            state: PeerState::Running,
            source: false,
            pieces: 0,
            parents: vec![],
            children: HashSet::new(),
            blocklist: HashSet::new(),
            open: false,
            registered: Instant::now(),
            seq: 0,
        }
    }

    fn task_with(ids: &[&str]) -> Task {
        let mut t = Task::new("t".into(), TaskSpec::default(), Instant::now());
        for id in ids {
            t.add_peer(peer(id));
        }
        t
    }

    #[test]
    fn dag_edges_and_cycles() {
        let mut t = task_with(&["a", "b", "c"]);
        t.set_parents("b", vec!["a".into()]);
        t.set_parents("c", vec!["b".into()]);
        assert!(t.is_descendant("a", "c"));
        assert!(t.is_descendant("a", "b"));
        assert!(!t.is_descendant("c", "a"));
        assert_eq!(t.peers["a"].children.len(), 1);
        t.set_parents("c", vec!["a".into()]);
        assert!(t.peers["b"].children.is_empty());
        assert_eq!(t.peers["a"].children.len(), 2);
    }

    #[test]
    fn removing_a_peer_orphans_its_children() {
        let mut t = task_with(&["a", "b", "c"]);
        t.set_parents("b", vec!["a".into()]);
        t.set_parents("c", vec!["a".into(), "b".into()]);
        let mut orphans = t.remove_peer("a");
        orphans.sort();
        assert_eq!(orphans, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(t.peers["c"].parents, vec!["b".to_string()]);
        assert!(t.peers["b"].parents.is_empty());
    }

    #[test]
    fn layout_is_set_once() {
        let mut t = task_with(&[]);
        assert!(t.set_layout(Layout::new(10, 4)));
        assert_eq!(t.digests.len(), 3);
        assert!(t.set_layout(Layout::new(10, 4)));
        assert!(!t.set_layout(Layout::new(11, 4)));
    }

    #[test]
    fn cost_stats() {
        let mut s = CostStats::default();
        for c in [10.0, 12.0, 8.0, 10.0] {
            s.add(c, 1);
        }
        assert_eq!(s.samples, 4);
        assert!((s.mean - 10.0).abs() < 1e-9);
        assert!((s.std_dev() - (8.0f64 / 3.0).sqrt()).abs() < 1e-9);
    }
}
