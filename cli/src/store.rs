//! `damselfly store`: objects in S3 or OSS through the local peer daemon,
//! which holds the credentials (`[source.s3]`, `[source.oss]`). `get` reads
//! through the mesh, so many hosts reading one object cost the store about
//! one read.

use crate::get::{connect, download, failed};
use anyhow::Context;
use damselfly_proto::daemon::{DownloadRequest, StoreDeleteRequest, StorePutRequest, StoreStatRequest};
use std::path::PathBuf;

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
    /// Write a local file to s3://BUCKET/KEY (or oss://) and warm the mesh with it.
    Put { path: PathBuf, url: String },
    /// Read an object through the mesh into a file.
    Get {
        url: String,
        #[arg(short, long)]
        output: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Length, ETag and last change of an object.
    Stat { url: String },
    /// Delete an object.
    Delete { url: String },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut client = connect(args.socket.clone()).await?;
    match args.command {
        Command::Put { path, url } => {
            let path = std::path::absolute(&path).context("path")?;
            let req = StorePutRequest {
                path: path.to_string_lossy().into_owned(),
                url,
            };
            let o = client.store_put(req).await.map_err(failed)?.into_inner();
            println!("{} {} bytes etag {}", o.url, o.content_length, o.etag);
        }
        Command::Get { url, output, quiet } => {
            let o = client
                .store_stat(StoreStatRequest { url: url.clone() })
                .await
                .map_err(failed)?
                .into_inner();
            let output = std::path::absolute(&output).context("output path")?;
            let request = DownloadRequest {
                url,
                output_path: output.to_string_lossy().into_owned(),
                tag: o.tag,
                ..Default::default()
            };
            download(args.socket, request, quiet).await?;
        }
        Command::Stat { url } => {
            let o = client
                .store_stat(StoreStatRequest { url })
                .await
                .map_err(failed)?
                .into_inner();
            println!("url: {}", o.url);
            println!("length: {}", o.content_length);
            println!("etag: {}", o.etag);
            println!("last modified (unix): {}", o.last_modified_unix);
            println!("task: {}", o.task_id);
        }
        Command::Delete { url } => {
            client
                .store_delete(StoreDeleteRequest { url: url.clone() })
                .await
                .map_err(failed)?;
            println!("deleted {url}");
        }
    }
    Ok(())
}
