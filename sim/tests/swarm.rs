//! The simulator at small sizes: the swarm's ratios, the two fixes it led
//! to, and that runs repeat.

use damselfly_sim::{Config, run};

/// 25 Mbit/s links and 32 MiB (S/U = 10.7 s, the lab's N = 32/48 setting).
fn slow_links(peers: usize) -> Config {
    Config {
        rate_bits: 25e6,
        ..Config::lab(peers, 32 << 20)
    }
}

/// The lab's setting: U = 100 Mbit/s, S = 128 MiB. A regression guard at
/// today's numbers (1.284 x, seed 1.176 x S): until the simulator's flow
/// completions were fixed (a stale completion of a finished flow could end
/// the next flow that reused its id early) it showed 1.061 x here, too
/// fast; the lab shows 1.18-1.28 x. The target is the ignored test below.
#[test]
fn sixteen_peers_finish_near_s_over_u_and_the_origin_sends_once() {
    let r = run(&Config::lab(16, 128 << 20));
    println!("{r:?}");
    assert_eq!(r.unfinished, 0);
    assert!(r.makespan_ratio >= 1.0, "faster than one link can carry: {r:?}");
    assert!(
        r.makespan_ratio <= 1.35,
        "makespan / (S/U) = {:.3}",
        r.makespan_ratio
    );
    assert!(r.origin_ratio <= 1.01, "origin / S = {:.3}", r.origin_ratio);
    assert!(
        r.seed_sent_ratio <= 1.25,
        "seed sent / S = {:.3}",
        r.seed_sent_ratio
    );
}

/// Issue 10's target at N = 16 in the lab's setting.
#[test]
#[ignore = "fails today: 1.284 x S/U and the seed sends 1.176 x S at N = 16 (README, simulation)"]
fn sixteen_peers_finish_within_fifteen_percent_of_s_over_u() {
    let r = run(&Config::lab(16, 128 << 20));
    assert!(
        r.makespan_ratio <= 1.15,
        "makespan / (S/U) = {:.3}",
        r.makespan_ratio
    );
    assert!(
        r.seed_sent_ratio <= 1.05,
        "seed sent / S = {:.3}",
        r.seed_sent_ratio
    );
}

/// Super-seeding on slow links: serving one child its next pieces takes
/// longer than the grace; revealing them then had the seed send each byte
/// 9 times at N = 50. Once the seed holds the whole task it may send second
/// copies (its uplink would idle otherwise), never while it still fetches.
#[test]
fn fifty_peers_on_slow_links_the_origin_and_seed_send_each_byte_once() {
    let r = run(&slow_links(50));
    println!("{r:?}");
    assert_eq!(r.unfinished, 0);
    assert!(r.origin_ratio <= 1.01, "origin / S = {:.3}", r.origin_ratio);
    assert_eq!(
        r.seed_repeats_while_fetching_ratio, 0.0,
        "the seed sent a second copy while fetching: {r:?}"
    );
    assert!(
        r.seed_sent_ratio >= 1.0,
        "the seed sent each piece at least once: {r:?}"
    );
    assert_eq!((r.back_to_source, r.piece_requests_timed_out), (0, 0));
}

/// Every peer a parent of others: with directed, greedily filled parent
/// sets the last peers to register were nobody's parent, a source offered
/// them a sixteenth of the pieces first, and the seed had to send those to
/// everyone again (N = 32: 15 x S/U, N = 16 with 8 parents: 6.5 x and the
/// seed sent 6.6 x S). The bound is loose on purpose: a regression guard,
/// not the target (ARCHITECTURE.md, the simulator).
#[test]
fn thirty_two_peers_on_slow_links_do_not_collapse() {
    for parents in [4, 8, 16] {
        let r = run(&Config {
            candidate_parent_limit: parents,
            ..slow_links(32)
        });
        println!("{parents} parents: {r:?}");
        assert_eq!(r.unfinished, 0);
        assert!(
            r.makespan_ratio <= 3.0,
            "{parents} parents: makespan / (S/U) = {:.3}",
            r.makespan_ratio
        );
        assert!(r.origin_ratio <= 1.01, "origin / S = {:.3}", r.origin_ratio);
        assert_eq!(r.seed_repeats_while_fetching_ratio, 0.0, "{r:?}");
    }
}

/// The target at N = 50; today 1.5 x (ramp-up and the last pieces:
/// ARCHITECTURE.md, the simulator).
#[test]
#[ignore = "fails today: 1.5 x S/U at N = 50 on slow links (ARCHITECTURE.md, the simulator)"]
fn fifty_peers_on_slow_links_finish_within_a_quarter_of_s_over_u() {
    let r = run(&slow_links(50));
    assert!(
        r.makespan_ratio <= 1.25,
        "makespan / (S/U) = {:.3}",
        r.makespan_ratio
    );
}

/// Four parents each: 8 requests queue on a connection that gets 1/16 of
/// a 25 Mbit/s uplink, so the last waits 10.7 s; a parent that keeps
/// delivering is not dropped as timed out (it was 15 times, and one peer
/// went back to source).
#[test]
fn a_slow_but_delivering_parent_is_not_timed_out() {
    let r = run(&Config {
        candidate_parent_limit: 4,
        ..slow_links(50)
    });
    println!("{r:?}");
    assert_eq!(r.unfinished, 0);
    assert_eq!((r.piece_requests_timed_out, r.back_to_source), (0, 0));
    assert!(r.origin_ratio <= 1.01, "origin / S = {:.3}", r.origin_ratio);
}

#[test]
fn a_run_repeats_exactly() {
    let cfg = Config {
        kill_share: 0.1,
        ..slow_links(20)
    };
    let (a, b) = (run(&cfg), run(&cfg));
    assert_eq!(
        (a.makespan, a.events, a.seed_sent_ratio),
        (b.makespan, b.events, b.seed_sent_ratio)
    );
}

#[test]
fn killed_and_slow_peers_do_not_stop_the_others() {
    let cfg = Config {
        kill_share: 0.1,
        slow_share: 0.1,
        ..Config::lab(50, 32 << 20)
    };
    let r = run(&cfg);
    println!("{r:?}");
    assert_eq!(r.killed, 5);
    assert_eq!(r.unfinished, 0, "every survivor finishes");
    assert!(r.origin_ratio <= 1.05, "origin / S = {:.3}", r.origin_ratio);
}
