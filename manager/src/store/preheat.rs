//! Preheat jobs and their tasks (one per layer or URL and seed peer or peer).
//!
//! Life of a job: `pending` -> (one manager leases it and resolves the image
//! into layers, creating the tasks) -> `running` -> `succeeded` or `failed`.
//! Life of a task: `pending` -> (the manager its instance is connected to
//! leases it and sends it down the instance's stream) -> `running` ->
//! `succeeded`, or `failed`, or back to `pending` for another attempt.
//! A peer's task (scope `all_peers`) waits in `pending` until a seed task of
//! the same layer and scheduler cluster succeeded: the peer then fetches the
//! layer from the mesh, so the origin serves it once per cluster and the
//! peer needs no credentials. If every seed task of its layer failed, it fails.
//!
//! Every hand-over is one `UPDATE ... WHERE <still free>` whose affected-row
//! count says who won, so two managers on one PostgreSQL never run the same
//! job or task twice; a lease that expires (its manager died) frees the row.

use crate::auth::Principal;
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Error, Result};
use crate::seal::Sealer;
use damselfly_service::secret::{Secret, is_sensitive_header};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreheatKind {
    /// Image references: the manager resolves manifests into layers.
    #[default]
    Image,
    /// Plain URLs, downloaded as they are.
    File,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreheatScope {
    /// Every active seed peer of the chosen clusters downloads everything.
    #[default]
    AllSeedPeers,
    /// One seed peer per cluster (chosen by digest, so a layer lands where the scheduler looks first).
    SingleSeedPeer,
    /// Every peer: one seed peer per cluster fetches each layer from the
    /// origin, then every active peer of the cluster fetches it from the mesh.
    AllPeers,
}

/// Who runs a task: a seed peer fetches from the origin, a peer from the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRole {
    Seed,
    Peer,
}

impl TaskRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskRole::Seed => "seed",
            TaskRole::Peer => "peer",
        }
    }
}

/// A new preheat job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPreheatJob {
    #[serde(default)]
    pub kind: PreheatKind,
    /// Image references (`registry:5000/team/app:1.2`, `https://registry/team/app@sha256:...`)
    /// or, for `file`, http(s) URLs. 1..=100 entries.
    pub urls: Vec<String>,
    /// `os/arch[/variant]` picked from a multi-platform index (default from config).
    #[serde(default)]
    pub platform: Option<String>,
    /// Registry credentials for this job (default: from config).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub password: Option<Secret>,
    /// Extra request headers for `file` downloads.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Scheduler clusters whose seed peers preheat; empty means all clusters.
    #[serde(default)]
    pub scheduler_cluster_ids: Vec<i64>,
    #[serde(default)]
    pub scope: PreheatScope,
}

impl NewPreheatJob {
    pub fn validate(&self) -> Result<()> {
        if self.urls.is_empty() || self.urls.len() > 100 {
            return Err(Error::invalid("urls", "must list 1..=100 entries"));
        }
        for (i, u) in self.urls.iter().enumerate() {
            let field = format!("urls[{i}]");
            match self.kind {
                PreheatKind::Image => {
                    crate::registry::ImageRef::parse(u).map_err(|m| Error::invalid(field, m))?;
                }
                PreheatKind::File => {
                    let parsed = url::Url::parse(u).map_err(|e| Error::invalid(&field, e.to_string()))?;
                    if parsed.scheme() != "http" && parsed.scheme() != "https" {
                        return Err(Error::invalid(field, "must be an http(s) URL"));
                    }
                }
            }
        }
        if let Some(p) = &self.platform
            && !(2..=3).contains(&p.split('/').filter(|s| !s.is_empty()).count())
        {
            return Err(Error::invalid("platform", "must be os/arch or os/arch/variant"));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(Error::invalid("password", "username and password go together"));
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() || http::HeaderValue::from_str(v).is_err()
            {
                return Err(Error::invalid(format!("headers.{k}"), "not a valid HTTP header"));
            }
        }
        Ok(())
    }

    /// The spec as stored: the password and credential headers sealed.
    fn sealed(&self, s: &Sealer) -> NewPreheatJob {
        NewPreheatJob {
            password: self.password.as_ref().map(|p| Secret::new(s.seal(p.expose()))),
            headers: seal_headers(&self.headers, s),
            ..self.clone()
        }
    }

