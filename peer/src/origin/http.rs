//! An http(s) origin through reqwest. Request headers are passed through
//! and never logged; URLs lose their query string in messages.

use super::{ByteStream, Origin, Stat};
use crate::config::SourceConfig;
use crate::error::Error;
use crate::source::{redact_url, retry};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderMap, HeaderName, HeaderValue, RANGE};
use std::collections::HashMap;

pub struct HttpOrigin {
    client: reqwest::Client,
    url: String,
    headers: HeaderMap,
    cfg: SourceConfig,
}

impl HttpOrigin {
    pub fn new(
        client: reqwest::Client,
        url: &str,
        headers: &HashMap<String, String>,
        cfg: SourceConfig,
    ) -> Result<Self, Error> {
        Ok(Self {
            client,
            url: url.to_string(),
            headers: header_map(headers)?,
            cfg,
        })
    }

    /// Learns the content length with a GET of the first byte (HEAD is not
    /// always allowed by object stores' presigned URLs).
    async fn content_length(&self) -> Result<Stat, Error> {
        retry(&self.cfg, || async {
            let resp = self
                .client
                .get(&self.url)
                .headers(self.headers.clone())
                .header(RANGE, "bytes=0-0")
                .send()
                .await
                .map_err(|e| Error::Origin(without_url(&e)))?;
            let status = resp.status().as_u16();
            let etag = resp
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if status == 206 {
                let total = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit('/').next())
                    .and_then(|t| t.parse::<u64>().ok());
                return total
                    .map(|length| Stat { length, etag })
                    .ok_or_else(|| Error::Origin("origin sent 206 without a usable Content-Range".into()));
            }
            if status == 416 {
                return Ok(Stat { length: 0, etag }); // empty content
            }
            if status == 200 {
                // The origin ignores Range.
                return resp
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|length| Stat { length, etag })
                    .ok_or_else(|| {
                        Error::Origin("origin did not send Content-Length; cannot cut it into pieces".into())
                    });
            }
            Err(Error::OriginStatus {
                status,
                url: redact_url(&self.url),
            })
        })
        .await
    }

    async fn range(&self, start: u64, end: u64, total: u64) -> Result<ByteStream, Error> {
        let whole = start == 0 && end == total;
        let mut req = self.client.get(&self.url).headers(self.headers.clone());
        if !whole {
            req = req.header(RANGE, format!("bytes={start}-{}", end - 1));
        }
        let resp = req.send().await.map_err(|e| Error::Origin(without_url(&e)))?;
        let status = resp.status().as_u16();
        if status != 200 && status != 206 {
            return Err(Error::OriginStatus {
                status,
                url: redact_url(&self.url),
            });
        }
        if let Some(actual) = stated_length(status, resp.headers())
            && actual != total
        {
            return Err(Error::LengthMismatch {
                expected: total,
                actual,
            });
        }
        // An origin that ignores Range sends everything: skip to our start.
        let mut skip = if status == 200 { start } else { 0 };
        let body = resp.bytes_stream().filter_map(move |chunk| {
            let out = match chunk {
                Ok(mut c) => {
                    if skip > 0 {
                        let n = skip.min(c.len() as u64);
                        skip -= n;
                        let _ = c.split_to(n as usize);
                    }
                    (!c.is_empty()).then_some(Ok(c))
                }
                Err(e) => Some(Err(Error::Origin(without_url(&e)))),
            };
            futures::future::ready(out)
        });
        Ok(body.boxed())
    }
}

impl Origin for HttpOrigin {
    fn stat(&self) -> BoxFuture<'_, Result<Stat, Error>> {
        self.content_length().boxed()
    }

    fn read(&self, start: u64, end: u64, total: u64) -> BoxFuture<'_, Result<ByteStream, Error>> {
        self.range(start, end, total).boxed()
    }

    fn name(&self) -> String {
        redact_url(&self.url)
    }
}

/// The content length an answer states: the total of a 206's `Content-Range`
/// (`bytes a-b/total`; `*` states none), a 200's `Content-Length`.
fn stated_length(status: u16, headers: &HeaderMap) -> Option<u64> {
    let value = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    match status {
        206 => value(CONTENT_RANGE)?.rsplit('/').next()?.parse().ok(),
        200 => value(CONTENT_LENGTH)?.parse().ok(),
        _ => None,
    }
}

fn header_map(headers: &HashMap<String, String>) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Error::BadRequest(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| Error::BadRequest(format!("invalid value for header {k:?}")))?;
        map.append(name, value);
    }
    Ok(map)
}

/// reqwest errors print the URL, which may carry a presigned signature.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), &redact_url(u.as_str()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_state_their_length() {
        let h = |k: HeaderName, v: &str| HeaderMap::from_iter([(k, HeaderValue::from_str(v).unwrap())]);
        assert_eq!(stated_length(206, &h(CONTENT_RANGE, "bytes 0-9/100")), Some(100));
        assert_eq!(stated_length(206, &h(CONTENT_RANGE, "bytes 0-9/*")), None);
        assert_eq!(stated_length(200, &h(CONTENT_LENGTH, "42")), Some(42));
        assert_eq!(stated_length(200, &HeaderMap::new()), None);
        assert_eq!(stated_length(206, &h(CONTENT_LENGTH, "10")), None);
    }
}
