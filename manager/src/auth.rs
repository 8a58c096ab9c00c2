//! Who is calling and what they may do.
//!
//! Passwords and token secrets are stored only as argon2id hashes; session
//! cookies are 256-bit random values stored as SHA-256 (they are random, so a
//! fast hash is enough, and every request can check one cheaply). A personal
//! access token reads `dfly_<id>_<secret>`: the id finds the row, argon2
//! checks the secret, and a verified token is remembered in memory (by its
//! SHA-256) for [`TOKEN_CACHE_TTL`] so that argon2 runs once per token and
//! minute, not once per request.

use crate::config::AuthConfig;
use crate::error::{Error, Result};
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

pub const SESSION_COOKIE: &str = "dfly_session";
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);

/// What a caller may do. Ordered: each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Scope {
    /// Read everything but secrets.
    #[serde(rename = "read-only")]
    ReadOnly,
    /// Read, and start preheat jobs.
    #[serde(rename = "preheat")]
    Preheat,
    /// Everything.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadOnly => "read-only",
            Scope::Preheat => "preheat",
            Scope::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read-only" => Some(Scope::ReadOnly),
            "preheat" => Some(Scope::Preheat),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: i64,
    pub username: String,
    /// The smaller of the user's role and the token's scope.
    pub scope: Scope,
    /// The token used, if any (sessions have none).
    pub token_id: Option<i64>,
}

impl Principal {
    pub fn require(&self, needed: Scope) -> Result<()> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this needs the {} scope; the caller has {}",
                needed.as_str(),
                self.scope.as_str()
            )))
        }
    }
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        match self.token_id {
            Some(t) => format!("{} (token {t})", self.username),
            None => self.username.clone(),
        }
    }
}

/// (principal, when it was verified, the token's expiry in epoch ms).
type CachedToken = (Principal, Instant, Option<i64>);

pub struct Hasher {
    argon: Argon2<'static>,
    /// sha256(token) -> (principal, cached at, token expiry in epoch ms).
    token_cache: Mutex<HashMap<[u8; 32], CachedToken>>,
    /// Failed sign-ins per username: (count, last failure).
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Hasher {
    pub fn new(cfg: &AuthConfig) -> Hasher {
        let params = Params::new(cfg.argon2_memory_kib, cfg.argon2_iterations, 1, None)
            .expect("validated argon2 params");
        Hasher {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            token_cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn hash(&self, secret: &str) -> String {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        self.argon
            .hash_password_with_salt(secret.as_bytes(), &salt)
            .expect("argon2 hashing with valid params")
            .to_string()
    }

    pub fn verify(&self, secret: &str, hash: &str) -> bool {
        PasswordVerifier::<str>::verify_password(&self.argon, secret.as_bytes(), hash).is_ok()
    }

    pub fn cached_token(&self, token: &str) -> Option<Principal> {
        let key = sha256(token);
        let cache = self.token_cache.lock().expect("token cache lock");
        let now = crate::db::now_ms();
        cache
            .get(&key)
            .filter(|(_, at, expires)| at.elapsed() < TOKEN_CACHE_TTL && expires.is_none_or(|e| e > now))
            .map(|(p, _, _)| p.clone())
    }

    pub fn remember_token(&self, token: &str, p: &Principal, expires_at: Option<i64>) {
        let mut cache = self.token_cache.lock().expect("token cache lock");
        cache.retain(|_, (_, at, _)| at.elapsed() < TOKEN_CACHE_TTL);
        cache.insert(sha256(token), (p.clone(), Instant::now(), expires_at));
    }

    /// How long a sign-in for `username` must wait after earlier failures:
    /// nothing for the first 5, then 1 s doubling up to 60 s, forgotten after
    /// 15 quiet minutes. Slows guessing without locking the real user out.
    pub fn sign_in_delay(&self, username: &str) -> Duration {
        let f = self.failures.lock().expect("failures lock");
        match f.get(username) {
            Some((n, at)) if *n >= 5 && at.elapsed() < Duration::from_secs(900) => {
                let d = Duration::from_secs(1u64 << (n - 5).min(6)).min(Duration::from_secs(60));
                d.saturating_sub(at.elapsed())
            }
            _ => Duration::ZERO,
        }
    }

    pub fn sign_in_failed(&self, username: &str) {
        let mut f = self.failures.lock().expect("failures lock");
        if f.len() > 10_000 {
            f.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(900));
        }
        let e = f.entry(username.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= Duration::from_secs(900) {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = Instant::now();
    }

    pub fn sign_in_succeeded(&self, username: &str) {
        self.failures.lock().expect("failures lock").remove(username);
    }

    /// Forgets cached tokens (after a token or user is deleted or changed).
    pub fn forget_tokens(&self) {
        self.token_cache.lock().expect("token cache lock").clear();
    }
}

pub fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(sha256(s))
}

/// 32 random bytes as hex.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Splits `dfly_<id>_<secret>`.
pub fn parse_token(token: &str) -> Option<(i64, &str)> {
    let rest = token.strip_prefix("dfly_")?;
    let (id, secret) = rest.split_once('_')?;
    Some((id.parse().ok()?, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_scopes_order() {
        let h = Hasher::new(&AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..Default::default()
        });
        let x = h.hash("pw");
        assert!(x.starts_with("$argon2id$"));
        assert!(h.verify("pw", &x));
        assert!(!h.verify("pw2", &x));
        assert!(!h.verify("pw", "garbage"));
        assert!(Scope::Admin > Scope::Preheat && Scope::Preheat > Scope::ReadOnly);
        assert_eq!(parse_token("dfly_12_abc"), Some((12, "abc")));
        assert_eq!(parse_token("dfly_x_abc"), None);
    }

    #[test]
    fn repeated_sign_in_failures_slow_down() {
        let h = Hasher::new(&AuthConfig {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..Default::default()
        });
        for _ in 0..5 {
            assert_eq!(h.sign_in_delay("root"), Duration::ZERO);
            h.sign_in_failed("root");
        }
        let d = h.sign_in_delay("root");
        assert!(
            d > Duration::from_millis(900) && d <= Duration::from_secs(1),
            "{d:?}"
        );
        assert_eq!(h.sign_in_delay("alice"), Duration::ZERO, "per username");
        for _ in 0..20 {
            h.sign_in_failed("root");
        }
        assert!(h.sign_in_delay("root") <= Duration::from_secs(60));
        h.sign_in_succeeded("root");
        assert_eq!(h.sign_in_delay("root"), Duration::ZERO);
    }
}
