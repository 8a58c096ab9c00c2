//! `damselfly store`: put, stat and delete objects (`s3://`, `oss://`) with
//! the peer's own object store configuration, and the mesh task that names
//! one version of an object.
//!
//! A version is named by its ETag: `store get` asks for the object's stat
//! and downloads the task tagged `etag:<ETag>`, so a replaced object is a
//! new task and a deleted one fails at the stat, never served from stale
//! copies in the mesh. A put streams the file to the store (multipart in
//! 5 MiB parts, two in flight), then warms the mesh: the local peer
//! downloads that task as any reader would, so a seed reads the object once
//! and the first readers find it in the mesh.

use crate::download::{self, Downloader, Request};
use crate::error::Error;
use crate::origin::object::{error, operator, parse};
use damselfly_proto::daemon::StoreObject;
use damselfly_proto::scheduler::TaskSpec;
use damselfly_proto::task_id::task_id;
use opendal::Operator;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tracing::info;

/// Bytes read from the file and handed to the writer at once.
const READ_CHUNK: usize = 1024 * 1024;
/// Multipart part size (S3's smallest) and how many parts are in flight.
/// OpenDAL holds up to four parts at once: the one being gathered, the one
/// waiting for a free slot and those in flight; with 8 MiB parts the
/// putting peer of a 1 GiB object peaked at 98 MiB RSS (debug build).
const PART: usize = 5 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// The mesh tag of an object version.
pub fn tag_of(etag: &str) -> String {
    if etag.is_empty() {
        String::new()
    } else {
        format!("etag:{}", etag.trim_matches('"'))
    }
}

struct Object {
    op: Operator,
    url: String,
    key: String,
}

fn open(d: &Downloader, url: &str) -> Result<Object, Error> {
    let (scheme, bucket, key) = parse(url)?;
    Ok(Object {
        op: operator(&scheme, &bucket, &d.http, &d.config.source)?,
        url: url.to_string(),
        key,
    })
}

fn described(url: &str, m: &opendal::Metadata) -> Result<StoreObject, Error> {
    let etag = m.etag().unwrap_or_default().to_string();
    let tag = tag_of(&etag);
    let last_modified_unix = m
        .last_modified()
        .map(std::time::SystemTime::from)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    Ok(StoreObject {
        url: url.to_string(),
        content_length: m.content_length(),
        task_id: task_id(url, None, &tag, "").map_err(Error::BadRequest)?,
        etag,
        tag,
        last_modified_unix,
    })
}

/// Length, ETag and mesh task of an object.
pub async fn stat(d: &Downloader, url: &str) -> Result<StoreObject, Error> {
    let o = open(d, url)?;
    let m = o.op.stat(&o.key).await.map_err(|e| error(&o.url, &e))?;
    described(url, &m)
}

/// Deletes an object; a missing one is an error naming it.
pub async fn delete(d: &Downloader, url: &str) -> Result<(), Error> {
    let o = open(d, url)?;
    o.op.stat(&o.key).await.map_err(|e| error(&o.url, &e))?;
    o.op.delete(&o.key).await.map_err(|e| error(&o.url, &e))?;
    info!(url, "object deleted");
    Ok(())
}

/// Streams the file at `path` to `url`, then warms the mesh with it.
pub async fn put(d: &Arc<Downloader>, path: &Path, url: &str) -> Result<StoreObject, Error> {
    if !path.is_absolute() {
        return Err(Error::BadRequest(format!(
            "path {} must be absolute",
            path.display()
        )));
    }
    let o = open(d, url)?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut w =
        o.op.writer_with(&o.key)
            .chunk(PART)
            .concurrent(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| error(&o.url, &e))?;
    let mut sent = 0u64;
    loop {
        let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK);
        while buf.len() < READ_CHUNK {
            let n = file
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            break;
        }
        sent += buf.len() as u64;
        if let Err(e) = w.write(buf.freeze()).await {
            let _ = w.abort().await;
            return Err(error(&o.url, &e));
        }
    }
    w.close().await.map_err(|e| error(&o.url, &e))?;
    // The written object's ETag (a multipart upload's close may not say it).
    let object = stat(d, url).await?;
    if object.content_length != sent {
        return Err(Error::Failed(format!(
            "{url}: the store holds {} bytes after a put of {sent}",
            object.content_length
        )));
    }
    info!(url, bytes = sent, "object written; warming the mesh");
    let spec = TaskSpec {
        task_id: object.task_id.clone(),
        url: url.to_string(),
        tag: object.tag.clone(),
        content_length: sent,
        ..Default::default()
    };
    let task = d.start(Request { spec, seed: false }).await?;
    download::wait(&task).await?;
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_named_by_its_etag() {
        assert_eq!(tag_of("\"abc-2\""), "etag:abc-2");
        assert_eq!(tag_of(""), "");
        let a = task_id("s3://b/k", None, &tag_of("\"1\""), "").unwrap();
        let b = task_id("s3://b/k", None, &tag_of("\"2\""), "").unwrap();
        assert_ne!(a, b, "a replaced object is another task");
    }
}
