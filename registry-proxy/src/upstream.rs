//! Requests to origin registries: retries, redirects and authentication.
//!
//! - Redirects (blob storage, CDNs) are followed here, never with the
//!   Authorization header: signed storage URLs carry their own credentials.
//! - Connection errors and 5xx answers are retried a few times, then become
//!   [`ProxyError::Upstream`] (502).
//! - Authentication: the client's own Authorization is forwarded as is.
//!   Without one, the proxy answers the origin's challenge itself with the
//!   credentials configured for that registry (Basic, or a Bearer token
//!   fetched from the challenge's realm), or anonymously. Tokens are cached
//!   per registry and scope until shortly before they expire.

use crate::auth::{self, Challenge};
use crate::config::ProxyConfig;
use crate::error::{ProxyError, StartError};
use damselfly_service::secret::Secret;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

/// Request headers a client may send that the origin should see.
const FORWARDED_REQUEST_HEADERS: &[HeaderName] = &[
    header::ACCEPT,
    header::USER_AGENT,
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// Hop-by-hop headers, never copied between connections.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One registry as the proxy talks to it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The name clients use (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Base URL of its API.
    pub endpoint: Url,
}

impl Origin {
    pub fn url(&self, path_and_query: &str) -> Result<Url, ProxyError> {
        self.endpoint
            .join(path_and_query)
            .map_err(|e| ProxyError::BadRequest(format!("cannot build origin URL: {e}")))
    }
}

/// The answer of the origin plus the Authorization value that got it, to
/// reuse for a following request of the same client.
pub struct OriginResponse {
    pub response: reqwest::Response,
    pub authorization: Option<Secret>,
}

pub struct Upstream {
    client: reqwest::Client,
    config: Arc<ProxyConfig>,
    tokens: Mutex<LruCache<(String, String), (Secret, Instant)>>,
}

