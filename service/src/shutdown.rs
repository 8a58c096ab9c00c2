//! Graceful shutdown through one small shared type.
//!
//! [`Shutdown`] is cloned into every long-running task. The owner calls
//! [`Shutdown::trigger`]; tasks see it through [`Shutdown::wait`] (use it in a
//! `select!`), and each holds a [`Shutdown`] clone whose drop tells
//! [`Shutdown::drained`] that it has finished.

use std::sync::Arc;
use tokio::sync::{mpsc, watch};

#[derive(Clone)]
pub struct Shutdown {
    stop: watch::Receiver<bool>,
    trigger: Arc<watch::Sender<bool>>,
    // Held by every clone; the channel closes when the last clone drops.
    _alive: mpsc::Sender<()>,
}

/// Kept by the owner to wait until every clone of [`Shutdown`] is gone.
pub struct Drain {
    alive: mpsc::Receiver<()>,
}

impl Shutdown {
    pub fn new() -> (Self, Drain) {
        let (tx, rx) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        (
            Self {
                stop: rx,
                trigger: Arc::new(tx),
                _alive: alive_tx,
            },
            Drain { alive: alive_rx },
        )
    }

    /// Asks every holder to stop.
    pub fn trigger(&self) {
        let _ = self.trigger.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        let mut rx = self.stop.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

impl Drain {
    /// Resolves when every [`Shutdown`] clone has been dropped.
    pub async fn drained(mut self) {
        let _ = self.alive.recv().await;
    }
}

/// Runs a role until it returns, with a [`Shutdown`] that SIGINT or SIGTERM
/// triggers; then waits until every task holding a clone has finished.
pub async fn run_until_signal<T, Fut>(role: impl FnOnce(Shutdown) -> Fut) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let (stop, drain) = Shutdown::new();
    let signal_stop = stop.clone();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = signal() => signal_stop.trigger(),
            _ = signal_stop.wait() => {}
        }
    });
    let out = role(stop.clone()).await;
    stop.trigger();
    drop(stop);
    let _ = watcher.await;
    drain.drained().await;
    out
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_reaches_clones_and_drain_waits() {
        let (shutdown, drain) = Shutdown::new();
        let worker = shutdown.clone();
        let task = tokio::spawn(async move {
            worker.wait().await;
            drop(worker);
        });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        drop(shutdown);
        drain.drained().await;
        task.await.unwrap();
    }
}
