//! The audit log: one row per mutation (and per sign-in attempt).

use crate::db::{Db, RowExt, now_ms};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    /// Username (and token id when a token was used).
    pub actor: String,
    /// e.g. `cluster.update`, `session.create`.
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    /// `ok` or `denied`/`failed`.
    pub outcome: String,
    /// JSON with what changed (never secrets).
    pub detail: String,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries with an id below this (for paging backwards).
    pub before: Option<i64>,
    /// 1..=500, default 100.
    pub limit: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
}

pub async fn record(
    db: &Db,
    actor: &str,
    action: &str,
    target_type: &str,
    target_id: impl ToString,
    outcome: &str,
    detail: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_logs (at, actor, action, target_type, target_id, outcome, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms())
    .bind(actor)
    .bind(action)
    .bind(target_type)
    .bind(target_id.to_string())
    .bind(outcome)
    .bind(detail.to_string())
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn list(db: &Db, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(crate::error::Error::invalid("limit", "must be within 1..=500"));
    }
    let rows = sqlx::query(
        "SELECT id, at, actor, action, target_type, target_id, outcome, detail FROM audit_logs
         WHERE ($1 = 0 OR id < $1) AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(q.before.unwrap_or(0))
    .bind(q.actor.clone().unwrap_or_default())
    .bind(q.action.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.i64("id"),
            at: r.i64("at"),
            actor: r.string("actor"),
            action: r.string("action"),
            target_type: r.string("target_type"),
            target_id: r.string("target_id"),
            outcome: r.string("outcome"),
            detail: r.string("detail"),
        })
        .collect())
}
