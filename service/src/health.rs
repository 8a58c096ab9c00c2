//! `/healthz` and `/readyz`, the same on every role.
//!
//! A role creates one [`Health`] with the names of the conditions it needs
//! (e.g. `listeners`, `store`, `scheduler`), sets each as it comes true, and
//! mounts [`Health::router`] on the HTTP router it already serves (`/metrics`):
//! one router per listener, so the routes are never mounted twice.
//! `/healthz` answers 200 while the process serves HTTP; `/readyz` answers 200
//! once every condition is true, else 503 with the ones still missing. The
//! first time every condition holds, systemd is told `READY=1`
//! ([`crate::notify`]). Gauges: `damselfly_up` (always 1) and
//! `damselfly_ready` (1 when ready), labelled with the role.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: String,
}

/// Readiness conditions of one role, shared by its tasks.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    role: &'static str,
    conditions: Mutex<BTreeMap<&'static str, bool>>,
    up: Family<RoleLabel, Gauge>,
    ready: Family<RoleLabel, Gauge>,
    notified: std::sync::atomic::AtomicBool,
}

impl Health {
    /// A role's health with every condition in `conditions` still false.
    pub fn new(role: &'static str, conditions: &[&'static str]) -> Self {
        let inner = Inner {
            role,
            conditions: Mutex::new(conditions.iter().map(|c| (*c, false)).collect()),
            up: Family::default(),
            ready: Family::default(),
            notified: Default::default(),
        };
        inner.up.get_or_create(&inner.label()).set(1);
        inner.ready.get_or_create(&inner.label()).set(0);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Registers `damselfly_up` and `damselfly_ready` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "damselfly_up",
            "1 while the role's process runs",
            self.inner.up.clone(),
        );
        registry.register(
            "damselfly_ready",
            "1 once every readiness condition of the role holds (see /readyz)",
            self.inner.ready.clone(),
        );
    }

    /// Sets one condition (names not given to [`Health::new`] are added).
    pub fn set(&self, condition: &'static str, ok: bool) {
        let ready = {
            let mut c = self.inner.conditions.lock().expect("health lock");
            c.insert(condition, ok);
            c.values().all(|v| *v)
        };
        self.inner
            .ready
            .get_or_create(&self.inner.label())
            .set(ready as i64);
        if ready
            && !self
                .inner
                .notified
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::info!(role = self.inner.role, "ready");
            if let Err(e) = crate::notify::ready() {
                tracing::warn!(error = %e, "cannot tell systemd READY=1");
            }
        }
    }

    /// The conditions not met yet (empty when ready).
    pub fn missing(&self) -> Vec<&'static str> {
        let c = self.inner.conditions.lock().expect("health lock");
        c.iter().filter(|(_, ok)| !**ok).map(|(n, _)| *n).collect()
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }

    /// `GET /healthz` and `GET /readyz`.
    pub fn router(&self) -> axum::Router {
        let health = self.clone();
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let health = health.clone();
                    async move {
                        let missing = health.missing();
                        if missing.is_empty() {
                            (axum::http::StatusCode::OK, "ready\n".to_string())
                        } else {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {}\n", missing.join(", ")),
                            )
                        }
                    }
                }),
            )
    }
}

impl Inner {
    fn label(&self) -> RoleLabel {
        RoleLabel {
            role: self.role.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_once_every_condition_holds() {
        let h = Health::new("test", &["listeners", "store"]);
        assert_eq!(h.missing(), vec!["listeners", "store"]);
        h.set("listeners", true);
        assert!(!h.is_ready());
        h.set("store", true);
        assert!(h.is_ready());
        h.set("store", false);
        assert_eq!(h.missing(), vec!["store"]);
        let mut r = Registry::default();
        h.register(&mut r);
        let text = crate::telemetry::render(&r);
        assert!(text.contains("damselfly_ready{role=\"test\"} 0"), "{text}");
        assert!(text.contains("damselfly_up{role=\"test\"} 1"), "{text}");
    }
}
