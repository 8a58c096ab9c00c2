//! Scheduler clusters (with their dynamic settings and scopes) and seed peer
//! clusters, each tied to one scheduler cluster.

use crate::db::{Db, RowExt, now_ms};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;
use sqlx::any::AnyRow;
use utoipa::ToSchema;

/// Scheduling settings of a cluster, fetched by its schedulers and peers
/// (they apply a change within one refresh interval, without a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Parents handed to a peer per scheduling answer (1..=20).
    pub candidate_parent_limit: u32,
    /// Candidates examined before scoring (>= candidate_parent_limit, <= 1000).
    pub filter_parent_limit: u32,
    /// Children one peer serves at once, over all its tasks; more are
    /// turned away to other parents (1..=1000).
    pub peer_upload_concurrency: u32,
    /// Piece requests one download of a peer keeps in flight (1..=1000).
    pub peer_download_concurrency: u32,
    /// Smallest piece length in bytes a peer lays a new task out with when
    /// it fetches from the origin (power of two, >= 64 KiB).
    pub min_piece_length: u64,
    /// Largest piece length in bytes (power of two, <= 16 MiB: one piece-protocol frame).
    pub max_piece_length: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            candidate_parent_limit: 8,
            filter_parent_limit: 40,
            peer_upload_concurrency: 50,
            // The download engine's own default: a manager changes nothing until told to.
            peer_download_concurrency: 32,
            min_piece_length: 256 * 1024,
            max_piece_length: 16 * 1024 * 1024,
        }
    }
}

impl ClusterSettings {
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let f = |name: &str| format!("{prefix}{name}");
        if !(1..=20).contains(&self.candidate_parent_limit) {
            return Err(Error::invalid(
                f("candidate_parent_limit"),
                "must be within 1..=20",
            ));
        }
        if self.filter_parent_limit < self.candidate_parent_limit || self.filter_parent_limit > 1000 {
            return Err(Error::invalid(
                f("filter_parent_limit"),
                "must be at least candidate_parent_limit and at most 1000",
            ));
        }
        if !(1..=1000).contains(&self.peer_upload_concurrency) {
            return Err(Error::invalid(
                f("peer_upload_concurrency"),
                "must be within 1..=1000",
            ));
        }
        if !(1..=1000).contains(&self.peer_download_concurrency) {
            return Err(Error::invalid(
                f("peer_download_concurrency"),
                "must be within 1..=1000",
            ));
        }
        for (name, v) in [
            ("min_piece_length", self.min_piece_length),
            ("max_piece_length", self.max_piece_length),
        ] {
            if let Err(e) = damselfly_proto::layout::check_piece_length(v) {
                return Err(Error::invalid(f(name), format!("{e} (what every peer carries)")));
            }
        }
        if self.min_piece_length > self.max_piece_length {
            return Err(Error::invalid(
                f("min_piece_length"),
                "must not exceed max_piece_length",
            ));
        }
        Ok(())
    }
}

/// Which peers a scheduler cluster serves. A peer goes to the cluster whose
/// scopes match it best (hostname pattern, then CIDR, then IDC, then the
/// longest shared location prefix); peers nothing matches go to the default cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterScopes {
    /// IDC names, matched exactly (case-insensitive).
    pub idc: Vec<String>,
    /// Locations such as `asia|cn|hangzhou`, matched by shared `|`-separated prefix.
    pub location: Vec<String>,
    /// Networks such as `10.1.0.0/16` or `fd00::/8`.
    pub cidrs: Vec<String>,
    /// Hostname globs (`*` and `?`), such as `node-*.rack1`.
    pub hostnames: Vec<String>,
}

