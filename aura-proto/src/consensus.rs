//! Single-shot agreement bound to a prestate: the pure part.
//!
//! A non-monotone change (a tree operation, a context epoch bump) is agreed once per
//! *prestate*: the hash of the reduced state it applies to. An *instance* is one
//! operation proposed from one prestate; its id is `H(prestate, op, nonce)`. Several
//! instances may be proposed from one prestate (devices that did not hear of each other);
//! at most one of them commits.
//!
//! The agreement is single-decree Paxos with a fast first ballot, run by the members of
//! the authority, with device-signed [`Vote`]s as the accept messages:
//! - **Ballot 0** (the fast path) belongs to every proposer: a witness votes at ballot 0
//!   for the first instance it sees from a prestate and for no other. A commit at ballot
//!   0 needs [`fast_quorum`] votes.
//! - **Ballot b ≥ 1** (the fallback) belongs to one device, [`coordinator`] (a rotation
//!   of the members that depends on the prestate). It first gathers promises from a
//!   [`quorum`] of witnesses (each promises to ignore lower ballots and reports its
//!   highest vote), [`choose`]s the instance those reports force (or any if none is
//!   forced), then asks for votes at ballot b. A commit at ballot b ≥ 1 needs a
//!   [`quorum`], `max(t, n/2 + 1)`, of votes at that ballot.
//! - The fast quorum is large enough that a fallback coordinator can tell, from any
//!   quorum of promises, which ballot-0 instance may have committed: two commits from one
//!   prestate need a witness that broke the rules (two votes at one ballot are an
//!   [`Equivocation`] proof; see `spec/consensus.md` for what lying in a promise takes).
//!
//! A witness's state per prestate is [`Ballots`]; every vote and promise is persisted
//! before it leaves the device. A [`Commit`] carries the votes and the group's FROST
//! signature over the commit fact ([`CommitFrame`]); reducers check it vote by vote.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::journal::{schnorr_ok, Fact, FactBody, FactSig, Namespace, Sig64};
use crate::keys::{DeviceId, DeviceKeys};
use crate::rng::PeerRng;
use crate::wire;

/// A 32-byte hash.
pub type Hash32 = [u8; 32];

const CTX_ID: &str = "aura 2026-12 consensus instance id";
const CTX_OP: &str = "aura 2026-12 consensus operation";
const CTX_VOTE: &str = "aura 2026-12 consensus vote";
const CTX_BATCH: &str = "aura 2026-12 consensus vote batch blinding";
const CTX_PROMISE: &str = "aura 2026-12 consensus promise";

/// Identifies one instance: `H(prestate, op, nonce)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsensusId(pub Hash32);

/// The id of the instance agreeing on operation hash `op` from `prestate`; `nonce` keeps
/// two proposals of the same operation apart.
pub fn consensus_id(prestate: &Hash32, op: &Hash32, nonce: &[u8; 32]) -> ConsensusId {
    let mut h = blake3::Hasher::new_derive_key(CTX_ID);
    h.update(prestate);
    h.update(op);
    h.update(nonce);
    ConsensusId(h.finalize().into())
}

/// The hash votes carry for operation bytes `op`.
pub fn op_hash(op: &[u8]) -> Hash32 {
    blake3::derive_key(CTX_OP, op)
}

/// Votes a fallback commit (ballot ≥ 1) needs among `members` devices with signing
/// threshold `threshold`, and promises a fallback coordinator gathers: at least the
/// threshold and a strict majority.
pub fn quorum(members: usize, threshold: u16) -> usize {
    (threshold as usize).max(members / 2 + 1)
}

/// Votes a fast commit (ballot 0) needs: at least a [`quorum`], and enough that
/// `2 * fast + quorum > 2 * members`. Then among any quorum of promises at most one
/// ballot-0 instance can show enough votes to have committed (see [`choose`]). The fast
/// path needs all of 3 members, 3 of 4, 4 of 5, 6 of 7.
pub fn fast_quorum(members: usize, threshold: u16) -> usize {
    let q = quorum(members, threshold);
    q.max((members + 1).saturating_sub(q.div_ceil(2)))
}

