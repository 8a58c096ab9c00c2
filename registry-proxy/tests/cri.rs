//! The kubelet's path: containerd's CRI service with `registry.config_path`
//! (hosts.toml written by `setup`) and `crictl pull` through the proxy
//! (fetched by containerd itself, not by the client), then a host-network
//! pod running the image. The pod sandbox image comes through the proxy
//! too. Needs root, containerd, runc, crictl, docker-registry, umoci,
//! skopeo.

mod common;

use common::{Containerd, ImageLayout, ProxyServer, Registry, config_for, lab_ready, run_async, which};
use damselfly_registry_proxy::setup::{RegistryTarget, write_containerd_hosts};

struct Crictl {
    config: std::path::PathBuf,
}

impl Crictl {
    fn cmd(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(which("crictl").unwrap());
        c.arg("--config").arg(&self.config);
        c
    }

    async fn run(&self, args: &[&str]) -> String {
        run_async(self.cmd().args(args))
            .await
            .unwrap_or_else(|e| panic!("crictl {args:?}: {e}"))
    }

    /// Removes every container and pod (before containerd stops).
    async fn clean(&self) {
        let _ = run_async(self.cmd().args(["rm", "-af"])).await;
        let _ = run_async(self.cmd().args(["stopp", "-a"])).await;
        let _ = run_async(self.cmd().args(["rmp", "-af"])).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_pulls_through_the_proxy_and_runs_a_pod() {
    if !lab_ready(
        "cri",
        &[
            "containerd",
            "runc",
            "crictl",
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
    layout.build("pause", 0, 0, &["/bin/sleep", "2147483647"]);
    let app = format!("{}/test/app:latest", registry.addr);
    let pause = format!("{}/test/pause:latest", registry.addr);
    layout.push("app", &app, None);
    layout.push("pause", &pause, None);
    let (_, blobs) = layout.manifest("app");

    let proxy = ProxyServer::start(config_for("docker.io")).await;
    let runc_dir = tempfile::tempdir().unwrap();
    let cri = format!(
        r#"sandbox_image = "{pause}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{}""#,
        runc_dir.path().display(),
        runc_dir.path().join("cni").display(),
    );
    let ctd = Containerd::start(&cri);
    let target = RegistryTarget::parse(&format!("http://{}", registry.addr)).unwrap();
    write_containerd_hosts(&ctd.certs_d(), &[target], &format!("http://{}", proxy.addr)).unwrap();
    let config = ctd.dir.path().join("crictl.yaml");
    let sock = ctd.socket();
    std::fs::write(
        &config,
        format!(
            "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: 60\n",
            sock.display()
        ),
    )
    .unwrap();
    let crictl = Crictl { config };

    crictl.run(&["pull", &app]).await;
    let ns = format!("ns={}", registry.addr.replace(':', "%3A"));
    for b in &blobs {
        assert_eq!(proxy.seen(&format!("GET /v2/test/app/blobs/{b}?{ns}")), 1, "{b}");
    }

    let logs = ctd.dir.path().join("logs");
    let pod = ctd.dir.path().join("pod.json");
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": "df-proxy-pod", "namespace": "default", "uid": "df-proxy-pod-1", "attempt": 0},
            "log_directory": logs.display().to_string(),
            "linux": {"security_context": {"namespace_options": {"network": 2}}}
        })
        .to_string(),
    )
    .unwrap();
    let ctr_json = ctd.dir.path().join("ctr.json");
    std::fs::write(
        &ctr_json,
        serde_json::json!({
            "metadata": {"name": "c1"}, "image": {"image": app},
            "command": ["/bin/busybox", "sh", "-c", "echo cri-ok; sleep 600"],
            "log_path": "c1.log", "linux": {}
        })
        .to_string(),
    )
    .unwrap();
    let result = async {
        let pod_id = crictl
            .run(&["runp", pod.to_str().unwrap()])
            .await
            .trim()
            .to_string();
        let cid = crictl
            .run(&[
                "create",
                &pod_id,
                ctr_json.to_str().unwrap(),
                pod.to_str().unwrap(),
            ])
            .await
            .trim()
            .to_string();
        crictl.run(&["start", &cid]).await;
        let mut out = String::new();
        for _ in 0..50 {
            out = crictl.run(&["logs", &cid]).await;
            if out.contains("cri-ok") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        out
    }
    .await;
    crictl.clean().await;
    assert!(result.contains("cri-ok"), "{result}");
    assert!(
        proxy.seen("/v2/test/pause/manifests/latest") >= 1,
        "sandbox image through the proxy"
    );
}
