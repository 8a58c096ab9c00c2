//! Test helpers: a manager started in-process on ephemeral ports, a
//! throwaway PostgreSQL cluster, an HTTP client, and a fake seed peer.
#![allow(dead_code)]

pub mod registry;

use damselfly_manager::config::Config;
use damselfly_proto::manager as pb;
use damselfly_proto::manager::manager_client::ManagerClient;
use damselfly_service::shutdown::Shutdown;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub const ROOT_PW: &str = "root-password-for-tests";

/// A manager running inside the test process.
pub struct TestManager {
    pub base: String,
    pub grpc: String,
    pub ctx: damselfly_manager::Ctx,
    stop: Shutdown,
    _dir: Option<tempfile::TempDir>,
}

/// Fast liveness and cheap argon2, so tests take milliseconds, not minutes.
pub fn test_config(database: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        database: database.to_string(),
        keepalive_timeout: Duration::from_millis(800),
        sweep_interval: Duration::from_millis(100),
        ..Default::default()
    };
    c.auth.argon2_memory_kib = 64;
    c.auth.argon2_iterations = 1;
    c.preheat.poll_interval = Duration::from_millis(100);
    c.preheat.lease = Duration::from_secs(5);
    c.preheat.task_timeout = Duration::from_secs(30);
    if database.starts_with("postgres") {
        // Every manager on one PostgreSQL shares the key that seals secrets.
        c.secret_key = Some(damselfly_service::secret::Secret::new(TEST_SECRET_KEY));
    }
    c
}

pub const TEST_SECRET_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

impl TestManager {
    /// A manager on a fresh SQLite file.
    pub async fn sqlite() -> TestManager {
        TestManager::sqlite_with(|_| {}).await
    }

    /// A manager on a fresh SQLite file (removed on drop), config adjusted by `f`.
    pub async fn sqlite_with(f: impl FnOnce(&mut Config)) -> TestManager {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let mut config = test_config(&url);
        f(&mut config);
        let mut m = TestManager::start(config).await;
        m._dir = Some(dir);
        m
    }

    pub async fn start(config: Config) -> TestManager {
        let (stop, _drain) = Shutdown::new();
        let running = damselfly_manager::start_with(config, Some(ROOT_PW.into()), stop.clone())
            .await
            .expect("manager starts");
        TestManager {
            base: format!("http://{}", running.http_addr),
            grpc: format!("http://{}", running.grpc_addr),
            ctx: running.ctx,
            stop,
            _dir: None,
        }
    }

    pub fn stop(&self) {
        self.stop.trigger();
    }

    pub async fn grpc_client(&self) -> ManagerClient<tonic::transport::Channel> {
        ManagerClient::connect(self.grpc.clone())
            .await
            .expect("grpc connects")
    }

    pub fn anon(&self) -> Api {
        Api {
            base: self.base.clone(),
            http: reqwest::Client::new(),
            auth: None,
        }
    }

    /// Signs in with a password and returns a client that sends the session cookie.
    pub async fn session(&self, user: &str, password: &str) -> Api {
        let api = self.anon();
        let resp = api
            .http
            .post(format!("{}/api/v1/sessions", self.base))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "sign in as {user}");
        let cookie = resp
            .headers()
            .get("set-cookie")
            .expect("session cookie")
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        Api {
            auth: Some(("cookie".into(), cookie)),
            ..api
        }
    }

    pub async fn root(&self) -> Api {
        self.session("root", ROOT_PW).await
    }

    pub fn token(&self, token: &str) -> Api {
        Api {
            auth: Some(("authorization".into(), format!("Bearer {token}"))),
            ..self.anon()
        }
    }
}

impl Drop for TestManager {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// A small JSON client: every call returns (status, body).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    auth: Option<(String, String)>,
}

impl Api {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{}", self.base, path));
        if let Some((k, v)) = &self.auth {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PATCH", path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None).await
    }
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether tests that need system tools must run (CI, or `DAMSELFLY_REQUIRE_LAB=1` as
/// `scripts/test.sh` sets) or may be skipped.
pub fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var("DAMSELFLY_REQUIRE_LAB").as_deref() == Ok("1")
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway PostgreSQL cluster (Debian's `postgresql`), run as user
/// `postgres` from a temp dir with its socket there; stopped and removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PgCluster {
    /// `None` when PostgreSQL is not installed (and `CI` is unset).
    pub fn start() -> Option<PgCluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .find(|p| p.join("initdb").exists())
        });
        let Some(bin) = bin else {
            assert!(
                !required(),
                "PostgreSQL is not installed (apt-get install postgresql)"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed");
            return None;
        };
        let dir = tempfile::Builder::new().prefix("dfly-pg").tempdir().unwrap();
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "chown the PostgreSQL dir (tests run as root)");
        let data = dir.path().join("data");
        let as_pg = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let initdb = bin.join("initdb");
        as_pg(&[
            initdb.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let pg = PgCluster {
            dir,
            bin,
            port: free_port(),
        };
        pg.resume();
        Some(pg)
    }

    fn as_postgres(&self, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (or restarts) the server on the same port and data.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let pg_ctl = self.bin.join("pg_ctl");
        self.as_postgres(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-o",
            &opts,
            "start",
        ]);
    }

