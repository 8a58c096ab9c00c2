//! The scheduling core's flows, in-process: events in, commands checked.

use super::*;
use crate::config::EvaluatorConfig;
use crate::evaluator::DefaultEvaluator;
use damselfly_proto::scheduler::{PieceCost, PieceDigest};
use prometheus_client::registry::Registry;

const T: &str = "task";

fn core_with(limit: usize) -> Core {
    let config = EvaluatorConfig {
        candidate_parent_limit: limit,
        ..EvaluatorConfig::default()
    };
    let planner = Arc::new(Planner::new(
        Box::new(DefaultEvaluator {
            config: config.clone(),
        }),
        config,
    ));
    let retention = Retention {
        host_timeout: Duration::from_secs(30),
        task_ttl: Duration::from_secs(3600),
    };
    Core::new(planner, Metrics::new(&mut Registry::default()), retention, 1)
}

struct World {
    core: Core,
    t0: Instant,
}

impl World {
    fn new(limit: usize) -> Self {
        Self {
            core: core_with(limit),
            t0: Instant::now(),
        }
    }

    fn at(&mut self, secs: u64, event: Event) -> Vec<Command> {
        self.core
            .handle(self.t0 + Duration::from_secs(secs), event)
            .expect("event accepted")
    }

    fn host(&mut self, id: &str, seed: bool) {
        let info = HostInfo {
            host_id: id.into(),
            ip: "10.0.0.1".into(),
            piece_port: 7,
            upload_slots: 8,
            seed,
            ..Default::default()
        };
        assert!(self.at(0, Event::HostAnnounced { info, conn: 1 }).is_empty());
    }

    fn register(&mut self, peer: &str, host: &str, from_source: bool) -> Vec<Command> {
        let reg = Registration {
            host_id: host.into(),
            peer_id: peer.into(),
            spec: TaskSpec {
                task_id: T.into(),
                url: "http://origin/blob".into(),
                ..Default::default()
            },
            from_source,
            layout: None,
            pieces_held: 0,
        };
        self.at(0, Event::Registered(reg))
    }

    fn parents(&self, peer: &str) -> Vec<String> {
        let mut p = self.core.state.tasks[T].peers[peer].parents.clone();
        p.sort();
        p
    }

    /// The seed `seed` on host `hs` holds the layout and every digest.
    fn seeded(&mut self, seed: &str, hs: &str) -> Vec<Command> {
        self.register(seed, hs, true);
        let layout = Layout::new(4 * 1024, 1024);
        let mut out = self.at(
            1,
            Event::SourceInfo {
                task_id: T.into(),
                peer_id: seed.into(),
                layout,
            },
        );
        let report = PiecesDone {
            pieces: (0..4)
                .map(|i| PieceDigest {
                    index: i,
                    sha256: vec![i as u8; 32],
                })
                .collect(),
            ..Default::default()
        };
        out.extend(self.at(
            1,
            Event::PiecesReported {
                task_id: T.into(),
                peer_id: seed.into(),
                report,
            },
        ));
        out
    }
}

fn ev(task_id: &str, peer_id: &str) -> (String, String) {
    (task_id.to_string(), peer_id.to_string())
}

/// The parent ids of the last `Parents` command to `peer`.
fn last_parents(out: &[Command], peer: &str) -> Option<Vec<String>> {
    out.iter().rev().find_map(|c| match c {
        Command::Parents { peer_id, parents, .. } if peer_id == peer => {
            let mut ids: Vec<String> = parents.iter().map(|p| p.peer_id.clone()).collect();
            ids.sort();
            Some(ids)
        }
        _ => None,
    })
}

#[test]
fn first_peer_triggers_one_seed_and_later_peers_do_not() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    w.host("h1", false);
    w.host("h2", false);
    let out = w.register("a", "h1", false);
    let seeds: Vec<&Command> = out
        .iter()
        .filter(|c| matches!(c, Command::SeedTask { .. }))
        .collect();
    assert_eq!(seeds.len(), 1, "{out:?}");
    assert!(
        matches!(seeds[0], Command::SeedTask { host_id, spec } if host_id == "seed-host" && spec.task_id == T)
    );
    assert_eq!(last_parents(&out, "a"), Some(vec![]), "nobody to feed it yet");
    assert_eq!(w.core.state.tasks[T].seed_host.as_deref(), Some("seed-host"));

    let out = w.register("b", "h2", false);
    assert!(
        !out.iter().any(|c| matches!(c, Command::SeedTask { .. })),
        "{out:?}"
    );
    assert_eq!(last_parents(&out, "b"), Some(vec!["a".to_string()]));
}

