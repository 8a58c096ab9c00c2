//! The scheduler's link to a manager: register, keep alive, apply the
//! cluster's settings as they change, report traffic.
//!
//! Every answer comes through [`damselfly_manager_client`], which caches it
//! on disk: a scheduler that starts while the manager is down registers from
//! its cache (or, with nothing cached, keeps retrying while it serves on its
//! own config), and one that loses the manager keeps what it last applied.

use crate::config::ManagerConfig;
use crate::metrics::Metrics;
use crate::schedule::Planner;
use damselfly_manager_client::{KeepaliveEnd, ManagerClient, Source};
use damselfly_proto::manager as pb;
use damselfly_service::shutdown::Shutdown;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// What the scheduler knows of its manager, for `/config`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManagerStatus {
    pub addr: String,
    pub instance_id: u64,
    pub cluster_id: u64,
    pub cluster_name: String,
    /// Version of the settings applied last (the cluster's update time).
    pub settings_version: i64,
    /// False until the first registration (live or cached) succeeded.
    pub registered: bool,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs until `shutdown`: registers, then keeps alive, follows settings and
/// reports traffic. Never fails: a missing manager only means "not yet".
pub async fn run(
    config: ManagerConfig,
    listen: SocketAddr,
    planner: Arc<Planner>,
    metrics: Metrics,
    status: Arc<Mutex<ManagerStatus>>,
    shutdown: Shutdown,
) {
    let client = match ManagerClient::with_token(
        &config.url(damselfly_service::tls::installed().is_some()),
        config.grpc_token.as_ref().map(|t| t.expose()),
        &config.cache_dir,
        config.timeout,
    ) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "manager link disabled");
            return;
        }
    };
    let req = pb::RegisterSchedulerRequest {
        hostname: hostname(&config),
        ip: advertise_ip(&config, listen),
        port: listen.port() as u32,
        idc: config.idc.clone(),
        location: config.location.clone(),
        cluster_id: config.cluster_id,
    };
    status.lock().expect("status lock").addr = config.url(damselfly_service::tls::installed().is_some());

    // Register (from the cache when the manager is down), retrying with backoff.
    let Some(registered) = register(&client, &req, false, &shutdown).await else {
        return;
    };
    let initial = registered.config.unwrap_or_default();
    {
        let mut s = status.lock().expect("status lock");
        s.instance_id = registered.instance_id;
        s.cluster_id = initial.cluster_id;
        s.registered = true;
    }
    apply(&planner, &status, &initial);

    // The registration in force: a new one (the manager forgot this instance,
    // e.g. its cluster was deleted) may put the scheduler in another cluster,
    // and the settings followed must then be that cluster's.
    let (registration_tx, registration) = tokio::sync::watch::channel(initial.clone());
    let keepalive = {
        let (client, stop, status) = (client.clone(), shutdown.clone(), status.clone());
        let (mut id, every) = (registered.instance_id, config.keepalive_interval);
        tokio::spawn(async move {
            loop {
                let until = stop.clone();
                match client
                    .keepalive(id, every, async move { until.wait().await })
                    .await
                {
                    KeepaliveEnd::Stopped => return,
                    // Deleted by an operator, or a new database: register again (live only).
                    KeepaliveEnd::UnknownInstance => {
                        let Some(r) = register(&client, &req, true, &stop).await else {
                            return;
                        };
                        id = r.instance_id;
                        let cfg = r.config.unwrap_or_default();
                        {
                            let mut s = status.lock().expect("status lock");
                            s.instance_id = id;
                            if s.cluster_id != cfg.cluster_id {
                                info!(
                                    from = s.cluster_id,
                                    to = cfg.cluster_id,
                                    "now in another scheduler cluster"
                                );
                            }
                            s.cluster_id = cfg.cluster_id;
                        }
                        registration_tx.send_replace(cfg);
                    }
                }
            }
        })
    };
    let settings = tokio::spawn(follow_settings(
        client.clone(),
        registration,
        config.refresh_interval,
        planner.clone(),
        status.clone(),
        shutdown.clone(),
    ));
    let traffic = {
        let (client, stop) = (client.clone(), shutdown.clone());
        let status = status.clone();
        let every = config.traffic_interval;
        tokio::spawn(async move {
            // Counters are cumulative; report what grew since the last report that got through.
            let (mut sent_source, mut sent_peers) = (0u64, 0u64);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                let (source, peers) = (metrics.bytes_from_source.get(), metrics.bytes_from_peers.get());
                if source == sent_source && peers == sent_peers {
                    continue;
                }
                let (cluster_id, instance_id) = {
                    let s = status.lock().expect("status lock");
                    (s.cluster_id, s.instance_id)
                };
                let report = pb::ReportTrafficRequest {
                    scheduler_cluster_id: cluster_id,
                    instance_id,
                    origin_bytes: source - sent_source,
                    peer_bytes: peers - sent_peers,
                    timestamp_ms: 0,
                };
                match client.report_traffic(report).await {
                    Ok(()) => (sent_source, sent_peers) = (source, peers),
                    Err(status) => {
                        tracing::debug!(%status, "traffic report not delivered; kept for the next one")
                    }
                }
            }
        })
    };
    let _ = tokio::join!(keepalive, settings, traffic);
}

