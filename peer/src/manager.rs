//! The peer's link to a manager: which schedulers serve this peer (asked at
//! start and again every `refresh_interval`), and the session (a seed
//! peer's or a peer's) whose preheat work runs through the [`Downloader`].
//!
//! Answers are cached on disk under `DATA_DIR/manager` by
//! [`damselfly_manager_client`], so a peer that restarts while the manager is
//! down starts on the schedulers it last knew.

use crate::config::PeerConfig;
use crate::download::{self, Downloader, Request};
use crate::error::Error;
use crate::limits::Limits;
use crate::schedulers::Schedulers;
use damselfly_manager_client::{ManagerClient, PreheatWork, Source};
use damselfly_proto::manager as pb;
use damselfly_proto::scheduler::{HostInfo, TaskSpec};
use damselfly_proto::task_id::{Sha256Digest, task_id};
use damselfly_service::shutdown::Shutdown;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

/// The client for `config.manager` (its cache in `DATA_DIR/manager`).
pub fn client(config: &PeerConfig) -> Result<ManagerClient, Error> {
    let m = &config.manager;
    ManagerClient::with_token(
        &m.url(config.tls.enabled()),
        m.grpc_token.as_ref().map(|t| t.expose()),
        config.data_dir.join("manager"),
        m.timeout,
    )
    .map_err(|e| Error::BadRequest(format!("manager.addr: {e}")))
}

/// gRPC URLs of the schedulers in a `ListSchedulers` answer: `https://` when this process
/// runs with TLS ([`damselfly_service::tls::installed`]), else `http://`.
pub fn scheduler_urls(resp: &pb::ListSchedulersResponse) -> Vec<String> {
    urls_with_scheme(resp, damselfly_service::tls::installed().is_some())
}

fn urls_with_scheme(resp: &pb::ListSchedulersResponse, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    resp.schedulers
        .iter()
        .map(|s| {
            if s.ip.contains(':') {
                format!("{scheme}://[{}]:{}", s.ip, s.port)
            } else {
                format!("{scheme}://{}:{}", s.ip, s.port)
            }
        })
        .collect()
}

/// Asks which schedulers serve this host (live, else cached). With neither,
/// an empty list: downloads go to the origin until the manager answers.
pub async fn first_schedulers(
    client: &ManagerClient,
    req: &pb::ListSchedulersRequest,
) -> pb::ListSchedulersResponse {
    match client.list_schedulers(req.clone()).await {
        Ok((resp, source)) => {
            info!(
                cluster = resp.cluster_id,
                schedulers = resp.schedulers.len(),
                cached = source == Source::Cache,
                "schedulers from the manager"
            );
            resp
        }
        Err(e) => {
            warn!(error = %e, "no scheduler list yet; downloads go to the origin until the manager answers");
            pb::ListSchedulersResponse::default()
        }
    }
}

/// Applies the cluster's peer settings of an answer (refused ones are logged).
pub fn apply_settings(limits: &Limits, resp: &pb::ListSchedulersResponse) {
    let Some(s) = &resp.settings else { return };
    if limits.apply(s) {
        info!(
            cluster = resp.cluster_id,
            upload_concurrency = s.peer_upload_concurrency,
            download_concurrency = s.peer_download_concurrency,
            min_piece_length = s.min_piece_length,
            max_piece_length = s.max_piece_length,
            "cluster peer settings in force"
        );
    } else {
        warn!(
            cluster = resp.cluster_id,
            "the manager sent peer settings out of range; keeping the current ones"
        );
    }
}

/// Keeps `set` and `limits` in step with the manager's answers until shutdown.
pub async fn follow_schedulers(
    mut rx: watch::Receiver<pb::ListSchedulersResponse>,
    mut set: Schedulers,
    limits: Arc<Limits>,
    shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            changed = rx.changed() => if changed.is_err() { break },
        }
        let resp = rx.borrow_and_update().clone();
        apply_settings(&limits, &resp);
        let urls = scheduler_urls(&resp);
        let mut sorted = urls.clone();
        sorted.sort();
        if sorted == set.addrs() {
            continue; // only the settings changed
        }
        info!(?urls, "scheduler list changed");
        if let Err(e) = set.set(&urls) {
            warn!(error = %e, "the manager sent a scheduler address that is not usable");
        }
    }
    set.stop();
}

