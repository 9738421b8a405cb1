//! Consensus in [`Peer`]: agreeing on one change of the authority's device tree per
//! prestate (see `crate::consensus` for the rules and `spec/consensus.md`).
//!
//! Fast path (ballot 0): the proposer sends `Propose` to every member; a witness checks
//! the instance id, the prestate against its own reduced view and the change against
//! that view, and votes at ballot 0 for the first instance it sees from a prestate. The
//! proposer gathers a fast quorum of votes, puts them into a `Commit` and has the group
//! sign the commit fact through the ordinary FROST signing session; members sign a
//! commit only if its votes hold up against their own view. The commit is pushed to
//! every member and spread by anti-entropy; each device reports `Event::Committed` once
//! it applies.
//!
//! Fallback (ballot b ≥ 1): every device that knows an open instance from its current
//! prestate waits `fallback_after(b)`; when the prestate has not moved by then, the
//! device that owns the next ballot in the prestate's rotation persists its own promise,
//! sends `Prepare`, gathers `Promise`s (each durable at its witness, reporting the
//! witness's highest vote and what it was for) from a quorum, asks for votes at its
//! ballot with `Accept` for the instance `choose` allows, and commits with a quorum of
//! those votes. Promises and votes are persisted before they leave. A device that owns a
//! ballot but knows no instance lets it pass; the timers double once per full rotation,
//! so a quorum that can talk always gets a coordinator with enough time.
//!
//! Equivocation: every vote this device sees (in votes, promises, refusals and commits)
//! is kept per (prestate, ballot, voter) while the prestate is open; two for different
//! instances become a `FactBody::Equivocation` proof, written and pushed to every member.
//! Promises are signed too: a vote of a witness below a ballot it promised and above the
//! vote that promise reported proves the promise hid it (`FactBody::HiddenVote`).
//! Once a proof is in the view, the equivocator is excluded: its proposals, prepares,
//! accepts, votes and promises are ignored, and a gatherer leaves its votes out.
//!
//! The changes agreed here: thresholds, removals, additions (`peer_enroll.rs` then
//! hands the newcomer its share), share refreshes (`peer_refresh.rs`) and context epochs
//! (`peer_epoch.rs`).

use std::collections::{BTreeMap, BTreeSet};

use frost::round1::{SigningCommitments, SigningNonces};
use frost::round2::SignatureShare;
use frost::{Identifier, SigningPackage};
use frost_ristretto255 as frost;

use super::{CommandError, Event, Peer, Pending};
use crate::authority::{AuthMsg, AuthorityView};
use crate::consensus::{
    choose, consensus_id, coordinator, fallback_timeout, op_hash, quorum, Ballots, Choice, Commit, ConsensusId,
    Decision, Hash32, Promise, Proposal, Refusal, Vote,
};
use crate::journal::{AuthorityId, FactBody, Namespace, TreeOpKind};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::Record;
use crate::time::Instant;
use crate::wire;

/// Highest ballot accepted (timers double once per rotation, so this is never reached
/// in practice; it keeps arithmetic far from overflow).
const MAX_BALLOT: u32 = 1 << 24;
/// Longest wait between fallback ballots.
const MAX_FALLBACK: std::time::Duration = std::time::Duration::from_secs(30);

/// An instance this device knows (its operation bytes are needed to vote or re-propose).
#[derive(Debug)]
pub(super) struct Seen {
    proposal: Proposal,
    /// The member whose message made us keep it (for per-member quotas).
    by: DeviceId,
}

/// A prestate with an instance open, as this device sees it.
#[derive(Debug)]
pub(super) struct Open {
    authority: AuthorityId,
    /// When the next fallback ballot is due.
    deadline: Instant,
    /// The highest ballot heard of or run from this prestate.
    ballot: u32,
    /// Forgotten after this unless the prestate becomes ours (we may be behind).
    expires: Instant,
    /// The member whose message opened it (for per-member quotas).
    by: DeviceId,
}

/// Instances (and open prestates) remembered at once; a message about a new one beyond
/// this is dropped (`overloaded`), so no member can fill memory.
const MAX_PROPOSALS: usize = 64;
/// Of those, how many one member's messages may have brought in (so one member cannot
/// crowd out the others' proposals either).
const MAX_PER_MEMBER: usize = 16;

/// How long an instance from a prestate that is not ours is kept (we may be behind).
const KEEP_FOREIGN: std::time::Duration = std::time::Duration::from_secs(600);

/// A ballot this device runs: the fast ballot of its own proposal, or a fallback ballot
/// it owns.
#[derive(Debug)]
enum Phase {
    /// Gathering promises (fallback ballots only): each witness's highest vote.
    Promises(BTreeMap<DeviceId, Option<Vote>>),
    /// Gathering votes for one instance, and the group's signature over its commit.
    Votes(Box<Gather>),
}

#[derive(Debug)]
struct Gather {
    id: ConsensusId,
    votes: BTreeMap<DeviceId, Vote>,
    /// Signing begun with the proposal (nonces members set aside for us earlier): the
    /// shares come back with the votes. One round trip in all.
    warm: Option<Signing>,
    /// Signing begun once the votes were in, with the nonces that came with them.
    cold: Option<Signing>,
    /// Last resort: the general signing session was started.
    session: bool,
    /// The commit is signed (or the session will sign it).
    done: bool,
    /// Members whose share broke an aggregate: left out of later signings.
    culprits: BTreeSet<DeviceId>,
}

impl Gather {
    fn new(id: ConsensusId, warm: Option<Signing>) -> Gather {
        Gather {
            id,
            votes: BTreeMap::new(),
            warm,
            cold: None,
            session: false,
            done: false,
            culprits: BTreeSet::new(),
        }
    }
}

/// One FROST signing of a commit header by a chosen set of signers.
#[derive(Debug)]
struct Signing {
    lamport: u64,
    /// Names the package (its Lamport clock and commitments): a share carries it, so a
    /// late share for a package given up cannot spoil the next one.
    digest: [u8; 32],
    package: SigningPackage,
    /// The signers: FROST identifier → device.
    signers: BTreeMap<u16, DeviceId>,
    shares: BTreeMap<Identifier, SignatureShare>,
}

#[derive(Debug)]
struct Lead {
    authority: AuthorityId,
    ballot: u32,
    phase: Phase,
}

