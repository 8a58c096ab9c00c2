//! Back to source: fetch pieces from the task's [`Origin`] (http(s), S3, OSS).
//!
//! One streaming range read covers a run of missing pieces (a Range request unless
//! it is the whole content); the body is cut at piece boundaries and each
//! piece is hashed as it lands. A download cuts its missing pieces into
//! blocks of about [`BLOCK`] bytes ([`blocks`]) and `source.connections`
//! connections take the next block from one shared queue as they finish
//! one: pieces still arrive about in order (children ask for the lowest
//! first), all connections stay busy to the end, and one connection's slow
//! start or stall, or a long ACK path (a seed whose uplink is full of
//! uploads), costs less. A dropped connection or a 5xx is retried
//! with exponential backoff from the first piece not yet delivered.
//! Request headers are passed through and never logged.

use crate::config::SourceConfig;
use crate::error::Error;
use crate::memory::{PieceMemory, Reserved};
use crate::origin::Origin;
use crate::task::sha256;
use bytes::{Bytes, BytesMut};
use damselfly_proto::piece::Layout;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

#[derive(Debug)]
pub enum SourceEvent {
    /// The content length, when the caller did not know the layout.
    Length(u64),
    Piece {
        index: u32,
        data: Bytes,
        digest: [u8; 32],
        /// The piece's bytes in the peer's [`PieceMemory`], until it is stored.
        reserved: Reserved,
    },
    Done,
    Failed(Error),
    /// One Range GET answered with a good status after this long (time to headers).
    Answered(std::time::Duration),
}

pub fn client(cfg: &SourceConfig) -> Result<reqwest::Client, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::limited(10));
    if cfg.insecure_tls {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| Error::Origin(format!("cannot build HTTP client: {e}")))
}

/// Runs of pieces (first, last) not yet fetched, shared by one download's connections.
pub type Blocks = Arc<Mutex<VecDeque<(u32, u32)>>>;

/// Streams blocks taken from `blocks` from the origin into `events`, one
/// request per block, until none is left.
pub async fn fetch(
    origin: Arc<dyn Origin>,
    layout: Layout,
    blocks: Blocks,
    cfg: SourceConfig,
    events: mpsc::Sender<SourceEvent>,
    memory: Arc<PieceMemory>,
) {
    let result = fetch_all(origin.as_ref(), layout, &blocks, &cfg, &events, &memory).await;
    let _ = events
        .send(match result {
            Ok(()) => SourceEvent::Done,
            Err(e) => SourceEvent::Failed(e),
        })
        .await;
}

/// The unit dealt to each connection to the origin.
pub const BLOCK: u64 = 8 * 1024 * 1024;

/// `pieces` (ascending) as runs of consecutive pieces of at most about
/// [`BLOCK`] bytes each.
pub fn blocks(layout: Layout, pieces: &[u32]) -> VecDeque<(u32, u32)> {
    let per_block = (BLOCK / layout.piece_length as u64).max(1) as u32;
    let mut out = VecDeque::new();
    for (first, last) in runs(pieces) {
        let mut start = first;
        while start <= last {
            let end = last.min(start + per_block - 1);
            out.push_back((start, end));
            start = end + 1;
        }
    }
    out
}

/// Consecutive runs of piece indices: [1,2,3,7,8] -> [(1,3),(7,8)].
pub fn runs(pieces: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &p in pieces {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => out.push((p, p)),
        }
    }
    out
}

