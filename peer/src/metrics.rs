//! The peer's metrics, defined once and recorded through small helpers.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Seconds, from 1 ms to about 65 s.
fn latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

#[derive(Clone)]
pub struct Metrics {
    pub bytes_from_source: Counter,
    /// Bytes a `get` found already stored (a finished task served again).
    pub bytes_from_cache: Counter,
    /// One piece from a parent: request sent to the piece received.
    pub piece_seconds: Histogram,
    /// One origin Range GET: request sent to response headers.
    pub source_request_seconds: Histogram,
    pub bytes_from_peers: Counter,
    pub bytes_uploaded: Counter,
    pub pieces_failed: Family<Labels, Counter>,
    pub tasks: Family<Labels, Counter>,
    pub active_downloads: Gauge,
    pub active_uploads: Gauge,
    pub schedulers: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            bytes_from_source: Counter::default(),
            bytes_from_cache: Counter::default(),
            piece_seconds: latency_buckets(),
            source_request_seconds: latency_buckets(),
            bytes_from_peers: Counter::default(),
            bytes_uploaded: Counter::default(),
            pieces_failed: Family::default(),
            tasks: Family::default(),
            active_downloads: Gauge::default(),
            active_uploads: Gauge::default(),
            schedulers: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        // Every reason and result exported from the start (at 0).
        for reason in ["corrupt", "busy", "unreachable"] {
            let _ = m
                .pieces_failed
                .get_or_create(&vec![("reason".into(), reason.into())]);
        }
        for result in ["success", "failure"] {
            let _ = m.tasks.get_or_create(&vec![("result".into(), result.into())]);
        }
        let r = registry.sub_registry_with_prefix("damselfly_peer");
        r.register(
            "cache_bytes",
            "Bytes served to local gets from tasks already stored",
            m.bytes_from_cache.clone(),
        );
        r.register(
            "piece_seconds",
            "Time from requesting a piece of a parent to receiving it",
            m.piece_seconds.clone(),
        );
        r.register(
            "source_request_seconds",
            "Time from an origin request to its response headers",
            m.source_request_seconds.clone(),
        );
        let r = registry.sub_registry_with_prefix("damselfly_peer");
        r.register(
            "source_bytes",
            "Bytes fetched from origins",
            m.bytes_from_source.clone(),
        );
        r.register(
            "peer_bytes",
            "Bytes fetched from other peers",
            m.bytes_from_peers.clone(),
        );
        r.register(
            "uploaded_bytes",
            "Bytes served to other peers",
            m.bytes_uploaded.clone(),
        );
        r.register(
            "pieces_failed",
            "Pieces that failed, by reason",
            m.pieces_failed.clone(),
        );
        r.register("tasks", "Downloads ended, by result", m.tasks.clone());
        r.register(
            "active_downloads",
            "Downloads running now",
            m.active_downloads.clone(),
        );
        r.register(
            "active_uploads",
            "Piece connections to children now",
            m.active_uploads.clone(),
        );
        r.register(
            "schedulers",
            "Schedulers new tasks are spread over",
            m.schedulers.clone(),
        );
        m
    }

    pub fn piece_failed(&self, reason: &str) {
        self.pieces_failed
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    pub fn task_ended(&self, result: &str) {
        self.tasks
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
    }
}
