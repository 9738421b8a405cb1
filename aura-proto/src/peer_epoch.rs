//! Context epochs in [`Peer`]: a new secret for a relational context, decided by one of
//! its authorities (see `crate::context` and `spec/contexts.md`).
//!
//! 1. A member device of authority A proposes `TreeOpKind::ContextEpoch` to A's
//!    consensus: the next epoch, A's current devices, and a fresh secret sealed (HPKE) to
//!    every device of the context (A's current ones, the other authorities' as the
//!    context lists them) with a commitment to it. `Command::RekeyContext`, or by itself
//!    when A's devices no longer match the context's list for A (a device was added or
//!    removed), or the current secret is not held by exactly the context's members: then
//!    the members of A that hold the context propose in identifier order (each next one
//!    30 s later, in case those before are down), retrying with a growing pause while it
//!    does not apply. A device whose own sealed copy does not open proposes at once.
//!    Members vote for such a change only if it is their authority's turn, not far
//!    ahead, sealed to exactly the members they know, and their own copy opens and
//!    matches the commitment (`Peer::epoch_agreeable`).
//! 2. Once the commit applies, a device of A copies the group-signed commit fact into
//!    the context journal (`FactBody::ContextEpoch`, signed by that device): at once if it
//!    gathered the commit, after a pause otherwise (so there is usually one copy, and
//!    always at least one while any of A's context devices runs).
//! 3. Every member reduces the context to the new epoch, opens its sealed copy, checks it
//!    against the commitment, and closes the channels of the old epoch. A member that
//!    missed the change still reaches the others with the previous epoch's keys; such a
//!    channel carries anti-entropy only, so it catches up (see `Peer::context_responder`).
//! 4. A device of A new to the context gets it from its own co-members (`ContextShare`);
//!    a removed device is in no list and gets no sealed copy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::authority_impl::hpke_seal;
use super::context_impl::{secret_aad, HPKE_INFO_CONTEXT};
use super::{CommandError, Peer};
use crate::authority::AuthorityView;
use crate::journal::{ContextEpochOp, ContextId, ContextMember, Fact, FactBody, Namespace, SealedSecret, TreeOpKind};
use crate::keys::DeviceId;
use crate::time::Instant;
use crate::wire;

/// First pause before an automatic rekey is tried again; it doubles up to `AUTO_MAX`.
const AUTO_FIRST: Duration = Duration::from_secs(2);
const AUTO_MAX: Duration = Duration::from_secs(600);
/// How much longer each next member (by identifier) waits before it proposes a rekey
/// that is due, in case the ones before it are down.
const AUTO_RANK_STEP: Duration = Duration::from_secs(30);
/// How long a device that did not gather a commit waits for another device's copy in
/// the context journal before it writes one.
const CARRY_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub(super) struct EpochState {
    /// Contexts whose automatic rekey is due here: due since, when to try next, tries.
    auto: BTreeMap<ContextId, (Instant, Instant, u32)>,
    /// Decided epochs (context, epoch) missing from the context journal, since when.
    missing: BTreeMap<(ContextId, u64), Instant>,
    /// Copies being written.
    carrying: BTreeSet<(ContextId, u64)>,
    /// Catch-up attempts towards a device, by (context, device, our epoch then).
    catch_up: BTreeMap<(ContextId, DeviceId, u64), u32>,
}

