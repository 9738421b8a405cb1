//! Prestate-bound single-shot agreement, the pure part: votes, quorums, commits with a
//! real FROST signature, witness checks, rotation, and "at most one commit per prestate
//! unless someone provably equivocated" over random schedules. Key shares come from a
//! trusted dealer here (tests only; devices get theirs by DKG).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aura_proto::authority::{AuthorityView, TreeOpReject, Views};
use aura_proto::consensus::*;
use aura_proto::journal::{
    verify_fact, AuthorityId, Fact, FactBody, FactSig, Genesis, Journal, Member, Namespace, Sig64, TreeOpKind,
};
use aura_proto::keys::{DeviceId, DeviceKeys, DeviceSecret};
use aura_proto::rng::PeerRng;
use aura_proto::wire;
use frost_ristretto255 as frost;
use quickcheck::{QuickCheck, TestResult};

struct Group {
    keys: Vec<DeviceKeys>,
    shares: Vec<frost::keys::KeyPackage>,
    public: frost::keys::PublicKeyPackage,
}

impl Group {
    fn new(n: u16, t: u16, seed: u8) -> Group {
        let mut rng = PeerRng::from_seed([seed; 32]);
        let (secret, public) =
            frost::keys::generate_with_dealer(n, t, frost::keys::IdentifierList::Default, &mut rng).unwrap();
        let shares: Vec<frost::keys::KeyPackage> = secret
            .into_values()
            .map(|s| frost::keys::KeyPackage::try_from(s).unwrap())
            .collect();
        let keys = (0..n)
            .map(|i| {
                DeviceKeys::derive(
                    &DeviceSecret::from_bytes([seed.wrapping_add(i as u8 + 1); 32]),
                    &mut rng,
                )
            })
            .collect();
        Group { keys, shares, public }
    }

    fn signing_keys(&self) -> BTreeMap<DeviceId, [u8; 32]> {
        self.keys.iter().map(|k| (k.id, k.cert.signing)).collect()
    }

    fn members(&self) -> BTreeMap<DeviceId, ([u8; 32], frost::Identifier)> {
        self.keys
            .iter()
            .zip(&self.shares)
            .map(|(k, s)| (k.id, (k.cert.signing, *s.identifier())))
            .collect()
    }
}

const PRESTATE: Hash32 = [9; 32];

fn frame(g: &Group) -> CommitFrame {
    CommitFrame {
        namespace: Namespace::Authority(AuthorityId([5; 32])),
        lamport: 3,
        author: g.keys[0].id,
    }
}

/// The commit in a commit fact whose group signature plain FROST verification accepts.
fn group_signed_commit(g: &Group, f: &Fact) -> Commit {
    let (FactBody::Commit(commit), FactSig::Group(s)) = (&f.body, &f.sig) else {
        panic!("a group-signed commit fact")
    };
    let sig = frost::Signature::deserialize(&s.0).unwrap();
    assert!(g.public.verifying_key().verify(&frame(g).message(commit), &sig).is_ok());
    commit.clone()
}

fn instance(op: &[u8], nonce: u8) -> ConsensusId {
    consensus_id(&PRESTATE, &op_hash(op), &[nonce; 32])
}

