//! The scheduler's config file (TOML). Every field has a named default.
//!
//! ```toml
//! listen = "0.0.0.0:8002"          # gRPC for peers
//! http_listen = "0.0.0.0:8003"     # /metrics and /tasks/{id} (HTTPS with [tls] on)
//! health_addr = "0.0.0.0:8006"     # with [tls] on: /healthz and /readyz alone, plain
//! host_timeout = "30s"             # a host silent this long is removed with its peers
//! task_ttl = "1h"                  # a task with no peer for this long is forgotten
//! gc_interval = "30s"
//! cold_source = "seed"             # who fetches a new task from its origin: "seed" or "requester"
//! [evaluator]
//! candidate_parent_limit = 8       # parents handed to one peer
//! filter_parent_limit = 40         # candidates looked at per decision
//! bad_node_min_millis = 200        # a piece cost below this never marks a bad node
//! [manager]                        # optional: register with a manager
//! addr = "http://10.0.0.1:65003"   # its gRPC address; empty = no manager
//! cluster_id = 0                   # 0: the manager picks by scope
//! advertise_ip = ""                # empty: listen's IP, else the one reaching the manager
//! ```

use damselfly_service::config::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// With `[tls]` on, `/healthz` and `/readyz` (and nothing else) are also served here in
    /// plain HTTP, for probes that cannot present a certificate; unused with TLS off.
    pub health_addr: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub host_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub task_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    pub evaluator: EvaluatorConfig,
    pub manager: ManagerConfig,
    /// Who fetches a new task from its origin (see [`ColdSource`]).
    pub cold_source: ColdSource,
    /// Mutual TLS for the gRPC port (`[tls]`, see `damselfly_service::tls`).
    pub tls: damselfly_service::tls::TlsConfig,
    pub log_level: String,
}

/// Who fetches a task nobody holds yet from its origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdSource {
    /// A seed peer fetches it (origin -> seed -> requester); the requester's origin headers
    /// reach the seed sealed to its key.
    #[default]
    Seed,
    /// For a task named by its digest: the first requester fetches it itself (origin ->
    /// requester, its headers stay on its node) and is the task's source; a seed copies it
    /// from the mesh. A task without a digest still goes to a seed: nothing but the origin's
    /// answer vouches for its bytes, and only a seed is trusted to relay that.
    Requester,
}

/// The manager this scheduler registers with. With `addr` empty the
/// scheduler runs alone on its own config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// gRPC address, `HOST:PORT` (https with `[tls]` on, else http) or a URL whose scheme
    /// agrees with `[tls]`.
    pub addr: String,
    /// Scheduler cluster to join; 0 lets the manager choose by scope.
    pub cluster_id: u64,
    /// Name registered (default: the system hostname).
    pub hostname: String,
    /// Address peers dial (default: `listen`'s IP, else the local address
    /// that reaches the manager).
    pub advertise_ip: String,
    pub idc: String,
    pub location: String,
    /// The manager's `grpc_token`, if it has one.
    pub grpc_token: Option<damselfly_service::secret::Secret>,
    /// Where the manager's last answers are kept for outages.
    pub cache_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How often the cluster's settings are fetched again.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often traffic counters are reported.
    #[serde(with = "humantime_serde")]
    pub traffic_interval: Duration,
    /// Per call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            cluster_id: 0,
            hostname: String::new(),
            advertise_ip: String::new(),
            idc: String::new(),
            location: String::new(),
            grpc_token: None,
            cache_dir: "/var/lib/damselfly/scheduler-manager".into(),
            keepalive_interval: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(10),
            traffic_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

impl ManagerConfig {
    pub fn enabled(&self) -> bool {
        !self.addr.is_empty()
    }

    /// `addr` with a scheme (https with TLS on; see `damselfly_service::tls::service_url`).
    pub fn url(&self, tls_on: bool) -> String {
        damselfly_service::tls::service_url("manager.addr", &self.addr, tls_on)
            .unwrap_or_else(|_| self.addr.clone())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluatorConfig {
    /// How many parents one peer is given.
    pub candidate_parent_limit: usize,
    /// How many candidates are filtered and scored per decision (bounds the work at scale).
    pub filter_parent_limit: usize,
    /// A parent whose piece cost exceeds its own mean by this many standard
    /// deviations (with enough samples) is a bad node.
    pub bad_node_sigma: f64,
    /// With few samples: a cost above this many times the mean is a bad node.
    pub bad_node_mean_factor: f64,
    /// Samples needed before the sigma rule is used.
    pub bad_node_min_samples: u64,
    /// A piece cost (milliseconds) below this is never a bad node's, whatever the history: on
    /// fast links costs are 0-2 whole ms and any queueing looked like an outlier.
    pub bad_node_min_millis: f64,
    /// Distinct peers that must report corrupt pieces from one host before
    /// that host is excluded for the whole task (a single reporter only
    /// blocklists it for itself).
    pub corrupt_reports_for_bad_host: usize,
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8002".parse().expect("valid literal")
}
fn default_http_listen() -> SocketAddr {
    "0.0.0.0:8003".parse().expect("valid literal")
}
fn default_health_addr() -> SocketAddr {
    "0.0.0.0:8006".parse().expect("valid literal")
}
const DEFAULT_BAD_NODE_MIN_MILLIS: f64 = 200.0;
const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TASK_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(30);

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            http_listen: default_http_listen(),
            health_addr: default_health_addr(),
            host_timeout: DEFAULT_HOST_TIMEOUT,
            task_ttl: DEFAULT_TASK_TTL,
            gc_interval: DEFAULT_GC_INTERVAL,
            evaluator: EvaluatorConfig::default(),
            manager: ManagerConfig::default(),
            cold_source: ColdSource::default(),
            tls: Default::default(),
            log_level: "info".into(),
        }
    }
}

