//! Processes started in lab hosts: long-running daemons ([`Proc`]) and
//! clients run in the background ([`Job`]).
//!
//! Every pid a lab starts is recorded in its [`Registry`] until the handle
//! that owns the child has reaped it, so the lab can kill exactly what it
//! started (never anything by name) even when a test panics or a handle
//! leaks. Reaping and unregistering happen under the registry's lock, so a
//! pid is never signalled after it could have been reused.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::wait::{POLL_INTERVAL, check_interrupted};

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The pids a lab started and has not reaped yet, with a name for messages.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<u32, String>>>);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, String>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn add(&self, pid: u32, name: &str) {
        self.lock().insert(pid, name.to_string());
    }

    /// `try_wait` on `child` and, if it has exited, forget its pid, both
    /// under the lock.
    fn try_reap(&self, child: &mut Child) -> std::io::Result<Option<ExitStatus>> {
        let mut pids = self.lock();
        let status = child.try_wait()?;
        if status.is_some() {
            pids.remove(&child.id());
        }
        Ok(status)
    }

    /// Blocks until `child` has exited, reaping it like [`Self::try_reap`].
    fn reap(&self, child: &mut Child) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap(child)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to every registered pid.
    fn signal_all(&self, signal: Signal) {
        for pid in self.lock().keys() {
            send(*pid, signal);
        }
    }

    /// SIGTERM to everything, SIGKILL after `grace` to what still runs.
    pub(crate) fn stop_all(&self, grace: Duration) {
        self.signal_all(Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.lock().keys().any(|pid| alive(*pid)) {
            std::thread::sleep(POLL_INTERVAL);
        }
        self.signal_all(Signal::KILL);
    }
}

fn send(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // The process may have exited (it is then a zombie until reaped): ignore ESRCH.
        let _ = kill_process(pid, signal);
    }
}

/// SIGKILL to `pid`, ignoring errors.
pub(crate) fn kill_now(pid: u32) {
    send(pid, Signal::KILL);
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Peak resident set size (VmHWM) of a running process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// CPU seconds the whole machine has spent busy (all but idle and iowait).
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(busy as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// KiB of free guest memory the kernel has handed back to the hypervisor so far (virtio-balloon
/// free page reporting; `None` on a machine without it). Memory handed back costs a host page
/// fault on its next first touch: on the lab machine writing 2 GiB into fresh page cache took
/// 0.7 s of CPU with pages the guest kept and up to 5 s with pages it had handed back, so this
/// counter explains much of the run-to-run spread of a CPU-bound lab (ARCHITECTURE.md).
pub fn memory_reported_to_host_kib() -> Option<u64> {
    fs::read_to_string("/sys/module/page_reporting/parameters/reported_kib")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A daemon running in a lab host. Dropping it stops it (SIGTERM, then
/// SIGKILL after [`STOP_GRACE`]).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    registry: Registry,
    status: Option<ExitStatus>,
}

impl Proc {
    pub(crate) fn new(name: &str, child: Child, log: PathBuf, registry: Registry) -> Self {
        registry.add(child.id(), name);
        Self {
            name: name.to_string(),
            child,
            log,
            registry,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The file that receives the daemon's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The daemon's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    pub fn is_running(&self) -> bool {
        self.status.is_none() && alive(self.pid())
    }

    /// Peak resident set size so far (VmHWM), while the daemon runs.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        peak_rss_bytes(self.pid())
    }

    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid())
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_within(STOP_GRACE)
    }

    /// SIGKILL at once; returns the exit status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.stop_within(Duration::ZERO)
    }

    fn stop_within(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if self.registry.try_reap(&mut self.child)?.is_none() {
            send(
                self.pid(),
                if grace.is_zero() {
                    Signal::KILL
                } else {
                    Signal::TERM
                },
            );
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && alive(self.pid()) {
                std::thread::sleep(POLL_INTERVAL);
            }
            send(self.pid(), Signal::KILL);
        }
        let status = self
            .registry
            .reap(&mut self.child)
            .with_context(|| format!("wait for {}", self.name))?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How a background client ended.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub status: ExitStatus,
    pub started: Instant,
    /// When the job was first seen finished (within [`POLL_INTERVAL`]).
    pub finished: Instant,
    pub log: PathBuf,
}

impl JobResult {
    pub fn elapsed(&self) -> Duration {
        self.finished - self.started
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails with the job's exit status and the end of its output unless it
    /// exited 0.
    pub fn ensure_success(&self) -> Result<()> {
        if !self.success() {
            let output = fs::read_to_string(&self.log).unwrap_or_default();
            bail!("{} ({}):\n{}", self.status, self.log.display(), tail(&output, 20));
        }
        Ok(())
    }
}

/// A client started in the background in a lab host; its output goes to a
/// log file. Dropping an unfinished job kills it.
pub struct Job {
    name: String,
    child: Child,
    log: PathBuf,
    registry: Registry,
    started: Instant,
    result: Option<JobResult>,
}

impl Job {
    pub(crate) fn new(name: &str, child: Child, log: PathBuf, registry: Registry, started: Instant) -> Self {
        registry.add(child.id(), name);
        Self {
            name: name.to_string(),
            child,
            log,
            registry,
            started,
            result: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Checks without blocking; `Some` once the job has finished.
    pub fn poll(&mut self) -> Result<Option<&JobResult>> {
        if self.result.is_none()
            && let Some(status) = self.registry.try_reap(&mut self.child)?
        {
            self.result = Some(JobResult {
                status,
                started: self.started,
                finished: Instant::now(),
                log: self.log.clone(),
            });
        }
        Ok(self.result.as_ref())
    }

    /// Blocks until the job finishes, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<JobResult> {
        wait_all(std::slice::from_mut(self), timeout)?;
        Ok(self
            .result
            .clone()
            .expect("wait_all returns only when every job finished"))
    }

    /// Kills the job if it still runs and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if self.poll()?.is_none() {
            send(self.pid(), Signal::KILL);
            let status = self
                .registry
                .reap(&mut self.child)
                .with_context(|| format!("wait for {}", self.name))?;
            self.result = Some(JobResult {
                status,
                started: self.started,
                finished: Instant::now(),
                log: self.log.clone(),
            });
        }
        Ok(())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Waits until every job has finished, recording each one's finish time.
/// After `timeout` the unfinished jobs are killed and an error names them.
pub fn wait_all(jobs: &mut [Job], timeout: Duration) -> Result<Vec<JobResult>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for job in jobs.iter_mut() {
            if job.poll()?.is_none() {
                pending.push(job.name.clone());
            }
        }
        if pending.is_empty() {
            return Ok(jobs.iter().filter_map(|j| j.result.clone()).collect());
        }
        let expired = Instant::now() >= deadline;
        if expired || check_interrupted().is_err() {
            for job in jobs.iter_mut() {
                job.kill()?;
            }
            check_interrupted()?;
            bail!("timed out after {timeout:?} waiting for {}", pending.join(", "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
