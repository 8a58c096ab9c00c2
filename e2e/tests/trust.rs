//! Hosts that lie, end to end: a rogue registrant on the lab network, with a
//! small client of its own for the scheduler's streams and the piece
//! protocol, against the real `damselfly` binary in network namespaces.
//! Octets 60-62 and 64-69; needs root.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::{Mesh, PIECE_PORT, SCHEDULER_METRICS_PORT, SCHEDULER_PORT};
use damselfly_e2e::origin::Origin;
use damselfly_proto::scheduler::scheduler_client::SchedulerClient;
use damselfly_proto::scheduler::{
    Finished, HostInfo, HostMessage, PieceDigest, PiecesDone, Register, SourceInfo, StoredTask, StoredTasks,
    TaskMessage, TaskSpec, host_message, task_message,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const MIB: u64 = 1024 * 1024;
const ORIGIN_PORT: u16 = 8080;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "trust tests need root (network namespaces); run them through scripts/test.sh"
    );
}

/// One piece-protocol frame: kind, big-endian length, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HELLO: u8 = 1;
const REQUEST: u8 = 2;
const BITMAP: u8 = 10;
const HAVE: u8 = 11;
const PIECE: u8 = 12;

/// A rogue parent: to each child that connects it sends, in turn, a bitmap
/// sized for 2^32 pieces, or a plausible bitmap followed by out-of-range
/// `Have`s and pieces (out of range, and garbage for what was asked).
async fn rogue_parent(listener: tokio::net::TcpListener, pieces: u32, hellos: Arc<AtomicUsize>) {
    let mut n = 0usize;
    while let Ok((mut s, _)) = listener.accept().await {
        n += 1;
        let hellos = hellos.clone();
        tokio::spawn(async move {
            let mut head = [0u8; 5];
            if s.read_exact(&mut head).await.is_err() || head[0] != HELLO {
                return;
            }
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len.min(4096)];
            if s.read_exact(&mut body).await.is_err() {
                return;
            }
            hellos.fetch_add(1, Ordering::SeqCst);
            let mut out = Vec::new();
            if n % 2 == 1 {
                let mut p = u32::MAX.to_be_bytes().to_vec();
                p.extend(vec![0xff; 1 << 20]);
                out.extend(frame(BITMAP, &p));
            } else {
                let mut p = pieces.to_be_bytes().to_vec();
                p.extend(vec![0xff; (pieces as usize).div_ceil(8)]);
                out.extend(frame(BITMAP, &p));
                let have: Vec<u8> = [u32::MAX, pieces, 1 << 30]
                    .iter()
                    .flat_map(|i| i.to_be_bytes())
                    .collect();
                out.extend(frame(HAVE, &have));
                let mut piece = u32::MAX.to_be_bytes().to_vec();
                piece.extend(vec![7u8; 1024]);
                out.extend(frame(PIECE, &piece));
            }
            if s.write_all(&out).await.is_err() {
                return;
            }
            // Answer every request with garbage of the right size.
            let mut req = [0u8; 9];
            while s.read_exact(&mut req).await.is_ok() && req[0] == REQUEST {
                let mut p = req[5..9].to_vec();
                p.extend(vec![0xa5u8; 256 * 1024]);
                if s.write_all(&frame(PIECE, &p)).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn msg(m: task_message::Msg) -> TaskMessage {
    TaskMessage { msg: Some(m) }
}

/// Registers on the scheduler; the open sender keeps the stream alive.
async fn register(
    client: &mut SchedulerClient<tonic::transport::Channel>,
    reg: Register,
    then: Vec<task_message::Msg>,
) -> Result<mpsc::UnboundedSender<TaskMessage>, tonic::Status> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(msg(task_message::Msg::Register(reg))).unwrap();
    for m in then {
        tx.send(msg(m)).unwrap();
    }
    let resp = client.announce_task(UnboundedReceiverStream::new(rx)).await?;
    let mut replies = resp.into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = replies.message().await {} });
    Ok(tx)
}

/// One mesh with its origin in a lab.
struct Setup {
    mesh: Mesh,
    origin: Origin,
    lab: Lab,
    dir: tempfile::TempDir,
    sha: String,
}

/// origin, sched, seed and p1, with a random file of `size` bytes at `path` on the origin.
fn setup(prefix: &str, octet: u8, path: &str, size: u64) -> Result<Setup> {
    require_root();
    let lab = Lab::new(prefix, octet, &["origin", "sched", "seed", "p1"], None)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("www").join(path);
    std::fs::create_dir_all(file.parent().expect("a file in www"))?;
    write_random_file(&file, size)?;
    let sha = sha256_file(&file)?;
    let origin = Origin::start(&lab, "origin", &dir.path().join("www"), ORIGIN_PORT)?;
    let state = dir.path().join("state");
    let mesh = Mesh::start(&lab, &bins::damselfly()?, &state, "sched", "seed", &["p1"])?;
    Ok(Setup {
        mesh,
        origin,
        lab,
        dir,
        sha,
    })
}

#[test]
fn a_rogue_registrant_is_refused_and_the_real_download_gets_the_origins_bytes() -> Result<()> {
    let size = 4 * MIB + 123;
    let Setup {
        lab,
        dir,
        origin,
        mesh,
        sha,
    } = setup("dftrust1", 60, "blob", size)?;
    let url = origin.url("blob");
    let id = damselfly_proto::task_id::task_id(&url, None, "", "").unwrap();
    let pieces = size.div_ceil(256 * 1024) as u32;

    let rt = tokio::runtime::Runtime::new()?;
    let hellos = Arc::new(AtomicUsize::new(0));
    let (_host_tx, _regs) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((lab.gateway(), 0)).await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(rogue_parent(listener, pieces, hellos.clone()));
        let endpoint = format!("http://{}:{SCHEDULER_PORT}", lab.ip("sched"));
        let mut client = SchedulerClient::connect(endpoint).await?;
        let (host_tx, host_rx) = mpsc::unbounded_channel();
        host_tx.send(HostMessage {
            msg: Some(host_message::Msg::Hello(HostInfo {
                host_id: "rogue".into(),
                hostname: "rogue".into(),
                ip: lab.gateway().to_string(),
                piece_port: port as u32,
                upload_slots: 100,
                ..Default::default()
            })),
        })?;
        // Stored tasks with absurd layouts: ignored.
        host_tx.send(HostMessage {
            msg: Some(host_message::Msg::Stored(StoredTasks {
                tasks: vec![StoredTask {
                    task_id: id.clone(),
                    content_length: u64::MAX,
                    piece_length: 1,
                    cache: None,
                }],
            })),
        })?;
        let mut commands = client
            .announce_host(UnboundedReceiverStream::new(host_rx))
            .await?
            .into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = commands.message().await {} });

        let spec = TaskSpec {
            task_id: id.clone(),
            url: url.clone(),
            ..Default::default()
        };
        let base = Register {
            host_id: "rogue".into(),
            peer_id: "rogue-1".into(),
            spec: Some(spec.clone()),
            ..Default::default()
        };
        // Absurd layouts and bitmaps: refused at the door.
        for (content_length, piece_length, bitmap) in [
            (u32::MAX as u64, 1, vec![]),
            (1 << 32, 1, vec![]),
            (1 << 63, 256 * 1024, vec![]),
            (4 * MIB, 256 * 1024, vec![0xff; 1 << 20]),
            (1 << 40, 64 * 1024, vec![]),
        ] {
            let r = Register {
                content_length,
                piece_length,
                bitmap,
                from_source: true,
                ..base.clone()
            };
            let status = register(&mut client, r, vec![])
                .await
                .err()
                .context("absurd layout accepted")?;
            ensure!(status.code() == tonic::Code::InvalidArgument, "{status}");
        }
        // Another URL under the real task's id: refused.
        let evil = Register {
            spec: Some(TaskSpec {
                url: format!("http://{}:{port}/evil", lab.gateway()),
                ..spec.clone()
            }),
            ..base.clone()
        };
        let status = register(&mut client, evil, vec![])
            .await
            .err()
            .context("foreign URL accepted")?;
        ensure!(status.code() == tonic::Code::InvalidArgument, "{status}");
        // A plausible wrong layout (2^32 bytes) claimed as a source, with
        // digests of its own and out-of-range indexes: it is no source, so
        // nothing of it counts; then it says it is done, to be a parent.
        let liar = Register {
            content_length: 1 << 32,
            piece_length: 64 * 1024,
            bitmap: vec![0xff; (1usize << 16) / 8],
            from_source: true,
            ..base.clone()
        };
        let fake = PiecesDone {
            pieces: [0, 1, pieces, u32::MAX]
                .into_iter()
                .map(|index| PieceDigest {
                    index,
                    sha256: vec![9; 32],
                })
                .collect(),
            ..Default::default()
        };
        let liar_tx = register(
            &mut client,
            liar,
            vec![
                task_message::Msg::SourceInfo(SourceInfo {
                    content_length: 1 << 32,
                    piece_length: 64 * 1024,
                }),
                task_message::Msg::Pieces(fake),
            ],
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        liar_tx.send(msg(task_message::Msg::Finished(Finished::default())))?;

        // As a child: out-of-range requests to the seed's piece port.
        let mut s = tokio::net::TcpStream::connect((lab.ip("seed"), PIECE_PORT)).await?;
        let mut out = frame(HELLO, format!("{id}\nrogue-child").as_bytes());
        for i in [u32::MAX, pieces, 1 << 31] {
            out.extend(frame(REQUEST, &i.to_be_bytes()));
        }
        s.write_all(&out).await?;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        anyhow::Ok((host_tx, liar_tx))
    })?;

    let out = dir.path().join("out-p1");
    let mut get = mesh.start_get(&lab, "p1", &url, &out)?;
    get.wait(Duration::from_secs(120))?.ensure_success()?;
    assert_eq!(sha256_file(&out)?, sha, "p1 got the origin's bytes");
    assert_eq!(std::fs::metadata(&out)?.len(), size);
    for (name, proc) in [
        ("scheduler", &mesh.scheduler),
        ("seed", &mesh.seed.proc),
        ("p1", &mesh.peer("p1").proc),
    ] {
        assert!(proc.is_running(), "{name} crashed:\n{}", proc.log_tail(20));
    }
    let view: serde_json::Value = serde_json::from_str(&lab.run_ok(
        "sched",
        std::process::Command::new("curl").args([
            "-sf",
            &format!("http://{}:{SCHEDULER_METRICS_PORT}/tasks/{id}", lab.ip("sched")),
        ]),
    )?)?;
    assert_eq!(
        view["content_length"], size,
        "the task's layout is the origin's: {view}"
    );
    eprintln!(
        "rogue parent saw {} connection(s) from children",
        hellos.load(Ordering::SeqCst)
    );
    drop(rt);
    Ok(())
}

