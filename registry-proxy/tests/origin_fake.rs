//! The proxy against small in-process origins: redirects to blob storage
//! without Authorization, retries and 502, digest checks, Basic auth with
//! configured credentials, and hostile requests. Needs no lab programs.

mod common;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use common::http::{client, oci_code, raw};
use common::{ProxyServer, config_for, sha256_hex};
use damselfly_registry_proxy::{ProxyConfig, RegistryConfig};
use damselfly_service::secret::Secret;
use http::{StatusCode, header};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const BLOB: &[u8] = b"hello from blob storage, the bytes of one layer";

#[derive(Default)]
struct Fake {
    /// Where blob GET/HEAD redirect to.
    storage: Mutex<Option<SocketAddr>>,
    /// Bytes storage serves (to test digest mismatches).
    storage_bytes: Mutex<Vec<u8>>,
    /// Authorization the origin demands (`None`: anyone).
    required_auth: Mutex<Option<String>>,
    /// Answer 503 to this many requests first.
    fail_first: AtomicUsize,
    hits: AtomicUsize,
    storage_saw_auth: AtomicUsize,
}

async fn origin(State(f): State<Arc<Fake>>, req: Request) -> Response {
    f.hits.fetch_add(1, Ordering::SeqCst);
    if f.fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Response::builder().status(503).body(Body::empty()).unwrap();
    }
    let required = f.required_auth.lock().unwrap().clone();
    if let Some(required) = required {
        let got = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string());
        if got.as_deref() != Some(required.as_str()) {
            return Response::builder()
                .status(401)
                .header(header::WWW_AUTHENTICATE, "Basic realm=\"fake\"")
                .body(Body::from(
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}"#,
                ))
                .unwrap();
        }
    }
    let path = req.uri().path().to_string();
    if path.contains("/blobs/") {
        let storage = f.storage.lock().unwrap().unwrap();
        return Response::builder()
            .status(307)
            .header(
                header::LOCATION,
                format!("http://{storage}/bucket/blob?X-Amz-Signature=abc"),
            )
            .body(Body::empty())
            .unwrap();
    }
    if path == "/v2/" {
        return Response::builder().status(200).body(Body::from("{}")).unwrap();
    }
    Response::builder().status(404).body(Body::empty()).unwrap()
}

async fn storage(State(f): State<Arc<Fake>>, req: Request) -> Response {
    if req.headers().contains_key(header::AUTHORIZATION) {
        f.storage_saw_auth.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(400)
            .body(Body::from("credentials sent to storage"))
            .unwrap();
    }
    let bytes = f.storage_bytes.lock().unwrap().clone();
    let total = bytes.len();
    if let Some(r) = req.headers().get(header::RANGE) {
        let r = r.to_str().unwrap().trim_start_matches("bytes=").to_string();
        let (a, b) = r.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let part = bytes[a..=b.min(total - 1)].to_vec();
        return Response::builder()
            .status(206)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {a}-{}/{total}", a + part.len() - 1),
            )
            .header(header::CONTENT_LENGTH, part.len())
            .body(Body::from(part))
            .unwrap();
    }
    Response::builder()
        .status(200)
        .header(header::CONTENT_LENGTH, total)
        .body(if req.method() == http::Method::HEAD {
            Body::empty()
        } else {
            Body::from(bytes)
        })
        .unwrap()
}

type Handler = fn(State<Arc<Fake>>, Request) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

async fn serve_fn(f: Arc<Fake>, h: Handler) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(h).with_state(f);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct World {
    fake: Arc<Fake>,
    origin: SocketAddr,
    digest: String,
}

async fn world() -> World {
    let fake = Arc::new(Fake::default());
    *fake.storage_bytes.lock().unwrap() = BLOB.to_vec();
    let origin_addr = serve_fn(fake.clone(), |s, r| Box::pin(origin(s, r))).await;
    let storage_addr = serve_fn(fake.clone(), |s, r| Box::pin(storage(s, r))).await;
    *fake.storage.lock().unwrap() = Some(storage_addr);
    World {
        fake,
        origin: origin_addr,
        digest: format!("sha256:{}", sha256_hex(BLOB)),
    }
}

fn blob_url(p: &ProxyServer, w: &World) -> String {
    p.url(&format!("/v2/team/app/blobs/{}?ns={}", w.digest, w.origin))
}