    /// The stored spec opened for the engine.
    fn opened(&self, s: &Sealer) -> Result<NewPreheatJob> {
        Ok(NewPreheatJob {
            password: match &self.password {
                Some(p) => Some(Secret::new(s.open(p.expose())?)),
                None => None,
            },
            headers: open_headers(&self.headers, s)?,
            ..self.clone()
        })
    }

    /// The spec with its secrets gone (a finished job keeps none).
    fn without_secrets(&self) -> NewPreheatJob {
        NewPreheatJob {
            password: None,
            headers: self
                .headers
                .iter()
                .filter(|(k, _)| !is_sensitive_header(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..self.clone()
        }
    }

    /// The spec as shown to API callers: secrets hidden.
    fn redacted(&self) -> PreheatSpecView {
        PreheatSpecView {
            kind: self.kind,
            urls: self.urls.clone(),
            platform: self.platform.clone(),
            username: self.username.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = if is_sensitive_header(k) {
                        "<redacted>".to_string()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            scheduler_cluster_ids: self.scheduler_cluster_ids.clone(),
            scope: self.scope,
        }
    }
}

/// Credential headers sealed, the others as they are.
fn seal_headers(h: &BTreeMap<String, String>, s: &Sealer) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| {
            let v = if is_sensitive_header(k) {
                s.seal(v)
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn open_headers(h: &BTreeMap<String, String>, s: &Sealer) -> Result<BTreeMap<String, String>> {
    h.iter().map(|(k, v)| Ok((k.clone(), s.open(v)?))).collect()
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PreheatSpecView {
    pub kind: PreheatKind,
    pub urls: Vec<String>,
    pub platform: Option<String>,
    pub username: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub scheduler_cluster_ids: Vec<i64>,
    pub scope: PreheatScope,
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Progress {
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PreheatTask {
    pub id: i64,
    pub url: String,
    pub digest: String,
    pub size: i64,
    /// `seed` (from the origin) or `peer` (from the mesh).
    pub role: String,
    /// The seed peer or peer that runs the task.
    pub seed_instance_id: i64,
    pub seed_hostname: String,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub state: String,
    pub attempts: i64,
    pub error: String,
    pub bytes: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PreheatJob {
    pub id: i64,
    /// `pending`, `running`, `succeeded` or `failed`.
    pub state: String,
    pub spec: PreheatSpecView,
    /// Why the job failed (which layers), empty otherwise.
    pub error: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    pub progress: Progress,
    /// Per layer and seed peer or peer (only in single-job answers).
    pub tasks: Vec<PreheatTask>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    pub state: Option<String>,
    /// 1..=500, default 100.
    pub limit: Option<i64>,
}

const JOB_COLS: &str = "id, kind, spec, state, error, created_by, created_at, updated_at, finished_at";

fn job_from(r: &AnyRow) -> (PreheatJob, NewPreheatJob) {
    let spec: NewPreheatJob = serde_json::from_str(&r.string("spec")).unwrap_or(NewPreheatJob {
        kind: PreheatKind::Image,
        urls: vec![],
        platform: None,
        username: None,
        password: None,
        headers: BTreeMap::new(),
        scheduler_cluster_ids: vec![],
        scope: PreheatScope::AllSeedPeers,
    });
    (
        PreheatJob {
            id: r.i64("id"),
            state: r.string("state"),
            spec: spec.redacted(),
            error: r.string("error"),
            created_by: r.string("created_by"),
            created_at: r.i64("created_at"),
            updated_at: r.i64("updated_at"),
            finished_at: r.opt_i64("finished_at"),
            progress: Progress::default(),
            tasks: vec![],
        },
        spec,
    )
}

pub async fn create(db: &Db, by: &Principal, new: NewPreheatJob) -> Result<PreheatJob> {
    new.validate()?;
    for (i, id) in new.scheduler_cluster_ids.iter().enumerate() {
        if let Err(Error::NotFound { .. }) = crate::store::clusters::get_scheduler_cluster(db, *id).await {
            return Err(Error::invalid(
                format!("scheduler_cluster_ids[{i}]"),
                "no such scheduler cluster",
            ));
        }
    }
    let now = now_ms();
    // The engine needs the password and credential headers until the job
    // ends: stored sealed, erased then.
    let spec = serde_json::to_string(&new.sealed(&db.sealer)).expect("serializable");
    let kind = match new.kind {
        PreheatKind::Image => "image",
        PreheatKind::File => "file",
    };
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO preheat_jobs (kind, spec, state, created_by, created_at, updated_at)
         VALUES ($1, $2, 'pending', $3, $4, $4) RETURNING id",
    )
    .bind(kind)
    .bind(spec)
    .bind(by.actor())
    .bind(now)
    .fetch_one(&db.pool)
    .await?;
    get(db, id).await
}

pub async fn list(db: &Db, q: &JobQuery) -> Result<Vec<PreheatJob>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Error::invalid("limit", "must be within 1..=500"));
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {JOB_COLS} FROM preheat_jobs WHERE ($1 = '' OR state = $1) ORDER BY id DESC LIMIT $2"
    )))
    .bind(q.state.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut jobs: Vec<PreheatJob> = rows.iter().map(|r| job_from(r).0).collect();
    for j in &mut jobs {
        j.progress = progress(db, j.id).await?;
    }
    Ok(jobs)
}

pub async fn get(db: &Db, id: i64) -> Result<PreheatJob> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {JOB_COLS} FROM preheat_jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found(format!("preheat job {id}")))?;
    let (mut job, _) = job_from(&row);
    job.progress = progress(db, id).await?;
    let rows = sqlx::query(
        "SELECT t.id, t.url, t.digest, t.size, t.role, t.seed_instance_id, COALESCE(i.hostname, '') AS seed_hostname,
                t.state, t.attempts, t.error, t.bytes, t.updated_at
         FROM preheat_tasks t LEFT JOIN instances i ON i.id = t.seed_instance_id
         WHERE t.job_id = $1 ORDER BY t.id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?;
    job.tasks = rows
        .iter()
        .map(|r| PreheatTask {
            id: r.i64("id"),
            url: r.string("url"),
            digest: r.string("digest"),
            size: r.i64("size"),
            role: r.string("role"),
            seed_instance_id: r.i64("seed_instance_id"),
            seed_hostname: r.string("seed_hostname"),
            state: r.string("state"),
            attempts: r.i64("attempts"),
            error: r.string("error"),
            bytes: r.i64("bytes"),
            updated_at: r.i64("updated_at"),
        })
        .collect();
    Ok(job)
}

async fn progress(db: &Db, job_id: i64) -> Result<Progress> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM preheat_tasks WHERE job_id = $1 GROUP BY state")
        .bind(job_id)
        .fetch_all(&db.pool)
        .await?;
    let mut p = Progress::default();
    for r in rows {
        let n = r.i64("n");
        p.total += n;
        match r.string("state").as_str() {
            "pending" => p.pending += n,
            "running" => p.running += n,
            "succeeded" => p.succeeded += n,
            _ => p.failed += n,
        }
    }
    Ok(p)
}

/// (state, count) over all jobs, for the metrics gauges.
pub async fn job_counts(db: &Db) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM preheat_jobs GROUP BY state")
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.iter().map(|r| (r.string("state"), r.i64("n"))).collect())
}

