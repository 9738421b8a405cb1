//! The binary as a user runs it.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aura-sim"))
        .args(args)
        .output()
        .expect("run aura-sim");
    (out.status.success(), String::from_utf8(out.stdout).expect("utf-8"))
}

fn hash_line(s: &str) -> &str {
    let last = s.lines().last().expect("some output");
    assert!(last.starts_with("trace-hash: "), "last line is {last:?}");
    let hex = &last["trace-hash: ".len()..];
    assert_eq!(hex.len(), 64);
    assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    last
}

#[test]
fn same_seed_prints_the_same_trace_hash() {
    let (ok1, a) = run(&["run", "--seed", "5", "--peers", "3"]);
    let (ok2, b) = run(&["run", "--seed", "5", "--peers", "3"]);
    assert!(ok1 && ok2, "{a}");
    assert_eq!(hash_line(&a), hash_line(&b));
    let (_, c) = run(&["run", "--seed", "6", "--peers", "3"]);
    assert_ne!(hash_line(&a), hash_line(&c));
}

#[test]
fn trace_prints_one_line_per_event_and_same_hash() {
    let (_, plain) = run(&["run", "--seed", "9"]);
    let (_, traced) = run(&["run", "--seed", "9", "--trace"]);
    assert_eq!(hash_line(&plain), hash_line(&traced));
    assert!(traced.lines().count() > plain.lines().count() + 10);
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_aura-sim"))
        .args(["run", "--loss", "1.5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a probability"));
    let out = Command::new(env!("CARGO_BIN_EXE_aura-sim"))
        .args(["run", "--peers", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn impossible_network_exits_non_zero() {
    let (ok, out) = run(&["run", "--seed", "1", "--loss", "1", "--max-time-s", "30"]);
    assert!(!ok);
    assert!(out.contains("FAILED liveness"));
    assert!(out.contains("replay: aura-sim run --seed 1 --peers 3 --scenario pairing"));
    hash_line(&out);
}

#[test]
fn perfetto_file_is_trace_event_json() {
    let path = std::env::temp_dir().join(format!("aura-sim-{}.json", std::process::id()));
    let (ok, out) = run(&["run", "--seed", "2", "--perfetto", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\"displayTimeUnit\""));
    assert!(text.trim_end().ends_with("]}"));
    let events = text.matches("\"ph\":\"i\"").count();
    let reported: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("events: ")?.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert_eq!(events, reported, "one instant per event");
    assert!(text.contains("\"name\":\"thread_name\""));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn sweep_reports_all_ok_or_the_first_failing_seed() {
    let (ok, out) = run(&["sweep", "--seeds", "1..6", "--jobs", "2"]);
    assert!(ok, "{out}");
    assert!(out.contains("result: all 6 seeds ok"), "{out}");
    let (ok, out) = run(&[
        "sweep",
        "--seeds",
        "3..8",
        "--loss",
        "1",
        "--max-time-s",
        "20",
        "--jobs",
        "2",
    ]);
    assert!(!ok);
    assert!(out.contains("FAILED seed 3"), "{out}");
    assert!(out.contains("replay: aura-sim run --seed 3 "), "{out}");
    let (ok, _) = run(&["sweep", "--seeds", "9..2"]);
    assert!(!ok);
}

#[test]
fn sweep_fails_when_required_coverage_is_missing() {
    // No faults configured: crashes can never happen, so requiring them must fail.
    let (ok, out) = run(&["sweep", "--seeds", "1..3", "--jobs", "1", "--require-coverage", "crash"]);
    assert!(!ok);
    assert!(out.contains("FAILED coverage"), "{out}");
    let (ok, out) = run(&[
        "sweep",
        "--seeds",
        "1..3",
        "--jobs",
        "1",
        "--require-coverage",
        "handshake-retransmit",
    ]);
    assert!(ok, "{out}");
}

#[test]
fn scenario_files_run_from_the_command_line() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/partition-then-heal.toml");
    let (ok, out) = run(&["run", "--file", file]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 scripted actions") || out.contains("2 scripted actions"),
        "{out}"
    );
    hash_line(&out);
    let out = Command::new(env!("CARGO_BIN_EXE_aura-sim"))
        .args(["run", "--file", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
