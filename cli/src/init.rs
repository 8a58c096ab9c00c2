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
    },
    /// Merge the proxy into registry-mirrors of dockerd's daemon.json.
    Docker {
        #[arg(long, default_value = "/etc/docker/daemon.json")]
        daemon_json: PathBuf,
        #[arg(long, default_value = DEFAULT_MIRROR)]
        mirror: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.target {
        Target::Containerd {
            config_path,
            registries,
            mirror,
        } => {
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
