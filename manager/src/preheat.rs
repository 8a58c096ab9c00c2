//! The preheat engine: one loop per manager that resolves jobs into tasks and
//! hands tasks to the seed peers and peers connected here. All coordination goes
//! through leases in the database (see `store::preheat`), so any number of
//! managers can run this loop over one PostgreSQL.

use crate::Ctx;
use crate::error::{Error, Result};
use crate::registry::{Credentials, ImageRef, Resolver};
use crate::store::clusters;
use crate::store::instances;
use crate::store::preheat::{
    self, ClaimedJob, NewTask, PreheatKind, PreheatScope, RetryPolicy, TaskReport, TaskRole,
};
use damselfly_proto::manager as pb;
use damselfly_service::secret::is_sensitive_header;
use damselfly_service::shutdown::Shutdown;
use std::collections::{BTreeMap, BTreeSet};

pub async fn run(ctx: Ctx, shutdown: Shutdown) {
    let resolver = match Resolver::new(ctx.config.preheat.plain_http_registries.clone()) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            tracing::error!(error = %e, "preheat engine cannot start");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(ctx.config.preheat.poll_interval) => {}
            _ = ctx.wake.notified() => {}
        }
        if let Err(e) = step(&ctx, &resolver).await {
            tracing::warn!(error = %e, "preheat step failed; retrying");
        }
    }
}

pub fn retry_policy(ctx: &Ctx) -> RetryPolicy {
    let p = &ctx.config.preheat;
    RetryPolicy {
        max_attempts: p.max_attempts as i64,
        extend_ms: p.task_timeout.as_millis() as i64,
        retry_ms: (p.poll_interval.as_millis() as i64) * 2,
    }
}

/// One round: housekeeping, resolve claimed jobs (each in its own task, so a
/// slow registry delays only its job), dispatch tasks.
pub async fn step(ctx: &Ctx, resolver: &std::sync::Arc<Resolver>) -> Result<()> {
    let p = &ctx.config.preheat;
    preheat::housekeeping(&ctx.db, p.max_attempts as i64, p.task_timeout.as_millis() as i64).await?;
    let lease = p.lease.as_millis() as i64;
    for job in preheat::claim_jobs(&ctx.db, &ctx.owner, lease, 4).await? {
        let (ctx, resolver) = (ctx.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Err(e) = start(&ctx, &resolver, job).await {
                tracing::warn!(error = %e, "preheat job could not be started; its lease will expire and it is retried");
            }
        });
    }
    dispatch(ctx).await
}

/// Resolves one claimed job and starts it, or records the failed attempt.
async fn start(ctx: &Ctx, resolver: &Resolver, job: ClaimedJob) -> Result<()> {
    let p = &ctx.config.preheat;
    let (id, attempts) = (job.id, job.attempts);
    match resolve(ctx, resolver, &job).await {
        Ok(tasks) => {
            if preheat::start_job(&ctx.db, id, &ctx.owner, &tasks).await? {
                tracing::info!(job = id, tasks = tasks.len(), "preheat job started");
                ctx.wake.notify_one();
            }
        }
        Err(e) => {
            let give_up = attempts >= p.max_attempts as i64;
            tracing::warn!(job = id, attempt = attempts, give_up, error = %e, "preheat job could not be resolved");
            let retry = (p.poll_interval.as_millis() as i64) * 2;
            preheat::job_attempt_failed(&ctx.db, id, &ctx.owner, &e.to_string(), give_up, retry).await?;
        }
    }
    Ok(())
}

