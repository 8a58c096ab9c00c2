//! Mutual TLS end to end: the real `damselfly` binaries in network namespaces with `[tls]`
//! on and certificates from `damselfly certs init`. Octets 63-64 and 150-151; needs root.
//!
//! - a get works end to end with TLS on (scheduler, seed, peer), with an origin credential;
//! - a client without a certificate, or with a valid peer certificate of another CA, can
//!   neither announce to the scheduler nor read a piece from any peer; a member with a valid
//!   peer certificate that never registered for a task holds no piece ticket and reads nothing;
//! - a peer certificate that claims `seed: true` is refused by the scheduler, so a daemon
//!   started with `--seed` on it never gets a seed task (nor the credential in it);
//! - certificates rotated (a new CA) while a swarm runs: new connections use the new ones, the
//!   swarm finishes;
//! - the manager takes each call only from a certificate of the caller's role, and an
//!   instance's keepalives and re-registrations only from the certificate that registered it.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::{PIECE_PORT, PeerDaemon, SCHEDULER_METRICS_PORT, SCHEDULER_PORT, start_peer_with};
use damselfly_e2e::origin::Origin;
use damselfly_e2e::tls::Certs;
use damselfly_e2e::wait::wait_for_tcp;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{HostInfo, HostMessage, host_message};
use damselfly_service::tls::{Role, Tls, TlsConfig, TlsMode};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::wrappers::UnboundedReceiverStream;

const MIB: u64 = 1024 * 1024;
const ORIGIN_PORT: u16 = 8080;
const TOKEN: &str = "Authorization: Bearer lab-token";

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "TLS tests need root (network namespaces); run them through scripts/test.sh"
    );
}

fn tls_config(certs: &Certs, name: &str) -> TlsConfig {
    TlsConfig {
        mode: TlsMode::On,
        ca: Some(certs.ca()),
        cert: Some(certs.cert(name)),
        key: Some(certs.key(name)),
    }
}

fn start_peer(
    lab: &Lab,
    bin: &Path,
    state: &Path,
    certs: &Certs,
    host: &str,
    cert: &str,
    seed: bool,
) -> Result<PeerDaemon> {
    let dir = state.join(host);
    std::fs::create_dir_all(&dir)?;
    let args = certs.write_config(cert, &dir.join("peer.toml"))?;
    let scheduler = format!("https://{}:{SCHEDULER_PORT}", lab.ip("sched"));
    start_peer_with(lab, bin, &scheduler, &dir, host, seed, &[], &args)
}

fn get(
    lab: &Lab,
    bin: &Path,
    host: &str,
    peer: &PeerDaemon,
    url: &str,
    out: &Path,
) -> Result<damselfly_e2e::process::JobResult> {
    let mut cmd = Command::new(bin);
    cmd.arg("get")
        .arg(url)
        .arg("-o")
        .arg(out)
        .arg("--socket")
        .arg(&peer.socket)
        .args(["-H", TOKEN]);
    lab.start(host, "get", &cmd)?.wait(Duration::from_secs(120))
}

