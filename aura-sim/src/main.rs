//! `aura-sim`: run seeded simulations of Aura peers.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use aura_sim::perfetto::PerfettoWriter;
use aura_sim::scenario::ScenarioFile;
use aura_sim::{Faults, LinkModel, Ppm, Scenario, SimConfig, Violation, World};
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
    /// Run one seed and report.
    ///
    /// The run fails (exit 1) if an invariant breaks or the workload does not finish within
    /// --max-time-s; the report then ends with the command that replays it.
    Run(RunArgs),
    /// Run many seeds in parallel; stop at the first failure and print its replay command.
    Sweep(SweepArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScenarioArg {
    /// Device 0 invites every other device; each pairs, pings and receives a message.
    Pairing,
    /// Pair, form an (n-1)-of-n authority by DKG, crash one device, sign.
    Authority,
    /// Two authorities (two halves of the devices) create a relational context and send
    /// in it until the guard chain refuses for budget (needs --peers 4 or more).
    Context,
    /// Pair, form an (n-1)-of-n authority, then sign a statement every --sign-every-s
    /// until --statements are signed (journal facts for anti-entropy to spread).
    Journal,
    /// Pair, form a 2-of-n authority, then agree threshold changes by consensus (two
    /// competing proposals a second) until the tree epoch reaches --statements.
    Consensus,
}

#[derive(Clone, clap::Args)]
struct WorldArgs {
    /// The workload to run.
    #[arg(long, value_enum, default_value = "pairing")]
    scenario: ScenarioArg,
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
    /// Swarm mode: every seed draws its own link model and fault mix (overrides the link
    /// and fault flags).
    #[arg(long)]
    swarm: bool,
    /// Crash a random device every N simulated seconds on average (safety phase only).
    #[arg(long, value_name = "N")]
    crash_every_s: Option<u64>,
    /// Start a random partition every N simulated seconds on average (safety phase only).
    #[arg(long, value_name = "N")]
    partition_every_s: Option<u64>,
    /// Clog a random device's network interface every N simulated seconds on average
    /// (datagrams held, not lost, for 0.1-5 s; safety phase only).
    #[arg(long, value_name = "N")]
    clog_every_s: Option<u64>,
    /// Move each device's timer only earlier, as aura-smol does (the peer is woken
    /// before its deadlines and must do nothing then).
    #[arg(long)]
    lazy_timers: bool,
    /// Offset each device's clocks by up to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    skew_ms: u64,
    /// Length of the safety phase in simulated seconds; then faults stop and the workload
    /// must finish within --liveness-s.
    #[arg(long, default_value_t = 60)]
    safety_s: u64,
    /// Bound of the liveness phase in simulated seconds.
    #[arg(long, default_value_t = 300)]
    liveness_s: u64,
    /// Storage write latency range in milliseconds, LO..HI (a slow disk lets crashes catch
    /// writes in flight; 0 means 0.2 ms).
    #[arg(long, value_parser = parse_range, default_value = "0..3")]
    disk_ms: (u64, u64),
    /// Journal scenario: statements to sign; consensus scenario: changes to agree.
    #[arg(long, default_value_t = 8)]
    statements: u32,
    /// Journal scenario: simulated seconds between signing requests.
    #[arg(long, default_value_t = 5)]
    sign_every_s: u64,
    /// Consensus scenario: the last device is faulty and votes at the fast ballot for
    /// every instance it is offered; honest devices must prove it and never be accused.
    #[arg(long)]
    byzantine: bool,
    /// Consensus scenario: the last device pairs but stays out of the authority; the
    /// first device proposes adding it, and it must end up a member holding a share.
    #[arg(long, conflicts_with = "byzantine")]
    add_device: bool,
    /// Consensus scenario: one founding device (the last, or the one before it with
    /// --add-device) is lost for good at a seed-chosen moment 2 to 20 s after the
    /// authority exists; the others must remove it and refresh their shares.
    #[arg(long)]
    lose_one: bool,
    /// Context scenario: each person's first device asks for a new context epoch early
    /// on, and every device sends 40 messages (within budget); every device must end on
    /// one decided epoch whose secret is sealed to exactly the context's members.
    #[arg(long)]
    rekey: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Root seed: the whole run follows from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    world: WorldArgs,
    /// Print one line per event.
    #[arg(long)]
    trace: bool,
    /// Write a Chrome/Perfetto trace-event JSON file (open it at ui.perfetto.dev).
    #[arg(long, value_name = "FILE")]
    perfetto: Option<PathBuf>,
    /// Run a hand-written scenario file (TOML) instead of the world flags.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SweepArgs {
    /// Seed range, inclusive: A..B (e.g. 1..500).
    #[arg(long, value_parser = parse_range)]
    seeds: (u64, u64),
    /// Parallel workers (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Fail unless each of these coverage marks was hit at least once across the sweep
    /// (comma-separated, e.g. crash,write-torn,dead-peer).
    #[arg(long, value_delimiter = ',')]
    require_coverage: Vec<String>,
    #[command(flatten)]
    world: WorldArgs,
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

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{s:?} is not a seed range like 1..100");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if b < a {
        return Err(format!("empty seed range {s:?}: the end must not be below the start"));
    }
    Ok((a, b))
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
        ScenarioArg::Context => "context",
        ScenarioArg::Journal => "journal",
        ScenarioArg::Consensus => "consensus",
    }
}

