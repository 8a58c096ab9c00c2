//! Preheat jobs.

use super::{ApiResult, Body, Id, Params, allow, audit};
use crate::Ctx;
use crate::auth::{Principal, Scope};
use crate::store::preheat::{self, JobQuery, NewPreheatJob, PreheatJob};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs, create_job))
        .routes(routes!(get_job))
}

/// Preheat jobs, newest first, with progress counts.
#[utoipa::path(get, path = "/api/v1/preheat-jobs", tag = "preheat", params(JobQuery),
    responses((status = 200, body = Vec<PreheatJob>)))]
async fn list_jobs(
    State(ctx): State<Ctx>,
    _p: Principal,
    Params(q): Params<JobQuery>,
) -> ApiResult<Json<Vec<PreheatJob>>> {
    Ok(Json(preheat::list(&ctx.db, &q).await?))
}

/// Starts a preheat job (preheat scope): the manager resolves the images and
/// the chosen seed peers download every layer.
#[utoipa::path(post, path = "/api/v1/preheat-jobs", tag = "preheat", request_body = NewPreheatJob,
    responses((status = 201, body = PreheatJob), (status = 400, body = super::ErrorBody), (status = 403, body = super::ErrorBody)))]
async fn create_job(
    State(ctx): State<Ctx>,
    p: Principal,
    Body(body): Body<NewPreheatJob>,
) -> ApiResult<(StatusCode, Json<PreheatJob>)> {
    allow(&ctx, &p, Scope::Preheat, "preheat_job.create", "preheat_job", "").await?;
    let job = preheat::create(&ctx.db, &p, body).await?;
    audit(
        &ctx,
        &p,
        "preheat_job.create",
        "preheat_job",
        job.id,
        serde_json::json!({"urls": job.spec.urls}),
    )
    .await;
    ctx.wake.notify_one();
    Ok((StatusCode::CREATED, Json(job)))
}

/// One job with a result per layer and seed peer.
#[utoipa::path(get, path = "/api/v1/preheat-jobs/{id}", tag = "preheat", params(("id" = i64, Path)),
    responses((status = 200, body = PreheatJob), (status = 404, body = super::ErrorBody)))]
async fn get_job(State(ctx): State<Ctx>, _p: Principal, Id(id): Id) -> ApiResult<Json<PreheatJob>> {
    Ok(Json(preheat::get(&ctx.db, id).await?))
}
