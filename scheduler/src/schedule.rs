//! Parent selection and re-planning.
//!
//! A peer gets up to `candidate_parent_limit` parents, chosen from at most
//! `filter_parent_limit` candidates of the task (sources always among them),
//! so one decision never scans a whole large swarm. Filters, in order: the
//! peer itself, the same host, the peer's blocklist, hosts that several peers
//! caught serving corrupt pieces, and the evaluator's judgement (alive, free
//! upload slot, not a bad node).
//!
//! The parent graph is a DAG towards the sources: a source never gets a
//! parent, and a peer never gets one of its own descendants as a parent
//! unless the two can trade (both running): siblings under one seed are
//! each other's parents on purpose, because the seed hands each of them
//! different pieces (see the piece server's super-seeding) and they swap
//! them. A piece itself only ever flows from a holder to a peer lacking it,
//! so piece flow cannot cycle.

use crate::config::EvaluatorConfig;
use crate::evaluator::{Evaluator, View};
use crate::state::{PeerState, State, Task};
use damselfly_proto::scheduler::Parent;
use rand::Rng;
use std::sync::RwLock;

/// Bonus that keeps a current parent over an equally good newcomer, so
/// re-planning does not churn connections.
const STICKY_BONUS: f64 = 0.2;

pub struct Planner {
    pub evaluator: Box<dyn Evaluator>,
    /// Read once per decision; swapped by [`Planner::set_limits`] when the
    /// manager changes the cluster's settings (no restart).
    config: RwLock<EvaluatorConfig>,
}

impl Planner {
    pub fn new(evaluator: Box<dyn Evaluator>, config: EvaluatorConfig) -> Self {
        Self {
            evaluator,
            config: RwLock::new(config),
        }
    }

    /// The settings in force now.
    pub fn config(&self) -> EvaluatorConfig {
        self.config.read().expect("planner config lock").clone()
    }

    /// Applies new parent limits to every decision from now on. Returns
    /// false (and changes nothing) when they are out of range: at least 1
    /// parent, at most 64, and `filter >= candidate`.
    pub fn set_limits(&self, candidate_parent_limit: usize, filter_parent_limit: usize) -> bool {
        if !(1..=64).contains(&candidate_parent_limit) || filter_parent_limit < candidate_parent_limit {
            return false;
        }
        let mut c = self.config.write().expect("planner config lock");
        c.candidate_parent_limit = candidate_parent_limit;
        c.filter_parent_limit = filter_parent_limit;
        true
    }

