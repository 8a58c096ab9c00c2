//! The scheduler's manager link against a real manager (in-process, SQLite):
//! when the manager forgets the scheduler and it registers again into
//! another cluster, it follows that cluster's settings from then on.

use damselfly_manager::config::Config;
use damselfly_manager::store::{clusters, instances};
use damselfly_scheduler::config::{EvaluatorConfig, ManagerConfig};
use damselfly_scheduler::evaluator::DefaultEvaluator;
use damselfly_scheduler::manager::{self, ManagerStatus};
use damselfly_scheduler::metrics::Metrics;
use damselfly_scheduler::schedule::Planner;
use damselfly_service::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_millis(100);

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn settings(candidate: u32) -> clusters::ClusterSettings {
    clusters::ClusterSettings {
        candidate_parent_limit: candidate,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_moved_to_another_cluster_follows_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut mc = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        database: format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display()),
        keepalive_timeout: Duration::from_secs(2),
        sweep_interval: STEP,
        ..Default::default()
    };
    mc.auth.argon2_memory_kib = 64;
    mc.auth.argon2_iterations = 1;
    let (stop, _drain) = Shutdown::new();
    let m = damselfly_manager::start_with(mc, Some("pw-12345678".into()), stop.clone())
        .await
        .unwrap();
    let db = &m.ctx.db;

    let planner = Arc::new(Planner::new(
        Box::new(DefaultEvaluator {
            config: EvaluatorConfig::default(),
        }),
        EvaluatorConfig::default(),
    ));
    let status = Arc::new(Mutex::new(ManagerStatus::default()));
    let config = ManagerConfig {
        addr: format!("http://{}", m.grpc_addr),
        hostname: "sched-b1".into(),
        advertise_ip: "127.0.0.1".into(),
        cache_dir: dir.path().join("cache"),
        keepalive_interval: STEP,
        refresh_interval: STEP,
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    tokio::spawn(manager::run(
        config,
        "127.0.0.1:8002".parse().unwrap(),
        planner.clone(),
        metrics,
        status.clone(),
        stop.clone(),
    ));
    let default = clusters::default_scheduler_cluster(db).await.unwrap();
    let st = status.clone();
    until("registration", || {
        let s = st.lock().unwrap();
        s.registered && s.cluster_id == default.id as u64
    })
    .await;

    // A cluster whose scope matches the scheduler's hostname; the operator
    // deletes the instance, so the scheduler registers again and lands there.
    let room_b = clusters::create_scheduler_cluster(
        db,
        clusters::NewSchedulerCluster {
            name: "room-b".into(),
            description: String::new(),
            settings: settings(6),
            scopes: clusters::ClusterScopes {
                hostnames: vec!["sched-b*".into()],
                ..Default::default()
            },
        },
    )
    .await
    .unwrap();
    let old = status.lock().unwrap().instance_id;
    instances::delete(db, old as i64).await.unwrap();
    let st = status.clone();
    until("registration into room-b", || {
        st.lock().unwrap().cluster_id == room_b.id as u64
    })
    .await;
    assert_ne!(status.lock().unwrap().instance_id, old);
    until("room-b's settings", || {
        planner.config().candidate_parent_limit == 6
    })
    .await;

    // From now on room-b's changes apply, the default cluster's do not.
    clusters::update_scheduler_cluster(
        db,
        default.id,
        clusters::SchedulerClusterPatch {
            settings: Some(settings(2)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    clusters::update_scheduler_cluster(
        db,
        room_b.id,
        clusters::SchedulerClusterPatch {
            settings: Some(settings(9)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    until("room-b's new settings", || {
        planner.config().candidate_parent_limit == 9
    })
    .await;
    // Several refresh intervals later it still holds room-b's value.
    tokio::time::sleep(STEP * 5).await;
    assert_eq!(planner.config().candidate_parent_limit, 9);
    let version = room_b_version(db, room_b.id).await;
    assert_eq!(status.lock().unwrap().settings_version, version);
    stop.trigger();
}

async fn room_b_version(db: &damselfly_manager::db::Db, id: i64) -> i64 {
    clusters::get_scheduler_cluster(db, id).await.unwrap().updated_at
}
