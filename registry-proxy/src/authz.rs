//! "May this client read this blob?" answers, cached briefly.
//!
//! The proof is a HEAD of the blob at the origin with the client's
//! credentials. It is cached per (hash of the credential, registry,
//! repository, digest): the digest is part of the key because a registry
//! answers per blob (a client allowed into one repository must not get a
//! blob that only another repository holds by naming it under the first).
//! Only successes are cached; a refusal is asked again next time.

use damselfly_service::secret::Secret;
use lru::LruCache;
use sha2::{Digest as _, Sha256};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessKey {
    credential: [u8; 32],
    registry: String,
    repository: String,
    digest: String,
}

impl AccessKey {
    /// `credential` is the client's Authorization value, if any.
    pub fn new(credential: Option<&str>, registry: &str, repository: &str, digest: &str) -> Self {
        let mut h = Sha256::new();
        match credential {
            Some(c) => {
                h.update([1u8]);
                h.update(c.as_bytes());
            }
            None => h.update([0u8]),
        }
        Self {
            credential: h.finalize().into(),
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest: digest.to_string(),
        }
    }
}

/// What a successful proof learnt: the blob's length and the Authorization
/// that the origin accepted (to fetch the blob with).
#[derive(Debug, Clone)]
pub struct Access {
    pub content_length: Option<u64>,
    pub authorization: Option<Secret>,
}

pub struct AccessCache {
    ttl: Duration,
    entries: Mutex<LruCache<AccessKey, (Access, Instant)>>,
}

impl AccessCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("nonzero"),
            )),
        }
    }

    pub fn get(&self, key: &AccessKey) -> Option<Access> {
        let mut entries = self.entries.lock().expect("access cache lock");
        match entries.get(key) {
            Some((access, until)) if *until > Instant::now() => Some(access.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: AccessKey, access: Access) {
        if self.ttl.is_zero() {
            return;
        }
        let until = Instant::now() + self.ttl;
        self.entries
            .lock()
            .expect("access cache lock")
            .put(key, (access, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(n: u64) -> Access {
        Access {
            content_length: Some(n),
            authorization: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire() {
        let cache = AccessCache::new(Duration::from_secs(30), 10);
        let k = AccessKey::new(Some("Basic x"), "r", "repo", "sha256:a");
        cache.insert(k.clone(), access(5));
        assert_eq!(cache.get(&k).unwrap().content_length, Some(5));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(cache.get(&k).is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.get(&k).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_separate_credentials_repositories_and_blobs() {
        let cache = AccessCache::new(Duration::from_secs(30), 10);
        cache.insert(AccessKey::new(Some("Basic a"), "r", "p", "d"), access(1));
        assert!(
            cache
                .get(&AccessKey::new(Some("Basic a"), "r", "p", "d"))
                .is_some()
        );
        for other in [
            AccessKey::new(None, "r", "p", "d"),
            AccessKey::new(Some(""), "r", "p", "d"),
            AccessKey::new(Some("Basic b"), "r", "p", "d"),
            AccessKey::new(Some("Basic a"), "r2", "p", "d"),
            AccessKey::new(Some("Basic a"), "r", "p2", "d"),
            AccessKey::new(Some("Basic a"), "r", "p", "d2"),
        ] {
            assert!(cache.get(&other).is_none(), "{other:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_bounded() {
        let cache = AccessCache::new(Duration::from_secs(30), 2);
        for i in 0..3 {
            cache.insert(AccessKey::new(None, "r", "p", &i.to_string()), access(i));
        }
        assert!(cache.get(&AccessKey::new(None, "r", "p", "0")).is_none());
        assert!(cache.get(&AccessKey::new(None, "r", "p", "2")).is_some());
    }
}