    /// Chooses parents for `peer_id` and records the edges. Returns the set
    /// to send it (possibly empty), or `None` when the peer gets no parents
    /// at all (a source, not running, unknown). `rng` samples the candidates
    /// of a large swarm (seeded in simulations, so runs repeat).
    pub fn schedule(
        &self,
        state: &mut State,
        task_id: &str,
        peer_id: &str,
        rng: &mut impl Rng,
    ) -> Option<Vec<String>> {
        let task = state.tasks.get(task_id)?;
        let peer = task.peers.get(peer_id)?;
        if peer.source || peer.state != PeerState::Running {
            return None;
        }
        state.hosts.get(&peer.host_id)?;
        let mut scored: Vec<(f64, String)> = self
            .candidates(task, peer_id, rng)
            .into_iter()
            .filter_map(|cand_id| {
                let score = self.fit(state, task, peer_id, cand_id)?;
                let sticky = if peer.parents.iter().any(|p| p == cand_id) {
                    STICKY_BONUS
                } else {
                    0.0
                };
                Some((score + sticky, cand_id.to_string()))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        scored.truncate(self.config().candidate_parent_limit);
        let chosen: Vec<String> = scored.into_iter().map(|(_, id)| id).collect();
        let task = state.tasks.get_mut(task_id).expect("checked above");
        task.set_parents(peer_id, chosen.clone());
        Some(chosen)
    }

    /// The score of `cand_id` as a parent of `child_id`, or `None` when it
    /// cannot be one: the same host, blocklisted, a bad host, not running or
    /// done, a finished descendant, or the evaluator says no (slots, bad node).
    fn fit(&self, state: &State, task: &Task, child_id: &str, cand_id: &str) -> Option<f64> {
        let peer = task.peers.get(child_id)?;
        let cand = task.peers.get(cand_id)?;
        let child_host = state.hosts.get(&peer.host_id)?;
        let host = state.hosts.get(&cand.host_id)?;
        if cand_id == child_id
            || cand.host_id == peer.host_id
            || peer.blocklist.contains(cand_id)
            || task.bad_hosts.contains(&cand.host_id)
            || (!cand.source && cand.state != PeerState::Running && cand.state != PeerState::Succeeded)
        {
            return None;
        }
        // A cycle is fine only between two running peers trading pieces.
        if cand.state != PeerState::Running && task.is_descendant(child_id, cand_id) {
            return None;
        }
        let total = task.layout.map(|l| l.piece_count()).unwrap_or(0);
        let child = View {
            peer,
            host: child_host,
            total_pieces: total,
        };
        let parent = View {
            peer: cand,
            host,
            total_pieces: total,
        };
        self.evaluator
            .usable(&child, &parent)
            .then(|| self.evaluator.score(&child, &parent))
    }

    /// Makes the running peers just chosen as `peer_id`'s parents its
    /// children too, where they have room for another parent and it has a
    /// free upload slot: two downloading peers trade both ways. Without
    /// this the last peers to register were nobody's parent, and a source
    /// that offered them a piece first (super-seeding) had to send it again
    /// to everyone else (ARCHITECTURE.md, "Super-seeding needs a graph
    /// without leaves"). Returns the peers whose parent sets grew.
    pub fn reciprocate(&self, state: &mut State, task_id: &str, peer_id: &str) -> Vec<String> {
        let limit = self.config().candidate_parent_limit;
        let Some(task) = state.tasks.get(task_id) else {
            return Vec::new();
        };
        let Some(peer) = task.peers.get(peer_id) else {
            return Vec::new();
        };
        if peer.source || peer.state != PeerState::Running {
            return Vec::new();
        }
        let mut grown = Vec::new();
        for p in peer.parents.clone() {
            let task = state.tasks.get(task_id).expect("checked above");
            let Some(other) = task.peers.get(&p) else {
                continue;
            };
            if other.source
                || other.state != PeerState::Running
                || !other.open
                || other.parents.len() >= 2 * limit
                || other.parents.iter().any(|x| x == peer_id)
                || self.fit(state, task, &p, peer_id).is_none()
            {
                continue;
            }
            let mut parents = other.parents.clone();
            parents.push(peer_id.to_string());
            state
                .tasks
                .get_mut(task_id)
                .expect("checked above")
                .set_parents(&p, parents);
            grown.push(p);
        }
        grown
    }

    /// Sources first, then the rest in registration order, capped at
    /// `filter_parent_limit` (a random sample when the swarm is larger: by
    /// index into the registration order, so a decision costs the same in a
    /// task of 40 peers and of 10,000).
    fn candidates<'t>(&self, task: &'t Task, peer_id: &str, rng: &mut impl Rng) -> Vec<&'t str> {
        let mut out: Vec<&str> = task
            .sources
            .iter()
            .filter(|id| task.peers.contains_key(*id))
            .map(String::as_str)
            .collect();
        let room = self.config().filter_parent_limit.saturating_sub(out.len());
        let is_other = |id: &str| id != peer_id && !task.sources.contains(id);
        let listed = usize::from(task.peers.contains_key(peer_id)) + task.sources.len();
        if task.order.len() <= room + listed {
            out.extend(task.order.iter().map(String::as_str).filter(|id| is_other(id)));
            return out;
        }
        // Enough indexes that `room` remain after dropping the peer itself and the sources.
        let want = (room + listed).min(task.order.len());
        let mut picked = 0;
        for i in rand::seq::index::sample(rng, task.order.len(), want) {
            let id = task.order[i].as_str();
            if picked < room && is_other(id) {
                out.push(id);
                picked += 1;
            }
        }
        out
    }

    /// Gives new parents to at most `max` running peers that have fewer than
    /// the limit, oldest first (bounded, so one event never re-plans a whole
    /// large swarm; found through the task's index, not by a scan). Returns
    /// each re-planned peer with its new set.
    pub fn replan(
        &self,
        state: &mut State,
        task_id: &str,
        max: usize,
        rng: &mut impl Rng,
    ) -> Vec<(String, Vec<String>)> {
        let limit = self.config().candidate_parent_limit;
        let Some(task) = state.tasks.get_mut(task_id) else {
            return Vec::new();
        };
        let needy = task.needy(limit, max);
        needy
            .into_iter()
            .filter_map(|id| {
                let chosen = self.schedule(state, task_id, &id, rng)?;
                Some((id, chosen))
            })
            .collect()
    }

