//! Peer-side settings that change while the daemon runs: the manager sends
//! its cluster's `peer_upload_concurrency`, `peer_download_concurrency`,
//! `min_piece_length` and `max_piece_length` with every scheduler list
//! ([`crate::manager`]), and they override the local defaults from the next
//! connection, request or task on, without a restart.
//!
//! One shared [`Limits`] is read by the piece server (how many children it
//! serves at once), the download engine (how many piece requests one
//! download keeps in flight) and back-to-source (the piece length chosen for
//! a new task). Each value is a gauge: reading it is one atomic load, and the
//! peer's `/metrics` shows the values in force (0: the local default, no
//! bound).

use damselfly_proto::layout::check_piece_length;
use damselfly_proto::manager::ClusterSettings;
use damselfly_proto::piece;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Limits {
    /// Children served at once over all tasks (0: no bound).
    upload_concurrency: Gauge,
    /// Piece requests in flight per download (0: the engine's default).
    download_concurrency: Gauge,
    /// Bounds of the piece length chosen for a new task (0: the default rule's).
    min_piece_length: Gauge,
    max_piece_length: Gauge,
    /// Children served now.
    uploads: Gauge,
}

/// One child being served; dropping it frees the slot.
pub struct UploadSlot(Arc<Limits>);

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.0.uploads.dec();
    }
}

impl Limits {
    /// Shows the values in force on the peer's `/metrics`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("damselfly_peer");
        r.register(
            "upload_concurrency",
            "Children served at once, from the cluster's settings (0: no bound)",
            self.upload_concurrency.clone(),
        );
        r.register(
            "download_concurrency",
            "Piece requests in flight per download, from the cluster's settings (0: the default)",
            self.download_concurrency.clone(),
        );
        r.register(
            "min_piece_length",
            "Smallest piece length for tasks this peer lays out (0: the default)",
            self.min_piece_length.clone(),
        );
        r.register(
            "max_piece_length",
            "Largest piece length for tasks this peer lays out (0: the default)",
            self.max_piece_length.clone(),
        );
    }

    /// Takes the cluster's settings. Values out of range (a zero, a piece
    /// length outside the shared bounds, min above max) are refused as a
    /// whole: the ones in force stay.
    pub fn apply(&self, s: &ClusterSettings) -> bool {
        let carried = |v: u64| check_piece_length(v).is_ok();
        let ok = s.peer_upload_concurrency > 0
            && s.peer_download_concurrency > 0
            && carried(s.min_piece_length)
            && carried(s.max_piece_length)
            && s.min_piece_length <= s.max_piece_length;
        if ok {
            self.upload_concurrency.set(s.peer_upload_concurrency as i64);
            self.download_concurrency.set(s.peer_download_concurrency as i64);
            self.min_piece_length.set(s.min_piece_length as i64);
            self.max_piece_length.set(s.max_piece_length as i64);
        }
        ok
    }

    /// A slot to serve one more child, or `None` when the upload concurrency is reached.
    pub fn try_upload(self: &Arc<Self>) -> Option<UploadSlot> {
        let max = self.upload_concurrency.get();
        if self.uploads.inc() >= max && max > 0 {
            self.uploads.dec();
            return None;
        }
        Some(UploadSlot(self.clone()))
    }

    /// Piece requests one download keeps in flight; `default` when no cluster setting applies.
    pub fn download_concurrency(&self, default: usize) -> usize {
        match self.download_concurrency.get() {
            n if n > 0 => n as usize,
            _ => default,
        }
    }

    /// The piece length for a task of `content_length` bytes that this peer lays out.
    pub fn piece_length_for(&self, content_length: u64) -> u32 {
        let (min, max) = (self.min_piece_length.get(), self.max_piece_length.get());
        if min <= 0 || max <= 0 {
            return piece::piece_length_for(content_length);
        }
        piece::piece_length_within(content_length, min as u32, max as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(upload: u32, download: u32, min: u64, max: u64) -> ClusterSettings {
        ClusterSettings {
            peer_upload_concurrency: upload,
            peer_download_concurrency: download,
            min_piece_length: min,
            max_piece_length: max,
            ..Default::default()
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn defaults_until_the_cluster_says_otherwise() {
        let l = Arc::new(Limits::default());
        assert_eq!(l.download_concurrency(32), 32);
        assert_eq!(l.piece_length_for(64 * MIB), piece::piece_length_for(64 * MIB));
        let slots: Vec<_> = (0..1000).map(|_| l.try_upload().unwrap()).collect();
        drop(slots);
        assert!(l.apply(&settings(2, 5, MIB, 4 * MIB)));
        assert_eq!(l.download_concurrency(32), 5);
        assert_eq!(l.piece_length_for(64 * MIB), MIB as u32, "raised to the minimum");
        assert_eq!(l.piece_length_for(1 << 40), 4 * MIB as u32, "cut to the maximum");
    }

    #[test]
    fn upload_slots_are_bounded_and_freed() {
        let l = Arc::new(Limits::default());
        assert!(l.apply(&settings(2, 16, MIB, MIB)));
        let a = l.try_upload().unwrap();
        let _b = l.try_upload().unwrap();
        assert!(l.try_upload().is_none(), "the third child is refused");
        drop(a);
        let _c = l.try_upload().expect("a freed slot is reused");
        assert!(l.try_upload().is_none());
        // Raised at run time: more children at once.
        assert!(l.apply(&settings(3, 16, MIB, MIB)));
        assert!(l.try_upload().is_some());
    }

    #[test]
    fn bad_settings_are_refused_as_a_whole() {
        let l = Limits::default();
        assert!(l.apply(&settings(4, 8, MIB, 2 * MIB)));
        for bad in [
            settings(0, 8, MIB, MIB),
            settings(4, 0, MIB, MIB),
            settings(4, 8, 3 * MIB, 4 * MIB),
            settings(4, 8, 4 * MIB, MIB),
            settings(4, 8, 0, MIB),
            settings(4, 8, MIB, 1 << 33),
            settings(4, 8, 32 * MIB, 32 * MIB),
            settings(4, 8, 4096, MIB),
        ] {
            assert!(!l.apply(&bad), "{bad:?}");
        }
        assert_eq!(l.download_concurrency(32), 8);
        assert_eq!(l.piece_length_for(1 << 40), 2 * MIB as u32);
    }
}
