//! Which piece to ask of which parent, and when a download gives up on one:
//! the download engine's decisions as plain code, the clock passed in.
//!
//! [`Picker`] knows what each parent holds and what is in flight; its
//! [`fill`](Picker::fill) asks for the lowest missing pieces, each from the
//! least busy parent that has it (other peers before a source still
//! fetching, whose uplink is scarce), keeping about [`TOTAL_WINDOW`]
//! requests in flight and at least [`PARENT_WINDOW`] per parent. [`Timers`]
//! says when to report, save, ask for new parents or go back to source.
//! [`download`](crate::download) wires both to sockets; the swarm simulator
//! drives the same code over simulated links.

use damselfly_proto::scheduler::{PieceCost, PieceDigest, PiecesDone};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Requests outstanding per parent: enough to keep a link busy across one
/// round trip, few enough that a slow parent holds little. With few parents
/// each gets more, so that the requests in flight stay at about
/// [`TOTAL_WINDOW`] (one fast parent on a fast link needs a deep pipeline).
pub const PARENT_WINDOW: usize = 2;
pub const TOTAL_WINDOW: usize = 32;

/// A fixed-length set of piece indexes, 64 to a word.
#[derive(Debug, Default, Clone)]
struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    fn from_bools(b: &[bool]) -> Self {
        let mut out = Self::new(b.len());
        for (i, h) in b.iter().enumerate() {
            if *h {
                out.words[i / 64] |= 1 << (i % 64);
            }
        }
        out
    }

    fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Sets bit `i` (growing the set if needed); true if it was clear.
    fn set(&mut self, i: usize, on: bool) -> bool {
        if i >= self.len {
            if !on {
                return false;
            }
            self.len = i + 1;
            self.words.resize(self.len.div_ceil(64), 0);
        }
        let (w, m) = (i / 64, 1u64 << (i % 64));
        let was = self.words[w] & m != 0;
        if on {
            self.words[w] |= m;
        } else {
            self.words[w] &= !m;
        }
        was != on
    }

    fn word(&self, w: usize) -> u64 {
        self.words.get(w).copied().unwrap_or(0)
    }

    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        ones(self.words.iter().copied())
    }
}

/// The indexes of the set bits of consecutive words.
fn ones(words: impl Iterator<Item = u64>) -> impl Iterator<Item = usize> {
    words.enumerate().flat_map(|(w, mut word)| {
        std::iter::from_fn(move || {
            (word != 0).then(|| {
                let b = word.trailing_zeros() as usize;
                word &= word - 1;
                w * 64 + b
            })
        })
    })
}

/// What one parent holds, as far as this download knows.
#[derive(Debug, Default)]
struct Holder {
    have: Bits,
    held: usize,
    inflight: usize,
    seed: bool,
    /// When it last delivered a piece to us.
    delivered: Option<Instant>,
}

impl Holder {
    /// A source still fetching from the origin: its uplink spreads new
    /// pieces, so it is asked only for what no other parent has.
    fn scarce(&self) -> bool {
        self.seed && self.held < self.have.len
    }
}

/// Per piece: how many parents that are peers, and how many sources, hold it.
#[derive(Debug, Default, Clone, Copy)]
struct Holders {
    peers: u32,
    sources: u32,
}

#[derive(Debug, Default)]
pub struct Picker {
    parents: HashMap<String, Holder>,
    /// piece -> (parent asked, when).
    inflight: HashMap<u32, (String, Instant)>,
    /// Who holds each piece, kept as bitmaps and haves arrive, so that
    /// [`fill`](Picker::fill) only looks at pieces a parent with room in its
    /// window holds, word by word, instead of asking every parent about
    /// every piece (that was most of the swarm simulator's time at 1,000
    /// peers).
    holders: Vec<Holders>,
    /// Pieces only sources hold, and pieces this download stored
    /// ([`Picker::stored`]).
    only_at_source: Bits,
    stored: Bits,
}

impl Picker {
    pub fn has_parent(&self, id: &str) -> bool {
        self.parents.contains_key(id)
    }

    pub fn parent_ids(&self) -> impl Iterator<Item = &String> {
        self.parents.keys()
    }

    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// A new parent (`seed`: the scheduler says it is a source).
    pub fn add_parent(&mut self, id: &str, seed: bool) {
        self.parents.entry(id.to_string()).or_insert_with(|| Holder {
            seed,
            ..Holder::default()
        });
    }

