//! Share refresh: new shares of the same key for exactly the current members, so that a
//! removed device's share stops being a share (it is not on the new polynomial).
//!
//! FROST's refresh is a key generation of a random polynomial with zero constant term
//! among all current members (`refresh_dkg_part1/part2/shares`): each member adds its
//! points of that polynomial to its share. The group key stays; every verifying share
//! moves. Since shares of the old and the new polynomial do not mix, the switch is a tree
//! change agreed by consensus: `Refresh(verifying shares)`. A member votes for it only if
//! it holds the refreshed share those verifying shares describe, and switches when the
//! change applies.
//!
//! Flow (C = coordinator: the device that committed a removal, or `Command::RefreshShares`):
//! `RefreshStart` to every member (session bound to the member set and to the verifying
//! shares being refreshed) → each runs
//! part 1 and sends `RefreshRound1` to every other member → with all of them, part 2 and a
//! `RefreshRound2` to each member over the member link → with all of those, the refreshed
//! share, persisted (`Record::Refreshed`) → `RefreshDone` with the verifying shares and
//! the member's signature over them → C, once every member is done with the same list,
//! proposes `Refresh { shares, signatures }` (every member's signature included).
//!
//! Every member must take part (the refresh defines the new polynomial on exactly the
//! members), and the change carries every member's signed word that it holds its share:
//! a member left out could not switch, and the rest could no longer sign without it. The
//! votes are the usual quorum (needing every vote would let a member lost between its
//! word and its vote freeze the authority). A member that stays away stalls the refresh;
//! C starts over after [`ATTEMPT`], and the automatic start backs off.
//!
//! Who coordinates: the member with the lowest identifier, whenever the view still lists
//! verifying shares of identifiers that are no longer members (a removal happened since
//! the last refresh), at most once per [`AUTO_EVERY`]; or any member on
//! `Command::RefreshShares`. Several refreshes may run at once (say two coordinators):
//! members keep every refreshed share they computed, keyed by its verifying shares, and
//! switch to the one the agreed change names.

use std::collections::BTreeMap;
use std::time::Duration;

use frost::keys::dkg::{round1, round2};
use frost::keys::{refresh, KeyPackage, PublicKeyPackage};
use frost::Identifier;
use frost_ristretto255 as frost;

use super::authority_impl::ident;
use super::authority_impl::Share;
use super::{CommandError, Event, Peer, Pending};
use crate::authority::{refresh_session, AuthMsg, AuthorityView};
use crate::journal::{AuthorityId, TreeOpKind};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::Record;
use crate::time::Instant;

/// How long one refresh session gets before the coordinator starts a new one.
const ATTEMPT: Duration = Duration::from_secs(60);
/// Sessions before the coordinator gives up (`Command::RefreshShares` starts again).
const MAX_ATTEMPTS: u32 = 5;
/// How long a member keeps a session.
const RUN_TTL: Duration = Duration::from_secs(180);
/// Sessions a member keeps at once (one per coordinator).
const MAX_RUNS: usize = 4;
/// Refreshed shares kept while waiting for a change to name one.
const MAX_PENDING: usize = 8;
/// How often the lowest-identifier member starts a refresh a removal made due (doubling
/// after each failed round of attempts, up to [`AUTO_MAX`]).
const AUTO_EVERY: Duration = Duration::from_secs(60);
const AUTO_MAX: Duration = Duration::from_secs(3600);
/// How often the coordinator repeats `RefreshStart` within an attempt.
const START_EVERY: Duration = Duration::from_secs(3);

/// Refresh as this device sees it.
#[derive(Default)]
pub(crate) struct RefreshState {
    lead: Option<Lead>,
    runs: BTreeMap<[u8; 32], Run>,
    /// Refreshed shares waiting for a `Refresh` change to name one, by their verifying
    /// shares (with the group key). Cleared when a refresh applies.
    /// The number orders them by age (the oldest goes when the map is full).
    pending: BTreeMap<ShareList, ([u8; 32], Share, u64)>,
    pending_seq: u64,
    /// When the lowest-identifier member may start the next refresh on its own, and how
    /// many rounds of attempts failed in a row.
    auto_at: Instant,
    auto_failures: u32,
    /// The verifying shares the public package was last made to follow (so that it is
    /// rebuilt only when they change, not on every change of the authority).
    followed: Option<BTreeMap<u16, [u8; 32]>>,
}