async fn fetch_all(
    origin: &dyn Origin,
    layout: Layout,
    blocks: &Blocks,
    cfg: &SourceConfig,
    events: &mpsc::Sender<SourceEvent>,
    memory: &PieceMemory,
) -> Result<(), Error> {
    loop {
        if events.is_closed() {
            return Ok(()); // the download is gone
        }
        let Some((first, last)) = blocks.lock().expect("blocks lock").pop_front() else {
            return Ok(());
        };
        let mut next = first;
        let mut attempt = 0;
        while next <= last {
            match fetch_run(origin, layout, next, last, events, memory).await {
                Ok(n) => next = n,
                Err((n, e)) => {
                    let progressed = n > next;
                    next = n;
                    if next > last {
                        break;
                    }
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    attempt = if progressed { 1 } else { attempt + 1 };
                    if attempt > cfg.retries {
                        return Err(e);
                    }
                    let backoff = cfg.retry_backoff * 2u32.saturating_pow(attempt - 1);
                    warn!(error = %e, attempt, ?backoff, "origin fetch failed, retrying");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
}

/// Fetches pieces `first..=last` in one request. Returns the next piece to
/// fetch, with the error that stopped it early.
async fn fetch_run(
    origin: &dyn Origin,
    layout: Layout,
    first: u32,
    last: u32,
    events: &mpsc::Sender<SourceEvent>,
    memory: &PieceMemory,
) -> Result<u32, (u32, Error)> {
    let start = layout.offset(first);
    let end = layout.offset(last) + layout.len_of(last) as u64; // exclusive
    let asked = std::time::Instant::now();
    let mut body = origin
        .read(start, end, layout.content_length)
        .await
        .map_err(|e| (first, e))?;
    let _ = events.send(SourceEvent::Answered(asked.elapsed())).await;
    debug!(first, last, "fetching pieces from origin");
    let mut index = first;
    let mut buf = BytesMut::with_capacity(layout.piece_length as usize);
    // Each piece is gathered only once the peer's memory has room for it.
    let mut reserved = memory.reserve(layout.len_of(index)).await;
    while index <= last {
        // Each piece's own length: the last one may be short and arrive in
        // the same chunk as the one before it.
        while buf.len() >= layout.len_of(index) as usize {
            let data = buf.split_to(layout.len_of(index) as usize).freeze();
            let digest = sha256(&data);
            if events
                .send(SourceEvent::Piece {
                    index,
                    data,
                    digest,
                    reserved,
                })
                .await
                .is_err()
            {
                return Ok(last + 1);
            }
            index += 1;
            if index > last {
                return Ok(index);
            }
            // Given back only once the engine stored the piece just sent.
            reserved = memory.reserve(layout.len_of(index)).await;
        }
        let want = layout.len_of(index) as usize;
        match body.next().await {
            Some(Ok(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.capacity() < want {
                    buf.reserve(want - buf.len());
                }
            }
            Some(Err(e)) => return Err((index, e)),
            None => {
                return Err((
                    index,
                    Error::Origin(format!("origin closed the body early at piece {index}")),
                ));
            }
        }
    }
    Ok(index)
}

pub async fn retry<T, F, Fut>(cfg: &SourceConfig, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < cfg.retries => {
                attempt += 1;
                tokio::time::sleep(cfg.retry_backoff * 2u32.saturating_pow(attempt - 1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The URL without its query string (signatures, tokens).
pub fn redact_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?<redacted>"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short last piece that arrives in the same chunk as the piece
    /// before it is delivered from that one response (no second request).
    #[tokio::test]
    async fn a_short_last_piece_in_one_chunk() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut req = vec![0u8; 4096];
                let _ = conn.read(&mut req).await;
                let resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789";
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        let cfg = SourceConfig::default();
        let (tx, mut rx) = mpsc::channel(16);
        let origin = crate::origin::open(
            &format!("http://{addr}/blob"),
            &std::collections::HashMap::new(),
            &client(&cfg).unwrap(),
            &cfg,
        )
        .unwrap();
        fetch(
            origin,
            Layout::new(10, 4),
            Arc::new(Mutex::new(blocks(Layout::new(10, 4), &[0, 1, 2]))),
            cfg,
            tx,
            Arc::new(PieceMemory::new(1 << 20)),
        )
        .await;
        let mut pieces = Vec::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                SourceEvent::Piece { index, data, .. } => pieces.push((index, data.to_vec())),
                SourceEvent::Done => break,
                SourceEvent::Answered(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let expected: Vec<(u32, Vec<u8>)> =
            vec![(0, b"0123".to_vec()), (1, b"4567".to_vec()), (2, b"89".to_vec())];
        assert_eq!(pieces, expected);
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn blocks_cut_runs_of_missing_pieces() {
        let mib = 1024 * 1024;
        // 4 MiB pieces: two per 8 MiB block.
        let layout = Layout::new(40 * mib, 4 * mib as u32);
        let all: Vec<u32> = (0..10).collect();
        assert_eq!(
            Vec::from(blocks(layout, &all)),
            vec![(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
        );
        assert_eq!(
            Vec::from(blocks(layout, &[1, 2, 3, 7])),
            vec![(1, 2), (3, 3), (7, 7)]
        );
        assert!(blocks(layout, &[]).is_empty());
        // Pieces larger than a block: one piece per block.
        let big = Layout::new(64 * mib, 16 * mib as u32);
        assert_eq!(Vec::from(blocks(big, &[0, 1])), vec![(0, 0), (1, 1)]);
    }

    #[test]
    fn runs_of_pieces() {
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10]), vec![(1, 3), (7, 8), (10, 10)]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn urls_lose_their_query_in_messages() {
        assert_eq!(
            redact_url("http://o/f?X-Amz-Signature=abc"),
            "http://o/f?<redacted>"
        );
        assert_eq!(redact_url("http://o/f"), "http://o/f");
    }
}
