//! Two `aura-smol` processes on loopback against raw snow over UDP, in the same run.
//!
//! Two message sizes: the largest payload whose frame fits the 1 KiB padding bucket (1 KiB
//! on the wire), and exactly 1024 bytes of payload, which Aura pads to the 4 KiB bucket
//! (DESIGN §7: sizes on the wire reveal only a bucket); raw snow sends either unpadded.
//!
//! Aura: `aura-smol run` and `aura-smol run --echo`, paired; `bench-echo` has the first
//! send COUNT messages to the second through the whole stack (control request,
//! core, Noise channel, UDP, the other daemon's loop and core, its echo, and back), with
//! at most WINDOW awaiting their echo. Raw: the same pattern with two threads, snow
//! transport states (the same Noise pattern) and plain UDP sockets. Rounds alternate;
//! the medians and their ratios are printed against the targets (throughput at least
//! half of raw, p50 round trip at most twice raw).
//!
//! `cargo bench -p aura-shell-smol --bench loopback [-- --quick]`

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The raw snow baseline's handshake is the one aura-proto's benchmarks use.
#[path = "../../aura-proto/benches/common/mod.rs"]
mod common;
use common::{median, snow_transport_pair as transport_pair};

const WINDOW: u64 = 16;

/// One measured run: messages per second, p50 and p99 round trip (µs), lost.
#[derive(Clone, Copy, Debug)]
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    lost: u64,
}

