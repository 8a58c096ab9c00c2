//! Cache tasks (`damselfly cache`): origin-less tasks the scheduler keeps
//! alive on chosen holders. Part of the core: events in, commands out.
//!
//! The importer holds the file and gives the layout and every piece digest,
//! so the task is complete from its first moment. The core then places
//! `replicas` copies on other hosts (seed hosts first, then by a hash of
//! task and host), restores them when a replica host leaves, and, when the
//! TTL passes or the entry is deleted, tells every host that holds the task
//! to drop it. Holders announce their cache tasks (with the digests) on
//! each new host stream, which rebuilds the entry after a scheduler restart;
//! a rebuilt entry waits [`RESTORE_GRACE`] for the other holders before it
//! places new replicas.

use super::{Command, Core, stored_peer};
use crate::error::Error;
use crate::state::{PeerState, Task};
use damselfly_proto::piece::Layout;
use damselfly_proto::scheduler::TaskSpec;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long an entry rebuilt from a holder's announcement waits for the
/// other holders before it places replicas.
pub const RESTORE_GRACE: Duration = Duration::from_secs(20);
/// A placement that has not become a replica after this long is retried elsewhere.
pub const PLACE_TIMEOUT: Duration = Duration::from_secs(300);
/// Most replicas one entry may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// What holders and importers say about a cache task (decoded by the transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMeta {
    pub id: String,
    /// `sha256:<hex>` of the whole file.
    pub digest: String,
    pub replicas: u32,
    pub created_unix: i64,
    /// 0: never.
    pub expires_unix: i64,
    pub owner_host_id: String,
}

/// One cache task as the scheduler keeps it.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub meta: CacheMeta,
    pub task_id: String,
    pub spec: TaskSpec,
    pub layout: Layout,
    pub digests: Vec<[u8; 32]>,
    pub expires_at: Option<Instant>,
    /// Hosts holding a replica the core placed.
    pub replicas: BTreeSet<String>,
    /// Hosts told to fetch a replica, and when.
    pub pending: BTreeMap<String, Instant>,
    /// Other hosts holding it (the importer, exporters).
    pub others: BTreeSet<String>,
    /// Hosts whose fetch of a replica failed, and when (not asked again for a while).
    pub refused: BTreeMap<String, Instant>,
    /// No placement before this (an entry rebuilt after a restart).
    pub settle_until: Instant,
}

/// A cache task announced by a host that holds it.
#[derive(Debug, Clone)]
pub struct StoredCache {
    pub task_id: String,
    pub spec: TaskSpec,
    pub layout: Layout,
    pub digests: Vec<[u8; 32]>,
    pub meta: CacheMeta,
    /// Time left until it expires (`None`: never), as of the event.
    pub remaining: Option<Duration>,
    /// A replica the scheduler placed there.
    pub replica: bool,
}

/// An import, checked by the transport: the layout and digests agree.
#[derive(Debug, Clone)]
pub struct CacheImport {
    pub host_id: String,
    pub task_id: String,
    pub spec: TaskSpec,
    pub layout: Layout,
    pub digests: Vec<[u8; 32]>,
    pub meta: CacheMeta,
    pub ttl: Option<Duration>,
}

#[derive(Default)]
pub struct Caches {
    pub entries: HashMap<String, CacheEntry>,
}

impl Caches {
    /// The entry for a cache id.
    pub fn by_id(&self, id: &str) -> Option<&CacheEntry> {
        self.entries.values().find(|e| e.meta.id == id)
    }
}

/// Order of preference of hosts for a task's replicas: seeds first, then a
/// hash of task and host (spreads tasks, stable for one task).
fn rank(task_id: &str, host_id: &str, seed: bool) -> (bool, [u8; 32]) {
    let mut h = Sha256::new();
    h.update(task_id.as_bytes());
    h.update([0]);
    h.update(host_id.as_bytes());
    (!seed, h.finalize().into())
}

