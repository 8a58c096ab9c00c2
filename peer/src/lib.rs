//! The peer daemon: every node runs one.
//!
//! A peer downloads a task's pieces from several parents at once, checks each
//! one against the digest the scheduler relayed from the task's source,
//! stores it, and serves it to other peers from that moment on. When the
//! scheduler says so, cannot be reached, or no parent works, it fetches from
//! the origin itself: a download never fails only because the mesh is sick.
//!
//! Layout:
//! - [`config`]: the peer's config file.
//! - [`store`]: content files and the redb metadata store; [`gc`] evicts from it.
//! - [`task`]: one task's shared in-memory state (layout, bitmap, digests, progress); [`whole_digest`]: its content digest hashed as pieces land.
//! - [`wire`]: frames of the peer-to-peer piece protocol.
//! - [`piece_server`]: serves pieces to children (super-seeding when this peer is the source).
//! - [`parent`]: one connection to a parent, as a child.
//! - [`source`]: back-to-source over HTTP(S) with Range and retries.
//! - [`download`]: the engine that drives one task to completion; [`picker`]: its piece choice and timers (plain code); [`memory`]: the bytes of pieces held between socket and disk.
//! - [`origin_policy`]: which origins a seed task may name (no loopback, link-local, cluster services).
//! - [`download`]: the engine that drives one task to completion.
//! - [`sealing`]: origin headers sealed to the seeds' keys on their way through the scheduler.
//! - [`announcer`]: the host stream to the scheduler (keepalive, seed triggers).
//! - [`schedulers`]: one host stream per scheduler in the (fixed or managed) list.
//! - [`manager`]: the scheduler list (and cluster settings) from a manager, and the preheat session.
//! - [`limits`]: the cluster's peer settings in force (upload and download concurrency, piece length bounds).
//! - [`local_api`]: the unix-socket gRPC API used by `damselfly get`.
//! - [`objects`]: `damselfly store` (put, stat, delete on object storage; the task of an object version).
//! - [`cache`]: `damselfly cache` (origin-less tasks: import, export, holders' metadata).
//! - [`blob`]: the registry proxy's blob source (the mesh) and its server.
//! - [`daemon`]: starts all of the above.
//! - [`rate`], [`metrics`], [`fault`]: rate limits, Prometheus metrics, test-only fault switches.

pub mod announcer;
pub mod blob;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod download;
pub mod error;
pub mod fault;
pub mod gc;
pub mod limits;
pub mod local_api;
pub mod manager;
pub mod memory;
pub mod metrics;
pub mod objects;
pub mod origin;
pub mod origin_policy;
pub mod parent;
pub mod picker;
pub mod piece_server;
pub mod rate;
pub mod schedulers;
pub mod sealing;
pub mod source;
pub mod store;
pub mod task;
pub mod whole_digest;
pub mod wire;

pub use config::PeerConfig;
pub use error::Error;
