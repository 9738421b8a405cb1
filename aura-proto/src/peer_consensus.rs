//! Consensus in [`Peer`]: agreeing on one change of the authority's device tree per
//! prestate (see `crate::consensus` for the rules and `spec/consensus.md`).
//!
//! The proposer sends `Propose { id, prestate, op, nonce, attempt, proposer }` to every
//! member. A witness checks the instance id against the nonce, the prestate against its
//! own reduced view and the change against that view, then votes at most once per
//! prestate: the vote is persisted (`Record::Voted`) before it leaves. The coordinator of
//! the attempt gathers a quorum of votes, puts them into a `Commit` and has the group
//! sign the commit fact through the ordinary FROST signing session (whose nonce counter
//! is persisted before any commitment leaves); members sign a commit only if its votes
//! form a quorum of their own view and it applies to their prestate. The commit is pushed
//! to every member and spread by anti-entropy; each device reports `Event::Committed`
//! once it applies.
//!
//! Fallback: every device that saw a proposal waits `fallback_timeout` (doubling per
//! attempt, at most 30 s) for its prestate to move; if it does not, the attempt number
//! goes up and the next coordinator in the instance's rotation proposes the same instance
//! again (witnesses repeat their vote). An instance is never given up while its prestate
//! stands: its votes are final, so no other instance from that prestate could win. A
//! device that does not know the proposal lets its turn pass; a restarted voter knows it
//! from its vote record. A device does not propose while it knows an instance from the
//! current prestate (`CommandError::Busy`); competing proposals from devices that did
//! not hear of each other can still split the votes (see `spec/consensus.md`).
//!
//! Not yet here: pre-sent nonce commitments (the warm one-round-trip path), equivocation
//! proof facts and exclusion, adding devices (needs a key generation among the new set),
//! context epoch bumps.

use std::collections::{BTreeMap, BTreeSet};

use super::{CommandError, Event, Peer, Pending};
use crate::authority::{AuthMsg, AuthorityView};
use crate::consensus::{
    consensus_id, fallback_timeout, op_hash, quorum, rotation, Ballots, Commit, ConsensusId, Decision, Proposal,
    Refusal, Vote,
};
use crate::journal::{AuthorityId, FactBody, Namespace, TreeOpKind};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::Record;
use crate::time::Instant;
use crate::wire;

/// Highest attempt number accepted in a proposal (an instance is never given up while
/// its prestate stands, since its votes are final; attempts only slow down).
const MAX_ATTEMPT: u32 = 100_000;
/// Longest wait between fallback attempts.
const MAX_FALLBACK: std::time::Duration = std::time::Duration::from_secs(30);

/// An instance this device has seen proposed, and when its attempt times out.
#[derive(Debug)]
pub(super) struct Seen {
    authority: AuthorityId,
    proposal: Proposal,
    deadline: Instant,
    /// Forgotten after this unless its prestate becomes ours (it may be ahead of us).
    expires: Instant,
}

/// Instances remembered at once; a proposal for a new one beyond this is dropped
/// (`overloaded`), so no member can fill memory with proposals.
const MAX_PROPOSALS: usize = 64;

/// How long a proposal from a prestate that is not ours is kept (we may be behind).
const KEEP_FOREIGN: std::time::Duration = std::time::Duration::from_secs(600);

/// An attempt this device coordinates.
#[derive(Debug, Default)]
pub(super) struct Coordinating {
    votes: BTreeMap<DeviceId, Vote>,
    /// Refusals other than "your prestate is not mine" (a device behind may catch up).
    refused: BTreeSet<DeviceId>,
    signing: bool,
}

/// Consensus state of a [`Peer`].
#[derive(Debug, Default)]
pub(super) struct ConsensusState {
    /// Votes cast (restored from `Record::Voted`).
    pub(super) ballots: Ballots,
    proposals: BTreeMap<ConsensusId, Seen>,
    rounds: BTreeMap<ConsensusId, Coordinating>,
    /// Votes whose record is being written, by prestate: they count as cast (a second
    /// proposal from the same prestate must not get a vote while the first is on disk).
    voting: BTreeMap<[u8; 32], Vote>,
}

