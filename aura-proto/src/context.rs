//! Relational contexts: the view reduced from a context journal.
//!
//! A context joins two or more authorities. Its creation fact
//! ([`ContextGenesis`](crate::journal::ContextGenesis)) names the authorities and their member devices and is signed by
//! its creator; `ContextId` is the hash of that body. The context is *established* once,
//! for every authority, at least one of its member devices has signed the creation or an
//! acceptance ([`ContextAccept`](crate::journal::ContextAccept)): no authority is pulled into a context by another's word
//! alone. The first secret (epoch 0) is sealed with HPKE to each member device by the
//! creator, as device-signed `SealedSecret` facts. Every later epoch is decided by one of
//! the context's authorities through its own consensus: the group-signed commit (which
//! carries the new secret sealed to every member and the deciding authority's current
//! devices) is copied into the context journal as a `ContextEpoch` fact. The member list
//! of each authority follows its latest such change.
//!
//! Like the authority view, [`ContextView::reduce`] is a pure function of the fact set.

use std::collections::{BTreeMap, BTreeSet};

use crate::journal::{
    decode_epoch_change, AuthorityId, ContextEpochOp, ContextId, ContextMember, FactBody, FactId, Journal, KeyLookup,
    Namespace, SealedSecret,
};
use crate::keys::DeviceId;

/// The epoch a context is in, when an authority decided it (epoch 0 comes with the
/// creation and has no decider).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// The authority that decided it.
    pub authority: AuthorityId,
    /// Commitment to its secret.
    pub commitment: [u8; 32],
    /// The secret sealed to each member device.
    pub sealed: Vec<SealedSecret>,
}

/// A relational context as its journal says it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextView {
    /// Hash of the creation body.
    pub id: ContextId,
    /// The creation fact's id.
    pub genesis: FactId,
    /// The device that created it.
    pub creator: DeviceId,
    /// The authorities joined, ascending.
    pub authorities: Vec<AuthorityId>,
    /// Member devices by id: for each authority, the devices its latest epoch change
    /// lists, or the creation's list if it never changed the epoch.
    pub members: BTreeMap<DeviceId, ContextMember>,
    /// Authorities one of whose members signed the creation or an acceptance.
    pub accepted: BTreeSet<AuthorityId>,
    /// The current epoch: the highest any authority decided, or 0.
    pub epoch: u64,
    /// Members a secret of `epoch` is sealed to.
    pub sealed_to: BTreeSet<DeviceId>,
    /// Who decided the current epoch (`None` at epoch 0).
    pub decided: Option<Decided>,
    /// Every decided epoch (the current one last): a device that skipped some still
    /// opens their secrets, for members that are behind.
    pub epochs: BTreeMap<u64, Decided>,
    /// For each authority, the epoch of the member list in use (0: the creation's).
    pub lists: BTreeMap<AuthorityId, u64>,
    /// Group keys of the authorities whose genesis the journal holds (to check the
    /// epoch changes they sign).
    pub group_keys: BTreeMap<AuthorityId, [u8; 32]>,
    /// The signing key of every device the creation or a change ever listed: facts they
    /// wrote verify whenever they arrive (whether a fact is accepted must not depend on
    /// arrival order). Devices no longer members cannot reach members any more (their
    /// handshakes are refused), so they cannot push anything new.
    pub known: BTreeMap<DeviceId, [u8; 32]>,
}

/// Decided epochs a view keeps (the secrets of the latest few are kept by peers).
const KEEP_EPOCHS: usize = 8;

