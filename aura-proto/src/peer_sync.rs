//! Anti-entropy in [`Peer`]: reconciliation sessions, fact pushes, propagation status and
//! delivery confirmations, for every journal namespace this device belongs to.
//!
//! A session reconciles one namespace with one device (`crate::sync`, range-based), then
//! pushes what the other lacks (`AuthMsg::Facts`, acknowledged and retried) and asks for
//! what this side lacks (`SyncFetch`, answered with `Facts`). Every message is a `Proto`
//! frame through the guard chain: between one person's devices in the unmetered own
//! scope, with a device of another authority on that context's channel, charged to the
//! context's flow budget. The initiator keeps the session: the last query is resent when
//! no answer came in time, with exponential backoff from `SYNC_RETRY` and jitter from the
//! peer's RNG, `SYNC_TRIES` times, then the session fails (`Event::SyncFailed`). Answers
//! of an older round or of an unknown session are dropped, so loss, duplication and
//! reordering cost time, never correctness.
//!
//! Sessions start on `Command::Sync`, when a channel this device opened to an own device
//! comes up (a device that was away catches up at once), right after a restart, every `SYNC_EVERY` with each own device per
//! shared namespace, and every `CROSS_SYNC_EVERY` with one device of each other authority
//! of a context (those cost flow budget; the other authority's devices reconcile among
//! themselves). A device whose sessions keep failing is tried less often, up to
//! `PEER_BACKOFF_MAX` apart, until it is heard from again.
//!
//! Every fact this device wrote is tracked: `Local` until some member is known to hold it
//! (a push acknowledgement, a delivery confirmation, or a finished session that showed
//! the other side had it), `Syncing` while some are, `Complete` when all are, `Failed`
//! with the time of the next attempt when the last push or session towards a missing
//! member gave up. Notes that ask for confirmation are confirmed by each member once
//! durable there (`AuthMsg::Delivered`); the author records each confirmation
//! (`Record::Delivered`) before reporting it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{CommandError, Event, Peer, Pending, Queued};
use crate::authority::AuthMsg;
use crate::journal::{ContextId, Fact, FactBody, FactId, Namespace, Note, MAX_NOTE};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::Record;
use crate::sync;
use crate::time::Instant;
use crate::wire;

/// Bytes per reconciliation message at most (DESIGN's frame limit for sync).
pub(super) const SYNC_FRAME: u64 = 16 * 1024;
/// First retransmission delay of a session; doubles per try.
const SYNC_RETRY: Duration = Duration::from_millis(100);
/// Queries sent per round before the session fails.
const SYNC_TRIES: u32 = 3;
/// Longest retransmission delay.
const SYNC_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Periodic sync with own devices.
const SYNC_EVERY: Duration = Duration::from_secs(30);
/// Periodic sync of each context with one device of each other authority.
const CROSS_SYNC_EVERY: Duration = Duration::from_secs(600);
/// Longest pause between periodic sessions with a device whose sessions keep failing.
const PEER_BACKOFF_MAX: Duration = Duration::from_secs(960);
/// Facts asked for per `SyncFetch` (DESIGN: sync batch of 128 facts).
const FETCH_BATCH: usize = 128;
/// First delay before a fact push is repeated; doubles per try up to `SYNC_MAX_BACKOFF`.
const PUSH_RETRY: Duration = Duration::from_millis(800);
/// Pushes of one fact to one device before anti-entropy is left to carry it.
const PUSH_TRIES: u32 = 10;
/// Bytes of encoded facts per `Facts` message (a single larger fact goes alone): the
/// message stays within the 16 KiB padding bucket.
const FACTS_BYTES: usize = 12 * 1024;
/// Reconciliation queries answered per device per second; more are dropped (`overloaded`).
const QUERIES_PER_SECOND: u32 = 64;
/// Fetches answered per device per second (each may ask for 128 facts).
const FETCHES_PER_SECOND: u32 = 16;
/// Rounds of pushing a note again to a member that holds it but never confirmed it.
const CONFIRM_ASKS: u8 = 3;

/// One reconciliation this device started.
#[derive(Debug)]
pub(super) struct SyncSession {
    peer: DeviceId,
    ns: Namespace,
    /// Round number: answers carry it back, older ones are stale.
    round: u32,
    query: Vec<u8>,
    tries: u32,
    retry_at: Instant,
    /// Facts pushed in this session.
    pushed: BTreeSet<FactId>,
    fetched: usize,
    /// Tracked facts numbered up to this existed when the session started.
    track_seq: u64,
    /// Facts asked for and not yet durable here.
    awaiting: BTreeSet<FactId>,
    /// Reconciliation is over; the session waits for `awaiting` only.
    reconciled: bool,
}

/// Where a session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPhase {
    /// No answer to a reconciliation query after every retry.
    Reconcile,
    /// The answer could not be read (malformed, or the frame limit was refused).
    Protocol,
    /// Facts the other side has were asked for but did not arrive (or did not verify)
    /// after every retry.
    Fetch,
}

/// How far a fact this device wrote has spread among the other member devices of its
/// namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// No other member is known to hold it yet.
    Local,
    /// Some members are known to hold it.
    Syncing {
        /// Members known to hold it.
        reached: u16,
        /// Other members of the namespace.
        known: u16,
    },
    /// Every other member holds it.
    Complete,
    /// The last attempt towards a missing member gave up; anti-entropy tries again at
    /// `retry_at` (this device's monotone clock).
    Failed {
        /// Next attempt.
        retry_at: Instant,
        /// Members known to hold it.
        reached: u16,
        /// Other members of the namespace.
        known: u16,
    },
}

/// A fact this device wrote, and who is known to hold it.
#[derive(Debug)]
pub(super) struct Tracked {
    ns: Namespace,
    seq: u64,
    reached: BTreeSet<DeviceId>,
    failed: Option<Instant>,
    /// A note asking for delivery confirmations.
    ack: bool,
    /// Rounds a member holding the note was asked again for its confirmation.
    asked: BTreeMap<DeviceId, u8>,
    status: Propagation,
}

