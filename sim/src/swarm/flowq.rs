//! When each flow in progress completes: one entry per flow, moved when its
//! rate changes, instead of a new event per change left stale in the event
//! queue (every flow start or end re-rates the flows of both its ends, so at
//! 1,000 peers the queue held mostly dead completions and popping it was a
//! fifth of the run).

/// (when, sequence, flow, version): earliest first, then the lower sequence,
/// the same order the event queue uses.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    pub at: f64,
    pub seq: u64,
    pub flow: usize,
    pub version: u64,
}

impl Due {
    fn before(&self, o: &Due) -> bool {
        self.at.total_cmp(&o.at).then(self.seq.cmp(&o.seq)).is_lt()
    }
}

/// An indexed binary min-heap over flow ids.
#[derive(Default)]
pub struct FlowQueue {
    heap: Vec<Due>,
    /// flow id -> its position in `heap`.
    pos: Vec<Option<usize>>,
}

impl FlowQueue {
    /// Sets (or moves) the flow's completion.
    pub fn set(&mut self, due: Due) {
        if self.pos.len() <= due.flow {
            self.pos.resize(due.flow + 1, None);
        }
        match self.pos[due.flow] {
            Some(i) => {
                self.heap[i] = due;
                self.up(i);
                let i = self.pos[due.flow].expect("placed");
                self.down(i);
            }
            None => {
                self.heap.push(due);
                let i = self.heap.len() - 1;
                self.pos[due.flow] = Some(i);
                self.up(i);
            }
        }
    }

    pub fn peek(&self) -> Option<&Due> {
        self.heap.first()
    }

    pub fn pop(&mut self) -> Option<Due> {
        let last = self.heap.len().checked_sub(1)?;
        self.swap(0, last);
        let top = self.heap.pop().expect("not empty");
        self.pos[top.flow] = None;
        if !self.heap.is_empty() {
            self.down(0);
        }
        Some(top)
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].flow] = Some(a);
        self.pos[self.heap[b].flow] = Some(b);
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.heap[i].before(&self.heap[parent]) {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < self.heap.len() && self.heap[l].before(&self.heap[m]) {
                m = l;
            }
            if r < self.heap.len() && self.heap[r].before(&self.heap[m]) {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(at: f64, seq: u64, flow: usize) -> Due {
        Due {
            at,
            seq,
            flow,
            version: 0,
        }
    }

    #[test]
    fn earliest_first_and_moved_entries() {
        let mut q = FlowQueue::default();
        q.set(due(3.0, 1, 0));
        q.set(due(1.0, 2, 1));
        q.set(due(2.0, 3, 2));
        q.set(due(2.0, 0, 3));
        q.set(due(5.0, 4, 1)); // flow 1 slowed down
        let order: Vec<usize> = std::iter::from_fn(|| q.pop().map(|d| d.flow)).collect();
        assert_eq!(order, vec![3, 2, 0, 1], "by time, then sequence");
    }
}
