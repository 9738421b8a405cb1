//! Context epochs in [`Peer`]: a new secret for a relational context, decided by one of
//! its authorities (see `crate::context` and `spec/contexts.md`).
//!
//! 1. A member device of authority A proposes `TreeOpKind::ContextEpoch` to A's
//!    consensus: the next epoch, A's current devices, and a fresh secret sealed (HPKE) to
//!    every device of the context (A's current ones, the other authorities' as the
//!    context lists them) with a commitment to it. `Command::RekeyContext`, or by itself
//!    when A's devices no longer match the context's list for A (a device was added or
//!    removed): then the lowest-identifier member of A that holds the context proposes,
//!    retrying with a growing pause while it does not apply.
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
use crate::journal::{
    epoch_change_of, ContextEpochOp, ContextId, ContextMember, Fact, FactBody, Namespace, SealedSecret, TreeOpKind,
};
use crate::keys::DeviceId;
use crate::time::Instant;
use crate::wire;

/// First pause before an automatic rekey is tried again; it doubles up to `AUTO_MAX`.
const AUTO_FIRST: Duration = Duration::from_secs(2);
const AUTO_MAX: Duration = Duration::from_secs(600);
/// How long a device that did not gather a commit waits for another device's copy in
/// the context journal before it writes one.
const CARRY_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub(super) struct EpochState {
    /// Contexts whose automatic rekey is due here: when to try next, tries so far.
    auto: BTreeMap<ContextId, (Instant, u32)>,
    /// Decided epochs (context, epoch) missing from the context journal, since when.
    missing: BTreeMap<(ContextId, u64), Instant>,
    /// Copies being written.
    carrying: BTreeSet<(ContextId, u64)>,
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
        // The commit must fit one fact (it is copied into the context journal whole).
        if wire::encode(&op).len() + 2048 > crate::journal::MAX_FACT {
            return Err(CommandError::InvalidChange);
        }
        self.propose_change(TreeOpKind::ContextEpoch(op))
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
            let commit: Option<Fact> = self
                .journal
                .entries(&Namespace::Authority(view.id))
                .filter(|(fid, _)| !view.rejected.iter().any(|(r, _)| r == fid))
                .map(|(_, f)| f)
                .find(|f| {
                    matches!(&f.body, FactBody::Commit(_))
                        && epoch_change_of(&f.encode(), &ctx).is_some_and(|(c, _)| c.op.epoch == epoch)
                })
                .cloned();
            let Some(commit) = commit else { continue };
            if commit.author != me && since.saturating_add(CARRY_AFTER) > now {
                continue;
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
        let mut due: BTreeSet<ContextId> = BTreeSet::new();
        for (ctx, st) in &self.contexts {
            if !st.view.members.contains_key(&me) || !st.view.established() || !st.view.authorities.contains(&view.id) {
                continue;
            }
            // A decided epoch not carried yet is on its way; the list will follow it.
            let decided = view.context_epochs.get(ctx).copied().unwrap_or(0);
            if decided > st.view.lists.get(&view.id).copied().unwrap_or(0) && decided >= st.view.epoch {
                continue;
            }
            let listed: BTreeMap<DeviceId, &ContextMember> = st
                .view
                .members
                .iter()
                .filter(|(_, m)| m.authority == view.id)
                .map(|(d, m)| (*d, m))
                .collect();
            let same = listed.len() == view.members.len()
                && view
                    .members
                    .iter()
                    .all(|(d, m)| listed.get(d).is_some_and(|c| c.cert.same_keys(&m.cert)));
            // The current secret must be held by exactly the context's members: a
            // device of ours that lacks it (the epoch was decided from an older list of
            // ours), or a holder that is no member any more (removed by some
            // authority), needs a new epoch. Either authority may see the latter; an
            // extra epoch is harmless.
            let lacking = view.members.keys().any(|d| !st.view.sealed_to.contains(d));
            let stale = st.view.sealed_to.iter().any(|d| !st.view.members.contains_key(d));
            let same = same && !lacking && !stale;
            // The lowest-identifier member that holds the context proposes.
            let first = view
                .members
                .iter()
                .filter(|(d, _)| listed.contains_key(*d))
                .min_by_key(|(_, m)| m.identifier)
                .map(|(d, _)| *d);
            if !same && first == Some(me) {
                due.insert(*ctx);
            }
        }
        self.epochs.auto.retain(|c, _| due.contains(c));
        for ctx in due {
            let (at, tries) = *self.epochs.auto.entry(ctx).or_insert((now, 0));
            if at > now {
                continue;
            }
            let wait = AUTO_FIRST.saturating_mul(1 << tries.min(10)).min(AUTO_MAX);
            self.epochs
                .auto
                .insert(ctx, (now.saturating_add(wait), tries.saturating_add(1)));
            // Busy (another change from this state is open) or refused: the next try
            // comes after the pause.
            let _ = self.rekey_context(ctx);
        }
    }
}
