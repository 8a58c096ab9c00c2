//! Starts the gRPC and HTTP servers, the GC loop and the manager link; stops
//! them on shutdown.

use crate::config::SchedulerConfig;
use crate::core::{Core, Retention};
use crate::error::Error;
use crate::evaluator::DefaultEvaluator;
use crate::metrics::Metrics;
use crate::schedule::Planner;
use crate::service::{SchedulerService, Shared};
use damselfly_proto::scheduler::scheduler_server::SchedulerServer;
use damselfly_service::shutdown::Shutdown;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tracing::info;

/// How often cache tasks are checked for expiry and missing replicas.
const CACHE_TICK: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a scheduler until `shutdown` fires.
pub async fn run(config: SchedulerConfig, shutdown: Shutdown) -> Result<(), Error> {
    config.validate()?;
    let tls = damselfly_service::tls::Tls::start(&config.tls, &shutdown).await?;
    damselfly_service::tls::install(tls.clone());
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    // Ready (/readyz) once both listeners are bound.
    let health = damselfly_service::health::Health::new("scheduler", &["listeners"]);
    health.register(&mut registry);
    let supervisor = damselfly_service::tasks::Supervisor::new();
    let planner = Arc::new(Planner::new(
        Box::new(DefaultEvaluator {
            config: config.evaluator.clone(),
        }),
        config.evaluator.clone(),
    ));
    let retention = Retention {
        host_timeout: config.host_timeout,
        task_ttl: config.task_ttl,
    };
    let core = Core::new(planner, metrics, retention, rand::random()).with_cold_source(config.cold_source);
    // With TLS on, piece connections need a ticket from here (see damselfly_service::ticket).
    let tickets = match &tls {
        Some(_) => Some(damselfly_service::ticket::TicketSigner::generate()?),
        None => None,
    };
    let shared = Arc::new(Shared::with_tickets(core, Default::default(), tickets));

    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("bind http_listen {}", config.http_listen),
            source,
        })?;
    let app = crate::http::router(shared.clone(), Arc::new(registry), &health);
    // HTTPS with a client certificate beyond loopback when [tls] is on (see crate::http).
    let (_, http_server) = damselfly_service::https::serve(
        http,
        app,
        tls.clone(),
        damselfly_service::tls::ClientAuth::Required,
        shutdown.clone(),
    )
    .map_err(|source| Error::Io {
        context: format!("serve http_listen {}", config.http_listen),
        source,
    })?;
    let http_task = supervisor.watch(
        format!("HTTP server on {}", config.http_listen),
        http_server,
        shutdown.clone(),
    );
    // Kubelet probes cannot present a certificate: /healthz and /readyz alone, plain.
    let health_task =
        damselfly_service::https::serve_health(config.health_addr, &health, tls.is_some(), shutdown.clone())
            .await
            .map_err(|source| Error::Io {
                context: format!("bind health_addr {}", config.health_addr),
                source,
            })?
            .map(|(addr, h)| supervisor.watch(format!("health server on {addr}"), h, shutdown.clone()));

    let gc_shared = shared.clone();
    let gc_stop = shutdown.clone();
    let every = config.gc_interval;
    let gc_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut cache_tick = tokio::time::interval(CACHE_TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => gc_shared.gc(),
                _ = cache_tick.tick() => gc_shared.cache_tick(),
                _ = gc_stop.wait() => break,
            }
        }
    });

    let manager_task = config.manager.enabled().then(|| {
        tokio::spawn(crate::manager::run(
            config.manager.clone(),
            config.listen,
            shared.planner.clone(),
            shared.metrics.clone(),
            shared.manager.clone(),
            shutdown.clone(),
        ))
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("bind listen {}", config.listen),
            source,
        })?;
    info!(grpc = %config.listen, http = %config.http_listen, "scheduler serving");
    health.set("listeners", true);
    let incoming = damselfly_service::tls::incoming(listener, tls);
    let stop = shutdown.clone();
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(SchedulerServer::new(SchedulerService { shared }))
        .serve_with_incoming_shutdown(incoming, async move { stop.wait().await })
        .await?;
    let _ = tokio::join!(http_task, gc_task);
    if let Some(t) = health_task {
        let _ = t.await;
    }
    if let Some(t) = manager_task {
        let _ = t.await;
    }
    Ok(supervisor.result()?)
}
