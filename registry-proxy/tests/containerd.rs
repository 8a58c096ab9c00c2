//! containerd 1.6 pulls through the proxy (`ctr image pull --hosts-dir`
//! with hosts.toml written by `setup`), then runs the image; a 20-layer
//! image; a multi-platform index; fallback to the origin when the proxy is
//! down. Needs root, containerd, runc, docker-registry, umoci, skopeo.

mod common;

use common::{Containerd, ImageLayout, ProxyServer, Registry, config_for, lab_ready, run_async};
use damselfly_registry_proxy::setup::{RegistryTarget, write_containerd_hosts};

const TOOLS: &[&str] = &[
    "containerd",
    "ctr",
    "runc",
    "docker-registry",
    "umoci",
    "skopeo",
    "busybox",
];

fn hosts_for(ctd: &Containerd, registry: &Registry, proxy: &ProxyServer) {
    let target = RegistryTarget::parse(&format!("http://{}", registry.addr)).unwrap();
    write_containerd_hosts(&ctd.certs_d(), &[target], &format!("http://{}", proxy.addr)).unwrap();
}

async fn pull(ctd: &Containerd, image: &str, extra: &[&str]) -> Result<String, String> {
    let mut c = ctd.ctr();
    c.args(["image", "pull", "--hosts-dir"])
        .arg(ctd.certs_d())
        .args(extra)
        .arg(image);
    run_async(&mut c).await
}

async fn run_image(ctd: &Containerd, image: &str, id: &str, cmd: &[&str]) -> String {
    let mut c = ctd.ctr();
    c.args(["run", "--rm", "--runc-root"])
        .arg(ctd.runc_root())
        .arg(image)
        .arg(id)
        .args(cmd);
    run_async(&mut c).await.expect("ctr run")
}

async fn forget(ctd: &Containerd, image: &str) {
    let _ = run_async(ctd.ctr().args(["image", "rm", image])).await;
    let _ = run_async(ctd.ctr().args(["content", "prune", "references"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pulls_and_runs_through_the_proxy() {
    if !lab_ready("containerd", TOOLS, true) {
        return;
    }
    let registry = Registry::start("");
    let layout = ImageLayout::new();
    layout.build("app", 2, 2 << 20, &["/bin/sh"]);
    let image = format!("{}/test/app:latest", registry.addr);
    layout.push("app", &image, None);
    let (_, blobs) = layout.manifest("app");

    let proxy = ProxyServer::start(config_for("docker.io")).await;
    let ctd = Containerd::start("");
    hosts_for(&ctd, &registry, &proxy);
    pull(&ctd, &image, &[]).await.expect("pull through the proxy");
    let ns = format!("ns={}", registry.addr.replace(':', "%3A"));
    assert!(proxy.seen(&format!("/v2/test/app/manifests/latest?{ns}")) >= 1);
    for b in &blobs {
        assert_eq!(
            proxy.seen(&format!("GET /v2/test/app/blobs/{b}?{ns}")),
            1,
            "blob {b} through the proxy once: {:?}",
            proxy.requests.lock().unwrap()
        );
    }
    let out = run_image(
        &ctd,
        &image,
        "df-proxy-run",
        &["/bin/busybox", "sh", "-c", "echo ran-ok; ls /data"],
    )
    .await;
    assert!(out.contains("ran-ok") && out.contains("layer-2.bin"), "{out}");

    // The proxy down: containerd falls back to the origin (hosts.toml server).
    forget(&ctd, &image).await;
    proxy.stop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = proxy.requests.lock().unwrap().len();
    pull(&ctd, &image, &[]).await.expect("pull with the proxy down");
    assert_eq!(proxy.requests.lock().unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_layers_and_a_multi_platform_index() {
    if !lab_ready("containerd", TOOLS, true) {
        return;
    }
    let registry = Registry::start("");
    let layout = ImageLayout::new();
    layout.build("many", 20, 64 << 10, &["/bin/sh"]);
    let many = format!("{}/test/many:latest", registry.addr);
    layout.push("many", &many, None);
    let (_, many_blobs) = layout.manifest("many");
    assert_eq!(many_blobs.len(), 22, "config + busybox + 20 layers");

    // Two images of one repository, one per architecture, under an index.
    layout.build("amd", 1, 1 << 10, &["/bin/sh"]);
    layout.build("arm", 1, 1 << 10, &["/bin/sh"]);
    let image_tag = |t: &str| format!("{}:{t}", layout.layout().display());
    common::run(std::process::Command::new("umoci").args([
        "config",
        "--image",
        &image_tag("arm"),
        "--architecture",
        "arm64",
    ]));
    layout.push("amd", &format!("{}/test/multi:amd", registry.addr), None);
    layout.push("arm", &format!("{}/test/multi:arm", registry.addr), None);
    let (amd, _) = layout.manifest("amd");
    let (arm, _) = layout.manifest("arm");
    let size = |d: &str| layout.blob(d).len();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": size(&arm),
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": size(&amd),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    let r = common::http::client()
        .put(format!("http://{}/v2/test/multi/manifests/latest", registry.addr))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(serde_json::to_vec(&index).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);

    let proxy = ProxyServer::start(config_for("docker.io")).await;
    let ctd = Containerd::start("");
    hosts_for(&ctd, &registry, &proxy);

    pull(&ctd, &many, &[]).await.expect("pull the 20-layer image");
    for b in &many_blobs {
        assert_eq!(proxy.seen(&format!("GET /v2/test/many/blobs/{b}")), 1, "{b}");
    }
    let out = run_image(
        &ctd,
        &many,
        "df-proxy-many",
        &["/bin/busybox", "sh", "-c", "ls /data | wc -l"],
    )
    .await;
    assert_eq!(out.trim(), "20");

    let multi = format!("{}/test/multi:latest", registry.addr);
    pull(&ctd, &multi, &["--platform", "linux/amd64"])
        .await
        .expect("pull the index");
    assert_eq!(proxy.seen(&format!("/v2/test/multi/manifests/{amd}")), 1);
    assert_eq!(proxy.seen(&format!("/v2/test/multi/manifests/{arm}")), 0);
    let out = run_image(
        &ctd,
        &multi,
        "df-proxy-multi",
        &["/bin/busybox", "echo", "multi-ok"],
    )
    .await;
    assert!(out.contains("multi-ok"), "{out}");
}

/// Trap 3: containerd 1.6 tries HTTPS for a non-loopback `server = "http://..."`
/// alone; the `[host."http://..."]` entry that `setup` writes keeps the
/// mirror on plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_on_a_non_loopback_address() {
    if !lab_ready("containerd non-loopback", TOOLS, true) {
        return;
    }
    let Some(ip) = common::non_loopback_ipv4() else {
        eprintln!("mirror_on_a_non_loopback_address: SKIPPED, no non-loopback IPv4 address");
        return;
    };
    let registry = Registry::start("");
    let layout = ImageLayout::new();
    layout.build("app", 0, 0, &["/bin/sh"]);
    let image = format!("{}/test/app:latest", registry.addr);
    layout.push("app", &image, None);
    let proxy = damselfly_registry_proxy::Proxy::direct(config_for("docker.io")).unwrap();
    let proxy = ProxyServer::start_on(proxy, &format!("{ip}:0")).await;
    let ctd = Containerd::start("");
    hosts_for(&ctd, &registry, &proxy);
    pull(&ctd, &image, &[])
        .await
        .expect("pull through a non-loopback mirror");
    assert!(
        proxy.seen("/blobs/sha256:") >= 2,
        "{:?}",
        proxy.requests.lock().unwrap()
    );
}
