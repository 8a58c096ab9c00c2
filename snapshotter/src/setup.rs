//! `damselfly init containerd --snapshotter`: adds the snapshotter to containerd's config.toml,
//! keeping every other key (and its comments) as it was.
//!
//! - containerd 1.6/1.7 (config `version = 2`): `[proxy_plugins.damselfly]`, and in the CRI
//!   plugin `snapshotter = "damselfly"` with `disable_snapshot_annotations = false`, so CRI
//!   passes the layer labels.
//! - containerd 2.x (`version = 3`): the proxy plugin with `exports` (`root`, so kubelet's image
//!   GC sees the disk, and `enable_remote_snapshot_annotations = "true"`: the transfer service's
//!   pull passes the labels), the CRI image service's `snapshotter`, and an `unpack_config` entry
//!   of the transfer service for the snapshotter (plus one for overlayfs when there was none:
//!   an explicit list replaces containerd's default).

use crate::{Error, Result};
use std::path::Path;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

pub const PLUGIN: &str = "damselfly";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigVersion {
    /// containerd 1.6 and 1.7.
    V2,
    /// containerd 2.x.
    V3,
}

impl ConfigVersion {
    /// From `containerd --version` output (`containerd github.com/... 1.6.20~ds1 ...`).
    pub fn from_containerd_version(out: &str) -> Option<Self> {
        let version = out.split_whitespace().nth(2)?.trim_start_matches('v');
        match version.split('.').next()? {
            "1" => Some(Self::V2),
            "2" => Some(Self::V3),
            _ => None,
        }
    }
}

pub struct SnapshotterSetup<'a> {
    pub socket: &'a Path,
    pub root: &'a Path,
    /// OCI platform of this host, `linux/amd64`.
    pub platform: &'a str,
}

fn table<'t>(parent: &'t mut Table, key: &str) -> Result<&'t mut Table> {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    item.as_table_mut()
        .ok_or_else(|| Error::InvalidArgument(format!("containerd config: `{key}` is not a table")))
}

fn path<'t>(doc: &'t mut DocumentMut, keys: &[&str]) -> Result<&'t mut Table> {
    let mut t = doc.as_table_mut();
    for k in keys {
        t = table(t, k)?;
    }
    Ok(t)
}

/// The platform containerd calls this host.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Adds the snapshotter to config `text` (possibly empty). The config's own `version` decides
/// the layout; `fallback` is used when it has none. Returns the new text and what it warns about.
pub fn configure(
    text: &str,
    fallback: ConfigVersion,
    setup: &SnapshotterSetup<'_>,
) -> Result<(String, Vec<String>)> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("containerd config is not valid TOML: {e}")))?;
    let version = match doc.get("version").and_then(Item::as_integer) {
        Some(2) => ConfigVersion::V2,
        Some(3) => ConfigVersion::V3,
        Some(v) => {
            return Err(Error::InvalidArgument(format!(
                "containerd config version {v} is not supported (2 or 3)"
            )));
        }
        None => {
            doc["version"] = value(if fallback == ConfigVersion::V2 { 2 } else { 3 });
            fallback
        }
    };
    let mut warnings = Vec::new();
    let socket = setup.socket.to_string_lossy().into_owned();
    let root = setup.root.to_string_lossy().into_owned();
    let plugin = path(&mut doc, &["proxy_plugins", PLUGIN])?;
    plugin.set_implicit(false);
    plugin["type"] = value("snapshot");
    plugin["address"] = value(socket);
    match version {
        ConfigVersion::V2 => {
            let cri = path(&mut doc, &["plugins", "io.containerd.grpc.v1.cri", "containerd"])?;
            cri["snapshotter"] = value(PLUGIN);
            cri["disable_snapshot_annotations"] = value(false);
        }
        ConfigVersion::V3 => {
            let exports = table(plugin, "exports")?;
            exports["root"] = value(root);
            exports["enable_remote_snapshot_annotations"] = value("true");
            let images = path(&mut doc, &["plugins", "io.containerd.cri.v1.images"])?;
            images["snapshotter"] = value(PLUGIN);
            if images.get("disable_snapshot_annotations").and_then(Item::as_bool) == Some(false) {
                warnings.push(
                    "plugins.'io.containerd.cri.v1.images'.disable_snapshot_annotations = false switches \
                     CRI back to its old pull path; the transfer service path needs it unset"
                        .into(),
                );
            }
            let transfer = path(&mut doc, &["plugins", "io.containerd.transfer.v1.local"])?;
            let entries = transfer
                .entry("unpack_config")
                .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
                .as_array_of_tables_mut()
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "containerd config: `unpack_config` is not an array of tables".into(),
                    )
                })?;
            let has = |name: &str, entries: &ArrayOfTables| {
                entries
                    .iter()
                    .any(|t| t.get("snapshotter").and_then(Item::as_str) == Some(name))
            };
            let entry = |snapshotter: &str| {
                let mut t = Table::new();
                t["platform"] = value(setup.platform);
                t["snapshotter"] = value(snapshotter);
                t["differ"] = value("walking");
                t
            };
            if entries.is_empty() {
                entries.push(entry("overlayfs"));
            }
            if !has(PLUGIN, entries) {
                entries.push(entry(PLUGIN));
            }
        }
    }
    Ok((doc.to_string(), warnings))
}