impl Peer {
    /// `Command::ChangeThreshold` / `Command::RemoveDevice`: propose a tree change.
    pub(super) fn propose_change(&mut self, kind: TreeOpKind) -> Result<(), CommandError> {
        let view = self.my_authority().ok_or(CommandError::NotInAuthority)?.clone();
        if !view.applies(&kind) {
            return Err(CommandError::InvalidChange);
        }
        let op = wire::encode(&kind);
        let prestate = view.prestate();
        // A second instance from one prestate could split the votes for good (each vote
        // is final): while one is known, it is the one to finish.
        let pending = self.consensus.ballots.vote_for(&prestate).is_some()
            || self.consensus.voting.contains_key(&prestate)
            || self
                .consensus
                .proposals
                .values()
                .any(|s| s.proposal.prestate == prestate);
        if pending {
            return Err(CommandError::Busy);
        }
        let nonce = self.rng.bytes32();
        let id = consensus_id(&prestate, &op_hash(&op), &nonce);
        let proposal = Proposal {
            id,
            prestate,
            op,
            nonce,
            attempt: 0,
            proposer: self.keys.id,
        };
        self.start_attempt(&view, proposal);
        Ok(())
    }

    /// The coordinator of `attempt` of instance `id`: the proposer first, then the
    /// rotation.
    fn coordinator_of(view: &AuthorityView, id: &ConsensusId, proposer: DeviceId, attempt: u32) -> DeviceId {
        if attempt == 0 {
            return proposer;
        }
        let members: BTreeSet<DeviceId> = view.members.keys().copied().collect();
        let order = rotation(&members, id);
        order[(attempt as usize - 1) % order.len()]
    }

    fn start_attempt(&mut self, view: &AuthorityView, proposal: Proposal) {
        self.consensus.rounds.insert(proposal.id, Coordinating::default());
        // Every member, this device included (its own vote goes through the same rules).
        for d in view.members.keys().copied().collect::<Vec<_>>() {
            self.send_auth(d, AuthMsg::Propose(proposal.clone()));
        }
    }

    /// A witness receives a proposal.
    pub(super) fn on_propose(&mut self, from: DeviceId, p: Proposal) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let valid = view.members.contains_key(&from)
            && view.members.contains_key(&p.proposer)
            && p.attempt <= MAX_ATTEMPT
            && p.binds()
            && Self::coordinator_of(&view, &p.id, p.proposer, p.attempt) == from;
        if !valid {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if !self.consensus.proposals.contains_key(&p.id) && self.consensus.proposals.len() >= MAX_PROPOSALS {
            return self.metrics.drop(DropReason::Overloaded);
        }
        let deadline = self.now.mono.saturating_add(Self::fallback_after(p.attempt));
        let expires = self.now.mono.saturating_add(KEEP_FOREIGN);
        let known = self.consensus.proposals.entry(p.id).or_insert(Seen {
            authority: view.id,
            proposal: p.clone(),
            deadline,
            expires,
        });
        known.expires = expires;
        if p.attempt >= known.proposal.attempt {
            known.proposal.attempt = p.attempt;
            known.deadline = known.deadline.max(deadline);
        }
        let Proposal { id, prestate, op, .. } = p;
        let mine = view.prestate();
        let decision = match self.consensus.voting.get(&prestate) {
            // Being written: it goes to the coordinator of its time once durable.
            Some(v) if v.id == id => return,
            Some(v) if prestate == mine => Decision::Refuse(Refusal::Voted(v.clone())),
            _ => self.consensus.ballots.decide(&mine, &id, &prestate),
        };
        match decision {
            Decision::Vote => {
                let change = wire::strict_decode::<TreeOpKind>(&op, &mut Vec::new()).ok();
                if !change.is_some_and(|k| view.applies(&k)) {
                    return self.send_auth(
                        from,
                        AuthMsg::Refused {
                            id,
                            refusal: Refusal::Invalid,
                        },
                    );
                }
                let vote = Vote::sign(&self.keys, &mut self.rng, id, prestate, op_hash(&op));
                self.consensus.voting.insert(prestate, vote.clone());
                let proposal = self.consensus.proposals[&id].proposal.clone();
                self.persist(
                    Record::Voted {
                        vote: vote.clone(),
                        proposal,
                    },
                    Pending::Voted { vote, to: from },
                );
            }
            Decision::Again(vote) => self.send_auth(from, AuthMsg::Voted { vote }),
            Decision::Refuse(refusal) => self.send_auth(from, AuthMsg::Refused { id, refusal }),
        }
    }

