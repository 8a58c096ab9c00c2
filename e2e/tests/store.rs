//! Object storage origins end to end: a real moto S3 server (auth on) in a
//! lab host, `damselfly get s3://...` on four peers at once through the mesh.
//! Needs root and the moto venv at /opt/damselfly-moto (scripts/install-deps.sh).

use anyhow::{Context, Result, bail};
use damselfly_e2e::bins;
use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::Mesh;
use damselfly_e2e::process::wait_all;
use damselfly_e2e::wait::wait_for_tcp;
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
        90,
        &["moto", "sched", "seed", "p1", "p2", "p3", "p4"],
        None,
    )?;
    let dir = tempfile::tempdir()?;
    let blob = dir.path().join("blob");
    let size = 20 * MIB + 12345;
    write_random_file(&blob, size)?;
    let sha = sha256_file(&blob)?;

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
            .args([script, &endpoint, "bkt", "dir/blob"])
            .arg(&blob),
    )?;
    let (id, secret) = keys.trim().split_once(' ').context("moto_setup output")?;

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

/// GETs of the object in moto's request log.
fn object_gets(log: &str) -> usize {
    // werkzeug colours some lines (ANSI escapes between the quote and the method).
    log.lines()
        .filter(|l| l.contains("GET /bkt/dir/blob HTTP"))
        .count()
}
