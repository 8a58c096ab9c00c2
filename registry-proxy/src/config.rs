//! The proxy's configuration: serde defaults in named functions (the only
//! place defaults are written) and one [`ProxyConfig::validate`] that names
//! the bad field.

use damselfly_service::config::ConfigError;
use damselfly_service::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// Docker Hub's name, and where its API is really served.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "https://registry-1.docker.io";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The registry of requests that carry no `?ns=`: Docker daemons'
    /// `registry-mirrors` only send Docker Hub images, as `/v2/library/...`.
    #[serde(default = "default_registry")]
    pub default_registry: String,
    /// Per-registry settings, keyed by the name clients use (`docker.io`,
    /// `ghcr.io`, `10.0.0.5:5000`).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Refuse (403) registries that are neither `default_registry` nor in
    /// `registries`. Blobs are shared by digest across registries, and the
    /// access proof is a HEAD at the registry the client names: a client
    /// that names a registry of its own making could otherwise prove access
    /// to any digest. On by default: list every registry the proxy serves
    /// under `[registries."<name>"]` (an empty table will do).
    #[serde(default = "default_only_listed_registries")]
    pub only_listed_registries: bool,
    /// How long a proven "this credential may read this blob" is trusted.
    #[serde(default = "default_auth_cache_ttl", with = "humantime_serde")]
    pub auth_cache_ttl: Duration,
    #[serde(default = "default_auth_cache_entries")]
    pub auth_cache_entries: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of one origin request for manifests, tags and HEADs; for
    /// blob bodies, which may take long, the longest wait for more bytes.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Extra attempts after a connection error or a 5xx from the origin.
    #[serde(default = "default_upstream_retries")]
    pub upstream_retries: u32,
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the registry API, e.g. `http://10.0.0.5:5000`. Default:
    /// `https://<name>` (`http://` for loopback names), Docker Hub's real host
    /// for `docker.io`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Used with the origin when the client sends no Authorization.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

fn default_registry() -> String {
    DOCKER_HUB.to_string()
}
fn default_only_listed_registries() -> bool {
    true
}
fn default_auth_cache_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_cache_entries() -> usize {
    10_000
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_upstream_retries() -> u32 {
    2
}
fn default_max_redirects() -> usize {
    5
}

impl Default for ProxyConfig {
    fn default() -> Self {
        damselfly_service::config::parse("", "defaults").expect("the empty config is valid")
    }
}

impl ProxyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::route::validate_registry_host(&self.default_registry)
            .map_err(|e| ConfigError::invalid("default_registry", e.to_string()))?;
        if self.auth_cache_entries == 0 {
            return Err(ConfigError::invalid("auth_cache_entries", "must be at least 1"));
        }
        if self.auth_cache_ttl > Duration::from_secs(3600) {
            return Err(ConfigError::invalid("auth_cache_ttl", "must be at most 1h"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::invalid("connect_timeout", "must be positive"));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::invalid("request_timeout", "must be positive"));
        }
        if self.upstream_retries > 10 {
            return Err(ConfigError::invalid("upstream_retries", "must be at most 10"));
        }
        if self.max_redirects > 20 {
            return Err(ConfigError::invalid("max_redirects", "must be at most 20"));
        }
        for (name, reg) in &self.registries {
            let field = |f: &str| format!("registries.\"{name}\".{f}");
            crate::route::validate_registry_host(name)
                .map_err(|e| ConfigError::invalid(format!("registries.\"{name}\""), e.to_string()))?;
            if let Some(endpoint) = &reg.endpoint {
                parse_endpoint(endpoint).map_err(|m| ConfigError::invalid(field("endpoint"), m))?;
            }
            if reg.username.is_some() != reg.password.is_some() {
                return Err(ConfigError::invalid(
                    field("password"),
                    "username and password go together",
                ));
            }
        }
        Ok(())
    }

    /// The base URL of a registry's API.
    pub fn endpoint(&self, registry: &str) -> Url {
        if let Some(e) = self
            .registries
            .get(registry)
            .and_then(|r| r.endpoint.as_deref())
            .and_then(|e| parse_endpoint(e).ok())
        {
            return e;
        }
        let base = if registry == DOCKER_HUB || registry == "index.docker.io" {
            DOCKER_HUB_API.to_string()
        } else if is_loopback(registry) {
            format!("http://{registry}")
        } else {
            format!("https://{registry}")
        };
        Url::parse(&base).unwrap_or_else(|_| Url::parse(DOCKER_HUB_API).expect("constant URL"))
    }

    /// Configured credentials for a registry.
    pub fn credentials(&self, registry: &str) -> Option<(&str, &Secret)> {
        let r = self.registries.get(registry)?;
        Some((r.username.as_deref()?, r.password.as_ref()?))
    }
}

