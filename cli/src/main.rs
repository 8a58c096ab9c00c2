//! `damselfly`: one binary for every role.
//!
//! Each subcommand lives in its own module and only parses flags, loads
//! config and calls into the role's crate. `anyhow` is used here and nowhere
//! else: this is where errors become one line for a person.

use clap::{Parser, Subcommand};

mod cache;
mod certs;
#[cfg(feature = "demo")]
mod demo;
mod get;
mod init;
mod manager;
mod peer;
mod proxy;
mod scheduler;
mod snapshotter;
mod store;

#[derive(Parser)]
#[command(
    name = "damselfly",
    version,
    about = "P2P file and image distribution for container hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scheduler: picks parents for peers and triggers seed peers.
    Scheduler(scheduler::Args),
    /// Run a peer daemon (with --seed, a seed peer that fetches from origins).
    Peer(peer::Args),
    /// Download a URL through the local peer daemon.
    Get(get::Args),
    /// Point containerd or dockerd at the local registry proxy.
    Init(init::Args),
    /// Run the registry mirror proxy alone, blobs straight from the origin.
    Proxy(proxy::Args),
    /// All-in-one demo (root): a registry, a scheduler, a seed and three
    /// containerd hosts in network namespaces pull one image through the mesh.
    /// Built only with the cargo feature `demo` (scripts/demo.sh).
    #[cfg(feature = "demo")]
    Demo(demo::Args),
    /// Run a manager: clusters, liveness, preheat, REST API and web console.
    Manager(manager::Args),
    /// Run containerd's proxy snapshotter (overlayfs; layers unpacked from the mesh).
    Snapshotter(snapshotter::Args),
    /// Files in the mesh with no origin: import, export, stat, delete, list.
    Cache(cache::Args),
    /// Object storage (s3://, oss://) through the local peer: put, get, stat, delete.
    Store(store::Args),
    /// Certificates for mutual TLS: `certs init DIR ROLE:NAME...` writes a CA and per-node certs.
    Certs(certs::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Scheduler(args) => scheduler::run(args).await,
            Command::Peer(args) => peer::run(args).await,
            Command::Get(args) => get::run(args).await,
            Command::Init(args) => init::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args).await,
            Command::Manager(args) => manager::run(args).await,
            Command::Snapshotter(args) => snapshotter::run(args).await,
            Command::Certs(args) => certs::run(args).await,
            Command::Store(args) => store::run(args).await,
            Command::Cache(args) => cache::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("damselfly: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