struct Lead {
    session: [u8; 32],
    nonce: [u8; 32],
    authority: AuthorityId,
    base: [u8; 32],
    members: Vec<u16>,
    done: BTreeMap<u16, (ShareList, crate::journal::Sig64)>,
    started: Instant,
    attempt: u32,
    /// When `RefreshStart` went out last.
    sent: Instant,
}

struct Run {
    coordinator: DeviceId,
    authority: AuthorityId,
    base: [u8; 32],
    members: Vec<(u16, DeviceId)>,
    me: u16,
    r1_secret: Option<round1::SecretPackage>,
    r1_msg: AuthMsg,
    r1s: BTreeMap<Identifier, round1::Package>,
    r2_secret: Option<round2::SecretPackage>,
    r2_out: Vec<(DeviceId, AuthMsg)>,
    r2s: BTreeMap<Identifier, round2::Package>,
    persisting: bool,
    done: Option<AuthMsg>,
    started: Instant,
}

/// Every member's verifying share, ascending by identifier.
type ShareList = Vec<(u16, [u8; 32])>;

/// Verifying shares of a public key package, ascending by identifier.
fn share_list(public: &PublicKeyPackage) -> Vec<(u16, [u8; 32])> {
    public
        .verifying_shares()
        .iter()
        .filter_map(|(id, vs)| {
            let b: [u8; 32] = vs.serialize().ok()?.try_into().ok()?;
            Some((super::authority_impl::identifier_number(id), b))
        })
        .collect()
}

fn member_ids(view: &AuthorityView) -> Vec<u16> {
    let mut ids: Vec<u16> = view.members.values().map(|m| m.identifier).collect();
    ids.sort();
    ids
}

impl Peer {
    /// `Command::RefreshShares` (and after a removal this device committed).
    pub(super) fn start_refresh(&mut self) -> Result<(), CommandError> {
        let view = self.my_authority().ok_or(CommandError::NotInAuthority)?.clone();
        if !self.shares.contains_key(&view.group_key) {
            return Err(CommandError::NotInAuthority);
        }
        if self
            .refresh
            .lead
            .as_ref()
            .is_some_and(|l| l.members == member_ids(&view))
        {
            return Err(CommandError::Busy);
        }
        self.lead_refresh(&view, 0);
        Ok(())
    }

    fn lead_refresh(&mut self, view: &AuthorityView, attempt: u32) {
        let me = self.keys.id;
        let members = member_ids(view);
        let base = view.share_base();
        let nonce = self.rng.bytes32();
        let session = refresh_session(&view.id, &me, &base, &members, &nonce);
        self.refresh.lead = Some(Lead {
            session,
            nonce,
            authority: view.id,
            base,
            members,
            done: BTreeMap::new(),
            started: self.now.mono,
            attempt,
            sent: self.now.mono,
        });
        self.send_refresh_starts();
        self.arm_auth_tick();
    }

    /// To every member, done or not: a member that is done resends its packages, which
    /// another may still miss.
    fn send_refresh_starts(&mut self) {
        let now = self.now.mono;
        let Some(l) = self.refresh.lead.as_mut() else { return };
        l.sent = now;
        let Some(l) = &self.refresh.lead else { return };
        let Some(view) = self.views.0.get(&l.authority) else {
            return;
        };
        let msg = AuthMsg::RefreshStart {
            session: l.session,
            nonce: l.nonce,
            authority: l.authority,
            base: l.base,
            members: l.members.clone(),
        };
        let to: Vec<DeviceId> = l
            .members
            .iter()
            .filter_map(|i| view.member_by_identifier(*i).map(|(d, _)| *d))
            .collect();
        for d in to {
            self.send_auth(d, msg.clone());
        }
    }

    pub(super) fn refresh_busy(&self) -> bool {
        self.refresh.lead.is_some() || !self.refresh.runs.is_empty() || self.refresh_due_here()
    }

    /// Whether this device should start a refresh by itself: the view still lists
    /// verifying shares of removed identifiers, and this is the lowest-identifier member
    /// holding a share.
    fn refresh_due_here(&self) -> bool {
        let me = self.keys.id;
        let Some(view) = self.my_authority() else { return false };
        let stale = view.verifying_shares.keys().copied().collect::<Vec<_>>() != member_ids(view);
        let first = view.members.iter().min_by_key(|(_, m)| m.identifier).map(|(d, _)| *d);
        // A proven equivocator is to be removed first (that makes a refresh due anyway):
        // it could refuse its part for ever.
        let clean = view.members.keys().all(|d| !view.equivocators.contains(d));
        stale && clean && first == Some(me) && self.shares.contains_key(&view.group_key)
    }

