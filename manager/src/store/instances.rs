//! Schedulers and seed peers that registered, with their liveness.
//!
//! An instance is `active` while keepalives arrive; the sweeper turns it
//! `inactive` once `keepalive_timeout` passes without one (or its stream
//! closes), and the next keepalive turns it `active` again. Queries that hand
//! instances to others also check the keepalive time themselves, so a manager
//! whose sweeper lags never hands out a dead instance.

use crate::db::{Db, RowExt, now_ms};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceKind {
    Scheduler,
    SeedPeer,
    /// A peer that is not a seed: it registers only so that preheat jobs
    /// with scope `all_peers` can reach it.
    Peer,
}

impl InstanceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Scheduler => "scheduler",
            InstanceKind::SeedPeer => "seed_peer",
            InstanceKind::Peer => "peer",
        }
    }
    fn parse(s: &str) -> InstanceKind {
        match s {
            "scheduler" => InstanceKind::Scheduler,
            "peer" => InstanceKind::Peer,
            _ => InstanceKind::SeedPeer,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Instance {
    pub id: i64,
    pub kind: InstanceKind,
    pub hostname: String,
    pub ip: String,
    /// gRPC port (scheduler) or piece/upload port (seed peer).
    pub port: i64,
    pub download_port: i64,
    pub idc: String,
    pub location: String,
    /// Scheduler cluster id for schedulers and peers, seed peer cluster id for seed peers.
    pub cluster_id: i64,
    /// `active` or `inactive`.
    pub state: String,
    pub last_keepalive_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an instance says when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub kind: InstanceKind,
    pub hostname: String,
    pub ip: String,
    pub port: i64,
    pub download_port: i64,
    pub idc: String,
    pub location: String,
    pub cluster_id: i64,
    /// The registering certificate's subject id (mutual TLS), empty without TLS. An instance
    /// owned by one certificate is not registered again by another.
    pub owner: String,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceFilter {
    /// `scheduler`, `seed_peer` or `peer`.
    pub kind: Option<String>,
    /// `active` or `inactive`.
    pub state: Option<String>,
    pub cluster_id: Option<i64>,
}

const COLS: &str = "id, kind, hostname, ip, port, download_port, idc, location, cluster_id, state, last_keepalive_at, created_at, updated_at";

fn from_row(r: &AnyRow) -> Instance {
    Instance {
        id: r.i64("id"),
        kind: InstanceKind::parse(&r.string("kind")),
        hostname: r.string("hostname"),
        ip: r.string("ip"),
        port: r.i64("port"),
        download_port: r.i64("download_port"),
        idc: r.string("idc"),
        location: r.string("location"),
        cluster_id: r.i64("cluster_id"),
        state: r.string("state"),
        last_keepalive_at: r.i64("last_keepalive_at"),
        created_at: r.i64("created_at"),
        updated_at: r.i64("updated_at"),
    }
}

pub fn validate_registration(r: &Registration) -> Result<()> {
    if r.hostname.is_empty() || r.hostname.len() > 253 || r.hostname.chars().any(|c| c.is_control()) {
        return Err(Error::invalid("hostname", "must be 1..=253 characters"));
    }
    if r.ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Error::invalid("ip", "must be an IP address"));
    }
    if !(1..=65535).contains(&r.port) {
        return Err(Error::invalid("port", "must be within 1..=65535"));
    }
    if !(0..=65535).contains(&r.download_port) {
        return Err(Error::invalid("download_port", "must be within 0..=65535"));
    }
    if r.idc.len() > 253 || r.location.len() > 1024 {
        return Err(Error::invalid("idc", "too long"));
    }
    Ok(())
}

/// Creates or refreshes the instance; it is active from now on.
pub async fn register(db: &Db, r: &Registration) -> Result<Instance> {
    validate_registration(r)?;
    let now = now_ms();
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO instances (kind, hostname, ip, port, download_port, idc, location, cluster_id, state,
                                last_keepalive_at, created_at, updated_at, owner)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9, $9, $9, $10)
         ON CONFLICT (kind, hostname, ip, cluster_id) DO UPDATE SET
            port = excluded.port, download_port = excluded.download_port, idc = excluded.idc,
            location = excluded.location, state = 'active', last_keepalive_at = excluded.last_keepalive_at,
            updated_at = excluded.updated_at, owner = excluded.owner
         WHERE instances.owner = '' OR instances.owner = excluded.owner
         RETURNING id",
    )
    .bind(r.kind.as_str())
    .bind(&r.hostname)
    .bind(&r.ip)
    .bind(r.port)
    .bind(r.download_port)
    .bind(&r.idc)
    .bind(&r.location)
    .bind(r.cluster_id)
    .bind(now)
    .bind(&r.owner)
    .fetch_optional(&db.pool)
    .await?;
    let id = id.ok_or_else(|| {
        Error::Forbidden(format!(
            "{} {} at {} is registered by another certificate",
            r.kind.as_str(),
            r.hostname,
            r.ip
        ))
    })?;
    get(db, id).await
}