    /// Stops the server (to test how the manager copes with an outage).
    pub fn pause(&self) {
        let data = self.dir.path().join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        self.as_postgres(&[
            pg_ctl.to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }

    /// Creates a fresh database and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let psql = self.bin.join("psql");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(psql)
            .args([
                "-h",
                self.dir.path().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "create database: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.path().join("data").to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

/// What a fake seed peer does with a preheat command.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SeedBehaviour {
    /// Report success without downloading.
    Succeed,
    /// Download the URL with the given headers and check the digest, then report.
    Download,
    /// Fail the first attempt of every task, then behave like `Download`.
    FailFirstThenDownload,
    /// Take this long, then succeed, except for URLs containing "broken": fail those.
    SlowSucceedUnlessBroken(Duration),
}

/// (when, url, "got" or "done").
pub type Event = (std::time::Instant, String, &'static str);

/// A seed peer that speaks the manager's `SeedPeerSession` protocol (or a
/// peer on `PeerSession`).
pub struct FakeSeed {
    pub instance_id: u64,
    /// Every preheat command received, in order.
    pub received: Arc<Mutex<Vec<pb::PreheatCommand>>>,
    /// Every command received and reported.
    pub events: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSeed {
    pub async fn connect(grpc: &str, hostname: &str, behaviour: SeedBehaviour) -> FakeSeed {
        FakeSeed::open(grpc, hostname, behaviour, false).await
    }

    /// A peer (not a seed) on `PeerSession`.
    pub async fn connect_peer(grpc: &str, hostname: &str, behaviour: SeedBehaviour) -> FakeSeed {
        FakeSeed::open(grpc, hostname, behaviour, true).await
    }

    async fn open(grpc: &str, hostname: &str, behaviour: SeedBehaviour, peer: bool) -> FakeSeed {
        let mut client = ManagerClient::connect(grpc.to_string()).await.unwrap();
        let (tx, rx) = mpsc::channel::<pb::SeedPeerMessage>(64);
        tx.send(pb::SeedPeerMessage {
            message: Some(pb::seed_peer_message::Message::Hello(pb::SeedPeerHello {
                hostname: hostname.into(),
                ip: "127.0.0.1".into(),
                port: 4000,
                download_port: 4001,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut inbound = if peer {
            client.peer_session(outbound).await
        } else {
            client.seed_peer_session(outbound).await
        }
        .unwrap()
        .into_inner();
        let welcome = inbound.message().await.unwrap().unwrap();
        let instance_id = match welcome.command {
            Some(pb::seed_peer_command::Command::Welcome(w)) => w.instance_id,
            other => panic!("expected welcome, got {other:?}"),
        };
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tried = std::collections::HashSet::new();
            let mut ka = tokio::time::interval(Duration::from_millis(200));
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = ka.tick() => {
                        let _ = tx.send(pb::SeedPeerMessage { message: Some(pb::seed_peer_message::Message::Keepalive(pb::SeedPeerKeepAlive {})) }).await;
                        continue;
                    }
                };
                let Ok(Some(cmd)) = msg else { break };
                let Some(pb::seed_peer_command::Command::Preheat(p)) = cmd.command else {
                    continue;
                };
                rec.lock().unwrap().push(p.clone());
                ev.lock()
                    .unwrap()
                    .push((std::time::Instant::now(), p.url.clone(), "got"));
                let first = tried.insert(p.task_id);
                let (state, bytes, error) = match behaviour {
                    SeedBehaviour::Succeed => {
                        (pb::preheat_progress::State::Succeeded, 48 << 20, String::new())
                    }
                    SeedBehaviour::FailFirstThenDownload if first => (
                        pb::preheat_progress::State::Failed,
                        0,
                        "injected failure".to_string(),
                    ),
                    SeedBehaviour::SlowSucceedUnlessBroken(d) => {
                        tokio::time::sleep(d).await;
                        if p.url.contains("broken") {
                            (pb::preheat_progress::State::Failed, 0, "HTTP 404".to_string())
                        } else {
                            (pb::preheat_progress::State::Succeeded, 1 << 20, String::new())
                        }
                    }
                    _ => match download(&http, &p).await {
                        Ok(n) => (pb::preheat_progress::State::Succeeded, n, String::new()),
                        Err(e) => (pb::preheat_progress::State::Failed, 0, e),
                    },
                };
                ev.lock()
                    .unwrap()
                    .push((std::time::Instant::now(), p.url.clone(), "done"));
                let _ = tx
                    .send(pb::SeedPeerMessage {
                        message: Some(pb::seed_peer_message::Message::Progress(pb::PreheatProgress {
                            task_id: p.task_id,
                            state: state as i32,
                            bytes,
                            error,
                        })),
                    })
                    .await;
            }
        });
        FakeSeed {
            instance_id,
            received,
            events,
            task,
        }
    }

    /// Drops the session (the manager sees the stream end).
    pub fn disconnect(self) {
        self.task.abort();
    }
}

async fn download(http: &reqwest::Client, p: &pb::PreheatCommand) -> Result<u64, String> {
    use sha2::Digest;
    let mut req = http.get(&p.url);
    for (k, v) in &p.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if let Some(hex) = p.digest.strip_prefix("sha256:") {
        let got = format!("{:x}", sha2::Sha256::digest(&body));
        if got != hex {
            return Err(format!("digest mismatch: got sha256:{got}"));
        }
    }
    Ok(body.len() as u64)
}
