//! The scheduler: who downloads from whom.
//!
//! It keeps, in memory, the hosts that announce themselves, the tasks being
//! downloaded, the peers of each task, and one parent->child DAG per task. It
//! triggers a seed peer for a new task, relays the trusted piece digests that
//! source peers report, and picks parents for every peer. It never touches
//! file bytes.
//!
//! Layout:
//! - [`config`]: the scheduler's config file.
//! - [`admission`]: what a host sends, checked where it is decoded (ids, layouts, bitmaps).
//! - [`state`]: hosts, tasks, peers and the DAG (plain data, no I/O).
//! - [`core`]: the scheduling core: events in, commands out, the clock passed in.
//! - [`evaluator`]: the trait that filters and scores candidate parents, and the default policy.
//! - [`schedule`]: parent selection and re-planning over [`state`].
//! - [`service`]: the gRPC wrapper (decodes events, encodes commands); the only place that knows about tonic.
//! - [`http`]: `/metrics`, `/tasks/{id}` and `/config` for operators and tests.
//! - [`manager`]: registration, keepalive, live settings and traffic reports to a manager.
//! - [`metrics`]: the scheduler's Prometheus metrics.
//! - [`server`]: starts everything and stops it on shutdown.

pub mod admission;
pub mod config;
pub mod core;
pub mod error;
pub mod evaluator;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod schedule;
pub mod server;
pub mod service;
pub mod state;

pub use config::SchedulerConfig;
pub use error::Error;
pub use server::run;
