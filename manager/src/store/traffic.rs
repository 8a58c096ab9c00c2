//! Traffic reported by schedulers: bytes peers took from the origin and from
//! other peers, per scheduler cluster, summed into time buckets on read.

use crate::db::{Db, RowExt, now_ms};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrafficQuery {
    /// Only this scheduler cluster (default: all).
    pub cluster_id: Option<i64>,
    /// Window start, ms since the epoch (default: 24 h ago).
    pub since: Option<i64>,
    /// Bucket width in seconds, 10..=86400 (default 300).
    pub bucket_secs: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrafficBucket {
    /// Bucket start, ms since the epoch.
    pub at: i64,
    pub origin_bytes: i64,
    pub peer_bytes: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrafficStats {
    pub bucket_secs: i64,
    pub buckets: Vec<TrafficBucket>,
    pub origin_bytes: i64,
    pub peer_bytes: i64,
    /// Share of bytes that came from peers, 0..=1.
    pub peer_ratio: f64,
}

pub async fn report(
    db: &Db,
    cluster_id: i64,
    instance_id: i64,
    at: i64,
    origin: i64,
    peer: i64,
) -> Result<()> {
    if origin < 0 || peer < 0 {
        return Err(Error::invalid("origin_bytes", "must not be negative"));
    }
    sqlx::query(
        "INSERT INTO traffic (scheduler_cluster_id, instance_id, at, origin_bytes, peer_bytes) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(cluster_id)
    .bind(instance_id)
    .bind(if at > 0 { at } else { now_ms() })
    .bind(origin)
    .bind(peer)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn stats(db: &Db, q: &TrafficQuery) -> Result<TrafficStats> {
    let bucket_secs = q.bucket_secs.unwrap_or(300);
    if !(10..=86400).contains(&bucket_secs) {
        return Err(Error::invalid("bucket_secs", "must be within 10..=86400"));
    }
    let width = bucket_secs * 1000;
    let since = q.since.unwrap_or_else(|| now_ms() - 24 * 3600 * 1000);
    let rows = sqlx::query(
        "SELECT (at / $1) * $1 AS bucket,
                CAST(SUM(origin_bytes) AS BIGINT) AS origin, CAST(SUM(peer_bytes) AS BIGINT) AS peer
         FROM traffic WHERE at >= $2 AND ($3 = 0 OR scheduler_cluster_id = $3)
         GROUP BY 1 ORDER BY 1",
    )
    .bind(width)
    .bind(since)
    .bind(q.cluster_id.unwrap_or(0))
    .fetch_all(&db.pool)
    .await?;
    let buckets: Vec<TrafficBucket> = rows
        .iter()
        .map(|r| TrafficBucket {
            at: r.i64("bucket"),
            origin_bytes: r.i64("origin"),
            peer_bytes: r.i64("peer"),
        })
        .collect();
    let origin_bytes = buckets.iter().map(|b| b.origin_bytes).sum::<i64>();
    let peer_bytes = buckets.iter().map(|b| b.peer_bytes).sum::<i64>();
    let total = origin_bytes + peer_bytes;
    Ok(TrafficStats {
        bucket_secs,
        buckets,
        origin_bytes,
        peer_bytes,
        peer_ratio: if total > 0 {
            peer_bytes as f64 / total as f64
        } else {
            0.0
        },
    })
}
