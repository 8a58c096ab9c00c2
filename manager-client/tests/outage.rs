//! The cache at work: answers while the manager runs, the same answers after
//! it stops, and fresh ones once it is back.

use damselfly_manager::config::Config;
use damselfly_manager_client::{ManagerClient, Source};
use damselfly_proto::manager as pb;
use damselfly_service::shutdown::Shutdown;
use std::time::Duration;

const TOKEN: &str = "site-secret-0123456789";

fn config(db: &str, grpc: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: grpc.parse().unwrap(),
        database: db.into(),
        keepalive_timeout: Duration::from_millis(800),
        sweep_interval: Duration::from_millis(100),
        ..Default::default()
    };
    c.grpc_token = Some(damselfly_service::secret::Secret::new(TOKEN));
    c.auth.argon2_memory_kib = 64;
    c.auth.argon2_iterations = 1;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_survive_a_manager_outage() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let (stop, drain) = Shutdown::new();
    let running = damselfly_manager::start_with(
        config(&db, "127.0.0.1:0"),
        Some("pw-12345678".into()),
        stop.clone(),
    )
    .await
    .unwrap();
    let grpc = running.grpc_addr.to_string();
    let client = ManagerClient::with_token(
        &format!("http://{grpc}"),
        Some(TOKEN),
        dir.path().join("cache"),
        Duration::from_secs(2),
    )
    .unwrap();
    // Without the token the manager refuses (and the cache is not used for that).
    let stranger = ManagerClient::new(
        &format!("http://{grpc}"),
        dir.path().join("cache"),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(matches!(
        stranger.scheduler_cluster_config(1).await,
        Err(damselfly_manager_client::Error::Refused { .. })
    ));

    // Nothing cached and nothing to ask yet.
    let dead = ManagerClient::new(
        "http://127.0.0.1:9",
        dir.path().join("empty"),
        Duration::from_millis(300),
    )
    .unwrap();
    assert!(dead.list_seed_peers(1).await.is_err());

    let (reg, src) = client
        .register_scheduler(pb::RegisterSchedulerRequest {
            hostname: "sched-1".into(),
            ip: "10.0.0.1".into(),
            port: 8002,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(src, Source::Live);
    let ka = {
        let c = client.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let id = reg.instance_id;
        (
            tokio::spawn(async move {
                c.keepalive(id, Duration::from_millis(100), async {
                    let _ = rx.await;
                })
                .await
            }),
            tx,
        )
    };
    let ask = pb::ListSchedulersRequest {
        hostname: "peer-1".into(),
        ip: "10.0.0.9".into(),
        ..Default::default()
    };
    let (live, src) = client.list_schedulers(ask.clone()).await.unwrap();
    assert_eq!((src, live.schedulers.len()), (Source::Live, 1));
    let (cfg, _) = client.scheduler_cluster_config(1).await.unwrap();
    // A refusal is not papered over with the cache.
    assert!(matches!(
        client.scheduler_cluster_config(999).await,
        Err(damselfly_manager_client::Error::Refused { .. })
    ));

    // The manager stops: the same answers come from the cache.
    stop.trigger();
    drop(stop);
    for (_, h) in running.tasks {
        let _ = h.await;
    }
    drop(running.ctx);
    let _ = tokio::time::timeout(Duration::from_secs(5), drain.drained()).await;
    let (cached, src) = client.list_schedulers(ask.clone()).await.unwrap();
    assert_eq!(src, Source::Cache);
    assert_eq!(cached, live);
    let (cfg2, src) = client.scheduler_cluster_config(1).await.unwrap();
    assert_eq!((src, cfg2), (Source::Cache, cfg));
    let (reg2, src) = client
        .register_scheduler(pb::RegisterSchedulerRequest::default())
        .await
        .unwrap();
    assert_eq!((src, reg2.instance_id), (Source::Cache, reg.instance_id));

    // It comes back on the same address: live answers again, and the
    // keepalive loop has reopened its stream by itself.
    let (stop, _drain) = Shutdown::new();
    let _again = damselfly_manager::start_with(config(&db, &grpc), None, stop.clone())
        .await
        .unwrap();
    let mut src = Source::Cache;
    for _ in 0..50 {
        if let Ok((_, s)) = client.list_schedulers(ask.clone()).await
            && s == Source::Live
        {
            src = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(src, Source::Live);
    // Longer than the keepalive timeout: only fresh keepalives keep it listed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (live, _) = client.list_schedulers(ask).await.unwrap();
    assert_eq!(
        live.schedulers.len(),
        1,
        "the scheduler's keepalives reached the restarted manager"
    );
    ka.1.send(()).unwrap();
    ka.0.await.unwrap();
    stop.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changes_reach_watchers_within_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let (stop, _drain) = Shutdown::new();
    let running = damselfly_manager::start_with(config(&db, "127.0.0.1:0"), None, stop.clone())
        .await
        .unwrap();
    let client = ManagerClient::with_token(
        &format!("http://{}", running.grpc_addr),
        Some(TOKEN),
        dir.path().join("cache"),
        Duration::from_secs(2),
    )
    .unwrap();
    let (first, _) = client.scheduler_cluster_config(1).await.unwrap();
    let mut rx = client.watch_scheduler_config(1, Duration::from_millis(100), first.clone());
    let patch = damselfly_manager::store::clusters::SchedulerClusterPatch {
        settings: Some(damselfly_manager::store::clusters::ClusterSettings {
            candidate_parent_limit: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    damselfly_manager::store::clusters::update_scheduler_cluster(&running.ctx.db, 1, patch)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let now = rx.borrow().clone();
    assert_eq!(now.settings.unwrap().candidate_parent_limit, 2);
    assert!(now.version > first.version);
    stop.trigger();
}

/// The client's per-call timeout must not cut the long-lived keepalive
/// stream: a scheduler stays listed without a gap for many timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_streams_outlive_the_call_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let (stop, _drain) = Shutdown::new();
    let mut c = config(&db, "127.0.0.1:0");
    c.keepalive_timeout = Duration::from_secs(5);
    let running = damselfly_manager::start_with(c, Some("pw-12345678".into()), stop.clone())
        .await
        .unwrap();
    let client = ManagerClient::with_token(
        &format!("http://{}", running.grpc_addr),
        Some(TOKEN),
        dir.path().join("cache"),
        Duration::from_millis(200),
    )
    .unwrap();
    let (reg, _) = client
        .register_scheduler(pb::RegisterSchedulerRequest {
            hostname: "steady".into(),
            ip: "10.0.0.9".into(),
            port: 8002,
            ..Default::default()
        })
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ka = {
        let c = client.clone();
        tokio::spawn(async move {
            c.keepalive(reg.instance_id, Duration::from_millis(50), async {
                let _ = rx.await;
            })
            .await
        })
    };
    let req = pb::ListSchedulersRequest {
        hostname: "peer".into(),
        ..Default::default()
    };
    // 1.5 s is several call timeouts; a cut stream would show as a gap.
    for _ in 0..50 {
        let (list, src) = client.list_schedulers(req.clone()).await.unwrap();
        assert_eq!(src, Source::Live);
        assert_eq!(list.schedulers.len(), 1, "the scheduler dropped out of the list");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tx.send(()).unwrap();
    ka.await.unwrap();
    stop.trigger();
}

/// A scheduler whose process dies (its connection closes) leaves the peers'
/// list at once, long before the keepalive timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_schedulers_keepalive_drops_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let (stop, _drain) = Shutdown::new();
    let mut c = config(&db, "127.0.0.1:0");
    c.keepalive_timeout = Duration::from_secs(30);
    let running = damselfly_manager::start_with(c, Some("pw-12345678".into()), stop.clone())
        .await
        .unwrap();
    let url = format!("http://{}", running.grpc_addr);
    // Each scheduler runs on its own runtime: ending one closes its sockets,
    // as a killed process would.
    let scheduler = |name: &'static str| {
        let (url, cache) = (url.clone(), dir.path().join(name));
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.spawn(async move {
                let client =
                    ManagerClient::with_token(&url, Some(TOKEN), cache, Duration::from_secs(2)).unwrap();
                let (reg, _) = client
                    .register_scheduler(pb::RegisterSchedulerRequest {
                        hostname: name.into(),
                        ip: "10.0.0.9".into(),
                        port: 8002,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                client
                    .keepalive(reg.instance_id, Duration::from_millis(50), std::future::pending())
                    .await
            });
            let _ = killed.recv();
            rt.shutdown_background();
        });
        kill
    };
    let kill_a = scheduler("a");
    let _kill_b = scheduler("b");
    let peer = ManagerClient::with_token(&url, Some(TOKEN), dir.path().join("peer"), Duration::from_secs(2))
        .unwrap();
    let req = pb::ListSchedulersRequest {
        hostname: "peer".into(),
        ..Default::default()
    };
    let names = |r: &pb::ListSchedulersResponse| {
        r.schedulers
            .iter()
            .map(|s| s.hostname.clone())
            .collect::<Vec<_>>()
    };
    let listed = |want: &'static [&'static str]| {
        let (peer, req) = (peer.clone(), req.clone());
        async move {
            let started = std::time::Instant::now();
            loop {
                let (list, _) = peer.list_schedulers(req.clone()).await.unwrap();
                if names(&list) == want {
                    return;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "want {want:?}, listed {:?}",
                    names(&list)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    listed(&["a", "b"]).await;
    // Both keepalive streams are running (a keepalive arrived after registration).
    let started = std::time::Instant::now();
    for id in [1, 2] {
        loop {
            let i = damselfly_manager::store::instances::get(&running.ctx.db, id)
                .await
                .unwrap();
            if i.last_keepalive_at > i.created_at {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "no keepalive from {}",
                i.hostname
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    kill_a.send(()).unwrap();
    listed(&["b"]).await;
    stop.trigger();
}

/// An instance the manager no longer knows (an operator deleted it) ends
/// the keepalive loop, so that the caller registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_for_a_deleted_instance_asks_to_register_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let (stop, _drain) = Shutdown::new();
    let running = damselfly_manager::start_with(
        config(&db, "127.0.0.1:0"),
        Some("pw-12345678".into()),
        stop.clone(),
    )
    .await
    .unwrap();
    let client = ManagerClient::with_token(
        &format!("http://{}", running.grpc_addr),
        Some(TOKEN),
        dir.path().join("cache"),
        Duration::from_secs(2),
    )
    .unwrap();
    let (reg, _) = client
        .register_scheduler(pb::RegisterSchedulerRequest {
            hostname: "gone".into(),
            ip: "10.0.0.9".into(),
            port: 8002,
            ..Default::default()
        })
        .await
        .unwrap();
    let ka = {
        let c = client.clone();
        tokio::spawn(async move {
            c.keepalive(reg.instance_id, Duration::from_millis(50), std::future::pending())
                .await
        })
    };
    // Whether or not a keepalive got through before, the next one is refused.
    damselfly_manager::store::instances::delete(&running.ctx.db, reg.instance_id as i64)
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), ka)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end, damselfly_manager_client::KeepaliveEnd::UnknownInstance);
    stop.trigger();
}
