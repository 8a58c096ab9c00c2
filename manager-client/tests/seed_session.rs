//! A seed peer's session through the client: preheat work arrives, results
//! go back, and the session survives a manager restart.

use damselfly_manager::auth::{Principal, Scope};
use damselfly_manager::config::Config;
use damselfly_manager::store::preheat::{self, NewPreheatJob, PreheatKind, PreheatScope};
use damselfly_manager_client::{ManagerClient, PreheatWork};
use damselfly_proto::manager as pb;
use damselfly_service::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Recorder(Arc<Mutex<Vec<String>>>);

impl PreheatWork for Recorder {
    async fn run(&self, cmd: pb::PreheatCommand) -> Result<u64, String> {
        self.0.lock().unwrap().push(cmd.url.clone());
        if cmd.url.ends_with("/bad") {
            Err("origin said 404".into())
        } else {
            Ok(1234)
        }
    }
}

fn config(db: &str, grpc: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: grpc.parse().unwrap(),
        database: db.into(),
        ..Default::default()
    };
    c.auth.argon2_memory_kib = 64;
    c.auth.argon2_iterations = 1;
    c.preheat.poll_interval = Duration::from_millis(100);
    c.preheat.max_attempts = 2;
    c
}

async fn job(ctx: &damselfly_manager::Ctx, urls: &[&str]) -> preheat::PreheatJob {
    let root = Principal {
        user_id: 1,
        username: "root".into(),
        scope: Scope::Admin,
        token_id: None,
    };
    let new = NewPreheatJob {
        kind: PreheatKind::File,
        urls: urls.iter().map(|u| u.to_string()).collect(),
        platform: None,
        username: None,
        password: None,
        headers: Default::default(),
        scheduler_cluster_ids: vec![],
        scope: PreheatScope::AllSeedPeers,
    };
    let id = preheat::create(&ctx.db, &root, new).await.unwrap().id;
    ctx.wake.notify_one();
    for _ in 0..200 {
        let j = preheat::get(&ctx.db, id).await.unwrap();
        if j.state == "succeeded" || j.state == "failed" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_session_runs_preheat_work_across_restarts() {
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
    let grpc = running.grpc_addr.to_string();
    let client = ManagerClient::new(
        &format!("http://{grpc}"),
        dir.path().join("cache"),
        Duration::from_secs(2),
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let hello = pb::SeedPeerHello {
        hostname: "seed-x".into(),
        ip: "127.0.0.1".into(),
        port: 4000,
        ..Default::default()
    };
    let session = {
        let (client, seen) = (client.clone(), seen.clone());
        tokio::spawn(async move {
            client
                .seed_session(hello, Duration::from_millis(100), Recorder(seen), async {
                    let _ = end_rx.await;
                })
                .await
        })
    };
    // Wait for the seed to be registered and active.
    for _ in 0..100 {
        let (s, _) = client.list_seed_peers(1).await.unwrap();
        if !s.seed_peers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let j = job(
        &running.ctx,
        &["http://origin.invalid/a", "http://origin.invalid/b"],
    )
    .await;
    assert_eq!(j.state, "succeeded", "{j:?}");
    assert!(j.tasks.iter().all(|t| t.bytes == 1234));
    let j = job(&running.ctx, &["http://origin.invalid/bad"]).await;
    assert_eq!(j.state, "failed");
    assert_eq!(j.tasks[0].attempts, 2, "retried once");
    assert!(j.tasks[0].error.contains("404"));

    // The manager restarts on the same address; the session comes back by itself.
    stop.trigger();
    for (_, h) in running.tasks {
        let _ = h.await;
    }
    drop(running.ctx);
    let (stop, _drain) = Shutdown::new();
    let again = damselfly_manager::start_with(config(&db, &grpc), None, stop.clone())
        .await
        .unwrap();
    let j = job(&again.ctx, &["http://origin.invalid/after-restart"]).await;
    assert_eq!(j.state, "succeeded", "{j:?}");
    assert!(seen.lock().unwrap().iter().any(|u| u.ends_with("after-restart")));
    end_tx.send(()).unwrap();
    session.await.unwrap();
    stop.trigger();
}