/// Announces a non-seed host `rogue` and registers `urls` as tasks (each with
/// the id its spec derives); returns the open streams.
async fn register_urls(lab: &Lab, urls: &[String]) -> Result<Vec<mpsc::UnboundedSender<TaskMessage>>> {
    let endpoint = format!("http://{}:{SCHEDULER_PORT}", lab.ip("sched"));
    let mut client = SchedulerClient::connect(endpoint).await?;
    let (host_tx, host_rx) = mpsc::unbounded_channel();
    host_tx.send(HostMessage {
        msg: Some(host_message::Msg::Hello(HostInfo {
            host_id: "rogue".into(),
            ip: lab.gateway().to_string(),
            piece_port: 1,
            ..Default::default()
        })),
    })?;
    let mut commands = client
        .announce_host(UnboundedReceiverStream::new(host_rx))
        .await?
        .into_inner();
    tokio::spawn(async move {
        let _keep = host_tx;
        while let Ok(Some(_)) = commands.message().await {}
    });
    let mut open = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let mut headers = std::collections::HashMap::new();
        headers.insert("X-Rogue".to_string(), "1".to_string());
        let reg = Register {
            host_id: "rogue".into(),
            peer_id: format!("rogue-{i}"),
            spec: Some(TaskSpec {
                task_id: damselfly_proto::task_id::task_id(url, None, "", "").unwrap(),
                url: url.clone(),
                headers,
                ..Default::default()
            }),
            ..Default::default()
        };
        open.push(register(&mut client, reg, vec![]).await?);
    }
    Ok(open)
}