impl WorldArgs {
    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            peers: self.peers as usize,
            link: LinkModel {
                min_delay: Duration::from_millis(self.min_delay_ms),
                mean_extra: Duration::from_millis(self.mean_delay_ms),
                loss: self.loss,
                dup: self.dup,
                reorder: self.reorder,
            },
            max_time: Duration::from_secs(self.max_time_s),
            scenario: match self.scenario {
                ScenarioArg::Pairing => Scenario::Pairing,
                ScenarioArg::Authority => Scenario::Authority,
                ScenarioArg::Context => Scenario::Context,
                ScenarioArg::Journal => Scenario::Journal,
                ScenarioArg::Consensus => Scenario::Consensus,
            },
            statements: self.statements,
            sign_every: Duration::from_secs(self.sign_every_s),
            byzantine: self.byzantine,
            add_device: self.add_device,
            rekey: self.rekey,
            faults: self.faults(),
            persist_latency: self.disk(),
            // Seed-derived, so a replay loses the device at the same moment.
            lose_one_after: self
                .lose_one
                .then(|| Duration::from_millis(2_000 + seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 18_000)),
            ..SimConfig::default()
        }
        .with_swarm(self.swarm)
    }

    fn disk(&self) -> (Duration, Duration) {
        let lo = if self.disk_ms.0 == 0 {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(self.disk_ms.0)
        };
        (lo, Duration::from_millis(self.disk_ms.1).max(lo))
    }

    fn faults(&self) -> Faults {
        let f = Faults {
            crash_every: self.crash_every_s.map(Duration::from_secs),
            partition_every: self.partition_every_s.map(Duration::from_secs),
            clog_every: self.clog_every_s.map(Duration::from_secs),
            lazy_timers: self.lazy_timers,
            max_skew: Duration::from_millis(self.skew_ms),
            safety_for: Duration::from_secs(self.safety_s),
            liveness_within: Duration::from_secs(self.liveness_s),
            ..Faults::default()
        };
        if f.any() {
            f
        } else {
            Faults {
                lazy_timers: self.lazy_timers,
                ..Faults::default()
            }
        }
    }

    /// The flags that reproduce this world (for replay commands).
    fn flags(&self) -> String {
        format!(
            "--peers {} --scenario {} --loss {} --dup {} --reorder {} --min-delay-ms {} --mean-delay-ms {} --max-time-s {}",
            self.peers,
            scenario_name(self.scenario),
            self.loss as f64 / 1e6,
            self.dup as f64 / 1e6,
            self.reorder as f64 / 1e6,
            self.min_delay_ms,
            self.mean_delay_ms,
            self.max_time_s
        ) + &self.fault_flags()
    }

    fn fault_flags(&self) -> String {
        let mut f = String::new();
        if self.swarm {
            f.push_str(" --swarm");
        }
        if self.byzantine {
            f.push_str(" --byzantine");
        }
        if self.add_device {
            f.push_str(" --add-device");
        }
        if self.lose_one {
            f.push_str(" --lose-one");
        }
        if self.rekey {
            f.push_str(" --rekey");
        }
        if let Some(n) = self.crash_every_s {
            f.push_str(&format!(" --crash-every-s {n}"));
        }
        if let Some(n) = self.partition_every_s {
            f.push_str(&format!(" --partition-every-s {n}"));
        }
        if let Some(n) = self.clog_every_s {
            f.push_str(&format!(" --clog-every-s {n}"));
        }
        if self.lazy_timers {
            f.push_str(" --lazy-timers");
        }
        if self.skew_ms > 0 {
            f.push_str(&format!(" --skew-ms {}", self.skew_ms));
        }
        if self.faults().any() || self.swarm {
            f.push_str(&format!(
                " --safety-s {} --liveness-s {}",
                self.safety_s, self.liveness_s
            ));
        }
        if matches!(self.scenario, ScenarioArg::Journal | ScenarioArg::Consensus) {
            f.push_str(&format!(
                " --statements {} --sign-every-s {}",
                self.statements, self.sign_every_s
            ));
        }
        if self.disk_ms != (0, 3) {
            f.push_str(&format!(" --disk-ms {}..{}", self.disk_ms.0, self.disk_ms.1));
        }
        f
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Sweep(a) => sweep(a),
    }
}

