//! The HTTP side: one handler that parses the route, picks the origin and
//! either passes the request through (base, manifests, tags, referrers) or
//! serves a blob from the [`BlobSource`] after proving access.

use crate::authz::{Access, AccessCache, AccessKey};
use crate::config::ProxyConfig;
use crate::error::{ProxyError, StartError};
use crate::metrics::Metrics;
use crate::range::parse_range;
use crate::route::{Route, parse_path, validate_registry_host};
use crate::source::{BlobRequest, BlobSource};
use crate::upstream::{HOP_BY_HOP, Origin, Upstream, read_limited};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use damselfly_proto::task_id::Sha256Digest;
use damselfly_service::shutdown::Shutdown;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use std::sync::Arc;

/// An empty OCI image index: the referrers answer when there are none.
const EMPTY_INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

pub struct Proxy {
    config: Arc<ProxyConfig>,
    upstream: Arc<Upstream>,
    source: Arc<dyn BlobSource>,
    access: AccessCache,
    metrics: Metrics,
}

impl Proxy {
    /// `source` serves blob bytes; `upstream` is shared with it when it is a
    /// [`crate::DirectSource`].
    pub fn new(
        config: ProxyConfig,
        upstream: Arc<Upstream>,
        source: Arc<dyn BlobSource>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        let access = AccessCache::new(config.auth_cache_ttl, config.auth_cache_entries);
        Ok(Self {
            config: Arc::new(config),
            upstream,
            source,
            access,
            metrics: Metrics::default(),
        })
    }

    /// A proxy whose blobs come straight from the origin.
    pub fn direct(config: ProxyConfig) -> Result<Self, StartError> {
        let upstream = Arc::new(Upstream::new(Arc::new(config.clone()))?);
        let source = Arc::new(crate::DirectSource::new(upstream.clone()));
        Self::new(config, upstream, source)
    }

