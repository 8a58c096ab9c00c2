//! The web console: server-rendered HTML (maud escapes every interpolated
//! value, so a cluster named `<script>` shows as text), one embedded
//! stylesheet, no JavaScript and no external assets. It signs in with the
//! same sessions as the API (cookie `SameSite=Strict`, which with the
//! `Origin` check below is the CSRF guard) and calls the same store functions
//! with the same scope checks and audit entries.

mod view;

use crate::Ctx;
use crate::api::{allow, audit, authenticate, session_cookie};
use crate::auth::{Principal, Scope};
use crate::error::Error;
use crate::store::{self, clusters, instances, preheat, users};
use axum::Form;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use damselfly_service::secret::Secret;
use maud::Markup;

pub fn router(ctx: Ctx) -> axum::Router {
    axum::Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/clusters", get(clusters_page).post(create_cluster))
        .route("/clusters/{id}", get(cluster_page).post(update_cluster))
        .route("/seed-peer-clusters", post(create_seed_cluster))
        .route("/instances", get(instances_page))
        .route("/preheat", get(preheat_page).post(create_job))
        .route("/preheat/{id}", get(job_page))
        .route("/users", get(users_page).post(create_user))
        .route("/tokens", post(create_token))
        .route("/tokens/{id}/delete", post(delete_token))
        .route("/audit", get(audit_page))
        .route("/assets/console.css", get(css))
        .layer(axum::middleware::from_fn(same_origin))
        .with_state(ctx)
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("style.css"),
    )
        .into_response()
}

/// Refuses cross-site form posts (when the browser says where a POST comes
/// from, it must be this host) and sets the console's security headers.
async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if let Some(origin) = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            let origin_host = origin.split("://").nth(1).unwrap_or("");
            if origin_host != host {
                return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
            }
        }
    }
    let mut resp = next.run(req).await;
    // Defence in depth: the console has no scripts at all, so none may run.
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A signed-in console user; anything else goes to the sign-in page.
struct User(Principal);

impl FromRequestParts<Ctx> for User {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, ctx: &Ctx) -> Result<Self, Self::Rejection> {
        match authenticate(ctx, parts).await {
            Ok(p) => Ok(User(p)),
            Err(Error::Unauthenticated) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(page_error(None, e)),
        }
    }
}

