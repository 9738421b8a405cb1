//! The run loop (DESIGN §13): drain outputs, compute the deadline, race socket / control
//! request / timer, feed the input that won, repeat. No protocol state lives here.
//!
//! Two economies keep system calls per datagram near what a plain UDP echo makes (they
//! took the loopback benchmark from 0.45 to 0.65 of raw snow's throughput):
//! - a datagram that wins brings along the few already queued behind it (one drain, one
//!   ledger write, for the lot); few, because a long batch stalls the other end's pipeline;
//! - the timer only ever moves earlier: moving it later, which a channel's idle deadline
//!   does with every datagram, woke the reactor thread each time.
//!
//! (`Async::send_to` already writes straight to the socket unless it would block.)

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_net::unix::{UnixListener, UnixStream};
use async_net::UdpSocket;
use aura_proto::{Command, Config, DeviceId, Event, Input, Invitation};
use serde_json::{json, Value};
use smol::channel::{bounded, Receiver, Sender};
use smol::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use smol::Async;

use crate::control::{
    namespace_name, resolve_context, resolve_context_peer, resolve_member, resolve_peer, AuthorityInfo, ContextInfo,
    Request, Status, WrittenInfo,
};
use crate::host::{Effect, Host};
use crate::store::{Store, StoreError};
use aura_proto::journal::{FactBody, Namespace, TreeOpKind};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Data directory problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cannot bind the UDP socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: io::Error,
    },
    /// Cannot create the control socket.
    #[error("cannot create control socket: {0}")]
    Control(io::Error),
    /// A record could not be made durable: stopping is the only safe answer.
    #[error("cannot write records.log (stopping so nothing unrecorded is promised): {0}")]
    Persist(io::Error),
}

type Reply = Sender<Value>;

enum Wake {
    Datagram(io::Result<(usize, SocketAddr)>),
    Control(Option<(Request, Reply)>),
    Timer,
}

/// How the daemon runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Send every application message from a paired device straight back to it (the
    /// other end of `bench-echo`, and a quick way to see that data flows).
    pub echo: bool,
}

/// A `bench-echo` under way: messages carry their sequence number in their first 8 bytes.
struct BenchRun {
    peer: DeviceId,
    count: u64,
    size: usize,
    window: u64,
    sent: u64,
    lost: u64,
    in_flight: BTreeMap<u64, std::time::Instant>,
    rtts: Vec<Duration>,
    started: std::time::Instant,
    progress: std::time::Instant,
    stalls: u32,
    reply: Reply,
}

/// Datagrams handled in a row before the loop looks at control requests and the timer
/// first once.
const DATAGRAM_RUN: u32 = 64;

/// Datagrams taken from the socket per turn of the loop (all fed before one drain).
const RECV_BATCH: usize = 8;

/// With no echo for this long, whatever is in flight counts as lost.
const BENCH_STALL: Duration = Duration::from_secs(1);
/// Stalls in a row after which the bench gives up (the peer is not echoing).
const BENCH_GIVE_UP: u32 = 5;
/// Largest `bench-echo` asked for: messages, and messages in flight.
const BENCH_MAX_COUNT: u64 = 10_000_000;
const BENCH_MAX_WINDOW: u64 = 1024;

impl BenchRun {
    /// Sends until the window is full (or the core refuses one); how many went.
    fn fill(&mut self, host: &mut Host) -> u64 {
        let first = self.sent;
        while self.sent < self.count && (self.in_flight.len() as u64) < self.window {
            let mut data = vec![0x5a; self.size];
            data[..8].copy_from_slice(&self.sent.to_le_bytes());
            let cmd = Command::Send {
                peer: self.peer,
                data: data.into(),
            };
            if host.input(Input::Command(cmd)).is_err() {
                break;
            }
            self.in_flight.insert(self.sent, std::time::Instant::now());
            self.sent += 1;
        }
        self.sent - first
    }

    fn echoed(&mut self, data: &[u8]) {
        let Some(seq) = data
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        else {
            return;
        };
        if let Some(at) = self.in_flight.remove(&seq) {
            self.rtts.push(at.elapsed());
            self.progress = std::time::Instant::now();
            self.stalls = 0;
        }
    }

    fn stalled(&mut self) {
        if self.progress.elapsed() >= BENCH_STALL {
            self.lost += self.in_flight.len() as u64;
            self.in_flight.clear();
            self.stalls += 1;
            self.progress = std::time::Instant::now();
        }
    }

    /// Done: everything sent came back or was counted lost; or the peer is unreachable
    /// (a run of stalls with nothing echoed), or nobody waits for the answer any more.
    fn finished(&self) -> bool {
        (self.sent == self.count && self.in_flight.is_empty()) || self.stalls >= BENCH_GIVE_UP || self.reply.is_closed()
    }

