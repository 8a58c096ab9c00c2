//! Disturbances around each measured method (`--disturb`): how a method copes with a machine
//! that is busy with something else.
//!
//! - `bittorrent`: the bittorrent method runs first on the same lab and blob, not counted
//!   (it leaves its pages and sockets behind, as a previous download would);
//! - `dirty`: a file of `dirty_size` is written to the page cache, not synced, just before the
//!   method starts, so writeback of it overlaps the run;
//! - `disk`: a writer thread keeps rewriting a file of `disk_file_size` with buffered writes
//!   through the whole run. The file must be larger than the kernel's background dirty
//!   threshold (`vm.dirty_background_ratio` of memory), else its pages stay dirty in memory
//!   and rewriting them only costs CPU: the report has both the bytes written and the bytes
//!   the writer sent to storage (its `write_bytes` in `/proc`);
//! - `cpu`: one busy-looping `sh` per core (or `cpu_procs`) through the whole run.
//!
//! Spinners and writer run at nice `nice` (default 0: normal priority, even when the bench
//! itself is niced). [`Disturbances::stop`] ends them and removes their files; dropping
//! [`Disturbances`] does the same on an error or Ctrl-C, and the lab kills the spinners it
//! spawned when it is dropped.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use rustix::process::{Pid, setpriority_process};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::methods::BitTorrent;
use super::swarm::{self, ORIGIN, Swarm};
use super::units::Size;
use crate::data::ensure_space;
use crate::process::Proc;
use crate::wait::{check_interrupted, interrupted};

/// Writes go in chunks of this size.
const CHUNK: usize = 1 << 20;

/// A kind of disturbance, in the order they start (sorted, whatever the command line's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Bittorrent,
    Dirty,
    Disk,
    Cpu,
}

#[derive(Debug, Clone)]
pub struct DisturbConfig {
    pub kinds: Vec<Kind>,
    /// Spinner processes of `cpu` (0: one per core).
    pub cpu_procs: usize,
    /// Nice value of the spinners and the disk writer.
    pub nice: i32,
    /// Size of the file `disk` keeps rewriting from its start.
    pub disk_file_size: Size,
    /// Bytes `dirty` leaves in the page cache.
    pub dirty_size: Size,
}

/// One disturbance around one method: its settings and what it did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DisturbanceReport {
    pub kind: Kind,
    /// E.g. `processes` and `nice` for `cpu`, `bytes_written` for `disk`.
    pub params: BTreeMap<String, Value>,
}

/// The disturbances running around one method.
#[derive(Default)]
pub struct Disturbances {
    running: Vec<Running>,
}

impl Disturbances {
    /// Starts every kind in `config` (none: nothing); on an error, what already started is
    /// stopped.
    pub fn start(swarm: &Swarm, config: &DisturbConfig) -> Result<Disturbances> {
        let mut kinds = config.kinds.clone();
        kinds.sort();
        kinds.dedup();
        let mut files = 0;
        if kinds.contains(&Kind::Dirty) {
            files += config.dirty_size.0;
        }
        if kinds.contains(&Kind::Disk) {
            files += config.disk_file_size.0;
        }
        ensure_space(swarm.lab.dir(), files, "the disturbances' files")?;
        let mut started = Disturbances::default();
        for kind in kinds {
            check_interrupted()?;
            eprintln!("bench: disturb: {}", kind_name(kind));
            let running = match kind {
                Kind::Bittorrent => Running::bittorrent(swarm),
                Kind::Dirty => Running::dirty(&swarm.lab.dir().join("disturb-dirty"), config.dirty_size)?,
                Kind::Disk => Running::disk(&swarm.lab.dir().join("disturb-disk"), config)?,
                Kind::Cpu => Running::cpu(swarm, config)?,
            };
            started.running.push(running);
        }
        Ok(started)
    }

    /// Stops everything (last started first) and reports what each one did.
    pub fn stop(mut self) -> Vec<DisturbanceReport> {
        let mut reports: Vec<DisturbanceReport> = self
            .running
            .iter_mut()
            .rev()
            .map(|r| {
                r.finish();
                DisturbanceReport {
                    kind: r.kind,
                    params: std::mem::take(&mut r.params),
                }
            })
            .collect();
        reports.reverse();
        reports
    }
}

/// A started disturbance; [`Running::finish`] (or dropping it) ends it.
struct Running {
    kind: Kind,
    params: BTreeMap<String, Value>,
    spinners: Vec<Proc>,
    writer: Option<Writer>,
    /// Removed when the disturbance ends.
    file: Option<PathBuf>,
}

