//! A manager and the components that follow it, in lab hosts: `damselfly
//! manager` on SQLite, schedulers and peers started with `--manager` and
//! short refresh intervals, and the manager's REST API driven with `curl`.
//!
//! Ports are fixed because every host has its own network namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::Lab;
use crate::mesh::{PEER_METRICS_PORT, PIECE_PORT, READY_TIMEOUT, SCHEDULER_METRICS_PORT, SCHEDULER_PORT};
use crate::process::{Job, Proc};
use crate::wait::{wait_for, wait_for_tcp};

pub const MANAGER_HTTP_PORT: u16 = 8080;
pub const MANAGER_GRPC_PORT: u16 = 65003;
pub const ROOT_PASSWORD: &str = "lab-root-password";
/// Keepalive, refresh and sweep intervals of every component here: short,
/// so that a test sees a change within a second or two.
pub const INTERVAL: &str = "300ms";

/// A `damselfly manager` on SQLite in `host`.
pub struct Manager {
    pub proc: Proc,
    pub ip: Ipv4Addr,
    token: String,
    /// With TLS on: curl's `--cacert` and `--resolve` for the HTTPS API (no client
    /// certificate: the API authenticates by token, as without TLS).
    tls_args: Vec<String>,
}

/// With `[tls]` on, the manager's plain `/healthz` and `/readyz` port in the lab.
pub const MANAGER_HEALTH_PORT: u16 = 8081;

impl Manager {
    /// Starts it with `extra` appended to its config (e.g. a `[preheat]`
    /// section), signs in as root and mints an admin token for the API.
    pub fn start(lab: &Lab, bin: &Path, host: &str, extra: &str) -> Result<Manager> {
        Self::start_with(lab, bin, host, extra, None)
    }

    /// Like [`Manager::start`] with mutual TLS: `[tls]` from `certs`' node `host`, the API over
    /// HTTPS (checked against the CA, as `manager.role.damselfly`).
    pub fn start_tls(
        lab: &Lab,
        bin: &Path,
        host: &str,
        certs: &crate::tls::Certs,
        extra: &str,
    ) -> Result<Manager> {
        Self::start_with(
            lab,
            bin,
            host,
            &format!("{extra}\n{}", certs.toml(host)),
            Some(certs),
        )
    }

