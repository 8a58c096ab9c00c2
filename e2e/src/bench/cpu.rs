//! CPU seconds used by some processes, and by the whole machine, over a span.

use std::collections::BTreeMap;

use crate::process::{cpu_seconds, machine_busy_seconds};

/// The key of the whole machine's busy seconds in [`CpuMeter::stop`]'s map.
pub const MACHINE: &str = "machine";

/// Started with the processes to watch; stopped while they still run.
pub struct CpuMeter {
    procs: Vec<(String, u32, Option<f64>)>,
    machine: Option<f64>,
}

impl CpuMeter {
    /// Watches `procs` (name, pid) from now on.
    pub fn start(procs: Vec<(String, u32)>) -> Self {
        Self {
            procs: procs
                .into_iter()
                .map(|(name, pid)| (name, pid, cpu_seconds(pid)))
                .collect(),
            machine: machine_busy_seconds(),
        }
    }

    /// CPU seconds of each process since [`Self::start`] (those that still run) and, under
    /// [`MACHINE`], of the whole machine.
    pub fn stop(self) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = self
            .procs
            .into_iter()
            .filter_map(|(name, pid, before)| Some((name, cpu_seconds(pid)? - before?)))
            .collect();
        if let (Some(before), Some(now)) = (self.machine, machine_busy_seconds()) {
            out.insert(MACHINE.into(), now - before);
        }
        out
    }
}
