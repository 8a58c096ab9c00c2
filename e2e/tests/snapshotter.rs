//! `damselfly snapshotter` under Debian's containerd 1.6: the proxy plugin written by
//! `damselfly init containerd --snapshotter`, `ctr image pull --snapshotter damselfly` from a
//! registry in another host (containerd unpacks every layer into the snapshotter's overlay
//! snapshots), then containers from it. The snapshotter is restarted between the pull and the
//! first run, and again while a container runs: the running one keeps working and a new one
//! starts from the kept snapshots.
//!
//! Needs root, containerd (ctr, runc), docker-registry, umoci, skopeo, busybox-static.
//! Lab prefix `snap1`, subnet octet 70.

use anyhow::{Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::cri::{CriNode, CriOptions, init_containerd};
use damselfly_e2e::lab::Lab;
use damselfly_e2e::mesh::Mesh;
use damselfly_e2e::oci::{Containerd, RegistryHost, TestImage, missing_programs};
use damselfly_e2e::process::Proc;
use damselfly_e2e::rootfs;
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
        init_containerd(
            &bin,
            config,
            "1",
            &snap_dir.join("snapshotter.sock"),
            Some(&snap_dir.join("root")),
            &config.with_file_name("certs.d"),
            &format!("http://{}", registry.name()),
            None,
        )
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

/// CRI (`crictl pull`) through containerd 1.6 configured by `init containerd --snapshotter`:
/// CRI labels every layer's Prepare, the snapshotter fetches the layers from the host's
/// registry proxy (`damselfly proxy` on 127.0.0.1:65001, straight from the origin here) and
/// answers AlreadyExists, so containerd neither fetches nor unpacks them. The registry sends
/// each layer once and no Prepare falls back. Then a container runs from the image, and its
/// root file system matches an independent unpack (umoci's): contents, modes, owners, xattrs,
/// deleted files and opaque directories.
/// Lab prefix `snap2`, subnet octet 71.
#[test]
fn crictl_pull_takes_every_layer_from_the_proxy() -> Result<()> {
    if !cri_ready("snapshotter-cri") {
        return Ok(());
    }
    cri_pull_and_run("snap2", 71, None)
}

/// The same through containerd 2.3, whose CRI pulls through the transfer service (labels
/// passed because `init` sets `enable_remote_snapshot_annotations`, unpacking to the
/// snapshotter because of its `unpack_config` entry). containerd 2.3 is built from the Go
/// module proxy by `scripts/install-deps.sh` into `/opt/damselfly-containerd2/bin`
/// (`DAMSELFLY_CONTAINERD2` overrides). Lab prefix `snap3`, subnet octet 72.
#[test]
fn containerd2_transfer_service_takes_every_layer_from_the_proxy() -> Result<()> {
    if !cri_ready("snapshotter-containerd2") {
        return Ok(());
    }
    let dir = std::env::var_os("DAMSELFLY_CONTAINERD2")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/opt/damselfly-containerd2/bin".into());
    if !dir.join("containerd").is_file() {
        let msg = format!(
            "containerd 2.x not in {} (scripts/install-deps.sh builds it)",
            dir.display()
        );
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return Ok(());
    }
    cri_pull_and_run("snap3", 72, Some(&dir))
}

fn cri_ready(test: &str) -> bool {
    if !lab_ready(test) {
        return false;
    }
    if damselfly_e2e::oci::which("crictl").is_none() {
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "crictl missing"
        );
        eprintln!("{test}: SKIPPED, crictl missing");
        return false;
    }
    true
}

