//! `s3://bucket/key` and `oss://bucket/key` through Apache OpenDAL on the
//! peer's reqwest client (rustls). Region, endpoint and credentials come
//! from `[source.s3]` / `[source.oss]` or the AWS_* / OSS_* environment;
//! credentials are never logged. Lasting refusals (no such key or bucket,
//! access denied) become one-line errors with their kind.

use super::{ByteStream, Origin, Stat};
use crate::config::{ObjectStoreConfig, SourceConfig};
use crate::error::{Error, FailKind};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use opendal::{ErrorKind, HttpTransporter, Operator};
use opendal_http_transport_reqwest::ReqwestTransport;

pub struct ObjectOrigin {
    op: Operator,
    url: String,
    key: String,
    /// The object's length, from the first stat: every read checks it.
    length: tokio::sync::OnceCell<u64>,
}

fn pick(cfg: &str, env: &[&str]) -> Option<String> {
    if !cfg.is_empty() {
        return Some(cfg.to_string());
    }
    env.iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// `s3://bucket/key` -> (scheme, bucket, key).
pub fn parse(url: &str) -> Result<(String, String, String), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::BadRequest(format!("bad object URL {url:?}")))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
        return Err(Error::BadRequest(format!(
            "object URL {url:?} must be {scheme}://BUCKET/KEY"
        )));
    }
    Ok((scheme.to_ascii_lowercase(), bucket.to_string(), key.to_string()))
}

/// An OpenDAL operator for `bucket` on the scheme's service.
pub fn operator(
    scheme: &str,
    bucket: &str,
    client: &reqwest::Client,
    cfg: &SourceConfig,
) -> Result<Operator, Error> {
    let op = match scheme {
        "s3" => s3(bucket, &cfg.s3)?,
        "oss" => oss(bucket, &cfg.oss)?,
        other => {
            return Err(Error::BadRequest(format!(
                "unsupported object store scheme {other:?}"
            )));
        }
    };
    let ctx = op
        .context()
        .with_http_transport(HttpTransporter::new(ReqwestTransport::new(client.clone())));
    Ok(op.with_context(ctx))
}

fn s3(bucket: &str, c: &ObjectStoreConfig) -> Result<Operator, Error> {
    let region = pick(&c.region, &["AWS_REGION", "AWS_DEFAULT_REGION"])
        .ok_or_else(|| Error::BadRequest("s3: no region: set source.s3.region or AWS_REGION".into()))?;
    let mut b = opendal::services::S3::default()
        .bucket(bucket)
        .region(&region)
        .disable_config_load()
        .disable_ec2_metadata();
    if let Some(e) = pick(&c.endpoint, &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]) {
        b = b.endpoint(&e);
    }
    let id = pick(&c.access_key_id, &["AWS_ACCESS_KEY_ID"]);
    let secret = pick(&c.secret_access_key, &["AWS_SECRET_ACCESS_KEY"]);
    match (id, secret) {
        (Some(id), Some(secret)) => {
            b = b.access_key_id(&id).secret_access_key(&secret);
            if let Some(t) = pick("", &["AWS_SESSION_TOKEN"]) {
                b = b.session_token(&t);
            }
        }
        _ => b = b.skip_signature(),
    }
    Operator::new(b).map_err(|e| Error::BadRequest(format!("s3: {}", e.message())))
}

fn oss(bucket: &str, c: &ObjectStoreConfig) -> Result<Operator, Error> {
    let endpoint = pick(&c.endpoint, &["OSS_ENDPOINT"]).ok_or_else(|| {
        Error::BadRequest("oss: no endpoint: set source.oss.endpoint or OSS_ENDPOINT".into())
    })?;
    let mut b = opendal::services::Oss::default()
        .bucket(bucket)
        .endpoint(&endpoint);
    if let (Some(id), Some(secret)) = (
        pick(&c.access_key_id, &["OSS_ACCESS_KEY_ID"]),
        pick(&c.secret_access_key, &["OSS_ACCESS_KEY_SECRET"]),
    ) {
        b = b.access_key_id(&id).access_key_secret(&secret);
    } else {
        b = b.skip_signature();
    }
    Operator::new(b).map_err(|e| Error::BadRequest(format!("oss: {}", e.message())))
}

/// One line naming what is wrong; the kind decides what `get` is told.
pub fn error(url: &str, e: &opendal::Error) -> Error {
    let text = e.to_string();
    let code = [
        "NoSuchBucket",
        "NoSuchKey",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
    ]
    .into_iter()
    .find(|c| text.contains(c));
    let (kind, what) = match (e.kind(), code) {
        (_, Some("NoSuchBucket")) => (FailKind::NotFound, "no such bucket"),
        // A HEAD's 404 has no body to tell a missing key from a missing bucket.
        (ErrorKind::NotFound, _) => (FailKind::NotFound, "no such key or bucket"),
        (_, Some("InvalidAccessKeyId")) => {
            (FailKind::PermissionDenied, "access denied: unknown access key id")
        }
        (_, Some("SignatureDoesNotMatch")) => (
            FailKind::PermissionDenied,
            "access denied: wrong secret access key",
        ),
        (ErrorKind::PermissionDenied, _) => (FailKind::PermissionDenied, "access denied"),
        (ErrorKind::ConfigInvalid, _) => (FailKind::InvalidArgument, "invalid object store configuration"),
        _ if e.is_temporary() => {
            return Error::Origin(format!("{url}: {}", e.message()));
        }
        _ => (FailKind::Unavailable, "object store error"),
    };
    let detail = if kind == FailKind::Unavailable {
        format!(" ({})", e.message())
    } else {
        String::new()
    };
    Error::Refused {
        kind,
        message: format!("{url}: {what}{detail}"),
    }
}

impl ObjectOrigin {
    pub fn open(url: &str, client: &reqwest::Client, cfg: &SourceConfig) -> Result<Self, Error> {
        let (scheme, bucket, key) = parse(url)?;
        Ok(Self {
            op: operator(&scheme, &bucket, client, cfg)?,
            url: url.to_string(),
            key,
            length: tokio::sync::OnceCell::new(),
        })
    }
}

impl Origin for ObjectOrigin {
    fn stat(&self) -> BoxFuture<'_, Result<Stat, Error>> {
        async move {
            let m = self.op.stat(&self.key).await.map_err(|e| error(&self.url, &e))?;
            let _ = self.length.set(m.content_length());
            Ok(Stat {
                length: m.content_length(),
                etag: m.etag().map(str::to_string),
            })
        }
        .boxed()
    }

    fn read(&self, start: u64, end: u64, total: u64) -> BoxFuture<'_, Result<ByteStream, Error>> {
        async move {
            let actual = *self
                .length
                .get_or_try_init(|| async { self.stat().await.map(|s| s.length) })
                .await?;
            if actual != total {
                return Err(Error::LengthMismatch {
                    expected: total,
                    actual,
                });
            }
            let url = self.url.clone();
            let reader = self.op.reader(&self.key).await.map_err(|e| error(&url, &e))?;
            let stream = reader
                .into_bytes_stream(start..end)
                .await
                .map_err(|e| error(&url, &e))?;
            let url2 = url.clone();
            Ok(stream
                .map_err(move |e| Error::Origin(format!("{url2}: {e}")))
                .boxed())
        }
        .boxed()
    }

    fn name(&self) -> String {
        self.url.clone()
    }
}