impl Upstream {
    pub fn new(config: Arc<ProxyConfig>) -> Result<Self, StartError> {
        // reqwest is built without a default crypto provider; installing one
        // twice is harmless (the first wins).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            // Bounds a stalled origin without bounding a long blob download.
            .read_timeout(config.request_timeout)
            .build()
            .map_err(|e| StartError::Client(error_chain(&e)))?;
        Ok(Self {
            client,
            config,
            tokens: Mutex::new(LruCache::new(NonZeroUsize::new(1024).expect("nonzero"))),
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Sends `method url` with the client's forwardable headers, answering an
    /// auth challenge when the client brought no credentials. `scope` is the
    /// token scope to ask for if the challenge names none.
    /// `timeout` bounds the whole request (None for blob bodies).
    pub async fn request(
        &self,
        method: Method,
        origin: &Origin,
        url: Url,
        client_headers: &HeaderMap,
        scope: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<OriginResponse, ProxyError> {
        let mut headers = HeaderMap::new();
        for name in FORWARDED_REQUEST_HEADERS {
            for v in client_headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        if let Some(range) = client_headers.get(header::RANGE) {
            headers.insert(header::RANGE, range.clone());
        }
        if let Some(auth) = client_headers.get(header::AUTHORIZATION) {
            // The client speaks for itself: its credentials, its challenges.
            let auth = Secret::new(auth.to_str().map_err(|_| {
                ProxyError::BadRequest("the Authorization header is not visible ASCII".into())
            })?);
            let response = self
                .send(method, url, &headers, Some(&auth), origin, timeout)
                .await?;
            return Ok(OriginResponse {
                response,
                authorization: Some(auth),
            });
        }
        let token_key = (origin.registry.clone(), scope.unwrap_or_default().to_string());
        let cached = self.cached_token(&token_key);
        let first = self
            .send(
                method.clone(),
                url.clone(),
                &headers,
                cached.as_ref(),
                origin,
                timeout,
            )
            .await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(OriginResponse {
                response: first,
                authorization: cached,
            });
        }
        let challenge = first.headers().get(header::WWW_AUTHENTICATE).cloned();
        let Some((auth, expires_in)) = self.answer_challenge(origin, challenge.as_ref(), scope).await else {
            return Ok(OriginResponse {
                response: first,
                authorization: None,
            });
        };
        let second = self
            .send(method, url, &headers, Some(&auth), origin, timeout)
            .await?;
        if second.status() == StatusCode::UNAUTHORIZED {
            // Our credentials did not help: let the client try its own.
            return Ok(OriginResponse {
                response: first,
                authorization: None,
            });
        }
        if auth.expose().starts_with("Bearer ") {
            self.tokens
                .lock()
                .expect("token cache lock")
                .put(token_key, (auth.clone(), token_deadline(expires_in)));
        }
        Ok(OriginResponse {
            response: second,
            authorization: Some(auth),
        })
    }

    fn cached_token(&self, key: &(String, String)) -> Option<Secret> {
        let mut tokens = self.tokens.lock().expect("token cache lock");
        match tokens.get(key) {
            Some((t, deadline)) if *deadline > Instant::now() => Some(t.clone()),
            Some(_) => {
                tokens.pop(key);
                None
            }
            None => None,
        }
    }

    /// An Authorization value that answers `challenge`, if the proxy has
    /// one, and for a token how many seconds it is valid.
    async fn answer_challenge(
        &self,
        origin: &Origin,
        challenge: Option<&HeaderValue>,
        scope: Option<&str>,
    ) -> Option<(Secret, Option<u64>)> {
        let challenge = Challenge::parse(challenge?.to_str().ok()?)?;
        let creds = self.config.credentials(&origin.registry);
        match auth::answer(
            &self.client,
            &challenge,
            creds,
            scope,
            self.config.request_timeout,
        )
        .await
        {
            Ok(answer) => Some(answer),
            Err(e) => {
                tracing::debug!(registry = %origin.registry, error = %e, "no answer to the origin's challenge");
                None
            }
        }
    }

    /// One request with retries on connection errors and 5xx, following
    /// redirects without Authorization.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: &HeaderMap,
        auth: Option<&Secret>,
        origin: &Origin,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ProxyError> {
        let attempts = self.config.upstream_retries + 1;
        let mut last_error = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            match self
                .send_once(method.clone(), url.clone(), headers, auth, timeout)
                .await
            {
                Ok(r) if r.status().is_server_error() => {
                    last_error = format!("origin answered {}", r.status());
                }
                Ok(r) => return Ok(r),
                Err(e) => last_error = e,
            }
            tracing::debug!(registry = %origin.registry, attempt, error = %last_error, "origin request failed");
        }
        Err(ProxyError::Upstream {
            registry: origin.registry.clone(),
            message: format!("{last_error} (after {attempts} attempts)"),
        })
    }

    async fn send_once(
        &self,
        method: Method,
        mut url: Url,
        headers: &HeaderMap,
        mut auth: Option<&Secret>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, String> {
        for _ in 0..=self.config.max_redirects {
            let mut req = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a.expose());
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let resp = req.send().await.map_err(|e| error_chain(&e))?;
            let is_redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            match location {
                Some(next) if is_redirect && matches!(next.scheme(), "http" | "https") => {
                    url = next;
                    auth = None;
                }
                _ => return Ok(resp),
            }
        }
        Err("too many redirects".into())
    }
}

fn token_deadline(expires_in: Option<u64>) -> Instant {
    // Registries issue tokens for at least 60 s by convention.
    let secs = expires_in.unwrap_or(60).clamp(10, 3600);
    Instant::now() + Duration::from_secs(secs.saturating_sub(5))
}

/// The error and its causes on one line (reqwest hides the interesting part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<bytes::Bytes, String> {
    use futures::StreamExt as _;
    let mut out = bytes::BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| error_chain(&e))?;
        if out.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
