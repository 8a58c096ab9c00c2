//! `damselfly cache`: files in the mesh with no origin, through the local
//! peer daemon; the scheduler keeps them on chosen holders.

use crate::get::{connect, failed, follow};
use anyhow::Context;
use damselfly_proto::daemon::{
    CacheExportRequest, CacheIdRequest, CacheImportRequest, CacheInfo, CacheListRequest,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The peer daemon's socket.
    #[arg(
        long,
        env = "DAMSELFLY_SOCKET",
        default_value = "/run/damselfly/daemon.sock",
        global = true
    )]
    socket: PathBuf,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Put a local file into the mesh; prints its id.
    Import {
        path: PathBuf,
        /// The id (default: the file's sha256 hex); lowercase letters, digits, '.', '_', '-'.
        #[arg(long)]
        id: Option<String>,
        /// Copies the scheduler keeps on other hosts.
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        /// Removed everywhere after this long ("30m", "7d"); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Write a cache file to PATH (a hard link when it is already in the local store).
    Export {
        id: String,
        #[arg(short, long)]
        output: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Length, replicas wanted and held (by which hosts), TTL, created.
    Stat { id: String },
    /// Remove a cache file everywhere.
    Delete { id: String },
    /// The cache files the cluster holds.
    List,
}

fn unix(t: i64) -> String {
    if t == 0 {
        return "never".into();
    }
    let at = std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn show(e: &CacheInfo) {
    let state = if e.replica_hosts.is_empty() && e.other_holders.is_empty() {
        "lost (no host holds it)"
    } else if (e.replica_hosts.len() as u32) < e.replicas_wanted {
        "degraded"
    } else {
        "ready"
    };
    println!("id: {}", e.id);
    println!("state: {state}");
    println!("digest: {}", e.digest);
    println!("length: {}", e.content_length);
    println!("piece length: {}", e.piece_length);
    println!(
        "replicas: {} held of {} wanted ({})",
        e.replica_hosts.len(),
        e.replicas_wanted,
        e.replica_hosts.join(", ")
    );
    println!("also held by: {}", e.other_holders.join(", "));
    println!("created: {}", unix(e.created_unix));
    println!("expires: {}", unix(e.expires_unix));
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = connect(args.socket.clone()).await?;
    match args.command {
        Command::Import {
            path,
            id,
            replicas,
            ttl,
        } => {
            let path = std::path::absolute(&path).context("path")?;
            let req = CacheImportRequest {
                path: path.to_string_lossy().into_owned(),
                id: id.unwrap_or_default(),
                replicas,
                ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1)),
            };
            let e = client.cache_import(req).await.map_err(failed)?.into_inner();
            println!("{}", e.id);
        }
        Command::Export { id, output, quiet } => {
            let output = std::path::absolute(&output).context("output path")?;
            let req = CacheExportRequest {
                id,
                output_path: output.to_string_lossy().into_owned(),
            };
            let stream = client.cache_export(req).await.map_err(failed)?.into_inner();
            follow(stream, quiet).await?;
        }
        Command::Stat { id } => {
            let e = client
                .cache_stat(CacheIdRequest { id })
                .await
                .map_err(failed)?
                .into_inner();
            show(&e);
        }
        Command::Delete { id } => {
            client
                .cache_delete(CacheIdRequest { id: id.clone() })
                .await
                .map_err(failed)?;
            println!("deleted {id}");
        }
        Command::List => {
            let list = client
                .cache_list(CacheListRequest {})
                .await
                .map_err(failed)?
                .into_inner();
            for e in list.entries {
                println!(
                    "{}\t{} bytes\t{}/{} replicas\texpires {}",
                    e.id,
                    e.content_length,
                    e.replica_hosts.len(),
                    e.replicas_wanted,
                    unix(e.expires_unix)
                );
            }
        }
    }
    Ok(())
}