/// `cold_source = "requester"`: the first requester of a task named by its digest fetches it
/// itself (with its own headers, which reach nobody) and is the source; a seed copies it through
/// the mesh, its parent that requester. A task without a digest still goes to a seed.
#[test]
fn the_first_requester_of_a_digest_task_is_its_source_and_a_seed_copies_it() {
    let reg = |peer: &str, host: &str, digest: &str| Registration {
        host_id: host.into(),
        peer_id: peer.into(),
        spec: TaskSpec {
            task_id: T.into(),
            url: "http://origin/blob".into(),
            digest: digest.into(),
            headers: [("authorization".to_string(), "Bearer s3cret".to_string())].into(),
            ..Default::default()
        },
        from_source: false,
        layout: None,
        pieces_held: 0,
    };
    let mut w = World::new(4);
    w.core = core_with(4).with_cold_source(ColdSource::Requester);
    w.host("seed-host", true);
    w.host("h1", false);
    let out = w.at(0, Event::Registered(reg("a", "h1", "sha256:00")));
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::BackToSource { peer_id, .. } if peer_id == "a")),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|c| matches!(c, Command::SeedTask { .. })),
        "{out:?}"
    );
    let copies: Vec<&TaskSpec> = out
        .iter()
        .filter_map(|c| match c {
            Command::SeedCopy { host_id, spec } if host_id == "seed-host" => Some(spec),
            _ => None,
        })
        .collect();
    assert_eq!(copies.len(), 1, "{out:?}");
    assert!(copies[0].headers.is_empty() && copies[0].sealed_headers.is_empty());
    assert!(w.core.state.tasks[T].peers["a"].source);
    // The seed's copy registers like any peer: its parent is the requester.
    let out = w.at(0, Event::Registered(reg("s", "seed-host", "sha256:00")));
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::SeedTask { .. } | Command::SeedCopy { .. }))
    );
    assert_eq!(last_parents(&out, "s"), Some(vec!["a".to_string()]));
    assert!(!w.core.state.tasks[T].peers["s"].source);

    // No digest: only the origin vouches for the bytes, so a seed fetches them.
    let mut w = World::new(4);
    w.core = core_with(4).with_cold_source(ColdSource::Requester);
    w.host("seed-host", true);
    w.host("h1", false);
    let out = w.at(0, Event::Registered(reg("a", "h1", "")));
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::SeedTask { host_id, .. } if host_id == "seed-host"))
    );
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::BackToSource { .. } | Command::SeedCopy { .. }))
    );
}

/// Headers sealed to some seeds: one of those is triggered and gets only its own entry; the
/// task keeps none of them.
#[test]
fn sealed_headers_go_only_to_a_seed_they_were_sealed_to() {
    use damselfly_proto::scheduler::SealedHeaders;
    for target in ["seed-a", "seed-b", "seed-c"] {
        let mut w = World::new(4);
        for s in ["seed-a", "seed-b", "seed-c"] {
            w.host(s, true);
        }
        w.host("h1", false);
        let entry = |h: &str| SealedHeaders {
            seed_host_id: h.into(),
            sealed: h.as_bytes().to_vec(),
        };
        let reg = Registration {
            host_id: "h1".into(),
            peer_id: "a".into(),
            spec: TaskSpec {
                task_id: T.into(),
                url: "http://origin/blob".into(),
                sealed_headers: vec![entry(target), entry("gone-seed")],
                ..Default::default()
            },
            from_source: false,
            layout: None,
            pieces_held: 0,
        };
        let out = w.at(0, Event::Registered(reg));
        let sent: Vec<(&String, &TaskSpec)> = out
            .iter()
            .filter_map(|c| match c {
                Command::SeedTask { host_id, spec } => Some((host_id, spec)),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1, "{out:?}");
        assert_eq!(sent[0].0, target);
        assert_eq!(sent[0].1.sealed_headers, vec![entry(target)]);
        let kept = &w.core.state.tasks[T].spec;
        assert!(
            kept.sealed_headers.is_empty() && kept.headers.is_empty(),
            "{kept:?}"
        );
    }
}

#[test]
fn no_seed_host_sends_the_first_peer_to_the_origin() {
    let mut w = World::new(4);
    w.host("h1", false);
    let out = w.register("a", "h1", false);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::BackToSource { peer_id, .. } if peer_id == "a")),
        "{out:?}"
    );
    assert!(w.core.state.tasks[T].peers["a"].source);
}

