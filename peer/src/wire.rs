//! The piece protocol between peers: length-prefixed frames on one TCP
//! connection per (child, parent, task).
//!
//! Frame: `kind: u8`, `len: u32` (big-endian), `len` bytes of payload.
//! The child opens with `Hello` and then sends `Request`s, pipelining several;
//! the parent answers with its `Bitmap`, then `Have`s as it gets (or decides
//! to advertise) pieces, and a `Piece` per request, in request order. No
//! per-piece connection set-up, no per-piece framing beyond 9 bytes.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The piece protocol's version, the first two bytes of every `Hello`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest ticket a `Hello` may carry (a ticket is `damselfly_service::ticket::TICKET_LEN`).
const MAX_TICKET: usize = 256;

/// Largest frame accepted: a max-size piece plus its header.
pub const MAX_FRAME: u32 = damselfly_proto::piece::MAX_PIECE_LENGTH + 64;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Child -> parent, first frame. `version` is the child's [`PROTOCOL_VERSION`]; a parent
    /// answers another version with an `Error` and closes. `ticket`: the scheduler's piece
    /// ticket for this child and task (see `damselfly_service::ticket`), empty without TLS.
    /// Payload: version (u16), `task_id` `\n` `peer_id`, and with a ticket `\n` and its hex.
    Hello {
        version: u16,
        task_id: String,
        peer_id: String,
        ticket: Vec<u8>,
    },
    /// Child -> parent: send me this piece.
    Request(u32),
    /// Parent -> child: what it advertises now (little-endian bitmap).
    Bitmap { pieces: u32, bits: Vec<u8> },
    /// Parent -> child: newly advertised pieces.
    Have(Vec<u32>),
    /// Parent -> child: the bytes of one piece.
    Piece { index: u32, data: Bytes },
    /// Either way: a reason to close.
    Error(String),
}

const HELLO: u8 = 1;
const REQUEST: u8 = 2;
const BITMAP: u8 = 10;
const HAVE: u8 = 11;
const PIECE: u8 = 12;
const ERROR: u8 = 13;

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn u32_at(b: &[u8], at: usize) -> std::io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| bad("frame too short"))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> std::io::Result<()> {
    let (kind, head, body): (u8, Vec<u8>, &[u8]) = match f {
        Frame::Hello {
            version,
            task_id,
            peer_id,
            ticket,
        } => {
            let mut h = version.to_be_bytes().to_vec();
            h.extend_from_slice(format!("{task_id}\n{peer_id}").as_bytes());
            if !ticket.is_empty() {
                h.push(b'\n');
                h.extend_from_slice(hex::encode(ticket).as_bytes());
            }
            (HELLO, h, &[])
        }
        Frame::Request(i) => (REQUEST, i.to_be_bytes().to_vec(), &[]),
        Frame::Bitmap { pieces, bits } => {
            let mut h = pieces.to_be_bytes().to_vec();
            h.extend_from_slice(bits);
            (BITMAP, h, &[])
        }
        Frame::Have(list) => (HAVE, list.iter().flat_map(|i| i.to_be_bytes()).collect(), &[]),
        Frame::Piece { index, data } => (PIECE, index.to_be_bytes().to_vec(), data.as_ref()),
        Frame::Error(m) => (ERROR, m.as_bytes().to_vec(), &[]),
    };
    let len = (head.len() + body.len()) as u32;
    let mut header = Vec::with_capacity(5 + head.len());
    header.push(kind);
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&head);
    w.write_all(&header).await?;
    if !body.is_empty() {
        w.write_all(body).await?;
    }
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    match read_header(r).await? {
        Some(h) => read_body(r, h).await.map(Some),
        None => Ok(None),
    }
}

/// A frame's kind and payload length, read before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    kind: u8,
    pub len: u32,
}

impl Header {
    /// A `Piece` frame: its payload is the piece (and 4 bytes of index).
    pub fn is_piece(&self) -> bool {
        self.kind == PIECE
    }
}

/// Reads a frame's header (`Ok(None)` at a clean end of stream); the
/// length is checked against [`MAX_FRAME`] before anything is allocated.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Header>> {
    let kind = match r.read_u8().await {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = r.read_u32().await?;
    if len > MAX_FRAME {
        return Err(bad(format!("frame of {len} bytes is too large")));
    }
    Ok(Some(Header { kind, len }))
}

