//! `damselfly certs init DIR`: a CA and one certificate per node, so a lab or cluster can turn
//! on mutual TLS (`[tls] mode = "on"`) in minutes. Roles are SAN names the TLS layer reads
//! (see `damselfly_service::tls`).

use anyhow::Context as _;
use damselfly_service::certs::{NodeSpec, init};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write ca.pem, ca-key.pem and NAME.pem / NAME-key.pem per node into DIR.
    Init {
        /// Directory to write into (created; must not hold a CA yet).
        dir: PathBuf,
        /// Nodes as ROLE:NAME (roles: peer, seed, scheduler, manager), e.g.
        /// `scheduler:sched seed:seed1 peer:n1 peer:n2`.
        #[arg(required = true)]
        nodes: Vec<NodeSpec>,
        /// Cluster name written into the CA's common name.
        #[arg(long, default_value = "damselfly")]
        cluster: String,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Init { dir, nodes, cluster } = args.command;
    let shown = dir.clone();
    let written = tokio::task::spawn_blocking(move || init(&dir, &cluster, &nodes))
        .await
        .context("certs init")??;
    for p in &written {
        println!("{}", p.display());
    }
    eprintln!(
        "wrote {} files to {}; keep ca-key.pem offline. In each role's config:\n\
         [tls]\nmode = \"on\"\nca = \"{0}/ca.pem\"\ncert = \"{0}/NAME.pem\"\nkey = \"{0}/NAME-key.pem\"",
        written.len(),
        shown.display()
    );
    Ok(())
}
