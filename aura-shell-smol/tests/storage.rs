//! The data directory through the CLI: encryption at rest, compaction, a damaged log.

mod common;

use std::process::Stdio;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_encrypted_directory_runs_only_with_its_secret() {
    let d = tempdir("enc");
    let key = [("AURA_STORE_KEY", "9f1c0b2e7d-a long random store secret-51aa")];
    let out = smol_env(&d, &["init", "--listen", &format!("127.0.0.1:{}", free_port())], &key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("encrypted at rest"));
    // Without the secret, or with another, the directory does not open, and says why.
    let out = smol(&d, &["id"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("encrypted at rest: set AURA_STORE_KEY"),
        "{}",
        stderr(&out)
    );
    let out = smol_env(&d, &["id"], &[("AURA_STORE_KEY", "guess")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("wrong secret"), "{}", stderr(&out));
    // With it, the peer runs and works.
    let daemon = Daemon::start_with(&d, Stdio::null(), &key);
    let code = ok(&d, &["invite"]);
    assert!(code.starts_with("AURA1-"), "{code}");
    daemon.stop();
    let id = smol_env(&d, &["id"], &key);
    assert!(id.status.success());
    // A plain directory refuses a secret it was not created with.
    let p = tempdir("plain");
    ok(&p, &["init", "--listen", "127.0.0.1:0"]);
    let out = smol_env(&p, &["id"], &key);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&p);
}

/// `aura-smol audit --json` with no peer running: the entries printed, and how many lines
/// it said it skipped.
fn audit_offline(d: &std::path::Path, env: &[(&str, &str)]) -> (String, usize) {
    let out = smol_env(d, &["audit", "--json"], env);
    assert!(out.status.success(), "{}", stderr(&out));
    let skipped = stderr(&out)
        .split_whitespace()
        .skip_while(|w| *w != "skipped")
        .nth(1)
        .map_or(0, |w| w.parse::<usize>().unwrap());
    (String::from_utf8_lossy(&out.stdout).into_owned(), skipped)
}

/// Initialises `d` encrypted at rest with `key` and `p` in the clear, each on a free port.
fn init_sealed_and_plain(d: &std::path::Path, p: &std::path::Path, key: &[(&str, &str)]) {
    let out = smol_env(d, &["init", "--listen", &format!("127.0.0.1:{}", free_port())], key);
    assert!(out.status.success(), "{}", stderr(&out));
    ok(p, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
}

/// In a directory encrypted at rest the egress ledger is sealed too: no peer id or address
/// in the file, readable with the secret (or from the running peer); an altered line costs
/// that line, a removed one the line after it, and a line a crash cut short only itself.
#[test]
fn an_encrypted_directory_seals_its_audit_ledger() {
    let (d, p) = (tempdir("sealed-ledger"), tempdir("sealed-ledger-peer"));
    let key = [("AURA_STORE_KEY", "e1b7-another long store secret-0c44")];
    init_sealed_and_plain(&d, &p, &key);
    let traffic = |pair: bool, pings: usize| {
        let a = Daemon::start_with(&d, Stdio::null(), &key);
        let b = Daemon::start(&p);
        let pid = ok(&p, &["id"]).trim().to_string();
        if pair {
            let v: serde_json::Value = serde_json::from_str(&ok(&d, &["invite", "--json"])).unwrap();
            let code = v["code"].as_str().unwrap().to_string();
            let v: serde_json::Value =
                serde_json::from_str(&ok(&p, &["join", &code, "--wait-s", "30", "--json"])).unwrap();
            assert_eq!(v["peer"].as_str(), Some(ok(&d, &["id"]).trim()), "{v}");
        }
        for i in 0..pings {
            let v: serde_json::Value = serde_json::from_str(&ok(&d, &["ping", &pid[..16], "--json"])).unwrap();
            assert!(v["rtt_us"].as_u64().is_some() && v["seq"] == 0, "ping {i}: {v}");
        }
        // The running peer reads its own sealed ledger for a client that has no secret.
        let live = ok(&d, &["audit", "--json"]);
        assert!(live.lines().count() >= pings, "{live}");
        a.stop();
        b.stop();
        pid
    };
    let pid = traffic(true, 3);
    let ledger = d.join("audit.log");
    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    assert!(lines.iter().all(|l| l.starts_with("sealed:")), "{text}");
    assert!(!text.contains(&pid[..16]) && !text.contains("127.0.0.1"), "{text}");
    // Offline, the ledger needs the secret.
    let out = smol(&d, &["audit"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("AURA_STORE_KEY"), "{}", stderr(&out));
    let read = || {
        let (shown, skipped) = audit_offline(&d, &key);
        (shown.lines().count(), skipped, shown)
    };
    let (n, skipped, json) = read();
    assert_eq!((n, skipped), (lines.len(), 0));
    assert!(json.contains(&pid), "{json}");
    // One altered line: that line fails, its neighbours still open.
    let mut altered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mid = altered[2].len() / 2;
    let digit = if altered[2].as_bytes()[mid] == b'0' { "1" } else { "0" };
    altered[2].replace_range(mid..mid + 1, digit);
    std::fs::write(&ledger, altered.join("\n") + "\n").unwrap();
    assert_eq!((read().0, read().1), (lines.len() - 1, 1));
    // One line removed from the middle: the line after the gap fails.
    let mut removed: Vec<&str> = lines.clone();
    removed.remove(2);
    std::fs::write(&ledger, removed.join("\n") + "\n").unwrap();
    assert_eq!((read().0, read().1), (lines.len() - 2, 1));
    // A plain line slipped into a sealed ledger is not believed.
    std::fs::write(&ledger, lines.join("\n") + "\n").unwrap();
    let forged = read().2.lines().next().unwrap().to_string();
    std::fs::write(&ledger, lines.join("\n") + "\n" + &forged + "\n").unwrap();
    assert_eq!((read().0, read().1), (lines.len(), 1));
    // A crash cut the last line short: it is skipped, and the lines written after the
    // restart chain on from it.
    let torn = lines[..lines.len() - 1].join("\n") + "\n" + &lines[lines.len() - 1][..40];
    std::fs::write(&ledger, torn).unwrap();
    traffic(false, 1);
    let after = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(
        after.lines().nth(lines.len() - 1),
        Some(&lines[lines.len() - 1][..40]),
        "the torn line stays on its own line"
    );
    let (n, skipped, _) = read();
    assert_eq!((n, skipped), (after.lines().count() - 1, 1));
    assert!(n > lines.len(), "{n}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&p);
}

/// A ledger written in the clear before the directory sealed its ledger is sealed in place
/// when the peer starts, keeping every entry, and the lines written in that same run land
/// in the sealed file; clear lines added to a sealed ledger are never sealed into it and
/// stay counted, as do altered ones; a sealed line in a plain directory's ledger is
/// skipped, not fatal; and offline `audit` treats a secret given for a plain directory as
/// every other command does.
#[test]
fn a_clear_ledger_is_sealed_in_place_and_stray_lines_are_skipped() {
    let (d, p) = (tempdir("ledger-upgrade"), tempdir("ledger-plain"));
    let key = [("AURA_STORE_KEY", "7a90-yet another store secret-f3d1")];
    init_sealed_and_plain(&d, &p, &key);
    let clear: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"unix_ms":{},"peer":"{}","addr":"127.0.0.1:9","context":"own","epoch":0,"kind":"app","bucket":1024,"cost":0,"leakage":[0,0,0]}}"#,
                1_790_000_000_000u64 + i,
                "ab".repeat(32)
            )
        })
        .collect();
    let ledger = d.join("audit.log");
    std::fs::write(&ledger, clear.join("\n") + "\n").unwrap();
    let read = || audit_offline(&d, &key);
    // Before any peer ran, they read as what they are: entries from before the sealing.
    let (shown, skipped) = read();
    assert_eq!((shown.lines().count(), skipped), (3, 0), "{shown}");
    // The first start seals the old lines, and this run's traffic is in the sealed file.
    let a = Daemon::start_with(&d, Stdio::null(), &key);
    let b = Daemon::start(&p);
    let code = ok(&d, &["invite"]);
    ok(&p, &["join", code.trim(), "--wait-s", "30"]);
    let pid = ok(&p, &["id"]).trim().to_string();
    ok(&d, &["ping", &pid[..16]]);
    a.stop();
    b.stop();
    let text = std::fs::read_to_string(&ledger).unwrap();
    let sealed: Vec<&str> = text.lines().collect();
    assert!(sealed.len() > 3 + 2, "this run's lines are in the ledger: {text}");
    assert!(
        // (Hex may hold "abab" by chance; a JSON brace it cannot.)
        sealed.iter().all(|l| l.starts_with("sealed:")) && !text.contains('{'),
        "{text}"
    );
    let (shown, skipped) = read();
    assert_eq!((shown.lines().count(), skipped), (sealed.len(), 0), "{shown}");
    assert_eq!(shown.matches(&"ab".repeat(32)).count(), 3, "{shown}");
    // A clear line put in front of sealed ones, a sealed line altered, a clear line
    // slipped in after them: a ledger with sealed lines is not sealed again, and all
    // three stay bad.
    let mut altered = sealed[1].to_string();
    let mid = altered.len() / 2;
    let digit = if altered.as_bytes()[mid] == b'0' { "1" } else { "0" };
    altered.replace_range(mid..mid + 1, digit);
    // Peers named with letters no hex id holds, so neither can show up by chance.
    let ids = "ab".repeat(32);
    let (front, forged) = (
        clear[0].replace(&ids, "forged-front"),
        clear[2].replace(&ids, "forged-after"),
    );
    let crafted = [front.as_str(), sealed[0], &altered, sealed[2], &forged].join("\n") + "\n";
    std::fs::write(&ledger, crafted).unwrap();
    let a = Daemon::start_with(&d, Stdio::null(), &key);
    a.stop();
    // (The restarted peer tries its paired device: lines of its own follow the five.)
    let lines = std::fs::read_to_string(&ledger).unwrap().lines().count();
    assert!(lines >= 5, "{lines}");
    let (shown, skipped) = read();
    assert_eq!((shown.lines().count(), skipped), (2 + lines - 5, 3), "{shown}");
    assert!(!shown.contains("forged-"), "{shown}");
    // A plain directory: a stray sealed line is skipped, the rest still shows.
    let stray = sealed[0];
    // (And a peer field that is not an id, cut for the table only where it can be.)
    let odd = clear[1].replace(&"ab".repeat(32), &"éa".repeat(12));
    std::fs::write(p.join("audit.log"), format!("{}\n{stray}\n{odd}\n", clear[0])).unwrap();
    let out = smol(&p, &["audit", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(stderr(&out).contains("skipped 1"), "{}", stderr(&out));
    let out = smol(&p, &["audit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = smol_env(&p, &["audit"], &key);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&p);
}

#[test]
fn compact_and_repair_log_from_the_cli() {
    let d = tempdir("logcli");
    ok(&d, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    for _ in 0..3 {
        ok(&d, &["invite"]);
    }
    let out = ok(&d, &["compact"]);
    assert!(out.contains("only live records"), "{out}");
    // Damage in the middle of the log: `run` refuses, naming the way out.
    let log = d.join("records.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[8 + 12 + 2] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();
    let out = smol(&d, &["run"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("damaged at byte 8") && stderr(&out).contains("repair-log"),
        "{}",
        stderr(&out)
    );
    let out = smol(&d, &["repair-log"]);
    assert_eq!(out.status.code(), Some(2), "repair needs --yes");
    let out = ok(&d, &["repair-log", "--yes"]);
    assert!(out.contains("cut") && out.contains("records.log.damaged"), "{out}");
    assert_eq!(std::fs::read(d.join("records.log.damaged")).unwrap(), bytes);
    let daemon = Daemon::start(&d);
    daemon.stop();
    let _ = std::fs::remove_dir_all(&d);
}

/// The subcommands a `--help` text lists.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_subcommand_explains_itself() {
    let d = tempdir("help");
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let (mut seen, mut json_leaves) = (0, 0);
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = smol(&d, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        // Every command says what it does, in a sentence above its usage line.
        let about = text.lines().next().unwrap_or_default();
        assert!(
            about.len() > 10 && !about.starts_with("Usage"),
            "{args:?} has no description: {text}"
        );
        seen += 1;
        let subs = subcommands(&text);
        // Every command that answers with data offers it to machines too (DESIGN §13);
        // the exceptions print nothing worth parsing or run in the foreground.
        let leaf = subs.is_empty() && !path.is_empty();
        let exempt = ["init", "id", "run", "stop", "compact", "repair-log"];
        if leaf && !exempt.contains(&path[path.len() - 1].as_str()) {
            assert!(text.contains("--json"), "{args:?} has no --json: {text}");
            json_leaves += 1;
        }
        for c in subs {
            todo.push([path.clone(), vec![c]].concat());
        }
    }
    assert!(seen >= 25, "only {seen} commands found");
    assert!(json_leaves >= 20, "only {json_leaves} commands with --json");
    let _ = std::fs::remove_dir_all(&d);
}