#[test]
fn source_layout_and_digests_are_relayed_to_the_others_only() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    w.host("h1", false);
    w.host("h2", false);
    w.register("a", "h1", false);
    w.register("b", "h2", false);
    let out = w.seeded("seed", "seed-host");
    let infos: Vec<&str> = out
        .iter()
        .filter_map(|c| match c {
            Command::Info { peer_id, .. } => Some(peer_id.as_str()),
            _ => None,
        })
        .collect();
    let mut infos = infos;
    infos.sort();
    assert_eq!(infos, vec!["a", "b"]);
    let digests: Vec<(&str, usize)> = out
        .iter()
        .filter_map(|c| match c {
            Command::Digests { peer_id, pieces, .. } => Some((peer_id.as_str(), pieces.len())),
            _ => None,
        })
        .collect();
    assert_eq!(digests.len(), 2, "{out:?}");
    assert!(digests.iter().all(|(p, n)| *p != "seed" && *n == 4));
    // Re-planned once the source appeared: both have it as a parent.
    assert!(w.parents("a").contains(&"seed".to_string()));
    assert!(w.parents("b").contains(&"seed".to_string()));

    // A late peer gets the layout and every digest at registration.
    w.host("h3", false);
    let out = w.register("c", "h3", false);
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Info { peer_id, .. } if peer_id == "c"))
    );
    assert!(out.iter().any(
        |c| matches!(c, Command::Digests { peer_id, pieces, .. } if peer_id == "c" && pieces.len() == 4)
    ));
    // Digests from a non-source are not relayed.
    let report = PiecesDone {
        pieces: vec![PieceDigest {
            index: 0,
            sha256: vec![9; 32],
        }],
        ..Default::default()
    };
    let (task_id, peer_id) = ev(T, "a");
    let out = w.at(
        2,
        Event::PiecesReported {
            task_id,
            peer_id,
            report,
        },
    );
    assert!(
        !out.iter().any(|c| matches!(c, Command::Digests { .. })),
        "{out:?}"
    );
    assert_eq!(w.core.state.tasks[T].digests[0], Some([0; 32]));
}

#[test]
fn a_parent_leaving_re_plans_its_children() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    for h in ["h1", "h2", "h3"] {
        w.host(h, false);
    }
    w.seeded("seed", "seed-host");
    w.register("a", "h1", false);
    w.register("b", "h2", false);
    assert!(w.parents("b").contains(&"a".to_string()), "{:?}", w.parents("b"));
    let (task_id, peer_id) = ev(T, "a");
    let out = w.at(3, Event::StreamClosed { task_id, peer_id });
    assert!(!w.core.state.tasks[T].peers.contains_key("a"));
    let got = last_parents(&out, "b").expect("b re-planned");
    assert!(!got.contains(&"a".to_string()));
    assert!(got.contains(&"seed".to_string()));

    // A whole host going silent: its peers leave, their children are re-planned.
    w.register("c", "h3", false);
    assert!(w.parents("c").contains(&"b".to_string()));
    // h2 (b's host) never speaks again; the others keep announcing.
    for h in ["seed-host", "h3"] {
        w.at(
            40,
            Event::HostAlive {
                host_id: h.into(),
                active_uploads: Some(0),
            },
        );
    }
    let out = w.at(45, Event::Tick);
    assert!(!w.core.state.hosts.contains_key("h2"));
    assert!(!w.core.state.hosts.contains_key("h1"), "h1 also went silent");
    assert!(!w.core.state.tasks[T].peers.contains_key("b"));
    assert_eq!(last_parents(&out, "c"), Some(vec!["seed".to_string()]));
}

