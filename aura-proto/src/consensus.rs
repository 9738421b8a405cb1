//! Single-shot agreement bound to a prestate: the pure part (issue 7, first increment).
//!
//! A non-monotone change (a tree operation, a context epoch bump) is agreed once per
//! *prestate*: the hash of the reduced state it applies to. An *instance* is one attempt
//! to agree on one operation from one prestate; its id is `H(prestate, op, nonce)`.
//!
//! Safety rests on votes, not on the threshold signature alone. A witness checks the
//! prestate against its own reduced state and then signs a [`Vote`] for the instance:
//! at most one per prestate, ever (the vote is persisted before anything that depends
//! on it leaves the device). A [`Commit`] carries the votes of a [`quorum`] of members,
//! `max(t, n/2 + 1)`, and the group's FROST signature over the commit. Any two quorums of
//! `n/2 + 1` members share a member, so two commits from one prestate need a member
//! that voted twice, and the two votes are an [`Equivocation`] proof against it
//! ([`equivocation_between`] extracts it from the two commits). A threshold below a
//! majority still signs, but only after a majority voted.
//!
//! The coordinator side is [`Round`]: it gathers votes with FROST round-1 commitments,
//! builds the signing package once a quorum is in, and aggregates the shares. A witness
//! signs a package only after [`check_package`] showed it is the commit of the instance
//! it voted for. When no commit is seen within [`fallback_timeout`], the next device in
//! the instance's [`rotation`] coordinates a new attempt of the same instance (witnesses
//! repeat their vote for it; FROST nonces are never reused).
//!
//! The wiring into `Peer` (messages, timers, persistence, membership procedures) is the
//! next increment; see `spec/consensus.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use frost_ristretto255 as frost;
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

/// Votes a commit needs among `members` devices with signing threshold `threshold`:
/// at least the threshold and a strict majority.
pub fn quorum(members: usize, threshold: u16) -> usize {
    (threshold as usize).max(members / 2 + 1)
}

/// How long a witness waits for a commit before the next coordinator takes over:
/// three observed round trips, at least 200 ms.
pub fn fallback_timeout(rtt: Option<Duration>) -> Duration {
    const FLOOR: Duration = Duration::from_millis(200);
    rtt.map_or(FLOOR, |r| r.saturating_mul(3).max(FLOOR))
}

/// The order in which `members` coordinate instance `id`: attempt `k` is coordinated by
/// the `k`-th device (cyclically). Every device computes the same order from the same
/// member set; where it starts depends on the instance, so no device coordinates every
/// fallback.
pub fn rotation(members: &BTreeSet<DeviceId>, id: &ConsensusId) -> Vec<DeviceId> {
    let all: Vec<DeviceId> = members.iter().copied().collect();
    if all.is_empty() {
        return all;
    }
    let mut start = [0u8; 8];
    start.copy_from_slice(&id.0[..8]);
    let start = (u64::from_le_bytes(start) % all.len() as u64) as usize;
    all[start..].iter().chain(&all[..start]).copied().collect()
}

/// An instance as its coordinator proposes it (attempt `attempt` of what `proposer`
/// started).
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
    /// 0 from the proposer, then one per fallback coordinator.
    pub attempt: u32,
    /// Who proposed it (coordinates attempt 0).
    pub proposer: DeviceId,
}

impl Proposal {
    /// Whether the id binds the prestate, operation and nonce.
    pub fn binds(&self) -> bool {
        consensus_id(&self.prestate, &op_hash(&self.op), &self.nonce) == self.id
    }
}

/// A witness's signed choice: from `prestate`, instance `id` (operation hash `op`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// The instance.
    pub id: ConsensusId,
    /// The prestate the witness checked against its own reduced state.
    pub prestate: Hash32,
    /// Hash of the operation.
    pub op: Hash32,
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
    voter: &'a DeviceId,
}

impl Vote {
    fn signing_bytes(id: &ConsensusId, prestate: &Hash32, op: &Hash32, voter: &DeviceId) -> Vec<u8> {
        let mut out = CTX_VOTE.as_bytes().to_vec();
        out.extend_from_slice(&wire::encode(&VoteBody {
            id,
            prestate,
            op,
            voter,
        }));
        out
    }

    /// Signs a vote with this device's key.
    pub fn sign(keys: &DeviceKeys, rng: &mut PeerRng, id: ConsensusId, prestate: Hash32, op: Hash32) -> Vote {
        let msg = Vote::signing_bytes(&id, &prestate, &op, &keys.id);
        Vote {
            id,
            prestate,
            op,
            voter: keys.id,
            sig: Sig64(keys.sign(rng, &msg)),
        }
    }

    /// Whether the signature verifies under the voter's signing key `key`.
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        let msg = Vote::signing_bytes(&self.id, &self.prestate, &self.op, &self.voter);
        schnorr_ok(key, &msg, &self.sig)
    }
}