/// Who coordinates ballot `ballot` (≥ 1) from `prestate`: the members in a rotation
/// that starts at a place the prestate picks, so no device leads every fallback. Ballot
/// 0 has no single coordinator (`None`), nor has an empty member set.
pub fn coordinator(members: &BTreeSet<DeviceId>, prestate: &Hash32, ballot: u32) -> Option<DeviceId> {
    if ballot == 0 || members.is_empty() {
        return None;
    }
    let order = rotation(members, prestate);
    Some(order[(ballot as usize - 1) % order.len()])
}

/// How long a witness waits for a commit before the next ballot is due: three observed
/// round trips, at least 200 ms.
pub fn fallback_timeout(rtt: Option<Duration>) -> Duration {
    const FLOOR: Duration = Duration::from_millis(200);
    rtt.map_or(FLOOR, |r| r.saturating_mul(3).max(FLOOR))
}

/// The order in which `members` coordinate fallback ballots from a prestate (`seed`):
/// ballot `k` is coordinated by the `k`-th device (cyclically). Every device computes
/// the same order from the same member set.
pub fn rotation(members: &BTreeSet<DeviceId>, seed: &Hash32) -> Vec<DeviceId> {
    let all: Vec<DeviceId> = members.iter().copied().collect();
    if all.is_empty() {
        return all;
    }
    let mut start = [0u8; 8];
    start.copy_from_slice(&seed[..8]);
    let start = (u64::from_le_bytes(start) % all.len() as u64) as usize;
    all[start..].iter().chain(&all[..start]).copied().collect()
}

/// An instance as its proposer made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The instance: `consensus_id(prestate, op_hash(op), nonce)`.
    pub id: ConsensusId,
    /// The prestate.
    pub prestate: Hash32,
    /// The operation's bytes.
    pub op: Vec<u8>,
    /// The proposer's nonce.
    pub nonce: [u8; 32],
    /// Who proposed it.
    pub proposer: DeviceId,
}

impl Proposal {
    /// Whether the id binds the prestate, operation and nonce.
    pub fn binds(&self) -> bool {
        consensus_id(&self.prestate, &op_hash(&self.op), &self.nonce) == self.id
    }
}

/// A witness's signed choice: from `prestate`, at ballot `ballot`, instance `id`
/// (operation hash `op`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// The instance.
    pub id: ConsensusId,
    /// The prestate the witness checked against its own reduced state.
    pub prestate: Hash32,
    /// Hash of the operation.
    pub op: Hash32,
    /// The ballot: 0 for the fast path, else the fallback ballot that asked for it.
    pub ballot: u32,
    /// The witness.
    pub voter: DeviceId,
    /// The witness's device signature over all of the above.
    pub sig: Sig64,
}

#[derive(Serialize)]
struct VoteBody<'a> {
    id: &'a ConsensusId,
    prestate: &'a Hash32,
    op: &'a Hash32,
    ballot: u32,
    voter: &'a DeviceId,
}

impl Vote {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = CTX_VOTE.as_bytes().to_vec();
        out.extend_from_slice(&wire::encode(&VoteBody {
            id: &self.id,
            prestate: &self.prestate,
            op: &self.op,
            ballot: self.ballot,
            voter: &self.voter,
        }));
        out
    }

    /// Signs a vote at `ballot` for the instance `p` with this device's key.
    pub fn sign(keys: &DeviceKeys, rng: &mut PeerRng, p: &Proposal, ballot: u32) -> Vote {
        let mut v = Vote {
            id: p.id,
            prestate: p.prestate,
            op: op_hash(&p.op),
            ballot,
            voter: keys.id,
            sig: Sig64([0; 64]),
        };
        v.sig = Sig64(keys.sign(rng, &v.signing_bytes()));
        v
    }

    /// Whether the signature verifies under the voter's signing key `key`.
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        schnorr_ok(key, &self.signing_bytes(), &self.sig)
    }

    /// Whether this is a vote for proposal `p`.
    pub fn is_for(&self, p: &Proposal) -> bool {
        self.id == p.id && self.prestate == p.prestate && self.op == op_hash(&p.op)
    }
}

/// Two votes of one member at one ballot for different instances from the same
/// prestate: no correct witness signs those.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Equivocation {
    /// The vote with the smaller instance id.
    pub first: Vote,
    /// The other one.
    pub second: Vote,
}

