//! `damselfly init`: point containerd or dockerd at the local proxy.

use damselfly_registry_proxy::setup::{
    DEFAULT_MIRROR, RegistryTarget, write_containerd_hosts, write_daemon_json,
};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    target: Target,
}

#[derive(clap::Subcommand)]
enum Target {
    /// Write certs.d/<registry>/hosts.toml (and _default) naming the proxy as
    /// a mirror, with the origin kept as fallback.
    Containerd {
        /// containerd's registry config_path.
        #[arg(long, default_value = "/etc/containerd/certs.d")]
        config_path: PathBuf,
        /// A registry to configure: `docker.io`, `ghcr.io`, or
        /// `http://HOST:PORT` for a plain-HTTP origin. Repeatable.
        #[arg(long = "registry", default_value = "docker.io")]
        registries: Vec<String>,
        /// The proxy's URL.
        #[arg(long, default_value = DEFAULT_MIRROR)]
        mirror: String,
        /// Also add `damselfly snapshotter` to containerd's config.toml (proxy plugin and CRI
        /// settings; every other key kept, the old file saved as config.toml.orig).
        #[arg(long)]
        snapshotter: bool,
        #[command(flatten)]
        snapshotter_args: SnapshotterArgs,
    },
    /// Merge the proxy into registry-mirrors of dockerd's daemon.json.
    Docker {
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        daemon_json: PathBuf,
        #[arg(long, default_value = DEFAULT_MIRROR)]
        mirror: String,
    },
}

#[derive(clap::Args)]
struct SnapshotterArgs {
    /// containerd's config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// The snapshotter's socket.
    #[arg(long, default_value = damselfly_snapshotter::server::DEFAULT_SOCKET)]
    snapshotter_socket: PathBuf,
    /// The snapshotter's root (exported to containerd 2.x as the plugin's `root`).
    #[arg(long, default_value = damselfly_snapshotter::server::DEFAULT_ROOT)]
    snapshotter_root: PathBuf,
    /// containerd's major version when the config file has no `version` (default: asks
    /// `containerd --version`).
    #[arg(long, value_parser = ["1", "2"])]
    containerd_major: Option<String>,
}

async fn init_snapshotter(a: SnapshotterArgs) -> anyhow::Result<()> {
    use damselfly_snapshotter::setup::{
        ConfigVersion, SnapshotterSetup, host_platform, write_containerd_config,
    };
    let version = match a.containerd_major.as_deref() {
        Some("1") => ConfigVersion::V2,
        Some(_) => ConfigVersion::V3,
        None => {
            let out = tokio::process::Command::new("containerd")
                .arg("--version")
                .output()
                .await;
            let text = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            ConfigVersion::from_containerd_version(&text).ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot tell containerd's version ({:?}): pass --containerd-major",
                    text.trim()
                )
            })?
        }
    };
    let config = a.containerd_config.clone();
    let warnings = tokio::task::spawn_blocking(move || {
        let platform = host_platform();
        let setup = SnapshotterSetup {
            socket: &a.snapshotter_socket,
            root: &a.snapshotter_root,
            platform: &platform,
        };
        write_containerd_config(&a.containerd_config, version, &setup)
    })
    .await??;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {}; restart containerd to use the snapshotter",
        config.display()
    );
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.target {
        Target::Containerd {
            config_path,
            registries,
            mirror,
            snapshotter,
            snapshotter_args,
        } => {
            if snapshotter {
                init_snapshotter(snapshotter_args).await?;
            }
            let targets = registries
                .iter()
                .map(|r| RegistryTarget::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            for f in write_containerd_hosts(&config_path, &targets, &mirror).map_err(anyhow::Error::msg)? {
                println!("wrote {}", f.display());
            }
            println!(
                "containerd reads these at each pull when its registry config_path is {}",
                config_path.display()
            );
        }
        Target::Docker { daemon_json, mirror } => {
            write_daemon_json(&daemon_json, &mirror).map_err(anyhow::Error::msg)?;
            println!(
                "wrote {}; restart dockerd to use the mirror",
                daemon_json.display()
            );
        }
    }
    Ok(())
}