    /// A proxy whose blobs come from `primary` (the mesh), and from the
    /// origin when `primary` fails before sending a byte.
    pub fn with_fallback(config: ProxyConfig, primary: Arc<dyn BlobSource>) -> Result<Self, StartError> {
        let upstream = Arc::new(Upstream::new(Arc::new(config.clone()))?);
        let source = Arc::new(crate::FallbackSource {
            primary,
            fallback: crate::DirectSource::new(upstream.clone()),
        });
        Self::new(config, upstream, source)
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Register these in the serving role's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Which origin a request is for: `?ns=`, else the default registry.
    fn origin(&self, ns: Option<&str>) -> Result<Origin, ProxyError> {
        let registry = match ns {
            Some(ns) => {
                validate_registry_host(ns)?;
                ns.to_ascii_lowercase()
            }
            None => self.config.default_registry.clone(),
        };
        if self.config.only_listed_registries
            && registry != self.config.default_registry
            && !self.config.registries.contains_key(&registry)
        {
            return Err(ProxyError::RegistryNotAllowed(registry));
        }
        let endpoint = self.config.endpoint(&registry);
        Ok(Origin { registry, endpoint })
    }

    #[tracing::instrument(skip_all, fields(method = %req.method(), path = %req.uri().path()))]
    pub async fn handle(&self, req: Request) -> Result<Response, ProxyError> {
        // Only the head matters (pull-only); `Body` is not `Sync`.
        let (req, _body) = req.into_parts();
        let method = req.method.clone();
        if method != Method::GET && method != Method::HEAD {
            return Err(ProxyError::MethodNotAllowed);
        }
        let route = parse_path(req.uri.path())?;
        let (ns, rest) = split_query(req.uri.query());
        let origin = self.origin(ns.as_deref())?;
        let mut path = route.origin_path();
        if let Some(rest) = rest {
            path.push('?');
            path.push_str(&rest);
        }
        tracing::debug!(registry = %origin.registry, "request");
        let headers = &req.headers;
        match &route {
            Route::Blob { name, digest } if digest.starts_with("sha256:") => {
                self.blob(method, &origin, name, digest, &path, headers).await
            }
            Route::Referrers { name, digest } => {
                self.referrers(method, &origin, name, digest, &path, headers)
                    .await
            }
            _ => {
                let scope = route.name().map(|n| format!("repository:{n}:pull"));
                let url = origin.url(&path)?;
                let timeout = match route {
                    Route::Blob { .. } => None,
                    _ => Some(self.config.request_timeout),
                };
                let resp = self
                    .upstream
                    .request(method, &origin, url, headers, scope.as_deref(), timeout)
                    .await?
                    .response;
                Ok(pass_through(resp, ns.as_deref()))
            }
        }
    }

    async fn referrers(
        &self,
        method: Method,
        origin: &Origin,
        name: &str,
        digest: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Response, ProxyError> {
        let scope = format!("repository:{name}:pull");
        let url = origin.url(path)?;
        let resp = self
            .upstream
            .request(
                method.clone(),
                origin,
                url,
                headers,
                Some(&scope),
                Some(self.config.request_timeout),
            )
            .await?
            .response;
        if resp.status() != StatusCode::NOT_FOUND {
            return Ok(pass_through(resp, None));
        }
        // The origin has no referrers API: try the fallback tag of the
        // distribution spec (`<alg>-<hex>`), else say "none" as an index.
        let tag = digest.replacen(':', "-", 1);
        let url = origin.url(&format!("/v2/{name}/manifests/{tag}"))?;
        let mut accept = HeaderMap::new();
        accept.insert(header::ACCEPT, HeaderValue::from_static(INDEX_MEDIA_TYPE));
        if let Some(a) = headers.get(header::AUTHORIZATION) {
            accept.insert(header::AUTHORIZATION, a.clone());
        }
        let fallback = self
            .upstream
            .request(
                Method::GET,
                origin,
                url,
                &accept,
                Some(&scope),
                Some(self.config.request_timeout),
            )
            .await?
            .response;
        let body = if fallback.status() == StatusCode::OK {
            let b = read_limited(fallback, 4 << 20)
                .await
                .map_err(|message| ProxyError::Upstream {
                    registry: origin.registry.clone(),
                    message,
                })?;
            match serde_json::from_slice::<serde_json::Value>(&b) {
                Ok(v) if v.get("manifests").is_some_and(|m| m.is_array()) => b,
                _ => bytes::Bytes::from_static(EMPTY_INDEX.as_bytes()),
            }
        } else {
            bytes::Bytes::from_static(EMPTY_INDEX.as_bytes())
        };
        let out = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, INDEX_MEDIA_TYPE)
            .header(header::CONTENT_LENGTH, body.len());
        if method == Method::HEAD {
            return Ok(out.body(Body::empty()).expect("valid response"));
        }
        Ok(out.body(Body::from(body)).expect("valid response"))
    }

    /// Proves access with a HEAD at the origin (or the cache), then serves
    /// the blob from the source.
    async fn blob(
        &self,
        method: Method,
        origin: &Origin,
        name: &str,
        digest: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Response, ProxyError> {
        let parsed = Sha256Digest::parse(digest).map_err(ProxyError::DigestInvalid)?;
        let client_auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let key = AccessKey::new(client_auth.as_deref(), &origin.registry, name, digest);
        let url = origin.url(path)?;
        let access = match self.access.get(&key) {
            Some(a) => {
                self.metrics.access_check("cached");
                a
            }
            None => {
                let proof = self
                    .prove_access(origin, name, digest, url.clone(), headers)
                    .await;
                self.metrics.access_check(match &proof {
                    Ok(_) => "allowed",
                    Err(ProxyError::Denied { .. }) => "denied",
                    Err(ProxyError::BlobUnknown(_)) => "unknown",
                    Err(_) => "error",
                });
                let a = proof?;
                self.access.insert(key, a.clone());
                a
            }
        };
        let total = access.content_length.ok_or_else(|| ProxyError::Upstream {
            registry: origin.registry.clone(),
            message: "origin did not say the blob's length".into(),
        })?;
        let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), total)?;
        let mut resp = Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header("docker-content-digest", digest)
            .header(header::ACCEPT_RANGES, "bytes")
            .header("docker-distribution-api-version", "registry/2.0");
        match range {
            Some(r) => {
                resp = resp
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, r.content_range(total))
                    .header(header::CONTENT_LENGTH, r.len());
            }
            None => resp = resp.status(StatusCode::OK).header(header::CONTENT_LENGTH, total),
        }
        if method == Method::HEAD {
            return Ok(resp.body(Body::empty()).expect("valid response"));
        }
        let mut blob_headers = Vec::new();
        if let Some(a) = access.authorization {
            blob_headers.push(("authorization".to_string(), a));
        }
        let body = self
            .source
            .fetch(BlobRequest {
                digest: parsed,
                url: url.to_string(),
                headers: blob_headers,
                content_length: Some(total),
                range,
            })
            .await?;
        if body.total_length != total {
            return Err(ProxyError::Source(format!(
                "source has {} bytes, origin says {total}",
                body.total_length
            )));
        }
        let metrics = self.metrics.clone();
        let stream = body.stream.inspect(move |chunk| {
            if let Ok(c) = chunk {
                metrics.blob_bytes(c.len() as u64);
            }
        });
        Ok(resp.body(Body::from_stream(stream)).expect("valid response"))
    }

    async fn prove_access(
        &self,
        origin: &Origin,
        name: &str,
        digest: &str,
        url: url::Url,
        headers: &HeaderMap,
    ) -> Result<Access, ProxyError> {
        let mut head_headers = HeaderMap::new();
        if let Some(a) = headers.get(header::AUTHORIZATION) {
            head_headers.insert(header::AUTHORIZATION, a.clone());
        }
        if let Some(ua) = headers.get(header::USER_AGENT) {
            head_headers.insert(header::USER_AGENT, ua.clone());
        }
        let scope = format!("repository:{name}:pull");
        let answer = self
            .upstream
            .request(
                Method::HEAD,
                origin,
                url,
                &head_headers,
                Some(&scope),
                Some(self.config.request_timeout),
            )
            .await?;
        let resp = answer.response;
        match resp.status() {
            StatusCode::OK => Ok(Access {
                // Not `resp.content_length()`: for a HEAD that is the
                // (empty) body's length.
                content_length: header_u64(resp.headers(), header::CONTENT_LENGTH),
                authorization: answer.authorization,
            }),
            StatusCode::NOT_FOUND => Err(ProxyError::BlobUnknown(digest.to_string())),
            s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(ProxyError::Denied {
                status: s,
                challenge: resp.headers().get(header::WWW_AUTHENTICATE).cloned(),
                body: bytes::Bytes::new(),
            }),
            s => Err(ProxyError::Upstream {
                registry: origin.registry.clone(),
                message: format!("HEAD of the blob answered {s}"),
            }),
        }
    }
}

