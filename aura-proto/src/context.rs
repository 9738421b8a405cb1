//! Relational contexts: the view reduced from a context journal.
//!
//! A context joins two or more authorities. Its creation fact
//! ([`ContextGenesis`](crate::journal::ContextGenesis)) names the authorities and their member devices and is signed by
//! its creator; `ContextId` is the hash of that body. The context is *established* once,
//! for every authority, at least one of its member devices has signed the creation or an
//! acceptance ([`ContextAccept`](crate::journal::ContextAccept)): no authority is pulled into a context by another's word
//! alone. Context secrets (one per epoch) are sealed with HPKE to each member device, as
//! device-signed `SealedSecret` facts in the context namespace.
//!
//! Like the authority view, [`ContextView::reduce`] is a pure function of the fact set.

use std::collections::{BTreeMap, BTreeSet};

use crate::journal::{AuthorityId, ContextId, ContextMember, FactBody, FactId, Journal, KeyLookup, Namespace};
use crate::keys::DeviceId;

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
    /// Member devices by id.
    pub members: BTreeMap<DeviceId, ContextMember>,
    /// Authorities one of whose members signed the creation or an acceptance.
    pub accepted: BTreeSet<AuthorityId>,
    /// Highest epoch for which a secret was sealed to some member.
    pub epoch: u64,
    /// Members a secret of `epoch` is sealed to.
    pub sealed_to: BTreeSet<DeviceId>,
}

impl ContextView {
    /// Reduces the journal of context `id`; `None` without its creation fact.
    pub fn reduce(journal: &Journal, id: ContextId) -> Option<ContextView> {
        let ns = Namespace::Context(id);
        let (gfact, g) = journal.facts(&ns).find_map(|f| match &f.body {
            FactBody::ContextGenesis(g) if g.context_id() == id => Some((f, g)),
            _ => None,
        })?;
        let members: BTreeMap<DeviceId, ContextMember> = g.members.iter().map(|m| (m.cert.id(), m.clone())).collect();
        let genesis = gfact.id();
        let mut v = ContextView {
            id,
            genesis,
            creator: gfact.author,
            authorities: g.authorities.clone(),
            accepted: BTreeSet::new(),
            members,
            epoch: 0,
            sealed_to: BTreeSet::new(),
        };
        v.accept_by(&gfact.author);
        for f in journal.facts(&ns) {
            match &f.body {
                FactBody::ContextAccept(a) if a.genesis == genesis => v.accept_by(&f.author),
                FactBody::SealedSecret(s) if v.members.contains_key(&f.author) && v.members.contains_key(&s.to) => {
                    if s.epoch > v.epoch {
                        v.epoch = s.epoch;
                        v.sealed_to.clear();
                    }
                    if s.epoch == v.epoch {
                        v.sealed_to.insert(s.to);
                    }
                }
                _ => {}
            }
        }
        Some(v)
    }

    fn accept_by(&mut self, device: &DeviceId) {
        if let Some(m) = self.members.get(device) {
            self.accepted.insert(m.authority);
        }
    }

    /// Whether every authority has taken part (its own device signed the creation or an
    /// acceptance).
    pub fn established(&self) -> bool {
        self.authorities.iter().all(|a| self.accepted.contains(a))
    }

    /// The authority a member device speaks for.
    pub fn authority_of(&self, device: &DeviceId) -> Option<AuthorityId> {
        self.members.get(device).map(|m| m.authority)
    }
}

/// Member keys of a context, for verifying its device-signed facts (acceptances, sealed
/// secrets, receipt seals).
impl KeyLookup for ContextView {
    fn group_key(&self, _: &Namespace) -> Option<[u8; 32]> {
        None // contexts have no group key
    }

    fn device_key(&self, ns: &Namespace, device: &DeviceId) -> Option<[u8; 32]> {
        if *ns != Namespace::Context(self.id) {
            return None;
        }
        self.members.get(device).map(|m| m.cert.signing)
    }
}
