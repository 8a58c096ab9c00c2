//! Where a task's bytes come from: one [`Origin`] per download, opened from
//! the task URL. `http(s)://` goes through reqwest ([`http`]); `s3://` and
//! `oss://` through Apache OpenDAL ([`object`]). The download engine only
//! asks for the length and for byte ranges, so seeds fetch blocks in
//! parallel ranges the same way from either.

pub mod http;
pub mod object;

use crate::config::SourceConfig;
use crate::error::Error;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::collections::HashMap;
use std::sync::Arc;

/// What an origin says about the content before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub length: u64,
    /// ETag (object stores) when the origin gives one.
    pub etag: Option<String>,
}

pub type ByteStream = BoxStream<'static, Result<Bytes, Error>>;

pub trait Origin: Send + Sync {
    /// The content's length (and ETag if known).
    fn stat(&self) -> BoxFuture<'_, Result<Stat, Error>>;
    /// Bytes `start..end` of content `total` bytes long, as a stream that
    /// yields exactly those bytes (an origin that ignores Range is skipped
    /// to `start` here). [`Error::LengthMismatch`] before any byte when the
    /// origin states another length than `total`.
    fn read(&self, start: u64, end: u64, total: u64) -> BoxFuture<'_, Result<ByteStream, Error>>;
    /// The URL for messages (no query string).
    fn name(&self) -> String;
}

/// Is this a URL scheme the peer can fetch from?
pub fn supported_scheme(scheme: &str) -> bool {
    matches!(scheme, "http" | "https" | "s3" | "oss")
}

/// Opens the origin for a task URL.
pub fn open(
    url: &str,
    headers: &HashMap<String, String>,
    client: &reqwest::Client,
    cfg: &SourceConfig,
) -> Result<Arc<dyn Origin>, Error> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http" | "https") => Ok(Arc::new(http::HttpOrigin::new(
            client.clone(),
            url,
            headers,
            cfg.clone(),
        )?)),
        Some("s3" | "oss") => Ok(Arc::new(object::ObjectOrigin::open(url, client, cfg)?)),
        // A cache task has no origin: its bytes exist only in the mesh.
        Some("cache") => Err(Error::Refused {
            kind: crate::error::FailKind::NotFound,
            message: format!("{url}: no peer holds this cache task"),
        }),
        _ => Err(Error::BadRequest(format!(
            "unsupported URL scheme in {:?} (http, https, s3 and oss are)",
            crate::source::redact_url(url)
        ))),
    }
}
