//! Hand-written scenario files: each must finish, replay bit for bit, and keep its trace
//! (insta snapshot: any change in behaviour shows up as a reviewed diff).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use aura_sim::scenario::ScenarioFile;
use aura_sim::World;

fn run_file(name: &str) -> (String, World) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name);
    let f = ScenarioFile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut w = World::new(f.config().unwrap());
    let trace = Rc::new(RefCell::new(String::new()));
    let t = trace.clone();
    w.set_trace(move |e| {
        let mut t = t.borrow_mut();
        t.push_str(e.line.trim_start());
        t.push('\n');
    });
    w.run().expect("no invariant violation");
    let text = trace.borrow().clone();
    (format!("{text}trace-hash: {}\n", w.trace_hash()), w)
}

#[test]
fn scenario_files_finish_and_keep_their_traces() {
    for name in [
        "partition-then-heal.toml",
        "joiner-crash-mid-pairing.toml",
        "lossy-then-clean.toml",
        "pause-and-lose.toml",
        "clogged-inviter.toml",
    ] {
        let (trace, w) = run_file(name);
        assert!(w.done(), "{name} did not finish: {:?}", w.stats);
        let (again, _) = run_file(name);
        assert_eq!(trace, again, "{name} does not replay");
        insta::assert_snapshot!(name.trim_end_matches(".toml").replace('-', "_"), trace);
    }
}

#[test]
fn a_clog_holds_datagrams_until_it_clears() {
    let (trace, w) = run_file("clogged-inviter.toml");
    assert!(w.stats.clogged > 0, "{:?}", w.stats);
    assert_eq!(w.stats.lost, 0);
    // Nothing moves to or from device 0 while its interface is clogged (1 ms .. 2001 ms),
    // and what was held arrives afterwards.
    let at_ms = |line: &str| -> f64 { line.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1000.0 };
    let involves_0 = |line: &str| line.contains("n0 rx") || line.contains("rx n0 ");
    let during = trace
        .lines()
        .filter(|l| l.contains(" rx ") && involves_0(l))
        .filter(|l| (1.0..2001.0).contains(&at_ms(l)))
        .count();
    assert_eq!(during, 0, "datagrams of device 0 moved during the clog:\n{trace}");
    assert!(trace
        .lines()
        .any(|l| l.contains(" rx ") && involves_0(l) && at_ms(l) >= 2001.0));
}

#[test]
fn bad_scenario_files_are_refused_clearly() {
    let e =
        ScenarioFile::parse("seed = 1\npeers = 2\n[[at]]\ntime_ms = 1\naction = \"crash\"\nnode = 5\n").unwrap_err();
    assert!(e.contains("only 2 devices"), "{e}");
    let e = ScenarioFile::parse("seed = 1\n[link]\nloss = 2.0\n")
        .unwrap()
        .config()
        .unwrap_err();
    assert!(e.contains("not a probability"), "{e}");
    let e = ScenarioFile::parse("seed = 1\nworkload = \"chess\"\n")
        .unwrap()
        .config()
        .unwrap_err();
    assert!(e.contains("unknown workload"), "{e}");
    assert!(ScenarioFile::parse("seed = 1\nbogus = 3\n").is_err());
    assert!(ScenarioFile::parse("[[at]]\ntime_ms = 1\naction = \"explode\"\n").is_err());
}

/// Runs a journal scenario file and checks that anti-entropy, not luck, made the journals
/// agree: the run finished, the convergence invariant compared every pair of devices,
/// and the device that was away had to catch up after it came back.
fn journals_converge(name: &str) -> World {
    let (trace, w) = run_file(name);
    assert!(w.done(), "{name} did not finish: {:?}", w.stats);
    let at = w.stats.converged_at.expect("journals compared and found identical");
    assert!(w.stats.journals_compared >= 3, "{:?}", w.stats);
    assert_eq!(
        w.stats.coverage.get("converged-after-settle"),
        Some(&1),
        "the away device should have been behind when the workload ended"
    );
    // Within the settle period after the last scripted action.
    let last_action = trace
        .lines()
        .rfind(|l| l.contains(" script "))
        .map(|l| (l.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1e9) as u64)
        .unwrap();
    assert!(at >= last_action && at - last_action <= aura_sim::SETTLE.as_nanos() as u64);
    w
}

#[test]
fn journals_converge_after_one_way_links_heal() {
    let w = journals_converge("one-way-links.toml");
    assert!(w.stats.coverage.contains_key("partition"));
}

#[test]
fn a_device_partitioned_for_half_a_day_catches_up() {
    let w = journals_converge("long-partition.toml");
    assert_eq!(w.stats.signatures, 23);
}

#[test]
fn a_lost_device_is_removed_by_the_others() {
    // The consensus workload counts as done only once every live device's view has
    // agreed all changes and no longer lists the lost device.
    let (trace, w) = run_file("lose-a-device.toml");
    assert!(w.done(), "{:?}", w.stats);
    assert_eq!(w.stats.coverage.get("device-lost"), Some(&1));
    let removal = trace
        .lines()
        .position(|l| l.contains("cmd remove-device"))
        .expect("a removal was proposed");
    let loss = trace.lines().position(|l| l.contains("script lose n3")).unwrap();
    assert!(removal > loss);
    // The remover then had the three others refresh their shares (same key), so the
    // lost device's share is off the key; each switched.
    assert_eq!(
        w.stats.coverage.get("shares-refreshed"),
        Some(&3),
        "{:?}",
        w.stats.coverage
    );
    let (again, _) = run_file("lose-a-device.toml");
    assert_eq!(trace, again, "replays bit for bit");
}
