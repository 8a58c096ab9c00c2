//! Serves pieces to children over the piece protocol ([`crate::wire`]).
//!
//! A child says which task it wants; this side sends what it can advertise,
//! then a `Have` whenever that grows, and answers requests in order.
//!
//! Super-seeding: when this peer is the task's source, its uplink is the
//! swarm's bottleneck, so it advertises each new piece to one child only
//! (round-robin over connected children). The children trade among
//! themselves, and the source's uplink carries each piece about once. A
//! piece whose child disconnected, or that is still unserved after
//! [`SUPER_SEED_GRACE`] while its child has been idle towards this source
//! (no request waiting, nothing sent) for as long, becomes visible to every
//! child, so a vanished or silent child delays the swarm, never blocks it.
//! A child that is busy fetching from the source keeps its pieces: when the
//! source's uplink is shared by many children on slow links, serving one
//! child its next pieces takes longer than the grace, and revealing them
//! then made every child ask the source for them at once (the simulator
//! showed the source sending each byte 9 times at N = 50 on 25 Mbit/s).
//!
//! The endgame: once the source holds the whole task, a piece its child
//! fetched becomes visible to every child [`ENDGAME_REVEAL`] after that. The
//! last pieces to arrive from the origin would otherwise be asked of the
//! source by every child at once, and its uplink would carry each of them
//! once per child while the children's uplinks idle (measured: 1.5 s of a
//! 14 s swarm of 16 hosts).

use crate::fault;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::rate::RateLimiter;
use crate::store::blocking;
use crate::task::{Task, Tasks};
use crate::wire::{Frame, PROTOCOL_VERSION, read_frame, write_frame};
use bytes::Bytes;
use damselfly_service::shutdown::Shutdown;
use damselfly_service::ticket::TicketKeys;
use damselfly_service::tls::{Role, ServerConn};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub const SUPER_SEED_GRACE: Duration = Duration::from_secs(2);
/// How long after its child fetched it a piece of a complete source stays
/// that child's to spread.
pub const ENDGAME_REVEAL: Duration = Duration::from_secs(1);
/// Requests a child may queue on one connection.
const REQUEST_QUEUE: usize = 64;

/// One piece offered to one child.
struct Offer {
    /// Empty once the child has gone.
    owner: String,
    at: Instant,
    /// When the owner fetched it: the others get it from the owner.
    served: Option<Instant>,
}

/// Which child each piece of a source task was first offered to (plain
/// code, the clock passed in: the swarm simulator drives it too).
#[derive(Default)]
pub struct SuperSeed {
    children: Vec<String>,
    offered: HashMap<u32, Offer>,
    /// child -> (requests received and not yet served, last request or piece sent).
    activity: HashMap<String, (u32, Instant)>,
    /// child -> pieces offered to it first that it has not fetched yet.
    pending: HashMap<String, u32>,
}

impl SuperSeed {
    /// A child connected.
    pub fn join(&mut self, child: &str, now: Instant) {
        self.children.push(child.to_string());
        self.activity.insert(child.to_string(), (0, now));
    }

    /// `child` asked for a piece.
    pub fn requested(&mut self, child: &str, now: Instant) {
        if let Some(a) = self.activity.get_mut(child) {
            a.0 += 1;
            a.1 = now;
        }
    }

    /// Nothing of `child`'s waits here and nothing went to it for the grace.
    fn idle(activity: &HashMap<String, (u32, Instant)>, child: &str, now: Instant) -> bool {
        activity
            .get(child)
            .is_none_or(|(waiting, at)| *waiting == 0 && now.duration_since(*at) >= SUPER_SEED_GRACE)
    }

    /// No child is connected.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// May `child` see piece `index`? `complete`: the source holds the whole task.
    pub fn visible(&mut self, child: &str, index: u32, now: Instant, complete: bool) -> bool {
        if self.children.is_empty() {
            return true;
        }
        if !self.offered.contains_key(&index) {
            let owner = self.next_owner(index);
            *self.pending.entry(owner.clone()).or_default() += 1;
            self.offered.insert(
                index,
                Offer {
                    owner,
                    at: now,
                    served: None,
                },
            );
        }
        let offer = self.offered.get(&index).expect("inserted above");
        if offer.owner == child || offer.owner.is_empty() {
            return true;
        }
        match offer.served {
            None => {
                now.duration_since(offer.at) >= SUPER_SEED_GRACE
                    && Self::idle(&self.activity, &offer.owner, now)
            }
            // Not while a first copy waits: the source's uplink goes to
            // pieces nobody else has before a second copy of any.
            Some(at) => {
                complete && now.duration_since(at) >= ENDGAME_REVEAL && self.pending.values().all(|p| *p == 0)
            }
        }
    }