/// containerd 1.6 from PATH, or 2.x from `containerd2` (a directory with `containerd` and its
/// runc shim).
fn cri_pull_and_run(prefix: &str, octet: u8, containerd2: Option<&Path>) -> Result<()> {
    let bin = bins::damselfly()?;
    let lab = Lab::new(prefix, octet, &["origin", "n1"], None)?;
    let registry = RegistryHost::start(&lab, "origin", 5000, None)?;
    let reg = registry.name();
    let image = format!("{reg}/demo/app:latest");
    let built = TestImage::build(&lab.dir().join("image"), "app", 2, LAYER_BYTES)?;
    // Layers that delete, make a directory opaque, set owners, setuid bits and xattrs.
    let crafted = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/layers");
    built.add_layer(&crafted.join("image-upper-1.tar"))?;
    built.add_layer(&crafted.join("image-upper-2.tar"))?;
    built.push(&image, None)?;
    let blobs = built.blobs()?;
    let pause = format!("{reg}/demo/pause:latest");
    let pause_image = TestImage::build(&lab.dir().join("pause"), "pause", 0, 0)?;
    pause_image.set_cmd(&["/bin/busybox", "sleep", "2147483647"])?;
    pause_image.push(&pause, None)?;

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
    let node = cri_node(&lab, "n1", &bin, &reg, &pause, containerd2)?;
    node.crictl.run(&lab, &["pull", &image])?;

    let layers = &blobs[1..];
    assert_eq!(node.counter(&lab, "remote_layers_total")?, layers.len() as u64);
    assert_eq!(node.counter(&lab, "fallbacks_total")?, 0);
    for (digest, _) in layers {
        let gets: Vec<_> = registry
            .blob_gets(digest)
            .into_iter()
            .filter(|g| g.method == "GET")
            .collect();
        assert_eq!(gets.len(), 1, "{digest} sent once: {gets:?}");
    }

    // A container from the CRI-pulled image (a host-network pod: no CNI here) sees exactly
    // what umoci, an unpacker that is not ours, makes of the image's layers.
    container_matches_image(&lab, &node, &image, &built)?;
    drop(node);
    drop(proxy);
    Ok(())
}

/// A private image: the registry demands basic auth. Peer `p1`'s proxy has credentials for it
/// in its config, `p2`'s has none. `p1`'s CRI pull takes every layer from the mesh (the
/// registry sends each once, to the seed) and a container from it matches the image. Then `p2`,
/// whose pull would find every layer in the mesh: without credentials the pull fails, and with
/// credentials given to containerd only, every layer falls back to containerd's own pull (the
/// snapshotter proved no access at the origin, so the mesh gave it nothing).
/// Lab prefix `snap4`, subnet octet 73.
#[test]
fn a_node_without_credentials_gets_no_private_layer_from_the_snapshotter() -> Result<()> {
    if !cri_ready("snapshotter-private") {
        return Ok(());
    }
    let bin = bins::damselfly()?;
    let lab = Lab::new("snap4", 73, &["origin", "sched", "seed", "p1", "p2"], None)?;
    let registry = RegistryHost::start(&lab, "origin", 5000, Some(("puller", "s3cret")))?;
    let reg = registry.name();
    let image = format!("{reg}/demo/private:latest");
    let built = TestImage::build(&lab.dir().join("image"), "private", 2, LAYER_BYTES)?;
    let crafted = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/layers");
    built.add_layer(&crafted.join("image-upper-1.tar"))?;
    built.add_layer(&crafted.join("image-upper-2.tar"))?;
    built.push(&image, Some("puller:s3cret"))?;
    let blobs = built.blobs()?;
    let layers = blobs.len() as u64 - 1;
    let pause = format!("{reg}/demo/pause:latest");
    let pause_image = TestImage::build(&lab.dir().join("pause"), "pause", 0, 0)?;
    pause_image.set_cmd(&["/bin/busybox", "sleep", "2147483647"])?;
    pause_image.push(&pause, Some("puller:s3cret"))?;

    let config = |name: &str, creds: &str| -> Result<String> {
        let path = lab.dir().join(name);
        std::fs::write(
            &path,
            format!(
                "[proxy]\ndefault_registry = \"{reg}\"\n[proxy.registries.\"{reg}\"]\n\
                 endpoint = \"http://{reg}\"\n{creds}"
            ),
        )?;
        Ok(path.display().to_string())
    };
    let plain = config("peer.toml", "")?;
    let with_creds = config(
        "peer-creds.toml",
        "username = \"puller\"\npassword = \"s3cret\"\n",
    )?;
    let state = lab.dir().join("state");
    let mut mesh = Mesh::start_with_args(
        &lab,
        &bin,
        &state,
        "sched",
        "seed",
        &[],
        &["--config".into(), plain],
    )?;
    mesh.add_peer(&lab, &state, "p1", &["--config".into(), with_creds])?;
    mesh.add_peer(&lab, &state, "p2", &[])?;
    let p1 = cri_node(&lab, "p1", &bin, &reg, &pause, None)?;
    let p2 = cri_node(&lab, "p2", &bin, &reg, &pause, None)?;

    p1.crictl.run(&lab, &["pull", &image])?;
    assert_eq!(
        p1.counter(&lab, "remote_layers_total")?,
        layers,
        "p1 from the mesh"
    );
    assert_eq!(p1.counter(&lab, "fallbacks_total")?, 0);
    // The registry sent each layer once, to the seed.
    let seed_ip = lab.ip("seed").to_string();
    for (digest, size) in &blobs[1..] {
        let gets: Vec<_> = registry
            .blob_gets(digest)
            .into_iter()
            .filter(|g| g.method == "GET" && g.status / 100 == 2)
            .collect();
        ensure!(
            damselfly_e2e::oci::sent_once_to(&gets, &seed_ip, *size),
            "{digest} not sent once to the seed: {gets:?}"
        );
    }
    // The pod's sandbox image comes through the proxy, which has the credentials.
    container_matches_image(&lab, &p1, &image, &built)?;

    let refused = p2.crictl.run(&lab, &["pull", &image]);
    ensure!(refused.is_err(), "p2 pulled a private image without credentials");
    p2.crictl
        .run(&lab, &["pull", "--creds", "puller:s3cret", &image])?;
    assert_eq!(
        p2.counter(&lab, "remote_layers_total")?,
        0,
        "p2 got a layer from the snapshotter"
    );
    ensure!(
        p2.counter(&lab, "fallbacks_total")? >= layers,
        "every layer of p2 fell back"
    );
    drop(p2);
    drop(p1);
    drop(mesh);
    Ok(())
}