/// Raw snow over UDP: an echo thread, and this thread keeping WINDOW messages in flight.
fn raw(count: u64, size: usize) -> Run {
    let (init, resp) = transport_pair();
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut buf, mut plain, mut out) = (vec![0u8; 2048], vec![0u8; 2048], vec![0u8; 2048]);
        loop {
            let (n, from) = echo.recv_from(&mut buf).unwrap();
            if n == 1 {
                return;
            }
            let nonce = u64::from_le_bytes(buf[..8].try_into().unwrap());
            let len = resp.read_message(nonce, &buf[8..n], &mut plain).unwrap();
            out[..8].copy_from_slice(&nonce.to_le_bytes());
            let m = resp.write_message(nonce, &plain[..len], &mut out[8..]).unwrap();
            echo.send_to(&out[..8 + m], from).unwrap();
        }
    });
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(echo_addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let (mut buf, mut plain, mut out) = (vec![0u8; 2048], vec![0u8; 2048], vec![0u8; 2048]);
    let mut in_flight = BTreeMap::new();
    let (mut sent, mut lost) = (0u64, 0u64);
    let mut rtts = Vec::with_capacity(count as usize);
    let start = Instant::now();
    while sent < count || !in_flight.is_empty() {
        while sent < count && (in_flight.len() as u64) < WINDOW {
            let mut msg = vec![0x5a; size];
            msg[..8].copy_from_slice(&sent.to_le_bytes());
            out[..8].copy_from_slice(&sent.to_le_bytes());
            let m = init.write_message(sent, &msg, &mut out[8..]).unwrap();
            sock.send(&out[..8 + m]).unwrap();
            in_flight.insert(sent, Instant::now());
            sent += 1;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                let nonce = u64::from_le_bytes(buf[..8].try_into().unwrap());
                let len = init.read_message(nonce, &buf[8..n], &mut plain).unwrap();
                let seq = u64::from_le_bytes(plain[..8].try_into().unwrap());
                assert_eq!(len, size);
                if let Some(at) = in_flight.remove(&seq) {
                    rtts.push(at.elapsed());
                }
            }
            Err(_) => {
                lost += in_flight.len() as u64;
                in_flight.clear();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    sock.send(&[0]).unwrap();
    t.join().unwrap();
    rtts.sort();
    let pct = |p: usize| rtts[(rtts.len() * p / 100).min(rtts.len() - 1)].as_secs_f64() * 1e6;
    Run {
        rate: rtts.len() as f64 / secs,
        p50: pct(50),
        p99: pct(99),
        lost,
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_aura-smol")
}

fn smol(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin()).arg("-d").arg(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "aura-smol {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let _ = std::fs::remove_file(dir.join("control.sock"));
    let child = Command::new(bin())
        .arg("-d")
        .arg(dir)
        .args(["run", "--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dir.join("control.sock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

/// Two paired daemons, the second echoing: (dirs, daemons, the echoer's id).
fn aura_pair() -> (Vec<PathBuf>, Vec<Daemon>, String) {
    let base = std::env::temp_dir().join(format!("aura-loopback-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|n| base.join(n)).collect();
    for d in &dirs {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        smol(d, &["init", "--listen", &format!("127.0.0.1:{port}")]);
    }
    let daemons = vec![start(&dirs[0], &[]), start(&dirs[1], &["--echo"])];
    let code = smol(&dirs[0], &["invite"]).trim().to_string();
    smol(&dirs[1], &["join", &code, "--wait-s", "30"]);
    let b = smol(&dirs[1], &["id"]).trim().to_string();
    smol(&dirs[0], &["ping", &b[..16]]);
    (dirs, daemons, b)
}

fn aura(dir: &Path, peer: &str, count: u64, size: usize) -> Run {
    let out = smol(
        dir,
        &[
            "bench-echo",
            &peer[..16],
            "--count",
            &count.to_string(),
            "--size",
            &size.to_string(),
            "--window",
            &WINDOW.to_string(),
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    Run {
        rate: v["msgs_per_s"].as_f64().unwrap(),
        p50: v["rtt_p50_us"].as_f64().unwrap(),
        p99: v["rtt_p99_us"].as_f64().unwrap(),
        lost: v["lost"].as_u64().unwrap(),
    }
}

/// The largest application payload whose frame pads to the 1 KiB bucket.
fn one_kib_bucket_payload() -> usize {
    (0..1024)
        .rev()
        .find(|n| {
            let data = vec![0u8; *n];
            let mut out = Vec::new();
            aura_proto::wire::pad_frame(&aura_proto::wire::Frame::App { data: &data }, &mut out).is_ok()
                && out.len() == 1024
        })
        .unwrap()
}

/// The padding bucket of the last datagram `dir`'s peer sent (from its egress ledger).
fn last_bucket(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    v["bucket"].as_u64().unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, count) = if quick { (3, 1000) } else { (5, 5000) };
    println!(
        "aura-shell-smol loopback benchmark: window {WINDOW}, {count} messages per round, {rounds} rounds (medians)"
    );
    let (dirs, daemons, peer) = aura_pair();
    let small = one_kib_bucket_payload();
    for (size, bucket) in [(small, 1024), (1024, 4096)] {
        // Warm both paths up once.
        let _ = aura(&dirs[0], &peer, 200, size);
        assert_eq!(
            last_bucket(&dirs[0]),
            bucket,
            "{size}-byte payloads are not in the {bucket} bucket"
        );
        let _ = raw(200, size);
        let (mut a, mut r) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            r.push(raw(count, size));
            a.push(aura(&dirs[0], &peer, count, size));
        }
        let m = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
        let (ar, rr) = (m(&a, |x| x.rate), m(&r, |x| x.rate));
        let (a50, r50) = (m(&a, |x| x.p50), m(&r, |x| x.p50));
        let (a99, r99) = (m(&a, |x| x.p99), m(&r, |x| x.p99));
        let lost: u64 = a.iter().chain(&r).map(|x| x.lost).sum();
        println!("{size}-byte payloads ({bucket}-byte bucket on Aura's wire):");
        println!(
            "  throughput: aura-smol {ar:.0} msg/s, raw snow {rr:.0} msg/s: ratio {:.2}  target >= 0.50",
            ar / rr
        );
        println!(
            "  round trip p50: aura-smol {a50:.0} us, raw snow {r50:.0} us: ratio {:.2}x  target <= 2x",
            a50 / r50
        );
        println!(
            "  round trip p99: aura-smol {a99:.0} us, raw snow {r99:.0} us: ratio {:.2}x",
            a99 / r99
        );
        println!("  lost (counted after 1 s without an echo): {lost}");
    }
    drop(daemons);
    let _ = std::fs::remove_dir_all(dirs[0].parent().unwrap());
}