impl ClusterScopes {
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let check = |name: &str, list: &[String]| -> Result<()> {
            if list.len() > 256 {
                return Err(Error::invalid(format!("{prefix}{name}"), "at most 256 entries"));
            }
            for (i, v) in list.iter().enumerate() {
                if v.trim().is_empty()
                    || v.len() > 253
                    || v.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(Error::invalid(
                        format!("{prefix}{name}[{i}]"),
                        "must be 1..=253 characters without spaces",
                    ));
                }
            }
            Ok(())
        };
        check("idc", &self.idc)?;
        check("location", &self.location)?;
        check("cidrs", &self.cidrs)?;
        check("hostnames", &self.hostnames)?;
        for (i, c) in self.cidrs.iter().enumerate() {
            crate::scope::Cidr::parse(c).map_err(|m| Error::invalid(format!("{prefix}cidrs[{i}]"), m))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SchedulerCluster {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub is_default: bool,
    pub settings: ClusterSettings,
    pub scopes: ClusterScopes,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A new scheduler cluster. Omitted settings take their defaults.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedulerCluster {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub settings: ClusterSettings,
    #[serde(default)]
    pub scopes: ClusterScopes,
}

/// A partial update: fields left out keep their value.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulerClusterPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub settings: Option<ClusterSettings>,
    pub scopes: Option<ClusterScopes>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeedPeerCluster {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub scheduler_cluster_id: i64,
    pub is_default: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSeedPeerCluster {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub scheduler_cluster_id: i64,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedPeerClusterPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scheduler_cluster_id: Option<i64>,
}

pub fn validate_name(field: &str, name: &str) -> Result<()> {
    let n = name.chars().count();
    if n == 0 || n > 100 || name.trim().is_empty() {
        return Err(Error::invalid(field, "must be 1..=100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn validate_description(d: &str) -> Result<()> {
    if d.chars().count() > 1000 {
        return Err(Error::invalid("description", "at most 1000 characters"));
    }
    Ok(())
}

fn scheduler_cluster_from(row: &AnyRow) -> SchedulerCluster {
    SchedulerCluster {
        id: row.i64("id"),
        name: row.string("name"),
        description: row.string("description"),
        is_default: row.i64("is_default") != 0,
        settings: serde_json::from_str(&row.string("settings")).unwrap_or_default(),
        scopes: serde_json::from_str(&row.string("scopes")).unwrap_or_default(),
        created_at: row.i64("created_at"),
        updated_at: row.i64("updated_at"),
    }
}

fn seed_peer_cluster_from(row: &AnyRow) -> SeedPeerCluster {
    SeedPeerCluster {
        id: row.i64("id"),
        name: row.string("name"),
        description: row.string("description"),
        scheduler_cluster_id: row.i64("scheduler_cluster_id"),
        is_default: row.i64("is_default") != 0,
        created_at: row.i64("created_at"),
        updated_at: row.i64("updated_at"),
    }
}

const SC_COLS: &str = "id, name, description, is_default, settings, scopes, created_at, updated_at";
const SPC_COLS: &str = "id, name, description, scheduler_cluster_id, is_default, created_at, updated_at";

/// Creates the default scheduler cluster and its seed peer cluster when missing.
/// Safe to run from several managers at once.
pub async fn ensure_defaults(db: &Db) -> Result<()> {
    let now = now_ms();
    let settings = serde_json::to_string(&ClusterSettings::default()).expect("serializable");
    let scopes = serde_json::to_string(&ClusterScopes::default()).expect("serializable");
    sqlx::query(
        "INSERT INTO scheduler_clusters (name, description, is_default, settings, scopes, created_at, updated_at)
         VALUES ('default', 'Serves every peer that no other cluster claims', 1, $1, $2, $3, $3)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(settings)
    .bind(scopes)
    .bind(now)
    .execute(&db.pool)
    .await?;
    let default = default_scheduler_cluster(db).await?;
    sqlx::query(
        "INSERT INTO seed_peer_clusters (name, description, scheduler_cluster_id, is_default, created_at, updated_at)
         VALUES ('default', 'Seed peers of the default cluster', $1, 1, $2, $2)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(default.id)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn default_scheduler_cluster(db: &Db) -> Result<SchedulerCluster> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SC_COLS} FROM scheduler_clusters WHERE is_default = 1 ORDER BY id LIMIT 1"
    )))
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found("default scheduler cluster"))?;
    Ok(scheduler_cluster_from(&row))
}

pub async fn default_seed_peer_cluster(db: &Db) -> Result<SeedPeerCluster> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SPC_COLS} FROM seed_peer_clusters WHERE is_default = 1 ORDER BY id LIMIT 1"
    )))
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found("default seed peer cluster"))?;
    Ok(seed_peer_cluster_from(&row))
}