fn parse_endpoint(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{s:?} must be an http:// or https:// URL"));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(format!("{s:?} must have no path, query or user"));
    }
    Ok(url)
}

fn is_loopback(registry: &str) -> bool {
    let Ok(url) = Url::parse(&format!("http://{registry}/")) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_service::config::parse;

    #[test]
    fn defaults_and_endpoints() {
        let c = ProxyConfig::default();
        c.validate().unwrap();
        assert_eq!(c.default_registry, "docker.io");
        assert!(c.only_listed_registries, "private layers are safe by default");
        assert_eq!(c.auth_cache_ttl, Duration::from_secs(30));
        assert_eq!(c.endpoint("docker.io").as_str(), "https://registry-1.docker.io/");
        assert_eq!(c.endpoint("127.0.0.1:5000").as_str(), "http://127.0.0.1:5000/");
        assert_eq!(c.endpoint("localhost:5000").as_str(), "http://localhost:5000/");
        assert_eq!(c.endpoint("ghcr.io").as_str(), "https://ghcr.io/");
    }

    #[test]
    fn per_registry_settings() {
        let c: ProxyConfig = parse(
            r#"
            default_registry = "10.0.0.5:5000"
            auth_cache_ttl = "5s"
            [registries."10.0.0.5:5000"]
            endpoint = "http://10.0.0.5:5000"
            username = "alice"
            password = "secret"
            "#,
            "t",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.endpoint("10.0.0.5:5000").as_str(), "http://10.0.0.5:5000/");
        let (u, p) = c.credentials("10.0.0.5:5000").unwrap();
        assert_eq!((u, p.expose()), ("alice", "secret"));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn example_file_is_the_defaults() {
        let text = include_str!("../proxy.example.toml");
        let example: ProxyConfig = parse(text, "proxy.example.toml").unwrap();
        example.validate().unwrap();
        assert_eq!(
            toml::to_string(&example).unwrap(),
            toml::to_string(&ProxyConfig::default()).unwrap()
        );
        // The commented-out examples are valid too.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.starts_with('[') || r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let full: ProxyConfig = parse(&uncommented, "uncommented").unwrap();
        full.validate().unwrap();
        assert_eq!(full.registries.len(), 2);
    }

    #[test]
    fn validate_names_the_field() {
        let bad = |toml: &str, field: &str| {
            let c: ProxyConfig = parse(toml, "t").unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        };
        bad("auth_cache_entries = 0", "auth_cache_entries");
        bad("default_registry = \"a/b\"", "default_registry");
        bad(
            "[registries.\"r\"]\nendpoint = \"ftp://x\"",
            "registries.\"r\".endpoint",
        );
        bad(
            "[registries.\"r\"]\nendpoint = \"http://x/path\"",
            "registries.\"r\".endpoint",
        );
        bad(
            "[registries.\"r\"]\nusername = \"u\"",
            "registries.\"r\".password",
        );
        assert!(parse::<ProxyConfig>("bogus = 1", "t").is_err());
    }
}
