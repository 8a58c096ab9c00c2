//! The bench's smoke variant (part of CI): N=2, 8 MiB, unshaped links.
//! Methods come from `DAMSELFLY_SMOKE_METHODS` (default `direct,bittorrent`;
//! add `damselfly` once `cargo build -p damselfly-cli` has built the binary).
//! Needs root, like every lab test.

use std::process::Command;

use damselfly_e2e::bench::report::Report;

const METHODS_ENV: &str = "DAMSELFLY_SMOKE_METHODS";

#[test]
fn bench_smoke_writes_a_well_formed_report() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the bench smoke test needs root (network namespaces)"
    );
    let methods = std::env::var(METHODS_ENV).unwrap_or_else(|_| "direct,bittorrent".to_string());
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_damselfly-bench"))
        .args(["--hosts", "2", "--rate", "none", "--size", "8MiB", "--no-single"])
        .args(["--prefix", "dfsmoke", "--subnet", "220", "--methods", &methods])
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();

    let report = Report::read(out.path()).unwrap();
    let names: Vec<&str> = report.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(names, methods.split(',').collect::<Vec<_>>());
    assert_eq!(report.setup.size_bytes, 8 << 20);
    assert_eq!(report.setup.blob_sha256.len(), 64);
    for method in &report.methods {
        assert!(method.ok, "{} failed: {:#?}", method.method, method);
        assert_eq!(method.hosts.len(), 2);
        for host in &method.hosts {
            assert_eq!(
                host.sha256.as_deref(),
                Some(report.setup.blob_sha256.as_str()),
                "{}",
                method.method
            );
            assert!(host.done_s.is_some_and(|s| s > 0.0));
        }
        let makespan = method.makespan_s.unwrap();
        assert!(method.median_s.unwrap() <= makespan);
        // Every copy left the origin at most once per host, plus protocol overhead.
        assert!(method.origin_over_size.unwrap() <= 2.2, "{}", method.method);
        assert!(!method.tls && method.disturbances.is_empty(), "{}", method.method);
        if method.method == "damselfly" {
            // Scheduler, seed and both peer daemons, each counted.
            assert_eq!(method.cpu_s.len(), 4 + 1, "{:?}", method.cpu_s);
            assert!(method.daemon_cpu_s.is_some_and(|s| s > 0.0));
        }
    }
    assert!(status.success(), "damselfly-bench exited with {status}");

    let markdown = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for name in &names {
        assert!(markdown.contains(&format!("| {name} |")), "{markdown}");
    }
    let svg = std::fs::read_to_string(out.path().join("completion.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for name in &names {
        let uploads = std::fs::read_to_string(out.path().join(format!("uploads-{name}.svg"))).unwrap();
        assert!(uploads.contains("<polyline"), "{name}");
    }
}
