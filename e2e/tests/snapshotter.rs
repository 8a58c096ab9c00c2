//! `damselfly snapshotter` under Debian's containerd 1.6: the proxy plugin written by
//! `damselfly init containerd --snapshotter`, `ctr image pull --snapshotter damselfly` from a
//! registry in another host (containerd unpacks every layer into the snapshotter's overlay
//! snapshots), then containers from it. The snapshotter is restarted between the pull and the
//! first run, and again while a container runs: the running one keeps working and a new one
//! starts from the kept snapshots.
//!
//! Needs root, containerd (ctr, runc), docker-registry, umoci, skopeo, busybox-static.
//! Lab prefix `snap1`, subnet octet 70.

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::lab::Lab;
use damselfly_e2e::oci::{Containerd, RegistryHost, TestImage, missing_programs};
use damselfly_e2e::process::Proc;
use damselfly_e2e::wait::wait_for;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LAYER_BYTES: u64 = 1024 * 1024;

fn lab_ready(test: &str) -> bool {
    assert!(
        rustix::process::geteuid().is_root(),
        "{test} needs root (network namespaces, containerd); run it through scripts/test.sh"
    );
    let missing = missing_programs();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: SKIPPED, missing {}", missing.join(", "));
    assert!(
        std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("{msg}");
    false
}

fn start_snapshotter(lab: &Lab, bin: &Path, dir: &Path) -> Result<Proc> {
    let socket = dir.join("snapshotter.sock");
    let _ = std::fs::remove_file(&socket);
    let proc = lab.spawn(
        "n1",
        "snapshotter",
        Command::new(bin)
            .arg("snapshotter")
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics-listen", "127.0.0.1:0"]),
    )?;
    wait_for("the snapshotter socket", Duration::from_secs(30), || {
        socket.exists() || !proc.is_running()
    })?;
    ensure!(proc.is_running(), "snapshotter exited:\n{}", proc.log_tail(20));
    Ok(proc)
}

#[test]
fn containerd_pulls_and_runs_on_the_snapshotter_across_restarts() -> Result<()> {
    if !lab_ready("snapshotter") {
        return Ok(());
    }
    let bin = bins::damselfly()?;
    let lab = Lab::new("snap1", 70, &["origin", "n1"], None)?;
    let registry = RegistryHost::start(&lab, "origin", 5000, None)?;
    let image = format!("{}/demo/app:latest", registry.name());
    TestImage::build(&lab.dir().join("image"), "app", 2, LAYER_BYTES)?.push(&image, None)?;

    let snap_dir = lab.dir().join("snapshotter");
    let mut snapshotter = start_snapshotter(&lab, &bin, &snap_dir)?;
    let ctd = Containerd::start_configured(&lab, "n1", &lab.dir().join("containerd"), |config| {
        let out = Command::new(&bin)
            .args([
                "init",
                "containerd",
                "--snapshotter",
                "--containerd-major",
                "1",
                "--containerd-config",
            ])
            .arg(config)
            .arg("--snapshotter-socket")
            .arg(snap_dir.join("snapshotter.sock"))
            .arg("--snapshotter-root")
            .arg(snap_dir.join("root"))
            .arg("--config-path")
            .arg(config.with_file_name("certs.d"))
            .arg("--registry")
            .arg(format!("http://{}", registry.name()))
            .output()
            .context("damselfly init containerd --snapshotter")?;
        ensure!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })?;
    let plugins = lab.run_ok("n1", ctd.ctr().args(["plugins", "ls"]))?;
    ensure!(
        plugins.lines().any(|l| l.contains("io.containerd.snapshotter.v1")
            && l.contains("damselfly")
            && l.contains("ok")),
        "proxy plugin not loaded:\n{plugins}"
    );

    lab.run_ok(
        "n1",
        ctd.ctr()
            .args(["image", "pull", "--plain-http", "--snapshotter", "damselfly"])
            .arg(&image),
    )?;
    let snapshots = lab.run_ok(
        "n1",
        ctd.ctr().args(["snapshots", "--snapshotter", "damselfly", "ls"]),
    )?;
    ensure!(
        snapshots.lines().filter(|l| l.contains("Committed")).count() == 3,
        "three committed layers expected:\n{snapshots}"
    );

    // Restart between pull and run: the layers are still there.
    snapshotter.stop()?;
    snapshotter = start_snapshotter(&lab, &bin, &snap_dir)?;
    // containerd redials a proxy plugin with a backoff (at most 3 s in 1.6): wait until it has.
    let reconnected = || {
        wait_for(
            "containerd to reach the restarted snapshotter",
            Duration::from_secs(30),
            || {
                lab.run_ok(
                    "n1",
                    ctd.ctr().args(["snapshots", "--snapshotter", "damselfly", "ls"]),
                )
                .is_ok()
            },
        )
    };
    reconnected()?;
    let runc_root = ctd.dir.join("runc");
    lab.run_ok(
        "n1",
        ctd.ctr()
            .args(["run", "-d", "--snapshotter", "damselfly", "--runc-root"])
            .arg(&runc_root)
            .arg(&image)
            .args(["long", "/bin/busybox", "sleep", "600"]),
    )?;
    let size = |file: &str| format!("/bin/busybox stat -c %s /data/{file}");
    let exec = |id: &str, script: &str| -> Result<String> {
        lab.run_ok(
            "n1",
            ctd.ctr()
                .args(["task", "exec", "--exec-id", id, "long", "/bin/sh", "-c", script]),
        )
    };
    let first = exec("e1", &format!("{}; {}", size("layer-1.bin"), size("layer-2.bin")))?;
    ensure!(
        first.split_whitespace().eq(["1048576", "1048576"]),
        "sizes: {first}"
    );

    // Restart while the container runs: it keeps working, and a new one starts.
    snapshotter.stop()?;
    snapshotter = start_snapshotter(&lab, &bin, &snap_dir)?;
    reconnected()?;
    let still = exec("e2", "echo still-running; /bin/busybox ls /data")?;
    ensure!(
        still.contains("still-running") && still.contains("layer-2.bin"),
        "{still}"
    );
    let fresh = lab.run_ok(
        "n1",
        ctd.ctr()
            .args(["run", "--rm", "--snapshotter", "damselfly", "--runc-root"])
            .arg(&runc_root)
            .arg(&image)
            .args(["fresh", "/bin/sh", "-c", "echo fresh-ok; /bin/busybox ls /data"]),
    )?;
    ensure!(
        fresh.contains("fresh-ok") && fresh.contains("layer-1.bin"),
        "{fresh}"
    );

    let _ = lab.run("n1", ctd.ctr().args(["task", "kill", "-s", "KILL", "long"]));
    wait_for("the long container to stop", Duration::from_secs(30), || {
        lab.run_ok("n1", ctd.ctr().args(["task", "ls"]))
            .is_ok_and(|t| !t.contains("RUNNING"))
    })?;
    let _ = lab.run("n1", ctd.ctr().args(["task", "rm", "long"]));
    lab.run_ok("n1", ctd.ctr().args(["container", "rm", "long"]))?;
    drop(ctd);
    snapshotter.stop()?;
    Ok(())
}

/// Prometheus counter `name` from `http://127.0.0.1:PORT/metrics` inside `host`.
fn counter(lab: &Lab, host: &str, port: u16, name: &str) -> Result<u64> {
    let text = lab.run_ok(
        host,
        Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/metrics")]),
    )?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{name} not in /metrics:\n{text}"))
}

/// CRI (`crictl pull`) through containerd 1.6 configured by `init containerd --snapshotter`:
/// CRI labels every layer's Prepare, the snapshotter fetches the layers from the host's
/// registry proxy (`damselfly proxy` on 127.0.0.1:65001, straight from the origin here) and
/// answers AlreadyExists, so containerd neither fetches nor unpacks them. The registry sends
/// each layer once and no Prepare falls back. (Running a container from the CRI-pulled image is
/// not checked yet: `ctr -n k8s.io run` does not see the layers as unpacked; see README.)
/// Lab prefix `snap2`, subnet octet 71.
#[test]
fn crictl_pull_takes_every_layer_from_the_proxy() -> Result<()> {
    if !lab_ready("snapshotter-cri") || damselfly_e2e::oci::which("crictl").is_none() {
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "crictl missing"
        );
        return Ok(());
    }
    const METRICS: u16 = 65010;
    let bin = bins::damselfly()?;
    let lab = Lab::new("snap2", 71, &["origin", "n1"], None)?;
    let registry = RegistryHost::start(&lab, "origin", 5000, None)?;
    let reg = registry.name();
    let image = format!("{reg}/demo/app:latest");
    let built = TestImage::build(&lab.dir().join("image"), "app", 2, LAYER_BYTES)?;
    built.push(&image, None)?;
    let blobs = built.blobs()?;

    let proxy_config = lab.dir().join("proxy.toml");
    std::fs::write(
        &proxy_config,
        format!("default_registry = \"{reg}\"\n[registries.\"{reg}\"]\nendpoint = \"http://{reg}\"\n"),
    )?;
    let proxy = lab.spawn(
        "n1",
        "proxy",
        Command::new(&bin)
            .args(["proxy", "--listen", "127.0.0.1:65001", "--config"])
            .arg(&proxy_config),
    )?;
    let snap_dir = lab.dir().join("snapshotter");
    let socket = snap_dir.join("snapshotter.sock");
    let snapshotter = lab.spawn(
        "n1",
        "snapshotter",
        Command::new(&bin)
            .args([
                "snapshotter",
                "--metrics-listen",
                &format!("127.0.0.1:{METRICS}"),
                "--root",
            ])
            .arg(snap_dir.join("root"))
            .arg("--socket")
            .arg(&socket),
    )?;
    wait_for("the snapshotter socket", Duration::from_secs(30), || {
        socket.exists() || !snapshotter.is_running()
    })?;
    let ctd_dir = lab.dir().join("containerd");
    let ctd = Containerd::start_configured(&lab, "n1", &ctd_dir, |config| {
        // CRI on (the base config turns it off), as lab.md's traps require.
        let d = ctd_dir.display();
        std::fs::write(
            config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n\
                 \x20 netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\
                 \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                 \x20   runtime_type = \"io.containerd.runc.v2\"\n\
                 \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
                 \x20     Root = \"{d}/runc\"\n\
                 \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"{d}/certs.d\"\n"
            ),
        )?;
        let out = Command::new(&bin)
            .args([
                "init",
                "containerd",
                "--snapshotter",
                "--containerd-major",
                "1",
                "--containerd-config",
            ])
            .arg(config)
            .arg("--snapshotter-socket")
            .arg(&socket)
            .arg("--config-path")
            .arg(ctd_dir.join("certs.d"))
            .arg("--registry")
            .arg(format!("http://{reg}"))
            .output()
            .context("damselfly init containerd --snapshotter")?;
        ensure!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })?;
    let crictl_yaml = ctd_dir.join("crictl.yaml");
    std::fs::write(
        &crictl_yaml,
        format!(
            "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: 120\n",
            ctd.socket().display()
        ),
    )?;
    let crictl = damselfly_e2e::oci::which("crictl").context("crictl")?;
    lab.run_ok(
        "n1",
        Command::new(&crictl)
            .arg("--config")
            .arg(&crictl_yaml)
            .args(["pull", &image]),
    )?;

    let layers = &blobs[1..];
    assert_eq!(
        counter(&lab, "n1", METRICS, "damselfly_snapshotter_remote_layers_total")?,
        layers.len() as u64
    );
    assert_eq!(
        counter(&lab, "n1", METRICS, "damselfly_snapshotter_fallbacks_total")?,
        0
    );
    for (digest, _) in layers {
        let gets: Vec<_> = registry
            .blob_gets(digest)
            .into_iter()
            .filter(|g| g.method == "GET")
            .collect();
        assert_eq!(gets.len(), 1, "{digest} sent once: {gets:?}");
    }
    drop(ctd);
    drop(snapshotter);
    drop(proxy);
    Ok(())
}
