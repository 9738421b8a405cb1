//! Threshold authorities: the view reduced from an authority journal, and the messages of
//! distributed key generation and threshold signing.
//!
//! The message-driven machines themselves live with the [`Peer`](crate::Peer) (they need its
//! channels and persistence); this module holds the pure parts.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::journal::{AuthorityId, Fact, FactBody, FactId, Genesis, Journal, KeyLookup, Member, Namespace, TreeOpKind};
use crate::keys::DeviceId;

const CTX_TREE_COMMITMENT: &str = "aura 2026-11 tree commitment";

/// Why a tree operation did not apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeOpReject {
    /// Its parent is not the current state: a replay of an old op or the losing side of a fork.
    StaleParent,
    /// It would break the tree (unknown device, duplicate identifier, threshold out of range).
    Invalid,
    /// A commit without a valid quorum of member votes for its instance.
    NoQuorum,
}

/// An authority as its journal says it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityView {
    /// Hash of the genesis body.
    pub id: AuthorityId,
    /// The genesis fact's id.
    pub genesis: FactId,
    /// Signatures needed.
    pub threshold: u16,
    /// The threshold the group key was generated with: FROST cannot sign with fewer
    /// shares, so no change may take the authority below it (until key generation for
    /// membership changes exists).
    pub key_threshold: u16,
    /// Group verifying key.
    pub group_key: [u8; 32],
    /// Root key of the authority's capability tokens.
    pub cap_root: [u8; 32],
    /// Members by device id.
    pub members: BTreeMap<DeviceId, Member>,
    /// Number of tree operations applied.
    pub epoch: u64,
    /// Commitment to the tree state (chained over applied ops).
    pub commitment: [u8; 32],
    /// Tree operations that did not apply, and why.
    pub rejected: Vec<(FactId, TreeOpReject)>,
    /// Members proven (by an equivocation fact) to have voted twice at one ballot. A
    /// grow-only set that does not move the prestate; devices stop counting these in
    /// consensus, and removing them for good is a tree change like any other.
    pub equivocators: BTreeSet<DeviceId>,
    /// The devices the genesis lists (they took part in the key generation).
    pub founders: BTreeSet<DeviceId>,
    /// The FROST identifier the next added device gets. Identifiers are never reused: a
    /// device added under a removed device's identifier would be handed the removed
    /// device's share.
    pub next_identifier: u16,
    /// Verifying share of every identifier ever given out: the genesis lists those of
    /// the founders, and an added device's is the point of the same polynomial at its
    /// identifier (interpolated from the founders'), so every member can check the
    /// newcomer's signature shares without trusting anything it says.
    pub verifying_shares: BTreeMap<u16, [u8; 32]>,
    /// The last epoch this authority decided for each relational context (an epoch
    /// change must go above it, so the authority decides each epoch at most once).
    pub context_epochs: BTreeMap<crate::journal::ContextId, u64>,
}

fn next_commitment(prev: &[u8; 32], fact: &FactId) -> [u8; 32] {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(prev);
    m[32..].copy_from_slice(&fact.0);
    blake3::derive_key(CTX_TREE_COMMITMENT, &m)
}

impl AuthorityView {
    /// Reduces the journal of authority `id`. A pure function of the fact set: the order in
    /// which facts arrived cannot change the result. `None` without a genesis.
    pub fn reduce(journal: &Journal, id: AuthorityId) -> Option<AuthorityView> {
        let mut v = Self::from_genesis(journal, id)?;
        for (fid, f) in journal.entries(&Namespace::Authority(id)) {
            v.step(fid, f);
        }
        Some(v)
    }

