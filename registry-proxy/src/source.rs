//! Where blob bytes come from.
//!
//! The proxy asks a [`BlobSource`] for a blob (or one range of it) only
//! after the origin has confirmed that the client may read it. The peer's
//! mesh implements this trait; [`DirectSource`] fetches from the origin and
//! serves as the fallback and for tests.

use crate::error::ProxyError;
use crate::range::ByteRange;
use crate::upstream::{Upstream, error_chain};
use bytes::Bytes;
use damselfly_proto::task_id::Sha256Digest;
use damselfly_service::secret::Secret;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use http::{StatusCode, header};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

/// One blob (or one range of it) to fetch.
#[derive(Debug, Clone)]
pub struct BlobRequest {
    pub digest: Sha256Digest,
    /// The blob's URL at the origin.
    pub url: String,
    /// Headers for the origin (e.g. Authorization), values kept secret.
    pub headers: Vec<(String, Secret)>,
    /// The blob's full length, as the origin reported it.
    pub content_length: Option<u64>,
    /// Only these bytes, if set (already resolved against the length).
    pub range: Option<ByteRange>,
}

/// The bytes of a [`BlobRequest`]: exactly the requested range (or the
/// whole blob), in order.
pub struct BlobBody {
    /// Length of the whole blob, not of the range.
    pub total_length: u64,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("total_length", &self.total_length)
            .finish_non_exhaustive()
    }
}

pub trait BlobSource: Send + Sync + 'static {
    fn fetch(&self, req: BlobRequest) -> BoxFuture<'_, Result<BlobBody, ProxyError>>;
}

impl<T: BlobSource + ?Sized> BlobSource for Arc<T> {
    fn fetch(&self, req: BlobRequest) -> BoxFuture<'_, Result<BlobBody, ProxyError>> {
        (**self).fetch(req)
    }
}

/// Fetches blobs straight from the origin, with `Range`, following
/// redirects without credentials. A whole blob is checked against its
/// digest as it streams: a mismatch ends the stream with an error, so the
/// client sees a broken download, never wrong bytes that look complete.
pub struct DirectSource {
    upstream: Arc<Upstream>,
}

impl DirectSource {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Self { upstream }
    }

    async fn fetch_inner(&self, req: BlobRequest) -> Result<BlobBody, ProxyError> {
        let url = url::Url::parse(&req.url).map_err(|e| ProxyError::Source(format!("bad blob URL: {e}")))?;
        // host[:port], as clients name registries (for logs and settings).
        let registry = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in &req.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProxyError::Source(format!("bad header name {name:?}")))?;
            let value = http::HeaderValue::from_str(value.expose())
                .map_err(|_| ProxyError::Source(format!("bad value for header {name}")))?;
            headers.append(name, value);
        }
        if let Some(r) = req.range {
            headers.insert(
                header::RANGE,
                r.header_value().parse().expect("range header is ASCII"),
            );
        }
        let origin = crate::upstream::Origin {
            registry,
            endpoint: url.clone(),
        };
        // Authorization was resolved by the proxy: pass it as the client's.
        let resp = self
            .upstream
            .request(http::Method::GET, &origin, url, &headers, None, None)
            .await?
            .response;
        let status = resp.status();
        let (total, skip, take) = match (status, req.range) {
            (StatusCode::PARTIAL_CONTENT, Some(r)) => {
                let total = content_range_total(resp.headers())
                    .or(req.content_length)
                    .ok_or_else(|| ProxyError::Source("206 without Content-Range".into()))?;
                let start = content_range_start(resp.headers()).unwrap_or(r.start);
                if start != r.start {
                    return Err(ProxyError::Source(format!(
                        "origin sent range from {start}, asked {}",
                        r.start
                    )));
                }
                (total, 0, r.len())
            }
            (StatusCode::OK, range) => {
                let total = resp
                    .content_length()
                    .or(req.content_length)
                    .ok_or_else(|| ProxyError::Source("origin sent no length".into()))?;
                match range {
                    // The origin ignored Range: cut the range out ourselves.
                    Some(r) => (total, r.start, r.len()),
                    None => (total, 0, total),
                }
            }
            (StatusCode::NOT_FOUND, _) => return Err(ProxyError::BlobUnknown(req.digest.to_string())),
            (StatusCode::RANGE_NOT_SATISFIABLE, _) => {
                return Err(ProxyError::RangeNotSatisfiable {
                    total: req.content_length.unwrap_or(0),
                });
            }
            (s, _) if s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
                return Err(ProxyError::Denied {
                    status: s,
                    challenge: resp.headers().get(header::WWW_AUTHENTICATE).cloned(),
                    body: Bytes::new(),
                });
            }
            (s, _) => return Err(ProxyError::Source(format!("origin answered {s}"))),
        };
        if let Some(expected) = req.content_length
            && expected != total
        {
            return Err(ProxyError::Source(format!(
                "origin says {total} bytes, expected {expected}"
            )));
        }
        let verify = req.range.is_none().then(|| (req.digest.clone(), total));
        let stream = resp
            .bytes_stream()
            .map(|r| r.map_err(|e| std::io::Error::other(error_chain(&e))));
        Ok(BlobBody {
            total_length: total,
            stream: window(stream.boxed(), skip, take, verify),
        })
    }
}

