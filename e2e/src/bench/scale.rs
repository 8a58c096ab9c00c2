//! The scheduler alone at scale: `damselfly scheduler` in a lab host, and
//! the load generator ([`crate::schedload`]) in this process, reaching it
//! over the lab bridge.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::lab::Lab;
use crate::mesh::{SCHEDULER_METRICS_PORT, SCHEDULER_PORT};
use crate::schedload::{self, LoadConfig, LoadReport};
use crate::wait::wait_for_tcp;

const HOST: &str = "sched";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    pub result: Option<LoadReport>,
    pub error: Option<String>,
}

pub struct ScaleConfig {
    pub prefix: String,
    pub subnet: u8,
    pub damselfly_bin: Option<PathBuf>,
    pub peers: usize,
    pub tasks: usize,
}

pub fn measure(config: &ScaleConfig) -> ScaleReport {
    eprintln!(
        "bench: scale: {} simulated peers across {} tasks",
        config.peers, config.tasks
    );
    match run(config) {
        Ok(result) => ScaleReport {
            result: Some(result),
            error: None,
        },
        Err(e) => ScaleReport {
            result: None,
            error: Some(format!("{e:#}")),
        },
    }
}

fn run(config: &ScaleConfig) -> Result<LoadReport> {
    let bin = match &config.damselfly_bin {
        Some(bin) => bin.clone(),
        None => crate::bins::damselfly()?,
    };
    let lab = Lab::new(&config.prefix, config.subnet, &[HOST], None)?;
    let ip = lab.ip(HOST);
    let mut cmd = Command::new(bin);
    cmd.arg("scheduler")
        .arg("--listen")
        .arg(format!("{ip}:{SCHEDULER_PORT}"))
        .arg("--metrics-listen")
        .arg(format!("{ip}:{SCHEDULER_METRICS_PORT}"));
    let scheduler = lab.spawn(HOST, "scheduler", &cmd)?;
    wait_for_tcp(ip, SCHEDULER_PORT, Duration::from_secs(20))
        .with_context(|| format!("the scheduler did not start:\n{}", scheduler.log_tail(20)))?;
    let load = LoadConfig {
        scheduler: format!("http://{ip}:{SCHEDULER_PORT}"),
        peers: config.peers,
        tasks: config.tasks,
        hosts: (config.peers / 10).max(config.peers.div_ceil(config.tasks)),
        timeout: Duration::from_secs(60),
        ..LoadConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = schedload::run(&load) => report,
            () = until_interrupted() => anyhow::bail!("interrupted"),
        }
    })?;
    anyhow::ensure!(
        scheduler.is_running(),
        "the scheduler exited:\n{}",
        scheduler.log_tail(20)
    );
    Ok(report)
}

async fn until_interrupted() {
    while !crate::wait::interrupted() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