    fn start_with(
        lab: &Lab,
        bin: &Path,
        host: &str,
        extra: &str,
        tls: Option<&crate::tls::Certs>,
    ) -> Result<Manager> {
        let ip = lab.ip(host);
        let dir = lab.dir().join(format!("{host}-manager"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("manager.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{ip}:{MANAGER_HTTP_PORT}\"\n\
                 grpc_listen = \"{ip}:{MANAGER_GRPC_PORT}\"\n\
                 database = \"sqlite://{}?mode=rwc\"\n\
                 keepalive_timeout = \"2s\"\n\
                 sweep_interval = \"200ms\"\n\
                 [auth]\nargon2_memory_kib = 64\nargon2_iterations = 1\n{extra}",
                dir.join("manager.db").display()
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("manager")
            .arg("--config")
            .arg(&config)
            .env("DAMSELFLY_ROOT_PASSWORD", ROOT_PASSWORD);
        let proc = lab.spawn(host, "manager", &cmd)?;
        let failed = || format!("manager did not become ready:\n{}", proc.log_tail(20));
        wait_for_tcp(ip, MANAGER_HTTP_PORT, READY_TIMEOUT).with_context(failed)?;
        wait_for_tcp(ip, MANAGER_GRPC_PORT, READY_TIMEOUT).with_context(failed)?;
        let tls_args = match tls {
            Some(certs) => vec![
                "--cacert".to_string(),
                certs.ca().display().to_string(),
                "--resolve".to_string(),
                format!("manager.role.damselfly:{MANAGER_HTTP_PORT}:{ip}"),
            ],
            None => Vec::new(),
        };
        let mut m = Manager {
            proc,
            ip,
            token: String::new(),
            tls_args,
        };
        m.token = m.mint_token()?;
        Ok(m)
    }

    /// `http://IP:65003`, what schedulers and peers are given.
    pub fn grpc_url(&self) -> String {
        format!("http://{}:{MANAGER_GRPC_PORT}", self.ip)
    }

    fn base(&self) -> String {
        match self.tls_args.is_empty() {
            true => format!("http://{}:{MANAGER_HTTP_PORT}", self.ip),
            false => format!("https://manager.role.damselfly:{MANAGER_HTTP_PORT}"),
        }
    }

    /// `curl_json` with this manager's TLS arguments first.
    fn curl(&self, args: &[&str]) -> Result<Value> {
        let mut all: Vec<&str> = self.tls_args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        curl_json(&all)
    }

    fn mint_token(&self) -> Result<String> {
        let jar = tempfile::NamedTempFile::new()?;
        let jar = jar.path().to_string_lossy().into_owned();
        self.curl(&[
            "-c",
            &jar,
            "-H",
            "content-type: application/json",
            "-d",
            &format!(r#"{{"username":"root","password":"{ROOT_PASSWORD}"}}"#),
            &format!("{}/api/v1/sessions", self.base()),
        ])?;
        let t = self.curl(&[
            "-b",
            &jar,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"name":"e2e","scope":"admin","expires_in_secs":3600}"#,
            &format!("{}/api/v1/tokens", self.base()),
        ])?;
        t["token_value"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no token_value in {t}"))
    }

    /// An API call with the admin token; `body` is JSON.
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("{}{path}", self.base());
        let body = body.map(|b| b.to_string());
        let mut args = vec!["-X", method, "-H", &auth, "-H", "content-type: application/json"];
        if let Some(b) = &body {
            args.extend(["-d", b.as_str()]);
        }
        args.push(&url);
        self.curl(&args)
    }

    /// Instances of `kind` (`scheduler`, `seed_peer`) as `(hostname, state)`.
    pub fn instances(&self, kind: &str) -> Result<Vec<(String, String)>> {
        let list = self.api("GET", &format!("/api/v1/instances?kind={kind}"), None)?;
        Ok(list
            .as_array()
            .context("instances is not a list")?
            .iter()
            .map(|i| {
                (
                    i["hostname"].as_str().unwrap_or_default().to_string(),
                    i["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// The id of the instance `hostname` of `kind`, if registered.
    pub fn instance_id(&self, kind: &str, hostname: &str) -> Option<i64> {
        let list = self
            .api("GET", &format!("/api/v1/instances?kind={kind}"), None)
            .ok()?;
        list.as_array()?.iter().find(|i| i["hostname"] == hostname)?["id"].as_i64()
    }

    /// The state of the instance `hostname` of `kind`, if registered.
    pub fn state_of(&self, kind: &str, hostname: &str) -> Option<String> {
        self.instances(kind)
            .ok()?
            .into_iter()
            .find(|(h, _)| h == hostname)
            .map(|(_, s)| s)
    }

    /// Waits until `hostname` (of `kind`) is in `state`.
    pub fn wait_state(&self, kind: &str, hostname: &str, state: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{kind} {hostname} to be {state}"), timeout, || {
            self.state_of(kind, hostname).as_deref() == Some(state)
        })
    }
}

/// `curl -sS --fail-with-body ARGS`, parsed as JSON (`null` for an empty body).
pub fn curl_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--fail-with-body", "--max-time", "10"])
        .args(args)
        .output()
        .context("run curl")?;
    let body = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "curl {}: {} {} {}",
            args.last().unwrap_or(&""),
            out.status,
            body.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).with_context(|| format!("not JSON: {body}"))
}

/// `GET url` as text (for `/metrics`).
pub fn curl_text(url: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--fail", "--max-time", "5", url])
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!("curl {url}: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of an unlabelled metric in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A scheduler that follows the manager (`--manager`, registered as `host`).
pub struct Scheduler {
    pub proc: Proc,
    pub ip: Ipv4Addr,
    pub config: PathBuf,
}

impl Scheduler {
    pub fn start(lab: &Lab, bin: &Path, host: &str, manager: &str) -> Result<Scheduler> {
        let ip = lab.ip(host);
        let dir = lab.dir().join(format!("{host}-scheduler"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("scheduler.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{ip}:{SCHEDULER_PORT}\"\n\
                 http_listen = \"{ip}:{SCHEDULER_METRICS_PORT}\"\n\
                 [manager]\n\
                 hostname = \"{host}\"\n\
                 cache_dir = \"{}\"\n\
                 keepalive_interval = \"{INTERVAL}\"\n\
                 refresh_interval = \"{INTERVAL}\"\n\
                 traffic_interval = \"{INTERVAL}\"\n\
                 timeout = \"1s\"\n",
                dir.join("cache").display()
            ),
        )?;
        Self::spawn(lab, bin, host, manager, config)
    }

    fn spawn(lab: &Lab, bin: &Path, host: &str, manager: &str, config: PathBuf) -> Result<Scheduler> {
        let ip = lab.ip(host);
        let mut cmd = Command::new(bin);
        cmd.arg("scheduler")
            .arg("--config")
            .arg(&config)
            .arg("--manager")
            .arg(manager);
        let proc = lab.spawn(host, "scheduler", &cmd)?;
        wait_for_tcp(ip, SCHEDULER_PORT, READY_TIMEOUT)
            .with_context(|| format!("scheduler in {host} did not start:\n{}", proc.log_tail(20)))?;
        Ok(Scheduler { proc, ip, config })
    }

    /// Starts it again with the same config and cache (after a kill).
    pub fn restart(&mut self, lab: &Lab, bin: &Path, host: &str, manager: &str) -> Result<()> {
        let _ = self.proc.kill();
        *self = Self::spawn(lab, bin, host, manager, self.config.clone())?;
        Ok(())
    }

    /// `http://IP:8002`, as peers name it.
    pub fn grpc_url(&self) -> String {
        format!("http://{}:{SCHEDULER_PORT}", self.ip)
    }

    /// `/config`: parent limits in force and the manager link.
    pub fn config_view(&self) -> Result<Value> {
        curl_json(&[&format!("http://{}:{SCHEDULER_METRICS_PORT}/config", self.ip)])
    }

    /// `/tasks/{id}`, or `None` when the scheduler does not know the task.
    pub fn task_view(&self, task_id: &str) -> Option<Value> {
        curl_json(&[&format!(
            "http://{}:{SCHEDULER_METRICS_PORT}/tasks/{task_id}",
            self.ip
        )])
        .ok()
    }
}

/// A peer daemon (seed or not) started with `--manager`.
pub struct Peer {
    pub host: String,
    pub proc: Proc,
    pub ip: Ipv4Addr,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
}

impl Peer {
    /// `extra` is appended to its config file (e.g. a `[proxy]` section).
    pub fn start(lab: &Lab, bin: &Path, host: &str, manager: &str, seed: bool, extra: &str) -> Result<Peer> {
        let ip = lab.ip(host);
        let dir = lab.dir().join(format!("{host}-peer"));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let socket = dir.join("daemon.sock");
        let config = dir.join("peer.toml");
        std::fs::write(
            &config,
            format!(
                "[manager]\n\
                 hostname = \"{host}\"\n\
                 refresh_interval = \"{INTERVAL}\"\n\
                 keepalive_interval = \"{INTERVAL}\"\n\
                 timeout = \"1s\"\n{extra}"
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("peer");
        if seed {
            cmd.arg("--seed");
        }
        cmd.arg("--config")
            .arg(&config)
            .arg("--manager")
            .arg(manager)
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
        let proc = lab.spawn(host, if seed { "seed" } else { "peer" }, &cmd)?;
        let failed = || format!("peer in {host} did not become ready:\n{}", proc.log_tail(20));
        wait_for_tcp(ip, PIECE_PORT, READY_TIMEOUT).with_context(failed)?;
        wait_for(&format!("{}", socket.display()), READY_TIMEOUT, || {
            !proc.is_running() || socket.exists()
        })
        .with_context(failed)?;
        anyhow::ensure!(proc.is_running(), "{}", failed());
        Ok(Peer {
            host: host.to_string(),
            proc,
            ip,
            socket,
            data_dir,
        })
    }

    /// How many schedulers the peer spreads new tasks over now.
    pub fn schedulers(&self) -> Option<u64> {
        self.metric("damselfly_peer_schedulers").map(|v| v as u64)
    }

    /// An unlabelled metric of the peer's `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let page = curl_text(&format!("http://{}:{PEER_METRICS_PORT}/metrics", self.ip)).ok()?;
        metric(&page, name)
    }

    pub fn wait_schedulers(&self, n: u64, timeout: Duration) -> Result<()> {
        wait_for(&format!("{} to use {n} schedulers", self.host), timeout, || {
            self.schedulers() == Some(n)
        })
    }

    pub fn host_id(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.join("host-id"))?
            .trim()
            .to_string())
    }

    /// `damselfly get URL -o OUT [EXTRA...]` through this daemon, in the background.
    pub fn start_get(&self, lab: &Lab, bin: &Path, url: &str, out: &Path, extra: &[&str]) -> Result<Job> {
        let mut cmd = Command::new(bin);
        cmd.arg("get")
            .arg(url)
            .arg("-o")
            .arg(out)
            .arg("--socket")
            .arg(&self.socket)
            .args(extra);
        lab.start(&self.host, "get", &cmd)
    }
}
