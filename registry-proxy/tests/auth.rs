//! Private registries: htpasswd Basic auth and Bearer tokens issued by a
//! token server of the test's own (RS256 JWTs signed with a key made by the
//! openssl CLI). A client without credentials is refused a blob the proxy
//! has just served to a client with them; configured credentials let the
//! proxy answer challenges itself; ctr pulls with `--user` through it.

mod common;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use common::http::client;
use common::{Containerd, ImageLayout, ProxyServer, Registry, config_for, lab_ready, run, run_async};
use damselfly_registry_proxy::setup::{RegistryTarget, write_containerd_hosts};
use damselfly_registry_proxy::{ProxyConfig, RegistryConfig};
use damselfly_service::secret::Secret;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const ALICE: &str = "alice:secret";
const TOOLS: &[&str] = &[
    "docker-registry",
    "umoci",
    "skopeo",
    "busybox",
    "htpasswd",
    "openssl",
];

fn basic_header(creds: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

fn with_creds(registry: &str) -> ProxyConfig {
    let mut c = config_for("docker.io");
    c.registries.insert(
        registry.to_string(),
        RegistryConfig {
            endpoint: None,
            username: Some("alice".into()),
            password: Some(Secret::new("secret")),
        },
    );
    c
}

/// Checks every access rule on one private registry holding test/app.
async fn check_private(registry: &Registry, layout: &ImageLayout, client_auth: &str) {
    let (manifest, blobs) = layout.manifest("app");
    let layer = blobs.last().unwrap();
    let ns = format!("ns={}", registry.addr);
    let c = client();
    let proxy = ProxyServer::start(config_for("docker.io")).await;
    let blob = proxy.url(&format!("/v2/test/app/blobs/{layer}?{ns}"));

    let r = c.get(&blob).send().await.unwrap();
    assert_eq!(r.status(), 401, "anonymous client");
    assert!(r.headers().contains_key("www-authenticate"));
    let r = c
        .get(&blob)
        .header("authorization", client_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == layout.blob(layer));
    // The proxy just served it (and cached the proof for that credential):
    // a client without credentials, or with wrong ones, still gets nothing.
    for auth in [
        None,
        Some(basic_header("alice:wrong")),
        Some("Bearer forged".to_string()),
    ] {
        let mut req = c.get(&blob);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let body = r.bytes().await.unwrap();
        assert!(
            !body
                .windows(16)
                .any(|w| layout.blob(layer).windows(16).next() == Some(w))
        );
    }
    let r = c.head(&blob).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(proxy.url(&format!("/v2/test/app/manifests/{manifest}?{ns}")))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .header("authorization", client_auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // With credentials configured for the registry, the proxy answers the
    // challenge itself for clients that bring none.
    let trusted = ProxyServer::start(with_creds(&registry.addr)).await;
    let r = c
        .get(trusted.url(&format!("/v2/test/app/blobs/{layer}?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == layout.blob(layer));
    let r = c
        .get(trusted.url(&format!("/v2/test/app/manifests/latest?{ns}")))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `ctr image pull --user` through the proxy: ctr answers the challenges
/// the proxy passes on.
async fn ctr_pull_with_user(registry: &Registry) {
    if !lab_ready("auth ctr pull", &["containerd", "ctr"], true) {
        return;
    }
    let proxy = ProxyServer::start(config_for("docker.io")).await;
    let ctd = Containerd::start("");
    let target = RegistryTarget::parse(&format!("http://{}", registry.addr)).unwrap();
    write_containerd_hosts(&ctd.certs_d(), &[target], &format!("http://{}", proxy.addr)).unwrap();
    let image = format!("{}/test/app:latest", registry.addr);
    let mut c = ctd.ctr();
    c.args(["image", "pull", "--user", ALICE, "--hosts-dir"])
        .arg(ctd.certs_d())
        .arg(&image);
    run_async(&mut c)
        .await
        .expect("ctr pull --user through the proxy");
    assert!(
        proxy.seen("/blobs/sha256:") >= 2,
        "{:?}",
        proxy.requests.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry() {
    if !lab_ready("htpasswd", TOOLS, true) {
        return;
    }
    let secrets = tempfile::tempdir().unwrap();
    let htpasswd = secrets.path().join("htpasswd");
    let out = run(Command::new("htpasswd").args(["-Bbn", "alice", "secret"]));
    std::fs::write(&htpasswd, out).unwrap();
    let registry = Registry::start(&format!(
        "auth:\n  htpasswd:\n    realm: damselfly-test\n    path: {}\n",
        htpasswd.display()
    ));
    let layout = ImageLayout::new();
    layout.build("app", 1, 1 << 20, &["/bin/sh"]);
    layout.push("app", &format!("{}/test/app:latest", registry.addr), Some(ALICE));
    check_private(&registry, &layout, &basic_header(ALICE)).await;
    ctr_pull_with_user(&registry).await;
}

struct TokenServer {
    issued: std::sync::atomic::AtomicUsize,
    key: PathBuf,
    cert_b64: String,
    service: String,
    issuer: String,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Grants what alice asks for; nothing to anyone else.
async fn issue(
    State(t): State<Arc<TokenServer>>,
    headers: http::HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != basic_header(ALICE) {
        return (http::StatusCode::UNAUTHORIZED, "who are you").into_response();
    }
    let q: Vec<(String, String)> = q;
    let params: HashMap<&str, Vec<&str>> = q.iter().fold(HashMap::new(), |mut m, (k, v)| {
        m.entry(k.as_str()).or_default().push(v.as_str());
        m
    });
    let access: Vec<serde_json::Value> = params
        .get("scope")
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [t.cert_b64]});
    let claims = serde_json::json!({
        "iss": t.issuer, "sub": "alice", "aud": t.service, "exp": now + 300, "nbf": now - 10,
        "iat": now, "jti": format!("{now}-{}", rand_id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let input = t.key.with_file_name(format!("input-{}", rand_id()));
    std::fs::write(&input, &signing_input).unwrap();
    let out = tokio::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&t.key)
        .arg(&input)
        .output()
        .await;
    let sig = match out {
        Ok(o) if o.status.success() => o.stdout,
        other => return (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{other:?}")).into_response(),
    };
    let token = format!("{signing_input}.{}", b64url(&sig));
    t.issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    axum::Json(serde_json::json!({"token": token, "access_token": token, "expires_in": 300})).into_response()
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_registry() {
    if !lab_ready("bearer", TOOLS, true) {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (key, cert) = (keys.path().join("key.pem"), keys.path().join("cert.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=damselfly-test-token",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let tokens = Arc::new(TokenServer {
        issued: Default::default(),
        key,
        cert_b64: base64::engine::general_purpose::STANDARD.encode(der),
        service: "damselfly-test-registry".into(),
        issuer: "damselfly-test-issuer".into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/token", axum::routing::get(issue))
        .with_state(tokens.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let registry = Registry::start(&format!(
        "auth:\n  token:\n    realm: http://{token_addr}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
        tokens.service,
        tokens.issuer,
        cert.display()
    ));
    let layout = ImageLayout::new();
    layout.build("app", 1, 1 << 20, &["/bin/sh"]);
    layout.push("app", &format!("{}/test/app:latest", registry.addr), Some(ALICE));

    // The client's own token, from the realm the challenge names.
    let r = client()
        .get(format!(
            "http://{token_addr}/token?service={}&scope=repository:test/app:pull",
            tokens.service
        ))
        .header("authorization", basic_header(ALICE))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let bearer = format!("Bearer {}", v["token"].as_str().unwrap());
    let probe = ProxyServer::start(config_for("docker.io")).await;
    let r = client()
        .get(probe.url(&format!("/v2/test/app/manifests/latest?ns={}", registry.addr)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(&token_addr.to_string()),
        "{challenge}"
    );

    check_private(&registry, &layout, &bearer).await;

    // The proxy's own token for a repository is fetched once and reused.
    let trusted = ProxyServer::start(with_creds(&registry.addr)).await;
    let issued = || tokens.issued.load(std::sync::atomic::Ordering::SeqCst);
    let before = issued();
    let (_, blobs) = layout.manifest("app");
    for b in &blobs {
        let r = client()
            .get(trusted.url(&format!("/v2/test/app/blobs/{b}?ns={}", registry.addr)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(issued() - before, 1, "one token for test/app:pull");

    ctr_pull_with_user(&registry).await;
}