impl Running {
    fn new(kind: Kind, params: Value) -> Running {
        let params = match params {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Running {
            kind,
            params,
            spinners: Vec::new(),
            writer: None,
            file: None,
        }
    }

    /// The bittorrent method, measured as usual, its report dropped but for a summary.
    fn bittorrent(swarm: &Swarm) -> Running {
        let report = swarm::measure(swarm, &mut BitTorrent::default());
        let makespan = report.makespan_s.map(|s| (s * 100.0).round() / 100.0);
        let mut params = json!({ "ok": report.ok, "makespan_s": makespan });
        if let Some(error) = &report.error {
            params["error"] = json!(error.lines().next().unwrap_or(""));
        }
        Running::new(Kind::Bittorrent, params)
    }

    fn dirty(path: &Path, size: Size) -> Result<Running> {
        let mut running = Running::new(Kind::Dirty, json!({ "bytes": size.0 }));
        let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        running.file = Some(path.to_path_buf());
        let chunk = vec![0xa5u8; CHUNK];
        let mut left = size.0;
        while left > 0 {
            check_interrupted()?;
            let n = left.min(CHUNK as u64) as usize;
            file.write_all(&chunk[..n])
                .with_context(|| format!("write {}", path.display()))?;
            left -= n as u64;
        }
        // Not synced: the pages stay dirty until the kernel writes them back.
        if let Some(dirty) = proc_field_bytes("/proc/meminfo", "Dirty", 1024) {
            running
                .params
                .insert("machine_dirty_bytes_at_start".into(), json!(dirty));
        }
        Ok(running)
    }

    fn disk(path: &Path, config: &DisturbConfig) -> Result<Running> {
        let params = json!({ "file_size_bytes": config.disk_file_size.0, "nice": config.nice });
        let mut running = Running::new(Kind::Disk, params);
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        running.file = Some(path.to_path_buf());
        running.writer = Some(Writer::start(file, config.disk_file_size.0, config.nice)?);
        Ok(running)
    }

    fn cpu(swarm: &Swarm, config: &DisturbConfig) -> Result<Running> {
        let procs = match config.cpu_procs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let params = json!({ "processes": procs, "nice": config.nice });
        let mut running = Running::new(Kind::Cpu, params);
        let mut spin = Command::new("sh");
        spin.args(["-c", "while :; do :; done"]);
        for i in 0..procs {
            let proc = swarm.lab.spawn(ORIGIN, &format!("spinner{i}"), &spin)?;
            let pid = proc.pid();
            running.spinners.push(proc);
            set_nice(pid, config.nice)?;
        }
        Ok(running)
    }

    /// Kills the spinners, stops the writer (recording its bytes) and removes the file; safe
    /// to call twice.
    fn finish(&mut self) {
        for mut spinner in self.spinners.drain(..) {
            let _ = spinner.kill();
        }
        if let Some(writer) = self.writer.take() {
            match writer.stop() {
                Ok((written, to_storage)) => {
                    self.params.insert("bytes_written".into(), json!(written));
                    self.params.insert("bytes_to_storage".into(), json!(to_storage));
                }
                Err(e) => {
                    self.params.insert("error".into(), json!(format!("{e:#}")));
                }
            }
        }
        if let Some(file) = self.file.take() {
            let _ = fs::remove_file(file);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A thread that rewrites a file from its start, in chunks, with buffered writes (no sync),
/// until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    /// Ends with the bytes the thread sent to storage, if `/proc` says.
    thread: JoinHandle<std::io::Result<Option<u64>>>,
}

impl Writer {
    fn start(mut file: File, file_size: u64, nice: i32) -> Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (stop2, written2) = (Arc::clone(&stop), Arc::clone(&written));
        let thread = std::thread::Builder::new()
            .name("disturb-disk".into())
            .spawn(move || {
                // Linux nice values are per thread: `None` is this thread.
                setpriority_process(None, nice)?;
                let chunk = vec![0x5au8; CHUNK];
                let mut offset = 0;
                while !stop2.load(Ordering::Relaxed) && !interrupted() {
                    if offset >= file_size {
                        file.seek(SeekFrom::Start(0))?;
                        offset = 0;
                    }
                    file.write_all(&chunk)?;
                    offset += CHUNK as u64;
                    written2.fetch_add(CHUNK as u64, Ordering::Relaxed);
                }
                Ok(proc_field_bytes("/proc/thread-self/io", "write_bytes", 1))
            })
            .context("start the disk writer thread")?;
        Ok(Writer {
            stop,
            written,
            thread,
        })
    }

    /// Stops the thread; the bytes it wrote, and those it sent to storage.
    fn stop(self) -> Result<(u64, Option<u64>)> {
        self.stop.store(true, Ordering::Relaxed);
        let to_storage = self
            .thread
            .join()
            .map_err(|_| anyhow!("the disk writer panicked"))?
            .context("disk writer")?;
        Ok((self.written.load(Ordering::Relaxed), to_storage))
    }
}

fn set_nice(pid: u32, nice: i32) -> Result<()> {
    let id = i32::try_from(pid).ok().and_then(Pid::from_raw);
    setpriority_process(id, nice).with_context(|| format!("set nice {nice} on pid {pid}"))
}

/// The number after `field:` in a `/proc` file such as `meminfo`, times `unit` bytes.
fn proc_field_bytes(path: &str, field: &str, unit: u64) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let n: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(n * unit)
}

/// The kind as written on the command line.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Bittorrent => "bittorrent",
        Kind::Dirty => "dirty",
        Kind::Disk => "disk",
        Kind::Cpu => "cpu",
    }
}

impl DisturbanceReport {
    /// `cpu (nice 0, processes 2)`.
    pub fn summary(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{} {v}", k.replace('_', " ")))
            .collect();
        format!("{} ({})", kind_name(self.kind), params.join(", "))
    }
}
