//! The REST API under `/api/v1`, and its OpenAPI document at
//! `/api/v1/openapi.json`, generated from the handler annotations.
//!
//! Conventions: JSON in and out; errors are
//! `{"error": "invalid", "message": "...", "field": "settings.candidate_parent_limit"}`
//! with 400 (bad input, the field named), 401 (no or wrong credentials),
//! 403 (scope too small), 404 (unknown id), 409 (conflict), 503 (database
//! unreachable: retry). Every mutation is written to the audit log.

mod clusters;
mod instances;
mod jobs;
mod sessions;
pub use sessions::session_cookie_header;
mod users;

use crate::Ctx;
use crate::auth::{Principal, SESSION_COOKIE, Scope};
use crate::error::Error;
use crate::store;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Instant;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

pub type ApiResult<T> = Result<T, Error>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Damselfly manager API", description = "Clusters, instances, preheat jobs, users, tokens, audit log and traffic of a Damselfly P2P distribution site."),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct Security;
impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A personal access token: `dfly_<id>_<secret>`"))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
    }
}

/// The OpenAPI document (also served at `/api/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(sessions::routes())
        .merge(clusters::routes())
        .merge(instances::routes())
        .merge(jobs::routes())
        .merge(users::routes())
}

pub fn router(ctx: Ctx) -> axum::Router {
    let (router, doc) = routes().split_for_parts();
    let doc = std::sync::Arc::new(doc);
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move |_p: Principal| {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|req: Request| async move {
            if req.uri().path().starts_with("/api/") {
                Error::not_found(format!("route {}", req.uri().path())).into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        })
        .with_state(ctx)
}

/// The error body of every failed call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `invalid`, `not_found`, `conflict`, `unauthenticated`, `forbidden`, `unavailable`, `internal`.
    pub error: &'static str,
    pub message: String,
    /// The offending field, for `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::Unavailable(_) | Error::Upstream { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::Database(_) | Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let (message, field) = match &self {
            Error::Invalid { field, message } => (message.clone(), Some(field.clone())),
            // Internal details stay in the log.
            Error::Database(_) | Error::Internal(_) => {
                ("internal error; see the manager's log".to_string(), None)
            }
            e => (e.to_string(), None),
        };
        let mut resp = (
            status,
            axum::Json(ErrorBody {
                error: code,
                message,
                field,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"damselfly\""),
            );
        }
        resp
    }
}

/// The session cookie's value, if the request has one.
pub fn session_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Authenticates from `Authorization: Bearer <token>` or the session cookie.
pub async fn authenticate(ctx: &Ctx, parts: &Parts) -> Result<Principal, Error> {
    if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
        let auth = auth.to_str().map_err(|_| Error::Unauthenticated)?;
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .ok_or(Error::Unauthenticated)?;
        return store::users::principal_from_token(&ctx.db, &ctx.hasher, token.trim()).await;
    }
    match session_cookie(parts) {
        Some(s) => store::users::principal_from_session(&ctx.db, &s).await,
        None => Err(Error::Unauthenticated),
    }
}

impl FromRequestParts<Ctx> for Principal {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, Self::Rejection> {
        authenticate(ctx, parts).await
    }
}

/// Checks a scope for a mutation; a refusal is itself audited.
pub async fn allow(
    ctx: &Ctx,
    p: &Principal,
    needed: Scope,
    action: &str,
    target_type: &str,
    target_id: &str,
) -> ApiResult<()> {
    if let Err(e) = p.require(needed) {
        let _ = store::audit::record(
            &ctx.db,
            &p.actor(),
            action,
            target_type,
            target_id,
            "denied",
            serde_json::json!({"needed": needed.as_str()}),
        )
        .await;
        return Err(e);
    }
    Ok(())
}

/// Audits a successful mutation.
pub async fn audit(
    ctx: &Ctx,
    p: &Principal,
    action: &str,
    target_type: &str,
    target_id: impl ToString,
    detail: serde_json::Value,
) {
    if let Err(e) =
        store::audit::record(&ctx.db, &p.actor(), action, target_type, target_id, "ok", detail).await
    {
        tracing::warn!(error = %e, action, "audit log write failed");
    }
}

/// A JSON body whose errors name the field (`settings.candidate_parent_limit`).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::invalid("body", e.body_text()))?;
        parse_json(&bytes).map(Body)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde names missing and unknown fields in the message, one level below the path.
        let named = ["missing field `", "unknown field `"].iter().find_map(|p| {
            msg.split_once(p)
                .and_then(|(_, rest)| rest.split_once('`'))
                .map(|(f, _)| f.to_string())
        });
        let field = match (path.as_str(), named) {
            (".", Some(f)) | ("", Some(f)) => f,
            (p, Some(f)) if msg.starts_with("missing") => format!("{p}.{f}"),
            (".", None) | ("", None) => "body".to_string(),
            (p, _) => p.to_string(),
        };
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Error::invalid(field, msg)
    })
}

/// Query parameters whose errors are 400 with `field: "query"`.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| Error::invalid("query", e.body_text()))
    }
}

/// A numeric id in the path; anything else is 400 (not 404, not a panic).
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(s) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::invalid("id", e.body_text()))?;
        s.parse::<i64>()
            .ok()
            .filter(|i| *i > 0)
            .map(Id)
            .ok_or_else(|| Error::invalid("id", "must be a positive integer"))
    }
}

/// Records latency per route for `/metrics`.
pub async fn observe(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    ctx.metrics.observe_http(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clusters::NewSchedulerCluster;

    fn field_of(json: &str) -> String {
        match parse_json::<NewSchedulerCluster>(json.as_bytes()) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_errors_name_the_field() {
        assert_eq!(field_of("{}"), "name");
        assert_eq!(field_of(r#"{"name": 5}"#), "name");
        assert_eq!(
            field_of(r#"{"name": "a", "settings": {"candidate_parent_limit": "x"}}"#),
            "settings.candidate_parent_limit"
        );
        assert_eq!(field_of(r#"{"name": "a", "bogus": 1}"#), "bogus");
        assert_eq!(field_of("not json"), "body");
    }

    #[test]
    fn openapi_lists_the_routes() {
        let doc = openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for p in [
            "/api/v1/clusters",
            "/api/v1/clusters/{id}",
            "/api/v1/preheat-jobs",
            "/api/v1/tokens",
            "/api/v1/audit-logs",
        ] {
            assert!(
                paths.iter().any(|x| x.as_str() == p),
                "{p} missing from {paths:?}"
            );
        }
    }
}