/// Checks that the instance `id` is of `kind` and registered by `owner` (a certificate's
/// subject id; `None` without TLS, which checks only that it exists).
pub async fn check_owner(db: &Db, id: i64, kind: InstanceKind, owner: Option<&str>) -> Result<()> {
    let row: Option<(String, String)> = sqlx::query_as("SELECT kind, owner FROM instances WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    let (got_kind, got_owner) = row.ok_or_else(|| Error::not_found(format!("instance {id}")))?;
    let Some(owner) = owner else { return Ok(()) };
    if got_kind != kind.as_str() || got_owner != owner {
        return Err(Error::Forbidden(format!(
            "instance {id} is not a {} registered by this certificate",
            kind.as_str()
        )));
    }
    Ok(())
}

pub async fn get(db: &Db, id: i64) -> Result<Instance> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLS} FROM instances WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found(format!("instance {id}")))?;
    Ok(from_row(&row))
}

/// Records a keepalive. Returns whether the instance was inactive before (it came back).
pub async fn keepalive(db: &Db, id: i64) -> Result<bool> {
    let now = now_ms();
    let came_back = sqlx::query(
        "UPDATE instances SET state = 'active', last_keepalive_at = $1, updated_at = $1
         WHERE id = $2 AND state <> 'active'",
    )
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await?
    .rows_affected()
        > 0;
    if !came_back {
        let n = sqlx::query("UPDATE instances SET last_keepalive_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&db.pool)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found(format!("instance {id}")));
        }
    }
    Ok(came_back)
}

pub async fn mark_inactive(db: &Db, id: i64) -> Result<()> {
    sqlx::query("UPDATE instances SET state = 'inactive', updated_at = $1 WHERE id = $2")
        .bind(now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// Turns instances silent for longer than `timeout_ms` inactive; returns how many.
pub async fn sweep(db: &Db, timeout_ms: i64) -> Result<u64> {
    let now = now_ms();
    Ok(sqlx::query(
        "UPDATE instances SET state = 'inactive', updated_at = $1 WHERE state = 'active' AND last_keepalive_at < $2",
    )
    .bind(now)
    .bind(now - timeout_ms)
    .execute(&db.pool)
    .await?
    .rows_affected())
}

pub async fn list(db: &Db, f: &InstanceFilter) -> Result<Vec<Instance>> {
    if let Some(k) = &f.kind
        && k != "scheduler"
        && k != "seed_peer"
        && k != "peer"
    {
        return Err(Error::invalid("kind", "must be scheduler, seed_peer or peer"));
    }
    if let Some(s) = &f.state
        && s != "active"
        && s != "inactive"
    {
        return Err(Error::invalid("state", "must be active or inactive"));
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLS} FROM instances
         WHERE ($1 = '' OR kind = $1) AND ($2 = '' OR state = $2) AND ($3 = 0 OR cluster_id = $3)
         ORDER BY kind, cluster_id, hostname, id"
    )))
    .bind(f.kind.clone().unwrap_or_default())
    .bind(f.state.clone().unwrap_or_default())
    .bind(f.cluster_id.unwrap_or(0))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Live instances of one kind (`scheduler` or `peer`) in one scheduler cluster.
