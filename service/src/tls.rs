//! One transport for every role: mutual TLS on rustls (ring provider, no OpenSSL).
//!
//! `[tls]` in a role's config names a CA, a certificate and its key (PEM files). With
//! `mode = "on"` every server asks each client for a certificate signed by that CA and every
//! client checks the server's; with `mode = "off"` (the default) nothing changes and the
//! network must be trusted.
//!
//! **Roles in certificates.** A certificate says what its holder may do with DNS names in its
//! subject alternative names, one per role: `<role>.role.damselfly` (`peer`, `seed`,
//! `scheduler`, `manager`). No resolver serves these names; they exist so that
//! - a client checks a server's role with ordinary hostname verification (a child connecting
//!   to a parent expects `peer.role.damselfly`, a peer connecting to a scheduler expects
//!   `scheduler.role.damselfly`), so a peer certificate cannot pose as a scheduler;
//! - a server reads the client's roles from the verified certificate ([`roles_of`]) and
//!   refuses what the role does not allow (only `seed` registers as a seed).
//!
//! A seed certificate carries both `seed` and `peer` (a seed also serves pieces).
//! `damselfly certs init` ([`crate::certs`]) writes a CA and one certificate per role.

use crate::config::ConfigError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[tls]` of every role's config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `off` (default: plain TCP, trusted network only) or `on` (mutual TLS everywhere).
    #[serde(default)]
    pub mode: TlsMode,
    /// The cluster's CA certificate (PEM): peers are trusted only if it signed them.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), with its role names.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Off,
    On,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.mode == TlsMode::On
    }

    /// With `mode = "on"`, `ca`, `cert` and `key` are all required.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        for (field, value) in [
            ("tls.ca", &self.ca),
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
        ] {
            match value {
                None => return Err(ConfigError::invalid(field, "required when tls.mode = \"on\"")),
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(ConfigError::invalid(field, "must not be empty"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// What a certificate allows its holder to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Peer,
    Seed,
    Scheduler,
    Manager,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Peer, Role::Seed, Role::Scheduler, Role::Manager];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Peer => "peer",
            Role::Seed => "seed",
            Role::Scheduler => "scheduler",
            Role::Manager => "manager",
        }
    }

    /// The SAN DNS name that grants this role.
    pub fn dns_name(self) -> String {
        format!("{}.role.damselfly", self.as_str())
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The roles a (chain-verified) end-entity certificate grants.
pub fn roles_of(cert: &CertificateDer<'_>) -> Vec<Role> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    Role::ALL
        .into_iter()
        .filter(|r| {
            ServerName::try_from(r.dns_name())
                .map(|name| ee.verify_is_valid_for_subject_name(&name).is_ok())
                .unwrap_or(false)
        })
        .collect()
}

/// The [`crate::ticket::subject_id`] of a (chain-verified) end-entity certificate.
pub fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(crate::ticket::subject_id(ee.subject()))
}

/// What the TLS layer proved about the other end of a server connection; tonic puts it in
/// each request's extensions (`request.extensions().get::<PeerIdentity>()`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub remote: Option<SocketAddr>,
    /// Empty on a plain (TLS off) connection.
    pub roles: Vec<Role>,
    /// Whether the connection is TLS with a verified client certificate.
    pub verified: bool,
    /// Whether the connection is TLS at all (with or without a client certificate).
    pub tls: bool,
    /// The client certificate's [`crate::ticket::subject_id`] (what piece tickets bind); `None`
    /// on a plain connection.
    pub subject: Option<String>,
}

impl PeerIdentity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Server and client configs of one node, built once from its `[tls]` files.
pub struct Tls {
    current: std::sync::RwLock<Loaded>,
}

/// One generation of configs; replaced whole when the files change (see [`Tls::watch`]).
#[derive(Clone)]
struct Loaded {
    server: Arc<ServerConfig>,
    /// HTTP/1.1 servers that require a client certificate of this CA (`/metrics`, `/tasks`).
    http_required: Arc<ServerConfig>,
    /// HTTP/1.1 servers where a client certificate is optional (the manager's REST and
    /// console, which authenticate people by token or session); one of another CA is refused.
    http_optional: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    roles: Vec<Role>,
}

/// Whether an HTTPS listener asks for a client certificate (see [`crate::https`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a certificate of the cluster's CA.
    Required,
    /// A client may come without one (and is then told 401 where a route needs one).
    Optional,
}

/// How often [`Tls::watch`] looks at the files' modification times.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad(field: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(field, message.to_string())
}

impl Tls {
    /// Reads the files of `config` (off the runtime threads); `None` when TLS is off.
    pub async fn load(config: &TlsConfig) -> Result<Option<Arc<Tls>>, ConfigError> {
        config.validate()?;
        if !config.enabled() {
            tracing::warn!(
                "[tls] mode is off: any host that reaches this node's ports can join the mesh, claim to be a seed and read pieces; trusted networks only (see `damselfly certs init`)"
            );
            return Ok(None);
        }
        let c = config.clone();
        let read = |field: &'static str, p: &Option<PathBuf>| {
            let p = p.clone().unwrap_or_default();
            move || std::fs::read(&p).map_err(|e| bad(field, format!("cannot read {}: {e}", p.display())))
        };
        let (ca, cert, key) = tokio::task::spawn_blocking(move || {
            Ok::<_, ConfigError>((
                read("tls.ca", &c.ca)()?,
                read("tls.cert", &c.cert)()?,
                read("tls.key", &c.key)()?,
            ))
        })
        .await
        .map_err(|e| bad("tls", e))??;
        Ok(Some(Arc::new(Tls::from_pem(&ca, &cert, &key)?)))
    }

    /// [`Tls::load`], then [`Tls::watch`] until `shutdown`: what a role calls at start-up.
    pub async fn start(
        config: &TlsConfig,
        shutdown: &crate::shutdown::Shutdown,
    ) -> Result<Option<Arc<Tls>>, ConfigError> {
        let tls = Tls::load(config).await?;
        if let Some(t) = &tls {
            let stop = shutdown.clone();
            t.watch(config.clone(), async move { stop.wait().await });
        }
        Ok(tls)
    }

    /// Blocking variant of [`Tls::load`] for start-up code that runs before a runtime.
    pub fn load_blocking(config: &TlsConfig) -> Result<Option<Arc<Tls>>, ConfigError> {
        config.validate()?;
        if !config.enabled() {
            return Ok(None);
        }
        let read = |field: &str, p: &Option<PathBuf>| {
            let p: &Path = p.as_deref().unwrap_or(Path::new(""));
            std::fs::read(p).map_err(|e| bad(field, format!("cannot read {}: {e}", p.display())))
        };
        let (ca, cert, key) = (
            read("tls.ca", &config.ca)?,
            read("tls.cert", &config.cert)?,
            read("tls.key", &config.key)?,
        );
        Ok(Some(Arc::new(Tls::from_pem(&ca, &cert, &key)?)))
    }

    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Tls, ConfigError> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| bad("tls.ca", format!("not a PEM certificate: {e}")))?;
            roots.add(c).map_err(|e| bad("tls.ca", e))?;
        }
        if roots.is_empty() {
            return Err(bad("tls.ca", "holds no certificate"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("tls.cert", format!("not a PEM certificate: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(bad("tls.cert", "holds no certificate"));
        };
        let roles = roles_of(leaf);
        if roles.is_empty() {
            return Err(bad(
                "tls.cert",
                "grants no role (expected a SAN DNS name like peer.role.damselfly; see `damselfly certs init`)",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| bad("tls.key", format!("not a PEM private key: {e}")))?;
        let roots = Arc::new(roots);
        let server_with = |optional: bool, alpn: &[&[u8]]| {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            let verifier = builder.build().map_err(|e| bad("tls.ca", e))?;
            let mut server = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| bad("tls", e))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| bad("tls.key", format!("does not match tls.cert: {e}")))?;
            server.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            Ok::<_, ConfigError>(Arc::new(server))
        };
        let server = server_with(false, &[b"h2", b"damselfly-piece/1", b"http/1.1"])?;
        // The HTTP servers speak HTTP/1.1 only (axum without its http2 feature).
        let http_required = server_with(false, &[b"http/1.1"])?;
        let http_optional = server_with(true, &[b"http/1.1"])?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("tls.key", format!("does not match tls.cert: {e}")))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            current: std::sync::RwLock::new(Loaded {
                server,
                http_required,
                http_optional,
                client: Arc::new(client),
                roles,
            }),
        })
    }

    /// The roles this node's own certificate grants.
    pub fn roles(&self) -> Vec<Role> {
        self.loaded().roles
    }

    fn loaded(&self) -> Loaded {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.loaded().server
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.loaded().client
    }

    /// The server config of an HTTPS listener (HTTP/1.1), current generation.
    pub fn http_server_config(&self, auth: ClientAuth) -> Arc<ServerConfig> {
        match auth {
            ClientAuth::Required => self.loaded().http_required,
            ClientAuth::Optional => self.loaded().http_optional,
        }
    }

    /// Replaces the configs with those of `other` (new connections use them; open ones keep theirs).
    pub fn replace(&self, other: &Tls) {
        let next = other.loaded();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// Reloads the files of `config` whenever one of their modification times changes (certificates
    /// rotate by replacing the files), until `stop` resolves. A set of files that does not load is
    /// logged and the previous configs stay.
    pub fn watch(
        self: &Arc<Self>,
        config: TlsConfig,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let stamp = |c: TlsConfig| async move {
                tokio::task::spawn_blocking(move || {
                    [&c.ca, &c.cert, &c.key]
                        .iter()
                        .map(|p| {
                            p.as_ref()
                                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default()
            };
            let mut last = stamp(config.clone()).await;
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stop => return,
                }
                let now = stamp(config.clone()).await;
                if now == last {
                    continue;
                }
                match Tls::load(&config).await {
                    Ok(Some(fresh)) => {
                        this.replace(&fresh);
                        last = now;
                        tracing::info!("TLS certificates reloaded");
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        })
    }

    /// Server side of one connection: handshake (bounded in time), then the client's identity.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity)> {
        self.accept_with(tcp, self.server_config()).await
    }

    /// [`Tls::accept`] with a given server config (e.g. [`Tls::http_server_config`]).
    pub async fn accept_with(
        &self,
        tcp: TcpStream,
        config: Arc<ServerConfig>,
    ) -> io::Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity)> {
        let remote = tcp.peer_addr().ok();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let roles = leaf.map(roles_of).unwrap_or_default();
        let subject = leaf.and_then(subject_of);
        let verified = leaf.is_some();
        Ok((
            tls,
            PeerIdentity {
                remote,
                roles,
                // Always true with a server config that requires a certificate; false only
                // on an [`ClientAuth::Optional`] listener whose client sent none.
                verified,
                tls: true,
                subject,
            },
        ))
    }

    /// Client side: the server must hold a certificate of this CA granting `expect`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expect: Role,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connect_alpn(tcp, expect, self.client_config()).await
    }

    /// Like [`Tls::connect`] for the piece protocol (its own ALPN name).
    pub async fn connect_piece(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut config = (*self.client_config()).clone();
        config.alpn_protocols = vec![b"damselfly-piece/1".to_vec()];
        self.connect_alpn(tcp, Role::Peer, Arc::new(config)).await
    }

    async fn connect_alpn(
        &self,
        tcp: TcpStream,
        expect: Role,
        config: Arc<ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(expect.dns_name())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

static INSTALLED: std::sync::RwLock<Option<Arc<Tls>>> = std::sync::RwLock::new(None);

/// Sets this process's TLS (a role does it once at start-up, after loading `[tls]`), so that
/// deep call sites (piece connections, scheduler channels) need no extra parameter.
pub fn install(tls: Option<Arc<Tls>>) {
    *INSTALLED.write().unwrap_or_else(|e| e.into_inner()) = tls;
}

/// The TLS [`install`]ed for this process; `None` means plain TCP.
pub fn installed() -> Option<Arc<Tls>> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A server connection, plain or TLS, with what is known about its client.
pub struct ServerConn {
    inner: ServerIo,
    identity: PeerIdentity,
}

enum ServerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ServerConn {
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for ServerConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

/// Server side of one accepted TCP connection: TLS when `tls` is set, else as it is.
pub async fn accept(tls: Option<&Tls>, tcp: TcpStream) -> io::Result<ServerConn> {
    match tls {
        None => {
            let remote = tcp.peer_addr().ok();
            Ok(ServerConn {
                inner: ServerIo::Plain(tcp),
                identity: PeerIdentity {
                    remote,
                    ..Default::default()
                },
            })
        }
        Some(tls) => {
            let (s, identity) = tls.accept(tcp).await?;
            Ok(ServerConn {
                inner: ServerIo::Tls(Box::new(s)),
                identity,
            })
        }
    }
}

/// [`accept`] for an HTTPS listener: TLS (HTTP/1.1, client certificate as `auth` says) when
/// `tls` is set, else plain.
pub async fn accept_http(tls: Option<&Tls>, tcp: TcpStream, auth: ClientAuth) -> io::Result<ServerConn> {
    match tls {
        None => accept(None, tcp).await,
        Some(tls) => {
            let (s, identity) = tls.accept_with(tcp, tls.http_server_config(auth)).await?;
            Ok(ServerConn {
                inner: ServerIo::Tls(Box::new(s)),
                identity,
            })
        }
    }
}

/// Like [`accept`], and with TLS on the client's certificate must grant `role`.
pub async fn accept_role(tls: Option<&Tls>, tcp: TcpStream, role: Role) -> io::Result<ServerConn> {
    let conn = accept(tls, tcp).await?;
    if tls.is_some() && !conn.identity.has(role) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("client certificate does not grant role {}", role.as_str()),
        ));
    }
    Ok(conn)
}

/// The one call a server makes to wrap its listener: a stream of accepted connections,
/// handshakes run concurrently (a slow client delays only itself); failed ones are dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
) -> impl futures::Stream<Item = io::Result<ServerConn>> + Send + 'static {
    use futures::StreamExt as _;
    tokio_stream::wrappers::ReceiverStream::new(accepting(listener, tls, None)).map(Ok)
}

/// Like [`incoming`] for an HTTP listener ([`accept_http`]), as a channel of connections.
pub fn incoming_http(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    auth: ClientAuth,
) -> tokio::sync::mpsc::Receiver<ServerConn> {
    accepting(listener, tls, Some(auth))
}

/// Accepts until the receiver is dropped; `http` picks [`accept_http`] over [`accept`].
fn accepting(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    http: Option<ClientAuth>,
) -> tokio::sync::mpsc::Receiver<ServerConn> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ServerConn>(64);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => r,
                _ = tx.closed() => return,
            };
            match tcp {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let (tx, tls) = (tx.clone(), tls.clone());
                    tokio::spawn(async move {
                        let conn = match http {
                            None => accept(tls.as_deref(), tcp).await,
                            Some(auth) => accept_http(tls.as_deref(), tcp, auth).await,
                        };
                        match conn {
                            Ok(conn) => {
                                let _ = tx.send(conn).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    rx
}

/// The one call a gRPC client makes: a lazily connected channel to `addr`
/// (`http://` or `https://`; TLS follows `tls`, not the scheme) whose server must hold `expect`.
pub fn channel(
    endpoint: tonic::transport::Endpoint,
    tls: Option<Arc<Tls>>,
    expect: Role,
) -> tonic::transport::Channel {
    let Some(tls) = tls else {
        return endpoint.connect_lazy();
    };
    let connector = tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let s = tls.connect(tcp, expect).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}

