//! `deploy/compose.yaml` started for real: a Debian dockerd in a lab host
//! (started with `nsenter --net`, its own roots, no bridge), the `FROM
//! scratch` image built from the static binary, `docker run IMAGE --help`,
//! then `docker-compose up` (host networking inside that lab host) and a
//! `damselfly get` through each of its two peers from an origin in another
//! lab host. Octet 83 (`dfdc`); needs root, `docker-compose` and the musl
//! binary in `DAMSELFLY_MUSL_BIN` (scripts/test-deploy.sh builds it and runs
//! this test).

use anyhow::{Context, Result, ensure};
use damselfly_e2e::bins;
use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::http;
use damselfly_e2e::lab::Lab;
use damselfly_e2e::origin::Origin;
use damselfly_e2e::wait::wait_for;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn docker_bin() -> &'static str {
    // Debian's 20.10 client matches Debian's dockerd.
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Runs `cmd` and returns stdout, failing with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker-compose down -v` on drop, before the lab (and dockerd) go.
struct Stack {
    compose: Vec<String>,
    env: Vec<(String, String)>,
}

impl Stack {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.cmd().args(["down", "-v", "--timeout", "5"]).output();
    }
}

/// Unmounts whatever dockerd left under its roots (its `exec/netns/default`
/// bind mount keeps the lab host's network namespace alive), after dockerd.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let prefix = self.0.display().to_string();
        let mut paths: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        paths.sort_unstable_by(|a, b| b.cmp(a));
        for m in paths {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

#[test]
#[ignore = "run by scripts/test-deploy.sh, which builds the static binary (DAMSELFLY_MUSL_BIN)"]
fn the_compose_stack_serves_a_get_through_each_peer() -> Result<()> {
    assert!(
        rustix::process::geteuid().is_root(),
        "the compose test needs root"
    );
    let musl = PathBuf::from(std::env::var("DAMSELFLY_MUSL_BIN").context("DAMSELFLY_MUSL_BIN not set")?);
    let lab = Lab::new("dfdc", 83, &["dock", "origin"], None)?;
    let dir = tempfile::tempdir()?;
    let ip = lab.ip("dock");

    // dockerd in the lab host, as lab.md says works here.
    let dk = lab.dir().join("docker");
    std::fs::create_dir_all(&dk)?;
    let _unmount = Unmount(dk.clone());
    let sock = dk.join("docker.sock");
    std::fs::write(
        dk.join("daemon.json"),
        serde_json::json!({
            "data-root": dk.join("root"), "exec-root": dk.join("exec"), "pidfile": dk.join("docker.pid"),
            "hosts": [format!("unix://{}", sock.display())], "storage-driver": "overlay2",
            "iptables": false, "ip6tables": false, "ip-masq": false, "bridge": "none",
        })
        .to_string(),
    )?;
    let mut cmd = Command::new("dockerd");
    cmd.arg("--config-file").arg(dk.join("daemon.json"));
    let dockerd = lab.spawn("dock", "dockerd", &cmd)?;
    let host = format!("unix://{}", sock.display());
    let docker = || {
        let mut c = Command::new(docker_bin());
        c.arg("-H").arg(&host).env("DOCKER_BUILDKIT", "0");
        c
    };
    wait_for("dockerd", TIMEOUT, || {
        !dockerd.is_running() || docker().arg("version").output().is_ok_and(|o| o.status.success())
    })?;
    ensure!(dockerd.is_running(), "dockerd exited:\n{}", dockerd.log_tail(20));

    // The image: FROM scratch, the static binary only.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx)?;
    std::fs::copy(&musl, ctx.join("damselfly")).context("copy the static binary")?;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    std::fs::copy(deploy.join("Dockerfile"), ctx.join("Dockerfile"))?;
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        ctx.join("ca-certificates.crt"),
    )
    .context("copy the CA bundle (apt install ca-certificates)")?;
    run(docker().args(["build", "-q", "-t", "damselfly:dev"]).arg(&ctx))?;
    let help = run(docker().args(["run", "--rm", "--network", "none", "damselfly:dev", "--help"]))?;
    ensure!(
        help.contains("scheduler") && help.contains("peer"),
        "--help: {help}"
    );
    ensure!(
        !help.contains("demo"),
        "the image's binary has the demo subcommand: {help}"
    );

    // The stack, with host networking in the lab host.
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    write_random_file(&www.join("blob"), 16 << 20)?;
    let sha = sha256_file(&www.join("blob"))?;
    let origin = Origin::start(&lab, "origin", &www, 8080)?;
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir)?;
    let stack = Stack {
        compose: vec![
            "docker-compose".into(),
            "-H".into(),
            host.clone(),
            "-p".into(),
            "dfdc".into(),
            "-f".into(),
            deploy.join("compose.yaml").display().to_string(),
        ],
        env: vec![
            ("DAMSELFLY_IP".into(), ip.to_string()),
            ("DAMSELFLY_RUN_DIR".into(), run_dir.display().to_string()),
            ("DAMSELFLY_ROOT_PASSWORD".into(), "compose-test".into()),
        ],
    };
    run(stack.cmd().args(["up", "-d"]))?;
    for (role, port) in [
        ("manager", 65004),
        ("scheduler", 8003),
        ("seed", 8004),
        ("peer-a", 8014),
        ("peer-b", 8024),
    ] {
        wait_for(&format!("{role} /readyz"), TIMEOUT, || {
            matches!(http::get(ip, port, "/readyz"), Ok((200, _)))
        })
        .with_context(|| {
            let logs = stack.cmd().args(["logs", "--tail", "20"]).output();
            logs.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        })?;
    }

    // A get through each peer, with the host's own binary on the peer's socket.
    let bin = bins::damselfly()?;
    for peer in ["peer-a", "peer-b"] {
        // Under the run dir: the peer in its container writes the file itself.
        let out = run_dir.join(format!("{peer}.out"));
        run(Command::new(&bin)
            .arg("get")
            .arg(origin.url("blob"))
            .arg("-o")
            .arg(&out)
            .arg("--socket")
            .arg(run_dir.join(format!("{peer}.sock"))))?;
        ensure!(sha256_file(&out)? == sha, "{peer}: the file differs");
    }
    // The second get came from the mesh: peers sent bytes, the seed fetched from the origin.
    let (_, seed) = http::get(ip, 8004, "/metrics")?;
    ensure!(seed.contains("damselfly_peer_source_bytes_total "), "{seed}");
    drop(stack);
    Ok(())
}
