//! Damselfly's registry mirror proxy: containerd (`hosts.toml`), CRI and
//! Docker daemons (`registry-mirrors`) pull images through it.
//!
//! Manifests, tags, referrers and `/v2/` pass straight through to the
//! origin registry. Blobs are served from a [`BlobSource`] (the peer's mesh;
//! [`DirectSource`] fetches from the origin) after a HEAD at the origin with
//! the client's credentials has proven that the client may read them, so a
//! node that holds a private layer never hands it to a client the origin
//! would refuse.
//!
//! Layout:
//! - [`server`]: the router and the request flow ([`Proxy`], [`router`], [`serve`]).
//! - [`route`]: distribution API paths, names, tags and digests, validated.
//! - [`upstream`]: requests to origins: retries, redirects, Basic and Bearer auth.
//! - [`auth`]: challenges, Basic credentials and Bearer tokens, shared with the manager.
//! - [`reference`]: image references (`registry/repo:tag@digest`), shared with the manager
//!   and the snapshotter.
//! - [`source`]: the [`BlobSource`] trait and [`DirectSource`].
//! - [`authz`]: the short-lived cache of access proofs.
//! - [`range`]: `Range` headers.
//! - [`config`]: [`ProxyConfig`] and its validation.
//! - [`metrics`]: Prometheus counters ([`Proxy::metrics`]).
//! - [`setup`]: writes containerd `hosts.toml` and Docker `daemon.json`.
//! - [`error`]: [`ProxyError`]; the one place where errors become OCI error
//!   JSON. Each variant says which side caused it and whether a retry may
//!   help, which is what the peer needs to choose "try again elsewhere" or
//!   "tell the client".
//!
//! Serving it (what `damselfly peer` does, with its mesh as the source):
//!
//! ```no_run
//! # async fn demo(mesh: std::sync::Arc<dyn damselfly_registry_proxy::BlobSource>) -> anyhow::Result<()> {
//! use damselfly_registry_proxy::{Proxy, ProxyConfig, router, serve};
//! let config: ProxyConfig = damselfly_service::config::load(None)?;
//! let proxy = std::sync::Arc::new(Proxy::with_fallback(config, mesh)?);
//! // proxy.metrics().register(&mut registry);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:65001").await?;
//! let (shutdown, _drain) = damselfly_service::shutdown::Shutdown::new();
//! serve(listener, router(proxy), shutdown).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod authz;
pub mod config;
pub mod error;
pub mod metrics;
pub mod range;
pub mod reference;
pub mod route;
pub mod server;
pub mod setup;
pub mod source;
pub mod upstream;

pub use config::{ProxyConfig, RegistryConfig};
pub use error::{ProxyError, StartError};
pub use range::ByteRange;
pub use server::{Proxy, router, router_with_metrics, serve};
pub use source::{BlobBody, BlobRequest, BlobSource, DirectSource, FallbackSource};
pub use upstream::Upstream;