/// Consensus state of a [`Peer`].
#[derive(Debug, Default)]
pub(super) struct ConsensusState {
    /// Promises and votes (restored from `Record::Promised` / `Record::Voted`). Updated
    /// when decided; what is sent waits for the record (`writing`).
    pub(super) ballots: Ballots,
    proposals: BTreeMap<ConsensusId, Seen>,
    open: BTreeMap<Hash32, Open>,
    /// The ballot this device runs from a prestate (the latest one started).
    leads: BTreeMap<Hash32, Lead>,
    /// Votes and promises (prestate, ballot) whose record is being written: asked again
    /// meanwhile, the answer waits for the record.
    writing_votes: BTreeSet<(Hash32, u32)>,
    writing_promises: BTreeSet<(Hash32, u32)>,
    /// Votes of other members seen from open prestates and the last few committed ones
    /// (in votes, promises, refusals and commits), by (prestate, ballot, voter): a
    /// second one for another instance is an equivocation.
    seen: BTreeMap<(Hash32, u32, DeviceId), Vote>,
    /// Equivocators this device wrote a proof against (one proof each is enough).
    reported: BTreeSet<DeviceId>,
    /// The latest signed promise of each witness, by (prestate, witness), for prestates
    /// open here and the last few committed ones.
    promises: BTreeMap<(Hash32, DeviceId), crate::consensus::PromiseCert>,
    /// Simulation of a faulty member (`fuzzing::equivocate`): vote for every instance at
    /// the fast ballot, ignoring the witness rules. Never set outside tests.
    pub(super) equivocate: bool,
    /// FROST nonces set aside for each member that may gather our votes (their
    /// commitments were sent to it), newest last, at most two each; a nonce signs once.
    set_aside: BTreeMap<DeviceId, Vec<(SigningNonces, Vec<u8>)>>,
    /// The newest nonce commitment each member set aside for us.
    held: BTreeMap<DeviceId, Vec<u8>>,
    /// Smoothed round-trip times to members (pings, and proposals or accepts answered
    /// by a vote): the fallback timer follows the slowest.
    rtt: BTreeMap<DeviceId, std::time::Duration>,
    /// When we asked for votes from a prestate at a ballot (to time the answers).
    asked: BTreeMap<(Hash32, u32), Instant>,
    /// The last few prestates a commit left behind, oldest first: their votes and
    /// promises are kept a while, since a vote that a promise hid (or a second vote) can
    /// surface only afterwards, in another copy of a commit.
    retired: std::collections::VecDeque<Hash32>,
    /// The commit fact this device gathered last: its votes were checked one by one as
    /// they came, so applying it skips checking them again.
    pub(super) votes_checked: Option<crate::journal::FactId>,
}

/// What a proposal asks its signers to sign along with their vote: the commit header
/// with this Lamport clock, with these signers' commitments (identifier, bytes).
pub(super) type SignAsk = (u64, Vec<(u16, Vec<u8>)>);

/// A signing and the commitments (identifier, bytes) its package was built from.
type Planned = (Signing, Vec<(u16, Vec<u8>)>);

/// Votes remembered for equivocation checks at once (beyond this, new ones are not).
const MAX_SEEN: usize = 4096;
/// Committed prestates whose votes and promises are still watched.
const RETIRED: usize = 4;

