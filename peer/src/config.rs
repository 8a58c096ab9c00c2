//! The peer's config file (TOML). Every field has a named default; the
//! common ones can be overridden by flags.
//!
//! ```toml
//! data_dir = "/var/lib/damselfly"
//! socket = "/run/damselfly/daemon.sock"    # local API for `damselfly get`
//! schedulers = ["http://10.0.0.2:8002"]
//! piece_listen = "0.0.0.0:4001"            # other peers fetch pieces here
//! advertise_ip = ""                        # empty: the address used to reach the first scheduler
//! metrics_listen = "127.0.0.1:4002"        # beyond loopback with [tls] on: HTTPS, client certificate
//! health_addr = "0.0.0.0:4003"             # with [tls] on: /healthz and /readyz alone, plain
//! seed = false
//! idc = ""
//! location = ""                            # "country|city|rack"
//! upload_slots = 16                        # children served at once per task
//! upload_rate = "0"                        # bytes/s, 0 = unlimited ("100MiB" also works)
//! download_rate = "0"
//! download_window = "32MiB"                # piece requests one download keeps in flight, in bytes
//! download_memory = "16MiB"                # pieces held in memory between socket and disk, all downloads
//! task_ttl = "24h"
//! gc_interval = "1m"
//! disk_high_watermark = 90                 # percent of the data_dir filesystem
//! disk_low_watermark = 80
//! [manager]                                # optional: schedulers from a manager
//! addr = "http://10.0.0.1:65003"           # empty: the fixed `schedulers` list; HOST:PORT
//!                                          # is https with [tls] on (http:// is refused then)
//! refresh_interval = "10s"                 # how often the scheduler list is asked again
//!
//! [source]                                 # back to source (the origin)
//! connections = 2                          # parallel connections, each taking the next 8 MiB
//! retries = 5
//! retry_backoff = "200ms"
//! connect_timeout = "10s"
//! insecure_tls = false
//! allowed_hosts = []                       # seed tasks: only these hosts ("host" or "host:port");
//!                                          # empty: any but loopback, link-local, the schedulers and manager
//!
//! [proxy]                                  # the registry mirror proxy, blobs from the mesh
//! enabled = true
//! listen = "127.0.0.1:65001"
//! # and every key of registry-proxy/proxy.example.toml, e.g.
//! # default_registry = "docker.io"
//! # [proxy.registries."10.0.0.5:5000"]
//! # endpoint = "http://10.0.0.5:5000"
//! ```

use bytesize::ByteSize;
use damselfly_registry_proxy::ProxyConfig;
use damselfly_service::config::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub schedulers: Vec<String>,
    pub piece_listen: SocketAddr,
    pub advertise_ip: String,
    pub metrics_listen: SocketAddr,
    /// With `[tls]` on, `/healthz` and `/readyz` (and nothing else) are also served here in
    /// plain HTTP, for probes that cannot present a certificate; unused with TLS off.
    pub health_addr: SocketAddr,
    pub seed: bool,
    pub idc: String,
    pub location: String,
    pub upload_slots: u32,
    pub upload_rate: ByteSize,
    pub download_rate: ByteSize,
    /// Bytes of pieces one download keeps requested and not yet stored (at
    /// least one piece; the cluster's `peer_download_concurrency`, or 32,
    /// still bounds the count). Enough to keep every parent's pipeline full
    /// across a round trip; the requested bytes wait at the parents.
    pub download_window: ByteSize,
    /// Bytes of pieces this peer holds in memory between a socket (parent or
    /// origin) and the disk, over all downloads (see [`crate::memory`]).
    pub download_memory: ByteSize,
    #[serde(with = "humantime_serde")]
    pub task_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    pub disk_high_watermark: u8,
    pub disk_low_watermark: u8,
    /// A download with no new piece for this long asks for new parents,
    /// and after twice this long goes back to source.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    pub source: SourceConfig,
    pub manager: ManagerConfig,
    pub proxy: ProxyListenConfig,
    /// Mutual TLS for scheduler streams and the piece port (`[tls]`, see `damselfly_service::tls`).
    pub tls: damselfly_service::tls::TlsConfig,
    pub log_level: String,
}

