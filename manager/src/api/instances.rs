//! Instances (schedulers and seed peers) and traffic statistics.

use super::{ApiResult, Id, Params, allow, audit};
use crate::Ctx;
use crate::auth::{Principal, Scope};
use crate::store::instances::{self, Instance, InstanceFilter};
use crate::store::traffic::{self, TrafficQuery, TrafficStats};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(list_instances))
        .routes(routes!(get_instance, delete_instance))
        .routes(routes!(traffic_stats))
}

/// Registered schedulers and seed peers with their liveness.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(InstanceFilter),
    responses((status = 200, body = Vec<Instance>), (status = 400, body = super::ErrorBody)))]
async fn list_instances(
    State(ctx): State<Ctx>,
    _p: Principal,
    Params(f): Params<InstanceFilter>,
) -> ApiResult<Json<Vec<Instance>>> {
    Ok(Json(instances::list(&ctx.db, &f).await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = i64, Path)),
    responses((status = 200, body = Instance), (status = 404, body = super::ErrorBody)))]
async fn get_instance(State(ctx): State<Ctx>, _p: Principal, Id(id): Id) -> ApiResult<Json<Instance>> {
    Ok(Json(instances::get(&ctx.db, id).await?))
}

/// Forgets an instance (it registers again if it is still running) (admin).
#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
async fn delete_instance(State(ctx): State<Ctx>, p: Principal, Id(id): Id) -> ApiResult<StatusCode> {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "instance.delete",
        "instance",
        &id.to_string(),
    )
    .await?;
    instances::delete(&ctx.db, id).await?;
    audit(&ctx, &p, "instance.delete", "instance", id, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Bytes from the origin vs from peers, per time bucket.
#[utoipa::path(get, path = "/api/v1/traffic", tag = "traffic", params(TrafficQuery),
    responses((status = 200, body = TrafficStats), (status = 400, body = super::ErrorBody)))]
async fn traffic_stats(
    State(ctx): State<Ctx>,
    _p: Principal,
    Params(q): Params<TrafficQuery>,
) -> ApiResult<Json<TrafficStats>> {
    Ok(Json(traffic::stats(&ctx.db, &q).await?))
}