    /// Every prestate the reduction of authority `id` moved past: no instance from one
    /// of them can ever be decided again, since the view never goes back (its epoch only
    /// grows). Votes and promises from them are dead (record compaction drops them).
    pub fn left_behind(journal: &Journal, id: AuthorityId) -> BTreeSet<[u8; 32]> {
        let mut out = BTreeSet::new();
        let Some(mut v) = Self::from_genesis(journal, id) else {
            return out;
        };
        for (fid, f) in journal.entries(&Namespace::Authority(id)) {
            let before = v.prestate();
            v.step(fid, f);
            if v.prestate() != before {
                out.insert(before);
            }
        }
        out
    }

    /// The view right after the genesis, before any other fact.
    fn from_genesis(journal: &Journal, id: AuthorityId) -> Option<AuthorityView> {
        let ns = Namespace::Authority(id);
        let (gfact, genesis) = journal.facts(&ns).find_map(|f| match &f.body {
            FactBody::Genesis(g) if g.authority_id() == id => Some((f, g)),
            _ => None,
        })?;
        let gid = gfact.id();
        let v = AuthorityView {
            id,
            genesis: gid,
            threshold: genesis.threshold,
            key_threshold: genesis.threshold,
            group_key: genesis.group_key,
            cap_root: genesis.cap_root,
            members: genesis
                .members
                .iter()
                // Genesis certs were verified before the fact entered the journal.
                .map(|m| (m.cert.id(), m.clone()))
                .collect(),
            epoch: 0,
            commitment: next_commitment(&[0; 32], &gid),
            rejected: Vec::new(),
            equivocators: BTreeSet::new(),
            founders: genesis.members.iter().map(|m| m.cert.id()).collect(),
            next_identifier: genesis
                .members
                .iter()
                .map(|m| m.identifier)
                .max()
                .unwrap_or(0)
                .saturating_add(1),
            verifying_shares: genesis.verifying_shares.iter().copied().collect(),
            context_epochs: BTreeMap::new(),
        };
        Some(v)
    }

    /// Applies one fact that sorts after every fact this view was reduced from (tree
    /// operations and commits change the tree, equivocation proofs the equivocator set;
    /// other facts do nothing). Reducing a
    /// journal is folding `step` over its facts in order, so a fact appended at the end
    /// can be applied to the last view instead of reducing the whole journal again
    /// (which would check every earlier commit's votes once more).
    pub fn step(&mut self, fid: FactId, f: &Fact) {
        self.step_checked(fid, f, false)
    }

    /// [`AuthorityView::step`] for a commit whose vote signatures this device already
    /// checked (`votes_checked`): everything else about it is checked as usual.
    pub fn step_checked(&mut self, fid: FactId, f: &Fact, votes_checked: bool) {
        let outcome = match &f.body {
            FactBody::TreeOp(op) if op.parent_epoch != self.epoch || op.parent_commitment != self.commitment => {
                Err(TreeOpReject::StaleParent)
            }
            FactBody::TreeOp(op) => self.apply(&op.kind).then_some(()).ok_or(TreeOpReject::Invalid),
            FactBody::Commit(c) => self.apply_commit(c, votes_checked),
            FactBody::Equivocation(e) => {
                let voter = self.members.get(&e.first.voter).map(|m| m.cert.signing);
                if let Some(Ok(d)) = voter.map(|k| e.check(&k)) {
                    self.equivocators.insert(d);
                }
                return;
            }
            FactBody::HiddenVote(h) => {
                let voter = self.members.get(&h.vote.voter).map(|m| m.cert.signing);
                if let Some(Ok(d)) = voter.map(|k| h.check(&k)) {
                    self.equivocators.insert(d);
                }
                return;
            }
            _ => return,
        };
        match outcome {
            Ok(()) => {
                self.epoch += 1;
                // A commit chains by its instance, not by its fact: one instance can be
                // recorded as more than one fact (two gatherers, a different vote set,
                // another Lamport clock), and every copy must lead to the same state, or
                // a later change agreed from one copy's state would be undone when the
                // other copy sorts first.
                let link = match &f.body {
                    FactBody::Commit(c) => FactId(c.id.0),
                    _ => fid,
                };
                self.commitment = next_commitment(&self.commitment, &link);
            }
            Err(why) => self.rejected.push((fid, why)),
        }
    }