impl Peer {
    /// `Command::RekeyContext` (and the automatic rekey): propose the next epoch.
    pub(super) fn rekey_context(&mut self, ctx: ContextId) -> Result<(), CommandError> {
        let view = self.my_authority().ok_or(CommandError::NotInAuthority)?.clone();
        let me = self.keys.id;
        let st = self
            .contexts
            .get(&ctx)
            .filter(|s| s.view.members.contains_key(&me) && s.view.authorities.contains(&view.id))
            .filter(|s| s.view.established())
            .ok_or(CommandError::UnknownContext(ctx))?;
        let decided = view.context_epochs.get(&ctx).copied().unwrap_or(0);
        // Our next turn (the authorities take turns deciding epochs).
        let epoch = st
            .view
            .next_epoch_of(&view.id, st.view.epoch.max(decided))
            .ok_or(CommandError::InvalidChange)?;
        let mut members: Vec<ContextMember> = view
            .members
            .values()
            .map(|m| ContextMember {
                authority: view.id,
                cert: m.cert.clone(),
                addr: m.addr.clone(),
            })
            .collect();
        members.sort_by_key(|m| m.cert.id());
        let mut to: BTreeMap<DeviceId, [u8; 32]> = st
            .view
            .members
            .iter()
            .filter(|(_, m)| m.authority != view.id)
            .map(|(d, m)| (*d, m.cert.hpke))
            .collect();
        to.extend(members.iter().map(|m| (m.cert.id(), m.cert.hpke)));
        let secret = self.rng.bytes32();
        let mut sealed = Vec::with_capacity(to.len());
        for (d, hpke) in to {
            let (enc, ciphertext) = hpke_seal(
                &mut self.rng,
                &hpke,
                &secret_aad(&ctx, &d, epoch),
                HPKE_INFO_CONTEXT,
                &secret,
            )
            .ok_or(CommandError::InvalidChange)?;
            sealed.push(SealedSecret {
                to: d,
                epoch,
                enc,
                ciphertext,
            });
        }
        let op = ContextEpochOp {
            context: ctx,
            epoch,
            members,
            sealed,
            commitment: ContextEpochOp::commit_to(&ctx, epoch, &secret),
        };
        // The commit must fit one fact with its votes (about 200 bytes each), and its copy
        // in the context journal, in two envelopes.
        let votes = 256 * view.members.len();
        if wire::encode(&op).len() + votes + 1024 > crate::journal::MAX_FACT {
            return Err(CommandError::InvalidChange);
        }
        self.propose_change(TreeOpKind::ContextEpoch(op))
    }

    /// Whether this member votes for epoch change `op` of its authority `view`.
    ///
    /// A `fresh` instance (the fast ballot) must be its authority's turn, above every
    /// epoch this member knows of and at most two rounds of turns beyond, sealed to
    /// exactly this authority's current devices and the other authorities' devices as
    /// the context lists them, and this member's own copy must open and match the
    /// commitment (it cannot open the others' copies; a device whose copy fails asks for
    /// a new epoch itself). A member that does not hold the context yet (added since)
    /// checks only its own copy.
    ///
    /// At a fallback ballot (and when signing the commit) only what every member
    /// computes alike, or what can only become true over time, is checked: the turn and
    /// the bound. An instance a fallback ballot is bound to may already be agreed; were
    /// members to differ on it, no change could ever commit from that state again. A
    /// stale, short or garbled change that gets through costs a further epoch.
    pub(super) fn epoch_agreeable(&self, view: &AuthorityView, op: &ContextEpochOp, fresh: bool) -> bool {
        let me = self.keys.id;
        let own_copy = || {
            op.sealed
                .iter()
                .find(|s| s.to == me)
                .and_then(|s| self.open_secret(&op.context, s))
                .is_some_and(|k| ContextEpochOp::commit_to(&op.context, op.epoch, &k) == op.commitment)
        };
        let Some(st) = self.contexts.get(&op.context) else {
            return !fresh || own_copy();
        };
        if !st.view.authorities.contains(&view.id) {
            return false;
        }
        let floor = st
            .view
            .epoch
            .max(view.context_epochs.get(&op.context).copied().unwrap_or(0));
        let step = 2 * st.view.authorities.len() as u64;
        let bounded = st.view.owner(op.epoch) == Some(view.id) && op.epoch <= floor.saturating_add(step);
        if !fresh {
            return bounded;
        }
        let mut expect: BTreeSet<DeviceId> = st
            .view
            .members
            .iter()
            .filter(|(_, m)| m.authority != view.id)
            .map(|(d, _)| *d)
            .collect();
        expect.extend(view.members.keys().copied());
        let exact = op.sealed.iter().map(|s| s.to).eq(expect.iter().copied());
        bounded && op.epoch > floor && st.view.established() && exact && own_copy()
    }

