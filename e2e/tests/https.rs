//! The HTTP ports under mutual TLS, through the real `damselfly` binaries in network
//! namespaces (octet 160; needs root):
//! - the scheduler's `/metrics` and `/tasks/{id}`, a peer's `/metrics` and the manager's REST
//!   API refuse plain HTTP and a certificate of another CA; the scheduler and the peer also
//!   refuse a client without a certificate, the manager's API takes one (it authenticates by
//!   token) but its `/metrics` does not;
//! - `/tasks/{id}` answers only the control plane's roles (a peer certificate gets 403);
//! - each role's plain health port answers `/healthz` and `/readyz` without TLS, and nothing
//!   else;
//! - `damselfly scheduler --manager HOST:PORT` registers with a TLS manager (the bare address
//!   is https under TLS), and `--manager http://...` with TLS on is refused at start-up,
//!   naming the field.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::lab::Lab;
use damselfly_e2e::managed::{MANAGER_GRPC_PORT, MANAGER_HEALTH_PORT, MANAGER_HTTP_PORT, Manager};
use damselfly_e2e::mesh::{PEER_METRICS_PORT, SCHEDULER_METRICS_PORT, SCHEDULER_PORT, start_peer_with};
use damselfly_e2e::tls::Certs;
use damselfly_e2e::wait::{wait_for, wait_for_tcp};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// The default `health_addr` ports of scheduler and peer (`0.0.0.0:8006`, `0.0.0.0:4003`).
const SCHEDULER_HEALTH_PORT: u16 = 8006;
const PEER_HEALTH_PORT: u16 = 4003;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "HTTPS tests need root (network namespaces); run them through scripts/test.sh"
    );
}

/// A plain HTTP GET must not get an answer from an HTTPS port (the TLS server drops it).
fn plain_refused(ip: Ipv4Addr, port: u16, path: &str) -> Result<()> {
    match damselfly_e2e::http::get(ip, port, path) {
        Ok((status, body)) => anyhow::bail!("plain http://{ip}:{port}{path} answered {status}: {body}"),
        Err(_) => Ok(()),
    }
}

/// The plain health port answers the probes and nothing else.
fn health_port_serves_probes_only(ip: Ipv4Addr, port: u16) -> Result<()> {
    wait_for(&format!("{ip}:{port}/readyz"), Duration::from_secs(20), || {
        damselfly_e2e::http::get(ip, port, "/readyz").is_ok_and(|(s, _)| s == 200)
    })?;
    let (status, body) = damselfly_e2e::http::get(ip, port, "/healthz")?;
    ensure!(
        status == 200 && body.contains("ok"),
        "/healthz on {ip}:{port}: {status} {body}"
    );
    for path in ["/metrics", "/tasks/x", "/config", "/api/v1/instances", "/"] {
        let (status, body) = damselfly_e2e::http::get(ip, port, path)?;
        ensure!(
            status == 404,
            "{path} on the health port {ip}:{port}: {status} {body}"
        );
    }
    Ok(())
}

