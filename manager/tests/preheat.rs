//! Preheat end to end: a real registry (Debian's `docker-registry`, with
//! htpasswd auth, on an ephemeral port), a multi-layer image built with
//! umoci and pushed with skopeo, a manager, and fake seed peers that really
//! download each blob with the headers the manager sent and check its digest.

mod common;

use common::registry::*;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

async fn wait_job(api: &Api, id: i64) -> Value {
    let mut last = Value::Null;
    for _ in 0..400 {
        let (_, j) = api.get(&format!("/api/v1/preheat-jobs/{id}")).await;
        if j["state"] == "succeeded" || j["state"] == "failed" {
            return j;
        }
        last = j;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_image_from_registry_with_auth() {
    if !tools() {
        return;
    }
    let reg = registry_with_image().await;
    let host = reg.host.clone();
    let m = TestManager::sqlite_with(|c| c.preheat.plain_http_registries = vec![host]).await;
    image_with_auth(&m, &reg).await;
}

/// The same on PostgreSQL (the credentials sealed with the shared key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preheat_image_from_registry_with_auth_postgres() {
    if !tools() {
        return;
    }
    let Some(pg) = PgCluster::start() else { return };
    let reg = registry_with_image().await;
    let mut config = test_config(&pg.create_db("image_auth"));
    config.preheat.plain_http_registries = vec![reg.host.clone()];
    let m = TestManager::start(config).await;
    image_with_auth(&m, &reg).await;
}

async fn image_with_auth(m: &TestManager, reg: &Registry) {
    let root = m.root().await;
    let seed_a = FakeSeed::connect(&m.grpc, "seed-a", SeedBehaviour::Download).await;
    let seed_b = FakeSeed::connect(&m.grpc, "seed-b", SeedBehaviour::Download).await;

    // Credentials from the job.
    let (s, job) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": [format!("{}/test/app:latest", reg.host)], "username": "alice", "password": "secret"}),
        )
        .await;
    assert_eq!(s, 201, "{job}");
    assert_eq!(job["spec"].get("password"), None, "the password is never shown");
    let job = wait_job(&root, job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3 * 2, "three layers on each of two seeds: {job}");
    assert!(
        tasks
            .iter()
            .all(|t| t["state"] == "succeeded" && t["bytes"].as_i64().unwrap() > 0 && t["attempts"] == 1)
    );
    let digests: std::collections::BTreeSet<&str> =
        tasks.iter().map(|t| t["digest"].as_str().unwrap()).collect();
    assert_eq!(digests.len(), 3);
    for seed in [&seed_a, &seed_b] {
        let got = seed.received.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "each seed gets each layer once");
        assert!(got.iter().all(|c| {
            c.headers
                .get("Authorization")
                .is_some_and(|a| a.starts_with("Basic "))
        }));
        assert!(got.iter().all(|c| c.url.contains("/v2/test/app/blobs/sha256:")));
    }

    // Wrong credentials: the job fails and says why.
    let (_, bad) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": [format!("{}/test/app:latest", reg.host)], "username": "alice", "password": "wrong"}),
        )
        .await;
    let bad = wait_job(&root, bad["id"].as_i64().unwrap()).await;
    assert_eq!(bad["state"], "failed");
    assert!(bad["error"].as_str().unwrap().contains("401"), "{bad}");

    // One seed per cluster: each layer goes to exactly one seed.
    let (_, one) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": [format!("http://{}/test/app:latest", reg.host)], "username": "alice", "password": "secret", "scope": "single_seed_peer"}),
        )
        .await;
    let one = wait_job(&root, one["id"].as_i64().unwrap()).await;
    assert_eq!(
        (one["state"].as_str(), one["tasks"].as_array().unwrap().len()),
        (Some("succeeded"), 3),
        "{one}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_layers_are_retried_and_config_credentials_work() {
    if !tools() {
        return;
    }
    let reg = registry_with_image().await;
    let host = reg.host.clone();
    let m = TestManager::sqlite_with(|c| {
        c.preheat.plain_http_registries = vec![host.clone()];
        c.preheat.registries = vec![damselfly_manager::config::RegistryCredential {
            host,
            username: "alice".into(),
            password: damselfly_service::secret::Secret::new("secret"),
        }];
    })
    .await;
    let root = m.root().await;
    let _seed = FakeSeed::connect(&m.grpc, "flaky-seed", SeedBehaviour::FailFirstThenDownload).await;
    let (_, job) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": [format!("{}/test/app:latest", reg.host)]}),
        )
        .await;
    let job = wait_job(&root, job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        job["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["attempts"] == 2),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_seed_peers_fails_clearly() {
    let m = TestManager::sqlite().await;
    let root = m.root().await;
    let (_, job) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"kind": "file", "urls": ["http://127.0.0.1:9/file.bin"]}),
        )
        .await;
    let job = wait_job(&root, job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"].as_str().unwrap().contains("no active seed peer"),
        "{job}"
    );
}

