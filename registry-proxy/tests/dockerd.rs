//! dockerd 20.10 with `registry-mirrors` (merged into its daemon.json by
//! `setup`, as `damselfly init docker` does) pulls a Docker Hub image,
//! `busybox`, through the proxy from a local registry standing in for
//! Docker Hub, then runs it. Needs root, dockerd, docker, docker-registry,
//! umoci, skopeo.

mod common;

use common::{Dockerd, ImageLayout, ProxyServer, Registry, config_for, lab_ready, run_async};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_library_images_through_registry_mirrors() {
    if !lab_ready(
        "dockerd",
        &[
            "dockerd",
            "docker",
            "docker-registry",
            "umoci",
            "skopeo",
            "busybox",
        ],
        true,
    ) {
        return;
    }
    let registry = Registry::start("");
    let layout = ImageLayout::new();
    layout.build("app", 1, 1 << 20, &["/bin/sh"]);
    layout.push("app", &format!("{}/library/busybox:latest", registry.addr), None);
    let (_, blobs) = layout.manifest("app");

    // Docker daemons send no ?ns=: the default registry stands for Docker Hub.
    let proxy = ProxyServer::start(config_for(&registry.addr)).await;
    let mirror = format!("http://{}", proxy.addr);
    let dockerd = Dockerd::start(&mirror, &[]);
    let info = run_async(
        dockerd
            .docker_async()
            .args(["info", "--format", "{{.RegistryConfig.Mirrors}}"]),
    )
    .await
    .unwrap();
    assert!(info.contains(&proxy.addr.to_string()), "{info}");

    run_async(dockerd.docker_async().args(["pull", "busybox"]))
        .await
        .unwrap_or_else(|e| panic!("docker pull: {e}\n{}", dockerd.log()));
    assert!(proxy.seen("/v2/library/busybox/manifests/latest") >= 1);
    for b in &blobs[1..] {
        assert_eq!(
            proxy.seen(&format!("GET /v2/library/busybox/blobs/{b}")),
            1,
            "{b}"
        );
    }
    let out = run_async(dockerd.docker_async().args([
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "echo",
        "docker-ok",
    ]))
    .await
    .unwrap_or_else(|e| panic!("docker run: {e}\n{}", dockerd.log()));
    assert!(out.contains("docker-ok"), "{out}");
}
