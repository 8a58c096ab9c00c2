//! A load generator for the scheduler alone: many simulated hosts and peers
//! over gRPC, no piece traffic.
//!
//! Simulated seed hosts answer `SeedTask` like a seed peer that already
//! holds the content: they register from source, report the layout and
//! every piece digest, and finish. Then every simulated peer registers on
//! its task, with a bounded number of registrations waiting for an answer
//! at once; a *decision* is the first `Parents` or `BackToSource` command a
//! peer receives, and its latency is measured from the moment its
//! `Register` was sent. All streams stay open until the end (a closed stream
//! makes the scheduler forget the peer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    Finished, HostInfo, HostMessage, PieceDigest, PiecesDone, Register, SourceInfo, TaskCommand, TaskMessage,
    TaskSpec, host_command, host_message, task_command, task_message,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for a connection, or for the answer to a stream's first message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams per HTTP/2 connection (servers commonly allow 100-200 at once).
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `http://IP:PORT` of the scheduler's gRPC endpoint.
    pub scheduler: String,
    pub peers: usize,
    pub tasks: usize,
    /// Simulated peer hosts (each peer of one task is on a different host).
    pub hosts: usize,
    pub seeds: usize,
    /// Registrations waiting for their decision at once.
    pub concurrency: usize,
    pub content_length: u64,
    pub piece_length: u32,
    /// Longest wait for one decision.
    pub timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            scheduler: "http://127.0.0.1:8002".to_string(),
            peers: 10_000,
            tasks: 100,
            hosts: 1_000,
            seeds: 4,
            concurrency: 500,
            content_length: 128 << 20,
            piece_length: 4 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub peers: usize,
    pub tasks: usize,
    pub hosts: usize,
    pub seeds: usize,
    pub concurrency: usize,
    /// Peers that got a decision.
    pub decisions: usize,
    /// Decisions that were an empty parent set.
    pub empty_parent_sets: usize,
    /// Decisions that sent the peer to the origin.
    pub back_to_source: usize,
    /// Seed triggers the simulated seeds received.
    pub seed_triggers: usize,
    /// Registrations that failed or got no decision in time.
    pub errors: usize,
    pub first_error: Option<String>,
    /// From the first Register sent to the last decision received.
    pub elapsed_s: f64,
    pub decisions_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Round-robin over a pool of connections.
struct Pool {
    channels: Vec<Channel>,
}

impl Pool {
    async fn connect(url: &str, connections: usize) -> Result<Pool> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections {
            let endpoint = Endpoint::from_shared(url.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(CONNECT_TIMEOUT);
            channels.push(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("connect to {url}"))?,
            );
        }
        Ok(Pool { channels })
    }

    fn client(&self, i: usize) -> SchedulerClient<Channel> {
        SchedulerClient::new(self.channels[i % self.channels.len()].clone())
    }
}

/// What one peer's registration produced.
enum Outcome {
    Decision {
        latency: Duration,
        at: Instant,
        empty: bool,
        back_to_source: bool,
    },
    Error(String),
}

