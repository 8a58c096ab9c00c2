//! The peer's metrics, defined once and recorded through small helpers.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Clone, Default)]
pub struct Metrics {
    pub bytes_from_source: Counter,
    pub bytes_from_peers: Counter,
    pub bytes_uploaded: Counter,
    pub pieces_failed: Family<Labels, Counter>,
    pub tasks: Family<Labels, Counter>,
    pub active_downloads: Gauge,
    pub active_uploads: Gauge,
    pub schedulers: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
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