/// Applies the settings of the cluster of the registration in force, polled
/// every `every`; when a new registration names another cluster, the old
/// cluster's poll stops and the new one's starts.
async fn follow_settings(
    client: ManagerClient,
    mut registration: tokio::sync::watch::Receiver<pb::SchedulerClusterConfig>,
    every: Duration,
    planner: Arc<Planner>,
    status: Arc<Mutex<ManagerStatus>>,
    stop: Shutdown,
) {
    let mut first = true;
    loop {
        let current = registration.borrow_and_update().clone();
        if !std::mem::take(&mut first) {
            apply(&planner, &status, &current); // the first one was applied at registration
        }
        // Dropping `rx` (on a new registration) ends its polling task.
        let mut rx = client.watch_scheduler_config(current.cluster_id, every, current);
        loop {
            tokio::select! {
                _ = stop.wait() => return,
                r = registration.changed() => {
                    if r.is_err() { return }
                    break;
                }
                changed = rx.changed() => {
                    if changed.is_err() { return }
                    let next = rx.borrow_and_update().clone();
                    apply(&planner, &status, &next);
                }
            }
        }
    }
}

/// Registers, retrying with backoff until it works or `shutdown`. With
/// `live_only`, an answer from the cache does not count (the cached instance
/// is the one the manager just said it does not know).
async fn register(
    client: &ManagerClient,
    req: &pb::RegisterSchedulerRequest,
    live_only: bool,
    shutdown: &Shutdown,
) -> Option<pb::RegisterSchedulerResponse> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.register_scheduler(req.clone()).await {
            Ok((r, Source::Live)) => {
                info!(instance = r.instance_id, "registered with the manager");
                return Some(r);
            }
            Ok((r, Source::Cache)) if !live_only => {
                info!(
                    instance = r.instance_id,
                    "manager unreachable; going on with the cached registration"
                );
                return Some(r);
            }
            Ok(_) => warn!("manager unreachable; registering again later"),
            Err(e) => warn!(error = %e, "could not register with the manager; retrying"),
        }
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Puts the cluster's parent limits into the planner (values the planner
/// refuses are logged and skipped).
pub fn apply(planner: &Planner, status: &Mutex<ManagerStatus>, c: &pb::SchedulerClusterConfig) {
    let mut s = status.lock().expect("status lock");
    s.cluster_name = c.cluster_name.clone();
    s.settings_version = c.version;
    let Some(settings) = &c.settings else { return };
    let (candidate, filter) = (
        settings.candidate_parent_limit as usize,
        settings.filter_parent_limit as usize,
    );
    if planner.set_limits(candidate, filter) {
        info!(
            cluster = c.cluster_id,
            version = c.version,
            candidate_parent_limit = candidate,
            filter_parent_limit = filter,
            "cluster settings applied"
        );
    } else {
        warn!(
            candidate,
            filter, "the manager sent parent limits out of range; keeping the current ones"
        );
    }
}

fn hostname(config: &ManagerConfig) -> String {
    if !config.hostname.is_empty() {
        return config.hostname.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "scheduler".into())
}

/// The configured address, else `listen`'s IP when it is a real one, else
/// the local address used to reach the manager, else loopback.
fn advertise_ip(config: &ManagerConfig, listen: SocketAddr) -> String {
    if !config.advertise_ip.is_empty() {
        return config.advertise_ip.clone();
    }
    if !listen.ip().is_unspecified() {
        return listen.ip().to_string();
    }
    url::Url::parse(&config.url(damselfly_service::tls::installed().is_some()))
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .and_then(|target| {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            sock.connect(target).ok()?;
            Some(sock.local_addr().ok()?.ip().to_string())
        })
        .unwrap_or_else(|| "127.0.0.1".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EvaluatorConfig;
    use crate::evaluator::DefaultEvaluator;

    #[test]
    fn settings_reach_the_planner_and_bad_ones_are_skipped() {
        let planner = Planner::new(
            Box::new(DefaultEvaluator {
                config: EvaluatorConfig::default(),
            }),
            EvaluatorConfig::default(),
        );
        let status = Mutex::new(ManagerStatus::default());
        let cfg = |candidate, filter, version| pb::SchedulerClusterConfig {
            cluster_id: 1,
            cluster_name: "default".into(),
            settings: Some(pb::ClusterSettings {
                candidate_parent_limit: candidate,
                filter_parent_limit: filter,
                ..Default::default()
            }),
            version,
        };
        apply(&planner, &status, &cfg(3, 30, 7));
        assert_eq!(planner.config().candidate_parent_limit, 3);
        assert_eq!(planner.config().filter_parent_limit, 30);
        assert_eq!(status.lock().unwrap().settings_version, 7);
        apply(&planner, &status, &cfg(0, 30, 8));
        assert_eq!(planner.config().candidate_parent_limit, 3);
    }
}
