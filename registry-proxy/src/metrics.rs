//! The proxy's metrics, defined once here and recorded by one-line helpers
//! at call sites. [`Metrics::register`] adds them to a role's registry
//! (names get the `damselfly_registry_proxy_` prefix).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    /// Time to the response's headers (a blob's body streams after), by route.
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
    access_checks: Family<Labels, Counter>,
    blob_bytes: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
            access_checks: Family::default(),
            blob_bytes: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("damselfly_registry_proxy");
        r.register(
            "requests",
            "Requests answered, by route and status code",
            self.requests.clone(),
        );
        r.register(
            "request_seconds",
            "Time from a request to its response headers, by route",
            self.seconds.clone(),
        );
        r.register(
            "access_checks",
            "Blob access proofs, by result (cached, allowed, denied, unknown, error)",
            self.access_checks.clone(),
        );
        r.register(
            "blob_bytes",
            "Blob bytes sent to clients from the blob source",
            self.blob_bytes.clone(),
        );
    }

    pub fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn answered(&self, route: &'static str, took: std::time::Duration) {
        self.seconds
            .get_or_create(&vec![("route", route.to_string())])
            .observe(took.as_secs_f64());
    }

    pub fn access_check(&self, result: &'static str) {
        self.access_checks
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
    }

    pub fn blob_bytes(&self, n: u64) {
        self.blob_bytes.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prefix() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.request("blob", 206);
        m.access_check("cached");
        m.blob_bytes(42);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"damselfly_registry_proxy_requests_total{route="blob",status="206"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("damselfly_registry_proxy_blob_bytes_total 42"),
            "{text}"
        );
        assert!(text.contains(r#"damselfly_registry_proxy_access_checks_total{result="cached"} 1"#));
    }
}
