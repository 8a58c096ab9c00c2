//! A deterministic swarm simulator.
//!
//! It runs the real scheduling core ([`damselfly_scheduler::core::Core`],
//! with the real planner and evaluator), the real piece choice and timers
//! of the download engine ([`damselfly_peer::picker`]) and the real
//! super-seeding ([`damselfly_peer::piece_server::SuperSeed`]) against
//! simulated links ([`net`]) on an event queue over virtual time: no
//! sockets, no sleeping, the same numbers for the same seed.
//!
//! Hosts: an origin, one seed host and N peer hosts, each with an uplink and
//! a downlink of U (a share of slow hosts with less) and a one-way latency;
//! the scheduler is on an unshaped host. All N peers ask for every task at
//! once (a small jitter), the scheduler triggers the seed, the seed fetches
//! from the origin over two connections in 8 MiB blocks and reports digests
//! every 50 ms, peers trade pieces over one connection per (child, parent,
//! task) that carries one piece at a time. A share of the peers can be
//! killed mid-run: their connections break, their streams to the scheduler
//! end.

pub mod net;
pub mod swarm;

use serde::Serialize;

/// One simulated run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Peer hosts that download (the seed host and the origin come on top).
    pub peers: usize,
    /// Size of each task in bytes (one task per layer, all asked at once).
    pub layers: Vec<u64>,
    /// Every host's up and down rate, bits per second.
    pub rate_bits: f64,
    /// One-way latency of every host's link, seconds.
    pub latency: f64,
    /// Share of the peer hosts whose links carry only `slow_factor` x the rate.
    pub slow_share: f64,
    pub slow_factor: f64,
    /// Share of the peer hosts killed at `kill_at` x S/U.
    pub kill_share: f64,
    pub kill_at: f64,
    /// The peer's `stall_timeout`, seconds.
    pub stall_timeout: f64,
    pub candidate_parent_limit: usize,
    pub filter_parent_limit: usize,
    /// Children a host serves at once per task (the peer's `upload_slots`).
    pub upload_slots: u32,
    /// Seeds every random choice (the scheduler's sampling, slow and killed hosts, jitter).
    pub seed: u64,
}

impl Config {
    /// The lab's defaults: U = 100 Mbit/s, one task of `size` bytes.
    pub fn lab(peers: usize, size: u64) -> Self {
        Self {
            peers,
            layers: vec![size],
            rate_bits: 100e6,
            latency: 0.000_1,
            slow_share: 0.0,
            slow_factor: 0.25,
            kill_share: 0.0,
            kill_at: 0.5,
            stall_timeout: 5.0,
            candidate_parent_limit: 8,
            filter_parent_limit: 40,
            upload_slots: 16,
            seed: 1,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// S/U in seconds: the time one link needs for all of it.
    pub fn s_over_u(&self) -> f64 {
        self.total_bytes() as f64 * 8.0 / self.rate_bits
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub peers: usize,
    pub layers: usize,
    pub total_bytes: u64,
    pub s_over_u: f64,
    /// When the last surviving peer had every task (virtual seconds).
    pub makespan: f64,
    pub makespan_ratio: f64,
    pub median_ratio: f64,
    pub origin_ratio: f64,
    /// Bytes the seed host uploaded to peers / S.
    pub seed_sent_ratio: f64,
    /// Of those, second copies sent while the seed was still fetching from
    /// the origin (its uplink the swarm's bottleneck) / S: super-seeding's
    /// promise is zero. Copies after it holds the whole task use an uplink
    /// that would idle otherwise.
    pub seed_repeats_while_fetching_ratio: f64,
    pub killed: usize,
    pub unfinished: usize,
    pub back_to_source: u64,
    /// Messages the scheduler received, and sent, per virtual second of the run.
    pub scheduler_in_per_s: f64,
    pub scheduler_out_per_s: f64,
    pub piece_requests_timed_out: u64,
    pub events: u64,
    pub wall_seconds: f64,
}

impl Report {
    pub const TABLE_HEADER: &'static str = "| peers | layers | S | makespan / (S/U) | median / (S/U) | origin / S | seed sent / S | seed repeats while fetching / S | killed | unfinished | back to source | requests timed out | scheduler msgs in/s | out/s | wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

    pub fn table_row(&self) -> String {
        format!(
            "| {} | {} | {} MiB | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} |",
            self.peers,
            self.layers,
            self.total_bytes >> 20,
            self.makespan_ratio,
            self.median_ratio,
            self.origin_ratio,
            self.seed_sent_ratio,
            self.seed_repeats_while_fetching_ratio,
            self.killed,
            self.unfinished,
            self.back_to_source,
            self.piece_requests_timed_out,
            self.scheduler_in_per_s,
            self.scheduler_out_per_s,
            self.wall_seconds,
        )
    }
}

pub use swarm::run;
