//! Supervision of a role's server tasks: a piece server, proxy, gRPC or HTTP
//! server that ends while the role is not shutting down is a failure, not
//! something to run on without. [`Supervisor::watch`] wraps each task's
//! handle; the first one that ends early triggers shutdown and is kept, and
//! [`Supervisor::result`] then names it, so the role exits non-zero.

use crate::shutdown::Shutdown;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

#[derive(Clone, Default)]
pub struct Supervisor {
    failed: Arc<Mutex<Option<String>>>,
}

/// A server task that ended before shutdown.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskEnded(pub String);

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Watches `handle` (named `what`, e.g. "piece server on 10.0.0.2:8001"):
    /// if it ends, or panics, before `shutdown` fires, records it and triggers
    /// shutdown. The returned handle ends when the task does.
    pub fn watch<T, F>(&self, what: String, handle: F, shutdown: Shutdown) -> JoinHandle<()>
    where
        F: Future<Output = Result<T, tokio::task::JoinError>> + Send + 'static,
        T: Send + 'static,
    {
        let failed = self.failed.clone();
        tokio::spawn(async move {
            let ended = handle.await;
            if shutdown.is_triggered() {
                return;
            }
            let why = match ended {
                Ok(_) => format!("{what} stopped unexpectedly"),
                Err(e) => format!("{what} failed: {e}"),
            };
            tracing::error!("{why}; stopping");
            failed.lock().expect("supervisor lock").get_or_insert(why);
            shutdown.trigger();
        })
    }

    /// Records a failure that a task reported itself (an `Err` it returned).
    pub fn fail(&self, why: String, shutdown: &Shutdown) {
        if shutdown.is_triggered() && self.failed.lock().expect("supervisor lock").is_none() {
            return;
        }
        tracing::error!("{why}; stopping");
        self.failed.lock().expect("supervisor lock").get_or_insert(why);
        shutdown.trigger();
    }

    /// `Err` naming the first task that ended early, if any did.
    pub fn result(&self) -> Result<(), TaskEnded> {
        match self.failed.lock().expect("supervisor lock").clone() {
            Some(why) => Err(TaskEnded(why)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_early_triggers_shutdown_and_is_named() {
        let (shutdown, _drain) = Shutdown::new();
        let s = Supervisor::new();
        let w = s.watch(
            "piece server on 127.0.0.1:1".into(),
            tokio::spawn(async {}),
            shutdown.clone(),
        );
        w.await.unwrap();
        assert!(shutdown.is_triggered());
        let e = s.result().unwrap_err();
        assert!(e.to_string().contains("piece server on 127.0.0.1:1"), "{e}");
    }

    #[tokio::test]
    async fn a_task_ending_at_shutdown_is_fine() {
        let (shutdown, _drain) = Shutdown::new();
        let s = Supervisor::new();
        let stop = shutdown.clone();
        let h = tokio::spawn(async move { stop.wait().await });
        let w = s.watch("metrics".into(), h, shutdown.clone());
        shutdown.trigger();
        w.await.unwrap();
        assert!(s.result().is_ok());
    }
}