    /// Forgets a parent and what was asked of it (asked again elsewhere).
    pub fn remove_parent(&mut self, id: &str) {
        if let Some(p) = self.parents.remove(id) {
            for i in p.have.ones() {
                self.count(i, p.seed, false);
            }
        }
        self.inflight.retain(|_, (p, _)| p != id);
    }

    pub fn clear(&mut self) {
        self.parents.clear();
        self.inflight.clear();
        self.holders.clear();
        self.only_at_source = Bits::default();
    }

    /// This download stored piece `index`: [`fill`](Picker::fill) no longer
    /// looks at it. Optional (`fill` asks `wanted` anyway); it keeps `fill`
    /// proportional to the pieces still to fetch.
    pub fn stored(&mut self, index: u32) {
        self.stored.set(index as usize, true);
    }

    /// One parent more (`add`) or fewer holds piece `i`.
    fn count(&mut self, i: usize, seed: bool, add: bool) {
        if self.holders.len() <= i {
            self.holders.resize(i + 1, Holders::default());
        }
        let h = &mut self.holders[i];
        let n = if seed { &mut h.sources } else { &mut h.peers };
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
        let only = h.peers == 0 && h.sources > 0;
        self.only_at_source.set(i, only);
    }

    /// The parent's whole bitmap.
    pub fn bitmap(&mut self, id: &str, have: Vec<bool>) {
        let Some(p) = self.parents.get_mut(id) else {
            return;
        };
        let seed = p.seed;
        let new = Bits::from_bools(&have);
        let old = std::mem::replace(&mut p.have, new.clone());
        p.held = have.iter().filter(|h| **h).count();
        let words = old.words.len().max(new.words.len());
        let gone = ones((0..words).map(|w| old.word(w) & !new.word(w)));
        let came = ones((0..words).map(|w| new.word(w) & !old.word(w)));
        let changed: Vec<(usize, bool)> = gone.map(|i| (i, false)).chain(came.map(|i| (i, true))).collect();
        for (i, add) in changed {
            self.count(i, seed, add);
        }
    }

    /// The parent now also holds these pieces.
    pub fn have(&mut self, id: &str, pieces: impl IntoIterator<Item = u32>) {
        let Some(p) = self.parents.get_mut(id) else {
            return;
        };
        let seed = p.seed;
        let mut new = Vec::new();
        for i in pieces {
            let i = i as usize;
            // Only within its bitmap (a have before it, or past the end, is ignored).
            if i < p.have.len && p.have.set(i, true) {
                p.held += 1;
                new.push(i);
            }
        }
        for i in new {
            self.count(i, seed, true);
        }
    }

    /// A piece (good or not) came back from `parent` at `now`.
    pub fn arrived(&mut self, parent: &str, index: u32, now: Instant) {
        if let Some(p) = self.parents.get_mut(parent) {
            p.inflight = p.inflight.saturating_sub(1);
            p.delivered = Some(now);
        }
        if self.inflight.get(&index).is_some_and(|(p, _)| p == parent) {
            self.inflight.remove(&index);
        }
    }

