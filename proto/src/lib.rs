//! Damselfly's wire contracts.
//!
//! Layout:
//! - [`scheduler`]: the gRPC service between peers and the scheduler (generated).
//! - [`daemon`]: the peer daemon's local API on a unix socket (generated).
//! - [`manager`]: the control plane for schedulers, seed peers and peers (generated).
//! - [`task_id`]: how a download is named, so every peer of one file meets in one swarm.
//! - [`piece`]: how a task is cut into pieces.
//! - [`layout`]: layouts, bitmaps and piece indexes from other hosts, checked once.
//! - [`ring`]: consistent hashing of tasks onto seeds and schedulers.
//!
//! Everything here is shared by more than one role; nothing here does I/O.

pub mod layout;
pub mod piece;
pub mod ring;
pub mod task_id;

// Generated: `TaskMessage`'s first message (`Register`, with its spec) is
// larger than the rest, and boxing it would only move one allocation.
#[allow(clippy::large_enum_variant)]
pub mod scheduler {
    tonic::include_proto!("damselfly.scheduler.v1");
}

pub mod daemon {
    tonic::include_proto!("damselfly.daemon.v1");
}

pub mod manager {
    tonic::include_proto!("damselfly.manager.v1");
}