    pub(super) fn on_refresh(&mut self, from: DeviceId, msg: AuthMsg) {
        match msg {
            AuthMsg::RefreshStart {
                session,
                nonce,
                authority,
                base,
                members,
            } => self.on_refresh_start(from, session, nonce, authority, base, members),
            AuthMsg::RefreshRound1 {
                session,
                from: i,
                package,
            } => self.on_refresh_r1(from, session, i, package),
            AuthMsg::RefreshRound2 {
                session,
                from: i,
                package,
            } => self.on_refresh_r2(from, session, i, package),
            AuthMsg::RefreshDone {
                session,
                from: i,
                shares,
                sig,
            } => self.on_refresh_done(from, session, i, shares, sig),
            _ => {}
        }
    }

    fn on_refresh_start(
        &mut self,
        from: DeviceId,
        session: [u8; 32],
        nonce: [u8; 32],
        authority: AuthorityId,
        base: [u8; 32],
        members: Vec<u16>,
    ) {
        if refresh_session(&authority, &from, &base, &members, &nonce) != session {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if let Some(r) = self.refresh.runs.get(&session) {
            if r.coordinator != from {
                return self.metrics.drop(DropReason::UnexpectedFrame);
            }
            // The coordinator still misses something: send everything again.
            let mut again: Vec<(DeviceId, AuthMsg)> = r
                .members
                .iter()
                .filter(|(i, _)| *i != r.me)
                .map(|(_, d)| (*d, r.r1_msg.clone()))
                .collect();
            again.extend(r.r2_out.iter().cloned());
            if let Some(m) = &r.done {
                again.push((from, m.clone()));
            }
            self.send_auths(again);
            return;
        }
        let me = self.keys.id;
        let Some(view) = self.my_authority().filter(|v| v.id == authority).cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let (Some(my), true) = (view.members.get(&me), self.shares.contains_key(&view.group_key)) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        // The member set and the shares being refreshed, not the prestate: changes that
        // keep both (a threshold change) may apply meanwhile.
        if member_ids(&view) != members || view.share_base() != base || !view.members.contains_key(&from) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        // A newer session from the same coordinator replaces its older one.
        self.refresh.runs.retain(|_, r| r.coordinator != from);
        if self.refresh.runs.len() >= MAX_RUNS {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        let me_ident = my.identifier;
        let n = members.len() as u16;
        let Some(id) = ident(me_ident) else { return };
        // Round 1 drawn from the share and the session: after a restart this member sends
        // the same package again, which the others may already hold.
        let mut seed = self.shares[&view.group_key].key.signing_share().serialize();
        seed.extend_from_slice(&session);
        let rng = crate::rng::PeerRng::from_seed(blake3::derive_key("aura 2026-12 refresh round 1", &seed));
        let Ok((secret, package)) = refresh::refresh_dkg_part1(id, n, view.key_threshold, rng) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let Ok(bytes) = package.serialize() else { return };
        let r1_msg = AuthMsg::RefreshRound1 {
            session,
            from: me_ident,
            package: bytes,
        };
        let list: Vec<(u16, DeviceId)> = view.members.iter().map(|(d, m)| (m.identifier, *d)).collect();
        for (_, d) in list.iter().filter(|(i, _)| *i != me_ident) {
            self.send_auth(*d, r1_msg.clone());
        }
        self.refresh.runs.insert(
            session,
            Run {
                coordinator: from,
                authority,
                base,
                members: list,
                me: me_ident,
                r1_secret: Some(secret),
                r1_msg,
                r1s: BTreeMap::new(),
                r2_secret: None,
                r2_out: Vec::new(),
                r2s: BTreeMap::new(),
                persisting: false,
                done: None,
                started: self.now.mono,
            },
        );
        self.arm_auth_tick();
    }

    /// The run of `session`, if `from` is the member with identifier `i` in it.
    fn run_from(&mut self, session: &[u8; 32], from: &DeviceId, i: u16) -> Option<&mut Run> {
        let r = self.refresh.runs.get_mut(session)?;
        (i != r.me && r.members.iter().any(|(j, d)| *j == i && d == from)).then_some(r)
    }

    fn on_refresh_r1(&mut self, from: DeviceId, session: [u8; 32], i: u16, package: Vec<u8>) {
        let (Some(id), Ok(p)) = (ident(i), round1::Package::deserialize(&package)) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let Some(r) = self.run_from(&session, &from, i) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        r.r1s.entry(id).or_insert(p);
        if r.r1s.len() + 1 < r.members.len() || r.r2_secret.is_some() {
            return;
        }
        let Some(secret) = r.r1_secret.take() else { return };
        let Ok((secret2, out)) = refresh::refresh_dkg_part2(secret, &r.r1s) else {
            // A package that does not fit: this session cannot finish.
            self.refresh.runs.remove(&session);
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let me = r.me;
        let mut msgs = Vec::new();
        for (to, p) in out {
            let j = super::authority_impl::identifier_number(&to);
            let (Some((_, d)), Ok(bytes)) = (r.members.iter().find(|(k, _)| *k == j), p.serialize()) else {
                continue;
            };
            msgs.push((
                *d,
                AuthMsg::RefreshRound2 {
                    session,
                    from: me,
                    package: bytes,
                },
            ));
        }
        r.r2_secret = Some(secret2);
        r.r2_out = msgs.clone();
        self.send_auths(msgs);
        self.refresh_finish(session);
    }

    fn on_refresh_r2(&mut self, from: DeviceId, session: [u8; 32], i: u16, package: Vec<u8>) {
        let (Some(id), Ok(p)) = (ident(i), round2::Package::deserialize(&package)) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let Some(r) = self.run_from(&session, &from, i) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        r.r2s.entry(id).or_insert(p);
        self.refresh_finish(session);
    }

    /// With every round-2 package in: the refreshed share, persisted before it is reported.
    fn refresh_finish(&mut self, session: [u8; 32]) {
        let Some(r) = self.refresh.runs.get(&session) else {
            return;
        };
        let n = r.members.len();
        if r.persisting || r.done.is_some() || r.r1s.len() + 1 < n || r.r2s.len() + 1 < n {
            return;
        }
        let Some(secret2) = &r.r2_secret else { return };
        let Some(view) = self.my_authority() else { return };
        // The shares moved since this run started (another refresh applied), or the
        // members changed: its result would mix two polynomials, or never apply.
        let mut members: Vec<u16> = r.members.iter().map(|(i, _)| *i).collect();
        members.sort();
        if view.share_base() != r.base || member_ids(view) != members {
            self.refresh.runs.remove(&session);
            return;
        }
        let Some(old) = self.shares.get(&view.group_key) else {
            return;
        };
        let group_key = view.group_key;
        let result = refresh::refresh_dkg_shares(secret2, &r.r1s, &r.r2s, old.public.clone(), old.key.clone());
        let Ok((key, public)) = result else {
            self.refresh.runs.remove(&session);
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let (Ok(kb), Ok(pb)) = (key.serialize(), public.serialize()) else {
            return;
        };
        if let Some(r) = self.refresh.runs.get_mut(&session) {
            r.persisting = true;
        }
        self.persist(
            Record::Refreshed {
                session,
                group_key,
                key_package: kb,
                public_key_package: pb,
            },
            Pending::Refreshed {
                session,
                share: Box::new(Share { key, public }),
            },
        );
    }

    /// Our refreshed share is durable: report it, and keep it until the change applies.
    pub(super) fn refreshed_durable(&mut self, session: [u8; 32], share: Share) {
        let group_key: [u8; 32] = match share.public.verifying_key().serialize() {
            Ok(b) => b.try_into().unwrap_or([0; 32]),
            Err(_) => return,
        };
        let shares = share_list(&share.public);
        self.keep_pending(shares.clone(), group_key, share);
        // The change naming it may have applied already (a coordinator that did not
        // wait for everyone).
        if let Some(view) = self.my_authority().cloned() {
            self.maybe_switch_share(&view);
        }
        let Some(r) = self.refresh.runs.get_mut(&session) else {
            return;
        };
        r.persisting = false;
        // The round secrets are no longer needed.
        r.r2_secret = None;
        r.r2s.clear();
        let (me, authority) = (r.me, r.authority);
        // Our word that we hold this share, durably: what lets everyone switch.
        let attestation = crate::journal::RefreshOp::attestation(&authority, &shares);
        let sig = crate::journal::Sig64(self.keys.sign(&mut self.rng, &attestation));
        let Some(r) = self.refresh.runs.get_mut(&session) else {
            return;
        };
        let msg = AuthMsg::RefreshDone {
            session,
            from: me,
            shares,
            sig,
        };
        r.done = Some(msg.clone());
        let to = r.coordinator;
        self.send_auth(to, msg);
    }

    /// After a restart: a refreshed share waits for its change.
    pub(super) fn restore_refreshed(&mut self, key_package: &[u8], public_key_package: &[u8]) {
        if let (Ok(key), Ok(public)) = (
            KeyPackage::deserialize(key_package),
            PublicKeyPackage::deserialize(public_key_package),
        ) {
            let gk: Option<[u8; 32]> = public.verifying_key().serialize().ok().and_then(|b| b.try_into().ok());
            if let Some(gk) = gk {
                self.keep_pending(share_list(&public), gk, Share { key, public });
            }
        }
    }

    /// The shares in use and the refreshed ones still pending (for record compaction).
    pub fn live_keys(&self) -> crate::record::LiveKeys {
        crate::record::LiveKeys {
            shares: self
                .shares
                .iter()
                .filter_map(|(gk, s)| Some((*gk, (s.key.serialize().ok()?, s.public.serialize().ok()?))))
                .collect(),
            pending: self
                .refresh
                .pending
                .values()
                .filter_map(|(_, s, _)| s.key.serialize().ok())
                .collect(),
        }
    }

    /// Keeps a refreshed share until a change names it (the oldest goes when full).
    fn keep_pending(&mut self, list: ShareList, group_key: [u8; 32], share: Share) {
        if self.refresh.pending.len() >= MAX_PENDING && !self.refresh.pending.contains_key(&list) {
            let oldest = self
                .refresh
                .pending
                .iter()
                .min_by_key(|(_, (_, _, seq))| *seq)
                .map(|(l, _)| l.clone());
            if let Some(l) = oldest {
                self.refresh.pending.remove(&l);
            }
        }
        self.refresh.pending_seq += 1;
        let seq = self.refresh.pending_seq;
        self.refresh.pending.insert(list, (group_key, share, seq));
    }

    fn on_refresh_done(
        &mut self,
        from: DeviceId,
        session: [u8; 32],
        i: u16,
        shares: Vec<(u16, [u8; 32])>,
        sig: crate::journal::Sig64,
    ) {
        let Some(l) = self.refresh.lead.as_mut().filter(|l| l.session == session) else {
            return;
        };
        let key = self
            .views
            .0
            .get(&l.authority)
            .and_then(|v| v.member_by_identifier(i))
            .filter(|(d, _)| **d == from)
            .map(|(_, m)| m.cert.signing);
        let attestation = crate::journal::RefreshOp::attestation(&l.authority, &shares);
        let signed = key.is_some_and(|k| crate::journal::schnorr_ok(&k, &attestation, &sig));
        if !signed || !l.members.contains(&i) || shares.len() != l.members.len() {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        l.done.entry(i).or_insert((shares, sig));
        self.propose_refresh();
    }

    /// Every member is done with the same verifying shares: agree to switch.
    fn propose_refresh(&mut self) {
        let Some(l) = &self.refresh.lead else { return };
        if l.done.len() < l.members.len() {
            return;
        }
        let first = l.done.values().next().map(|(s, _)| s.clone()).unwrap_or_default();
        if l.done.values().any(|(s, _)| *s != first) {
            // Members computed different shares: start over.
            let attempt = l.attempt + 1;
            self.refresh.lead = None;
            if let Some(view) = self.my_authority().cloned() {
                if attempt < MAX_ATTEMPTS {
                    self.lead_refresh(&view, attempt);
                }
            }
            return;
        }
        let op = crate::journal::RefreshOp {
            shares: first,
            signatures: l.done.iter().map(|(i, (_, sig))| (*i, *sig)).collect(),
        };
        // Busy (another change from this state is being agreed) is retried on the tick.
        let _ = self.propose_change(TreeOpKind::Refresh(op));
    }

    /// Whether this device can switch to the refreshed shares `list` (it holds its own).
    pub(super) fn holds_refresh(&self, view: &AuthorityView, list: &[(u16, [u8; 32])]) -> bool {
        self.refresh
            .pending
            .get(list)
            .is_some_and(|(gk, _, _)| *gk == view.group_key)
    }

    /// A `Refresh` change applied: switch to the refreshed share it describes, and drop
    /// the other refreshed shares (they lie on polynomials nobody uses).
    pub(super) fn maybe_switch_share(&mut self, view: &AuthorityView) {
        let me = self.keys.id;
        let Some(my) = view.members.get(&me) else { return };
        let current: Vec<(u16, [u8; 32])> = view.verifying_shares.iter().map(|(i, y)| (*i, *y)).collect();
        // Shares for another member set can never be named (identifiers are not reused).
        let ids = member_ids(view);
        self.refresh
            .pending
            .retain(|l, _| l.iter().map(|(i, _)| *i).collect::<Vec<_>>() == ids);
        let Some((gk, mut share, _)) = self.refresh.pending.remove(&current) else {
            // No switch, but the public package follows the agreed verifying shares when
            // ours is among them (members removed drop out of it). A log compacted after
            // a refresh carries the refreshed share from the start; with this, replaying
            // it ends with the same package as replaying the whole log.
            if self.refresh.followed.as_ref() == Some(&view.verifying_shares) {
                return;
            }
            if let Some(s) = self.shares.get_mut(&view.group_key) {
                let mine = s.key.verifying_share().serialize().ok();
                if view.verifying_shares.get(&my.identifier).map(|b| b.to_vec()) == mine {
                    if let Some(p) = super::enroll_impl::public_package(view) {
                        s.public = p;
                        self.refresh.followed = Some(view.verifying_shares.clone());
                    }
                }
            }
            return;
        };
        let mine: Option<Vec<u8>> = share.key.verifying_share().serialize().ok();
        if gk != view.group_key || view.verifying_shares.get(&my.identifier).map(|b| b.to_vec()) != mine {
            return;
        }
        // The public package from the agreed list, not from what the run computed.
        if let Some(p) = super::enroll_impl::public_package(view) {
            share.public = p;
        }
        self.shares.insert(gk, share);
        self.refresh.pending.clear();
        self.refresh.auto_failures = 0;
        if self.refresh.lead.as_ref().is_some_and(|l| l.authority == view.id) {
            self.refresh.lead = None;
        }
        if !self.restoring {
            self.event(Event::SharesRefreshed { authority: view.id });
        }
    }

    pub(super) fn refresh_tick(&mut self) {
        let now = self.now.mono;
        self.refresh.runs.retain(|_, r| r.started.saturating_add(RUN_TTL) > now);
        let base = self.my_authority().map(|v| v.share_base());
        self.refresh.runs.retain(|_, r| Some(r.base) == base);
        if self.refresh.lead.is_none() && self.refresh_due_here() && self.refresh.auto_at <= now {
            // The next automatic round waits longer after each that failed.
            let wait = AUTO_EVERY
                .saturating_mul(1 << self.refresh.auto_failures.min(6))
                .min(AUTO_MAX);
            self.refresh.auto_at = now.saturating_add(wait);
            let _ = self.start_refresh();
            return;
        }
        let Some(l) = &self.refresh.lead else { return };
        let Some(view) = self.my_authority().filter(|v| v.id == l.authority).cloned() else {
            self.refresh.lead = None;
            return;
        };
        let all_done = l.done.len() == l.members.len();
        // Another change altered the members or the shares: the run is void.
        let void = member_ids(&view) != l.members || view.share_base() != l.base;
        if void || (!all_done && l.started.saturating_add(ATTEMPT) <= now) {
            let attempt = l.attempt + 1;
            self.refresh.lead = None;
            if attempt < MAX_ATTEMPTS {
                self.lead_refresh(&view, attempt);
            } else {
                self.refresh.auto_failures = self.refresh.auto_failures.saturating_add(1);
                self.event(Event::RefreshFailed {
                    reason: "not every member took part in time".into(),
                });
            }
        } else if all_done {
            // Everyone holds the refreshed share: keep asking until the change applies
            // (a proposal can lose to another change from the same state).
            self.propose_refresh();
        } else if l.sent.saturating_add(START_EVERY) <= now {
            self.send_refresh_starts();
        }
    }
}
