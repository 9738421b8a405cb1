//! # aura-sim: a seeded discrete-event simulator for Aura peers
//!
//! The simulator drives real [`aura_proto::Peer`]s through the same three calls any host
//! uses (`handle_input`, `poll_output`, `poll_timeout`). Time is virtual: an event heap
//! ordered by `(time, sequence)` jumps the clock to the next event. Every random choice
//! (link delay, loss, duplication, reordering, storage latency, peer seeds) comes from one
//! root seed split into independent streams, so a seed replays a run bit for bit; the
//! trace hash (BLAKE3 over one line per event) proves it.
//!
//! No floating point touches the schedule: delays use integer arithmetic only, so the
//! same seed gives the same hash on any machine.

#![forbid(unsafe_code)]

pub mod perfetto;
pub mod scenario;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use aura_proto::rng::PeerRng;
use aura_proto::wire::{self, Packet, MAX_DATAGRAM};
use aura_proto::{
    Command, Config, DeviceId, DeviceSecret, DownReason, DropReason, Durable, Event, Input, Invitation, Now, Output,
    Peer, Record, Ticket,
};
use bytes::Bytes;

/// Wall-clock origin of simulated devices (2026-09-21), so expiry math looks realistic.
pub const UNIX_BASE_MS: u64 = 1_790_000_000_000;

/// Parts per million.
pub type Ppm = u32;

/// How one direction of a link behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkModel {
    /// Fixed part of the one-way delay.
    pub min_delay: Duration,
    /// Mean of the exponential part of the delay.
    pub mean_extra: Duration,
    /// Probability a datagram is lost.
    pub loss: Ppm,
    /// Probability a datagram is delivered twice.
    pub dup: Ppm,
    /// Probability a datagram is held back (delivered after later ones).
    pub reorder: Ppm,
}

impl Default for LinkModel {
    fn default() -> LinkModel {
        LinkModel {
            min_delay: Duration::from_millis(5),
            mean_extra: Duration::from_millis(10),
            loss: 0,
            dup: 0,
            reorder: 0,
        }
    }
}

/// Which workload runs on top of pairing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Device 0 invites every other device; each pairs, pings and receives a message.
    Pairing,
    /// Pairing, then all devices form an (n-1)-of-n authority by distributed key
    /// generation; the last device crashes and device 1 has the authority sign.
    Authority,
    /// Pairing, then nothing but keepalives until the time limit (a null workload for
    /// measuring the simulator itself; it never counts as done).
    Keepalive,
    /// Two people: devices `0..n/2` pair with device 0 and `n/2..n` with device `n/2`,
    /// and each half forms an authority. Device 0 invites device `n/2` into a relational
    /// context, which both share with their other devices; every device then sends
    /// context messages to the other person's leader every 250 ms until the flow budget
    /// the other authority granted ([`CONTEXT_BUDGET`] units) is spent and the guard
    /// chain refuses. Needs at least 4 devices.
    Context,
    /// Pairing and an (n-1)-of-n authority as in `Authority`, then the authority signs a
    /// statement every [`SimConfig::sign_every`] until [`SimConfig::statements`] are
    /// signed: a steady stream of journal facts for anti-entropy to carry to devices that
    /// were away (crashed, partitioned, one-way cut) when they were made.
    Journal,
    /// Pairing and a 2-of-n authority, then tree changes (setting the threshold it has)
    /// agreed by consensus until the authority's tree epoch reaches
    /// [`SimConfig::statements`]: whenever the authority moved on (or ten seconds
    /// passed), a random live member proposes the next change, a third of the time two
    /// at once (competing for one prestate's votes), so crashed proposers and split votes
    /// leave work to fallback ballots. A device lost for good (a scripted `lose`) is
    /// removed by the rest before anything else, and must be gone when the run ends.
    Consensus,
}

/// Flow budget each authority grants the other in the context scenario (1 unit per
/// small message; a reservation covers 64 units, so a run crosses several).
pub const CONTEXT_BUDGET: u64 = 160;
/// Interval between context messages in the context scenario.
const CONTEXT_EVERY_NS: u64 = 250_000_000;
/// Context scenario with rekeys: messages each device sends.
const REKEY_SENDS: u64 = 40;

/// Faults injected during the safety phase. All off by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Mean time between device crashes.
    pub crash_every: Option<Duration>,
    /// How long a crashed device stays down before it restarts from its durable records.
    pub down_for: (Duration, Duration),
    /// Mean time between partitions (isolate one device, split in two, or one-way).
    pub partition_every: Option<Duration>,
    /// How long a partition lasts.
    pub partition_for: (Duration, Duration),
    /// Per-device clock offsets (monotone and wall) up to this much.
    pub max_skew: Duration,
    /// Bursty loss per directed link (Gilbert model): chance to enter a burst per datagram,
    /// and chance to stay in it; every datagram inside a burst is lost.
    pub burst: Option<(Ppm, Ppm)>,
    /// Mean time between clogs: one device's network interface stops moving datagrams
    /// for a while; what it sends or should receive meanwhile is held, not lost, and
    /// arrives in a rush when the clog clears.
    pub clog_every: Option<Duration>,
    /// How long a clog lasts.
    pub clog_for: (Duration, Duration),
    /// Hosts move a device's timer only earlier, as aura-smol does: when the deadline
    /// moves later the timer stays where it was, so the peer is woken before anything is
    /// due (and must do nothing). A host model rather than a fault: on for the whole run.
    pub lazy_timers: bool,
    /// Length of the safety phase. Afterwards every partition heals, every crashed device
    /// restarts, the link turns clean, and the workload must finish within `liveness_within`.
    pub safety_for: Duration,
    /// Bound for the liveness phase.
    pub liveness_within: Duration,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            crash_every: None,
            down_for: (Duration::from_secs(1), Duration::from_secs(10)),
            partition_every: None,
            partition_for: (Duration::from_secs(1), Duration::from_secs(20)),
            max_skew: Duration::ZERO,
            burst: None,
            clog_every: None,
            clog_for: (Duration::from_millis(100), Duration::from_secs(5)),
            lazy_timers: false,
            safety_for: Duration::ZERO,
            liveness_within: Duration::from_secs(300),
        }
    }
}

impl Faults {
    /// Whether any fault is configured.
    pub fn any(&self) -> bool {
        self.crash_every.is_some()
            || self.partition_every.is_some()
            || self.burst.is_some()
            || self.clog_every.is_some()
            || !self.max_skew.is_zero()
    }

    /// Fault rates drawn from a seed (swarm testing: every seed tries a different mix).
    pub fn swarm(seed: u64) -> (Faults, LinkModel) {
        let mut r = stream(seed, "swarm");
        let pick = |r: &mut PeerRng, n: u32| r.next_u32() % n;
        let link = LinkModel {
            min_delay: Duration::from_millis(1 + pick(&mut r, 20) as u64),
            mean_extra: Duration::from_millis(pick(&mut r, 40) as u64),
            loss: pick(&mut r, 300_000),
            dup: pick(&mut r, 50_000),
            reorder: pick(&mut r, 200_000),
        };
        let mut faults = Faults {
            crash_every: (pick(&mut r, 3) > 0).then(|| Duration::from_secs(5 + pick(&mut r, 40) as u64)),
            partition_every: (pick(&mut r, 3) > 0).then(|| Duration::from_secs(5 + pick(&mut r, 40) as u64)),
            max_skew: Duration::from_millis(pick(&mut r, 120_000) as u64),
            burst: (pick(&mut r, 2) > 0).then(|| (pick(&mut r, 20_000), 500_000 + pick(&mut r, 400_000))),
            safety_for: Duration::from_secs(30 + pick(&mut r, 90) as u64),
            ..Faults::default()
        };
        // Drawn last so that adding it kept every earlier draw of a seed unchanged.
        faults.clog_every = (pick(&mut r, 2) > 0).then(|| Duration::from_secs(3 + pick(&mut r, 30) as u64));
        faults.lazy_timers = pick(&mut r, 2) > 0;
        (faults, link)
    }
}

/// A scripted control action (scenario files, the simulator fuzz target).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Crash a device (writes in flight land or are torn, by seed).
    Crash {
        /// Device index.
        node: usize,
    },
    /// Restart a crashed device from its durable records.
    Restart {
        /// Device index.
        node: usize,
    },
    /// Cut every link from group `a` to group `b` (and back unless `one_way`).
    Partition {
        /// One side.
        a: Vec<usize>,
        /// The other side.
        b: Vec<usize>,
        /// Cut only a → b.
        #[serde(default)]
        one_way: bool,
    },
    /// Heal every partition.
    Heal,
    /// Freeze a device for a while: nothing reaches it, its timers wait, then it resumes
    /// where it was (a laptop lid closed, a stalled process).
    Pause {
        /// Device index.
        node: usize,
        /// For how long, ms.
        for_ms: u64,
    },
    /// Lose a device for good (stolen, broken): it crashes and never comes back.
    Lose {
        /// Device index.
        node: usize,
    },
    /// Clog a device's network interface: datagrams from and to it are held (not lost)
    /// and delivered after the clog clears.
    Clog {
        /// Device index.
        node: usize,
        /// For how long, ms.
        for_ms: u64,
    },
    /// Change the link model from now on (unset fields keep their value).
    SetLink {
        /// Loss probability in parts per million.
        loss_ppm: Option<Ppm>,
        /// Duplication probability in parts per million.
        dup_ppm: Option<Ppm>,
        /// Reordering probability in parts per million.
        reorder_ppm: Option<Ppm>,
        /// Minimum delay, ms.
        min_delay_ms: Option<u64>,
    },
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Scripted actions: (simulated time, action).
    pub script: Vec<(Duration, Action)>,
    /// Faults of the safety phase.
    pub faults: Faults,
    /// The workload.
    pub scenario: Scenario,
    /// Root seed.
    pub seed: u64,
    /// Number of devices (device 0 invites all the others).
    pub peers: usize,
    /// Link behaviour (every directed link the same for now).
    pub link: LinkModel,
    /// Storage write latency range.
    pub persist_latency: (Duration, Duration),
    /// Give up after this much simulated time.
    pub max_time: Duration,
    /// Peer configuration.
    pub peer_config: Config,
    /// Journal scenario: statements to sign.
    pub statements: u32,
    /// Journal scenario: interval between signing requests.
    pub sign_every: Duration,
    /// The last device is a faulty consensus witness: it votes at the fast ballot for
    /// every instance it is offered (`aura_proto::fuzzing::equivocate`).
    pub byzantine: bool,
    /// Consensus scenario: the last device pairs but is left out of the authority; the
    /// first device (which paired with it) proposes adding it once the authority exists,
    /// and the run is done only when it holds its share (unless the first device was
    /// lost before the change applied).
    pub add_device: bool,
    /// Consensus scenario: this long after the authority exists, one founding device
    /// (the last; the one before it with `add_device`) is lost for good.
    pub lose_one_after: Option<Duration>,
    /// Context scenario: each person's first device asks its authority for a new
    /// context epoch after its second message (again while its authority has decided
    /// none), and every device sends a fixed number of messages instead of running its
    /// budget dry; a run is done only when all devices agree on a decided epoch and its
    /// secret, sealed to exactly the context's members.
    pub rekey: bool,
}

impl SimConfig {
    /// In swarm mode the seed also draws the link model and the fault mix.
    pub fn with_swarm(mut self, swarm: bool) -> SimConfig {
        if swarm {
            let (faults, link) = Faults::swarm(self.seed);
            self.faults = Faults {
                liveness_within: self.faults.liveness_within,
                ..faults
            };
            self.link = link;
        }
        self
    }
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            peers: 3,
            link: LinkModel::default(),
            persist_latency: (Duration::from_micros(200), Duration::from_millis(3)),
            max_time: Duration::from_secs(600),
            peer_config: Config::default(),
            scenario: Scenario::Pairing,
            faults: Faults::default(),
            script: Vec::new(),
            statements: 8,
            sign_every: Duration::from_secs(5),
            byzantine: false,
            add_device: false,
            lose_one_after: None,
            rekey: false,
        }
    }
}

/// A broken invariant: the run stops at the first one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// Index of the event that broke it.
    pub event_index: u64,
    /// Simulated time, ns.
    pub time_ns: u64,
    /// What was seen.
    pub detail: String,
    /// The last trace lines before the failure, oldest first (the failing event's own
    /// line, as far as it got, last).
    pub last_lines: Vec<String>,
}