/// Renders an error as a page with the right status.
fn page_error(p: Option<&Principal>, e: Error) -> Response {
    let status = match &e {
        Error::Invalid { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Unauthenticated => return Redirect::to("/login").into_response(),
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Unavailable(_) | Error::Upstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let msg = match &e {
        Error::Database(_) | Error::Internal(_) => "internal error; see the manager's log".to_string(),
        e => e.to_string(),
    };
    (status, view::error_page(p, status, &msg)).into_response()
}

/// A page that could not be built: the error page to show instead (boxed: a
/// `Response` is large and this travels through every `?`).
struct PageErr(Box<Response>);

impl IntoResponse for PageErr {
    fn into_response(self) -> Response {
        *self.0
    }
}

impl From<Response> for PageErr {
    fn from(r: Response) -> Self {
        PageErr(Box::new(r))
    }
}

type Out = Result<Response, PageErr>;

fn ok(m: Markup) -> Out {
    Ok(m.into_response())
}

trait OrPage<T> {
    fn or_page(self, p: &Principal) -> Result<T, PageErr>;
}
impl<T> OrPage<T> for Result<T, Error> {
    fn or_page(self, p: &Principal) -> Result<T, PageErr> {
        self.map_err(|e| page_error(Some(p), e).into())
    }
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn lines(form: &[(String, String)], name: &str) -> Vec<String> {
    field(form, name)
        .split(['\n', ','])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn number<T: std::str::FromStr>(form: &[(String, String)], name: &str) -> Result<T, Error> {
    field(form, name)
        .trim()
        .parse()
        .map_err(|_| Error::invalid(format!("settings.{name}"), "must be a whole number"))
}

// ---- pages ------------------------------------------------------------------

async fn login_page() -> Markup {
    view::login(None)
}

async fn login(State(ctx): State<Ctx>, Form(form): Form<Vec<(String, String)>>) -> Response {
    let (user, pw) = (field(&form, "username"), field(&form, "password"));
    let ttl = ctx.config.auth.session_ttl;
    match users::sign_in(&ctx.db, &ctx.hasher, user, pw, ttl.as_millis() as i64).await {
        Ok((cookie, u)) => {
            let _ = store::audit::record(
                &ctx.db,
                &u.username,
                "session.create",
                "user",
                u.id,
                "ok",
                serde_json::json!({"via": "console"}),
            )
            .await;
            let mut h = HeaderMap::new();
            h.insert(
                header::SET_COOKIE,
                crate::api::session_cookie_header(&ctx, &cookie, ttl.as_secs()),
            );
            (h, Redirect::to("/")).into_response()
        }
        Err(Error::Unauthenticated) => {
            let name: String = user.chars().take(64).collect();
            let _ = store::audit::record(
                &ctx.db,
                &name,
                "session.create",
                "user",
                "",
                "denied",
                serde_json::json!({"via": "console"}),
            )
            .await;
            (
                StatusCode::UNAUTHORIZED,
                view::login(Some("Wrong username or password.")),
            )
                .into_response()
        }
        Err(e) => page_error(None, e),
    }
}

async fn logout(State(ctx): State<Ctx>, User(p): User, headers: HeaderMap) -> Response {
    let (mut parts, _) = axum::http::Request::builder()
        .body(())
        .expect("empty request")
        .into_parts();
    parts.headers = headers;
    if let Some(s) = session_cookie(&parts) {
        let _ = users::sign_out(&ctx.db, &s).await;
    }
    audit(
        &ctx,
        &p,
        "session.delete",
        "user",
        p.user_id,
        serde_json::json!({"via": "console"}),
    )
    .await;
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, crate::api::session_cookie_header(&ctx, "", 0));
    (h, Redirect::to("/login")).into_response()
}

async fn overview(State(ctx): State<Ctx>, User(p): User) -> Out {
    let cl = clusters::list_scheduler_clusters(&ctx.db).await.or_page(&p)?;
    let inst = instances::list(&ctx.db, &Default::default()).await.or_page(&p)?;
    let jobs = preheat::list(
        &ctx.db,
        &preheat::JobQuery {
            state: None,
            limit: Some(8),
        },
    )
    .await
    .or_page(&p)?;
    let traffic = store::traffic::stats(&ctx.db, &Default::default())
        .await
        .or_page(&p)?;
    ok(view::overview(&p, &cl, &inst, &jobs, &traffic))
}

async fn clusters_page(State(ctx): State<Ctx>, User(p): User) -> Out {
    render_clusters(&ctx, &p, None).await
}

async fn render_clusters(ctx: &Ctx, p: &Principal, error: Option<String>) -> Out {
    let cl = clusters::list_scheduler_clusters(&ctx.db).await.or_page(p)?;
    let inst = instances::list(&ctx.db, &Default::default()).await.or_page(p)?;
    let seeds = clusters::list_seed_peer_clusters(&ctx.db).await.or_page(p)?;
    ok(view::clusters(p, &cl, &inst, &seeds, error.as_deref()))
}

async fn create_cluster(
    State(ctx): State<Ctx>,
    User(p): User,
    Form(form): Form<Vec<(String, String)>>,
) -> Out {
    allow(&ctx, &p, Scope::Admin, "cluster.create", "scheduler_cluster", "")
        .await
        .or_page(&p)?;
    let new = clusters::NewSchedulerCluster {
        name: field(&form, "name").to_string(),
        description: field(&form, "description").to_string(),
        settings: Default::default(),
        scopes: Default::default(),
    };
    match clusters::create_scheduler_cluster(&ctx.db, new).await {
        Ok(c) => {
            audit(
                &ctx,
                &p,
                "cluster.create",
                "scheduler_cluster",
                c.id,
                serde_json::json!({"name": c.name, "via": "console"}),
            )
            .await;
            Ok(Redirect::to(&format!("/clusters/{}", c.id)).into_response())
        }
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_))) => {
            let r = render_clusters(&ctx, &p, Some(e.to_string())).await?;
            Ok((StatusCode::BAD_REQUEST, r).into_response())
        }
        Err(e) => Err(page_error(Some(&p), e).into()),
    }
}