    /// The hash consensus instances of this authority are bound to: its id, tree epoch
    /// and commitment (which chains every applied operation).
    pub fn prestate(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("aura 2026-12 authority prestate");
        h.update(&self.id.0);
        h.update(&self.epoch.to_le_bytes());
        h.update(&self.commitment);
        h.finalize().into()
    }

    /// A committed tree operation: bound to the current prestate, carried by a quorum of
    /// this view's members, and a valid change.
    fn apply_commit(&mut self, c: &crate::consensus::Commit, votes_checked: bool) -> Result<(), TreeOpReject> {
        if c.prestate != self.prestate() {
            return Err(TreeOpReject::StaleParent);
        }
        let keys: BTreeMap<DeviceId, [u8; 32]> = self.members.iter().map(|(d, m)| (*d, m.cert.signing)).collect();
        c.check_votes(&keys, self.threshold, !votes_checked)
            .map_err(|_| TreeOpReject::NoQuorum)?;
        let mut scratch = Vec::new();
        let kind: TreeOpKind = crate::wire::strict_decode(&c.op, &mut scratch).map_err(|_| TreeOpReject::Invalid)?;
        self.apply(&kind).then_some(()).ok_or(TreeOpReject::Invalid)
    }

    /// Whether change `kind` would apply to this view.
    pub fn applies(&self, kind: &TreeOpKind) -> bool {
        self.clone().apply(kind)
    }

    fn apply(&mut self, kind: &TreeOpKind) -> bool {
        match kind {
            TreeOpKind::AddDevice(m) => {
                let Some(id) = m.cert.verify() else { return false };
                if self.members.contains_key(&id) || m.identifier != self.next_identifier || m.identifier == u16::MAX {
                    return false;
                }
                let Some(share) = self.share_at(m.identifier) else {
                    return false;
                };
                self.verifying_shares.insert(m.identifier, share);
                self.members.insert(id, m.clone());
                self.next_identifier += 1;
                true
            }
            TreeOpKind::RemoveDevice(d) => {
                let floor = self.threshold.max(self.key_threshold) as usize;
                if !self.members.contains_key(d) || self.members.len() - 1 < floor {
                    return false;
                }
                self.members.remove(d);
                true
            }
            TreeOpKind::ChangeThreshold(t) => {
                if *t < 2 || *t < self.key_threshold || *t as usize > self.members.len() {
                    return false;
                }
                self.threshold = *t;
                true
            }
            TreeOpKind::Refresh(op) => {
                let list = &op.shares;
                // Every member attests that it holds its refreshed share and computed this
                // list: then everyone can switch (a quorum of votes suffices to agree on
                // it), and a coordinator that gave two groups different round-1 packages
                // cannot get one group's list through.
                let msg = crate::journal::RefreshOp::attestation(&self.id, list);
                let mut by_ident: Vec<(u16, [u8; 32])> =
                    self.members.values().map(|m| (m.identifier, m.cert.signing)).collect();
                by_ident.sort();
                let attested = op.signatures.len() == by_ident.len()
                    && op
                        .signatures
                        .iter()
                        .zip(&by_ident)
                        .all(|((i, sig), (j, key))| i == j && crate::journal::schnorr_ok(key, &msg, sig));
                if !attested {
                    return false;
                }
                // Exactly the members, ascending, on one polynomial through the group key.
                let ids: Vec<u16> = self
                    .members
                    .values()
                    .map(|m| m.identifier)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let listed: Vec<u16> = list.iter().map(|(i, _)| *i).collect();
                let t = self.key_threshold as usize;
                if listed != ids || list.len() < t {
                    return false;
                }
                let basis = &list[..t];
                let on_curve = interpolate_share(basis, 0) == Some(self.group_key)
                    && list[t..].iter().all(|(i, y)| interpolate_share(basis, *i) == Some(*y));
                if !on_curve {
                    return false;
                }
                self.verifying_shares = list.iter().copied().collect();
                true
            }
            TreeOpKind::ContextEpoch(op) => {
                // Exactly the current members, with the keys this view knows for them.
                let same = op.members.len() == self.members.len()
                    && op.members.iter().all(|m| {
                        self.members
                            .get(&m.cert.id())
                            .is_some_and(|am| am.cert.same_keys(&m.cert))
                    });
                let above = op.epoch > self.context_epochs.get(&op.context).copied().unwrap_or(0);
                if !(same && above && op.well_formed(&self.id)) {
                    return false;
                }
                self.context_epochs.insert(op.context, op.epoch);
                true
            }
        }
    }