#[test]
fn a_reconnected_host_is_not_removed_by_its_old_stream() {
    let mut w = World::new(4);
    w.host("h1", false);
    let info = w.core.state.hosts["h1"].info.clone();
    w.at(1, Event::HostAnnounced { info, conn: 2 });
    w.at(
        2,
        Event::HostLeft {
            host_id: "h1".into(),
            conn: Some(1),
        },
    );
    assert!(w.core.state.hosts.contains_key("h1"));
    w.at(
        2,
        Event::HostLeft {
            host_id: "h1".into(),
            conn: Some(2),
        },
    );
    assert!(!w.core.state.hosts.contains_key("h1"));
}

#[test]
fn corrupt_reports_from_two_peers_exclude_a_host() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    for h in ["bad", "h1", "h2"] {
        w.host(h, false);
    }
    w.seeded("seed", "seed-host");
    w.register("liar", "bad", false);
    w.register("a", "h1", false);
    w.register("b", "h2", false);
    assert!(w.parents("a").contains(&"liar".to_string()));
    let corrupt = |peer: &str| {
        let (task_id, peer_id) = ev(T, peer);
        Event::PieceFailed {
            task_id,
            peer_id,
            parent_peer_id: "liar".into(),
            index: 1,
            reason: FailReason::Corrupt,
        }
    };
    let out = w.at(2, corrupt("a"));
    assert!(!last_parents(&out, "a").unwrap().contains(&"liar".to_string()));
    assert!(
        w.core.state.tasks[T].bad_hosts.is_empty(),
        "one reporter only blocklists"
    );
    assert!(w.parents("b").contains(&"liar".to_string()));
    w.at(2, corrupt("b"));
    assert!(w.core.state.tasks[T].bad_hosts.contains("bad"));
    // Nobody gets it again, not even a newcomer.
    w.host("h4", false);
    let out = w.register("c", "h4", false);
    assert!(!last_parents(&out, "c").unwrap().contains(&"liar".to_string()));
}

#[test]
fn finished_descendants_are_not_chosen_and_finished_peers_stay() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    w.host("h1", false);
    w.host("h2", false);
    w.seeded("seed", "seed-host");
    w.register("a", "h1", false);
    w.register("b", "h2", false);
    assert!(w.parents("b").contains(&"a".to_string()));
    let (task_id, peer_id) = ev(T, "b");
    w.at(3, Event::Finished { task_id, peer_id });
    let (task_id, peer_id) = ev(T, "b");
    w.at(3, Event::StreamClosed { task_id, peer_id });
    let b = &w.core.state.tasks[T].peers["b"];
    assert!(b.state == PeerState::Succeeded && !b.open && b.parents.is_empty());
    // b no longer descends from a (its edges went when it closed): usable.
    let (task_id, peer_id) = ev(T, "a");
    let out = w.at(4, Event::RescheduleAsked { task_id, peer_id });
    assert!(last_parents(&out, "a").unwrap().contains(&"b".to_string()));
    // A finished peer still hanging below a is not.
    w.host("h3", false);
    w.register("c", "h3", false);
    let task = w.core.state.tasks.get_mut(T).unwrap();
    task.set_parents("c", vec!["a".into()]);
    task.peers.get_mut("c").unwrap().state = PeerState::Succeeded;
    let (task_id, peer_id) = ev(T, "a");
    let out = w.at(5, Event::RescheduleAsked { task_id, peer_id });
    assert!(!last_parents(&out, "a").unwrap().contains(&"c".to_string()));
    // Commands never go to a closed stream.
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Parents { peer_id, .. } if peer_id == "b"))
    );
}

#[test]
fn losing_the_only_holder_sends_the_peer_back_to_source() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    w.host("h1", false);
    w.seeded("seed", "seed-host");
    w.register("a", "h1", false);
    assert_eq!(w.parents("a"), vec!["seed".to_string()]);
    let (task_id, peer_id) = ev(T, "a");
    let out = w.at(
        2,
        Event::PieceFailed {
            task_id,
            peer_id,
            parent_peer_id: "seed".into(),
            index: 0,
            reason: FailReason::Unreachable,
        },
    );
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::BackToSource { peer_id, .. } if peer_id == "a")),
        "{out:?}"
    );
    assert!(w.core.state.tasks[T].peers["a"].source);
}

