//! Test helpers: real registries, images, containerd, all on ephemeral
//! ports and in temporary directories, every process killed by pid when its
//! guard drops (also on panic).
//!
//! Tests that need lab programs (docker-registry, umoci, skopeo,
//! containerd, root) skip with a message when they are missing, unless
//! `DAMSELFLY_REQUIRE_LAB=1`, which turns a skip into a failure (CI).

#![allow(dead_code)]

pub mod http;

use damselfly_registry_proxy::{Proxy, ProxyConfig, router, serve};
use damselfly_service::shutdown::Shutdown;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// True if every program is on PATH (and we are root when `root`);
/// otherwise prints why and returns false, or panics under
/// `DAMSELFLY_REQUIRE_LAB=1`.
pub fn lab_ready(test: &str, programs: &[&str], root: bool) -> bool {
    let mut missing: Vec<String> = programs
        .iter()
        .filter(|p| which(p).is_none())
        .map(|p| p.to_string())
        .collect();
    if root && unsafe_free_euid() != 0 {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: SKIPPED, missing {}", missing.join(", "));
    if std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("{msg}");
    false
}

fn unsafe_free_euid() -> u32 {
    // /proc/self/status "Uid: real effective ..." (no libc call needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

pub fn which(program: &str) -> Option<PathBuf> {
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin"), dirs_go_bin()];
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(extra)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn dirs_go_bin() -> PathBuf {
    std::env::var_os("GOPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join("go"))
        .join("bin")
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("create log");
        let err = out.try_clone().expect("clone log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        unsafe_kill(pid, 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // `kill` the program keeps this crate free of unsafe code.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Runs a program to completion; panics with its output on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Async version for tests whose proxy runs on the same runtime.
pub async fn run_async(cmd: &mut tokio::process::Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A port that was free a moment ago (for programs that cannot bind :0
/// and report back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(addr: &str, what: &str, proc: Option<&mut Proc>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut proc = proc;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Some(p) = proc.as_mut()
            && !p.is_running()
        {
            panic!("{what} exited before listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {addr}");
}

/// A CNCF registry (`docker-registry serve`) with its own storage.
pub struct Registry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    proc: Proc,
}

impl Registry {
    /// `extra` is appended to the YAML config (e.g. an `auth:` section).
    pub fn start(extra: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("registry.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut proc = Proc::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&cfg),
            &dir.path().join("registry.log"),
        );
        wait_for_port(&addr, "docker-registry", Some(&mut proc));
        Registry { addr, dir, proc }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many access-log lines match `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

/// An OCI layout with images built by umoci from busybox-static.
pub struct ImageLayout {
    pub dir: tempfile::TempDir,
}

impl ImageLayout {
    pub fn new() -> ImageLayout {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("umoci")
            .args(["init", "--layout"])
            .arg(dir.path().join("oci")));
        ImageLayout { dir }
    }

    pub fn layout(&self) -> PathBuf {
        self.dir.path().join("oci")
    }

    /// An image `tag` with busybox in its first layer, `extra_layers` more
    /// layers of `layer_bytes` random bytes each, and `cmd` as its command.
    pub fn build(&self, tag: &str, extra_layers: usize, layer_bytes: usize, cmd: &[&str]) {
        let image = format!("{}:{tag}", self.layout().display());
        let bundle = self.dir.path().join(format!("bundle-{tag}"));
        run(Command::new("umoci").args(["new", "--image", &image]));
        for layer in 0..=extra_layers {
            let _ = std::fs::remove_dir_all(&bundle);
            run(Command::new("umoci")
                .args(["unpack", "--image", &image])
                .arg(&bundle));
            let rootfs = bundle.join("rootfs");
            if layer == 0 {
                for d in ["bin", "etc", "tmp", "data"] {
                    std::fs::create_dir_all(rootfs.join(d)).unwrap();
                }
                std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
                for t in ["sh", "echo", "cat", "sleep", "ls", "sha256sum"] {
                    std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(t)).unwrap();
                }
                std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
            } else {
                let mut data = vec![0u8; layer_bytes];
                fill_random(&mut data, (layer as u64) ^ hash_str(tag));
                std::fs::write(rootfs.join(format!("data/layer-{layer}.bin")), data).unwrap();
            }
            run(Command::new("umoci")
                .args(["repack", "--image", &image])
                .arg(&bundle));
        }
        let _ = std::fs::remove_dir_all(&bundle);
        let mut config = Command::new("umoci");
        config.args(["config", "--image", &image]);
        for c in cmd {
            config.args(["--config.cmd", c]);
        }
        run(&mut config);
    }

    /// Pushes `tag` to `dest` (`host:port/repo:tag`) with skopeo.
    pub fn push(&self, tag: &str, dest: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        cmd.arg(format!("oci:{}:{tag}", self.layout().display()))
            .arg(format!("docker://{dest}"));
        run(&mut cmd);
    }

    /// The manifest digest and its blobs (config first) of `tag`, read
    /// from the layout.
    pub fn manifest(&self, tag: &str) -> (String, Vec<String>) {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.layout().join("index.json")).unwrap()).unwrap();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .expect("tag in index.json")
            .clone();
        let digest = desc["digest"].as_str().unwrap().to_string();
        let manifest: serde_json::Value = serde_json::from_slice(&self.blob(&digest)).unwrap();
        let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
        for l in manifest["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        (digest, blobs)
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(self.layout().join("blobs/sha256").join(hex)).unwrap()
    }
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Incompressible pseudo-random bytes (xorshift), deterministic per seed.
pub fn fill_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// The proxy served in-process on an ephemeral port; every request line
/// it sees is recorded in `requests` ("METHOD path?query").
pub struct ProxyServer {
    pub addr: SocketAddr,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    shutdown: Shutdown,
}

impl ProxyServer {
    pub async fn start(config: ProxyConfig) -> ProxyServer {
        Self::start_with(Proxy::direct(config).expect("valid proxy config")).await
    }

    pub async fn start_with(proxy: Proxy) -> ProxyServer {
        Self::start_on(proxy, "127.0.0.1:0").await
    }

    pub async fn start_on(proxy: Proxy, bind: &str) -> ProxyServer {
        let proxy = Arc::new(proxy);
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, _drain) = Shutdown::new();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        let app = router(proxy).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri()));
                next.run(req)
            },
        ));
        tokio::spawn(serve(listener, app, shutdown.clone()));
        ProxyServer {
            addr,
            requests,
            shutdown,
        }
    }

    /// Recorded requests containing `needle`.
    pub fn seen(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(needle))
            .count()
    }

    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A config whose default registry (no `?ns=`) is `registry`.
pub fn config_for(registry: &str) -> ProxyConfig {
    ProxyConfig {
        default_registry: registry.to_string(),
        upstream_retries: 1,
        // These tests name ephemeral registries with `?ns=`; the ones about
        // the default (listed registries only) set it back.
        only_listed_registries: false,
        ..ProxyConfig::default()
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// A private containerd (own root, state, socket; containers get their
/// own runc root), stopped with its shims and mounts when dropped.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Containerd {
    /// `extra` goes inside the CRI plugin section.
    pub fn start(extra_cri: &str) -> Containerd {
        let dir = tempfile::Builder::new().prefix("dfctd").tempdir().unwrap();
        let d = dir.path();
        for sub in ["root", "state", "certs.d", "runc"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/sock"
[ttrpc]
  address = "{d}/sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  {extra_cri}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let mut proc = Proc::spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("config.toml")),
            &d.join("containerd.log"),
        );
        let sock = d.join("sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if sock.exists()
                && Command::new("ctr")
                    .arg("-a")
                    .arg(&sock)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                break;
            }
            if !proc.is_running() || Instant::now() > deadline {
                panic!(
                    "containerd did not start:\n{}",
                    std::fs::read_to_string(d.join("containerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Containerd {
            dir,
            proc: Some(proc),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn certs_d(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// `ctr -a SOCK args...`
    pub fn ctr(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ctr");
        c.arg("-a").arg(self.socket());
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.proc.take();
        let dir = self.dir.path().to_string_lossy().into_owned();
        // Shims outlive containerd: stop those that belong to this one.
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains("containerd-shim") && cmdline.contains(&dir) {
                    unsafe_kill(pid, 9);
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// A private dockerd (own data-root, exec-root, socket, pidfile; no
/// iptables, no bridge) whose daemon.json gets the mirror through
/// `setup::write_daemon_json`, the code behind `damselfly init docker`.
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
}

impl Dockerd {
    pub fn start(mirror: &str, insecure: &[&str]) -> Dockerd {
        let dir = tempfile::Builder::new().prefix("dfdkr").tempdir().unwrap();
        let d = dir.path().display().to_string();
        let base = serde_json::json!({
            "data-root": format!("{d}/root"), "exec-root": format!("{d}/exec"),
            "pidfile": format!("{d}/docker.pid"), "hosts": [format!("unix://{d}/docker.sock")],
            "storage-driver": "overlay2", "iptables": false, "ip6tables": false, "ip-masq": false,
            "bridge": "none", "insecure-registries": insecure, "oom-score-adjust": 0,
        });
        let path = dir.path().join("daemon.json");
        std::fs::write(&path, base.to_string()).unwrap();
        damselfly_registry_proxy::setup::write_daemon_json(&path, mirror).unwrap();
        let mut proc = Proc::spawn(
            "dockerd",
            Command::new("dockerd").arg("--config-file").arg(&path),
            &dir.path().join("dockerd.log"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut me = Dockerd { dir, proc: None };
        loop {
            if me
                .docker()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                break;
            }
            if !proc.is_running() || Instant::now() > deadline {
                panic!("dockerd did not start:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        me.proc = Some(proc);
        me
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H unix://DIR/docker.sock`
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.path().display()));
        c
    }

    pub fn docker_async(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.path().display()));
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.proc.is_none() {
            return;
        }
        self.proc.take();
        let dir = self.dir.path().to_string_lossy().into_owned();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline =
                    String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                        .into_owned();
                if (cmdline.contains("containerd") || cmdline.contains("shim")) && cmdline.contains(&dir) {
                    unsafe_kill(pid, 9);
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// The first IPv4 address of this host that is not loopback, if any.
pub fn non_loopback_ipv4() -> Option<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let dev = f.nth(1)?;
        let addr = f.nth(1)?.split('/').next()?.to_string();
        (dev != "lo" && !addr.starts_with("127.")).then_some(addr)
    })
}
