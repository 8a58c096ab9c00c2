//! The scheduler load generator against an in-process scheduler, at a
//! small scale (the bench runs it at 10,000 peers).

use std::net::SocketAddr;
use std::time::Duration;

use damselfly_e2e::free_port;
use damselfly_e2e::schedload::{self, LoadConfig};
use damselfly_scheduler::SchedulerConfig;
use damselfly_service::shutdown::Shutdown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_peer_gets_a_decision() {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap()).parse().unwrap();
    let config = SchedulerConfig {
        listen,
        http_listen: format!("127.0.0.1:{}", free_port().unwrap()).parse().unwrap(),
        ..SchedulerConfig::default()
    };
    let (shutdown, _drain) = Shutdown::new();
    let server = tokio::spawn(damselfly_scheduler::run(config, shutdown.clone()));
    let addr = listen;
    tokio::task::spawn_blocking(move || {
        damselfly_e2e::wait_for_tcp(addr.ip(), addr.port(), Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();

    let load = LoadConfig {
        scheduler: format!("http://{listen}"),
        peers: 300,
        tasks: 10,
        hosts: 60,
        seeds: 2,
        concurrency: 50,
        timeout: Duration::from_secs(20),
        ..LoadConfig::default()
    };
    let report = schedload::run(&load).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.decisions, 300);
    assert!(report.seed_triggers > 0);
    assert!(
        report.decisions_per_sec > 0.0 && report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms
    );

    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
