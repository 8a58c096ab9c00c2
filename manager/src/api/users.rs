//! Users, personal access tokens and the audit log.

use super::{ApiResult, Body, Id, Params, allow, audit};
use crate::Ctx;
use crate::auth::{Principal, Scope};
use crate::error::Error;
use crate::store::audit::{self as audit_log, AuditEntry, AuditQuery};
use crate::store::users::{self, CreatedToken, NewToken, NewUser, Token, User, UserPatch};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
        .routes(routes!(list_audit))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, body = Vec<User>), (status = 403, body = super::ErrorBody)))]
async fn list_users(State(ctx): State<Ctx>, p: Principal) -> ApiResult<Json<Vec<User>>> {
    p.require(Scope::Admin)?;
    Ok(Json(users::list(&ctx.db).await?))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = User), (status = 400, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn create_user(
    State(ctx): State<Ctx>,
    p: Principal,
    Body(body): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    allow(&ctx, &p, Scope::Admin, "user.create", "user", "").await?;
    let u = users::create(&ctx.db, &ctx.hasher, body).await?;
    audit(
        &ctx,
        &p,
        "user.create",
        "user",
        u.id,
        serde_json::json!({"username": u.username, "role": u.role}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(u)))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 200, body = User), (status = 404, body = super::ErrorBody)))]
async fn get_user(State(ctx): State<Ctx>, p: Principal, Id(id): Id) -> ApiResult<Json<User>> {
    if p.user_id != id {
        p.require(Scope::Admin)?;
    }
    Ok(Json(users::get(&ctx.db, id).await?))
}

/// Changes a user's password or role (admin; anyone may change their own password).
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)), request_body = UserPatch,
    responses((status = 200, body = User), (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
async fn update_user(
    State(ctx): State<Ctx>,
    p: Principal,
    Id(id): Id,
    Body(body): Body<UserPatch>,
) -> ApiResult<Json<User>> {
    let own_password_only = p.user_id == id && body.role.is_none() && p.token_id.is_none();
    if !own_password_only {
        allow(&ctx, &p, Scope::Admin, "user.update", "user", &id.to_string()).await?;
    }
    let changed: Vec<&str> = [
        ("password", body.password.is_some()),
        ("role", body.role.is_some()),
    ]
    .iter()
    .filter(|(_, c)| *c)
    .map(|(n, _)| *n)
    .collect();
    let u = users::update(&ctx.db, &ctx.hasher, id, body).await?;
    audit(
        &ctx,
        &p,
        "user.update",
        "user",
        id,
        serde_json::json!({"changed": changed, "role": u.role}),
    )
    .await;
    Ok(Json(u))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
async fn delete_user(State(ctx): State<Ctx>, p: Principal, Id(id): Id) -> ApiResult<StatusCode> {
    allow(&ctx, &p, Scope::Admin, "user.delete", "user", &id.to_string()).await?;
    users::delete(&ctx.db, &ctx.hasher, id).await?;
    audit(&ctx, &p, "user.delete", "user", id, serde_json::json!({})).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's tokens (an admin sees everyone's). Secrets are never shown again.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = Vec<Token>)))]
async fn list_tokens(State(ctx): State<Ctx>, p: Principal) -> ApiResult<Json<Vec<Token>>> {
    let who = if p.scope == Scope::Admin {
        None
    } else {
        Some(p.user_id)
    };
    Ok(Json(users::list_tokens(&ctx.db, who).await?))
}

/// Creates a personal access token for the caller; its value is shown once.
/// Needs a signed-in session, or a token with the admin scope.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = super::ErrorBody), (status = 403, body = super::ErrorBody)))]
async fn create_token(
    State(ctx): State<Ctx>,
    p: Principal,
    Body(body): Body<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    if p.token_id.is_some() {
        allow(&ctx, &p, Scope::Admin, "token.create", "token", "").await?;
    }
    let t = users::create_token(&ctx.db, &ctx.hasher, &p, body).await?;
    audit(
        &ctx,
        &p,
        "token.create",
        "token",
        t.token.id,
        serde_json::json!({"name": t.token.name, "scope": t.token.scope}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Revokes a token (its owner, or an admin).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = super::ErrorBody)))]
async fn delete_token(State(ctx): State<Ctx>, p: Principal, Id(id): Id) -> ApiResult<StatusCode> {
    let t = users::get_token(&ctx.db, id).await?;
    if t.user_id != p.user_id {
        allow(&ctx, &p, Scope::Admin, "token.delete", "token", &id.to_string()).await?;
    } else if p.scope == Scope::ReadOnly && p.token_id.is_some_and(|own| own != id) {
        return Err(Error::Forbidden(
            "a read-only token can only revoke itself".into(),
        ));
    }
    users::delete_token(&ctx.db, &ctx.hasher, id).await?;
    audit(
        &ctx,
        &p,
        "token.delete",
        "token",
        id,
        serde_json::json!({"name": t.name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The audit log, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit-logs", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 403, body = super::ErrorBody)))]
async fn list_audit(
    State(ctx): State<Ctx>,
    p: Principal,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    p.require(Scope::Admin)?;
    Ok(Json(audit_log::list(&ctx.db, &q).await?))
}