/// Two votes of one member for different instances from the same prestate.
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
        if a.voter != b.voter || a.prestate != b.prestate || a.id == b.id {
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
        if a.id == b.id {
            return Err(EquivocationError::SameInstance);
        }
        if !a.verify(key) || !b.verify(key) {
            return Err(EquivocationError::BadSignature);
        }
        Ok(a.voter)
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
    /// The witness already voted for another instance from this prestate: here is that
    /// vote (the coordinator can join that instance instead).
    Voted(Vote),
    /// The operation does not apply to the witness's state (or does not decode).
    Invalid,
}

/// A witness's answer to a proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Vote: sign a new vote, persist it, only then send it.
    Vote,
    /// Already voted for this very instance: send that vote again.
    Again(Vote),
    /// Do not vote.
    Refuse(Refusal),
}

/// What a witness voted, by prestate (rebuilt from its durable vote records on restore).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ballots {
    by_prestate: BTreeMap<Hash32, Vote>,
}

impl Ballots {
    /// Whether to vote for instance `id` (operation `op`) proposed from `prestate`, when
    /// this witness's own reduced state hashes to `mine`.
    pub fn decide(&self, mine: &Hash32, id: &ConsensusId, prestate: &Hash32) -> Decision {
        if prestate != mine {
            return Decision::Refuse(Refusal::Prestate { mine: *mine });
        }
        match self.by_prestate.get(prestate) {
            Some(v) if v.id == *id => Decision::Again(v.clone()),
            Some(v) => Decision::Refuse(Refusal::Voted(v.clone())),
            None => Decision::Vote,
        }
    }

    /// Remembers a vote whose record is durable. A second, different vote for one
    /// prestate is refused (the caller has a bug; nothing is overwritten).
    pub fn record(&mut self, vote: Vote) -> bool {
        match self.by_prestate.get(&vote.prestate) {
            Some(v) => *v == vote,
            None => {
                self.by_prestate.insert(vote.prestate, vote);
                true
            }
        }
    }

    /// The vote cast from `prestate`, if any.
    pub fn vote_for(&self, prestate: &Hash32) -> Option<&Vote> {
        self.by_prestate.get(prestate)
    }
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
    /// Votes for the instance, ascending by voter, at least a quorum.
    pub votes: Vec<Vote>,
}

/// Why a commit does not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// Fewer distinct member votes than the quorum.
    #[error("fewer votes than the quorum")]
    NoQuorum,
    /// A vote names another instance, prestate or operation.
    #[error("a vote is for another instance, prestate or operation")]
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
    /// The package is not for the instance this witness voted for, or lacks its vote.
    #[error("the package is not the commit of the instance this witness voted for")]
    NotMyInstance,
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
    /// Checks the votes: at least `quorum(members, threshold)` distinct members, each
    /// vote for this instance, prestate and operation, and signed by its voter (`members`
    /// maps each member to its signing key).
    pub fn check(&self, members: &BTreeMap<DeviceId, [u8; 32]>, threshold: u16) -> Result<(), CommitError> {
        if !self.votes.windows(2).all(|w| w[0].voter < w[1].voter) {
            return Err(CommitError::Order);
        }
        if self.votes.len() < quorum(members.len(), threshold) {
            return Err(CommitError::NoQuorum);
        }
        let op = op_hash(&self.op);
        for v in &self.votes {
            if v.id != self.id || v.prestate != self.prestate || v.op != op {
                return Err(CommitError::Mismatch);
            }
            let key = members.get(&v.voter).ok_or(CommitError::NotMember)?;
            if !v.verify(key) {
                return Err(CommitError::BadVote);
            }
        }
        Ok(())
    }
}

/// What a witness checks before it signs a package: the commit is well formed and is for
/// the instance it voted for, with its own vote in it.
pub fn check_package(
    commit: &Commit,
    mine: &Vote,
    members: &BTreeMap<DeviceId, [u8; 32]>,
    threshold: u16,
) -> Result<(), CommitError> {
    if commit.id != mine.id || commit.prestate != mine.prestate || !commit.votes.contains(mine) {
        return Err(CommitError::NotMyInstance);
    }
    commit.check(members, threshold)
}

/// The equivocation two commits from one prestate prove: some member voted in both for
/// different instances. `None` if they are for the same instance or different prestates
/// (or share no voter, which valid commits from one prestate cannot).
pub fn equivocation_between(a: &Commit, b: &Commit) -> Option<Equivocation> {
    if a.prestate != b.prestate || a.id == b.id {
        return None;
    }
    let theirs: BTreeMap<DeviceId, &Vote> = b.votes.iter().map(|v| (v.voter, v)).collect();
    a.votes.iter().find_map(|v| {
        theirs
            .get(&v.voter)
            .and_then(|w| Equivocation::of(v.clone(), (*w).clone()))
    })
}

