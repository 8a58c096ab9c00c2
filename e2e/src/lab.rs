//! A lab: several hosts on one machine, each in its own network namespace.
//!
//! Layout of a lab with prefix `p`, subnet octet `X` and hosts `a`, `b`:
//! a bridge `br-p` in the root namespace holding `10.213.X.1/24`, and per
//! host a namespace `p-a` whose `eth0` (`10.213.X.11`, `.12`, ...) is one end
//! of a veth pair; the other end (`p-v0`, `p-v1`, ...) is enslaved to the
//! bridge. With a rate, both ends are shaped with `tc tbf`, so a host sends
//! and receives at most that rate. The root namespace reaches every host
//! through the bridge, so a test can connect to daemons in the lab directly.
//!
//! Everything is named after the prefix, so labs with distinct prefixes and
//! octets run in parallel. Octets taken so far: 10-11 `damselfly-bench`'s
//! defaults, 201-204 `tests/lab.rs`, 220 `tests/bench_smoke.rs`, 231-235
//! `tests/mesh.rs`, 236-237 `tests/mirror.rs`, 238-239 `tests/manager.rs`,
//! 240 `damselfly demo`, 60-69 `tests/trust.rs` and `tests/tls.rs`, 150-151 `tests/tls.rs`,
//! 140-141 the 1 GiB tests of `tests/cache.rs` and `tests/store.rs`, 160 `tests/https.rs`,
//! 161 `tests/cache.rs` (named ids across hosts). Dropping the lab stops
//! every process it started
//! (by pid), deletes namespaces and bridge, and removes its directory unless
//! `DAMSELFLY_KEEP_LAB=1`.
//!
//! Also taken: 70-73 `tests/snapshotter.rs`, 130 `damselfly-image-bench`'s default (prefix
//! `dfsn`), 131 `tests/image_bench_smoke.rs`.

use std::ffi::OsString;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::process::{Job, Proc, Registry, STOP_GRACE};

/// The first two octets of every lab address.
const NET: [u8; 2] = [10, 213];
/// Host `i` (0-based) gets `.HOST_BASE + i`.
const HOST_BASE: u8 = 11;
/// Linux limits interface names to 15 bytes; `br-` plus the prefix must fit.
const MAX_PREFIX: usize = 10;
/// Set to 1 to keep a lab's directory (logs, files) after it is dropped.
pub const KEEP_ENV: &str = "DAMSELFLY_KEEP_LAB";
/// Where labs put their directories (default: the system temp dir).
pub const DIR_ENV: &str = "DAMSELFLY_LAB_DIR";

/// A host's interface counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCounters {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

pub struct Lab {
    prefix: String,
    subnet: u8,
    hosts: Vec<String>,
    dir: PathBuf,
    registry: Registry,
}

impl Lab {
    /// Builds the lab, first removing whatever a previous run with the same
    /// prefix left behind. `rate` is a tc rate such as `"100mbit"`; `None`
    /// leaves links unshaped.
    pub fn new(prefix: &str, subnet_octet: u8, hosts: &[&str], rate: Option<&str>) -> Result<Lab> {
        ensure_root()?;
        validate_names(prefix, hosts)?;
        Self::cleanup_stale(prefix)?;
        ensure_subnet_free(prefix, subnet_octet)?;

        let base = std::env::var_os(DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("damselfly-lab-{prefix}-"))
            .tempdir_in(&base)
            .context("create the lab directory")?
            .keep();
        fs::create_dir_all(dir.join("logs"))?;

        // From here on, Drop undoes whatever part of the set-up succeeded.
        let lab = Lab {
            prefix: prefix.to_string(),
            subnet: subnet_octet,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            dir,
            registry: Registry::default(),
        };
        lab.build_network(rate)
            .with_context(|| format!("build lab {prefix}"))?;
        Ok(lab)
    }

