//! The HTTP listeners of every role (`/metrics`, the scheduler's `/tasks/{id}`, the manager's
//! REST API and console), plain or HTTPS through [`crate::tls`].
//!
//! With `[tls]` on, a listener bound beyond loopback serves HTTPS (HTTP/1.1) with the node's
//! own certificate, the same files and the same reloads as its gRPC and piece ports; one bound
//! to a loopback address stays plain (only local processes reach it). Whether the handshake
//! needs a client certificate is the listener's [`ClientAuth`]; [`restrict`] then lets a route
//! through only for a client certificate (any role of the cluster's CA) or for some roles.
//! Kubelet probes cannot present a certificate, so a role with TLS on also serves `/healthz`
//! and `/readyz`, and nothing else, on a plain `health_addr` ([`serve_health`]).

use crate::shutdown::Shutdown;
use crate::tls::{ClientAuth, PeerIdentity, Role, ServerConn, Tls};
use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An axum listener over accepted (and, with TLS, handshaken) connections.
pub struct Listener {
    rx: tokio::sync::mpsc::Receiver<ServerConn>,
    local: SocketAddr,
}

impl axum::serve::Listener for Listener {
    type Io = ServerConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerConn, SocketAddr) {
        match self.rx.recv().await {
            Some(conn) => {
                let remote = conn.identity().remote.unwrap_or(self.local);
                (conn, remote)
            }
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for PeerIdentity {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.io().identity().clone()
    }
}

/// The TLS a listener on `addr` uses: none on a loopback address, else `tls`.
pub fn tls_for(addr: SocketAddr, tls: Option<Arc<Tls>>) -> Option<Arc<Tls>> {
    if addr.ip().is_loopback() { None } else { tls }
}

/// Serves `app` on `listener` until `shutdown` ([`tls_for`] decides plain or HTTPS); handlers
/// see the client as `ConnectInfo<PeerIdentity>`.
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<Tls>>,
    auth: ClientAuth,
    shutdown: Shutdown,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let local = listener.local_addr()?;
    let tls = tls_for(local, tls);
    let rx = crate::tls::incoming_http(listener, tls, auth);
    let handle = tokio::spawn(async move {
        let stop = shutdown.clone();
        let _ = axum::serve(
            Listener { rx, local },
            app.into_make_service_with_connect_info::<PeerIdentity>(),
        )
        .with_graceful_shutdown(async move { stop.wait().await })
        .await;
        drop(shutdown);
    });
    Ok((local, handle))
}

/// Binds `addr`, then [`serve`].
pub async fn bind_and_serve(
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<Arc<Tls>>,
    auth: ClientAuth,
    shutdown: Shutdown,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    serve(TcpListener::bind(addr).await?, app, tls, auth, shutdown)
}

/// With TLS on: `/healthz` and `/readyz` of `health`, plain, on `addr`. With TLS off the
/// role's own HTTP port answers them and nothing is bound (`Ok(None)`).
pub async fn serve_health(
    addr: SocketAddr,
    health: &crate::health::Health,
    tls_on: bool,
    shutdown: Shutdown,
) -> io::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    if !tls_on {
        return Ok(None);
    }
    crate::telemetry::serve_router(addr, health.router(), shutdown)
        .await
        .map(Some)
}

/// Who may use a [`restrict`]ed route over TLS.
#[derive(Clone, Copy, Debug)]
pub enum Allow {
    /// Any client certificate of the cluster's CA (Prometheus, operators' tools, members).
    Member,
    /// A certificate granting one of these roles.
    Roles(&'static [Role]),
}

impl Allow {
    /// `Ok` when `id` may pass; a plain connection (TLS off, a loopback listener, or an
    /// in-process test without connection info) always may.
    pub fn check(self, id: Option<&PeerIdentity>) -> Result<(), (StatusCode, String)> {
        let Some(id) = id.filter(|i| i.tls) else {
            return Ok(());
        };
        if !id.verified {
            return Err((
                StatusCode::UNAUTHORIZED,
                "a client certificate of this cluster is required\n".into(),
            ));
        }
        match self {
            Allow::Member => Ok(()),
            Allow::Roles(roles) if roles.iter().any(|r| id.has(*r)) => Ok(()),
            Allow::Roles(roles) => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the client certificate grants none of the roles {}\n",
                    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

/// `router`'s routes (those added so far) answer over TLS only to clients `allow` admits:
/// 401 without a client certificate, 403 without the role.
pub fn restrict<S: Clone + Send + Sync + 'static>(router: axum::Router<S>, allow: Allow) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn(
        move |req: Request, next: Next| async move {
            let id = req.extensions().get::<ConnectInfo<PeerIdentity>>().map(|c| &c.0);
            match allow.check(id) {
                Ok(()) => next.run(req).await,
                Err(refused) => refused.into_response(),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(tls: bool, verified: bool, roles: Vec<Role>) -> PeerIdentity {
        PeerIdentity {
            tls,
            verified,
            roles,
            ..Default::default()
        }
    }

    #[test]
    fn allow_needs_a_certificate_and_the_role_only_over_tls() {
        let ops = Allow::Roles(&[Role::Scheduler, Role::Manager]);
        assert!(ops.check(None).is_ok());
        assert!(ops.check(Some(&id(false, false, vec![]))).is_ok());
        let none = ops.check(Some(&id(true, false, vec![]))).unwrap_err();
        assert_eq!(none.0, StatusCode::UNAUTHORIZED);
        let peer = ops.check(Some(&id(true, true, vec![Role::Peer]))).unwrap_err();
        assert_eq!(peer.0, StatusCode::FORBIDDEN);
        assert!(peer.1.contains("scheduler, manager"), "{}", peer.1);
        assert!(ops.check(Some(&id(true, true, vec![Role::Manager]))).is_ok());
        assert!(
            Allow::Member
                .check(Some(&id(true, true, vec![Role::Peer])))
                .is_ok()
        );
        assert!(Allow::Member.check(Some(&id(true, false, vec![]))).is_err());
    }

    #[test]
    fn loopback_listeners_stay_plain() {
        let ca = crate::certs::Authority::new("t").unwrap();
        let c = ca.issue(Role::Scheduler, "s").unwrap();
        let tls = Arc::new(
            Tls::from_pem(
                ca.cert_pem().as_bytes(),
                c.cert_pem.as_bytes(),
                c.key_pem.as_bytes(),
            )
            .unwrap(),
        );
        assert!(tls_for("127.0.0.1:1".parse().unwrap(), Some(tls.clone())).is_none());
        assert!(tls_for("[::1]:1".parse().unwrap(), Some(tls.clone())).is_none());
        assert!(tls_for("10.0.0.1:1".parse().unwrap(), Some(tls.clone())).is_some());
        assert!(tls_for("0.0.0.0:1".parse().unwrap(), Some(tls)).is_some());
    }
}