#[test]
fn the_fast_path_commits_with_a_signature_plain_frost_accepts() {
    for (n, t) in [(3u16, 2u16), (5, 3), (7, 5), (4, 2)] {
        let g = Group::new(n, t, n as u8 * 10 + t as u8);
        let op = b"add device 7".to_vec();
        let id = instance(&op, 1);
        let mut round = Round::new(id, PRESTATE, op.clone(), g.members(), t, frame(&g));
        assert_eq!(round.needed(), quorum(n as usize, t));
        let mut rng = PeerRng::from_seed([1; 32]);
        let mut ballots: Vec<Ballots> = vec![Ballots::default(); n as usize];
        let mut nonces = BTreeMap::new();
        let mut out = None;
        for (i, ballot) in ballots.iter_mut().enumerate() {
            assert_eq!(ballot.decide(&PRESTATE, &id, &PRESTATE), Decision::Vote);
            let vote = Vote::sign(&g.keys[i], &mut rng, id, PRESTATE, op_hash(&op));
            assert!(ballot.record(vote.clone()));
            let (nc, cm) = frost::round1::commit(g.shares[i].signing_share(), &mut rng);
            nonces.insert(i, nc);
            if let Some(p) = round.on_vote(vote, *g.shares[i].identifier(), cm).unwrap() {
                out = Some(p);
                break;
            }
        }
        let (commit, package) = out.expect("a quorum of votes builds the package");
        assert_eq!(commit.votes.len(), quorum(n as usize, t), "n={n} t={t}");
        // Every signer checks the package is the commit it voted for, then signs.
        let mut sig = None;
        for (i, nc) in &nonces {
            let mine = ballots[*i].vote_for(&PRESTATE).unwrap();
            check_package(&commit, mine, &g.signing_keys(), t).unwrap();
            let share = frost::round2::sign(&package, nc, &g.shares[*i]).unwrap();
            if let Some(done) = round.on_share(*g.shares[*i].identifier(), share, &g.public).unwrap() {
                sig = Some(done);
            }
        }
        let fact = sig.expect("all shares aggregate");
        let commit = group_signed_commit(&g, &fact);
        assert_eq!(commit.check(&g.signing_keys(), t), Ok(()));
    }
}

#[test]
fn a_witness_votes_once_per_prestate_and_refuses_a_stale_one_with_evidence() {
    let g = Group::new(3, 2, 3);
    let mut rng = PeerRng::from_seed([2; 32]);
    let (a, b) = (instance(b"remove device 2", 1), instance(b"threshold 3", 2));
    let mut ballots = Ballots::default();
    // A coordinator behind (or ahead): the witness says where it is.
    assert_eq!(
        ballots.decide(&PRESTATE, &a, &[1; 32]),
        Decision::Refuse(Refusal::Prestate { mine: PRESTATE })
    );
    let vote = Vote::sign(&g.keys[0], &mut rng, a, PRESTATE, op_hash(b"remove device 2"));
    assert!(ballots.record(vote.clone()));
    // The same instance again (a fallback coordinator): the same vote.
    assert_eq!(ballots.decide(&PRESTATE, &a, &PRESTATE), Decision::Again(vote.clone()));
    // Another instance from the same prestate: refused, with the vote it already has.
    assert_eq!(
        ballots.decide(&PRESTATE, &b, &PRESTATE),
        Decision::Refuse(Refusal::Voted(vote.clone()))
    );
    // Nothing overwrites a recorded vote.
    let other = Vote::sign(&g.keys[0], &mut rng, b, PRESTATE, op_hash(b"threshold 3"));
    assert!(!ballots.record(other));
    assert_eq!(ballots.vote_for(&PRESTATE), Some(&vote));
}

#[test]
fn two_votes_of_one_member_prove_equivocation_and_nothing_else_does() {
    let g = Group::new(3, 2, 5);
    let mut rng = PeerRng::from_seed([3; 32]);
    let (a, b) = (instance(b"x", 1), instance(b"y", 2));
    let key = g.keys[1].cert.signing;
    let va = Vote::sign(&g.keys[1], &mut rng, a, PRESTATE, op_hash(b"x"));
    let vb = Vote::sign(&g.keys[1], &mut rng, b, PRESTATE, op_hash(b"y"));
    let proof = Equivocation::of(va.clone(), vb.clone()).unwrap();
    assert_eq!(
        proof,
        Equivocation::of(vb.clone(), va.clone()).unwrap(),
        "canonical order"
    );
    assert_eq!(proof.check(&key), Ok(g.keys[1].id));
    // Repeating a vote, voting from another prestate, or two voters: no proof.
    assert!(Equivocation::of(va.clone(), va.clone()).is_none());
    let later = Vote::sign(&g.keys[1], &mut rng, b, [8; 32], op_hash(b"y"));
    assert!(Equivocation::of(va.clone(), later).is_none());
    let other = Vote::sign(&g.keys[2], &mut rng, b, PRESTATE, op_hash(b"y"));
    assert!(Equivocation::of(va.clone(), other).is_none());
    // A forged proof fails its check.
    let mut forged = proof.clone();
    forged.second.sig.0[5] ^= 1;
    assert_eq!(forged.check(&key), Err(EquivocationError::BadSignature));
    let mut mixed = proof;
    mixed.second.voter = g.keys[2].id;
    assert_eq!(mixed.check(&key), Err(EquivocationError::DifferentVoters));
}