// ---- the engine's side ----------------------------------------------------

/// A job this manager now owns for resolution.
pub struct ClaimedJob {
    pub id: i64,
    pub spec: NewPreheatJob,
    pub attempts: i64,
}

/// Leases up to `limit` pending jobs whose lease is free.
pub async fn claim_jobs(db: &Db, owner: &str, lease_ms: i64, limit: i64) -> Result<Vec<ClaimedJob>> {
    let now = now_ms();
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM preheat_jobs WHERE state = 'pending' AND (lease_until IS NULL OR lease_until < $1)
         ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::new();
    for id in ids {
        let won = sqlx::query(
            "UPDATE preheat_jobs SET lease_owner = $1, lease_until = $2, attempts = attempts + 1, updated_at = $3
             WHERE id = $4 AND state = 'pending' AND (lease_until IS NULL OR lease_until < $3)",
        )
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?
        .rows_affected()
            == 1;
        if won {
            let row = sqlx::query("SELECT spec, attempts FROM preheat_jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await?;
            let spec = serde_json::from_str::<NewPreheatJob>(&row.string("spec"))
                .map_err(|e| Error::Internal(format!("preheat job {id} has an unreadable spec: {e}")))?
                .opened(&db.sealer)?;
            out.push(ClaimedJob {
                id,
                spec,
                attempts: row.i64("attempts"),
            });
        }
    }
    Ok(out)
}

/// One download to hand to one seed peer or peer.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub url: String,
    pub digest: String,
    pub size: i64,
    /// Empty of credentials for a peer's task.
    pub headers: BTreeMap<String, String>,
    pub role: TaskRole,
    pub instance_id: i64,
    pub scheduler_cluster_id: i64,
}