    /// The verifying share of identifier `x`: interpolated from the first `key_threshold`
    /// shares the genesis lists (any that many determine the polynomial).
    pub fn share_at(&self, x: u16) -> Option<[u8; 32]> {
        let basis: Vec<(u16, [u8; 32])> = self
            .verifying_shares
            .iter()
            .take(self.key_threshold as usize)
            .map(|(i, y)| (*i, *y))
            .collect();
        (basis.len() == self.key_threshold as usize)
            .then(|| interpolate_share(&basis, x))
            .flatten()
    }

    /// A hash of the current verifying shares: which polynomial the shares lie on.
    pub fn share_base(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("aura 2026-12 share base");
        for (i, y) in &self.verifying_shares {
            h.update(&i.to_le_bytes());
            h.update(y);
        }
        h.finalize().into()
    }

    /// Votes a commit needs at `ballot`: a fast quorum at ballot 0, a quorum after. (A
    /// share refresh needs no more: it carries every member's attestation in the
    /// operation instead, which a member lost before voting cannot withhold.)
    pub fn votes_needed(&self, ballot: u32) -> usize {
        let n = self.members.len();
        match ballot {
            0 => crate::consensus::fast_quorum(n, self.threshold),
            _ => crate::consensus::quorum(n, self.threshold),
        }
    }

    /// Finds a member by FROST identifier.
    pub fn member_by_identifier(&self, identifier: u16) -> Option<(&DeviceId, &Member)> {
        self.members.iter().find(|(_, m)| m.identifier == identifier)
    }
}

/// The point at `x` of the polynomial (in the exponent) through `basis`, a set of
/// (identifier, verifying share) pairs with distinct identifiers: Lagrange
/// interpolation over the group. At `x = 0` it is the group key; at a newcomer's
/// identifier, the verifying share its repaired share must match.
pub fn interpolate_share(basis: &[(u16, [u8; 32])], x: u16) -> Option<[u8; 32]> {
    use frost_ristretto255::{Field, Group, RistrettoGroup, RistrettoScalarField};
    type F = RistrettoScalarField;
    let scalar = |i: u16| {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&i.to_le_bytes());
        F::deserialize(&b).ok()
    };
    let xs = scalar(x)?;
    let mut acc = RistrettoGroup::identity();
    for (k, (i, y)) in basis.iter().enumerate() {
        let xi = scalar(*i)?;
        let (mut num, mut den) = (F::one(), F::one());
        for (l, (j, _)) in basis.iter().enumerate() {
            if l != k {
                let xj = scalar(*j)?;
                num *= xs - xj;
                den *= xi - xj;
            }
        }
        let lambda = num * F::invert(&den).ok()?;
        let point = RistrettoGroup::deserialize(y).ok()?;
        acc += point * lambda;
    }
    RistrettoGroup::serialize(&acc).ok()
}

/// Keys known from a set of reduced authorities.
#[derive(Clone, Debug, Default)]
pub struct Views(pub BTreeMap<AuthorityId, AuthorityView>);

