//! Simulated links: every host has an uplink and a downlink of fixed
//! capacity, and every transfer is a flow through the sender's uplink and
//! the receiver's downlink. A flow's rate is its fair share at the tighter
//! end: min(up / flows up, down / flows down), recomputed for the flows of
//! both ends whenever a flow starts or ends. That is how TCP flows behind a
//! `tc tbf` on each end share the lab's links, except that the share one
//! flow leaves unused at its tight end is not handed to the others (a
//! slight pessimism when ends are mixed).

/// Bytes per second.
pub type Rate = f64;

pub struct Link {
    pub up: Rate,
    pub down: Rate,
    up_flows: Vec<usize>,
    down_flows: Vec<usize>,
}

impl Link {
    pub fn new(up: Rate, down: Rate) -> Self {
        Self {
            up,
            down,
            up_flows: Vec::new(),
            down_flows: Vec::new(),
        }
    }
}

pub struct Flow<T> {
    pub from: usize,
    pub to: usize,
    left: f64,
    rate: Rate,
    since: f64,
    /// Bumped on every rate change: a completion event carries it.
    pub version: u64,
    pub tag: T,
}

/// The flows in progress over every host's links.
pub struct Net<T> {
    pub links: Vec<Link>,
    flows: Vec<Option<Flow<T>>>,
    free: Vec<usize>,
}

/// A flow whose completion time changed: (flow, version, finishes at).
pub type Reschedule = (usize, u64, f64);

impl<T> Net<T> {
    pub fn new(links: Vec<Link>) -> Self {
        Self {
            links,
            flows: Vec::new(),
            free: Vec::new(),
        }
    }

    pub fn get(&self, id: usize) -> Option<&Flow<T>> {
        self.flows.get(id).and_then(Option::as_ref)
    }

    /// Starts `bytes` from `from` to `to` at `now`; returns its id and the
    /// new completion times of every flow it touched (itself included).
    pub fn start(
        &mut self,
        now: f64,
        from: usize,
        to: usize,
        bytes: f64,
        tag: T,
    ) -> (usize, Vec<Reschedule>) {
        let flow = Flow {
            from,
            to,
            left: bytes.max(1.0),
            rate: 0.0,
            since: now,
            version: 0,
            tag,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.flows[id] = Some(flow);
                id
            }
            None => {
                self.flows.push(Some(flow));
                self.flows.len() - 1
            }
        };
        self.links[from].up_flows.push(id);
        self.links[to].down_flows.push(id);
        (id, self.rerate(now, from, to))
    }

    /// Ends a flow (done or cancelled); returns it and the others' new times.
    pub fn stop(&mut self, now: f64, id: usize) -> Option<(Flow<T>, Vec<Reschedule>)> {
        let flow = self.flows.get_mut(id)?.take()?;
        self.free.push(id);
        let l = &mut self.links[flow.from].up_flows;
        l.swap_remove(l.iter().position(|f| *f == id).expect("listed"));
        let l = &mut self.links[flow.to].down_flows;
        l.swap_remove(l.iter().position(|f| *f == id).expect("listed"));
        let times = self.rerate(now, flow.from, flow.to);
        Some((flow, times))
    }

    /// Flows through a host's links (to cancel them when it dies).
    pub fn flows_of(&self, host: usize) -> Vec<usize> {
        let l = &self.links[host];
        let mut all: Vec<usize> = l.up_flows.iter().chain(&l.down_flows).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn rerate(&mut self, now: f64, up_host: usize, down_host: usize) -> Vec<Reschedule> {
        let mut touched: Vec<usize> = self.links[up_host].up_flows.clone();
        touched.extend(&self.links[down_host].down_flows);
        touched.sort_unstable();
        touched.dedup();
        let mut out = Vec::with_capacity(touched.len());
        for id in touched {
            let (from, to) = {
                let f = self.flows[id].as_ref().expect("listed flow");
                (f.from, f.to)
            };
            let (a, b) = (&self.links[from], &self.links[to]);
            let rate = (a.up / a.up_flows.len() as f64).min(b.down / b.down_flows.len() as f64);
            let f = self.flows[id].as_mut().expect("listed flow");
            f.left = (f.left - f.rate * (now - f.since)).max(0.0);
            f.since = now;
            if f.rate != rate || f.version == 0 {
                f.rate = rate;
                f.version += 1;
                out.push((id, f.version, now + f.left / rate));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_flows_share_an_uplink_then_one_speeds_up() {
        let mut net: Net<()> = Net::new(vec![
            Link::new(100.0, 100.0),
            Link::new(100.0, 100.0),
            Link::new(100.0, 100.0),
        ]);
        let (a, t) = net.start(0.0, 0, 1, 100.0, ());
        assert_eq!(t, vec![(a, 1, 1.0)]);
        let (b, t) = net.start(0.5, 0, 2, 100.0, ());
        // a has 50 left at 50/s; b 100 at 50/s.
        assert!(t.contains(&(a, 2, 1.5)) && t.contains(&(b, 1, 2.5)), "{t:?}");
        let (_, t) = net.stop(1.5, a).unwrap();
        // b had 50 left at 1.5 s, now alone at 100/s.
        assert_eq!(t, vec![(b, 2, 2.0)]);
    }

    #[test]
    fn the_tighter_end_sets_the_rate() {
        let mut net: Net<()> = Net::new(vec![Link::new(1000.0, 0.0), Link::new(0.0, 10.0)]);
        let (a, t) = net.start(0.0, 0, 1, 10.0, ());
        assert_eq!(t, vec![(a, 1, 1.0)]);
        assert_eq!(net.flows_of(1), vec![a]);
    }
}
