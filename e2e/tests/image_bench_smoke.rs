//! `damselfly-image-bench`'s smoke variant: 2 containerd hosts, unshaped links, busybox + 2 x
//! 1 MiB, every method and one unpack run each. Needs root, containerd 1.6, crictl and the
//! `damselfly` binary (`cargo build -p damselfly`). Lab prefix `dfsnt`, subnet octet 131.

use std::process::Command;

use damselfly_e2e::imagebench::report::ImageReport;

#[test]
fn image_bench_smoke_writes_a_well_formed_report() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the image bench smoke test needs root (network namespaces, containerd)"
    );
    let mut missing = damselfly_e2e::oci::missing_programs();
    if damselfly_e2e::oci::which("crictl").is_none() {
        missing.push("crictl");
    }
    if !missing.is_empty() {
        let msg = format!("image bench smoke: SKIPPED, missing {}", missing.join(", "));
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_damselfly-image-bench"))
        .args([
            "--hosts",
            "2",
            "--rate",
            "none",
            "--layers",
            "2",
            "--layer-size",
            "1MiB",
        ])
        .args(["--unpack-runs", "1", "--prefix", "dfsnt", "--subnet", "131"])
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();

    let report = ImageReport::read(out.path()).unwrap();
    let names: Vec<&str> = report.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(names, ["direct", "mirror", "snapshotter"]);
    // busybox and two random layers.
    assert_eq!(report.setup.layers.len(), 3);
    for m in &report.methods {
        assert!(m.ok, "{} failed: {m:#?}", m.method);
        assert_eq!(m.hosts.len(), 2);
        for h in &m.hosts {
            let (pulled, running) = (h.pulled_s.unwrap(), h.running_s.unwrap());
            assert!(0.0 < pulled && pulled <= running, "{}: {h:?}", m.method);
        }
        let registry = m.registry_over_size.unwrap();
        match m.method.as_str() {
            // Each host took the image from the registry.
            "direct" => assert!((1.9..2.3).contains(&registry), "direct: {registry}"),
            // The seed took it once for both.
            _ => assert!((0.9..1.3).contains(&registry), "{}: {registry}", m.method),
        }
    }
    let snap = &report.methods[2];
    assert_eq!((snap.remote_layers, snap.fallbacks), (Some(6), Some(0)));
    let unpack = report.unpack.as_ref().unwrap();
    assert!(unpack.errors.is_empty(), "{:?}", unpack.errors);
    assert_eq!((unpack.snapshotter.len(), unpack.containerd.len()), (1, 1));
    for run in unpack.snapshotter.iter().chain(&unpack.containerd) {
        assert!(run.mib_per_s > 0.0);
        // The layers were local: the registry sent only manifests and the config.
        assert!(run.registry_tx_bytes < 64 * 1024, "{run:?}");
    }
    assert!(status.success(), "damselfly-image-bench exited with {status}");
    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for name in names {
        assert!(markdown.contains(&format!("| {name} |")), "{markdown}");
    }
}
