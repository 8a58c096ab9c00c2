//! REST and gRPC behaviour, run against SQLite (one test per scenario) and
//! against PostgreSQL (every scenario on its own database of one throwaway cluster).

mod common;

use common::*;
use damselfly_proto::manager as pb;
use serde_json::{Value, json};
use std::time::Duration;

async fn scenario_auth_and_scopes(m: TestManager) {
    let anon = m.anon();
    // Everything but sign-in needs credentials.
    for path in [
        "/api/v1/clusters",
        "/api/v1/instances",
        "/api/v1/preheat-jobs",
        "/api/v1/users",
        "/api/v1/me",
    ] {
        let (s, body) = anon.get(path).await;
        assert_eq!(s, 401, "{path}: {body}");
        assert_eq!(body["error"], "unauthenticated");
    }
    let (s, _) = anon.post("/api/v1/clusters", json!({"name": "x"})).await;
    assert_eq!(s, 401);
    let (s, _) = anon
        .post(
            "/api/v1/sessions",
            json!({"username": "root", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = anon
        .post(
            "/api/v1/sessions",
            json!({"username": "nobody", "password": "whatever1"}),
        )
        .await;
    assert_eq!(s, 401);
    assert_eq!(m.token("dfly_1_deadbeef").get("/api/v1/clusters").await.0, 401);
    assert_eq!(m.token("garbage").get("/api/v1/clusters").await.0, 401);

    let root = m.root().await;
    let (s, me) = root.get("/api/v1/me").await;
    assert_eq!(
        (s, me["user"]["username"].as_str(), me["scope"].as_str()),
        (200, Some("root"), Some("admin"))
    );

    // Users of each role, and tokens of each scope.
    for (name, role) in [("viewer", "read-only"), ("deployer", "preheat")] {
        let (s, u) = root
            .post(
                "/api/v1/users",
                json!({"username": name, "password": "password-1", "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{u}");
        assert!(u.get("password").is_none() && u.get("password_hash").is_none());
    }
    let viewer = m.session("viewer", "password-1").await;
    let deployer = m.session("deployer", "password-1").await;
    let (s, t) = viewer
        .post("/api/v1/tokens", json!({"name": "ci", "scope": "admin"}))
        .await;
    assert_eq!((s, t["field"].as_str()), (400, Some("scope")), "{t}");
    let (s, t) = viewer
        .post("/api/v1/tokens", json!({"name": "ro", "scope": "read-only"}))
        .await;
    assert_eq!(s, 201, "{t}");
    let ro = m.token(t["token_value"].as_str().unwrap());
    let (_, t) = deployer
        .post("/api/v1/tokens", json!({"name": "deploys", "scope": "preheat"}))
        .await;
    let pre = m.token(t["token_value"].as_str().unwrap());
    let (_, t) = root
        .post("/api/v1/tokens", json!({"name": "automation", "scope": "admin"}))
        .await;
    let admin_token_id = t["id"].as_i64().unwrap();
    let admin = m.token(t["token_value"].as_str().unwrap());
    // The secret is shown once only.
    let (_, list) = root.get("/api/v1/tokens").await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("token_value").is_none())
    );

    // read-only: reads yes, writes 403.
    assert_eq!(ro.get("/api/v1/clusters").await.0, 200);
    assert_eq!(ro.get("/api/v1/instances").await.0, 200);
    let (s, e) = ro.post("/api/v1/clusters", json!({"name": "ro-cluster"})).await;
    assert_eq!((s, e["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        ro.post("/api/v1/preheat-jobs", json!({"urls": ["reg.local/a:1"]}))
            .await
            .0,
        403
    );
    assert_eq!(ro.get("/api/v1/audit-logs").await.0, 403);
    assert_eq!(ro.get("/api/v1/users").await.0, 403);
    // preheat: may start jobs, not change clusters.
    let (s, j) = pre
        .post("/api/v1/preheat-jobs", json!({"urls": ["reg.local/a:1"]}))
        .await;
    assert_eq!(s, 201, "{j}");
    assert_eq!(
        pre.patch("/api/v1/clusters/1", json!({"description": "x"}))
            .await
            .0,
        403
    );
    // A token cannot mint tokens unless it is an admin token.
    assert_eq!(
        pre.post("/api/v1/tokens", json!({"name": "more", "scope": "read-only"}))
            .await
            .0,
        403
    );
    // admin token: everything.
    let (s, c) = admin.post("/api/v1/clusters", json!({"name": "by-token"})).await;
    assert_eq!(s, 201, "{c}");
    // A token's scope never exceeds its user's role: demote deployer, its token follows.
    let deployer_id = deployer.get("/api/v1/me").await.1["user"]["id"].as_i64().unwrap();
    assert_eq!(
        root.patch(
            &format!("/api/v1/users/{deployer_id}"),
            json!({"role": "read-only"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        pre.post("/api/v1/preheat-jobs", json!({"urls": ["reg.local/a:1"]}))
            .await
            .0,
        403
    );
    // Revoked tokens stop working at once.
    assert_eq!(
        root.delete(&format!("/api/v1/tokens/{admin_token_id}")).await.0,
        204
    );
    assert_eq!(admin.get("/api/v1/clusters").await.0, 401);
    // Expired tokens stop working, even when recently verified (and cached).
    let (_, t) = root
        .post(
            "/api/v1/tokens",
            json!({"name": "short", "scope": "read-only", "expires_in_secs": 1}),
        )
        .await;
    let short = m.token(t["token_value"].as_str().unwrap());
    assert_eq!(short.get("/api/v1/clusters").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(short.get("/api/v1/clusters").await.0, 401);
    // Signing out ends the session.
    assert_eq!(viewer.delete("/api/v1/sessions").await.0, 204);
    assert_eq!(viewer.get("/api/v1/clusters").await.0, 401);
    // A user may change their own password; then sessions end.
    let (s, _) = deployer
        .patch(
            &format!("/api/v1/users/{deployer_id}"),
            json!({"password": "new-password-2"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(deployer.get("/api/v1/me").await.0, 401);
    m.session("deployer", "new-password-2").await;
    // root stays.
    let (s, _) = root.delete("/api/v1/users/1").await;
    assert_eq!(s, 409);
}

async fn scenario_validation_and_injection(m: TestManager) {
    let root = m.root().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 7}), "name"),
        (json!({"name": "a", "color": "red"}), "color"),
        (
            json!({"name": "a", "settings": {"candidate_parent_limit": 0}}),
            "settings.candidate_parent_limit",
        ),
        (
            json!({"name": "a", "settings": {"candidate_parent_limit": "many"}}),
            "settings.candidate_parent_limit",
        ),
        (
            json!({"name": "a", "settings": {"candidate_parent_limit": 8, "filter_parent_limit": 4}}),
            "settings.filter_parent_limit",
        ),
        (
            json!({"name": "a", "settings": {"min_piece_length": 1000}}),
            "settings.min_piece_length",
        ),
        (
            json!({"name": "a", "scopes": {"cidrs": ["10.0.0.0/8", "300.1.1.1/8"]}}),
            "scopes.cidrs[1]",
        ),
        (
            json!({"name": "a", "scopes": {"hostnames": ["has space"]}}),
            "scopes.hostnames[0]",
        ),
    ];
    for (body, field) in cases {
        let (s, e) = root.post("/api/v1/clusters", body.clone()).await;
        assert_eq!((s, e["field"].as_str()), (400, Some(field)), "{body} -> {e}");
        assert_eq!(e["error"], "invalid");
    }
    let (s, e) = root.call("POST", "/api/v1/clusters", None).await;
    assert_eq!(s, 400, "{e}");
    // Unknown ids 404, malformed ids 400.
    assert_eq!(root.get("/api/v1/clusters/99999").await.0, 404);
    assert_eq!(
        root.patch("/api/v1/clusters/99999", json!({"description": "x"}))
            .await
            .0,
        404
    );
    assert_eq!(root.get("/api/v1/preheat-jobs/99999").await.0, 404);
    assert_eq!(root.get("/api/v1/instances/99999").await.0, 404);
    assert_eq!(root.delete("/api/v1/users/99999").await.0, 404);
    let (s, e) = root.get("/api/v1/clusters/1%20OR%201=1").await;
    assert_eq!((s, e["field"].as_str()), (400, Some("id")));
    assert_eq!(root.get("/api/v1/no-such-thing").await.0, 404);
    let (s, e) = root.get("/api/v1/instances?kind=router").await;
    assert_eq!((s, e["field"].as_str()), (400, Some("kind")));
    let (s, e) = root.get("/api/v1/audit-logs?limit=abc").await;
    assert_eq!((s, e["field"].as_str()), (400, Some("query")));
    // Preheat input.
    let (s, e) = root.post("/api/v1/preheat-jobs", json!({"urls": []})).await;
    assert_eq!((s, e["field"].as_str()), (400, Some("urls")));
    let (s, e) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": ["reg.local/ok:1", "reg.local/Bad Name"]}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("urls[1]")));
    let (s, e) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"kind": "file", "urls": ["ftp://x/y"]}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("urls[0]")));
    let (s, e) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": ["reg.local/a:1"], "scheduler_cluster_ids": [424242]}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("scheduler_cluster_ids[0]")));
    let (s, e) = root
        .post(
            "/api/v1/preheat-jobs",
            json!({"urls": ["reg.local/a:1"], "username": "u"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("password")));
    let (s, e) = root
        .post(
            "/api/v1/users",
            json!({"username": "x", "password": "short", "role": "admin"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("password")));
    let (s, e) = root
        .post(
            "/api/v1/users",
            json!({"username": "x", "password": "long-enough", "role": "god"}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("role")), "{e}");

    // Injection attempts are stored and returned as plain text.
    let nasty = [
        "'; DROP TABLE users; --",
        "<script>alert('xss')</script>",
        "\" OR \"1\"=\"1",
        "Robert'); DELETE FROM scheduler_clusters;--",
    ];
    for n in nasty {
        let (s, c) = root
            .post("/api/v1/clusters", json!({"name": n, "description": n}))
            .await;
        assert_eq!(s, 201, "{c}");
        let (_, back) = root.get(&format!("/api/v1/clusters/{}", c["id"])).await;
        assert_eq!(back["name"], n);
        assert_eq!(back["description"], n);
    }
    let (s, _) = root
        .post(
            "/api/v1/sessions",
            json!({"username": "root' OR '1'='1", "password": "' OR '1'='1"}),
        )
        .await;
    assert_eq!(s, 401);
    let (_, all) = root.get("/api/v1/clusters").await;
    assert_eq!(all.as_array().unwrap().len(), 1 + nasty.len());
    assert_eq!(root.get("/api/v1/users").await.0, 200);
    // Names are unique; the default cluster stays.
    let (s, _) = root.post("/api/v1/clusters", json!({"name": nasty[0]})).await;
    assert_eq!(s, 409);
    let (s, _) = root.delete("/api/v1/clusters/1").await;
    assert_eq!(s, 409);
    // Seed peer clusters must point at a scheduler cluster.
    let (s, e) = root
        .post(
            "/api/v1/seed-peer-clusters",
            json!({"name": "s", "scheduler_cluster_id": 999}),
        )
        .await;
    assert_eq!((s, e["field"].as_str()), (400, Some("scheduler_cluster_id")));
}

async fn scenario_audit(m: TestManager) {
    let root = m.root().await;
    let _ = m
        .anon()
        .post(
            "/api/v1/sessions",
            json!({"username": "root", "password": "bad-password"}),
        )
        .await;
    let (_, c) = root.post("/api/v1/clusters", json!({"name": "audited"})).await;
    let id = c["id"].as_i64().unwrap();
    root.patch(
        &format!("/api/v1/clusters/{id}"),
        json!({"settings": {"candidate_parent_limit": 7, "filter_parent_limit": 70}}),
    )
    .await;
    root.post(
        "/api/v1/users",
        json!({"username": "ro", "password": "password-1", "role": "read-only"}),
    )
    .await;
    let ro = m.session("ro", "password-1").await;
    assert_eq!(ro.delete(&format!("/api/v1/clusters/{id}")).await.0, 403);
    root.delete(&format!("/api/v1/clusters/{id}")).await;
    let (s, log) = root.get("/api/v1/audit-logs?limit=50").await;
    assert_eq!(s, 200);
    let entries = log.as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action}/{outcome} in {log}"))
            .clone()
    };
    assert_eq!(find("session.create", "denied")["actor"], "root");
    assert_eq!(find("cluster.create", "ok")["target_id"], id.to_string());
    let upd = find("cluster.update", "ok");
    assert!(
        upd["detail"]
            .as_str()
            .unwrap()
            .contains("\"candidate_parent_limit\":7"),
        "{upd}"
    );
    assert_eq!(find("cluster.delete", "denied")["actor"], "ro");
    assert_eq!(find("cluster.delete", "ok")["actor"], "root");
    find("user.create", "ok");
    // Newest first, pageable, filterable.
    assert!(entries[0]["id"].as_i64() > entries[entries.len() - 1]["id"].as_i64());
    let (_, page) = root
        .get(&format!("/api/v1/audit-logs?before={}&limit=2", entries[0]["id"]))
        .await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    let (_, only) = root.get("/api/v1/audit-logs?action=cluster.delete").await;
    assert!(
        only.as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] == "cluster.delete")
    );
    // No secret ever reaches the log.
    let text = log.to_string();
    assert!(
        !text.contains("password-1") && !text.contains("bad-password"),
        "{text}"
    );
}

fn keepalive_stream(
    instance_id: u64,
) -> (
    tokio::sync::mpsc::Sender<pb::KeepAliveRequest>,
    impl tokio_stream::Stream<Item = pb::KeepAliveRequest>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let _ = instance_id;
    (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn instance_state(api: &Api, id: u64) -> String {
    api.get(&format!("/api/v1/instances/{id}")).await.1["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn scenario_keepalive_and_scopes(m: TestManager) {
    let root = m.root().await;
    let mut g = m.grpc_client().await;
    // A second cluster that claims 10.9.0.0/16.
    let (_, c2) = root
        .post(
            "/api/v1/clusters",
            json!({"name": "rack-9", "scopes": {"cidrs": ["10.9.0.0/16"], "idc": ["hz9"]}}),
        )
        .await;
    let c2 = c2["id"].as_u64().unwrap();
    let reg = |host: &str, ip: &str, cluster: u64| pb::RegisterSchedulerRequest {
        hostname: host.into(),
        ip: ip.into(),
        port: 8002,
        cluster_id: cluster,
        ..Default::default()
    };
    let s1 = g
        .register_scheduler(reg("sched-a", "192.168.0.10", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        s1.config.as_ref().unwrap().cluster_id,
        1,
        "no scope matches: the default cluster"
    );
    let s2 = g
        .register_scheduler(reg("sched-b", "10.9.0.10", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s2.config.as_ref().unwrap().cluster_id, c2, "picked by CIDR");
    let bad = g.register_scheduler(reg("", "not-an-ip", 0)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // Peers get the schedulers of their cluster.
    let ask = |ip: &str, idc: &str| pb::ListSchedulersRequest {
        hostname: "peer".into(),
        ip: ip.into(),
        idc: idc.into(),
        location: String::new(),
    };
    let r = g.list_schedulers(ask("10.9.3.3", "")).await.unwrap().into_inner();
    assert_eq!(
        (
            r.cluster_id,
            r.schedulers.len(),
            r.schedulers[0].hostname.as_str()
        ),
        (c2, 1, "sched-b")
    );
    let r = g
        .list_schedulers(ask("172.16.0.1", "hz9"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.cluster_id, c2, "picked by IDC");
    let r = g
        .list_schedulers(ask("172.16.0.1", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.cluster_id, r.schedulers[0].hostname.as_str()), (1, "sched-a"));

    // Keepalives keep sched-b active; silence turns it inactive and peers of
    // its cluster fall back to a cluster with a live scheduler; keepalives again
    // turn it active.
    let (tx, stream) = keepalive_stream(s2.instance_id);
    let mut g2 = g.clone();
    let ka = tokio::spawn(async move { g2.keep_alive(stream).await });
    for _ in 0..6 {
        tx.send(pb::KeepAliveRequest {
            instance_id: s2.instance_id,
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(instance_state(&root, s2.instance_id).await, "active");
    eventually(5, "silent scheduler turns inactive", || async {
        instance_state(&root, s2.instance_id).await == "inactive"
    })
    .await;
    let r = g.list_schedulers(ask("10.9.3.3", "")).await.unwrap().into_inner();
    assert!(
        r.schedulers.iter().all(|s| s.hostname != "sched-b"),
        "a dead scheduler is never handed out"
    );
    let (_, inactive) = root.get("/api/v1/instances?state=inactive&kind=scheduler").await;
    assert!(
        inactive
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["hostname"] == "sched-b")
    );
    tx.send(pb::KeepAliveRequest {
        instance_id: s2.instance_id,
    })
    .await
    .unwrap();
    eventually(5, "scheduler back to active", || async {
        instance_state(&root, s2.instance_id).await == "active"
    })
    .await;
    let r = g.list_schedulers(ask("10.9.3.3", "")).await.unwrap().into_inner();
    assert_eq!(r.schedulers[0].hostname, "sched-b");
    // Closing the stream turns it inactive without waiting for the timeout.
    drop(tx);
    ka.await.unwrap().unwrap();
    assert_eq!(instance_state(&root, s2.instance_id).await, "inactive");
    // Unknown instance ids are refused.
    let (tx, stream) = keepalive_stream(0);
    tx.send(pb::KeepAliveRequest { instance_id: 777777 })
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        g.keep_alive(stream).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // Dynamic settings: a change shows up with a new version.
    let before = g
        .get_scheduler_cluster_config(pb::GetSchedulerClusterConfigRequest { cluster_id: c2 })
        .await
        .unwrap()
        .into_inner();
    root.patch(
        &format!("/api/v1/clusters/{c2}"),
        json!({"settings": {"candidate_parent_limit": 9, "filter_parent_limit": 90}}),
    )
    .await;
    let after = g
        .get_scheduler_cluster_config(pb::GetSchedulerClusterConfigRequest { cluster_id: c2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.settings.unwrap().candidate_parent_limit, 9);
    assert!(after.version > before.version);
    let e = g
        .get_scheduler_cluster_config(pb::GetSchedulerClusterConfigRequest { cluster_id: 5555 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Seed peers: listed while connected, gone when their session ends.
    let seed = FakeSeed::connect(&m.grpc, "seed-1", SeedBehaviour::Succeed).await;
    let seeds = g
        .list_seed_peers(pb::ListSeedPeersRequest {
            scheduler_cluster_id: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seeds.seed_peers.len(), 1);
    assert_eq!(seeds.seed_peers[0].hostname, "seed-1");
    let none = g
        .list_seed_peers(pb::ListSeedPeersRequest {
            scheduler_cluster_id: c2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        none.seed_peers.is_empty(),
        "seeds belong to the default cluster's seed peer cluster"
    );
    let sid = seed.instance_id;
    seed.disconnect();
    eventually(5, "seed inactive after its session ends", || async {
        instance_state(&root, sid).await == "inactive"
    })
    .await;
    let seeds = g
        .list_seed_peers(pb::ListSeedPeersRequest {
            scheduler_cluster_id: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seeds.seed_peers.is_empty());

    // Traffic reports show up in the statistics.
    for (o, p) in [(100, 900), (50, 950)] {
        g.report_traffic(pb::ReportTrafficRequest {
            scheduler_cluster_id: c2,
            instance_id: s2.instance_id,
            origin_bytes: o,
            peer_bytes: p,
            timestamp_ms: 0,
        })
        .await
        .unwrap();
    }
    let (s, t) = root
        .get(&format!("/api/v1/traffic?cluster_id={c2}&bucket_secs=60"))
        .await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        (t["origin_bytes"].as_i64(), t["peer_bytes"].as_i64()),
        (Some(150), Some(1850))
    );
    assert!((t["peer_ratio"].as_f64().unwrap() - 0.925).abs() < 1e-9);
    let (_, t1) = root.get("/api/v1/traffic?cluster_id=1").await;
    assert_eq!(t1["origin_bytes"], 0);
    assert_eq!(root.get("/api/v1/traffic?bucket_secs=1").await.0, 400);

    // Metrics see the instances and the API.
    let text = reqwest::get(format!("{}/metrics", m.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("damselfly_manager_instances{kind=\"scheduler\",state=\"active\"}"),
        "{text}"
    );
    assert!(
        text.contains("damselfly_manager_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("route=\"/api/v1/clusters/{id}\""), "{text}");
}

async fn scenario_openapi(m: TestManager) {
    // The console: sign-in page for strangers, no scripts allowed, no cross-site posts.
    let resp = reqwest::get(format!("{}/login", m.base)).await.unwrap();
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/clusters", m.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let resp = reqwest::Client::new()
        .post(format!("{}/login", m.base))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=root&password={ROOT_PW}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "cross-site sign-in refused");

    assert_eq!(m.anon().get("/api/v1/openapi.json").await.0, 401);
    let (s, doc) = m.root().await.get("/api/v1/openapi.json").await;
    assert_eq!(s, 200);
    for p in [
        "/api/v1/sessions",
        "/api/v1/clusters/{id}",
        "/api/v1/instances",
        "/api/v1/preheat-jobs/{id}",
        "/api/v1/users",
        "/api/v1/tokens",
        "/api/v1/audit-logs",
        "/api/v1/traffic",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing");
    }
    assert!(doc["components"]["schemas"]["ClusterSettings"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

macro_rules! on_sqlite {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            super::$name(TestManager::sqlite().await).await;
        }
    )*};
}

mod sqlite {
    use super::*;
    on_sqlite!(
        scenario_auth_and_scopes,
        scenario_validation_and_injection,
        scenario_audit,
        scenario_keepalive_and_scopes,
        scenario_openapi
    );
}

/// Every scenario on PostgreSQL, plus what only a shared database can show:
/// a second manager sees the first one's data, and migrations run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let Some(pg) = PgCluster::start() else { return };
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        pg.create_db(&format!("scenario{n}"))
    };
    scenario_auth_and_scopes(TestManager::start(test_config(&fresh())).await).await;
    scenario_validation_and_injection(TestManager::start(test_config(&fresh())).await).await;
    scenario_audit(TestManager::start(test_config(&fresh())).await).await;
    scenario_keepalive_and_scopes(TestManager::start(test_config(&fresh())).await).await;
    scenario_openapi(TestManager::start(test_config(&fresh())).await).await;

    // Two managers on one database: both start (migrations once), share state.
    let url = fresh();
    let (a, b) = tokio::join!(
        TestManager::start(test_config(&url)),
        TestManager::start(test_config(&url))
    );
    let (s, c) = a
        .root()
        .await
        .post("/api/v1/clusters", json!({"name": "shared"}))
        .await;
    assert_eq!(s, 201);
    let root_b = b.root().await;
    let (s, back) = root_b.get(&format!("/api/v1/clusters/{}", c["id"])).await;
    assert_eq!((s, back["name"].as_str()), (200, Some("shared")));

    // The database goes away: calls fail cleanly (503) and recover by themselves.
    pg.pause();
    let (s, e) = root_b.get("/api/v1/clusters").await;
    assert_eq!((s, e["error"].as_str()), (503, Some("unavailable")), "{e}");
    pg.resume();
    eventually(20, "API works again after the database returns", || async {
        root_b.get("/api/v1/clusters").await.0 == 200
    })
    .await;
}