/// Why an equivocation proof does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EquivocationError {
    /// The votes are not by the same device.
    #[error("the votes are by different devices")]
    DifferentVoters,
    /// The votes are for different prestates (voting once per prestate is allowed).
    #[error("the votes are for different prestates")]
    DifferentPrestates,
    /// The votes are at different ballots (a witness may change its mind at a higher
    /// ballot when a fallback coordinator asks).
    #[error("the votes are at different ballots")]
    DifferentBallots,
    /// Both votes are for the same instance (repeating a vote is allowed).
    #[error("both votes are for the same instance")]
    SameInstance,
    /// A signature does not verify under the voter's key.
    #[error("a vote's signature does not verify")]
    BadSignature,
}

impl Equivocation {
    /// The proof formed by two votes, in canonical order; `None` if they do not conflict
    /// (signatures are checked by [`Equivocation::check`]).
    pub fn of(a: Vote, b: Vote) -> Option<Equivocation> {
        if a.voter != b.voter || a.prestate != b.prestate || a.ballot != b.ballot || a.id == b.id {
            return None;
        }
        let (first, second) = if a.id < b.id { (a, b) } else { (b, a) };
        Some(Equivocation { first, second })
    }

    /// Checks the proof with the voter's signing key; returns the equivocator.
    pub fn check(&self, key: &[u8; 32]) -> Result<DeviceId, EquivocationError> {
        let (a, b) = (&self.first, &self.second);
        if a.voter != b.voter {
            return Err(EquivocationError::DifferentVoters);
        }
        if a.prestate != b.prestate {
            return Err(EquivocationError::DifferentPrestates);
        }
        if a.ballot != b.ballot {
            return Err(EquivocationError::DifferentBallots);
        }
        if a.id == b.id {
            return Err(EquivocationError::SameInstance);
        }
        if !a.verify(key) || !b.verify(key) {
            return Err(EquivocationError::BadSignature);
        }
        Ok(a.voter)
    }
}

/// A witness's signed promise: from `prestate` it votes at no ballot below `ballot`, and
/// its highest vote so far is `last` (ballot and instance), or it has none. Signed, so
/// that a promise hiding a vote is provable ([`HiddenVote`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PromiseCert {
    /// The prestate.
    pub prestate: Hash32,
    /// The ballot promised.
    pub ballot: u32,
    /// The highest vote cast from the prestate: (ballot, instance).
    pub last: Option<(u32, ConsensusId)>,
    /// The witness.
    pub voter: DeviceId,
    /// The witness's device signature over all of the above.
    pub sig: Sig64,
}

#[derive(Serialize)]
struct PromiseBody<'a> {
    prestate: &'a Hash32,
    ballot: u32,
    last: &'a Option<(u32, ConsensusId)>,
    voter: &'a DeviceId,
}

impl PromiseCert {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = CTX_PROMISE.as_bytes().to_vec();
        out.extend_from_slice(&wire::encode(&PromiseBody {
            prestate: &self.prestate,
            ballot: self.ballot,
            last: &self.last,
            voter: &self.voter,
        }));
        out
    }

    /// Signs a promise of `ballot` from `prestate` reporting `last` as the highest vote.
    pub fn sign(
        keys: &DeviceKeys,
        rng: &mut PeerRng,
        prestate: Hash32,
        ballot: u32,
        last: Option<&Vote>,
    ) -> PromiseCert {
        let mut c = PromiseCert {
            prestate,
            ballot,
            last: last.map(|v| (v.ballot, v.id)),
            voter: keys.id,
            sig: Sig64([0; 64]),
        };
        c.sig = Sig64(keys.sign(rng, &c.signing_bytes()));
        c
    }

    /// Whether the signature verifies under the witness's signing key `key`.
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        schnorr_ok(key, &self.signing_bytes(), &self.sig)
    }

    /// Whether `vote` shows this promise hid a vote: the same witness and prestate, cast
    /// below the ballot promised (so before the promise: a witness never votes below a
    /// ballot it promised) and above the vote reported, or beside it at its ballot.
    pub fn hides(&self, vote: &Vote) -> bool {
        vote.voter == self.voter
            && vote.prestate == self.prestate
            && vote.ballot < self.ballot
            && match self.last {
                None => true,
                Some((b, id)) => vote.ballot > b || (vote.ballot == b && vote.id != id),
            }
    }
}

