//! The swarm benchmark (issue 3): Damselfly against plain HTTP and
//! BitTorrent on a lab of shaped network-namespace hosts; and (issue 13)
//! `damselfly store get` against direct reads from an S3 server, and
//! `damselfly cache export`.
//!
//! Layout: [`units`] parses sizes and rates, [`swarm`] builds the lab and
//! measures one method, [`methods`] holds the methods, [`single`] the
//! one-peer measurement, [`scale`] the scheduler under load, [`report`] and [`chart`] the output,
//! [`cpu`] the daemons' CPU time, [`disturb`] what else may run around each method.

pub mod chart;
pub mod cpu;
pub mod disturb;
pub mod methods;
pub mod report;
pub mod scale;
pub mod single;
pub mod swarm;
pub mod units;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use disturb::{DisturbConfig, Disturbances};
use methods::MethodName;
use report::{MethodReport, Report, Setup};
use units::{Rate, Size};

pub struct Config {
    pub hosts: usize,
    pub rate: Rate,
    pub size: Size,
    pub methods: Vec<MethodName>,
    pub out: PathBuf,
    pub damselfly_bin: Option<PathBuf>,
    /// Mutual TLS on for every daemon of the damselfly method.
    pub tls: bool,
    /// What runs around each measured method.
    pub disturb: DisturbConfig,
    /// Run the one-peer measurement (needs the damselfly method).
    pub single: bool,
    pub single_size: Size,
    pub single_concurrent_size: Size,
    /// Links of the one-peer lab (its own rate; "none" unshaped).
    pub single_rate: Rate,
    /// Runs of curl and a cold get in the one-peer lab.
    pub single_runs: usize,
    /// The scheduler's `cold_source` for the damselfly method and the one-peer lab (empty:
    /// the default).
    pub cold_source: String,
    /// Every `damselfly get` names the blob's digest.
    pub digest: bool,
    /// Simulated peers for the scheduler scale run (0 skips it).
    pub scale_peers: usize,
    pub scale_tasks: usize,
    /// Lab name prefix; the single-peer lab uses `<prefix>s`, the scale run `<prefix>c`.
    pub prefix: String,
    /// Third octet of the swarm lab's subnet; the single-peer and scale labs use the next two.
    pub subnet: u8,
    /// The command line, for the report.
    pub command: String,
}

/// Runs every selected method and writes the report to `config.out` after
/// each step, so an interrupted run keeps what it measured.
pub fn run(config: &Config) -> Result<Report> {
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut report = Report {
        started_unix,
        command: config.command.clone(),
        setup: Setup {
            hosts: config.hosts,
            rate: config.rate.to_string(),
            rate_bits_per_sec: config.rate.bits_per_sec(),
            size: config.size.to_string(),
            size_bytes: config.size.0,
            blob_sha256: String::new(),
            su_seconds: None,
        },
        methods: Vec::new(),
        single: None,
        scale: None,
    };
    // No method: only the one-peer measurement (`--single-only`), no swarm lab.
    let swarm = if config.methods.is_empty() {
        None
    } else {
        eprintln!(
            "bench: building a lab of {} peer hosts, links {}, blob {}",
            config.hosts, config.rate, config.size
        );
        let swarm = swarm::Swarm::build(
            &config.prefix,
            config.subnet,
            config.hosts,
            config.rate.clone(),
            config.size,
        )?;
        report.setup.blob_sha256 = swarm.blob_sha256.clone();
        report.setup.su_seconds = swarm.su_seconds();
        Some(swarm)
    };
    for name in &config.methods {
        let swarm = swarm.as_ref().expect("built when there are methods");
        crate::wait::check_interrupted()?;
        let mut method = match name {
            MethodName::Damselfly => Box::new(
                methods::Damselfly::new(config.damselfly_bin.clone(), config.tls)
                    .shape(&config.cold_source, config.digest),
            ),
            _ => name.build(config.damselfly_bin.clone(), config.tls),
        };
        let measured = match Disturbances::start(swarm, &config.disturb) {
            Ok(disturbances) => {
                let mut measured = swarm::measure(swarm, method.as_mut());
                measured.disturbances = disturbances.stop();
                measured
            }
            Err(e) => MethodReport::failed(method.name(), &method.notes(), format!("disturb: {e:#}")),
        };
        report.methods.push(measured);
        report.write(&config.out)?;
    }
    drop(swarm);

    if config.single {
        crate::wait::check_interrupted()?;
        let single = single::SingleConfig {
            prefix: format!("{}s", config.prefix),
            subnet: config.subnet.wrapping_add(1),
            size: config.single_size,
            concurrent_size: config.single_concurrent_size,
            damselfly_bin: config.damselfly_bin.clone(),
            rate: config.single_rate.clone(),
            runs: config.single_runs,
            cold_source: if config.cold_source.is_empty() {
                "seed".into()
            } else {
                config.cold_source.clone()
            },
            digest: config.digest,
        };
        report.single = Some(single::measure(&single)?);
        report.write(&config.out)?;
    }
    if config.scale_peers > 0 {
        crate::wait::check_interrupted()?;
        let scale = scale::ScaleConfig {
            prefix: format!("{}c", config.prefix),
            subnet: config.subnet.wrapping_add(2),
            damselfly_bin: config.damselfly_bin.clone(),
            peers: config.scale_peers,
            tasks: config.scale_tasks,
        };
        report.scale = Some(scale::measure(&scale));
    }
    report.write(&config.out)?;
    Ok(report)
}