    fn build_network(&self, rate: Option<&str>) -> Result<()> {
        let bridge = self.bridge();
        sh(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            &bridge,
        ])?;
        sh(&["ip", "link", "set", &bridge, "up"])?;
        for (i, host) in self.hosts.iter().enumerate() {
            let ns = self.netns(host);
            let veth = self.veth(i);
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &veth, "master", &bridge, "up"])?;
            let addr = format!("{}/24", self.ip(host));
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            if let Some(rate) = rate {
                let tbf = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms"];
                sh(&[
                    &[
                        "ip", "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0",
                    ][..],
                    &tbf,
                ]
                .concat())?;
                sh(&[&["tc", "qdisc", "replace", "dev", &veth][..], &tbf].concat())?;
            }
        }
        Ok(())
    }

    /// Removes namespaces (`<prefix>-*`) and the bridge of an earlier lab
    /// with this prefix, killing the processes still inside those namespaces.
    pub fn cleanup_stale(prefix: &str) -> Result<()> {
        ensure_root()?;
        let listing = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .context("ip netns list")?;
        let ns_prefix = format!("{prefix}-");
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            // Lines look like "name" or "name (id: 3)".
            let Some(ns) = line.split_whitespace().next() else {
                continue;
            };
            if ns.starts_with(&ns_prefix) {
                kill_namespace_pids(ns);
                let _ = sh(&["ip", "netns", "del", ns]);
            }
        }
        let bridge = format!("br-{prefix}");
        if Path::new("/sys/class/net").join(&bridge).exists() {
            sh(&["ip", "link", "del", &bridge])?;
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The lab's own directory: logs under `logs/`, anything else a test wants.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root namespace's address on the lab bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], self.subnet, 1)
    }

    /// The address of `host`. Panics for a host the lab does not have.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        let index = self.index(host);
        Ipv4Addr::new(NET[0], NET[1], self.subnet, HOST_BASE + index as u8)
    }

    /// The network namespace of `host` (under /run/netns).
    pub fn netns(&self, host: &str) -> String {
        self.index(host);
        format!("{}-{host}", self.prefix)
    }

    fn index(&self, host: &str) -> usize {
        self.hosts.iter().position(|h| h == host).unwrap_or_else(|| {
            panic!(
                "lab {} has no host {host:?} (hosts: {:?})",
                self.prefix, self.hosts
            )
        })
    }

    fn bridge(&self) -> String {
        format!("br-{}", self.prefix)
    }

    fn veth(&self, index: usize) -> String {
        format!("{}-v{index}", self.prefix)
    }

    /// Starts a daemon in `host` with `nsenter --net` (which, unlike
    /// `ip netns exec`, keeps the mount namespace and so /sys/fs/cgroup).
    /// Its stdout and stderr go to `logs/<host>-<name>.log`.
    pub fn spawn(&self, host: &str, name: &str, cmd: &Command) -> Result<Proc> {
        let netns = format!("--net=/run/netns/{}", self.netns(host));
        let (mut wrapped, log) = self.wrap(host, name, ["nsenter".into(), netns.into()], cmd)?;
        let child = wrapped
            .spawn()
            .with_context(|| format!("start {name} in {host}"))?;
        Ok(Proc::new(
            &format!("{host}/{name}"),
            child,
            log,
            self.registry.clone(),
        ))
    }

    /// Starts a client in `host` in the background (`ip netns exec`); wait
    /// on it with [`Job::wait`] or [`crate::process::wait_all`].
    pub fn start(&self, host: &str, name: &str, cmd: &Command) -> Result<Job> {
        let (mut wrapped, log) = self.wrap(host, name, self.netns_exec(host), cmd)?;
        let started = Instant::now();
        let child = wrapped
            .spawn()
            .with_context(|| format!("start {name} in {host}"))?;
        Ok(Job::new(
            &format!("{host}/{name}"),
            child,
            log,
            self.registry.clone(),
            started,
        ))
    }

    /// Runs a client in `host` to completion and returns its output.
    pub fn run(&self, host: &str, cmd: &Command) -> Result<Output> {
        let mut wrapped = rewrap(self.netns_exec(host), cmd);
        wrapped.stdin(Stdio::null());
        let output = wrapped
            .output()
            .with_context(|| format!("run {} in {host}", describe(cmd)))?;
        Ok(output)
    }

    /// Like [`Self::run`] but fails unless the command exits 0; returns stdout.
    pub fn run_ok(&self, host: &str, cmd: &Command) -> Result<String> {
        let output = self.run(host, cmd)?;
        if !output.status.success() {
            bail!(
                "{} in {host}: {}: {}",
                describe(cmd),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Bytes `host` has sent on its lab interface.
    pub fn tx_bytes(&self, host: &str) -> Result<u64> {
        self.counter(host, "tx_bytes")
    }

    /// Bytes `host` has received on its lab interface.
    pub fn rx_bytes(&self, host: &str) -> Result<u64> {
        self.counter(host, "rx_bytes")
    }

    /// What `host` has sent and received so far, read from the root
    /// namespace's end of its veth pair (no process is started, so this is
    /// cheap enough to sample several times a second).
    pub fn link_counters(&self, host: &str) -> Result<LinkCounters> {
        let stats = Path::new("/sys/class/net")
            .join(self.veth(self.index(host)))
            .join("statistics");
        let read = |name: &str| -> Result<u64> {
            let path = stats.join(name);
            let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
            text.trim()
                .parse()
                .with_context(|| format!("{}: {text:?}", path.display()))
        };
        // The bridge side receives what the host sends, and the other way round.
        Ok(LinkCounters {
            tx_bytes: read("rx_bytes")?,
            rx_bytes: read("tx_bytes")?,
        })
    }

    fn counter(&self, host: &str, name: &str) -> Result<u64> {
        let path = format!("/sys/class/net/eth0/statistics/{name}");
        let text = self.run_ok(host, Command::new("cat").arg(&path))?;
        text.trim()
            .parse()
            .with_context(|| format!("{path} in {host}: {text:?}"))
    }

    fn netns_exec(&self, host: &str) -> [OsString; 4] {
        [
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.netns(host).into(),
        ]
    }

    /// `cmd` behind `launcher`, with output to a fresh log file.
    fn wrap<const N: usize>(
        &self,
        host: &str,
        name: &str,
        launcher: [OsString; N],
        cmd: &Command,
    ) -> Result<(Command, PathBuf)> {
        let log = self.log_file(host, name);
        let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut wrapped = rewrap(launcher, cmd);
        wrapped
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        Ok((wrapped, log))
    }

    /// `logs/<host>-<name>.log`, numbered if taken.
    fn log_file(&self, host: &str, name: &str) -> PathBuf {
        let logs = self.dir.join("logs");
        let mut path = logs.join(format!("{host}-{name}.log"));
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = logs.join(format!("{host}-{name}.{n}.log"));
        }
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.registry.stop_all(STOP_GRACE);
        for host in &self.hosts {
            let _ = sh(&["ip", "netns", "del", &format!("{}-{host}", self.prefix)]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge()]);
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") {
            eprintln!("lab {}: kept {}", self.prefix, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A new command running `launcher... program args...` with `cmd`'s
/// environment and working directory.
fn rewrap<const N: usize>(launcher: [OsString; N], cmd: &Command) -> Command {
    let [program, launcher_args @ ..] = launcher.as_slice() else {
        unreachable!("launcher is never empty")
    };
    let mut wrapped = Command::new(program);
    wrapped
        .args(launcher_args)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// `program arg...` for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a set-up command, failing with its stderr.
fn sh(argv: &[&str]) -> Result<()> {
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output();
    let output = output.with_context(|| format!("run {}", argv.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Kills what still runs inside a stale namespace (left by an earlier run
/// of this lab that could not clean up).
fn kill_namespace_pids(ns: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse() {
            crate::process::kill_now(pid);
        }
    }
}

fn ensure_root() -> Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "lab tests need root (network namespaces, veth pairs, tc); run them as root"
    );
    Ok(())
}

fn validate_names(prefix: &str, hosts: &[&str]) -> Result<()> {
    let simple = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ensure!(
        simple(prefix) && prefix.len() <= MAX_PREFIX,
        "lab prefix {prefix:?} must be 1-{MAX_PREFIX} lowercase letters or digits"
    );
    ensure!(!hosts.is_empty(), "a lab needs at least one host");
    ensure!(hosts.len() <= 200, "at most 200 hosts per lab");
    for (i, host) in hosts.iter().enumerate() {
        ensure!(
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "host name {host:?} must be letters, digits, '-' or '_'"
        );
        ensure!(!hosts[..i].contains(host), "host {host:?} appears twice");
    }
    Ok(())
}

/// Fails if another interface already holds this lab's subnet.
fn ensure_subnet_free(prefix: &str, octet: u8) -> Result<()> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .context("ip addr show")?;
    let wanted = format!("{}.{}.{octet}.", NET[0], NET[1]);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // "7: br-x    inet 10.213.5.1/24 scope global br-x ..."
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, dev, "inet", addr, ..] = fields[..]
            && addr.starts_with(&wanted)
        {
            bail!("subnet {wanted}0/24 of lab {prefix} is already used by {dev}: pick another octet");
        }
    }
    Ok(())
}