/// Proof that a member promised a ballot while hiding a vote it had cast from that
/// prestate: what a faulty member does to let a fallback ballot override an instance that
/// may have committed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HiddenVote {
    /// The signed promise.
    pub promise: PromiseCert,
    /// The vote it did not report.
    pub vote: Vote,
}

impl HiddenVote {
    /// Checks the proof with the witness's signing key; returns the witness.
    pub fn check(&self, key: &[u8; 32]) -> Result<DeviceId, EquivocationError> {
        if self.promise.voter != self.vote.voter {
            return Err(EquivocationError::DifferentVoters);
        }
        if self.promise.prestate != self.vote.prestate {
            return Err(EquivocationError::DifferentPrestates);
        }
        if !self.promise.hides(&self.vote) {
            return Err(EquivocationError::DifferentBallots);
        }
        if !self.promise.verify(key) || !self.vote.verify(key) {
            return Err(EquivocationError::BadSignature);
        }
        Ok(self.vote.voter)
    }
}

/// Why a witness does not vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The prestate is not this witness's reduced state; `mine` is (the coordinator
    /// needs it to catch up, or to see it is the one ahead).
    Prestate {
        /// The witness's own prestate.
        mine: Hash32,
    },
    /// The witness already voted at that ballot for another instance from this
    /// prestate: here is that vote (a fast proposer learns it lost the race).
    Voted(Vote),
    /// The operation does not apply to the witness's state (or does not decode).
    Invalid,
    /// The witness promised a fallback coordinator to ignore ballots below `ballot`.
    Promised {
        /// The ballot promised.
        ballot: u32,
    },
}

/// A witness's answer to a proposal (ballot 0) or to a fallback coordinator's request
/// for votes (ballot ≥ 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Vote: sign a new vote, persist it, only then send it.
    Vote,
    /// Already voted for this very instance at this ballot: send that vote again.
    Again(Vote),
    /// Do not vote.
    Refuse(Refusal),
}

/// A witness's answer to a fallback coordinator's prepare request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Promise {
    /// Promise (persist the promise, then send it) and report the highest vote cast.
    Give(Option<Vote>),
    /// Do not promise.
    Refuse(Refusal),
}

/// What a witness did from one prestate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The highest ballot promised (0: none).
    pub promised: u32,
    /// Votes cast, by ballot (one per ballot).
    pub votes: BTreeMap<u32, Vote>,
}

/// What a witness promised and voted, by prestate (rebuilt from its durable records on
/// restore). The rules: one vote per ballot; a ballot-0 vote only before any other vote
/// or promise; no vote below a ballot promised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ballots {
    by_prestate: BTreeMap<Hash32, Slot>,
}

impl Ballots {
    /// Whether to vote at `ballot` for instance `id` proposed from `prestate`, when this
    /// witness's own reduced state hashes to `mine`.
    pub fn decide(&self, mine: &Hash32, id: &ConsensusId, prestate: &Hash32, ballot: u32) -> Decision {
        if prestate != mine {
            return Decision::Refuse(Refusal::Prestate { mine: *mine });
        }
        let Some(slot) = self.by_prestate.get(prestate) else {
            return Decision::Vote;
        };
        match slot.votes.get(&ballot) {
            Some(v) if v.id == *id => return Decision::Again(v.clone()),
            Some(v) => return Decision::Refuse(Refusal::Voted(v.clone())),
            None => {}
        }
        if slot.promised > ballot {
            return Decision::Refuse(Refusal::Promised { ballot: slot.promised });
        }
        if ballot == 0 {
            // The fast ballot only before anything else (no promise: checked above).
            if let Some(v) = slot.votes.values().next_back() {
                return Decision::Refuse(Refusal::Voted(v.clone()));
            }
        }
        Decision::Vote
    }

    /// Whether to promise ballot `ballot` (≥ 1) from `prestate`.
    pub fn prepare(&self, mine: &Hash32, prestate: &Hash32, ballot: u32) -> Promise {
        if prestate != mine {
            return Promise::Refuse(Refusal::Prestate { mine: *mine });
        }
        let slot = self.by_prestate.get(prestate);
        let promised = slot.map_or(0, |s| s.promised);
        if ballot == 0 || ballot < promised {
            return Promise::Refuse(Refusal::Promised { ballot: promised });
        }
        Promise::Give(slot.and_then(|s| s.votes.values().next_back().cloned()))
    }