    fn report(mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.rtts.sort();
        let pct = |p: usize| {
            self.rtts
                .get((self.rtts.len() * p / 100).min(self.rtts.len().saturating_sub(1)))
                .map_or(0, |d| d.as_micros() as u64)
        };
        let _ = self.reply.try_send(json!({
            "ok": true,
            "messages": self.rtts.len(),
            "lost": self.lost + (self.count - self.sent) + self.in_flight.len() as u64,
            "size": self.size,
            "window": self.window,
            "secs": secs,
            "msgs_per_s": self.rtts.len() as f64 / secs,
            "rtt_p50_us": pct(50),
            "rtt_p99_us": pct(99),
        }));
    }
}

/// Replies waiting for an event.
#[derive(Default)]
struct Waiters {
    invites: VecDeque<Reply>,
    joins: BTreeMap<[u8; 32], Vec<Reply>>,
    pings: BTreeMap<DeviceId, Vec<Reply>>,
    authority: VecDeque<Reply>,
    /// `sign` requests by statement, oldest first (two concurrent requests can finish
    /// in either order, so a signature goes to the request for its statement).
    signs: Vec<(Vec<u8>, Reply)>,
    ctx_invites: VecDeque<Reply>,
    /// Context joins by invitation id, in the order asked.
    ctx_joins: VecDeque<([u8; 32], Reply)>,
    /// `sync` requests: sessions still running, outcomes so far.
    syncs: Vec<SyncWait>,
    /// `note` requests, answered when the note is durable.
    notes: VecDeque<Reply>,
    /// Tree changes asked for, answered when that change applies (another change, an
    /// automatic one or another device's, answers nobody) or when one of ours fails.
    changes: Vec<(TreeOpKind, Reply)>,
    /// Devices being added, answered when the device holds its share.
    adds: BTreeMap<DeviceId, Vec<Reply>>,
    /// Share refreshes asked for, answered when this device switched (or it failed).
    refreshes: Vec<Reply>,
    /// Context rekeys asked for, answered when this device moved to a new epoch.
    rekeys: BTreeMap<aura_proto::journal::ContextId, Vec<Reply>>,
    /// The `bench-echo` under way.
    bench: Option<BenchRun>,
}

struct SyncWait {
    pending: std::collections::BTreeSet<(DeviceId, Namespace)>,
    done: Vec<Value>,
    reply: Reply,
}

impl Waiters {
    /// The oldest `sign` request for `statement`.
    fn take_sign(&mut self, statement: &[u8]) -> Option<Reply> {
        let k = self.signs.iter().position(|(s, _)| s == statement)?;
        Some(self.signs.remove(k).1)
    }