pub async fn list_scheduler_clusters(db: &Db) -> Result<Vec<SchedulerCluster>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SC_COLS} FROM scheduler_clusters ORDER BY id"
    )))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(scheduler_cluster_from).collect())
}

pub async fn get_scheduler_cluster(db: &Db, id: i64) -> Result<SchedulerCluster> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SC_COLS} FROM scheduler_clusters WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found(format!("scheduler cluster {id}")))?;
    Ok(scheduler_cluster_from(&row))
}

pub async fn create_scheduler_cluster(db: &Db, new: NewSchedulerCluster) -> Result<SchedulerCluster> {
    validate_name("name", &new.name)?;
    validate_description(&new.description)?;
    new.settings.validate("settings.")?;
    new.scopes.validate("scopes.")?;
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO scheduler_clusters (name, description, is_default, settings, scopes, created_at, updated_at)
         VALUES ($1, $2, 0, $3, $4, $5, $5) RETURNING id",
    )
    .bind(new.name.trim().to_string())
    .bind(new.description)
    .bind(serde_json::to_string(&new.settings).expect("serializable"))
    .bind(serde_json::to_string(&new.scopes).expect("serializable"))
    .bind(now)
    .fetch_one(&db.pool)
    .await?;
    get_scheduler_cluster(db, id).await
}

pub async fn update_scheduler_cluster(
    db: &Db,
    id: i64,
    patch: SchedulerClusterPatch,
) -> Result<SchedulerCluster> {
    let mut c = get_scheduler_cluster(db, id).await?;
    if let Some(name) = patch.name {
        validate_name("name", &name)?;
        c.name = name.trim().to_string();
    }
    if let Some(d) = patch.description {
        validate_description(&d)?;
        c.description = d;
    }
    if let Some(s) = patch.settings {
        s.validate("settings.")?;
        c.settings = s;
    }
    if let Some(s) = patch.scopes {
        s.validate("scopes.")?;
        c.scopes = s;
    }
    // updated_at doubles as the settings version: it must move on every change.
    let now = now_ms().max(c.updated_at + 1);
    sqlx::query(
        "UPDATE scheduler_clusters SET name = $1, description = $2, settings = $3, scopes = $4, updated_at = $5
         WHERE id = $6",
    )
    .bind(&c.name)
    .bind(&c.description)
    .bind(serde_json::to_string(&c.settings).expect("serializable"))
    .bind(serde_json::to_string(&c.scopes).expect("serializable"))
    .bind(now)
    .bind(id)
    .execute(&db.pool)
    .await?;
    get_scheduler_cluster(db, id).await
}

pub async fn delete_scheduler_cluster(db: &Db, id: i64) -> Result<()> {
    let c = get_scheduler_cluster(db, id).await?;
    if c.is_default {
        return Err(Error::Conflict("the default cluster cannot be deleted".into()));
    }
    let seeds: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM seed_peer_clusters WHERE scheduler_cluster_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await?;
    if seeds > 0 {
        return Err(Error::Conflict(
            "delete or move this cluster's seed peer clusters first".into(),
        ));
    }
    sqlx::query("DELETE FROM instances WHERE kind = 'scheduler' AND cluster_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM scheduler_clusters WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn list_seed_peer_clusters(db: &Db) -> Result<Vec<SeedPeerCluster>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SPC_COLS} FROM seed_peer_clusters ORDER BY id"
    )))
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.iter().map(seed_peer_cluster_from).collect())
}

pub async fn get_seed_peer_cluster(db: &Db, id: i64) -> Result<SeedPeerCluster> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {SPC_COLS} FROM seed_peer_clusters WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?
    .ok_or_else(|| Error::not_found(format!("seed peer cluster {id}")))?;
    Ok(seed_peer_cluster_from(&row))
}

