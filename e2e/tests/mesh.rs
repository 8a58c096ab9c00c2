//! The P2P mesh end to end, through the real `damselfly` binary, in network
//! namespaces: one origin host, one scheduler, one seed, peer hosts, links
//! shaped with `tc tbf` where the test is about bandwidth.
//!
//! The binary must be built with `--features fault-injection` (the test
//! command in README.md does) for the corrupt-peer test. Needs root.

use anyhow::Result;
use damselfly_e2e::bins;
use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::{Mesh, SCHEDULER_METRICS_PORT};
use damselfly_e2e::origin::Origin;
use damselfly_e2e::process::wait_all;
use damselfly_e2e::wait::wait_for;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const GET_TIMEOUT: Duration = Duration::from_secs(180);
const ORIGIN_PORT: u16 = 8080;

struct Setup {
    lab: Lab,
    origin: Origin,
    mesh: Mesh,
    dir: tempfile::TempDir,
    url: String,
    sha: String,
    size: u64,
}

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "mesh tests need root (network namespaces); run them through scripts/test.sh"
    );
}

/// origin, sched, seed and `peers` peer hosts (p1..pN) with a random file of `size` bytes.
fn setup(prefix: &str, octet: u8, peers: usize, rate: Option<&str>, size: u64) -> Result<Setup> {
    require_root();
    let peer_hosts: Vec<String> = (1..=peers).map(|i| format!("p{i}")).collect();
    let mut hosts = vec!["origin", "sched", "seed"];
    hosts.extend(peer_hosts.iter().map(String::as_str));
    let lab = Lab::new(prefix, octet, &hosts, rate)?;
    let dir = tempfile::tempdir()?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    write_random_file(&www.join("blob"), size)?;
    let sha = sha256_file(&www.join("blob"))?;
    let origin = Origin::start(&lab, "origin", &www, ORIGIN_PORT)?;
    let refs: Vec<&str> = peer_hosts.iter().map(String::as_str).collect();
    let mesh = Mesh::start(
        &lab,
        &bins::damselfly()?,
        &dir.path().join("state"),
        "sched",
        "seed",
        &refs,
    )?;
    let url = origin.url("blob");
    Ok(Setup {
        lab,
        origin,
        mesh,
        dir,
        url,
        sha,
        size,
    })
}

