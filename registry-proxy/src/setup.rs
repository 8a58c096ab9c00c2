//! Points container runtimes at the local proxy.
//!
//! - containerd: one `certs.d/<registry>/hosts.toml` per registry (and
//!   `_default` for all others) naming the proxy as a mirror with the origin
//!   kept as `server`, so containerd falls back to it when the proxy is down
//!   or answers 404/5xx. The mirror is an explicit `[host."http://..."]`
//!   entry: with only `server = "http://..."` containerd 1.6 tries HTTPS for
//!   non-loopback addresses.
//! - Docker: `registry-mirrors` merged into `daemon.json`, every other key
//!   kept.

use std::io;
use std::path::{Path, PathBuf};

/// Written at the top of every file we generate, so that a second run
/// knows it may overwrite it.
pub const MARKER: &str = "# written by `damselfly init containerd`";

/// The default proxy address of a peer.
pub const DEFAULT_MIRROR: &str = "http://127.0.0.1:65001";

/// A registry as given on the command line: `docker.io`, `ghcr.io`, or
/// `http://10.0.0.5:5000` for a plain-HTTP origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryTarget {
    /// Directory name under the config path (the registry's host[:port]).
    pub host: String,
    /// The origin URL containerd falls back to.
    pub server: String,
}

impl RegistryTarget {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scheme, host) = match s.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme), rest.trim_end_matches('/')),
            Some(_) => return Err(format!("{s:?}: only http:// or https:// origins")),
            None => (None, s),
        };
        crate::route::validate_registry_host(host).map_err(|e| format!("{s:?}: {e}"))?;
        if host == "_default" {
            return Err("_default is written anyway".into());
        }
        let server = match (scheme, host) {
            (None, "docker.io") => crate::config::DOCKER_HUB_API.to_string(),
            (Some(scheme), _) => format!("{scheme}://{host}"),
            (None, _) => format!("https://{host}"),
        };
        Ok(Self {
            host: host.to_string(),
            server,
        })
    }
}

