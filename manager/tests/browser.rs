//! The web console in headless Chromium (Debian `chromium` + `chromium-driver`),
//! driven over WebDriver with fantoccini: sign in, create a cluster (with an
//! XSS payload in its name), edit its settings, watch a scheduler turn active,
//! start a preheat and watch it finish. Screenshots of the main pages land in
//! the target directory's `tmp/console-screenshots/`; with
//! `DAMSELFLY_UPDATE_SCREENSHOTS=1` they replace the copies in
//! `manager/tests/artifacts/` that the README links to.

mod common;

use common::*;
use damselfly_proto::manager as pb;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> PathBuf {
    let d = if std::env::var_os("DAMSELFLY_UPDATE_SCREENSHOTS").is_some() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("artifacts")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
    };
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(artifacts().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for(c: &Client, css: &str) -> fantoccini::elements::Element {
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never appeared in {}", c.source().await.unwrap_or_default());
}

/// The text of `css` once it contains `needle`. Retries while the page
/// navigates (a found element can go stale before its text is read).
async fn wait_text(c: &Client, css: &str, needle: &str) -> String {
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && t.contains(needle)
        {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{css} never showed {needle:?} in {}",
        c.source().await.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let browser = ["chromium", "chromedriver"].into_iter().all(have);
    if !browser {
        assert!(
            !required(),
            "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: chromium/chromedriver not installed");
        return;
    }
    // A real registry when its tools are there (always in CI), so the preheat resolves an image.
    let registry = if common::registry::tools() {
        Some(common::registry::registry_with_image().await)
    } else {
        None
    };
    let host = registry.as_ref().map(|r| r.host.clone()).unwrap_or_default();
    let m = TestManager::sqlite_with(|c| {
        c.keepalive_timeout = Duration::from_secs(5);
        c.preheat.plain_http_registries = vec![host];
    })
    .await;
    let port = free_port();
    let profile = tempfile::tempdir().unwrap();
    let _driver = Driver(
        Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1360,960", format!("--user-data-dir={}", profile.path().display())]}),
    );
    let mut client = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = client.expect("chromedriver answers");
    // Close the browser even when a check fails, so no Chromium outlives the test.
    let image = registry.as_ref().map(|r| format!("{}/test/app:latest", r.host));
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(tokio::time::timeout(
        Duration::from_secs(120),
        drive(&c, &m, image),
    )))
    .await;
    let _ = c.close().await;
    match result {
        Ok(r) => r.expect("browser test finished in time"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn drive(c: &Client, m: &TestManager, image: Option<String>) {
    let base = &m.base;
    // Some traffic over the last hours, so the chart has bars.
    let mut g = m.grpc_client().await;
    let now = damselfly_manager::db::now_ms();
    // Traffic is reported by a registered scheduler (the manager refuses other instances).
    let sched = g
        .register_scheduler(pb::RegisterSchedulerRequest {
            hostname: "sched-a".into(),
            ip: "192.168.0.10".into(),
            port: 8002,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for i in 0..24i64 {
        let origin = 200_000_000 / (i as u64 + 1);
        g.report_traffic(pb::ReportTrafficRequest {
            scheduler_cluster_id: 1,
            instance_id: sched.instance_id,
            origin_bytes: origin,
            peer_bytes: 900_000_000 + (i as u64 * 37_000_000) % 400_000_000,
            timestamp_ms: now - (23 - i) * 3_600_000 / 2 - 60_000,
        })
        .await
        .unwrap();
    }

    // Signing in: anything but /login sends us there first.
    c.goto(&format!("{base}/clusters")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    c.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("root")
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    c.find(Locator::Css("#signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(c, "#login-error").await;
    shot(c, "login").await;
    c.find(Locator::Css("#username"))
        .await
        .unwrap()
        .send_keys("root")
        .await
        .unwrap();
    c.find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(ROOT_PW)
        .await
        .unwrap();
    c.find(Locator::Css("#signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let who = wait_text(c, "#whoami", "").await;
    assert!(who.contains("root"), "{who}");

    // Create a cluster whose name is an XSS payload: it must render as text.
    let payload = "<script>alert('xss')</script> rack-7";
    c.goto(&format!("{base}/clusters")).await.unwrap();
    c.find(Locator::Css("#new-cluster-name"))
        .await
        .unwrap()
        .send_keys(payload)
        .await
        .unwrap();
    c.find(Locator::Css("#new-cluster-description"))
        .await
        .unwrap()
        .send_keys("Machine room 7, hall B")
        .await
        .unwrap();
    c.find(Locator::Css("#create-cluster"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let name = wait_for(c, "#name").await;
    assert_eq!(name.prop("value").await.unwrap().as_deref(), Some(payload));
    assert!(c.get_alert_text().await.is_err(), "no script ran");
    let title = c
        .find(Locator::Css("header.top h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(title.contains("<script>"), "the payload shows as text: {title}");
    let cluster_id: u64 = c
        .current_url()
        .await
        .unwrap()
        .path()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // Edit settings and scopes, save.
    let limit = c.find(Locator::Css("#candidate_parent_limit")).await.unwrap();
    limit.clear().await.unwrap();
    limit.send_keys("6").await.unwrap();
    c.find(Locator::Css("#cidrs"))
        .await
        .unwrap()
        .send_keys("10.7.0.0/16\n10.70.0.0/16")
        .await
        .unwrap();
    c.find(Locator::Css("#idc"))
        .await
        .unwrap()
        .send_keys("room-7")
        .await
        .unwrap();
    c.find(Locator::Css("#save-cluster"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(c, "#saved").await;
    let cfg = g
        .get_scheduler_cluster_config(pb::GetSchedulerClusterConfigRequest { cluster_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cfg.settings.unwrap().candidate_parent_limit,
        6,
        "the scheduler sees the saved settings"
    );
    // A bad value is refused with the field named.
    let limit = c.find(Locator::Css("#candidate_parent_limit")).await.unwrap();
    limit.clear().await.unwrap();
    limit.send_keys("99").await.unwrap();
    c.find(Locator::Css("#save-cluster"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let err = wait_text(c, "#form-error", "").await;
    assert!(err.contains("candidate_parent_limit"), "{err}");
    c.goto(&format!("{base}/clusters/{cluster_id}")).await.unwrap();
    shot(c, "cluster").await;

    // Its seed peer cluster.
    c.goto(&format!("{base}/clusters")).await.unwrap();
    c.find(Locator::Css("#new-seed-cluster-name"))
        .await
        .unwrap()
        .send_keys("seeds-room-7")
        .await
        .unwrap();
    c.find(Locator::Css("#new-seed-cluster-parent"))
        .await
        .unwrap()
        .select_by_value(&cluster_id.to_string())
        .await
        .unwrap();
    c.find(Locator::Css("#create-seed-cluster"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let table = wait_text(c, "#seed-clusters", "seeds-room-7").await;
    assert!(
        table.contains("seeds-room-7") && table.contains("rack-7"),
        "{table}"
    );
    shot(c, "clusters").await;

    // A scheduler registers into the new cluster and keeps alive: it shows active.
    let reg = g
        .register_scheduler(pb::RegisterSchedulerRequest {
            hostname: "scheduler-7a".into(),
            ip: "10.7.0.11".into(),
            port: 8002,
            idc: "room-7".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.config.unwrap().cluster_id, cluster_id, "chosen by scope");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut g2 = g.clone();
    let keepalive = tokio::spawn(async move {
        g2.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let ka = tokio::spawn(async move {
        loop {
            if tx
                .send(pb::KeepAliveRequest {
                    instance_id: reg.instance_id,
                })
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let seed = FakeSeed::connect(&m.grpc, "seed-7a", SeedBehaviour::Download).await;
    c.goto(&format!("{base}/instances")).await.unwrap();
    let row = wait_for(c, "tr.instance[data-hostname='scheduler-7a']").await;
    assert_eq!(row.attr("data-state").await.unwrap().as_deref(), Some("active"));
    wait_for(c, "tr.instance[data-hostname='seed-7a'][data-state='active']").await;
    shot(c, "instances").await;

    // Start a preheat and watch it finish: the image's layers (or two files
    // when no registry is at hand) land on the seed peer.
    c.goto(&format!("{base}/preheat")).await.unwrap();
    let expected = match &image {
        Some(image) => {
            c.find(Locator::Css("#preheat-urls"))
                .await
                .unwrap()
                .send_keys(image)
                .await
                .unwrap();
            c.find(Locator::Css("#reg-user"))
                .await
                .unwrap()
                .send_keys("alice")
                .await
                .unwrap();
            c.find(Locator::Css("#reg-pass"))
                .await
                .unwrap()
                .send_keys("secret")
                .await
                .unwrap();
            3
        }
        None => {
            let urls = format!("{base}/healthz\n{base}/assets/console.css");
            c.find(Locator::Css("#preheat-urls"))
                .await
                .unwrap()
                .send_keys(&urls)
                .await
                .unwrap();
            c.find(Locator::Css("#kind"))
                .await
                .unwrap()
                .select_by_value("file")
                .await
                .unwrap();
            2
        }
    };
    c.find(Locator::Css("#start-preheat"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(c, "#job-state").await;
    let mut state = String::new();
    for _ in 0..100 {
        state = c
            .find(Locator::Css("#job-state"))
            .await
            .unwrap()
            .attr("data-state")
            .await
            .unwrap()
            .unwrap_or_default();
        if state == "succeeded" || state == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
    assert_eq!(state, "succeeded", "{}", c.source().await.unwrap_or_default());
    assert_eq!(seed.received.lock().unwrap().len(), expected);
    shot(c, "preheat-job").await;
    c.goto(&format!("{base}/preheat")).await.unwrap();
    shot(c, "preheat").await;

    // Tokens: created once, shown once.
    c.goto(&format!("{base}/users")).await.unwrap();
    c.find(Locator::Css("#token-name"))
        .await
        .unwrap()
        .send_keys("ci-preheat")
        .await
        .unwrap();
    c.find(Locator::Css("#token-scope"))
        .await
        .unwrap()
        .select_by_value("preheat")
        .await
        .unwrap();
    c.find(Locator::Css("#create-token"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let token = wait_text(c, "#new-token", "").await;
    assert!(token.starts_with("dfly_"));
    shot(c, "users").await;
    let (s, _) = m.token(&token).get("/api/v1/clusters").await;
    assert_eq!(s, 200, "the token from the console works on the API");

    c.goto(&format!("{base}/audit")).await.unwrap();
    wait_for(c, "#audit").await;
    shot(c, "audit").await;
    c.goto(&format!("{base}/")).await.unwrap();
    wait_for(c, "#traffic-chart rect").await;
    shot(c, "overview").await;

    ka.abort();
    keepalive.abort();
}