#[tokio::test]
async fn redirects_to_storage_drop_authorization() {
    let w = world().await;
    *w.fake.required_auth.lock().unwrap() = Some("Basic dTpw".into());
    let p = ProxyServer::start(config_for("docker.io")).await;
    let c = client();
    let r = c
        .get(blob_url(&p, &w))
        .header("authorization", "Basic dTpw")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], w.digest.as_str());
    assert_eq!(r.bytes().await.unwrap(), BLOB);
    let r = c
        .get(blob_url(&p, &w))
        .header("authorization", "Basic dTpw")
        .header("range", "bytes=6-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 6-9/{}", BLOB.len()).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), &BLOB[6..=9]);
    assert_eq!(w.fake.storage_saw_auth.load(Ordering::SeqCst), 0);
    // Without credentials: the origin's challenge comes back.
    let r = c.get(blob_url(&p, &w)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"fake\"");
}

#[tokio::test]
async fn configured_credentials_answer_basic_challenges() {
    let w = world().await;
    *w.fake.required_auth.lock().unwrap() = Some("Basic dTpw".into()); // u:p
    let mut config = config_for("docker.io");
    config.registries.insert(
        w.origin.to_string(),
        RegistryConfig {
            endpoint: None,
            username: Some("u".into()),
            password: Some(Secret::new("p")),
        },
    );
    let p = ProxyServer::start(config).await;
    let r = client().get(blob_url(&p, &w)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), BLOB);
    // A client with wrong credentials of its own is not helped.
    let r = client()
        .get(blob_url(&p, &w))
        .header("authorization", "Basic bad")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn corrupt_bytes_never_look_complete() {
    let w = world().await;
    let mut bad = BLOB.to_vec();
    bad[3] ^= 1;
    *w.fake.storage_bytes.lock().unwrap() = bad;
    let p = ProxyServer::start(config_for("docker.io")).await;
    // The error may come before or after the headers, never as a complete body.
    match client().get(blob_url(&p, &w)).send().await {
        Err(_) => {}
        Ok(r) => assert!(
            r.bytes().await.is_err(),
            "a mismatching blob must end in an error"
        ),
    }
}