/// The manager that tells this peer which schedulers serve it (and, for a
/// seed peer, sends preheat work). With `addr` empty, `schedulers` is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// gRPC address, `HOST:PORT` (https with `[tls]` on, else http) or a URL whose scheme
    /// agrees with `[tls]`.
    pub addr: String,
    /// Name sent to the manager (default: the system hostname).
    pub hostname: String,
    /// The manager's `grpc_token`, if it has one.
    pub grpc_token: Option<damselfly_service::secret::Secret>,
    /// A seed peer's seed peer cluster; 0 is the default one.
    pub seed_peer_cluster_id: u64,
    /// How often the scheduler list is asked again.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// A seed peer's keepalive on its session.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            hostname: String::new(),
            grpc_token: None,
            seed_peer_cluster_id: 0,
            refresh_interval: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
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

/// `[proxy]`: whether and where the registry mirror proxy listens, and its
/// settings (the keys of `registry-proxy/proxy.example.toml`, in the same
/// table; unknown keys are refused by [`ProxyConfig`] itself).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "toml::Table")]
pub struct ProxyListenConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub registry: ProxyConfig,
}

impl TryFrom<toml::Table> for ProxyListenConfig {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let enabled = match table.remove("enabled") {
            None => true,
            Some(v) => v.as_bool().ok_or("proxy.enabled must be true or false")?,
        };
        let listen = match table.remove("listen") {
            None => damselfly_registry_proxy::setup::DEFAULT_MIRROR
                .trim_start_matches("http://")
                .parse()
                .expect("valid literal"),
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("proxy.listen: {v} is not an \"IP:port\""))?,
        };
        let registry = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| format!("proxy: {}", e.to_string().trim_end()))?;
        Ok(Self {
            enabled,
            listen,
            registry,
        })
    }
}

impl Default for ProxyListenConfig {
    fn default() -> Self {
        Self::try_from(toml::Table::new()).expect("the empty [proxy] is valid")
    }
}

/// Back-to-source behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Connections one download opens to the origin at once, each taking
    /// the next block of [`crate::source::BLOCK`] bytes when it is done.
    pub connections: u32,
    pub retries: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Accept origins with self-signed certificates (tests, labs).
    pub insecure_tls: bool,
    /// Hosts (`host` or `host:port`) a seed fetches from when the scheduler
    /// asks; empty: any host but loopback, link-local and the cluster's
    /// service addresses (see [`crate::origin_policy`]).
    pub allowed_hosts: Vec<String>,
    /// `s3://` origins; empty fields fall back to the AWS_* environment.
    pub s3: ObjectStoreConfig,
    /// `oss://` origins; empty fields fall back to the OSS_* environment.
    pub oss: ObjectStoreConfig,
}

/// One object store's region, endpoint and credentials (never logged).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    pub region: String,
    /// e.g. `http://10.0.0.5:5000` for a MinIO or moto; empty: the service's own.
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field(
                "access_key_id",
                &(!self.access_key_id.is_empty()).then_some("<set>"),
            )
            .field(
                "secret_access_key",
                &(!self.secret_access_key.is_empty()).then_some("<set>"),
            )
            .finish()
    }
}

