//! The registry mirror through the mesh, end to end: a CNCF registry in an
//! origin host, a scheduler, a seed, and three peer hosts each with its own
//! containerd whose `hosts.toml` (from `damselfly init containerd`) names
//! that host's peer proxy. `ctr image pull` on all three at once, then
//! `ctr run`: the registry sends every blob once, to the seed.
//!
//! Needs root, containerd (ctr, runc), docker-registry, umoci, skopeo,
//! busybox-static. Lab prefix `dfp1`, subnet octet 236.

use anyhow::Result;
use damselfly_e2e::bins;
use damselfly_e2e::mirror::{MirrorLab, MirrorOptions};
use damselfly_e2e::oci::{missing_programs, sent_once_to, which};
use std::process::Command;

const MIB: u64 = 1024 * 1024;

/// True when the lab's programs are there; otherwise a skip message, or a
/// failure under `DAMSELFLY_REQUIRE_LAB=1` (CI).
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

#[test]
fn three_containerds_pull_through_the_mesh_and_the_registry_sends_each_blob_once() -> Result<()> {
    if !lab_ready("mirror") {
        return Ok(());
    }
    let opts = MirrorOptions {
        prefix: "dfp1".into(),
        subnet: 236,
        peers: 3,
        layers: 2,
        layer_bytes: 8 * MIB,
        rate: Some("100mbit".into()),
        bin: bins::damselfly()?,
        credentials: None,
        // As `damselfly demo` runs it.
        tls: true,
    };
    let m = MirrorLab::start(&opts, |line| eprintln!("mirror: {line}"))?;
    let pulls = m.pull_all()?;
    for (host, out) in m.run_all(&["/bin/busybox", "sh", "-c", "echo ran-ok; ls /data"])? {
        assert!(
            out.contains("ran-ok") && out.contains("layer-2.bin"),
            "{host}: {out}"
        );
    }
    let report = m.report(&pulls)?;
    eprintln!("{report}");

    let seed_ip = m.lab.ip("seed").to_string();
    for (digest, size, gets) in m.blob_gets() {
        assert!(!gets.is_empty(), "{digest} never reached the registry");
        assert!(
            sent_once_to(&gets, &seed_ip, size),
            "{digest} ({size} bytes): only the seed fetches it, each byte once: {gets:?}"
        );
    }
    let mut from_peers = 0;
    for h in &m.peer_hosts {
        assert_eq!(m.peer_counter(h, "source_bytes")?, 0, "{h} went to the origin");
        from_peers += m.peer_counter(h, "peer_bytes")?;
    }
    let image: u64 = m.blobs.iter().map(|b| b.1).sum();
    assert_eq!(
        from_peers,
        3 * image,
        "every peer got the whole image from the mesh"
    );
    for h in &m.peer_hosts {
        // The proxy's own metrics are on the peer's /metrics.
        let sent = m.counter(h, "damselfly_registry_proxy_blob_bytes_total")?;
        assert_eq!(sent, image, "{h}'s proxy sent the image to containerd once");
    }
    Ok(())
}

/// A registry that demands basic auth: the pulls bring credentials, the
/// peers have none configured. The seed fetches each blob with the
/// Authorization its client's proxy proved; a client without credentials
/// gets 401 for a blob every peer holds, and a registry the peers do not
/// list gets 403.
#[test]
fn a_private_registry_through_the_mesh_and_no_blob_for_strangers() -> Result<()> {
    if !lab_ready("mirror-auth") || which("htpasswd").is_none() {
        assert!(
            std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() != Ok("1"),
            "missing htpasswd"
        );
        return Ok(());
    }
    let opts = MirrorOptions {
        prefix: "dfp2".into(),
        subnet: 237,
        peers: 2,
        layers: 1,
        layer_bytes: 4 * MIB,
        rate: None,
        bin: bins::damselfly()?,
        credentials: Some("alice:s3cret".into()),
        tls: false,
    };
    let m = MirrorLab::start(&opts, |line| eprintln!("mirror-auth: {line}"))?;
    m.pull_all()?;
    for (host, out) in m.run_all(&["/bin/busybox", "echo", "private-ok"])? {
        assert!(out.contains("private-ok"), "{host}: {out}");
    }
    let seed_ip = m.lab.ip("seed").to_string();
    for (digest, size, gets) in m.blob_gets() {
        assert!(
            sent_once_to(&gets, &seed_ip, size),
            "{digest} ({size} bytes): {gets:?}"
        );
    }
    // The credentials reached the seed through the scheduler; no daemon logged them.
    let secret = "YWxpY2U6czNjcmV0"; // base64("alice:s3cret")
    for entry in std::fs::read_dir(m.lab.dir().join("logs"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if ["peer", "seed", "scheduler"].iter().any(|d| name.contains(d)) {
            let log = std::fs::read_to_string(&path)?;
            assert!(
                !log.contains(secret) && !log.contains("s3cret"),
                "{name} logged credentials"
            );
        }
    }
    let reg = m.registry.name();
    let status = |url: String| -> Result<String> {
        m.lab.run_ok(
            "p1",
            Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url]),
        )
    };
    let (layer, _) = m.blobs.last().unwrap();
    let ns = reg.replace(':', "%3A");
    let blob = format!("http://127.0.0.1:65001/v2/demo/app/blobs/{layer}");
    assert_eq!(
        status(format!("{blob}?ns={ns}"))?,
        "401",
        "no credentials, no blob"
    );
    assert_eq!(
        status(format!("{blob}?ns=10.213.237.99%3A5000"))?,
        "403",
        "unlisted registry"
    );
    Ok(())
}
