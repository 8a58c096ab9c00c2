//! Origin headers on their way to a seed, sealed (see `damselfly_service::seal`).
//!
//! A peer never sends a scheduler a task's headers in the clear: it seals them to every seed
//! key the task's scheduler announced ([`SeedKeys`], from `SeedKeys` on the host stream) and
//! sends only the sealed entries; a seed opens the entry for its own host id
//! ([`open_seed_task`]). Without a seed key the headers stay on this peer: the seed fetches
//! without them and, if the origin wants them, the task fails and this peer (or its registry
//! proxy) fetches from the origin itself.

use damselfly_proto::scheduler::{SealedHeaders, SeedKey, TaskSpec};
use damselfly_service::seal::{SealKey, seal};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;
use tracing::warn;

/// Most seed keys kept per scheduler (the scheduler sends at most as many sealed entries).
pub const MAX_SEED_KEYS: usize = 32;

/// The seeds' seal keys, by scheduler address.
pub struct SeedKeys {
    keys: watch::Sender<HashMap<String, Vec<SeedKey>>>,
}

impl Default for SeedKeys {
    fn default() -> Self {
        Self {
            keys: watch::Sender::new(HashMap::new()),
        }
    }
}

impl SeedKeys {
    /// The scheduler at `addr` announced these seeds (replacing what it said before).
    pub fn set(&self, addr: &str, mut keys: Vec<SeedKey>) {
        keys.retain(|k| k.public_key.len() == damselfly_service::seal::KEY_LEN);
        keys.truncate(MAX_SEED_KEYS);
        self.keys.send_modify(|m| {
            m.insert(addr.to_string(), keys);
        });
    }

    /// The keys of `addr`, waiting up to `wait` for its first announcement.
    pub async fn get(&self, addr: &str, wait: Duration) -> Vec<SeedKey> {
        let mut rx = self.keys.subscribe();
        let known = tokio::time::timeout(wait, rx.wait_for(|m| m.contains_key(addr))).await;
        match known {
            Ok(Ok(m)) => m[addr].clone(),
            _ => Vec::new(),
        }
    }
}

/// The spec to register with: no headers in the clear, and, if there are any (and this peer
/// is not the seed fetching them itself), one sealed entry per seed key.
pub fn for_scheduler(spec: &TaskSpec, keys: &[SeedKey]) -> TaskSpec {
    let sealed_headers = if spec.headers.is_empty() {
        Vec::new()
    } else {
        keys.iter()
            .filter_map(|k| {
                let headers = spec.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                match seal(&k.public_key, &spec.task_id, headers) {
                    Ok(sealed) => Some(SealedHeaders {
                        seed_host_id: k.host_id.clone(),
                        sealed,
                    }),
                    Err(e) => {
                        warn!(seed_host = k.host_id, error = %e, "headers not sealed to this seed");
                        None
                    }
                }
            })
            .collect()
    };
    TaskSpec {
        headers: HashMap::new(),
        sealed_headers,
        ..spec.clone()
    }
}

/// A seed task's spec with its headers opened: the entry for `host_id` sealed to `key`.
/// Headers in the clear (from an older scheduler or peer) are kept as they are.
pub fn open_seed_task(mut spec: TaskSpec, host_id: &str, key: Option<&SealKey>) -> TaskSpec {
    let sealed = std::mem::take(&mut spec.sealed_headers);
    let Some(entry) = sealed.iter().find(|e| e.seed_host_id == host_id) else {
        return spec;
    };
    let Some(key) = key else {
        warn!(
            task_id = spec.task_id,
            "sealed headers for a peer without a seal key"
        );
        return spec;
    };
    match key.open(&spec.task_id, &entry.sealed) {
        Ok(headers) => spec.headers.extend(headers),
        Err(e) => warn!(task_id = spec.task_id, error = %e, "sealed headers not opened"),
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn headers_reach_the_seed_sealed_and_nobody_else() {
        let (a, b) = (SealKey::generate().unwrap(), SealKey::generate().unwrap());
        let keys = SeedKeys::default();
        keys.set(
            "sched:1",
            vec![
                SeedKey {
                    host_id: "seed-a".into(),
                    public_key: a.public_key(),
                },
                SeedKey {
                    host_id: "seed-b".into(),
                    public_key: b.public_key(),
                },
                SeedKey {
                    host_id: "bad".into(),
                    public_key: vec![1; 3],
                },
            ],
        );
        assert!(keys.get("other:1", Duration::ZERO).await.is_empty());
        let known = keys.get("sched:1", Duration::ZERO).await;
        assert_eq!(known.len(), 2);
        let mut spec = TaskSpec {
            task_id: "t".into(),
            url: "http://o/f".into(),
            ..Default::default()
        };
        spec.headers
            .insert("authorization".into(), "Bearer s3cret".into());
        let sent = for_scheduler(&spec, &known);
        assert!(sent.headers.is_empty());
        assert_eq!(sent.sealed_headers.len(), 2);
        assert!(!format!("{sent:?}").contains("s3cret"));
        // The scheduler passes one entry on; only its seed opens it.
        let mut to_b = sent.clone();
        to_b.sealed_headers.retain(|e| e.seed_host_id == "seed-b");
        let opened = open_seed_task(to_b.clone(), "seed-b", Some(&b));
        assert_eq!(opened.headers["authorization"], "Bearer s3cret");
        assert!(opened.sealed_headers.is_empty());
        assert!(
            open_seed_task(to_b.clone(), "seed-a", Some(&a))
                .headers
                .is_empty()
        );
        assert!(open_seed_task(to_b, "seed-b", Some(&a)).headers.is_empty());
        // No headers: nothing sealed.
        spec.headers.clear();
        assert!(for_scheduler(&spec, &known).sealed_headers.is_empty());
    }

    #[tokio::test]
    async fn a_peer_waits_briefly_for_its_schedulers_first_seed_keys() {
        let keys = std::sync::Arc::new(SeedKeys::default());
        let k = keys.clone();
        let waiter = tokio::spawn(async move { k.get("s:1", Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        keys.set(
            "s:1",
            vec![SeedKey {
                host_id: "seed".into(),
                public_key: vec![9; 32],
            }],
        );
        assert_eq!(waiter.await.unwrap().len(), 1);
    }
}
