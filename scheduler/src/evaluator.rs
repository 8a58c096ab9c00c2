//! Which candidate parents are usable, and which are best.
//!
//! [`Evaluator`] is the policy seam: a new policy is one type implementing it.
//! [`schedule`](crate::schedule) applies the structural filters (same host,
//! blocklist, DAG cycle, bad host) itself; the evaluator adds the judgement
//! calls (bad node, upload slots) and the score.

use crate::config::EvaluatorConfig;
use crate::state::{CostStats, Host, Peer, PeerState};

/// What the evaluator may look at for one peer.
pub struct View<'a> {
    pub peer: &'a Peer,
    pub host: &'a Host,
    /// Pieces in the task (0 while unknown).
    pub total_pieces: u32,
}

pub trait Evaluator: Send + Sync + 'static {
    /// May `parent` serve `child` at all?
    fn usable(&self, child: &View, parent: &View) -> bool;
    /// Higher is better.
    fn score(&self, child: &View, parent: &View) -> f64;
}

/// The default policy.
///
/// Usable: the parent is running or done (or a source), has a free upload
/// slot, and is not a bad node. Bad node: its newest piece cost is an outlier
/// against its own history (mean + `bad_node_sigma` standard deviations once
/// it has `bad_node_min_samples` samples, `bad_node_mean_factor` x the mean
/// before that), and above `bad_node_min_millis`.
///
/// Score, each term in 0..=1: free upload slots (0.4), pieces held (0.3),
/// same IDC (0.15), shared location prefix (0.1), seed (0.05). Free capacity
/// dominates so that, when everyone arrives at once, each uplink serves few
/// children at the full rate instead of many at a fraction of it.
pub struct DefaultEvaluator {
    pub config: EvaluatorConfig,
}

impl DefaultEvaluator {
    /// Judges the newest cost against the history before it.
    pub fn is_bad_node(&self, c: &CostStats) -> bool {
        let (samples, mean, std_dev) = c.before;
        // Below the floor a cost is never an outlier: on a fast link pieces cost 0-2 ms (whole
        // milliseconds), so any queueing was 20 x the mean and a healthy seed was dropped by
        // its only child with pieces missing (a cold get waited 5 s for the stall timer).
        if samples < 2 || c.last < self.config.bad_node_min_millis {
            return false;
        }
        if samples < self.config.bad_node_min_samples {
            return c.last > self.config.bad_node_mean_factor * mean;
        }
        c.last > mean + self.config.bad_node_sigma * std_dev
    }
}

fn free_slots(v: &View) -> f64 {
    let slots = v.host.info.upload_slots.max(1) as f64;
    ((slots - v.peer.children.len() as f64) / slots).clamp(0.0, 1.0)
}

/// Fraction of `|`-separated location components the two share as a prefix.
pub fn location_affinity(a: &str, b: &str) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (xa, xb): (Vec<_>, Vec<_>) = (a.split('|').collect(), b.split('|').collect());
    let shared = xa.iter().zip(&xb).take_while(|(x, y)| x == y).count();
    shared as f64 / xa.len().max(xb.len()) as f64
}

impl Evaluator for DefaultEvaluator {
    fn usable(&self, child: &View, parent: &View) -> bool {
        let alive =
            parent.peer.source || matches!(parent.peer.state, PeerState::Running | PeerState::Succeeded);
        let already = child.peer.parents.contains(&parent.peer.id);
        let has_slot = already || (parent.peer.children.len() as u32) < parent.host.info.upload_slots.max(1);
        alive && has_slot && !self.is_bad_node(&parent.host.costs)
    }

    fn score(&self, child: &View, parent: &View) -> f64 {
        let pieces = if parent.peer.source || parent.peer.state == PeerState::Succeeded {
            1.0
        } else if parent.total_pieces == 0 {
            0.0
        } else {
            parent.peer.pieces as f64 / parent.total_pieces as f64
        };
        let (ci, pi) = (&child.host.info, &parent.host.info);
        let idc = if !ci.idc.is_empty() && ci.idc == pi.idc {
            1.0
        } else {
            0.0
        };
        let seed = if pi.seed { 1.0 } else { 0.0 };
        0.4 * free_slots(parent)
            + 0.3 * pieces
            + 0.15 * idc
            + 0.1 * location_affinity(&ci.location, &pi.location)
            + 0.05 * seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_node_rules() {
        let e = DefaultEvaluator {
            config: EvaluatorConfig::default(),
        };
        let mut few = CostStats::default();
        for _ in 0..5 {
            few.add(10.0, 1);
        }
        assert!(!e.is_bad_node(&few));
        few.add(10_000.0, 1);
        assert!(e.is_bad_node(&few), "20x the mean with few samples");

        let mut many = CostStats::default();
        for i in 0..100 {
            many.add(300.0 + (i % 3) as f64, 1);
        }
        assert!(!e.is_bad_node(&many));
        many.add(320.0, 1);
        assert!(e.is_bad_node(&many), "far outside mean + 3 sigma");
    }

    /// Whole-millisecond costs of a fast link: 0 ms pieces, then a few ms of queueing, is no
    /// outlier (it once took a cold get's only parent away).
    #[test]
    fn costs_under_the_floor_are_never_bad() {
        let e = DefaultEvaluator {
            config: EvaluatorConfig::default(),
        };
        let mut fast = CostStats::default();
        fast.add(0.0, 10);
        fast.add(67.0, 4);
        assert!(!e.is_bad_node(&fast));
        for _ in 0..40 {
            fast.add(1.0, 1);
        }
        fast.add(150.0, 1);
        assert!(!e.is_bad_node(&fast), "under bad_node_min_millis");
        fast.add(5_000.0, 1);
        assert!(e.is_bad_node(&fast));
    }

    #[test]
    fn location_prefix() {
        assert_eq!(location_affinity("cn|hz|r1", "cn|hz|r2"), 2.0 / 3.0);
        assert_eq!(location_affinity("cn", "us"), 0.0);
        assert_eq!(location_affinity("", "us"), 0.0);
        assert_eq!(location_affinity("a|b", "a|b"), 1.0);
    }
}