    /// Our vote is durable: remember it, then send it.
    pub(super) fn vote_durable(&mut self, vote: Vote, to: DeviceId) {
        self.consensus.voting.remove(&vote.prestate);
        self.consensus.ballots.record(vote.clone());
        // The coordinator may have changed meanwhile: the vote goes to whoever
        // coordinates the instance now.
        let to = self
            .consensus
            .proposals
            .get(&vote.id)
            .and_then(|s| {
                let view = self.views.0.get(&s.authority)?;
                let p = &s.proposal;
                Some(Self::coordinator_of(view, &vote.id, p.proposer, p.attempt))
            })
            .unwrap_or(to);
        self.send_auth(to, AuthMsg::Voted { vote });
    }

    /// Restores a vote record, and the proposal so this device takes part in its
    /// fallback (dropped at the first timeout if the prestate moved meanwhile).
    pub(super) fn restore_vote(&mut self, vote: Vote, proposal: Proposal) {
        self.consensus.ballots.record(vote);
        let Some(authority) = self.my_authority().map(|v| v.id) else {
            return;
        };
        let deadline = self.now.mono.saturating_add(fallback_timeout(None));
        let expires = self.now.mono.saturating_add(KEEP_FOREIGN);
        self.consensus.proposals.entry(proposal.id).or_insert(Seen {
            authority,
            proposal,
            deadline,
            expires,
        });
    }

