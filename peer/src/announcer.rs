//! The host stream to each scheduler: says who this peer is, keeps saying it
//! is alive, lists the finished tasks it can serve, and takes seed triggers.
//! It reconnects with backoff for as long as the daemon runs.

use crate::download::{Downloader, Request, SchedulerEndpoint};
use crate::origin_policy::OriginPolicy;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    CacheTask, HostInfo, HostLoad, HostMessage, StoredTasks, TaskSpec, host_command, host_message,
};
use damselfly_service::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

const MAX_BACKOFF: Duration = Duration::from_secs(10);

fn msg(m: host_message::Msg) -> HostMessage {
    HostMessage { msg: Some(m) }
}

/// Runs until shutdown. `announced` turns true after the first successful hello.
pub async fn run(
    endpoint: SchedulerEndpoint,
    info: HostInfo,
    downloader: Arc<Downloader>,
    announced: watch::Sender<bool>,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            r = session(&endpoint, &info, &downloader, &announced) => r,
            _ = shutdown.wait() => return,
        };
        if let Err(e) = result {
            warn!(scheduler = endpoint.addr, error = %e, "scheduler host stream down; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    endpoint: &SchedulerEndpoint,
    info: &HostInfo,
    downloader: &Arc<Downloader>,
    announced: &watch::Sender<bool>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(msg(host_message::Msg::Hello(info.clone())))
        .await
        .map_err(|e| e.to_string())?;
    // Finished tasks, cache tasks with what the scheduler needs to keep them.
    let d = downloader.clone();
    let stored = crate::store::blocking(move || crate::cache::stored_tasks(&d, None))
        .await
        .map_err(|e| e.to_string())?;
    if !stored.is_empty() {
        tx.send(msg(host_message::Msg::Stored(StoredTasks { tasks: stored })))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut client = SchedulerClient::new(endpoint.channel.clone());
    let mut commands = client
        .announce_host(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    info!(scheduler = endpoint.addr, "announced to scheduler");
    announced.send_replace(true);
    let mut keepalive = tokio::time::interval(downloader.config.keepalive_interval);
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                let load = HostLoad {
                    active_uploads: downloader.metrics.active_uploads.get() as u32,
                    active_downloads: downloader.metrics.active_downloads.get() as u32,
                };
                tx.send(msg(host_message::Msg::Keepalive(load))).await.map_err(|e| e.to_string())?;
            }
            cmd = commands.message() => match cmd {
                Ok(Some(c)) => match c.cmd {
                    Some(host_command::Cmd::SeedTask(seed)) => if let Some(spec) = seed.spec {
                        // Through the mesh: the first requester is the source; this copy is an
                        // ordinary download, with no headers (it may still go back to source).
                        let from_origin = !seed.through_mesh;
                        info!(task_id = spec.task_id, from_origin, "seed trigger");
                        let spec = if from_origin {
                            crate::sealing::open_seed_task(
                                spec,
                                &downloader.host_id,
                                downloader.seal_key.as_ref(),
                            )
                        } else {
                            TaskSpec { headers: Default::default(), sealed_headers: Vec::new(), ..spec }
                        };
                        let downloader = downloader.clone();
                        tokio::spawn(async move {
                            let policy = OriginPolicy::for_peer(&downloader.config);
                            let started = match policy.check(&spec.url).await {
                                Ok(()) => downloader.start(Request { spec, seed: from_origin }).await,
                                Err(e) => Err(e),
                            };
                            if let Err(e) = started {
                                warn!(error = %e, "seed trigger refused or failed");
                            }
                        });
                    },
                    Some(host_command::Cmd::Replicate(r)) => {
                        if let (Some(spec), Some(cache)) = (r.spec, r.cache) {
                            replicate(downloader, spec, cache, tx.clone());
                        }
                    }
                    Some(host_command::Cmd::DeleteTask(del)) => {
                        let d = downloader.clone();
                        tokio::task::spawn_blocking(move || {
                            if let Err(e) = crate::cache::delete_local(&d, &del.task_id) {
                                warn!(task_id = del.task_id, error = %e, "cannot drop the task");
                            }
                        });
                    }
                    Some(host_command::Cmd::TicketKey(k)) if !downloader.ticket_keys.trust(&k.public_key) => {
                        warn!(scheduler = endpoint.addr, "the scheduler's ticket key is malformed");
                    }
                    Some(host_command::Cmd::TicketKey(_)) => {}
                    Some(host_command::Cmd::SeedKeys(k)) => downloader.seed_keys.set(&endpoint.addr, k.keys),
                    None => {}
                },
                Ok(None) => return Err("scheduler closed the stream".into()),
                Err(s) => return Err(s.message().to_string()),
            }
        }
    }
}

/// Fetches a replica the scheduler placed here, then announces it on the host stream.
fn replicate(downloader: &Arc<Downloader>, spec: TaskSpec, cache: CacheTask, tx: mpsc::Sender<HostMessage>) {
    info!(task_id = spec.task_id, id = cache.id, "cache replica placed here");
    let downloader = downloader.clone();
    tokio::spawn(async move {
        match crate::cache::replicate(&downloader, spec, cache).await {
            Ok(stored) => {
                let _ = tx
                    .send(msg(host_message::Msg::Stored(StoredTasks {
                        tasks: vec![stored],
                    })))
                    .await;
            }
            Err(e) => warn!(error = %e, "cache replica not fetched"),
        }
    });
}
