//! Components that follow a manager, end to end through the real binary in
//! network namespaces: a manager on SQLite, two schedulers, a seed peer and
//! peers, all started with `--manager` (nothing else tells them where the
//! schedulers are). Needs root.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::managed::{Manager, Peer, Scheduler};
use damselfly_e2e::oci::sent_once_to;
use damselfly_e2e::origin::Origin;
use damselfly_e2e::process::wait_all;
use damselfly_e2e::wait::wait_for;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const GET_TIMEOUT: Duration = Duration::from_secs(120);
/// Anything driven by the 300 ms intervals of these configs shows within this.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);
const ORIGIN_PORT: u16 = 8080;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "manager e2e tests need root (network namespaces); run them through scripts/test.sh"
    );
}

struct World {
    lab: Lab,
    bin: PathBuf,
    dir: tempfile::TempDir,
    origin: Origin,
    manager: Manager,
    s1: Scheduler,
    s2: Scheduler,
    seed: Peer,
    peers: Vec<Peer>,
}

impl World {
    /// A fresh random file on the origin; returns its URL and sha256.
    fn file(&self, name: &str, size: u64) -> Result<(String, String)> {
        let path = self.dir.path().join("www").join(name);
        write_random_file(&path, size)?;
        Ok((self.origin.url(name), sha256_file(&path)?))
    }

    fn out(&self, host: &str, name: &str) -> PathBuf {
        self.dir.path().join(format!("out-{host}-{name}"))
    }

    /// `damselfly get` of `url` on every peer at once; checks every copy.
    fn get_everywhere(&self, url: &str, sha: &str, name: &str) -> Result<()> {
        let mut jobs = self
            .peers
            .iter()
            .map(|p| p.start_get(&self.lab, &self.bin, url, &self.out(&p.host, name), &[]))
            .collect::<Result<Vec<_>>>()?;
        for r in wait_all(&mut jobs, GET_TIMEOUT)? {
            r.ensure_success()?;
        }
        for p in &self.peers {
            let got = sha256_file(&self.out(&p.host, name))?;
            ensure!(got == sha, "{} got {got}, want {sha}", p.host);
        }
        Ok(())
    }

    /// Peer host ids the scheduler's `/tasks/{id}` lists for the task.
    fn hosts_on(&self, s: &Scheduler, task_id: &str) -> Vec<String> {
        s.task_view(task_id)
            .and_then(|v| {
                Some(
                    v["peers"]
                        .as_array()?
                        .iter()
                        .filter_map(|p| p["host_id"].as_str().map(str::to_string))
                        .collect(),
                )
            })
            .unwrap_or_default()
    }

    /// Names `file-N` until one whose task the two-scheduler ring gives to `owner`.
    fn file_owned_by(&self, owner: &Scheduler, prefix: &str, size: u64) -> Result<(String, String, String)> {
        let nodes = [self.s1.grpc_url(), self.s2.grpc_url()];
        for i in 0..1000 {
            let name = format!("{prefix}-{i}");
            let url = self.origin.url(&name);
            let id = task_id(&url);
            let picked = damselfly_proto::ring::pick(&id, nodes.iter().map(String::as_str), "");
            if picked.as_deref() == Some(owner.grpc_url().as_str()) {
                let (url, sha) = self.file(&name, size)?;
                return Ok((url, sha, id));
            }
        }
        anyhow::bail!("no file name maps to {}", owner.grpc_url())
    }
}

fn task_id(url: &str) -> String {
    damselfly_proto::task_id::task_id(url, None, "", "").unwrap()
}

fn world(prefix: &str, octet: u8) -> Result<World> {
    require_root();
    let hosts = ["mgr", "s1", "s2", "seed", "p1", "p2", "p3", "origin"];
    let lab = Lab::new(prefix, octet, &hosts, None)?;
    let bin = bins::damselfly()?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("www"))?;
    let origin = Origin::start(&lab, "origin", &dir.path().join("www"), ORIGIN_PORT)?;
    let manager = Manager::start(&lab, &bin, "mgr", "")?;
    let m = manager.grpc_url();
    let s1 = Scheduler::start(&lab, &bin, "s1", &m)?;
    let s2 = Scheduler::start(&lab, &bin, "s2", &m)?;
    manager.wait_state("scheduler", "s1", "active", CHANGE_TIMEOUT)?;
    manager.wait_state("scheduler", "s2", "active", CHANGE_TIMEOUT)?;
    let seed = Peer::start(&lab, &bin, "seed", &m, true, "")?;
    let peers = ["p1", "p2", "p3"]
        .iter()
        .map(|h| Peer::start(&lab, &bin, h, &m, false, ""))
        .collect::<Result<Vec<_>>>()?;
    manager.wait_state("seed_peer", "seed", "active", CHANGE_TIMEOUT)?;
    for p in peers.iter().chain([&seed]) {
        p.wait_schedulers(2, CHANGE_TIMEOUT)?;
    }
    Ok(World {
        lab,
        bin,
        dir,
        origin,
        manager,
        s1,
        s2,
        seed,
        peers,
    })
}