/// Announces a host to the scheduler over `channel`; the scheduler's answer decides.
async fn announce(channel: tonic::transport::Channel, seed: bool) -> Result<(), tonic::Status> {
    let mut client = SchedulerClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(HostMessage {
        msg: Some(host_message::Msg::Hello(HostInfo {
            host_id: "intruder".into(),
            ip: "10.0.0.1".into(),
            piece_port: 1,
            seed,
            ..Default::default()
        })),
    })
    .unwrap();
    let _keep = tx.clone();
    let mut replies = client
        .announce_host(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    // A refused stream ends with the scheduler's status; an admitted one stays open.
    match tokio::time::timeout(Duration::from_secs(2), replies.message()).await {
        Ok(Err(status)) => Err(status),
        _ => Ok(()),
    }
}

/// Says whether `Hello` + `Request(0)` on `addr` returns any piece bytes, over `tls` (or plain).
async fn piece_readable(addr: std::net::SocketAddr, tls: Option<&Tls>, task_id: &str) -> bool {
    // More than a small bitmap or an error frame: piece bytes came back.
    piece_reply(addr, tls, task_id).await.len() > 1024
}

/// What `addr` answers to `Hello` + `Request(0)` (up to a little over 1 KiB, for 5 s at most).
async fn piece_reply(addr: std::net::SocketAddr, tls: Option<&Tls>, task_id: &str) -> Vec<u8> {
    let mut hello = 1u16.to_be_bytes().to_vec();
    hello.extend_from_slice(format!("{task_id}\nintruder").as_bytes());
    let mut frames = vec![1u8];
    frames.extend_from_slice(&(hello.len() as u32).to_be_bytes());
    frames.extend_from_slice(&hello);
    frames.extend_from_slice(&[2, 0, 0, 0, 4, 0, 0, 0, 0]);
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    let read = async {
        match tls {
            None => {
                let mut s = tcp;
                s.write_all(&frames).await.ok()?;
                s.read_to_end(&mut buf).await.ok()
            }
            Some(tls) => {
                let mut s = tls.connect_piece(tcp).await.ok()?;
                s.write_all(&frames).await.ok()?;
                s.flush().await.ok()?;
                // Read until a Piece frame (kind 12) arrives or the connection ends.
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return Some(0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 1024 {
                        return Some(buf.len());
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    buf
}

#[test]
fn mutual_tls_keeps_strangers_and_false_seeds_out_and_get_works() -> Result<()> {
    require_root();
    let bin = bins::damselfly()?;
    let lab = Lab::new("dfttls1", 63, &["origin", "sched", "seed", "p1", "fake"], None)?;
    let dir = tempfile::tempdir()?;
    let certs = Certs::init(
        &bin,
        &dir.path().join("certs"),
        &["scheduler:sched", "seed:seed", "peer:p1", "peer:fake"],
    )?;
    let other = Certs::init(&bin, &dir.path().join("other-ca"), &["peer:stranger"])?;

    let file = dir.path().join("www/private/blob");
    std::fs::create_dir_all(file.parent().unwrap())?;
    write_random_file(&file, 3 * MIB + 17)?;
    let sha = sha256_file(&file)?;
    let origin = Origin::start(&lab, "origin", &dir.path().join("www"), ORIGIN_PORT)?;

    let sched_ip = lab.ip("sched");
    let sched_config = certs.write_config("sched", &dir.path().join("scheduler.toml"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("scheduler")
        .args(&sched_config)
        .arg("--listen")
        .arg(format!("{sched_ip}:{SCHEDULER_PORT}"))
        .arg("--metrics-listen")
        .arg(format!("{sched_ip}:{SCHEDULER_METRICS_PORT}"));
    let scheduler = lab.spawn("sched", "scheduler", &cmd)?;
    wait_for_tcp(sched_ip, SCHEDULER_PORT, Duration::from_secs(30))
        .with_context(|| format!("scheduler:\n{}", scheduler.log_tail(20)))?;

    let state = dir.path().join("state");
    let seed = start_peer(&lab, &bin, &state, &certs, "seed", "seed", true)?;
    let p1 = start_peer(&lab, &bin, &state, &certs, "p1", "p1", false)?;
    // A daemon whose certificate is a peer's, started as a seed.
    let fake = start_peer(&lab, &bin, &state, &certs, "fake", "fake", true)?;

    // 1. get works end to end with TLS on, with the origin's credential.
    let url = origin.url("private/blob");
    let out = dir.path().join("out");
    get(&lab, &bin, "p1", &p1, &url, &out)?.ensure_success()?;
    ensure!(sha256_file(&out)? == sha, "p1 got other bytes than the origin's");
    // ... from the seed over the piece protocol, through the ticket the scheduler issued it.
    // (The peer's metrics port is HTTPS with a client certificate under TLS.)
    let page = certs.https_text(
        "sched",
        "peer",
        lab.ip("p1"),
        damselfly_e2e::mesh::PEER_METRICS_PORT,
        "/metrics",
    )?;
    let from_peers = damselfly_e2e::managed::metric(&page, "damselfly_peer_peer_bytes_total");
    ensure!(
        from_peers.is_some_and(|b| b >= (3 * MIB + 17) as f64),
        "p1 did not get the file from the seed: {from_peers:?}"
    );
    // Again through the fake seed's daemon: it downloads as a peer (from the mesh).
    for i in 0..3 {
        let url = origin.url(&format!("private/blob?n={i}"));
        let out = dir.path().join(format!("out{i}"));
        get(&lab, &bin, "p1", &p1, &url, &out)?.ensure_success()?;
    }

    // 2. The fake seed was refused as a seed: the scheduler said so, and it holds no task.
    ensure!(
        fake.proc.log().contains("seed role"),
        "the fake seed's host stream was not refused for its role:\n{}",
        fake.proc.log_tail(30)
    );
    ensure!(
        !fake.proc.log().contains("lab-token"),
        "a credential reached the fake seed"
    );
    let fake_content = fake.data_dir.join("content");
    let held = std::fs::read_dir(&fake_content).map(|d| d.count()).unwrap_or(0);
    ensure!(
        held == 0,
        "the fake seed holds {held} tasks (was sent seed tasks)"
    );
    ensure!(seed.proc.is_running() && scheduler.is_running());

    // 3. The scheduler: no certificate, another CA's certificate, a peer claiming seed.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let addr = format!("https://{sched_ip}:{SCHEDULER_PORT}");
        let ep = || {
            damselfly_service::tls::endpoint(&addr)
                .unwrap()
                .connect_timeout(Duration::from_secs(3))
        };
        let ours = Tls::load(&tls_config(&certs, "fake")).await?.unwrap();
        let stranger = Tls::load(&tls_config(&other, "stranger")).await?.unwrap();
        ensure!(
            announce(
                damselfly_service::tls::channel(ep(), None, Role::Scheduler),
                false
            )
            .await
            .is_err(),
            "a client without TLS announced a host"
        );
        ensure!(
            announce(
                damselfly_service::tls::channel(ep(), Some(stranger.clone()), Role::Scheduler),
                false
            )
            .await
            .is_err(),
            "another CA's peer certificate announced a host"
        );
        let r = announce(
            damselfly_service::tls::channel(ep(), Some(ours.clone()), Role::Scheduler),
            true,
        )
        .await;
        ensure!(
            matches!(&r, Err(s) if s.code() == tonic::Code::PermissionDenied),
            "a peer certificate announced a seed: {r:?}"
        );
        // The same certificate as a plain peer gets in (the refusals above are not a broken setup).
        announce(
            damselfly_service::tls::channel(ep(), Some(ours.clone()), Role::Scheduler),
            false,
        )
        .await
        .map_err(|s| anyhow::anyhow!("a valid peer certificate was refused: {s}"))?;

        // 4. Piece ports of the seed and of p1: nothing without a certificate of this CA.
        let task_id = damselfly_proto::task_id::task_id(&url, None, "", "").unwrap();
        for host in ["seed", "p1"] {
            let addr = std::net::SocketAddr::from((lab.ip(host), PIECE_PORT));
            ensure!(
                !piece_readable(addr, None, &task_id).await,
                "{host}: plain client read a piece"
            );
            ensure!(
                !piece_readable(addr, Some(&stranger), &task_id).await,
                "{host}: another CA read a piece"
            );
            // A member of the CA that never registered for the task holds no piece ticket
            // for it (p1's gets above read through tickets: the mesh works with them).
            let reply = piece_reply(addr, Some(&ours), &task_id).await;
            ensure!(
                String::from_utf8_lossy(&reply).contains("ticket refused"),
                "{host}: a member without a ticket was not refused for it: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

/// Replaces `node`'s files in `live` (ca.pem, NAME.pem, NAME-key.pem) with those of `fresh`,
/// each by a rename, as an operator's rotation would.
fn rotate(live: &Certs, fresh: &Certs, nodes: &[&str]) -> Result<()> {
    let mut files = vec![(fresh.ca(), live.ca())];
    for n in nodes {
        files.push((fresh.cert(n), live.cert(n)));
        files.push((fresh.key(n), live.key(n)));
    }
    for (from, to) in files {
        let tmp = to.with_extension("new");
        std::fs::copy(&from, &tmp).with_context(|| format!("copy {}", from.display()))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("replace {}", to.display()))?;
    }
    Ok(())
}

/// Test 6 of issue 12: certificates rotated (files replaced: a new CA and new certificates
/// for every node) while a swarm runs. Every daemon reloads them; new connections use the new
/// ones (a client of the old CA is refused by the scheduler and the piece ports, one of the
/// new CA is admitted); the downloads that ran across the change finish with the origin's
/// bytes, and a get started after it works through the mesh. Octet 150; needs root.
#[test]
fn certificates_rotated_while_a_swarm_runs_take_over_and_the_swarm_finishes() -> Result<()> {
    require_root();
    let bin = bins::damselfly()?;
    let hosts = ["origin", "sched", "seed", "p1", "p2", "p3"];
    let lab = Lab::new("dftr1", 150, &hosts, Some("20mbit"))?;
    let dir = tempfile::tempdir()?;
    let nodes = [
        "scheduler:sched",
        "seed:seed",
        "peer:p1",
        "peer:p2",
        "peer:p3",
        "peer:probe",
    ];
    let names = ["sched", "seed", "p1", "p2", "p3", "probe"];
    let live = Certs::init(&bin, &dir.path().join("certs"), &nodes)?;
    // The first generation, kept for a probe after the rotation.
    let old = live.copy_to(&dir.path().join("old"), &names)?;
    let fresh = Certs::init(&bin, &dir.path().join("fresh"), &nodes)?;

    let size = 24 * MIB + 5;
    let file = dir.path().join("www/private/big");
    std::fs::create_dir_all(file.parent().unwrap())?;
    write_random_file(&file, size)?;
    let sha = sha256_file(&file)?;
    let origin = Origin::start(&lab, "origin", &dir.path().join("www"), ORIGIN_PORT)?;

    let sched_ip = lab.ip("sched");
    let sched_config = live.write_config("sched", &dir.path().join("scheduler.toml"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("scheduler")
        .args(&sched_config)
        .arg("--listen")
        .arg(format!("{sched_ip}:{SCHEDULER_PORT}"))
        .arg("--metrics-listen")
        .arg(format!("{sched_ip}:{SCHEDULER_METRICS_PORT}"));
    let scheduler = lab.spawn("sched", "scheduler", &cmd)?;
    wait_for_tcp(sched_ip, SCHEDULER_PORT, Duration::from_secs(30))
        .with_context(|| format!("scheduler:\n{}", scheduler.log_tail(20)))?;
    let state = dir.path().join("state");
    let seed = start_peer(&lab, &bin, &state, &live, "seed", "seed", true)?;
    let mut peers = Vec::new();
    for p in ["p1", "p2", "p3"] {
        peers.push((p, start_peer(&lab, &bin, &state, &live, p, p, false)?));
    }

    // The swarm: three gets of one 24 MiB file on 20 Mbit/s links (about 10 s from the origin).
    let url = origin.url("private/big");
    let mut jobs = Vec::new();
    for (p, peer) in &peers {
        let mut cmd = Command::new(&bin);
        cmd.arg("get")
            .arg(&url)
            .arg("-o")
            .arg(dir.path().join(format!("out-{p}")))
            .arg("--socket")
            .arg(&peer.socket)
            .args(["-H", TOKEN]);
        jobs.push(lab.start(p, "get", &cmd)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    for j in &mut jobs {
        ensure!(
            j.poll()?.is_none(),
            "a get finished before the rotation: the swarm is too short for this test"
        );
    }
    rotate(&live, &fresh, &names)?;

    // Every daemon reloads within its 5 s poll.
    let daemons: Vec<(&str, &damselfly_e2e::process::Proc)> = [("sched", &scheduler), ("seed", &seed.proc)]
        .into_iter()
        .chain(peers.iter().map(|(p, d)| (*p, &d.proc)))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (name, proc) in &daemons {
        while !proc.log().contains("TLS certificates reloaded") {
            ensure!(
                std::time::Instant::now() < deadline,
                "{name} did not reload its certificates:\n{}",
                proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut reloaded_before_done = 0;
    for j in &mut jobs {
        if j.poll()?.is_none() {
            reloaded_before_done += 1;
        }
    }
    ensure!(
        reloaded_before_done > 0,
        "every get finished before all daemons reloaded: nothing ran across the rotation"
    );

    // New connections use the new files: the old CA's certificate is refused, the new one's
    // admitted, at the scheduler and at the piece ports.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let addr = format!("https://{sched_ip}:{SCHEDULER_PORT}");
        let ep = || {
            damselfly_service::tls::endpoint(&addr)
                .unwrap()
                .connect_timeout(Duration::from_secs(3))
        };
        let before = Tls::load(&tls_config(&old, "probe")).await?.unwrap();
        let after = Tls::load(&tls_config(&fresh, "probe")).await?.unwrap();
        ensure!(
            announce(
                damselfly_service::tls::channel(ep(), Some(before.clone()), Role::Scheduler),
                false
            )
            .await
            .is_err(),
            "the scheduler still admits the old CA's certificates"
        );
        announce(
            damselfly_service::tls::channel(ep(), Some(after.clone()), Role::Scheduler),
            false,
        )
        .await
        .map_err(|s| anyhow::anyhow!("the scheduler refused the new CA's certificate: {s}"))?;
        let task_id = damselfly_proto::task_id::task_id(&url, None, "", "").unwrap();
        for host in ["seed", "p1"] {
            let addr = std::net::SocketAddr::from((lab.ip(host), PIECE_PORT));
            let old_reply = piece_reply(addr, Some(&before), &task_id).await;
            ensure!(
                old_reply.is_empty(),
                "{host}: the old CA's certificate got an answer on the piece port"
            );
            // The new CA's member gets past TLS to the ticket check (it holds no ticket).
            let reply = piece_reply(addr, Some(&after), &task_id).await;
            ensure!(
                String::from_utf8_lossy(&reply).contains("ticket refused"),
                "{host}: the new CA's certificate did not get through TLS: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;

    // The swarm finishes with the origin's bytes.
    for (j, (p, _)) in jobs.iter_mut().zip(&peers) {
        j.wait(Duration::from_secs(120))?
            .ensure_success()
            .with_context(|| format!("the get on {p}"))?;
        ensure!(
            sha256_file(&dir.path().join(format!("out-{p}")))? == sha,
            "{p} got other bytes than the origin's"
        );
    }
    // A get after the rotation, all connections new: through the mesh (from the others).
    let url2 = origin.url("private/big?after=rotation");
    let out = dir.path().join("out-after");
    let (_, p3) = &peers[2];
    let from_peers_before = peer_bytes(&live, &lab, "p3")?;
    get(&lab, &bin, "p3", p3, &url2, &out)?.ensure_success()?;
    ensure!(
        sha256_file(&out)? == sha,
        "the get after the rotation got other bytes"
    );
    ensure!(
        peer_bytes(&live, &lab, "p3")? - from_peers_before >= size as f64,
        "the get after the rotation did not come through the mesh"
    );
    ensure!(scheduler.is_running() && seed.proc.is_running());
    Ok(())
}

/// A peer's `damselfly_peer_peer_bytes_total`, over HTTPS as the probe's certificate of
/// `certs` (the metrics port reloads rotated certificates like the others).
fn peer_bytes(certs: &Certs, lab: &Lab, host: &str) -> Result<f64> {
    let page = certs.https_text(
        "probe",
        "peer",
        lab.ip(host),
        damselfly_e2e::mesh::PEER_METRICS_PORT,
        "/metrics",
    )?;
    Ok(damselfly_e2e::managed::metric(&page, "damselfly_peer_peer_bytes_total").unwrap_or(0.0))
}

/// The manager authorizes by certificate (TLS on): a peer certificate cannot register as a
/// scheduler or open a seed session; a scheduler certificate can register, but another
/// scheduler's certificate can neither keep that instance alive, report traffic for it, nor
/// register again under its hostname and address. The owner itself goes on as before. Octet
/// 151; needs root.
#[test]
fn the_manager_lets_each_certificate_act_only_as_its_own_role_and_instance() -> Result<()> {
    use damselfly_proto::manager as pb;
    use pb::manager_client::ManagerClient;
    require_root();
    let bin = bins::damselfly()?;
    let lab = Lab::new("dftr2", 151, &["mgr"], None)?;
    let dir = tempfile::tempdir()?;
    let certs = Certs::init(
        &bin,
        &dir.path().join("certs"),
        &[
            "manager:mgr",
            "scheduler:s1",
            "scheduler:s2",
            "peer:p1",
            "seed:seed1",
        ],
    )?;
    let manager = damselfly_e2e::managed::Manager::start_tls(&lab, &bin, "mgr", &certs, "")?;
    let addr = format!(
        "https://{}:{}",
        manager.ip,
        damselfly_e2e::managed::MANAGER_GRPC_PORT
    );
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let client = |name: &'static str| {
            let certs = certs.clone();
            let addr = addr.clone();
            async move {
                let tls = Tls::load(&tls_config(&certs, name)).await?.unwrap();
                let ep = damselfly_service::tls::endpoint(&addr)?.connect_timeout(Duration::from_secs(3));
                anyhow::Ok(ManagerClient::new(damselfly_service::tls::channel(
                    ep,
                    Some(tls),
                    Role::Manager,
                )))
            }
        };
        let denied = |r: Result<(), tonic::Status>, what: &str| match r {
            Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(()),
            other => Err(anyhow::anyhow!(
                "{what}: not refused for its certificate: {other:?}"
            )),
        };
        let reg = pb::RegisterSchedulerRequest {
            hostname: "s1".into(),
            ip: "10.0.0.5".into(),
            port: 8002,
            ..Default::default()
        };
        let (mut s1, mut s2, mut p1, mut seed1) = (
            client("s1").await?,
            client("s2").await?,
            client("p1").await?,
            client("seed1").await?,
        );

        // A peer certificate is no scheduler.
        denied(
            p1.register_scheduler(reg.clone()).await.map(|_| ()),
            "a peer registering a scheduler",
        )?;
        // The scheduler's own certificate registers it.
        let iid = s1
            .register_scheduler(reg.clone())
            .await
            .map_err(|s| anyhow::anyhow!("s1 refused: {s}"))?
            .into_inner()
            .instance_id;
        // Another scheduler's certificate cannot take that instance over.
        denied(
            s2.register_scheduler(reg.clone()).await.map(|_| ()),
            "s2 registering s1's instance",
        )?;
        let keepalive = |c: &mut ManagerClient<tonic::transport::Channel>| {
            let mut c = c.clone();
            async move {
                let ka = pb::KeepAliveRequest { instance_id: iid };
                c.keep_alive(tokio_stream::iter(vec![ka])).await
            }
        };
        denied(
            keepalive(&mut s2).await.map(|_| ()),
            "s2 keeping s1's instance alive",
        )?;
        denied(
            keepalive(&mut p1).await.map(|_| ()),
            "a peer keeping a scheduler alive",
        )?;
        keepalive(&mut s1)
            .await
            .map_err(|s| anyhow::anyhow!("s1's own keepalive refused: {s}"))?;
        let traffic = pb::ReportTrafficRequest {
            instance_id: iid,
            scheduler_cluster_id: 1,
            ..Default::default()
        };
        denied(
            s2.report_traffic(traffic).await.map(|_| ()),
            "s2 reporting traffic as s1",
        )?;
        // A peer certificate opens no seed session; a seed certificate does.
        let hello = pb::SeedPeerMessage {
            message: Some(pb::seed_peer_message::Message::Hello(pb::SeedPeerHello {
                hostname: "x".into(),
                ip: "10.0.0.9".into(),
                port: 4001,
                ..Default::default()
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello.clone()).await?;
        denied(
            p1.seed_peer_session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|_| ()),
            "a peer opening a seed session",
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello).await?;
        let mut welcome = seed1
            .seed_peer_session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| anyhow::anyhow!("the seed's session refused: {s}"))?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), welcome.message()).await;
        ensure!(
            matches!(first, Ok(Ok(Some(_)))),
            "the seed's session was not welcomed: {first:?}"
        );
        drop(tx);
        Ok::<_, anyhow::Error>(())
    })?;
    ensure!(manager.proc.is_running());
    Ok(())
}