fn open_ballot(open: &BTreeMap<Hash32, Open>, prestate: &Hash32) -> u32 {
    open.get(prestate).map_or(0, |o| o.ballot)
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
        // While an instance from this prestate is known here, it is the one to finish (a
        // second would compete for the same votes and delay both). Having voted or
        // promised from it is no reason to wait when no instance is known (its proposal
        // may have come from a device now excluded, or been lost with a restart): a
        // fallback ballot will still finish whatever may have been agreed.
        // (One this device would refuse now does not count: whether a change is
        // agreeable can depend on more than the authority's state, say a context epoch
        // agreed since, and such an instance never gathers its votes.)
        let known = self
            .consensus
            .proposals
            .values()
            .any(|s| s.proposal.prestate == prestate && self.still_agreeable(&view, &s.proposal));
        if known && self.consensus.open.contains_key(&prestate) {
            return Err(CommandError::Busy);
        }
        let nonce = self.rng.bytes32();
        let id = consensus_id(&prestate, &op_hash(&op), &nonce);
        let proposal = Proposal {
            id,
            prestate,
            op,
            nonce,
            proposer: self.keys.id,
        };
        let me = self.keys.id;
        self.consensus.proposals.insert(
            id,
            Seen {
                proposal: proposal.clone(),
                by: me,
            },
        );
        self.touch_open(&view, prestate, 0, me);
        let warm = {
            // Members with a channel up are the likeliest to answer.
            let up: BTreeSet<DeviceId> = view
                .members
                .keys()
                .copied()
                .filter(|d| self.active.contains_key(&(crate::journal::ContextId::OWN, *d)))
                .collect();
            self.warm_signing(&view, &proposal, &up)
        };
        let ask = warm.as_ref().map(|(s, list)| (s.lamport, list.clone()));
        self.consensus.leads.insert(
            prestate,
            Lead {
                authority: view.id,
                ballot: 0,
                phase: Phase::Votes(Box::new(Gather::new(id, warm.map(|(s, _)| s)))),
            },
        );
        self.consensus.asked.insert((prestate, 0), self.now.mono);
        // Every member, this device included (its own vote goes through the same rules).
        for d in view.members.keys().copied().collect::<Vec<_>>() {
            let msg = match &ask {
                Some((lamport, commitments)) => AuthMsg::ProposeSigned {
                    proposal: proposal.clone(),
                    lamport: *lamport,
                    commitments: commitments.clone(),
                },
                None => AuthMsg::Propose(proposal.clone()),
            };
            self.send_auth(d, msg);
        }
        Ok(())
    }

    /// The bytes the group signs for a commit of `p` authored by `author` at `lamport`:
    /// the commit fact's signing bytes, which leave the votes out.
    fn header_message(view: &AuthorityView, p: &Proposal, author: DeviceId, lamport: u64) -> Vec<u8> {
        let body = FactBody::Commit(Commit {
            id: p.id,
            prestate: p.prestate,
            op: p.op.clone(),
            votes: Vec::new(),
        });
        crate::journal::Fact::signing_bytes(&Namespace::Authority(view.id), lamport, &author, &body)
    }

    /// Signing that starts with the proposal: when a threshold of members (this device
    /// first) set nonces aside for us, their commitments are used up here and the
    /// package is fixed before any vote.
    fn warm_signing(&mut self, view: &AuthorityView, p: &Proposal, alive: &BTreeSet<DeviceId>) -> Option<Planned> {
        let me = self.keys.id;
        let t = view.threshold as usize;
        let mut chosen: Vec<DeviceId> = Vec::new();
        // This device, then those known to be up (they just answered), then the rest.
        let others = view.members.keys().copied().filter(|d| *d != me);
        let (up, rest): (Vec<DeviceId>, Vec<DeviceId>) = others.partition(|d| alive.contains(d));
        for d in std::iter::once(me).chain(up).chain(rest) {
            if chosen.len() < t && self.consensus.held.contains_key(&d) && !view.equivocators.contains(&d) {
                chosen.push(d);
            }
        }
        if chosen.len() < t {
            return None;
        }
        let lamport = self.journal.next_lamport(&Namespace::Authority(view.id));
        let signing = self.signing_for(view, p, lamport, &chosen)?;
        Some(signing)
    }

    /// The name of a package: its Lamport clock and signers' commitments.
    fn package_digest(lamport: u64, list: &[(u16, Vec<u8>)]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("aura 2026-12 commit package");
        h.update(&lamport.to_le_bytes());
        h.update(&wire::encode(&list));
        h.finalize().into()
    }

    /// A package over the commit header for `signers`, from the commitments they set
    /// aside for us (used up here).
    fn signing_for(
        &mut self,
        view: &AuthorityView,
        p: &Proposal,
        lamport: u64,
        signers: &[DeviceId],
    ) -> Option<Planned> {
        let mut list = Vec::new();
        let mut map = BTreeMap::new();
        let mut by_ident = BTreeMap::new();
        for d in signers {
            let i = view.members.get(d)?.identifier;
            let raw = self.consensus.held.get(d)?.clone();
            let cm = SigningCommitments::deserialize(&raw).ok()?;
            map.insert(Identifier::try_from(i).ok()?, cm);
            by_ident.insert(i, *d);
            list.push((i, raw));
        }
        for d in signers {
            self.consensus.held.remove(d);
        }
        list.sort();
        let message = Self::header_message(view, p, self.keys.id, lamport);
        let package = SigningPackage::new(map, &message);
        Some((
            Signing {
                lamport,
                digest: Self::package_digest(lamport, &list),
                package,
                signers: by_ident,
                shares: BTreeMap::new(),
            },
            list,
        ))
    }

    /// Whether this device votes for (and signs) change `kind`: it must apply. An added
    /// device gets its share after the commit (peer_enroll.rs).
    ///
    /// `fresh`: a new instance (the fast ballot), not one a fallback ballot may have to
    /// finish. Checks that depend on more than the authority's state (a context's epoch
    /// and members move on) apply to fresh instances only: an instance that may already
    /// have been agreed must stay agreeable, or its prestate would be stuck for good.
    fn agreeable(&self, view: &AuthorityView, kind: &TreeOpKind, fresh: bool) -> bool {
        view.applies(kind)
            && match kind {
                // Only a member that holds its refreshed share can switch to it.
                TreeOpKind::Refresh(op) => self.holds_refresh(view, &op.shares),
                TreeOpKind::ContextEpoch(op) => self.epoch_agreeable(view, op, fresh),
                // Not a device another authority we know has (it would be listed twice
                // in a context, and the claim rule would keep it out of our list).
                TreeOpKind::AddDevice(m) if fresh => {
                    let d = m.cert.id();
                    !self
                        .views
                        .0
                        .values()
                        .any(|v| v.id != view.id && v.members.contains_key(&d))
                        && !self
                            .contexts
                            .values()
                            .any(|c| c.view.members.get(&d).is_some_and(|cm| cm.authority != view.id))
                }
                _ => true,
            }
    }

    /// Whether this device would vote for proposal `p` now.
    fn still_agreeable(&self, view: &AuthorityView, p: &Proposal) -> bool {
        let mut scratch = Vec::new();
        wire::strict_decode::<TreeOpKind>(&p.op, &mut scratch).is_ok_and(|k| self.agreeable(view, &k, true))
    }

    /// How long ballot `ballot` gets before the next one is due: the fallback timer
    /// (three times the slowest round trip observed to a member of `view`, at least
    /// 200 ms), doubling once per full rotation of the members, at most `MAX_FALLBACK`.
    fn fallback_after(&self, view: &AuthorityView, ballot: u32) -> std::time::Duration {
        let rtt = view
            .members
            .keys()
            .filter_map(|d| self.consensus.rtt.get(d))
            .max()
            .copied();
        let rounds = ballot / view.members.len().max(1) as u32;
        fallback_timeout(rtt)
            .saturating_mul(1u32 << rounds.min(16))
            .min(MAX_FALLBACK)
    }

    /// A round trip to `peer` took `sample`: smoothed like TCP's estimate (7/8 old).
    pub(super) fn observe_rtt(&mut self, peer: DeviceId, sample: std::time::Duration) {
        let sample = sample.min(MAX_FALLBACK);
        let e = self.consensus.rtt.entry(peer).or_insert(sample);
        *e = (*e * 7 + sample) / 8;
    }

    /// Notes activity at `ballot` from `prestate`: the prestate is open here, and its
    /// next fallback ballot is due `fallback_after` from now (later if already later).
    fn touch_open(&mut self, view: &AuthorityView, prestate: Hash32, ballot: u32, by: DeviceId) {
        let now = self.now.mono;
        let deadline = now.saturating_add(self.fallback_after(view, ballot));
        let open = self.consensus.open.entry(prestate).or_insert(Open {
            authority: view.id,
            deadline,
            ballot,
            expires: now,
            by,
        });
        open.expires = now.saturating_add(KEEP_FOREIGN);
        if ballot >= open.ballot {
            open.ballot = ballot;
            open.deadline = open.deadline.max(deadline);
        }
    }

    /// Whether remembering something new about instance `id` / `prestate` fits.
    fn room_for(&self, id: Option<&ConsensusId>, prestate: &Hash32, by: DeviceId) -> bool {
        let c = &self.consensus;
        let new_id = id.is_some_and(|i| !c.proposals.contains_key(i));
        let new_open = !c.open.contains_key(prestate);
        let ids_by = || c.proposals.values().filter(|s| s.by == by).count();
        let opens_by = || c.open.values().filter(|o| o.by == by).count();
        let full_ids = new_id && (c.proposals.len() >= MAX_PROPOSALS || ids_by() >= MAX_PER_MEMBER);
        let full_opens = new_open && (c.open.len() >= MAX_PROPOSALS || opens_by() >= MAX_PER_MEMBER);
        !(full_ids || full_opens)
    }

    fn member_set(view: &AuthorityView) -> BTreeSet<DeviceId> {
        view.members.keys().copied().collect()
    }

    /// A witness receives a proposal (ballot 0, straight from its proposer), perhaps
    /// with a request to sign the commit header along with the vote.
    pub(super) fn on_propose(&mut self, from: DeviceId, p: Proposal, ask: Option<SignAsk>) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let valid =
            view.members.contains_key(&from) && !view.equivocators.contains(&from) && p.proposer == from && p.binds();
        if !valid {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        self.witness(&view, from, p, 0, ask);
    }

    /// A witness receives a fallback coordinator's request for votes.
    pub(super) fn on_accept_ballot(&mut self, from: DeviceId, ballot: u32, p: Proposal, ask: Option<SignAsk>) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let valid = (1..=MAX_BALLOT).contains(&ballot)
            && view.members.contains_key(&p.proposer)
            && !view.equivocators.contains(&from)
            && p.binds()
            && coordinator(&Self::member_set(&view), &p.prestate, ballot) == Some(from);
        if !valid {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        self.witness(&view, from, p, ballot, ask);
    }

    /// Votes for `p` at `ballot` if the rules allow, else says why.
    fn witness(&mut self, view: &AuthorityView, from: DeviceId, p: Proposal, ballot: u32, ask: Option<SignAsk>) {
        if !self.room_for(Some(&p.id), &p.prestate, from) {
            return self.metrics.drop(DropReason::Overloaded);
        }
        self.consensus.proposals.entry(p.id).or_insert(Seen {
            proposal: p.clone(),
            by: from,
        });
        self.touch_open(view, p.prestate, ballot, from);
        let id = p.id;
        if self.consensus.equivocate && ballot == 0 && p.prestate == view.prestate() {
            // The faulty member of the simulations: a fast vote for anything, unrecorded.
            let vote = Vote::sign(&self.keys, &mut self.rng, &p, 0);
            return self.send_vote(vote, from);
        }
        match self
            .consensus
            .ballots
            .decide(&view.prestate(), &id, &p.prestate, ballot)
        {
            Decision::Vote => {
                let change = wire::strict_decode::<TreeOpKind>(&p.op, &mut Vec::new()).ok();
                if !change.is_some_and(|k| self.agreeable(view, &k, ballot == 0)) {
                    return self.send_auth(
                        from,
                        AuthMsg::Refused {
                            id,
                            refusal: Refusal::Invalid,
                        },
                    );
                }
                let vote = Vote::sign(&self.keys, &mut self.rng, &p, ballot);
                self.consensus.ballots.record(vote.clone());
                self.consensus.writing_votes.insert((p.prestate, ballot));
                self.persist(
                    Record::Voted {
                        vote: vote.clone(),
                        proposal: p,
                    },
                    Pending::Voted { vote, to: from, ask },
                );
            }
            // Being written: it goes out once durable.
            Decision::Again(_) if self.consensus.writing_votes.contains(&(p.prestate, ballot)) => {}
            // A vote still being written is not shown to anyone (it may yet be lost in a
            // crash, and a vote shown and then lost would look like a second vote).
            Decision::Refuse(Refusal::Voted(v)) if self.consensus.writing_votes.contains(&(v.prestate, v.ballot)) => {}
            Decision::Again(vote) => self.send_auth(from, AuthMsg::Voted { vote }),
            Decision::Refuse(refusal) => self.send_auth(from, AuthMsg::Refused { id, refusal }),
        }
    }

    /// Our vote is durable: send it to whoever runs its ballot, and to every other
    /// member (so that two different votes of one member at one ballot meet somewhere
    /// and prove an equivocation).
    pub(super) fn vote_durable(&mut self, vote: Vote, to: DeviceId, ask: Option<SignAsk>) {
        self.consensus.writing_votes.remove(&(vote.prestate, vote.ballot));
        // To whoever gathers: our share of the header if asked (the nonce it names is
        // used up). To everyone: a fresh nonce commitment set aside for them, so that
        // whoever proposes next can ask for shares with its proposal.
        let share = ask.and_then(|(lamport, list)| self.header_share(to, &vote, lamport, &list));
        let members: Vec<DeviceId> = self
            .my_authority()
            .map(|v| v.members.keys().copied().collect())
            .unwrap_or_default();
        for d in members.into_iter().filter(|d| *d != to) {
            // Members holding an unused one of ours keep it.
            let next = match self.consensus.set_aside.get(&d) {
                Some(kept) if !kept.is_empty() => None,
                _ => self.set_aside_nonce(d),
            };
            let vote = vote.clone();
            self.send_auth(
                d,
                AuthMsg::VoteSigned {
                    vote,
                    share: None,
                    next,
                },
            );
        }
        let next = self.set_aside_nonce(to);
        self.send_auth(to, AuthMsg::VoteSigned { vote, share, next });
    }

    /// Sets a fresh nonce aside for `gatherer` and returns its commitment (`None` when
    /// no reserved nonce is left: the gatherer then falls back to a slower signing).
    fn set_aside_nonce(&mut self, gatherer: DeviceId) -> Option<Vec<u8>> {
        let group_key = self.my_authority()?.group_key;
        let (nonces, commitments) = self.reserved_nonce(&group_key)?;
        let raw = commitments.serialize().ok()?;
        let kept = self.consensus.set_aside.entry(gatherer).or_default();
        kept.push((nonces, raw.clone()));
        if kept.len() > 2 {
            kept.remove(0);
        }
        Some(raw)
    }

    /// Our share of the commit header of the instance `vote` is for, authored by
    /// `gatherer` at `lamport`, with the signers' commitments `list`: only if our own
    /// entry is a nonce we set aside for that gatherer (used up here, whatever happens).
    fn header_share(
        &mut self,
        gatherer: DeviceId,
        vote: &Vote,
        lamport: u64,
        list: &[(u16, Vec<u8>)],
    ) -> Option<Vec<u8>> {
        let view = self.my_authority()?.clone();
        let share = self.shares.get(&view.group_key)?;
        let me = super::authority_impl::identifier_number(share.key.identifier());
        let (_, mine) = list.iter().find(|(i, _)| *i == me)?;
        let kept = self.consensus.set_aside.get_mut(&gatherer)?;
        let k = kept.iter().position(|(_, raw)| raw == mine)?;
        let (nonces, _) = kept.remove(k);
        let p = self.consensus.proposals.get(&vote.id)?.proposal.clone();
        if !vote.is_for(&p) || view.prestate() != vote.prestate || !view.members.contains_key(&gatherer) {
            return None;
        }
        let mut map = BTreeMap::new();
        for (i, raw) in list {
            let cm = if *i == me {
                *nonces.commitments()
            } else {
                SigningCommitments::deserialize(raw).ok()?
            };
            map.insert(Identifier::try_from(*i).ok()?, cm);
        }
        if map.len() != list.len() {
            return None;
        }
        let message = Self::header_message(&view, &p, gatherer, lamport);
        let package = SigningPackage::new(map, &message);
        let share = self.shares.get(&view.group_key)?;
        frost::round2::sign(&package, &nonces, &share.key)
            .ok()
            .map(|s| s.serialize())
    }

    fn send_vote(&mut self, vote: Vote, to: DeviceId) {
        let members: Vec<DeviceId> = self
            .my_authority()
            .map(|v| v.members.keys().copied().collect())
            .unwrap_or_default();
        for d in members.into_iter().filter(|d| *d != to).chain([to]) {
            self.send_auth(d, AuthMsg::Voted { vote: vote.clone() });
        }
    }

    /// Restores a vote record, and its instance so this device takes part in its
    /// fallback (forgotten once a commit from its prestate applies, or when it expires).
    pub(super) fn restore_vote(&mut self, vote: Vote, proposal: Proposal) {
        self.consensus.ballots.record(vote);
        let Some(view) = self.my_authority().cloned() else {
            return;
        };
        let prestate = proposal.prestate;
        let me = self.keys.id;
        self.consensus
            .proposals
            .entry(proposal.id)
            .or_insert(Seen { proposal, by: me });
        self.touch_open(&view, prestate, 0, me);
    }

    /// A fallback coordinator asks for a promise.
    pub(super) fn on_prepare(&mut self, from: DeviceId, prestate: Hash32, ballot: u32) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let valid = (1..=MAX_BALLOT).contains(&ballot)
            && !view.equivocators.contains(&from)
            && coordinator(&Self::member_set(&view), &prestate, ballot) == Some(from);
        if !valid {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if !self.room_for(None, &prestate, from) {
            return self.metrics.drop(DropReason::Overloaded);
        }
        self.touch_open(&view, prestate, ballot, from);
        let Promise::Give(_) = self.consensus.ballots.prepare(&view.prestate(), &prestate, ballot) else {
            // Behind, ahead or promised higher: no answer; the coordinator's ballot times
            // out and a later one asks again.
            return;
        };
        let c = &self.consensus;
        if c.writing_votes
            .iter()
            .chain(&c.writing_promises)
            .any(|(p, _)| *p == prestate)
        {
            // What we would report or promise is not durable yet: no answer (a later
            // ballot asks again).
            return;
        }
        if c.ballots.slot(&prestate).is_some_and(|s| s.promised >= ballot) {
            // Promised already (durably: nothing is being written), or it is our own
            // prepare (promised before it was sent): answer.
            return self.promise_durable(prestate, ballot, Some(from));
        }
        self.write_promise(prestate, ballot, Some(from));
    }

    /// A promise is durable: send it (with our highest vote) to the coordinator, or, if
    /// we are the coordinator, send the prepare requests.
    pub(super) fn promise_durable(&mut self, prestate: Hash32, ballot: u32, to: Option<DeviceId>) {
        self.consensus.writing_promises.remove(&(prestate, ballot));
        if self.my_authority().is_none_or(|v| v.prestate() != prestate) {
            // The state moved on while the promise was being written (a commit from it
            // applied, and what we voted from it is forgotten): the ballot is moot, and a
            // promise now could not report our votes truthfully.
            return;
        }
        if self.consensus.writing_votes.iter().any(|(p, _)| *p == prestate) {
            // Our newest vote is not durable yet: no promise that reports (or hides) it;
            // the coordinator's ballot times out and a later one asks again.
            if to.is_some() {
                return;
            }
        }
        let Some(to) = to else {
            let Some(view) = self.my_authority().cloned() else {
                return;
            };
            for d in view.members.keys().copied().collect::<Vec<_>>() {
                self.send_auth(d, AuthMsg::Prepare { prestate, ballot });
            }
            return;
        };
        let last = self
            .consensus
            .ballots
            .slot(&prestate)
            .and_then(|s| s.votes.values().next_back().cloned());
        let last = match last {
            None => None,
            Some(v) => match self.consensus.proposals.get(&v.id) {
                Some(seen) => Some((v, seen.proposal.clone())),
                // Without the instance we cannot report the vote: no promise rather
                // than a false one.
                None => return,
            },
        };
        let cert = crate::consensus::PromiseCert::sign(
            &self.keys,
            &mut self.rng,
            prestate,
            ballot,
            last.as_ref().map(|(v, _)| v),
        );
        self.send_auth(
            to,
            AuthMsg::Promise {
                prestate,
                ballot,
                last,
                cert,
            },
        );
    }

    /// The coordinator of `ballot` receives a promise.
    pub(super) fn on_promise(
        &mut self,
        from: DeviceId,
        prestate: Hash32,
        ballot: u32,
        last: Option<(Vote, Proposal)>,
        cert: crate::consensus::PromiseCert,
    ) {
        let Some(lead) = self.consensus.leads.get(&prestate) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        if lead.ballot != ballot || !matches!(lead.phase, Phase::Promises(_)) {
            return; // an older ballot of ours, or we moved on to votes
        }
        let Some(view) = self.views.0.get(&lead.authority).cloned() else {
            return;
        };
        let Some(member) = view.members.get(&from) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        if view.equivocators.contains(&from) {
            return; // its word counts for nothing: as if it did not answer
        }
        // The signed promise must say what the message says; it is kept, and any vote of
        // this witness it hid (seen before or after) proves the witness lied.
        let says = last.as_ref().map(|(v, _)| (v.ballot, v.id));
        let consistent = cert.voter == from && cert.prestate == prestate && cert.ballot == ballot && cert.last == says;
        if !consistent || !cert.verify(&member.cert.signing) {
            return self.metrics.drop(DropReason::BadFact);
        }
        self.check_promise(view.id, cert);
        let report = match last {
            None => None,
            Some((v, p)) => {
                let valid = v.voter == from
                    && v.prestate == prestate
                    && v.ballot <= ballot
                    && v.is_for(&p)
                    && p.binds()
                    && v.verify(&member.cert.signing);
                if !valid {
                    return self.metrics.drop(DropReason::BadFact);
                }
                if !self.room_for(Some(&p.id), &prestate, from) {
                    return self.metrics.drop(DropReason::Overloaded);
                }
                self.consensus
                    .proposals
                    .entry(p.id)
                    .or_insert(Seen { proposal: p, by: from });
                self.observe_votes(view.id, std::slice::from_ref(&v));
                Some(v)
            }
        };
        let lead = self.consensus.leads.get_mut(&prestate).expect("checked");
        let Phase::Promises(reports) = &mut lead.phase else {
            return;
        };
        reports.insert(from, report);
        if reports.len() < quorum(view.members.len(), view.threshold) {
            return;
        }
        let alive: BTreeSet<DeviceId> = reports.keys().copied().collect();
        let reports: Vec<Option<Vote>> = reports.values().cloned().collect();
        let id = match choose(&reports, view.members.len(), view.threshold) {
            Choice::Bound(id) => Some(id),
            Choice::Free => {
                // Any instance from this prestate: the one most reported, else one we know
                // (ours first).
                let mut counts: BTreeMap<ConsensusId, usize> = BTreeMap::new();
                for v in reports.iter().flatten() {
                    *counts.entry(v.id).or_default() += 1;
                }
                let me = self.keys.id;
                // (One this device would still vote for at a fast ballot first: a stale
                // one is finished only when nothing better is known.)
                let pick = |fresh_only: bool| {
                    self.consensus
                        .proposals
                        .values()
                        .filter(|s| s.proposal.prestate == prestate)
                        .filter(|s| !fresh_only || self.still_agreeable(&view, &s.proposal))
                        .min_by_key(|s| (s.proposal.proposer != me, s.proposal.id))
                        .map(|s| s.proposal.id)
                };
                let known = pick(true).or_else(|| pick(false));
                counts
                    .into_iter()
                    .max_by_key(|(id, c)| (*c, std::cmp::Reverse(*id)))
                    .map(|(id, _)| id)
                    .or(known)
            }
        };
        let Some(proposal) = id
            .and_then(|id| self.consensus.proposals.get(&id))
            .map(|s| s.proposal.clone())
        else {
            // Nothing to agree on from here: let the ballot go.
            self.consensus.leads.remove(&prestate);
            return;
        };
        // As with a proposal: if a threshold set nonces aside for us, they sign with
        // their vote (the fallback then takes prepare, promise, accept, vote: 4 delays).
        let warm = self.warm_signing(&view, &proposal, &alive);
        let ask = warm.as_ref().map(|(s, list)| (s.lamport, list.clone()));
        self.consensus.leads.insert(
            prestate,
            Lead {
                authority: view.id,
                ballot,
                phase: Phase::Votes(Box::new(Gather::new(proposal.id, warm.map(|(s, _)| s)))),
            },
        );
        self.consensus.asked.insert((prestate, ballot), self.now.mono);
        for d in view.members.keys().copied().collect::<Vec<_>>() {
            let proposal = proposal.clone();
            let msg = match &ask {
                Some((lamport, commitments)) => AuthMsg::AcceptSigned {
                    ballot,
                    proposal,
                    lamport: *lamport,
                    commitments: commitments.clone(),
                },
                None => AuthMsg::Accept { ballot, proposal },
            };
            self.send_auth(d, msg);
        }
    }

    /// A vote arrives: every member gets a copy; the proposer (ballot 0) or the fallback
    /// coordinator also counts it.
    pub(super) fn on_voted(&mut self, from: DeviceId, vote: Vote) {
        self.on_vote_signed(from, vote, None, None);
    }

    /// A vote for the ballot we gather, perhaps with a share of the commit header we
    /// asked for and a nonce commitment set aside for our next signing.
    pub(super) fn on_vote_signed(&mut self, from: DeviceId, vote: Vote, share: Option<Vec<u8>>, next: Option<Vec<u8>>) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let key = view.members.get(&from).map(|m| m.cert.signing);
        if vote.voter != from || key.is_none() || view.equivocators.contains(&from) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        self.hold_commitment(from, next);
        let gathering = self
            .consensus
            .leads
            .get(&vote.prestate)
            .is_some_and(|l| l.ballot == vote.ballot);
        if !gathering {
            // A copy for the record: kept as evidence unchecked (signatures are checked
            // if it ever conflicts with another vote, which costs nothing otherwise).
            return self.observe_votes(view.id, std::slice::from_ref(&vote));
        }
        if !key.is_some_and(|k| vote.verify(&k)) {
            return self.metrics.drop(DropReason::BadFact);
        }
        self.observe_votes(view.id, std::slice::from_ref(&vote));
        let Some(lead) = self.consensus.leads.get(&vote.prestate) else {
            return;
        };
        let Phase::Votes(g) = &lead.phase else {
            return;
        };
        if lead.ballot != vote.ballot || g.id != vote.id || lead.authority != view.id {
            return; // another ballot's vote (ours moved on), or a vote we did not ask for
        }
        let Some(seen) = self.consensus.proposals.get(&vote.id) else {
            return;
        };
        if !vote.is_for(&seen.proposal) {
            return self.metrics.drop(DropReason::BadFact);
        }
        let prestate = vote.prestate;
        // Time the first answer of each voter to what we asked (only votes for it).
        let first = !g.votes.contains_key(&from) && from != self.keys.id;
        if let Some(at) = self
            .consensus
            .asked
            .get(&(prestate, vote.ballot))
            .copied()
            .filter(|_| first)
        {
            self.observe_rtt(from, self.now.mono.saturating_since(at));
        }
        let Some(Lead {
            phase: Phase::Votes(g), ..
        }) = self.consensus.leads.get_mut(&prestate)
        else {
            return;
        };
        g.votes.entry(from).or_insert(vote);
        if let (Some(w), Some(bytes)) = (g.warm.as_mut(), share) {
            Self::add_header_share(w, &view, from, &bytes);
        }
        self.try_finish(&view, prestate);
    }

    /// Remembers the nonce commitment `member` set aside for us, if it parses.
    fn hold_commitment(&mut self, member: DeviceId, next: Option<Vec<u8>>) {
        if let Some(raw) = next.filter(|r| SigningCommitments::deserialize(r).is_ok()) {
            self.consensus.held.insert(member, raw);
        }
    }

    /// A signer's share for signing `s`, kept if the signer is in it (checked as a whole
    /// when aggregating).
    fn add_header_share(s: &mut Signing, view: &AuthorityView, from: DeviceId, bytes: &[u8]) {
        let Some(i) = view.members.get(&from).map(|m| m.identifier) else {
            return;
        };
        if s.signers.get(&i) != Some(&from) {
            return;
        }
        if let (Ok(id), Ok(share)) = (Identifier::try_from(i), SignatureShare::deserialize(bytes)) {
            s.shares.insert(id, share);
        }
    }

    /// With enough votes: finish with whichever signing has all its shares; if none is
    /// under way that can, start signing with the nonces that came with the votes (two
    /// more delays), or as a last resort the general signing session.
    fn try_finish(&mut self, view: &AuthorityView, prestate: Hash32) {
        let Some(Lead {
            ballot,
            phase: Phase::Votes(g),
            ..
        }) = self.consensus.leads.get_mut(&prestate)
        else {
            return;
        };
        let needed = view.votes_needed(*ballot);
        // A vote counted before its voter was proven an equivocator counts no more.
        g.votes.retain(|d, _| !view.equivocators.contains(d));
        if g.done || g.votes.len() < needed {
            return;
        }
        let Some(p) = self.consensus.proposals.get(&g.id).map(|s| s.proposal.clone()) else {
            return;
        };
        let commit = Commit {
            id: p.id,
            prestate: p.prestate,
            op: p.op.clone(),
            votes: g.votes.values().cloned().collect(),
        };
        let public = self.shares.get(&view.group_key).map(|s| s.public.clone());
        let mut finished = None;
        for (k, signing) in [&mut g.warm, &mut g.cold].into_iter().enumerate() {
            let Some(s) = signing else { continue };
            if s.shares.len() < s.signers.len() {
                continue;
            }
            let Some(public) = public.as_ref() else { continue };
            let signature = match frost::aggregate(&s.package, &s.shares, public) {
                Ok(sig) => sig.serialize().ok().and_then(|b| <[u8; 64]>::try_from(b).ok()),
                Err(e) => {
                    // A bad share: this signing is lost (another may still finish), and
                    // its signer is left out from now on.
                    for c in e.culprits() {
                        let i = super::authority_impl::identifier_number(&c);
                        if let Some(d) = s.signers.get(&i) {
                            g.culprits.insert(*d);
                        }
                    }
                    None
                }
            };
            let Some(sig) = signature else {
                *signing = None;
                continue;
            };
            g.done = true;
            let frame = crate::consensus::CommitFrame {
                namespace: Namespace::Authority(view.id),
                lamport: s.lamport,
                author: self.keys.id,
            };
            finished = Some((k, frame.fact(commit.clone(), sig)));
            break;
        }
        if let Some((k, fact)) = finished {
            match k {
                0 => self.metrics.commits_warm += 1,
                _ => self.metrics.commits_cold += 1,
            }
            return self.commit_signed(p.id, fact);
        }
        if g.cold.is_some() || g.session {
            return; // its shares are on their way
        }
        // Signers: voters that set a nonce aside for us, this device first.
        let me = self.keys.id;
        let t = view.threshold as usize;
        let voters: Vec<DeviceId> = std::iter::once(me)
            .chain(g.votes.keys().copied())
            .filter(|d| g.votes.contains_key(d) && self.consensus.held.contains_key(d) && !g.culprits.contains(d))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut chosen: Vec<DeviceId> = voters.iter().copied().filter(|d| *d == me).collect();
        chosen.extend(voters.iter().copied().filter(|d| *d != me));
        chosen.truncate(t);
        let lamport = self.journal.next_lamport(&Namespace::Authority(view.id));
        let cold = if chosen.len() == t {
            self.signing_for(view, &p, lamport, &chosen)
        } else {
            None
        };
        let Some(Lead {
            phase: Phase::Votes(g), ..
        }) = self.consensus.leads.get_mut(&prestate)
        else {
            return;
        };
        match cold {
            Some((s, list)) => {
                let signers: Vec<DeviceId> = s.signers.values().copied().collect();
                g.cold = Some(s);
                for d in signers {
                    self.send_auth(
                        d,
                        AuthMsg::CommitPackage {
                            id: p.id,
                            lamport,
                            commitments: list.clone(),
                        },
                    );
                }
            }
            None => {
                g.session = true;
                g.done = true;
                self.metrics.commits_session += 1;
                let ns = Namespace::Authority(view.id);
                let fact = crate::authority::UnsignedFact {
                    namespace: ns,
                    lamport,
                    author: me,
                    body: FactBody::Commit(commit),
                };
                self.start_commit_signing(view.group_key, fact, p.id);
            }
        }
    }

    /// A gatherer asks for our share of the header of a commit we voted for, naming a
    /// nonce we set aside for it.
    pub(super) fn on_commit_package(
        &mut self,
        from: DeviceId,
        id: ConsensusId,
        lamport: u64,
        commitments: Vec<(u16, Vec<u8>)>,
    ) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        if !view.members.contains_key(&from) || view.equivocators.contains(&from) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        // Our own vote for it, from our current state (any ballot).
        let prestate = view.prestate();
        let mine = self
            .consensus
            .ballots
            .slot(&prestate)
            .and_then(|s| s.votes.values().find(|v| v.id == id).cloned());
        let Some(vote) = mine.filter(|v| !self.consensus.writing_votes.contains(&(v.prestate, v.ballot))) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        let share = self.header_share(from, &vote, lamport, &commitments);
        let next = self.set_aside_nonce(from);
        if let Some(share) = share {
            let package = Self::package_digest(lamport, &commitments);
            self.send_auth(
                from,
                AuthMsg::CommitShare {
                    id,
                    share,
                    next,
                    package,
                },
            );
        } else if let Some(next) = next {
            self.send_auth(from, AuthMsg::Nonce { commitment: next });
        }
    }

    /// A signer's share for the commit we sign after the votes.
    pub(super) fn on_commit_share(
        &mut self,
        from: DeviceId,
        id: ConsensusId,
        share: Vec<u8>,
        next: Option<Vec<u8>>,
        package: [u8; 32],
    ) {
        let Some(view) = self.my_authority().cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        if !view.members.contains_key(&from) || view.equivocators.contains(&from) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        self.hold_commitment(from, next);
        let found = self.consensus.leads.iter_mut().find_map(|(p, l)| match &mut l.phase {
            Phase::Votes(g) if g.id == id => Some((*p, g)),
            _ => None,
        });
        let Some((prestate, g)) = found else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        match g.cold.as_mut() {
            Some(c) if c.digest == package => Self::add_header_share(c, &view, from, &share),
            _ => return, // for a package given up
        }
        self.try_finish(&view, prestate);
    }

    /// A member set a nonce aside for us outside a vote.
    pub(super) fn on_nonce(&mut self, from: DeviceId, commitment: Vec<u8>) {
        let ok = self
            .my_authority()
            .is_some_and(|v| v.members.contains_key(&from) && !v.equivocators.contains(&from));
        if ok {
            self.hold_commitment(from, Some(commitment));
        }
    }

    /// A witness did not vote. Only a change that most members find invalid is given up
    /// here; every other refusal leaves the instance to the fallback ballots.
    pub(super) fn on_refused(&mut self, from: DeviceId, id: ConsensusId, refusal: Refusal) {
        if let (Refusal::Voted(v), Some(view)) = (&refusal, self.my_authority()) {
            let key = view.members.get(&from).map(|m| m.cert.signing);
            if v.voter == from && key.is_some_and(|k| v.verify(&k)) {
                let (a, v) = (view.id, v.clone());
                self.observe_votes(a, &[v]);
            }
        }
        let Some(seen) = self.consensus.proposals.get(&id) else {
            return self.metrics.drop(DropReason::UnknownSession);
        };
        if refusal != Refusal::Invalid || seen.proposal.proposer != self.keys.id {
            return;
        }
        let prestate = seen.proposal.prestate;
        let Some(view) = self.my_authority().cloned() else {
            return;
        };
        if !view.members.contains_key(&from) || view.prestate() != prestate {
            return;
        }
        // The witness checked the change against the same state we did: one of us has a
        // bug, or it is faulty. Nothing can be done about it here but say so.
        self.event(Event::ConsensusFailed {
            instance: id,
            reason: format!("device {} found the change invalid", from.short()),
        });
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
            && !c.votes.iter().any(|v| view.equivocators.contains(&v.voter))
            && c.prestate == view.prestate()
            && c.check(&keys, view.threshold).is_ok()
            && change.is_some_and(|k| self.agreeable(view, &k, false))
    }

    pub(super) fn consensus_deadline(&self) -> Option<Instant> {
        self.consensus.open.values().map(|o| o.deadline).min()
    }

    /// Fallback: a prestate whose open instance did not commit in time moves to its next
    /// ballot (run here if this device owns it); prestates that are not ours wait or
    /// expire.
    pub(super) fn consensus_timeout(&mut self) {
        let now = self.now.mono;
        let me = self.keys.id;
        let due: Vec<Hash32> = self
            .consensus
            .open
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        for prestate in due {
            let open = self.consensus.open.get(&prestate).expect("listed");
            let view = self.views.0.get(&open.authority).cloned();
            let Some(view) = view.filter(|v| v.members.contains_key(&me)) else {
                self.forget_prestate(&prestate);
                continue;
            };
            if view.prestate() != prestate {
                // Not our state: we are behind (wait; it may become ours) or it is over.
                if open.expires <= now {
                    self.forget_prestate(&prestate);
                } else {
                    let wait = self.fallback_after(&view, open.ballot);
                    self.consensus.open.get_mut(&prestate).expect("listed").deadline = now.saturating_add(wait);
                }
                continue;
            }
            let known = self
                .consensus
                .proposals
                .values()
                .any(|s| s.proposal.prestate == prestate);
            if !known {
                // Heard of a ballot but know no instance: nothing to finish from here.
                self.consensus.open.remove(&prestate);
                continue;
            }
            if self.replan_signing(&view, prestate) {
                // We hold a quorum of votes: what is late is the signing, so that is what
                // starts again (a new ballot would throw the votes away).
                let wait = self.fallback_after(&view, open_ballot(&self.consensus.open, &prestate));
                if let Some(o) = self.consensus.open.get_mut(&prestate) {
                    o.deadline = now.saturating_add(wait);
                }
                continue;
            }
            let open = self.consensus.open.get(&prestate).expect("listed");
            let promised = self.consensus.ballots.slot(&prestate).map_or(0, |s| s.promised);
            let next = open.ballot.max(promised).saturating_add(1).min(MAX_BALLOT);
            let wait = self.fallback_after(&view, next);
            let open = self.consensus.open.get_mut(&prestate).expect("listed");
            open.ballot = next;
            open.deadline = now.saturating_add(wait);
            let members = Self::member_set(&view);
            if coordinator(&members, &prestate, next) == Some(me) {
                self.start_ballot(&view, prestate, next);
            }
        }
    }

    /// When the ballot we gather from `prestate` has its votes but no signature yet:
    /// gives up the signing under way and plans a new one (other signers, fresh nonces).
    fn replan_signing(&mut self, view: &AuthorityView, prestate: Hash32) -> bool {
        let Some(Lead {
            ballot,
            phase: Phase::Votes(g),
            ..
        }) = self.consensus.leads.get_mut(&prestate)
        else {
            return false;
        };
        let needed = view.votes_needed(*ballot);
        if g.done || g.votes.len() < needed {
            return false;
        }
        // The signers that did not answer are the likely reason.
        for s in [g.warm.take(), g.cold.take()].into_iter().flatten() {
            let answered: BTreeSet<u16> = s.shares.keys().map(super::authority_impl::identifier_number).collect();
            for (i, d) in &s.signers {
                if !answered.contains(i) && *d != self.keys.id {
                    g.culprits.insert(*d);
                }
            }
        }
        self.try_finish(view, prestate);
        true
    }

    /// Runs fallback ballot `ballot` from `prestate`: our own promise first (durable
    /// before any prepare leaves, so a restarted coordinator never runs a ballot twice),
    /// then the prepare requests.
    fn start_ballot(&mut self, view: &AuthorityView, prestate: Hash32, ballot: u32) {
        self.metrics.consensus_fallbacks += 1;
        self.consensus.leads.insert(
            prestate,
            Lead {
                authority: view.id,
                ballot,
                phase: Phase::Promises(BTreeMap::new()),
            },
        );
        self.write_promise(prestate, ballot, None);
    }

    /// Promises `ballot` from `prestate`; the answer (`to`, or our own prepare requests)
    /// leaves once the record is durable.
    fn write_promise(&mut self, prestate: Hash32, ballot: u32, to: Option<DeviceId>) {
        self.consensus.ballots.promise(prestate, ballot);
        self.consensus.writing_promises.insert((prestate, ballot));
        self.persist(
            Record::Promised { prestate, ballot },
            Pending::Promised { prestate, ballot, to },
        );
    }

    fn forget_prestate(&mut self, prestate: &Hash32) {
        let c = &mut self.consensus;
        c.open.remove(prestate);
        c.leads.remove(prestate);
        c.proposals.retain(|_, s| s.proposal.prestate != *prestate);
        c.asked.retain(|(p, _), _| p != prestate);
        if !c.retired.contains(prestate) {
            c.seen.retain(|(p, _, _), _| p != prestate);
            c.promises.retain(|(p, _), _| p != prestate);
        }
    }

    /// A commit left `prestate` behind: keep watching its votes and promises for a
    /// while (the oldest retired prestate is forgotten for good).
    fn retire_prestate(&mut self, prestate: Hash32) {
        let c = &mut self.consensus;
        if c.retired.contains(&prestate) {
            return;
        }
        c.retired.push_back(prestate);
        if c.retired.len() > RETIRED {
            if let Some(old) = c.retired.pop_front() {
                c.seen.retain(|(p, _, _), _| *p != old);
                c.promises.retain(|(p, _), _| *p != old);
            }
        }
    }

    /// Keeps a witness's signed promise and checks it against the votes of that witness
    /// seen so far.
    fn check_promise(&mut self, authority: AuthorityId, cert: crate::consensus::PromiseCert) {
        let hidden: Vec<Vote> = self
            .consensus
            .seen
            .range((cert.prestate, 0, DeviceId([0; 32]))..=(cert.prestate, u32::MAX, DeviceId([0xff; 32])))
            .filter(|((_, _, d), v)| *d == cert.voter && cert.hides(v))
            .map(|(_, v)| v.clone())
            .collect();
        let key = (cert.prestate, cert.voter);
        let known = self.consensus.promises.get(&key);
        let keep = known.is_none_or(|c| c.ballot < cert.ballot);
        if keep && (known.is_some() || self.consensus.promises.len() < MAX_SEEN) {
            self.consensus.promises.insert(key, cert.clone());
        }
        // Kept votes are unchecked: try them until one proof holds (each try checks two
        // signatures, and a member already proven costs none).
        for vote in hidden {
            let proof = crate::consensus::HiddenVote {
                promise: cert.clone(),
                vote,
            };
            if self.report_misbehaviour(authority, FactBody::HiddenVote(proof)) {
                break;
            }
        }
    }

    /// Writes a proof against a member (an equivocation or a hidden vote) once per
    /// member, pushed to every member, if it checks against the member's key.
    fn report_misbehaviour(&mut self, authority: AuthorityId, body: FactBody) -> bool {
        let Some(view) = self.views.0.get(&authority) else {
            return false;
        };
        let voter = match &body {
            FactBody::Equivocation(e) => e.first.voter,
            FactBody::HiddenVote(h) => h.vote.voter,
            _ => return false,
        };
        // The cheap tests first: a member already proven costs no signature check.
        let Some(key) = view.members.get(&voter).map(|m| m.cert.signing) else {
            return false;
        };
        if view.equivocators.contains(&voter) || self.consensus.reported.contains(&voter) {
            return false;
        }
        let valid = match &body {
            FactBody::Equivocation(e) => e.check(&key).is_ok(),
            FactBody::HiddenVote(h) => h.check(&key).is_ok(),
            _ => false,
        };
        if !valid {
            return false;
        }
        self.consensus.reported.insert(voter);
        match &body {
            FactBody::HiddenVote(_) => self.metrics.hidden_votes += 1,
            _ => self.metrics.equivocations += 1,
        }
        let me = self.keys.id;
        let others = view.members.keys().copied().filter(|d| *d != me).collect();
        let fact = self.device_fact(Namespace::Authority(authority), body, &[]);
        self.record_facts(vec![fact], Some(others));
        true
    }

    /// Checks votes of members of `authority` against those seen before; two for
    /// different instances at one ballot become an equivocation fact, written once per
    /// equivocator and pushed to every member. Signatures are checked only then (the
    /// proof must hold for everyone who reduces it); a badly signed vote kept earlier is
    /// replaced by a good one.
    pub(super) fn observe_votes(&mut self, authority: AuthorityId, votes: &[Vote]) {
        let Some(view) = self.views.0.get(&authority).cloned() else {
            return;
        };
        let mut proofs = Vec::new();
        let current = view.prestate();
        for v in votes {
            let watched = v.prestate == current
                || self.consensus.open.contains_key(&v.prestate)
                || self.consensus.retired.contains(&v.prestate);
            if !watched || v.ballot > MAX_BALLOT {
                continue; // only prestates open here or just committed, and real ballots
            }
            let key = (v.prestate, v.ballot, v.voter);
            match self.consensus.seen.get(&key) {
                Some(w) if w.id != v.id => {
                    if let Some(e) = crate::consensus::Equivocation::of(w.clone(), v.clone()) {
                        proofs.push(e);
                    }
                }
                Some(_) => {}
                None if self.consensus.seen.len() < MAX_SEEN => {
                    self.consensus.seen.insert(key, v.clone());
                }
                None => {}
            }
        }
        for e in proofs {
            let voter = e.first.voter;
            let Some(m) = view.members.get(&voter) else { continue };
            if e.check(&m.cert.signing).is_err() {
                // Votes are kept unchecked: a bad one must not shadow a good one.
                let key = (e.first.prestate, e.first.ballot, voter);
                if let Some(good) = [&e.first, &e.second].into_iter().find(|v| v.verify(&m.cert.signing)) {
                    self.consensus.seen.insert(key, good.clone());
                }
                continue;
            }
            self.report_misbehaviour(authority, FactBody::Equivocation(e));
        }
        // A vote that a promise of its voter hid.
        for v in votes {
            let hid = self
                .consensus
                .promises
                .get(&(v.prestate, v.voter))
                .filter(|c| c.hides(v))
                .cloned();
            if let Some(promise) = hid {
                let proof = crate::consensus::HiddenVote {
                    promise,
                    vote: v.clone(),
                };
                self.report_misbehaviour(authority, FactBody::HiddenVote(proof));
            }
        }
    }

    /// The group signed our commit: record it and push it to every member (each reports
    /// it once it applies).
    pub(super) fn commit_signed(&mut self, instance: ConsensusId, fact: crate::journal::Fact) {
        let Namespace::Authority(a) = fact.namespace else {
            return;
        };
        let _ = instance;
        // Its votes were checked one by one as they came: applying it need not again.
        self.consensus.votes_checked = Some(fact.id());
        let me = self.keys.id;
        let others: BTreeSet<DeviceId> = self
            .views
            .0
            .get(&a)
            .map(|v| v.members.keys().copied().filter(|d| *d != me).collect())
            .unwrap_or_default();
        self.record_facts(vec![fact], Some(others));
    }

    /// A commit applied here (the view moved): report it, and forget its prestate (the
    /// state moved on and never comes back).
    pub(super) fn committed(&mut self, authority: AuthorityId, id: ConsensusId, prestate: [u8; 32], epoch: u64) {
        let me = self.keys.id;
        let lost: Vec<ConsensusId> = self
            .consensus
            .proposals
            .values()
            .filter(|s| s.proposal.prestate == prestate && s.proposal.id != id && s.proposal.proposer == me)
            .map(|s| s.proposal.id)
            .collect();
        self.retire_prestate(prestate);
        self.forget_prestate(&prestate);
        self.consensus.ballots.retain(|p| *p != prestate);
        if self.restoring {
            return;
        }
        for instance in lost {
            self.event(Event::ConsensusFailed {
                instance,
                reason: "another change from the same state was agreed first".into(),
            });
        }
        self.event(Event::Committed {
            authority,
            instance: id,
            epoch,
        });
    }
}