#[test]
fn https_ports_answer_members_only_and_the_health_ports_answer_probes_only() -> Result<()> {
    require_root();
    let bin = bins::damselfly()?;
    let lab = Lab::new("dft3h", 160, &["mgr", "sched", "p1"], None)?;
    let dir = tempfile::tempdir()?;
    let certs = Certs::init(
        &bin,
        &dir.path().join("certs"),
        &["manager:mgr", "scheduler:sched", "peer:p1"],
    )?;
    let other = Certs::init(&bin, &dir.path().join("other"), &["scheduler:sched", "peer:p1"])?;
    // Another CA's certificate, presented to our servers (trusting our CA for the server).
    let stranger = |role: &str, ip: Ipv4Addr, port: u16, path: &str| {
        damselfly_e2e::tls::https_get(
            &certs.ca(),
            Some((&other.cert("sched"), &other.key("sched"))),
            role,
            ip,
            port,
            path,
        )
    };

    // The manager: its REST API over HTTPS, token auth, no client certificate (Manager signs
    // in as root and mints a token through it).
    let manager = Manager::start_tls(&lab, &bin, "mgr", &certs, "")?;
    let mgr_ip = manager.ip;

    // The scheduler, started by the CLI against the TLS manager with a bare HOST:PORT.
    let sched_ip = lab.ip("sched");
    let sched_toml = dir.path().join("scheduler.toml");
    std::fs::write(
        &sched_toml,
        format!("[manager]\nhostname = \"sched\"\n\n{}", certs.toml("sched")),
    )?;
    let sched_config = ["--config".to_string(), sched_toml.display().to_string()];
    let scheduler_cmd = |manager_addr: String| {
        let mut cmd = Command::new(&bin);
        cmd.arg("scheduler")
            .args(&sched_config)
            .arg("--listen")
            .arg(format!("{sched_ip}:{SCHEDULER_PORT}"))
            .arg("--metrics-listen")
            .arg(format!("{sched_ip}:{SCHEDULER_METRICS_PORT}"))
            .arg("--manager")
            .arg(manager_addr);
        cmd
    };
    // An http:// manager URL with TLS on is refused before anything starts.
    let refused = scheduler_cmd(format!("http://{mgr_ip}:{MANAGER_GRPC_PORT}")).output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("manager.addr") && stderr.contains("https://"),
        "scheduler with an http:// manager and TLS on: {} {stderr}",
        refused.status
    );
    let scheduler = lab.spawn(
        "sched",
        "scheduler",
        &scheduler_cmd(format!("{mgr_ip}:{MANAGER_GRPC_PORT}")),
    )?;
    wait_for_tcp(sched_ip, SCHEDULER_METRICS_PORT, Duration::from_secs(30))
        .with_context(|| format!("scheduler:\n{}", scheduler.log_tail(20)))?;
    let registered = manager.wait_state("scheduler", "sched", "active", Duration::from_secs(20));
    registered.with_context(|| {
        format!(
            "instances {:?}; scheduler:\n{}",
            manager.instances("scheduler"),
            scheduler.log_tail(20)
        )
    })?;

    // A peer of that scheduler.
    let p1_dir = dir.path().join("p1");
    std::fs::create_dir_all(&p1_dir)?;
    let p1_args = certs.write_config("p1", &p1_dir.join("peer.toml"))?;
    let p1_ip = lab.ip("p1");
    let p1 = start_peer_with(
        &lab,
        &bin,
        &format!("https://{sched_ip}:{SCHEDULER_PORT}"),
        &p1_dir,
        "p1",
        false,
        &[],
        &p1_args,
    )?;

    // The scheduler's HTTP port: members only, /tasks for the control plane only.
    let s = (sched_ip, SCHEDULER_METRICS_PORT);
    for path in ["/metrics", "/tasks/nothing"] {
        plain_refused(s.0, s.1, path)?;
        let (status, body) = certs.https_get(None, "scheduler", s.0, s.1, path)?;
        ensure!(
            status == 0,
            "{path} without a client certificate: {status} {body}"
        );
        let (status, body) = stranger("scheduler", s.0, s.1, path)?;
        ensure!(
            status == 0,
            "{path} with another CA's certificate: {status} {body}"
        );
    }
    let metrics = certs.https_text("p1", "scheduler", s.0, s.1, "/metrics")?;
    ensure!(
        metrics.contains("damselfly_ready"),
        "scheduler /metrics: {metrics}"
    );
    for (client, path, want) in [
        ("p1", "/tasks/nothing", 403),
        ("p1", "/config", 403),
        ("sched", "/tasks/nothing", 404),
        ("mgr", "/tasks/nothing", 404),
        ("mgr", "/config", 200),
    ] {
        let (status, body) = certs.https_get(Some(client), "scheduler", s.0, s.1, path)?;
        ensure!(
            status == want,
            "{path} as {client}: {status} (want {want}) {body}"
        );
    }
    let config = certs.https_text("sched", "scheduler", s.0, s.1, "/config")?;
    ensure!(config.contains("candidate_parent_limit"), "/config: {config}");

    // The peer's metrics port: members only.
    let p = (p1_ip, PEER_METRICS_PORT);
    plain_refused(p.0, p.1, "/metrics")?;
    let (status, body) = certs.https_get(None, "peer", p.0, p.1, "/metrics")?;
    ensure!(
        status == 0,
        "peer /metrics without a client certificate: {status} {body}"
    );
    let (status, body) = stranger("peer", p.0, p.1, "/metrics")?;
    ensure!(
        status == 0,
        "peer /metrics with another CA's certificate: {status} {body}"
    );
    let page = certs.https_text("mgr", "peer", p.0, p.1, "/metrics")?;
    ensure!(page.contains("damselfly_ready"), "peer /metrics: {page}");

    // The manager's port: the API takes a token without a client certificate, but no plain
    // HTTP and no certificate of another CA; /metrics needs a member's certificate.
    let m = (mgr_ip, MANAGER_HTTP_PORT);
    plain_refused(m.0, m.1, "/api/v1/instances")?;
    ensure!(!manager.instances("scheduler")?.is_empty(), "the API over HTTPS");
    let (status, body) = stranger("manager", m.0, m.1, "/api/v1/instances")?;
    ensure!(
        status == 0,
        "manager API with another CA's certificate: {status} {body}"
    );
    let (status, _) = certs.https_get(None, "manager", m.0, m.1, "/api/v1/instances")?;
    ensure!(status == 401, "manager API without a token: {status}");
    let (status, body) = certs.https_get(None, "manager", m.0, m.1, "/metrics")?;
    ensure!(
        status == 401,
        "manager /metrics without a client certificate: {status} {body}"
    );
    let page = certs.https_text("sched", "manager", m.0, m.1, "/metrics")?;
    ensure!(page.contains("damselfly_ready"), "manager /metrics: {page}");

    // Plain health ports: probes only.
    health_port_serves_probes_only(sched_ip, SCHEDULER_HEALTH_PORT)?;
    health_port_serves_probes_only(p1_ip, PEER_HEALTH_PORT)?;
    health_port_serves_probes_only(mgr_ip, MANAGER_HEALTH_PORT)?;

    for (name, proc) in [
        ("scheduler", &scheduler),
        ("p1", &p1.proc),
        ("manager", &manager.proc),
    ] {
        ensure!(proc.is_running(), "{name} stopped:\n{}", proc.log_tail(20));
    }
    Ok(())
}