pub async fn active_in_cluster(
    db: &Db,
    kind: &str,
    cluster_id: i64,
    timeout_ms: i64,
) -> Result<Vec<Instance>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLS} FROM instances
         WHERE kind = $1 AND cluster_id = $2 AND state = 'active' AND last_keepalive_at >= $3
         ORDER BY hostname, id"
    )))
    .bind(kind)
    .bind(cluster_id)
    .bind(now_ms() - timeout_ms)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Live seed peers of the seed peer clusters tied to a scheduler cluster.
pub async fn active_seed_peers(db: &Db, scheduler_cluster_id: i64, timeout_ms: i64) -> Result<Vec<Instance>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLS} FROM instances
         WHERE kind = 'seed_peer' AND state = 'active' AND last_keepalive_at >= $2
           AND cluster_id IN (SELECT id FROM seed_peer_clusters WHERE scheduler_cluster_id = $1)
         ORDER BY hostname, id"
    )))
    .bind(scheduler_cluster_id)
    .bind(now_ms() - timeout_ms)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// (kind, state, count) for the metrics gauges.
pub async fn counts(db: &Db) -> Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query("SELECT kind, state, COUNT(*) AS n FROM instances GROUP BY kind, state")
        .fetch_all(&db.pool)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.string("kind"), r.string("state"), r.i64("n")))
        .collect())
}

pub async fn delete(db: &Db, id: i64) -> Result<()> {
    let n = sqlx::query("DELETE FROM instances WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(Error::not_found(format!("instance {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(owner: &str) -> Registration {
        Registration {
            kind: InstanceKind::Scheduler,
            hostname: "s1".into(),
            ip: "10.0.0.5".into(),
            port: 8002,
            download_port: 0,
            idc: String::new(),
            location: String::new(),
            cluster_id: 1,
            owner: owner.into(),
        }
    }

    #[tokio::test]
    async fn an_instance_belongs_to_the_certificate_that_registered_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let db = Db::connect(&url, crate::seal::Sealer::new(&[7; 32]))
            .await
            .unwrap();
        let a = register(&db, &reg("subject-a")).await.unwrap();
        // The same certificate registers it again (a restart): the same instance.
        assert_eq!(register(&db, &reg("subject-a")).await.unwrap().id, a.id);
        // Another certificate cannot take the hostname and address over.
        assert!(matches!(
            register(&db, &reg("subject-b")).await,
            Err(Error::Forbidden(_))
        ));
        check_owner(&db, a.id, InstanceKind::Scheduler, Some("subject-a"))
            .await
            .unwrap();
        for (kind, owner) in [
            (InstanceKind::Scheduler, "subject-b"),
            (InstanceKind::SeedPeer, "subject-a"),
        ] {
            assert!(matches!(
                check_owner(&db, a.id, kind, Some(owner)).await,
                Err(Error::Forbidden(_))
            ));
        }
        // Without TLS only existence is checked.
        check_owner(&db, a.id, InstanceKind::SeedPeer, None)
            .await
            .unwrap();
        assert!(matches!(
            check_owner(&db, a.id + 100, InstanceKind::Scheduler, None).await,
            Err(Error::NotFound { .. })
        ));
        // An instance registered without TLS is taken by the first certificate that registers it.
        let mut plain = reg("");
        plain.hostname = "s2".into();
        let p = register(&db, &plain).await.unwrap();
        plain.owner = "subject-c".into();
        assert_eq!(register(&db, &plain).await.unwrap().id, p.id);
        plain.owner = "subject-d".into();
        assert!(register(&db, &plain).await.is_err());
    }
}