/// Why a coordinator's round refuses an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoundError {
    /// The vote is not a valid vote of that member for this instance.
    #[error("not a valid vote for this instance")]
    BadVote,
    /// The FROST identifier does not belong to the voter.
    #[error("the signer identifier does not belong to the voter")]
    WrongIdentifier,
    /// A share for a signer outside the package, or given twice.
    #[error("unexpected signature share")]
    UnexpectedShare,
    /// The package is built already; late votes are not needed.
    #[error("the package is built already")]
    Late,
    /// Aggregation failed (a bad share).
    #[error("aggregation failed")]
    Aggregate,
}

/// One attempt of an instance, as its coordinator runs it.
#[derive(Debug)]
pub struct Round {
    commit: Commit,
    frame: CommitFrame,
    op_hash: Hash32,
    /// Members: device → (signing key, FROST identifier).
    members: BTreeMap<DeviceId, ([u8; 32], frost::Identifier)>,
    needed: usize,
    votes: BTreeMap<DeviceId, Vote>,
    commitments: BTreeMap<frost::Identifier, frost::round1::SigningCommitments>,
    package: Option<frost::SigningPackage>,
    shares: BTreeMap<frost::Identifier, frost::round2::SignatureShare>,
}

impl Round {
    /// A round for instance `id` agreeing on `op` from `prestate`, among `members`
    /// (device → signing key and FROST identifier) with signing threshold `threshold`;
    /// the commit will be the fact `frame` describes.
    pub fn new(
        id: ConsensusId,
        prestate: Hash32,
        op: Vec<u8>,
        members: BTreeMap<DeviceId, ([u8; 32], frost::Identifier)>,
        threshold: u16,
        frame: CommitFrame,
    ) -> Round {
        let needed = quorum(members.len(), threshold);
        Round {
            op_hash: op_hash(&op),
            commit: Commit {
                id,
                prestate,
                op,
                votes: Vec::new(),
            },
            frame,
            members,
            needed,
            votes: BTreeMap::new(),
            commitments: BTreeMap::new(),
            package: None,
            shares: BTreeMap::new(),
        }
    }

    /// Votes needed.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// A member's vote with its round-1 commitment. Returns the commit to sign and the
    /// signing package once a quorum is in (exactly once).
    pub fn on_vote(
        &mut self,
        vote: Vote,
        identifier: frost::Identifier,
        commitments: frost::round1::SigningCommitments,
    ) -> Result<Option<(Commit, frost::SigningPackage)>, RoundError> {
        if self.package.is_some() {
            return Err(RoundError::Late);
        }
        let Some((key, ident)) = self.members.get(&vote.voter) else {
            return Err(RoundError::BadVote);
        };
        let valid = vote.id == self.commit.id
            && vote.prestate == self.commit.prestate
            && vote.op == self.op_hash
            && vote.verify(key);
        if !valid {
            return Err(RoundError::BadVote);
        }
        if *ident != identifier {
            return Err(RoundError::WrongIdentifier);
        }
        self.commitments.insert(identifier, commitments);
        self.votes.insert(vote.voter, vote);
        if self.votes.len() < self.needed {
            return Ok(None);
        }
        self.commit.votes = self.votes.values().cloned().collect();
        let package = frost::SigningPackage::new(self.commitments.clone(), &self.frame.message(&self.commit));
        self.package = Some(package.clone());
        Ok(Some((self.commit.clone(), package)))
    }

    /// A signature share. Returns the commit fact once every signer of the package has
    /// sent a valid share.
    pub fn on_share(
        &mut self,
        identifier: frost::Identifier,
        share: frost::round2::SignatureShare,
        public: &frost::keys::PublicKeyPackage,
    ) -> Result<Option<Fact>, RoundError> {
        let Some(package) = &self.package else {
            return Err(RoundError::UnexpectedShare);
        };
        if !package.signing_commitments().contains_key(&identifier) || self.shares.contains_key(&identifier) {
            return Err(RoundError::UnexpectedShare);
        }
        self.shares.insert(identifier, share);
        if self.shares.len() < package.signing_commitments().len() {
            return Ok(None);
        }
        let signature = frost::aggregate(package, &self.shares, public)
            .ok()
            .and_then(|s| s.serialize().ok())
            .and_then(|b| <[u8; 64]>::try_from(b).ok());
        match signature {
            Some(sig) => Ok(Some(self.frame.fact(self.commit.clone(), sig))),
            None => {
                // Keep the round usable: a bad share is dropped, not fatal for the others.
                self.shares.remove(&identifier);
                Err(RoundError::Aggregate)
            }
        }
    }
}
