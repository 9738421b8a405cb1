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
    let mut seen = 0;
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
        for c in subcommands(&text) {
            todo.push([path.clone(), vec![c]].concat());
        }
    }
    assert!(seen >= 25, "only {seen} commands found");
    let _ = std::fs::remove_dir_all(&d);
}
