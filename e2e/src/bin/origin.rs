//! `damselfly-origin --dir DIR --listen ADDR`: a static file server for lab
//! tests and the bench, with Range, HEAD, Content-Length and keep-alive.
//! Logs one line per request to stderr (format: `damselfly_e2e::origin`). Files under
//! `/private/` answer 401 without `Authorization: Bearer lab-token`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{CONTENT_LENGTH, RANGE};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use damselfly_e2e::origin::RequestLog;
use tower_http::services::ServeDir;

/// Read files in chunks this large: fewer, larger writes for big blobs.
const CHUNK: usize = 256 * 1024;

#[derive(Parser)]
#[command(
    name = "damselfly-origin",
    about = "Static HTTP origin for Damselfly's lab tests"
)]
struct Args {
    /// Directory whose files are served.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on, e.g. 10.213.5.11:8080.
    #[arg(long)]
    listen: SocketAddr,
}

/// Files under `/private/` need `Authorization: Bearer <PRIVATE_TOKEN>` (401 without).
pub const PRIVATE_TOKEN: &str = "lab-token";

fn app(dir: PathBuf) -> Router {
    Router::new()
        .fallback_service(ServeDir::new(dir).with_buf_chunk_size(CHUNK))
        .layer(middleware::from_fn(private))
        .layer(middleware::from_fn(log_request))
}

async fn private(req: Request, next: Next) -> Response {
    let authorized = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {PRIVATE_TOKEN}").as_bytes());
    if req.uri().path().starts_with("/private/") && !authorized {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    next.run(req).await
}

async fn log_request(ConnectInfo(from): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = next.run(req).await;
    let bytes = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let line = RequestLog {
        method,
        path,
        range,
        status: response.status().as_u16(),
        bytes,
        from: from.to_string(),
    };
    eprintln!("{line}");
    response
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    eprintln!(
        "damselfly-origin: serving {} on {}",
        args.dir.display(),
        args.listen
    );
    axum::serve(
        listener,
        app(args.dir).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .context("serve")
}