    /// Requests the lowest missing pieces that have a digest (`wanted(i)`),
    /// each from the least busy parent that has it (a source still fetching
    /// only when nobody else has the piece). `total` is the download's
    /// window; `request(parent, index)` sends one and says whether it went.
    pub fn fill(
        &mut self,
        now: Instant,
        pieces: usize,
        wanted: impl Fn(usize) -> bool,
        total: usize,
        mut request: impl FnMut(&str, u32) -> bool,
    ) {
        if self.parents.is_empty() {
            return;
        }
        let window = PARENT_WINDOW.max(total / self.parents.len());
        let mut free: usize = self
            .parents
            .values()
            .map(|p| window.saturating_sub(p.inflight))
            .sum::<usize>()
            .min(total.saturating_sub(self.inflight.len()));
        if free == 0 {
            return;
        }
        // First the pieces only a source holds (a super-seeding source offered
        // them to this child: every other peer waits for it to spread them),
        // then the lowest missing. Lowest-first alone left the last pieces of
        // a source to the end of every owner's queue, and the swarm waited
        // for them. Candidates: pieces a parent with room in its window
        // holds, not stored, below `pieces`.
        let Picker {
            parents,
            inflight,
            only_at_source,
            stored,
            ..
        } = self;
        let mut open: Vec<(&String, &mut Holder)> =
            parents.iter_mut().filter(|(_, p)| p.inflight < window).collect();
        let words = pieces.div_ceil(64);
        let last = if pieces.is_multiple_of(64) {
            u64::MAX
        } else {
            (1u64 << (pieces % 64)) - 1
        };
        let held: Vec<u64> = (0..words)
            .map(|w| {
                let any = open.iter().fold(0, |acc, (_, p)| acc | p.have.word(w));
                let mask = if w + 1 == words { last } else { u64::MAX };
                any & !stored.word(w) & mask
            })
            .collect();
        let first = ones(held.iter().enumerate().map(|(w, h)| h & only_at_source.word(w)));
        let rest = ones(held.iter().enumerate().map(|(w, h)| h & !only_at_source.word(w)));
        for i in first.chain(rest) {
            if free == 0 || open.is_empty() {
                break;
            }
            let i32 = i as u32;
            if !wanted(i) || inflight.contains_key(&i32) {
                continue;
            }
            let best = open
                .iter()
                .enumerate()
                .filter(|(_, (_, p))| p.have.get(i))
                .min_by_key(|(_, (id, p))| (p.scarce(), p.inflight, *id))
                .map(|(k, _)| k);
            let Some(k) = best else { continue };
            if request(open[k].0, i32) {
                let (id, p) = &mut open[k];
                p.inflight += 1;
                free -= 1;
                inflight.insert(i32, (id.to_string(), now));
                if p.inflight >= window {
                    open.swap_remove(k);
                }
            }
        }
    }

    /// Requests outstanding for longer than `timeout` from a parent that
    /// delivered nothing for as long: (piece, parent). A parent that keeps
    /// delivering is slow, not stalled: one connection carries one piece at
    /// a time, so with a deep window on a shared uplink the last request
    /// queued may wait longer than the timeout (measured in simulation: 8
    /// requests at a parent serving 16 children on 25 Mbit/s wait 10.7 s,
    /// and dropping such parents was the lab's `piece request timed out` at
    /// N = 32).
    pub fn late(&self, now: Instant, timeout: Duration) -> Vec<(u32, String)> {
        let mut late: Vec<(u32, String)> = self
            .inflight
            .iter()
            .filter(|(_, (p, at))| {
                let since = self
                    .parents
                    .get(p)
                    .and_then(|h| h.delivered)
                    .map_or(*at, |d| d.max(*at));
                now.saturating_duration_since(since) > timeout
            })
            .map(|(i, (p, _))| (*i, p.clone()))
            .collect();
        late.sort();
        late
    }
}

/// What the next report to the scheduler carries.
#[derive(Debug, Default)]
pub struct Report {
    pieces: Vec<PieceDigest>,
    bytes_from_peers: u64,
    bytes_from_source: u64,
    /// parent -> (pieces, total milliseconds).
    costs: BTreeMap<String, (u32, u64)>,
}

impl Report {
    /// A piece from a parent, `elapsed` after it was asked for.
    pub fn from_parent(&mut self, index: u32, bytes: u64, parent: String, elapsed: Duration) {
        self.bytes_from_peers += bytes;
        self.pieces.push(PieceDigest {
            index,
            sha256: Vec::new(),
        });
        let c = self.costs.entry(parent).or_default();
        c.0 += 1;
        c.1 += elapsed.as_millis() as u64;
    }

    /// A piece from the origin, with the digest this source vouches for.
    pub fn from_source(&mut self, index: u32, bytes: u64, digest: [u8; 32]) {
        self.bytes_from_source += bytes;
        self.pieces.push(PieceDigest {
            index,
            sha256: digest.to_vec(),
        });
    }