const DEFAULT_DATA_DIR: &str = "/var/lib/damselfly";
const DEFAULT_SOCKET: &str = "/run/damselfly/daemon.sock";
const DEFAULT_UPLOAD_SLOTS: u32 = 16;
const MIN_DOWNLOAD_BYTES: u64 = 1024 * 1024;
const MAX_DOWNLOAD_BYTES: u64 = 4 * 1024 * 1024 * 1024 - 1;
/// 16 pieces of 2 MiB (a 1 GiB file's), 32 requests of 1 MiB or less.
pub const DEFAULT_DOWNLOAD_WINDOW: ByteSize = ByteSize::mib(32);
/// 8 pieces of 2 MiB; with a disk that keeps up, a few are held at a time.
pub const DEFAULT_DOWNLOAD_MEMORY: ByteSize = ByteSize::mib(16);

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            data_dir: DEFAULT_DATA_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            schedulers: Vec::new(),
            piece_listen: "0.0.0.0:4001".parse().expect("valid literal"),
            advertise_ip: String::new(),
            metrics_listen: "127.0.0.1:4002".parse().expect("valid literal"),
            health_addr: DEFAULT_HEALTH_ADDR.parse().expect("valid literal"),
            seed: false,
            idc: String::new(),
            location: String::new(),
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            upload_rate: ByteSize(0),
            download_rate: ByteSize(0),
            download_window: DEFAULT_DOWNLOAD_WINDOW,
            download_memory: DEFAULT_DOWNLOAD_MEMORY,
            task_ttl: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(60),
            disk_high_watermark: 90,
            disk_low_watermark: 80,
            stall_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            source: SourceConfig::default(),
            manager: ManagerConfig::default(),
            proxy: ProxyListenConfig::default(),
            tls: Default::default(),
            log_level: "info".into(),
        }
    }
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            connections: 2,
            retries: 5,
            retry_backoff: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(10),
            insecure_tls: false,
            allowed_hosts: Vec::new(),
            s3: ObjectStoreConfig::default(),
            oss: ObjectStoreConfig::default(),
        }
    }
}

/// `health_addr`'s default.
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:4003";

