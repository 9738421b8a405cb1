//! `aura-sim`: run seeded simulations of Aura peers.

use std::process::ExitCode;
use std::time::Duration;

use aura_sim::{LinkModel, Ppm, Scenario, SimConfig, World};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aura-sim",
    version,
    about = "Seeded discrete-event simulator for Aura peers.\n\nEvery run is fully determined by its seed: running the same command twice prints the same trace-hash."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pair devices over a lossy network, ping and message, then report.
    ///
    /// Device 0 issues one invitation per other device; each joins, pairs, pings device 0
    /// and receives a message from it. The run fails (exit 1) if an invariant breaks or the
    /// workload does not finish within --max-time.
    Run(RunArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScenarioArg {
    /// Pair, ping and message.
    Pairing,
    /// Pair, form an (n-1)-of-n authority by DKG, crash one device, sign.
    Authority,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The workload to run.
    #[arg(long, value_enum, default_value = "pairing")]
    scenario: ScenarioArg,
    /// Root seed: the whole run follows from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of devices (at least 2).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=256))]
    peers: u16,
    /// Probability a datagram is lost, 0.0..=1.0.
    #[arg(long, default_value = "0.1", value_parser = parse_prob)]
    loss: Ppm,
    /// Probability a datagram is duplicated.
    #[arg(long, default_value = "0.02", value_parser = parse_prob)]
    dup: Ppm,
    /// Probability a datagram is held back and reordered.
    #[arg(long, default_value = "0.05", value_parser = parse_prob)]
    reorder: Ppm,
    /// Minimum one-way delay in milliseconds.
    #[arg(long, default_value_t = 5)]
    min_delay_ms: u64,
    /// Mean of the exponential extra delay in milliseconds.
    #[arg(long, default_value_t = 10)]
    mean_delay_ms: u64,
    /// Give up after this many simulated seconds.
    #[arg(long, default_value_t = 600)]
    max_time_s: u64,
    /// Print one line per event.
    #[arg(long)]
    trace: bool,
}

/// Parses a probability given as a decimal (e.g. `0.1`) into parts per million.
/// Parsing is exact decimal arithmetic, so the same text always gives the same run.
fn parse_prob(s: &str) -> Result<Ppm, String> {
    let bad = || format!("{s:?} is not a probability between 0 and 1 (e.g. 0.1)");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 6
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
        || (int.is_empty() && frac.is_empty())
    {
        return Err(bad());
    }
    let i: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let f: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| bad())?
    };
    let ppm = i * 1_000_000 + f;
    if ppm > 1_000_000 {
        return Err(bad());
    }
    Ok(ppm as Ppm)
}

fn pct(p: Ppm) -> String {
    format!("{}.{}%", p / 10_000, p % 10_000 / 1000)
}

fn secs(ns: u64) -> String {
    format!("{}.{:03} s", ns / 1_000_000_000, ns % 1_000_000_000 / 1_000_000)
}

fn scenario_name(s: ScenarioArg) -> &'static str {
    match s {
        ScenarioArg::Pairing => "pairing",
        ScenarioArg::Authority => "authority",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run(a),
    }
}

fn run(a: RunArgs) -> ExitCode {
    let cfg = SimConfig {
        seed: a.seed,
        peers: a.peers as usize,
        link: LinkModel {
            min_delay: Duration::from_millis(a.min_delay_ms),
            mean_extra: Duration::from_millis(a.mean_delay_ms),
            loss: a.loss,
            dup: a.dup,
            reorder: a.reorder,
        },
        max_time: Duration::from_secs(a.max_time_s),
        scenario: match a.scenario {
            ScenarioArg::Pairing => Scenario::Pairing,
            ScenarioArg::Authority => Scenario::Authority,
        },
        ..SimConfig::default()
    };
    println!(
        "aura-sim run: seed={} peers={} loss={} dup={} reorder={} delay={}ms+exp({}ms)",
        a.seed,
        a.peers,
        pct(a.loss),
        pct(a.dup),
        pct(a.reorder),
        a.min_delay_ms,
        a.mean_delay_ms
    );
    let mut w = World::new(cfg);
    if a.trace {
        w.set_trace(|l| println!("{l}"));
    }
    // Wall time for the report only; it never enters the simulated run.
    let started = std::time::Instant::now();
    let res = w.run();
    let wall = started.elapsed();
    let s = &w.stats;
    let joiners = a.peers as u64 - 1;
    println!(
        "pairings: {}/{joiners} complete{}",
        s.pairings,
        s.all_paired_at.map(|t| format!(" at {}", secs(t))).unwrap_or_default()
    );
    println!("pings answered: {}  messages delivered: {}", s.pongs, s.messages);
    if matches!(a.scenario, ScenarioArg::Authority) {
        println!(
            "authority: {} devices created it; {} crashed; threshold signatures: {} (all verified)",
            s.authority_members, s.crashes, s.signatures
        );
    }
    println!(
        "datagrams: sent {} delivered {} lost {} duplicated {} reordered {}",
        s.sent, s.delivered, s.lost, s.duplicated, s.reordered
    );
    let drops: Vec<String> = s.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "dropped by peers: {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    );
    println!("records persisted: {}", s.persisted);
    let sim = w.now_ns();
    let wall_s = wall.as_secs_f64().max(1e-9);
    println!(
        "events: {} in {:.3} s wall ({:.0} events/s), simulated {} ({:.0}x real time)",
        s.events,
        wall_s,
        s.events as f64 / wall_s,
        secs(sim),
        sim as f64 / 1e9 / wall_s
    );
    println!("invariants: {} checks", s.checks);
    let code = match res {
        Err(v) => {
            println!(
                "FAILED invariant {} at event {} (t={}): {}",
                v.invariant,
                v.event_index,
                secs(v.time_ns),
                v.detail
            );
            println!(
                "replay: aura-sim run --seed {} --peers {} --scenario {} --trace",
                a.seed,
                a.peers,
                scenario_name(a.scenario)
            );
            ExitCode::from(1)
        }
        Ok(()) if !w.done() => {
            println!(
                "FAILED liveness: workload not finished within {} s simulated",
                a.max_time_s
            );
            println!(
                "replay: aura-sim run --seed {} --peers {} --scenario {} --trace",
                a.seed,
                a.peers,
                scenario_name(a.scenario)
            );
            ExitCode::from(1)
        }
        Ok(()) => {
            println!("result: ok");
            ExitCode::SUCCESS
        }
    };
    println!("trace-hash: {}", w.trace_hash());
    code
}

#[cfg(test)]
mod tests {
    use super::parse_prob;

    #[test]
    fn probabilities_parse_exactly() {
        assert_eq!(parse_prob("0.1"), Ok(100_000));
        assert_eq!(parse_prob("1"), Ok(1_000_000));
        assert_eq!(parse_prob(".05"), Ok(50_000));
        assert_eq!(parse_prob("0.000001"), Ok(1));
        assert!(parse_prob("1.5").is_err());
        assert!(parse_prob("-0.1").is_err());
        assert!(parse_prob("0.0000001").is_err());
        assert!(parse_prob("abc").is_err());
        assert!(parse_prob("").is_err());
    }
}