impl Default for EvaluatorConfig {
    fn default() -> Self {
        Self {
            candidate_parent_limit: 8,
            filter_parent_limit: 40,
            bad_node_sigma: 3.0,
            bad_node_mean_factor: 20.0,
            bad_node_min_samples: 30,
            bad_node_min_millis: DEFAULT_BAD_NODE_MIN_MILLIS,
            corrupt_reports_for_bad_host: 2,
        }
    }
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        if self.host_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid("host_timeout", "must be at least 1s"));
        }
        if self.gc_interval.is_zero() {
            return Err(ConfigError::invalid("gc_interval", "must be positive"));
        }
        let e = &self.evaluator;
        if e.candidate_parent_limit == 0 || e.candidate_parent_limit > 64 {
            return Err(ConfigError::invalid(
                "evaluator.candidate_parent_limit",
                "must be 1..=64",
            ));
        }
        if e.filter_parent_limit < e.candidate_parent_limit {
            return Err(ConfigError::invalid(
                "evaluator.filter_parent_limit",
                "must be at least evaluator.candidate_parent_limit",
            ));
        }
        let positive = e.bad_node_sigma > 0.0 && e.bad_node_mean_factor > 1.0;
        if !positive {
            return Err(ConfigError::invalid(
                "evaluator.bad_node_sigma",
                "bad_node_sigma must be > 0 and bad_node_mean_factor > 1",
            ));
        }
        if !(e.bad_node_min_millis >= 0.0 && e.bad_node_min_millis.is_finite()) {
            return Err(ConfigError::invalid(
                "evaluator.bad_node_min_millis",
                "must be a finite number of milliseconds >= 0",
            ));
        }
        if e.corrupt_reports_for_bad_host == 0 {
            return Err(ConfigError::invalid(
                "evaluator.corrupt_reports_for_bad_host",
                "must be at least 1",
            ));
        }
        if self.tls.enabled() && (self.health_addr == self.http_listen || self.health_addr == self.listen) {
            return Err(ConfigError::invalid(
                "health_addr",
                format!(
                    "{} is taken by listen or http_listen; the plain health port needs its own",
                    self.health_addr
                ),
            ));
        }
        let m = &self.manager;
        if m.enabled() {
            damselfly_service::tls::service_url("manager.addr", &m.addr, self.tls.enabled())?;
            let ok = url::Url::parse(&m.url(self.tls.enabled()))
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    "manager.addr",
                    format!("{:?} is not host:port or an http(s) URL", m.addr),
                ));
            }
            if !m.advertise_ip.is_empty() && m.advertise_ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::invalid(
                    "manager.advertise_ip",
                    "must be an IP address",
                ));
            }
            for (name, d) in [
                ("manager.keepalive_interval", m.keepalive_interval),
                ("manager.refresh_interval", m.refresh_interval),
                ("manager.traffic_interval", m.traffic_interval),
                ("manager.timeout", m.timeout),
            ] {
                if d.is_zero() {
                    return Err(ConfigError::invalid(name, "must be positive"));
                }
            }
            if !m.cache_dir.is_absolute() {
                return Err(ConfigError::invalid(
                    "manager.cache_dir",
                    "must be an absolute path",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damselfly_service::config::parse;

    #[test]
    fn defaults_validate_and_parse() {
        SchedulerConfig::default().validate().unwrap();
        let c: SchedulerConfig = parse(
            "host_timeout = \"10s\"\n[evaluator]\ncandidate_parent_limit = 2\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.host_timeout, Duration::from_secs(10));
        assert_eq!(c.evaluator.candidate_parent_limit, 2);
        assert_eq!(c.evaluator.filter_parent_limit, 40);
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut c = SchedulerConfig::default();
        c.evaluator.candidate_parent_limit = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("evaluator.candidate_parent_limit")
        );
        let e = parse::<SchedulerConfig>("host_timeout = \"soon\"", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_timeout"), "{e}");
        let mut c = SchedulerConfig::default();
        c.manager.addr = "10.0.0.1:65003".into();
        c.validate().unwrap();
        assert_eq!(c.manager.url(false), "http://10.0.0.1:65003");
        assert_eq!(c.manager.url(true), "https://10.0.0.1:65003");
        let mut on = c.clone();
        on.tls = damselfly_service::tls::TlsConfig {
            mode: damselfly_service::tls::TlsMode::On,
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
        };
        on.validate().unwrap();
        on.manager.addr = "http://10.0.0.1:65003".into();
        assert!(on.validate().unwrap_err().to_string().contains("manager.addr"));
        on.manager.addr = "10.0.0.1:65003".into();
        on.health_addr = on.http_listen;
        assert!(on.validate().unwrap_err().to_string().contains("health_addr"));
        c.manager.refresh_interval = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("manager.refresh_interval")
        );
    }
}