    /// The message to send, if there is anything to say; starts a new report.
    pub fn take(&mut self) -> Option<PiecesDone> {
        let r = std::mem::take(self);
        if r.pieces.is_empty() && r.bytes_from_peers == 0 && r.bytes_from_source == 0 {
            return None;
        }
        let costs = r
            .costs
            .into_iter()
            .map(|(parent_peer_id, (n, total))| PieceCost {
                parent_peer_id,
                pieces: n,
                mean_millis: (total / n.max(1) as u64) as u32,
            })
            .collect();
        Some(PiecesDone {
            pieces: r.pieces,
            bytes_from_peers: r.bytes_from_peers,
            bytes_from_source: r.bytes_from_source,
            costs,
        })
    }
}

/// When to report, save, ask for new parents or give up on the mesh.
#[derive(Debug, Clone)]
pub struct Timers {
    pub stall_timeout: Duration,
    last_progress: Instant,
    last_report: Instant,
    last_save: Instant,
    last_reschedule: Instant,
}

/// What one tick asks of the engine.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Due {
    pub report: bool,
    pub save: bool,
    /// Ask the scheduler for other parents.
    pub reschedule: bool,
    /// Give up on the mesh and fetch from the origin.
    pub back_to_source: bool,
}

pub const TICK: Duration = Duration::from_millis(50);
pub const SAVE_EVERY: Duration = Duration::from_millis(500);
pub const REPORT_EVERY: Duration = Duration::from_millis(250);

impl Timers {
    pub fn new(now: Instant, stall_timeout: Duration) -> Self {
        Self {
            stall_timeout,
            last_progress: now,
            last_report: now,
            last_save: now,
            last_reschedule: now,
        }
    }

    /// A piece landed.
    pub fn progress(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// How long a request may stay unanswered before its parent is dropped.
    pub fn request_timeout(&self) -> Duration {
        self.stall_timeout * 2
    }

    /// `sourcing`: fetching from the origin already; `scheduler`: the task
    /// stream is up. A source reports every tick (its digests gate the
    /// swarm), others every [`REPORT_EVERY`]. Without progress from parents
    /// for `stall_timeout` a peer asks for new ones (once per
    /// `stall_timeout`); for 3 x that (1 x without a scheduler) it goes to the
    /// origin.
    pub fn tick(&mut self, now: Instant, sourcing: bool, scheduler: bool) -> Due {
        let since = |t: Instant| now.saturating_duration_since(t);
        let mut due = Due::default();
        let interval = if sourcing { TICK } else { REPORT_EVERY };
        if since(self.last_report) >= interval {
            self.last_report = now;
            due.report = true;
        }
        if since(self.last_save) >= SAVE_EVERY {
            self.last_save = now;
            due.save = true;
        }
        if sourcing {
            return due;
        }
        let stall = self.stall_timeout;
        let idle = since(self.last_progress);
        if idle > stall * 3 || (!scheduler && idle > stall) {
            due.back_to_source = true;
        } else if idle > stall && since(self.last_reschedule) > stall {
            self.last_reschedule = now;
            due.reschedule = true;
        }
        due
    }
}

/// How long a parent that said it is busy (at its upload limit) is left alone.
pub const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Parents that turned this download away as busy. A busy parent is no
/// fault: it is skipped for [`BUSY_RETRY`], then may be connected again; a
/// download left without parents asks the scheduler again once a refusal
/// has expired, so a parent's freed slot is used without waiting for the
/// stall timer.
#[derive(Debug, Default)]
pub struct BusyParents {
    at: HashMap<String, Instant>,
}

impl BusyParents {
    /// `parent` answered busy at `now`.
    pub fn refused(&mut self, parent: &str, now: Instant) {
        self.at.insert(parent.to_string(), now);
    }

    /// Whether `parent` is still to be left alone.
    pub fn skip(&self, parent: &str, now: Instant) -> bool {
        self.at
            .get(parent)
            .is_some_and(|t| now.saturating_duration_since(*t) < BUSY_RETRY)
    }