    /// The epoch to open a catch-up channel to `peer` in (this device is behind it):
    /// the held secrets newest first, one older at each attempt, round and round.
    pub(super) fn catch_up_epoch(&mut self, ctx: ContextId, peer: DeviceId) -> Option<u64> {
        let st = self.contexts.get(&ctx)?;
        let current = st.view.epoch;
        let held: Vec<u64> = st.secrets.keys().rev().copied().collect();
        if held.is_empty() {
            return None;
        }
        // Attempts made in an epoch we left count no more.
        self.epochs
            .catch_up
            .retain(|(c, _, e), _| *c != ctx || self.contexts.get(c).is_some_and(|s| s.view.epoch == *e));
        let n = self.epochs.catch_up.entry((ctx, peer, current)).or_default();
        let e = held[*n as usize % held.len()];
        *n = n.wrapping_add(1);
        Some(e)
    }

    /// Whether anything about context epochs waits for the tick here.
    pub(super) fn epochs_busy(&self) -> bool {
        !self.epochs.auto.is_empty() || !self.epochs.missing.is_empty() || !self.epochs.carrying.is_empty()
    }

    /// Copies decided epochs into context journals, and proposes the automatic rekeys
    /// that are due. Runs after every change of this device's authority and on the tick.
    pub(super) fn epoch_upkeep(&mut self) {
        if self.restoring {
            return;
        }
        let contexts = &self.contexts;
        self.epochs
            .catch_up
            .retain(|(c, _, e), _| contexts.get(c).is_some_and(|s| s.view.epoch == *e));
        self.carry_epochs();
        self.auto_rekey();
        if self.epochs_busy() {
            self.arm_auth_tick();
        }
    }

    fn carry_epochs(&mut self) {
        let Some(view) = self.my_authority().cloned() else {
            self.epochs.missing.clear();
            return;
        };
        let me = self.keys.id;
        let now = self.now.mono;
        let mut want: BTreeSet<(ContextId, u64)> = BTreeSet::new();
        for (ctx, epoch) in &view.context_epochs {
            // A decision the context has moved past (it was agreed before this device
            // heard of a later epoch) is not carried: it would set no secret, and the
            // automatic rekey puts our current devices into a new epoch if they differ.
            let carried = self
                .contexts
                .get(ctx)
                .is_none_or(|s| s.view.lists.get(&view.id).is_some_and(|e| e >= epoch) || *epoch < s.view.epoch);
            if !carried {
                want.insert((*ctx, *epoch));
            }
        }
        self.epochs.missing.retain(|k, _| want.contains(k));
        self.epochs.carrying.retain(|k| want.contains(k));
        for (ctx, epoch) in want {
            if self.epochs.carrying.contains(&(ctx, epoch)) {
                continue;
            }
            let since = *self.epochs.missing.entry((ctx, epoch)).or_insert(now);
            // The applied commit of this epoch (copies of other instances were rejected).
            let commit: Option<(Fact, bool)> = self
                .journal
                .entries(&Namespace::Authority(view.id))
                .filter(|(fid, _)| !view.rejected.iter().any(|(r, _)| r == fid))
                .find_map(|(_, f)| {
                    let FactBody::Commit(c) = &f.body else { return None };
                    let mut scratch = Vec::new();
                    match wire::strict_decode::<TreeOpKind>(&c.op, &mut scratch) {
                        Ok(TreeOpKind::ContextEpoch(op)) if op.context == ctx && op.epoch == epoch => {
                            Some((f.clone(), op.members.iter().any(|m| m.cert.id() == me)))
                        }
                        _ => None,
                    }
                });
            // Only a device the change lists may carry it (its key comes from that list).
            let Some(mut commit) = commit.filter(|(_, listed)| *listed).map(|(f, _)| f) else {
                continue;
            };
            if commit.author != me && since.saturating_add(CARRY_AFTER) > now {
                continue;
            }
            // The votes are not covered by the group signature, and the other side cannot
            // check them (it does not hold our members' keys): the copy goes without.
            if let FactBody::Commit(c) = &mut commit.body {
                c.votes.clear();
            }
            let Some(st) = self.contexts.get(&ctx) else { continue };
            let ns = Namespace::Context(ctx);
            let others: BTreeSet<DeviceId> = st.view.members.keys().copied().filter(|d| *d != me).collect();
            let fact = self.device_fact(ns, FactBody::ContextEpoch(commit.encode()), &[]);
            self.epochs.carrying.insert((ctx, epoch));
            self.record_facts(vec![fact], Some(others));
        }
    }