/// Runs a container of `image` on `node` and checks its root file system against umoci's
/// unpack of `built` (contents, modes, owners, xattrs, deletions, opaque directories).
fn container_matches_image(lab: &Lab, node: &CriNode, image: &str, built: &TestImage) -> Result<()> {
    let seen = node.crictl.run_container(lab, &node.ctd.dir, image);
    node.crictl.clean(lab);
    let seen = seen?;
    let expected = rootfs::read(&built.unpack(&lab.dir().join(format!("bundle-{}", node.host)))?)?;
    let diff: Vec<String> = expected
        .iter()
        .filter(|(k, v)| seen.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: image has {v}, container {:?}", seen.get(k)))
        .chain(
            seen.keys()
                .filter(|k| !expected.contains_key(*k))
                .map(|k| format!("{k}: only in the container")),
        )
        .collect();
    ensure!(
        diff.is_empty(),
        "container root differs from the image:\n{}",
        diff.join("\n")
    );
    // The same facts asserted outright, in case umoci got one wrong the same way.
    for (path, want) in [
        ("opq/new-c", Some("file 6 ")),
        ("opq/old-a", None),
        ("opq/sub", None),
        ("etc/gone", None),
        ("data/layer-1.bin", None),
        ("data/layer-2.bin", Some("file 1048576 ")),
        ("srv", Some("dir mode 750 owner 7:8")),
        ("srv/setuid", Some("mode 4755 owner 0:0")),
        (
            "srv/owned",
            Some("mode 640 owner 1000:1001 xattr user.damselfly=rich"),
        ),
        ("srv/second", Some("mode 600 owner 2:3 xattr user.second=2")),
        ("srv/link", Some("symlink -> owned")),
    ] {
        match (want, seen.get(path)) {
            (None, None) => {}
            (Some(w), Some(got)) if got.contains(w) => {}
            (w, got) => anyhow::bail!("{path}: want {w:?}, container has {got:?}"),
        }
    }
    Ok(())
}

/// A CRI node with the snapshotter and the host's peer proxy as mirror.
fn cri_node(
    lab: &Lab,
    host: &str,
    bin: &Path,
    reg: &str,
    pause: &str,
    containerd2: Option<&Path>,
) -> Result<CriNode> {
    let opts = CriOptions {
        containerd2,
        ..CriOptions::snapshotter(lab.dir().join(format!("node-{host}")), reg, pause)
    };
    CriNode::start(lab, host, bin, &opts)
}