fn candidate_limit(s: &Scheduler) -> Option<u64> {
    s.config_view().ok()?["candidate_parent_limit"].as_u64()
}

#[test]
fn schedulers_fail_over_settings_apply_live_and_the_manager_may_go_away() -> Result<()> {
    let mut w = world("dfg1", 238)?;
    let m = w.manager.grpc_url();

    // Both schedulers registered and took the default cluster's settings (8 parents, the
    // same as a scheduler's own default: that settings change applies live is checked below).
    for s in [&w.s1, &w.s2] {
        let c = s.config_view()?;
        ensure!(c["manager"]["registered"] == true, "{c}");
        ensure!(
            c["candidate_parent_limit"] == 8 && c["manager"]["settings_version"].is_u64(),
            "the cluster's settings apply: {c}"
        );
    }

    // A task that hashes to s1 meets there.
    let (url, sha, id) = w.file_owned_by(&w.s1, "before", 4 * MIB)?;
    w.get_everywhere(&url, &sha, "before")?;
    let on_s1 = w.hosts_on(&w.s1, &id);
    for p in &w.peers {
        ensure!(on_s1.contains(&p.host_id()?), "{} not on s1: {on_s1:?}", p.host);
    }

    // Traffic reports reach the manager.
    wait_for("traffic to be reported", CHANGE_TIMEOUT, || {
        w.manager
            .api("GET", "/api/v1/traffic", None)
            .is_ok_and(|t| t["origin_bytes"].as_i64() > Some(0) && t["peer_bytes"].as_i64() > Some(0))
    })?;

    // s1 dies: it turns inactive, peers drop it, and a task that would have gone to it goes to s2.
    w.s1.proc.kill()?;
    w.manager
        .wait_state("scheduler", "s1", "inactive", CHANGE_TIMEOUT)?;
    for p in &w.peers {
        p.wait_schedulers(1, CHANGE_TIMEOUT)?;
    }
    let (url, sha, id) = w.file_owned_by(&w.s1, "failover", 4 * MIB)?;
    w.get_everywhere(&url, &sha, "failover")?;
    let on_s2 = w.hosts_on(&w.s2, &id);
    for p in &w.peers {
        ensure!(on_s2.contains(&p.host_id()?), "{} not on s2: {on_s2:?}", p.host);
    }

    // s1 comes back (same config and cache): active again, and peers use both.
    w.s1.restart(&w.lab, &w.bin, "s1", &m)?;
    w.manager
        .wait_state("scheduler", "s1", "active", CHANGE_TIMEOUT)?;
    for p in &w.peers {
        p.wait_schedulers(2, CHANGE_TIMEOUT)?;
    }

    // The operator lowers the candidate parent limit and sets the peers'
    // concurrency and piece length bounds: schedulers and peers apply them
    // without a restart.
    let cluster = w.s2.config_view()?["manager"]["cluster_id"]
        .as_u64()
        .context("cluster id")?;
    let pids = (w.s1.proc.pid(), w.s2.proc.pid());
    let peer_pids: Vec<_> = w.peers.iter().map(|p| p.proc.pid()).collect();
    for p in &w.peers {
        ensure!(
            p.metric("damselfly_peer_upload_concurrency") == Some(50.0),
            "{}: the default cluster's upload concurrency",
            p.host
        );
    }
    w.manager.api(
        "PATCH",
        &format!("/api/v1/clusters/{cluster}"),
        Some(
            &json!({"settings": {"candidate_parent_limit": 1, "filter_parent_limit": 40,
            "peer_upload_concurrency": 7, "peer_download_concurrency": 5,
            "min_piece_length": MIB, "max_piece_length": 4 * MIB}}),
        ),
    )?;
    for s in [&w.s1, &w.s2] {
        wait_for("the new parent limit", CHANGE_TIMEOUT, || {
            candidate_limit(s) == Some(1)
        })?;
    }
    // Peers poll every 300 ms (INTERVAL in damselfly_e2e::managed): a second is plenty.
    for p in w.peers.iter().chain([&w.seed]) {
        wait_for(
            &format!("{}'s new settings", p.host),
            Duration::from_secs(2),
            || {
                p.metric("damselfly_peer_upload_concurrency") == Some(7.0)
                    && p.metric("damselfly_peer_download_concurrency") == Some(5.0)
                    && p.metric("damselfly_peer_min_piece_length") == Some(MIB as f64)
                    && p.metric("damselfly_peer_max_piece_length") == Some((4 * MIB) as f64)
            },
        )?;
    }
    ensure!(w.s1.proc.is_running() && w.s2.proc.is_running());
    ensure!(pids == (w.s1.proc.pid(), w.s2.proc.pid()), "no restart");
    ensure!(
        peer_pids == w.peers.iter().map(|p| p.proc.pid()).collect::<Vec<_>>(),
        "no peer restart"
    );
    // ... and decisions follow it: no peer of a new task holds more than one parent.
    let (url, sha, id) = w.file_owned_by(&w.s2, "limited", 8 * MIB)?;
    w.get_everywhere(&url, &sha, "limited")?;
    let view = w.s2.task_view(&id).context("task on s2")?;
    for p in view["peers"].as_array().context("peers")? {
        let n = p["parents"].as_array().map(Vec::len).unwrap_or(0);
        ensure!(n <= 1, "a peer holds {n} parents with the limit at 1: {view}");
    }
    // The seed laid the 8 MiB task out with the cluster's minimum piece
    // length (1 MiB), not the default rule's 256 KiB.
    ensure!(
        view["piece_length"] == MIB,
        "piece length within the cluster's bounds: {view}"
    );

    // An operator deletes s2's instance: s2 registers again by itself.
    let old = w.manager.instance_id("scheduler", "s2").context("s2's id")?;
    w.manager
        .api("DELETE", &format!("/api/v1/instances/{old}"), None)?;
    wait_for("s2 to register again", CHANGE_TIMEOUT, || {
        w.manager.state_of("scheduler", "s2").as_deref() == Some("active")
            && w.manager.instance_id("scheduler", "s2") != Some(old)
    })?;
    for p in &w.peers {
        p.wait_schedulers(2, CHANGE_TIMEOUT)?;
    }

    // The manager stops: everything keeps working on the last answers.
    w.manager.proc.kill()?;
    for (name, owner) in [("after-a", &w.s1), ("after-b", &w.s2)] {
        let (url, sha, id) = w.file_owned_by(owner, name, 4 * MIB)?;
        w.get_everywhere(&url, &sha, name)?;
        let on = w.hosts_on(owner, &id);
        for p in &w.peers {
            ensure!(
                on.contains(&p.host_id()?),
                "{} not on its scheduler: {on:?}",
                p.host
            );
        }
    }
    for p in &w.peers {
        ensure!(p.schedulers() == Some(2), "{} still uses both schedulers", p.host);
    }
    ensure!(candidate_limit(&w.s1) == Some(1) && candidate_limit(&w.s2) == Some(1));
    Ok(())
}