impl Core {
    /// A host imported a file: the entry, its task (complete, the importer
    /// its holder) and the first placements.
    pub(super) fn cache_import(
        &mut self,
        now: Instant,
        imp: CacheImport,
        out: &mut Vec<Command>,
    ) -> Result<(), Error> {
        if !self.state.hosts.contains_key(&imp.host_id) {
            return Err(Error::UnknownHost(imp.host_id));
        }
        if let Some(e) = self.caches.entries.get(&imp.task_id) {
            if e.meta.digest != imp.meta.digest {
                return Err(Error::Conflict(format!(
                    "cache id {} already names other content ({})",
                    imp.meta.id, e.meta.digest
                )));
            }
            if e.meta.owner_host_id != imp.host_id {
                return Err(Error::Forbidden(format!(
                    "cache id {} belongs to another host",
                    imp.meta.id
                )));
            }
        }
        info!(
            id = imp.meta.id,
            task_id = imp.task_id,
            replicas = imp.meta.replicas,
            "cache task imported"
        );
        let entry = CacheEntry {
            meta: imp.meta,
            task_id: imp.task_id.clone(),
            spec: imp.spec,
            layout: imp.layout,
            digests: imp.digests,
            expires_at: imp.ttl.map(|t| now + t),
            replicas: BTreeSet::new(),
            pending: BTreeMap::new(),
            others: BTreeSet::from([imp.host_id.clone()]),
            refused: BTreeMap::new(),
            settle_until: now,
        };
        let entry = match self.caches.entries.remove(&imp.task_id) {
            // Imported again by its owner: the holders stay.
            Some(old) => CacheEntry {
                replicas: old.replicas,
                pending: old.pending,
                others: old.others.into_iter().chain(entry.others.clone()).collect(),
                ..entry
            },
            None => entry,
        };
        self.ensure_cache_task(now, &entry);
        self.add_holder_peer(now, &entry.task_id, &imp.host_id, out);
        self.caches.entries.insert(entry.task_id.clone(), entry);
        self.place_replicas(now, &imp.task_id, out);
        Ok(())
    }

    /// A holder announced its cache tasks (a new host stream, a replica done).
    pub(super) fn cache_stored(
        &mut self,
        now: Instant,
        host_id: &str,
        tasks: Vec<StoredCache>,
        out: &mut Vec<Command>,
    ) {
        if !self.state.hosts.contains_key(host_id) {
            return;
        }
        for st in tasks {
            if st.remaining == Some(Duration::ZERO) {
                out.push(Command::DeleteTask {
                    host_id: host_id.to_string(),
                    task_id: st.task_id,
                });
                continue;
            }
            let entry = self.caches.entries.entry(st.task_id.clone()).or_insert_with(|| {
                info!(id = st.meta.id, host_id, "cache task restored from a holder");
                CacheEntry {
                    meta: st.meta.clone(),
                    task_id: st.task_id.clone(),
                    spec: st.spec.clone(),
                    layout: st.layout,
                    digests: st.digests.clone(),
                    expires_at: st.remaining.map(|r| now + r),
                    replicas: BTreeSet::new(),
                    pending: BTreeMap::new(),
                    others: BTreeSet::new(),
                    refused: BTreeMap::new(),
                    settle_until: now + RESTORE_GRACE,
                }
            });
            if entry.layout != st.layout || entry.digests != st.digests || entry.meta.digest != st.meta.digest
            {
                warn!(
                    task_id = st.task_id,
                    host_id, "a holder announced other content for a cache task; ignored"
                );
                continue;
            }
            entry.pending.remove(host_id);
            if st.replica && host_id != entry.meta.owner_host_id {
                entry.others.remove(host_id);
                entry.replicas.insert(host_id.to_string());
            } else if !entry.replicas.contains(host_id) {
                entry.others.insert(host_id.to_string());
            }
            let entry = entry.clone();
            self.ensure_cache_task(now, &entry);
            self.add_holder_peer(now, &entry.task_id, host_id, out);
        }
    }

    /// Deletes a cache task everywhere.
    pub(super) fn cache_delete(
        &mut self,
        id: &str,
        host_id: &str,
        out: &mut Vec<Command>,
    ) -> Result<(), Error> {
        let Some(entry) = self.caches.by_id(id) else {
            return Err(Error::NotFound(format!("cache id {id}: no such cache task")));
        };
        if entry.meta.owner_host_id != host_id {
            return Err(Error::Forbidden(format!("cache id {id} belongs to another host")));
        }
        let task_id = entry.task_id.clone();
        info!(id, task_id, "cache task deleted");
        self.drop_cache(&task_id, out);
        Ok(())
    }

    /// A host left: its replicas are placed elsewhere.
    pub(super) fn cache_host_left(&mut self, now: Instant, host_id: &str, out: &mut Vec<Command>) {
        let mut touched = Vec::new();
        for e in self.caches.entries.values_mut() {
            let had = e.replicas.remove(host_id) | e.pending.remove(host_id).is_some();
            e.others.remove(host_id);
            if had {
                touched.push(e.task_id.clone());
            }
        }
        touched.sort();
        for t in touched {
            self.place_replicas(now, &t, out);
        }
    }

