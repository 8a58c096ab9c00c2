//! One connection to a parent, from the child's side.
//!
//! The engine sends piece indices to request; this connection reports what
//! the parent advertises and every piece it sends, already checked against
//! the trusted digest when that is known (the digest comes from the
//! scheduler, never from the parent).

use crate::rate::RateLimiter;
use crate::task::{Task, sha256};
use crate::wire::{Frame, read_frame, write_frame};
use bytes::Bytes;
use damselfly_proto::layout::check_bitmap;
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
    },
    Closed {
        parent: String,
        error: String,
    },
}

/// A live connection; dropping it closes the connection.
pub struct ParentConn {
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
    events: mpsc::UnboundedSender<ParentEvent>,
    limiter: Arc<RateLimiter>,
) -> ParentConn {
    let (tx, rx) = mpsc::unbounded_channel();
    let parent = target.peer_id.clone();
    let handle = tokio::spawn(async move {
        let error = match run(&target, &task, &my_peer_id, &events, rx, &limiter).await {
            Ok(()) => "closed by parent".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = events.send(ParentEvent::Closed { parent, error });
    });
    ParentConn {
        requests: tx,
        task: handle,
    }
}

async fn run(
    target: &Target,
    task: &Arc<Task>,
    me: &str,
    events: &mpsc::UnboundedSender<ParentEvent>,
    mut requests: mpsc::UnboundedReceiver<u32>,
    limiter: &RateLimiter,
) -> std::io::Result<()> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    write_frame(
        &mut wr,
        &Frame::Hello {
            task_id: task.id.clone(),
            peer_id: me.to_string(),
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
        let Some(frame) = read_frame(&mut rd).await? else {
            return Ok(());
        };
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
                limiter.acquire(data.len()).await;
                let started = sent.lock().expect("sent lock").pop_front();
                let verified = task.expected_digest(index).map(|d| sha256(&data) == d);
                ParentEvent::Piece {
                    parent: parent.clone(),
                    index,
                    data,
                    verified,
                    elapsed: started.map(|s| s.elapsed()).unwrap_or_default(),
                }
            }
            Frame::Error(m) => return Err(std::io::Error::other(format!("parent said: {m}"))),
            Frame::Hello { .. } | Frame::Request(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "unexpected frame from parent",
                ));
            }
        };
        if events.send(event).is_err() {
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