/// Preheat of a multi-layer image from a registry with basic auth, to every
/// peer: the manager resolves it, the seed peer fetches every layer from the
/// registry (once) into its store, then both peers fetch every layer from the
/// mesh (no byte from the registry, no credentials). Then a containerd pulling
/// through a peer's registry proxy gets every layer from the mesh: the
/// registry serves no layer blob after the preheat. Needs containerd,
/// docker-registry, umoci, skopeo, busybox-static (skipped without them,
/// failed under `DAMSELFLY_REQUIRE_LAB=1`).
#[test]
fn preheat_puts_every_layer_on_the_seed_and_every_peer_and_a_pull_takes_none_from_the_registry() -> Result<()>
{
    use damselfly_e2e::oci::{Containerd, RegistryHost, TestImage, missing_programs};
    require_root();
    let missing = missing_programs();
    if !missing.is_empty() {
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "missing programs: {missing:?}"
        );
        eprintln!("preheat: SKIPPED, missing {}", missing.join(", "));
        return Ok(());
    }
    let lab = Lab::new("dfg2", 239, &["mgr", "sched", "seed", "p1", "p2", "reg"], None)?;
    let bin = bins::damselfly()?;
    let registry = RegistryHost::start(&lab, "reg", 5000, Some(("alice", "secret")))?;
    let reg = registry.name();
    let image = TestImage::build(&lab.dir().join("image"), "app", 3, 2 * MIB)?;
    let reference = format!("{reg}/test/app:latest");
    image.push(&reference, Some("alice:secret"))?;
    let layers: Vec<(String, u64)> = image.blobs()?.into_iter().skip(1).collect();

    let manager = Manager::start(
        &lab,
        &bin,
        "mgr",
        &format!("[preheat]\npoll_interval = \"200ms\"\nplain_http_registries = [\"{reg}\"]\n"),
    )?;
    let m = manager.grpc_url();
    let _sched = Scheduler::start(&lab, &bin, "sched", &m)?;
    manager.wait_state("scheduler", "sched", "active", CHANGE_TIMEOUT)?;
    let proxy = format!(
        "[proxy]\ndefault_registry = \"{reg}\"\n[proxy.registries.\"{reg}\"]\nendpoint = \"http://{reg}\"\n"
    );
    let seed = Peer::start(&lab, &bin, "seed", &m, true, "")?;
    let p1 = Peer::start(&lab, &bin, "p1", &m, false, &proxy)?;
    let p2 = Peer::start(&lab, &bin, "p2", &m, false, "")?;
    manager.wait_state("seed_peer", "seed", "active", CHANGE_TIMEOUT)?;
    for p in [&p1, &p2] {
        manager.wait_state("peer", &p.host, "active", CHANGE_TIMEOUT)?;
        p.wait_schedulers(1, CHANGE_TIMEOUT)?;
    }

    let job = manager.api(
        "POST",
        "/api/v1/preheat-jobs",
        Some(&json!({"urls": [reference], "username": "alice", "password": "secret", "scope": "all_peers"})),
    )?;
    let id = job["id"].as_i64().context("job id")?;
    let mut done = serde_json::Value::Null;
    wait_for("the preheat job to end", Duration::from_secs(60), || {
        done = manager
            .api("GET", &format!("/api/v1/preheat-jobs/{id}"), None)
            .unwrap_or_default();
        done["state"] == "succeeded" || done["state"] == "failed"
    })?;
    ensure!(done["state"] == "succeeded", "{done}");
    // One task per layer on the seed and on each peer, each succeeded.
    let tasks = done["tasks"].as_array().context("tasks")?;
    for host in ["seed", "p1", "p2"] {
        let mut on_host: Vec<&str> = tasks
            .iter()
            .filter(|t| t["seed_hostname"] == host && t["state"] == "succeeded")
            .filter_map(|t| t["digest"].as_str())
            .collect();
        on_host.sort_unstable();
        let mut want: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
        want.sort_unstable();
        ensure!(on_host == want, "{host}: every layer once: {done}");
    }

    // Every layer is in the seed's and each peer's store, whole; only the
    // seed asked the registry for it, and the registry sent it once.
    let seed_ip = lab.ip("seed").to_string();
    let mut gets_before = Vec::new();
    for (d, size) in &layers {
        let hex = d.strip_prefix("sha256:").context("digest")?;
        for p in [&seed, &p1, &p2] {
            let stored = p.data_dir.join("content").join(hex);
            ensure!(sha256_file(&stored)? == hex, "{d} on {} is not the layer", p.host);
        }
        let gets = registry.blob_gets(d);
        ensure!(
            sent_once_to(&gets, &seed_ip, *size),
            "{d} ({size} bytes): only the seed fetches it, each byte once: {gets:?}"
        );
        gets_before.push(gets.len());
    }
    for p in [&p1, &p2] {
        let from_origin = p.metric("damselfly_peer_source_bytes_total");
        let from_peers = p.metric("damselfly_peer_peer_bytes_total").unwrap_or(0.0);
        let total: u64 = layers.iter().map(|(_, s)| s).sum();
        ensure!(
            from_origin == Some(0.0) && from_peers >= total as f64,
            "{}: {from_origin:?} bytes from the origin, {from_peers} from peers",
            p.host
        );
    }
    let layers: Vec<String> = layers.into_iter().map(|(d, _)| d).collect();

    // A containerd pulls through p1's registry proxy: the layers come from the mesh.
    let ctd = Containerd::start(&lab, "p1", &lab.dir().join("containerd-p1"))?;
    let mut init = std::process::Command::new(&bin);
    init.args(["init", "containerd", "--config-path"])
        .arg(ctd.certs_d())
        .arg("--registry")
        .arg(format!("http://{reg}"))
        .args(["--mirror", "http://127.0.0.1:65001"]);
    let out = init.output().context("damselfly init containerd")?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pull = lab.start(
        "p1",
        "ctr-pull",
        &ctd.pull_command(&reference, Some("alice:secret")),
    )?;
    pull.wait(GET_TIMEOUT)?.ensure_success()?;
    for (d, before) in layers.iter().zip(gets_before) {
        let gets = registry.blob_gets(d);
        ensure!(
            gets.len() == before,
            "{d}: the registry served it again: {gets:?}"
        );
    }
    Ok(())
}