    /// Who is offered a new piece first: the child with the fewest offered
    /// pieces it has not fetched yet, round-robin among equals. A child whose
    /// link to the source is slower (its downlink shared with more parents)
    /// drains its offers slower and so is offered less; with a fixed
    /// round-robin its share of the last pieces reached the swarm seconds
    /// after the source had them.
    fn next_owner(&self, index: u32) -> String {
        let n = self.children.len();
        let start = index as usize % n;
        (0..n)
            .map(|k| &self.children[(start + k) % n])
            .min_by_key(|c| self.pending.get(*c).copied().unwrap_or(0))
            .expect("at least one child")
            .clone()
    }

    /// `child` was sent piece `index` at `now`.
    pub fn served(&mut self, child: &str, index: u32, now: Instant) {
        if let Some(a) = self.activity.get_mut(child) {
            a.0 = a.0.saturating_sub(1);
            a.1 = now;
        }
        if let Some(o) = self.offered.get_mut(&index)
            && o.owner == child
            && o.served.is_none()
        {
            o.served = Some(now);
            if let Some(p) = self.pending.get_mut(child) {
                *p = p.saturating_sub(1);
            }
        }
    }

    /// A child disconnected: the pieces it was offered are everyone's.
    pub fn leave(&mut self, child: &str) {
        self.children.retain(|c| c != child);
        self.activity.remove(child);
        self.pending.remove(child);
        for o in self.offered.values_mut() {
            if o.owner == child {
                o.owner.clear();
            }
        }
    }
}

pub struct PieceServer {
    pub tasks: Arc<Tasks>,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Metrics,
    /// How many children may be served at once (the cluster's setting).
    pub limits: Arc<Limits>,
    /// With TLS on, a child's `Hello` must carry a ticket signed by one of these keys.
    pub tickets: Arc<TicketKeys>,
    super_seeds: Mutex<HashMap<String, SuperSeed>>,
}

