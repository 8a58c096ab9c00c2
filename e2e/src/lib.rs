//! End-to-end tests and benchmarks for Damselfly, run on real processes in
//! network-namespace "hosts" on one machine.
//!
//! Layout:
//! - [`lab`]: builds a lab (bridge, one namespace per host, shaped links),
//!   starts processes in hosts, reads interface counters, cleans up on drop;
//! - [`process`]: handles for daemons ([`process::Proc`]) and background
//!   clients ([`process::Job`]) that are stopped by pid, never by name;
//! - [`wait`]: polling helpers (no fixed sleeps) and the Ctrl-C flag;
//! - [`mesh`]: a Damselfly scheduler, seed and peers started in lab hosts;
//! - [`tls`]: a CA and per-node certificates for mutual TLS, and each node's `[tls]` table;
//! - [`managed`]: a manager, and schedulers and peers that follow it (`--manager`);
//! - [`memscan`]: whether a live process's memory holds a secret;
//! - [`mirror`]: images pulled by containerds through each host's peer proxy;
//! - [`oci`]: a registry in a host, a test image, a containerd per host;
//! - [`cri`]: CRI nodes (containerd with CRI, `crictl`, optionally `damselfly snapshotter`);
//! - [`imagebench`]: the image-pull benchmark behind `damselfly-image-bench`;
//! - [`bench`]: the swarm benchmark behind `damselfly-bench`;
//! - [`schedload`]: a load generator for the scheduler alone (simulated peers);
//! - [`origin`]: the `damselfly-origin` test server and its request log;
//! - [`s3`]: a moto S3 server that logs the bytes it serves;
//! - [`bins`]: where the binaries under test are found;
//! - [`data`]: random test files and their SHA-256.
//!
//! Errors are `anyhow`: every failure here ends a test or the bench with a
//! message for a person, so context strings matter more than error types.

pub mod bench;
pub mod bins;
pub mod cri;
pub mod data;
pub mod http;
pub mod imagebench;
pub mod lab;
pub mod managed;
pub mod memscan;
pub mod mesh;
pub mod mirror;
pub mod oci;
pub mod origin;
pub mod process;
pub mod rootfs;
pub mod s3;
pub mod schedload;
pub mod tls;
pub mod wait;

pub use lab::Lab;
pub use process::{Job, JobResult, Proc, wait_all};
pub use wait::{free_port, wait_for, wait_for_tcp};