/// Rewrites `config` in place (a copy of the old file kept as `config.toml.orig` once).
pub fn write_containerd_config(
    config: &Path,
    fallback: ConfigVersion,
    setup: &SnapshotterSetup<'_>,
) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("read {}", config.display()), e)),
    };
    let (out, warnings) = configure(&text, fallback, setup)?;
    if !text.is_empty() {
        let backup = config.with_extension("toml.orig");
        if !backup.exists() {
            std::fs::write(&backup, &text)
                .map_err(|e| Error::io(format!("write {}", backup.display()), e))?;
        }
    }
    if let Some(dir) = config.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::write(config, out).map_err(|e| Error::io(format!("write {}", config.display()), e))?;
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> SnapshotterSetup<'static> {
        SnapshotterSetup {
            socket: Path::new("/run/damselfly/snapshotter.sock"),
            root: Path::new("/var/lib/damselfly/snapshotter"),
            platform: "linux/amd64",
        }
    }

    #[test]
    fn version_2_keeps_every_other_key() {
        let before = r#"# my containerd
version = 2
root = "/data/containerd"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "reg/pause:1" # keep me
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    disable_snapshot_annotations = true
"#;
        let (after, warnings) = configure(before, ConfigVersion::V3, &setup()).unwrap();
        assert!(warnings.is_empty());
        assert!(
            after.contains("# my containerd") && after.contains("# keep me"),
            "{after}"
        );
        let t: toml::Table = toml::from_str(&after).unwrap();
        assert_eq!(t["version"].as_integer(), Some(2));
        assert_eq!(t["root"].as_str(), Some("/data/containerd"));
        let cri = &t["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("reg/pause:1"));
        assert_eq!(cri["containerd"]["default_runtime_name"].as_str(), Some("runc"));
        assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("damselfly"));
        assert_eq!(
            cri["containerd"]["disable_snapshot_annotations"].as_bool(),
            Some(false)
        );
        let p = &t["proxy_plugins"]["damselfly"];
        assert_eq!(p["type"].as_str(), Some("snapshot"));
        assert_eq!(p["address"].as_str(), Some("/run/damselfly/snapshotter.sock"));
        // Idempotent.
        assert_eq!(configure(&after, ConfigVersion::V3, &setup()).unwrap().0, after);
    }

    #[test]
    fn version_3_uses_the_transfer_service() {
        let before = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n  disable_apparmor = true\n";
        let (after, _) = configure(before, ConfigVersion::V2, &setup()).unwrap();
        let t: toml::Table = toml::from_str(&after).unwrap();
        assert_eq!(
            t["plugins"]["io.containerd.cri.v1.runtime"]["disable_apparmor"].as_bool(),
            Some(true)
        );
        assert_eq!(
            t["plugins"]["io.containerd.cri.v1.images"]["snapshotter"].as_str(),
            Some("damselfly")
        );
        assert!(
            t["plugins"]["io.containerd.cri.v1.images"]
                .get("disable_snapshot_annotations")
                .is_none()
        );
        let exports = &t["proxy_plugins"]["damselfly"]["exports"];
        assert_eq!(exports["root"].as_str(), Some("/var/lib/damselfly/snapshotter"));
        assert_eq!(
            exports["enable_remote_snapshot_annotations"].as_str(),
            Some("true")
        );
        let unpack = t["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"]
            .as_array()
            .unwrap();
        let names: Vec<_> = unpack
            .iter()
            .map(|u| u["snapshotter"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["overlayfs", "damselfly"]);
        assert_eq!(unpack[1]["platform"].as_str(), Some("linux/amd64"));
        assert_eq!(configure(&after, ConfigVersion::V2, &setup()).unwrap().0, after);
    }

    #[test]
    fn an_empty_file_takes_the_detected_version() {
        let (v2, _) = configure("", ConfigVersion::V2, &setup()).unwrap();
        assert!(
            v2.contains("version = 2") && v2.contains("io.containerd.grpc.v1.cri"),
            "{v2}"
        );
        let (v3, _) = configure("", ConfigVersion::V3, &setup()).unwrap();
        assert!(v3.contains("version = 3") && v3.contains("unpack_config"), "{v3}");
        assert!(configure("version = 1\n", ConfigVersion::V2, &setup()).is_err());
        assert_eq!(
            ConfigVersion::from_containerd_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 x"
            ),
            Some(ConfigVersion::V2)
        );
        assert_eq!(
            ConfigVersion::from_containerd_version(
                "containerd github.com/containerd/containerd/v2 v2.3.0 abc"
            ),
            Some(ConfigVersion::V3)
        );
    }
}