impl PeerConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        if self.data_dir.as_os_str().is_empty() || !self.data_dir.is_absolute() {
            return Err(ConfigError::invalid("data_dir", "must be an absolute path"));
        }
        if !self.socket.is_absolute() {
            return Err(ConfigError::invalid("socket", "must be an absolute path"));
        }
        let tls_on = self.tls.enabled();
        if tls_on && [self.piece_listen, self.metrics_listen, self.proxy.listen].contains(&self.health_addr) {
            return Err(ConfigError::invalid(
                "health_addr",
                format!(
                    "{} is taken by another listener; the plain health port needs its own",
                    self.health_addr
                ),
            ));
        }
        for (i, s) in self.schedulers.iter().enumerate() {
            if s.contains("://") {
                damselfly_service::tls::service_url(&format!("schedulers[{i}]"), s, tls_on)?;
            }
            let ok = url::Url::parse(s)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    format!("schedulers[{i}]"),
                    format!("{s:?} is not an http(s)://host:port URL"),
                ));
            }
        }
        if !self.advertise_ip.is_empty() && self.advertise_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::invalid(
                "advertise_ip",
                format!("{:?} is not an IP address", self.advertise_ip),
            ));
        }
        if !(1..=16).contains(&self.source.connections) {
            return Err(ConfigError::invalid(
                "source.connections",
                "must be between 1 and 16",
            ));
        }
        if self.upload_slots == 0 {
            return Err(ConfigError::invalid("upload_slots", "must be at least 1"));
        }
        for (field, v) in [
            ("download_window", self.download_window),
            ("download_memory", self.download_memory),
        ] {
            if v.as_u64() < MIN_DOWNLOAD_BYTES || v.as_u64() > MAX_DOWNLOAD_BYTES {
                return Err(ConfigError::invalid(
                    field,
                    format!("{v} is outside 1 MiB..=4 GiB"),
                ));
            }
        }
        if self.disk_high_watermark > 100 || self.disk_low_watermark >= self.disk_high_watermark {
            return Err(ConfigError::invalid(
                "disk_low_watermark",
                "watermarks must satisfy low < high <= 100",
            ));
        }
        if self.proxy.enabled {
            self.proxy.registry.validate().map_err(|e| match e {
                ConfigError::Invalid { field, message } => {
                    ConfigError::invalid(format!("proxy.{field}"), message)
                }
                other => other,
            })?;
        }
        if self.gc_interval.is_zero() || self.keepalive_interval.is_zero() || self.stall_timeout.is_zero() {
            return Err(ConfigError::invalid("gc_interval", "intervals must be positive"));
        }
        let m = &self.manager;
        if m.enabled() {
            damselfly_service::tls::service_url("manager.addr", &m.addr, tls_on)?;
            let ok = url::Url::parse(&m.url(tls_on))
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    "manager.addr",
                    format!("{:?} is not host:port or an http(s) URL", m.addr),
                ));
            }
            if m.refresh_interval.is_zero() || m.keepalive_interval.is_zero() || m.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    "manager.refresh_interval",
                    "intervals must be positive",
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
    fn defaults_are_valid() {
        PeerConfig::default().validate().unwrap();
    }

    #[test]
    fn sizes_and_durations_parse() {
        let c: PeerConfig = parse(
            "upload_rate = \"100MiB\"\ntask_ttl = \"2h\"\n[source]\nretries = 2\n",
            "p",
        )
        .unwrap();
        assert_eq!(c.upload_rate.as_u64(), 100 * 1024 * 1024);
        assert_eq!(c.task_ttl, Duration::from_secs(7200));
        assert_eq!(c.source.retries, 2);
    }

    #[test]
    fn proxy_section() {
        let c = PeerConfig::default();
        assert!(c.proxy.enabled);
        assert_eq!(c.proxy.listen.to_string(), "127.0.0.1:65001");
        assert!(c.proxy.registry.only_listed_registries);
        let c: PeerConfig = parse(
            r#"
            [proxy]
            listen = "10.0.0.7:65001"
            default_registry = "10.0.0.5:5000"
            auth_cache_ttl = "5s"
            [proxy.registries."10.0.0.5:5000"]
            endpoint = "http://10.0.0.5:5000"
            "#,
            "p",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.proxy.listen.to_string(), "10.0.0.7:65001");
        assert_eq!(c.proxy.registry.auth_cache_ttl, Duration::from_secs(5));
        assert_eq!(
            c.proxy.registry.endpoint("10.0.0.5:5000").as_str(),
            "http://10.0.0.5:5000/"
        );
        let e = parse::<PeerConfig>("[proxy]\nbogus = 1\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let c: PeerConfig = parse("[proxy]\nauth_cache_entries = 0\n", "p").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("proxy.auth_cache_entries")
        );
        let c: PeerConfig = parse("[proxy]\nenabled = false\n", "p").unwrap();
        assert!(!c.proxy.enabled);
    }

    #[test]
    fn errors_name_fields() {
        let mut c = PeerConfig {
            schedulers: vec!["nope".into()],
            ..PeerConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("schedulers[0]"));
        c.schedulers.clear();
        c.advertise_ip = "x".into();
        assert!(c.validate().unwrap_err().to_string().contains("advertise_ip"));
        c.advertise_ip.clear();
        c.manager.addr = "http://".into();
        assert!(c.validate().unwrap_err().to_string().contains("manager.addr"));
        c.manager.addr = "10.0.0.1:65003".into();
        c.validate().unwrap();
        let w: PeerConfig = parse("download_window = \"64KiB\"\n", "p").unwrap();
        assert!(w.validate().unwrap_err().to_string().contains("download_window"));
        let m: PeerConfig = parse("download_memory = \"8MiB\"\n", "p").unwrap();
        assert_eq!(m.download_memory.as_u64(), 8 << 20);
        m.validate().unwrap();
        let m: PeerConfig = parse("download_memory = \"5GiB\"\n", "p").unwrap();
        assert!(m.validate().unwrap_err().to_string().contains("download_memory"));
        assert!(
            parse::<PeerConfig>("upload_slots = -1", "p.toml")
                .unwrap_err()
                .to_string()
                .contains("upload_slots")
        );
        assert!(
            parse::<PeerConfig>("seeds = true", "p.toml")
                .unwrap_err()
                .to_string()
                .contains("seeds")
        );
    }
}