    /// Forgets the refusals that expired; true if there were any (time to ask again).
    pub fn expired(&mut self, now: Instant) -> bool {
        let before = self.at.len();
        self.at
            .retain(|_, t| now.saturating_duration_since(*t) < BUSY_RETRY);
        self.at.len() < before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs `fill` and returns the (parent, piece) requests it made.
    fn fill(p: &mut Picker, now: Instant, have: &[bool], total: usize) -> Vec<(String, u32)> {
        let mut sent = Vec::new();
        p.fill(
            now,
            have.len(),
            |i| !have[i],
            total,
            |id, i| {
                sent.push((id.to_string(), i));
                true
            },
        );
        sent
    }

    #[test]
    fn lowest_missing_first_spread_over_parents_within_windows() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("a", false);
        p.add_parent("b", false);
        p.bitmap("a", vec![true; 8]);
        p.bitmap("b", vec![true; 8]);
        let mut have = vec![false; 8];
        have[0] = true;
        let sent = fill(&mut p, t0, &have, 4);
        assert_eq!(
            sent,
            vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 3), ("b".into(), 4)],
            "lowest first, least busy parent, 2 each"
        );
        assert!(fill(&mut p, t0, &have, 4).is_empty(), "windows full");
        p.arrived("b", 2, t0);
        have[2] = true;
        assert_eq!(fill(&mut p, t0, &have, 4), vec![("b".into(), 5)]);
    }

    #[test]
    fn a_fetching_source_only_gives_what_no_peer_has() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("seed", true);
        p.add_parent("peer", false);
        p.bitmap("seed", vec![true, true, true, false]);
        p.bitmap("peer", vec![true, false, false, false]);
        let sent = fill(&mut p, t0, &[false; 4], 32);
        assert_eq!(
            sent,
            vec![("seed".into(), 1), ("seed".into(), 2), ("peer".into(), 0)]
        );
        // Complete now: no longer scarce, the least busy parent serves.
        let mut p2 = Picker::default();
        p2.add_parent("seed", true);
        p2.add_parent("peer", false);
        p2.bitmap("seed", vec![true; 2]);
        p2.bitmap("peer", vec![true; 2]);
        assert_eq!(
            fill(&mut p2, t0, &[false; 2], 32),
            vec![("peer".into(), 0), ("seed".into(), 1)]
        );
    }

    #[test]
    fn pieces_only_a_source_holds_come_first() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("seed", true);
        p.add_parent("peer", false);
        p.bitmap("seed", vec![true; 8]);
        let mut peer = vec![true; 8];
        peer[7] = false;
        p.bitmap("peer", peer);
        // Two requests in all: the piece only the source has, then the lowest.
        assert_eq!(
            fill(&mut p, t0, &[false; 8], 2),
            vec![("seed".into(), 7), ("peer".into(), 0)]
        );
    }

    #[test]
    fn haves_pieces_without_digest_and_refused_requests() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("a", false);
        p.bitmap("a", vec![false; 4]);
        assert!(fill(&mut p, t0, &[false; 4], 32).is_empty());
        p.have("a", [2, 3, 9]);
        let mut sent = Vec::new();
        p.fill(
            t0,
            4,
            |i| i != 2,
            32,
            |id, i| {
                sent.push((id.to_string(), i));
                false // the connection is gone
            },
        );
        assert_eq!(sent, vec![("a".into(), 3)]);
        assert_eq!(p.inflight(), 0, "a refused request is not in flight");
    }

    #[test]
    fn stored_pieces_and_removed_parents_leave_the_candidates() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("seed", true);
        p.add_parent("a", false);
        p.bitmap("seed", vec![true, true, false, false]);
        p.bitmap("a", vec![false, true, false, false]);
        p.stored(1);
        // Piece 1 is stored, piece 0 only at the source: asked of it.
        assert_eq!(fill(&mut p, t0, &[false; 4], 32), vec![("seed".into(), 0)]);
        p.arrived("seed", 0, t0);
        p.remove_parent("seed");
        p.have("a", [3]);
        assert_eq!(
            fill(&mut p, t0, &[false; 4], 32),
            vec![("a".into(), 3)],
            "piece 0 left with the seed; 1 is stored"
        );
        // A new bitmap replaces the old one.
        p.bitmap("a", vec![true, false, false, false]);
        p.arrived("a", 3, t0);
        assert_eq!(fill(&mut p, t0, &[false; 4], 32), vec![("a".into(), 0)]);
    }

    #[test]
    fn late_requests_and_removed_parents() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("a", false);
        p.add_parent("b", false);
        p.bitmap("a", vec![true; 4]);
        p.bitmap("b", vec![true; 4]);
        fill(&mut p, t0, &[false; 4], 2);
        assert!(p.late(t0 + ms(9_000), ms(10_000)).is_empty());
        assert_eq!(
            p.late(t0 + ms(10_001), ms(10_000)),
            vec![(0, "a".into()), (1, "b".into())]
        );
        p.remove_parent("a");
        assert_eq!(p.inflight(), 1);
        // Piece 0 goes to b once its window has room.
        p.arrived("b", 1, t0);
        let sent = fill(&mut p, t0, &[false, true, false, false], 2);
        assert_eq!(sent, vec![("b".into(), 0), ("b".into(), 2)]);
    }

    #[test]
    fn a_parent_that_keeps_delivering_is_not_late() {
        let t0 = Instant::now();
        let mut p = Picker::default();
        p.add_parent("slow", false);
        p.bitmap("slow", vec![true; 8]);
        fill(&mut p, t0, &[false; 8], 8);
        assert_eq!(p.inflight(), 8);
        let timeout = ms(10_000);
        // One piece every 1.3 s: the last queued request waits 10.4 s.
        for i in 0..7u32 {
            p.arrived("slow", i, t0 + ms(1_300 * (i as u64 + 1)));
        }
        assert!(
            p.late(t0 + ms(10_500), timeout).is_empty(),
            "it delivered 1.4 s ago"
        );
        assert_eq!(p.late(t0 + ms(9_100 + 10_001), timeout), vec![(7, "slow".into())]);
    }

    #[test]
    fn reports_carry_digests_only_from_the_origin_and_mean_costs() {
        let mut r = Report::default();
        assert!(r.take().is_none(), "nothing to say");
        r.from_source(0, 10, [7; 32]);
        r.from_parent(1, 10, "p".into(), ms(30));
        r.from_parent(2, 10, "p".into(), ms(10));
        let m = r.take().expect("a report");
        assert_eq!((m.bytes_from_source, m.bytes_from_peers), (10, 20));
        assert_eq!(m.pieces[0].sha256, vec![7; 32]);
        assert!(m.pieces[1].sha256.is_empty());
        assert_eq!((m.costs[0].pieces, m.costs[0].mean_millis), (2, 20));
        assert!(r.take().is_none(), "taken");
    }

    #[test]
    fn timers_report_save_reschedule_then_back_to_source() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(5);
        let mut t = Timers::new(t0, stall);
        assert_eq!(t.tick(t0 + ms(100), false, true), Due::default());
        let due = t.tick(t0 + ms(600), false, true);
        assert!(due.report && due.save && !due.reschedule);
        t.progress(t0 + ms(600));
        assert!(
            !t.tick(t0 + ms(5_500), false, true).reschedule,
            "progress 4.9 s ago"
        );
        let due = t.tick(t0 + ms(5_700), false, true);
        assert!(due.reschedule && !due.back_to_source);
        assert!(!t.tick(t0 + ms(6_000), false, true).reschedule, "once per stall");
        assert!(t.tick(t0 + ms(10_800), false, true).reschedule);
        assert!(t.tick(t0 + ms(15_700), false, true).back_to_source);
        // Without a scheduler one stall is enough.
        let mut t = Timers::new(t0, stall);
        assert!(t.tick(t0 + ms(5_001), false, false).back_to_source);
        // A source reports every tick and never stalls out.
        let mut t = Timers::new(t0, stall);
        let due = t.tick(t0 + ms(60_000), true, true);
        assert!(due.report && !due.back_to_source && !due.reschedule);
        assert!(!t.tick(t0 + ms(60_040), true, true).report);
        assert!(t.tick(t0 + ms(60_050), true, true).report);
    }

    #[test]
    fn a_busy_parent_is_skipped_for_a_while_then_asked_again() {
        let t0 = Instant::now();
        let mut busy = BusyParents::default();
        busy.refused("p", t0);
        assert!(busy.skip("p", t0 + ms(500)) && !busy.skip("q", t0));
        assert!(!busy.expired(t0 + ms(500)), "not yet");
        assert!(busy.expired(t0 + BUSY_RETRY), "expired: ask again");
        assert!(!busy.skip("p", t0 + BUSY_RETRY));
        assert!(!busy.expired(t0 + BUSY_RETRY * 2), "once");
    }
}