    /// Remembers a vote (decided by [`Ballots::decide`]). A second, different vote at one
    /// ballot is refused (the caller has a bug; nothing is overwritten).
    pub fn record(&mut self, vote: Vote) -> bool {
        let slot = self.by_prestate.entry(vote.prestate).or_default();
        match slot.votes.get(&vote.ballot) {
            Some(v) => *v == vote,
            None => {
                slot.promised = slot.promised.max(vote.ballot);
                slot.votes.insert(vote.ballot, vote);
                true
            }
        }
    }

    /// Remembers a promise.
    pub fn promise(&mut self, prestate: Hash32, ballot: u32) {
        let slot = self.by_prestate.entry(prestate).or_default();
        slot.promised = slot.promised.max(ballot);
    }

    /// What was done from `prestate`, if anything.
    pub fn slot(&self, prestate: &Hash32) -> Option<&Slot> {
        self.by_prestate.get(prestate)
    }

    /// Forgets prestates other than `keep` (a prestate left behind never comes back:
    /// prestates chain every applied change).
    pub fn retain(&mut self, keep: impl Fn(&Hash32) -> bool) {
        self.by_prestate.retain(|p, _| keep(p));
    }
}

/// What a fallback coordinator may ask votes for, given the highest votes a quorum of
/// witnesses reported in their promises (`None`: no vote yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// This instance may have committed (or a higher ballot chose it): only it.
    Bound(ConsensusId),
    /// None can have committed: any instance from the prestate.
    Free,
}

/// The fallback rule. `reports` are the highest votes of distinct witnesses (at least a
/// [`quorum`] of them) among `members` members with threshold `threshold`.
///
/// The highest-ballot vote reported, if at ballot ≥ 1, binds (classic Paxos: its
/// coordinator chose it by this very rule). Otherwise a ballot-0 instance binds if the
/// votes reported for it plus every member that did not report could make a fast quorum;
/// at most one instance can, because `2 * fast + quorum > 2 * members`.
pub fn choose(reports: &[Option<Vote>], members: usize, threshold: u16) -> Choice {
    let highest = reports.iter().flatten().max_by_key(|v| v.ballot);
    match highest {
        None => return Choice::Free,
        Some(v) if v.ballot > 0 => return Choice::Bound(v.id),
        Some(_) => {}
    }
    let mut counts: BTreeMap<ConsensusId, usize> = BTreeMap::new();
    for v in reports.iter().flatten() {
        *counts.entry(v.id).or_default() += 1;
    }
    let silent = members.saturating_sub(reports.len());
    let fast = fast_quorum(members, threshold);
    counts
        .into_iter()
        .find(|(_, c)| c + silent >= fast)
        .map_or(Choice::Free, |(id, _)| Choice::Bound(id))
}

/// An agreed operation: the instance, the operation and a quorum of votes for it. As a
/// journal fact (`FactBody::Commit`) it is signed by the group (FROST) like any
/// group-signed fact: see [`CommitFrame`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Commit {
    /// The instance.
    pub id: ConsensusId,
    /// The prestate it applies to.
    pub prestate: Hash32,
    /// The operation's bytes.
    pub op: Vec<u8>,
    /// Votes for the instance at one ballot, ascending by voter: at least a fast quorum
    /// at ballot 0, a quorum at a fallback ballot.
    pub votes: Vec<Vote>,
}

/// Why a commit does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Fewer distinct member votes than the quorum.
    #[error("fewer votes than the quorum")]
    NoQuorum,
    /// A vote names another instance, prestate, operation or ballot.
    #[error("a vote is for another instance, prestate, operation or ballot")]
    Mismatch,
    /// Votes are not strictly ascending by voter (duplicates or disorder).
    #[error("votes are not strictly ascending by voter")]
    Order,
    /// A voter is not a member.
    #[error("a voter is not a member")]
    NotMember,
    /// A vote's signature does not verify.
    #[error("a vote's signature does not verify")]
    BadVote,
}

/// Where a commit goes: its journal, the coordinator's Lamport clock there, and the
/// coordinator (the fact's author). Fixed when the round starts, so witnesses can rebuild
/// the exact bytes they sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFrame {
    /// The journal.
    pub namespace: Namespace,
    /// The fact's Lamport clock.
    pub lamport: u64,
    /// The coordinator.
    pub author: DeviceId,
}

