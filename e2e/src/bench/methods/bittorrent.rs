//! `bittorrent`: Debian's opentracker in the scheduler host, the origin
//! host seeding with aria2c, and an aria2c leecher on every peer host.
//!
//! Fairness: Damselfly's daemons keep serving after their own download is
//! done, so leechers here keep seeding too (`--seed-ratio=0.0`, no seed
//! time) until every host is done; a host counts as done when aria2c's
//! `--on-bt-download-complete` hook fires, which is after the last piece is
//! verified and before seeding starts. DHT, local peer discovery and IPv6
//! are off; peers come from the tracker (and peer exchange).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench::swarm::{BLOB, Download, Method, ORIGIN, SCHEDULER, Swarm};
use crate::process::Proc;
use crate::wait::{wait_for, wait_for_tcp};

const TRACKER_PORT: u16 = 6969;
const BT_PORT: u16 = 6881;
/// Piece length 2^18 = 256 KiB, mktorrent's default (1 MiB pieces measured slower here: 18.7 s vs 17.6 s).
const PIECE_LENGTH_LOG2: u32 = 18;
const DONE_ENV: &str = "DAMSELFLY_BT_DONE";

#[derive(Default)]
pub struct BitTorrent {
    torrent: PathBuf,
    hook: PathBuf,
    tracker: Option<Proc>,
    seeder: Option<Proc>,
}

impl Method for BitTorrent {
    fn name(&self) -> &'static str {
        "bittorrent"
    }

    fn notes(&self) -> String {
        format!(
            "opentracker + aria2c 1.36, {} KiB pieces, origin seeds; leechers keep seeding until all \
             hosts are done (a host is done when aria2c's download-complete hook fires)",
            (1u64 << PIECE_LENGTH_LOG2) / 1024
        )
    }

    fn prepare(&mut self, swarm: &Swarm, workdir: &Path) -> Result<()> {
        let lab = &swarm.lab;
        let announce = format!("http://{}:{TRACKER_PORT}/announce", lab.ip(SCHEDULER));
        self.torrent = workdir.join("blob.torrent");
        run(Command::new("mktorrent")
            .args(["-a", &announce, "-l", &PIECE_LENGTH_LOG2.to_string(), "-o"])
            .arg(&self.torrent)
            .arg(&swarm.blob))?;
        let info_hash = info_hash(&self.torrent)?;

        // opentracker chroots into -d; its whitelist path is inside that directory.
        let chroot = workdir.join("tracker");
        fs::create_dir_all(&chroot)?;
        fs::write(chroot.join("whitelist"), format!("{info_hash}\n"))?;
        let ip = lab.ip(SCHEDULER).to_string();
        let port = TRACKER_PORT.to_string();
        let mut tracker = Command::new("opentracker");
        tracker
            .args(["-i", &ip, "-p", &port, "-P", &port, "-d"])
            .arg(&chroot)
            .args(["-w", "/whitelist"]);
        let tracker = lab.spawn(SCHEDULER, "opentracker", &tracker)?;
        wait_for_tcp(lab.ip(SCHEDULER), TRACKER_PORT, Duration::from_secs(10))
            .with_context(|| format!("opentracker did not start:\n{}", tracker.log_tail(10)))?;
        self.tracker = Some(tracker);

        self.hook = workdir.join("bt-done.sh");
        fs::write(&self.hook, format!("#!/bin/sh\n: > \"${DONE_ENV}\"\n"))?;
        fs::set_permissions(&self.hook, fs::Permissions::from_mode(0o755))?;

        // The origin seeds the blob where it lies, after checking it.
        let www = swarm.blob.parent().context("blob has no directory")?;
        let seeded = workdir.join("seeder-ready");
        let mut seeder = aria2c(www, &self.torrent, &self.hook);
        seeder.arg("--check-integrity=true").env(DONE_ENV, &seeded);
        let seeder = lab.spawn(ORIGIN, "aria2c-seed", &seeder)?;
        wait_for("the origin's aria2c to seed", Duration::from_secs(60), || {
            seeded.exists() || !seeder.is_running()
        })?;
        if !seeder.is_running() {
            bail!("the seeding aria2c exited:\n{}", seeder.log_tail(20));
        }
        self.seeder = Some(seeder);
        Ok(())
    }

    fn start(&mut self, swarm: &Swarm, host: &str, out_dir: &Path) -> Result<Download> {
        let done_marker = out_dir.join("done");
        let mut leecher = aria2c(out_dir, &self.torrent, &self.hook);
        leecher.env(DONE_ENV, &done_marker);
        let job = swarm.lab.start(host, "aria2c", &leecher)?;
        let agent_pid = job.pid();
        Ok(Download {
            job,
            output: out_dir.join(BLOB),
            done_marker: Some(done_marker),
            agent_pid,
        })
    }

    fn stop(&mut self) {
        self.seeder = None;
        self.tracker = None;
    }
}

/// aria2c that downloads (or seeds) `torrent` in `dir`, seeds until
/// killed, and runs `hook` when the data is complete.
fn aria2c(dir: &Path, torrent: &Path, hook: &Path) -> Command {
    let mut cmd = Command::new("aria2c");
    cmd.arg(format!("--dir={}", dir.display()))
        .arg(format!("--on-bt-download-complete={}", hook.display()))
        .args([
            "--seed-ratio=0.0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--disable-ipv6=true",
            "--file-allocation=none",
            "--summary-interval=0",
            "--console-log-level=notice",
            "--allow-overwrite=true",
            &format!("--listen-port={BT_PORT}"),
        ])
        .arg(torrent);
    cmd
}

/// The torrent's info hash, as aria2c shows it.
fn info_hash(torrent: &Path) -> Result<String> {
    let shown = run(Command::new("aria2c").arg("-S").arg(torrent))?;
    shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("Info Hash:"))
        .map(|h| h.trim().to_string())
        .with_context(|| format!("no info hash in `aria2c -S` output:\n{shown}"))
}

fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("run {}", crate::lab::describe(cmd)))?;
    if !output.status.success() {
        bail!(
            "{}: {}",
            crate::lab::describe(cmd),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
