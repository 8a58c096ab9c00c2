//! The seed peers and peers whose sessions are open on this manager, and the
//! way to push them preheat work.

use damselfly_proto::manager::SeedPeerCommand;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

pub type CommandTx = mpsc::Sender<Result<SeedPeerCommand, tonic::Status>>;

#[derive(Default)]
pub struct SessionHub {
    next: AtomicU64,
    sessions: Mutex<HashMap<i64, (u64, CommandTx)>>,
}

impl SessionHub {
    /// Adds a session; returns its connection number (for [`SessionHub::leave`]).
    pub fn join(&self, instance_id: i64, tx: CommandTx) -> u64 {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .lock()
            .expect("hub lock")
            .insert(instance_id, (conn, tx));
        conn
    }

    /// Removes the session, unless a newer one of the same seed replaced it.
    pub fn leave(&self, instance_id: i64, conn: u64) {
        let mut s = self.sessions.lock().expect("hub lock");
        if s.get(&instance_id).is_some_and(|(c, _)| *c == conn) {
            s.remove(&instance_id);
        }
    }

    pub fn connected(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.sessions.lock().expect("hub lock").keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn sender(&self, instance_id: i64) -> Option<CommandTx> {
        self.sessions
            .lock()
            .expect("hub lock")
            .get(&instance_id)
            .map(|(_, tx)| tx.clone())
    }
}