/// What a seed peer or peer tells the manager about itself when its session opens.
pub fn seed_hello(config: &PeerConfig, info: &HostInfo) -> pb::SeedPeerHello {
    pb::SeedPeerHello {
        hostname: info.hostname.clone(),
        ip: info.ip.clone(),
        port: info.piece_port,
        download_port: info.piece_port,
        idc: config.idc.clone(),
        location: config.location.clone(),
        seed_peer_cluster_id: config.manager.seed_peer_cluster_id,
    }
}

/// Runs preheat commands: on a seed peer as seed downloads (the origin once,
/// into this peer's store, announced to the task's scheduler as its source),
/// on a peer as ordinary downloads from the mesh.
pub struct Preheat {
    pub downloader: Arc<Downloader>,
    pub seed: bool,
}

/// The task spec of a preheat command: named by the blob digest when there
/// is one (as every peer names an OCI blob), else by the URL.
pub fn preheat_spec(cmd: &pb::PreheatCommand) -> Result<TaskSpec, String> {
    let digest = if cmd.digest.is_empty() {
        None
    } else {
        Some(Sha256Digest::parse(&cmd.digest)?)
    };
    Ok(TaskSpec {
        task_id: task_id(&cmd.url, digest.as_ref(), "", "")?,
        url: cmd.url.clone(),
        headers: cmd.headers.clone(),
        digest: digest.map(|d| d.to_string()).unwrap_or_default(),
        ..Default::default()
    })
}

impl PreheatWork for Preheat {
    async fn run(&self, cmd: pb::PreheatCommand) -> Result<u64, String> {
        let spec = preheat_spec(&cmd)?;
        info!(
            task_id = spec.task_id,
            job = cmd.job_id,
            seed = self.seed,
            "preheat"
        );
        let task = self
            .downloader
            .start(Request {
                spec,
                seed: self.seed,
            })
            .await
            .map_err(|e| e.to_string())?;
        download::wait(&task).await.map_err(|e| e.to_string())?;
        Ok(task
            .progress()
            .layout
            .map(|l| l.content_length)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preheat_tasks_are_named_like_every_other_download() {
        let hex = "ab".repeat(32);
        let cmd = pb::PreheatCommand {
            url: "http://reg:5000/v2/a/blobs/sha256:x".into(),
            digest: format!("sha256:{hex}"),
            ..Default::default()
        };
        let spec = preheat_spec(&cmd).unwrap();
        assert_eq!(spec.task_id, hex);
        assert_eq!(spec.digest, format!("sha256:{hex}"));
        let file = pb::PreheatCommand {
            url: "http://origin/f".into(),
            ..Default::default()
        };
        assert_eq!(
            preheat_spec(&file).unwrap().task_id,
            task_id("http://origin/f", None, "", "").unwrap()
        );
        let bad = pb::PreheatCommand {
            digest: "md5:1".into(),
            ..file
        };
        assert!(preheat_spec(&bad).is_err());
    }

    #[test]
    fn urls_of_schedulers() {
        let resp = pb::ListSchedulersResponse {
            schedulers: vec![
                pb::SchedulerInfo {
                    ip: "10.0.0.2".into(),
                    port: 8002,
                    ..Default::default()
                },
                pb::SchedulerInfo {
                    ip: "fd00::2".into(),
                    port: 8002,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            urls_with_scheme(&resp, false),
            vec!["http://10.0.0.2:8002", "http://[fd00::2]:8002"]
        );
        assert_eq!(
            urls_with_scheme(&resp, true),
            vec!["https://10.0.0.2:8002", "https://[fd00::2]:8002"]
        );
    }
}
