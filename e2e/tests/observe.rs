//! Observability for real: a lab swarm (manager, scheduler, seed, two peers,
//! a snapshotter beside one of them, an origin) runs a few downloads,
//! registry-proxy requests and snapshot prepares while
//! Debian's `prometheus` scrapes every role; then every query of every panel
//! of `deploy/grafana/*.json` must return a series, every dashboard panel
//! must carry the fields Grafana needs, and `promtool check metrics` must be
//! clean on every role's `/metrics`. Octet 82 (`dfdo`); needs root.

use anyhow::{Context, Result, bail, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::data::write_random_file;
use damselfly_e2e::http;
use damselfly_e2e::lab::Lab;
use damselfly_e2e::managed::{MANAGER_HTTP_PORT, Manager, Peer, Scheduler};
use damselfly_e2e::mesh::{PEER_METRICS_PORT, SCHEDULER_METRICS_PORT};
use damselfly_e2e::origin::Origin;
use damselfly_e2e::wait::wait_for;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ORIGIN_PORT: u16 = 8080;
const PROM_PORT: u16 = 9090;
const SNAPSHOTTER_METRICS_PORT: u16 = 8005;
const TIMEOUT: Duration = Duration::from_secs(120);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every (dashboard, panel title, expr) of the Grafana dashboards, after
/// checking each panel has a datasource, targets and a gridPos.
fn panel_queries() -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for name in ["traffic.json", "control-plane.json"] {
        let path = deploy_dir().join("grafana").join(name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let d: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parse {name}"))?;
        ensure!(
            d["uid"].is_string() && d["title"].is_string(),
            "{name}: no uid or title"
        );
        ensure!(d["schemaVersion"].as_u64().is_some(), "{name}: no schemaVersion");
        let panels = d["panels"]
            .as_array()
            .with_context(|| format!("{name}: no panels"))?;
        ensure!(!panels.is_empty(), "{name}: no panels");
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            ensure!(p["type"].is_string(), "{name}/{title}: no type");
            ensure!(
                p["datasource"]["type"] == "prometheus",
                "{name}/{title}: no prometheus datasource"
            );
            for k in ["x", "y", "w", "h"] {
                ensure!(p["gridPos"][k].is_u64(), "{name}/{title}: gridPos.{k} missing");
            }
            let targets = p["targets"]
                .as_array()
                .with_context(|| format!("{name}/{title}: no targets"))?;
            ensure!(!targets.is_empty(), "{name}/{title}: no targets");
            for t in targets {
                ensure!(t["refId"].is_string(), "{name}/{title}: a target without refId");
                let expr = t["expr"]
                    .as_str()
                    .with_context(|| format!("{name}/{title}: a target without expr"))?;
                out.push((name.to_string(), title.clone(), expr.to_string()));
            }
        }
    }
    Ok(out)
}

/// How many series Prometheus returns for `expr` now.
fn series(prom: Ipv4Addr, expr: &str) -> Result<usize> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", "--data-urlencode"])
        .arg(format!("query={expr}"))
        .arg(format!("http://{prom}:{PROM_PORT}/api/v1/query"))
        .output()
        .context("run curl")?;
    ensure!(
        out.status.success(),
        "query {expr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(v["status"] == "success", "query {expr}: {v}");
    Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
}

fn promtool_check(url_ip: Ipv4Addr, port: u16) -> Result<()> {
    let (code, body) = http::get(url_ip, port, "/metrics")?;
    ensure!(code == 200, "{url_ip}:{port}/metrics answered {code}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool (apt install prometheus)")?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics on {url_ip}:{port}: {text}"
    );
    Ok(())
}

/// Two Prepares on the snapshotter's socket, as containerd would send them: a plain one, and one
/// whose labels name a layer of an image nobody serves (`127.0.0.1:1` refuses), so it falls
/// back to a plain Prepare and counts the fallback.
fn prepare_two_snapshots(socket: &Path) -> Result<()> {
    use damselfly_snapshotter::proto::snapshots::PrepareSnapshotRequest;
    use damselfly_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient;
    use damselfly_snapshotter::remote::{IMAGE_LAYERS_LABEL, IMAGE_REF_LABEL, LAYER_DIGEST_LABEL, REF_LABEL};
    let socket = socket.to_path_buf();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .context("connect to the snapshotter's socket")?;
        let mut client = SnapshotsClient::new(channel);
        let labelled = [
            (REF_LABEL, format!("sha256:{}", "cd".repeat(32))),
            (LAYER_DIGEST_LABEL, digest.clone()),
            (IMAGE_REF_LABEL, "127.0.0.1:1/none/img:v1".to_string()),
            (IMAGE_LAYERS_LABEL, digest.clone()),
        ];
        for (key, labels) in [("plain", vec![]), ("labelled", labelled.to_vec())] {
            let mut req = tonic::Request::new(PrepareSnapshotRequest {
                key: key.into(),
                parent: String::new(),
                labels: labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                snapshotter: String::new(),
            });
            req.metadata_mut()
                .insert("containerd-namespace", "k8s.io".parse().expect("ascii"));
            let mounts = client
                .prepare(req)
                .await
                .with_context(|| format!("prepare {key}"))?
                .into_inner()
                .mounts;
            ensure!(!mounts.is_empty(), "prepare {key}: no mounts");
        }
        Ok(())
    })
}

