//! Two real `aura-smol` processes on 127.0.0.1: init, invite, join, ping, status, stop.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn two_processes_pair_ping_and_stop() {
    let (a, b) = (tempdir("a"), tempdir("b"));
    ok(&a, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    ok(&b, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.join("device.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "device secret must be private");
    }
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let code = ok(&a, &["invite", "--valid-for", "10m"]).trim().to_string();
    assert!(code.starts_with("AURA1-"), "{code}");
    let joined = ok(&b, &["join", &code, "--wait-s", "30"]);
    let a_id = ok(&a, &["id"]).trim().to_string();
    assert!(joined.contains(&a_id), "{joined}");
    let pong = ok(&b, &["ping", &a_id[..10], "--count", "2"]);
    assert_eq!(pong.lines().filter(|l| l.starts_with("pong from")).count(), 2, "{pong}");

    let status: serde_json::Value = serde_json::from_str(&ok(&b, &["status", "--json"])).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["paired"][0]["id"], a_id.as_str());
    let ch = &status["channels"][0];
    assert_eq!(ch["peer"], a_id.as_str());
    assert_eq!(ch["state"], "up");
    assert_eq!(ch["version"], 1);
    assert!(ch["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(ch["path"], "direct");
    let human = ok(&a, &["status"]);
    assert!(human.contains("up") && human.contains("version"), "{human}");
    let b_id = ok(&b, &["id"]).trim().to_string();
    let verbose = ok(&a, &["status", "--verbose"]);
    assert!(
        verbose.contains(&format!("peer {b_id}")) && verbose.contains("(direct)") && verbose.contains("epoch 0"),
        "{verbose}"
    );

    // The egress ledger lists what b sent to a (handshake, pings), and no content.
    let ledger = ok(&b, &["audit", "--json"]);
    let lines: Vec<serde_json::Value> = ledger.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["kind"] == "handshake"), "{ledger}");
    let pings: Vec<_> = lines
        .iter()
        .filter(|l| l["kind"] == "control" && l["peer"] == a_id.as_str())
        .collect();
    assert!(pings.len() >= 2, "{ledger}");
    assert!(pings.iter().all(|l| l["context"] == "own" && l["bucket"] == 256));
    let table = ok(&b, &["audit", "--since", "10m"]);
    assert!(table.contains("datagrams") && table.contains("own"), "{table}");
    let nowhere = tempdir("no-audit");
    assert_eq!(smol(&nowhere, &["audit"]).status.code(), Some(3));

    // A second process cannot take a directory in use.
    let out = smol(&b, &["run"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    // The code is spent.
    let out = smol(&b, &["join", &code]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already used"));

    da.stop();
    db.stop();

    // Pairing survives a restart: both come back and talk again over a new link handshake.
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let pong = ok(&b, &["ping", &a_id[..10]]);
    assert!(pong.starts_with("pong from"), "{pong}");
    da.stop();
    db.stop();
    // Stopped: ping needs a running peer.
    assert_eq!(smol(&b, &["ping", &a_id[..10]]).status.code(), Some(4));
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn offline_invite_and_join_finish_when_running() {
    let (a, b) = (tempdir("oa"), tempdir("ob"));
    ok(&a, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    ok(&b, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    let code = ok(&a, &["invite"]).trim().to_string();
    let out = ok(&b, &["join", &code]);
    assert!(out.contains("join recorded"));
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let a_id = ok(&a, &["id"]).trim().to_string();
    let t0 = Instant::now();
    loop {
        let s: serde_json::Value = serde_json::from_str(&ok(&b, &["status", "--json"])).unwrap();
        if s["paired"][0]["id"] == a_id.as_str() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pending join did not complete: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    da.stop();
    db.stop();
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn bad_input_gives_clear_errors() {
    let d = tempdir("bad");
    let out = smol(&d, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("init"));
    ok(&d, &["init", "--listen", "127.0.0.1:0"]);
    let out = smol(&d, &["init"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    for (code, needle) in [
        ("hello", "must start with AURA1-"),
        ("AURA1-ABCDE", "truncated"),
        ("AURA1-AB!", "invalid character"),
    ] {
        let out = smol(&d, &["join", code]);
        assert_eq!(out.status.code(), Some(1), "{code}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = smol(&d, &["invite", "--valid-for", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn three_processes_form_a_2_of_3_authority_sign_with_one_down_and_catch_up() {
    let dirs: Vec<PathBuf> = ["ta", "tb", "tc"].iter().map(|n| tempdir(n)).collect();
    for d in &dirs {
        ok(d, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    }
    let mut daemons: Vec<Option<Daemon>> = dirs.iter().map(|d| Some(Daemon::start(d))).collect();
    for j in 1..3 {
        let code = ok(&dirs[0], &["invite"]).trim().to_string();
        ok(&dirs[j], &["join", &code, "--wait-s", "30"]);
    }
    let out = ok(
        &dirs[0],
        &["authority", "create", "--threshold", "2", "--timeout-s", "60"],
    );
    assert!(out.contains("threshold: 2 of 3"), "{out}");
    // Members learn the genesis a moment after the coordinator.
    let show: Vec<serde_json::Value> = dirs.iter().map(|d| await_authority(d)).collect();
    assert!(show
        .iter()
        .all(|s| s["group_key"] == show[0]["group_key"] && s["id"] == show[0]["id"]));
    assert_eq!(show[0]["members"].as_array().unwrap().len(), 3);

    // Device C is killed (SIGKILL); B asks for a signature and A and B make it.
    daemons[2].take().unwrap().kill9();
    let out = ok(&dirs[1], &["sign", "hello from three processes", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["group_key"], show[0]["group_key"]);
    let gk = unhex(v["group_key"].as_str().unwrap());
    let sig = unhex(v["signature"].as_str().unwrap());
    let msg = unhex(v["message"].as_str().unwrap());
    let vk = frost_ristretto255::VerifyingKey::deserialize(&gk).unwrap();
    let sig = frost_ristretto255::Signature::deserialize(&sig).unwrap();
    assert!(
        vk.verify(&msg, &sig).is_ok(),
        "plain FROST verification must accept the signature"
    );

    // Concurrent requests each get the signature of their own statement.
    let texts: Vec<String> = (0..4).map(|k| format!("concurrent statement {k}")).collect();
    let children: Vec<_> = texts
        .iter()
        .map(|t| {
            std::process::Command::new(bin())
                .arg("-d")
                .arg(&dirs[k_of(t)])
                .args(["sign", t, "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for (t, c) in texts.iter().zip(children) {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{t}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let msg = unhex(v["message"].as_str().unwrap());
        assert!(
            msg.windows(t.len()).any(|w| w == t.as_bytes()),
            "{t} got another statement's signature"
        );
    }
    // A and B still sync with each other (C's session fails, and says so).
    let out = smol(&dirs[0], &["sync", "--json", "--timeout-s", "3"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b_id = ok(&dirs[1], &["id"]).trim().to_string();
    let sessions = v["sessions"].as_array().unwrap();
    assert!(
        sessions.iter().any(|s| s["peer"] == b_id.as_str() && s["ok"] == true),
        "{v}"
    );
    // C comes back and catches up on the statement it missed, by anti-entropy.
    daemons[2] = Some(Daemon::start(&dirs[2]));
    let facts = |d: &Path| await_authority(d)["facts"].as_u64().unwrap();
    let t0 = Instant::now();
    while facts(&dirs[2]) != facts(&dirs[0]) {
        assert!(t0.elapsed() < Duration::from_secs(20), "C did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A note asking for confirmation: written on A, confirmed by B and C.
    let out = ok(&dirs[0], &["note", "--ack", "groceries: milk", "--json"]);
    let note: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = note["fact"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let row = loop {
        let out = ok(&dirs[0], &["propagation", "--json"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let row = all.into_iter().find(|f| f["fact"] == id.as_str()).expect("listed");
        if row["status"] == "complete" && row["confirmed"].as_array().unwrap().len() == 2 {
            break row;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "note not confirmed: {row}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["kind"], "note");
    // An on-demand sync from B: every session succeeds and finds nothing to move.
    let out = ok(&dirs[1], &["sync", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{v}");
    assert!(sessions.iter().all(|s| s["ok"] == true && s["fetched"] == 0), "{v}");
    let bad = smol(&dirs[1], &["sync", "--peer", "zzzz"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no paired device or context member"));
    // The three agree, by consensus, that from now on three must agree.
    let out = ok(&dirs[0], &["authority", "threshold", "3"]);
    assert!(out.contains("threshold 3 of 3"), "{out}");
    let t0 = Instant::now();
    while await_authority(&dirs[2])["threshold"] != 3 {
        assert!(t0.elapsed() < Duration::from_secs(20), "C did not apply the change");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad = smol(&dirs[0], &["authority", "threshold", "9"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not apply"));

    // A fourth device pairs with A and is added: same key, and it signs with two others.
    let mut dirs = dirs;
    dirs.push(tempdir("td"));
    ok(&dirs[3], &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    daemons.push(Some(Daemon::start(&dirs[3])));
    let code = ok(&dirs[0], &["invite"]).trim().to_string();
    ok(&dirs[3], &["join", &code, "--wait-s", "30"]);
    let bad = smol(&dirs[0], &["device", "add", "zzzz"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pair it first"));
    let d_id = ok(&dirs[3], &["id"]).trim().to_string();
    let out = ok(&dirs[0], &["device", "add", &d_id[..12]]);
    assert!(out.contains("holds its share") && out.contains("4 members"), "{out}");
    let d_show = await_authority(&dirs[3]);
    assert_eq!(
        (&d_show["id"], &d_show["group_key"]),
        (&show[0]["id"], &show[0]["group_key"])
    );
    let out = ok(&dirs[3], &["sign", "from the added device", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sig = frost_ristretto255::Signature::deserialize(&unhex(v["signature"].as_str().unwrap())).unwrap();
    assert!(vk.verify(&unhex(v["message"].as_str().unwrap()), &sig).is_ok());
    // All four refresh their shares of the same key, then sign with the new ones.
    let out = ok(&dirs[0], &["authority", "refresh"]);
    assert!(out.contains("refreshed"), "{out}");
    let t0 = Instant::now();
    while await_authority(&dirs[3])["epoch"] != await_authority(&dirs[0])["epoch"] {
        assert!(t0.elapsed() < Duration::from_secs(20), "D did not switch");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ok(&dirs[3], &["sign", "after the refresh", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sig = frost_ristretto255::Signature::deserialize(&unhex(v["signature"].as_str().unwrap())).unwrap();
    assert!(vk.verify(&unhex(v["message"].as_str().unwrap()), &sig).is_ok());
    for d in daemons.iter_mut().filter_map(Option::take) {
        d.stop();
    }
    // Right after the refresh the running peers compacted their logs: no old share is
    // left on disk, and A still signs (threshold 3 now) after restarting from it.
    let shares = |d: &Path| -> std::collections::BTreeSet<Vec<u8>> {
        let store = aura_shell_smol::store::Store::open(d).unwrap();
        store
            .records
            .iter()
            .filter_map(|r| r.key_package().map(<[u8]>::to_vec))
            .collect()
    };
    for d in &dirs {
        assert_eq!(shares(d).len(), 1, "{}: an old share is still on disk", d.display());
    }
    let out = ok(&dirs[0], &["compact"]);
    assert!(out.contains("records"), "{out}");
    let restarted: Vec<Daemon> = dirs[..3].iter().map(|d| Daemon::start(d)).collect();
    let out = ok(&dirs[0], &["sign", "after compaction", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sig = frost_ristretto255::Signature::deserialize(&unhex(v["signature"].as_str().unwrap())).unwrap();
    assert!(vk.verify(&unhex(v["message"].as_str().unwrap()), &sig).is_ok());
    for d in restarted {
        d.stop();
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn two_people_create_a_context_and_talk_through_the_guard_chain() {
    // Alice has devices a1, a2; Bob has b1, b2. Each pair forms a 2-of-2 authority.
    let dirs: Vec<PathBuf> = ["ca1", "ca2", "cb1", "cb2"].iter().map(|n| tempdir(n)).collect();
    for d in &dirs {
        ok(d, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    }
    let daemons: Vec<Daemon> = dirs.iter().map(|d| Daemon::start(d)).collect();
    for (lead, other) in [(0, 1), (2, 3)] {
        let code = ok(&dirs[lead], &["invite"]).trim().to_string();
        ok(&dirs[other], &["join", &code, "--wait-s", "30"]);
        ok(
            &dirs[lead],
            &["authority", "create", "--threshold", "2", "--timeout-s", "60"],
        );
        await_authority(&dirs[other]);
    }
    let alice = await_authority(&dirs[0]);
    let bob = await_authority(&dirs[2]);
    assert_ne!(alice["id"], bob["id"]);

    // A context between the two people.
    let code = ok(&dirs[0], &["context", "invite", "--valid-for", "10m"])
        .trim()
        .to_string();
    let joined = ok(&dirs[2], &["context", "join", &code, "--wait-s", "30"]);
    assert!(joined.contains(alice["id"].as_str().unwrap()), "{joined}");
    let t0 = Instant::now();
    let list = loop {
        let l: Vec<serde_json::Value> = serde_json::from_str(&ok(&dirs[0], &["context", "list", "--json"])).unwrap();
        if !l.is_empty() {
            break l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "context never ready at the inviter"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let ctx = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["members"].as_array().unwrap().len(), 4);
    let b1 = ok(&dirs[2], &["id"]).trim().to_string();

    let out = ok(&dirs[0], &["context", "send", &ctx[..12], &b1[..12], "hello bob"]);
    assert!(out.contains("handed to the guard chain"), "{out}");
    // The context channel shows in status with its context and epoch.
    let t0 = Instant::now();
    loop {
        let st: serde_json::Value = serde_json::from_str(&ok(&dirs[0], &["status", "--json"])).unwrap();
        let up = st["channels"].as_array().unwrap().iter().any(|c| {
            c["context"] == ctx.as_str() && c["epoch"] == 0 && c["peer"] == b1.as_str() && c["purpose"] == "context"
        });
        if up {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no context channel in status: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The app frame is in the ledger under the context, charged one unit.
    let t0 = Instant::now();
    loop {
        let ledger = ok(&dirs[0], &["audit", "--json"]);
        let sent = ledger.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"] == "app" && v["context"] == ctx.as_str() && v["cost"] == 1 && v["peer"] == b1.as_str()
        });
        if sent {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no app frame in the ledger: {ledger}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bad input is refused clearly.
    let out = smol(&dirs[0], &["context", "send", "ffff", &b1[..12], "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no ready context"));
    let a2 = ok(&dirs[1], &["id"]).trim().to_string();
    let out = smol(&dirs[0], &["context", "send", &ctx[..12], &a2[..12], "x"]);
    assert_eq!(out.status.code(), Some(1), "own device is not a context peer");

    // Bob's authority gives the context a new epoch; every device moves to it, and the
    // old epoch's channel gives way to one of the new.
    let out = ok(&dirs[3], &["context", "rekey", &ctx[..12], "--timeout-s", "60"]);
    assert!(out.contains("is at epoch"), "{out}");
    let t0 = Instant::now();
    loop {
        let epochs: Vec<u64> = dirs
            .iter()
            .map(|d| {
                let l: Vec<serde_json::Value> = serde_json::from_str(&ok(d, &["context", "list", "--json"])).unwrap();
                l.first().and_then(|c| c["epoch"].as_u64()).unwrap_or(0)
            })
            .collect();
        if epochs.iter().all(|e| *e >= 1 && *e == epochs[0]) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not every device moved to the new epoch: {epochs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&dirs[0], &["context", "send", &ctx[..12], &b1[..12], "hello again"]);
    let t0 = Instant::now();
    loop {
        let st: serde_json::Value = serde_json::from_str(&ok(&dirs[0], &["status", "--json"])).unwrap();
        let up = st["channels"].as_array().unwrap().iter().any(|c| {
            c["context"] == ctx.as_str() && c["epoch"].as_u64().is_some_and(|e| e >= 1) && c["peer"] == b1.as_str()
        });
        if up {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no channel of the new epoch: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = smol(&dirs[0], &["context", "rekey", "ffff"]);
    assert_eq!(out.status.code(), Some(1));

    for d in daemons {
        d.stop();
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn send_and_bench_echo_between_two_processes() {
    let (a, b) = (tempdir("ea"), tempdir("eb"));
    ok(&a, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    ok(&b, &["init", "--listen", &format!("127.0.0.1:{}", free_port())]);
    let da = Daemon::start(&a);
    let db = Daemon::start(&b);
    let code = ok(&a, &["invite"]).trim().to_string();
    ok(&b, &["join", &code, "--wait-s", "30"]);
    let b_id = ok(&b, &["id"]).trim().to_string();
    let out = ok(&a, &["send", &b_id[..12], "hello b"]);
    assert!(out.contains(&format!("sent to {b_id}")), "{out}");
    let bad = smol(&a, &["bench-echo", &b_id[..12], "--size", "4"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("8 <= size"));
    // b does not echo: every message counts as lost once a second passes without one.
    let out = ok(&a, &["bench-echo", &b_id[..12], "--count", "5", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["messages"].as_u64(), v["lost"].as_u64()), (Some(0), Some(5)), "{v}");
    db.stop();
    // With --echo, every message comes back.
    let db = Daemon::start_args(&b, std::process::Stdio::null(), &[], &["--echo"]);
    let out = ok(
        &a,
        &["bench-echo", &b_id[..12], "--count", "300", "--window", "8", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"].as_u64(), Some(300), "{v}");
    assert!(
        v["rtt_p50_us"].as_u64().unwrap() > 0 && v["msgs_per_s"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    da.stop();
    db.stop();
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

/// Which of A and B asks for statement `t` (alternating by its last digit).
fn k_of(t: &str) -> usize {
    usize::from(t.ends_with(['1', '3']))
}