/// A fact pushed to one device and not acknowledged yet.
#[derive(Clone, Copy, Debug)]
pub(super) struct PushTry {
    tries: u32,
    next: Instant,
    ns: Namespace,
}

/// Periodic sessions with a device that failed: how often in a row, and when next.
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerBackoff {
    failures: u32,
    next: Instant,
}

/// Anti-entropy state of a [`Peer`].
#[derive(Debug, Default)]
pub(super) struct SyncState {
    pub(super) sessions: BTreeMap<u64, SyncSession>,
    pub(super) tracked: BTreeMap<FactId, Tracked>,
    /// Epoch changes carried into contexts whose pushes a restart cut short (pushes are
    /// not recorded).
    interrupted: BTreeSet<FactId>,
    track_seq: u64,
    /// Delivery confirmations recorded, by note: device → wall clock ms.
    pub(super) deliveries: BTreeMap<FactId, BTreeMap<DeviceId, u64>>,
    /// Confirmations being recorded (not durable yet).
    delivering: BTreeSet<(FactId, DeviceId)>,
    /// Facts pushed and not yet acknowledged, by recipient.
    pub(super) push: BTreeMap<FactId, BTreeMap<DeviceId, PushTry>>,
    backoff: BTreeMap<DeviceId, PeerBackoff>,
    pub(super) next_periodic: Option<Instant>,
    next_cross: Option<Instant>,
    /// Facts received whose write is in flight.
    incoming: BTreeSet<FactId>,
    /// Responder work per device in the current second: (window start, queries, fetches).
    answered: BTreeMap<DeviceId, (Instant, u32, u32)>,
    /// Scope of the `Proto` frame being handled (answers go back the way it came).
    rx_scope: Option<ContextId>,
}

impl Peer {
    // ----- membership and routing ------------------------------------------------------

    /// Member devices of `ns` as this device's reduced state lists them.
    pub(super) fn members_of(&self, ns: &Namespace) -> Vec<DeviceId> {
        match ns {
            Namespace::Authority(a) => self.views.0.get(a).map(|v| v.members.keys().copied().collect()),
            Namespace::Context(c) => self
                .contexts
                .get(c)
                .filter(|s| s.ready)
                .map(|s| s.view.members.keys().copied().collect()),
        }
        .unwrap_or_default()
    }

    /// One of this person's devices (paired, or a member of our authority).
    fn is_own(&self, d: &DeviceId) -> bool {
        self.peers.contains_key(d) || self.my_authority().is_some_and(|v| v.members.contains_key(d))
    }

    /// The scope a message to `to` about `ns` travels in: own devices in the own scope,
    /// other authorities' devices on that context's channel; a message naming no
    /// namespace (an answer) goes back in the scope its question came in. `None`: no
    /// scope fits (nothing is sent).
    fn scope_for(&self, to: &DeviceId, ns: Option<&Namespace>) -> Option<ContextId> {
        if self.is_own(to) {
            return Some(ContextId::OWN);
        }
        let c = match ns {
            Some(Namespace::Context(c)) => *c,
            Some(Namespace::Authority(_)) => return None,
            None => self.sync.rx_scope.filter(|c| *c != ContextId::OWN)?,
        };
        self.contexts
            .get(&c)
            .is_some_and(|s| s.ready && s.view.members.contains_key(to))
            .then_some(c)
    }

    /// Sends an anti-entropy message to `to` in the scope it belongs to.
    pub(super) fn send_via(&mut self, to: DeviceId, ns: Option<&Namespace>, msg: AuthMsg) {
        let Some(scope) = self.scope_for(&to, ns) else { return };
        if scope == ContextId::OWN {
            return self.send_auth(to, msg);
        }
        let bytes = wire::encode(&msg);
        // A full queue or a refused link: the retry timers try again.
        let _ = self.send_or_queue_in(scope, to, Queued::Proto(bytes));
    }

    /// Namespaces this device and `peer` are both members of.
    fn shared_namespaces(&self, peer: &DeviceId) -> Vec<Namespace> {
        let me = self.keys.id;
        let mut out = Vec::new();
        if let Some(v) = self.my_authority() {
            if v.members.contains_key(peer) {
                out.push(Namespace::Authority(v.id));
            }
        }
        for (c, s) in &self.contexts {
            if s.ready && s.view.members.contains_key(peer) && s.view.members.contains_key(&me) {
                out.push(Namespace::Context(*c));
            }
        }
        out
    }

    /// Whether `from` may sync namespace `ns` with us: both are members.
    fn may_sync(&self, from: &DeviceId, ns: &Namespace) -> bool {
        let members = self.members_of(ns);
        members.contains(from) && members.contains(&self.keys.id)
    }

    // ----- sessions ----------------------------------------------------------------------

    /// `Command::Sync`: reconcile every namespace shared with `peer`, or with every own
    /// device and one device of each other authority of each context.
    pub(super) fn start_sync(&mut self, peer: Option<DeviceId>) -> Result<(), CommandError> {
        if self.my_authority().is_none() && self.contexts.values().all(|s| !s.ready) {
            return Err(CommandError::NotInAuthority);
        }
        let shared = match peer {
            Some(p) => {
                let shared = self.shared_namespaces(&p);
                if shared.is_empty() || p == self.keys.id {
                    return Err(CommandError::UnknownPeer(p));
                }
                shared
            }
            None => Vec::new(),
        };
        // Sessions already open (say, one begun while the device was away and now waiting
        // out a backoff) go again now, with fresh tries: the user asked for a sync now,
        // and a new session would only wait behind the old one. A session waiting on a
        // handshake has its query queued behind it already; handshakes that backed off are
        // hurried last, once every new query is queued too.
        let open: Vec<u64> = self
            .sync
            .sessions
            .iter()
            .filter(|(_, s)| peer.is_none_or(|p| s.peer == p))
            .map(|(k, _)| *k)
            .collect();
        for session in open {
            self.sync.sessions.get_mut(&session).expect("listed").tries = 0;
            self.sync_session_due(session);
        }
        match peer {
            Some(p) => {
                self.sync.backoff.remove(&p);
                for ns in shared {
                    self.sync_with(p, ns);
                }
            }
            None => {
                self.sync.backoff.clear();
                self.sync_own(true);
                self.sync_cross();
            }
        }
        self.hurry_handshakes(peer);
        Ok(())
    }

