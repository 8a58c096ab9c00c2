//! `damselfly get URL -o PATH`: download through the local peer daemon.

use anyhow::{Context, bail};
use damselfly_proto::daemon::daemon_client::DaemonClient;
use damselfly_proto::daemon::{DownloadProgress, DownloadRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(clap::Args)]
pub struct Args {
    /// http(s) URL to download.
    url: String,
    /// Where to write the file.
    #[arg(short, long)]
    output: PathBuf,
    /// Expected sha256 of the whole file: sha256:<64 hex>.
    #[arg(long)]
    digest: Option<String>,
    /// Request header for the origin, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Tells apart different contents behind one URL.
    #[arg(long, default_value = "")]
    tag: String,
    #[arg(long, default_value = "")]
    application: String,
    /// The peer daemon's socket.
    #[arg(long, env = "DAMSELFLY_SOCKET", default_value = "/run/damselfly/daemon.sock")]
    socket: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub async fn connect(socket: PathBuf) -> anyhow::Result<DaemonClient<Channel>> {
    let path = socket.clone();
    let channel = Endpoint::try_from("http://local")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot reach the peer daemon at {} (is `damselfly peer` running?)",
                socket.display()
            )
        })?;
    Ok(DaemonClient::new(channel))
}

fn parse_headers(raw: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for h in raw {
        let Some((k, v)) = h.split_once(':') else {
            bail!("header {h:?} must look like \"Name: value\"");
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let output = std::path::absolute(&args.output).context("output path")?;
    let request = DownloadRequest {
        url: args.url.clone(),
        output_path: output.to_string_lossy().into_owned(),
        digest: args.digest.clone().unwrap_or_default(),
        headers: parse_headers(&args.headers)?,
        tag: args.tag,
        application: args.application,
        force_source: false,
    };
    download(args.socket, request, args.quiet).await
}

/// Runs one download on the daemon at `socket`, with a progress bar on a terminal.
pub async fn download(socket: PathBuf, request: DownloadRequest, quiet: bool) -> anyhow::Result<()> {
    let mut client = connect(socket).await?;
    let stream = client.download(request).await.map_err(failed)?.into_inner();
    follow(stream, quiet).await
}

/// Shows a download's progress (a bar on a terminal) until it ends.
pub async fn follow(mut stream: tonic::Streaming<DownloadProgress>, quiet: bool) -> anyhow::Result<()> {
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        );
        b
    });
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if let Some(b) = &bar {
                    b.set_length(p.content_length);
                    b.set_position(p.completed_length);
                }
                if p.done {
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    return Ok(());
                }
            }
            Ok(None) => bail!("the peer daemon closed the download without finishing"),
            Err(s) => {
                if let Some(b) = bar {
                    b.abandon();
                }
                return Err(failed(s));
            }
        }
    }
}

/// The daemon's answer with its kind first: "not found: origin answered HTTP 404 for URL".
pub fn failed(s: tonic::Status) -> anyhow::Error {
    let kind = match s.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::DataLoss => "data loss",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::Unavailable => "unavailable",
        _ => "failed",
    };
    anyhow::anyhow!("{kind}: {}", s.message())
}
