//! The schedulers this peer works with, fixed or from the manager: one host
//! stream ([`announcer`]) per scheduler, and the list the [`Downloader`]
//! hashes new tasks over. When the list changes, streams to new schedulers
//! start and streams to dropped ones stop.

use crate::announcer;
use crate::config::PeerConfig;
use crate::download::{Downloader, SchedulerEndpoint};
use crate::error::Error;
use damselfly_manager_client::SessionKind;
use damselfly_proto::manager::ListSchedulersRequest;
use damselfly_proto::scheduler::HostInfo;
use damselfly_service::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Starts the host streams to the fixed `schedulers`, or to those the
/// manager names (then follows its answers, and keeps a session with the
/// manager for preheat work). Returns a flag per first scheduler that turns true once
/// its stream is up, and the tasks to await at shutdown.
pub async fn start(
    config: &PeerConfig,
    downloader: &Arc<Downloader>,
    info: &HostInfo,
    shutdown: &Shutdown,
) -> Result<(Vec<watch::Receiver<bool>>, Vec<JoinHandle<()>>), Error> {
    let mut set = Schedulers::new(downloader.clone(), info.clone(), shutdown.clone());
    let mut tasks = Vec::new();
    if !config.manager.enabled() {
        let announced = set.set(&config.schedulers)?;
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            stop.wait().await;
            drop(set);
        }));
        return Ok((announced, tasks));
    }
    let client = crate::manager::client(config)?;
    let req = ListSchedulersRequest {
        hostname: info.hostname.clone(),
        ip: info.ip.clone(),
        idc: config.idc.clone(),
        location: config.location.clone(),
    };
    let first = crate::manager::first_schedulers(&client, &req).await;
    crate::manager::apply_settings(&downloader.limits, &first);
    let announced = set.set(&crate::manager::scheduler_urls(&first))?;
    let rx = client.watch_schedulers(req, config.manager.refresh_interval, first);
    tasks.push(tokio::spawn(crate::manager::follow_schedulers(
        rx,
        set,
        downloader.limits.clone(),
        shutdown.clone(),
    )));
    // A seed peer's session takes preheat work from the origin; a peer's,
    // work from the mesh (preheat jobs with scope "every peer").
    let hello = crate::manager::seed_hello(config, info);
    let work = crate::manager::Preheat {
        downloader: downloader.clone(),
        seed: config.seed,
    };
    let kind = if config.seed {
        SessionKind::Seed
    } else {
        SessionKind::Peer
    };
    let (every, stop) = (config.manager.keepalive_interval, shutdown.clone());
    tasks.push(tokio::spawn(async move {
        client
            .session(kind, hello, every, work, async move { stop.wait().await })
            .await
    }));
    Ok((announced, tasks))
}

/// A lazily connected channel to one scheduler.
pub fn endpoint(addr: &str) -> Result<SchedulerEndpoint, Error> {
    let channel = damselfly_service::tls::endpoint(addr)
        .map_err(|e| Error::BadRequest(format!("scheduler address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = damselfly_service::tls::channel(
        channel,
        damselfly_service::tls::installed(),
        damselfly_service::tls::Role::Scheduler,
    );
    Ok(SchedulerEndpoint {
        addr: addr.to_string(),
        channel,
    })
}

struct Running {
    endpoint: SchedulerEndpoint,
    stream: JoinHandle<()>,
}

pub struct Schedulers {
    downloader: Arc<Downloader>,
    info: HostInfo,
    shutdown: Shutdown,
    running: BTreeMap<String, Running>,
}

impl Schedulers {
    pub fn new(downloader: Arc<Downloader>, info: HostInfo, shutdown: Shutdown) -> Self {
        Self {
            downloader,
            info,
            shutdown,
            running: BTreeMap::new(),
        }
    }

    /// Makes `addrs` the list. Returns, for each scheduler newly started, a
    /// flag that turns true once its host stream is up.
    pub fn set(&mut self, addrs: &[String]) -> Result<Vec<watch::Receiver<bool>>, Error> {
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|a| !addrs.contains(a))
            .cloned()
            .collect();
        for addr in gone {
            if let Some(r) = self.running.remove(&addr) {
                r.stream.abort();
                info!(scheduler = addr, "scheduler dropped from the list");
            }
        }
        let mut started = Vec::new();
        for addr in addrs {
            if self.running.contains_key(addr) {
                continue;
            }
            let ep = endpoint(addr)?;
            let (tx, rx) = watch::channel(false);
            let stream = tokio::spawn(announcer::run(
                ep.clone(),
                self.info.clone(),
                self.downloader.clone(),
                tx,
                self.shutdown.clone(),
            ));
            info!(scheduler = addr, "scheduler added to the list");
            self.running
                .insert(addr.clone(), Running { endpoint: ep, stream });
            started.push(rx);
        }
        self.downloader
            .set_schedulers(self.running.values().map(|r| r.endpoint.clone()).collect());
        Ok(started)
    }

    /// The scheduler addresses in the list now, sorted.
    pub fn addrs(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Stops every host stream.
    pub fn stop(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.stream.abort();
        }
    }
}

impl Drop for Schedulers {
    fn drop(&mut self) {
        self.stop();
    }
}
