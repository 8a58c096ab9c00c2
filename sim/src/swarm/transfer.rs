//! Transfers: parent connections (bitmap, haves, one piece at a time),
//! what a source lets each child see (super-seeding), pieces landing, and
//! fetches from the origin.

use super::*;

impl Sim {
    pub(super) fn connected(&mut self, c: usize) {
        let (child, parent) = (self.conns[c].child, self.conns[c].parent);
        if !self.conns[c].open {
            return;
        }
        let lat = self.path(self.dls[child].host, self.dls[parent].host);
        if !self.hosts[self.dls[parent].host].alive {
            self.conns[c].open = false;
            self.at(lat, Ev::Closed(c));
            return;
        }
        self.conns[c].connected = true;
        let child_id = self.dls[child].peer_id.clone();
        let now = self.instant();
        self.dls[parent].children.push(c);
        self.dls[parent].super_seed.join(&child_id, now);
        if self.dls[parent].layout.is_some() {
            self.send_bitmap(c);
        }
        self.arm_super_tick(parent);
    }

    /// The parent's first frame once it knows the layout: what the child may see.
    pub(super) fn send_bitmap(&mut self, c: usize) {
        let (child, parent) = (self.conns[c].child, self.conns[c].parent);
        let lat = self.path(self.dls[child].host, self.dls[parent].host);
        let n = self.dls[parent].have.len();
        self.conns[c].told = vec![false; n];
        let mut have = vec![false; n];
        for i in self.newly_visible(c) {
            have[i as usize] = true;
        }
        self.at(lat, Ev::Bitmap { conn: c, have });
    }

    /// Pieces the parent may now tell this child about (super-seeding when
    /// the parent is a source), marking them told.
    pub(super) fn newly_visible(&mut self, c: usize) -> Vec<u32> {
        let (child, parent) = (self.conns[c].child, self.conns[c].parent);
        let now = self.instant();
        let child_id = self.dls[child].peer_id.clone();
        let p = &mut self.dls[parent];
        let n = p.have.len();
        if self.conns[c].told.len() != n {
            self.conns[c].told = vec![false; n];
        }
        let complete = p.held == n && n > 0;
        let told = &mut self.conns[c].told;
        let mut out = Vec::new();
        for (i, t) in told.iter_mut().enumerate() {
            if p.have[i] && !*t && (!p.sourcing || p.super_seed.visible(&child_id, i as u32, now, complete)) {
                *t = true;
                out.push(i as u32);
            }
        }
        out
    }

    pub(super) fn reveal(&mut self, c: usize) {
        if !self.conns[c].open || !self.conns[c].connected {
            return;
        }
        let lat = self.path(
            self.dls[self.conns[c].child].host,
            self.dls[self.conns[c].parent].host,
        );
        for index in self.newly_visible(c) {
            self.at(lat, Ev::Have { conn: c, index });
        }
    }

    pub(super) fn arm_super_tick(&mut self, d: usize) {
        let dl = &mut self.dls[d];
        if dl.sourcing && !dl.super_tick {
            dl.super_tick = true;
            self.at(SUPER_TICK, Ev::SuperTick(d));
        }
    }

    pub(super) fn serve_next(&mut self, c: usize) {
        let parent = self.conns[c].parent;
        while let Some(index) = self.conns[c].queue.pop_front() {
            if !self.dls[parent]
                .have
                .get(index as usize)
                .copied()
                .unwrap_or(false)
            {
                continue;
            }
            let layout = self.dls[parent].layout.expect("has pieces");
            let bytes = layout.len_of(index) as f64;
            let (from, to) = (self.dls[parent].host, self.dls[self.conns[c].child].host);
            let (flow, times) = self
                .net
                .start(self.now, from, to, bytes, Tag::Piece { conn: c, index });
            self.conns[c].flow = Some(flow);
            self.reschedule(times);
            return;
        }
    }

    pub(super) fn reschedule(&mut self, times: Vec<Reschedule>) {
        for (flow, version, at) in times {
            // The same time and sequence an event would get (ties order alike).
            let delay = at - self.now;
            self.seq += 1;
            self.flow_queue.set(super::flowq::Due {
                at: self.now + delay.max(0.0),
                seq: self.seq,
                flow,
                version,
            });
        }
    }