#[test]
fn piece_costs_mark_a_slow_host_as_a_bad_node() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    for h in ["slow", "h1", "h2"] {
        w.host(h, false);
    }
    w.seeded("seed", "seed-host");
    w.register("s", "slow", false);
    w.register("a", "h1", false);
    w.register("b", "h2", false);
    assert!(w.parents("b").contains(&"s".to_string()));
    let cost = |ms: u32| PiecesDone {
        costs: vec![PieceCost {
            parent_peer_id: "s".into(),
            pieces: 1,
            mean_millis: ms,
        }],
        ..Default::default()
    };
    for _ in 0..5 {
        let (task_id, peer_id) = ev(T, "a");
        w.at(
            2,
            Event::PiecesReported {
                task_id,
                peer_id,
                report: cost(10),
            },
        );
    }
    let (task_id, peer_id) = ev(T, "a");
    w.at(
        2,
        Event::PiecesReported {
            task_id,
            peer_id,
            report: cost(10_000),
        },
    );
    let (task_id, peer_id) = ev(T, "b");
    let out = w.at(3, Event::RescheduleAsked { task_id, peer_id });
    assert!(!last_parents(&out, "b").unwrap().contains(&"s".to_string()));
}

#[test]
fn unknown_host_is_refused_and_idle_tasks_are_forgotten() {
    let mut w = World::new(4);
    let reg = Registration {
        host_id: "ghost".into(),
        peer_id: "p".into(),
        spec: TaskSpec {
            task_id: T.into(),
            ..Default::default()
        },
        from_source: false,
        layout: None,
        pieces_held: 0,
    };
    assert!(matches!(
        w.core.handle(w.t0, Event::Registered(reg)),
        Err(Error::UnknownHost(_))
    ));
    w.host("h1", false);
    w.register("a", "h1", false);
    let (task_id, peer_id) = ev(T, "a");
    w.at(1, Event::StreamClosed { task_id, peer_id });
    w.at(
        10,
        Event::HostAlive {
            host_id: "h1".into(),
            active_uploads: None,
        },
    );
    w.at(20, Event::Tick);
    assert!(w.core.state.tasks.contains_key(T), "within the TTL");
    w.at(
        2 * 3600,
        Event::HostAlive {
            host_id: "h1".into(),
            active_uploads: None,
        },
    );
    w.at(2 * 3600, Event::Tick);
    assert!(!w.core.state.tasks.contains_key(T));
}

mod cache_tasks {
    use super::*;
    use crate::core::cache::RESTORE_GRACE;

    const ID: &str = "build-cache";

    fn cache_tid() -> String {
        damselfly_proto::task_id::cache_task_id(ID).unwrap()
    }