    fn auto_rekey(&mut self) {
        let Some(view) = self.my_authority().cloned() else {
            self.epochs.auto.clear();
            return;
        };
        let me = self.keys.id;
        let now = self.now.mono;
        let mut due: BTreeMap<ContextId, Duration> = BTreeMap::new();
        // Contexts whose change is being carried keep their pause and tries (a change
        // that cannot settle the list must not be proposed again at once).
        let mut hold: BTreeSet<ContextId> = BTreeSet::new();
        for (ctx, st) in &self.contexts {
            if !st.view.members.contains_key(&me) || !st.view.established() || !st.view.authorities.contains(&view.id) {
                continue;
            }
            // A decided epoch not carried yet is on its way; the list will follow it.
            let decided = view.context_epochs.get(ctx).copied().unwrap_or(0);
            if decided > st.view.lists.get(&view.id).copied().unwrap_or(0) && decided >= st.view.epoch {
                hold.insert(*ctx);
                continue;
            }
            // Our devices as the context can list them: one it gives to another
            // authority (it will not move) is left out of the comparison.
            let ours: BTreeMap<DeviceId, &crate::journal::Member> = view
                .members
                .iter()
                .filter(|(d, _)| st.view.members.get(d).is_none_or(|m| m.authority == view.id))
                .map(|(d, m)| (*d, m))
                .collect();
            let listed: BTreeMap<DeviceId, &ContextMember> = st
                .view
                .members
                .iter()
                .filter(|(_, m)| m.authority == view.id)
                .map(|(d, m)| (*d, m))
                .collect();
            let same = listed.len() == ours.len()
                && ours
                    .iter()
                    .all(|(d, m)| listed.get(d).is_some_and(|c| c.cert.same_keys(&m.cert)));
            // The current secret must be held by exactly the context's members: a
            // device of ours that is not sent it (the epoch was decided from an older
            // list of ours), or a holder that is no member any more (removed by some
            // authority), needs a new epoch. Either authority may see the latter; an
            // extra epoch is harmless.
            let lacking = ours.keys().any(|d| !st.view.sealed_to.contains(d));
            let stale = st.view.sealed_to.iter().any(|d| !st.view.members.contains_key(d));
            // This device was sent a copy it cannot open, or that does not match the
            // signed commitment (a faulty sealer): only it can tell, so it asks at once.
            let unopened = st.view.decided.is_some()
                && st.view.sealed_to.contains(&me)
                && !st.secrets.contains_key(&st.view.epoch);
            if unopened {
                due.insert(*ctx, Duration::ZERO);
                continue;
            }
            if same && !lacking && !stale {
                continue;
            }
            // Members holding the context take it in identifier order: the first at once,
            // each next one a step later (in case those before it are down).
            let rank = view
                .members
                .iter()
                .filter(|(d, _)| listed.contains_key(*d))
                .map(|(d, m)| (m.identifier, *d))
                .collect::<BTreeSet<_>>()
                .iter()
                .position(|(_, d)| *d == me);
            if let Some(r) = rank {
                due.insert(*ctx, AUTO_RANK_STEP.saturating_mul(r as u32));
            }
        }
        self.epochs.auto.retain(|c, _| due.contains_key(c) || hold.contains(c));
        for (ctx, after) in due {
            let (since, at, tries) = *self.epochs.auto.entry(ctx).or_insert((now, now, 0));
            if at > now || since.saturating_add(after) > now {
                continue;
            }
            let wait = AUTO_FIRST.saturating_mul(1 << tries.min(10)).min(AUTO_MAX);
            self.epochs
                .auto
                .insert(ctx, (since, now.saturating_add(wait), tries.saturating_add(1)));
            // Busy (another change from this state is open) or refused: the next try
            // comes after the pause.
            let _ = self.rekey_context(ctx);
        }
    }
}
