//! The manager's config file (TOML). Every default is written once, in
//! `impl Default`; `#[serde(default)]` fills missing keys from it.

use damselfly_service::config::ConfigError;
use damselfly_service::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// REST API, web console and `/metrics` (HTTPS beyond loopback with `[tls]` on; a client
    /// certificate is optional there, people authenticate by token or session as without TLS,
    /// and only `/metrics` needs one).
    pub listen: SocketAddr,
    /// With `[tls]` on, `/healthz` and `/readyz` (and nothing else) are also served here in
    /// plain HTTP, for probes that cannot present a certificate; unused with TLS off.
    pub health_addr: SocketAddr,
    /// gRPC for schedulers and seed peers.
    pub grpc_listen: SocketAddr,
    /// `sqlite://PATH?mode=rwc` (default) or `postgres://user@host/db`.
    pub database: String,
    pub log_level: String,
    /// An instance that sent no keepalive for this long turns inactive.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// How often inactive instances are swept and gauges refreshed.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// When set, every gRPC call must carry `authorization: Bearer <grpc_token>`
    /// (schedulers and peers read it from their own config). Unset: the gRPC
    /// port is open to anyone who can reach it, so keep it on a private network.
    pub grpc_token: Option<Secret>,
    /// Seals the registry passwords and credential headers of preheat jobs
    /// in the database: 64 hex characters (32 bytes), also read from
    /// `DAMSELFLY_MANAGER_SECRET_KEY`. Managers on one PostgreSQL must share
    /// it (required there); on SQLite it defaults to a key file created
    /// beside the database (`<database>.key`, mode 0600).
    pub secret_key: Option<Secret>,
    pub auth: AuthConfig,
    pub preheat: PreheatConfig,
    /// Mutual TLS for the gRPC port (`[tls]`, see `damselfly_service::tls`).
    pub tls: damselfly_service::tls::TlsConfig,
}

/// `health_addr`'s default.
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:8081";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            grpc_listen: "0.0.0.0:65003".parse().expect("literal address"),
            health_addr: DEFAULT_HEALTH_ADDR.parse().expect("literal address"),
            database: "sqlite://damselfly-manager.db?mode=rwc".into(),
            log_level: "info".into(),
            keepalive_timeout: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            grpc_token: None,
            secret_key: None,
            auth: AuthConfig::default(),
            preheat: PreheatConfig::default(),
            tls: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (set when the console is behind TLS).
    pub secure_cookie: bool,
    /// Argon2id cost. The defaults follow OWASP; tests lower them.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookie: false,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreheatConfig {
    /// How often the engine looks for work (it is also woken when a job is created).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long one manager owns a job's resolution or a dispatched layer before
    /// another manager may take it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A layer download that has not finished after this long is failed (and retried).
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Attempts per layer and seed (and for resolving the image) before giving up.
    pub max_attempts: u32,
    /// Platform picked from a multi-platform index, `os/arch[/variant]`.
    pub platform: String,
    /// Registries spoken to over plain HTTP (`host:port`).
    pub plain_http_registries: Vec<String>,
    /// Credentials used when a job brings none.
    pub registries: Vec<RegistryCredential>,
}

impl Default for PreheatConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            task_timeout: Duration::from_secs(600),
            max_attempts: 3,
            platform: "linux/amd64".into(),
            plain_http_registries: Vec::new(),
            registries: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredential {
    /// `host[:port]` as written in image references.
    pub host: String,
    pub username: String,
    pub password: Secret,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        if self.tls.enabled() && (self.health_addr == self.listen || self.health_addr == self.grpc_listen) {
            return Err(ConfigError::invalid(
                "health_addr",
                format!(
                    "{} is taken by listen or grpc_listen; the plain health port needs its own",
                    self.health_addr
                ),
            ));
        }
        let db = &self.database;
        if !(db.starts_with("sqlite:") || db.starts_with("postgres://") || db.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "database",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.keepalive_timeout.is_zero() {
            return Err(ConfigError::invalid("keepalive_timeout", "must be positive"));
        }
        if self.sweep_interval.is_zero() {
            return Err(ConfigError::invalid("sweep_interval", "must be positive"));
        }
        if self.grpc_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(ConfigError::invalid(
                "grpc_token",
                "must be at least 16 characters",
            ));
        }
        if let Some(k) = &self.secret_key {
            crate::seal::parse_key(k.expose()).map_err(|m| ConfigError::invalid("secret_key", m))?;
        }
        if self.auth.argon2_memory_kib < 8 || self.auth.argon2_iterations == 0 {
            return Err(ConfigError::invalid(
                "auth.argon2_memory_kib",
                "too small (>= 8 KiB, >= 1 iteration)",
            ));
        }
        if self.preheat.max_attempts == 0 {
            return Err(ConfigError::invalid("preheat.max_attempts", "must be at least 1"));
        }
        if self.preheat.poll_interval.is_zero() || self.preheat.lease.is_zero() {
            return Err(ConfigError::invalid(
                "preheat.lease",
                "intervals must be positive",
            ));
        }
        let parts = self.preheat.platform.split('/').count();
        if !(2..=3).contains(&parts) {
            return Err(ConfigError::invalid(
                "preheat.platform",
                "must be os/arch or os/arch/variant",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_errors_name_the_field() {
        Config::default().validate().unwrap();
        let c: Config = damselfly_service::config::parse("database = \"mysql://x\"", "m.toml").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`database`"), "{e}");
        let c: Config = damselfly_service::config::parse(
            "keepalive_timeout = \"2s\"\n[preheat]\nmax_attempts = 5",
            "m.toml",
        )
        .unwrap();
        assert_eq!(c.keepalive_timeout, Duration::from_secs(2));
        assert_eq!(c.preheat.max_attempts, 5);
        assert_eq!(c.preheat.lease, Duration::from_secs(30));
        assert!(damselfly_service::config::parse::<Config>("nope = 1", "m.toml").is_err());
    }
}