/// Totals for the final report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Egress records checked (one per datagram the peers sent).
    pub egress: u64,
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams delivered (duplicates included).
    pub delivered: u64,
    /// Datagrams lost by the link model.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams held back for reordering.
    pub reordered: u64,
    /// Records made durable.
    pub persisted: u64,
    /// Invariant evaluations.
    pub checks: u64,
    /// Pairings completed (counted on the joiner).
    pub pairings: u64,
    /// Pings answered.
    pub pongs: u64,
    /// Application messages delivered.
    pub messages: u64,
    /// Devices that reported the new authority.
    pub authority_members: u64,
    /// Threshold signatures completed (each verified with plain FROST verification).
    pub signatures: u64,
    /// Devices crashed.
    pub crashes: u64,
    /// Devices restarted from their durable records.
    pub restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Datagrams dropped by a partition.
    pub partitioned: u64,
    /// Datagrams lost inside a loss burst.
    pub burst_losses: u64,
    /// Clogs started.
    pub clogs: u64,
    /// Datagrams held back by a clog.
    pub clogged: u64,
    /// Writes that landed on disk but whose acknowledgement a crash swallowed.
    pub writes_landed_unacked: u64,
    /// Writes torn away by a crash.
    pub writes_lost: u64,
    /// Handshake messages retransmitted (summed over peers at the end).
    pub handshake_retransmits: u64,
    /// How often each rare path ran ("coverage marks"): faults, retries, drop reasons.
    pub coverage: BTreeMap<String, u64>,
    /// Simulated time of the last pairing, ns.
    pub all_paired_at: Option<u64>,
    /// Drops by reason, summed over all peers.
    pub drops: BTreeMap<&'static str, u64>,
    /// Simulated time at which every namespace's connected members held identical
    /// journals after the workload finished, ns.
    pub converged_at: Option<u64>,
    /// Pairs of devices whose journals of a namespace were found identical.
    pub journals_compared: u64,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        gen: u64,
    },
    /// A write lands (unless a crash voided it: then it is no longer in flight).
    PersistDone {
        node: usize,
        write: u64,
    },
    Command {
        node: usize,
        cmd: Command,
    },
    Tick {
        node: usize,
    },
    /// A context-scenario leader sends its next context message.
    CtxTick {
        node: usize,
    },
    /// Consensus scenario: time to propose changes.
    ConsensusTick,
    /// Journal scenario: time to ask for the next signed statement.
    SignTick,
    Fault(Fault),
}

#[derive(Debug)]
enum Fault {
    Scripted(Action),
    Crash,
    Restart(usize),
    Partition,
    Heal(Vec<(usize, usize)>),
    Clog,
    SafetyEnd,
}

struct Node {
    peer: Peer,
    secret: DeviceSecret,
    /// Records whose write landed.
    durable: Vec<Record>,
    timer_gen: u64,
    timer_at: Option<u64>,
    /// Joiner: code it was handed and whether pairing finished.
    code: Option<String>,
    paired_with_0: bool,
    pong: bool,
    got_message: bool,
    crashed: bool,
    authority: Option<([u8; 32], [u8; 32])>,
    shares: usize,
    /// Reported a share with its authority.
    has_share: bool,
    /// Clock offsets of this device (monotone ns, wall ms).
    mono_off: u64,
    unix_off: i64,
    /// Devices this device announced as paired (must survive any crash).
    promised: std::collections::BTreeSet<DeviceId>,
    /// Frozen until this time.
    paused_until: Option<u64>,
    /// Writes issued and not yet landed, by issue order.
    in_flight: BTreeMap<u64, (Ticket, Record)>,
    /// Gone for good.
    lost: bool,
    /// Consensus votes whose record landed: (prestate, ballot) → instance.
    votes: BTreeMap<([u8; 32], u32), aura_proto::consensus::ConsensusId>,
    /// Durable flow reservations by (context, peer, epoch), from landed `Reserve` records.
    reserved: BTreeMap<(aura_proto::journal::ContextId, DeviceId, u64), u64>,
    /// Send numbers the guard chain refused in this incarnation.
    denied: std::collections::BTreeSet<u64>,
    /// The egress record announcing the next `Transmit`.
    egress: Option<aura_proto::guard::Egress>,
}

/// A queued event, ordered by time and then by the order it was scheduled in (ties
/// resolve the same way on every run).
#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Scheduled) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Scheduled) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Scheduled) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// One processed event, as handed to a trace sink.
#[derive(Debug)]
pub struct TraceEvent<'a> {
    /// Simulated time, ns.
    pub time_ns: u64,
    /// The device the event happened on.
    pub node: usize,
    /// The compact trace line (what the trace hash covers).
    pub line: &'a str,
}

/// Receives each processed event.
type TraceSink = Box<dyn FnMut(&TraceEvent<'_>)>;

/// One simulated world.
pub struct World {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<Scheduled>>,
    /// Issue order of writes (keys of `Node::in_flight`).
    next_write: u64,
    nodes: Vec<Node>,
    net: PeerRng,
    store: PeerRng,
    hasher: blake3::Hasher,
    /// Trace bytes not yet hashed. BLAKE3's result does not depend on how the input is
    /// split, and hashing 16 KiB at once lets it use its wide SIMD path: about a third of
    /// the cost of hashing each line as it comes.
    unhashed: Vec<u8>,
    trace: Option<TraceSink>,
    /// Stats so far.
    pub stats: Stats,
    ids: Vec<DeviceId>,
    line: String,
    pending_violation: Option<Violation>,
    faults: PeerRng,
    incarnations: PeerRng,
    /// Directed links cut by a partition.
    blocked: std::collections::BTreeSet<(usize, usize)>,
    /// Links inside a loss burst.
    bursting: BTreeMap<(usize, usize), bool>,
    /// Devices whose interface is clogged, and until when (ns).
    clogged_until: BTreeMap<usize, u64>,
    /// Safety phase running.
    faults_on: bool,
    /// Counters of incarnations that crashed.
    retired_drops: BTreeMap<&'static str, u64>,
    retired_retx: u64,
    /// Scripted actions not yet run.
    script_pending: usize,
    /// The signer was asked to sign.
    sign_asked: bool,
    /// The device that asks for the signature (1 unless it holds no share).
    signer: usize,
    /// Device addresses, by index (cloned per delivery instead of formatted).
    addrs: Vec<String>,
    /// Context scenario: the code device 0 handed to device n/2.
    ctx_code: Option<String>,
    /// Context scenario: leaders that announced the context ready.
    ctx_ready: std::collections::BTreeSet<usize>,
    /// Context scenario: context messages each leader received, by leader.
    ctx_received: BTreeMap<(usize, DeviceId), u64>,
    /// Context scenario: leaders whose sends the guard refused for budget.
    ctx_exhausted: std::collections::BTreeSet<usize>,
    /// Context scenario: next message number per leader.
    ctx_seq: BTreeMap<usize, u64>,
    /// Context scenario: highest context epoch each device reached.
    ctx_epoch: BTreeMap<usize, u64>,
    /// Context scenario with `rekey`: when each leader last asked for a new epoch.
    rekey_asked: BTreeMap<usize, u64>,
    /// The last trace lines, for failure reports.
    recent: std::collections::VecDeque<String>,
    /// Journal scenario: statements asked for so far, and when the one in flight was.
    statements_asked: u32,
    sign_pending: Option<u64>,
    /// When the workload first counted as done (the settle period starts).
    settle_from: Option<u64>,
    /// Next time the journals are compared during the settle period.
    next_converge_check: u64,
    /// Workload choices (which devices propose).
    workload: PeerRng,
    /// Consensus scenario: epoch and time of the last proposals.
    proposed: Option<(u64, u64)>,
}

/// How long anti-entropy may take, after the workload is done, to make journals agree
/// (three periodic sync rounds).
pub const SETTLE: Duration = Duration::from_secs(95);
/// Interval between journal comparisons during the settle period.
const CONVERGE_CHECK_NS: u64 = 500_000_000;

/// Trace bytes hashed at once.
const HASH_BATCH: usize = 16 * 1024;

/// How many trace lines a failure report carries.
const RECENT_LINES: usize = 16;

fn stream(seed: u64, label: &str) -> PeerRng {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_le_bytes());
    PeerRng::from_seed(blake3::keyed_hash(&k, label.as_bytes()).into())
}

/// Appends `v` in decimal, left-padded with `pad` to `width`. The per-event trace line is
/// hot (every event is formatted and hashed); this is several times cheaper than
/// `core::fmt` and writes the same text.
fn push_num(s: &mut String, mut v: u64, width: usize, pad: char) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in (buf.len() - i)..width {
        s.push(pad);
    }
    s.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("?"));
}

fn addr(i: usize) -> String {
    format!("sim:{i}")
}

fn node_of(a: &str) -> Option<usize> {
    a.strip_prefix("sim:")?.parse().ok()
}

/// `true` with probability `p` parts per million.
fn chance(rng: &mut PeerRng, p: Ppm) -> bool {
    p > 0 && (rng.next_u32() % 1_000_000) < p
}

/// An exponential sample with the given mean, in integer arithmetic only:
/// `-ln(U)` is computed from the position of U's leading one bit plus a linear
/// interpolation of the mantissa (error under 9%, identical on every machine).
pub fn exp_sample(rng: &mut PeerRng, mean_ns: u64) -> u64 {
    if mean_ns == 0 {
        return 0;
    }
    let u = rng.next_u64() | 1;
    let lz = u.leading_zeros() as u128;
    let frac = ((u << (lz as u32)) << 1 >> 32) as u128; // 32-bit mantissa fraction
    let neg_log2_q32 = (lz + 1) * (1u128 << 32) - frac; // -log2(U) in Q32
                                                        // ln 2 in Q32 = 2977044472
    let neg_ln_q32 = (neg_log2_q32 * 2_977_044_472) >> 32;
    ((neg_ln_q32 * mean_ns as u128) >> 32).min(u64::MAX as u128 / 2) as u64
}

fn uniform(rng: &mut PeerRng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        lo + rng.next_u64() % (hi - lo + 1)
    }
}

fn short(id: &DeviceId) -> String {
    id.short()[..6].to_string()
}