#[test]
fn a_seed_does_not_fetch_its_own_loopback_or_link_local_addresses() -> Result<()> {
    require_root();
    let lab = Lab::new("dftrust2", 61, &["sched", "seed"], None)?;
    let dir = tempfile::tempdir()?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("secret"), b"the seed's own secret")?;
    std::fs::write(www.join("ready"), b"")?;
    let mut cmd = std::process::Command::new(bins::origin()?);
    cmd.arg("--dir").arg(&www).arg("--listen").arg("127.0.0.1:9999");
    let secret = lab.spawn("seed", "secret", &cmd)?;
    damselfly_e2e::wait::wait_for("the seed's loopback service", Duration::from_secs(10), || {
        lab.run(
            "seed",
            std::process::Command::new("curl").args(["-sf", "http://127.0.0.1:9999/ready"]),
        )
        .is_ok_and(|o| o.status.success())
    })?;
    let mesh = Mesh::start(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state"),
        "sched",
        "seed",
        &[],
    )?;
    let urls = [
        "http://127.0.0.1:9999/secret".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://{}:{SCHEDULER_METRICS_PORT}/metrics", lab.ip("sched")),
    ];
    let rt = tokio::runtime::Runtime::new()?;
    let _open = rt.block_on(register_urls(&lab, &urls))?;
    damselfly_e2e::wait::wait_for(
        "the seed to refuse every trigger",
        Duration::from_secs(30),
        || mesh.seed.proc.log().matches("seed trigger refused").count() >= urls.len(),
    )?;
    let asked: Vec<_> = damselfly_e2e::origin::parse_requests(&secret.log())
        .into_iter()
        .filter(|r| !r.path.contains("ready"))
        .collect();
    assert!(asked.is_empty(), "the seed fetched from its loopback: {asked:?}");
    let log = mesh.seed.proc.log() + &mesh.scheduler.log();
    assert!(
        !log.contains("X-Rogue") && !log.contains("x-rogue"),
        "headers never logged"
    );
    // The seed holds none of these tasks: its piece port says so.
    let id = damselfly_proto::task_id::task_id(&urls[0], None, "", "").unwrap();
    let reply = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect((lab.ip("seed"), PIECE_PORT)).await?;
        let hello = [&1u16.to_be_bytes()[..], format!("{id}\nrogue").as_bytes()].concat();
        s.write_all(&frame(HELLO, &hello)).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
        anyhow::Ok(buf)
    })?;
    assert!(
        String::from_utf8_lossy(&reply).contains("not here"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // The scheduler kept no origin header of the task it relayed to the seed.
    let view = lab.run_ok(
        "sched",
        std::process::Command::new("curl").args([
            "-sf",
            &format!("http://{}:{SCHEDULER_METRICS_PORT}/tasks/{id}", lab.ip("sched")),
        ]),
    )?;
    assert!(
        view.contains(&id) && !view.to_ascii_lowercase().contains("x-rogue"),
        "{view}"
    );
    assert!(mesh.seed.proc.is_running() && mesh.scheduler.is_running());
    Ok(())
}

#[test]
fn origin_errors_reach_get_with_their_kind_and_url() -> Result<()> {
    let Setup {
        lab,
        dir,
        origin,
        mesh,
        sha,
    } = setup("dftrust3", 62, "private/blob", MIB)?;
    let get = |url: &str, header: Option<&str>| -> Result<damselfly_e2e::process::JobResult> {
        let mut cmd = mesh.get_command("p1", url, &dir.path().join("out"));
        if let Some(h) = header {
            cmd.arg("-H").arg(h);
        }
        lab.start("p1", "get", &cmd)?.wait(Duration::from_secs(120))
    };
    for (path, header, kind) in [
        ("missing.bin", None, "not found"),
        ("private/blob", None, "permission denied"),
        (
            "private/blob",
            Some("Authorization: Bearer wrong"),
            "permission denied",
        ),
    ] {
        let url = origin.url(path);
        let r = get(&url, header)?;
        ensure!(!r.success(), "get {url} succeeded");
        let log = std::fs::read_to_string(&r.log)?;
        ensure!(
            log.contains(&format!("{kind}: ")) && log.contains(&url),
            "get {url}: expected {kind:?} naming the URL, got:\n{log}"
        );
    }
    // A digest that is not the content's: data loss, and no output.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let mut cmd = mesh.get_command("p1", &origin.url("private/blob"), &dir.path().join("bad"));
    cmd.args(["-H", "Authorization: Bearer lab-token", "--digest", &wrong]);
    let r = lab.start("p1", "get", &cmd)?.wait(Duration::from_secs(120))?;
    let log = std::fs::read_to_string(&r.log)?;
    ensure!(
        !r.success() && log.contains("data loss: "),
        "wrong digest:\n{log}"
    );
    ensure!(
        !dir.path().join("bad").exists(),
        "no output for a mismatched digest"
    );
    let ok = get(
        &origin.url("private/blob"),
        Some("Authorization: Bearer lab-token"),
    )?;
    ok.ensure_success()?;
    assert_eq!(sha256_file(&dir.path().join("out"))?, sha);
    Ok(())
}

/// A parent at its upload limit (the cluster's `peer_upload_concurrency`, here 1) turns a
/// child away as busy: the child is neither sent to the origin nor told to avoid it, and
/// once its slot is free the parent serves that child the whole task.
#[test]
fn a_busy_parent_is_not_blocklisted_and_serves_once_a_slot_is_free() -> Result<()> {
    use damselfly_e2e::managed::{Manager, Peer, Scheduler};
    require_root();
    const CHANGE: Duration = Duration::from_secs(20);
    let lab = Lab::new(
        "dftrust5",
        64,
        &["mgr", "sched", "seed", "p1", "p2", "origin"],
        None,
    )?;
    let bin = bins::damselfly()?;
    let dir = tempfile::tempdir()?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    write_random_file(&www.join("a"), MIB)?;
    let size_b = 4 * MIB + 5;
    write_random_file(&www.join("b"), size_b)?;
    let sha_b = sha256_file(&www.join("b"))?;
    let origin = Origin::start(&lab, "origin", &www, ORIGIN_PORT)?;
    let manager = Manager::start(&lab, &bin, "mgr", "")?;
    let m = manager.grpc_url();
    let sched = Scheduler::start(&lab, &bin, "sched", &m)?;
    manager.wait_state("scheduler", "sched", "active", CHANGE)?;
    let seed = Peer::start(&lab, &bin, "seed", &m, true, "")?;
    let p1 = Peer::start(&lab, &bin, "p1", &m, false, "")?;
    let p2 = Peer::start(&lab, &bin, "p2", &m, false, "")?;
    manager.wait_state("seed_peer", "seed", "active", CHANGE)?;
    let cluster = sched.config_view()?["manager"]["cluster_id"]
        .as_u64()
        .context("cluster id")?;
    manager.api(
        "PATCH",
        &format!("/api/v1/clusters/{cluster}"),
        Some(&serde_json::json!({"settings": {"candidate_parent_limit": 4,
            "filter_parent_limit": 40, "peer_upload_concurrency": 1,
            "peer_download_concurrency": 32, "min_piece_length": 256 * 1024,
            "max_piece_length": 16 * MIB}})),
    )?;
    for p in [&seed, &p1, &p2] {
        damselfly_e2e::wait::wait_for(&format!("{}'s upload limit", p.host), CHANGE, || {
            p.metric("damselfly_peer_upload_concurrency") == Some(1.0) && p.schedulers() == Some(1)
        })?;
    }
    // p2 gets a through the seed, then leaves the seed's one slot free.
    p2.start_get(&lab, &bin, &origin.url("a"), &dir.path().join("a"), &[])?
        .wait(Duration::from_secs(120))?
        .ensure_success()?;
    damselfly_e2e::wait::wait_for("the seed's slot to be free", CHANGE, || {
        seed.metric("damselfly_peer_active_uploads") == Some(0.0)
    })?;
    // A child of its own takes that slot: Hello for a, then no request.
    let id_a = damselfly_proto::task_id::task_id(&origin.url("a"), None, "", "").unwrap();
    let rt = tokio::runtime::Runtime::new()?;
    let holder = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect((lab.ip("seed"), PIECE_PORT)).await?;
        let hello = [&1u16.to_be_bytes()[..], format!("{id_a}\nholder").as_bytes()].concat();
        s.write_all(&frame(HELLO, &hello)).await?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await?;
        ensure!(
            head[0] == BITMAP,
            "the seed did not take the holder: frame {}",
            head[0]
        );
        anyhow::Ok(s)
    })?;
    ensure!(seed.metric("damselfly_peer_active_uploads") == Some(1.0));

    // p1 gets b, which only the seed holds: turned away as busy while the holder stays.
    let busy = |p: &Peer| p.metric(r#"damselfly_peer_pieces_failed_total{reason="busy"}"#);
    let mut get = p1.start_get(&lab, &bin, &origin.url("b"), &dir.path().join("b"), &[])?;
    damselfly_e2e::wait::wait_for("p1 to be turned away as busy", Duration::from_secs(60), || {
        busy(&p1).is_some_and(|n| n >= 1.0)
    })?;
    let id_b = damselfly_proto::task_id::task_id(&origin.url("b"), None, "", "").unwrap();
    let view = sched.task_view(&id_b).context("task b on the scheduler")?;
    for p in view["peers"].as_array().context("peers")? {
        ensure!(
            p["blocklist"].as_array().is_some_and(Vec::is_empty),
            "a busy parent was blocklisted: {view}"
        );
    }
    // The slot frees: the seed serves p1 the whole task.
    rt.block_on(async move { drop(holder) });
    get.wait(Duration::from_secs(120))?.ensure_success()?;
    ensure!(sha256_file(&dir.path().join("b"))? == sha_b, "p1 got other bytes");
    let p1_at_origin = origin
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/b") && r.from.starts_with(&format!("{}:", lab.ip("p1"))))
        .count();
    ensure!(p1_at_origin == 0, "p1 went to the origin for b");
    ensure!(
        p1.metric("damselfly_peer_peer_bytes_total")
            .is_some_and(|n| n >= size_b as f64),
        "p1 got b from its parent"
    );
    let view = sched.task_view(&id_b).context("task b on the scheduler")?;
    for p in view["peers"].as_array().context("peers")? {
        ensure!(
            p["blocklist"].as_array().is_some_and(Vec::is_empty),
            "a busy parent was blocklisted: {view}"
        );
    }
    eprintln!("p1 was turned away {:?} time(s) before the slot freed", busy(&p1));
    Ok(())
}