#[tokio::test]
async fn retries_then_502() {
    let w = world().await;
    let p = ProxyServer::start(config_for("docker.io")).await; // 1 retry
    w.fake.fail_first.store(1, Ordering::SeqCst);
    let r = client()
        .get(p.url(&format!("/v2/?ns={}", w.origin)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "one 503 is retried");
    w.fake.fail_first.store(5, Ordering::SeqCst);
    let before = w.fake.hits.load(Ordering::SeqCst);
    let r = client()
        .get(p.url(&format!("/v2/?ns={}", w.origin)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(oci_code(&r.bytes().await.unwrap()), "UNAVAILABLE");
    assert_eq!(w.fake.hits.load(Ordering::SeqCst) - before, 2);
    // Nobody listening at all.
    let closed = common::free_port();
    let r = client()
        .get(p.url(&format!("/v2/a/manifests/latest?ns=127.0.0.1:{closed}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}

#[tokio::test]
async fn hostile_requests_get_errors_not_crashes() {
    let w = world().await;
    let p = ProxyServer::start(config_for(&w.origin.to_string())).await;
    let c = client();
    let get = |path: String| {
        let c = c.clone();
        async move {
            let r = c.get(path).send().await.unwrap();
            let s = r.status();
            (s, oci_code(&r.bytes().await.unwrap()))
        }
    };
    let bad = [
        ("/v2/team/app/blobs/sha256:totallywrong", 400, "DIGEST_INVALID"),
        ("/v2/team/app/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        ("/v2/Team/app/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/team/app/manifests/-bad", 404, "MANIFEST_UNKNOWN"),
        (
            "/v2/team/app/manifests/.INVALID_MANIFEST_NAME",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/team/app/blobs/uploads/", 404, "UNSUPPORTED"),
        ("/v1/_ping", 404, "UNSUPPORTED"),
        ("/v2/a/manifests/latest?ns=evil/path", 400, "UNSUPPORTED"),
        ("/v2/a/manifests/latest?ns=user@host", 400, "UNSUPPORTED"),
    ];
    for (path, status, code) in bad {
        assert_eq!(
            get(p.url(path)).await,
            (StatusCode::from_u16(status).unwrap(), code.to_string()),
            "{path}"
        );
    }
    let r = c
        .put(p.url("/v2/team/app/manifests/latest"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Bad ranges.
    for range in ["bytes=999-", "bytes=5-1", "bytes=x-y", "bytes=-0"] {
        let r = c
            .get(p.url(&format!("/v2/team/app/blobs/{}", w.digest)))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{}", BLOB.len()).as_str()
        );
    }
    let r = c
        .get(p.url("/v2/team/app/manifests/latest"))
        .header(
            "authorization",
            http::HeaderValue::from_bytes(b"Basic \xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Path tricks reqwest would normalise away, and huge headers.
    let addr = p.addr;
    let (code, _) = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"GET /v2/../../etc/passwd/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 400);
    let (code, _) = tokio::task::spawn_blocking(move || {
        raw(
            addr,
            b"GET /v2/a/%2e%2e/manifests/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 400);
    let huge = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(2 << 20)
    );
    let (code, _) = tokio::task::spawn_blocking(move || raw(addr, huge.as_bytes()))
        .await
        .unwrap();
    assert!(
        code == 431 || code == 0 || code == 400,
        "huge header answered {code}"
    );
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let (code, _) = tokio::task::spawn_blocking(move || raw(addr, req.as_bytes()))
        .await
        .unwrap();
    assert!(
        code == 431 || code == 0 || code == 400,
        "many headers answered {code}"
    );
    // Still serving.
    assert_eq!(c.get(p.url("/v2/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn secrets_stay_out_of_debug_output() {
    let mut config = ProxyConfig::default();
    config.registries.insert(
        "r.example".into(),
        RegistryConfig {
            endpoint: None,
            username: Some("u".into()),
            password: Some(Secret::new("hunter2")),
        },
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    let toml = toml::to_string(&config).unwrap();
    assert!(toml.contains("hunter2"), "serialising for a file keeps it");
}

#[tokio::test]
async fn only_listed_registries_are_served_when_asked() {
    let w = world().await;
    let mut config = config_for("docker.io");
    config.only_listed_registries = true;
    config
        .registries
        .insert(w.origin.to_string(), RegistryConfig::default());
    let p = ProxyServer::start(config).await;
    let r = client().get(blob_url(&p, &w)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(p.url(&format!("/v2/team/app/blobs/{}?ns=attacker.example", w.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(oci_code(&r.bytes().await.unwrap()), "DENIED");
}

/// A source that sends the first bytes, then waits to be released: the
/// mesh streaming pieces as they land.
struct Trickle {
    release: Arc<tokio::sync::Notify>,
}

impl damselfly_registry_proxy::BlobSource for Trickle {
    fn fetch(
        &self,
        req: damselfly_registry_proxy::BlobRequest,
    ) -> futures::future::BoxFuture<
        '_,
        Result<damselfly_registry_proxy::BlobBody, damselfly_registry_proxy::ProxyError>,
    > {
        let release = self.release.clone();
        Box::pin(async move {
            assert_eq!(req.content_length, Some(BLOB.len() as u64));
            let first = futures::stream::once(async { Ok(bytes::Bytes::from_static(&BLOB[..10])) });
            let rest = futures::stream::once(async move {
                release.notified().await;
                Ok(bytes::Bytes::from_static(&BLOB[10..]))
            });
            Ok(damselfly_registry_proxy::BlobBody {
                total_length: BLOB.len() as u64,
                stream: Box::pin(futures::StreamExt::chain(first, rest)),
            })
        })
    }
}

#[tokio::test]
async fn bytes_reach_the_client_as_the_source_yields_them() {
    let w = world().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let config = config_for("docker.io");
    let upstream = Arc::new(damselfly_registry_proxy::Upstream::new(Arc::new(config.clone())).unwrap());
    let proxy = damselfly_registry_proxy::Proxy::new(
        config,
        upstream,
        Arc::new(Trickle {
            release: release.clone(),
        }),
    )
    .unwrap();
    let p = ProxyServer::start_with(proxy).await;
    let mut r = client().get(blob_url(&p, &w)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), r.chunk())
        .await
        .expect("the first bytes arrive before the source has the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first, &BLOB[..10]);
    release.notify_one();
    let mut all = first.to_vec();
    while let Some(c) = r.chunk().await.unwrap() {
        all.extend_from_slice(&c);
    }
    assert_eq!(all, BLOB);
}