impl World {
    /// Builds the world: `peers` devices with secrets and seeds drawn from the root seed.
    pub fn new(mut cfg: SimConfig) -> World {
        if cfg.scenario == Scenario::Context {
            assert!(cfg.peers >= 4, "the context scenario needs at least 4 devices");
            cfg.peer_config.context_flow_limit = CONTEXT_BUDGET;
        }
        let mut devices = stream(cfg.seed, "devices");
        let mut nodes = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..cfg.peers {
            let secret = DeviceSecret::from_bytes(devices.bytes32());
            let peer = Peer::new(
                cfg.peer_config.clone(),
                secret.clone(),
                devices.bytes32(),
                Self::now_of(0),
            );
            ids.push(peer.id());
            let mut peer = peer;
            if cfg.byzantine && nodes.len() + 1 == cfg.peers {
                aura_proto::fuzzing::equivocate(&mut peer, true);
            }
            nodes.push(Node {
                peer,
                secret,
                durable: Vec::new(),
                timer_gen: 0,
                timer_at: None,
                code: None,
                paired_with_0: false,
                pong: false,
                got_message: false,
                crashed: false,
                authority: None,
                shares: 0,
                has_share: false,
                mono_off: 0,
                unix_off: 0,
                promised: Default::default(),
                paused_until: None,
                in_flight: BTreeMap::new(),
                lost: false,
                votes: BTreeMap::new(),
                reserved: BTreeMap::new(),
                denied: Default::default(),
                egress: None,
            });
        }
        let mut w = World {
            faults: stream(cfg.seed, "faults"),
            incarnations: stream(cfg.seed, "incarnations"),
            blocked: Default::default(),
            bursting: Default::default(),
            clogged_until: Default::default(),
            faults_on: cfg.faults.any(),
            retired_drops: BTreeMap::new(),
            retired_retx: 0,
            script_pending: 0,
            sign_asked: false,
            signer: 1,
            ctx_code: None,
            ctx_ready: Default::default(),
            ctx_received: BTreeMap::new(),
            ctx_exhausted: Default::default(),
            ctx_seq: BTreeMap::new(),
            ctx_epoch: BTreeMap::new(),
            rekey_asked: BTreeMap::new(),
            recent: std::collections::VecDeque::with_capacity(RECENT_LINES),
            statements_asked: 0,
            sign_pending: None,
            settle_from: None,
            next_converge_check: 0,
            workload: stream(cfg.seed, "workload"),
            proposed: None,
            addrs: (0..cfg.peers).map(addr).collect(),
            net: stream(cfg.seed, "network"),
            store: stream(cfg.seed, "storage"),
            cfg,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            next_write: 0,
            nodes,
            hasher: blake3::Hasher::new(),
            unhashed: Vec::with_capacity(HASH_BATCH + 4096),
            trace: None,
            stats: Stats::default(),
            ids,
            line: String::new(),
            pending_violation: None,
        };
        if w.faults_on {
            let f = w.cfg.faults.clone();
            let skew = f.max_skew.as_nanos() as u64;
            if skew > 0 {
                for i in 0..w.nodes.len() {
                    w.nodes[i].mono_off = uniform(&mut w.faults, 0, skew);
                    let ms = uniform(&mut w.faults, 0, 2 * skew / 1_000_000) as i64 - (skew / 1_000_000) as i64;
                    w.nodes[i].unix_off = ms;
                }
            }
            if let Some(e) = f.crash_every {
                let t = exp_sample(&mut w.faults, e.as_nanos() as u64);
                w.schedule(t, Ev::Fault(Fault::Crash));
            }
            if let Some(e) = f.partition_every {
                let t = exp_sample(&mut w.faults, e.as_nanos() as u64);
                w.schedule(t, Ev::Fault(Fault::Partition));
            }
            if let Some(e) = f.clog_every {
                let t = exp_sample(&mut w.faults, e.as_nanos() as u64);
                w.schedule(t, Ev::Fault(Fault::Clog));
            }
            w.schedule(f.safety_for.as_nanos() as u64, Ev::Fault(Fault::SafetyEnd));
        }
        for (at, a) in w.cfg.script.clone() {
            w.script_pending += 1;
            w.schedule(at.as_nanos() as u64, Ev::Fault(Fault::Scripted(a)));
        }
        // Each leader (device 0; in the context scenario also device n/2) invites the
        // devices of its half.
        for j in 0..w.cfg.peers {
            let l = w.leader(j);
            if l == j {
                continue;
            }
            let cmd = Command::CreateInvite {
                valid_for: Duration::from_secs(3600),
                addr_hint: addr(l),
            };
            w.schedule(0, Ev::Command { node: l, cmd });
        }
        w
    }

    /// The device `i` pairs with: device 0, or in the context scenario the first device
    /// of `i`'s half.
    fn leader(&self, i: usize) -> usize {
        let h = self.nodes.len() / 2;
        if self.cfg.scenario == Scenario::Context && i >= h {
            h
        } else {
            0
        }
    }

    fn is_leader(&self, i: usize) -> bool {
        self.leader(i) == i
    }