impl ContextView {
    /// Reduces the journal of context `id`; `None` without its creation fact.
    ///
    /// Epoch changes entered the journal only after [`crate::journal::verify_fact`]
    /// checked their group signatures. The authorities take turns: epoch `e` can only be
    /// decided by [`ContextView::owner`]`(e)` (a change of another authority for it does
    /// not count), so no two authorities ever decide one epoch, and the epoch number
    /// names one secret. An authority that wants a new epoch takes its next turn,
    /// skipping the others' numbers: nobody waits for anybody. Should one authority
    /// still sign two changes for one epoch (a broken consensus), the lower commitment
    /// wins, so every device settles on the same secret.
    pub fn reduce(journal: &Journal, id: ContextId) -> Option<ContextView> {
        let ns = Namespace::Context(id);
        let (gfact, g) = journal.facts(&ns).find_map(|f| match &f.body {
            FactBody::ContextGenesis(g) if g.context_id() == id => Some((f, g)),
            _ => None,
        })?;
        let genesis = gfact.id();
        let group_keys = g
            .authorities
            .iter()
            .filter_map(|a| {
                journal.facts(&Namespace::Authority(*a)).find_map(|f| match &f.body {
                    FactBody::Genesis(ag) if ag.authority_id() == *a => Some((*a, ag.group_key)),
                    _ => None,
                })
            })
            .collect();
        let mut v = ContextView {
            id,
            genesis,
            creator: gfact.author,
            authorities: g.authorities.clone(),
            accepted: BTreeSet::new(),
            members: BTreeMap::new(),
            epoch: 0,
            sealed_to: BTreeSet::new(),
            decided: None,
            epochs: BTreeMap::new(),
            lists: g.authorities.iter().map(|a| (*a, 0)).collect(),
            group_keys,
            known: BTreeMap::new(),
        };
        v.accept_by(&gfact.author, &g.members);
        // Each authority's changes, one per epoch (the lower commitment, should a broken
        // consensus have signed two), in its turns only.
        let mut changes: BTreeMap<u64, (AuthorityId, ContextEpochOp)> = BTreeMap::new();
        for f in journal.facts(&ns) {
            match &f.body {
                FactBody::ContextAccept(a) if a.genesis == genesis => v.accept_by(&f.author, &g.members),
                // The creation's secret, sealed by the creator.
                FactBody::SealedSecret(s)
                    if s.epoch == 0 && f.author == gfact.author && g.members.iter().any(|m| m.cert.id() == s.to) =>
                {
                    v.sealed_to.insert(s.to);
                }
                FactBody::ContextEpoch(bytes) => {
                    let Some((c, _)) = decode_epoch_change(bytes, &id) else {
                        continue;
                    };
                    if v.owner(c.op.epoch) != Some(c.authority) {
                        continue;
                    }
                    let lower = changes
                        .get(&c.op.epoch)
                        .is_none_or(|(_, o)| c.op.commitment < o.commitment);
                    if lower {
                        changes.insert(c.op.epoch, (c.authority, c.op));
                    }
                }
                _ => {}
            }
        }
        // In ascending order: an epoch more than two rounds of turns past the last one
        // is ignored (with all after it), so nobody can push the numbers out of reach;
        // a device another authority's list (or the creation) already gave to that
        // authority is left out of a later list (so no authority can claim another's
        // devices; its sealed copy is harmless, the device being a member anyway).
        let mut claimed: BTreeMap<DeviceId, AuthorityId> =
            g.members.iter().map(|m| (m.cert.id(), m.authority)).collect();
        let mut latest: BTreeMap<AuthorityId, Vec<ContextMember>> = BTreeMap::new();
        let step = 2 * v.authorities.len() as u64;
        let mut last = 0u64;
        for (e, (a, op)) in changes {
            if e > last.saturating_add(step) {
                break;
            }
            last = e;
            let mine: Vec<ContextMember> = op
                .members
                .into_iter()
                .filter(|m| *claimed.entry(m.cert.id()).or_insert(a) == a)
                .collect();
            for m in &mine {
                v.known.insert(m.cert.id(), m.cert.signing);
            }
            v.lists.insert(a, e);
            latest.insert(a, mine);
            v.epochs.insert(
                e,
                Decided {
                    authority: a,
                    commitment: op.commitment,
                    sealed: op.sealed,
                },
            );
        }
        for m in &g.members {
            v.known.insert(m.cert.id(), m.cert.signing);
            if !latest.contains_key(&m.authority) {
                v.members.insert(m.cert.id(), m.clone());
            }
        }
        for list in latest.into_values() {
            for m in list {
                v.members.insert(m.cert.id(), m);
            }
        }
        if let Some((e, d)) = v.epochs.last_key_value() {
            v.epoch = *e;
            v.sealed_to = d.sealed.iter().map(|s| s.to).collect();
            v.decided = Some(d.clone());
        }
        // Only the latest epochs' secrets are of use (peer_context.rs keeps four).
        while v.epochs.len() > KEEP_EPOCHS {
            v.epochs.pop_first();
        }
        Some(v)
    }

    fn accept_by(&mut self, device: &DeviceId, founders: &[ContextMember]) {
        if let Some(m) = founders.iter().find(|m| m.cert.id() == *device) {
            self.accepted.insert(m.authority);
        }
    }

    /// Whether every authority has taken part (its own device signed the creation or an
    /// acceptance).
    pub fn established(&self) -> bool {
        self.authorities.iter().all(|a| self.accepted.contains(a))
    }

    /// The authority that decides epoch `e` (from 1 on, the authorities in ascending
    /// order, in turn).
    pub fn owner(&self, e: u64) -> Option<AuthorityId> {
        let k = self.authorities.len() as u64;
        let i = e.checked_sub(1)? % k.max(1);
        self.authorities.get(i as usize).copied()
    }

    /// The first epoch after `after` that `authority` decides.
    pub fn next_epoch_of(&self, authority: &AuthorityId, after: u64) -> Option<u64> {
        let i = self.authorities.iter().position(|a| a == authority)? as u64;
        let k = self.authorities.len() as u64;
        // Epochs i + 1, i + 1 + k, i + 1 + 2k, ... are this authority's.
        let first = i + 1;
        let e = if after < first {
            first
        } else {
            first.checked_add((after - first) / k * k)?.checked_add(k)?
        };
        Some(e)
    }

    /// The authority a member device speaks for.
    pub fn authority_of(&self, device: &DeviceId) -> Option<AuthorityId> {
        self.members.get(device).map(|m| m.authority)
    }
}

/// Member keys of a context, for verifying its device-signed facts (acceptances, sealed
/// secrets, receipt seals).
impl KeyLookup for ContextView {
    /// Contexts have no group key of their own; an authority of the context's has its
    /// own (for the epoch changes it signs).
    fn group_key(&self, ns: &Namespace) -> Option<[u8; 32]> {
        match ns {
            Namespace::Authority(a) if self.authorities.contains(a) => self.group_keys.get(a).copied(),
            _ => None,
        }
    }

    fn device_key(&self, ns: &Namespace, device: &DeviceId) -> Option<[u8; 32]> {
        if *ns != Namespace::Context(self.id) {
            return None;
        }
        self.known.get(device).copied()
    }
}
