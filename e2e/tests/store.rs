//! Object storage origins end to end: a real moto S3 server (auth on) in a
//! lab host, `damselfly get s3://...` on four peers at once through the mesh.
//! Needs root and the moto venv at /opt/damselfly-moto (scripts/install-deps.sh).

use anyhow::{Context, Result, bail};
use damselfly_e2e::bins;
use damselfly_e2e::data::{ensure_space, sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::Mesh;
use damselfly_e2e::process::{Proc, wait_all};
use damselfly_e2e::wait::wait_for_tcp;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const MOTO_PORT: u16 = 5000;
const VENV: &str = "/opt/damselfly-moto";
const GET_TIMEOUT: Duration = Duration::from_secs(180);

fn peer_config(path: &std::path::Path, endpoint: &str, id: &str, secret: &str) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "[source.s3]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             access_key_id = \"{id}\"\nsecret_access_key = \"{secret}\"\n"
        ),
    )?;
    Ok(())
}

#[test]
fn s3_object_through_the_mesh() -> Result<()> {
    assert!(rustix::process::geteuid().is_root(), "store tests need root");
    let lab = Lab::new(
        "dfss3",
        100,
        &["moto", "sched", "seed", "p1", "p2", "p3", "p4"],
        None,
    )?;
    let dir = tempfile::tempdir()?;
    let blob = dir.path().join("blob");
    let size = 20 * MIB + 12345;
    write_random_file(&blob, size)?;
    let sha = sha256_file(&blob)?;

    let (moto_proc, endpoint, id, secret) = start_moto(&lab, &blob, "dir/blob")?;
    let (id, secret) = (id.as_str(), secret.as_str());
    let config = dir.path().join("peer.toml");
    peer_config(&config, &endpoint, id, secret)?;
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mesh = Mesh::start_with_args(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state"),
        "sched",
        "seed",
        &["p1", "p2", "p3", "p4"],
        &args,
    )?;
    let url = "s3://bkt/dir/blob";
    let before = object_gets(&moto_proc.log());
    let hosts = ["p1", "p2", "p3", "p4"];
    let mut jobs = hosts
        .iter()
        .map(|h| mesh.start_get(&lab, h, url, &dir.path().join(format!("out-{h}"))))
        .collect::<Result<Vec<_>>>()?;
    let results = wait_all(&mut jobs, GET_TIMEOUT)?;
    for (h, r) in hosts.iter().zip(&results) {
        if !r.status.success() {
            bail!(
                "get on {h} failed: {}",
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
        }
        assert_eq!(
            sha256_file(&dir.path().join(format!("out-{h}")))?,
            sha,
            "copy on {h}"
        );
    }
    // Read about once: one GET per 8 MiB block (3 here), not one per peer.
    let gets = object_gets(&moto_proc.log()) - before;
    let log = moto_proc.log();
    let tail: Vec<&str> = log.lines().rev().take(12).collect();
    assert!(
        (3..=5).contains(&gets),
        "moto served {gets} GETs of the object; log ends:\n{}",
        tail.join("\n")
    );

    // A missing key: a one-line not-found error.
    let out = lab.run(
        "p1",
        &mesh.get_command("p1", "s3://bkt/dir/nope", &dir.path().join("x")),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("s3://bkt/dir/nope: no such key or bucket"), "{err}");
    let out = lab.run(
        "p1",
        &mesh.get_command("p1", "s3://nobucket/k", &dir.path().join("x")),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    // S3 answers the HEAD for a missing bucket with a bare 404, as for a missing key.
    assert!(!out.status.success());
    assert!(err.contains("s3://nobucket/k: no such key or bucket"), "{err}");
    drop(mesh);

    // Wrong credentials: a one-line access-denied error.
    peer_config(&config, &endpoint, id, "wrong-secret")?;
    let mesh = Mesh::start_with_args(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state2"),
        "sched",
        "seed",
        &["p1"],
        &args,
    )?;
    let out = lab.run("p1", &mesh.get_command("p1", url, &dir.path().join("y")))?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("access denied"), "{err}");
    assert!(
        !err.contains("wrong-secret") && !err.contains(secret),
        "secret in {err}"
    );
    Ok(())
}

/// Starts moto (auth on) in the lab host `moto` with bucket `bkt` holding `key` from `file`:
/// (process, endpoint, access key id, secret).
fn start_moto(lab: &Lab, file: &Path, key: &str) -> Result<(Proc, String, String, String)> {
    let moto_ip = lab.ip("moto");
    let mut moto = Command::new(format!("{VENV}/bin/moto_server"));
    moto.args(["-H", &moto_ip.to_string(), "-p", &MOTO_PORT.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
    let moto_proc = lab.spawn("moto", "moto", &moto)?;
    wait_for_tcp(moto_ip, MOTO_PORT, Duration::from_secs(30)).context("moto did not start")?;
    let endpoint = format!("http://{moto_ip}:{MOTO_PORT}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto_setup.py");
    let keys = lab.run_ok(
        "moto",
        Command::new(format!("{VENV}/bin/python"))
            .args([script, &endpoint, "bkt", key])
            .arg(file),
    )?;
    let (id, secret) = keys.trim().split_once(' ').context("moto_setup output")?;
    Ok((moto_proc, endpoint, id.to_string(), secret.to_string()))
}

/// GETs of `bkt/dir/blob` in moto's request log.
fn object_gets(log: &str) -> usize {
    gets_of(log, "/bkt/dir/blob")
}

/// GETs of the object at `path` in moto's request log.
fn gets_of(log: &str, path: &str) -> usize {
    // werkzeug colours some lines (ANSI escapes between the quote and the method).
    let needle = format!("GET {path} HTTP");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// `damselfly store ARGS` through `host`'s daemon.
fn store_command(mesh: &Mesh, host: &str, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(bins::damselfly()?);
    cmd.arg("store")
        .args(args)
        .arg("--socket")
        .arg(&mesh.peer(host).socket);
    Ok(cmd)
}

/// `damselfly store put` on one host, `store get` on four at once: every
/// copy right, the object read from storage about once (by the seed, when
/// the put warmed the mesh); then `stat`, and `delete` after which a get
/// fails with a one-line not-found error.
#[test]
fn store_put_then_get_on_four_hosts() -> Result<()> {
    assert!(rustix::process::geteuid().is_root(), "store tests need root");
    let lab = Lab::new(
        "dfsput",
        101,
        &["moto", "sched", "seed", "w", "p1", "p2", "p3", "p4"],
        None,
    )?;
    let dir = tempfile::tempdir()?;
    let small = dir.path().join("small");
    write_random_file(&small, 1000)?;
    let (moto_proc, endpoint, id, secret) = start_moto(&lab, &small, "small")?;
    let config = dir.path().join("peer.toml");
    peer_config(&config, &endpoint, &id, &secret)?;
    let args = vec!["--config".to_string(), config.display().to_string()];
    let hosts = ["p1", "p2", "p3", "p4"];
    let mesh = Mesh::start_with_args(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state"),
        "sched",
        "seed",
        &["w", "p1", "p2", "p3", "p4"],
        &args,
    )?;

    let blob = dir.path().join("blob");
    let size = 20 * MIB + 777;
    write_random_file(&blob, size)?;
    let sha = sha256_file(&blob)?;
    let url = "s3://bkt/put/blob";
    let blob_arg = blob.display().to_string();
    lab.run_ok("w", &store_command(&mesh, "w", &["put", &blob_arg, url])?)?;

    let mut jobs = hosts
        .iter()
        .map(|h| {
            let out = dir.path().join(format!("out-{h}")).display().to_string();
            lab.start(
                h,
                "store-get",
                &store_command(&mesh, h, &["get", url, "-o", &out])?,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let results = wait_all(&mut jobs, GET_TIMEOUT)?;
    for (h, r) in hosts.iter().zip(&results) {
        if !r.status.success() {
            bail!(
                "store get on {h} failed: {}",
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
        }
        assert_eq!(
            sha256_file(&dir.path().join(format!("out-{h}")))?,
            sha,
            "copy on {h}"
        );
    }
    // The put wrote it; the seed read it once (one GET per 8 MiB block, 3
    // here) when the put warmed the mesh; the four readers read the mesh.
    let gets = gets_of(&moto_proc.log(), "/bkt/put/blob");
    assert!(
        (3..=5).contains(&gets),
        "moto served {gets} GETs of the object; log ends:\n{}",
        moto_proc.log_tail(12)
    );

    let stat = lab.run_ok("p1", &store_command(&mesh, "p1", &["stat", url])?)?;
    assert!(stat.contains(&format!("length: {size}")), "{stat}");
    assert!(stat.contains("etag: "), "{stat}");

    lab.run_ok("p2", &store_command(&mesh, "p2", &["delete", url])?)?;
    for (what, cmd) in [
        (
            "get",
            store_command(&mesh, "p3", &["get", url, "-o", "/tmp/never"])?,
        ),
        ("stat", store_command(&mesh, "p1", &["stat", url])?),
        ("delete", store_command(&mesh, "p2", &["delete", url])?),
    ] {
        let out = lab.run("p3", &cmd)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} of a deleted object succeeded");
        assert!(
            err.contains("s3://bkt/put/blob: no such key or bucket") && err.trim().lines().count() == 1,
            "{what}: {err}"
        );
    }
    // A put into a bucket that does not exist names it.
    let out = lab.run(
        "w",
        &store_command(&mesh, "w", &["put", &blob_arg, "s3://nobucket/k"])?,
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("s3://nobucket/k: no such bucket"), "{err}");
    Ok(())
}

/// A 1 GiB object through `store put` on one host and `store get` on
/// another streams: the putting peer (which then takes it through the mesh),
/// the getting peer and the seed (parallel range reads from storage) all peak
/// (VmHWM) under 100 MiB.
#[test]
fn a_gibibyte_streams_through_the_store() -> Result<()> {
    assert!(rustix::process::geteuid().is_root(), "store tests need root");
    let lab = Lab::new("dfsbstore", 141, &["moto", "sched", "seed", "w", "r"], None)?;
    let dir = tempfile::tempdir()?;
    // The file, the object in moto's temp files, three stores and the copy.
    ensure_space(dir.path(), 7 * 1024 * MIB, "a 1 GiB object through the store")?;
    let small = dir.path().join("small");
    write_random_file(&small, 1000)?;
    let (_moto, endpoint, id, secret) = start_moto(&lab, &small, "small")?;
    let config = dir.path().join("peer.toml");
    peer_config(&config, &endpoint, &id, &secret)?;
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mesh = Mesh::start_with_args(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state"),
        "sched",
        "seed",
        &["w", "r"],
        &args,
    )?;
    let big = dir.path().join("big");
    write_random_file(&big, 1024 * MIB)?;
    let sha = sha256_file(&big)?;
    let url = "s3://bkt/big";
    let big_arg = big.display().to_string();
    lab.run_ok("w", &store_command(&mesh, "w", &["put", &big_arg, url])?)?;
    std::fs::remove_file(&big)?; // room on the disk
    let out = dir.path().join("out");
    let out_arg = out.display().to_string();
    lab.run_ok("r", &store_command(&mesh, "r", &["get", url, "-o", &out_arg])?)?;
    assert_eq!(sha256_file(&out)?, sha, "the copy on r");
    let mut peaks = Vec::new();
    for p in [mesh.peer("w"), mesh.peer("r"), &mesh.seed] {
        peaks.push((p.host.clone(), p.proc.peak_rss_bytes().context("VmHWM")? / MIB));
    }
    eprintln!("peak RSS in MiB: {peaks:?}");
    assert!(
        peaks.iter().all(|(_, mib)| *mib < 100),
        "peak RSS in MiB: {peaks:?}"
    );
    Ok(())
}