    /// A session ended: record it for every `sync` request waiting on it.
    fn sync_ended(&mut self, peer: DeviceId, ns: Namespace, outcome: Value) {
        for w in &mut self.syncs {
            if w.pending.remove(&(peer, ns)) {
                w.done.push(outcome.clone());
            }
        }
        self.syncs.retain(|w| {
            if w.pending.is_empty() {
                let _ = w.reply.try_send(json!({ "ok": true, "sessions": w.done }));
                false
            } else {
                true
            }
        });
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn err(msg: impl std::fmt::Display) -> Value {
    json!({ "ok": false, "error": msg.to_string() })
}

/// Runs the peer in `dir` until a `stop` request. `listen` overrides the configured address.
pub fn run(dir: &Path, listen: Option<SocketAddr>, cfg: Config, opts: RunOptions) -> Result<(), DaemonError> {
    let mut host = Host::open(dir, cfg)?;
    let listen = listen.unwrap_or(host.store.config.listen);
    smol::block_on(async move {
        let sock = UdpSocket::bind(listen)
            .await
            .map_err(|source| DaemonError::Bind { addr: listen, source })?;
        let local = sock
            .local_addr()
            .map_err(|source| DaemonError::Bind { addr: listen, source })?;
        let ctl_path = Store::control_path(dir);
        // We hold the directory lock, so any socket file left here is stale.
        let _ = std::fs::remove_file(&ctl_path);
        let ctl = UnixListener::bind(&ctl_path).map_err(DaemonError::Control)?;
        std::fs::set_permissions(&ctl_path, std::fs::Permissions::from_mode(0o600)).map_err(DaemonError::Control)?;
        let (req_tx, req_rx) = bounded::<(Request, Reply)>(64);
        smol::spawn(accept_loop(ctl, req_tx)).detach();
        tracing::info!(device = %host.peer.id(), %local, "aura-smol running");
        println!("aura-smol running: device {} listening on {local}", host.peer.id());

        // The reactor-registered socket itself: its non-blocking `get_ref()` lets the loop
        // take every datagram already queued without a trip through the reactor.
        let sock: Arc<Async<std::net::UdpSocket>> = sock.into();
        let res = event_loop(&mut host, &sock, local, &req_rx, &ctl_path, &opts).await;
        let _ = std::fs::remove_file(&ctl_path);
        res
    })
}

async fn event_loop(
    host: &mut Host,
    sock: &Async<std::net::UdpSocket>,
    local: SocketAddr,
    req_rx: &Receiver<(Request, Reply)>,
    ctl_path: &Path,
    opts: &RunOptions,
) -> Result<(), DaemonError> {
    let mut buf = vec![0u8; aura_proto::wire::MAX_DATAGRAM + 1];
    let mut effects = Vec::new();
    let mut waiters = Waiters::default();
    let mut echoes = Vec::new();
    let mut datagram_run = 0u32;
    let mut timer = smol::Timer::never();
    let mut armed: Option<std::time::Instant> = None;
    // Paired devices may still hold a channel to this device's previous run (after a
    // crash they do not know it is gone): a fresh handshake replaces it at once, where
    // otherwise their sends would vanish until their idle timeout.
    let paired: Vec<DeviceId> = host.peer.paired().map(|(id, _)| *id).collect();
    for peer in paired {
        let _ = host.input(Input::Command(Command::Connect { peer }));
    }
    loop {
        host.drain(&mut effects).map_err(DaemonError::Persist)?;
        let mut refreshed = false;
        for e in effects.drain(..) {
            match e {
                Effect::Event(ev @ Event::SharesRefreshed { .. }) => {
                    refreshed = true;
                    on_event(ev, &host.peer, &mut waiters);
                }
                Effect::Event(Event::Received { peer, data }) => {
                    tracing::debug!(peer = %peer.short(), len = data.len(), "received");
                    match waiters.bench.as_mut() {
                        Some(b) if b.peer == peer => b.echoed(&data),
                        _ if opts.echo => echoes.push(Command::Send { peer, data }),
                        _ => {}
                    }
                }
                Effect::Transmit { to, bytes } => match to.parse::<SocketAddr>() {
                    Ok(addr) => {
                        if let Err(e) = sock.send_to(&bytes, addr).await {
                            tracing::debug!(%addr, error = %e, "send failed");
                        }
                    }
                    Err(_) => tracing::warn!(to = %to, "not a socket address; datagram not sent"),
                },
                Effect::Event(ev) => on_event(ev, &host.peer, &mut waiters),
            }
        }
        if refreshed {
            // The shares this device held until now must not stay on its disk.
            host.compact_now()?;
        }
        // Sends fed in here have outputs to drain before waiting.
        let mut fed = !echoes.is_empty();
        for cmd in echoes.drain(..) {
            if let Err(e) = host.input(Input::Command(cmd)) {
                tracing::debug!(error = %e, "echo not sent");
            }
        }
        if let Some(b) = waiters.bench.as_mut() {
            b.stalled();
            fed |= b.fill(host) > 0;
            if b.finished() {
                waiters.bench.take().expect("just seen").report();
            }
        }
        if fed {
            continue;
        }
        let core = host.peer.poll_timeout().map(|t| host.deadline(t));
        let stall = waiters.bench.as_ref().map(|b| b.progress + BENCH_STALL);
        let deadline = match (core, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // One timer for the whole run, moved only when the deadline comes earlier: moving
        // a timer wakes the reactor thread (three system calls), and under traffic a
        // channel's idle deadline moves later with every datagram. A timer left earlier
        // than needed fires into a `Timeout` that finds nothing due (the core checks
        // every deadline against the clock) and is then set to the real deadline.
        if let Some(at) = deadline {
            if armed.is_none_or(|a| at < a) {
                timer.set_at(at);
                armed = deadline;
            }
        }
        let timer = async {
            (&mut timer).await;
            Wake::Timer
        };
        let recv = async { Wake::Datagram(sock.recv_from(&mut buf).await) };
        let ctl = async { Wake::Control(req_rx.recv().await.ok()) };
        // The socket is polled first (polling the timer first registers it with the
        // reactor on every turn, which cost a third of the throughput), except after a
        // long run of datagrams: a flood cannot starve the timer or a `stop` request.
        let wake = if datagram_run < DATAGRAM_RUN {
            smol::future::or(recv, smol::future::or(ctl, timer)).await
        } else {
            smol::future::or(smol::future::or(ctl, timer), recv).await
        };
        datagram_run = match wake {
            Wake::Datagram(_) => datagram_run + 1,
            _ => 0,
        };
        match wake {
            Wake::Datagram(Ok((n, from))) => {
                let _ = host.input(Input::Datagram {
                    from: from.to_string(),
                    bytes: buf[..n].to_vec(),
                });
                // Take what else is already queued before draining: one drain (one ledger
                // write, one round of events) then serves the whole batch.
                for _ in 1..RECV_BATCH {
                    match sock.get_ref().recv_from(&mut buf) {
                        Ok((n, from)) => {
                            datagram_run += 1;
                            let _ = host.input(Input::Datagram {
                                from: from.to_string(),
                                bytes: buf[..n].to_vec(),
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "recv failed");
                            break;
                        }
                    }
                }
            }
            Wake::Datagram(Err(e)) => tracing::debug!(error = %e, "recv failed"),
            Wake::Timer => {
                // A fired timer stays silent until set again.
                armed = None;
                let _ = host.input(Input::Timeout);
            }
            Wake::Control(None) => {}
            Wake::Control(Some((Request::Stop, reply))) => {
                // New clients now find no socket and know the peer is not running.
                let _ = std::fs::remove_file(ctl_path);
                // Tell paired devices the channels are closing, so their next send sets
                // up a new one instead of going nowhere.
                let paired: Vec<DeviceId> = host.peer.paired().map(|(id, _)| *id).collect();
                for peer in paired {
                    let _ = host.input(Input::Command(Command::Close { peer }));
                }
                host.drain(&mut effects).map_err(DaemonError::Persist)?;
                for e in effects.drain(..) {
                    if let Effect::Transmit { to, bytes } = e {
                        if let Ok(addr) = to.parse::<SocketAddr>() {
                            let _ = sock.send_to(&bytes, addr).await;
                        }
                    }
                }
                let _ = reply.try_send(json!({ "ok": true }));
                tracing::info!("stopping on request");
                // Give the control task a moment to write the answer before the process ends.
                smol::Timer::after(Duration::from_millis(200)).await;
                return Ok(());
            }
            Wake::Control(Some((req, reply))) => on_request(host, local, req, reply, &mut waiters),
        }
    }
}

fn on_request(host: &mut Host, local: SocketAddr, req: Request, reply: Reply, w: &mut Waiters) {
    let send_now = |v: Value| {
        let _ = reply.try_send(v);
    };
    match req {
        Request::Status => {
            let s = Status::of(&host.peer, local.to_string(), true);
            send_now(json!({ "ok": true, "status": s }));
        }
        Request::Invite { valid_for_s, addr } => {
            let addr_hint = addr.unwrap_or_else(|| local.to_string());
            match host.input(Input::Command(Command::CreateInvite {
                valid_for: Duration::from_secs(valid_for_s),
                addr_hint,
            })) {
                Ok(()) => w.invites.push_back(reply),
                Err(e) => send_now(err(e)),
            }
        }
        Request::Join { code } => {
            let id = Invitation::from_code(&code).map(|i| i.id());
            match host.input(Input::Command(Command::Join { code })) {
                Ok(()) => w.joins.entry(id.expect("the core parsed it")).or_default().push(reply),
                Err(e) => send_now(err(e)),
            }
        }
        Request::Ping { peer } => match resolve_peer(&host.peer, &peer) {
            Err(e) => send_now(err(e)),
            Ok(id) => match host.input(Input::Command(Command::Ping { peer: id })) {
                Ok(()) => w.pings.entry(id).or_default().push(reply),
                Err(e) => send_now(err(e)),
            },
        },
        Request::AuthorityCreate { threshold, devices } => {
            let ids: Result<Vec<DeviceId>, String> = if devices.is_empty() {
                Ok(host.peer.paired().map(|(id, _)| *id).collect())
            } else {
                devices.iter().map(|d| resolve_peer(&host.peer, d)).collect()
            };
            match ids {
                Err(e) => send_now(err(e)),
                Ok(devices) => match host.input(Input::Command(Command::CreateAuthority { devices, threshold })) {
                    Ok(()) => w.authority.push_back(reply),
                    Err(e) => send_now(err(e)),
                },
            }
        }
        Request::AuthorityShow => match AuthorityInfo::of(&host.peer) {
            Some(a) => send_now(json!({ "ok": true, "authority": a })),
            None => send_now(err("this device is not a member of an authority")),
        },
        Request::Sign { text } => match host.input(Input::Command(Command::Sign {
            statement: text.clone().into_bytes(),
        })) {
            Ok(()) => w.signs.push((text.into_bytes(), reply)),
            Err(e) => send_now(err(e)),
        },
        Request::ContextInvite { valid_for_s, addr } => {
            let addr_hint = addr.unwrap_or_else(|| local.to_string());
            match host.input(Input::Command(Command::CreateContextInvite {
                valid_for: Duration::from_secs(valid_for_s),
                addr_hint,
            })) {
                Ok(()) => w.ctx_invites.push_back(reply),
                Err(e) => send_now(err(e)),
            }
        }
        Request::ContextJoin { code } => {
            let id = Invitation::from_code(&code).map(|i| i.id());
            match host.input(Input::Command(Command::JoinContext { code })) {
                Ok(()) => w.ctx_joins.push_back((id.expect("the core parsed it"), reply)),
                Err(e) => send_now(err(e)),
            }
        }
        Request::ContextList => send_now(json!({ "ok": true, "contexts": ContextInfo::all(&host.peer) })),
        Request::Audit { since_unix_ms } => {
            match crate::audit::read(host.store.dir(), since_unix_ms, host.store.audit_sealer().as_ref()) {
                Ok((entries, torn)) => send_now(json!({ "ok": true, "entries": entries, "torn": torn })),
                Err(e) => send_now(err(format!("reading audit.log: {e}"))),
            }
        }
        Request::Send { peer, text } => match resolve_peer(&host.peer, &peer) {
            Err(e) => send_now(err(e)),
            Ok(id) => match host.input(Input::Command(Command::Send {
                peer: id,
                data: text.into_bytes().into(),
            })) {
                Ok(()) => send_now(json!({ "ok": true, "peer": id.to_hex() })),
                Err(e) => send_now(err(e)),
            },
        },
        Request::BenchEcho {
            peer,
            count,
            size,
            window,
        } => match resolve_peer(&host.peer, &peer) {
            Err(e) => send_now(err(e)),
            Ok(_) if w.bench.is_some() => send_now(err("a bench-echo is already running")),
            Ok(_)
                if !(8..=aura_proto::wire::MAX_APP_PAYLOAD).contains(&size)
                    || !(1..=BENCH_MAX_COUNT).contains(&count)
                    || !(1..=BENCH_MAX_WINDOW).contains(&window) =>
            {
                send_now(err(format!(
                    "need 8 <= size <= {}, 1 <= count <= {BENCH_MAX_COUNT}, 1 <= window <= {BENCH_MAX_WINDOW}",
                    aura_proto::wire::MAX_APP_PAYLOAD
                )))
            }
            Ok(id) => {
                let now = std::time::Instant::now();
                w.bench = Some(BenchRun {
                    peer: id,
                    count,
                    size,
                    window,
                    sent: 0,
                    lost: 0,
                    in_flight: BTreeMap::new(),
                    rtts: Vec::new(),
                    started: now,
                    progress: now,
                    stalls: 0,
                    reply,
                });
            }
        },
        Request::ContextSend { context, peer, text } => match resolve_context_peer(&host.peer, &context, &peer) {
            Err(e) => send_now(err(e)),
            Ok((context, peer)) => {
                let before = host.peer.metrics().denied.clone();
                match host.input(Input::Command(Command::ContextSend {
                    context,
                    peer,
                    data: text.into_bytes().into(),
                })) {
                    Ok(()) => {
                        // A refusal on the spot (channel up, or no channel allowed) shows in
                        // the denial counters; a send queued for a handshake is decided later.
                        let after = &host.peer.metrics().denied;
                        match after.iter().find(|(k, v)| before.get(*k) != Some(*v)) {
                            Some((reason, _)) => send_now(err(format!("refused by the guard chain: {reason}"))),
                            None => send_now(json!({ "ok": true, "context": context.to_hex(), "peer": peer.to_hex() })),
                        }
                    }
                    Err(e) => send_now(err(e)),
                }
            }
        },
        Request::Sync { peer } => {
            let target = match peer.as_deref().map(|p| resolve_member(&host.peer, p)) {
                Some(Err(e)) => return send_now(err(e)),
                Some(Ok(id)) => Some(id),
                None => None,
            };
            if let Err(e) = host.input(Input::Command(Command::Sync { peer: target })) {
                return send_now(err(e));
            }
            let pending: std::collections::BTreeSet<(DeviceId, Namespace)> = host
                .peer
                .sync_sessions()
                .into_iter()
                .filter(|(d, _)| target.is_none_or(|t| t == *d))
                .collect();
            if pending.is_empty() {
                send_now(json!({ "ok": true, "sessions": [] }));
            } else {
                w.syncs.push(SyncWait {
                    pending,
                    done: Vec::new(),
                    reply,
                });
            }
        }
        Request::Note { context, text, ack } => {
            let ns = match context.as_deref().map(|c| resolve_context(&host.peer, c)) {
                Some(Err(e)) => return send_now(err(e)),
                Some(Ok(c)) => Namespace::Context(c),
                None => match host.peer.authority() {
                    Some(v) => Namespace::Authority(v.id),
                    None => return send_now(err("this device is not a member of an authority (give --context)")),
                },
            };
            match host.input(Input::Command(Command::Publish {
                namespace: ns,
                data: text.into_bytes(),
                ack,
            })) {
                Ok(()) => w.notes.push_back(reply),
                Err(e) => send_now(err(e)),
            }
        }
        Request::Propagation => send_now(json!({ "ok": true, "facts": WrittenInfo::all(&host.peer) })),
        Request::AuthorityThreshold { threshold } => {
            match host.input(Input::Command(Command::ChangeThreshold { threshold })) {
                Ok(()) => w.changes.push((TreeOpKind::ChangeThreshold(threshold), reply)),
                Err(e) => send_now(err(e)),
            }
        }
        Request::DeviceRemove { device } => {
            let member = host.peer.authority().and_then(|v| {
                let d = device.trim().to_lowercase();
                let hits: Vec<DeviceId> = v
                    .members
                    .keys()
                    .copied()
                    .filter(|id| id.to_hex().starts_with(&d))
                    .collect();
                (hits.len() == 1 && !d.is_empty()).then(|| hits[0])
            });
            match member {
                None => send_now(err(format!("no single member of the authority matches {device:?}"))),
                Some(id) => match host.input(Input::Command(Command::RemoveDevice { device: id })) {
                    Ok(()) => w.changes.push((TreeOpKind::RemoveDevice(id), reply)),
                    Err(e) => send_now(err(e)),
                },
            }
        }
        Request::DeviceAdd { device } => {
            let members = host.peer.authority().map(|v| v.members.clone()).unwrap_or_default();
            let d = device.trim().to_lowercase();
            let hits: Vec<DeviceId> = host
                .peer
                .paired()
                .map(|(id, _)| *id)
                .filter(|id| !members.contains_key(id) && id.to_hex().starts_with(&d))
                .collect();
            if hits.len() != 1 || d.is_empty() {
                return send_now(err(format!(
                    "no single paired device outside the authority matches {device:?} (pair it first: `aura-smol invite` here, `aura-smol join CODE` there)"
                )));
            }
            match host.input(Input::Command(Command::AddDevice { device: hits[0] })) {
                Ok(()) => w.adds.entry(hits[0]).or_default().push(reply),
                Err(e) => send_now(err(e)),
            }
        }
        Request::AuthorityRefresh => match host.input(Input::Command(Command::RefreshShares)) {
            Ok(()) => w.refreshes.push(reply),
            Err(e) => send_now(err(e)),
        },
        Request::ContextRekey { context } => match resolve_context(&host.peer, &context) {
            Err(e) => send_now(err(e)),
            Ok(context) => match host.input(Input::Command(Command::RekeyContext { context })) {
                Ok(()) => w.rekeys.entry(context).or_default().push(reply),
                Err(e) => send_now(err(e)),
            },
        },
        Request::Stop => unreachable!("handled by the loop"),
    }
}

fn on_event(ev: Event, peer: &aura_proto::Peer, w: &mut Waiters) {
    match &ev {
        Event::InviteCreated { code, expires_unix_ms } => {
            tracing::info!("invitation created");
            if let Some(r) = w.invites.pop_front() {
                let _ = r.try_send(json!({ "ok": true, "code": code, "expires_unix_ms": expires_unix_ms }));
            }
        }
        Event::Paired { peer, addr, invite } => {
            tracing::info!(peer = %peer.short(), %addr, "paired");
            for r in w.joins.remove(invite).unwrap_or_default() {
                let _ = r.try_send(json!({ "ok": true, "peer": peer.to_hex(), "addr": addr }));
            }
        }
        Event::PairingFailed { invite, reason } => {
            tracing::warn!(?reason, "pairing failed");
            for r in w.joins.remove(invite).unwrap_or_default() {
                let _ = r.try_send(err(format!("pairing failed: {reason:?}")));
            }
        }
        Event::ChannelUp { peer, addr, version } => tracing::info!(peer = %peer.short(), %addr, version, "channel up"),
        Event::ChannelDown { peer, reason } => tracing::info!(peer = %peer.short(), ?reason, "channel down"),
        Event::ChannelFailed {
            peer,
            reason,
            discarded,
        } => {
            tracing::warn!(peer = %peer.short(), ?reason, discarded, "channel failed");
            for r in w.pings.remove(peer).unwrap_or_default() {
                let _ = r.try_send(err(format!("cannot reach {}: {reason:?}", peer.short())));
            }
        }
        Event::AuthorityCreated {
            authority,
            group_key,
            threshold,
            members,
            has_share,
        } => {
            tracing::info!(authority = %authority.short(), threshold, members, has_share, "authority created");
            if let Some(r) = w.authority.pop_front() {
                let _ = r.try_send(json!({ "ok": true, "authority": authority.to_hex(), "group_key": hex(group_key), "threshold": threshold, "members": members, "has_share": has_share }));
            }
        }
        Event::AuthorityFailed { reason } => {
            tracing::warn!(%reason, "authority creation failed");
            if let Some(r) = w.authority.pop_front() {
                let _ = r.try_send(err(format!("authority creation failed: {reason}")));
            }
        }
        Event::Signed {
            authority,
            group_key,
            message,
            signature,
            fact,
        } => {
            tracing::info!(authority = %authority.short(), "statement signed");
            let FactBody::Statement(statement) = &fact.body else {
                return;
            };
            if let Some(r) = w.take_sign(statement) {
                let _ = r.try_send(json!({ "ok": true, "authority": authority.to_hex(), "group_key": hex(group_key), "message": hex(message), "signature": hex(signature), "fact": fact.id().to_hex() }));
            }
        }
        Event::SignFailed { reason, statement } => {
            tracing::warn!(%reason, "signing failed");
            // Failures of the device's own signings (consensus commits) answer nobody.
            if let Some(r) = statement.as_ref().and_then(|s| w.take_sign(s)) {
                let _ = r.try_send(err(format!("signing failed: {reason}")));
            }
        }
        Event::CapabilityIssued { token } => tracing::info!(len = token.len(), "capability issued"),
        Event::SendDenied { peer, reason, .. } => {
            tracing::info!(peer = %peer.short(), reason = reason.name(), "send denied by the guard chain")
        }
        Event::SyncDone {
            peer,
            namespace,
            pushed,
            fetched,
            rounds,
        } => {
            tracing::info!(peer = %peer.short(), pushed, fetched, "journal synced");
            let outcome = json!({ "peer": peer.to_hex(), "namespace": namespace_name(namespace), "ok": true, "pushed": pushed, "fetched": fetched, "rounds": rounds });
            w.sync_ended(*peer, *namespace, outcome);
        }
        Event::SyncFailed { peer, phase, namespace } => {
            tracing::warn!(peer = %peer.short(), ?phase, "journal sync failed");
            let outcome = json!({ "peer": peer.to_hex(), "namespace": namespace_name(namespace), "ok": false, "phase": format!("{phase:?}").to_lowercase() });
            w.sync_ended(*peer, *namespace, outcome);
        }
        Event::Propagation { fact, status } => {
            tracing::debug!(fact = %fact.short(), ?status, "fact propagation");
            // A note of ours just became durable: that is what `note` waits for.
            let is_note = |ns: &Namespace| {
                peer.journal()
                    .facts(ns)
                    .any(|f| f.id() == *fact && matches!(f.body, FactBody::Note(_)))
            };
            if *status == aura_proto::Propagation::Local && !w.notes.is_empty() {
                let ns = peer
                    .written_facts()
                    .into_iter()
                    .find(|(id, _, _)| id == fact)
                    .map(|(_, ns, _)| ns);
                if let Some(ns) = ns.filter(is_note) {
                    let r = w.notes.pop_front().expect("checked");
                    let _ = r.try_send(json!({ "ok": true, "fact": fact.to_hex(), "namespace": namespace_name(&ns) }));
                }
            }
        }
        Event::Delivered { fact, peer } => tracing::info!(fact = %fact.short(), peer = %peer.short(), "note delivered"),
        Event::Committed {
            authority,
            epoch,
            instance,
        } => {
            tracing::info!(authority = %authority.short(), epoch, "change agreed and applied");
            let op = peer
                .journal()
                .facts(&Namespace::Authority(*authority))
                .find_map(|f| match &f.body {
                    FactBody::Commit(c) if c.id == *instance => {
                        aura_proto::wire::strict_decode::<TreeOpKind>(&c.op, &mut Vec::new()).ok()
                    }
                    _ => None,
                });
            let k = op.and_then(|op| w.changes.iter().position(|(kind, _)| *kind == op));
            if let Some((_, r)) = k.map(|k| w.changes.remove(k)) {
                let v = peer.authority();
                let _ = r.try_send(json!({ "ok": true, "authority": authority.to_hex(), "epoch": epoch, "threshold": v.map(|v| v.threshold), "members": v.map(|v| v.members.len()) }));
            }
        }
        Event::EquivocationProven { device, .. } => {
            tracing::warn!(device = %device.short(), "a device of this authority voted twice; it no longer counts in consensus (remove it with `aura-smol device remove`)");
        }
        Event::ConsensusFailed { reason, .. } => {
            tracing::warn!(%reason, "consensus failed");
            if let Some((_, r)) = (!w.changes.is_empty()).then(|| w.changes.remove(0)) {
                let _ = r.try_send(err(format!("the change was not agreed: {reason}")));
            } else if let Some(d) = w.adds.keys().next().copied() {
                for r in w.adds.remove(&d).unwrap_or_default() {
                    let _ = r.try_send(err(format!("the change was not agreed: {reason}")));
                }
            }
        }
        Event::DeviceEnrolled { authority, device } => {
            tracing::info!(authority = %authority.short(), device = %device.short(), "device added and enrolled");
            let v = peer.authority();
            for r in w.adds.remove(device).unwrap_or_default() {
                let _ = r.try_send(json!({ "ok": true, "authority": authority.to_hex(), "device": device.to_hex(), "epoch": v.map(|v| v.epoch), "threshold": v.map(|v| v.threshold), "members": v.map(|v| v.members.len()) }));
            }
        }
        Event::SharesRefreshed { authority } => {
            tracing::info!(authority = %authority.short(), "the members switched to refreshed key shares (same group key)");
            let epoch = peer.authority().map(|v| v.epoch);
            for r in w.refreshes.drain(..) {
                let _ = r.try_send(json!({ "ok": true, "authority": authority.to_hex(), "epoch": epoch }));
            }
        }
        Event::RefreshFailed { reason } => {
            tracing::warn!(%reason, "share refresh failed");
            for r in w.refreshes.drain(..) {
                let _ = r.try_send(err(format!("share refresh failed: {reason}")));
            }
        }
        Event::AuthorityJoined {
            authority,
            threshold,
            members,
            ..
        } => {
            tracing::info!(authority = %authority.short(), threshold, members, "added to an authority; this device holds its share");
        }
        Event::ContextInviteCreated { code, expires_unix_ms } => {
            tracing::info!("context invitation created");
            if let Some(r) = w.ctx_invites.pop_front() {
                let _ = r.try_send(json!({ "ok": true, "code": code, "expires_unix_ms": expires_unix_ms }));
            }
        }
        Event::ContextReady { context, with, epoch } => {
            tracing::info!(context = %context.short(), with = %with.short(), epoch, "context ready");
            if let Some((_, r)) = w.ctx_joins.pop_front() {
                let _ = r.try_send(
                    json!({ "ok": true, "context": context.to_hex(), "with": with.to_hex(), "epoch": epoch }),
                );
            }
        }
        Event::ContextEpochChanged { context, epoch } => {
            tracing::info!(context = %context.short(), epoch, "context epoch changed");
            for r in w.rekeys.remove(context).unwrap_or_default() {
                let _ = r.try_send(json!({ "ok": true, "context": context.to_hex(), "epoch": epoch }));
            }
        }
        Event::ContextJoinFailed { invite, reason } => {
            tracing::warn!(%reason, "context join failed");
            let (failed, rest): (VecDeque<_>, VecDeque<_>) = w.ctx_joins.drain(..).partition(|(i, _)| i == invite);
            w.ctx_joins = rest;
            for (_, r) in failed {
                let _ = r.try_send(err(format!("context join failed: {reason}")));
            }
        }
        Event::ContextReceived { context, peer, data } => {
            tracing::info!(context = %context.short(), peer = %peer.short(), len = data.len(), "received in context")
        }
        // Handled by the loop (echo, bench-echo).
        Event::Received { .. } => {}
        Event::Pong { peer, rtt } => {
            tracing::debug!(peer = %peer.short(), rtt_us = rtt.as_micros() as u64, "pong");
            if let Some(list) = w.pings.get_mut(peer) {
                if !list.is_empty() {
                    let r = list.remove(0);
                    let _ = r.try_send(json!({ "ok": true, "peer": peer.to_hex(), "rtt_us": rtt.as_micros() as u64 }));
                }
            }
        }
    }
}

async fn accept_loop(ctl: UnixListener, tx: Sender<(Request, Reply)>) {
    loop {
        match ctl.accept().await {
            Ok((stream, _)) => {
                smol::spawn(serve_client(stream, tx.clone())).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(stream: UnixStream, tx: Sender<(Request, Reply)>) {
    // One request per connection, bounded in size.
    let mut reader = BufReader::new(smol::io::AsyncReadExt::take(stream.clone(), 64 * 1024));
    let mut line = String::new();
    let read = reader.read_line(&mut line).await;
    let mut stream = stream;
    let reply = match read
        .ok()
        .and_then(|_| serde_json::from_str::<Request>(line.trim()).ok())
    {
        None => err("malformed request"),
        Some(req) => {
            let (rtx, rrx) = bounded(1);
            if tx.send((req, rtx)).await.is_err() {
                err("peer is shutting down")
            } else {
                rrx.recv()
                    .await
                    .unwrap_or_else(|_| err("peer stopped before answering"))
            }
        }
    };
    let mut out = reply.to_string();
    out.push('\n');
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.flush().await;
}

/// Sends one request to the daemon in `dir`. `Ok(None)` means no daemon is running.
pub fn request(dir: &Path, req: &Request, timeout: Duration) -> io::Result<Option<Value>> {
    let path = Store::control_path(dir);
    smol::block_on(async {
        let mut stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut line = serde_json::to_string(req).expect("requests serialize");
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        let read = async { reader.read_line(&mut answer).await.map(Some) };
        let timer = async {
            smol::Timer::after(timeout).await;
            Ok(None)
        };
        match smol::future::or(read, timer).await? {
            Some(_) => serde_json::from_str(answer.trim())
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} s", timeout.as_secs()),
            )),
        }
    })
}
