//! Hosts, tasks, peers and each task's parent->child DAG: plain data.
//!
//! One [`State`] lives in the scheduling [`Core`](crate::core::Core); nothing
//! here awaits, does I/O or reads the clock, so every operation is short and
//! testable on its own. The streams to hosts and peers belong to the
//! transport ([`service`](crate::service)), not to this data.

use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::{HostInfo, TaskSpec};
use std::collections::{HashMap, HashSet, VecDeque};
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
}

pub struct Task {
    pub id: String,
    pub spec: TaskSpec,
    pub layout: Option<Layout>,
    pub digests: Vec<Option<[u8; 32]>>,
    pub peers: HashMap<String, Peer>,
    /// Registration order, oldest first (for fair re-planning).
    pub order: Vec<String>,
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
        self.peers
            .values()
            .any(|p| p.source && p.state != PeerState::Failed)
    }

    pub fn digests_known(&self) -> usize {
        self.digests.iter().filter(|d| d.is_some()).count()
    }

    /// Is `candidate` reachable from `peer` along parent->child edges?
    /// (Then making `candidate` a parent of `peer` would close a cycle.)
    pub fn is_descendant(&self, peer: &str, candidate: &str) -> bool {
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
    }

    /// Removes a peer; returns its children (who need new parents).
    pub fn remove_peer(&mut self, peer: &str) -> Vec<String> {
        self.set_parents(peer, Vec::new());
        let Some(p) = self.peers.remove(peer) else {
            return Vec::new();
        };
        self.order.retain(|x| x != peer);
        // Sorted: who is re-planned first must not depend on hashing.
        let mut children: Vec<String> = p.children.into_iter().collect();
        children.sort();
        for c in &children {
            if let Some(child) = self.peers.get_mut(c) {
                child.parents.retain(|x| x != peer);
            }
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
        }
    }

    fn task_with(ids: &[&str]) -> Task {
        let mut t = Task::new("t".into(), TaskSpec::default(), Instant::now());
        for id in ids {
            t.peers.insert(id.to_string(), peer(id));
            t.order.push(id.to_string());
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