    /// Calls `f` with every trace line as it is produced.
    pub fn set_trace(&mut self, f: impl FnMut(&TraceEvent<'_>) + 'static) {
        self.trace = Some(Box::new(f));
    }

    fn now_of(ns: u64) -> Now {
        Now::from_parts(ns, UNIX_BASE_MS + ns / 1_000_000)
    }

    /// The time device `i` sees (its clock may be offset).
    fn now_at(&self, i: usize, ns: u64) -> Now {
        let n = &self.nodes[i];
        let unix = (UNIX_BASE_MS + ns / 1_000_000) as i64 + n.unix_off;
        Now::from_parts(ns + n.mono_off, unix.max(0) as u64)
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        let s = self.seq;
        self.seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq: s, ev }));
    }

    /// Runs until the workload completes, the time limit passes, or an invariant breaks.
    pub fn run(&mut self) -> Result<(), Violation> {
        let limit = u64::try_from(self.cfg.max_time.as_nanos()).unwrap_or(u64::MAX);
        while let Some(Reverse(Scheduled { at: t, ev, .. })) = self.heap.pop() {
            if t > limit {
                break;
            }
            if t < self.now {
                return Err(self.violation("monotone-time", format!("event at {t} before now {}", self.now)));
            }
            self.now = t;
            self.step(ev)?;
            if self.done() && self.settled()? {
                break;
            }
        }
        self.collect_drops();
        if self.done() && self.stats.converged_at.is_none() {
            // The time limit cut the settle period short: the journals never agreed.
            if let Some(d) = self.divergence() {
                return Err(self.violation("journals-converge", d));
            }
        }
        Ok(())
    }

    /// After the workload is done, anti-entropy gets [`SETTLE`] of simulated time to
    /// bring every connected live device of a namespace to the same journal; the run
    /// ends as soon as they agree and fails if they do not by then.
    fn settled(&mut self) -> Result<bool, Violation> {
        let from = *self.settle_from.get_or_insert(self.now);
        if self.now < self.next_converge_check {
            return Ok(false);
        }
        if let Some(d) = self.two_commits() {
            if !self.cfg.byzantine {
                return Err(self.violation("one-commit-per-prestate", d));
            }
            // Votes and promises are not enough against a member that breaks the rules
            // (it can hide a vote in a promise): with one, a conflict is recorded, not a
            // violation (see spec/consensus.md).
            self.mark("byzantine-conflict");
            if !self.line.contains("byzantine conflict") {
                use std::fmt::Write;
                let _ = write!(self.line, "byzantine conflict: {d}");
            }
        }
        self.next_converge_check = self.now + CONVERGE_CHECK_NS;
        match self.divergence() {
            None => {
                self.stats.converged_at = Some(self.now);
                if self.now > from {
                    self.mark("converged-after-settle");
                }
                Ok(true)
            }
            Some(d) if self.now >= from + SETTLE.as_nanos() as u64 => Err(self.violation("journals-converge", d)),
            Some(_) => Ok(false),
        }
    }

    /// Two commits from one prestate for different instances: with honest devices
    /// (every simulated one is) that cannot happen.
    fn two_commits(&self) -> Option<String> {
        use aura_proto::journal::{FactBody, Namespace};
        let mut by_prestate: BTreeMap<[u8; 32], Vec<aura_proto::consensus::Commit>> = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| !n.lost) {
            let Some(ns) = n
                .peer
                .journal()
                .namespaces()
                .find(|ns| matches!(ns, Namespace::Authority(_)))
                .copied()
            else {
                continue;
            };
            for f in n.peer.journal().facts(&ns) {
                if let FactBody::Commit(c) = &f.body {
                    let seen = by_prestate.entry(c.prestate).or_default();
                    if !seen.iter().any(|x| x.id == c.id) {
                        seen.push(c.clone());
                    }
                }
            }
        }
        let commits = by_prestate.values().find(|c| c.len() > 1)?;
        let (a, b) = (&commits[0], &commits[1]);
        let who = aura_proto::consensus::equivocation_between(a, b)
            .map(|e| format!("; {} voted for both", short(&e.first.voter)))
            .unwrap_or_default();
        Some(format!(
            "two commits from one prestate, at ballots {} and {}{who}",
            a.ballot(),
            b.ballot()
        ))
    }

    /// The first namespace whose connected live members hold different journals, as a
    /// report; `None` when all agree. Members are those the namespace's own reduced view
    /// lists (an authority's devices, a context's devices): a member that holds nothing
    /// of a namespace it belongs to disagrees with one that holds its facts.
    fn divergence(&mut self) -> Option<String> {
        use aura_proto::journal::Namespace;
        let live = |w: &World, i: usize| !w.nodes[i].crashed && !w.nodes[i].lost;
        let index: BTreeMap<DeviceId, usize> = self.ids.iter().enumerate().map(|(i, d)| (*d, i)).collect();
        let mut groups: BTreeMap<Namespace, std::collections::BTreeSet<usize>> = BTreeMap::new();
        for i in (0..self.nodes.len()).filter(|i| live(self, *i)) {
            let p = &self.nodes[i].peer;
            if let Some(v) = p.authority() {
                let g = groups.entry(Namespace::Authority(v.id)).or_default();
                g.extend(v.members.keys().filter_map(|d| index.get(d)));
            }
            for c in p.contexts() {
                if let Some(v) = p.context(&c) {
                    let g = groups.entry(Namespace::Context(c)).or_default();
                    g.extend(v.members.keys().filter_map(|d| index.get(d)));
                }
            }
        }
        for (ns, group) in groups {
            let members: Vec<usize> = group.into_iter().filter(|i| live(self, *i)).collect();
            // Compare within groups that can reach each other both ways.
            for (k, &a) in members.iter().enumerate() {
                for &b in &members[k + 1..] {
                    if self.blocked.contains(&(a, b)) || self.blocked.contains(&(b, a)) {
                        continue;
                    }
                    self.stats.checks += 1;
                    let (ja, jb) = (self.nodes[a].peer.journal(), self.nodes[b].peer.journal());
                    if ja.digest(&ns) != jb.digest(&ns) {
                        return Some(format!(
                            "{ns:?}: n{a} holds {} facts, n{b} holds {} (digests differ)",
                            ja.len(&ns),
                            jb.len(&ns)
                        ));
                    }
                    self.stats.journals_compared += 1;
                }
            }
        }
        None
    }

    /// True when every joiner is paired, has a pong and has received a message.
    pub fn done(&self) -> bool {
        if self.faults_on || self.script_pending > 0 {
            return false; // the safety phase runs its full length
        }
        if self.cfg.scenario == Scenario::Authority {
            return self.stats.signatures > 0;
        }
        if self.cfg.scenario == Scenario::Journal {
            return self.stats.signatures >= self.cfg.statements as u64;
        }
        if self.cfg.scenario == Scenario::Consensus {
            // Every live member applied the agreed changes, among them the removal of
            // every device lost for good.
            let lost: Vec<DeviceId> = self.nodes.iter().filter(|n| n.lost).map(|n| n.peer.id()).collect();
            // A spare whose inviter was lost before adding it can never join.
            let stranded = self.spare().filter(|s| {
                let l = self.leader(*s);
                self.nodes[l].lost
                    && self.nodes.iter().all(|n| {
                        n.peer
                            .authority()
                            .is_none_or(|v| !v.members.contains_key(&self.ids[*s]))
                    })
            });
            return self
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, n)| !n.lost && !n.crashed && Some(*j) != stranded)
                .all(|(_, n)| {
                    n.peer.authority().is_some_and(|v| {
                        // After a removal the others refreshed: no verifying share of a
                        // removed identifier is left.
                        let refreshed = v.verifying_shares.keys().all(|i| v.member_by_identifier(*i).is_some());
                        v.epoch >= self.cfg.statements as u64
                            && lost.iter().all(|d| !v.members.contains_key(d))
                            && refreshed
                    })
                });
        }
        if self.cfg.scenario == Scenario::Keepalive {
            return false;
        }
        if self.cfg.scenario == Scenario::Context {
            // Every device learned the context (the two leaders by the invitation, the
            // others from their own devices), sent until it ran into the budget the other
            // authority granted, and both leaders received messages.
            let h = self.nodes.len() / 2;
            let got = |l: usize| {
                self.ctx_received
                    .range((l, DeviceId([0; 32]))..)
                    .any(|((r, _), n)| *r == l && *n > 0)
            };
            let live: Vec<usize> = (0..self.nodes.len()).filter(|j| !self.nodes[*j].lost).collect();
            // With rekeys: every device is on one decided epoch with one secret, sealed
            // to exactly the context's members.
            let rekeyed = !self.cfg.rekey || {
                let seen: Vec<Option<(u64, Option<[u8; 32]>)>> = live
                    .iter()
                    .map(|j| {
                        let p = &self.nodes[*j].peer;
                        let v = p.contexts().first().and_then(|c| p.context(c))?;
                        let exact = v.sealed_to.iter().eq(v.members.keys());
                        (v.epoch >= 1 && exact).then(|| (v.epoch, v.decided.as_ref().map(|d| d.commitment)))
                    })
                    .collect();
                seen.iter().all(|x| x.is_some() && *x == seen[0])
            };
            let sent = |j: &usize| self.ctx_exhausted.contains(j) || (self.cfg.rekey && self.ctx_rekey_sent(*j));
            return live.iter().all(sent) && got(0) && got(h) && rekeyed;
        }
        // Devices lost for good are excused; everyone else must have made it.
        self.nodes
            .iter()
            .skip(1)
            .filter(|n| !n.lost)
            .all(|n| n.paired_with_0 && n.pong && n.got_message)
    }

    /// Simulated time now, ns.
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> String {
        let mut h = self.hasher.clone();
        h.update(&self.unhashed);
        h.finalize().to_hex().to_string()
    }

    fn violation(&self, invariant: &'static str, detail: String) -> Violation {
        let mut last_lines: Vec<String> = self.recent.iter().cloned().collect();
        last_lines.push(self.line.clone());
        Violation {
            invariant,
            event_index: self.stats.events,
            time_ns: self.now,
            detail,
            last_lines,
        }
    }

    fn collect_drops(&mut self) {
        self.stats.drops = self.retired_drops.clone();
        self.stats.handshake_retransmits = self.retired_retx;
        for n in &self.nodes {
            for r in DropReason::ALL {
                let c = n.peer.metrics().drops(r);
                if c > 0 {
                    *self.stats.drops.entry(r.name()).or_default() += c;
                }
            }
            self.stats.handshake_retransmits += n.peer.metrics().handshake_retransmits;
            for (why, c) in &n.peer.metrics().fact_rejects {
                *self.stats.coverage.entry(format!("fact-rejected:{why}")).or_default() += c;
            }
            if n.peer.metrics().consensus_fallbacks > 0 {
                *self.stats.coverage.entry("consensus-fallback".into()).or_default() +=
                    n.peer.metrics().consensus_fallbacks;
            }
            let m = n.peer.metrics();
            for (mark, c) in [
                ("commit-warm", m.commits_warm),
                ("commit-cold", m.commits_cold),
                ("commit-session", m.commits_session),
                ("hidden-vote-proven", m.hidden_votes),
            ] {
                if c > 0 {
                    *self.stats.coverage.entry(mark.into()).or_default() += c;
                }
            }
            if n.peer.metrics().dkg_partial > 0 {
                *self.stats.coverage.entry("dkg-partial".into()).or_default() += n.peer.metrics().dkg_partial;
            }
        }
        for (k, v) in self.stats.drops.clone() {
            self.stats.coverage.insert(format!("drop:{k}"), v);
        }
        if self.stats.journals_compared > 0 {
            // Proves the convergence invariant compared something in a sweep.
            self.stats
                .coverage
                .insert("journals-compared".into(), self.stats.journals_compared);
        }
        if self.stats.handshake_retransmits > 0 {
            self.stats
                .coverage
                .insert("handshake-retransmit".into(), self.stats.handshake_retransmits);
        }
    }

    /// Counts one run of a rare path.
    fn mark(&mut self, name: &str) {
        *self.stats.coverage.entry(name.to_owned()).or_default() += 1;
    }

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        if let Ev::Timer { node, gen } = &ev {
            if self.nodes[*node].timer_gen != *gen {
                return Ok(()); // superseded: neither an event nor part of the trace
            }
        }
        if let Ev::PersistDone { node, write } = &ev {
            if !self.nodes[*node].in_flight.contains_key(write) {
                return Ok(()); // a write a crash voided: not an event
            }
        }
        self.stats.events += 1;
        self.line.clear();
        use std::fmt::Write;
        push_num(&mut self.line, self.now / 1_000_000_000, 10, ' ');
        self.line.push('.');
        push_num(&mut self.line, self.now % 1_000_000_000 / 1000, 6, '0');
        self.line.push(' ');
        if let Ev::Fault(f) = ev {
            self.fault(f)?;
            self.emit_line(0);
            return Ok(());
        }
        let target = match &ev {
            Ev::Fault(_) => unreachable!("handled above"),
            Ev::Deliver { to, .. } => *to,
            Ev::Timer { node, .. }
            | Ev::PersistDone { node, .. }
            | Ev::Tick { node }
            | Ev::CtxTick { node }
            | Ev::Command { node, .. } => *node,
            Ev::SignTick => {
                self.sign_tick();
                self.emit_line(0);
                return Ok(());
            }
            Ev::ConsensusTick => {
                self.consensus_tick();
                self.emit_line(0);
                return Ok(());
            }
        };
        if let Some(until) = self.nodes[target].paused_until {
            if self.now < until {
                // Frozen: the event waits until the device resumes.
                let _ = write!(self.line, "n{target} paused");
                self.emit_line(target);
                self.schedule(until, ev);
                return Ok(());
            }
            self.nodes[target].paused_until = None;
        }
        if self.nodes[target].crashed {
            // Datagrams to a crashed device vanish; its unacknowledged writes are lost.
            let _ = write!(self.line, "n{target} down");
            self.emit_line(target);
            return Ok(());
        }
        let now = self.now_at(target, self.now);
        let node = match ev {
            Ev::Fault(_) | Ev::SignTick | Ev::ConsensusTick => unreachable!("handled above"),
            Ev::Deliver { to, from, bytes } => {
                self.stats.delivered += 1;
                let l = &mut self.line;
                l.push('n');
                push_num(l, to as u64, 0, ' ');
                l.push_str(" rx n");
                push_num(l, from as u64, 0, ' ');
                l.push(' ');
                push_num(l, bytes.len() as u64, 0, ' ');
                l.push('B');
                let _ = self.nodes[to].peer.handle_input(
                    now,
                    Input::Datagram {
                        from: self.addrs[from].clone(),
                        bytes,
                    },
                );
                to
            }
            Ev::Timer { node, gen } => {
                if self.nodes[node].timer_gen != gen {
                    return Ok(()); // superseded; not part of the trace
                }
                self.nodes[node].timer_at = None;
                self.line.push('n');
                push_num(&mut self.line, node as u64, 0, ' ');
                self.line.push_str(" timeout");
                let early = self.nodes[node]
                    .peer
                    .poll_timeout()
                    .is_none_or(|t| t.as_nanos() > now.mono.as_nanos());
                let _ = self.nodes[node].peer.handle_input(now, Input::Timeout);
                if early {
                    // Invariant: waking a peer before any deadline does nothing.
                    self.stats.checks += 1;
                    self.mark("early-timeout");
                    if let Some(o) = self.nodes[node].peer.poll_output() {
                        return Err(self.violation(
                            "early-timeout-silent",
                            format!("n{node} acted on a timeout before any deadline: {o:?}"),
                        ));
                    }
                }
                // Invariant: a timeout moves the peer's deadline forward. A deadline that
                // stays in the past would spin the host forever.
                self.stats.checks += 1;
                if let Some(t) = self.nodes[node].peer.poll_timeout() {
                    if t.as_nanos() <= now.mono.as_nanos() {
                        let channels = self.nodes[node].peer.channels();
                        return Err(self.violation(
                            "timer-progress",
                            format!(
                                "n{node} still wants a timeout at {} after handling it; channels: {channels:?}",
                                t.as_nanos()
                            ),
                        ));
                    }
                }
                node
            }
            Ev::PersistDone { node, write } => {
                let (ticket, record) = self.nodes[node].in_flight.remove(&write).expect("checked above");
                self.stats.persisted += 1;
                let _ = write!(self.line, "n{node} persisted #{}", ticket.0);
                if matches!(record, Record::Share { .. }) {
                    self.nodes[node].shares += 1;
                    if self.nodes[node].shares > 1 {
                        return Err(
                            self.violation("one-share-per-device", format!("n{node} persisted a second live share"))
                        );
                    }
                }
                if matches!(record, Record::ShareAbandoned { .. }) {
                    // A key generation given up before its genesis: that share never counted.
                    self.nodes[node].shares = self.nodes[node].shares.saturating_sub(1);
                    self.mark("share-abandoned");
                }
                self.landed(node, record);
                let _ = self.nodes[node].peer.handle_input(now, Input::PersistDone(ticket));
                node
            }
            Ev::Tick { node } => {
                let _ = write!(self.line, "n{node} tick");
                self.tick(node);
                node
            }
            Ev::CtxTick { node } => {
                let _ = write!(self.line, "n{node} ctx-tick");
                self.ctx_tick(node);
                node
            }
            Ev::Command { node, cmd } => {
                let _ = write!(self.line, "n{node} cmd {}", cmd_name(&cmd));
                if let Err(e) = self.nodes[node].peer.handle_input(now, Input::Command(cmd)) {
                    let _ = write!(self.line, " err={e}");
                }
                node
            }
        };
        self.drain(node)?;
        self.arm_timer(node);
        if let Some(v) = self.pending_violation.take() {
            return Err(v);
        }
        self.emit_line(node);
        Ok(())
    }

    /// Hashes the event's line and hands it to the trace sink.
    fn emit_line(&mut self, node: usize) {
        self.unhashed.extend_from_slice(self.line.as_bytes());
        self.unhashed.push(b'\n');
        if self.unhashed.len() >= HASH_BATCH {
            self.hasher.update(&self.unhashed);
            self.unhashed.clear();
        }
        // Reuse the oldest line's buffer: no allocation per event.
        let mut buf = if self.recent.len() == RECENT_LINES {
            self.recent.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        buf.clear();
        buf.push_str(&self.line);
        self.recent.push_back(buf);
        if let Some(t) = self.trace.as_mut() {
            t(&TraceEvent {
                time_ns: self.now,
                node,
                line: &self.line,
            });
        }
    }

    fn arm_timer(&mut self, i: usize) {
        let off = self.nodes[i].mono_off;
        let want = self.nodes[i]
            .peer
            .poll_timeout()
            .map(|t| t.as_nanos().saturating_sub(off).max(self.now));
        // A lazy host leaves an armed timer alone unless the deadline came earlier.
        let keep = self.cfg.faults.lazy_timers
            && match (self.nodes[i].timer_at, want) {
                (Some(at), Some(w)) => at < w,
                (Some(_), None) => true,
                (None, _) => false,
            };
        if !keep && want != self.nodes[i].timer_at {
            self.nodes[i].timer_gen += 1;
            self.nodes[i].timer_at = want;
            if let Some(t) = want {
                let gen = self.nodes[i].timer_gen;
                self.schedule(t, Ev::Timer { node: i, gen });
            }
        }
    }

    /// A write of node `i` is on disk.
    fn landed(&mut self, i: usize, record: Record) {
        if let Record::Voted { vote, .. } = &record {
            // Invariant: a device votes at most once per ballot from a prestate, across
            // crashes.
            match self.nodes[i].votes.get(&(vote.prestate, vote.ballot)) {
                Some(id) if *id != vote.id => {
                    let v = self.violation(
                        "one-vote-per-ballot",
                        format!(
                            "n{i} voted for two instances at ballot {} from one prestate",
                            vote.ballot
                        ),
                    );
                    self.pending_violation.get_or_insert(v);
                }
                _ => {
                    self.nodes[i].votes.insert((vote.prestate, vote.ballot), vote.id);
                }
            }
            self.mark(if vote.ballot == 0 { "vote" } else { "fallback-vote" });
        }
        if let Record::Promised { .. } = &record {
            self.mark("promise");
        }
        if let Record::Reserve {
            context,
            peer,
            epoch,
            up_to,
        } = &record
        {
            let r = self.nodes[i].reserved.entry((*context, *peer, *epoch)).or_default();
            *r = (*r).max(*up_to);
        }
        self.nodes[i].durable.push(record);
    }

    /// The guard chain's promises about one egress record: a refused send never leaves,
    /// and a charged send leaves only within a durable reservation (charge before send).
    fn check_egress(&mut self, i: usize, e: &aura_proto::guard::Egress) -> Result<(), Violation> {
        let n = &self.nodes[i];
        if n.denied.contains(&e.seq) {
            return Err(self.violation("denied-send-left", format!("n{i} send #{} left after a denial", e.seq)));
        }
        if e.cost > 0 {
            let peer = e.peer.expect("charged sends name their peer");
            let reserved = n.reserved.get(&(e.context, peer, e.epoch)).copied().unwrap_or(0);
            if reserved < e.spent {
                return Err(self.violation(
                    "charge-before-send",
                    format!("n{i} spent {} of a durable reservation of {reserved}", e.spent),
                ));
            }
            self.mark("charged-send");
        }
        Ok(())
    }

    fn drain(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(o) = self.nodes[i].peer.poll_output() {
            match o {
                Output::Egress(e) => {
                    self.check_egress(i, &e)?;
                    self.stats.egress += 1;
                    self.nodes[i].egress = Some(e);
                }
                Output::Transmit { to, bytes } => {
                    if self.nodes[i].egress.take().is_none() {
                        return Err(self.violation(
                            "transmit-through-guard",
                            format!("n{i} transmitted to {to} without an egress record"),
                        ));
                    }
                    self.check_frame(i, &bytes)?;
                    let l = &mut self.line;
                    l.push_str(" | tx ");
                    l.push_str(&to);
                    l.push(' ');
                    push_num(l, bytes.len() as u64, 0, ' ');
                    l.push('B');
                    self.transmit(i, &to, bytes);
                }
                Output::Persist { ticket, record } => {
                    self.line.push_str(" | persist #");
                    push_num(&mut self.line, ticket.0, 0, ' ');
                    let (lo, hi) = self.cfg.persist_latency;
                    let d = uniform(&mut self.store, lo.as_nanos() as u64, hi.as_nanos() as u64);
                    let write = self.next_write;
                    self.next_write += 1;
                    self.nodes[i].in_flight.insert(write, (ticket, record));
                    self.schedule(self.now + d, Ev::PersistDone { node: i, write });
                }
                Output::Event(e) => {
                    self.check_event(i, &e)?;
                    self.on_event(i, e);
                }
            }
        }
        Ok(())
    }

    fn transmit(&mut self, from: usize, to: &str, mut bytes: Vec<u8>) {
        self.stats.sent += 1;
        let Some(to) = node_of(to).filter(|n| *n < self.nodes.len()) else {
            return;
        };
        if self.blocked.contains(&(from, to)) {
            self.stats.partitioned += 1;
            let _ = std::fmt::Write::write_str(&mut self.line, " partitioned");
            return;
        }
        let link = if self.faults_on || !self.cfg.faults.any() {
            self.cfg.link
        } else {
            // Liveness phase: a clean network (delays only).
            LinkModel {
                loss: 0,
                dup: 0,
                reorder: 0,
                ..self.cfg.link
            }
        };
        if let (true, Some((enter, stay))) = (self.faults_on, self.cfg.faults.burst) {
            let in_burst = self.bursting.get(&(from, to)).copied().unwrap_or(false);
            let next = if in_burst {
                chance(&mut self.net, stay)
            } else {
                chance(&mut self.net, enter)
            };
            self.bursting.insert((from, to), next);
            if next {
                self.stats.burst_losses += 1;
                self.mark("burst-loss");
                let _ = std::fmt::Write::write_str(&mut self.line, " lost(burst)");
                return;
            }
        }
        if chance(&mut self.net, link.loss) {
            self.stats.lost += 1;
            let _ = std::fmt::Write::write_str(&mut self.line, " lost");
            return;
        }
        // A clog at either end holds the datagram until the clog clears.
        let clear_at = [from, to]
            .iter()
            .filter_map(|n| self.clogged_until.get(n).copied())
            .filter(|u| *u > self.now)
            .max();
        if clear_at.is_some() {
            self.stats.clogged += 1;
            self.mark("clogged");
            let _ = std::fmt::Write::write_str(&mut self.line, " clogged");
        }
        let depart = clear_at.unwrap_or(self.now);
        let copies = if chance(&mut self.net, link.dup) { 2 } else { 1 };
        for c in 0..copies {
            let mut d = link.min_delay.as_nanos() as u64 + exp_sample(&mut self.net, link.mean_extra.as_nanos() as u64);
            if chance(&mut self.net, link.reorder) {
                self.stats.reordered += 1;
                d += uniform(&mut self.net, 0, 4 * link.mean_extra.as_nanos() as u64 + 1);
            }
            if c == 1 {
                self.stats.duplicated += 1;
            }
            let bytes = if c + 1 == copies {
                std::mem::take(&mut bytes)
            } else {
                bytes.clone()
            };
            self.schedule(depart + d, Ev::Deliver { to, from, bytes });
        }
    }

    /// Invariant: every datagram respects the size limit, and every encrypted frame is
    /// exactly one padding bucket long.
    fn check_frame(&mut self, i: usize, bytes: &[u8]) -> Result<(), Violation> {
        self.stats.checks += 1;
        if bytes.len() > MAX_DATAGRAM {
            return Err(self.violation("frame-size", format!("n{i} sent {} bytes", bytes.len())));
        }
        match wire::decode_packet(bytes, &mut Vec::new()) {
            Ok(Packet::Data { ciphertext, .. }) if !wire::is_bucket_ciphertext(ciphertext.len()) => {
                Err(self.violation("padding", format!("n{i} sent a {} byte frame", ciphertext.len())))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(self.violation("well-formed-output", format!("n{i} sent undecodable bytes: {e:?}"))),
        }
    }

    /// The device left out of the authority to be added later (`SimConfig::add_device`).
    fn spare(&self) -> Option<usize> {
        (self.cfg.add_device && self.cfg.scenario == Scenario::Consensus && self.nodes.len() >= 3)
            .then(|| self.nodes.len() - 1)
    }

    fn create_authority(&mut self) {
        self.create_authority_of(0);
        if self.cfg.scenario == Scenario::Context {
            self.create_authority_of(self.nodes.len() / 2);
        }
    }

    /// Leader `l` asks for an authority of its half ((k-1)-of-k, at least 2).
    fn create_authority_of(&mut self, l: usize) {
        let spare = self.spare();
        let devices: Vec<DeviceId> = (0..self.nodes.len())
            .filter(|j| *j != l && self.leader(*j) == l && Some(*j) != spare)
            .map(|j| self.ids[j])
            .collect();
        // The consensus workload changes the threshold between 2 and 3, which a 2-of-n
        // key can always sign (more signers than the key's threshold are fine).
        let threshold = if self.cfg.scenario == Scenario::Consensus {
            2
        } else {
            (devices.len() as u16).max(2)
        };
        self.schedule(
            self.now + 1_000_000,
            Ev::Command {
                node: l,
                cmd: Command::CreateAuthority { devices, threshold },
            },
        );
    }

    /// Invariants on events: promises rest on durable records; all devices agree on the
    /// authority; every signature verifies with plain FROST verification.
    fn check_event(&mut self, i: usize, e: &Event) -> Result<(), Violation> {
        self.stats.checks += 1;
        match e {
            Event::EquivocationProven { device, .. } => {
                // Invariant: only the faulty device can ever be proven to equivocate.
                let faulty = self.cfg.byzantine && self.nodes.last().is_some_and(|n| n.peer.id() == *device);
                if !faulty {
                    return Err(self.violation(
                        "honest-never-accused",
                        format!("n{i} holds an equivocation proof against {}", short(device)),
                    ));
                }
                self.mark("equivocation-proven");
            }
            Event::ContextReceived { peer, .. } if self.cfg.scenario == Scenario::Context => {
                // Every context message costs one unit of the budget the receiver's
                // authority granted the sender: more arriving from one sender than that
                // means budget was spent twice (say, across a crash).
                // Budgets start again with each epoch: the receiver is at most one epoch
                // ahead of what it accepts, so all epochs up to its own bound the count.
                let got = self.ctx_received.get(&(i, *peer)).copied().unwrap_or(0) + 1;
                let epochs = self.ctx_epoch.get(&i).copied().unwrap_or(0) + 1;
                if got > CONTEXT_BUDGET * epochs {
                    return Err(self.violation(
                        "flow-budget-overspent",
                        format!(
                            "n{i} received {got} context messages from {} on a budget of {CONTEXT_BUDGET}",
                            short(peer)
                        ),
                    ));
                }
            }
            Event::SendDenied {
                seq,
                context,
                peer,
                reason,
            } => {
                // One's own devices are unmetered and always granted: a denial there means
                // a grant went missing (the peer would stop talking to its own devices).
                if *context == aura_proto::journal::ContextId::OWN {
                    return Err(self.violation(
                        "own-devices-never-denied",
                        format!(
                            "n{i} denied send #{seq} to own device {} ({})",
                            short(peer),
                            reason.name()
                        ),
                    ));
                }
                self.nodes[i].denied.insert(*seq);
                self.mark("send-denied");
            }
            Event::AuthorityCreated {
                authority,
                group_key,
                has_share,
                ..
            } => {
                // Devices of one person (one leader) agree on their authority.
                let mine = (authority.0, *group_key);
                let l = self.leader(i);
                if let Some((j, other)) = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| self.leader(*j) == l)
                    .find_map(|(j, n)| n.authority.filter(|a| *a != mine).map(|a| (j, a)))
                {
                    return Err(self.violation(
                        "authority-agreement",
                        format!("n{i} has group key {} but n{j} has {}", hex(&mine.1), hex(&other.1)),
                    ));
                }
                let durable_share = self.nodes[i]
                    .durable
                    .iter()
                    .any(|r| matches!(r, Record::Share { group_key: g, .. } if g == group_key));
                if *has_share && !durable_share {
                    return Err(self.violation(
                        "durable-before-promise",
                        format!("n{i} announced an authority without a durable share"),
                    ));
                }
            }
            Event::Signed {
                message,
                signature,
                group_key,
                ..
            } => {
                let ok = frost_ristretto255::VerifyingKey::deserialize(group_key)
                    .ok()
                    .zip(frost_ristretto255::Signature::deserialize(signature).ok())
                    .is_some_and(|(vk, sig)| vk.verify(message, &sig).is_ok());
                if !ok {
                    return Err(self.violation(
                        "signature-verifies",
                        format!("n{i} produced a signature that does not verify"),
                    ));
                }
            }
            _ => {}
        }
        let durable = &self.nodes[i].durable;
        let ok = match e {
            Event::InviteCreated { code, .. } => {
                let inv = Invitation::from_code(code).map_err(|e| self.violation("invite-code", e.to_string()))?;
                durable
                    .iter()
                    .any(|r| matches!(r, Record::InviteIssued(x) if *x == inv))
            }
            Event::Paired { peer, .. } => durable.iter().any(|r| matches!(r, Record::Paired(p) if p.id == *peer)),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(self.violation(
                "durable-before-promise",
                format!("n{i} emitted {e:?} before its record was durable"),
            ))
        }
    }

    /// The workload: hand codes to joiners, ping and message once paired, retry politely.
    fn on_event(&mut self, i: usize, e: Event) {
        use std::fmt::Write;
        let _ = write!(self.line, " | ev {}", event_name(&e, &self.ids));
        let soon = self.now + 1_000_000;
        if let Event::Paired { peer, .. } = &e {
            // A promise: this pairing must survive any crash from now on.
            self.nodes[i].promised.insert(*peer);
        }
        match &e {
            Event::PairingFailed { .. } => self.mark("pairing-failed"),
            Event::ChannelDown {
                reason: DownReason::Timeout,
                ..
            } => self.mark("dead-peer"),
            Event::ChannelDown {
                reason: DownReason::Idle,
                ..
            } => self.mark("idle-close"),
            Event::ChannelDown {
                reason: DownReason::PeerClosed,
                ..
            } => self.mark("peer-closed"),
            Event::ChannelFailed { .. } => self.mark("link-failed"),
            Event::SignFailed { .. } => self.mark("sign-failed"),
            Event::Committed { instance, .. } => {
                self.mark("committed");
                // Which path agreed it: the fast ballot or a fallback one.
                let ballot = self.nodes[i].peer.authority().and_then(|v| {
                    let ns = aura_proto::journal::Namespace::Authority(v.id);
                    self.nodes[i].peer.journal().facts(&ns).find_map(|f| match &f.body {
                        aura_proto::journal::FactBody::Commit(c) if c.id == *instance => Some(c.ballot()),
                        _ => None,
                    })
                });
                match ballot {
                    Some(0) => self.mark("fast-commit"),
                    Some(_) => self.mark("fallback-commit"),
                    None => {}
                }
            }
            Event::ConsensusFailed { .. } => self.mark("consensus-failed"),
            Event::AuthorityFailed { .. } => self.mark("dkg-failed"),
            Event::DeviceEnrolled { .. } => self.mark("device-enrolled"),
            Event::SharesRefreshed { .. } => self.mark("shares-refreshed"),
            Event::RefreshFailed { .. } => self.mark("refresh-failed"),
            _ => {}
        }
        match e {
            Event::InviteCreated { code, .. } if self.is_leader(i) => {
                if let Some(j) =
                    (0..self.nodes.len()).find(|j| *j != i && self.leader(*j) == i && self.nodes[*j].code.is_none())
                {
                    self.nodes[j].code = Some(code.clone());
                    self.schedule(
                        soon,
                        Ev::Command {
                            node: j,
                            cmd: Command::Join { code },
                        },
                    );
                }
            }
            Event::Paired { peer, .. }
                if !self.is_leader(i) && peer == self.ids[self.leader(i)] && !self.nodes[i].paired_with_0 =>
            {
                self.nodes[i].paired_with_0 = true;
                self.stats.pairings += 1;
                if self.all_paired() {
                    self.stats.all_paired_at = Some(self.now);
                    if matches!(
                        self.cfg.scenario,
                        Scenario::Authority | Scenario::Context | Scenario::Journal | Scenario::Consensus
                    ) {
                        self.create_authority();
                    }
                }
                self.schedule(soon, Ev::Tick { node: i });
            }
            Event::PairingFailed { .. } if !self.is_leader(i) => {
                // The code stays spent on this device; asking again retries the handshake.
                if let Some(code) = self.nodes[i].code.clone() {
                    self.schedule(
                        self.now + 500_000_000,
                        Ev::Command {
                            node: i,
                            cmd: Command::Join { code },
                        },
                    );
                }
            }
            Event::AuthorityJoined {
                authority, group_key, ..
            } => {
                self.mark("authority-joined");
                self.nodes[i].authority = Some((authority.0, group_key));
                self.nodes[i].has_share = true;
            }
            Event::Pong { .. } if !self.is_leader(i) => {
                self.stats.pongs += 1;
                self.nodes[i].pong = true;
            }
            Event::Received { .. } if !self.is_leader(i) => {
                self.stats.messages += 1;
                self.nodes[i].got_message = true;
            }
            Event::AuthorityCreated {
                authority,
                group_key,
                threshold,
                has_share,
                ..
            } => {
                self.nodes[i].authority = Some((authority.0, group_key));
                self.nodes[i].has_share = has_share;
                self.stats.authority_members += 1;
                if self.cfg.scenario == Scenario::Context {
                    if self.nodes.iter().all(|n| n.authority.is_some()) && self.ctx_code.is_none() {
                        self.ask_context_invite();
                    }
                } else if self.cfg.scenario == Scenario::Journal {
                    if self.nodes.iter().all(|n| n.authority.is_some()) && self.statements_asked == 0 {
                        self.schedule(soon, Ev::SignTick);
                    }
                } else if self.cfg.scenario == Scenario::Consensus {
                    let spare = self.spare();
                    let founders_in = (0..self.nodes.len())
                        .filter(|j| Some(*j) != spare)
                        .all(|j| self.nodes[j].authority.is_some());
                    if founders_in && self.proposed.is_none() {
                        if let Some(after) = self.cfg.lose_one_after {
                            let node = self.nodes.len() - if self.cfg.add_device { 2 } else { 1 };
                            self.script_pending += 1;
                            let at = self.now + after.as_nanos() as u64;
                            self.schedule(at, Ev::Fault(Fault::Scripted(Action::Lose { node })));
                        }
                        self.proposed = Some((0, 0));
                        self.schedule(soon, Ev::ConsensusTick);
                    }
                } else if self.nodes.iter().all(|n| n.authority.is_some()) {
                    // Everyone has it: crash the last device if enough shares remain without
                    // it (a member that lost its key generation state in a crash holds none),
                    // then a device with a share asks for a signature.
                    let holders: Vec<usize> = (0..self.nodes.len()).filter(|j| self.nodes[*j].has_share).collect();
                    let last = self.nodes.len() - 1;
                    let left = holders.iter().filter(|j| **j != last).count();
                    if last >= 2 && left >= threshold as usize {
                        self.nodes[last].crashed = true;
                        self.stats.crashes += 1;
                        let _ = write!(self.line, " | crash n{last}");
                    }
                    self.signer = holders
                        .iter()
                        .copied()
                        .filter(|j| !self.nodes[*j].crashed)
                        .min_by_key(|j| (*j != 1, *j))
                        .unwrap_or(1);
                    if self.signer != 1 {
                        self.mark("signer-not-1");
                    }
                    self.sign_asked = true;
                    let statement = format!("signed in simulation seed {}", self.cfg.seed).into_bytes();
                    self.schedule(
                        soon,
                        Ev::Command {
                            node: self.signer,
                            cmd: Command::Sign { statement },
                        },
                    );
                }
            }
            Event::AuthorityFailed { .. } if self.is_leader(i) => self.create_authority_of(i),
            Event::ContextInviteCreated { code, .. } if i == 0 => {
                self.ctx_code = Some(code.clone());
                let h = self.nodes.len() / 2;
                self.schedule(
                    soon,
                    Ev::Command {
                        node: h,
                        cmd: Command::JoinContext { code },
                    },
                );
            }
            Event::ContextJoinFailed { .. } => {
                self.mark("context-join-retry");
                if let Some(code) = self.ctx_code.clone() {
                    self.schedule(
                        self.now + 1_000_000_000,
                        Ev::Command {
                            node: i,
                            cmd: Command::JoinContext { code },
                        },
                    );
                }
            }
            Event::ContextReady { .. } if self.ctx_ready.insert(i) => {
                self.schedule(soon, Ev::CtxTick { node: i });
            }
            Event::ContextEpochChanged { epoch, .. } => {
                let e = self.ctx_epoch.entry(i).or_default();
                *e = (*e).max(epoch);
                self.mark("context-rekeyed");
            }
            Event::ContextReceived { peer, .. } => *self.ctx_received.entry((i, peer)).or_default() += 1,
            Event::SendDenied {
                reason: aura_proto::guard::Denial::BudgetExhausted,
                ..
            } => {
                self.ctx_exhausted.insert(i);
            }
            Event::SignFailed { .. } if self.cfg.scenario == Scenario::Journal => self.sign_pending = None,
            // A commit's signing session gave up: the instance's fallback carries on.
            Event::SignFailed { .. } if self.cfg.scenario == Scenario::Consensus => {}
            Event::SignFailed { .. } => {
                let statement = format!("signed in simulation seed {} (retry)", self.cfg.seed).into_bytes();
                self.schedule(
                    self.now + 1_000_000_000,
                    Ev::Command {
                        node: i,
                        cmd: Command::Sign { statement },
                    },
                );
            }
            Event::Signed { .. } => {
                self.stats.signatures += 1;
                self.sign_pending = None;
            }
            _ => {}
        }
    }

    /// Whether every device but the leaders is paired with its leader.
    fn all_paired(&self) -> bool {
        (0..self.nodes.len())
            .filter(|j| !self.is_leader(*j))
            .all(|j| self.nodes[j].paired_with_0)
    }

    /// Context scenario: device 0's user asks for a context invitation.
    fn ask_context_invite(&mut self) {
        self.schedule(
            self.now + 1_000_000,
            Ev::Command {
                node: 0,
                cmd: Command::CreateContextInvite {
                    valid_for: Duration::from_secs(3600),
                    addr_hint: addr(0),
                },
            },
        );
    }

    /// Context scenario: a device sends its next context message to the other person's
    /// leader, until the guard chain refuses for budget.
    fn ctx_tick(&mut self, i: usize) {
        let rekeying = self.cfg.rekey && self.is_leader(i) && self.rekey_due(i);
        if rekeying && self.ctx_seq.get(&i).copied().unwrap_or(0) >= 2 {
            self.ask_rekey(i);
        }
        // With rekeys a device sends a fixed number of messages, well within one epoch's
        // budget: anti-entropy across the context (which carries the epoch changes, and
        // is paid from the same budget) keeps room, so journals can be required to
        // converge. Without, it sends until the guard refuses.
        let sent_enough = self.cfg.rekey && self.ctx_rekey_sent(i);
        if self.ctx_exhausted.contains(&i) || sent_enough {
            if rekeying {
                self.schedule(self.now + CONTEXT_EVERY_NS, Ev::CtxTick { node: i });
            }
            return;
        }
        let h = self.nodes.len() / 2;
        let other = if i < h { h } else { 0 };
        let ctx = self.nodes[i].peer.contexts().first().copied();
        if let Some(context) = ctx {
            let seq = self.ctx_seq.entry(i).or_default();
            *seq += 1;
            let data = Bytes::from(format!("n{i} context message {seq}").into_bytes());
            let cmd = Command::ContextSend {
                context,
                peer: self.ids[other],
                data,
            };
            let now = self.now_at(i, self.now);
            if let Err(e) = self.nodes[i].peer.handle_input(now, Input::Command(cmd)) {
                let _ = std::fmt::Write::write_fmt(&mut self.line, format_args!(" err={e}"));
            }
        }
        self.schedule(self.now + CONTEXT_EVERY_NS, Ev::CtxTick { node: i });
    }

    /// Context scenario with `rekey`: device `i` sent its messages, and the other
    /// person's leader got at least one of them (the first ones may all have been lost
    /// to a partition).
    fn ctx_rekey_sent(&self, i: usize) -> bool {
        let h = self.nodes.len() / 2;
        let other = if i < h { h } else { 0 };
        self.ctx_seq.get(&i).copied().unwrap_or(0) >= REKEY_SENDS
            && self.ctx_received.get(&(other, self.ids[i])).is_some_and(|n| *n > 0)
    }

    /// Context scenario with `rekey`: whether leader `i`'s authority has decided no
    /// epoch of the context yet (as `i` sees it).
    fn rekey_due(&self, i: usize) -> bool {
        let p = &self.nodes[i].peer;
        let (Some(a), Some(c)) = (p.authority().map(|v| v.id), p.contexts().first().copied()) else {
            return true;
        };
        p.context(&c).is_none_or(|v| v.lists.get(&a).copied().unwrap_or(0) == 0)
    }

    /// Leader `i`'s user asks for a new context epoch (again after ten seconds without
    /// one: the proposal may have lost to another change, or died in a crash).
    fn ask_rekey(&mut self, i: usize) {
        if self.rekey_asked.get(&i).is_some_and(|t| self.now < t + 10_000_000_000) {
            return;
        }
        let Some(context) = self.nodes[i].peer.contexts().first().copied() else {
            return;
        };
        self.rekey_asked.insert(i, self.now);
        let now = self.now_at(i, self.now);
        match self.nodes[i]
            .peer
            .handle_input(now, Input::Command(Command::RekeyContext { context }))
        {
            Ok(()) => self.mark("rekey-asked"),
            Err(e) => {
                let _ = std::fmt::Write::write_fmt(&mut self.line, format_args!(" rekey-err={e}"));
            }
        }
    }

    /// Consensus scenario: when the authority moved on since the last proposal (or ten
    /// seconds passed), a live member proposes the next threshold change.
    fn consensus_tick(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|j| !self.nodes[*j].crashed && !self.nodes[*j].lost && self.nodes[*j].peer.authority().is_some())
            .collect();
        let epoch = live
            .iter()
            .filter_map(|j| self.nodes[*j].peer.authority().map(|v| v.epoch))
            .max()
            .unwrap_or(0);
        let (last_epoch, last_at) = self.proposed.unwrap_or((0, 0));
        let fresh = epoch > last_epoch || last_at == 0 || self.now >= last_at + 10_000_000_000;
        // A device lost for good that is still a member is removed even after the
        // workload's changes are done.
        let lost_member = live.iter().any(|j| {
            self.nodes[*j].peer.authority().is_some_and(|v| {
                self.nodes
                    .iter()
                    .any(|n| n.lost && v.members.contains_key(&n.peer.id()))
            })
        });
        if (epoch < self.cfg.statements as u64 || lost_member) && fresh && !live.is_empty() {
            self.proposed = Some((epoch, self.now.max(1)));
            // One proposer, or (a third of the time) two at once that compete for the
            // same prestate's votes.
            let mut proposers = vec![live[(self.workload.next_u64() % live.len() as u64) as usize]];
            // While the spare is out, its inviter (if live) proposes adding it.
            if let Some(s) = self.spare() {
                let l = self.leader(s);
                let out = self.nodes[l]
                    .peer
                    .authority()
                    .is_some_and(|v| !v.members.contains_key(&self.ids[s]));
                if out && live.contains(&l) {
                    proposers[0] = l;
                }
            }
            if self.workload.next_u64().is_multiple_of(3) {
                proposers.push(live[(self.workload.next_u64() % live.len() as u64) as usize]);
                proposers.dedup();
            }
            for p in proposers {
                self.propose_threshold(p);
            }
        }
        self.schedule(self.now + 1_000_000_000, Ev::ConsensusTick);
    }

    /// Consensus scenario: device `p` proposes to set the threshold (again).
    fn propose_threshold(&mut self, p: usize) {
        use std::fmt::Write;
        {
            let _ = write!(self.line, "consensus-tick: n{p} proposes; ");
            // A device lost for good that is still a member: the rest remove it.
            let lost = self.nodes[p].peer.authority().and_then(|v| {
                self.nodes
                    .iter()
                    .filter(|n| n.lost)
                    .map(|n| n.peer.id())
                    .find(|d| v.members.contains_key(d))
            });
            if let Some(device) = lost {
                let _ = write!(self.line, "remove {}; ", short(&device));
                let cmd = Command::RemoveDevice { device };
                self.schedule(self.now + 1_000_000, Ev::Command { node: p, cmd });
                return;
            }
            // The spare device, not yet a member: its inviter proposes adding it.
            if let Some(s) = self.spare().filter(|s| p == self.leader(*s) && !self.nodes[*s].lost) {
                let device = self.ids[s];
                if self.nodes[p]
                    .peer
                    .authority()
                    .is_some_and(|v| !v.members.contains_key(&device))
                {
                    let _ = write!(self.line, "add {}; ", short(&device));
                    let cmd = Command::AddDevice { device };
                    self.schedule(self.now + 1_000_000, Ev::Command { node: p, cmd });
                    return;
                }
            }
            if let Some(v) = self.nodes[p].peer.authority() {
                // The same threshold again: a real change of the tree (the epoch moves)
                // that keeps the authority able to sign with the shares it has (raising
                // it above the devices holding shares would need a new key generation).
                let threshold = v.threshold;
                self.schedule(
                    self.now + 1_000_000,
                    Ev::Command {
                        node: p,
                        cmd: Command::ChangeThreshold { threshold },
                    },
                );
            }
        }
    }

    /// Journal scenario: a device holding a share asks for the next statement, unless one
    /// is still in flight (a request that neither finished nor failed within a minute,
    /// say because its coordinator crashed, is given up on).
    fn sign_tick(&mut self) {
        use std::fmt::Write;
        if self.stats.signatures >= self.cfg.statements as u64 {
            let _ = write!(self.line, "sign-tick: all signed");
            return;
        }
        let stale = self.sign_pending.is_some_and(|t| self.now >= t + 60_000_000_000);
        if self.sign_pending.is_none() || stale {
            if stale {
                self.mark("sign-abandoned");
            }
            let signer = (0..self.nodes.len())
                .find(|j| self.nodes[*j].has_share && !self.nodes[*j].crashed && !self.nodes[*j].lost);
            if let Some(j) = signer {
                self.statements_asked += 1;
                self.sign_pending = Some(self.now);
                let statement = format!("statement {} of seed {}", self.statements_asked, self.cfg.seed).into_bytes();
                let _ = write!(self.line, "sign-tick: n{j} signs statement {}", self.statements_asked);
                self.schedule(
                    self.now + 1_000_000,
                    Ev::Command {
                        node: j,
                        cmd: Command::Sign { statement },
                    },
                );
            }
        }
        self.schedule(self.now + self.cfg.sign_every.as_nanos() as u64, Ev::SignTick);
    }

    /// Pings and messages are plain datagrams that may be lost: every second, a paired
    /// joiner pings its leader again and the leader sends again until both got through.
    fn tick(&mut self, i: usize) {
        let n = &self.nodes[i];
        if n.pong && n.got_message && !self.faults_on {
            return;
        }
        let l = self.leader(i);
        let now = self.now_at(i, self.now);
        if !n.pong || self.faults_on {
            let _ = self.nodes[i]
                .peer
                .handle_input(now, Input::Command(Command::Ping { peer: self.ids[l] }));
        }
        if !self.nodes[i].got_message || self.faults_on {
            let data = Bytes::from(format!("welcome n{i}").into_bytes());
            let cmd = Command::Send {
                peer: self.ids[i],
                data,
            };
            if !self.nodes[l].crashed {
                let now0 = self.now_at(l, self.now);
                let _ = self.nodes[l].peer.handle_input(now0, Input::Command(cmd));
                self.drain_and_arm(l);
            }
        }
        self.schedule(self.now + 1_000_000_000, Ev::Tick { node: i });
    }

    /// Injects or ends a fault.
    fn fault(&mut self, f: Fault) -> Result<(), Violation> {
        use std::fmt::Write;
        let n = self.nodes.len();
        let fc = self.cfg.faults.clone();
        match f {
            Fault::Scripted(a) => {
                self.script_pending -= 1;
                let valid = |i: &usize| *i < n;
                match a {
                    Action::Crash { node } if valid(&node) && !self.nodes[node].crashed => {
                        self.crash(node);
                        let _ = write!(self.line, "script crash n{node}");
                    }
                    Action::Pause { node, for_ms } if valid(&node) => {
                        let until = self.now + for_ms.saturating_mul(1_000_000);
                        self.nodes[node].paused_until = Some(until);
                        self.mark("pause");
                        let _ = write!(self.line, "script pause n{node} for {for_ms} ms");
                    }
                    Action::Lose { node } if valid(&node) && !self.nodes[node].lost => {
                        if !self.nodes[node].crashed {
                            self.crash(node);
                        }
                        self.nodes[node].lost = true;
                        self.mark("device-lost");
                        let _ = write!(self.line, "script lose n{node}");
                    }
                    Action::Restart { node } if valid(&node) && self.nodes[node].crashed && !self.nodes[node].lost => {
                        let _ = write!(self.line, "script restart n{node}");
                        self.restart_from_disk(node)?;
                    }
                    Action::Partition { a, b, one_way } => {
                        for x in a.iter().filter(|i| valid(i)) {
                            for y in b.iter().filter(|i| valid(i) && *i != x) {
                                self.blocked.insert((*x, *y));
                                if !one_way {
                                    self.blocked.insert((*y, *x));
                                }
                            }
                        }
                        self.stats.partitions += 1;
                        self.mark("partition");
                        let _ = write!(
                            self.line,
                            "script partition {a:?}{}{b:?}",
                            if one_way { "->" } else { "|" }
                        );
                    }
                    Action::Clog { node, for_ms } if valid(&node) => {
                        self.clog(node, for_ms.saturating_mul(1_000_000));
                        let _ = write!(self.line, "script clog n{node} for {for_ms} ms");
                    }
                    Action::Heal => {
                        self.blocked.clear();
                        let _ = write!(self.line, "script heal");
                    }
                    Action::SetLink {
                        loss_ppm,
                        dup_ppm,
                        reorder_ppm,
                        min_delay_ms,
                    } => {
                        let l = &mut self.cfg.link;
                        l.loss = loss_ppm.unwrap_or(l.loss).min(1_000_000);
                        l.dup = dup_ppm.unwrap_or(l.dup).min(1_000_000);
                        l.reorder = reorder_ppm.unwrap_or(l.reorder).min(1_000_000);
                        if let Some(d) = min_delay_ms {
                            l.min_delay = Duration::from_millis(d);
                        }
                        let _ = write!(self.line, "script set-link {:?}", self.cfg.link);
                    }
                    other => {
                        let _ = write!(self.line, "script {other:?} (not applicable, skipped)");
                    }
                }
                if self.script_pending == 0 {
                    // After the script, connectivity must be shown again.
                    for i in (0..n).filter(|j| !self.is_leader(*j)).collect::<Vec<_>>() {
                        self.nodes[i].pong = false;
                        self.nodes[i].got_message = false;
                        if self.nodes[i].paired_with_0 {
                            self.schedule(self.now + 1_000_000, Ev::Tick { node: i });
                        }
                    }
                }
            }
            Fault::Crash => {
                if !self.faults_on {
                    return Ok(());
                }
                // Never crash the last running device: someone must carry the workload.
                let up: Vec<usize> = (0..n).filter(|i| !self.nodes[*i].crashed).collect();
                if up.len() > 1 {
                    let i = up[uniform(&mut self.faults, 0, up.len() as u64 - 1) as usize];
                    self.crash(i);
                    let _ = write!(self.line, "fault crash n{i}");
                    let down = uniform(
                        &mut self.faults,
                        fc.down_for.0.as_nanos() as u64,
                        fc.down_for.1.as_nanos() as u64,
                    );
                    self.schedule(self.now + down, Ev::Fault(Fault::Restart(i)));
                } else {
                    let _ = write!(self.line, "fault crash skipped");
                }
                if let Some(e) = fc.crash_every {
                    let t = exp_sample(&mut self.faults, e.as_nanos() as u64);
                    self.schedule(self.now + t.max(1), Ev::Fault(Fault::Crash));
                }
            }
            Fault::Restart(i) => {
                if self.nodes[i].crashed && !self.nodes[i].lost {
                    let _ = write!(self.line, "fault restart n{i}");
                    self.restart_from_disk(i)?;
                }
            }
            Fault::Partition => {
                if !self.faults_on {
                    return Ok(());
                }
                let kind = uniform(&mut self.faults, 0, 2);
                let mut cut = Vec::new();
                match kind {
                    0 => {
                        // Isolate one device, both ways.
                        let x = uniform(&mut self.faults, 0, n as u64 - 1) as usize;
                        for j in (0..n).filter(|j| *j != x) {
                            cut.push((x, j));
                            cut.push((j, x));
                        }
                        let _ = write!(self.line, "fault isolate n{x}");
                    }
                    1 => {
                        // Split into two groups.
                        let k = uniform(&mut self.faults, 1, n as u64 - 1) as usize;
                        for a in 0..k {
                            for b in k..n {
                                cut.push((a, b));
                                cut.push((b, a));
                            }
                        }
                        let _ = write!(self.line, "fault split at n{k}");
                    }
                    _ => {
                        // One way only.
                        let a = uniform(&mut self.faults, 0, n as u64 - 1) as usize;
                        let b = (a + 1 + uniform(&mut self.faults, 0, n as u64 - 2) as usize) % n;
                        cut.push((a, b));
                        let _ = write!(self.line, "fault one-way n{a}->n{b}");
                    }
                }
                let fresh: Vec<(usize, usize)> = cut.into_iter().filter(|c| self.blocked.insert(*c)).collect();
                self.stats.partitions += 1;
                self.mark("partition");
                let dur = uniform(
                    &mut self.faults,
                    fc.partition_for.0.as_nanos() as u64,
                    fc.partition_for.1.as_nanos() as u64,
                );
                self.schedule(self.now + dur, Ev::Fault(Fault::Heal(fresh)));
                if let Some(e) = fc.partition_every {
                    let t = exp_sample(&mut self.faults, e.as_nanos() as u64);
                    self.schedule(self.now + t.max(1), Ev::Fault(Fault::Partition));
                }
            }
            Fault::Clog => {
                if !self.faults_on {
                    return Ok(());
                }
                let x = uniform(&mut self.faults, 0, n as u64 - 1) as usize;
                let dur = uniform(
                    &mut self.faults,
                    fc.clog_for.0.as_nanos() as u64,
                    fc.clog_for.1.as_nanos() as u64,
                );
                self.clog(x, dur);
                let _ = write!(self.line, "fault clog n{x} for {} ms", dur / 1_000_000);
                if let Some(e) = fc.clog_every {
                    let t = exp_sample(&mut self.faults, e.as_nanos() as u64);
                    self.schedule(self.now + t.max(1), Ev::Fault(Fault::Clog));
                }
            }
            Fault::Heal(links) => {
                for l in &links {
                    self.blocked.remove(l);
                }
                let _ = write!(self.line, "fault heal {} links", links.len());
            }
            Fault::SafetyEnd => {
                // Liveness phase: heal everything, bring every device back, stop faults.
                self.faults_on = false;
                self.blocked.clear();
                self.bursting.clear();
                self.clogged_until.clear();
                let _ = write!(self.line, "phase liveness");
                for i in 0..n {
                    if self.nodes[i].crashed && !self.nodes[i].lost {
                        self.restart_from_disk(i)?;
                    }
                }
                // Connectivity must be shown again after the faults: fresh pings and messages.
                for i in (0..n).filter(|j| !self.is_leader(*j)).collect::<Vec<_>>() {
                    self.nodes[i].pong = false;
                    self.nodes[i].got_message = false;
                    if self.nodes[i].paired_with_0 {
                        self.schedule(self.now + 1_000_000, Ev::Tick { node: i });
                    }
                }
                let bound = (fc.safety_for + fc.liveness_within).as_nanos() as u64;
                if self.cfg.max_time.as_nanos() as u64 > bound {
                    self.cfg.max_time = Duration::from_nanos(bound);
                }
            }
        }
        Ok(())
    }

    /// Clogs device `i`'s interface for `dur_ns` (extending a clog already in place).
    fn clog(&mut self, i: usize, dur_ns: u64) {
        let until = self.now.saturating_add(dur_ns);
        let e = self.clogged_until.entry(i).or_insert(until);
        *e = (*e).max(until);
        self.stats.clogs += 1;
        self.mark("clog");
    }

    /// A crash: the device stops; each write not yet acknowledged either landed (the
    /// record is on disk, the ack never came) or was torn away, by seed.
    fn crash(&mut self, i: usize) {
        self.nodes[i].crashed = true;
        self.stats.crashes += 1;
        self.mark("crash");
        // Keep the counters of the incarnation that just died.
        let m = self.nodes[i].peer.metrics().clone();
        for r in DropReason::ALL {
            if m.drops(r) > 0 {
                *self.retired_drops.entry(r.name()).or_default() += m.drops(r);
            }
        }
        self.retired_retx += m.handshake_retransmits;
        if m.dkg_partial > 0 {
            *self.stats.coverage.entry("dkg-partial".into()).or_default() += m.dkg_partial;
        }
        // In order of issue, so a torn write also loses everything after it. Their
        // `PersistDone` events stay queued and are skipped when they come due.
        let mut torn = false;
        for (_, (_, record)) in std::mem::take(&mut self.nodes[i].in_flight) {
            torn = torn || chance(&mut self.faults, 500_000);
            if torn {
                self.stats.writes_lost += 1;
                self.mark("write-torn");
            } else {
                self.stats.writes_landed_unacked += 1;
                self.mark("write-landed-unacked");
                // Landed is landed: it counts for the share invariant like any other write.
                match record {
                    Record::Share { .. } => self.nodes[i].shares += 1,
                    Record::ShareAbandoned { .. } => self.nodes[i].shares = self.nodes[i].shares.saturating_sub(1),
                    _ => {}
                }
                self.landed(i, record);
            }
        }
    }

    /// Restarts a crashed device from its durable records with a new incarnation seed,
    /// and checks that nothing it had announced was lost.
    fn restart_from_disk(&mut self, i: usize) -> Result<(), Violation> {
        let seed = self.incarnations.bytes32();
        let now = self.now_at(i, self.now);
        let n = &mut self.nodes[i];
        let durable = Durable {
            secret: n.secret.clone(),
            records: n.durable.clone(),
        };
        n.peer = Peer::restore(self.cfg.peer_config.clone(), durable, seed, now);
        if self.cfg.byzantine && i + 1 == self.cfg.peers {
            aura_proto::fuzzing::equivocate(&mut n.peer, true);
        }
        // Send numbers start again with the new incarnation.
        n.denied.clear();
        n.egress = None;
        n.crashed = false;
        n.timer_gen += 1;
        n.timer_at = None;
        self.stats.restarts += 1;
        self.mark("restart");
        self.stats.checks += 1;
        let paired: std::collections::BTreeSet<DeviceId> = self.nodes[i].peer.paired().map(|(d, _)| *d).collect();
        if let Some(lost) = self.nodes[i].promised.iter().find(|d| !paired.contains(d)) {
            return Err(self.violation(
                "no-lost-promise",
                format!("n{i} announced pairing with {} but lost it in a crash", lost.short()),
            ));
        }
        if let Some((_, gk)) = self.nodes[i].authority {
            if self.nodes[i].peer.authority().map(|v| v.group_key) != Some(gk) {
                return Err(self.violation("no-lost-promise", format!("n{i} lost its authority in a crash")));
            }
        }
        self.drain_and_arm(i);
        // A pairing whose record landed just before the crash (its ack lost) holds: the
        // device never announced it, but its state now says so.
        let l = self.leader(i);
        if i != l && !self.nodes[i].paired_with_0 && self.nodes[i].peer.paired().any(|(d, _)| *d == self.ids[l]) {
            self.nodes[i].paired_with_0 = true;
            self.stats.pairings += 1;
            self.mark("pairing-recovered");
        }
        if i != l && self.nodes[i].paired_with_0 {
            self.schedule(self.now + 1_000_000, Ev::Tick { node: i });
        }
        if i == l {
            self.reinvite(l);
            // The user asked for an authority and the coordinator went down before it
            // formed: the session died with it (it lives in memory), so the user asks again.
            let asks = matches!(
                self.cfg.scenario,
                Scenario::Authority | Scenario::Context | Scenario::Journal | Scenario::Consensus
            );
            if asks && self.all_paired() && self.nodes[l].peer.authority().is_none() {
                self.mark("authority-retry");
                self.create_authority_of(l);
            }
        }
        if self.cfg.scenario == Scenario::Context {
            self.ctx_restarted(i);
        }
        if i == self.signer && self.sign_asked && self.stats.signatures == 0 {
            // The signing session died with the device; the user asks again.
            self.mark("sign-retry");
            let statement = format!("signed in simulation seed {} (after restart)", self.cfg.seed).into_bytes();
            self.schedule(
                self.now + 1_000_000,
                Ev::Command {
                    node: i,
                    cmd: Command::Sign { statement },
                },
            );
        }
        if let (false, Some(code)) = (self.nodes[i].paired_with_0, self.nodes[i].code.clone()) {
            // The user asks to join again (a join typed while the device was down is lost;
            // one already recorded resumes by itself, and asking again is harmless).
            if i != l {
                self.schedule(
                    self.now + 1_000_000,
                    Ev::Command {
                        node: i,
                        cmd: Command::Join { code },
                    },
                );
            }
        }
        Ok(())
    }

    /// The user of leader `l` asks again for codes a crash swallowed before they were shown.
    fn reinvite(&mut self, l: usize) {
        let missing = (0..self.nodes.len())
            .filter(|j| *j != l && self.leader(*j) == l && self.nodes[*j].code.is_none())
            .count();
        for _ in 0..missing {
            let cmd = Command::CreateInvite {
                valid_for: Duration::from_secs(3600),
                addr_hint: addr(l),
            };
            self.schedule(self.now + 1_000_000, Ev::Command { node: l, cmd });
        }
    }

    /// Context scenario, after device `i` restarted: the users pick up where the crash
    /// interrupted them (an invitation never shown, a join typed while down), and a
    /// leader's message loop starts again.
    fn ctx_restarted(&mut self, i: usize) {
        let h = self.nodes.len() / 2;
        let ready_here = !self.nodes[i].peer.contexts().is_empty();
        if i == 0 && self.ctx_code.is_none() && self.nodes.iter().all(|n| n.authority.is_some()) {
            self.ask_context_invite();
        }
        if i == h && !ready_here {
            if let Some(code) = self.ctx_code.clone() {
                self.schedule(
                    self.now + 1_000_000,
                    Ev::Command {
                        node: h,
                        cmd: Command::JoinContext { code },
                    },
                );
            }
        }
        if self.ctx_ready.contains(&i) {
            self.schedule(self.now + 1_000_000, Ev::CtxTick { node: i });
        }
    }

    fn drain_and_arm(&mut self, i: usize) {
        // Drain errors surface on the next step's checks; the workload itself is trusted.
        if let Err(v) = self.drain(i) {
            self.pending_violation.get_or_insert(v);
        }
        self.arm_timer(i);
    }

    /// Crash-restart of device `i` from its durable records (used by tests).
    pub fn restart(&mut self, i: usize, seed: [u8; 32]) {
        let n = &mut self.nodes[i];
        let durable = Durable {
            secret: n.secret.clone(),
            records: n.durable.clone(),
        };
        n.peer = Peer::restore(self.cfg.peer_config.clone(), durable, seed, Self::now_of(self.now));
        if self.cfg.byzantine && i + 1 == self.cfg.peers {
            aura_proto::fuzzing::equivocate(&mut n.peer, true);
        }
        n.denied.clear();
        n.egress = None;
        n.timer_gen += 1;
        n.timer_at = None;
        self.drain_and_arm(i);
    }
}