impl BlobSource for DirectSource {
    fn fetch(&self, req: BlobRequest) -> BoxFuture<'_, Result<BlobBody, ProxyError>> {
        self.fetch_inner(req).boxed()
    }
}

/// Tries `primary` (the mesh) and, when it fails before sending a byte
/// with an error that another source may not have, `fallback` (the
/// origin): a pull never fails because the mesh is unhealthy.
pub struct FallbackSource<P, F> {
    pub primary: P,
    pub fallback: F,
}

impl<P: BlobSource, F: BlobSource> BlobSource for FallbackSource<P, F> {
    fn fetch(&self, req: BlobRequest) -> BoxFuture<'_, Result<BlobBody, ProxyError>> {
        async move {
            match self.primary.fetch(req.clone()).await {
                Ok(body) => Ok(body),
                Err(e) if e.is_retryable() => {
                    tracing::debug!(digest = %req.digest, error = %e, "primary blob source failed, using the fallback");
                    self.fallback.fetch(req).await
                }
                Err(e) => Err(e),
            }
        }
        .boxed()
    }
}

/// Skips `skip` bytes, yields `take` bytes, and, if `verify` is set, checks
/// the whole stream's length and sha256 at its end.
fn window(
    inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
    skip: u64,
    take: u64,
    verify: Option<(Sha256Digest, u64)>,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    struct State {
        inner: BoxStream<'static, Result<Bytes, std::io::Error>>,
        skip: u64,
        left: u64,
        hasher: Option<(Sha256, Sha256Digest, u64)>,
        done: bool,
    }
    let state = State {
        inner,
        skip,
        left: take,
        hasher: verify.map(|(d, total)| (Sha256::new(), d, total)),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            if s.left == 0 {
                s.done = true;
                if let Some(e) = s.hasher.take().and_then(|(h, d, _)| mismatch(h, &d)) {
                    return Some((Err(e), s));
                }
                return None;
            }
            match s.inner.next().await {
                None => {
                    s.done = true;
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("origin stream ended {} bytes early", s.left),
                    );
                    return Some((Err(e), s));
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                Some(Ok(mut chunk)) => {
                    if s.skip > 0 {
                        let n = s.skip.min(chunk.len() as u64);
                        s.skip -= n;
                        let _ = chunk.split_to(n as usize);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    if chunk.len() as u64 > s.left {
                        chunk.truncate(s.left as usize);
                    }
                    s.left -= chunk.len() as u64;
                    if let Some((h, _, _)) = s.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    // Check before the last bytes go out: once a client has
                    // Content-Length bytes, an error after them is not seen.
                    if s.left == 0
                        && let Some(e) = s.hasher.take().and_then(|(h, d, _)| mismatch(h, &d))
                    {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                    return Some((Ok(chunk), s));
                }
            }
        }
    })
    .boxed()
}

