//! A real registry (Debian's `docker-registry`) with htpasswd auth on an
//! ephemeral port, holding a three-layer image built with umoci and pushed with skopeo.

use super::{eventually, free_port, have, required};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Registry {
    child: Child,
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `None` (skip) when the tools are missing outside CI.
pub fn tools() -> bool {
    let missing: Vec<&str> = ["docker-registry", "skopeo", "umoci", "htpasswd"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(!required(), "missing tools for the preheat tests: {missing:?}");
    eprintln!("SKIPPED: missing {missing:?}");
    false
}

/// A registry with user alice/secret holding `test/app:latest` with three layers.
pub async fn registry_with_image() -> Registry {
    damselfly_manager::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", "alice", "secret"])
        .output()
        .unwrap();
    std::fs::write(d.join("htpasswd"), &htpasswd.stdout).unwrap();
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    std::fs::write(
        d.join("reg.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n",
            d.join("data").display(),
            d.join("htpasswd").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(d.join("reg.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = Registry {
        child,
        host: host.clone(),
        _dir: dir,
    };
    eventually(10, "registry listens", || async {
        reqwest::get(format!("http://{host}/v2/")).await.is_ok()
    })
    .await;
    build_and_push(reg._dir.path(), &host);
    reg
}

fn build_and_push(d: &Path, host: &str) {
    let layout = d.join("img");
    let image = format!("{}:app", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    for (i, size) in [(1, 3_000_000usize), (2, 1_500_000), (3, 200_000)] {
        let bundle = d.join(format!("bundle{i}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle));
        // xorshift: incompressible, so the layer is as big as its file.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ i as u64;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(bundle.join("rootfs").join(format!("layer{i}.bin")), data).unwrap();
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle));
        std::fs::remove_dir_all(&bundle).unwrap();
    }
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:secret",
        &format!("oci:{image}"),
        &format!("docker://{host}/test/app:latest"),
    ]));
}