/// The job resolved: store its tasks and start it (only if we still own it).
pub async fn start_job(db: &Db, job_id: i64, owner: &str, tasks: &[NewTask]) -> Result<bool> {
    let now = now_ms();
    let mut tx = db.pool.begin().await?;
    let won = sqlx::query(
        "UPDATE preheat_jobs SET state = 'running', lease_owner = NULL, lease_until = NULL, updated_at = $1
         WHERE id = $2 AND state = 'pending' AND lease_owner = $3",
    )
    .bind(now)
    .bind(job_id)
    .bind(owner)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !won {
        tx.rollback().await?;
        return Ok(false);
    }
    for t in tasks {
        sqlx::query(
            "INSERT INTO preheat_tasks (job_id, url, digest, size, headers, seed_instance_id, role,
                                        scheduler_cluster_id, state, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $9)",
        )
        .bind(job_id)
        .bind(&t.url)
        .bind(&t.digest)
        .bind(t.size)
        .bind(serde_json::to_string(&seal_headers(&t.headers, &db.sealer)).expect("serializable"))
        .bind(t.instance_id)
        .bind(t.role.as_str())
        .bind(t.scheduler_cluster_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Resolution failed: try again after `retry_ms`, or fail the job for good.
pub async fn job_attempt_failed(
    db: &Db,
    job_id: i64,
    owner: &str,
    error: &str,
    give_up: bool,
    retry_ms: i64,
) -> Result<()> {
    let now = now_ms();
    if give_up {
        let ended = sqlx::query(
            "UPDATE preheat_jobs SET state = 'failed', error = $1, lease_owner = NULL, lease_until = NULL,
                    updated_at = $2, finished_at = $2
             WHERE id = $3 AND lease_owner = $4 AND state = 'pending'",
        )
        .bind(error)
        .bind(now)
        .bind(job_id)
        .bind(owner)
        .execute(&db.pool)
        .await?
        .rows_affected()
            == 1;
        if ended {
            erase_secrets(db, job_id).await?;
        }
    } else {
        sqlx::query(
            "UPDATE preheat_jobs SET error = $1, lease_until = $2, updated_at = $3
             WHERE id = $4 AND lease_owner = $5 AND state = 'pending'",
        )
        .bind(error)
        .bind(now + retry_ms)
        .bind(now)
        .bind(job_id)
        .bind(owner)
        .execute(&db.pool)
        .await?;
    }
    Ok(())
}

/// A task leased to this manager, ready to send down its instance's stream.
#[derive(Debug, Clone)]
pub struct DispatchTask {
    pub id: i64,
    pub job_id: i64,
    pub url: String,
    pub digest: String,
    pub headers: BTreeMap<String, String>,
    pub instance_id: i64,
}

/// A seed task of the same job, layer and scheduler cluster as the outer
/// `preheat_tasks` row, in one of `states` (an SQL list).
fn seed_of_layer(states: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM preheat_tasks s WHERE s.job_id = preheat_tasks.job_id AND s.url = preheat_tasks.url
                 AND s.scheduler_cluster_id = preheat_tasks.scheduler_cluster_id AND s.role = 'seed'
                 AND s.state IN ({states}))"
    )
}

