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
