//! Health and readiness through the real binary: `/readyz` answers 200 only
//! once a role is ready (a peer whose scheduler is down is not, until the
//! scheduler answers), and a role whose port is taken exits non-zero with an
//! error naming the address. Octets 80-89 (`dfd-*`); the readiness test needs root.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::http;
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::{PEER_METRICS_PORT, PIECE_PORT, SCHEDULER_METRICS_PORT, SCHEDULER_PORT};
use damselfly_e2e::wait::{free_port, wait_for};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_peer_is_ready_only_once_its_scheduler_answers() -> Result<()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "health tests need root (network namespaces); run them through scripts/test.sh"
    );
    let lab = Lab::new("dfdh", 81, &["sched", "peer"], None)?;
    let bin = bins::damselfly()?;
    let dir = tempfile::tempdir()?;
    let (sip, pip) = (lab.ip("sched"), lab.ip("peer"));

    // The peer first, its scheduler not running yet.
    let mut cmd = Command::new(&bin);
    cmd.arg("peer")
        .arg("--scheduler")
        .arg(format!("http://{sip}:{SCHEDULER_PORT}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("daemon.sock"))
        .arg("--piece-listen")
        .arg(format!("{pip}:{PIECE_PORT}"))
        .arg("--advertise-ip")
        .arg(pip.to_string())
        .arg("--metrics-listen")
        .arg(format!("{pip}:{PEER_METRICS_PORT}"));
    let peer = lab.spawn("peer", "peer", &cmd)?;
    wait_for("the peer's /healthz", WAIT, || {
        !peer.is_running() || matches!(http::get(pip, PEER_METRICS_PORT, "/healthz"), Ok((200, _)))
    })?;
    ensure!(peer.is_running(), "peer exited:\n{}", peer.log_tail(20));
    // Its listeners are up (the local API socket exists) and it stays not ready.
    wait_for("the peer's socket", WAIT, || {
        dir.path().join("daemon.sock").exists()
    })?;
    let (code, body) = http::get(pip, PEER_METRICS_PORT, "/readyz")?;
    ensure!(
        code == 503,
        "peer with no scheduler answered /readyz {code}: {body}"
    );
    ensure!(
        body.contains("scheduler"),
        "/readyz does not name the missing scheduler: {body}"
    );
    ensure!(
        !body.contains("listeners"),
        "listeners should be up by now: {body}"
    );
    let (_, metrics) = http::get(pip, PEER_METRICS_PORT, "/metrics")?;
    ensure!(metrics.contains("damselfly_ready{role=\"peer\"} 0"), "{metrics}");
    ensure!(metrics.contains("damselfly_up{role=\"peer\"} 1"), "{metrics}");

    // The scheduler comes up: both turn ready.
    let mut cmd = Command::new(&bin);
    cmd.arg("scheduler")
        .arg("--listen")
        .arg(format!("{sip}:{SCHEDULER_PORT}"))
        .arg("--metrics-listen")
        .arg(format!("{sip}:{SCHEDULER_METRICS_PORT}"));
    let sched = lab.spawn("sched", "scheduler", &cmd)?;
    wait_for("the scheduler's /readyz", WAIT, || {
        !sched.is_running() || matches!(http::get(sip, SCHEDULER_METRICS_PORT, "/readyz"), Ok((200, _)))
    })?;
    ensure!(sched.is_running(), "scheduler exited:\n{}", sched.log_tail(20));
    wait_for("the peer's /readyz once its scheduler answers", WAIT, || {
        !peer.is_running() || matches!(http::get(pip, PEER_METRICS_PORT, "/readyz"), Ok((200, _)))
    })
    .with_context(|| peer.log_tail(20))?;
    ensure!(peer.is_running(), "peer exited:\n{}", peer.log_tail(20));
    let (_, metrics) = http::get(pip, PEER_METRICS_PORT, "/metrics")?;
    ensure!(metrics.contains("damselfly_ready{role=\"peer\"} 1"), "{metrics}");
    let (_, metrics) = http::get(sip, SCHEDULER_METRICS_PORT, "/metrics")?;
    ensure!(
        metrics.contains("damselfly_ready{role=\"scheduler\"} 1"),
        "{metrics}"
    );
    Ok(())
}

/// Runs `damselfly ARGS` with `taken` occupied and checks it fails naming it.
fn fails_on_taken_port(args: &[String], taken: &str) -> Result<()> {
    let bin = bins::damselfly()?;
    let out = Command::new(&bin)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .context("run damselfly")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "{args:?} started on a taken port {taken}: {err}"
    );
    ensure!(err.contains(taken), "the error does not name {taken}: {err}");
    ensure!(
        err.to_lowercase().contains("in use"),
        "the error does not say why: {err}"
    );
    Ok(())
}

#[test]
fn a_taken_port_stops_every_role_with_its_address() -> Result<()> {
    let blocker = std::net::TcpListener::bind("127.0.0.1:0")?;
    let taken = blocker.local_addr()?.to_string();
    let free = || -> Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
    let dir = tempfile::tempdir()?;

    // Scheduler: gRPC port, then its HTTP port.
    let s = |listen: &str, http: &str| {
        ["scheduler", "--listen", listen, "--metrics-listen", http]
            .map(String::from)
            .to_vec()
    };
    fails_on_taken_port(&s(&taken, &free()?), &taken)?;
    fails_on_taken_port(&s(&free()?, &taken), &taken)?;

    // Peer: piece port, metrics port, proxy port.
    let peer = |piece: &str, metrics: &str, proxy: &str| -> Vec<String> {
        let mut v: Vec<String> = ["peer", "--scheduler", "http://127.0.0.1:9"]
            .map(String::from)
            .to_vec();
        v.extend(["--data-dir".into(), dir.path().join("data").display().to_string()]);
        v.extend(["--socket".into(), dir.path().join("d.sock").display().to_string()]);
        v.extend([
            "--piece-listen".into(),
            piece.into(),
            "--metrics-listen".into(),
            metrics.into(),
        ]);
        v.extend(["--proxy-listen".into(), proxy.into()]);
        v
    };
    fails_on_taken_port(&peer(&taken, &free()?, &free()?), &taken)?;
    fails_on_taken_port(&peer(&free()?, &taken, &free()?), &taken)?;
    fails_on_taken_port(&peer(&free()?, &free()?, &taken), &taken)?;

    // Manager: HTTP port.
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let m = [
        "manager",
        "--listen",
        &taken,
        "--grpc-listen",
        &free()?,
        "--database",
        &db,
    ]
    .map(String::from)
    .to_vec();
    fails_on_taken_port(&m, &taken)?;
    drop(blocker);
    Ok(())
}
