//! Simulator throughput: events per second and simulated time per wall second, for a null
//! workload (paired devices exchanging keepalives) and for the authority scenario.
//!
//! `cargo bench -p aura-sim --bench sim`

use std::time::{Duration, Instant};

use aura_proto::Config;
use aura_sim::{LinkModel, Scenario, SimConfig, World};

fn measure(label: &str, cfg: SimConfig, runs: u64) {
    let (mut events, mut sim_ns, mut wall) = (0u64, 0u64, Duration::ZERO);
    for seed in 1..=runs {
        let mut w = World::new(SimConfig { seed, ..cfg.clone() });
        let t = Instant::now();
        w.run().expect("no violation");
        wall += t.elapsed();
        events += w.stats.events;
        sim_ns += w.now_ns();
    }
    let s = wall.as_secs_f64();
    println!(
        "{label}: {events} events in {s:.3} s wall: {:.0} events/s, {:.0}x real time",
        events as f64 / s,
        sim_ns as f64 / 1e9 / s
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only null` or `--only authority` runs one workload, e.g. under a profiler.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let keepalive = SimConfig {
        scenario: Scenario::Keepalive,
        peers: 4,
        link: LinkModel::default(),
        max_time: Duration::from_secs(if quick { 300 } else { 3600 }),
        peer_config: Config {
            persistent_keepalive: Some(Duration::from_millis(250)),
            ..Config::default()
        },
        ..SimConfig::default()
    };
    if wants("null") {
        measure("null workload (4 devices, keepalives every 250 ms)", keepalive, 2);
    }
    let authority = SimConfig {
        scenario: Scenario::Authority,
        peers: 3,
        link: LinkModel {
            loss: 100_000,
            reorder: 50_000,
            ..LinkModel::default()
        },
        ..SimConfig::default()
    };
    if wants("authority") {
        measure(
            "authority scenario (3 devices, DKG + signing, 10% loss)",
            authority,
            if quick { 10 } else { 50 },
        );
    }
}