/// The lab of [`private_pull`], the credential's forms and the layers' task ids.
type PrivatePull = (damselfly_e2e::mirror::MirrorLab, [String; 2], Vec<String>);

/// A private image pulled with credentials (basic auth) through one node's registry proxy,
/// in a lab of `prefix`/`octet`; returns the lab once the seed fetched every layer, the
/// credential's forms (the password, and its Basic encoding as the proxy and seed send it) and
/// the layers' task ids. `None`: a program the mirror tests need (containerd, docker-registry,
/// umoci, skopeo, busybox-static, htpasswd) is missing (a failure under `DAMSELFLY_REQUIRE_LAB=1`).
fn private_pull(prefix: &str, octet: u8) -> Result<Option<PrivatePull>> {
    use damselfly_e2e::mirror::{MirrorLab, MirrorOptions};
    use damselfly_e2e::oci::{missing_programs, which};
    require_root();
    let mut missing = missing_programs();
    if which("htpasswd").is_none() {
        missing.push("htpasswd");
    }
    if !missing.is_empty() {
        let msg = format!("credential trace: SKIPPED, missing {}", missing.join(", "));
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
        return Ok(None);
    }
    let (user, password) = ("trace-user", "trace-pass-5f3a9c");
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{user}:{password}"),
    );
    let opts = MirrorOptions {
        prefix: prefix.into(),
        subnet: octet,
        peers: 1,
        layers: 1,
        layer_bytes: 2 * MIB,
        rate: None,
        bin: bins::damselfly()?,
        credentials: Some(format!("{user}:{password}")),
        tls: true,
    };
    let m = MirrorLab::start(&opts, |line| eprintln!("credential trace: {line}"))?;
    m.pull_all()?;
    let seed_ip = m.lab.ip("seed").to_string();
    let mut ids = Vec::new();
    for (digest, _, gets) in m.blob_gets() {
        // With the credential (the registry answers 401 without it): the seed got it.
        ensure!(
            gets.iter()
                .any(|g| g.client == seed_ip && (200..300).contains(&g.status)),
            "the seed never fetched {digest}: {gets:?}"
        );
        ids.push(digest.trim_start_matches("sha256:").to_string());
    }
    Ok(Some((m, [password.to_string(), basic], ids)))
}