#[test]
fn every_dashboard_query_returns_data_from_a_lab_swarm() -> Result<()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "observe tests need root (network namespaces); run them through scripts/test.sh"
    );
    let queries = panel_queries()?;
    let hosts = ["mgr", "sched", "seed", "p1", "p2", "origin", "prom"];
    let lab = Lab::new("dfdo", 82, &hosts, None)?;
    let bin = bins::damselfly()?;
    let dir = tempfile::tempdir()?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    write_random_file(&www.join("blob"), 24 << 20)?;
    let _origin = Origin::start(&lab, "origin", &www, ORIGIN_PORT)?;
    let manager = Manager::start(&lab, &bin, "mgr", "")?;
    let m = manager.grpc_url();
    let _sched = Scheduler::start(&lab, &bin, "sched", &m)?;
    manager.wait_state("scheduler", "sched", "active", TIMEOUT)?;
    let seed = Peer::start(&lab, &bin, "seed", &m, true, "")?;
    let p1 = Peer::start(&lab, &bin, "p1", &m, false, "")?;
    let p2 = Peer::start(&lab, &bin, "p2", &m, false, "")?;
    for p in [&seed, &p1, &p2] {
        p.wait_schedulers(1, TIMEOUT)?;
    }
    // A snapshotter beside p1, asking p1's registry proxy for layers.
    let socket = dir.path().join("snapshotter.sock");
    let mut snap = Command::new(&bin);
    snap.arg("snapshotter")
        .arg("--root")
        .arg(dir.path().join("snapshots"))
        .arg("--socket")
        .arg(&socket)
        .arg("--metrics-listen")
        .arg(format!("{}:{SNAPSHOTTER_METRICS_PORT}", p1.ip));
    let snapshotter = lab.spawn("p1", "snapshotter", &snap)?;
    wait_for("the snapshotter's socket", TIMEOUT, || {
        !snapshotter.is_running() || socket.exists()
    })?;
    ensure!(
        snapshotter.is_running(),
        "snapshotter exited:\n{}",
        snapshotter.log_tail(20)
    );

    // Prometheus in its own lab host, scraping every role each second.
    let prom = lab.ip("prom");
    let targets = |hs: &[&str], port: u16| -> String {
        hs.iter()
            .map(|h| format!("\"{}:{port}\"", lab.ip(h)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n\
             - job_name: damselfly-manager\n  static_configs: [{{targets: [{}]}}]\n\
             - job_name: damselfly-scheduler\n  static_configs: [{{targets: [{}]}}]\n\
             - job_name: damselfly-peer\n  static_configs: [{{targets: [{}]}}]\n\
             - job_name: damselfly-snapshotter\n  static_configs: [{{targets: [{}]}}]\n",
            deploy_dir().join("prometheus/alerts.yaml").display(),
            targets(&["mgr"], MANAGER_HTTP_PORT),
            targets(&["sched"], SCHEDULER_METRICS_PORT),
            targets(&["seed", "p1", "p2"], PEER_METRICS_PORT),
            targets(&["p1"], SNAPSHOTTER_METRICS_PORT),
        ),
    )?;
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}:{PROM_PORT}"));
    let prometheus = lab.spawn("prom", "prometheus", &cmd)?;
    wait_for("prometheus to be ready", TIMEOUT, || {
        !prometheus.is_running() || matches!(http::get(prom, PROM_PORT, "/-/ready"), Ok((200, _)))
    })?;
    ensure!(
        prometheus.is_running(),
        "prometheus exited:\n{}",
        prometheus.log_tail(20)
    );

    // Traffic: p1 (the seed fetches from the origin), p2 (from p1 and the
    // seed), p2 again (its local cache), and registry-proxy requests on p1.
    let url = format!("http://{}:{ORIGIN_PORT}/blob", lab.ip("origin"));
    for (p, n) in [(&p1, 1), (&p2, 1), (&p2, 2)] {
        let out = dir.path().join(format!("{}-{n}", p.host));
        p.start_get(&lab, &bin, &url, &out, &[])?
            .wait(TIMEOUT)?
            .ensure_success()?;
    }
    for path in ["/v2/", "/v2/library/none/manifests/latest"] {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:65001{path}"));
        lab.run("p1", &c)?;
    }
    prepare_two_snapshots(&socket)?;

    // Every panel's query returns a series (they come once a rate window has two samples).
    let mut empty = Vec::new();
    let ok = wait_for("every dashboard query to return data", TIMEOUT, || {
        empty = queries
            .iter()
            .filter(|(_, _, e)| series(prom, e).map_or(true, |n| n == 0))
            .map(|(d, t, e)| format!("{d} / {t}: {e}"))
            .collect();
        empty.is_empty()
    });
    if ok.is_err() {
        bail!("dashboard queries with no result:\n{}", empty.join("\n"));
    }
    // Every target scraped, none down.
    ensure!(series(prom, "up == 1")? == 6, "not every role is scraped up");
    ensure!(series(prom, "up == 0")? == 0, "a scrape target is down");
    // Every role, the manager included, says it is up and ready.
    ensure!(
        series(prom, "damselfly_ready == 1")? == 6,
        "not every role reports damselfly_ready 1"
    );

    // promtool on every role's /metrics.
    promtool_check(manager.ip, MANAGER_HTTP_PORT)?;
    promtool_check(lab.ip("sched"), SCHEDULER_METRICS_PORT)?;
    for p in [&seed, &p1, &p2] {
        promtool_check(p.ip, PEER_METRICS_PORT)?;
    }
    promtool_check(p1.ip, SNAPSHOTTER_METRICS_PORT)?;
    // The labelled Prepare fell back (nobody serves that image) and was counted.
    ensure!(
        series(prom, "damselfly_snapshotter_fallbacks_total >= 1")? == 1,
        "the snapshotter's fallback was not counted"
    );
    Ok(())
}