#[test]
fn commits_and_packages_are_checked_vote_by_vote() {
    let g = Group::new(5, 3, 7);
    let mut rng = PeerRng::from_seed([4; 32]);
    let op = b"rotate".to_vec();
    let id = instance(&op, 3);
    let mut votes: Vec<Vote> = g.keys[..3]
        .iter()
        .map(|k| Vote::sign(k, &mut rng, id, PRESTATE, op_hash(&op)))
        .collect();
    votes.sort_by_key(|v| v.voter);
    let commit = Commit {
        id,
        prestate: PRESTATE,
        op: op.clone(),
        votes: votes.clone(),
    };
    let keys = g.signing_keys();
    assert_eq!(commit.check(&keys, 3), Ok(()));
    let with = |f: &dyn Fn(&mut Commit)| {
        let mut c = commit.clone();
        f(&mut c);
        c.check(&keys, 3)
    };
    assert_eq!(with(&|c| c.votes.truncate(2)), Err(CommitError::NoQuorum));
    assert_eq!(with(&|c| c.votes.swap(0, 1)), Err(CommitError::Order));
    assert_eq!(
        with(&|c| {
            let v = c.votes[0].clone();
            c.votes.insert(0, v)
        }),
        Err(CommitError::Order)
    );
    assert_eq!(with(&|c| c.op = b"something else".to_vec()), Err(CommitError::Mismatch));
    assert_eq!(with(&|c| c.votes[1].sig.0[0] ^= 1), Err(CommitError::BadVote));
    let mut fewer = keys.clone();
    fewer.remove(&votes[2].voter);
    assert_eq!(commit.check(&fewer, 3), Err(CommitError::NotMember));
    // A witness signs only the commit of the instance it voted for, with its vote in it.
    assert_eq!(check_package(&commit, &votes[0], &keys, 3), Ok(()));
    let outsider = Vote::sign(&g.keys[4], &mut rng, id, PRESTATE, op_hash(&op));
    assert_eq!(
        check_package(&commit, &outsider, &keys, 3),
        Err(CommitError::NotMyInstance)
    );
    let elsewhere = Vote::sign(&g.keys[0], &mut rng, instance(&op, 4), PRESTATE, op_hash(&op));
    assert_eq!(
        check_package(&commit, &elsewhere, &keys, 3),
        Err(CommitError::NotMyInstance)
    );
}

#[test]
fn a_round_refuses_what_it_cannot_use() {
    let g = Group::new(3, 2, 11);
    let mut rng = PeerRng::from_seed([5; 32]);
    let op = b"op".to_vec();
    let id = instance(&op, 1);
    let mut round = Round::new(id, PRESTATE, op.clone(), g.members(), 2, frame(&g));
    let cm = |i: usize, rng: &mut PeerRng| frost::round1::commit(g.shares[i].signing_share(), rng);
    // A vote for another operation, or under another member's identifier.
    let wrong = Vote::sign(&g.keys[0], &mut rng, id, PRESTATE, op_hash(b"other"));
    let (_, c0) = cm(0, &mut rng);
    assert_eq!(
        round.on_vote(wrong, *g.shares[0].identifier(), c0),
        Err(RoundError::BadVote)
    );
    let v0 = Vote::sign(&g.keys[0], &mut rng, id, PRESTATE, op_hash(&op));
    assert_eq!(
        round.on_vote(v0.clone(), *g.shares[1].identifier(), c0),
        Err(RoundError::WrongIdentifier)
    );
    let (n0, c0) = cm(0, &mut rng);
    assert_eq!(round.on_vote(v0, *g.shares[0].identifier(), c0), Ok(None));
    let (n1, c1) = cm(1, &mut rng);
    let v1 = Vote::sign(&g.keys[1], &mut rng, id, PRESTATE, op_hash(&op));
    let (_, package) = round.on_vote(v1, *g.shares[1].identifier(), c1).unwrap().unwrap();
    // Late votes are not needed; shares from outside the package are refused.
    let (_, c2) = cm(2, &mut rng);
    let v2 = Vote::sign(&g.keys[2], &mut rng, id, PRESTATE, op_hash(&op));
    assert_eq!(round.on_vote(v2, *g.shares[2].identifier(), c2), Err(RoundError::Late));
    let s0 = frost::round2::sign(&package, &n0, &g.shares[0]).unwrap();
    let s1 = frost::round2::sign(&package, &n1, &g.shares[1]).unwrap();
    assert_eq!(
        round.on_share(*g.shares[2].identifier(), s0, &g.public),
        Err(RoundError::UnexpectedShare)
    );
    // A share from the wrong signer's nonces fails aggregation and is dropped; the right
    // one completes the round.
    assert_eq!(round.on_share(*g.shares[0].identifier(), s0, &g.public), Ok(None));
    assert_eq!(
        round.on_share(*g.shares[1].identifier(), s0, &g.public),
        Err(RoundError::Aggregate)
    );
    let fact = round
        .on_share(*g.shares[1].identifier(), s1, &g.public)
        .unwrap()
        .unwrap();
    group_signed_commit(&g, &fact);
}

