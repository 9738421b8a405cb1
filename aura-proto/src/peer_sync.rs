//! Anti-entropy sessions in [`Peer`] between one person's devices, for their authority's
//! journal.
//!
//! A session reconciles one namespace with one device (`crate::sync`, range-based), then
//! pushes what the other lacks (`AuthMsg::Facts`, acknowledged and retried by the fact
//! push) and asks for what this side lacks (`SyncFetch`, answered with `Facts`). Every
//! message is a `Proto` frame through the guard chain. The initiator keeps the session:
//! the last query is resent when no answer came in time, with exponential backoff from
//! `SYNC_RETRY` and jitter from the peer's RNG, `SYNC_TRIES` times, then the session fails
//! (`Event::SyncFailed`). Answers of an older round or of an unknown session are dropped,
//! so loss, duplication and reordering cost time, never correctness. Sessions start on
//! `Command::Sync` and every `SYNC_EVERY` with each other member of the authority (a
//! failed session is simply tried again then: a device that restarted is only noticed
//! once its old channel times out).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Event, Peer};
use crate::authority::AuthMsg;
use crate::journal::{FactId, Namespace};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::sync;
use crate::time::Instant;

/// Bytes per reconciliation message at most (DESIGN's frame limit for sync).
pub(super) const SYNC_FRAME: u64 = 16 * 1024;
/// First retransmission delay of a session; doubles per try.
const SYNC_RETRY: Duration = Duration::from_millis(100);
/// Queries sent per round before the session fails.
const SYNC_TRIES: u32 = 3;
/// Longest retransmission delay.
const SYNC_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Periodic sync with own devices whose channel is up.
const SYNC_EVERY: Duration = Duration::from_secs(30);
/// Facts asked for per `SyncFetch` (DESIGN: sync batch of 128 facts).
const FETCH_BATCH: usize = 128;

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
    /// Facts found so far (pushed / fetched).
    pushed: usize,
    fetched: usize,
}

/// Where a session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPhase {
    /// No answer to a reconciliation query after every retry.
    Reconcile,
    /// The answer could not be read (malformed, or the frame limit was refused).
    Protocol,
}

impl Peer {
    /// `Command::Sync`: reconcile this device's authority journal with `peer`, or with
    /// every own device whose channel is up.
    pub(super) fn start_sync(&mut self, peer: Option<DeviceId>) -> Result<(), super::CommandError> {
        let v = self.my_authority().ok_or(super::CommandError::NotInAuthority)?;
        let ns = Namespace::Authority(v.id);
        let members: Vec<DeviceId> = v.members.keys().copied().filter(|d| *d != self.keys.id).collect();
        let targets: Vec<DeviceId> = match peer {
            Some(p) if members.contains(&p) => vec![p],
            Some(p) => return Err(super::CommandError::UnknownPeer(p)),
            None => members,
        };
        for p in targets {
            self.sync_with(p, ns);
        }
        Ok(())
    }

    fn sync_with(&mut self, peer: DeviceId, ns: Namespace) {
        // One session per (peer, namespace) at a time.
        if self.syncs.values().any(|s| s.peer == peer && s.ns == ns) {
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
            pushed: 0,
            fetched: 0,
        };
        self.syncs.insert(session, s);
        self.metrics.sync_sessions += 1;
        self.send_auth(
            peer,
            AuthMsg::SyncQuery {
                session,
                round: 0,
                namespace: ns,
                msg: query,
            },
        );
    }

    /// Backoff before the `tries`-th resend, with up to 25% jitter from the peer RNG.
    fn sync_backoff(&mut self, tries: u32) -> Duration {
        let base = SYNC_RETRY.saturating_mul(1u32 << tries.min(16)).min(SYNC_MAX_BACKOFF);
        let jitter = self.rng.next_u64() % (base.as_millis() as u64 / 4 + 1);
        base + Duration::from_millis(jitter)
    }

    /// Whether `from` may sync namespace `ns` with us: a co-member of that authority.
    fn may_sync(&self, from: &DeviceId, ns: &Namespace) -> bool {
        match ns {
            Namespace::Authority(a) => self
                .views
                .0
                .get(a)
                .is_some_and(|v| v.members.contains_key(from) && v.members.contains_key(&self.keys.id)),
            Namespace::Context(_) => false,
        }
    }

    /// Responder: answer a reconciliation query from the journal as it is now.
    pub(super) fn on_sync_query(&mut self, from: DeviceId, session: u64, round: u32, ns: Namespace, msg: Vec<u8>) {
        if !self.may_sync(&from, &ns) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        let items = sync::items(&self.journal, &ns);
        match sync::respond(&items, SYNC_FRAME, &msg) {
            Ok(answer) => self.send_auth(
                from,
                AuthMsg::SyncAnswer {
                    session,
                    round,
                    msg: answer,
                },
            ),
            Err(_) => self.metrics.drop(DropReason::Malformed),
        }
    }