/// An `Endpoint` for `addr` whose scheme tonic accepts: `https://` becomes `http://` because
/// the TLS of [`channel`] is ours, not tonic's.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let plain = match addr.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => addr.to_string(),
    };
    tonic::transport::Endpoint::from_shared(plain)
}

/// The URL a client dials for `addr` (`HOST:PORT` or an `http(s)://` URL) of one of our own
/// services: `HOST:PORT` gets `https://` with TLS on and `http://` with it off. A scheme that
/// contradicts `[tls]` is refused, naming `field`: `http://` with TLS on (it reads as plain
/// while the connection is TLS), `https://` with TLS off (it would go plain unnoticed).
pub fn service_url(field: &str, addr: &str, tls_on: bool) -> Result<String, ConfigError> {
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, rest)) => (s, rest),
        None => (if tls_on { "https" } else { "http" }, addr),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad(field, format!("{addr:?} has no host")));
    }
    match (scheme, tls_on) {
        ("https", true) | ("http", false) => Ok(format!("{scheme}://{rest}")),
        ("http", true) => Err(bad(
            field,
            format!("{addr:?} is plain http:// but tls.mode = \"on\": write https:// or HOST:PORT"),
        )),
        ("https", false) => Err(bad(
            field,
            format!("{addr:?} is https:// but tls.mode is off: write http:// or HOST:PORT, or turn [tls] on"),
        )),
        (other, _) => Err(bad(
            field,
            format!("{addr:?}: scheme {other:?} is not http or https"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{Authority, NodeCert};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn tls_for(ca: &Authority, cert: &NodeCert) -> Tls {
        Tls::from_pem(
            ca.cert_pem().as_bytes(),
            cert.cert_pem.as_bytes(),
            cert.key_pem.as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn config_errors_name_the_field() {
        let mut c = TlsConfig {
            mode: TlsMode::On,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("tls.ca"));
        c.ca = Some("ca.pem".into());
        assert!(c.validate().unwrap_err().to_string().contains("tls.cert"));
        c.cert = Some("c.pem".into());
        assert!(c.validate().unwrap_err().to_string().contains("tls.key"));
        c.key = Some("k.pem".into());
        c.validate().unwrap();
        assert!(TlsConfig::default().validate().is_ok());
        let e = Tls::from_pem(b"junk", b"", b"").err().unwrap().to_string();
        assert!(e.contains("tls.ca"), "{e}");
    }

    #[test]
    fn service_urls_follow_tls_and_refuse_a_contradicting_scheme() {
        assert_eq!(
            service_url("f", "10.0.0.1:8002", true).unwrap(),
            "https://10.0.0.1:8002"
        );
        assert_eq!(
            service_url("f", "10.0.0.1:8002", false).unwrap(),
            "http://10.0.0.1:8002"
        );
        assert_eq!(service_url("f", "https://h:1", true).unwrap(), "https://h:1");
        assert_eq!(service_url("f", "http://h:1", false).unwrap(), "http://h:1");
        let e = service_url("manager.addr", "http://h:1", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("manager.addr") && e.contains("https://"), "{e}");
        let e = service_url("schedulers[0]", "https://h:1", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("schedulers[0]"), "{e}");
        assert!(service_url("f", "ftp://h:1", true).is_err());
        assert!(service_url("f", "http://", false).is_err());
    }

    #[test]
    fn roles_come_from_the_certificate() {
        let ca = Authority::new("test").unwrap();
        let seed = ca.issue(Role::Seed, "s1").unwrap();
        let peer = ca.issue(Role::Peer, "p1").unwrap();
        let sched = ca.issue(Role::Scheduler, "sc").unwrap();
        assert_eq!(tls_for(&ca, &seed).roles(), vec![Role::Peer, Role::Seed]);
        assert_eq!(tls_for(&ca, &peer).roles(), vec![Role::Peer]);
        assert_eq!(tls_for(&ca, &sched).roles(), vec![Role::Scheduler]);
    }

    async fn pair() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    /// Mutual TLS: a client of the same CA gets through and its roles reach the server;
    /// a client without a certificate, one of another CA, and a server without the
    /// expected role are refused.
    #[tokio::test]
    async fn mutual_tls_admits_only_members_with_the_role() {
        let ca = Authority::new("a").unwrap();
        let other = Authority::new("b").unwrap();
        let server = Arc::new(tls_for(&ca, &ca.issue(Role::Scheduler, "sc").unwrap()));
        let member = tls_for(&ca, &ca.issue(Role::Seed, "s").unwrap());
        let stranger = tls_for(&other, &other.issue(Role::Peer, "x").unwrap());

        let (l, addr) = pair().await;
        let s = server.clone();
        let srv = tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..4 {
                let (tcp, _) = l.accept().await.unwrap();
                match s.accept(tcp).await {
                    Ok((mut conn, id)) => {
                        let mut b = [0u8; 5];
                        conn.read_exact(&mut b).await.unwrap();
                        conn.write_all(&b).await.unwrap();
                        conn.flush().await.unwrap();
                        ids.push(Some(id.roles));
                    }
                    Err(_) => ids.push(None),
                }
            }
            ids
        });
        // A member, expecting a scheduler: works, and the server sees seed + peer.
        let mut c = member
            .connect(TcpStream::connect(addr).await.unwrap(), Role::Scheduler)
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hello");
        // A member expecting the server to be a manager: refused by the client.
        assert!(
            member
                .connect(TcpStream::connect(addr).await.unwrap(), Role::Manager)
                .await
                .is_err()
        );
        // A certificate of another CA.
        let r = stranger
            .connect(TcpStream::connect(addr).await.unwrap(), Role::Scheduler)
            .await;
        if let Ok(mut s) = r {
            // TLS 1.3: the client may finish before the server refuses; the server's alert ends it.
            let _ = s.write_all(b"hello").await;
            assert!(s.read(&mut b).await.map(|n| n == 0).unwrap_or(true));
        }
        // No certificate at all.
        let mut bare = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates({
                let mut r = RootCertStore::empty();
                r.add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
                    .unwrap();
                r
            })
            .with_no_client_auth();
        bare.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(Role::Scheduler.dns_name()).unwrap();
        let r = tokio_rustls::TlsConnector::from(Arc::new(bare))
            .connect(name, TcpStream::connect(addr).await.unwrap())
            .await;
        if let Ok(mut s) = r {
            let _ = s.write_all(b"hello").await;
            assert!(s.read(&mut b).await.map(|n| n == 0).unwrap_or(true));
        }
        let ids = srv.await.unwrap();
        assert_eq!(ids[0], Some(vec![Role::Peer, Role::Seed]));
        assert_eq!(ids[2], None, "another CA's certificate was accepted");
        assert_eq!(ids[3], None, "a client without a certificate was accepted");
    }

    /// Certificates rotate: replacing the files (a new CA and certificate) makes new
    /// connections use them, without a restart.
    #[tokio::test]
    async fn replaced_files_are_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let write = |ca: &Authority, c: &NodeCert| {
            std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
            std::fs::write(dir.path().join("c.pem"), &c.cert_pem).unwrap();
            std::fs::write(dir.path().join("k.pem"), &c.key_pem).unwrap();
        };
        let (old, new) = (Authority::new("old").unwrap(), Authority::new("new").unwrap());
        write(&old, &old.issue(Role::Scheduler, "sc").unwrap());
        let config = TlsConfig {
            mode: TlsMode::On,
            ca: Some(dir.path().join("ca.pem")),
            cert: Some(dir.path().join("c.pem")),
            key: Some(dir.path().join("k.pem")),
        };
        let server = Tls::load(&config).await.unwrap().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        server.watch(config.clone(), async move {
            let _ = stop_rx.await;
        });
        let (l, addr) = pair().await;
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    if let Ok((mut c, _)) = s.accept(tcp).await {
                        let _ = c.write_all(b"x").await;
                        let _ = c.flush().await;
                    }
                });
            }
        });
        let client_new = tls_for(&new, &new.issue(Role::Peer, "p").unwrap());
        let works = |c: &Tls| {
            let c = c.client_config();
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from(Role::Scheduler.dns_name()).unwrap();
                match tokio_rustls::TlsConnector::from(c).connect(name, tcp).await {
                    Ok(mut s) => {
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.is_ok()
                    }
                    Err(_) => false,
                }
            }
        };
        assert!(
            !works(&client_new).await,
            "a client of the new CA got in before the rotation"
        );
        // Rotate: the files now hold the new CA and a certificate it signed (newer mtimes).
        tokio::time::sleep(Duration::from_millis(20)).await;
        write(&new, &new.issue(Role::Scheduler, "sc").unwrap());
        let mut ok = false;
        for _ in 0..(3 * RELOAD_EVERY.as_millis() / 100) {
            if works(&client_new).await {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "new connections did not use the rotated certificates");
        let _ = stop_tx.send(());
    }
}
