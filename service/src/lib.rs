//! How every Damselfly role runs, in one small crate.
//!
//! Layout:
//! - [`shutdown`]: one shared type that tells tasks to stop and waits for them.
//! - [`telemetry`]: logging set-up and the Prometheus `/metrics` endpoint.
//! - [`config`]: load a TOML file into a role's config struct, with errors that name the field.
//! - [`secret`]: a wrapper that keeps credentials out of logs.
//! - [`tls`]: mutual TLS for every server and client, roles read from certificates.
//! - [`https`]: the HTTP listeners over [`tls`] (HTTPS beyond loopback), route guards by role, the plain health port.
//! - [`ticket`]: piece tickets, a scheduler's signed permission for one child to read one task.
//! - [`seal`]: origin headers sealed to a seed's key, so the scheduler relays them unread.
//! - [`certs`]: a CA and per-role certificates for a lab or cluster (`damselfly certs init`).
//! - [`health`]: `/healthz`, `/readyz` and the up/ready gauges; [`notify`]: systemd `READY=1`.
//! - [`tasks`]: server tasks supervised, so a role whose server dies exits non-zero.

pub mod certs;
pub mod config;
pub mod health;
pub mod https;
pub mod notify;
pub mod seal;
pub mod secret;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
pub mod ticket;
pub mod tls;