    /// A newcomer to a large task: instead of re-planning up to `max` peers
    /// short of parents (a whole decision each), offers it to them as one
    /// parent more where it fits (its upload slots bound how many). Returns
    /// the peers whose parent sets grew.
    pub fn offer(&self, state: &mut State, task_id: &str, newcomer: &str, max: usize) -> Vec<String> {
        let limit = self.config().candidate_parent_limit;
        let Some(task) = state.tasks.get_mut(task_id) else {
            return Vec::new();
        };
        let needy = task.needy(limit, max);
        let mut grown = Vec::new();
        for id in needy {
            let task = state.tasks.get(task_id).expect("checked above");
            let Some(peer) = task.peers.get(&id) else {
                continue;
            };
            if id == newcomer
                || peer.parents.iter().any(|x| x == newcomer)
                || self.fit(state, task, &id, newcomer).is_none()
            {
                continue;
            }
            let mut parents = peer.parents.clone();
            parents.push(newcomer.to_string());
            state
                .tasks
                .get_mut(task_id)
                .expect("checked above")
                .set_parents(&id, parents);
            grown.push(id);
        }
        grown
    }
}

/// These peers of the task with their addresses, as a peer is told them.
pub fn parent_addrs(state: &State, task_id: &str, ids: &[String]) -> Vec<Parent> {
    let Some(task) = state.tasks.get(task_id) else {
        return Vec::new();
    };
    ids.iter()
        .filter_map(|id| {
            let p = task.peers.get(id)?;
            let h = state.hosts.get(&p.host_id)?;
            Some(Parent {
                peer_id: p.id.clone(),
                host_id: p.host_id.clone(),
                ip: h.info.ip.clone(),
                piece_port: h.info.piece_port,
                seed: p.source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluator::DefaultEvaluator;
    use crate::state::{CostStats, Host, Peer};
    use damselfly_proto::scheduler::{HostInfo, TaskSpec};
    use std::collections::HashSet;
    use std::time::Instant;

    fn rng() -> rand::rngs::StdRng {
        rand::SeedableRng::seed_from_u64(7)
    }

    fn planner(limit: usize) -> Planner {
        let config = EvaluatorConfig {
            candidate_parent_limit: limit,
            ..EvaluatorConfig::default()
        };
        Planner::new(
            Box::new(DefaultEvaluator {
                config: config.clone(),
            }),
            config,
        )
    }

    fn add_host(s: &mut State, id: &str, slots: u32, idc: &str) {
        s.hosts.insert(
            id.into(),
            Host {
                info: HostInfo {
                    host_id: id.into(),
                    ip: "10.0.0.1".into(),
                    piece_port: 1,
                    upload_slots: slots,
                    idc: idc.into(),
                    ..Default::default()
                },
                conn: 0,
                last_seen: Instant::now(),
                active_uploads: 0,
                costs: CostStats::default(),
            },
        );
    }

    fn add_peer(s: &mut State, id: &str, host: &str, source: bool) {
        let t = s
            .tasks
            .entry("t".into())
            .or_insert_with(|| Task::new("t".into(), TaskSpec::default(), Instant::now()));
        t.add_peer(Peer {
            id: id.into(),
            host_id: host.into(),
            state: PeerState::Running,
            source,
            pieces: 0,
            parents: vec![],
            children: HashSet::new(),
            blocklist: HashSet::new(),
            open: true,
            registered: Instant::now(),
            seq: 0,
        });
    }

    fn parents(s: &State, id: &str) -> Vec<String> {
        s.tasks["t"].peers[id].parents.clone()
    }

    #[test]
    fn filters_same_host_blocklist_and_bad_hosts() {
        let mut s = State::default();
        for h in ["h1", "h2", "h3", "h4"] {
            add_host(&mut s, h, 8, "");
        }
        add_peer(&mut s, "seed", "h1", true);
        add_peer(&mut s, "a", "h2", false);
        add_peer(&mut s, "a2", "h2", false);
        add_peer(&mut s, "b", "h3", false);
        add_peer(&mut s, "c", "h4", false);
        let p = planner(8);
        p.schedule(&mut s, "t", "a", &mut rng());
        let got = parents(&s, "a");
        assert!(got.contains(&"seed".to_string()));
        assert!(!got.contains(&"a2".to_string()), "same host filtered: {got:?}");
        assert!(!got.contains(&"a".to_string()));

        s.tasks
            .get_mut("t")
            .unwrap()
            .peers
            .get_mut("a")
            .unwrap()
            .blocklist
            .insert("b".into());
        s.tasks.get_mut("t").unwrap().bad_hosts.insert("h4".into());
        p.schedule(&mut s, "t", "a", &mut rng());
        assert_eq!(parents(&s, "a"), vec!["seed".to_string()]);
    }

    #[test]
    fn sources_get_no_parents_and_limits_hold() {
        let mut s = State::default();
        for h in ["h1", "h2", "h3", "h4", "h5"] {
            add_host(&mut s, h, 2, "");
        }
        add_peer(&mut s, "seed", "h1", true);
        for (i, h) in ["h2", "h3", "h4", "h5"].iter().enumerate() {
            add_peer(&mut s, &format!("p{i}"), h, false);
        }
        let p = planner(2);
        assert_eq!(p.schedule(&mut s, "t", "seed", &mut rng()), None);
        p.replan(&mut s, "t", usize::MAX, &mut rng());
        for i in 0..4 {
            assert!(parents(&s, &format!("p{i}")).len() <= 2);
        }
        // upload slots: nobody serves more than 2 children
        for peer in s.tasks["t"].peers.values() {
            assert!(peer.children.len() <= 2, "{} has {:?}", peer.id, peer.children);
        }
    }

    #[test]
    fn the_last_peer_to_register_is_a_parent_too() {
        let mut s = State::default();
        for h in ["h0", "h1", "h2", "h3", "h4"] {
            add_host(&mut s, h, 8, "");
        }
        add_peer(&mut s, "seed", "h0", true);
        let p = planner(2);
        for (i, h) in ["h1", "h2", "h3", "h4"].iter().enumerate() {
            let id = format!("p{i}");
            add_peer(&mut s, &id, h, false);
            p.schedule(&mut s, "t", &id, &mut rng());
            let grown = p.reciprocate(&mut s, "t", &id);
            for g in &grown {
                assert!(parents(&s, g).contains(&id), "{g} took {id} as a parent");
            }
        }
        for i in 0..4 {
            let peer = &s.tasks["t"].peers[&format!("p{i}")];
            assert!(
                !peer.children.is_empty(),
                "p{i} is nobody's parent: {:?}",
                peer.parents
            );
            assert!(
                peer.parents.len() <= 4,
                "at most twice the limit: {:?}",
                peer.parents
            );
        }
        assert!(parents(&s, "seed").is_empty(), "a source takes no parents");
    }

    #[test]
    fn finished_descendants_are_not_parents() {
        let mut s = State::default();
        for h in ["h1", "h2", "h3"] {
            add_host(&mut s, h, 8, "");
        }
        add_peer(&mut s, "a", "h1", false);
        add_peer(&mut s, "b", "h2", false);
        let t = s.tasks.get_mut("t").unwrap();
        t.set_parents("b", vec!["a".into()]);
        t.peers.get_mut("b").unwrap().state = PeerState::Succeeded;
        let p = planner(4);
        p.schedule(&mut s, "t", "a", &mut rng());
        assert!(parents(&s, "a").is_empty(), "b descends from a");
    }

    #[test]
    fn same_idc_scores_higher() {
        let mut s = State::default();
        add_host(&mut s, "me", 8, "east");
        add_host(&mut s, "far", 8, "west");
        add_host(&mut s, "near", 8, "east");
        add_peer(&mut s, "child", "me", false);
        add_peer(&mut s, "far", "far", false);
        add_peer(&mut s, "near", "near", false);
        planner(1).schedule(&mut s, "t", "child", &mut rng());
        assert_eq!(parents(&s, "child"), vec!["near".to_string()]);
    }

    #[test]
    fn limits_swap_without_a_new_planner() {
        let mut s = State::default();
        for h in ["h1", "h2", "h3", "h4", "h5"] {
            add_host(&mut s, h, 8, "");
        }
        add_peer(&mut s, "seed", "h1", true);
        for (i, h) in ["h2", "h3", "h4", "h5"].iter().enumerate() {
            add_peer(&mut s, &format!("p{i}"), h, false);
        }
        let p = planner(8);
        assert_eq!(p.schedule(&mut s, "t", "p0", &mut rng()).unwrap().len(), 4);
        assert!(p.set_limits(1, 40));
        assert_eq!(p.config().candidate_parent_limit, 1);
        assert_eq!(p.schedule(&mut s, "t", "p0", &mut rng()).unwrap().len(), 1);
        assert!(!p.set_limits(0, 40), "zero parents refused");
        assert!(!p.set_limits(5, 4), "filter below candidate refused");
        assert_eq!(
            p.config().candidate_parent_limit,
            1,
            "a refused change keeps the old one"
        );
    }
}
