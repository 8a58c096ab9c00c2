//! Layouts and piece numbers that came from the network, checked once.
//!
//! Every role that takes a content length, a piece length, a bitmap or a
//! piece index from another host (scheduler registration, a peer told the
//! layout, a parent's bitmap, the manager's settings) goes through here, so
//! one set of bounds holds everywhere: a piece length every peer can carry in
//! one wire frame, a piece count that keeps per-task state small, and no
//! arithmetic that wraps.

use crate::piece::Layout;
use std::ops::RangeInclusive;

/// Piece lengths every role accepts (powers of two only). The top is what
/// one piece-protocol frame carries; the manager refuses settings outside.
pub const PIECE_LENGTH_BOUNDS: RangeInclusive<u32> = (64 * 1024)..=(16 * 1024 * 1024);
/// Most pieces of one task (the scheduler keeps a digest per piece: 4 MiB at most).
pub const MAX_PIECES: u32 = 1 << 17;
/// Largest content one task may have (every piece at the largest length).
pub const MAX_CONTENT_LENGTH: u64 = MAX_PIECES as u64 * *PIECE_LENGTH_BOUNDS.end() as u64;

/// Why a layout or piece number was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutError {
    PieceLength(u64),
    ContentLength(u64),
    TooManyPieces { content_length: u64, piece_length: u32 },
    Index { index: u32, pieces: u32 },
    Bitmap { bits: u64, pieces: u32 },
    Mismatch { known: Layout, claimed: Layout },
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PieceLength(n) => write!(
                f,
                "piece length {n} must be a power of two within {}..={}",
                PIECE_LENGTH_BOUNDS.start(),
                PIECE_LENGTH_BOUNDS.end()
            ),
            Self::ContentLength(n) => {
                write!(
                    f,
                    "content length {n} exceeds the limit of {MAX_CONTENT_LENGTH} bytes"
                )
            }
            Self::TooManyPieces {
                content_length,
                piece_length,
            } => write!(
                f,
                "{content_length} bytes in pieces of {piece_length} is more than {MAX_PIECES} pieces"
            ),
            Self::Index { index, pieces } => {
                write!(f, "piece {index} is out of range (the task has {pieces})")
            }
            Self::Bitmap { bits, pieces } => {
                write!(f, "a bitmap of {bits} pieces does not fit a task of {pieces}")
            }
            Self::Mismatch { known, claimed } => write!(
                f,
                "layout {}/{} differs from the task's {}/{}",
                claimed.content_length, claimed.piece_length, known.content_length, known.piece_length
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// A piece length every role can carry: a power of two within [`PIECE_LENGTH_BOUNDS`].
pub fn check_piece_length(n: u64) -> Result<u32, LayoutError> {
    match u32::try_from(n) {
        Ok(v) if v.is_power_of_two() && PIECE_LENGTH_BOUNDS.contains(&v) => Ok(v),
        _ => Err(LayoutError::PieceLength(n)),
    }
}

impl Layout {
    /// A layout from another host: a piece length every role carries, at most
    /// [`MAX_CONTENT_LENGTH`] bytes in at most [`MAX_PIECES`] pieces.
    pub fn try_new(content_length: u64, piece_length: u32) -> Result<Self, LayoutError> {
        check_piece_length(piece_length as u64)?;
        if content_length > MAX_CONTENT_LENGTH {
            return Err(LayoutError::ContentLength(content_length));
        }
        if content_length.div_ceil(piece_length as u64) > MAX_PIECES as u64 {
            return Err(LayoutError::TooManyPieces {
                content_length,
                piece_length,
            });
        }
        Ok(Self::new(content_length, piece_length))
    }

    /// `claimed`, if it agrees with the layout already known (`None`: nothing known yet).
    pub fn matches(known: Option<Layout>, claimed: Layout) -> Result<Layout, LayoutError> {
        match known {
            Some(k) if k != claimed => Err(LayoutError::Mismatch { known: k, claimed }),
            _ => Ok(claimed),
        }
    }

    /// `index`, if the task has that piece.
    pub fn check_index(&self, index: u32) -> Result<u32, LayoutError> {
        if index < self.piece_count() {
            Ok(index)
        } else {
            Err(LayoutError::Index {
                index,
                pieces: self.piece_count(),
            })
        }
    }

    /// A little-endian bitmap announced for `bits` pieces, as one flag per
    /// piece of this task: `bits` must be the task's piece count and the
    /// bytes exactly enough for it, with no bit set past the end.
    pub fn check_bitmap(&self, bits: u64, bytes: &[u8]) -> Result<Vec<bool>, LayoutError> {
        let pieces = self.piece_count();
        let fits = bits == pieces as u64
            && bytes.len() as u64 == (pieces as u64).div_ceil(8)
            && bytes
                .last()
                .is_none_or(|b| pieces.is_multiple_of(8) || b >> (pieces % 8) == 0);
        if !fits {
            return Err(LayoutError::Bitmap { bits, pieces });
        }
        Ok((0..pieces as usize)
            .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
            .collect())
    }
}

/// A parent's bitmap of `bits` pieces: checked against the task's layout
/// when it is known, else only bounded by [`MAX_PIECES`].
pub fn check_bitmap(known: Option<Layout>, bits: u32, bytes: &[u8]) -> Result<Vec<bool>, LayoutError> {
    match known {
        Some(l) => l.check_bitmap(bits as u64, bytes),
        None if bits <= MAX_PIECES && bytes.len() as u64 == (bits as u64).div_ceil(8) => Ok((0..bits
            as usize)
            .map(|i| bytes[i / 8] & (1 << (i % 8)) != 0)
            .collect()),
        None => Err(LayoutError::Bitmap {
            bits: bits as u64,
            pieces: MAX_PIECES,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u32 = 1024;
    const MIB: u64 = 1024 * 1024;

    #[test]
    fn piece_lengths_outside_the_bounds_are_refused() {
        for bad in [0u32, 1, 4, 32 * KIB, 96 * KIB, 32 << 20, u32::MAX] {
            assert_eq!(
                Layout::try_new(MIB, bad),
                Err(LayoutError::PieceLength(bad as u64)),
                "{bad}"
            );
        }
        assert!(check_piece_length(1 << 32).is_err(), "no truncation to u32");
        for good in [64 * KIB, 256 * KIB, 16 << 20] {
            assert_eq!(Layout::try_new(MIB, good).unwrap().piece_length, good);
        }
    }

    #[test]
    fn absurd_lengths_are_refused_without_wrapping() {
        let p = 64 * KIB;
        // 2^32 bytes in 64 KiB pieces is 65536 pieces: fine, no wrap to 0.
        assert_eq!(Layout::try_new(1 << 32, p).unwrap().piece_count(), 65536);
        assert!(matches!(
            Layout::try_new(u32::MAX as u64, 1),
            Err(LayoutError::PieceLength(1))
        ));
        assert!(matches!(
            Layout::try_new(1 << 63, p),
            Err(LayoutError::ContentLength(_))
        ));
        assert!(matches!(
            Layout::try_new(u64::MAX, 16 << 20),
            Err(LayoutError::ContentLength(_))
        ));
        assert!(matches!(
            Layout::try_new(MAX_PIECES as u64 * p as u64 + 1, p),
            Err(LayoutError::TooManyPieces { .. })
        ));
        let biggest = Layout::try_new(MAX_CONTENT_LENGTH, *PIECE_LENGTH_BOUNDS.end()).unwrap();
        assert_eq!(biggest.piece_count(), MAX_PIECES);
        assert_eq!(Layout::try_new(0, p).unwrap().piece_count(), 0);
    }

    #[test]
    fn the_default_rule_stays_within_the_bounds() {
        use crate::piece::{MAX_PIECE_LENGTH, MIN_PIECE_LENGTH, piece_length_for};
        assert!(check_piece_length(MIN_PIECE_LENGTH as u64).is_ok());
        assert!(check_piece_length(MAX_PIECE_LENGTH as u64).is_ok());
        for len in [0, 1, MIB, 1 << 40, MAX_CONTENT_LENGTH] {
            Layout::try_new(len, piece_length_for(len)).unwrap();
        }
    }

    #[test]
    fn a_layout_must_match_the_known_one() {
        let a = Layout::try_new(MIB, 256 * KIB).unwrap();
        let b = Layout::try_new(2 * MIB, 256 * KIB).unwrap();
        assert_eq!(Layout::matches(None, a), Ok(a));
        assert_eq!(Layout::matches(Some(a), a), Ok(a));
        assert!(matches!(
            Layout::matches(Some(a), b),
            Err(LayoutError::Mismatch { .. })
        ));
    }

    #[test]
    fn indexes_and_bitmaps_are_checked_against_the_task() {
        // 10 pieces: bitmap of 2 bytes, bits 10..16 must be clear.
        let l = Layout::try_new(10 * 64 * KIB as u64 - 1, 64 * KIB).unwrap();
        assert_eq!(l.piece_count(), 10);
        assert_eq!(l.check_index(9), Ok(9));
        assert!(l.check_index(10).is_err());
        assert!(l.check_index(u32::MAX).is_err());
        let have = l.check_bitmap(10, &[0b0000_0101, 0b10]).unwrap();
        assert_eq!(have.iter().filter(|h| **h).count(), 3);
        assert!(have[0] && have[2] && have[9] && !have[1]);
        for (bits, bytes) in [
            (11u64, vec![0, 0]),
            (u32::MAX as u64, vec![0, 0]),
            (10, vec![0]),
            (10, vec![0, 0, 0]),
            (10, vec![0, 0b100]),
            (10, vec![]),
        ] {
            assert!(l.check_bitmap(bits, &bytes).is_err(), "{bits} {bytes:?}");
        }
        assert_eq!(check_bitmap(Some(l), 10, &[1, 0]).unwrap().len(), 10);
        assert!(
            check_bitmap(None, u32::MAX, &[]).is_err(),
            "no layout: bounded all the same"
        );
        assert!(check_bitmap(None, 9, &[0]).is_err());
        assert_eq!(check_bitmap(None, 9, &[0, 1]).unwrap().len(), 9);
        let empty = Layout::try_new(0, 64 * KIB).unwrap();
        assert_eq!(empty.check_bitmap(0, &[]).unwrap(), Vec::<bool>::new());
    }
}