/// Leases pending tasks of the given (locally connected) seed peers and
/// peers; a peer's task only once a seed of its cluster holds the layer.
pub async fn claim_tasks(
    db: &Db,
    owner: &str,
    instances: &[i64],
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<DispatchTask>> {
    let mut out = Vec::new();
    let select = format!(
        "SELECT id, job_id, url, digest, headers, seed_instance_id FROM preheat_tasks
         WHERE state = 'pending' AND seed_instance_id = $1 AND (lease_until IS NULL OR lease_until < $2)
               AND (role = 'seed' OR {})
         ORDER BY id LIMIT $3",
        seed_of_layer("'succeeded'")
    );
    for instance in instances {
        let now = now_ms();
        let rows = sqlx::query(AssertSqlSafe(select.clone()))
            .bind(*instance)
            .bind(now)
            .bind(limit)
            .fetch_all(&db.pool)
            .await?;
        for r in rows {
            let id = r.i64("id");
            let won = sqlx::query(
                "UPDATE preheat_tasks SET state = 'running', lease_owner = $1, lease_until = $2,
                        attempts = attempts + 1, updated_at = $3
                 WHERE id = $4 AND state = 'pending' AND (lease_until IS NULL OR lease_until < $3)",
            )
            .bind(owner)
            .bind(now + lease_ms)
            .bind(now)
            .bind(id)
            .execute(&db.pool)
            .await?
            .rows_affected()
                == 1;
            if won {
                out.push(DispatchTask {
                    id,
                    job_id: r.i64("job_id"),
                    url: r.string("url"),
                    digest: r.string("digest"),
                    headers: open_headers(
                        &serde_json::from_str(&r.string("headers")).unwrap_or_default(),
                        &db.sealer,
                    )?,
                    instance_id: r.i64("seed_instance_id"),
                });
            }
        }
    }
    Ok(out)
}

/// What a seed peer reported about a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskReport {
    Running,
    Succeeded,
    Failed,
}

/// How failed or slow tasks are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per task before it fails for good.
    pub max_attempts: i64,
    /// How far a progress report pushes the task's lease out.
    pub extend_ms: i64,
    /// How long a failed task waits before its next attempt.
    pub retry_ms: i64,
}

/// Applies a report. `seed` must be the task's seed peer or peer (one
/// cannot report for another). A failure is retried per `policy`.
pub async fn report_task(
    db: &Db,
    task_id: i64,
    seed: i64,
    report: TaskReport,
    bytes: i64,
    error: &str,
    policy: &RetryPolicy,
) -> Result<()> {
    let RetryPolicy {
        max_attempts,
        extend_ms,
        retry_ms,
    } = *policy;
    let now = now_ms();
    let q = match report {
        TaskReport::Running => sqlx::query(
            "UPDATE preheat_tasks SET bytes = $1, lease_until = $2, updated_at = $3
             WHERE id = $4 AND seed_instance_id = $5 AND state = 'running'",
        )
        .bind(bytes)
        .bind(now + extend_ms)
        .bind(now)
        .bind(task_id)
        .bind(seed),
        TaskReport::Succeeded => sqlx::query(
            "UPDATE preheat_tasks SET state = 'succeeded', bytes = $1, error = '', lease_owner = NULL,
                    lease_until = NULL, updated_at = $2
             WHERE id = $3 AND seed_instance_id = $4 AND state = 'running'",
        )
        .bind(bytes)
        .bind(now)
        .bind(task_id)
        .bind(seed),
        TaskReport::Failed => sqlx::query(
            "UPDATE preheat_tasks SET
                state = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
                error = $2, lease_owner = NULL, lease_until = $3, updated_at = $4
             WHERE id = $5 AND seed_instance_id = $6 AND state = 'running'",
        )
        .bind(max_attempts)
        .bind(error)
        .bind(now + retry_ms)
        .bind(now)
        .bind(task_id)
        .bind(seed),
    };
    let applied = q.execute(&db.pool).await?.rows_affected() == 1;
    if applied && report == TaskReport::Succeeded {
        // Peers waiting for this layer may run now: their wait for an
        // instance to take them starts afresh.
        sqlx::query(
            "UPDATE preheat_tasks SET updated_at = $1
             WHERE state = 'pending' AND role = 'peer' AND EXISTS (SELECT 1 FROM preheat_tasks s
                WHERE s.id = $2 AND s.role = 'seed' AND s.job_id = preheat_tasks.job_id AND s.url = preheat_tasks.url
                  AND s.scheduler_cluster_id = preheat_tasks.scheduler_cluster_id)",
        )
        .bind(now)
        .bind(task_id)
        .execute(&db.pool)
        .await?;
    }
    Ok(())
}

