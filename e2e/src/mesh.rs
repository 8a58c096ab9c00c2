//! A Damselfly mesh in a lab: a scheduler, a seed peer and peer daemons,
//! each in its own host, started through the `damselfly` CLI.
//!
//! Ports are fixed because every host has its own network namespace. With
//! [`Mesh::start_tls`] every daemon runs with mutual TLS on.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::Lab;
use crate::process::{Job, Proc};
use crate::tls::Certs;
use crate::wait::{wait_for, wait_for_tcp};

pub const SCHEDULER_PORT: u16 = 8002;
pub const SCHEDULER_METRICS_PORT: u16 = 8003;
pub const PIECE_PORT: u16 = 8001;
pub const PEER_METRICS_PORT: u16 = 8004;
/// How long a daemon may take to answer on its ports.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running peer daemon (seed or not).
pub struct PeerDaemon {
    pub host: String,
    pub proc: Proc,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
}

/// Scheduler, seed and peers of one mesh. Dropping it stops them all.
pub struct Mesh {
    bin: PathBuf,
    /// Extra arguments of every peer daemon (e.g. `--config FILE`).
    peer_args: Vec<String>,
    scheduler_host: String,
    scheduler_ip: Ipv4Addr,
    /// Extra arguments of the scheduler (its TLS config).
    scheduler_args: Vec<String>,
    /// Set when TLS is on: every daemon's certificate is named after its host.
    tls: Option<Certs>,
    /// With TLS on: more of every peer's config file, beside its `[tls]` table.
    peer_toml: String,
    pub scheduler: Proc,
    pub seed: PeerDaemon,
    pub peers: Vec<PeerDaemon>,
}

impl Mesh {
    /// Starts the scheduler in `scheduler_host`, a seed peer in `seed_host`
    /// and a peer in each of `peer_hosts`, with state under `state_dir`, and
    /// waits until every daemon answers.
    pub fn start(
        lab: &Lab,
        bin: &Path,
        state_dir: &Path,
        scheduler_host: &str,
        seed_host: &str,
        peer_hosts: &[&str],
    ) -> Result<Mesh> {
        Self::start_with_args(lab, bin, state_dir, scheduler_host, seed_host, peer_hosts, &[])
    }

    /// Like [`Self::start`], the scheduler with `scheduler_args` (e.g. `--config FILE`).
    pub fn start_with_scheduler_args(
        lab: &Lab,
        bin: &Path,
        state_dir: &Path,
        scheduler_host: &str,
        seed_host: &str,
        peer_hosts: &[&str],
        scheduler_args: &[String],
    ) -> Result<Mesh> {
        Self::launch(
            lab,
            bin,
            state_dir,
            scheduler_host,
            seed_host,
            peer_hosts,
            scheduler_args,
            &[],
            None,
        )
    }

    /// Like [`Self::start`], every peer daemon (the seed too) with `peer_args`.
    pub fn start_with_args(
        lab: &Lab,
        bin: &Path,
        state_dir: &Path,
        scheduler_host: &str,
        seed_host: &str,
        peer_hosts: &[&str],
        peer_args: &[String],
    ) -> Result<Mesh> {
        Self::launch(
            lab,
            bin,
            state_dir,
            scheduler_host,
            seed_host,
            peer_hosts,
            &[],
            peer_args,
            None,
        )
    }

    /// Like [`Self::start`] with mutual TLS on for every daemon: each one's config holds a
    /// `[tls]` table naming the certificate in `certs` called after its host (made by
    /// [`Certs::init`] with e.g. `scheduler:sched seed:seed peer:p1`).
    pub fn start_tls(
        lab: &Lab,
        bin: &Path,
        state_dir: &Path,
        certs: &Certs,
        scheduler_host: &str,
        seed_host: &str,
        peer_hosts: &[&str],
    ) -> Result<Mesh> {
        Self::start_tls_with(
            lab,
            bin,
            state_dir,
            certs,
            scheduler_host,
            seed_host,
            peer_hosts,
            "",
        )
    }