/// Two managers on one PostgreSQL, one seed peer on each: every task is sent
/// exactly once, and the job is resolved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_never_run_a_task_twice() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.create_db("shared");
    let a = TestManager::start(test_config(&url)).await;
    let b = TestManager::start(test_config(&url)).await;
    let seed_a = FakeSeed::connect(&a.grpc, "seed-on-a", SeedBehaviour::Succeed).await;
    let seed_b = FakeSeed::connect(&b.grpc, "seed-on-b", SeedBehaviour::Succeed).await;
    let root_a = a.root().await;
    let root_b = b.root().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let api = if i % 2 == 0 { &root_a } else { &root_b };
        let (s, j) = api
            .post(
                "/api/v1/preheat-jobs",
                json!({"kind": "file", "urls": [format!("http://origin.invalid/{i}/a"), format!("http://origin.invalid/{i}/b")]}),
            )
            .await;
        assert_eq!(s, 201, "{j}");
        ids.push(j["id"].as_i64().unwrap());
    }
    for id in ids {
        let j = wait_job(&root_a, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(
            j["tasks"].as_array().unwrap().len(),
            4,
            "2 URLs x 2 seeds, resolved once: {j}"
        );
        assert!(j["tasks"].as_array().unwrap().iter().all(|t| t["attempts"] == 1));
    }
    let mut all: Vec<u64> = Vec::new();
    for s in [&seed_a, &seed_b] {
        all.extend(s.received.lock().unwrap().iter().map(|c| c.task_id));
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((n, all.len()), (24, 24), "every task sent exactly once");
}

/// A registry that wants a Bearer token (obtained from its realm with Basic
/// credentials) and serves a multi-platform OCI index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_and_platform_index() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use sha2::Digest;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let d = |s: &str| format!("sha256:{:x}", sha2::Sha256::digest(s.as_bytes()));
    let (amd, arm) = (d("amd64"), d("arm64"));
    let layers = |p: &str| {
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(&format!("{p}-config")), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(&format!("{p}-l1")), "size": 10},
                   {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(&format!("{p}-l2")), "size": 20}]})
    };
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]});
    let (amd_m, arm_m) = (layers("amd64"), layers("arm64"));
    let (amd_c, arm_c) = (amd.clone(), arm.clone());
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::get(|h: HeaderMap, q: axum::extract::RawQuery| async move {
                let q = q.0.unwrap_or_default();
                let basic = h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Basic YWxpY2U6c2VjcmV0");
                if basic && q.contains("scope=repository%3Ateam%2Fapp%3Apull") && q.contains("service=fake") {
                    axum::Json(json!({"token": "tkn-123"})).into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        )
        .route(
            "/v2/team/app/manifests/{reference}",
            axum::routing::get(move |h: HeaderMap, axum::extract::Path(r): axum::extract::Path<String>| {
                let (index, amd_m, arm_m, amd, arm) = (index.clone(), amd_m.clone(), arm_m.clone(), amd_c.clone(), arm_c.clone());
                async move {
                    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer tkn-123") {
                        let challenge = format!(
                            "Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:team/app:pull\""
                        );
                        return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)]).into_response();
                    }
                    let accept = h.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
                    assert!(accept.contains("application/vnd.oci.image.index.v1+json") && accept.contains("manifest.v2+json"));
                    let body = if r == "v1" { index } else if r == amd { amd_m } else if r == arm { arm_m } else { return StatusCode::NOT_FOUND.into_response() };
                    axum::Json(body).into_response()
                }
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let host = addr.to_string();
    let m = TestManager::sqlite_with(|c| c.preheat.plain_http_registries = vec![host]).await;
    let root = m.root().await;
    let seed = FakeSeed::connect(&m.grpc, "seed", SeedBehaviour::Succeed).await;
    for (platform, arch) in [(None, "amd64"), (Some("linux/arm64/v8"), "arm64")] {
        let (s, job) = root
            .post(
                "/api/v1/preheat-jobs",
                json!({"urls": [format!("{addr}/team/app:v1")], "platform": platform, "username": "alice", "password": "secret"}),
            )
            .await;
        assert_eq!(s, 201, "{job}");
        let job = wait_job(&root, job["id"].as_i64().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let got: Vec<&str> = job["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["digest"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec![d(&format!("{arch}-l1")), d(&format!("{arch}-l2"))]);
    }
    let cmds = seed.received.lock().unwrap().clone();
    assert!(
        cmds.iter()
            .all(|c| c.headers.get("Authorization").map(String::as_str) == Some("Bearer tkn-123"))
    );
    server.abort();
}

/// Scope "every peer": one seed fetches each layer (with the credentials),
/// and only then every peer of the cluster gets a command for it, without
/// them; a layer no seed could fetch fails on every peer too, and the job
/// names it and where it failed. On SQLite and PostgreSQL.
async fn every_peer(m: TestManager) {
    let root = m.root().await;
    let slow = SeedBehaviour::SlowSucceedUnlessBroken(Duration::from_millis(300));
    let seed = FakeSeed::connect(&m.grpc, "seed", slow).await;
    let p1 = FakeSeed::connect_peer(&m.grpc, "peer-1", SeedBehaviour::Succeed).await;
    let p2 = FakeSeed::connect_peer(&m.grpc, "peer-2", SeedBehaviour::Succeed).await;
    let (_, peers) = root.get("/api/v1/instances?kind=peer&state=active").await;
    assert_eq!(peers.as_array().unwrap().len(), 2, "{peers}");

    let urls = ["http://origin.invalid/a", "http://origin.invalid/b"];
    let (s, job) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"kind": "file", "urls": urls, "scope": "all_peers",
                   "headers": {"Authorization": "Bearer for-the-origin", "X-Trace": "t1"}}),
        )
        .await;
    assert_eq!(s, 201, "{job}");
    let job = wait_job(&root, job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(
        tasks.len(),
        2 * 3,
        "each URL on the seed and on both peers: {job}"
    );
    for host in ["seed", "peer-1", "peer-2"] {
        let mine: Vec<&Value> = tasks.iter().filter(|t| t["seed_hostname"] == host).collect();
        assert_eq!(mine.len(), 2, "{host}: {job}");
        let role = if host == "seed" { "seed" } else { "peer" };
        assert!(
            mine.iter()
                .all(|t| t["role"] == role && t["state"] == "succeeded"),
            "{job}"
        );
    }
    let seed_cmds = seed.received.lock().unwrap().clone();
    assert_eq!(seed_cmds.len(), 2);
    assert!(
        seed_cmds
            .iter()
            .all(|c| c.headers.get("Authorization").map(String::as_str) == Some("Bearer for-the-origin"))
    );
    let done_on_seed = |url: &str| {
        seed.events
            .lock()
            .unwrap()
            .iter()
            .find(|(_, u, what)| u == url && *what == "done")
            .map(|(at, _, _)| *at)
            .unwrap()
    };
    for p in [&p1, &p2] {
        let cmds = p.received.lock().unwrap().clone();
        assert_eq!(cmds.len(), 2, "each peer gets each URL once");
        for c in &cmds {
            assert_eq!(c.headers.get("Authorization"), None, "no credentials for a peer");
            assert_eq!(c.headers.get("X-Trace").map(String::as_str), Some("t1"));
        }
        for (at, url, what) in p.events.lock().unwrap().iter() {
            if *what == "got" {
                assert!(
                    *at >= done_on_seed(url),
                    "{url} reached a peer before the seed had it"
                );
            }
        }
    }

    // A URL the seed cannot fetch: retried on the seed, never sent to a
    // peer, and the job says which one failed and where.
    let (_, bad) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"kind": "file", "urls": ["http://origin.invalid/fine", "http://origin.invalid/broken"],
                   "scope": "all_peers"}),
        )
        .await;
    let bad = wait_job(&root, bad["id"].as_i64().unwrap()).await;
    assert_eq!(bad["state"], "failed", "{bad}");
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.starts_with("1 layer(s) failed: http://origin.invalid/broken (on peer-1, peer-2, seed)"),
        "{error}"
    );
    let broken: Vec<&Value> = bad["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["url"] == "http://origin.invalid/broken")
        .collect();
    assert_eq!(broken.len(), 3, "{bad}");
    for t in &broken {
        assert_eq!(t["state"], "failed", "{bad}");
        if t["role"] == "seed" {
            assert_eq!(t["attempts"], 3, "retried up to max_attempts: {bad}");
        } else {
            assert_eq!(t["attempts"], 0, "never sent to a peer: {bad}");
            assert!(t["error"].as_str().unwrap().contains("no seed peer"), "{bad}");
        }
    }
    for p in [&p1, &p2] {
        assert!(
            p.received
                .lock()
                .unwrap()
                .iter()
                .all(|c| !c.url.contains("broken"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_peer_gets_each_layer_from_the_mesh_after_the_seed_sqlite() {
    every_peer(TestManager::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_peer_gets_each_layer_from_the_mesh_after_the_seed_postgres() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.create_db("every_peer");
    every_peer(TestManager::start(test_config(&url)).await).await;
}

/// Registry passwords and credential headers are sealed in the database
/// while a job runs (the seed still gets them in clear), never shown by the
/// API, and erased when the job ends, succeeded or failed.
async fn secrets_at_rest(m: &TestManager) {
    let root = m.root().await;
    let seed = FakeSeed::connect(
        &m.grpc,
        "seed",
        SeedBehaviour::SlowSucceedUnlessBroken(Duration::from_millis(1500)),
    )
    .await;
    let (pw, token) = ("pw-at-rest-123", "tok-at-rest-456");
    let (s, job) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"kind": "file", "urls": ["http://origin.invalid/s1"], "username": "robot", "password": pw,
                   "headers": {"Authorization": format!("Bearer {token}"), "X-Trace": "t"}}),
        )
        .await;
    assert_eq!(s, 201, "{job}");
    let id = job["id"].as_i64().unwrap();
    eventually(10, "the seed to get the task", || async {
        !seed.received.lock().unwrap().is_empty()
    })
    .await;
    let cmd = seed.received.lock().unwrap()[0].clone();
    assert_eq!(
        cmd.headers["Authorization"],
        format!("Bearer {token}"),
        "the seed gets it in clear"
    );
    let (spec, headers) = raw_rows(m, id).await;
    for stored in [&spec, &headers] {
        assert!(
            !stored.contains(pw) && !stored.contains(token),
            "stored in clear: {stored}"
        );
        assert!(stored.contains("sealed:v1:"), "{stored}");
    }
    assert!(
        headers.contains("\"X-Trace\":\"t\""),
        "other headers stay readable: {headers}"
    );
    let (_, shown) = root.get(&format!("/api/v1/preheat-jobs/{id}")).await;
    let shown = shown.to_string();
    assert!(
        !shown.contains(pw) && !shown.contains(token) && !shown.contains("sealed:"),
        "{shown}"
    );

    let done = wait_job(&root, id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (spec, headers) = raw_rows(m, id).await;
    assert!(
        !spec.contains("sealed:") && !spec.contains("Authorization"),
        "{spec}"
    );
    assert!(spec.contains("\"password\":null"), "{spec}");
    assert_eq!(headers, "{}");

    // A job that fails (its registry cannot be reached) is erased too.
    let (_, bad) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": ["127.0.0.1:9/team/app:1"], "username": "robot", "password": pw}),
        )
        .await;
    let bad_id = bad["id"].as_i64().unwrap();
    let bad = wait_job(&root, bad_id).await;
    assert_eq!(bad["state"], "failed", "{bad}");
    let (spec, _) = raw_rows(m, bad_id).await;
    assert!(
        !spec.contains("sealed:") && spec.contains("\"password\":null"),
        "{spec}"
    );
}

/// The job's stored spec and its tasks' stored headers, as in the database.
async fn raw_rows(m: &TestManager, job: i64) -> (String, String) {
    let spec: String = sqlx::query_scalar("SELECT spec FROM preheat_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&m.ctx.db.pool)
        .await
        .unwrap();
    let headers: Vec<String> = sqlx::query_scalar("SELECT headers FROM preheat_tasks WHERE job_id = $1")
        .bind(job)
        .fetch_all(&m.ctx.db.pool)
        .await
        .unwrap();
    (spec, headers.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_erased_sqlite() {
    let m = TestManager::sqlite().await;
    // No key configured: one was created beside the database, for root only.
    let db_file = m
        .ctx
        .config
        .database
        .trim_start_matches("sqlite://")
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let key = std::path::PathBuf::from(format!("{db_file}.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    secrets_at_rest(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_and_erased_postgres() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.create_db("sealed");
    // PostgreSQL without a shared key: the manager refuses to start.
    let mut keyless = test_config(&url);
    keyless.secret_key = None;
    let (stop, _drain) = damselfly_service::shutdown::Shutdown::new();
    let err = damselfly_manager::start_with(keyless, None, stop)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("secret_key"), "{err}");
    secrets_at_rest(&TestManager::start(test_config(&url)).await).await;
}