fn mismatch(hasher: Sha256, digest: &Sha256Digest) -> Option<std::io::Error> {
    let got: [u8; 32] = hasher.finalize().into();
    (got != digest.0).then(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("blob does not match {digest}"),
        )
    })
}

fn content_range_total(h: &http::HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit_once('/')?.1.trim().parse().ok()
}

fn content_range_start(h: &http::HeaderMap) -> Option<u64> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes ")?;
    spec.split_once('-')?.0.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        let v: Vec<_> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(v).boxed()
    }

    async fn collect(s: BoxStream<'static, Result<Bytes, std::io::Error>>) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(r) = s.next().await {
            match r {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    fn digest_of(b: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(b).into())
    }

    #[tokio::test]
    async fn window_cuts_ranges_across_chunks() {
        let (b, e) = collect(window(chunks(&[b"abc", b"defg", b"hi"]), 2, 5, None)).await;
        assert_eq!((b.as_slice(), e), (&b"cdefg"[..], None));
        let (b, e) = collect(window(chunks(&[b"abc"]), 0, 3, None)).await;
        assert_eq!((b.as_slice(), e), (&b"abc"[..], None));
    }

    #[tokio::test]
    async fn window_verifies_whole_blobs() {
        let d = digest_of(b"abcdefghi");
        let (b, e) = collect(window(
            chunks(&[b"abc", b"defg", b"hi"]),
            0,
            9,
            Some((d.clone(), 9)),
        ))
        .await;
        assert_eq!((b.len(), e), (9, None));
        let (_, e) = collect(window(
            chunks(&[b"abc", b"defg", b"hX"]),
            0,
            9,
            Some((d.clone(), 9)),
        ))
        .await;
        assert!(e.unwrap().contains("does not match"));
        let (_, e) = collect(window(chunks(&[b"abc"]), 0, 9, Some((d, 9)))).await;
        assert!(e.unwrap().contains("early"));
    }

    struct Fixed(Result<&'static [u8], fn() -> ProxyError>);

    impl BlobSource for Fixed {
        fn fetch(&self, _req: BlobRequest) -> BoxFuture<'_, Result<BlobBody, ProxyError>> {
            let r = self.0.map(|b| BlobBody {
                total_length: b.len() as u64,
                stream: chunks(&[b]),
            });
            async move { r.map_err(|f| f()) }.boxed()
        }
    }

    fn request() -> BlobRequest {
        BlobRequest {
            digest: digest_of(b"x"),
            url: "http://r/v2/a/blobs/sha256:00".into(),
            headers: vec![],
            content_length: None,
            range: None,
        }
    }

    #[tokio::test]
    async fn fallback_only_for_retryable_errors() {
        let down = || ProxyError::Source("mesh down".into());
        let s = FallbackSource {
            primary: Fixed(Err(down)),
            fallback: Fixed(Ok(b"origin")),
        };
        let body = s.fetch(request()).await.unwrap();
        assert_eq!(collect(body.stream).await.0, b"origin");
        let s = FallbackSource {
            primary: Fixed(Ok(b"mesh")),
            fallback: Fixed(Ok(b"origin")),
        };
        assert_eq!(collect(s.fetch(request()).await.unwrap().stream).await.0, b"mesh");
        let s = FallbackSource {
            primary: Fixed(Err(|| ProxyError::BlobUnknown("d".into()))),
            fallback: Fixed(Ok(b"origin")),
        };
        assert!(matches!(
            s.fetch(request()).await,
            Err(ProxyError::BlobUnknown(_))
        ));
    }

    #[test]
    fn content_range_header() {
        let mut h = http::HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 5-9/100".parse().unwrap());
        assert_eq!(content_range_total(&h), Some(100));
        assert_eq!(content_range_start(&h), Some(5));
    }
}
