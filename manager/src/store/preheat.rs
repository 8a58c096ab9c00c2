//! Preheat jobs and their tasks (one per layer or URL and seed peer).
//!
//! Life of a job: `pending` -> (one manager leases it and resolves the image
//! into layers, creating the tasks) -> `running` -> `succeeded` or `failed`.
//! Life of a task: `pending` -> (the manager its seed peer is connected to
//! leases it and sends it down the seed's stream) -> `running` ->
//! `succeeded`, or `failed`, or back to `pending` for another attempt.
//!
//! Every hand-over is one `UPDATE ... WHERE <still free>` whose affected-row
//! count says who won, so two managers on one PostgreSQL never run the same
//! job or task twice; a lease that expires (its manager died) frees the row.

use crate::auth::Principal;
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Error, Result};
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
    /// Per layer and seed peer (only in single-job answers).
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
    // With the password: the engine needs it (`Secret` serializes as the plain string).
    let spec = serde_json::to_string(&new).expect("serializable");
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
        "SELECT t.id, t.url, t.digest, t.size, t.seed_instance_id, COALESCE(i.hostname, '') AS seed_hostname,
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
            let spec = serde_json::from_str(&row.string("spec"))
                .map_err(|e| Error::Internal(format!("preheat job {id} has an unreadable spec: {e}")))?;
            out.push(ClaimedJob {
                id,
                spec,
                attempts: row.i64("attempts"),
            });
        }
    }
    Ok(out)
}

/// One download to hand to one seed peer.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub url: String,
    pub digest: String,
    pub size: i64,
    pub headers: BTreeMap<String, String>,
    pub seed_instance_id: i64,
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
            "INSERT INTO preheat_tasks (job_id, url, digest, size, headers, seed_instance_id, state, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)",
        )
        .bind(job_id)
        .bind(&t.url)
        .bind(&t.digest)
        .bind(t.size)
        .bind(serde_json::to_string(&t.headers).expect("serializable"))
        .bind(t.seed_instance_id)
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
        sqlx::query(
            "UPDATE preheat_jobs SET state = 'failed', error = $1, lease_owner = NULL, lease_until = NULL,
                    updated_at = $2, finished_at = $2
             WHERE id = $3 AND lease_owner = $4 AND state = 'pending'",
        )
        .bind(error)
        .bind(now)
        .bind(job_id)
        .bind(owner)
        .execute(&db.pool)
        .await?;
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

/// A task leased to this manager, ready to send down its seed's stream.
#[derive(Debug, Clone)]
pub struct DispatchTask {
    pub id: i64,
    pub job_id: i64,
    pub url: String,
    pub digest: String,
    pub headers: BTreeMap<String, String>,
    pub seed_instance_id: i64,
}

/// Leases pending tasks of the given (locally connected) seed peers.
pub async fn claim_tasks(
    db: &Db,
    owner: &str,
    seeds: &[i64],
    lease_ms: i64,
    limit: i64,
) -> Result<Vec<DispatchTask>> {
    let mut out = Vec::new();
    for seed in seeds {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT id, job_id, url, digest, headers, seed_instance_id FROM preheat_tasks
             WHERE state = 'pending' AND seed_instance_id = $1 AND (lease_until IS NULL OR lease_until < $2)
             ORDER BY id LIMIT $3",
        )
        .bind(*seed)
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
                    headers: serde_json::from_str(&r.string("headers")).unwrap_or_default(),
                    seed_instance_id: r.i64("seed_instance_id"),
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

/// Applies a seed's report. `seed` must be the task's seed peer (a seed
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
    q.execute(&db.pool).await?;
    Ok(())
}

/// Housekeeping, safe from several managers: running tasks whose lease ran
/// out go back to pending (or fail after `max_attempts`); pending tasks no
/// seed took for `stale_ms` fail; running jobs with every task done finish.
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
    sqlx::query(
        "UPDATE preheat_tasks SET state = 'failed', error = 'no connection to this seed peer; it is inactive', updated_at = $1
         WHERE state = 'pending' AND updated_at < $2",
    )
    .bind(now)
    .bind(now - stale_ms)
    .execute(&db.pool)
    .await?;
    let done: Vec<i64> = sqlx::query_scalar(
        "SELECT j.id FROM preheat_jobs j WHERE j.state = 'running' AND NOT EXISTS
            (SELECT 1 FROM preheat_tasks t WHERE t.job_id = j.id AND t.state IN ('pending', 'running'))",
    )
    .fetch_all(&db.pool)
    .await?;
    for id in done {
        let failed: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT digest FROM preheat_tasks WHERE job_id = $1 AND state = 'failed' ORDER BY digest",
        )
        .bind(id)
        .fetch_all(&db.pool)
        .await?;
        let (state, error) = if failed.is_empty() {
            ("succeeded", String::new())
        } else {
            (
                "failed",
                format!("{} layer(s) failed: {}", failed.len(), failed.join(", ")),
            )
        };
        sqlx::query(
            "UPDATE preheat_jobs SET state = $1, error = $2, updated_at = $3, finished_at = $3
             WHERE id = $4 AND state = 'running'",
        )
        .bind(state)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    }
    Ok(())
}