impl KeyLookup for Views {
    fn group_key(&self, ns: &Namespace) -> Option<[u8; 32]> {
        match ns {
            Namespace::Authority(id) => self.0.get(id).map(|v| v.group_key),
            Namespace::Context(_) => None,
        }
    }
    fn device_key(&self, ns: &Namespace, device: &DeviceId) -> Option<[u8; 32]> {
        match ns {
            Namespace::Authority(id) => self.0.get(id)?.members.get(device).map(|m| m.cert.signing),
            Namespace::Context(_) => None,
        }
    }
}

/// An unsigned fact a signing session is asked to produce a group signature for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedFact {
    /// Namespace.
    pub namespace: Namespace,
    /// Lamport clock.
    pub lamport: u64,
    /// Requesting device.
    pub author: DeviceId,
    /// Content.
    pub body: FactBody,
}

impl UnsignedFact {
    /// The bytes the group signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        Fact::signing_bytes(&self.namespace, self.lamport, &self.author, &self.body)
    }
}

/// Sub-protocol messages carried in channel frames (postcard inside `Frame::Proto`).
// Messages are built, encoded and dropped at once; their size spread costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMsg {
    /// Coordinator → member: join key generation.
    DkgInvite {
        /// Session id.
        session: [u8; 32],
        /// Signatures needed.
        threshold: u16,
        /// All members, identifiers 1..=n.
        members: Vec<Member>,
    },
    /// Member → coordinator: my round-1 package (public).
    DkgRound1 {
        /// Session.
        session: [u8; 32],
        /// Sender identifier.
        from: u16,
        /// Serialized `round1::Package`.
        package: Vec<u8>,
    },
    /// Coordinator → members: every round-1 package.
    DkgRound1All {
        /// Session.
        session: [u8; 32],
        /// By identifier.
        packages: Vec<(u16, Vec<u8>)>,
    },
    /// Member → coordinator: my round-2 packages, each HPKE-sealed to its recipient, so
    /// the coordinator relays them without being able to read them.
    DkgRound2 {
        /// Session.
        session: [u8; 32],
        /// Sender identifier.
        from: u16,
        /// (recipient identifier, HPKE enc, ciphertext).
        sealed: Vec<(u16, [u8; 32], Vec<u8>)>,
    },
    /// Coordinator → member: the sealed round-2 packages addressed to it.
    DkgRound2Deliver {
        /// Session.
        session: [u8; 32],
        /// (sender identifier, HPKE enc, ciphertext).
        packages: Vec<(u16, [u8; 32], Vec<u8>)>,
    },
    /// Member → coordinator: my share is durable; this is the group key I computed.
    DkgDone {
        /// Session.
        session: [u8; 32],
        /// Sender identifier.
        from: u16,
        /// Group key.
        group_key: [u8; 32],
    },
    /// Coordinator → member: commit to a signing session for this fact.
    SignRequest {
        /// Session.
        session: [u8; 32],
        /// Which key.
        group_key: [u8; 32],
        /// What will be signed.
        fact: UnsignedFact,
    },
    /// Member → coordinator: round-1 commitments.
    SignCommit {
        /// Session.
        session: [u8; 32],
        /// Sender identifier.
        from: u16,
        /// Serialized `SigningCommitments`.
        commitments: Vec<u8>,
    },
    /// Coordinator → chosen members: the chosen signers' commitments, byte for byte as
    /// they were sent (the message is the fact of the `SignRequest`).
    SignPackage {
        /// Session.
        session: [u8; 32],
        /// (identifier, serialized `SigningCommitments`), by identifier.
        commitments: Vec<(u16, Vec<u8>)>,
    },
    /// Member → coordinator: signature share.
    SignShare {
        /// Session.
        session: [u8; 32],
        /// Sender identifier.
        from: u16,
        /// Serialized `SignatureShare`.
        share: Vec<u8>,
    },
    /// Facts pushed to a member (encoded facts).
    Facts {
        /// Encoded facts.
        facts: Vec<Vec<u8>>,
    },
    /// The facts with these ids are durable at the sender.
    FactsAck {
        /// Fact ids.
        ids: Vec<FactId>,
    },
    /// Coordinator → members: this key generation was given up (its genesis was never
    /// recorded, so the key was never used); drop its shares.
    DkgAbandoned {
        /// Session.
        session: [u8; 32],
    },
    /// Anti-entropy: a reconciliation message of session `session`, round `round`, for
    /// `namespace` (see `crate::sync`).
    SyncQuery {
        /// Session chosen by the initiator.
        session: u64,
        /// Round within the session (answers carry it back).
        round: u32,
        /// The namespace reconciled.
        namespace: Namespace,
        /// Reconciliation message.
        msg: Vec<u8>,
    },
    /// The responder's answer to a `SyncQuery`.
    SyncAnswer {
        /// Session.
        session: u64,
        /// Round answered.
        round: u32,
        /// Reconciliation message.
        msg: Vec<u8>,
    },
    /// Asks for facts the sender lacks (answered with `Facts`).
    SyncFetch {
        /// The namespace.
        namespace: Namespace,
        /// Fact ids, at most 128.
        ids: Vec<FactId>,
    },
    /// A relational context shared with another device of the same person: the other
    /// authority's genesis, the context's facts (creation first) and the capability
    /// tokens the other authority issued. Acknowledged with `FactsAck` naming the
    /// creation fact.
    ContextShare {
        /// Encoded facts.
        facts: Vec<Vec<u8>>,
        /// Capability tokens.
        tokens: Vec<Vec<u8>>,
        /// Where the sender last reached the other authorities' devices (member hints in
        /// a genesis can be empty).
        addrs: Vec<(DeviceId, String)>,
    },
    /// To a note's author: these notes, which asked for confirmation, are durable here.
    Delivered {
        /// Note ids, at most 128.
        ids: Vec<FactId>,
    },
    /// Coordinator → members: agree on a tree change (an encoded `TreeOpKind`) from a
    /// prestate.
    Propose(crate::consensus::Proposal),
    /// Witness → coordinator: a vote (durable at the witness before it was sent).
    Voted {
        /// The vote.
        vote: crate::consensus::Vote,
    },
    /// Witness → coordinator: no vote, and why (with evidence).
    Refused {
        /// The instance.
        id: crate::consensus::ConsensusId,
        /// Why.
        refusal: crate::consensus::Refusal,
    },
    /// Fallback coordinator of `ballot` → members: promise to ignore lower ballots from
    /// `prestate` and report your highest vote.
    Prepare {
        /// The prestate.
        prestate: [u8; 32],
        /// The ballot (≥ 1), which the sender coordinates.
        ballot: u32,
    },
    /// Witness → fallback coordinator: the promise (durable at the witness before it was
    /// sent), with the witness's highest vote from that prestate and what it voted for.
    Promise {
        /// The prestate.
        prestate: [u8; 32],
        /// The ballot promised.
        ballot: u32,
        /// The highest vote cast from the prestate, with its proposal.
        last: Option<(crate::consensus::Vote, crate::consensus::Proposal)>,
        /// The same, signed by the witness (a promise that hid a vote is provable).
        cert: crate::consensus::PromiseCert,
    },
    /// Fallback coordinator → members: vote at `ballot` for this instance (the one the
    /// promises forced, or any if none did).
    Accept {
        /// The ballot.
        ballot: u32,
        /// The instance.
        proposal: crate::consensus::Proposal,
    },
    /// Proposer → members: `Propose`, and the signers listed (by FROST identifier, with
    /// the nonce commitment each set aside for the proposer) sign the commit header at
    /// `lamport` along with their vote.
    ProposeSigned {
        /// The instance.
        proposal: crate::consensus::Proposal,
        /// The commit fact's Lamport clock (the proposer authors it).
        lamport: u64,
        /// (identifier, serialized `SigningCommitments`) of the signers, ascending.
        commitments: Vec<(u16, Vec<u8>)>,
    },
    /// Witness → the one gathering its ballot: the vote (durable first), the share of the
    /// commit header if asked for, and a nonce commitment set aside for the next signing.
    VoteSigned {
        /// The vote.
        vote: crate::consensus::Vote,
        /// Serialized `SignatureShare`, if this witness was asked to sign and could.
        share: Option<Vec<u8>>,
        /// Serialized `SigningCommitments` set aside for the receiver.
        next: Option<Vec<u8>>,
    },
    /// Gatherer → chosen voters: sign the commit header of instance `id` at `lamport`
    /// with the nonces you set aside for me (listed).
    CommitPackage {
        /// The instance.
        id: crate::consensus::ConsensusId,
        /// The commit fact's Lamport clock.
        lamport: u64,
        /// (identifier, serialized `SigningCommitments`) of the signers, ascending.
        commitments: Vec<(u16, Vec<u8>)>,
    },
    /// Voter → gatherer: its share, and a fresh nonce commitment for next time.
    CommitShare {
        /// The instance.
        id: crate::consensus::ConsensusId,
        /// Serialized `SignatureShare`.
        share: Vec<u8>,
        /// Serialized `SigningCommitments` set aside for the receiver.
        next: Option<Vec<u8>>,
        /// Names the package signed (its Lamport clock and commitments).
        package: [u8; 32],
    },
    /// A nonce commitment set aside for the receiver (when a share could not be made).
    Nonce {
        /// Serialized `SigningCommitments`.
        commitment: Vec<u8>,
    },
    /// Fallback coordinator → members: `Accept`, and the signers listed sign the commit
    /// header at `lamport` along with their vote (as in `ProposeSigned`).
    AcceptSigned {
        /// The ballot.
        ballot: u32,
        /// The instance.
        proposal: crate::consensus::Proposal,
        /// The commit fact's Lamport clock (the coordinator authors it).
        lamport: u64,
        /// (identifier, serialized `SigningCommitments`) of the signers, ascending.
        commitments: Vec<(u16, Vec<u8>)>,
    },
    /// Added device → a device it paired with: I am a member of `authority` by its
    /// journal but hold no share; please have one made for me.
    EnrollAsk {
        /// The authority.
        authority: AuthorityId,
    },
    /// Enroller → each helper: repair the share of `newcomer` together with these helpers.
    EnrollStart {
        /// Enrollment session: [`enroll_session`] of the other fields, the enroller and
        /// `nonce`, so every helper of one session works with the same helper set and
        /// newcomer.
        session: [u8; 32],
        /// Chosen by the enroller.
        nonce: [u8; 32],
        /// The authority.
        authority: AuthorityId,
        /// The member that gets the share.
        newcomer: DeviceId,
        /// FROST identifiers of the helpers, ascending (at least the key threshold).
        helpers: Vec<u16>,
    },
    /// Helper → helper: its part (a `Delta`) for the receiver, over their member link.
    EnrollDelta {
        /// Enrollment session.
        session: [u8; 32],
        /// Sender's identifier.
        from: u16,
        /// Serialized `Delta`.
        delta: Vec<u8>,
    },
    /// Helper → enroller: the sum of the parts it received (a `Sigma`), HPKE-sealed to
    /// the newcomer (the enroller cannot open it).
    EnrollSigma {
        /// Enrollment session.
        session: [u8; 32],
        /// Sender's identifier.
        from: u16,
        /// HPKE encapsulated key.
        enc: [u8; 32],
        /// Sealed `Sigma`.
        sealed: Vec<u8>,
    },
    /// Enroller → newcomer: every helper's sealed sum; together they are its share.
    Enroll {
        /// Enrollment session.
        session: [u8; 32],
        /// The authority.
        authority: AuthorityId,
        /// (helper identifier, encapsulated key, sealed `Sigma`), ascending.
        sigmas: Vec<(u16, [u8; 32], Vec<u8>)>,
    },
    /// Newcomer → enroller: the share is durable.
    EnrollDone {
        /// Enrollment session.
        session: [u8; 32],
    },
    /// Coordinator → every member: refresh our shares (same key) among exactly these
    /// members, starting from the shares with these verifying shares.
    RefreshStart {
        /// [`refresh_session`] of the other fields, the coordinator and `nonce`.
        session: [u8; 32],
        /// Chosen by the coordinator.
        nonce: [u8; 32],
        /// The authority.
        authority: AuthorityId,
        /// [`AuthorityView::share_base`] of the shares being refreshed: every member
        /// must start from the same polynomial.
        base: [u8; 32],
        /// Every member's identifier, ascending.
        members: Vec<u16>,
    },
    /// Member → every other member: its refresh round-1 package.
    RefreshRound1 {
        /// Refresh session.
        session: [u8; 32],
        /// Sender's identifier.
        from: u16,
        /// Serialized `round1::Package`.
        package: Vec<u8>,
    },
    /// Member → one other member (over their member link): its round-2 package for it.
    RefreshRound2 {
        /// Refresh session.
        session: [u8; 32],
        /// Sender's identifier.
        from: u16,
        /// Serialized `round2::Package`.
        package: Vec<u8>,
    },
    /// Member → coordinator: refreshed share durable; the verifying shares it computed.
    RefreshDone {
        /// Refresh session.
        session: [u8; 32],
        /// Sender's identifier.
        from: u16,
        /// Every member's refreshed verifying share, ascending.
        shares: Vec<(u16, [u8; 32])>,
        /// The sender's signature over `RefreshOp::attestation` of `shares`.
        sig: crate::journal::Sig64,
    },
}

