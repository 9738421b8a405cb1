//! The core stays pure: no async runtime, socket, TLS or OS-randomness crate in its
//! dependency tree, no new dependency without review, no clock or hash-order API in its
//! source.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn proto_deps() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "-p",
            "aura-proto",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "aura-proto")
        .map(str::to_owned)
        .collect()
}

const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "async runtime"),
    ("async-std", "async runtime"),
    ("smol", "async runtime"),
    ("async-executor", "async runtime"),
    ("async-global-executor", "async runtime"),
    ("async-io", "async runtime / sockets"),
    ("async-net", "sockets"),
    ("futures-executor", "async runtime"),
    ("mio", "sockets"),
    ("socket2", "sockets"),
    ("polling", "OS event loop"),
    ("rustls", "TLS"),
    ("tokio-rustls", "TLS"),
    ("native-tls", "TLS"),
    ("openssl", "TLS"),
    ("hyper", "network I/O"),
    ("reqwest", "network I/O"),
    // getrandom is not listed: biscuit-auth depends on rand with OS randomness enabled.
    // The core passes its own seeded RNG to every `*_with_rng` entry point, and
    // aura-proto/clippy.toml bans the ones that would reach the OS.
];

#[test]
fn dependency_tree_has_no_runtime_socket_tls_or_os_randomness() {
    let deps = proto_deps();
    assert!(
        deps.contains("snow") && deps.contains("blake3"),
        "cargo tree output not understood: {deps:?}"
    );
    let bad: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(n, _)| deps.contains(*n))
        .map(|(n, why)| format!("{n} ({why})"))
        .collect();
    assert!(
        bad.is_empty(),
        "aura-proto must stay sans-IO, but depends on: {}",
        bad.join(", ")
    );
}

#[test]
fn dependency_tree_matches_the_allow_list() {
    let allow: BTreeSet<String> = std::fs::read_to_string(root().join("tests/proto-deps.allow"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let deps = proto_deps();
    let new: Vec<_> = deps.difference(&allow).collect();
    assert!(
        new.is_empty(),
        "aura-proto gained dependencies {new:?}: review them and add them to tests/proto-deps.allow"
    );
}

#[test]
fn core_source_uses_no_clock_os_randomness_or_hash_order() {
    let needles = [
        "Instant::now",
        "SystemTime",
        "thread_rng",
        "OsRng",
        "getrandom",
        "rand::random",
        "HashMap",
        "HashSet",
        "std::net",
        "std::fs",
        "std::thread",
        "async fn",
    ];
    let mut hits = Vec::new();
    let src = root().join("aura-proto/src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            for n in needles {
                if code.contains(n) {
                    hits.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "impure API in aura-proto:\n{}", hits.join("\n"));
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(lib.contains("#![forbid(unsafe_code)]"));
    let clippy = std::fs::read_to_string(root().join("aura-proto/clippy.toml")).unwrap();
    for n in [
        "Instant::now",
        "SystemTime::now",
        "HashMap",
        "HashSet",
        "biscuit_auth::KeyPair::new",
        "biscuit_auth::BiscuitBuilder::build",
    ] {
        assert!(clippy.contains(n), "aura-proto/clippy.toml must disallow {n}");
    }
}