    pub(super) fn flow_done(&mut self, flow: usize, version: u64) {
        if self.net.get(flow).is_none_or(|f| f.version != version) {
            return;
        }
        let (f, times) = self.net.stop(self.now, flow).expect("checked");
        self.reschedule(times);
        match f.tag {
            Tag::Piece { conn, index } => {
                self.conns[conn].flow = None;
                let (child, parent) = (self.conns[conn].child, self.conns[conn].parent);
                let bytes = self.dls[parent].layout.expect("served").len_of(index) as u64;
                if f.from == SEED {
                    self.seed_sent += bytes;
                    let p = &self.dls[parent];
                    let first = self.seed_copies.insert((p.task, index));
                    if !first && p.held < p.have.len() {
                        self.seed_repeats_while_fetching += bytes;
                    }
                }
                self.trace_sent(f.from == SEED, bytes);
                let now = self.instant();
                let child_id = self.dls[child].peer_id.clone();
                self.dls[parent].super_seed.served(&child_id, index, now);
                let lat = self.path(f.from, f.to);
                self.at(lat, Ev::Piece { conn, index });
                self.serve_next(conn);
            }
            Tag::Source { dl, worker, index } => {
                let bytes = self.dls[dl].layout.expect("fetching").len_of(index) as u64;
                self.origin_bytes += bytes;
                if !self.dls[dl].have[index as usize] {
                    let d = &mut self.dls[dl];
                    d.digest[index as usize] = true;
                    d.report.from_source(index, bytes, digest_of(d.task, index));
                    self.landed(dl, index);
                }
                self.source_next_piece(dl, worker);
            }
        }
    }

    pub(super) fn piece_arrived(&mut self, c: usize, index: u32) {
        if !self.conns[c].open {
            return;
        }
        let (child, parent) = (self.conns[c].child, self.conns[c].parent);
        let pid = self.dls[parent].peer_id.clone();
        let now = self.instant();
        self.dls[child].picker.arrived(&pid, index, now);
        let asked = self.conns[c].asked.remove(&index);
        let dl = &self.dls[child];
        if dl.done_at.is_some() || dl.have[index as usize] || !dl.picker.has_parent(&pid) {
            return self.fill(child);
        }
        let bytes = dl.layout.expect("requested").len_of(index) as u64;
        let dl = &mut self.dls[child];
        let elapsed = Duration::from_secs_f64(self.now - asked.unwrap_or(self.now));
        dl.report.from_parent(index, bytes, pid, elapsed);
        self.landed(child, index);
        self.fill(child);
    }

    /// A piece is stored: serve it, and finish if it was the last.
    pub(super) fn landed(&mut self, d: usize, index: u32) {
        let now = self.instant();
        let dl = &mut self.dls[d];
        dl.have[index as usize] = true;
        dl.held += 1;
        dl.picker.stored(index);
        dl.timers.progress(now);
        for c in dl.children.clone() {
            if self.dls[d].sourcing {
                self.reveal(c);
            } else if self.conns[c].open
                && self.conns[c].connected
                && self.conns[c].told.len() > index as usize
            {
                self.conns[c].told[index as usize] = true;
                let lat = self.path(self.dls[d].host, self.dls[self.conns[c].child].host);
                self.at(lat, Ev::Have { conn: c, index });
            }
        }
        if self.dls[d].held == self.dls[d].have.len() {
            self.finish(d);
        }
    }

    pub(super) fn fill(&mut self, d: usize) {
        let now = self.instant();
        let dl = &mut self.dls[d];
        if dl.sourcing || dl.done_at.is_some() || dl.layout.is_none() || dl.picker.is_empty() {
            return;
        }
        let mut sent = Vec::new();
        let (have, digest, conns) = (&dl.have, &dl.digest, &dl.conns);
        dl.picker.fill(
            now,
            have.len(),
            |i| !have[i] && digest[i],
            TOTAL_WINDOW,
            |parent, i| match conns.get(parent) {
                Some(&c) => {
                    sent.push((c, i));
                    true
                }
                None => false,
            },
        );
        for (c, index) in sent {
            self.conns[c].asked.insert(index, self.now);
            let lat = self.path(self.dls[d].host, self.dls[self.conns[c].parent].host);
            self.at(lat, Ev::Request { conn: c, index });
        }
    }

