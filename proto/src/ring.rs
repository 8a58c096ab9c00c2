//! Consistent hashing of task ids onto nodes: seed peers (by the scheduler)
//! and schedulers (by peers, so that every peer of one task meets at the
//! same scheduler).
//!
//! Every node gets [`VNODES`] points on a 64-bit ring; a task goes to the
//! first point at or after its own hash. When a node joins or leaves, only
//! the tasks next to its points move, so seeds keep what they cached.

use sha2::{Digest, Sha256};

pub const VNODES: usize = 64;

fn point(s: &str) -> u64 {
    let d = Sha256::digest(s.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Picks the node for `task_id` among `nodes`, skipping `exclude`.
pub fn pick<'a>(task_id: &str, nodes: impl IntoIterator<Item = &'a str>, exclude: &str) -> Option<String> {
    let mut ring: Vec<(u64, &str)> = Vec::new();
    for s in nodes {
        if s == exclude {
            continue;
        }
        for v in 0..VNODES {
            ring.push((point(&format!("{s}#{v}")), s));
        }
    }
    if ring.is_empty() {
        return None;
    }
    ring.sort_unstable();
    let h = point(task_id);
    let i = ring.partition_point(|(p, _)| *p < h) % ring.len();
    Some(ring[i].1.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        let seeds = ["s1", "s2", "s3"];
        let mut counts = std::collections::HashMap::new();
        for t in 0..3000 {
            let s = pick(&format!("task{t}"), seeds, "").unwrap();
            assert_eq!(Some(s.clone()), pick(&format!("task{t}"), seeds, ""));
            *counts.entry(s).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c > 600), "{counts:?}");
    }

    #[test]
    fn removing_a_seed_moves_only_its_tasks() {
        let before: Vec<_> = (0..1000)
            .map(|t| pick(&format!("t{t}"), ["a", "b", "c"], "").unwrap())
            .collect();
        let after: Vec<_> = (0..1000)
            .map(|t| pick(&format!("t{t}"), ["a", "b"], "").unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if b != "c" {
                assert_eq!(a, b);
            }
        }
        assert_eq!(pick("x", ["a"], "a"), None);
        assert_eq!(pick("x", ["a", "b"], "a").as_deref(), Some("b"));
    }
}