    /// How long an attempt gets before the next coordinator takes over: the fallback
    /// timer, doubling per attempt up to `MAX_FALLBACK`.
    fn fallback_after(attempt: u32) -> std::time::Duration {
        fallback_timeout(None)
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_FALLBACK)
    }

    /// The coordinator receives a vote.
    pub(super) fn on_voted(&mut self, from: DeviceId, vote: Vote) {
        let (Some(round), Some(seen)) = (
            self.consensus.rounds.get(&vote.id),
            self.consensus.proposals.get(&vote.id),
        ) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        let Some(view) = self.views.0.get(&seen.authority).cloned() else {
            return;
        };
        let p = &seen.proposal;
        let key = view.members.get(&from).map(|m| m.cert.signing);
        let valid = vote.voter == from
            && vote.prestate == p.prestate
            && vote.op == op_hash(&p.op)
            && key.is_some_and(|k| vote.verify(&k));
        if !valid {
            return self.metrics.drop(DropReason::BadFact);
        }
        if round.signing || round.votes.contains_key(&from) {
            return;
        }
        let needed = quorum(view.members.len(), view.threshold);
        let round = self.consensus.rounds.get_mut(&vote.id).expect("checked");
        round.votes.insert(from, vote.clone());
        if round.votes.len() < needed {
            return;
        }
        round.signing = true;
        let commit = Commit {
            id: vote.id,
            prestate: p.prestate,
            op: p.op.clone(),
            votes: round.votes.values().cloned().collect(),
        };
        let ns = Namespace::Authority(view.id);
        let fact = crate::authority::UnsignedFact {
            namespace: ns,
            lamport: self.journal.next_lamport(&ns),
            author: self.keys.id,
            body: FactBody::Commit(commit),
        };
        self.start_commit_signing(view.group_key, fact, vote.id);
    }

    /// The coordinator hears a refusal; an instance that can no longer reach a quorum
    /// is given up.
    pub(super) fn on_refused(&mut self, from: DeviceId, id: ConsensusId, refusal: Refusal) {
        if let Refusal::Voted(v) = &refusal {
            if v.id != id && self.consensus.proposals.contains_key(&v.id) {
                // Another instance from this prestate has votes and we know it: that is
                // the one to finish (its fallback goes on); ours can only split votes.
                self.consensus.rounds.remove(&id);
                if self
                    .consensus
                    .proposals
                    .get(&id)
                    .is_some_and(|s| s.proposal.proposer == self.keys.id)
                {
                    self.consensus.proposals.remove(&id);
                }
                return;
            }
        }
        let Some(round) = self.consensus.rounds.get_mut(&id) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        if matches!(refusal, Refusal::Prestate { .. }) {
            // Behind (it will catch up by anti-entropy and vote at a later attempt) or
            // ahead (then our prestate moves and the instance is over): no verdict yet.
            return;
        }
        round.refused.insert(from);
        let moved = self
            .consensus
            .proposals
            .get(&id)
            .and_then(|s| Some((self.views.0.get(&s.authority)?.prestate(), s.proposal.prestate)))
            .is_none_or(|(now, then)| now != then);
        if moved {
            // Refused because the change (or another) already applied: nothing failed.
            self.consensus.rounds.remove(&id);
            return;
        }
        let refused = round.refused.len();
        let Some(view) = self
            .consensus
            .proposals
            .get(&id)
            .and_then(|s| self.views.0.get(&s.authority))
        else {
            return;
        };
        if view.members.len() - refused.min(view.members.len()) < quorum(view.members.len(), view.threshold) {
            // Our own vote for it is final: the instance stays known (others may carry
            // it on), but this device stops coordinating it.
            self.consensus.rounds.remove(&id);
            self.event(Event::ConsensusFailed {
                instance: id,
                reason: format!("too many members refused (last: {refusal:?})"),
            });
        }
    }

    /// Whether this device signs commit `c` for `from`: it checks like a reducer would,
    /// against its own view.
    pub(super) fn may_sign_commit(&self, from: &DeviceId, author: &DeviceId, c: &Commit, group_key: &[u8; 32]) -> bool {
        let Some(view) = self.views.0.values().find(|v| v.group_key == *group_key) else {
            return false;
        };
        let keys: BTreeMap<DeviceId, [u8; 32]> = view.members.iter().map(|(d, m)| (*d, m.cert.signing)).collect();
        let change = wire::strict_decode::<TreeOpKind>(&c.op, &mut Vec::new()).ok();
        from == author
            && view.members.contains_key(from)
            && c.prestate == view.prestate()
            && c.check(&keys, view.threshold).is_ok()
            && change.is_some_and(|k| view.applies(&k))
    }

    pub(super) fn consensus_deadline(&self) -> Option<Instant> {
        self.consensus.proposals.values().map(|p| p.deadline).min()
    }

    /// Fallback: instances whose prestate did not move in time go to their next
    /// coordinator; instances whose prestate moved are over.
    pub(super) fn consensus_timeout(&mut self) {
        let now = self.now.mono;
        let me = self.keys.id;
        let due: Vec<ConsensusId> = self
            .consensus
            .proposals
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let seen = self.consensus.proposals.get(&id).expect("listed");
            let Some(view) = self.views.0.get(&seen.authority).cloned() else {
                self.consensus.proposals.remove(&id);
                continue;
            };
            if view.prestate() != seen.proposal.prestate {
                // Not our state: we are behind (wait; it may become ours) or it is over
                // (forgotten when it expires, or when a commit from it applies).
                if seen.expires <= now {
                    self.consensus.proposals.remove(&id);
                    self.consensus.rounds.remove(&id);
                } else {
                    let wait = Self::fallback_after(seen.proposal.attempt);
                    self.consensus.proposals.get_mut(&id).expect("listed").deadline = now.saturating_add(wait);
                }
                continue;
            }
            let attempt = (seen.proposal.attempt + 1).min(MAX_ATTEMPT);
            let deadline = now.saturating_add(Self::fallback_after(attempt));
            let seen = self.consensus.proposals.get_mut(&id).expect("listed");
            seen.proposal.attempt = attempt;
            seen.deadline = deadline;
            let next = seen.proposal.clone();
            if Self::coordinator_of(&view, &id, next.proposer, next.attempt) == me {
                self.metrics.consensus_fallbacks += 1;
                self.start_attempt(&view, next);
            }
        }
    }

    /// The group signed our commit: record it and push it to every member (each reports
    /// it once it applies).
    pub(super) fn commit_signed(&mut self, instance: ConsensusId, fact: crate::journal::Fact) {
        let Namespace::Authority(a) = fact.namespace else {
            return;
        };
        if let Some(r) = self.consensus.rounds.get_mut(&instance) {
            r.signing = false;
        }
        let me = self.keys.id;
        let others: BTreeSet<DeviceId> = self
            .views
            .0
            .get(&a)
            .map(|v| v.members.keys().copied().filter(|d| *d != me).collect())
            .unwrap_or_default();
        self.record_facts(vec![fact], Some(others));
    }

    /// A commit applied here (the view moved): report it, and forget its instance.
    pub(super) fn committed(&mut self, authority: AuthorityId, id: ConsensusId, prestate: [u8; 32], epoch: u64) {
        // That instance and every other one from its prestate are over.
        let over: Vec<ConsensusId> = self
            .consensus
            .proposals
            .iter()
            .filter(|(k, s)| **k == id || s.proposal.prestate == prestate)
            .map(|(k, _)| *k)
            .collect();
        for k in over.into_iter().chain([id]) {
            self.consensus.proposals.remove(&k);
            self.consensus.rounds.remove(&k);
        }
        if !self.restoring {
            self.event(Event::Committed {
                authority,
                instance: id,
                epoch,
            });
        }
    }
}