impl PieceServer {
    pub fn new(
        tasks: Arc<Tasks>,
        limiter: Arc<RateLimiter>,
        metrics: Metrics,
        limits: Arc<Limits>,
        tickets: Arc<TicketKeys>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tasks,
            limiter,
            metrics,
            limits,
            tickets,
            super_seeds: Mutex::new(HashMap::new()),
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let this = self.clone();
                        let stop = shutdown.clone();
                        tokio::spawn(async move {
                            let tls = damselfly_service::tls::installed();
                            let conn = match damselfly_service::tls::accept_role(tls.as_deref(), stream, Role::Peer).await {
                                Ok(conn) => conn,
                                Err(e) => return debug!(%addr, error = %e, "piece connection refused"),
                            };
                            if let Err(e) = this.handle(conn, stop).await {
                                debug!(%addr, error = %e, "piece connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.wait() => return,
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: ServerConn, shutdown: Shutdown) -> std::io::Result<()> {
        // With TLS the child's certificate is verified; its ticket must name it.
        let subject = stream
            .identity()
            .verified
            .then(|| stream.identity().subject.clone().unwrap_or_default());
        let (mut rd, wr) = tokio::io::split(stream);
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        let (task_id, child, ticket) = match read_frame(&mut rd).await? {
            Some(Frame::Hello {
                version: PROTOCOL_VERSION,
                task_id,
                peer_id,
                ticket,
            }) => (task_id, peer_id, ticket),
            Some(Frame::Hello { version, .. }) => {
                let m = format!(
                    "piece protocol version {version} is not supported (this peer speaks {PROTOCOL_VERSION})"
                );
                write_frame(&mut wr, &Frame::Error(m)).await?;
                return tokio::io::AsyncWriteExt::flush(&mut wr).await;
            }
            _ => return Ok(()),
        };
        // Before anything about the task: a member without a ticket learns nothing.
        if let Some(subject) = subject
            && let Err(e) = self
                .tickets
                .check(&ticket, &task_id, &subject, std::time::SystemTime::now())
        {
            debug!(task_id, child, error = %e, "piece connection refused");
            write_frame(&mut wr, &Frame::Error(format!("{}{e}", crate::parent::NO_TICKET))).await?;
            return tokio::io::AsyncWriteExt::flush(&mut wr).await;
        }
        let (tasks, id) = (self.tasks.clone(), task_id.clone());
        let task = match blocking(move || tasks.get_or_load(&id)).await {
            Ok(Some(t)) => t,
            _ => {
                let m = format!("task {task_id} {}", crate::parent::NOT_HERE);
                write_frame(&mut wr, &Frame::Error(m)).await?;
                return tokio::io::AsyncWriteExt::flush(&mut wr).await;
            }
        };
        // At the upload concurrency: the child asks the scheduler for another parent.
        let Some(_slot) = self.limits.try_upload() else {
            let m = format!("{} too many children", crate::parent::BUSY);
            write_frame(&mut wr, &Frame::Error(m)).await?;
            return tokio::io::AsyncWriteExt::flush(&mut wr).await;
        };
        self.metrics.active_uploads.inc();
        self.join(&task_id, &child);
        let (req_tx, mut req_rx) = mpsc::channel::<u32>(REQUEST_QUEUE);
        let (this, reader_task, reader_child) = (self.clone(), task_id.clone(), child.clone());
        let reader = tokio::spawn(async move {
            while let Ok(Some(Frame::Request(i))) = read_frame(&mut rd).await {
                this.requested(&reader_task, &reader_child);
                if req_tx.send(i).await.is_err() {
                    break;
                }
            }
        });
        let result = self.pump(&task, &child, &mut wr, &mut req_rx, &shutdown).await;
        reader.abort();
        self.leave(&task_id, &child);
        self.metrics.active_uploads.dec();
        result
    }

    /// The writer loop of one child connection.
    async fn pump(
        &self,
        task: &Arc<Task>,
        child: &str,
        wr: &mut BufWriter<tokio::io::WriteHalf<ServerConn>>,
        requests: &mut mpsc::Receiver<u32>,
        shutdown: &Shutdown,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut changes = task.subscribe();
        let mut told: Vec<bool> = Vec::new();
        let mut first = true;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let corrupt = fault::corrupt_uploads();
        loop {
            let fresh = self.newly_visible(task, child, &mut told);
            if first {
                if let Some(l) = task.layout() {
                    let mut bits = vec![0u8; told.len().div_ceil(8)];
                    for (i, t) in told.iter().enumerate() {
                        if *t {
                            bits[i / 8] |= 1 << (i % 8);
                        }
                    }
                    write_frame(
                        wr,
                        &Frame::Bitmap {
                            pieces: l.piece_count(),
                            bits,
                        },
                    )
                    .await?;
                    first = false;
                }
            } else if !fresh.is_empty() {
                write_frame(wr, &Frame::Have(fresh)).await?;
            }
            wr.flush().await?;
            tokio::select! {
                req = requests.recv() => {
                    let Some(index) = req else { return Ok(()) };
                    let t = task.clone();
                    let data = match blocking(move || t.read_piece(index)).await {
                        Ok(d) => d,
                        Err(e) => {
                            write_frame(wr, &Frame::Error(e.to_string())).await?;
                            wr.flush().await?;
                            return Ok(());
                        }
                    };
                    let mut data = Bytes::from(data);
                    if corrupt && !data.is_empty() {
                        let mut v = data.to_vec();
                        v[0] ^= 0xff;
                        data = Bytes::from(v);
                    }
                    self.limiter.acquire(data.len()).await;
                    let n = data.len() as u64;
                    write_frame(wr, &Frame::Piece { index, data }).await?;
                    self.metrics.bytes_uploaded.inc_by(n);
                    if let Some(ss) = self.super_seeds.lock().expect("super-seed lock").get_mut(&task.id) {
                        ss.served(child, index, Instant::now());
                    }
                }
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = tick.tick(), if task.lock().source => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    /// Pieces this child may now be told about, marking them as told.
    fn newly_visible(&self, task: &Task, child: &str, told: &mut Vec<bool>) -> Vec<u32> {
        let s = task.lock();
        if told.len() != s.have.len() {
            *told = vec![false; s.have.len()];
        }
        let now = Instant::now();
        let mut seeds = self.super_seeds.lock().expect("super-seed lock");
        let mut ss = if s.source { seeds.get_mut(&task.id) } else { None };
        let complete = s.progress.done;
        let mut out = Vec::new();
        for (i, have) in s.have.iter().enumerate() {
            if *have
                && !told[i]
                && ss
                    .as_mut()
                    .is_none_or(|ss| ss.visible(child, i as u32, now, complete))
            {
                told[i] = true;
                out.push(i as u32);
            }
        }
        out
    }

    fn join(&self, task_id: &str, child: &str) {
        let mut seeds = self.super_seeds.lock().expect("super-seed lock");
        seeds
            .entry(task_id.to_string())
            .or_default()
            .join(child, Instant::now());
    }

    fn requested(&self, task_id: &str, child: &str) {
        if let Some(ss) = self.super_seeds.lock().expect("super-seed lock").get_mut(task_id) {
            ss.requested(child, Instant::now());
        }
    }

    fn leave(&self, task_id: &str, child: &str) {
        let mut seeds = self.super_seeds.lock().expect("super-seed lock");
        if let Some(ss) = seeds.get_mut(task_id) {
            ss.leave(child);
            if ss.is_empty() {
                seeds.remove(task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn super_seed_offers_each_piece_to_one_child_first() {
        let t0 = Instant::now();
        let mut ss = SuperSeed::default();
        ss.join("a", t0);
        ss.join("b", t0);
        assert!(ss.visible("a", 0, t0, false));
        assert!(!ss.visible("b", 0, t0, false));
        assert!(ss.visible("b", 1, t0, false));
        assert!(!ss.visible("a", 1, t0, false));
        assert!(
            ss.visible("a", 1, t0 + SUPER_SEED_GRACE, false),
            "b asked for nothing in the grace"
        );
        ss.served("a", 0, t0);
        let later = Instant::now() + SUPER_SEED_GRACE;
        assert!(!ss.visible("b", 0, later, false), "a has it: b gets it from a");
        ss.leave("a");
        assert!(ss.visible("b", 0, t0, false), "a left: its pieces are everyone's");
        let mut alone = SuperSeed::default();
        assert!(alone.visible("x", 5, t0, false));
    }

    #[test]
    fn a_child_busy_with_the_source_keeps_its_pieces_past_the_grace() {
        let t0 = Instant::now();
        let mut ss = SuperSeed::default();
        ss.join("a", t0);
        ss.join("b", t0);
        assert!(!ss.visible("a", 1, t0, false), "b's piece");
        // b asks for another piece; the source's uplink is slow, so it waits.
        ss.requested("b", t0 + Duration::from_millis(100));
        let late = t0 + SUPER_SEED_GRACE * 3;
        assert!(!ss.visible("a", 1, late, false), "b has a request waiting");
        ss.served("b", 3, late);
        assert!(
            !ss.visible("a", 1, late + SUPER_SEED_GRACE / 2, false),
            "b was just served"
        );
        assert!(
            ss.visible("a", 1, late + SUPER_SEED_GRACE, false),
            "b idle for the grace: piece 1 is everyone's"
        );
    }

    #[test]
    fn a_complete_source_reveals_a_served_piece_after_a_while() {
        let mut ss = SuperSeed {
            children: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        let t0 = Instant::now();
        assert!(ss.visible("a", 0, t0, true));
        assert!(
            !ss.visible("b", 0, t0, true),
            "the source is complete, yet a spreads it first"
        );
        let served = Instant::now();
        ss.served("a", 0, served);
        assert!(!ss.visible("b", 0, served, true));
        assert!(
            !ss.visible("b", 0, served + ENDGAME_REVEAL, false),
            "while the source still fetches, a piece once served is never re-offered"
        );
        assert!(ss.visible("b", 0, served + ENDGAME_REVEAL, true));
    }

    #[test]
    fn a_child_that_drains_its_offers_slowly_is_offered_less() {
        let t0 = Instant::now();
        let mut ss = SuperSeed::default();
        ss.join("a", t0);
        ss.join("b", t0);
        assert!(ss.visible("a", 0, t0, false));
        assert!(ss.visible("b", 1, t0, false));
        ss.served("a", 0, t0);
        assert!(ss.visible("a", 2, t0, false), "a fetched its piece, b did not");
        ss.served("a", 2, t0);
        assert!(
            ss.visible("a", 3, t0, false) && !ss.visible("b", 3, t0, false),
            "round-robin would give piece 3 to b, which still owes piece 1"
        );
    }

    #[test]
    fn a_complete_source_sends_no_second_copy_while_a_first_one_waits() {
        let t0 = Instant::now();
        let mut ss = SuperSeed::default();
        ss.join("a", t0);
        ss.join("b", t0);
        assert!(ss.visible("a", 0, t0, true));
        assert!(ss.visible("b", 1, t0, true));
        ss.served("a", 0, t0);
        let later = t0 + ENDGAME_REVEAL * 2;
        assert!(!ss.visible("b", 0, later, true), "piece 1 still waits for b");
        ss.served("b", 1, later);
        assert!(ss.visible("b", 0, later, true));
    }
}