/// After a private pull through one node's proxy, once the seed has the layers, the
/// scheduler's log and `/tasks/{id}` hold no trace of the credential.
#[test]
fn the_scheduler_logs_and_shows_no_trace_of_a_private_pulls_credential() -> Result<()> {
    let Some((m, needles, ids)) = private_pull("dftrust6", 65)? else {
        return Ok(());
    };
    let log = m.mesh.scheduler.log();
    for id in &ids {
        // HTTPS with an operator's certificate: the mesh runs with mTLS.
        let view = m.mesh.scheduler_http(&format!("/tasks/{id}"))?;
        ensure!(view.contains(id.as_str()), "no task {id}: {view}");
        for n in &needles {
            ensure!(
                !view.contains(n.as_str()),
                "/tasks/{id} holds the credential: {view}"
            );
        }
    }
    for n in &needles {
        ensure!(!log.contains(n.as_str()), "the scheduler logged the credential");
    }
    ensure!(m.mesh.scheduler.is_running());
    Ok(())
}

/// The same pull, and the scheduler's whole writable memory (`/proc/PID/mem`) read for the
/// credential: neither the password nor its Basic encoding is there. The proxy's peer seals the
/// headers to the seeds' keys (service/src/seal.rs), so the scheduler only ever relays
/// ciphertext; relayed in the clear, 15-17 copies of the Basic encoding stayed in its freed heap
/// and in the h2 and tonic buffers that are reused rather than freed.
#[test]
fn the_scheduler_memory_holds_no_trace_of_a_private_pulls_credential() -> Result<()> {
    let Some((m, needles, _)) = private_pull("dftrust7", 66)? else {
        return Ok(());
    };
    let pid = m.mesh.scheduler.pid();
    let mut found = Vec::new();
    for n in &needles {
        let scan = damselfly_e2e::memscan::scan(pid, n.as_bytes())?;
        eprintln!(
            "scheduler memory: {} bytes read, {} copies of a credential form",
            scan.bytes, scan.hits
        );
        found.push(scan.hits);
    }
    ensure!(
        found.iter().all(|h| *h == 0),
        "the scheduler's memory holds the credential: {found:?} copies (password, Basic)"
    );
    Ok(())
}