impl Setup {
    fn out(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("out-{host}"))
    }

    /// Runs `damselfly get` on every host at once; returns each output's sha256.
    fn get_all(&self, hosts: &[&str]) -> Result<Vec<String>> {
        let mut jobs = hosts
            .iter()
            .map(|h| self.mesh.start_get(&self.lab, h, &self.url, &self.out(h)))
            .collect::<Result<Vec<_>>>()?;
        for r in wait_all(&mut jobs, GET_TIMEOUT)? {
            r.ensure_success()?;
        }
        hosts.iter().map(|h| sha256_file(&self.out(h))).collect()
    }

    fn task_id(&self) -> String {
        damselfly_proto::task_id::task_id(&self.url, None, "", "").unwrap()
    }

    /// The scheduler's view of the task (`/tasks/{id}`).
    fn task_view(&self) -> Result<serde_json::Value> {
        let url = format!(
            "http://{}:{SCHEDULER_METRICS_PORT}/tasks/{}",
            self.lab.ip("sched"),
            self.task_id()
        );
        let body = self
            .lab
            .run_ok("sched", Command::new("curl").args(["-sf", &url]))?;
        Ok(serde_json::from_str(&body)?)
    }

    fn host_id(&self, host: &str) -> String {
        std::fs::read_to_string(self.mesh.peer(host).data_dir.join("host-id"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

fn origin_tx(s: &Setup) -> u64 {
    s.lab.tx_bytes("origin").unwrap()
}

#[test]
fn every_peer_gets_the_file_and_the_origin_sends_it_about_once() -> Result<()> {
    let s = setup("dfm1", 231, 4, Some("100mbit"), 64 * MIB)?;
    let before = origin_tx(&s);
    let hosts = ["p1", "p2", "p3", "p4"];
    for sha in s.get_all(&hosts)? {
        assert_eq!(sha, s.sha);
    }
    let sent = origin_tx(&s) - before;
    let ratio = sent as f64 / s.size as f64;
    assert!(ratio <= 1.1, "origin sent {ratio:.3} x the file");
    Ok(())
}

#[test]
fn a_parent_killed_mid_download_does_not_stop_the_others() -> Result<()> {
    let mut s = setup("dfm2", 232, 4, Some("100mbit"), 48 * MIB)?;
    let others = ["p2", "p3", "p4"];
    let mut jobs = others
        .iter()
        .map(|h| s.mesh.start_get(&s.lab, h, &s.url, &s.out(h)))
        .collect::<Result<Vec<_>>>()?;
    let victim = s.mesh.start_get(&s.lab, "p1", &s.url, &s.out("p1"))?;
    // Wait until the victim holds a good share of pieces (others get them from it), then kill it.
    let victim_host = s.host_id("p1");
    wait_for("p1 to hold pieces", Duration::from_secs(60), || {
        s.task_view().ok().is_some_and(|v| {
            v["peers"].as_array().is_some_and(|peers| {
                peers
                    .iter()
                    .any(|p| p["host_id"] == victim_host.as_str() && p["pieces"].as_u64().unwrap_or(0) >= 20)
            })
        })
    })?;
    s.mesh.stop_peer("p1")?;
    drop(victim);
    for r in wait_all(&mut jobs, GET_TIMEOUT)? {
        r.ensure_success()?;
    }
    for h in others {
        assert_eq!(sha256_file(&s.out(h))?, s.sha, "{h}");
    }
    Ok(())
}

#[test]
fn without_a_scheduler_get_still_succeeds_from_the_origin() -> Result<()> {
    let mut s = setup("dfm3", 233, 1, None, 16 * MIB)?;
    s.mesh.scheduler.stop()?;
    let before = s.origin.requests().len();
    assert_eq!(s.get_all(&["p1"])?, vec![s.sha.clone()]);
    assert!(
        s.origin.requests().len() > before,
        "the peer fetched from the origin itself"
    );
    Ok(())
}

#[test]
fn a_peer_serving_corrupt_pieces_is_blocklisted_and_nobody_keeps_its_bytes() -> Result<()> {
    let mut s = setup("dfm4", 234, 3, Some("100mbit"), 24 * MIB)?;
    // p1 first gets the file honestly, then restarts as a liar.
    assert_eq!(s.get_all(&["p1"])?, vec![s.sha.clone()]);
    let state = s.state_dir();
    s.mesh
        .start_peer(&s.lab, &state, "p1", &[("DAMSELFLY_FAULT", "corrupt-upload")])?;
    let liar = s.host_id("p1");
    wait_for(
        "the restarted p1 to be offered again",
        Duration::from_secs(30),
        || {
            s.task_view().ok().is_some_and(|v| {
                v["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["host_id"] == liar.as_str()))
            })
        },
    )?;
    for sha in s.get_all(&["p2", "p3"])? {
        assert_eq!(sha, s.sha);
    }
    let view = s.task_view()?;
    let liar_peers: Vec<&str> = view["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["host_id"] == liar.as_str())
        .filter_map(|p| p["peer_id"].as_str())
        .collect();
    let blocked = view["peers"].as_array().unwrap().iter().any(|p| {
        p["blocklist"]
            .as_array()
            .is_some_and(|b| b.iter().any(|id| liar_peers.contains(&id.as_str().unwrap_or(""))))
    });
    let bad_host = view["bad_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == liar.as_str());
    assert!(
        blocked || bad_host,
        "the liar {liar} was not blocklisted: {view:#}"
    );
    Ok(())
}

#[test]
fn a_restarted_peer_serves_what_it_had_without_the_origin() -> Result<()> {
    let mut s = setup("dfm5", 235, 2, None, 16 * MIB)?;
    assert_eq!(s.get_all(&["p1"])?, vec![s.sha.clone()]);
    let state = s.state_dir();
    s.mesh.stop_peer("p1")?;
    s.mesh.start_peer(&s.lab, &state, "p1", &[])?;
    // Only the restarted p1 holds the file now.
    s.mesh.seed.proc.stop()?;
    let p1 = s.host_id("p1");
    wait_for(
        "the restarted p1 to announce its stored task",
        Duration::from_secs(30),
        || {
            s.task_view().ok().is_some_and(|v| {
                v["peers"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p["host_id"] == p1.as_str() && p["state"] == "succeeded")
                })
            })
        },
    )?;
    let requests = s.origin.requests().len();
    let tx = origin_tx(&s);
    assert_eq!(s.get_all(&["p2"])?, vec![s.sha.clone()]);
    assert_eq!(s.origin.requests().len(), requests, "the origin was asked again");
    assert!(origin_tx(&s) - tx < 64 * 1024, "the origin sent file bytes again");
    Ok(())
}