fn cmd_name(c: &Command) -> &'static str {
    match c {
        Command::CreateInvite { .. } => "invite",
        Command::Join { .. } => "join",
        Command::Send { .. } => "send",
        Command::Ping { .. } => "ping",
        Command::Connect { .. } => "connect",
        Command::Close { .. } => "close",
        Command::CreateAuthority { .. } => "create-authority",
        Command::Sign { .. } => "sign",
        Command::IssueCapability { .. } => "issue-capability",
        Command::CreateContextInvite { .. } => "context-invite",
        Command::JoinContext { .. } => "join-context",
        Command::ContextSend { .. } => "context-send",
        Command::Sync { .. } => "sync",
        Command::Publish { .. } => "publish",
        Command::ChangeThreshold { .. } => "change-threshold",
        Command::RemoveDevice { .. } => "remove-device",
        Command::AddDevice { .. } => "add-device",
        Command::RefreshShares => "refresh-shares",
        Command::RekeyContext { .. } => "rekey-context",
    }
}

fn event_name(e: &Event, ids: &[DeviceId]) -> String {
    let who = |d: &DeviceId| match ids.iter().position(|x| x == d) {
        Some(i) => format!("n{i}"),
        None => short(d),
    };
    match e {
        Event::InviteCreated { .. } => "invite-created".into(),
        Event::Paired { peer, .. } => format!("paired {}", who(peer)),
        Event::PairingFailed { reason, .. } => format!("pairing-failed {reason:?}"),
        Event::ChannelUp { peer, version, .. } => format!("up {} v{version}", who(peer)),
        Event::ChannelFailed { peer, reason, .. } => format!("failed {} {reason:?}", who(peer)),
        Event::ChannelDown { peer, reason } => format!("down {} {reason:?}", who(peer)),
        Event::Received { peer, data } => format!("recv {} {}B", who(peer), data.len()),
        Event::Pong { peer, rtt } => format!("pong {} {}us", who(peer), rtt.as_micros()),
        Event::AuthorityCreated {
            authority,
            threshold,
            members,
            ..
        } => {
            format!("authority {} {threshold}-of-{members}", authority.short())
        }
        Event::AuthorityFailed { reason } => format!("authority-failed {reason}"),
        Event::Signed { signature, .. } => format!("signed {}", hex(&signature[..8])),
        Event::SignFailed { reason, .. } => format!("sign-failed {reason}"),
        Event::CapabilityIssued { token } => format!("capability {}B", token.len()),
        Event::ContextInviteCreated { .. } => "context-invite-created".into(),
        Event::ContextReady { context, epoch, .. } => format!("context-ready {} e{epoch}", context.short()),
        Event::ContextJoinFailed { reason, .. } => format!("context-join-failed {reason}"),
        Event::ContextReceived { context, peer, data } => {
            format!("context-recv {} {} {}B", context.short(), who(peer), data.len())
        }
        Event::SendDenied { seq, peer, reason, .. } => format!("denied #{seq} {} {}", who(peer), reason.name()),
        Event::SyncDone {
            peer, pushed, fetched, ..
        } => format!("synced {} +{pushed}/-{fetched}", who(peer)),
        Event::SyncFailed { peer, phase, .. } => format!("sync-failed {} {phase:?}", who(peer)),
        Event::Propagation { fact, status } => format!("propagation {} {status:?}", fact.short()),
        Event::Delivered { fact, peer } => format!("delivered {} {}", fact.short(), who(peer)),
        Event::Committed { epoch, .. } => format!("committed e{epoch}"),
        Event::ConsensusFailed { reason, .. } => format!("consensus-failed {reason}"),
        Event::EquivocationProven { device, .. } => format!("equivocation-proven {}", short(device)),
        Event::DeviceEnrolled { device, .. } => format!("enrolled {}", who(device)),
        Event::AuthorityJoined { authority, .. } => format!("joined {}", authority.short()),
        Event::SharesRefreshed { .. } => "shares-refreshed".into(),
        Event::RefreshFailed { reason } => format!("refresh-failed {reason}"),
        Event::ContextEpochChanged { context, epoch } => format!("context-epoch {} e{epoch}", context.short()),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_sample_has_roughly_the_right_mean() {
        let mut r = stream(1, "t");
        let n = 20_000u64;
        let sum: u64 = (0..n).map(|_| exp_sample(&mut r, 1_000_000)).sum();
        let mean = sum / n;
        assert!((900_000..1_100_000).contains(&mean), "mean {mean}");
    }

    #[test]
    fn chance_respects_probability() {
        let mut r = stream(2, "t");
        let hits = (0..100_000).filter(|_| chance(&mut r, 100_000)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| chance(&mut r, 0)));
    }
}