async fn create_seed_cluster(
    State(ctx): State<Ctx>,
    User(p): User,
    Form(form): Form<Vec<(String, String)>>,
) -> Out {
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "seed_peer_cluster.create",
        "seed_peer_cluster",
        "",
    )
    .await
    .or_page(&p)?;
    let result = match field(&form, "scheduler_cluster_id").parse::<i64>() {
        Ok(scheduler_cluster_id) => {
            let new = clusters::NewSeedPeerCluster {
                name: field(&form, "name").to_string(),
                description: String::new(),
                scheduler_cluster_id,
            };
            clusters::create_seed_peer_cluster(&ctx.db, new).await
        }
        Err(_) => Err(Error::invalid("scheduler_cluster_id", "not a cluster id")),
    };
    match result {
        Ok(c) => {
            let detail = serde_json::json!({"name": c.name, "via": "console"});
            audit(
                &ctx,
                &p,
                "seed_peer_cluster.create",
                "seed_peer_cluster",
                c.id,
                detail,
            )
            .await;
            Ok(Redirect::to("/clusters").into_response())
        }
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_))) => {
            let r = render_clusters(&ctx, &p, Some(e.to_string())).await?;
            Ok((StatusCode::BAD_REQUEST, r).into_response())
        }
        Err(e) => Err(page_error(Some(&p), e).into()),
    }
}

fn path_id(raw: &str) -> Result<i64, Error> {
    raw.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| Error::invalid("id", "must be a positive integer"))
}

async fn cluster_page(State(ctx): State<Ctx>, User(p): User, Path(id): Path<String>) -> Out {
    let id = path_id(&id).or_page(&p)?;
    render_cluster(&ctx, &p, id, None, None).await
}

async fn render_cluster(
    ctx: &Ctx,
    p: &Principal,
    id: i64,
    error: Option<String>,
    saved: Option<&str>,
) -> Out {
    let c = clusters::get_scheduler_cluster(&ctx.db, id).await.or_page(p)?;
    let inst = instances::list(
        &ctx.db,
        &instances::InstanceFilter {
            kind: Some("scheduler".into()),
            state: None,
            cluster_id: Some(id),
        },
    )
    .await
    .or_page(p)?;
    ok(view::cluster(p, &c, &inst, error.as_deref(), saved))
}

async fn update_cluster(
    State(ctx): State<Ctx>,
    User(p): User,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Out {
    let id = path_id(&id).or_page(&p)?;
    allow(
        &ctx,
        &p,
        Scope::Admin,
        "cluster.update",
        "scheduler_cluster",
        &id.to_string(),
    )
    .await
    .or_page(&p)?;
    let patch = (|| -> Result<clusters::SchedulerClusterPatch, Error> {
        Ok(clusters::SchedulerClusterPatch {
            name: Some(field(&form, "name").to_string()),
            description: Some(field(&form, "description").to_string()),
            settings: Some(clusters::ClusterSettings {
                candidate_parent_limit: number(&form, "candidate_parent_limit")?,
                filter_parent_limit: number(&form, "filter_parent_limit")?,
                peer_upload_concurrency: number(&form, "peer_upload_concurrency")?,
                peer_download_concurrency: number(&form, "peer_download_concurrency")?,
                min_piece_length: number(&form, "min_piece_length")?,
                max_piece_length: number(&form, "max_piece_length")?,
            }),
            scopes: Some(clusters::ClusterScopes {
                idc: lines(&form, "idc"),
                location: lines(&form, "location"),
                cidrs: lines(&form, "cidrs"),
                hostnames: lines(&form, "hostnames"),
            }),
        })
    })();
    let result = match patch {
        Ok(patch) => clusters::update_scheduler_cluster(&ctx.db, id, patch).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(c) => {
            audit(
                &ctx,
                &p,
                "cluster.update",
                "scheduler_cluster",
                id,
                serde_json::json!({"settings": c.settings, "scopes": c.scopes, "via": "console"}),
            )
            .await;
            render_cluster(
                &ctx,
                &p,
                id,
                None,
                Some("Saved. Schedulers and peers apply the new settings within one refresh interval."),
            )
            .await
        }
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_))) => {
            let r = render_cluster(&ctx, &p, id, Some(e.to_string()), None).await?;
            Ok((StatusCode::BAD_REQUEST, r).into_response())
        }
        Err(e) => Err(page_error(Some(&p), e).into()),
    }
}

