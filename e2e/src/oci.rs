//! Container images in a lab: a CNCF registry (`docker-registry serve`) in a
//! host, a test image built with umoci from busybox-static and pushed with
//! skopeo, and one private containerd per host.
//!
//! Used by the registry-mirror end-to-end test and by `damselfly demo`.
//! The programs come from Debian: `docker-registry`, `umoci`, `skopeo`,
//! `busybox-static`, `containerd` (with `ctr` and `runc`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::lab::{Lab, describe};
use crate::process::Proc;
use crate::wait::{wait_for, wait_for_tcp};

/// Programs this module runs (Debian packages in [`PACKAGES`]).
pub const PROGRAMS: &[&str] = &[
    "docker-registry",
    "umoci",
    "skopeo",
    "busybox",
    "containerd",
    "ctr",
    "runc",
];
/// The Debian packages that provide [`PROGRAMS`] (and `ip`, `tc`, `nsenter`).
pub const PACKAGES: &[&str] = &[
    "docker-registry",
    "umoci",
    "skopeo",
    "busybox-static",
    "containerd",
    "runc",
    "iproute2",
    "util-linux",
];
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Programs of [`PROGRAMS`] not found on PATH (or in /usr/sbin, /sbin).
pub fn missing_programs() -> Vec<&'static str> {
    PROGRAMS.iter().copied().filter(|p| which(p).is_none()).collect()
}

pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs a set-up program in the root namespace; fails with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub client: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

/// Did these registry GETs of one blob of `size` bytes, all from `client`,
/// carry each byte once? A peer fetching from the origin sends one 1-byte
/// length probe, then Range GETs that together cover the blob once
/// (`source.connections` of them, in blocks).
pub fn sent_once_to(gets: &[Access], client: &str, size: u64) -> bool {
    let (probes, bodies): (Vec<&Access>, Vec<&Access>) = gets.iter().partition(|g| g.bytes == 1 && size > 1);
    let body: u64 = bodies.iter().map(|g| g.bytes).sum();
    !gets.is_empty() && gets.iter().all(|g| g.client == client) && probes.len() <= 1 && body == size
}

impl Access {
    /// Parses `IP - - [date] "GET /path HTTP/1.1" 200 1234 "referer" "agent"`.
    pub fn parse(line: &str) -> Option<Access> {
        let client = line.split_whitespace().next()?.to_string();
        let (_, rest) = line.split_once('"')?;
        let (request, rest) = rest.split_once('"')?;
        let mut req = request.split_whitespace();
        let (method, path) = (req.next()?.to_string(), req.next()?.to_string());
        let mut tail = rest.split_whitespace();
        let status = tail.next()?.parse().ok()?;
        let bytes = tail.next()?.parse().unwrap_or(0);
        Some(Access {
            client,
            method,
            path,
            status,
            bytes,
        })
    }
}

/// `docker-registry serve` in a lab host, plain HTTP, its own storage.
pub struct RegistryHost {
    pub ip: Ipv4Addr,
    pub port: u16,
    proc: Proc,
}

impl RegistryHost {
    /// With `user`, the registry demands HTTP basic auth with that
    /// `(name, password)` (an htpasswd file made by `htpasswd`, from
    /// apache2-utils).
    pub fn start(lab: &Lab, host: &str, port: u16, user: Option<(&str, &str)>) -> Result<RegistryHost> {
        let ip = lab.ip(host);
        let dir = lab.dir().join(format!("registry-{host}"));
        std::fs::create_dir_all(&dir)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
            dir.join("data").display()
        );
        if let Some((name, password)) = user {
            let entry = run(Command::new("htpasswd").args(["-Bbn", name, password]))?;
            let file = dir.join("htpasswd");
            std::fs::write(&file, entry.trim())?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: lab\n    path: {}\n",
                file.display()
            ));
        }
        let file = dir.join("registry.yml");
        std::fs::write(&file, config)?;
        let proc = lab.spawn(
            host,
            "registry",
            Command::new("docker-registry").arg("serve").arg(&file),
        )?;
        wait_for("docker-registry to listen", START_TIMEOUT, || {
            !proc.is_running() || std::net::TcpStream::connect((ip, port)).is_ok()
        })?;
        ensure!(
            proc.is_running(),
            "docker-registry exited:\n{}",
            proc.log_tail(20)
        );
        wait_for_tcp(ip, port, START_TIMEOUT)?;
        Ok(RegistryHost { ip, port, proc })
    }

    /// `IP:PORT`, as clients name the registry.
    pub fn name(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The access log so far.
    pub fn accesses(&self) -> Vec<Access> {
        self.proc.log().lines().filter_map(Access::parse).collect()
    }

    /// GETs of one blob (`sha256:...`), from any repository.
    pub fn blob_gets(&self, digest: &str) -> Vec<Access> {
        let suffix = format!("/blobs/{digest}");
        self.accesses()
            .into_iter()
            .filter(|a| a.method == "GET" && a.path.split('?').next().unwrap_or("").ends_with(&suffix))
            .collect()
    }
}

