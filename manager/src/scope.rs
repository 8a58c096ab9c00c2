//! Which scheduler cluster serves a peer: matching a peer's hostname, IP,
//! IDC and location against each cluster's scopes.
//!
//! Scores, strongest first: a hostname pattern (an explicit pin) 8, an IP
//! inside a CIDR 4 (longer prefixes win ties), the same IDC 2, a shared
//! location prefix up to 1. The highest score wins; a cluster no scope
//! matches scores 0, so peers nobody claims go to the default cluster.

use crate::store::clusters::{ClusterScopes, SchedulerCluster};
use std::net::IpAddr;

/// What a peer says about itself when it asks for schedulers.
#[derive(Debug, Clone, Default)]
pub struct PeerFacts {
    pub hostname: String,
    pub ip: Option<IpAddr>,
    pub idc: String,
    pub location: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => (u32::from(v4) as u128, 32),
                    None => (u128::from(v6), 128),
                },
            }
        }
        let (n, nw) = bits(self.net);
        let (a, aw) = bits(ip);
        if nw != aw {
            return false;
        }
        if self.prefix == 0 {
            return true;
        }
        let shift = nw - self.prefix;
        (n >> shift) == (a >> shift)
    }
}

/// `*` matches any run of characters, `?` one character; case-insensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// How well `scopes` match `peer` (0 = not at all).
pub fn score(scopes: &ClusterScopes, peer: &PeerFacts) -> f64 {
    let mut s = 0.0;
    if !peer.hostname.is_empty() && scopes.hostnames.iter().any(|p| glob_match(p, &peer.hostname)) {
        s += 8.0;
    }
    if let Some(ip) = peer.ip {
        let best = scopes
            .cidrs
            .iter()
            .filter_map(|c| Cidr::parse(c).ok())
            .filter(|c| c.contains(ip))
            .map(|c| c.prefix())
            .max();
        if let Some(prefix) = best {
            s += 4.0 + prefix as f64 / 256.0;
        }
    }
    if !peer.idc.is_empty() && scopes.idc.iter().any(|i| i.eq_ignore_ascii_case(&peer.idc)) {
        s += 2.0;
    }
    if !peer.location.is_empty() {
        let mine: Vec<&str> = peer.location.split('|').collect();
        let best = scopes
            .location
            .iter()
            .map(|l| {
                let theirs: Vec<&str> = l.split('|').collect();
                let shared = mine
                    .iter()
                    .zip(theirs.iter())
                    .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
                    .count();
                shared as f64 / mine.len().max(theirs.len()) as f64
            })
            .fold(0.0, f64::max);
        s += best;
    }
    s
}

/// Clusters ordered best first for this peer: by score, then the default
/// cluster before others (it wins when nothing matches), then lowest id.
pub fn rank<'a>(clusters: &'a [SchedulerCluster], peer: &PeerFacts) -> Vec<&'a SchedulerCluster> {
    let mut scored: Vec<(f64, &SchedulerCluster)> =
        clusters.iter().map(|c| (score(&c.scopes, peer), c)).collect();
    scored.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.1.is_default.cmp(&a.1.is_default))
            .then(a.1.id.cmp(&b.1.id))
    });
    scored.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("node-*.rack1", "NODE-17.rack1"));
        assert!(glob_match("n?de", "node"));
        assert!(!glob_match("node-*", "gpu-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
    }

    #[test]
    fn ranking_prefers_stronger_scopes() {
        let mk = |id, default, scopes| SchedulerCluster {
            id,
            name: format!("c{id}"),
            description: String::new(),
            is_default: default,
            settings: Default::default(),
            scopes,
            created_at: 0,
            updated_at: 0,
        };
        let clusters = vec![
            mk(1, true, ClusterScopes::default()),
            mk(
                2,
                false,
                ClusterScopes {
                    idc: vec!["hz1".into()],
                    ..Default::default()
                },
            ),
            mk(
                3,
                false,
                ClusterScopes {
                    cidrs: vec!["10.9.0.0/16".into()],
                    ..Default::default()
                },
            ),
            mk(
                4,
                false,
                ClusterScopes {
                    location: vec!["asia|cn|hz".into()],
                    ..Default::default()
                },
            ),
        ];
        let peer = |ip: &str, idc: &str, loc: &str| PeerFacts {
            hostname: "h".into(),
            ip: ip.parse().ok(),
            idc: idc.into(),
            location: loc.into(),
        };
        assert_eq!(rank(&clusters, &peer("10.9.1.1", "hz1", ""))[0].id, 3);
        assert_eq!(rank(&clusters, &peer("192.168.1.1", "hz1", ""))[0].id, 2);
        assert_eq!(rank(&clusters, &peer("192.168.1.1", "", "asia|cn|sh"))[0].id, 4);
        assert_eq!(rank(&clusters, &peer("192.168.1.1", "", ""))[0].id, 1);
    }
}
