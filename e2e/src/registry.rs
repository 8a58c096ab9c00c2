//! A real OCI registry in a lab host: Debian's `docker-registry` with
//! htpasswd auth, holding a multi-layer image built with `umoci` and pushed
//! with `skopeo` from the root namespace (which reaches lab hosts).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::Lab;
use crate::process::Proc;
use crate::wait::wait_for_tcp;

pub const REGISTRY_PORT: u16 = 5000;
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

/// The programs a registry test needs; the missing ones.
pub fn missing_tools() -> Vec<&'static str> {
    ["docker-registry", "skopeo", "umoci", "htpasswd"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}

pub struct LabRegistry {
    pub proc: Proc,
    pub ip: Ipv4Addr,
}

impl LabRegistry {
    /// Starts a registry in `host` (user alice/secret) and pushes `repo:latest`
    /// with one layer per entry of `layer_sizes` (incompressible bytes).
    pub fn start(lab: &Lab, host: &str, repo: &str, layer_sizes: &[usize]) -> Result<LabRegistry> {
        let ip = lab.ip(host);
        let dir = lab.dir().join(format!("{host}-registry"));
        std::fs::create_dir_all(&dir)?;
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .context("htpasswd")?;
        std::fs::write(dir.join("htpasswd"), &htpasswd.stdout)?;
        std::fs::write(
            dir.join("registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {ip}:{REGISTRY_PORT}\nauth:\n  htpasswd:\n    realm: lab\n    path: {}\n",
                dir.join("data").display(),
                dir.join("htpasswd").display()
            ),
        )?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(dir.join("registry.yml"));
        let proc = lab.spawn(host, "registry", &cmd)?;
        wait_for_tcp(ip, REGISTRY_PORT, Duration::from_secs(20))
            .with_context(|| format!("registry did not start:\n{}", proc.log_tail(20)))?;
        let reg = LabRegistry { proc, ip };
        build_and_push(&dir, &reg.host(), repo, layer_sizes)?;
        Ok(reg)
    }

    /// `IP:5000`.
    pub fn host(&self) -> String {
        format!("{}:{REGISTRY_PORT}", self.ip)
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn build_and_push(dir: &Path, host: &str, repo: &str, layer_sizes: &[usize]) -> Result<()> {
    let layout = dir.join("image");
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    for (i, size) in layer_sizes.iter().enumerate() {
        let bundle = dir.join(format!("bundle{i}"));
        run(Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle))?;
        let mut path = bundle.join("rootfs");
        path.push(format!("layer{i}.bin"));
        crate::data::write_random_file(&path, *size as u64)?;
        run(Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle))?;
        std::fs::remove_dir_all(&bundle)?;
    }
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("oci:{image}"),
        &format!("docker://{host}/{repo}:latest"),
    ]))
}
