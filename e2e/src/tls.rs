//! Certificates for mutual TLS in a lab: a CA and per-node certificates written by
//! `damselfly certs init`, and the `[tls]` table that points a node's config at its own.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// A directory holding `ca.pem` and `NAME.pem` / `NAME-key.pem` per node.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Runs `bin certs init DIR NODE...`; nodes are `ROLE:NAME`, e.g. `scheduler:sched`.
    pub fn init(bin: &Path, dir: &Path, nodes: &[&str]) -> Result<Certs> {
        let out = Command::new(bin)
            .args(["certs", "init"])
            .arg(dir)
            .args(nodes)
            .output()
            .with_context(|| format!("run {} certs init", bin.display()))?;
        ensure!(
            out.status.success(),
            "certs init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    /// Copies `ca.pem` and the pairs of `names` into `dir` (which must not exist).
    pub fn copy_to(&self, dir: &Path, names: &[&str]) -> Result<Certs> {
        std::fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
        let copy = Certs {
            dir: dir.to_path_buf(),
        };
        std::fs::copy(self.ca(), copy.ca())?;
        for n in names {
            std::fs::copy(self.cert(n), copy.cert(n))?;
            std::fs::copy(self.key(n), copy.key(n))?;
        }
        Ok(copy)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    /// The `[tls]` table (mode on) of node `name`'s config.
    pub fn toml(&self, name: &str) -> String {
        format!(
            "[tls]\nmode = \"on\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.ca(),
            self.cert(name),
            self.key(name)
        )
    }

    /// Writes node `name`'s config (just its `[tls]` table) to `path`; returns
    /// `--config PATH` for the daemon's command line.
    pub fn write_config(&self, name: &str, path: &Path) -> Result<Vec<String>> {
        std::fs::write(path, self.toml(name)).with_context(|| format!("write {}", path.display()))?;
        Ok(vec!["--config".to_string(), path.display().to_string()])
    }

    /// `GET path` of an HTTPS port (`/metrics`, `/tasks/{id}`, the manager's API) at
    /// `ip:port` through curl, as an operator would: the server must hold a certificate of
    /// this CA granting `role` (curl checks the name `ROLE.role.damselfly`, resolved to `ip`),
    /// and the client presents node `client`'s certificate (`None`: none).
    /// Returns the status (0 when no HTTP answer came, e.g. a refused handshake) and the body.
    pub fn https_get(
        &self,
        client: Option<&str>,
        role: &str,
        ip: Ipv4Addr,
        port: u16,
        path: &str,
    ) -> Result<(u16, String)> {
        let pair = client.map(|c| (self.cert(c), self.key(c)));
        https_get(
            &self.ca(),
            pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            role,
            ip,
            port,
            path,
        )
    }

    /// [`Certs::https_get`] that must answer 200; the body.
    pub fn https_text(
        &self,
        client: &str,
        role: &str,
        ip: Ipv4Addr,
        port: u16,
        path: &str,
    ) -> Result<String> {
        let (status, body) = self.https_get(Some(client), role, ip, port, path)?;
        ensure!(
            status == 200,
            "GET https://{ip}:{port}{path} as {client}: {status} {body}"
        );
        Ok(body)
    }
}

/// `GET https://ROLE.role.damselfly:PORT/PATH` at `ip` trusting `ca`, with a client
/// certificate and key or none; (status, body), status 0 without an HTTP answer.
pub fn https_get(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    role: &str,
    ip: Ipv4Addr,
    port: u16,
    path: &str,
) -> Result<(u16, String)> {
    let name = format!("{role}.role.damselfly");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{name}:{port}:{ip}"));
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://{name}:{port}{path}"));
    let out = cmd.output().context("run curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_ref()));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}
