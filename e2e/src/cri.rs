//! CRI nodes in a lab: a containerd with CRI on in a host (configured by `damselfly init
//! containerd`), `crictl` against it, and optionally `damselfly snapshotter` beside it.
//!
//! The snapshotter end-to-end tests and `damselfly-image-bench` both use this. containerd's
//! config follows `../shared/brief/lab.md`'s traps: `restrict_oom_score_adj`, a runc root of
//! its own, network-namespace mounts under its state dir; pods use the host network (no CNI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::lab::Lab;
use crate::oci::{Containerd, which};
use crate::process::Proc;
use crate::rootfs;
use crate::wait::wait_for;

/// The snapshotter's `/metrics` inside its host.
pub const SNAPSHOTTER_METRICS_PORT: u16 = 65010;
/// The peer proxy's address inside each host (its default `[proxy] listen`).
pub const PEER_PROXY: &str = "http://127.0.0.1:65001";
/// Per-RPC timeout of `crictl` (a pull of a large image on a slow link is one RPC).
const CRICTL_TIMEOUT_S: u64 = 900;

/// How a node's containerd reaches the registry and unpacks layers.
#[derive(Debug, Clone)]
pub struct CriOptions<'a> {
    /// Where the node keeps containerd's and the snapshotter's state.
    pub dir: PathBuf,
    /// The registry, `IP:PORT` (plain HTTP).
    pub registry: &'a str,
    /// The pod sandbox image (a full reference).
    pub pause: &'a str,
    /// `Some(url)`: `certs.d/<registry>/hosts.toml` names this mirror, the registry kept as
    /// fallback (`damselfly init containerd`); `None`: straight from the registry.
    pub mirror: Option<&'a str>,
    /// Start `damselfly snapshotter` and make it CRI's snapshotter (`init containerd
    /// --snapshotter`); off: containerd's own overlayfs snapshotter.
    pub snapshotter: bool,
    /// The snapshotter's `[remote] concurrency` (None: its default).
    pub snapshotter_concurrency: Option<usize>,
    /// A directory with containerd 2.x (`containerd` and its runc shim); None: 1.6 from PATH.
    pub containerd2: Option<&'a Path>,
}

impl<'a> CriOptions<'a> {
    /// The snapshot tests' set-up: the snapshotter on, the host's peer proxy as mirror.
    pub fn snapshotter(dir: PathBuf, registry: &'a str, pause: &'a str) -> Self {
        CriOptions {
            dir,
            registry,
            pause,
            mirror: Some(PEER_PROXY),
            snapshotter: true,
            snapshotter_concurrency: None,
            containerd2: None,
        }
    }
}

/// A lab host with a containerd with CRI and, if asked, `damselfly snapshotter` (metrics on
/// 127.0.0.1:[`SNAPSHOTTER_METRICS_PORT`]). Fields drop in order: containerd first, then the
/// snapshotter.
pub struct CriNode {
    pub ctd: Containerd,
    pub snapshotter: Option<Proc>,
    pub crictl: Crictl,
    pub host: String,
}

impl CriNode {
    pub fn start(lab: &Lab, host: &str, bin: &Path, opts: &CriOptions<'_>) -> Result<CriNode> {
        let snap_dir = opts.dir.join("snapshotter");
        let socket = snap_dir.join("snapshotter.sock");
        let snapshotter = if opts.snapshotter {
            std::fs::create_dir_all(&snap_dir)?;
            let mut cmd = Command::new(bin);
            cmd.args([
                "snapshotter",
                "--metrics-listen",
                &format!("127.0.0.1:{SNAPSHOTTER_METRICS_PORT}"),
                "--root",
            ])
            .arg(snap_dir.join("root"))
            .arg("--socket")
            .arg(&socket);
            if let Some(n) = opts.snapshotter_concurrency {
                let config = snap_dir.join("snapshotter.toml");
                std::fs::write(&config, format!("[remote]\nconcurrency = {n}\n"))?;
                cmd.arg("--config").arg(config);
            }
            let proc = lab.spawn(host, "snapshotter", &cmd)?;
            wait_for("the snapshotter socket", Duration::from_secs(30), || {
                socket.exists() || !proc.is_running()
            })?;
            ensure!(proc.is_running(), "snapshotter exited:\n{}", proc.log_tail(20));
            Some(proc)
        } else {
            None
        };
        let ctd_dir = opts.dir.join("containerd");
        let containerd2 = opts.containerd2;
        let ctd = Containerd::start_program(lab, host, &ctd_dir, containerd2, |config| {
            std::fs::write(config, cri_config(&ctd_dir, opts.pause, containerd2.is_some()))?;
            let certs_d = ctd_dir.join("certs.d");
            let registry = format!("http://{}", opts.registry);
            if opts.snapshotter {
                let major = if containerd2.is_some() { "2" } else { "1" };
                init_containerd(
                    bin,
                    config,
                    major,
                    &socket,
                    None,
                    &certs_d,
                    &registry,
                    opts.mirror,
                )
            } else if let Some(mirror) = opts.mirror {
                init_hosts(bin, &certs_d, &registry, mirror)
            } else {
                write_direct_hosts(&certs_d, opts.registry)
            }
        })?;
        let version = lab.run_ok(host, ctd.ctr().arg("version"))?;
        let server = version.split("Server:").nth(1).unwrap_or_default();
        let want = if containerd2.is_some() {
            "Version:  2."
        } else {
            "Version:  1."
        };
        ensure!(server.contains(want), "containerd version: {version}");
        let config = ctd_dir.join("crictl.yaml");
        std::fs::write(
            &config,
            format!(
                "runtime-endpoint: unix://{0}\nimage-endpoint: unix://{0}\ntimeout: {CRICTL_TIMEOUT_S}\n",
                ctd.socket().display()
            ),
        )?;
        let crictl = Crictl {
            bin: which("crictl").context("crictl not found")?,
            config,
            host: host.to_string(),
        };
        Ok(CriNode {
            ctd,
            snapshotter,
            crictl,
            host: host.to_string(),
        })
    }

