//! The proxy in front of a real CNCF registry (docker-registry 2.8) with an
//! image built by umoci and pushed by skopeo: manifests with several Accept
//! lines, blobs, ranges, HEAD, tags, referrers and error answers.

mod common;

use common::http::{client, oci_code};
use common::{ImageLayout, ProxyServer, Registry, config_for, lab_ready, sha256_hex};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_the_proxy_from_a_real_registry() {
    if !lab_ready(
        "registry",
        &["docker-registry", "umoci", "skopeo", "busybox"],
        true,
    ) {
        return;
    }
    let registry = Registry::start("");
    let image = ImageLayout::new();
    image.build("app", 1, 3 << 20, &["/bin/sh"]);
    image.push("app", &format!("{}/test/app:latest", registry.addr), None);
    let (manifest_digest, blobs) = image.manifest("app");
    let layer = blobs.last().unwrap().clone();
    let layer_bytes = image.blob(&layer);

    let proxy = ProxyServer::start(config_for("docker.io")).await;
    let ns = format!("ns={}", registry.addr.replace(':', "%3A"));
    let c = client();

    // /v2/
    let r = c.get(proxy.url(&format!("/v2/?{ns}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Manifest by tag, Accept as two header lines, Docker's first: only
    // forwarding both lines gets the OCI manifest (Trap 5).
    let r = c
        .get(proxy.url(&format!("/v2/test/app/manifests/latest?{ns}")))
        .header("accept", DOCKER_MANIFEST)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_MANIFEST);
    assert_eq!(r.headers()["docker-content-digest"], manifest_digest.as_str());
    let body = r.bytes().await.unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), manifest_digest);

    // HEAD by digest.
    let r = c
        .head(proxy.url(&format!("/v2/test/app/manifests/{manifest_digest}?{ns}")))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], body.len().to_string().as_str());

    // Blobs: whole, ranges, HEAD.
    let blob_url = proxy.url(&format!("/v2/test/app/blobs/{layer}?{ns}"));
    let r = c.get(&blob_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], layer.as_str());
    assert_eq!(
        r.headers()["content-length"],
        layer_bytes.len().to_string().as_str()
    );
    assert!(r.bytes().await.unwrap() == layer_bytes);
    let total = layer_bytes.len();
    for (range, from, to) in [
        ("bytes=0-0".to_string(), 0, 0),
        ("bytes=1000-1999".to_string(), 1000, 1999),
        (format!("bytes={}-", total - 10), total - 10, total - 1),
        ("bytes=-100".to_string(), total - 100, total - 1),
    ] {
        let r = c.get(&blob_url).header("range", &range).send().await.unwrap();
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {from}-{to}/{total}").as_str()
        );
        assert!(r.bytes().await.unwrap() == layer_bytes[from..=to], "{range}");
    }
    let r = c
        .get(&blob_url)
        .header("range", format!("bytes={total}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = c.head(&blob_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], total.to_string().as_str());

    // Tags and referrers (the registry has no referrers API: an empty index).
    let r = c
        .get(proxy.url(&format!("/v2/test/app/tags/list?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tags: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    let r = c
        .get(proxy.url(&format!("/v2/test/app/referrers/{manifest_digest}?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));

    // Errors.
    let unknown = format!("sha256:{}", "0".repeat(64));
    let r = c
        .get(proxy.url(&format!("/v2/test/app/blobs/{unknown}?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(oci_code(&r.bytes().await.unwrap()), "BLOB_UNKNOWN");
    let r = c
        .get(proxy.url(&format!("/v2/test/app/manifests/nope?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(oci_code(&r.bytes().await.unwrap()), "MANIFEST_UNKNOWN");
    let r = c
        .get(proxy.url(&format!("/v2/test/nothing/manifests/latest?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .get(proxy.url(&format!("/v2/test/app/manifests/sha256:totallywrong?{ns}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(oci_code(&r.bytes().await.unwrap()), "DIGEST_INVALID");

    // Docker daemons send no ns: the default registry serves them.
    let docker_style = ProxyServer::start(config_for(&registry.addr)).await;
    let r = c
        .get(docker_style.url("/v2/test/app/manifests/latest"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(docker_style.url(&format!("/v2/test/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == layer_bytes);
}