/// The id of an enrollment session. Helpers recompute it: with parts from helper sets
/// that differ between helpers, a faulty enroller could have the sums add up to a
/// combination of shares other than the newcomer's and, over a few sessions, solve for
/// the group secret.
pub fn enroll_session(
    authority: &AuthorityId,
    enroller: &DeviceId,
    newcomer: &DeviceId,
    helpers: &[u16],
    nonce: &[u8; 32],
) -> [u8; 32] {
    bound_session(
        "aura 2026-12 enroll session",
        authority,
        enroller,
        &newcomer.0,
        helpers,
        nonce,
    )
}

/// The id of a refresh session (binds the member set, so every member refreshes with
/// the same others).
pub fn refresh_session(
    authority: &AuthorityId,
    coordinator: &DeviceId,
    base: &[u8; 32],
    members: &[u16],
    nonce: &[u8; 32],
) -> [u8; 32] {
    bound_session(
        "aura 2026-12 refresh session",
        authority,
        coordinator,
        base,
        members,
        nonce,
    )
}

/// A session id that commits to who runs it, for what, and with which identifiers.
fn bound_session(
    ctx: &str,
    authority: &AuthorityId,
    runner: &DeviceId,
    subject: &[u8; 32],
    ids: &[u16],
    nonce: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(ctx);
    h.update(&authority.0);
    h.update(&runner.0);
    h.update(subject);
    h.update(&(ids.len() as u64).to_le_bytes());
    for i in ids {
        h.update(&i.to_le_bytes());
    }
    h.update(nonce);
    h.finalize().into()
}

/// The fact an unsigned fact becomes once the group signed it.
pub fn signed_fact(unsigned: &UnsignedFact, sig: [u8; 64]) -> Fact {
    Fact {
        namespace: unsigned.namespace,
        lamport: unsigned.lamport,
        author: unsigned.author,
        body: unsigned.body.clone(),
        sig: crate::journal::FactSig::Group(crate::journal::Sig64(sig)),
    }
}

/// The genesis a finished key generation produces (its namespace is its own hash).
pub fn genesis_unsigned(author: DeviceId, g: Genesis) -> UnsignedFact {
    UnsignedFact {
        namespace: Namespace::Authority(g.authority_id()),
        lamport: 0,
        author,
        body: FactBody::Genesis(g),
    }
}