    /// Sessions with own devices for every namespace they share with us (`all`: also
    /// with devices in backoff).
    fn sync_own(&mut self, all: bool) {
        let now = self.now.mono;
        let me = self.keys.id;
        let mut pairs = Vec::new();
        for ns in self.my_namespaces() {
            for d in self.members_of(&ns) {
                let waiting = self.sync.backoff.get(&d).is_some_and(|b| b.next > now);
                if d != me && self.is_own(&d) && (all || !waiting) {
                    pairs.push((d, ns));
                }
            }
        }
        for (d, ns) in pairs {
            self.sync_with(d, ns);
        }
    }

    /// Per context, a session with one device of each other authority (picked at random
    /// among those not in backoff).
    fn sync_cross(&mut self) {
        let now = self.now.mono;
        let mine = self.my_authority().map(|v| v.id);
        let mut pairs = Vec::new();
        for (c, s) in &self.contexts {
            if !s.ready || !s.view.members.contains_key(&self.keys.id) {
                continue;
            }
            for a in s.view.authorities.iter().filter(|a| Some(**a) != mine) {
                let devices: Vec<DeviceId> = s
                    .view
                    .members
                    .iter()
                    .filter(|(d, m)| m.authority == *a && self.sync.backoff.get(d).is_none_or(|b| b.next <= now))
                    .map(|(d, _)| *d)
                    .collect();
                if !devices.is_empty() {
                    pairs.push((devices, *c));
                }
            }
        }
        for (devices, c) in pairs {
            let d = devices[(self.rng.next_u64() % devices.len() as u64) as usize];
            self.sync_with(d, Namespace::Context(c));
        }
    }

    /// Namespaces this device belongs to: its authority and its ready contexts.
    fn my_namespaces(&self) -> Vec<Namespace> {
        let mut out: Vec<Namespace> = self
            .my_authority()
            .map(|v| Namespace::Authority(v.id))
            .into_iter()
            .collect();
        out.extend(
            self.contexts
                .iter()
                .filter(|(_, s)| s.ready)
                .map(|(c, _)| Namespace::Context(*c)),
        );
        out
    }

    /// A channel this device opened to an own device is up: clear the device's backoff
    /// and reconcile what we share (a device that was away catches up now, not at the
    /// next period). Context channels do not do this: each session there costs flow
    /// budget, and channels come and go with traffic.
    pub(super) fn sync_on_link_up(&mut self, scope: ContextId, peer: DeviceId) {
        self.sync.backoff.remove(&peer);
        if scope != ContextId::OWN || !self.is_own(&peer) {
            return;
        }
        for ns in self.shared_namespaces(&peer) {
            self.sync_with(peer, ns);
        }
    }

    /// Reconciles context `scope` with `peer` over a channel of an earlier epoch: this
    /// device is behind and learns the changes it missed.
    pub(super) fn catch_up_with(&mut self, scope: ContextId, peer: DeviceId) {
        self.sync_with(peer, Namespace::Context(scope));
    }

    /// A channel to `peer` in context `scope` is up (whichever side opened it): when the push of
    /// a fact this device wrote there gave up (say, during a partition) or was cut short
    /// by a restart, and it is not known to have reached `peer`, reconcile now rather
    /// than at the next cross-context round.
    pub(super) fn context_link_up(&mut self, scope: ContextId, peer: DeviceId) {
        let ns = Namespace::Context(scope);
        let owed = self
            .sync
            .tracked
            .iter()
            .filter(|(_, t)| t.ns == ns && !t.reached.contains(&peer))
            .any(|(id, t)| t.failed.is_some() || self.sync.interrupted.contains(id));
        if owed {
            self.sync_with(peer, ns);
        }
    }

    fn sync_with(&mut self, peer: DeviceId, ns: Namespace) {
        // One session per (peer, namespace) at a time.
        if self.sync.sessions.values().any(|s| s.peer == peer && s.ns == ns) {
            return;
        }
        let items = sync::items(&self.journal, &ns);
        let Ok(query) = sync::initiate(&items, SYNC_FRAME) else {
            return;
        };
        let session = self.rng.next_u64();
        let now = self.now.mono;
        let s = SyncSession {
            peer,
            ns,
            round: 0,
            query: query.clone(),
            tries: 1,
            retry_at: now.saturating_add(self.sync_backoff(0)),
            pushed: BTreeSet::new(),
            fetched: 0,
            track_seq: self.sync.track_seq,
            awaiting: BTreeSet::new(),
            reconciled: false,
        };
        self.sync.sessions.insert(session, s);
        self.metrics.sync_sessions += 1;
        // Trying again: facts that had failed towards this device are syncing again.
        let retrying: Vec<FactId> = self
            .sync
            .tracked
            .iter()
            .filter(|(_, t)| t.ns == ns && t.failed.is_some() && !t.reached.contains(&peer))
            .map(|(id, _)| *id)
            .collect();
        for id in retrying {
            if let Some(t) = self.sync.tracked.get_mut(&id) {
                t.failed = None;
            }
            self.update_propagation(id);
        }
        self.send_query(peer, ns, session, 0, query);
    }