fn header_u64(h: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `</v2/r/tags/list?n=1&last=a>; rel="next"` with `ns=` added to a
/// relative `/v2/` target.
fn link_with_ns(link: &str, ns: &str) -> String {
    let (Some(open), Some(close)) = (link.find('<'), link.find('>')) else {
        return link.to_string();
    };
    let target = &link[open + 1..close];
    if close < open || !target.starts_with("/v2/") {
        return link.to_string();
    }
    let sep = if target.contains('?') { '&' } else { '?' };
    let ns: String = url::form_urlencoded::byte_serialize(ns.as_bytes()).collect();
    format!("{}<{target}{sep}ns={ns}>{}", &link[..open], &link[close + 1..])
}

/// Takes `ns` out of a query string; the rest is kept for the origin.
fn split_query(query: Option<&str>) -> (Option<String>, Option<String>) {
    let mut ns = None;
    let mut rest = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "ns" {
            ns = Some(v.into_owned());
        } else {
            rest.append_pair(&k, &v);
            any = true;
        }
    }
    (ns, any.then(|| rest.finish()))
}

/// The origin's answer as it came (status, headers but hop-by-hop ones,
/// streamed body). Pagination links to the origin's `/v2/` get the `ns`
/// back, so that the next page comes from the same registry.
fn pass_through(resp: reqwest::Response, ns: Option<&str>) -> Response {
    let mut out = Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        for (k, v) in resp.headers() {
            if HOP_BY_HOP.contains(&k.as_str()) {
                continue;
            }
            let linked = (k == header::LINK)
                .then_some(ns)
                .flatten()
                .and_then(|ns| link_with_ns(v.to_str().ok()?, ns).parse().ok());
            h.append(k.clone(), linked.unwrap_or_else(|| v.clone()));
        }
    }
    let stream = resp.bytes_stream().map(|r| r.map_err(std::io::Error::other));
    out.body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// The proxy as an axum router (every path goes to one handler).