impl CommitFrame {
    /// The bytes the group signs for `commit`: the signing bytes of the commit fact.
    pub fn message(&self, commit: &Commit) -> Vec<u8> {
        Fact::signing_bytes(
            &self.namespace,
            self.lamport,
            &self.author,
            &FactBody::Commit(commit.clone()),
        )
    }

    /// The commit fact with the group signature.
    pub fn fact(&self, commit: Commit, signature: [u8; 64]) -> Fact {
        Fact {
            namespace: self.namespace,
            lamport: self.lamport,
            author: self.author,
            body: FactBody::Commit(commit),
            sig: FactSig::Group(Sig64(signature)),
        }
    }
}

impl Commit {
    /// The ballot its votes were cast at.
    pub fn ballot(&self) -> u32 {
        self.votes.first().map_or(0, |v| v.ballot)
    }

    /// Checks the votes: all at one ballot, from at least `fast_quorum(members,
    /// threshold)` distinct members at ballot 0 or `quorum(members, threshold)` at a
    /// fallback ballot, each vote for this instance, prestate and operation, and signed
    /// by its voter (`members` maps each member to its signing key).
    pub fn check(&self, members: &BTreeMap<DeviceId, [u8; 32]>, threshold: u16) -> Result<(), CommitError> {
        self.check_votes(members, threshold, true)
    }

    /// [`Commit::check`], with the vote signatures checked only if `signatures`: for the
    /// gatherer's own commit, whose votes it checked one by one as they came.
    pub fn check_votes(
        &self,
        members: &BTreeMap<DeviceId, [u8; 32]>,
        threshold: u16,
        signatures: bool,
    ) -> Result<(), CommitError> {
        if !self.votes.windows(2).all(|w| w[0].voter < w[1].voter) {
            return Err(CommitError::Order);
        }
        let ballot = self.ballot();
        let needed = match ballot {
            0 => fast_quorum(members.len(), threshold),
            _ => quorum(members.len(), threshold),
        };
        if self.votes.len() < needed {
            return Err(CommitError::NoQuorum);
        }
        let op = op_hash(&self.op);
        let mut batch = frost_core::batch::Verifier::<frost_ristretto255::Ristretto255Sha512>::new();
        let mut seed = blake3::Hasher::new_derive_key(CTX_BATCH);
        for v in &self.votes {
            if v.id != self.id || v.prestate != self.prestate || v.op != op || v.ballot != ballot {
                return Err(CommitError::Mismatch);
            }
            let key = members.get(&v.voter).ok_or(CommitError::NotMember)?;
            if !signatures {
                continue;
            }
            let (Ok(vk), Ok(sig)) = (
                frost_ristretto255::VerifyingKey::deserialize(key),
                frost_ristretto255::Signature::deserialize(&v.sig.0),
            ) else {
                return Err(CommitError::BadVote);
            };
            let msg = v.signing_bytes();
            seed.update(key);
            seed.update(&v.sig.0);
            seed.update(&msg);
            let item = frost_core::batch::Item::new(vk, sig, msg).map_err(|_| CommitError::BadVote)?;
            batch.queue(item);
        }
        // All votes at once: one multiscalar multiplication instead of one check each.
        // The blinding factors must be unpredictable to whoever made the signatures;
        // derived from every key, signature and message in the batch, they are.
        if !signatures {
            return Ok(());
        }
        let rng = PeerRng::from_seed(seed.finalize().into());
        batch.verify(rng).map_err(|_| CommitError::BadVote)
    }
}

/// The equivocation two commits from one prestate at one ballot prove: some member
/// voted in both for different instances. `None` if they are for the same instance,
/// different prestates or different ballots (two commits at different ballots need a
/// witness that lied in a promise, which its votes alone do not show).
pub fn equivocation_between(a: &Commit, b: &Commit) -> Option<Equivocation> {
    if a.prestate != b.prestate || a.id == b.id || a.ballot() != b.ballot() {
        return None;
    }
    let theirs: BTreeMap<DeviceId, &Vote> = b.votes.iter().map(|v| (v.voter, v)).collect();
    a.votes.iter().find_map(|v| {
        theirs
            .get(&v.voter)
            .and_then(|w| Equivocation::of(v.clone(), (*w).clone()))
    })
}