fn check_mirror(mirror: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(mirror).map_err(|e| format!("mirror {mirror:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("mirror {mirror:?} must be an http:// or https:// URL"));
    }
    Ok(url)
}

/// The `hosts.toml` of one registry (`server: None` for `_default`).
pub fn hosts_toml(server: Option<&str>, mirror: &str) -> String {
    let mirror = mirror.trim_end_matches('/');
    let mut s = format!("{MARKER}\n");
    if let Some(server) = server {
        s.push_str(&format!("server = \"{server}\"\n"));
    }
    s.push_str(&format!(
        "\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    ));
    s
}

/// Writes `hosts.toml` for each registry and `_default` under
/// `config_path`. An existing file not written by us is kept as
/// `hosts.toml.orig`. Returns the files written.
pub fn write_containerd_hosts(
    config_path: &Path,
    registries: &[RegistryTarget],
    mirror: &str,
) -> Result<Vec<PathBuf>, String> {
    check_mirror(mirror)?;
    let mut written = Vec::new();
    let mut entries: Vec<(String, Option<&str>)> = registries
        .iter()
        .map(|r| (r.host.clone(), Some(r.server.as_str())))
        .collect();
    entries.push(("_default".to_string(), None));
    for (dir, server) in entries {
        let dir = config_path.join(dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let file = dir.join("hosts.toml");
        let text = hosts_toml(server, mirror);
        match std::fs::read_to_string(&file) {
            Ok(old) if old == text => {}
            Ok(old) if !old.starts_with(MARKER) => {
                let backup = dir.join("hosts.toml.orig");
                std::fs::write(&backup, old).map_err(|e| format!("back up {}: {e}", file.display()))?;
                write_atomic(&file, text.as_bytes())?;
            }
            _ => write_atomic(&file, text.as_bytes())?,
        }
        written.push(file);
    }
    Ok(written)
}

/// `daemon.json` text with `mirror` first in `registry-mirrors` and every
/// other key kept. `existing` is the file's text, if any.
pub fn merge_daemon_json(existing: Option<&str>, mirror: &str) -> Result<String, String> {
    check_mirror(mirror)?;
    let mut doc: serde_json::Value = match existing.map(str::trim) {
        None | Some("") => serde_json::json!({}),
        Some(text) => serde_json::from_str(text).map_err(|e| format!("daemon.json: {e}"))?,
    };
    let obj = doc
        .as_object_mut()
        .ok_or("daemon.json: the top level must be an object")?;
    let mirror = mirror.trim_end_matches('/').to_string();
    let mut mirrors: Vec<serde_json::Value> = match obj.get("registry-mirrors") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(_) => return Err("daemon.json: registry-mirrors must be a list".into()),
    };
    mirrors.retain(|m| m.as_str().map(|s| s.trim_end_matches('/')) != Some(mirror.as_str()));
    mirrors.insert(0, serde_json::Value::String(mirror));
    obj.insert("registry-mirrors".into(), serde_json::Value::Array(mirrors));
    let mut text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

/// Merges the mirror into the `daemon.json` at `path` (created if missing).
pub fn write_daemon_json(path: &Path, mirror: &str) -> Result<(), String> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let text = merge_daemon_json(existing.as_deref(), mirror)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    write_atomic(path, text.as_bytes())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_targets() {
        assert_eq!(
            RegistryTarget::parse("docker.io").unwrap(),
            RegistryTarget {
                host: "docker.io".into(),
                server: "https://registry-1.docker.io".into()
            }
        );
        assert_eq!(
            RegistryTarget::parse("http://10.0.0.5:5000/").unwrap(),
            RegistryTarget {
                host: "10.0.0.5:5000".into(),
                server: "http://10.0.0.5:5000".into()
            }
        );
        assert_eq!(
            RegistryTarget::parse("ghcr.io").unwrap().server,
            "https://ghcr.io"
        );
        for bad in ["ftp://x", "a/b", "", "_default", "http://h/path"] {
            assert!(RegistryTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn containerd_hosts_files() {
        let dir = tempfile::tempdir().unwrap();
        let regs = vec![
            RegistryTarget::parse("docker.io").unwrap(),
            RegistryTarget::parse("http://10.0.0.5:5000").unwrap(),
        ];
        // A file the user wrote is kept aside.
        std::fs::create_dir_all(dir.path().join("docker.io")).unwrap();
        std::fs::write(dir.path().join("docker.io/hosts.toml"), "server = \"x\"\n").unwrap();
        let files = write_containerd_hosts(dir.path(), &regs, "http://127.0.0.1:65001").unwrap();
        assert_eq!(files.len(), 3);
        let hub = std::fs::read_to_string(dir.path().join("docker.io/hosts.toml")).unwrap();
        assert!(hub.contains("server = \"https://registry-1.docker.io\""), "{hub}");
        assert!(hub.contains("[host.\"http://127.0.0.1:65001\"]"), "{hub}");
        assert!(hub.contains("capabilities = [\"pull\", \"resolve\"]"), "{hub}");
        let parsed: toml::Value = toml::from_str(&hub).unwrap();
        assert_eq!(
            parsed["host"]["http://127.0.0.1:65001"]["capabilities"][0].as_str(),
            Some("pull")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("docker.io/hosts.toml.orig")).unwrap(),
            "server = \"x\"\n"
        );
        let local = std::fs::read_to_string(dir.path().join("10.0.0.5:5000/hosts.toml")).unwrap();
        assert!(local.contains("server = \"http://10.0.0.5:5000\""));
        let default = std::fs::read_to_string(dir.path().join("_default/hosts.toml")).unwrap();
        assert!(!default.contains("server"), "{default}");
        assert!(default.contains("[host.\"http://127.0.0.1:65001\"]"));
        // Running again changes nothing and makes no new backup.
        std::fs::remove_file(dir.path().join("docker.io/hosts.toml.orig")).unwrap();
        write_containerd_hosts(dir.path(), &regs, "http://127.0.0.1:65001").unwrap();
        assert!(!dir.path().join("docker.io/hosts.toml.orig").exists());
        assert!(write_containerd_hosts(dir.path(), &regs, "not a url").is_err());
    }

    #[test]
    fn daemon_json_merge_keeps_other_keys() {
        let merged = merge_daemon_json(
            Some(r#"{"data-root":"/d","registry-mirrors":["https://m.example"],"debug":true}"#),
            "http://127.0.0.1:65001/",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(v["data-root"], "/d");
        assert_eq!(v["debug"], true);
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:65001", "https://m.example"])
        );
        // Idempotent.
        let again = merge_daemon_json(Some(&merged), "http://127.0.0.1:65001").unwrap();
        assert_eq!(again, merged);
        let fresh: serde_json::Value =
            serde_json::from_str(&merge_daemon_json(None, DEFAULT_MIRROR).unwrap()).unwrap();
        assert_eq!(fresh, serde_json::json!({"registry-mirrors": [DEFAULT_MIRROR]}));
        assert!(merge_daemon_json(Some("[1]"), DEFAULT_MIRROR).is_err());
        assert!(merge_daemon_json(Some("{"), DEFAULT_MIRROR).is_err());
        assert!(merge_daemon_json(Some(r#"{"registry-mirrors":"x"}"#), DEFAULT_MIRROR).is_err());
    }

    #[test]
    fn daemon_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/docker/daemon.json");
        write_daemon_json(&p, DEFAULT_MIRROR).unwrap();
        std::fs::write(&p, r#"{"log-level":"debug"}"#).unwrap();
        write_daemon_json(&p, DEFAULT_MIRROR).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["log-level"], "debug");
        assert_eq!(v["registry-mirrors"][0], DEFAULT_MIRROR);
    }
}
