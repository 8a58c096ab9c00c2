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