/// A test image in an OCI layout: busybox-static in the first layer, then
/// `layers` layers of `layer_bytes` random bytes each (`/data/layer-N.bin`).
pub struct TestImage {
    dir: PathBuf,
    pub tag: String,
}

impl TestImage {
    pub fn build(dir: &Path, tag: &str, layers: usize, layer_bytes: u64) -> Result<TestImage> {
        Self::build_marked(dir, tag, layers, layer_bytes, false)
    }

    /// Like [`Self::build`], with `/etc/test-image` holding `tag` in the busybox layer, so that
    /// layer differs from any other image's (two builds within the same second are otherwise
    /// byte for byte the same layer).
    pub fn build_distinct(dir: &Path, tag: &str, layers: usize, layer_bytes: u64) -> Result<TestImage> {
        Self::build_marked(dir, tag, layers, layer_bytes, true)
    }

    fn build_marked(
        dir: &Path,
        tag: &str,
        layers: usize,
        layer_bytes: u64,
        marked: bool,
    ) -> Result<TestImage> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .context("busybox not found (apt-get install busybox-static)")?;
        std::fs::create_dir_all(dir)?;
        let layout = dir.join("oci");
        if !layout.join("oci-layout").exists() {
            run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
        }
        let image = format!("{}:{tag}", layout.display());
        let bundle = dir.join(format!("bundle-{tag}"));
        run(Command::new("umoci").args(["new", "--image", &image]))?;
        for layer in 0..=layers {
            let _ = std::fs::remove_dir_all(&bundle);
            run(Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(&bundle))?;
            let rootfs = bundle.join("rootfs");
            if layer == 0 {
                for d in ["bin", "etc", "tmp", "data"] {
                    std::fs::create_dir_all(rootfs.join(d))?;
                }
                std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
                for t in ["sh", "echo", "cat", "ls", "sha256sum"] {
                    std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t))?;
                }
                std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
                if marked {
                    std::fs::write(rootfs.join("etc/test-image"), tag)?;
                }
            } else {
                crate::data::write_random_file(&rootfs.join(format!("data/layer-{layer}.bin")), layer_bytes)?;
            }
            run(Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle))?;
        }
        let _ = std::fs::remove_dir_all(&bundle);
        run(Command::new("umoci").args(["config", "--image", &image, "--config.cmd", "/bin/sh"]))?;
        Ok(TestImage {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
        })
    }

    /// Appends an uncompressed layer tarball verbatim as the new top layer.
    pub fn add_layer(&self, tar: &Path) -> Result<()> {
        run(Command::new("umoci")
            .args(["raw", "add-layer", "--image", &self.reference()])
            .arg(tar))?;
        Ok(())
    }

    /// Sets the image config's command.
    pub fn set_cmd(&self, cmd: &[&str]) -> Result<()> {
        let mut c = Command::new("umoci");
        c.args(["config", "--image", &self.reference(), "--clear=config.cmd"]);
        for arg in cmd {
            c.args(["--config.cmd", arg]);
        }
        run(&mut c)?;
        Ok(())
    }

    /// Unpacks the whole image with umoci (an unpacker that is not ours) into `bundle` and
    /// returns its root file system: what a container of this image must see.
    pub fn unpack(&self, bundle: &Path) -> Result<PathBuf> {
        run(Command::new("umoci")
            .args(["unpack", "--image", &self.reference()])
            .arg(bundle))?;
        Ok(bundle.join("rootfs"))
    }

    fn reference(&self) -> String {
        format!("{}:{}", self.dir.join("oci").display(), self.tag)
    }

    /// Pushes the image to `reference` (`host:port/repo:tag`, plain HTTP),
    /// with `user:password` if given.
    pub fn push(&self, reference: &str, creds: Option<&str>) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        run(cmd
            .arg(format!("oci:{}:{}", self.dir.join("oci").display(), self.tag))
            .arg(format!("docker://{reference}")))?;
        Ok(())
    }

    /// The image's blobs, config first, then layers: `(digest, size)`.
    pub fn blobs(&self) -> Result<Vec<(String, u64)>> {
        let layout = self.dir.join("oci");
        let read = |digest: &str| -> Result<serde_json::Value> {
            let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
            let file = layout.join("blobs/sha256").join(hex);
            Ok(serde_json::from_slice(&std::fs::read(&file)?)?)
        };
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let desc = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == self.tag.as_str())
            })
            .with_context(|| format!("tag {} in index.json", self.tag))?;
        let manifest = read(desc["digest"].as_str().context("manifest digest")?)?;
        let entry = |d: &serde_json::Value| -> Result<(String, u64)> {
            Ok((
                d["digest"].as_str().context("digest")?.to_string(),
                d["size"].as_u64().context("size")?,
            ))
        };
        let mut out = vec![entry(&manifest["config"])?];
        for l in manifest["layers"].as_array().context("layers")? {
            out.push(entry(l)?);
        }
        Ok(out)
    }
}