async fn resolve(ctx: &Ctx, resolver: &Resolver, job: &ClaimedJob) -> Result<Vec<NewTask>> {
    let spec = &job.spec;
    let p = &ctx.config.preheat;
    let mut blobs = Vec::new();
    match spec.kind {
        PreheatKind::Image => {
            let platform = spec.platform.clone().unwrap_or_else(|| p.platform.clone());
            for u in &spec.urls {
                let image = ImageRef::parse(u).map_err(|m| Error::invalid("urls", m))?;
                let creds = match (&spec.username, &spec.password) {
                    (Some(u), Some(pw)) => Some(Credentials {
                        username: u.clone(),
                        password: pw.clone(),
                    }),
                    _ => p
                        .registries
                        .iter()
                        .find(|r| r.host == image.registry || r.host == image.api_host())
                        .map(|r| Credentials {
                            username: r.username.clone(),
                            password: r.password.clone(),
                        }),
                };
                for l in resolver.layers(&image, &platform, creds.as_ref()).await? {
                    blobs.push((l.url, l.digest, l.size, l.headers));
                }
            }
        }
        PreheatKind::File => {
            for u in &spec.urls {
                blobs.push((u.clone(), String::new(), 0, spec.headers.clone()));
            }
        }
    }
    // Seed peers (and, for `all_peers`, peers) of the chosen clusters that are alive now.
    let cluster_ids: Vec<i64> = if spec.scheduler_cluster_ids.is_empty() {
        clusters::list_scheduler_clusters(&ctx.db)
            .await?
            .iter()
            .map(|c| c.id)
            .collect()
    } else {
        spec.scheduler_cluster_ids.clone()
    };
    let timeout = ctx.keepalive_timeout_ms();
    let mut per_cluster = Vec::new();
    for cid in cluster_ids {
        let seeds = instances::active_seed_peers(&ctx.db, cid, timeout).await?;
        if seeds.is_empty() {
            continue;
        }
        let peers = if spec.scope == PreheatScope::AllPeers {
            instances::active_in_cluster(&ctx.db, "peer", cid, timeout).await?
        } else {
            Vec::new()
        };
        per_cluster.push(Members {
            cluster_id: cid,
            seeds: seeds.into_iter().map(|s| s.id).collect(),
            peers: peers.into_iter().map(|p| p.id).collect(),
        });
    }
    if per_cluster.is_empty() {
        return Err(Error::Conflict(
            "no active seed peer in the chosen clusters".into(),
        ));
    }
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for (url, digest, size, headers) in blobs {
        if !seen.insert(url.clone()) {
            continue; // the same layer in two images: fetch once
        }
        // Peers fetch from the mesh by task id: they get no credentials.
        let peer_headers: BTreeMap<String, String> = headers
            .iter()
            .filter(|(k, _)| !is_sensitive_header(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for m in &per_cluster {
            let one_seed = || {
                let key = if digest.is_empty() { &url } else { &digest };
                let h = crate::auth::sha256(key);
                let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) as usize;
                vec![m.seeds[n % m.seeds.len()]]
            };
            let seeds: Vec<i64> = match spec.scope {
                PreheatScope::AllSeedPeers => m.seeds.clone(),
                // For every peer too: one seed takes the layer from the origin, once.
                PreheatScope::SingleSeedPeer | PreheatScope::AllPeers => one_seed(),
            };
            let task = |role, instance_id, headers: &BTreeMap<String, String>| NewTask {
                url: url.clone(),
                digest: digest.clone(),
                size,
                headers: headers.clone(),
                role,
                instance_id,
                scheduler_cluster_id: m.cluster_id,
            };
            tasks.extend(seeds.into_iter().map(|id| task(TaskRole::Seed, id, &headers)));
            tasks.extend(m.peers.iter().map(|id| task(TaskRole::Peer, *id, &peer_headers)));
        }
    }
    Ok(tasks)
}

/// The live members of one scheduler cluster a job reaches.
struct Members {
    cluster_id: i64,
    seeds: Vec<i64>,
    peers: Vec<i64>,
}

/// Leases pending tasks of locally connected seed peers and peers and sends them.
async fn dispatch(ctx: &Ctx) -> Result<()> {
    let seeds = ctx.hub.connected();
    if seeds.is_empty() {
        return Ok(());
    }
    let p = &ctx.config.preheat;
    let lease = p.task_timeout.as_millis() as i64;
    for t in preheat::claim_tasks(&ctx.db, &ctx.owner, &seeds, lease, 32).await? {
        let cmd = pb::SeedPeerCommand {
            command: Some(pb::seed_peer_command::Command::Preheat(pb::PreheatCommand {
                task_id: t.id as u64,
                job_id: t.job_id as u64,
                url: t.url.clone(),
                digest: t.digest.clone(),
                headers: t.headers.clone().into_iter().collect(),
            })),
        };
        let sent = match ctx.hub.sender(t.instance_id) {
            Some(tx) => tx.send(Ok(cmd)).await.is_ok(),
            None => false,
        };
        if sent {
            tracing::debug!(
                task = t.id,
                job = t.job_id,
                instance = t.instance_id,
                "preheat task sent"
            );
        } else {
            preheat::report_task(
                &ctx.db,
                t.id,
                t.instance_id,
                TaskReport::Failed,
                0,
                "the instance disconnected before the task was sent",
                &retry_policy(ctx),
            )
            .await?;
        }
    }
    Ok(())
}