    /// Expiry, placements that never finished, entries still short of replicas.
    pub(super) fn cache_tick(&mut self, now: Instant, out: &mut Vec<Command>) {
        let mut ids: Vec<String> = self.caches.entries.keys().cloned().collect();
        ids.sort();
        for t in ids {
            let e = self.caches.entries.get_mut(&t).expect("listed");
            if e.expires_at.is_some_and(|x| now >= x) {
                info!(id = e.meta.id, "cache task expired");
                self.drop_cache(&t, out);
                continue;
            }
            e.pending
                .retain(|_, at| now.saturating_duration_since(*at) < PLACE_TIMEOUT);
            e.refused
                .retain(|_, at| now.saturating_duration_since(*at) < PLACE_TIMEOUT);
            self.place_replicas(now, &t, out);
        }
    }

    /// The peer on `host_id` failed to fetch a replica.
    pub(super) fn cache_placement_failed(
        &mut self,
        now: Instant,
        task_id: &str,
        host_id: &str,
        out: &mut Vec<Command>,
    ) {
        if let Some(e) = self.caches.entries.get_mut(task_id)
            && e.pending.remove(host_id).is_some()
        {
            warn!(
                id = e.meta.id,
                host_id, "cache replica fetch failed; placed elsewhere"
            );
            e.refused.insert(host_id.to_string(), now);
            self.place_replicas(now, task_id, out);
        }
    }

    /// Removes the entry and its task; every host holding it drops it.
    fn drop_cache(&mut self, task_id: &str, out: &mut Vec<Command>) {
        let Some(e) = self.caches.entries.remove(task_id) else {
            return;
        };
        let mut hosts: BTreeSet<String> = e
            .replicas
            .into_iter()
            .chain(e.others)
            .chain(e.pending.into_keys())
            .collect();
        if let Some(t) = self.state.tasks.remove(task_id) {
            hosts.extend(t.peers.into_values().map(|p| p.host_id));
        }
        for host_id in hosts {
            out.push(Command::DeleteTask {
                host_id,
                task_id: task_id.to_string(),
            });
        }
    }

    /// The scheduling task of a cache entry, complete with its digests.
    fn ensure_cache_task(&mut self, now: Instant, e: &CacheEntry) {
        let task = self
            .state
            .tasks
            .entry(e.task_id.clone())
            .or_insert_with(|| Task::new(e.task_id.clone(), e.spec.clone(), now));
        if task.layout.is_none() {
            task.set_layout(e.layout);
        }
        if task.layout == Some(e.layout) {
            for (slot, d) in task.digests.iter_mut().zip(&e.digests) {
                *slot = Some(*d);
            }
        }
        task.last_active = now;
    }

    /// `host_id` holds the whole task: a finished peer other peers can use.
    fn add_holder_peer(&mut self, now: Instant, task_id: &str, host_id: &str, out: &mut Vec<Command>) {
        let Some(task) = self.state.tasks.get_mut(task_id) else {
            return;
        };
        let Some(layout) = task.layout else {
            return;
        };
        let held = task
            .peers
            .values()
            .any(|p| p.host_id == host_id && p.state == PeerState::Succeeded);
        if held {
            return;
        }
        task.add_peer(stored_peer(host_id, layout.piece_count(), now));
        self.replan(task_id, super::REPLAN_BATCH, out);
    }

    /// Asks hosts for the replicas the entry lacks.
    fn place_replicas(&mut self, now: Instant, task_id: &str, out: &mut Vec<Command>) {
        let Some(e) = self.caches.entries.get(task_id) else {
            return;
        };
        if now < e.settle_until {
            return;
        }
        let have = (e.replicas.len() + e.pending.len()) as u32;
        let want = e.meta.replicas.min(MAX_REPLICAS);
        if have >= want {
            return;
        }
        let mut candidates: Vec<(bool, [u8; 32], String)> = self
            .state
            .hosts
            .values()
            .filter(|h| {
                let id = &h.info.host_id;
                *id != e.meta.owner_host_id
                    && !e.replicas.contains(id)
                    && !e.pending.contains_key(id)
                    && !e.refused.contains_key(id)
            })
            .map(|h| {
                let (not_seed, hash) = rank(task_id, &h.info.host_id, h.info.seed);
                (not_seed, hash, h.info.host_id.clone())
            })
            .collect();
        candidates.sort();
        let e = self.caches.entries.get_mut(task_id).expect("checked");
        for (_, _, host_id) in candidates.into_iter().take((want - have) as usize) {
            info!(id = e.meta.id, host_id, "cache replica placed");
            e.pending.insert(host_id.clone(), now);
            out.push(Command::Replicate {
                host_id,
                spec: e.spec.clone(),
                meta: e.meta.clone(),
            });
        }
    }
}