/// Reads the payload of the frame whose header was just read.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, header: Header) -> std::io::Result<Frame> {
    let Header { kind, len } = header;
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    let frame = match kind {
        HELLO => {
            let version = buf.get(..2).ok_or_else(|| bad("malformed hello"))?;
            let version = u16::from_be_bytes([version[0], version[1]]);
            let s = String::from_utf8(buf.split_off(2)).map_err(|_| bad("hello is not utf-8"))?;
            let mut parts = s.splitn(3, '\n');
            let (Some(task_id), Some(peer_id)) = (parts.next(), parts.next()) else {
                return Err(bad("malformed hello"));
            };
            let ticket = match parts.next() {
                None => Vec::new(),
                Some(h) if !h.is_empty() && h.len() <= 2 * MAX_TICKET => {
                    hex::decode(h).map_err(|_| bad("malformed hello ticket"))?
                }
                Some(_) => return Err(bad("malformed hello ticket")),
            };
            Frame::Hello {
                version,
                task_id: task_id.into(),
                peer_id: peer_id.into(),
                ticket,
            }
        }
        REQUEST => Frame::Request(u32_at(&buf, 0)?),
        BITMAP => Frame::Bitmap {
            pieces: u32_at(&buf, 0)?,
            bits: buf[4..].to_vec(),
        },
        HAVE => {
            if !buf.len().is_multiple_of(4) {
                return Err(bad("malformed have"));
            }
            Frame::Have(
                buf.chunks_exact(4)
                    .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            )
        }
        PIECE => {
            let index = u32_at(&buf, 0)?;
            let mut data = Bytes::from(buf);
            let data = data.split_off(4);
            Frame::Piece { index, data }
        }
        ERROR => Frame::Error(String::from_utf8_lossy(&buf).into_owned()),
        other => return Err(bad(format!("unknown frame kind {other}"))),
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let frames = vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                task_id: "t".into(),
                peer_id: "p".into(),
                ticket: Vec::new(),
            },
            Frame::Hello {
                version: PROTOCOL_VERSION,
                task_id: "t".into(),
                peer_id: "p".into(),
                ticket: vec![0, 1, 0xff],
            },
            Frame::Request(7),
            Frame::Bitmap {
                pieces: 9,
                bits: vec![0xff, 1],
            },
            Frame::Have(vec![1, 2, 300]),
            Frame::Piece {
                index: 3,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Error("gone".into()),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        let mut r = buf.as_slice();
        for f in &frames {
            assert_eq!(&read_frame(&mut r).await.unwrap().unwrap(), f);
        }
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        for input in [
            vec![99u8, 0, 0, 0, 0],
            vec![PIECE, 0xff, 0xff, 0xff, 0xff],
            vec![HAVE, 0, 0, 0, 3, 1, 2, 3],
            vec![REQUEST, 0, 0, 0, 1, 0],
            vec![HELLO, 0, 0, 0, 1, b'x'],
            vec![PIECE, 0, 0],
        ] {
            let mut r = input.as_slice();
            assert!(read_frame(&mut r).await.is_err(), "{input:?}");
        }
    }

    /// Randomized decoding (a seeded fuzz run, in every `cargo test`): arbitrary frames never
    /// panic or allocate beyond `MAX_FRAME`; whatever decodes re-encodes to the same frame; a
    /// decoded bitmap goes through `check_bitmap`, which accepts only what fits its claim.
    #[tokio::test]
    async fn random_frames_decode_safely() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let kinds = [HELLO, REQUEST, BITMAP, HAVE, PIECE, ERROR, 0, 3, 255];
        for _ in 0..20_000 {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let body_len = rng.random_range(0..64usize);
            let mut body: Vec<u8> = (0..body_len).map(|_| rng.random()).collect();
            if kind == HELLO && rng.random_bool(0.5) {
                body = [&PROTOCOL_VERSION.to_be_bytes()[..], b"t\np"].concat();
            }
            // The length field: usually right, sometimes a lie (short, long, huge).
            let len: u32 = match rng.random_range(0..4) {
                0 => rng.random(),
                1 => body_len.saturating_sub(1) as u32,
                _ => body_len as u32,
            };
            let mut input = vec![kind];
            input.extend_from_slice(&len.to_be_bytes());
            input.extend_from_slice(&body);
            let mut r = input.as_slice();
            let Ok(Some(frame)) = read_frame(&mut r).await else {
                continue;
            };
            let mut out = Vec::new();
            write_frame(&mut out, &frame).await.unwrap();
            let mut again = out.as_slice();
            assert_eq!(read_frame(&mut again).await.unwrap(), Some(frame.clone()));
            if let Frame::Bitmap { pieces, bits } = frame
                && let Ok(v) = damselfly_proto::layout::check_bitmap(None, pieces, &bits)
            {
                assert_eq!(v.len(), pieces as usize);
                assert!(pieces <= damselfly_proto::layout::MAX_PIECES);
            }
        }
    }
}