    /// Like [`Self::start_tls`], with `peer_toml` added to every peer's config file (a peer
    /// takes one `--config`, which holds its `[tls]` table).
    #[allow(clippy::too_many_arguments)]
    pub fn start_tls_with(
        lab: &Lab,
        bin: &Path,
        state_dir: &Path,
        certs: &Certs,
        scheduler_host: &str,
        seed_host: &str,
        peer_hosts: &[&str],
        peer_toml: &str,
    ) -> Result<Mesh> {
        let tls = Some((certs, peer_toml));
        Self::launch(
            lab,
            bin,
            state_dir,
            scheduler_host,
            seed_host,
            peer_hosts,
            &[],
            &[],
            tls,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        lab: &Lab,
        bin: &Path,
        state_dir: &Path,
        scheduler_host: &str,
        seed_host: &str,
        peer_hosts: &[&str],
        scheduler_args: &[String],
        peer_args: &[String],
        tls: Option<(&Certs, &str)>,
    ) -> Result<Mesh> {
        let peer_toml = tls.map(|t| t.1.to_string()).unwrap_or_default();
        let tls = tls.map(|t| t.0);
        let scheduler_ip = lab.ip(scheduler_host);
        let mut scheduler_args = scheduler_args.to_vec();
        scheduler_args.extend(tls_args(
            tls,
            &state_dir.join(scheduler_host),
            scheduler_host,
            "",
        )?);
        let scheduler = spawn_scheduler(lab, bin, scheduler_host, &scheduler_args)?;

        let scheduler_url = scheduler_url(scheduler_ip, tls.is_some());
        let start_peer = |host: &str, seed: bool| -> Result<PeerDaemon> {
            let dir = state_dir.join(host);
            let mut args = peer_args.to_vec();
            args.extend(tls_args(tls, &dir, host, &peer_toml)?);
            start_peer_with(lab, bin, &scheduler_url, &dir, host, seed, &[], &args)
        };
        let seed = start_peer(seed_host, true)?;
        let peers = peer_hosts
            .iter()
            .map(|h| start_peer(h, false))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mesh {
            scheduler_host: scheduler_host.to_string(),
            scheduler_ip,
            bin: bin.to_path_buf(),
            peer_args: peer_args.to_vec(),
            scheduler_args,
            tls: tls.cloned(),
            peer_toml,
            scheduler,
            seed,
            peers,
        })
    }

    /// Starts (or restarts, keeping its data dir) a peer in `host` with extra
    /// environment variables, e.g. a fault switch.
    pub fn start_peer(
        &mut self,
        lab: &Lab,
        state_dir: &Path,
        host: &str,
        env: &[(&str, &str)],
    ) -> Result<()> {
        self.peers.retain(|p| p.host != host);
        let url = scheduler_url(self.scheduler_ip, self.tls.is_some());
        let dir = state_dir.join(host);
        let mut args = self.peer_args.clone();
        args.extend(tls_args(self.tls.as_ref(), &dir, host, &self.peer_toml)?);
        let peer = start_peer_with(lab, &self.bin, &url, &dir, host, false, env, &args)?;
        self.peers.push(peer);
        Ok(())
    }

    /// Starts a peer in `host` with `args` instead of the mesh's common peer arguments (e.g. a
    /// config of its own).
    pub fn add_peer(&mut self, lab: &Lab, state_dir: &Path, host: &str, args: &[String]) -> Result<()> {
        self.peers.retain(|p| p.host != host);
        let url = scheduler_url(self.scheduler_ip, self.tls.is_some());
        let dir = state_dir.join(host);
        let peer = start_peer_with(lab, &self.bin, &url, &dir, host, false, &[], args)?;
        self.peers.push(peer);
        Ok(())
    }

    /// Kills the scheduler (SIGKILL: it keeps nothing) and starts a new one in its host.
    pub fn restart_scheduler(&mut self, lab: &Lab) -> Result<()> {
        self.scheduler.kill()?;
        self.scheduler = spawn_scheduler(lab, &self.bin, &self.scheduler_host, &self.scheduler_args)?;
        Ok(())
    }

    /// Kills the peer in `host` (SIGKILL, no clean shutdown) and forgets it.
    pub fn kill_peer(&mut self, host: &str) -> Result<()> {
        if let Some(i) = self.peers.iter().position(|p| p.host == host) {
            let mut p = self.peers.remove(i);
            p.proc.kill()?;
        }
        Ok(())
    }

    /// Stops the peer in `host` (SIGTERM, then SIGKILL) and forgets it.
    pub fn stop_peer(&mut self, host: &str) -> Result<()> {
        if let Some(i) = self.peers.iter().position(|p| p.host == host) {
            let mut p = self.peers.remove(i);
            p.proc.stop()?;
        }
        Ok(())
    }