#[test]
fn rotation_and_fallback_timer() {
    let g = Group::new(5, 3, 13);
    let members: BTreeSet<DeviceId> = g.keys.iter().map(|k| k.id).collect();
    let starts: BTreeSet<DeviceId> = (0..20u8)
        .map(|k| {
            let r = rotation(&members, &instance(b"op", k));
            assert_eq!(r.iter().copied().collect::<BTreeSet<_>>(), members, "a permutation");
            assert_eq!(r, rotation(&members, &instance(b"op", k)), "deterministic");
            r[0]
        })
        .collect();
    assert!(starts.len() >= 3, "instances start at different devices: {starts:?}");
    assert_eq!(fallback_timeout(None), Duration::from_millis(200));
    assert_eq!(
        fallback_timeout(Some(Duration::from_millis(10))),
        Duration::from_millis(200)
    );
    assert_eq!(
        fallback_timeout(Some(Duration::from_millis(150))),
        Duration::from_millis(450)
    );
}

/// Two coordinators propose different operations from one prestate to `n` witnesses in
/// an arbitrary interleaving; honest witnesses vote for the first proposal they see,
/// Byzantine ones vote for both. A commit forms wherever a quorum of votes gathers.
/// Safety: two commits only with an equivocation proof against a Byzantine witness.
#[test]
fn at_most_one_commit_per_prestate_unless_someone_provably_equivocated() {
    static G: std::sync::OnceLock<Group> = std::sync::OnceLock::new();
    // Runs in which Byzantine votes did produce two commits (the proof path ran).
    static TWO: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    fn prop(seed: u64, n: u8, t: u8, byzantine: u8) -> TestResult {
        let g = G.get_or_init(|| Group::new(7, 2, 17));
        let keys = &g.signing_keys();
        let n = 3 + (n % 5) as usize; // 3..=7 witnesses
        let t = 2 + (t as usize % (n - 1)); // 2..=n
        let byz = (byzantine % 3) as usize; // 0..=2 Byzantine witnesses
        let members: BTreeMap<DeviceId, [u8; 32]> = keys.iter().take(n).map(|(d, k)| (*d, *k)).collect();
        let witnesses: Vec<&DeviceKeys> = g.keys.iter().filter(|k| members.contains_key(&k.id)).collect();
        let mut seed32 = [0u8; 32];
        seed32[..8].copy_from_slice(&seed.to_le_bytes());
        let mut rng = PeerRng::from_seed(seed32);
        let ops = [b"op x".to_vec(), b"op y".to_vec()];
        let ids = [instance(&ops[0], 1), instance(&ops[1], 2)];
        // Every (witness, proposal) delivery, shuffled.
        let mut deliveries: Vec<(usize, usize)> = (0..n).flat_map(|w| [(w, 0), (w, 1)]).collect();
        for i in (1..deliveries.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            deliveries.swap(i, j);
        }
        let mut ballots = vec![Ballots::default(); n];
        let mut votes: [Vec<Vote>; 2] = [Vec::new(), Vec::new()];
        for (w, p) in deliveries {
            let vote = Vote::sign(witnesses[w], &mut rng, ids[p], PRESTATE, op_hash(&ops[p]));
            if w < byz {
                votes[p].push(vote); // Byzantine: votes for everything
                continue;
            }
            match ballots[w].decide(&PRESTATE, &ids[p], &PRESTATE) {
                Decision::Vote => {
                    ballots[w].record(vote.clone());
                    votes[p].push(vote);
                }
                Decision::Again(v) => votes[p].push(v),
                Decision::Refuse(_) => {}
            }
        }
        let commits: Vec<Commit> = (0..2)
            .filter_map(|p| {
                let mut vs = votes[p].clone();
                vs.sort_by_key(|v| v.voter);
                let c = Commit {
                    id: ids[p],
                    prestate: PRESTATE,
                    op: ops[p].clone(),
                    votes: vs,
                };
                c.check(&members, t as u16).is_ok().then_some(c)
            })
            .collect();
        if commits.len() < 2 {
            return TestResult::passed();
        }
        // Two commits: some member voted in both, and it is a Byzantine one.
        TWO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(proof) = equivocation_between(&commits[0], &commits[1]) else {
            return TestResult::error("two commits without an equivocation proof");
        };
        let who = proof.check(&members[&proof.first.voter]).unwrap();
        let bad: BTreeSet<DeviceId> = witnesses[..byz].iter().map(|k| k.id).collect();
        TestResult::from_bool(bad.contains(&who))
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(u64, u8, u8, u8) -> TestResult);
    assert!(
        TWO.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no schedule produced two commits"
    );
}

