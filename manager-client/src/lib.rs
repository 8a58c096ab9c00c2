//! The manager as the other roles use it: every answer is cached on disk, so
//! a manager outage or restart changes nothing that runs.
//!
//! Each call asks the manager (with a timeout); on success the answer is
//! written to `cache_dir` (protobuf, written to a temp file and renamed, so a
//! crash never leaves half a file), and on failure the last cached answer is
//! returned instead, marked [`Source::Cache`]. Only when the manager is
//! unreachable *and* nothing was ever cached does a call fail.
//!
//! Long-lived streams reopen themselves (with backoff) whenever they break:
//! [`ManagerClient::keepalive`] for a scheduler, [`ManagerClient::seed_session`]
//! for a seed peer and [`ManagerClient::session`] for any peer (which also
//! run the preheat work the manager pushes).

use damselfly_proto::manager as pb;
use damselfly_proto::manager::manager_client::ManagerClient as Raw;
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Conn = InterceptedService<Channel, AuthHeader>;

/// Adds `authorization: Bearer <grpc_token>` when the manager wants one.
#[derive(Clone)]
pub struct AuthHeader(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for AuthHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Why [`ManagerClient::keepalive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveEnd {
    /// `stop` resolved.
    Stopped,
    /// The manager no longer knows the instance: register again.
    UnknownInstance,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Live,
    Cache,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("manager address {addr:?} is not valid: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the grpc token contains characters a header cannot carry")]
    Token,
    /// The manager refused the request itself (bad input, unknown id): the
    /// cache is not used, because retrying with an old answer would hide it.
    #[error("the manager refused {call}: {status}")]
    Refused {
        call: &'static str,
        status: tonic::Status,
    },
    /// Unreachable and nothing cached yet.
    #[error("the manager is unreachable for {call} ({status}) and no earlier answer is cached")]
    Unreachable {
        call: &'static str,
        status: tonic::Status,
    },
}

#[derive(Clone)]
pub struct ManagerClient {
    raw: Raw<Conn>,
    cache_dir: PathBuf,
    timeout: Duration,
}

/// Codes that mean "the manager could not answer", as opposed to "it said no".
fn is_outage(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted
    )
}

impl ManagerClient {
    /// `addr` like `http://10.0.0.5:65003`. Connects lazily: a manager that is
    /// down at start is not an error.
    pub fn new(addr: &str, cache_dir: impl Into<PathBuf>, timeout: Duration) -> Result<Self, Error> {
        Self::with_token(addr, None, cache_dir, timeout)
    }

    /// Like [`ManagerClient::new`], sending the manager's `grpc_token`.
    pub fn with_token(
        addr: &str,
        token: Option<&str>,
        cache_dir: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let header = match token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| Error::Token)?),
            None => None,
        };
        let endpoint = damselfly_service::tls::endpoint(addr)
            .map_err(|source| Error::Address {
                addr: addr.to_string(),
                source,
            })?
            // No per-request `timeout` here: it would also cut the long-lived
            // keepalive and seed streams (each unary call gets its own timeout).
            .connect_timeout(timeout);
        Ok(ManagerClient {
            raw: Raw::with_interceptor(
                damselfly_service::tls::channel(
                    endpoint,
                    damselfly_service::tls::installed(),
                    damselfly_service::tls::Role::Manager,
                ),
                AuthHeader(header),
            ),
            cache_dir: cache_dir.into(),
            timeout,
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.cache_dir.join(format!("{key}.pb"))
    }

    async fn cached<T, F, Fut>(&self, call: &'static str, key: String, ask: F) -> Result<(T, Source), Error>
    where
        T: Message + Default,
        F: FnOnce(Raw<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let answer = tokio::time::timeout(self.timeout, ask(self.raw.clone()))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("manager did not answer in time")));
        match answer {
            Ok(resp) => {
                let msg = resp.into_inner();
                if let Err(e) = write_atomic(&self.path(&key), &msg.encode_to_vec()).await {
                    tracing::warn!(error = %e, key, "could not cache the manager's answer");
                }
                Ok((msg, Source::Live))
            }
            Err(status) if is_outage(status.code()) => match tokio::fs::read(self.path(&key)).await {
                Ok(bytes) => match T::decode(bytes.as_slice()) {
                    Ok(msg) => {
                        tracing::debug!(call, %status, "manager unreachable; using the cached answer");
                        Ok((msg, Source::Cache))
                    }
                    Err(_) => Err(Error::Unreachable { call, status }),
                },
                Err(_) => Err(Error::Unreachable { call, status }),
            },
            Err(status) => Err(Error::Refused { call, status }),
        }
    }

    /// Registers a scheduler; when the manager is down, the last registration
    /// (instance id and cluster settings) is returned from the cache.
    pub async fn register_scheduler(
        &self,
        req: pb::RegisterSchedulerRequest,
    ) -> Result<(pb::RegisterSchedulerResponse, Source), Error> {
        self.cached(
            "RegisterScheduler",
            "register_scheduler".into(),
            |mut c| async move { c.register_scheduler(req).await },
        )
        .await
    }

    /// The dynamic settings of a scheduler cluster.
    pub async fn scheduler_cluster_config(
        &self,
        cluster_id: u64,
    ) -> Result<(pb::SchedulerClusterConfig, Source), Error> {
        self.cached(
            "GetSchedulerClusterConfig",
            format!("cluster_config-{cluster_id}"),
            |mut c| async move {
                c.get_scheduler_cluster_config(pb::GetSchedulerClusterConfigRequest { cluster_id })
                    .await
            },
        )
        .await
    }

    /// The schedulers that serve this peer.
    pub async fn list_schedulers(
        &self,
        req: pb::ListSchedulersRequest,
    ) -> Result<(pb::ListSchedulersResponse, Source), Error> {
        self.cached("ListSchedulers", "list_schedulers".into(), |mut c| async move {
            c.list_schedulers(req).await
        })
        .await
    }

    /// The active seed peers of a scheduler cluster.
    pub async fn list_seed_peers(
        &self,
        scheduler_cluster_id: u64,
    ) -> Result<(pb::ListSeedPeersResponse, Source), Error> {
        self.cached(
            "ListSeedPeers",
            format!("seed_peers-{scheduler_cluster_id}"),
            |mut c| async move {
                c.list_seed_peers(pb::ListSeedPeersRequest { scheduler_cluster_id })
                    .await
            },
        )
        .await
    }

    /// Best effort: traffic reports are not cached (a lost one only makes the chart thinner).
    pub async fn report_traffic(&self, req: pb::ReportTrafficRequest) -> Result<(), tonic::Status> {
        let mut c = self.raw.clone();
        tokio::time::timeout(self.timeout, c.report_traffic(req))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("manager did not answer in time"))?
            .map(|_| ())
    }

    /// Sends a keepalive for `instance_id` every `interval` until `stop`
    /// resolves, reopening the stream after errors (backoff up to 30 s).
    /// Returns early only when the manager no longer knows the instance
    /// (deleted by an operator, or a new database): register again then.
    pub async fn keepalive(
        &self,
        instance_id: u64,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> KeepaliveEnd {
        tokio::pin!(stop);
        let mut backoff = Duration::from_millis(200);
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut c = self.raw.clone();
            let mut call = tokio::spawn(async move {
                c.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            });
            let sender = async {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    if tx.send(pb::KeepAliveRequest { instance_id }).await.is_err() {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = &mut stop => {
                    call.abort();
                    return KeepaliveEnd::Stopped;
                }
                _ = sender => {}
                r = &mut call => {
                    match r {
                        Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                            tracing::warn!(instance_id, "the manager does not know this instance any more");
                            return KeepaliveEnd::UnknownInstance;
                        }
                        Ok(Err(status)) => tracing::debug!(%status, "keepalive stream ended; reopening"),
                        _ => tracing::debug!("keepalive stream ended; reopening"),
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return KeepaliveEnd::Stopped,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("pb.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// What a seed peer or peer does with one preheat command: fetch `url` (with
/// `headers`) into the mesh and return the bytes it took, or why it failed.
pub trait PreheatWork: Send + Sync + 'static {
    fn run(&self, cmd: pb::PreheatCommand) -> impl std::future::Future<Output = Result<u64, String>> + Send;
}

/// Which session a peer daemon keeps with the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// `SeedPeerSession`: preheat commands fetch from the origin.
    Seed,
    /// `PeerSession`: preheat commands fetch through the mesh.
    Peer,
}

impl ManagerClient {
    /// Runs a seed peer's session until `stop` resolves: registers with
    /// `hello`, sends a keepalive every `interval`, runs each preheat command
    /// with `work` (concurrently) and reports the result. Results that finish
    /// while the manager is unreachable are sent after the stream reopens.
    pub async fn seed_session<W: PreheatWork>(
        &self,
        hello: pb::SeedPeerHello,
        interval: Duration,
        work: W,
        stop: impl std::future::Future<Output = ()>,
    ) {
        self.session(SessionKind::Seed, hello, interval, work, stop).await
    }

    /// Runs a seed peer's or a peer's session (see [`ManagerClient::seed_session`]).
    pub async fn session<W: PreheatWork>(
        &self,
        kind: SessionKind,
        hello: pb::SeedPeerHello,
        interval: Duration,
        work: W,
        stop: impl std::future::Future<Output = ()>,
    ) {
        use pb::seed_peer_command::Command;
        use pb::seed_peer_message::Message as Msg;
        let work = std::sync::Arc::new(work);
        let (results_tx, mut results) = tokio::sync::mpsc::channel::<pb::PreheatProgress>(256);
        tokio::pin!(stop);
        let mut backoff = Duration::from_millis(200);
        loop {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::SeedPeerMessage>(64);
            let _ = tx
                .send(pb::SeedPeerMessage {
                    message: Some(Msg::Hello(hello.clone())),
                })
                .await;
            let mut c = self.raw.clone();
            let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
            let opened = tokio::select! {
                _ = &mut stop => return,
                r = async {
                    match kind {
                        SessionKind::Seed => c.seed_peer_session(outbound).await,
                        SessionKind::Peer => c.peer_session(outbound).await,
                    }
                } => r,
            };
            match opened {
                Ok(resp) => {
                    let mut inbound = resp.into_inner();
                    let mut tick = tokio::time::interval(interval);
                    loop {
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tick.tick() => {
                                let ka = pb::SeedPeerMessage { message: Some(Msg::Keepalive(pb::SeedPeerKeepAlive {})) };
                                if tx.send(ka).await.is_err() { break; }
                            }
                            Some(done) = results.recv() => {
                                if tx.send(pb::SeedPeerMessage { message: Some(Msg::Progress(done.clone())) }).await.is_err() {
                                    // Keep it for the next stream.
                                    let _ = results_tx.try_send(done);
                                    break;
                                }
                            }
                            msg = inbound.message() => match msg {
                                Ok(Some(pb::SeedPeerCommand { command: Some(Command::Welcome(w)) })) => {
                                    tracing::info!(instance = w.instance_id, ?kind, "session with the manager open");
                                    backoff = Duration::from_millis(200);
                                }
                                Ok(Some(pb::SeedPeerCommand { command: Some(Command::Preheat(cmd)) })) => {
                                    let (work, out) = (work.clone(), results_tx.clone());
                                    tokio::spawn(async move {
                                        let task_id = cmd.task_id;
                                        let (state, bytes, error) = match work.run(cmd).await {
                                            Ok(n) => (pb::preheat_progress::State::Succeeded, n, String::new()),
                                            Err(e) => (pb::preheat_progress::State::Failed, 0, e),
                                        };
                                        let _ = out.send(pb::PreheatProgress { task_id, state: state as i32, bytes, error }).await;
                                    });
                                }
                                Ok(Some(_)) => {}
                                Ok(None) => break,
                                Err(status) => {
                                    tracing::debug!(%status, "session with the manager ended");
                                    break;
                                }
                            },
                        }
                    }
                }
                Err(status) => tracing::debug!(%status, "session with the manager could not open"),
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

impl ManagerClient {
    /// Re-fetches the cluster's settings every `every` and publishes each
    /// change: a scheduler applies new settings within one interval, without
    /// a restart. The task ends when every receiver is dropped.
    pub fn watch_scheduler_config(
        &self,
        cluster_id: u64,
        every: Duration,
        initial: pb::SchedulerClusterConfig,
    ) -> tokio::sync::watch::Receiver<pb::SchedulerClusterConfig> {
        let me = self.clone();
        self.watch(initial, every, move || {
            let me = me.clone();
            async move { me.scheduler_cluster_config(cluster_id).await.ok().map(|(c, _)| c) }
        })
    }

    /// Re-asks which schedulers serve this peer every `every` and publishes
    /// each change (a scheduler that died drops out, a new one appears).
    pub fn watch_schedulers(
        &self,
        req: pb::ListSchedulersRequest,
        every: Duration,
        initial: pb::ListSchedulersResponse,
    ) -> tokio::sync::watch::Receiver<pb::ListSchedulersResponse> {
        let me = self.clone();
        self.watch(initial, every, move || {
            let (me, req) = (me.clone(), req.clone());
            async move { me.list_schedulers(req).await.ok().map(|(r, _)| r) }
        })
    }

    fn watch<T, F, Fut>(&self, initial: T, every: Duration, fetch: F) -> tokio::sync::watch::Receiver<T>
    where
        T: PartialEq + Send + Sync + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<T>> + Send,
    {
        let (tx, rx) = tokio::sync::watch::channel(initial);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Some(next) = fetch().await {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != next;
                        if changed {
                            *cur = next;
                        }
                        changed
                    });
                }
            }
        });
        rx
    }
}

/// The scheduler for a task, by rendezvous hashing of the task id over the
/// schedulers' addresses: every peer of one task picks the same scheduler,
/// and when one scheduler goes away only its own tasks move.
pub fn pick_scheduler<'a>(
    schedulers: &'a [pb::SchedulerInfo],
    task_id: &str,
) -> Option<&'a pb::SchedulerInfo> {
    schedulers
        .iter()
        .max_by_key(|s| fnv1a(format!("{task_id}|{}:{}", s.ip, s.port).as_bytes()))
}

/// FNV-1a 64 with a final avalanche (splitmix64), stable across versions and platforms.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(n: u32) -> pb::SchedulerInfo {
        pb::SchedulerInfo {
            id: n as u64,
            ip: format!("10.0.0.{n}"),
            port: 8002,
            ..Default::default()
        }
    }

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let all: Vec<_> = (1..=4).map(sched).collect();
        let tasks: Vec<String> = (0..2000).map(|i| format!("sha256:{i:064x}")).collect();
        let before: Vec<u64> = tasks
            .iter()
            .map(|t| pick_scheduler(&all, t).unwrap().id)
            .collect();
        for id in 1..=4 {
            let n = before.iter().filter(|x| **x == id).count();
            assert!((350..=650).contains(&n), "scheduler {id} got {n} of 2000");
        }
        // Scheduler 3 dies: only its tasks move.
        let rest: Vec<_> = all.iter().filter(|s| s.id != 3).cloned().collect();
        for (t, b) in tasks.iter().zip(&before) {
            let after = pick_scheduler(&rest, t).unwrap().id;
            if *b != 3 {
                assert_eq!(after, *b);
            }
        }
        assert!(pick_scheduler(&[], "x").is_none());
    }
}