/// Outcome of one seed.
enum Outcome {
    Ok,
    Violation(Violation),
    Unfinished,
}

fn run_world(w: &mut World) -> Outcome {
    match w.run() {
        Err(v) => Outcome::Violation(v),
        Ok(()) if !w.done() => Outcome::Unfinished,
        Ok(()) => Outcome::Ok,
    }
}

fn run(a: RunArgs) -> ExitCode {
    let wa = &a.world;
    let (cfg, replay) = match &a.file {
        None => {
            println!(
                "aura-sim run: seed={} scenario={} peers={} loss={} dup={} reorder={} delay={}ms+exp({}ms)",
                a.seed,
                scenario_name(wa.scenario),
                wa.peers,
                pct(wa.loss),
                pct(wa.dup),
                pct(wa.reorder),
                wa.min_delay_ms,
                wa.mean_delay_ms
            );
            (
                wa.config(a.seed),
                format!("aura-sim run --seed {} {} --trace", a.seed, wa.flags()),
            )
        }
        Some(path) => {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| ScenarioFile::parse(&t).map_err(|e| format!("{}: {e}", path.display())))
                .and_then(|f| f.config().map_err(|e| format!("{}: {e}", path.display())));
            match parsed {
                Ok(c) => {
                    println!(
                        "aura-sim run: scenario file {} ({} scripted actions)",
                        path.display(),
                        c.script.len()
                    );
                    (c, format!("aura-sim run --file {} --trace", path.display()))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let (peers, max_time_s) = (cfg.peers, cfg.max_time.as_secs());
    let mut w = World::new(cfg);
    let perfetto = match &a.perfetto {
        Some(p) => match PerfettoWriter::create(p) {
            Ok(pw) => Some(Rc::new(RefCell::new(Some(pw)))),
            Err(e) => {
                eprintln!("error: cannot create {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if a.trace || perfetto.is_some() {
        let trace = a.trace;
        let pf = perfetto.clone();
        w.set_trace(move |e| {
            if trace {
                println!("{}", e.line);
            }
            if let Some(pf) = &pf {
                if let Some(pw) = pf.borrow_mut().as_mut() {
                    let _ = pw.event(e);
                }
            }
        });
    }
    // Wall time for the report only; it never enters the simulated run.
    let started = std::time::Instant::now();
    let outcome = run_world(&mut w);
    let wall = started.elapsed();
    if let (Some(pf), Some(path)) = (perfetto, &a.perfetto) {
        if let Some(pw) = pf.borrow_mut().take() {
            match pw.finish() {
                Ok(()) => println!("perfetto trace written to {}", path.display()),
                Err(e) => eprintln!("error: writing {}: {e}", path.display()),
            }
        }
    }
    let s = &w.stats;
    let joiners = peers as u64 - 1;
    println!(
        "pairings: {}/{joiners} complete{}",
        s.pairings,
        s.all_paired_at.map(|t| format!(" at {}", secs(t))).unwrap_or_default()
    );
    println!("pings answered: {}  messages delivered: {}", s.pongs, s.messages);
    if s.authority_members > 0 || s.signatures > 0 {
        println!(
            "authority: {} devices created it; {} crashed; threshold signatures: {} (all verified)",
            s.authority_members, s.crashes, s.signatures
        );
    }
    if let Some(t) = s.converged_at {
        println!(
            "journals: identical across connected live members at {} ({} pairs compared)",
            secs(t),
            s.journals_compared
        );
    }
    println!(
        "faults: lost {} (in bursts {}) duplicated {} reordered {} partitioned {} clogged {} | crashes {} restarts {} partitions {} clogs {} | writes landed-unacked {} torn {}",
        s.lost, s.burst_losses, s.duplicated, s.reordered, s.partitioned, s.clogged, s.crashes, s.restarts, s.partitions, s.clogs, s.writes_landed_unacked, s.writes_lost
    );
    println!("datagrams: sent {} delivered {}", s.sent, s.delivered);
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
    let cov: Vec<String> = s.coverage.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "coverage: {}",
        if cov.is_empty() { "none".into() } else { cov.join(" ") }
    );
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
    let code = match outcome {
        Outcome::Violation(v) => {
            println!(
                "FAILED invariant {} at event {} (t={}): {}",
                v.invariant,
                v.event_index,
                secs(v.time_ns),
                v.detail
            );
            println!("last events:");
            for l in &v.last_lines {
                println!("  {l}");
            }
            println!("replay: {replay}");
            ExitCode::from(1)
        }
        Outcome::Unfinished => {
            println!("FAILED liveness: workload not finished within {max_time_s} s simulated");
            println!("replay: {replay}");
            ExitCode::from(1)
        }
        Outcome::Ok => {
            println!("result: ok");
            ExitCode::SUCCESS
        }
    };
    println!("trace-hash: {}", w.trace_hash());
    code
}

fn sweep(a: SweepArgs) -> ExitCode {
    let (first, last) = a.seeds;
    let total = last - first + 1;
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    println!(
        "aura-sim sweep: seeds {first}..{last} ({total}) scenario={} peers={} jobs={jobs}",
        scenario_name(a.world.scenario),
        a.world.peers
    );
    let next = Arc::new(AtomicU64::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    type Done = (u64, Outcome, u64, u64, std::collections::BTreeMap<String, u64>);
    let (tx, rx) = mpsc::channel::<Done>();
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for _ in 0..jobs {
        let (next, stop, tx, world) = (next.clone(), stop.clone(), tx.clone(), a.world.clone());
        handles.push(std::thread::spawn(move || loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let seed = next.fetch_add(1, Ordering::Relaxed);
            if seed > last {
                break;
            }
            let mut w = World::new(world.config(seed));
            let outcome = run_world(&mut w);
            if !matches!(outcome, Outcome::Ok) {
                stop.store(true, Ordering::Relaxed);
            }
            let cov = std::mem::take(&mut w.stats.coverage);
            if tx.send((seed, outcome, w.stats.events, w.now_ns(), cov)).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let tty = std::io::stderr().is_terminal();
    let (mut done, mut events, mut sim_ns) = (0u64, 0u64, 0u64);
    let mut failures: Vec<(u64, Outcome)> = Vec::new();
    let mut last_pct = 0;
    let mut coverage: std::collections::BTreeMap<String, u64> = Default::default();
    for (seed, outcome, ev, ns, cov) in rx {
        for (k, v) in cov {
            *coverage.entry(k).or_default() += v;
        }
        done += 1;
        events += ev;
        sim_ns += ns;
        if !matches!(outcome, Outcome::Ok) {
            failures.push((seed, outcome));
        }
        let pct = done * 100 / total;
        if tty {
            let width = 30;
            let filled = (done * width / total) as usize;
            eprint!(
                "\r[{}{}] {done}/{total} seeds, {} failed",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                failures.len()
            );
            let _ = std::io::stderr().flush();
        } else if pct >= last_pct + 10 || done == total {
            last_pct = pct;
            eprintln!("progress: {done}/{total} seeds ({pct}%), {} failed", failures.len());
        }
    }
    if tty {
        eprintln!();
    }
    for h in handles {
        let _ = h.join();
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "seeds run: {done}  events: {events} ({:.0} events/s)  simulated: {}",
        events as f64 / wall,
        secs(sim_ns)
    );
    let cov: Vec<String> = coverage.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "coverage: {}",
        if cov.is_empty() { "none".into() } else { cov.join(" ") }
    );
    failures.sort_by_key(|(s, _)| *s);
    let missing: Vec<&String> = a
        .require_coverage
        .iter()
        .filter(|m| !coverage.contains_key(*m))
        .collect();
    match failures.first() {
        None if !missing.is_empty() => {
            println!("FAILED coverage: never hit {missing:?}; the sweep did not exercise what it must");
            ExitCode::from(1)
        }
        None => {
            println!("result: all {done} seeds ok");
            ExitCode::SUCCESS
        }
        Some((seed, outcome)) => {
            match outcome {
                Outcome::Violation(v) => println!(
                    "FAILED seed {seed}: invariant {} at event {} (t={}): {}",
                    v.invariant,
                    v.event_index,
                    secs(v.time_ns),
                    v.detail
                ),
                Outcome::Unfinished => println!("FAILED seed {seed}: workload unfinished (liveness)"),
                Outcome::Ok => unreachable!("only failures are kept"),
            }
            println!("replay: aura-sim run --seed {seed} {} --trace", a.world.flags());
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_prob, parse_range};

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

    #[test]
    fn ranges() {
        assert_eq!(parse_range("1..10"), Ok((1, 10)));
        assert_eq!(parse_range("5..5"), Ok((5, 5)));
        assert!(parse_range("10..1").is_err());
        assert!(parse_range("1-10").is_err());
    }
}