/// Signs `msg` with the group: FROST rounds among the first `t` shares.
fn group_sign(g: &Group, t: usize, msg: &[u8]) -> [u8; 64] {
    let mut rng = PeerRng::from_seed([77; 32]);
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for s in &g.shares[..t] {
        let (n, c) = frost::round1::commit(s.signing_share(), &mut rng);
        nonces.insert(*s.identifier(), n);
        commitments.insert(*s.identifier(), c);
    }
    let package = frost::SigningPackage::new(commitments, msg);
    let shares: BTreeMap<_, _> = g.shares[..t]
        .iter()
        .map(|s| {
            (
                *s.identifier(),
                frost::round2::sign(&package, &nonces[s.identifier()], s).unwrap(),
            )
        })
        .collect();
    let sig = frost::aggregate(&package, &shares, &g.public).unwrap();
    sig.serialize().unwrap().try_into().unwrap()
}

/// A journal holding the genesis of an authority of the group's devices (t-of-n).
fn authority(g: &Group, t: u16) -> (Journal, AuthorityId) {
    let members: Vec<Member> = g
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| Member {
            identifier: i as u16 + 1,
            cert: k.cert.clone(),
            addr: String::new(),
        })
        .collect();
    let group_key: [u8; 32] = g.public.verifying_key().serialize().unwrap().try_into().unwrap();
    let genesis = Genesis {
        session: [1; 32],
        threshold: t,
        verifying_shares: (1..=members.len() as u16).map(|i| (i, [i as u8; 32])).collect(),
        members,
        group_key,
        cap_root: [8; 32],
    };
    let id = genesis.authority_id();
    let ns = Namespace::Authority(id);
    let body = FactBody::Genesis(genesis);
    let msg = Fact::signing_bytes(&ns, 0, &g.keys[0].id, &body);
    let fact = Fact {
        namespace: ns,
        lamport: 0,
        author: g.keys[0].id,
        body,
        sig: FactSig::Group(Sig64(group_sign(g, t as usize, &msg))),
    };
    let mut j = Journal::new();
    j.insert(fact);
    (j, id)
}