    /// `damselfly_snapshotter_NAME` from the snapshotter's `/metrics`.
    pub fn counter(&self, lab: &Lab, name: &str) -> Result<u64> {
        Ok(self.metric(lab, name)? as u64)
    }

    /// `damselfly_snapshotter_NAME` (e.g. a histogram's `_sum`) as a float.
    pub fn metric(&self, lab: &Lab, name: &str) -> Result<f64> {
        metric(
            lab,
            &self.host,
            SNAPSHOTTER_METRICS_PORT,
            &format!("damselfly_snapshotter_{name}"),
        )
    }
}

/// containerd's config with CRI on (the base config of [`Containerd`] turns it off).
fn cri_config(dir: &Path, pause: &str, containerd2: bool) -> String {
    let d = dir.display();
    if !containerd2 {
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_apparmor = true\n\
             \x20 sandbox_image = \"{pause}\"\n\
             \x20 netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
             \x20   runtime_type = \"io.containerd.runc.v2\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
             \x20     Root = \"{d}/runc\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n    config_path = \"{d}/certs.d\"\n"
        )
    } else {
        format!(
            "version = 3\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [plugins.'io.containerd.cri.v1.runtime']\n  disable_apparmor = true\n\
             \x20 netns_mounts_under_state_dir = true\n  restrict_oom_score_adj = true\n\
             \x20 [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n\
             \x20   runtime_type = \"io.containerd.runc.v2\"\n\
             \x20   [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n\
             \x20     Root = \"{d}/runc\"\n\
             [plugins.'io.containerd.cri.v1.images']\n\
             \x20 [plugins.'io.containerd.cri.v1.images'.pinned_images]\n    sandbox = \"{pause}\"\n\
             \x20 [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = \"{d}/certs.d\"\n"
        )
    }
}

