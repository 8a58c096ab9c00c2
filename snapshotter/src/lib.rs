//! Damselfly's containerd snapshotter: containerd's snapshots API on overlayfs, served on a unix
//! socket as a proxy plugin (`[proxy_plugins.damselfly] type = "snapshot"`).
//!
//! Layout:
//! - [`snapshotter`]: the domain trait, one method per RPC; [`grpc`] wraps it.
//! - [`overlay`]: the overlayfs implementation; [`meta`] its records in redb; [`filter`]
//!   containerd's list filters.
//! - [`remote`]: layers from the mesh, unpacked ([`unpack`]) inside Prepare; the parents a
//!   layer did not list take their attributes from the layers below ([`inherit`]).
//! - [`server`]: the unix socket and the role's config.

pub mod error;
pub mod filter;
pub mod grpc;
pub mod inherit;
pub mod meta;
pub mod model;
pub mod overlay;
pub mod remote;
pub mod server;
pub mod setup;
pub mod snapshotter;
pub mod unpack;

pub use error::{Error, Result};

/// containerd's snapshots API, generated from the vendored `proto/` (modules follow the proto
/// packages, which the generated code's relative paths need).
pub mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}