    fn meta(owner: &str, replicas: u32) -> CacheMeta {
        CacheMeta {
            id: ID.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            replicas,
            created_unix: 1,
            expires_unix: 0,
            owner_host_id: owner.into(),
        }
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            task_id: cache_tid(),
            url: damselfly_proto::task_id::cache_url(ID),
            ..Default::default()
        }
    }

    fn import(owner: &str, replicas: u32, ttl: Option<Duration>) -> CacheImport {
        CacheImport {
            host_id: owner.into(),
            task_id: cache_tid(),
            spec: spec(),
            layout: Layout::new(4096, 1024),
            digests: vec![[7; 32]; 4],
            meta: meta(owner, replicas),
            ttl,
        }
    }

    fn stored(owner: &str, replica: bool) -> StoredCache {
        StoredCache {
            task_id: cache_tid(),
            spec: spec(),
            layout: Layout::new(4096, 1024),
            digests: vec![[7; 32]; 4],
            meta: meta(owner, 2),
            remaining: None,
            replica,
        }
    }

    fn placed(out: &[Command]) -> Vec<String> {
        let mut v: Vec<String> = out
            .iter()
            .filter_map(|c| match c {
                Command::Replicate { host_id, .. } => Some(host_id.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn deleted(out: &[Command]) -> Vec<String> {
        let mut v: Vec<String> = out
            .iter()
            .filter_map(|c| match c {
                Command::DeleteTask { host_id, .. } => Some(host_id.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn world() -> World {
        let mut w = World::new(4);
        w.host("seed-host", true);
        for h in ["imp", "h1", "h2", "h3"] {
            w.host(h, false);
        }
        w
    }

    #[test]
    fn import_places_replicas_seeds_first_never_on_the_importer() {
        let mut w = world();
        let out = w.at(1, Event::CacheImported(import("imp", 2, None)));
        let hosts = placed(&out);
        assert_eq!(hosts.len(), 2);
        assert!(hosts.contains(&"seed-host".to_string()), "{hosts:?}");
        assert!(!hosts.contains(&"imp".to_string()));
        // The task is complete: a replica registering gets digests and the importer as parent.
        let task = &w.core.state.tasks[&cache_tid()];
        assert_eq!(task.digests_known(), 4);
        assert!(task.peers.contains_key("imp/stored"));
        // Nothing more is placed while those are pending.
        assert!(placed(&w.at(2, Event::CacheTick)).is_empty());
    }

    #[test]
    fn a_replica_that_leaves_is_placed_again() {
        let mut w = world();
        let out = w.at(1, Event::CacheImported(import("imp", 2, None)));
        for h in placed(&out) {
            w.at(
                2,
                Event::CacheStored {
                    host_id: h,
                    tasks: vec![stored("imp", true)],
                },
            );
        }
        let e = &w.core.caches.entries[&cache_tid()];
        assert_eq!(e.replicas.len(), 2);
        assert!(e.pending.is_empty());
        let gone = e.replicas.iter().next().unwrap().clone();
        let out = w.at(
            3,
            Event::HostLeft {
                host_id: gone.clone(),
                conn: None,
            },
        );
        let again = placed(&out);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0], gone);
        assert_ne!(again[0], "imp");
    }

    #[test]
    fn a_restarted_scheduler_rebuilds_the_entry_from_its_holders() {
        let mut w = world();
        let out = w.at(
            1,
            Event::CacheStored {
                host_id: "h1".into(),
                tasks: vec![stored("imp", true)],
            },
        );
        assert!(placed(&out).is_empty(), "waits for the other holders");
        w.at(
            2,
            Event::CacheStored {
                host_id: "h2".into(),
                tasks: vec![stored("imp", true)],
            },
        );
        let e = &w.core.caches.entries[&cache_tid()];
        assert_eq!(e.replicas.len(), 2);
        assert_eq!(w.core.state.tasks[&cache_tid()].digests_known(), 4);
        let later = RESTORE_GRACE.as_secs() + 5;
        assert!(
            placed(&w.at(later, Event::CacheTick)).is_empty(),
            "two held, two wanted"
        );
    }

    #[test]
    fn expiry_and_delete_reach_every_holder() {
        let mut w = world();
        let out = w.at(
            1,
            Event::CacheImported(import("imp", 2, Some(Duration::from_secs(60)))),
        );
        let replicas = placed(&out);
        for h in &replicas {
            w.at(
                2,
                Event::CacheStored {
                    host_id: h.clone(),
                    tasks: vec![stored("imp", true)],
                },
            );
        }
        assert!(deleted(&w.at(30, Event::CacheTick)).is_empty());
        let out = w.at(61, Event::CacheTick);
        let mut want: Vec<String> = replicas.clone();
        want.push("imp".into());
        want.sort();
        assert_eq!(deleted(&out), want);
        assert!(w.core.caches.entries.is_empty());
        assert!(!w.core.state.tasks.contains_key(&cache_tid()));

        // Delete: only the owner may; it reaches every holder.
        w.at(62, Event::CacheImported(import("imp", 1, None)));
        let err = w.core.handle(
            w.t0 + Duration::from_secs(63),
            Event::CacheDeleted {
                id: ID.into(),
                host_id: "h1".into(),
            },
        );
        assert!(matches!(err, Err(Error::Forbidden(_))));
        let out = w.at(
            64,
            Event::CacheDeleted {
                id: ID.into(),
                host_id: "imp".into(),
            },
        );
        assert!(deleted(&out).contains(&"imp".to_string()));
        let missing = w.core.handle(
            w.t0 + Duration::from_secs(65),
            Event::CacheDeleted {
                id: ID.into(),
                host_id: "imp".into(),
            },
        );
        assert!(matches!(missing, Err(Error::NotFound(_))));
    }

    #[test]
    fn another_host_cannot_replace_an_id() {
        let mut w = world();
        w.at(1, Event::CacheImported(import("imp", 1, None)));
        let mut other = import("h1", 1, None);
        other.meta.digest = format!("sha256:{}", "cd".repeat(32));
        let r = w.core.handle(w.t0, Event::CacheImported(other));
        assert!(matches!(r, Err(Error::Conflict(_))));
        let r = w.core.handle(w.t0, Event::CacheImported(import("h1", 1, None)));
        assert!(matches!(r, Err(Error::Forbidden(_))));
    }

    #[test]
    fn a_registration_with_no_holder_goes_to_source_at_once_and_no_seed_is_triggered() {
        let mut w = world();
        w.at(1, Event::CacheImported(import("imp", 0, None)));
        w.at(
            2,
            Event::HostLeft {
                host_id: "imp".into(),
                conn: None,
            },
        );
        let reg = Registration {
            host_id: "h3".into(),
            peer_id: "p".into(),
            spec: spec(),
            from_source: false,
            layout: None,
            pieces_held: 0,
        };
        let out = w.at(3, Event::Registered(reg));
        assert!(!out.iter().any(|c| matches!(c, Command::SeedTask { .. })));
        assert!(out.iter().any(|c| matches!(c, Command::BackToSource { .. })));
    }
}

#[test]
fn a_busy_parent_is_offered_again_and_not_blocklisted() {
    let mut w = World::new(4);
    w.host("seed-host", true);
    w.host("h1", false);
    w.seeded("seed", "seed-host");
    w.register("a", "h1", false);
    assert_eq!(w.parents("a"), vec!["seed".to_string()]);
    let failed = |reason| {
        let (task_id, peer_id) = ev(T, "a");
        Event::PieceFailed {
            task_id,
            peer_id,
            parent_peer_id: "seed".into(),
            index: 0,
            reason,
        }
    };
    // At its upload limit: still the peer's parent, offered again, no origin.
    let out = w.at(2, failed(FailReason::Busy));
    assert_eq!(last_parents(&out, "a"), Some(vec!["seed".to_string()]), "{out:?}");
    assert!(
        !out.iter().any(|c| matches!(c, Command::BackToSource { .. })),
        "{out:?}"
    );
    let a = &w.core.state.tasks[T].peers["a"];
    assert!(a.blocklist.is_empty() && !a.source);
    // Unreachable is a fault: blocklisted, and with no other holder, the origin.
    let out = w.at(3, failed(FailReason::Unreachable));
    assert!(w.core.state.tasks[T].peers["a"].blocklist.contains("seed"));
    assert!(out.iter().any(|c| matches!(c, Command::BackToSource { .. })));
}

/// A lone child keeps the seed as its parent on a fast link, where pieces cost 0-3 whole
/// milliseconds (a few ms of queueing once looked like a bad node: 20 x a mean of 0), and when
/// the seed finishes before it does.
#[test]
fn a_child_keeps_its_fast_seed_parent() {
    let mut w = World::new(8);
    w.host("seed-host", true);
    w.host("h1", false);
    w.register("a", "h1", false);
    w.seeded("s", "seed-host");
    assert_eq!(w.parents("a"), vec!["s".to_string()]);
    for (t, mean_millis, pieces) in [(1, 0, 10), (2, 3, 4), (2, 60, 2)] {
        let report = PiecesDone {
            costs: vec![PieceCost {
                parent_peer_id: "s".into(),
                pieces,
                mean_millis,
            }],
            ..Default::default()
        };
        let (task_id, peer_id) = ev(T, "a");
        let out = w.at(
            t,
            Event::PiecesReported {
                task_id,
                peer_id,
                report,
            },
        );
        assert_ne!(last_parents(&out, "a"), Some(vec![]), "{out:?}");
        let (task_id, peer_id) = ev(T, "a");
        let out = w.at(t, Event::RescheduleAsked { task_id, peer_id });
        assert_eq!(last_parents(&out, "a"), Some(vec!["s".to_string()]), "{out:?}");
    }
    let (task_id, peer_id) = ev(T, "s");
    w.at(3, Event::Finished { task_id, peer_id });
    let (task_id, peer_id) = ev(T, "s");
    w.at(3, Event::StreamClosed { task_id, peer_id });
    assert_eq!(w.parents("a"), vec!["s".to_string()]);
}
