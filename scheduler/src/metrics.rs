//! The scheduler's metrics, defined once and recorded through small helpers.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct Metrics {
    pub hosts: Gauge,
    pub tasks: Gauge,
    pub peers: Gauge,
    pub schedule_seconds: Histogram,
    pub seed_triggers: Counter,
    pub back_to_source: Counter,
    pub piece_failures: Family<Vec<(String, String)>, Counter>,
    pub bytes_from_source: Counter,
    pub bytes_from_peers: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            hosts: Gauge::default(),
            tasks: Gauge::default(),
            peers: Gauge::default(),
            schedule_seconds: Histogram::new(exponential_buckets(0.000_01, 4.0, 10)),
            seed_triggers: Counter::default(),
            back_to_source: Counter::default(),
            piece_failures: Family::default(),
            bytes_from_source: Counter::default(),
            bytes_from_peers: Counter::default(),
        };
        // Every reason exported from the start (at 0), so a rate has a series to start from.
        for reason in ["corrupt", "busy", "unreachable"] {
            let _ = m
                .piece_failures
                .get_or_create(&vec![("reason".to_string(), reason.to_string())]);
        }
        let r = registry.sub_registry_with_prefix("damselfly_scheduler");
        r.register("hosts", "Hosts announcing to this scheduler", m.hosts.clone());
        r.register("tasks", "Tasks known to this scheduler", m.tasks.clone());
        r.register("peers", "Peers of all tasks", m.peers.clone());
        r.register(
            "schedule_seconds",
            "Time to choose parents for one peer",
            m.schedule_seconds.clone(),
        );
        r.register(
            "seed_triggers",
            "Seed peers told to fetch a task",
            m.seed_triggers.clone(),
        );
        r.register(
            "back_to_source",
            "Peers told to fetch from the origin",
            m.back_to_source.clone(),
        );
        r.register(
            "piece_failures",
            "Piece failures reported by peers, by reason",
            m.piece_failures.clone(),
        );
        r.register(
            "source_bytes",
            "Bytes peers fetched from origins",
            m.bytes_from_source.clone(),
        );
        r.register(
            "peer_bytes",
            "Bytes peers fetched from other peers",
            m.bytes_from_peers.clone(),
        );
        m
    }

    pub fn piece_failed(&self, reason: &str) {
        self.piece_failures
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }
}