pub async fn run(config: &LoadConfig) -> Result<LoadReport> {
    if config.tasks == 0 || config.peers < config.tasks || config.hosts < config.peers.div_ceil(config.tasks)
    {
        bail!("need tasks >= 1, peers >= tasks and hosts >= peers per task");
    }
    let streams = config.peers + config.hosts + 2 * config.seeds;
    let pool = Arc::new(Pool::connect(&config.scheduler, streams.div_ceil(STREAMS_PER_CONNECTION)).await?);

    let seed_triggers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut keep_alive = Vec::new();
    for i in 0..config.seeds {
        let (tx, handle) = announce_host(&pool, i, &format!("seed-{i}"), true).await?;
        keep_alive.push(tx);
        let (pool, config, triggers) = (pool.clone(), config.clone(), seed_triggers.clone());
        tokio::spawn(serve_seed(pool, config, format!("seed-{i}"), handle, triggers));
    }
    for i in 0..config.hosts {
        let (tx, mut commands) = announce_host(&pool, config.seeds + i, &format!("host-{i}"), false).await?;
        keep_alive.push(tx);
        tokio::spawn(async move { while let Ok(Some(_)) = commands.message().await {} });
    }

    let per_task = config.peers.div_ceil(config.tasks);
    let limit = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let started = Instant::now();
    let mut running = Vec::with_capacity(config.peers);
    // Interleave tasks, as many hosts pulling many images at once would.
    for round in 0..per_task {
        for task in 0..config.tasks {
            let k = round * config.tasks + task;
            if k >= config.peers {
                break;
            }
            let host = (task * per_task + round) % config.hosts;
            let permit = limit.clone().acquire_owned().await?;
            let (pool, config) = (pool.clone(), config.clone());
            running.push(tokio::spawn(async move {
                let result = register_peer(&pool, &config, k, task, host).await;
                drop(permit);
                result
            }));
        }
    }

    let mut latencies = Vec::with_capacity(config.peers);
    let (mut empty, mut back, mut errors, mut first_error, mut last) = (0, 0, 0, None, started);
    let mut streams_to_keep = Vec::with_capacity(config.peers);
    for handle in running {
        let (outcome, stream) = handle.await?;
        streams_to_keep.push(stream);
        match outcome {
            Outcome::Decision {
                latency,
                at,
                empty: e,
                back_to_source,
            } => {
                latencies.push(latency);
                last = last.max(at);
                empty += usize::from(e);
                back += usize::from(back_to_source);
            }
            Outcome::Error(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    latencies.sort();
    let elapsed = (last - started).as_secs_f64();
    let ms = |q: f64| percentile(&latencies, q).as_secs_f64() * 1e3;
    Ok(LoadReport {
        peers: config.peers,
        tasks: config.tasks,
        hosts: config.hosts,
        seeds: config.seeds,
        concurrency: config.concurrency,
        decisions: latencies.len(),
        empty_parent_sets: empty,
        back_to_source: back,
        seed_triggers: seed_triggers.load(std::sync::atomic::Ordering::Relaxed),
        errors,
        first_error,
        elapsed_s: elapsed,
        decisions_per_sec: if elapsed > 0.0 {
            latencies.len() as f64 / elapsed
        } else {
            0.0
        },
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    })
}

/// Opens a host stream with `hello`; the returned sender keeps it open.
async fn announce_host(
    pool: &Pool,
    index: usize,
    host_id: &str,
    seed: bool,
) -> Result<(
    mpsc::UnboundedSender<HostMessage>,
    Streaming<damselfly_proto::scheduler::HostCommand>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hello = HostInfo {
        host_id: host_id.to_string(),
        hostname: host_id.to_string(),
        ip: format!(
            "10.{}.{}.{}",
            100 + index / 65536,
            (index / 256) % 256,
            index % 256
        ),
        piece_port: 8001,
        seed,
        upload_slots: 8,
        ..Default::default()
    };
    tx.send(HostMessage {
        msg: Some(host_message::Msg::Hello(hello)),
    })?;
    let response = tokio::time::timeout(
        CONNECT_TIMEOUT,
        pool.client(index).announce_host(UnboundedReceiverStream::new(rx)),
    )
    .await
    .with_context(|| format!("announce host {host_id}: no answer within {CONNECT_TIMEOUT:?}"))?;
    let commands = response
        .with_context(|| format!("announce host {host_id}"))?
        .into_inner();
    Ok((tx, commands))
}

/// A seed that already holds every task: on `SeedTask` it registers from
/// source and reports the whole task at once.
async fn serve_seed(
    pool: Arc<Pool>,
    config: LoadConfig,
    host_id: String,
    mut commands: Streaming<damselfly_proto::scheduler::HostCommand>,
    triggers: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut open = Vec::new();
    while let Ok(Some(command)) = commands.message().await {
        let Some(host_command::Cmd::SeedTask(seed)) = command.cmd else {
            continue;
        };
        let Some(spec) = seed.spec else { continue };
        triggers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pieces = config.content_length.div_ceil(u64::from(config.piece_length)) as u32;
        let (tx, rx) = mpsc::unbounded_channel();
        let peer_id = format!("{host_id}/{}", spec.task_id);
        let messages = [
            task_message::Msg::Register(Register {
                host_id: host_id.clone(),
                peer_id,
                spec: Some(spec),
                from_source: true,
                ..Default::default()
            }),
            task_message::Msg::SourceInfo(SourceInfo {
                content_length: config.content_length,
                piece_length: config.piece_length,
            }),
            task_message::Msg::Pieces(PiecesDone {
                pieces: (0..pieces)
                    .map(|index| PieceDigest {
                        index,
                        sha256: vec![index as u8; 32],
                    })
                    .collect(),
                bytes_from_source: config.content_length,
                ..Default::default()
            }),
            task_message::Msg::Finished(Finished::default()),
        ];
        for msg in messages {
            let _ = tx.send(TaskMessage { msg: Some(msg) });
        }
        if let Ok(response) = pool
            .client(open.len())
            .announce_task(UnboundedReceiverStream::new(rx))
            .await
        {
            let mut replies = response.into_inner();
            tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
        }
        open.push(tx);
    }
}

/// Registers peer `k` of `task` on `host` and waits for its decision; the
/// returned sender keeps the peer's stream open.
async fn register_peer(
    pool: &Pool,
    config: &LoadConfig,
    k: usize,
    task: usize,
    host: usize,
) -> (Outcome, Option<mpsc::UnboundedSender<TaskMessage>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let url = format!("http://origin.invalid/blob-{task}");
    let spec = TaskSpec {
        task_id: damselfly_proto::task_id::task_id(&url, None, "", "").expect("a valid URL"),
        url,
        piece_length: config.piece_length,
        ..Default::default()
    };
    let register = Register {
        host_id: format!("host-{host}"),
        peer_id: format!("peer-{k}"),
        spec: Some(spec),
        ..Default::default()
    };
    let _ = tx.send(TaskMessage {
        msg: Some(task_message::Msg::Register(register)),
    });
    let sent = Instant::now();
    let response = match pool
        .client(k)
        .announce_task(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(response) => response,
        Err(status) => return (Outcome::Error(format!("register peer-{k}: {status}")), Some(tx)),
    };
    let mut replies = response.into_inner();
    let decision = tokio::time::timeout(config.timeout, first_decision(&mut replies)).await;
    let outcome = match decision {
        Ok(Ok(Some((empty, back_to_source)))) => {
            let at = Instant::now();
            Outcome::Decision {
                latency: at - sent,
                at,
                empty,
                back_to_source,
            }
        }
        Ok(Ok(None)) => Outcome::Error(format!("peer-{k}: stream ended without a decision")),
        Ok(Err(status)) => Outcome::Error(format!("peer-{k}: {status}")),
        Err(_) => Outcome::Error(format!("peer-{k}: no decision within {:?}", config.timeout)),
    };
    // Drain later commands (re-plans) so the scheduler's queue stays small.
    tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
    (outcome, Some(tx))
}

/// Waits for `Parents` (empty or not) or `BackToSource`.
async fn first_decision(replies: &mut Streaming<TaskCommand>) -> Result<Option<(bool, bool)>, tonic::Status> {
    while let Some(command) = replies.message().await? {
        match command.cmd {
            Some(task_command::Cmd::Parents(p)) => return Ok(Some((p.parents.is_empty(), false))),
            Some(task_command::Cmd::BackToSource(_)) => return Ok(Some((false, true))),
            _ => {}
        }
    }
    Ok(None)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