/// A containerd of its own in a lab host (root, state, socket, runc root
/// and `certs.d` under `dir`), started with `nsenter --net` so that
/// containers see the cgroup mounts. Dropping it stops it, the shims of
/// its containers, and unmounts what it left.
pub struct Containerd {
    pub host: String,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

impl Containerd {
    pub fn start(lab: &Lab, host: &str, dir: &Path) -> Result<Containerd> {
        Self::start_configured(lab, host, dir, |_| Ok(()))
    }

    /// Like [`Self::start`], with `configure(config.toml)` run on the written config first.
    pub fn start_configured(
        lab: &Lab,
        host: &str,
        dir: &Path,
        configure: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Containerd> {
        Self::start_program(lab, host, dir, None, configure)
    }

    /// Like [`Self::start_configured`], with `containerd` and its runc shim taken from
    /// `bin_dir` (e.g. a containerd 2.x build) instead of PATH.
    pub fn start_program(
        lab: &Lab,
        host: &str,
        dir: &Path,
        bin_dir: Option<&Path>,
        configure: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Containerd> {
        for sub in ["root", "state", "certs.d", "runc"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n"
        );
        std::fs::write(dir.join("config.toml"), config)?;
        configure(&dir.join("config.toml"))?;
        let mut cmd = match bin_dir {
            Some(b) => {
                let path = std::env::var("PATH").unwrap_or_default();
                let mut c = Command::new(b.join("containerd"));
                c.env("PATH", format!("{}:{path}", b.display()));
                c
            }
            None => Command::new("containerd"),
        };
        let proc = lab.spawn(
            host,
            "containerd",
            cmd.arg("--config").arg(dir.join("config.toml")),
        )?;
        let me = Containerd {
            host: host.to_string(),
            dir: dir.to_path_buf(),
            proc: Some(proc),
        };
        let proc = me.proc.as_ref().expect("just set");
        wait_for("containerd to answer", START_TIMEOUT, || {
            !proc.is_running()
                || Command::new("ctr")
                    .arg("-a")
                    .arg(me.socket())
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
        })?;
        ensure!(proc.is_running(), "containerd exited:\n{}", proc.log_tail(20));
        Ok(me)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The `certs.d` directory for `ctr --hosts-dir`.
    pub fn certs_d(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// `ctr -a SOCKET`, to run in the host (`ctr` 1.6 pulls in its own
    /// process, so its network namespace is the one that counts).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.socket());
        c
    }

    /// `ctr image pull --hosts-dir CERTS_D [--user USER:PASSWORD] IMAGE`.
    pub fn pull_command(&self, image: &str, creds: Option<&str>) -> Command {
        let mut c = self.ctr();
        c.args(["image", "pull", "--hosts-dir"]).arg(self.certs_d());
        if let Some(creds) = creds {
            c.args(["--user", creds]);
        }
        c.arg(image);
        c
    }

    /// `ctr image pull --plain-http [--user USER:PASSWORD] IMAGE`: straight
    /// from the registry, no mirror.
    pub fn pull_direct_command(&self, image: &str, creds: Option<&str>) -> Command {
        let mut c = self.ctr();
        c.args(["image", "pull", "--plain-http"]);
        if let Some(creds) = creds {
            c.args(["--user", creds]);
        }
        c.arg(image);
        c
    }

    /// `ctr run --rm` with this containerd's own runc root.
    pub fn run_command(&self, image: &str, id: &str, args: &[&str]) -> Command {
        let mut c = self.ctr();
        c.args(["run", "--rm", "--runc-root"])
            .arg(self.dir.join("runc"))
            .arg(image)
            .arg(id)
            .args(args);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.stop();
        }
        // Shims outlive containerd; ours name our socket on their command line.
        let ours = self.dir.to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("containerd-shim") && cmdline.contains(&ours) {
                    crate::process::kill_now(pid);
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut left: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&ours))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines() {
        let line = r#"10.213.236.13 - - [25/Nov/2026:10:00:00 +0000] "GET /v2/test/app/blobs/sha256:ab HTTP/1.1" 200 1234 "" "Go-http-client/1.1""#;
        assert_eq!(
            Access::parse(line),
            Some(Access {
                client: "10.213.236.13".into(),
                method: "GET".into(),
                path: "/v2/test/app/blobs/sha256:ab".into(),
                status: 200,
                bytes: 1234,
            })
        );
        assert_eq!(Access::parse("time=... level=info msg=hello"), None);
    }
}