async fn instances_page(State(ctx): State<Ctx>, User(p): User) -> Out {
    let inst = instances::list(&ctx.db, &Default::default()).await.or_page(&p)?;
    let cl = clusters::list_scheduler_clusters(&ctx.db).await.or_page(&p)?;
    let seeds = clusters::list_seed_peer_clusters(&ctx.db).await.or_page(&p)?;
    ok(view::instances(&p, &inst, &cl, &seeds))
}

async fn preheat_page(State(ctx): State<Ctx>, User(p): User) -> Out {
    render_preheat(&ctx, &p, None).await
}

async fn render_preheat(ctx: &Ctx, p: &Principal, error: Option<String>) -> Out {
    let jobs = preheat::list(&ctx.db, &Default::default()).await.or_page(p)?;
    let cl = clusters::list_scheduler_clusters(&ctx.db).await.or_page(p)?;
    ok(view::preheat(p, &jobs, &cl, error.as_deref()))
}

async fn create_job(State(ctx): State<Ctx>, User(p): User, Form(form): Form<Vec<(String, String)>>) -> Out {
    allow(&ctx, &p, Scope::Preheat, "preheat_job.create", "preheat_job", "")
        .await
        .or_page(&p)?;
    let opt = |n: &str| Some(field(&form, n).trim().to_string()).filter(|s| !s.is_empty());
    let cluster_ids: Result<Vec<i64>, Error> = form
        .iter()
        .filter(|(k, _)| k == "cluster")
        .map(|(_, v)| {
            v.parse()
                .map_err(|_| Error::invalid("scheduler_cluster_ids", "not a cluster id"))
        })
        .collect();
    let result = match cluster_ids {
        Ok(ids) => {
            let new = preheat::NewPreheatJob {
                kind: if field(&form, "kind") == "file" {
                    preheat::PreheatKind::File
                } else {
                    preheat::PreheatKind::Image
                },
                urls: lines(&form, "urls"),
                platform: opt("platform"),
                username: opt("username"),
                password: opt("password").map(Secret::new),
                headers: Default::default(),
                scheduler_cluster_ids: ids,
                scope: match field(&form, "scope") {
                    "single_seed_peer" => preheat::PreheatScope::SingleSeedPeer,
                    "all_peers" => preheat::PreheatScope::AllPeers,
                    _ => preheat::PreheatScope::AllSeedPeers,
                },
            };
            preheat::create(&ctx.db, &p, new).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(job) => {
            audit(
                &ctx,
                &p,
                "preheat_job.create",
                "preheat_job",
                job.id,
                serde_json::json!({"urls": job.spec.urls, "via": "console"}),
            )
            .await;
            ctx.wake.notify_one();
            Ok(Redirect::to(&format!("/preheat/{}", job.id)).into_response())
        }
        Err(e @ Error::Invalid { .. }) => {
            let r = render_preheat(&ctx, &p, Some(e.to_string())).await?;
            Ok((StatusCode::BAD_REQUEST, r).into_response())
        }
        Err(e) => Err(page_error(Some(&p), e).into()),
    }
}

async fn job_page(State(ctx): State<Ctx>, User(p): User, Path(id): Path<String>) -> Out {
    let id = path_id(&id).or_page(&p)?;
    let job = preheat::get(&ctx.db, id).await.or_page(&p)?;
    ok(view::job(&p, &job))
}

async fn users_page(State(ctx): State<Ctx>, User(p): User) -> Out {
    render_users(&ctx, &p, None, None).await
}

async fn render_users(
    ctx: &Ctx,
    p: &Principal,
    error: Option<String>,
    new_token: Option<&users::CreatedToken>,
) -> Out {
    let all = if p.scope == Scope::Admin {
        users::list(&ctx.db).await.or_page(p)?
    } else {
        vec![]
    };
    let who = if p.scope == Scope::Admin {
        None
    } else {
        Some(p.user_id)
    };
    let tokens = users::list_tokens(&ctx.db, who).await.or_page(p)?;
    ok(view::users(p, &all, &tokens, error.as_deref(), new_token))
}

async fn create_user(State(ctx): State<Ctx>, User(p): User, Form(form): Form<Vec<(String, String)>>) -> Out {
    allow(&ctx, &p, Scope::Admin, "user.create", "user", "")
        .await
        .or_page(&p)?;
    let role = Scope::parse(field(&form, "role")).ok_or_else(|| Error::invalid("role", "unknown role"));
    let result = match role {
        Ok(role) => {
            users::create(
                &ctx.db,
                &ctx.hasher,
                users::NewUser {
                    username: field(&form, "username").to_string(),
                    password: field(&form, "password").to_string(),
                    role,
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(u) => {
            audit(
                &ctx,
                &p,
                "user.create",
                "user",
                u.id,
                serde_json::json!({"username": u.username, "role": u.role, "via": "console"}),
            )
            .await;
            Ok(Redirect::to("/users").into_response())
        }
        Err(e @ (Error::Invalid { .. } | Error::Conflict(_))) => {
            let r = render_users(&ctx, &p, Some(e.to_string()), None).await?;
            Ok((StatusCode::BAD_REQUEST, r).into_response())
        }
        Err(e) => Err(page_error(Some(&p), e).into()),
    }
}

async fn create_token(State(ctx): State<Ctx>, User(p): User, Form(form): Form<Vec<(String, String)>>) -> Out {
    let scope = Scope::parse(field(&form, "scope")).ok_or_else(|| Error::invalid("scope", "unknown scope"));
    let result = match scope {
        Ok(scope) => {
            let days: Option<u64> = field(&form, "days").trim().parse().ok().filter(|d| *d > 0);
            users::create_token(
                &ctx.db,
                &ctx.hasher,
                &p,
                users::NewToken {
                    name: field(&form, "name").to_string(),
                    scope,
                    expires_in_secs: days.map(|d| d * 86400),
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(t) => {
            audit(
                &ctx,
                &p,
                "token.create",
                "token",
                t.token.id,
                serde_json::json!({"name": t.token.name, "scope": t.token.scope, "via": "console"}),
            )
            .await;
            render_users(&ctx, &p, None, Some(&t)).await
        }
        Err(e @ Error::Invalid { .. }) => {
            let r = render_users(&ctx, &p, Some(e.to_string()), None).await?;
            Ok((StatusCode::BAD_REQUEST, r).into_response())
        }
        Err(e) => Err(page_error(Some(&p), e).into()),
    }
}

async fn delete_token(State(ctx): State<Ctx>, User(p): User, Path(id): Path<String>) -> Out {
    let id = path_id(&id).or_page(&p)?;
    let t = users::get_token(&ctx.db, id).await.or_page(&p)?;
    if t.user_id != p.user_id {
        allow(&ctx, &p, Scope::Admin, "token.delete", "token", &id.to_string())
            .await
            .or_page(&p)?;
    }
    users::delete_token(&ctx.db, &ctx.hasher, id).await.or_page(&p)?;
    audit(
        &ctx,
        &p,
        "token.delete",
        "token",
        id,
        serde_json::json!({"name": t.name, "via": "console"}),
    )
    .await;
    Ok(Redirect::to("/users").into_response())
}

async fn audit_page(State(ctx): State<Ctx>, User(p): User) -> Out {
    p.require(Scope::Admin).or_page(&p)?;
    let entries = store::audit::list(
        &ctx.db,
        &store::audit::AuditQuery {
            limit: Some(200),
            ..Default::default()
        },
    )
    .await
    .or_page(&p)?;
    ok(view::audit(&p, &entries))
}
