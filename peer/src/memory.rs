//! The bytes of pieces one peer holds in memory between a socket and the
//! disk, over all its downloads: [`PieceMemory`].
//!
//! Measured on a 1 GiB download (2 MiB pieces) before this bound: the
//! downloading peer's anonymous memory grew by about 14 pieces over its
//! idle size: 8 waiting in the engine's event queue, one decoded by each
//! parent connection and blocked on that queue, the one being written,
//! and the reads of the upload side and the whole-file digest. The queue
//! counts pieces, so with 16 MiB pieces or several downloads at once the
//! same queues held several times as much. Now a parent connection (after
//! the frame header, before it reads the piece's bytes) and an origin
//! connection (before it gathers the next piece) reserve the piece's
//! length here, and the reservation travels with the piece until the
//! engine has written it. When the budget is spent they stop reading, the
//! kernel's socket buffers fill and TCP pushes back on the sender, so the
//! requests in flight ([`crate::config::PeerConfig::download_window`]) wait
//! at the parents, not in this process.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of one piece reserved in the budget; dropping it gives them back.
pub type Reserved = OwnedSemaphorePermit;

#[derive(Debug)]
pub struct PieceMemory {
    budget: Arc<Semaphore>,
    total: u32,
}

impl PieceMemory {
    /// A budget of `bytes` (at most 4 GiB - 1; more is taken as that).
    pub fn new(bytes: u64) -> Self {
        let total = bytes.clamp(1, u32::MAX as u64) as u32;
        Self {
            budget: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `len` more bytes fit. A piece longer than the whole
    /// budget takes all of it, so one piece at a time always gets through.
    pub async fn reserve(&self, len: u32) -> Reserved {
        self.budget
            .clone()
            .acquire_many_owned(len.clamp(1, self.total))
            .await
            .expect("the piece memory semaphore is never closed")
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        (self.total as usize - self.budget.available_permits()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reservation_waits_until_enough_is_given_back() {
        let m = PieceMemory::new(10);
        let a = m.reserve(6).await;
        assert_eq!(m.in_use(), 6);
        let waiting = tokio::time::timeout(Duration::from_millis(50), m.reserve(6)).await;
        assert!(waiting.is_err(), "6 + 6 bytes do not fit in 10");
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(5), m.reserve(6))
            .await
            .expect("fits once the first is given back");
        assert_eq!(m.in_use(), 6);
        drop(b);
        assert_eq!(m.in_use(), 0);
    }

    #[tokio::test]
    async fn a_piece_larger_than_the_budget_takes_all_of_it() {
        let m = PieceMemory::new(4);
        let big = m.reserve(100).await;
        assert_eq!(m.in_use(), 4);
        drop(big);
        assert_eq!(m.in_use(), 0);
    }
}
