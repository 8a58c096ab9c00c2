//! The OCI distribution-spec conformance suite (pull mode) against the
//! proxy in front of a seeded CNCF registry. The registry alone fails some
//! checks (no referrers API, 500 for a malformed digest); through the proxy
//! every check passes; so does the 2023 suite's pull workflow. The suites
//! are Go programs built once per target dir by tests/scripts/conformance.sh. Needs go, docker-registry, umoci,
//! skopeo, busybox.

mod common;

use common::{ImageLayout, ProxyServer, Registry, config_for, lab_ready, run_async};
use std::path::PathBuf;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/conformance.sh")
}

fn workdir() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/conformance
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("conformance")
}

/// (passed, failed) from the suite's summary; panics if there is none.
fn summary(out: &str) -> (u32, u32) {
    let count = |label: &str| -> Option<u32> {
        out.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
    };
    match (count("Pass."), count("FAIL.")) {
        (Some(p), Some(f)) => (p, f),
        _ => panic!("no conformance summary in the output (config error?):\n{out}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_pull_mode() {
    if !lab_ready(
        "conformance",
        &["go", "docker-registry", "umoci", "skopeo", "busybox"],
        true,
    ) {
        return;
    }
    let work = workdir();
    run_async(tokio::process::Command::new(script()).arg("build").arg(&work))
        .await
        .expect("build the conformance suite");

    let registry = Registry::start("");
    let layout = ImageLayout::new();
    layout.build("v1", 0, 0, &["/bin/busybox", "sh"]);
    let repo = "conformance/repo1";
    layout.push("v1", &format!("{}/{repo}:v1", registry.addr), None);
    let (manifest, blobs) = layout.manifest("v1");
    // The suite sends no ?ns=: the proxy's default registry is the seeded one.
    let proxy = ProxyServer::start(config_for(&registry.addr)).await;

    let suite = |label: &'static str, addr: String| {
        let (manifest, blobs, work) = (manifest.clone(), blobs.join(" "), work.clone());
        async move {
            run_async(
                tokio::process::Command::new(script())
                    .args(["run"])
                    .arg(&work)
                    .args([label, &addr, repo, "v1", &manifest, &blobs]),
            )
            .await
            .expect("run the suite")
        }
    };
    let direct = suite("direct", registry.addr.clone()).await;
    let through = suite("proxy", proxy.addr.to_string()).await;
    let (dp, df) = summary(&direct);
    let (pp, pf) = summary(&through);
    eprintln!("registry alone: {dp} passed, {df} failed; through the proxy: {pp} passed, {pf} failed");
    assert!(
        df > 0,
        "the registry alone was expected to fail some checks:\n{direct}"
    );
    assert_eq!(pf, 0, "through the proxy:\n{through}");
    assert_eq!(pp, dp + df, "the proxy passes every check the registry runs");
    assert!(!through.contains("panic"), "{through}");

    // The 2023 suite (a ginkgo `go test -c` binary), pull workflow.
    run_async(
        tokio::process::Command::new(script())
            .arg("build-legacy")
            .arg(&work),
    )
    .await
    .expect("build the legacy conformance suite");
    let legacy = run_async(
        tokio::process::Command::new(script())
            .args(["run-legacy"])
            .arg(&work)
            .args([
                "proxy",
                &proxy.addr.to_string(),
                repo,
                "v1",
                &manifest,
                blobs.last().unwrap(),
            ]),
    )
    .await
    .expect("run the legacy suite");
    // "Ran 14 of 79 Specs", possibly wrapped in colour codes.
    let ran = legacy
        .lines()
        .find_map(|l| {
            l.find("Ran ")
                .map(|i| l[i..].split('\u{1b}').next().unwrap_or(""))
        })
        .unwrap_or("");
    eprintln!("legacy suite through the proxy: {ran}");
    assert!(
        legacy.contains("SUCCESS!")
            && !legacy.contains("conformance exit status")
            && !ran.starts_with("Ran 0 "),
        "{legacy}"
    );
}