async fn check_scheduler_cluster_ref(db: &Db, id: i64) -> Result<()> {
    match get_scheduler_cluster(db, id).await {
        Err(Error::NotFound { .. }) => Err(Error::invalid(
            "scheduler_cluster_id",
            "no such scheduler cluster",
        )),
        other => other.map(|_| ()),
    }
}

pub async fn create_seed_peer_cluster(db: &Db, new: NewSeedPeerCluster) -> Result<SeedPeerCluster> {
    validate_name("name", &new.name)?;
    validate_description(&new.description)?;
    check_scheduler_cluster_ref(db, new.scheduler_cluster_id).await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO seed_peer_clusters (name, description, scheduler_cluster_id, is_default, created_at, updated_at)
         VALUES ($1, $2, $3, 0, $4, $4) RETURNING id",
    )
    .bind(new.name.trim().to_string())
    .bind(new.description)
    .bind(new.scheduler_cluster_id)
    .bind(now_ms())
    .fetch_one(&db.pool)
    .await?;
    get_seed_peer_cluster(db, id).await
}

pub async fn update_seed_peer_cluster(
    db: &Db,
    id: i64,
    patch: SeedPeerClusterPatch,
) -> Result<SeedPeerCluster> {
    let mut c = get_seed_peer_cluster(db, id).await?;
    if let Some(name) = patch.name {
        validate_name("name", &name)?;
        c.name = name.trim().to_string();
    }
    if let Some(d) = patch.description {
        validate_description(&d)?;
        c.description = d;
    }
    if let Some(s) = patch.scheduler_cluster_id {
        check_scheduler_cluster_ref(db, s).await?;
        c.scheduler_cluster_id = s;
    }
    sqlx::query(
        "UPDATE seed_peer_clusters SET name = $1, description = $2, scheduler_cluster_id = $3, updated_at = $4
         WHERE id = $5",
    )
    .bind(&c.name)
    .bind(&c.description)
    .bind(c.scheduler_cluster_id)
    .bind(now_ms())
    .bind(id)
    .execute(&db.pool)
    .await?;
    get_seed_peer_cluster(db, id).await
}

pub async fn delete_seed_peer_cluster(db: &Db, id: i64) -> Result<()> {
    let c = get_seed_peer_cluster(db, id).await?;
    if c.is_default {
        return Err(Error::Conflict(
            "the default seed peer cluster cannot be deleted".into(),
        ));
    }
    sqlx::query("DELETE FROM instances WHERE kind = 'seed_peer' AND cluster_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    sqlx::query("DELETE FROM seed_peer_clusters WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_validation_names_the_field() {
        ClusterSettings::default().validate("settings.").unwrap();
        let s = ClusterSettings {
            candidate_parent_limit: 0,
            ..Default::default()
        };
        match s.validate("settings.").unwrap_err() {
            Error::Invalid { field, .. } => assert_eq!(field, "settings.candidate_parent_limit"),
            e => panic!("{e}"),
        }
        let s = ClusterSettings {
            min_piece_length: 1 << 25,
            max_piece_length: 1 << 20,
            ..Default::default()
        };
        assert!(
            matches!(s.validate("").unwrap_err(), Error::Invalid { field, .. } if field == "min_piece_length")
        );
        // What peers cannot carry in one wire frame is refused, naming the field.
        let s = ClusterSettings {
            min_piece_length: 32 << 20,
            max_piece_length: 32 << 20,
            ..Default::default()
        };
        assert!(
            matches!(s.validate("").unwrap_err(), Error::Invalid { field, .. } if field == "min_piece_length")
        );
        let s = ClusterSettings {
            max_piece_length: 64 << 20,
            ..Default::default()
        };
        assert!(
            matches!(s.validate("").unwrap_err(), Error::Invalid { field, .. } if field == "max_piece_length")
        );
        let sc = ClusterScopes {
            cidrs: vec!["10.0.0.0/33".into()],
            ..Default::default()
        };
        assert!(
            matches!(sc.validate("scopes.").unwrap_err(), Error::Invalid { field, .. } if field == "scopes.cidrs[0]")
        );
    }
}
