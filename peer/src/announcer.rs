//! The host stream to each scheduler: says who this peer is, keeps saying it
//! is alive, lists the finished tasks it can serve, and takes seed triggers.
//! It reconnects with backoff for as long as the daemon runs.

use crate::download::{Downloader, Request, SchedulerEndpoint};
use crate::origin_policy::OriginPolicy;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    HostInfo, HostLoad, HostMessage, StoredTask, StoredTasks, host_command, host_message,
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
    let stored: Vec<StoredTask> = downloader
        .tasks
        .store
        .list()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.done)
        .map(|r| StoredTask {
            task_id: r.task_id,
            content_length: r.content_length,
            piece_length: r.piece_length,
        })
        .collect();
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
                Ok(Some(c)) => {
                    if let Some(host_command::Cmd::TicketKey(k)) = &c.cmd {
                        if !downloader.ticket_keys.trust(&k.public_key) {
                            warn!(scheduler = endpoint.addr, "the scheduler's ticket key is malformed");
                        }
                    } else if let Some(host_command::Cmd::SeedTask(seed)) = c.cmd
                        && let Some(spec) = seed.spec
                    {
                        info!(task_id = spec.task_id, "seed trigger");
                        let downloader = downloader.clone();
                        tokio::spawn(async move {
                            let policy = OriginPolicy::for_peer(&downloader.config);
                            let started = match policy.check(&spec.url).await {
                                Ok(()) => downloader.start(Request { spec, seed: true }),
                                Err(e) => Err(e),
                            };
                            if let Err(e) = started {
                                warn!(error = %e, "seed trigger refused or failed");
                            }
                        });
                    }
                }
                Ok(None) => return Err("scheduler closed the stream".into()),
                Err(s) => return Err(s.message().to_string()),
            }
        }
    }
}
