//! Development and lab certificates: one CA and a certificate per role and host, the names
//! [`crate::tls`] reads roles from. Behind `damselfly certs init DIR`.

use crate::config::ConfigError;
use crate::tls::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

fn err(message: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid("certs", message.to_string())
}

/// A CA that signs node certificates (kept in memory by `certs init`).
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A node certificate and its key, PEM.
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn key() -> Result<KeyPair, ConfigError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)
}

impl Authority {
    pub fn new(cluster: &str) -> Result<Authority, ConfigError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("damselfly CA {cluster}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let issuer = CertifiedIssuer::self_signed(params, key()?).map_err(err)?;
        Ok(Authority { issuer })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate granting `role` (a seed also gets `peer`) to `host`, valid for client and
    /// server use. `extra` adds DNS names or IP addresses (for tools that check them).
    pub fn issue_for(&self, role: Role, host: &str, extra: &[String]) -> Result<NodeCert, ConfigError> {
        let mut names = vec![role.dns_name()];
        if role == Role::Seed {
            names.push(Role::Peer.dns_name());
        }
        let mut params = CertificateParams::new(names).map_err(err)?;
        for e in extra {
            let san = match e.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(e.clone().try_into().map_err(err)?),
            };
            params.subject_alt_names.push(san);
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let key = key()?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn issue(&self, role: Role, host: &str) -> Result<NodeCert, ConfigError> {
        self.issue_for(role, host, &[])
    }
}

/// One node to certify: `role:name` on the command line (`seed:seed1`, `peer:n1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub role: Role,
    pub name: String,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (role, name) = s.split_once(':').unwrap_or((s, s));
        let role = Role::parse(role)
            .ok_or_else(|| format!("unknown role {role:?} (peer, seed, scheduler, manager)"))?;
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !ok {
            return Err(format!("bad node name {name:?} (letters, digits, - _ .)"));
        }
        Ok(NodeSpec {
            role,
            name: name.to_string(),
        })
    }
}

/// Writes `ca.pem`, `ca-key.pem` and `<name>.pem` / `<name>-key.pem` per node into `dir`
/// (keys mode 0600). Refuses to overwrite an existing CA. Blocking: call off the runtime.
pub fn init(dir: &Path, cluster: &str, nodes: &[NodeSpec]) -> Result<Vec<PathBuf>, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| err(format!("create {}: {e}", dir.display())))?;
    if dir.join("ca.pem").exists() {
        return Err(err(format!("{} already holds a CA (ca.pem)", dir.display())));
    }
    let write = |name: String, text: &str, mode: u32| -> Result<PathBuf, ConfigError> {
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .map_err(|e| err(format!("create {}: {e}", p.display())))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(format!("write {}: {e}", p.display())))?;
        Ok(p)
    };
    let ca = Authority::new(cluster)?;
    let mut out = vec![
        write("ca.pem".into(), &ca.cert_pem(), 0o644)?,
        write("ca-key.pem".into(), &ca.key_pem(), 0o600)?,
    ];
    for n in nodes {
        let c = ca.issue(n.role, &n.name)?;
        out.push(write(format!("{}.pem", n.name), &c.cert_pem, 0o644)?);
        out.push(write(format!("{}-key.pem", n.name), &c.key_pem, 0o600)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Tls, TlsConfig, TlsMode};

    #[test]
    fn init_writes_loadable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<NodeSpec> = ["scheduler:sched", "seed:seed1", "peer:n1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        init(dir.path(), "lab", &nodes).unwrap();
        for (name, roles) in [
            ("sched", vec![Role::Scheduler]),
            ("seed1", vec![Role::Peer, Role::Seed]),
            ("n1", vec![Role::Peer]),
        ] {
            let config = TlsConfig {
                mode: TlsMode::On,
                ca: Some(dir.path().join("ca.pem")),
                cert: Some(dir.path().join(format!("{name}.pem"))),
                key: Some(dir.path().join(format!("{name}-key.pem"))),
            };
            let tls = Tls::load_blocking(&config).unwrap().unwrap();
            assert_eq!(tls.roles(), roles);
        }
        assert!(
            init(dir.path(), "lab", &nodes)
                .unwrap_err()
                .to_string()
                .contains("already")
        );
        assert!("wizard:x".parse::<NodeSpec>().is_err());
        assert!("peer:../x".parse::<NodeSpec>().is_err());
    }
}
