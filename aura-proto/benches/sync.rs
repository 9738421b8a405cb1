//! Bytes and round trips to reconcile n = 100k facts with d differences, random or
//! clustered among the newest facts, against a naive "send every id" exchange, with and
//! without a 16 KiB frame limit (issue 6's table). Deterministic: prints counts, not times.
//!
//! `cargo bench -p aura-proto --bench sync [-- --quick]`

use aura_proto::journal::FactId;
use aura_proto::rng::PeerRng;
use aura_proto::sync;

type Items = Vec<(u64, FactId)>;

/// Two item sets of about `n` that differ in `d` items (half only in each), either
/// scattered over the whole history or all among the newest.
fn pair(n: usize, d: usize, clustered: bool, seed: u8) -> (Items, Items) {
    let mut rng = PeerRng::from_seed([seed; 32]);
    let base: Items = (0..n).map(|i| (i as u64, FactId(rng.bytes32()))).collect();
    let (mut a, mut b) = (base.clone(), base);
    for k in 0..d {
        let t = if clustered {
            (n + k) as u64 // newer than everything shared
        } else {
            rng.next_u64() % n as u64
        };
        let item = (t, FactId(rng.bytes32()));
        if k % 2 == 0 {
            a.push(item);
        } else {
            b.push(item);
        }
    }
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// (round trips, bytes both ways, differences found).
fn reconcile(a: &Items, b: &Items, limit: u64) -> (usize, usize, usize) {
    let mut msg = sync::initiate(a, limit).unwrap();
    let (mut trips, mut bytes, mut found) = (0, 0, 0);
    loop {
        bytes += msg.len();
        let answer = sync::respond(b, limit, &msg).unwrap();
        bytes += answer.len();
        trips += 1;
        let s = sync::step(a, limit, &answer).unwrap();
        found += s.have.len() + s.need.len();
        match s.reply {
            Some(m) => msg = m,
            None => return (trips, bytes, found),
        }
    }
}

fn kb(b: usize) -> String {
    if b < 10_000 {
        format!("{b} B")
    } else {
        format!("{:.1} KB", b as f64 / 1000.0)
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 10_000 } else { 100_000 };
    // The reference C++ negentropy figures quoted in issue 6 (n = 100k, 32-byte ids, no
    // frame limit): bytes for d = 0, 1, 100, 10k.
    let reference = [(0usize, 324usize), (1, 1_800), (100, 107_000), (10_000, 2_800_000)];
    println!("set reconciliation, n = {n} facts per side (32-byte ids)");
    println!(
        "{:>6}  {:<9}  {:>12}  {:>6}  {:>14}  {:>6}  {:>10}  {:>10}",
        "d", "where", "bytes", "trips", "bytes @16KiB", "trips", "naive", "reference"
    );
    for (d, refb) in reference {
        for clustered in [false, true] {
            if d == 0 && clustered {
                continue;
            }
            let (a, b) = pair(n, d, clustered, 7);
            let (t0, b0, f0) = reconcile(&a, &b, 0);
            let (t1, b1, f1) = reconcile(&a, &b, 16 * 1024);
            assert_eq!((f0, f1), (d, d), "every difference found");
            // Naive: each side sends all its ids (with their clocks), one round trip.
            let naive = (a.len() + b.len()) * 40;
            println!(
                "{:>6}  {:<9}  {:>12}  {:>6}  {:>14}  {:>6}  {:>10}  {:>10}",
                d,
                if clustered { "newest" } else { "random" },
                kb(b0),
                t0,
                kb(b1),
                t1,
                kb(naive),
                if n == 100_000 { kb(refb) } else { "-".into() }
            );
        }
    }
}
