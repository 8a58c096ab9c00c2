//! One connection to a parent, from the child's side.
//!
//! The engine sends piece indices to request; this connection reports what
//! the parent advertises and every piece it sends, already checked against
//! the trusted digest when that is known (the digest comes from the
//! scheduler, never from the parent).

use crate::memory::{PieceMemory, Reserved};
use crate::rate::RateLimiter;
use crate::task::{Task, sha256};
use crate::wire::{Frame, read_body, read_header, write_frame};
use bytes::Bytes;
use damselfly_proto::layout::check_bitmap;
use damselfly_proto::scheduler::FailReason;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum ParentEvent {
    /// The parent's advertised set, replacing what was known.
    Bitmap {
        parent: String,
        have: Vec<bool>,
    },
    Have {
        parent: String,
        pieces: Vec<u32>,
    },
    Piece {
        parent: String,
        index: u32,
        data: Bytes,
        /// `Some(true/false)`: checked against the trusted digest.
        verified: Option<bool>,
        elapsed: Duration,
        /// The piece's bytes in the peer's [`PieceMemory`], until it is stored.
        reserved: Reserved,
    },
    Closed {
        parent: String,
        error: String,
        fault: FailReason,
    },
}

/// What a parent's `Error` frame means for the child: a parent at its upload
/// limit is busy (ask again later), one without the task does not hold it,
/// anything else counts as unreachable.
pub fn fault_of(message: &str) -> FailReason {
    if message.starts_with(BUSY) {
        FailReason::Busy
    } else if message.ends_with(NOT_HERE) {
        FailReason::NotHere
    } else {
        FailReason::Unreachable
    }
}

/// How the piece server starts its answer to a child it cannot take now.
pub const BUSY: &str = "busy:";
/// How the piece server starts its answer to a child without a valid piece ticket.
pub const NO_TICKET: &str = "ticket refused: ";
/// How the piece server ends its answer for a task it does not hold.
pub const NOT_HERE: &str = "not here";

#[derive(Debug)]
struct Refused(FailReason, String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "parent said: {}", self.1)
    }
}

impl std::error::Error for Refused {}

/// A live connection; dropping it closes the connection.
pub struct ParentConn {
    /// Unbounded, yet never long: the picker keeps a few requests in flight per parent.
    requests: mpsc::UnboundedSender<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ParentConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ParentConn {
    pub fn request(&self, index: u32) -> bool {
        self.requests.send(index).is_ok()
    }
}

pub struct Target {
    pub peer_id: String,
    pub addr: String,
}

pub fn connect(
    target: Target,
    task: Arc<Task>,
    my_peer_id: String,
    ticket: Vec<u8>,
    events: mpsc::Sender<ParentEvent>,
    limiter: Arc<RateLimiter>,
    memory: Arc<PieceMemory>,
) -> ParentConn {
    let (tx, rx) = mpsc::unbounded_channel();
    let parent = target.peer_id.clone();
    let handle = tokio::spawn(async move {
        let links = Links {
            events: &events,
            limiter: &limiter,
            memory: &memory,
        };
        let (error, fault) = match run(&target, &task, &my_peer_id, ticket, links, rx).await {
            Ok(()) => ("closed by parent".to_string(), FailReason::Unreachable),
            Err(e) => {
                let fault = e
                    .get_ref()
                    .and_then(|r| r.downcast_ref::<Refused>())
                    .map_or(FailReason::Unreachable, |r| r.0);
                (e.to_string(), fault)
            }
        };
        let _ = events.send(ParentEvent::Closed { parent, error, fault }).await;
    });
    ParentConn {
        requests: tx,
        task: handle,
    }
}

type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
type Writer = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// A piece connection, over TLS when the process has it (the parent must hold a peer role).
async fn piece_stream(tcp: TcpStream) -> std::io::Result<(Reader, Writer)> {
    match damselfly_service::tls::installed() {
        None => {
            let (rd, wr) = tcp.into_split();
            Ok((Box::new(rd), Box::new(wr)))
        }
        Some(tls) => {
            let (rd, wr) = tokio::io::split(tls.connect_piece(tcp).await?);
            Ok((Box::new(rd), Box::new(wr)))
        }
    }
}

/// What a connection shares with its download and peer.
struct Links<'a> {
    events: &'a mpsc::Sender<ParentEvent>,
    limiter: &'a RateLimiter,
    memory: &'a PieceMemory,
}

async fn run(
    target: &Target,
    task: &Arc<Task>,
    me: &str,
    ticket: Vec<u8>,
    links: Links<'_>,
    mut requests: mpsc::UnboundedReceiver<u32>,
) -> std::io::Result<()> {
    let Links {
        events,
        limiter,
        memory,
    } = links;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = piece_stream(stream).await?;
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    write_frame(
        &mut wr,
        &Frame::Hello {
            version: crate::wire::PROTOCOL_VERSION,
            task_id: task.id.clone(),
            peer_id: me.to_string(),
            ticket,
        },
    )
    .await?;
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let sent_w = sent.clone();
    let writer = tokio::spawn(async move {
        while let Some(i) = requests.recv().await {
            sent_w.lock().expect("sent lock").push_back(Instant::now());
            if write_frame(&mut wr, &Frame::Request(i)).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
    });
    let _writer = AbortOnDrop(writer);
    let parent = target.peer_id.clone();
    loop {
        let Some(header) = read_header(&mut rd).await? else {
            return Ok(());
        };
        // A piece's bytes are read only once the peer's memory has room for them.
        let reserved = match header.is_piece() {
            true => Some(memory.reserve(header.len).await),
            false => None,
        };
        let frame = read_body(&mut rd, header).await?;
        let event = match frame {
            Frame::Bitmap { pieces, bits } => ParentEvent::Bitmap {
                parent: parent.clone(),
                have: check_bitmap(task.layout(), pieces, &bits)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            },
            Frame::Have(pieces) => ParentEvent::Have {
                parent: parent.clone(),
                pieces,
            },
            Frame::Piece { index, data } => {
                let reserved = reserved.expect("reserved for every piece frame");
                limiter.acquire(data.len()).await;
                let started = sent.lock().expect("sent lock").pop_front();
                let verified = task.expected_digest(index).map(|d| sha256(&data) == d);
                ParentEvent::Piece {
                    parent: parent.clone(),
                    index,
                    data,
                    verified,
                    elapsed: started.map(|s| s.elapsed()).unwrap_or_default(),
                    reserved,
                }
            }
            Frame::Error(m) => return Err(std::io::Error::other(Refused(fault_of(&m), m))),
            Frame::Hello { .. } | Frame::Request(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "unexpected frame from parent",
                ));
            }
        };
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parents_refusal_is_typed() {
        assert_eq!(fault_of("busy: too many children"), FailReason::Busy);
        assert_eq!(fault_of("task abc not here"), FailReason::NotHere);
        assert_eq!(fault_of("piece 3 not held"), FailReason::Unreachable);
        let e = std::io::Error::other(Refused(FailReason::Busy, "busy: x".into()));
        assert_eq!(
            e.get_ref().and_then(|r| r.downcast_ref::<Refused>()).map(|r| r.0),
            Some(FailReason::Busy)
        );
    }
}
