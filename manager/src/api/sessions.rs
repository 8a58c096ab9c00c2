//! Sign in (the one call without auth), sign out, who am I.

use super::{ApiResult, Body, audit};
use crate::Ctx;
use crate::auth::{Principal, SESSION_COOKIE, Scope};
use crate::error::Error;
use crate::store::{self, users::User};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::new()
        .routes(routes!(sign_in, sign_out))
        .routes(routes!(me))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    /// The effective scope of this call (a token can narrow the user's role).
    pub scope: Scope,
    pub token_id: Option<i64>,
}

/// Cookie attributes: HttpOnly (no script reads it), SameSite=Strict (no
/// other site can make the browser send it, which is the console's CSRF guard).
pub fn session_cookie_header(ctx: &Ctx, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if ctx.config.auth.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .expect("cookie is ASCII")
}

/// Signs in with a password; sets the session cookie.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "auth", request_body = SignIn, security(()),
    responses((status = 200, body = User), (status = 401, body = super::ErrorBody), (status = 400, body = super::ErrorBody)))]
async fn sign_in(State(ctx): State<Ctx>, Body(body): Body<SignIn>) -> ApiResult<Response> {
    let ttl = ctx.config.auth.session_ttl;
    match store::users::sign_in(
        &ctx.db,
        &ctx.hasher,
        &body.username,
        &body.password,
        ttl.as_millis() as i64,
    )
    .await
    {
        Ok((cookie, user)) => {
            store::audit::record(
                &ctx.db,
                &user.username,
                "session.create",
                "user",
                user.id,
                "ok",
                serde_json::json!({}),
            )
            .await?;
            let mut h = HeaderMap::new();
            h.insert(
                header::SET_COOKIE,
                session_cookie_header(&ctx, &cookie, ttl.as_secs()),
            );
            Ok((h, Json(user)).into_response())
        }
        Err(Error::Unauthenticated) => {
            let name: String = body.username.chars().take(64).collect();
            store::audit::record(
                &ctx.db,
                &name,
                "session.create",
                "user",
                "",
                "denied",
                serde_json::json!({}),
            )
            .await?;
            Err(Error::Unauthenticated)
        }
        Err(e) => Err(e),
    }
}

/// Ends the current session and clears the cookie.
#[utoipa::path(delete, path = "/api/v1/sessions", tag = "auth", responses((status = 204), (status = 401, body = super::ErrorBody)))]
async fn sign_out(State(ctx): State<Ctx>, p: Principal, headers: HeaderMap) -> ApiResult<Response> {
    let (parts, _) = axum::http::Request::builder()
        .body(())
        .expect("empty request")
        .into_parts();
    let mut parts = parts;
    parts.headers = headers;
    if let Some(s) = super::session_cookie(&parts) {
        store::users::sign_out(&ctx.db, &s).await?;
    }
    audit(
        &ctx,
        &p,
        "session.delete",
        "user",
        p.user_id,
        serde_json::json!({}),
    )
    .await;
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, session_cookie_header(&ctx, "", 0));
    Ok((axum::http::StatusCode::NO_CONTENT, h).into_response())
}

/// The caller and its effective scope.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", responses((status = 200, body = Me), (status = 401, body = super::ErrorBody)))]
async fn me(State(ctx): State<Ctx>, p: Principal) -> ApiResult<Json<Me>> {
    Ok(Json(Me {
        user: store::users::get(&ctx.db, p.user_id).await?,
        scope: p.scope,
        token_id: p.token_id,
    }))
}