    /// Backoff before the `tries`-th resend, with up to 25% jitter from the peer RNG.
    fn sync_backoff(&mut self, tries: u32) -> Duration {
        let base = SYNC_RETRY.saturating_mul(1u32 << tries.min(16)).min(SYNC_MAX_BACKOFF);
        self.jittered(base)
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let jitter = self.rng.next_u64() % (base.as_millis() as u64 / 4 + 1);
        base + Duration::from_millis(jitter)
    }

    /// Responder: answer a reconciliation query from the journal as it is now.
    pub(super) fn on_sync_query(&mut self, from: DeviceId, session: u64, round: u32, ns: Namespace, msg: Vec<u8>) {
        if !self.may_sync(&from, &ns) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if !self.may_answer(from, false) {
            return self.metrics.drop(DropReason::Overloaded);
        }
        let items = sync::items(&self.journal, &ns);
        match sync::respond(&items, SYNC_FRAME, &msg) {
            Ok(answer) => self.send_via(
                from,
                Some(&ns),
                AuthMsg::SyncAnswer {
                    session,
                    round,
                    msg: answer,
                },
            ),
            Err(_) => self.metrics.drop(DropReason::Malformed),
        }
    }

    /// Whether `from` still has responder work left this second (a query, or a fetch).
    /// Answers cost the context's shared leakage budget and our flow budget with `from`:
    /// a member must not be able to make us spend them without limit.
    fn may_answer(&mut self, from: DeviceId, fetch: bool) -> bool {
        let now = self.now.mono;
        let w = self.sync.answered.entry(from).or_insert((now, 0, 0));
        if w.0.saturating_add(Duration::from_secs(1)) <= now {
            *w = (now, 0, 0);
        }
        let (n, limit) = if fetch {
            (&mut w.2, FETCHES_PER_SECOND)
        } else {
            (&mut w.1, QUERIES_PER_SECOND)
        };
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Initiator: an answer for a session of ours.
    pub(super) fn on_sync_answer(&mut self, from: DeviceId, session: u64, round: u32, msg: Vec<u8>) {
        let Some(s) = self.sync.sessions.get(&session) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        if s.peer != from || s.round != round || s.reconciled {
            // Another device's, or a stale duplicate of an earlier round.
            return self.metrics.drop(DropReason::Replayed);
        }
        let ns = s.ns;
        let items = sync::items(&self.journal, &ns);
        let step = match sync::step(&items, SYNC_FRAME, &msg) {
            Ok(step) => step,
            Err(_) => {
                self.metrics.drop(DropReason::Malformed);
                return self.sync_failed(session, SyncPhase::Protocol);
            }
        };
        self.push_facts(from, &ns, &step.have, true);
        self.fetch(from, ns, &step.need);
        let backoff = self.sync_backoff(0);
        let now = self.now.mono;
        let s = self.sync.sessions.get_mut(&session).expect("checked above");
        s.pushed.extend(step.have.iter().copied());
        s.fetched += step.need.len();
        s.awaiting.extend(step.need.iter().copied());
        match step.reply {
            Some(query) => {
                s.round += 1;
                s.tries = 1;
                s.query = query.clone();
                s.retry_at = now.saturating_add(backoff);
                let round = s.round;
                self.send_query(from, ns, session, round, query);
            }
            None if s.awaiting.is_empty() => self.finish_session(session),
            None => {
                // Done only once what was asked for is durable here.
                s.reconciled = true;
                s.tries = 1;
                s.retry_at = now.saturating_add(backoff);
            }
        }
    }

    /// Asks `from` for facts `ids` of `ns`, in batches.
    fn fetch(&mut self, from: DeviceId, ns: Namespace, ids: &[FactId]) {
        for chunk in ids.chunks(FETCH_BATCH) {
            self.send_via(
                from,
                Some(&ns),
                AuthMsg::SyncFetch {
                    namespace: ns,
                    ids: chunk.to_vec(),
                },
            );
        }
    }

    fn finish_session(&mut self, session: u64) {
        let Some(s) = self.sync.sessions.remove(&session) else {
            return;
        };
        self.sync.backoff.remove(&s.peer);
        self.session_reached(&s);
        self.event(Event::SyncDone {
            peer: s.peer,
            namespace: s.ns,
            pushed: s.pushed.len(),
            fetched: s.fetched,
            rounds: s.round + 1,
        });
    }

    /// Whether some session waits for fetched facts.
    pub(super) fn sync_awaits_facts(&self) -> bool {
        self.sync.sessions.values().any(|s| !s.awaiting.is_empty())
    }

    /// A fact became durable here: sessions that asked for it may be complete.
    pub(super) fn fact_arrived(&mut self, ns: Namespace, id: FactId) {
        let mut done = Vec::new();
        for (k, s) in self.sync.sessions.iter_mut() {
            if s.ns == ns && s.awaiting.remove(&id) && s.reconciled && s.awaiting.is_empty() {
                done.push(*k);
            }
        }
        for k in done {
            self.finish_session(k);
        }
    }

    /// A received fact's write is in flight.
    pub(super) fn sync_incoming(&self, id: &FactId) -> bool {
        self.sync.incoming.contains(id)
    }

    pub(super) fn sync_incoming_start(&mut self, id: FactId) {
        self.sync.incoming.insert(id);
    }

    pub(super) fn sync_incoming_done(&mut self, id: &FactId) {
        self.sync.incoming.remove(id);
    }

    /// A finished session: the other side holds every tracked fact of the namespace that
    /// existed when it started and that we did not have to push. A note whose
    /// confirmation from it is missing is pushed once more (a duplicate is confirmed
    /// again).
    fn session_reached(&mut self, s: &SyncSession) {
        let held: Vec<FactId> = self
            .sync
            .tracked
            .iter()
            .filter(|(id, t)| t.ns == s.ns && t.seq <= s.track_seq && !s.pushed.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let mut unconfirmed = Vec::new();
        for id in held {
            self.fact_reached(id, s.peer);
            let confirmed = self.sync.deliveries.get(&id).is_some_and(|d| d.contains_key(&s.peer))
                || self.sync.delivering.contains(&(id, s.peer));
            let Some(t) = self.sync.tracked.get_mut(&id) else {
                continue;
            };
            let asked = t.asked.entry(s.peer).or_insert(0);
            if t.ack && !confirmed && *asked < CONFIRM_ASKS {
                *asked += 1;
                unconfirmed.push(id);
            }
        }
        self.push_facts(s.peer, &s.ns, &unconfirmed, true);
    }

    /// Splits encoded facts into `Facts` messages: at most `FETCH_BATCH` facts and about
    /// `FACTS_BYTES` bytes each (a larger fact goes alone).
    fn fact_batches(facts: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
        let mut bytes = 0;
        for f in facts {
            let full = out
                .last()
                .is_none_or(|b| b.len() >= FETCH_BATCH || (bytes + f.len() > FACTS_BYTES && !b.is_empty()));
            if full {
                out.push(Vec::new());
                bytes = 0;
            }
            bytes += f.len();
            out.last_mut().expect("pushed above").push(f);
        }
        out
    }

    /// Sends our facts `ids` of `ns` to `to`; `retried`: until acknowledged (a push of
    /// ours), else once (an answer to a fetch: the fetcher asks again if it must).
    pub(super) fn push_facts(&mut self, to: DeviceId, ns: &Namespace, ids: &[FactId], retried: bool) {
        let want: BTreeSet<FactId> = ids.iter().copied().collect();
        if want.is_empty() {
            return;
        }
        let facts: Vec<(FactId, Vec<u8>)> = self
            .journal
            .entries(ns)
            .filter(|(id, _)| want.contains(id))
            .map(|(id, f)| (id, f.encode()))
            .collect();
        let first = self.now.mono.saturating_add(PUSH_RETRY);
        if retried {
            for (id, _) in &facts {
                // A push already under way keeps its count (no endless restarts).
                self.sync.push.entry(*id).or_default().entry(to).or_insert(PushTry {
                    tries: 1,
                    next: first,
                    ns: *ns,
                });
            }
            self.arm_auth_tick();
        }
        for batch in Self::fact_batches(facts.into_iter().map(|(_, b)| b).collect()) {
            self.send_via(to, Some(ns), AuthMsg::Facts { facts: batch });
        }
    }

    /// Pushes a fact that just became durable to `to` (acknowledged and retried).
    pub(super) fn push_fact(&mut self, fact: &Fact, to: &BTreeSet<DeviceId>) {
        let first = self.now.mono.saturating_add(PUSH_RETRY);
        let id = fact.id();
        for d in to {
            self.sync.push.entry(id).or_default().insert(
                *d,
                PushTry {
                    tries: 1,
                    next: first,
                    ns: fact.namespace,
                },
            );
            self.send_via(
                *d,
                Some(&fact.namespace),
                AuthMsg::Facts {
                    facts: vec![fact.encode()],
                },
            );
        }
        self.arm_auth_tick();
    }

    /// Resends pushes that are due, with backoff; after `PUSH_TRIES` a push is left to
    /// anti-entropy (and a tracked fact is `Failed` until the next session).
    pub(super) fn resend_pushes(&mut self) {
        let now = self.now.mono;
        let mut due: Vec<(FactId, DeviceId)> = Vec::new();
        for (id, to) in &self.sync.push {
            for (d, p) in to {
                if p.next <= now {
                    due.push((*id, *d));
                }
            }
        }
        let mut gave_up = Vec::new();
        let mut resend: BTreeMap<DeviceId, Vec<FactId>> = BTreeMap::new();
        for (id, d) in due {
            let base = PUSH_RETRY;
            let Some(p) = self.sync.push.get_mut(&id).and_then(|m| m.get_mut(&d)) else {
                continue;
            };
            if p.tries >= PUSH_TRIES {
                gave_up.push((id, d));
                continue;
            }
            let delay = base.saturating_mul(1u32 << p.tries.min(16)).min(SYNC_MAX_BACKOFF);
            p.tries += 1;
            p.next = now.saturating_add(delay);
            resend.entry(d).or_default().push(id);
        }
        for (id, d) in gave_up {
            if let Some(m) = self.sync.push.get_mut(&id) {
                m.remove(&d);
            }
            self.fact_failed(id, d);
        }
        self.sync.push.retain(|_, m| !m.is_empty());
        for (d, ids) in resend {
            let want: BTreeSet<FactId> = ids.into_iter().collect();
            let mut by_ns: BTreeMap<Namespace, Vec<Vec<u8>>> = BTreeMap::new();
            for ns in self.journal.namespaces().copied().collect::<Vec<_>>() {
                for (_, f) in self.journal.entries(&ns).filter(|(id, _)| want.contains(id)) {
                    by_ns.entry(ns).or_default().push(f.encode());
                }
            }
            for (ns, facts) in by_ns {
                for batch in Self::fact_batches(facts) {
                    self.send_via(d, Some(&ns), AuthMsg::Facts { facts: batch });
                }
            }
        }
    }

    /// `FactsAck` from `from`: stop pushing those facts to it. A note that asked for a
    /// confirmation stays pushed until the confirmation comes.
    pub(super) fn on_facts_ack(&mut self, from: DeviceId, ids: Vec<FactId>) {
        for id in ids {
            let needs_confirmation = self.sync.tracked.get(&id).is_some_and(|t| t.ack)
                && !self.sync.deliveries.get(&id).is_some_and(|d| d.contains_key(&from));
            if !needs_confirmation {
                if let Some(waiting) = self.sync.push.get_mut(&id) {
                    waiting.remove(&from);
                }
            }
            self.fact_reached(id, from);
            for waiting in self.ctx_push.values_mut() {
                if waiting.0 == id {
                    waiting.1.remove(&from);
                }
            }
        }
        self.sync.push.retain(|_, w| !w.is_empty());
        self.ctx_push.retain(|_, w| !w.1.is_empty());
    }

    /// Responder of a fetch: send the asked facts we hold.
    pub(super) fn on_sync_fetch(&mut self, from: DeviceId, ns: Namespace, ids: Vec<FactId>) {
        if !self.may_sync(&from, &ns) || ids.len() > FETCH_BATCH {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if !self.may_answer(from, true) {
            return self.metrics.drop(DropReason::Overloaded);
        }
        self.push_facts(from, &ns, &ids, false);
    }

    /// An authenticated frame came from `peer` on a channel between own devices: it is
    /// reachable, so periodic sessions with it no longer back off (a partition that
    /// healed without the channel going down would otherwise keep them apart for
    /// minutes).
    pub(super) fn heard_from(&mut self, peer: &DeviceId) {
        if self.sync.backoff.get(peer).is_some_and(|b| b.next > self.now.mono) {
            self.sync.backoff.remove(peer);
        }
    }

    fn sync_failed(&mut self, session: u64, phase: SyncPhase) {
        let Some(s) = self.sync.sessions.remove(&session) else {
            return;
        };
        self.metrics.sync_failed += 1;
        // Periodic sessions with this device back off until it is heard from again.
        let failures = self.sync.backoff.get(&s.peer).map_or(0, |b| b.failures) + 1;
        let base = SYNC_EVERY.saturating_mul(1u32 << failures.min(5)).min(PEER_BACKOFF_MAX);
        let next = self.now.mono.saturating_add(self.jittered(base));
        self.sync.backoff.insert(s.peer, PeerBackoff { failures, next });
        let missing: Vec<FactId> = self
            .sync
            .tracked
            .iter()
            .filter(|(_, t)| t.ns == s.ns && !t.reached.contains(&s.peer))
            .map(|(id, _)| *id)
            .collect();
        for id in missing {
            self.fact_failed(id, s.peer);
        }
        self.event(Event::SyncFailed {
            peer: s.peer,
            namespace: s.ns,
            phase,
        });
    }

    pub(super) fn sync_deadline(&self) -> Option<Instant> {
        let next = self.sync.sessions.values().map(|s| s.retry_at).min();
        let periodic = if self.my_namespaces().is_empty() {
            None
        } else {
            // Not scheduled yet: a timeout now schedules it. Its time must not depend on
            // when some other timer happens to fire (or on a host waking the peer early).
            Some(self.sync.next_periodic.unwrap_or(self.now.mono))
        };
        [next, periodic].into_iter().flatten().min()
    }

    /// A session whose retry time came: wait for its handshake (its query is queued
    /// behind it), give up, or send its query (or fetch) again.
    fn sync_session_due(&mut self, session: u64) {
        let now = self.now.mono;
        let (tries, peer, ns) = {
            let s = &self.sync.sessions[&session];
            (s.tries, s.peer, s.ns)
        };
        // The query is still queued behind a handshake that has not given up yet:
        // waiting for it is not a lost try (the channel layer times the handshake out,
        // and the next try then starts a fresh one).
        let waiting = self
            .scope_for(&peer, Some(&ns))
            .is_some_and(|scope| !self.active.contains_key(&(scope, peer)) && self.initiating_to(scope, &peer));
        if waiting {
            let backoff = self.sync_backoff(tries);
            let s = self.sync.sessions.get_mut(&session).expect("listed");
            s.retry_at = now.saturating_add(backoff);
            return;
        }
        if tries >= SYNC_TRIES {
            let phase = if self.sync.sessions[&session].reconciled {
                SyncPhase::Fetch
            } else {
                SyncPhase::Reconcile
            };
            self.sync_failed(session, phase);
            return;
        }
        let backoff = self.sync_backoff(tries);
        let s = self.sync.sessions.get_mut(&session).expect("listed");
        s.tries += 1;
        s.retry_at = now.saturating_add(backoff);
        let (peer, round, ns, query) = (s.peer, s.round, s.ns, s.query.clone());
        self.metrics.sync_retries += 1;
        if s.reconciled {
            let ids: Vec<FactId> = s.awaiting.iter().copied().collect();
            self.fetch(peer, ns, &ids);
            return;
        }
        self.send_query(peer, ns, session, round, query);
    }

    /// One round of session `session`'s reconciliation, to `peer`.
    fn send_query(&mut self, peer: DeviceId, ns: Namespace, session: u64, round: u32, msg: Vec<u8>) {
        let q = AuthMsg::SyncQuery {
            session,
            round,
            namespace: ns,
            msg,
        };
        self.send_via(peer, Some(&ns), q);
    }

    /// Resends overdue queries, fails sessions out of tries, and starts periodic syncs.
    pub(super) fn sync_timeout(&mut self) {
        let now = self.now.mono;
        let due: Vec<u64> = self
            .sync
            .sessions
            .iter()
            .filter(|(_, s)| s.retry_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for session in due {
            self.sync_session_due(session);
        }
        if self.my_namespaces().is_empty() {
            return;
        }
        let next = *self.sync.next_periodic.get_or_insert(now.saturating_add(SYNC_EVERY));
        if next <= now {
            self.sync.next_periodic = Some(now.saturating_add(SYNC_EVERY));
            self.sync_own(false);
            let cross = *self.sync.next_cross.get_or_insert(now.saturating_add(CROSS_SYNC_EVERY));
            if cross <= now {
                self.sync.next_cross = Some(now.saturating_add(CROSS_SYNC_EVERY));
                self.sync_cross();
            }
        }
    }

    /// After a restore: statuses from the restored confirmations (silently), and the
    /// first sessions soon, not a period later.
    pub(super) fn sync_soon(&mut self) {
        let ids: Vec<FactId> = self.sync.tracked.keys().copied().collect();
        for id in ids {
            let status = self.propagation_of(&self.sync.tracked[&id]);
            self.sync.tracked.get_mut(&id).expect("listed").status = status;
        }
        // Epoch changes this device carried into a context and had not spread yet: the
        // other side needs them to stay in the context (other facts wait for the next
        // cross-context round, as they would have).
        let me = self.keys.id;
        let carried: Vec<FactId> = self
            .journal
            .namespaces()
            .filter(|ns| matches!(ns, Namespace::Context(_)))
            .flat_map(|ns| self.journal.entries(ns))
            .filter(|(_, f)| f.author == me && matches!(f.body, crate::journal::FactBody::ContextEpoch(_)))
            .map(|(id, _)| id)
            .filter(|id| {
                self.sync
                    .tracked
                    .get(id)
                    .is_some_and(|t| t.status != Propagation::Complete)
            })
            .collect();
        self.sync.interrupted.extend(carried);
        self.sync.next_periodic = Some(self.now.mono.saturating_add(Duration::from_secs(1)));
        // Epoch changes whose pushes the restart cut short: the first round also
        // reconciles across contexts, not ten minutes later.
        if !self.sync.interrupted.is_empty() {
            self.sync.next_cross = self.sync.next_periodic;
        }
    }

    /// A `Proto` frame on the channel of context `scope`: anti-entropy of that context's
    /// journal and nothing else.
    pub(super) fn on_context_proto(&mut self, scope: ContextId, from: DeviceId, data: &[u8]) {
        let Some(msg) = self.decode_msg::<AuthMsg>(data) else {
            return;
        };
        let here = Namespace::Context(scope);
        let msg = match msg {
            // Acknowledgements and confirmations of this context's facts only.
            AuthMsg::FactsAck { ids } => AuthMsg::FactsAck {
                ids: self.ids_of(here, &from, ids),
            },
            AuthMsg::Delivered { ids } => AuthMsg::Delivered {
                ids: self.ids_of(here, &from, ids),
            },
            m => m,
        };
        self.sync.rx_scope = Some(scope);
        match msg {
            AuthMsg::SyncQuery { namespace, .. } | AuthMsg::SyncFetch { namespace, .. } if namespace != here => {
                self.metrics.drop(DropReason::WrongContext)
            }
            AuthMsg::SyncAnswer { session, .. } if self.sync.sessions.get(&session).is_some_and(|s| s.ns != here) => {
                self.metrics.drop(DropReason::WrongContext)
            }
            AuthMsg::Facts { facts } => self.on_facts(from, facts, Some(here)),
            m @ (AuthMsg::SyncQuery { .. }
            | AuthMsg::SyncAnswer { .. }
            | AuthMsg::SyncFetch { .. }
            | AuthMsg::FactsAck { .. }
            | AuthMsg::Delivered { .. }) => self.on_auth(from, m),
            _ => self.metrics.drop(DropReason::UnexpectedFrame),
        }
        self.sync.rx_scope = None;
    }

    /// The ids among `ids` that concern namespace `ns`: facts of ours tracked there, or
    /// pushed to `from` there. The others are dropped and counted.
    fn ids_of(&mut self, ns: Namespace, from: &DeviceId, ids: Vec<FactId>) -> Vec<FactId> {
        let before = ids.len();
        let kept: Vec<FactId> = ids
            .into_iter()
            .filter(|id| {
                self.sync.tracked.get(id).is_some_and(|t| t.ns == ns)
                    || self
                        .sync
                        .push
                        .get(id)
                        .and_then(|m| m.get(from))
                        .is_some_and(|p| p.ns == ns)
            })
            .collect();
        for _ in kept.len()..before {
            self.metrics.drop(DropReason::WrongContext);
        }
        kept
    }

    // ----- propagation ---------------------------------------------------------------------

    /// Starts tracking a fact this device wrote (silently while restoring: a restart
    /// does not know who held it, and the next sessions find out).
    pub(super) fn track_fact(&mut self, fact: &Fact) {
        let id = fact.id();
        if self.sync.tracked.contains_key(&id) {
            return;
        }
        let ack = matches!(&fact.body, FactBody::Note(n) if n.ack);
        self.sync.track_seq += 1;
        self.sync.tracked.insert(
            id,
            Tracked {
                ns: fact.namespace,
                seq: self.sync.track_seq,
                reached: BTreeSet::new(),
                failed: None,
                ack,
                asked: BTreeMap::new(),
                status: Propagation::Local,
            },
        );
        if !self.restoring {
            self.event(Event::Propagation {
                fact: id,
                status: Propagation::Local,
            });
            self.update_propagation(id);
        }
    }

    fn fact_reached(&mut self, id: FactId, d: DeviceId) {
        let Some(t) = self.sync.tracked.get(&id) else { return };
        if t.reached.contains(&d) || !self.members_of(&t.ns).contains(&d) {
            return;
        }
        let t = self.sync.tracked.get_mut(&id).expect("checked");
        t.reached.insert(d);
        t.failed = None;
        self.update_propagation(id);
    }

    fn fact_failed(&mut self, id: FactId, d: DeviceId) {
        // The next periodic session that includes `d`: own devices every round, other
        // authorities' devices in the cross-context round; later if `d` is in backoff.
        let round = if self.is_own(&d) {
            self.sync.next_periodic
        } else {
            self.sync.next_cross
        };
        let round = round.unwrap_or(self.now.mono.saturating_add(SYNC_EVERY));
        let retry_at = self.sync.backoff.get(&d).map_or(round, |b| b.next.max(round));
        let Some(t) = self.sync.tracked.get_mut(&id) else {
            return;
        };
        if t.reached.contains(&d) {
            return;
        }
        t.failed = Some(retry_at);
        self.update_propagation(id);
    }

    fn propagation_of(&self, t: &Tracked) -> Propagation {
        let me = self.keys.id;
        let others: Vec<DeviceId> = self.members_of(&t.ns).into_iter().filter(|d| *d != me).collect();
        let known = others.len().min(u16::MAX as usize) as u16;
        let reached = others.iter().filter(|d| t.reached.contains(d)).count() as u16;
        match t.failed {
            _ if reached >= known => Propagation::Complete,
            Some(retry_at) => Propagation::Failed {
                retry_at,
                reached,
                known,
            },
            None if reached == 0 => Propagation::Local,
            None => Propagation::Syncing { reached, known },
        }
    }

    fn update_propagation(&mut self, id: FactId) {
        let Some(t) = self.sync.tracked.get(&id) else { return };
        let status = self.propagation_of(t);
        if status != t.status {
            self.sync.tracked.get_mut(&id).expect("present").status = status;
            if !self.restoring {
                self.event(Event::Propagation { fact: id, status });
            }
        }
    }

    /// Reconciliation sessions running now: (device, namespace).
    pub fn sync_sessions(&self) -> Vec<(DeviceId, Namespace)> {
        self.sync.sessions.values().map(|s| (s.peer, s.ns)).collect()
    }

    /// How far fact `id` (one this device wrote) has spread; `None` for other facts.
    pub fn propagation(&self, id: &FactId) -> Option<Propagation> {
        self.sync.tracked.get(id).map(|t| self.propagation_of(t))
    }

    /// Facts this device wrote, in the order it wrote them (oldest first), with their
    /// propagation.
    pub fn written_facts(&self) -> Vec<(FactId, Namespace, Propagation)> {
        let mut v: Vec<(u64, FactId, Namespace, Propagation)> = self
            .sync
            .tracked
            .iter()
            .map(|(id, t)| (t.seq, *id, t.ns, self.propagation_of(t)))
            .collect();
        v.sort_unstable_by_key(|x| x.0);
        v.into_iter().map(|(_, id, ns, p)| (id, ns, p)).collect()
    }

    /// Delivery confirmations recorded for note `id`: device and this device's wall
    /// clock when it arrived (ms since the epoch).
    pub fn deliveries(&self, id: &FactId) -> Vec<(DeviceId, u64)> {
        self.sync
            .deliveries
            .get(id)
            .map(|m| m.iter().map(|(d, t)| (*d, *t)).collect())
            .unwrap_or_default()
    }

    // ----- notes and confirmations -----------------------------------------------------

    /// `Command::Publish`: write a note into `ns` and spread it to the other members.
    pub(super) fn publish(&mut self, ns: Namespace, data: Vec<u8>, ack: bool) -> Result<(), CommandError> {
        if data.len() > MAX_NOTE {
            return Err(CommandError::PayloadTooLarge {
                len: data.len(),
                max: MAX_NOTE,
            });
        }
        let me = self.keys.id;
        let members = self.members_of(&ns);
        if !members.contains(&me) {
            return Err(CommandError::NotMember(ns));
        }
        let fact = self.device_fact(ns, FactBody::Note(Note { data, ack }), &[]);
        let others: BTreeSet<DeviceId> = members.into_iter().filter(|d| *d != me).collect();
        self.persist(
            Record::Fact(fact.clone()),
            Pending::FactDurable {
                fact: Box::new(fact),
                push_to: Some(others),
                ack_to: None,
            },
        );
        Ok(())
    }

    /// A fact became part of the journal here: a note of another member that asks for
    /// confirmation is confirmed to its author (again, if it arrives again).
    pub(super) fn confirm_delivery(&mut self, fact: &Fact) {
        let asks = matches!(&fact.body, FactBody::Note(n) if n.ack);
        if asks && fact.author != self.keys.id && !self.restoring {
            self.send_via(
                fact.author,
                Some(&fact.namespace),
                AuthMsg::Delivered { ids: vec![fact.id()] },
            );
        }
    }

    /// A member confirms notes of ours: record each confirmation, then report it.
    pub(super) fn on_delivered(&mut self, from: DeviceId, ids: Vec<FactId>) {
        if ids.len() > FETCH_BATCH {
            return self.metrics.drop(DropReason::Malformed);
        }
        for id in ids {
            let Some(t) = self.sync.tracked.get(&id) else {
                self.metrics.drop(DropReason::UnexpectedFrame);
                continue;
            };
            if !t.ack || !self.members_of(&t.ns).contains(&from) {
                self.metrics.drop(DropReason::UnexpectedFrame);
                continue;
            }
            let known = self.sync.deliveries.get(&id).is_some_and(|m| m.contains_key(&from));
            if known || !self.sync.delivering.insert((id, from)) {
                continue;
            }
            let at_ms = self.now.unix_ms;
            self.persist(
                Record::Delivered {
                    fact: id,
                    peer: from,
                    at_ms,
                },
                Pending::Delivered {
                    fact: id,
                    peer: from,
                    at_ms,
                },
            );
        }
    }

    /// A confirmation is durable (or restored): stop pushing, count the member as
    /// reached, remember, report.
    pub(super) fn delivery_durable(&mut self, fact: FactId, peer: DeviceId, at_ms: u64) {
        self.sync.delivering.remove(&(fact, peer));
        self.sync.deliveries.entry(fact).or_default().insert(peer, at_ms);
        if let Some(t) = self.sync.tracked.get_mut(&fact) {
            t.reached.insert(peer);
            t.failed = None;
        }
        self.update_propagation(fact);
        if let Some(m) = self.sync.push.get_mut(&fact) {
            m.remove(&peer);
        }
        self.sync.push.retain(|_, m| !m.is_empty());
        if !self.restoring {
            self.event(Event::Delivered { fact, peer });
        }
    }
}