/// `damselfly init containerd --snapshotter` on `config` (containerd `major`), with
/// `certs.d` hosts for `registry` (`http://IP:PORT`) naming `mirror` (None: the init's default)
/// and, when given, the snapshotter's root exported.
#[allow(clippy::too_many_arguments)]
pub fn init_containerd(
    bin: &Path,
    config: &Path,
    major: &str,
    socket: &Path,
    snapshotter_root: Option<&Path>,
    certs_d: &Path,
    registry: &str,
    mirror: Option<&str>,
) -> Result<()> {
    let mut init = Command::new(bin);
    init.args(["init", "containerd", "--snapshotter", "--containerd-major", major])
        .arg("--containerd-config")
        .arg(config)
        .arg("--snapshotter-socket")
        .arg(socket);
    if let Some(root) = snapshotter_root {
        init.arg("--snapshotter-root").arg(root);
    }
    if let Some(mirror) = mirror {
        init.args(["--mirror", mirror]);
    }
    let out = init
        .arg("--config-path")
        .arg(certs_d)
        .arg("--registry")
        .arg(registry)
        .output()
        .context("damselfly init containerd --snapshotter")?;
    ensure!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `damselfly init containerd` (hosts.toml only) for `registry` with `mirror`.
fn init_hosts(bin: &Path, certs_d: &Path, registry: &str, mirror: &str) -> Result<()> {
    let out = Command::new(bin)
        .args(["init", "containerd", "--config-path"])
        .arg(certs_d)
        .args(["--registry", registry, "--mirror", mirror])
        .output()
        .context("damselfly init containerd")?;
    ensure!(
        out.status.success(),
        "damselfly init containerd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `certs.d/<registry>/hosts.toml` for a plain-HTTP registry and no mirror (containerd 1.6
/// tries HTTPS for a bare `server` on a non-loopback address: lab.md, trap 3).
fn write_direct_hosts(certs_d: &Path, registry: &str) -> Result<()> {
    let dir = certs_d.join(registry);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(())
}

/// A Prometheus counter `name` (the sum of its series) from `http://127.0.0.1:PORT/metrics`
/// inside `host`.
pub fn counter(lab: &Lab, host: &str, port: u16, name: &str) -> Result<u64> {
    Ok(metric(lab, host, port, name)? as u64)
}

/// Like [`counter`], as a float.
pub fn metric(lab: &Lab, host: &str, port: u16, name: &str) -> Result<f64> {
    let text = lab.run_ok(
        host,
        Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/metrics")]),
    )?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    ensure!(!values.is_empty(), "{name} not in /metrics of {host}:\n{text}");
    Ok(values.iter().sum::<f64>())
}

/// A pod sandbox started by [`Crictl::run_pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    /// Its config file (`crictl create` needs it again).
    pub config: PathBuf,
    dir: PathBuf,
}

/// `crictl` against a lab host's containerd.
pub struct Crictl {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub host: String,
}

impl Crictl {
    /// `crictl ARGS...` in the host; its trimmed stdout.
    pub fn run(&self, lab: &Lab, args: &[&str]) -> Result<String> {
        let out = lab.run_ok(&self.host, &self.command(args))?;
        Ok(out.trim().to_string())
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    /// Starts a host-network pod sandbox (this pulls the sandbox image), its files in `dir`.
    pub fn run_pod(&self, lab: &Lab, dir: &Path, name: &str) -> Result<Pod> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join(format!("{name}.json"));
        std::fs::write(
            &config,
            serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-1"), "attempt": 0},
                "log_directory": dir.join("logs").display().to_string(),
                "linux": {"security_context": {"namespace_options": {"network": 2}}}
            })
            .to_string(),
        )?;
        let id = self.run(lab, &["runp", &config.display().to_string()])?;
        Ok(Pod {
            id,
            config,
            dir: dir.to_path_buf(),
        })
    }

    /// Creates container `name` of `image` running `command` in `pod` and starts it; returns
    /// its id once `crictl start` returned (the task runs then).
    pub fn start_container(
        &self,
        lab: &Lab,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let spec = pod.dir.join(format!("container-{name}.json"));
        std::fs::write(
            &spec,
            serde_json::json!({
                "metadata": {"name": name}, "image": {"image": image},
                "command": command,
                "log_path": format!("{name}.log"), "linux": {}
            })
            .to_string(),
        )?;
        let id = self.run(
            lab,
            &[
                "create",
                &pod.id,
                &spec.display().to_string(),
                &pod.config.display().to_string(),
            ],
        )?;
        self.run(lab, &["start", &id])?;
        Ok(id)
    }

    /// The container's state (`CONTAINER_RUNNING`, ...) and pid from `crictl inspect`.
    pub fn state(&self, lab: &Lab, id: &str) -> Result<(String, Option<u64>)> {
        let info: serde_json::Value = serde_json::from_str(&self.run(lab, &["inspect", id])?)?;
        let state = info["status"]["state"].as_str().unwrap_or_default().to_string();
        Ok((state, info["info"]["pid"].as_u64()))
    }

    /// Starts a container of `image` in a host-network pod and reads its root file system
    /// through `/proc/PID/root`.
    pub fn run_container(&self, lab: &Lab, dir: &Path, image: &str) -> Result<rootfs::Tree> {
        let pod = self.run_pod(lab, dir, "snap-pod")?;
        let id = self.start_container(
            lab,
            &pod,
            "c1",
            image,
            &["/bin/sh", "-c", "echo cri-ok; /bin/busybox sleep 600"],
        )?;
        wait_for("the container's output", Duration::from_secs(30), || {
            self.run(lab, &["logs", &id]).is_ok_and(|l| l.contains("cri-ok"))
        })?;
        let (_, pid) = self.state(lab, &id)?;
        let pid = pid.context("pid in crictl inspect")?;
        rootfs::read(Path::new(&format!("/proc/{pid}/root")))
    }

    /// Removes every container and pod (before containerd stops).
    pub fn clean(&self, lab: &Lab) {
        let _ = self.run(lab, &["rm", "-af"]);
        let _ = self.run(lab, &["stopp", "-a"]);
        let _ = self.run(lab, &["rmp", "-af"]);
    }
}
