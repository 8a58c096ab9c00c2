//! `damselfly cache` end to end in network namespaces: an import with two
//! replicas, the importer killed, an export on a new host, a scheduler
//! restart that loses nothing, and TTL expiry that empties every store.
//! Needs root.

use anyhow::{Context, Result, bail};
use damselfly_e2e::bins;
use damselfly_e2e::data::{ensure_space, sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::Mesh;
use damselfly_e2e::wait::wait_for;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
/// Long enough for the steps before expiry (they take well under a minute).
const TTL: &str = "100s";
const WAIT: Duration = Duration::from_secs(90);

fn cache(lab: &Lab, mesh: &Mesh, host: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(bins::damselfly()?);
    cmd.arg("cache")
        .args(args)
        .arg("--socket")
        .arg(&mesh.peer(host).socket);
    lab.run(host, &cmd)
}

fn cache_ok(lab: &Lab, mesh: &Mesh, host: &str, args: &[&str]) -> Result<String> {
    let out = cache(lab, mesh, host, args)?;
    if !out.status.success() {
        bail!(
            "cache {args:?} on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until `stat` on `host` shows `line`.
fn wait_stat(lab: &Lab, mesh: &Mesh, host: &str, id: &str, line: &str) -> Result<String> {
    let mut last = String::new();
    wait_for(&format!("stat to show {line:?}"), WAIT, || {
        last = cache_ok(lab, mesh, host, &["stat", id]).unwrap_or_else(|e| e.to_string());
        last.contains(line)
    })
    .with_context(|| format!("last stat:\n{last}"))?;
    Ok(last)
}

#[test]
fn cache_survives_its_importer_and_a_scheduler_restart_then_expires() -> Result<()> {
    assert!(rustix::process::geteuid().is_root(), "cache tests need root");
    let lab = Lab::new(
        "dfcache",
        102,
        &["sched", "seed", "imp", "p1", "p2", "p3", "new"],
        None,
    )?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let file = dir.path().join("file");
    write_random_file(&file, 12 * MIB + 4321)?;
    let sha = sha256_file(&file)?;
    let mut mesh = Mesh::start(
        &lab,
        &bins::damselfly()?,
        &state,
        "sched",
        "seed",
        &["imp", "p1", "p2", "p3"],
    )?;

    let path = file.display().to_string();
    let id = cache_ok(
        &lab,
        &mesh,
        "imp",
        &["import", &path, "--replicas", "2", "--ttl", TTL],
    )?;
    let id = id.trim().to_string();
    assert_eq!(id, sha, "the id of a plain import is the file's sha256");
    let stat = wait_stat(&lab, &mesh, "p1", &id, "replicas: 2 held of 2 wanted")?;
    assert!(stat.contains(&format!("length: {}", 12 * MIB + 4321)), "{stat}");
    let task_id = damselfly_proto::task_id::cache_task_id(&id).map_err(anyhow::Error::msg)?;

    // The importer dies; a host that never saw the file exports it.
    mesh.kill_peer("imp")?;
    mesh.add_peer(&lab, &state, "new", &[])?;
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    cache_ok(&lab, &mesh, "new", &["export", &id, "-o", &out_arg, "--quiet"])?;
    assert_eq!(sha256_file(&out)?, sha, "exported bytes");

    // An id nobody imported fails at once, naming it.
    let missing = cache(&lab, &mesh, "p1", &["export", "nope", "-o", &out_arg])?;
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(err.contains("cache id nope: no such cache task"), "{err}");

    // A scheduler restart: the holders announce it again.
    mesh.restart_scheduler(&lab)?;
    wait_stat(&lab, &mesh, "p2", &id, "replicas: 2 held of 2 wanted")?;

    // Expiry: gone from the scheduler and from every store.
    let mut last = String::new();
    wait_for("the cache entry to expire", Duration::from_secs(200), || {
        let r = cache(&lab, &mesh, "p3", &["stat", &id]);
        last = r
            .as_ref()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        last.contains("no such cache task")
    })
    .with_context(|| format!("last stat: {last}"))?;
    let stores: Vec<(String, std::path::PathBuf)> = std::iter::once(&mesh.seed)
        .chain(&mesh.peers)
        .map(|p| (p.host.clone(), p.data_dir.join("content").join(&task_id)))
        .collect();
    let mut held = Vec::new();
    wait_for("every store to drop the task", WAIT, || {
        held = stores
            .iter()
            .filter(|(_, p)| p.exists())
            .map(|(h, _)| h.clone())
            .collect();
        held.is_empty()
    })
    .with_context(|| format!("still held by {held:?}"))?;
    assert_eq!(sha256_file(&out)?, sha, "an export outlives the task");

    // The killed importer comes back with the expired task and drops it.
    mesh.start_peer(&lab, &state, "imp", &[])?;
    let imp_store = mesh.peer("imp").data_dir.join("content").join(&task_id);
    wait_for("the importer to drop the expired task", WAIT, || {
        !Path::new(&imp_store).exists()
    })?;
    Ok(())
}

/// A 1 GiB file through `cache import` and `cache export` streams: no
/// peer's peak RSS (VmHWM) reaches 100 MiB: not the importer, not the
/// exporter nor the seed, which take it through the mesh (bounded by the
/// peers' `download_memory`; before it they peaked at 78-133 MiB).
#[test]
fn a_gibibyte_streams_through_the_cache() -> Result<()> {
    assert!(rustix::process::geteuid().is_root(), "cache tests need root");
    let lab = Lab::new("dfsbcache", 140, &["sched", "seed", "imp", "exp"], None)?;
    let dir = tempfile::tempdir()?;
    // The file, three stores and the export.
    ensure_space(dir.path(), 5 * 1024 * MIB, "a 1 GiB file through the cache")?;
    let file = dir.path().join("big");
    write_random_file(&file, 1024 * MIB)?;
    let sha = sha256_file(&file)?;
    let mesh = Mesh::start(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state"),
        "sched",
        "seed",
        &["imp", "exp"],
    )?;
    let path = file.display().to_string();
    let id = cache_ok(&lab, &mesh, "imp", &["import", &path, "--replicas", "1"])?;
    let id = id.trim().to_string();
    std::fs::remove_file(&file)?; // room on the disk; the stores hold it now
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    cache_ok(&lab, &mesh, "exp", &["export", &id, "-o", &out_arg, "--quiet"])?;
    assert_eq!(sha256_file(&out)?, sha, "exported bytes");
    let mut peaks = Vec::new();
    for p in [mesh.peer("imp"), mesh.peer("exp"), &mesh.seed] {
        peaks.push((p.host.clone(), p.proc.peak_rss_bytes().context("VmHWM")? / MIB));
    }
    eprintln!("peak RSS in MiB: {peaks:?}");
    assert!(
        peaks.iter().all(|(_, mib)| *mib < 100),
        "peak RSS in MiB: {peaks:?}"
    );
    Ok(())
}

/// A named id belongs to its importer (mutual TLS on, each host its own certificate): another
/// host can neither replace it (with other bytes, or with the same bytes) nor delete it
/// through `damselfly cache`, nor over gRPC by naming the importer's host id with its own
/// certificate (nor take that host id over), and the id still exports the importer's bytes;
/// the importer itself deletes it. Octet 161.
#[test]
fn another_host_cannot_replace_or_delete_a_named_id() -> Result<()> {
    assert!(rustix::process::geteuid().is_root(), "cache tests need root");
    let bin = bins::damselfly()?;
    let hosts = ["sched", "seed", "imp", "other"];
    let lab = Lab::new("dft3c", 161, &hosts, None)?;
    let dir = tempfile::tempdir()?;
    let certs = damselfly_e2e::tls::Certs::init(
        &bin,
        &dir.path().join("certs"),
        &["scheduler:sched", "seed:seed", "peer:imp", "peer:other"],
    )?;
    let mesh = Mesh::start_tls(
        &lab,
        &bin,
        &dir.path().join("state"),
        &certs,
        "sched",
        "seed",
        &["imp", "other"],
    )?;
    let (mine, theirs) = (dir.path().join("mine"), dir.path().join("theirs"));
    write_random_file(&mine, 3 * MIB + 11)?;
    write_random_file(&theirs, 2 * MIB + 7)?;
    let sha = sha256_file(&mine)?;
    let (mine, theirs) = (mine.display().to_string(), theirs.display().to_string());

    let id = cache_ok(
        &lab,
        &mesh,
        "imp",
        &["import", &mine, "--id", "team.model-v1", "--replicas", "1"],
    )?;
    assert_eq!(id.trim(), "team.model-v1");
    // Another host: other bytes under the id, the same bytes under the id, a delete.
    for args in [
        vec!["import", theirs.as_str(), "--id", "team.model-v1"],
        vec!["import", mine.as_str(), "--id", "team.model-v1"],
        vec!["delete", "team.model-v1"],
    ] {
        let out = cache(&lab, &mesh, "other", &args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "cache {args:?} from another host succeeded"
        );
        assert!(
            stderr.contains("another host") || stderr.contains("other content"),
            "cache {args:?} from another host: {stderr}"
        );
    }
    // Nor by naming the importer's host id itself, over gRPC with its own (valid) certificate:
    // the scheduler takes a host id only from the certificate its host stream came with.
    let imp_host = std::fs::read_to_string(mesh.peer("imp").data_dir.join("host-id"))?;
    let forged = tokio::runtime::Runtime::new()?.block_on(async {
        let config = damselfly_service::tls::TlsConfig {
            mode: damselfly_service::tls::TlsMode::On,
            ca: Some(certs.ca()),
            cert: Some(certs.cert("other")),
            key: Some(certs.key("other")),
        };
        let tls = damselfly_service::tls::Tls::load(&config).await?;
        let addr = format!(
            "https://{}:{}",
            lab.ip("sched"),
            damselfly_e2e::mesh::SCHEDULER_PORT
        );
        let endpoint = damselfly_service::tls::endpoint(&addr)?.connect_timeout(Duration::from_secs(3));
        let channel = damselfly_service::tls::channel(endpoint, tls, damselfly_service::tls::Role::Scheduler);
        let mut client = damselfly_proto::scheduler::scheduler_client::SchedulerClient::new(channel);
        // Taking over the importer's host id while it is connected is refused as well.
        use damselfly_proto::scheduler::{HostInfo, HostMessage, host_message};
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(HostMessage {
            msg: Some(host_message::Msg::Hello(HostInfo {
                host_id: imp_host.trim().to_string(),
                ip: lab.ip("other").to_string(),
                piece_port: 1,
                ..Default::default()
            })),
        })?;
        let takeover = client
            .announce_host(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await;
        match takeover {
            Err(status) => assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}"),
            Ok(_) => panic!("another certificate took over the importer's host id"),
        }
        drop(tx);
        let r = client
            .cache_delete(damselfly_proto::scheduler::CacheDeleteRequest {
                id: "team.model-v1".into(),
                host_id: imp_host.trim().to_string(),
            })
            .await;
        anyhow::Ok(r.map(|_| ()))
    })?;
    match forged {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "a forged host id: {status}"
        ),
        Ok(()) => panic!("another host deleted the id by naming the importer's host id"),
    }
    // The id is unchanged: it exports the importer's bytes, on the other host too.
    let stat = cache_ok(&lab, &mesh, "other", &["stat", "team.model-v1"])?;
    let digest = format!("sha256:{sha}");
    assert!(stat.contains(&digest), "stat after the refused calls: {stat}");
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    cache_ok(
        &lab,
        &mesh,
        "other",
        &["export", "team.model-v1", "-o", &out_arg, "--quiet"],
    )?;
    assert_eq!(
        sha256_file(&out)?,
        sha,
        "the id exports other bytes than the importer's"
    );
    // Its owner deletes it.
    cache_ok(&lab, &mesh, "imp", &["delete", "team.model-v1"])?;
    let gone = cache(&lab, &mesh, "other", &["stat", "team.model-v1"])?;
    assert!(!gone.status.success(), "the id survived its owner's delete");
    Ok(())
}
