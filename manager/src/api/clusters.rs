//! Scheduler clusters and seed peer clusters.

use super::{ApiResult, Body, Id, allow, audit};
use crate::Ctx;
use crate::auth::{Principal, Scope};
use crate::store::clusters::{
    self, NewSchedulerCluster, NewSeedPeerCluster, SchedulerCluster, SchedulerClusterPatch, SeedPeerCluster,
    SeedPeerClusterPatch,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(list_clusters, create_cluster))
        .routes(routes!(get_cluster, update_cluster, delete_cluster))
        .routes(routes!(list_seed_clusters, create_seed_cluster))
        .routes(routes!(
            get_seed_cluster,
            update_seed_cluster,
            delete_seed_cluster
        ))
}

/// Scheduler clusters with their settings and scopes.
#[utoipa::path(get, path = "/api/v1/clusters", tag = "clusters", responses((status = 200, body = Vec<SchedulerCluster>)))]
async fn list_clusters(State(ctx): State<Ctx>, _p: Principal) -> ApiResult<Json<Vec<SchedulerCluster>>> {
    Ok(Json(clusters::list_scheduler_clusters(&ctx.db).await?))
}

/// Creates a scheduler cluster (admin).
#[utoipa::path(post, path = "/api/v1/clusters", tag = "clusters", request_body = NewSchedulerCluster,
    responses((status = 201, body = SchedulerCluster), (status = 400, body = super::ErrorBody), (status = 403, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn create_cluster(
    State(ctx): State<Ctx>,
    p: Principal,
    Body(body): Body<NewSchedulerCluster>,
) -> ApiResult<(StatusCode, Json<SchedulerCluster>)> {
    allow(&ctx, &p, Scope::Admin, "cluster.create", "scheduler_cluster", "").await?;
    let c = clusters::create_scheduler_cluster(&ctx.db, body).await?;
    audit(
        &ctx,
        &p,
        "cluster.create",
        "scheduler_cluster",
        c.id,
        serde_json::json!({"name": c.name}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(c)))
}

#[utoipa::path(get, path = "/api/v1/clusters/{id}", tag = "clusters", params(("id" = i64, Path)),
    responses((status = 200, body = SchedulerCluster), (status = 404, body = super::ErrorBody)))]
async fn get_cluster(State(ctx): State<Ctx>, _p: Principal, Id(id): Id) -> ApiResult<Json<SchedulerCluster>> {
    Ok(Json(clusters::get_scheduler_cluster(&ctx.db, id).await?))
}

/// Changes a cluster; schedulers and peers pick new settings up within one refresh interval (admin).
#[utoipa::path(patch, path = "/api/v1/clusters/{id}", tag = "clusters", params(("id" = i64, Path)), request_body = SchedulerClusterPatch,
    responses((status = 200, body = SchedulerCluster), (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn update_cluster(
    State(ctx): State<Ctx>,
    p: Principal,
    Id(id): Id,
    Body(body): Body<SchedulerClusterPatch>,
) -> ApiResult<Json<SchedulerCluster>> {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "cluster.update",
        "scheduler_cluster",
        &id.to_string(),
    )
    .await?;
    let before = clusters::get_scheduler_cluster(&ctx.db, id).await?;
    let c = clusters::update_scheduler_cluster(&ctx.db, id, body).await?;
    audit(
        &ctx,
        &p,
        "cluster.update",
        "scheduler_cluster",
        id,
        serde_json::json!({"before": {"name": before.name, "settings": before.settings, "scopes": before.scopes},
                           "after": {"name": c.name, "settings": c.settings, "scopes": c.scopes}}),
    )
    .await;
    Ok(Json(c))
}

#[utoipa::path(delete, path = "/api/v1/clusters/{id}", tag = "clusters", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn delete_cluster(State(ctx): State<Ctx>, p: Principal, Id(id): Id) -> ApiResult<StatusCode> {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "cluster.delete",
        "scheduler_cluster",
        &id.to_string(),
    )
    .await?;
    clusters::delete_scheduler_cluster(&ctx.db, id).await?;
    audit(
        &ctx,
        &p,
        "cluster.delete",
        "scheduler_cluster",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/seed-peer-clusters", tag = "clusters", responses((status = 200, body = Vec<SeedPeerCluster>)))]
async fn list_seed_clusters(State(ctx): State<Ctx>, _p: Principal) -> ApiResult<Json<Vec<SeedPeerCluster>>> {
    Ok(Json(clusters::list_seed_peer_clusters(&ctx.db).await?))
}

#[utoipa::path(post, path = "/api/v1/seed-peer-clusters", tag = "clusters", request_body = NewSeedPeerCluster,
    responses((status = 201, body = SeedPeerCluster), (status = 400, body = super::ErrorBody)))]
async fn create_seed_cluster(
    State(ctx): State<Ctx>,
    p: Principal,
    Body(body): Body<NewSeedPeerCluster>,
) -> ApiResult<(StatusCode, Json<SeedPeerCluster>)> {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "seed_peer_cluster.create",
        "seed_peer_cluster",
        "",
    )
    .await?;
    let c = clusters::create_seed_peer_cluster(&ctx.db, body).await?;
    audit(
        &ctx,
        &p,
        "seed_peer_cluster.create",
        "seed_peer_cluster",
        c.id,
        serde_json::json!({"name": c.name}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(c)))
}

#[utoipa::path(get, path = "/api/v1/seed-peer-clusters/{id}", tag = "clusters", params(("id" = i64, Path)),
    responses((status = 200, body = SeedPeerCluster), (status = 404, body = super::ErrorBody)))]
async fn get_seed_cluster(
    State(ctx): State<Ctx>,
    _p: Principal,
    Id(id): Id,
) -> ApiResult<Json<SeedPeerCluster>> {
    Ok(Json(clusters::get_seed_peer_cluster(&ctx.db, id).await?))
}

#[utoipa::path(patch, path = "/api/v1/seed-peer-clusters/{id}", tag = "clusters", params(("id" = i64, Path)), request_body = SeedPeerClusterPatch,
    responses((status = 200, body = SeedPeerCluster), (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn update_seed_cluster(
    State(ctx): State<Ctx>,
    p: Principal,
    Id(id): Id,
    Body(body): Body<SeedPeerClusterPatch>,
) -> ApiResult<Json<SeedPeerCluster>> {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "seed_peer_cluster.update",
        "seed_peer_cluster",
        &id.to_string(),
    )
    .await?;
    let c = clusters::update_seed_peer_cluster(&ctx.db, id, body).await?;
    audit(
        &ctx,
        &p,
        "seed_peer_cluster.update",
        "seed_peer_cluster",
        id,
        serde_json::json!({"name": c.name, "scheduler_cluster_id": c.scheduler_cluster_id}),
    )
    .await;
    Ok(Json(c))
}

#[utoipa::path(delete, path = "/api/v1/seed-peer-clusters/{id}", tag = "clusters", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
async fn delete_seed_cluster(State(ctx): State<Ctx>, p: Principal, Id(id): Id) -> ApiResult<StatusCode> {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "seed_peer_cluster.delete",
        "seed_peer_cluster",
        &id.to_string(),
    )
    .await?;
    clusters::delete_seed_peer_cluster(&ctx.db, id).await?;
    audit(
        &ctx,
        &p,
        "seed_peer_cluster.delete",
        "seed_peer_cluster",
        id,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