/// Housekeeping, safe from several managers: running tasks whose lease ran
/// out go back to pending (or fail after `max_attempts`); pending tasks no
/// instance took for `stale_ms` once they could run fail, and so do peers'
/// tasks whose layer no seed could fetch; running jobs with every task done
/// finish, naming the failed layers and where they failed.
pub async fn housekeeping(db: &Db, max_attempts: i64, stale_ms: i64) -> Result<()> {
    let now = now_ms();
    sqlx::query(
        "UPDATE preheat_tasks SET
            state = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END,
            error = 'the seed peer did not finish in time', lease_owner = NULL, lease_until = NULL, updated_at = $2
         WHERE state = 'running' AND lease_until < $2",
    )
    .bind(max_attempts)
    .bind(now)
    .execute(&db.pool)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE preheat_tasks SET state = 'failed', error = 'no connection to this instance; it is inactive', updated_at = $1
         WHERE state = 'pending' AND updated_at < $2 AND (role = 'seed' OR {})",
        seed_of_layer("'succeeded'")
    )))
    .bind(now)
    .bind(now - stale_ms)
    .execute(&db.pool)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE preheat_tasks SET state = 'failed', error = 'no seed peer of its cluster could fetch this layer', updated_at = $1
         WHERE state = 'pending' AND role = 'peer' AND NOT {}",
        seed_of_layer("'pending', 'running', 'succeeded'")
    )))
    .bind(now)
    .execute(&db.pool)
    .await?;
    let done: Vec<i64> = sqlx::query_scalar(
        "SELECT j.id FROM preheat_jobs j WHERE j.state = 'running' AND NOT EXISTS
            (SELECT 1 FROM preheat_tasks t WHERE t.job_id = j.id AND t.state IN ('pending', 'running'))",
    )
    .fetch_all(&db.pool)
    .await?;
    for id in done {
        let rows = sqlx::query(
            "SELECT t.digest, t.url, COALESCE(i.hostname, '') AS hostname
             FROM preheat_tasks t LEFT JOIN instances i ON i.id = t.seed_instance_id
             WHERE t.job_id = $1 AND t.state = 'failed' ORDER BY t.digest, t.url, hostname",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
        // layer -> the hosts it failed on
        let mut failed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &rows {
            let layer = Some(r.string("digest"))
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| r.string("url"));
            failed.entry(layer).or_default().push(r.string("hostname"));
        }
        let (state, error) = if failed.is_empty() {
            ("succeeded", String::new())
        } else {
            let list: Vec<String> = failed
                .iter()
                .map(|(layer, hosts)| format!("{layer} (on {})", hosts.join(", ")))
                .collect();
            (
                "failed",
                format!("{} layer(s) failed: {}", failed.len(), list.join(", ")),
            )
        };
        let ended = sqlx::query(
            "UPDATE preheat_jobs SET state = $1, error = $2, updated_at = $3, finished_at = $3
             WHERE id = $4 AND state = 'running'",
        )
        .bind(state)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?
        .rows_affected()
            == 1;
        if ended {
            erase_secrets(db, id).await?;
        }
    }
    Ok(())
}

/// A job has ended: its password and credential headers are no longer
/// needed, so they leave the database (sealed or not).
async fn erase_secrets(db: &Db, job_id: i64) -> Result<()> {
    let spec: Option<String> = sqlx::query_scalar("SELECT spec FROM preheat_jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&db.pool)
        .await?;
    if let Some(spec) = spec
        && let Ok(parsed) = serde_json::from_str::<NewPreheatJob>(&spec)
    {
        sqlx::query("UPDATE preheat_jobs SET spec = $1 WHERE id = $2")
            .bind(serde_json::to_string(&parsed.without_secrets()).expect("serializable"))
            .bind(job_id)
            .execute(&db.pool)
            .await?;
    }
    sqlx::query("UPDATE preheat_tasks SET headers = '{}' WHERE job_id = $1")
        .bind(job_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
