//! Which origins a seed fetches from when the scheduler asks.
//!
//! A seed task names a URL chosen by whoever registered it, and the seed
//! then serves what it fetched to the swarm: left open, any host could make
//! a seed read its own loopback (metrics, local services), link-local
//! addresses (cloud metadata) or the cluster's own services and hand the
//! answer out. So a seed task's URL must be http(s) and, unless its host is
//! listed in `source.allowed_hosts`, neither name nor resolve to such an
//! address; with `allowed_hosts` set, only the listed hosts are fetched.
//! A peer's own `get` is its operator's choice and is not checked here.

use crate::error::Error;
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// `host` or `host:port`, lowercase; empty: any host that passes the address checks.
    allowed: Vec<String>,
    /// The cluster's service addresses (schedulers, manager).
    services: Vec<IpAddr>,
}

/// Loopback, link-local, unspecified, multicast and broadcast addresses
/// (IPv4-mapped IPv6 included): nothing a seed task may reach unless listed.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

impl OriginPolicy {
    pub fn new(allowed_hosts: &[String], services: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            allowed: allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            services: services.into_iter().collect(),
        }
    }

    /// The policy of a peer's config: its `source.allowed_hosts`, and the
    /// addresses of its schedulers and manager (those given as IPs).
    pub fn for_peer(config: &crate::config::PeerConfig) -> Self {
        let services = config
            .schedulers
            .iter()
            .chain(std::iter::once(&config.manager.addr))
            .filter_map(|a| {
                let with_scheme = if a.contains("://") {
                    a.clone()
                } else {
                    format!("http://{a}")
                };
                match url::Url::parse(&with_scheme).ok()?.host()? {
                    url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
                    url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
                    url::Host::Domain(_) => None,
                }
            });
        Self::new(&config.source.allowed_hosts, services)
    }

    fn listed(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed
            .iter()
            .any(|a| a == host || *a == format!("{host}:{port}") || *a == format!("[{host}]:{port}"))
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        !is_internal(ip) && !self.services.contains(&ip)
    }

    /// The checks that need no DNS: scheme, listing, literal addresses.
    /// `Ok(Some(host))`: a name still to resolve and check.
    pub fn check_url(&self, raw: &str) -> Result<Option<(String, u16)>, Error> {
        let refuse = |why: &str| Error::Forbidden(format!("seed task URL refused: {why}"));
        let url = url::Url::parse(raw).map_err(|_| refuse("not a URL"))?;
        // Object stores: the endpoint is the peer's own configuration, not the task's.
        if matches!(url.scheme(), "s3" | "oss") {
            return Ok(None);
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse("only http and https origins"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| refuse("no host"))?
            .to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(80);
        if self.listed(&host, port) {
            return Ok(None);
        }
        if !self.allowed.is_empty() {
            return Err(refuse(&format!("{host} is not in source.allowed_hosts")));
        }
        match url.host() {
            Some(url::Host::Ipv4(v4)) if !self.address_allowed(v4.into()) => {
                Err(refuse(&format!("{v4} is an internal or service address")))
            }
            Some(url::Host::Ipv6(v6)) if !self.address_allowed(v6.into()) => {
                Err(refuse(&format!("{v6} is an internal or service address")))
            }
            Some(url::Host::Domain(_)) if host == "localhost" || host.ends_with(".localhost") => {
                Err(refuse("localhost"))
            }
            Some(url::Host::Domain(_)) => Ok(Some((host, port))),
            _ => Ok(None),
        }
    }

    /// [`Self::check_url`], then every address the host name resolves to.
    pub async fn check(&self, raw: &str) -> Result<(), Error> {
        let Some((host, port)) = self.check_url(raw)? else {
            return Ok(());
        };
        let addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Error::Origin(format!("resolve {host}: {e}")))?;
        for a in addrs {
            if !self.address_allowed(a.ip()) {
                return Err(Error::Forbidden(format!(
                    "seed task URL refused: {host} resolves to {}, an internal or service address",
                    a.ip()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: &OriginPolicy, url: &str) -> bool {
        matches!(p.check_url(url), Err(Error::Forbidden(_)))
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let p = OriginPolicy::new(&[], ["10.0.0.2".parse().unwrap()]);
        for url in [
            "http://127.0.0.1:9999/secret",
            "http://127.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://localhost:4002/metrics",
            "http://10.0.0.2:8002/",
            "file:///etc/passwd",
            "gopher://example.com/",
        ] {
            assert!(refused(&p, url), "{url}");
        }
        for url in [
            "http://10.0.0.5:8080/f",
            "https://registry-1.docker.io/v2/",
            "http://[2001:db8::1]/",
        ] {
            assert!(p.check_url(url).is_ok(), "{url}");
        }
        assert_eq!(
            p.check_url("https://Example.com/x").unwrap(),
            Some(("example.com".into(), 443))
        );
    }

    #[test]
    fn a_peers_services_are_refused() {
        let mut c = crate::config::PeerConfig {
            schedulers: vec!["http://10.0.0.2:8002".into(), "10.0.0.3:8002".into()],
            ..Default::default()
        };
        c.manager.addr = "http://10.0.0.1:65003".into();
        let p = OriginPolicy::for_peer(&c);
        for url in ["http://10.0.0.1/", "http://10.0.0.2:9/", "http://10.0.0.3/"] {
            assert!(refused(&p, url), "{url}");
        }
        assert!(p.check_url("http://10.0.0.4/").is_ok());
    }

    #[test]
    fn listed_hosts_only_when_a_list_is_given() {
        let p = OriginPolicy::new(&["127.0.0.1:5000".into(), "registry.local".into()], []);
        assert!(
            p.check_url("http://127.0.0.1:5000/v2/").is_ok(),
            "listed: allowed even on loopback"
        );
        assert!(p.check_url("https://REGISTRY.local/v2/").is_ok());
        assert!(refused(&p, "http://127.0.0.1:5001/"));
        assert!(refused(&p, "http://10.0.0.5/"), "not listed");
    }

    #[tokio::test]
    async fn localhost_is_refused_before_any_lookup() {
        let p = OriginPolicy::new(&[], []);
        assert!(matches!(
            p.check("http://localhost/").await,
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            p.check("http://a.localhost:80/").await,
            Err(Error::Forbidden(_))
        ));
    }
}