    /// Closes a connection from either end; the other end learns it after a latency.
    pub(super) fn close_conn(&mut self, c: usize) {
        if !self.conns[c].open {
            return;
        }
        self.conns[c].open = false;
        let (child, parent) = (self.conns[c].child, self.conns[c].parent);
        if let Some(f) = self.conns[c].flow.take()
            && let Some((_, times)) = self.net.stop(self.now, f)
        {
            self.reschedule(times);
        }
        if self.conns[c].connected {
            let child_id = self.dls[child].peer_id.clone();
            let p = &mut self.dls[parent];
            p.children.retain(|x| *x != c);
            p.super_seed.leave(&child_id);
        }
    }

    pub(super) fn drop_parent(&mut self, d: usize, id: &str) {
        if let Some(c) = self.dls[d].conns.remove(id) {
            self.close_conn(c);
        }
        self.dls[d].picker.remove_parent(id);
    }

    pub(super) fn fail_parent(&mut self, d: usize, id: &str, index: u32, reason: FailReason) {
        self.drop_parent(d, id);
        self.dls[d].blocklist.insert(id.to_string());
        if self.dls[d].registered {
            let (task_id, peer_id) = self.ids(d);
            self.send_to_core(
                self.dls[d].host,
                Event::PieceFailed {
                    task_id,
                    peer_id,
                    parent_peer_id: id.to_string(),
                    index,
                    reason,
                },
            );
        }
    }

    /// The child learns that a connection broke (the parent died).
    pub(super) fn closed(&mut self, c: usize) {
        let child = self.conns[c].child;
        let parent_id = self.dls[self.conns[c].parent].peer_id.clone();
        if !self.hosts[self.dls[child].host].alive || self.dls[child].conns.get(&parent_id) != Some(&c) {
            return;
        }
        self.fail_parent(child, &parent_id, 0, FailReason::Unreachable);
        if self.dls[child].picker.is_empty() && self.dls[child].registered {
            let (task_id, peer_id) = self.ids(child);
            self.send_to_core(self.dls[child].host, Event::RescheduleAsked { task_id, peer_id });
        }
    }

    pub(super) fn start_source(&mut self, d: usize) {
        if self.dls[d].sourcing {
            return;
        }
        if self.dls[d].host != SEED {
            self.back_to_source += 1;
        }
        self.dls[d].sourcing = true;
        let parents: Vec<String> = self.dls[d].conns.keys().cloned().collect();
        for p in parents {
            self.drop_parent(d, &p);
        }
        self.dls[d].picker.clear();
        if self.dls[d].layout.is_some() {
            self.fetch_missing(d);
        } else {
            // The length probe: one round trip to the origin.
            let rtt = 2.0 * self.path(self.dls[d].host, ORIGIN);
            self.at(rtt, Ev::Probed(d));
        }
        self.arm_super_tick(d);
    }

    pub(super) fn fetch_missing(&mut self, d: usize) {
        let dl = &mut self.dls[d];
        let layout = dl.layout.expect("laid out");
        let per_block = (SOURCE_BLOCK / layout.piece_length as u64).max(1) as usize;
        let missing: Vec<u32> = (0..dl.have.len() as u32)
            .filter(|i| !dl.have[*i as usize])
            .collect();
        dl.blocks = missing
            .chunks(per_block)
            .map(|c| c.iter().copied().collect())
            .collect();
        let rtt = 2.0 * self.path(self.dls[d].host, ORIGIN);
        for worker in 0..SOURCE_CONNECTIONS.min(self.dls[d].blocks.len()) {
            self.at(rtt, Ev::SourceBlock { dl: d, worker });
        }
    }

    /// The next piece of this connection's block, or the next block (a new
    /// Range request: one round trip).
    pub(super) fn source_next_piece(&mut self, d: usize, worker: usize) {
        if !self.hosts[self.dls[d].host].alive || self.dls[d].done_at.is_some() {
            return;
        }
        loop {
            let dl = &mut self.dls[d];
            if let Some(index) = dl.workers[worker].pop_front() {
                if dl.have[index as usize] {
                    continue;
                }
                let bytes = dl.layout.expect("laid out").len_of(index) as f64;
                let tag = Tag::Source { dl: d, worker, index };
                let (_, times) = self.net.start(self.now, ORIGIN, self.dls[d].host, bytes, tag);
                return self.reschedule(times);
            }
            let Some(block) = dl.blocks.pop_front() else {
                return;
            };
            dl.workers[worker] = block;
            let rtt = 2.0 * self.path(self.dls[d].host, ORIGIN);
            return self.at(rtt, Ev::SourceBlock { dl: d, worker });
        }
    }
}