pub fn router(proxy: Arc<Proxy>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(proxy)
}

/// The proxy plus `GET /metrics` with its own metrics, for running it
/// alone (`damselfly proxy`); a role that serves more registers
/// [`Proxy::metrics`] in its own registry instead.
pub fn router_with_metrics(proxy: Arc<Proxy>) -> axum::Router {
    let mut registry = prometheus_client::registry::Registry::default();
    proxy.metrics().register(&mut registry);
    damselfly_service::telemetry::metrics_router(Arc::new(registry)).merge(router(proxy))
}

async fn handle(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let route = route_label(req.uri().path());
    let started = std::time::Instant::now();
    let resp = match proxy.handle(req).await {
        Ok(r) => r,
        Err(e) => {
            // Refusals and unknown blobs are ordinary answers; only a failing
            // origin or source is worth a warning.
            if e.is_retryable() {
                tracing::warn!(error = %e, "request failed");
            } else {
                tracing::debug!(error = %e, "request refused");
            }
            e.into_response()
        }
    };
    proxy.metrics.request(route, resp.status().as_u16());
    proxy.metrics.answered(route, started.elapsed());
    resp
}

/// A low-cardinality name for a path, for metrics.
fn route_label(path: &str) -> &'static str {
    match parse_path(path) {
        Ok(Route::Base) => "base",
        Ok(Route::Manifest { .. }) => "manifest",
        Ok(Route::Blob { .. }) => "blob",
        Ok(Route::Tags { .. }) => "tags",
        Ok(Route::Referrers { .. }) => "referrers",
        Err(_) => "invalid",
    }
}

/// Serves `router` on `listener` until `shutdown` is triggered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagination_links_keep_the_registry() {
        assert_eq!(
            link_with_ns(r#"</v2/r/tags/list?n=1&last=a>; rel="next""#, "127.0.0.1:5000"),
            r#"</v2/r/tags/list?n=1&last=a&ns=127.0.0.1%3A5000>; rel="next""#
        );
        assert_eq!(
            link_with_ns(r#"</v2/_catalog>; rel="next""#, "docker.io"),
            r#"</v2/_catalog?ns=docker.io>; rel="next""#
        );
        let abs = r#"<https://r.example/v2/x>; rel="next""#;
        assert_eq!(link_with_ns(abs, "r.example"), abs);
        assert_eq!(link_with_ns("garbage", "r"), "garbage");
    }

    #[test]
    fn ns_is_taken_out_of_the_query() {
        assert_eq!(split_query(None), (None, None));
        assert_eq!(
            split_query(Some("ns=127.0.0.1%3A5000")),
            (Some("127.0.0.1:5000".into()), None)
        );
        assert_eq!(
            split_query(Some("n=10&ns=docker.io&last=a")),
            (Some("docker.io".into()), Some("n=10&last=a".into()))
        );
    }
}
