//! Evicts tasks from the store: by TTL since last access, then least
//! recently used first while the disk is above its high watermark, down to
//! the low watermark. A task in use (downloading, uploading, streaming) is
//! never evicted.

use crate::store::now_unix;
use crate::task::Tasks;
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// Percentage of the filesystem holding `path` that is used.
pub fn disk_used_percent(path: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let total = st.blocks() as f64 * st.fragment_size() as f64;
    let avail = st.blocks_available() as f64 * st.fragment_size() as f64;
    (total > 0.0).then(|| 100.0 * (total - avail) / total)
}

pub struct GcPolicy {
    pub ttl: Duration,
    pub high: u8,
    pub low: u8,
}

/// One GC pass; returns the evicted task ids.
pub fn collect(tasks: &Tasks, policy: &GcPolicy, used_percent: impl Fn() -> Option<f64>) -> Vec<String> {
    let mut evicted = Vec::new();
    let mut records = match tasks.store.list() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "gc cannot list the store");
            return evicted;
        }
    };
    let now = now_unix();
    // Least recently used first.
    records.sort_by_key(|r| r.last_access_unix);
    let ttl = policy.ttl.as_secs() as i64;
    let mut kept = Vec::new();
    // Cache tasks live until the scheduler deletes them or they expire (`crate::cache`).
    records.retain(|r| !crate::cache::is_cache_url(&r.url));
    for r in records {
        // `evict` refuses a task in use.
        if now - r.last_access_unix > ttl && matches!(tasks.evict(&r.task_id), Ok(true)) {
            evicted.push(r.task_id);
            continue;
        }
        kept.push(r);
    }
    if used_percent().is_some_and(|u| u > policy.high as f64) {
        for r in kept {
            if used_percent().is_none_or(|u| u <= policy.low as f64) {
                break;
            }
            if matches!(tasks.evict(&r.task_id), Ok(true)) {
                evicted.push(r.task_id);
            }
        }
    }
    if !evicted.is_empty() {
        info!(count = evicted.len(), "gc evicted tasks");
    }
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, TaskRecord};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn put(store: &Store, id: &str, age: i64) {
        store
            .put(&TaskRecord {
                task_id: id.into(),
                content_length: 1,
                piece_length: 1,
                done: true,
                last_access_unix: now_unix() - age,
                ..Default::default()
            })
            .unwrap();
        std::fs::write(store.content_path(id).unwrap(), b"x").unwrap();
    }

    #[test]
    fn ttl_then_lru_under_pressure_never_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        put(&store, "old", 1000);
        put(&store, "mid", 50);
        put(&store, "new", 10);
        put(&store, "busy", 60);
        let tasks = Tasks::new(store.clone());
        let busy = tasks.get_or_load("busy").unwrap().unwrap(); // held: in use
        let policy = GcPolicy {
            ttl: Duration::from_secs(500),
            high: 90,
            low: 80,
        };
        // No pressure: only the expired task goes.
        assert_eq!(collect(&tasks, &policy, || Some(50.0)), vec!["old".to_string()]);
        // Pressure that eases after one eviction: the least recently used idle task goes.
        let calls = AtomicU32::new(0);
        let used = || {
            Some(if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                95.0
            } else {
                70.0
            })
        };
        assert_eq!(collect(&tasks, &policy, used), vec!["mid".to_string()]);
        assert!(store.get("busy").unwrap().is_some());
        assert!(store.get("new").unwrap().is_some());
        drop(busy);
    }
}