/// A commit fact for `kind` from `prestate` with the votes of devices `voters`.
fn committed(
    g: &Group,
    t: u16,
    id: AuthorityId,
    prestate: Hash32,
    kind: &TreeOpKind,
    voters: &[usize],
    lamport: u64,
) -> (Fact, Commit) {
    let mut rng = PeerRng::from_seed([lamport as u8; 32]);
    let op = wire::encode(kind);
    let instance = consensus_id(&prestate, &op_hash(&op), &[lamport as u8; 32]);
    let mut votes: Vec<Vote> = voters
        .iter()
        .map(|i| Vote::sign(&g.keys[*i], &mut rng, instance, prestate, op_hash(&op)))
        .collect();
    votes.sort_by_key(|v| v.voter);
    let commit = Commit {
        id: instance,
        prestate,
        op,
        votes,
    };
    let frame = CommitFrame {
        namespace: Namespace::Authority(id),
        lamport,
        author: g.keys[voters[0]].id,
    };
    let sig = group_sign(g, t as usize, &frame.message(&commit));
    (frame.fact(commit.clone(), sig), commit)
}

#[test]
fn a_committed_tree_operation_applies_once_from_its_prestate() {
    let g = Group::new(5, 3, 23);
    let (mut j, id) = authority(&g, 3);
    let v0 = AuthorityView::reduce(&j, id).unwrap();
    let views = |j: &Journal| Views([(id, AuthorityView::reduce(j, id).unwrap())].into_iter().collect());
    // Devices 0, 1, 2 (a majority of five) agree to raise the threshold to 4.
    let (raise, c1) = committed(&g, 3, id, v0.prestate(), &TreeOpKind::ChangeThreshold(4), &[0, 1, 2], 5);
    assert_eq!(verify_fact(&raise, &raise.namespace, &views(&j)), Ok(()));
    j.insert(raise.clone());
    let v1 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!((v1.epoch, v1.threshold), (1, 4));
    assert_ne!(v1.prestate(), v0.prestate());
    // A second commit from the old prestate (devices 2, 3, 4, with device 2 voting twice)
    // does not apply, and the two commits prove device 2 equivocated.
    let (remove, c2) = committed(
        &g,
        3,
        id,
        v0.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[2, 3, 4],
        6,
    );
    j.insert(remove.clone());
    let v2 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!((v2.epoch, v2.threshold, v2.members.len()), (1, 4, 5));
    assert!(v2.rejected.contains(&(remove.id(), TreeOpReject::StaleParent)));
    let proof = equivocation_between(&c1, &c2).expect("device 2 voted in both");
    assert_eq!(proof.check(&g.keys[2].cert.signing), Ok(g.keys[2].id));
    // Too few votes (two of five) do not apply, whatever the group signed.
    let (mut k, _) = authority(&g, 3);
    let (weak, _) = committed(&g, 3, id, v0.prestate(), &TreeOpKind::ChangeThreshold(2), &[0, 1], 7);
    k.insert(weak.clone());
    let v = AuthorityView::reduce(&k, id).unwrap();
    assert_eq!(v.epoch, 0);
    assert!(v.rejected.contains(&(weak.id(), TreeOpReject::NoQuorum)));
    // Nor does going below the threshold the key was made with, whoever agrees: three
    // shares would no longer be needed, but two could not sign.
    let (mut k, _) = authority(&g, 3);
    let (below, _) = committed(
        &g,
        3,
        id,
        v0.prestate(),
        &TreeOpKind::ChangeThreshold(2),
        &[0, 1, 2, 3],
        10,
    );
    k.insert(below.clone());
    let v = AuthorityView::reduce(&k, id).unwrap();
    assert_eq!((v.epoch, v.threshold), (0, 3));
    assert!(v.rejected.contains(&(below.id(), TreeOpReject::Invalid)));
    assert_eq!(v.key_threshold, 3);
    // The next change is agreed from the new prestate, by the quorum the new threshold
    // asks for (four votes; three are no longer enough).
    let (three, _) = committed(
        &g,
        3,
        id,
        v1.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[0, 1, 3],
        9,
    );
    let mut k = j.clone();
    k.insert(three.clone());
    let v = AuthorityView::reduce(&k, id).unwrap();
    assert!(v.rejected.contains(&(three.id(), TreeOpReject::NoQuorum)));
    let (next, _) = committed(
        &g,
        3,
        id,
        v1.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[0, 1, 2, 3],
        8,
    );
    j.insert(next);
    let v3 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!((v3.epoch, v3.members.len()), (2, 4));
}
