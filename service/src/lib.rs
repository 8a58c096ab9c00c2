//! How every Damselfly role runs, in one small crate.
//!
//! Layout:
//! - [`shutdown`]: one shared type that tells tasks to stop and waits for them.
//! - [`telemetry`]: logging set-up and the Prometheus `/metrics` endpoint.
//! - [`config`]: load a TOML file into a role's config struct, with errors that name the field.
//! - [`secret`]: a wrapper that keeps credentials out of logs.
//! - [`health`]: `/healthz`, `/readyz` and the up/ready gauges; [`notify`]: systemd `READY=1`.
//! - [`tasks`]: server tasks supervised, so a role whose server dies exits non-zero.

pub mod config;
pub mod health;
pub mod notify;
pub mod secret;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