    /// The damselfly binary the daemons run.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn peer(&self, host: &str) -> &PeerDaemon {
        self.peers
            .iter()
            .find(|p| p.host == host)
            .unwrap_or_else(|| panic!("no peer daemon in {host}"))
    }

    /// `damselfly get URL -o OUT` through `host`'s daemon, as a command.
    pub fn get_command(&self, host: &str, url: &str, out: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("get")
            .arg(url)
            .arg("-o")
            .arg(out)
            .arg("--socket")
            .arg(&self.peer(host).socket);
        cmd
    }

    /// `GET path` of the scheduler's HTTP port (`/tasks/{id}`, `/metrics`): with TLS on over
    /// HTTPS, as the scheduler's own certificate (an operator's role for `/tasks`).
    pub fn scheduler_http(&self, path: &str) -> Result<String> {
        match &self.tls {
            Some(certs) => certs.https_text(
                &self.scheduler_host,
                "scheduler",
                self.scheduler_ip,
                SCHEDULER_METRICS_PORT,
                path,
            ),
            None => crate::mirror::http_get(&format!("{}:{SCHEDULER_METRICS_PORT}", self.scheduler_ip), path),
        }
    }

    /// `/metrics` of the peer daemon at `ip`: with TLS on over HTTPS, as the scheduler's
    /// certificate (any member of the cluster may read peers' metrics).
    pub fn peer_metrics(&self, ip: Ipv4Addr) -> Result<String> {
        match &self.tls {
            Some(certs) => certs.https_text(&self.scheduler_host, "peer", ip, PEER_METRICS_PORT, "/metrics"),
            None => crate::mirror::http_get(&format!("{ip}:{PEER_METRICS_PORT}"), "/metrics"),
        }
    }

    /// Starts `damselfly get` in `host` in the background.
    pub fn start_get(&self, lab: &Lab, host: &str, url: &str, out: &Path) -> Result<Job> {
        lab.start(host, "get", &self.get_command(host, url, out))
    }
}

/// The scheduler's gRPC URL (`https` when TLS is on).
fn scheduler_url(ip: Ipv4Addr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{SCHEDULER_PORT}")
}

/// `--config FILE` for `host`'s daemon with its `[tls]` table, written into `dir`; nothing
/// without TLS.
fn tls_args(tls: Option<&Certs>, dir: &Path, host: &str, more: &str) -> Result<Vec<String>> {
    let Some(certs) = tls else {
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("tls.toml");
    std::fs::write(&path, format!("{more}\n{}", certs.toml(host)))
        .with_context(|| format!("write {}", path.display()))?;
    Ok(vec!["--config".to_string(), path.display().to_string()])
}

/// Starts a scheduler in `host` on the mesh's ports with extra `args` and waits until it
/// answers.
fn spawn_scheduler(lab: &Lab, bin: &Path, host: &str, args: &[String]) -> Result<Proc> {
    let ip = lab.ip(host);
    let mut cmd = Command::new(bin);
    cmd.arg("scheduler")
        .arg("--listen")
        .arg(format!("{ip}:{SCHEDULER_PORT}"))
        .arg("--metrics-listen")
        .arg(format!("{ip}:{SCHEDULER_METRICS_PORT}"))
        .args(args);
    let scheduler = lab.spawn(host, "scheduler", &cmd)?;
    ready(&scheduler, ip, SCHEDULER_PORT, None)?;
    Ok(scheduler)
}

/// Starts one peer daemon (a seed with `seed`) of the scheduler at `scheduler`, state under
/// `dir`, with extra `args` and `env`, and waits until it answers.
#[allow(clippy::too_many_arguments)]
pub fn start_peer_with(
    lab: &Lab,
    bin: &Path,
    scheduler: &str,
    dir: &Path,
    host: &str,
    seed: bool,
    env: &[(&str, &str)],
    args: &[String],
) -> Result<PeerDaemon> {
    let ip = lab.ip(host);
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let socket = dir.join("daemon.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("peer");
    if seed {
        cmd.arg("--seed");
    }
    cmd.arg("--scheduler")
        .arg(scheduler)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--socket")
        .arg(&socket)
        .arg("--piece-listen")
        .arg(format!("{ip}:{PIECE_PORT}"))
        .arg("--advertise-ip")
        .arg(ip.to_string())
        .arg("--metrics-listen")
        .arg(format!("{ip}:{PEER_METRICS_PORT}"));
    cmd.args(args);
    cmd.envs(env.iter().copied());
    let proc = lab.spawn(host, if seed { "seed" } else { "peer" }, &cmd)?;
    ready(&proc, ip, PIECE_PORT, Some(&socket))?;
    Ok(PeerDaemon {
        host: host.to_string(),
        proc,
        socket,
        data_dir,
    })
}

/// Waits until `proc` accepts TCP on `ip:port` and, if given, its socket
/// file exists; fails early with the log if the process died.
fn ready(proc: &Proc, ip: Ipv4Addr, port: u16, socket: Option<&Path>) -> Result<()> {
    let failed = || format!("{} did not become ready:\n{}", proc.name(), proc.log_tail(20));
    wait_for(&format!("{} to listen", proc.name()), READY_TIMEOUT, || {
        !proc.is_running() || std::net::TcpStream::connect((ip, port)).is_ok()
    })
    .with_context(failed)?;
    if let Some(socket) = socket {
        wait_for(&format!("{}", socket.display()), READY_TIMEOUT, || {
            !proc.is_running() || socket.exists()
        })
        .with_context(failed)?;
    }
    anyhow::ensure!(proc.is_running(), "{}", failed());
    wait_for_tcp(ip, port, READY_TIMEOUT).with_context(failed)
}
