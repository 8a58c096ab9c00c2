//! The manager's Prometheus metrics, defined once here with one naming
//! scheme (`damselfly_manager_*`) and recorded by one-line helpers.

use damselfly_service::health::Health;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    pub registry: Arc<Registry>,
    instances: Family<Labels, Gauge>,
    jobs: Family<Labels, Gauge>,
    http: Family<Labels, Histogram>,
    grpc: Family<Labels, Counter>,
}

impl Metrics {
    /// The manager's metrics, beside the role's `damselfly_up` and `damselfly_ready` gauges.
    pub fn new(health: &Health) -> Metrics {
        let mut root = Registry::default();
        health.register(&mut root);
        let registry = root.sub_registry_with_prefix("damselfly_manager");
        let instances = Family::<Labels, Gauge>::default();
        registry.register(
            "instances",
            "Registered schedulers and seed peers by kind and state",
            instances.clone(),
        );
        let jobs = Family::<Labels, Gauge>::default();
        registry.register("preheat_jobs", "Preheat jobs by state", jobs.clone());
        let http = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "REST API and console latency by method, route and status",
            http.clone(),
        );
        let grpc = Family::<Labels, Counter>::default();
        registry.register("grpc_requests", "gRPC calls by method", grpc.clone());
        Metrics {
            registry: Arc::new(root),
            instances,
            jobs,
            http,
            grpc,
        }
    }

    pub fn set_instances(&self, counts: &[(String, String, i64)]) {
        self.instances.clear();
        for kind in ["scheduler", "seed_peer", "peer"] {
            for state in ["active", "inactive"] {
                let n = counts
                    .iter()
                    .filter(|(k, s, _)| k == kind && s == state)
                    .map(|(_, _, n)| *n)
                    .sum();
                self.instances
                    .get_or_create(&vec![
                        ("kind".into(), kind.into()),
                        ("state".into(), state.into()),
                    ])
                    .set(n);
            }
        }
    }

    pub fn set_jobs(&self, counts: &[(String, i64)]) {
        for state in ["pending", "running", "succeeded", "failed"] {
            let n = counts.iter().filter(|(s, _)| s == state).map(|(_, n)| *n).sum();
            self.jobs
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n);
        }
    }

    pub fn observe_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("route".into(), route.into()),
                ("status".into(), status.to_string()),
            ])
            .observe(seconds);
    }

    pub fn grpc_call(&self, method: &str) {
        self.grpc
            .get_or_create(&vec![("method".into(), method.into())])
            .inc();
    }
}
