//! Piece math: how long a piece is, how many a task has, where one starts.
//!
//! The rule: aim at about [`TARGET_PIECES`] pieces per task, rounded up to a
//! power of two and kept within [`MIN_PIECE_LENGTH`]..=[`MAX_PIECE_LENGTH`].
//! Why: a piece is the unit a peer verifies before it may forward a byte, so
//! every hop of the swarm adds one piece time (256 KiB at 100 Mbit/s is 21 ms)
//! and small pieces keep the pipeline short; but every piece costs a request,
//! a digest (32 bytes) and a bitmap bit, so a few hundred per task keeps that
//! overhead well under 1 %. A 64 MiB file gets 256 KiB pieces, 1 GiB gets
//! 2 MiB, and only files above 8 GiB get more than 512 pieces.

pub const MIN_PIECE_LENGTH: u32 = 256 * 1024;
/// The largest piece length any role carries (one wire frame).
pub const MAX_PIECE_LENGTH: u32 = *crate::layout::PIECE_LENGTH_BOUNDS.end();
pub const TARGET_PIECES: u64 = 512;

/// The piece length for content of `content_length` bytes.
pub fn piece_length_for(content_length: u64) -> u32 {
    piece_length_within(content_length, MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
}

/// The piece length for content of `content_length` bytes, by the same rule
/// but kept within `min..=max` (a cluster's bounds; both powers of two, so
/// the result is one too). A `min` above `max` yields `max`.
pub fn piece_length_within(content_length: u64, min: u32, max: u32) -> u32 {
    let ideal = content_length.div_ceil(TARGET_PIECES).max(1);
    let pow2 = ideal.checked_next_power_of_two().unwrap_or(u64::MAX);
    pow2.max(min as u64).min(max as u64).max(1) as u32
}

/// Where the pieces of one task lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub content_length: u64,
    pub piece_length: u32,
}

impl Layout {
    pub fn new(content_length: u64, piece_length: u32) -> Self {
        assert!(piece_length > 0, "piece length must be positive");
        Self {
            content_length,
            piece_length,
        }
    }

    /// The default layout for this content length.
    pub fn for_length(content_length: u64) -> Self {
        Self::new(content_length, piece_length_for(content_length))
    }

    pub fn piece_count(&self) -> u32 {
        self.content_length.div_ceil(self.piece_length as u64) as u32
    }

    pub fn offset(&self, index: u32) -> u64 {
        index as u64 * self.piece_length as u64
    }

    /// Length of piece `index` (the last one may be short). Zero past the end.
    pub fn len_of(&self, index: u32) -> u32 {
        let start = self.offset(index);
        if start >= self.content_length {
            return 0;
        }
        (self.content_length - start).min(self.piece_length as u64) as u32
    }

    /// The piece that holds byte `offset`.
    pub fn index_of(&self, offset: u64) -> u32 {
        (offset / self.piece_length as u64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn piece_length_rule() {
        assert_eq!(piece_length_for(0), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(1), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(64 * MIB), 256 * 1024);
        assert_eq!(piece_length_for(128 * MIB), 256 * 1024);
        assert_eq!(piece_length_for(128 * MIB + 1), 512 * 1024);
        assert_eq!(piece_length_for(1024 * MIB), 2 * MIB as u32);
        assert_eq!(piece_length_for(1 << 40), MAX_PIECE_LENGTH);
        assert_eq!(piece_length_for(u64::MAX), MAX_PIECE_LENGTH);
    }

    #[test]
    fn piece_length_within_bounds() {
        let (k64, m1, m4) = (64 * 1024, MIB as u32, 4 * MIB as u32);
        // Inside the bounds: the rule's own choice.
        assert_eq!(piece_length_within(1024 * MIB, k64, m4), 2 * MIB as u32);
        // Below: raised to the minimum; above: cut to the maximum.
        assert_eq!(piece_length_within(64 * MIB, m1, m4), m1);
        assert_eq!(piece_length_within(1 << 40, k64, m4), m4);
        // Bounds wider than the default ones apply too.
        assert_eq!(piece_length_within(1, k64, m4), k64);
        assert_eq!(
            piece_length_within(u64::MAX, k64, 64 * MIB as u32),
            64 * MIB as u32
        );
        // The default bounds give the default rule.
        for len in [0, 1, 64 * MIB, 128 * MIB + 1, 1 << 40, u64::MAX] {
            assert_eq!(
                piece_length_within(len, MIN_PIECE_LENGTH, MAX_PIECE_LENGTH),
                piece_length_for(len)
            );
        }
        assert_eq!(
            piece_length_within(1 << 40, m4, m1),
            m1,
            "min above max: max wins"
        );
    }

    #[test]
    fn layout_edges() {
        let l = Layout::new(10, 4);
        assert_eq!(l.piece_count(), 3);
        assert_eq!((l.len_of(0), l.len_of(1), l.len_of(2), l.len_of(3)), (4, 4, 2, 0));
        assert_eq!(l.offset(2), 8);
        assert_eq!(l.index_of(7), 1);
        let empty = Layout::new(0, 4);
        assert_eq!(empty.piece_count(), 0);
        let exact = Layout::new(8, 4);
        assert_eq!(exact.piece_count(), 2);
        assert_eq!(exact.len_of(1), 4);
    }

    #[test]
    fn lengths_sum_to_content() {
        for len in [0u64, 1, 255, 256 * 1024, 256 * 1024 + 7, 33 * MIB + 5] {
            let l = Layout::for_length(len);
            let sum: u64 = (0..l.piece_count()).map(|i| l.len_of(i) as u64).sum();
            assert_eq!(sum, len, "length {len}");
        }
    }
}