    /// Initiator: an answer for a session of ours.
    pub(super) fn on_sync_answer(&mut self, from: DeviceId, session: u64, round: u32, msg: Vec<u8>) {
        let Some(s) = self.syncs.get(&session) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        if s.peer != from || s.round != round {
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
        self.push_facts(from, &ns, &step.have);
        for chunk in step.need.chunks(FETCH_BATCH) {
            self.send_auth(
                from,
                AuthMsg::SyncFetch {
                    namespace: ns,
                    ids: chunk.to_vec(),
                },
            );
        }
        let backoff = self.sync_backoff(0);
        let now = self.now.mono;
        let s = self.syncs.get_mut(&session).expect("checked above");
        s.pushed += step.have.len();
        s.fetched += step.need.len();
        match step.reply {
            Some(query) => {
                s.round += 1;
                s.tries = 1;
                s.query = query.clone();
                s.retry_at = now.saturating_add(backoff);
                let round = s.round;
                self.send_auth(
                    from,
                    AuthMsg::SyncQuery {
                        session,
                        round,
                        namespace: ns,
                        msg: query,
                    },
                );
            }
            None => {
                let s = self.syncs.remove(&session).expect("checked above");
                self.event(Event::SyncDone {
                    peer: from,
                    pushed: s.pushed,
                    fetched: s.fetched,
                    rounds: s.round + 1,
                });
            }
        }
    }

    /// Pushes our facts `ids` of `ns` to `to` (acknowledged and retried like any push).
    fn push_facts(&mut self, to: DeviceId, ns: &Namespace, ids: &[FactId]) {
        let want: BTreeSet<FactId> = ids.iter().copied().collect();
        if want.is_empty() {
            return;
        }
        let facts: Vec<(FactId, Vec<u8>)> = self
            .journal
            .facts(ns)
            .map(|f| (f.id(), f))
            .filter(|(id, _)| want.contains(id))
            .map(|(id, f)| (id, f.encode()))
            .collect();
        for chunk in facts.chunks(FETCH_BATCH) {
            for (id, _) in chunk {
                self.fact_push.entry(*id).or_default().insert(to);
            }
            self.send_auth(
                to,
                AuthMsg::Facts {
                    facts: chunk.iter().map(|(_, b)| b.clone()).collect(),
                },
            );
        }
        self.arm_auth_tick();
    }

    /// Responder of a fetch: send the asked facts we hold.
    pub(super) fn on_sync_fetch(&mut self, from: DeviceId, ns: Namespace, ids: Vec<FactId>) {
        if !self.may_sync(&from, &ns) || ids.len() > FETCH_BATCH {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        self.push_facts(from, &ns, &ids);
    }

    fn sync_failed(&mut self, session: u64, phase: SyncPhase) {
        if let Some(s) = self.syncs.remove(&session) {
            self.metrics.sync_failed += 1;
            self.event(Event::SyncFailed { peer: s.peer, phase });
        }
    }

    pub(super) fn sync_deadline(&self) -> Option<Instant> {
        let next = self.syncs.values().map(|s| s.retry_at).min();
        let periodic = self.my_authority().map(|_| self.next_periodic_sync);
        match (next, periodic) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Resends overdue queries, fails sessions out of tries, and starts the periodic sync.
    pub(super) fn sync_timeout(&mut self) {
        let now = self.now.mono;
        let due: Vec<u64> = self
            .syncs
            .iter()
            .filter(|(_, s)| s.retry_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for session in due {
            let tries = self.syncs[&session].tries;
            if tries >= SYNC_TRIES {
                self.sync_failed(session, SyncPhase::Reconcile);
                continue;
            }
            let backoff = self.sync_backoff(tries);
            let s = self.syncs.get_mut(&session).expect("listed");
            s.tries += 1;
            s.retry_at = now.saturating_add(backoff);
            let (peer, round, ns, query) = (s.peer, s.round, s.ns, s.query.clone());
            self.metrics.sync_retries += 1;
            self.send_auth(
                peer,
                AuthMsg::SyncQuery {
                    session,
                    round,
                    namespace: ns,
                    msg: query,
                },
            );
        }
        if self.next_periodic_sync <= now && self.my_authority().is_some() {
            self.next_periodic_sync = now.saturating_add(SYNC_EVERY);
            if let Some(v) = self.my_authority() {
                let ns = Namespace::Authority(v.id);
                let me = self.keys.id;
                let members: Vec<DeviceId> = v.members.keys().copied().filter(|d| *d != me).collect();
                for d in members {
                    self.sync_with(d, ns);
                }
            }
        }
    }
}
