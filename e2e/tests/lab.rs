//! Tests of the lab harness itself. They need root (network namespaces);
//! each test uses its own lab prefix and subnet octet so they run in parallel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use damselfly_e2e::data::{sha256_file, write_random_file};
use damselfly_e2e::origin::Origin;
use damselfly_e2e::{Lab, wait_all, wait_for};

const MIB: u64 = 1024 * 1024;

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn shaped_transfer_between_two_hosts() {
    let lab = Lab::new("labxfer", 201, &["origin", "client"], Some("100mbit")).unwrap();
    let www = lab.dir().join("www");
    std::fs::create_dir(&www).unwrap();
    write_random_file(&www.join("blob"), 8 * MIB).unwrap();
    let origin = Origin::start(&lab, "origin", &www, 8080).unwrap();

    let tx_before = lab.tx_bytes("origin").unwrap();
    let rx_before = lab.rx_bytes("client").unwrap();
    let out = lab.dir().join("copy");
    let mut curl = Command::new("curl");
    curl.args(["-sSf", "-o"]).arg(&out).arg(origin.url("blob"));
    let mut job = lab.start("client", "curl", &curl).unwrap();
    let result = job.wait(Duration::from_secs(30)).unwrap();
    result.ensure_success().unwrap();

    assert_eq!(
        sha256_file(&out).unwrap(),
        sha256_file(&www.join("blob")).unwrap()
    );
    let sent = lab.tx_bytes("origin").unwrap() - tx_before;
    let seen_from_bridge = lab.link_counters("origin").unwrap().tx_bytes;
    assert!(
        seen_from_bridge >= sent,
        "bridge side saw {seen_from_bridge}, eth0 sent {sent}"
    );
    let received = lab.rx_bytes("client").unwrap() - rx_before;
    assert!((8 * MIB..9 * MIB).contains(&sent), "origin sent {sent} bytes");
    assert!(received >= 8 * MIB, "client received {received} bytes");
    // 8 MiB at 100 Mbit/s take at least 0.67 s: the link is shaped.
    assert!(
        result.elapsed() > Duration::from_millis(600),
        "took {:?}",
        result.elapsed()
    );

    let requests = origin.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!((requests[0].status, requests[0].bytes), (200, Some(8 * MIB)));
    assert!(requests[0].from.starts_with(&lab.ip("client").to_string()));

    // Range and HEAD.
    let head = lab
        .run_ok(
            "client",
            Command::new("curl").args(["-sSfI", &origin.url("blob")]),
        )
        .unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", 8 * MIB)),
        "{head}"
    );
    let range = lab
        .run(
            "client",
            Command::new("curl").args(["-sSf", "-r", "100-199", &origin.url("blob")]),
        )
        .unwrap();
    assert_eq!(range.stdout.len(), 100);
    let ranged = origin.requests().into_iter().find(|r| r.range.is_some()).unwrap();
    assert_eq!((ranged.status, ranged.bytes), (206, Some(100)));

    let origin_pid = origin.proc().pid();
    let names = (lab.netns("origin"), lab.netns("client"));
    drop(origin);
    drop(lab);
    assert!(
        !Path::new(&format!("/proc/{origin_pid}")).exists(),
        "origin still runs"
    );
    assert!(
        !netns_exists(&names.0) && !netns_exists(&names.1),
        "namespaces left"
    );
    assert!(!link_exists("br-labxfer"), "bridge left");
}

#[test]
fn drop_on_panic_cleans_up() {
    let mut pid = 0;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("labpanic", 202, &["a"], None).unwrap();
        let proc = lab
            .spawn("a", "sleeper", Command::new("sleep").arg("1000"))
            .unwrap();
        pid = proc.pid();
        std::mem::forget(proc); // even a leaked handle's process is stopped by the lab
        panic!("test failure inside a lab");
    }));
    assert!(caught.is_err());
    assert_ne!(pid, 0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The leaked child is at most a zombie (nobody reaps it), never running.
    assert!(
        stat.is_empty() || stat.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'),
        "{stat}"
    );
    assert!(!netns_exists("labpanic-a"));
    assert!(!link_exists("br-labpanic"));
}

#[test]
fn daemons_and_jobs() {
    let lab = Lab::new("labproc", 203, &["a", "b"], None).unwrap();
    // A daemon sees the lab network and is stopped on request.
    let mut daemon = lab
        .spawn("a", "sleeper", Command::new("sleep").arg("1000"))
        .unwrap();
    assert!(daemon.is_running());
    daemon.stop().unwrap();
    assert!(!daemon.is_running());

    // Jobs started together report their own finish times.
    let mut jobs = vec![
        lab.start("a", "quick", Command::new("true").arg("x")).unwrap(),
        lab.start("b", "slow", Command::new("sleep").arg("0.5")).unwrap(),
        lab.start("b", "fails", &Command::new("false")).unwrap(),
    ];
    let results = wait_all(&mut jobs, Duration::from_secs(10)).unwrap();
    assert!(results[0].success() && results[1].success() && !results[2].success());
    assert!(results[1].elapsed() >= Duration::from_millis(500));
    assert!(results[0].elapsed() < results[1].elapsed());

    // A job that outlives its timeout is killed and named.
    let mut stuck = [lab
        .start("a", "stuck", Command::new("sleep").arg("1000"))
        .unwrap()];
    let err = wait_all(&mut stuck, Duration::from_millis(200)).unwrap_err();
    assert!(err.to_string().contains("a/stuck"), "{err}");

    // Each host sees its own address.
    let addrs = lab
        .run_ok("b", Command::new("ip").args(["-4", "-o", "addr", "show", "eth0"]))
        .unwrap();
    assert!(addrs.contains(&format!("{}/24", lab.ip("b"))), "{addrs}");

    // wait_for fails with a message after its timeout.
    let err = wait_for("never", Duration::from_millis(50), || false).unwrap_err();
    assert!(err.to_string().contains("never"));
}

#[test]
fn names_are_validated() {
    assert!(Lab::new("Bad-Prefix", 204, &["a"], None).is_err());
    assert!(Lab::new("waytoolongprefix", 204, &["a"], None).is_err());
    assert!(Lab::new("labdup", 204, &["a", "a"], None).is_err());
}
