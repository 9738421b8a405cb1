//! Prestate-bound single-shot agreement, the pure part: quorums, witness rules, the
//! fallback choice, commits checked vote by vote, equivocation proofs, rotation, and "at
//! most one value agreed per prestate" over random schedules of proposers, fallback
//! coordinators, lost messages and competing proposals. Key shares come from a trusted
//! dealer here (tests only; devices get theirs by DKG).

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
}

const PRESTATE: Hash32 = [9; 32];

fn proposal(op: &[u8], nonce: u8, proposer: DeviceId) -> Proposal {
    Proposal {
        id: consensus_id(&PRESTATE, &op_hash(op), &[nonce; 32]),
        prestate: PRESTATE,
        op: op.to_vec(),
        nonce: [nonce; 32],
        proposer,
    }
}

#[test]
fn quorums_intersect_as_the_fallback_rule_needs() {
    let table: Vec<(usize, u16, usize, usize)> =
        [(1, 1), (2, 2), (3, 2), (3, 3), (4, 2), (5, 3), (5, 5), (7, 2), (7, 5)]
            .iter()
            .map(|&(n, t)| (n, t, quorum(n, t), fast_quorum(n, t)))
            .collect();
    assert_eq!(
        table,
        [
            (1, 1, 1, 1),
            (2, 2, 2, 2),
            (3, 2, 2, 3),
            (3, 3, 3, 3),
            (4, 2, 3, 3),
            (5, 3, 3, 4),
            (5, 5, 5, 5),
            (7, 2, 4, 6),
            (7, 5, 5, 5)
        ]
    );
    for n in 1..=12usize {
        for t in 1..=n as u16 {
            let (q, f) = (quorum(n, t), fast_quorum(n, t));
            assert!(q * 2 > n && q >= t as usize && q <= n, "n={n} t={t}");
            assert!(f >= q && f <= n, "n={n} t={t}");
            assert!(
                2 * f + q > 2 * n,
                "n={n} t={t}: two fast instances could both look chosen"
            );
        }
    }
}

#[test]
fn a_witness_keeps_its_promises_and_votes_once_per_ballot() {
    let g = Group::new(3, 2, 3);
    let mut rng = PeerRng::from_seed([2; 32]);
    let (a, b) = (
        proposal(b"remove device 2", 1, g.keys[1].id),
        proposal(b"threshold 3", 2, g.keys[2].id),
    );
    let mut w = Ballots::default();
    // A coordinator behind (or ahead): the witness says where it is.
    assert_eq!(
        w.decide(&PRESTATE, &a.id, &[1; 32], 0),
        Decision::Refuse(Refusal::Prestate { mine: PRESTATE })
    );
    assert_eq!(
        w.prepare(&PRESTATE, &[1; 32], 1),
        Promise::Refuse(Refusal::Prestate { mine: PRESTATE })
    );
    assert_eq!(w.decide(&PRESTATE, &a.id, &PRESTATE, 0), Decision::Vote);
    let va = Vote::sign(&g.keys[0], &mut rng, &a, 0);
    assert!(w.record(va.clone()));
    // The same instance again: the same vote. Another one at the fast ballot: refused,
    // with the vote it has (the proposer learns it lost that witness).
    assert_eq!(w.decide(&PRESTATE, &a.id, &PRESTATE, 0), Decision::Again(va.clone()));
    assert_eq!(
        w.decide(&PRESTATE, &b.id, &PRESTATE, 0),
        Decision::Refuse(Refusal::Voted(va.clone()))
    );
    assert!(
        !w.record(Vote::sign(&g.keys[0], &mut rng, &b, 0)),
        "nothing overwrites a vote"
    );
    // A fallback coordinator at ballot 2 gets a promise reporting the vote; ballot 1 is
    // then refused, ballot 2 may ask for another instance.
    assert_eq!(w.prepare(&PRESTATE, &PRESTATE, 2), Promise::Give(Some(va.clone())));
    w.promise(PRESTATE, 2);
    assert_eq!(
        w.prepare(&PRESTATE, &PRESTATE, 1),
        Promise::Refuse(Refusal::Promised { ballot: 2 })
    );
    assert_eq!(
        w.decide(&PRESTATE, &b.id, &PRESTATE, 1),
        Decision::Refuse(Refusal::Promised { ballot: 2 })
    );
    assert_eq!(w.decide(&PRESTATE, &b.id, &PRESTATE, 2), Decision::Vote);
    let vb = Vote::sign(&g.keys[0], &mut rng, &b, 2);
    assert!(w.record(vb.clone()));
    assert_eq!(
        w.decide(&PRESTATE, &a.id, &PRESTATE, 2),
        Decision::Refuse(Refusal::Voted(vb.clone()))
    );
    // Its highest vote is what it reports from now on.
    assert_eq!(w.prepare(&PRESTATE, &PRESTATE, 3), Promise::Give(Some(vb.clone())));
    assert_eq!(w.slot(&PRESTATE).unwrap().promised, 2);
    // A fresh witness that promised anything no longer votes at the fast ballot.
    let mut fresh = Ballots::default();
    fresh.promise(PRESTATE, 1);
    assert_eq!(
        fresh.decide(&PRESTATE, &a.id, &PRESTATE, 0),
        Decision::Refuse(Refusal::Promised { ballot: 1 })
    );
    assert_eq!(
        fresh.prepare(&PRESTATE, &PRESTATE, 0),
        Promise::Refuse(Refusal::Promised { ballot: 1 })
    );
}

#[test]
fn the_fallback_choice_keeps_whatever_may_have_committed() {
    let g = Group::new(5, 3, 4);
    let mut rng = PeerRng::from_seed([6; 32]);
    let (a, b) = (proposal(b"a", 1, g.keys[0].id), proposal(b"b", 2, g.keys[1].id));
    let v = |i: usize, p: &Proposal, ballot: u32, rng: &mut PeerRng| Some(Vote::sign(&g.keys[i], rng, p, ballot));
    // Five members, quorum 3, fast quorum 4. Nothing reported: free.
    assert_eq!(choose(&[None, None, None], 5, 3), Choice::Free);
    // Two of three reports for `a` at the fast ballot: with the two silent members `a`
    // could have had four votes; it binds.
    let r = [v(0, &a, 0, &mut rng), v(1, &a, 0, &mut rng), v(2, &b, 0, &mut rng)];
    assert_eq!(choose(&r, 5, 3), Choice::Bound(a.id));
    // One each and one empty: neither could have reached four.
    let r = [v(0, &a, 0, &mut rng), v(1, &b, 0, &mut rng), None];
    assert_eq!(choose(&r, 5, 3), Choice::Free);
    // Four reports, one for `a`: a could have had at most two votes.
    let r = [v(0, &a, 0, &mut rng), None, None, v(3, &b, 0, &mut rng)];
    assert_eq!(choose(&r, 5, 3), Choice::Free);
    // A fallback-ballot vote outranks fast votes, and the highest ballot wins.
    let r = [v(0, &a, 0, &mut rng), v(1, &a, 0, &mut rng), v(2, &b, 1, &mut rng)];
    assert_eq!(choose(&r, 5, 3), Choice::Bound(b.id));
    let r = [v(0, &a, 3, &mut rng), v(1, &b, 1, &mut rng), None];
    assert_eq!(choose(&r, 5, 3), Choice::Bound(a.id));
}

#[test]
fn votes_at_one_ballot_prove_equivocation_and_nothing_else_does() {
    let g = Group::new(3, 2, 5);
    let mut rng = PeerRng::from_seed([3; 32]);
    let (a, b) = (proposal(b"x", 1, g.keys[0].id), proposal(b"y", 2, g.keys[0].id));
    let key = g.keys[1].cert.signing;
    let va = Vote::sign(&g.keys[1], &mut rng, &a, 0);
    let vb = Vote::sign(&g.keys[1], &mut rng, &b, 0);
    let proof = Equivocation::of(va.clone(), vb.clone()).unwrap();
    assert_eq!(
        proof,
        Equivocation::of(vb.clone(), va.clone()).unwrap(),
        "canonical order"
    );
    assert_eq!(proof.check(&key), Ok(g.keys[1].id));
    // Repeating a vote, changing it at a higher ballot, voting from another prestate, or
    // two voters: no proof.
    assert!(Equivocation::of(va.clone(), va.clone()).is_none());
    assert!(Equivocation::of(va.clone(), Vote::sign(&g.keys[1], &mut rng, &b, 1)).is_none());
    let mut elsewhere = b.clone();
    elsewhere.prestate = [8; 32];
    assert!(Equivocation::of(va.clone(), Vote::sign(&g.keys[1], &mut rng, &elsewhere, 0)).is_none());
    assert!(Equivocation::of(va.clone(), Vote::sign(&g.keys[2], &mut rng, &b, 0)).is_none());
    // A forged or doctored proof fails its check.
    let mut forged = proof.clone();
    forged.second.sig.0[5] ^= 1;
    assert_eq!(forged.check(&key), Err(EquivocationError::BadSignature));
    let mut mixed = proof.clone();
    mixed.second.voter = g.keys[2].id;
    assert_eq!(mixed.check(&key), Err(EquivocationError::DifferentVoters));
    let mut moved = proof;
    moved.second.ballot = 1;
    assert_eq!(moved.check(&key), Err(EquivocationError::DifferentBallots));
}

#[test]
fn commits_are_checked_vote_by_vote() {
    let g = Group::new(5, 3, 7);
    let mut rng = PeerRng::from_seed([4; 32]);
    let p = proposal(b"rotate", 3, g.keys[0].id);
    let votes = |who: &[usize], ballot: u32, rng: &mut PeerRng| {
        let mut vs: Vec<Vote> = who.iter().map(|i| Vote::sign(&g.keys[*i], rng, &p, ballot)).collect();
        vs.sort_by_key(|v| v.voter);
        vs
    };
    let commit = |votes: Vec<Vote>| Commit {
        id: p.id,
        prestate: PRESTATE,
        op: p.op.clone(),
        votes,
    };
    let keys = g.signing_keys();
    // A fallback ballot needs a quorum (3 of 5), the fast ballot a fast quorum (4).
    let fallback = commit(votes(&[0, 1, 2], 1, &mut rng));
    assert_eq!(fallback.check(&keys, 3), Ok(()));
    assert_eq!(
        commit(votes(&[0, 1, 2], 0, &mut rng)).check(&keys, 3),
        Err(CommitError::NoQuorum)
    );
    assert_eq!(commit(votes(&[0, 1, 2, 4], 0, &mut rng)).check(&keys, 3), Ok(()));
    let with = |f: &dyn Fn(&mut Commit)| {
        let mut c = fallback.clone();
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
    // Votes from two ballots do not add up.
    let mut mixed = votes(&[0, 1], 1, &mut rng);
    mixed.extend(votes(&[2], 2, &mut rng));
    mixed.sort_by_key(|v| v.voter);
    assert_eq!(commit(mixed).check(&keys, 3), Err(CommitError::Mismatch));
    let mut fewer = keys.clone();
    fewer.remove(&fallback.votes[2].voter);
    assert_eq!(fallback.check(&fewer, 3), Err(CommitError::NotMember));
    // As a journal fact the commit is signed by the group: plain FROST verifies it.
    let frame = CommitFrame {
        namespace: Namespace::Authority(AuthorityId([5; 32])),
        lamport: 3,
        author: g.keys[0].id,
    };
    let fact = frame.fact(fallback.clone(), group_sign(&g, 3, &frame.message(&fallback)));
    let FactSig::Group(s) = &fact.sig else {
        panic!("group-signed")
    };
    let sig = frost::Signature::deserialize(&s.0).unwrap();
    assert!(g.public.verifying_key().verify(&frame.message(&fallback), &sig).is_ok());
}

#[test]
fn rotation_coordinators_and_fallback_timer() {
    let g = Group::new(5, 3, 13);
    let members: BTreeSet<DeviceId> = g.keys.iter().map(|k| k.id).collect();
    let starts: BTreeSet<DeviceId> = (0..20u8)
        .map(|k| {
            let r = rotation(&members, &[k; 32]);
            assert_eq!(r.iter().copied().collect::<BTreeSet<_>>(), members, "a permutation");
            assert_eq!(r, rotation(&members, &[k; 32]), "deterministic");
            for b in 1..=10u32 {
                assert_eq!(coordinator(&members, &[k; 32], b), Some(r[(b as usize - 1) % 5]));
            }
            r[0]
        })
        .collect();
    assert!(starts.len() >= 3, "prestates start at different devices: {starts:?}");
    assert_eq!(
        coordinator(&members, &PRESTATE, 0),
        None,
        "the fast ballot is everyone's"
    );
    assert_eq!(coordinator(&BTreeSet::new(), &PRESTATE, 1), None);
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

/// A model run: `n` honest witnesses, up to three proposers racing at the fast ballot
/// with different operations, and fallback coordinators at ballots 1, 2, ... that start
/// whenever the schedule says (several may run at once). Every message may be delayed
/// arbitrarily or lost. A coordinator with a free choice picks adversarially. Safety:
/// every (ballot, instance) that gathered its quorum of votes names the same instance.
#[test]
fn at_most_one_instance_is_agreed_per_prestate_under_any_schedule() {
    static G: std::sync::OnceLock<Group> = std::sync::OnceLock::new();
    static AGREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static BY_FALLBACK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    #[derive(Clone)]
    enum Msg {
        Fast(usize, usize),
        Prepare(usize, u32),
        Promise(u32, Option<Vote>),
        Accept(usize, u32, usize),
    }
    fn prop(seed: u64, n: u8, t: u8, proposers: u8) -> TestResult {
        let g = G.get_or_init(|| Group::new(7, 2, 17));
        let n = 3 + (n % 5) as usize; // 3..=7 witnesses
        let t = 1 + (t as usize % n) as u16; // 1..=n
        let proposers = 1 + (proposers % 3) as usize;
        let mut seed32 = [0u8; 32];
        seed32[..8].copy_from_slice(&seed.to_le_bytes());
        let mut rng = PeerRng::from_seed(seed32);
        let pick = |k: usize, rng: &mut PeerRng| (rng.next_u64() % k as u64) as usize;
        let props: Vec<Proposal> = (0..proposers)
            .map(|i| proposal(format!("op {i}").as_bytes(), i as u8, g.keys[i].id))
            .collect();
        let (q, f) = (quorum(n, t), fast_quorum(n, t));
        let mut witnesses = vec![Ballots::default(); n];
        let mut pool: Vec<Msg> = (0..n)
            .flat_map(|w| (0..proposers).map(move |p| Msg::Fast(w, p)))
            .collect();
        // Per fallback ballot: promises gathered, and whether it asked for votes.
        let mut coords: BTreeMap<u32, (Vec<Option<Vote>>, bool)> = BTreeMap::new();
        let mut cast: BTreeMap<(u32, ConsensusId), BTreeSet<usize>> = BTreeMap::new();
        let mut next_ballot = 1u32;
        for _ in 0..400 {
            let r = pick(10, &mut rng);
            if r == 0 && next_ballot <= 6 {
                coords.insert(next_ballot, (Vec::new(), false));
                pool.extend((0..n).map(|w| Msg::Prepare(w, next_ballot)));
                next_ballot += 1;
                continue;
            }
            if pool.is_empty() {
                break;
            }
            let m = pool.swap_remove(pick(pool.len(), &mut rng));
            if r == 1 {
                continue; // lost
            }
            match m {
                Msg::Fast(w, p) | Msg::Accept(w, _, p) => {
                    let ballot = if let Msg::Accept(_, b, _) = m { b } else { 0 };
                    if witnesses[w].decide(&PRESTATE, &props[p].id, &PRESTATE, ballot) == Decision::Vote {
                        assert!(witnesses[w].record(Vote::sign(&g.keys[w], &mut rng, &props[p], ballot)));
                        cast.entry((ballot, props[p].id)).or_default().insert(w);
                    }
                }
                Msg::Prepare(w, b) => {
                    if let Promise::Give(last) = witnesses[w].prepare(&PRESTATE, &PRESTATE, b) {
                        witnesses[w].promise(PRESTATE, b);
                        pool.push(Msg::Promise(b, last));
                    }
                }
                Msg::Promise(b, last) => {
                    let (reports, asked) = coords.get_mut(&b).expect("started");
                    if *asked {
                        continue;
                    }
                    reports.push(last);
                    if reports.len() < q {
                        continue;
                    }
                    *asked = true;
                    let chosen = match choose(reports, n, t) {
                        Choice::Bound(id) => props.iter().position(|p| p.id == id).expect("a proposal"),
                        Choice::Free => pick(proposers, &mut rng),
                    };
                    pool.extend((0..n).map(|w| Msg::Accept(w, b, chosen)));
                }
            }
        }
        let agreed: BTreeSet<ConsensusId> = cast
            .iter()
            .filter(|((b, _), ws)| ws.len() >= if *b == 0 { f } else { q })
            .map(|((_, id), _)| *id)
            .collect();
        if !agreed.is_empty() {
            AGREED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if cast.iter().any(|((b, _), ws)| *b > 0 && ws.len() >= q) {
            BY_FALLBACK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        TestResult::from_bool(agreed.len() <= 1)
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(u64, u8, u8, u8) -> TestResult);
    let (agreed, by_fallback) = (
        AGREED.load(std::sync::atomic::Ordering::Relaxed),
        BY_FALLBACK.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        agreed > 200 && by_fallback > 100,
        "the schedules reach agreement: {agreed} runs, {by_fallback} by fallback"
    );
}

/// Byzantine witnesses that vote for everything at the fast ballot can make two fast
/// commits; the two commits then prove one of them equivocated.
#[test]
fn two_commits_at_one_ballot_name_a_byzantine_voter() {
    let g = Group::new(7, 2, 19);
    let keys = g.signing_keys();
    let mut rng = PeerRng::from_seed([9; 32]);
    let (a, b) = (proposal(b"a", 1, g.keys[0].id), proposal(b"b", 2, g.keys[1].id));
    // Seven members, threshold 2: fast quorum 6. Devices 0 and 1 vote for both.
    let fast = |p: &Proposal, who: &[usize], rng: &mut PeerRng| {
        let mut votes: Vec<Vote> = who.iter().map(|i| Vote::sign(&g.keys[*i], rng, p, 0)).collect();
        votes.sort_by_key(|v| v.voter);
        Commit {
            id: p.id,
            prestate: PRESTATE,
            op: p.op.clone(),
            votes,
        }
    };
    let ca = fast(&a, &[0, 1, 2, 3, 4, 5], &mut rng);
    let cb = fast(&b, &[0, 1, 6, 2, 3, 4], &mut rng);
    assert_eq!((ca.check(&keys, 2), cb.check(&keys, 2)), (Ok(()), Ok(())));
    let proof = equivocation_between(&ca, &cb).expect("an equivocation");
    let who = proof.check(&keys[&proof.first.voter]).unwrap();
    assert!([0usize, 1, 2, 3, 4].iter().any(|i| g.keys[*i].id == who));
    // Commits at different ballots prove nothing by their votes alone.
    let mut later = cb.clone();
    later.votes = later
        .votes
        .iter()
        .map(|v| {
            Vote::sign(
                &g.keys[(0..7).find(|i| g.keys[*i].id == v.voter).unwrap()],
                &mut rng,
                &b,
                1,
            )
        })
        .collect();
    assert_eq!(equivocation_between(&ca, &later), None);
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

/// A commit fact for `kind` from `prestate` with the votes of devices `voters` at
/// `ballot`, signed by three shares.
fn committed(
    g: &Group,
    id: AuthorityId,
    prestate: Hash32,
    kind: &TreeOpKind,
    voters: &[usize],
    lamport: u64,
    ballot: u32,
) -> (Fact, Commit) {
    let mut rng = PeerRng::from_seed([lamport as u8; 32]);
    let op = wire::encode(kind);
    let instance = consensus_id(&prestate, &op_hash(&op), &[lamport as u8; 32]);
    let p = Proposal {
        id: instance,
        prestate,
        op: op.clone(),
        nonce: [lamport as u8; 32],
        proposer: g.keys[voters[0]].id,
    };
    let mut votes: Vec<Vote> = voters
        .iter()
        .map(|i| Vote::sign(&g.keys[*i], &mut rng, &p, ballot))
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
    let sig = group_sign(g, 3, &frame.message(&commit));
    (frame.fact(commit.clone(), sig), commit)
}

#[test]
fn a_committed_tree_operation_applies_once_from_its_prestate() {
    let g = Group::new(5, 3, 23);
    let (mut j, id) = authority(&g, 3);
    let v0 = AuthorityView::reduce(&j, id).unwrap();
    let views = |j: &Journal| Views([(id, AuthorityView::reduce(j, id).unwrap())].into_iter().collect());
    // Three votes are not enough at the fast ballot (it needs four of five)...
    let (fast, _) = committed(&g, id, v0.prestate(), &TreeOpKind::ChangeThreshold(4), &[0, 1, 2], 4, 0);
    let mut k = j.clone();
    k.insert(fast.clone());
    let v = AuthorityView::reduce(&k, id).unwrap();
    assert!(v.rejected.contains(&(fast.id(), TreeOpReject::NoQuorum)));
    // ...but at a fallback ballot devices 0, 1, 2 (a majority of five) raise the
    // threshold to 4.
    let (raise, c1) = committed(&g, id, v0.prestate(), &TreeOpKind::ChangeThreshold(4), &[0, 1, 2], 5, 1);
    assert_eq!(verify_fact(&raise, &raise.namespace, &views(&j)), Ok(()));
    j.insert(raise.clone());
    let v1 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!((v1.epoch, v1.threshold), (1, 4));
    assert_ne!(v1.prestate(), v0.prestate());
    // A second commit from the old prestate (devices 2, 3, 4, with device 2 voting twice)
    // does not apply, and the two commits prove device 2 equivocated.
    let (remove, c2) = committed(
        &g,
        id,
        v0.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[2, 3, 4],
        6,
        1,
    );
    j.insert(remove.clone());
    let v2 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!((v2.epoch, v2.threshold, v2.members.len()), (1, 4, 5));
    assert!(v2.rejected.contains(&(remove.id(), TreeOpReject::StaleParent)));
    let proof = equivocation_between(&c1, &c2).expect("device 2 voted in both");
    assert_eq!(proof.check(&g.keys[2].cert.signing), Ok(g.keys[2].id));
    // Too few votes (two of five) do not apply, whatever the group signed.
    let (mut k, _) = authority(&g, 3);
    let (weak, _) = committed(&g, id, v0.prestate(), &TreeOpKind::ChangeThreshold(2), &[0, 1], 7, 1);
    k.insert(weak.clone());
    let v = AuthorityView::reduce(&k, id).unwrap();
    assert_eq!(v.epoch, 0);
    assert!(v.rejected.contains(&(weak.id(), TreeOpReject::NoQuorum)));
    // Nor does going below the threshold the key was made with, whoever agrees: three
    // shares would no longer be needed, but two could not sign.
    let (mut k, _) = authority(&g, 3);
    let (below, _) = committed(
        &g,
        id,
        v0.prestate(),
        &TreeOpKind::ChangeThreshold(2),
        &[0, 1, 2, 3],
        10,
        1,
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
        id,
        v1.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[0, 1, 3],
        9,
        1,
    );
    let mut k = j.clone();
    k.insert(three.clone());
    let v = AuthorityView::reduce(&k, id).unwrap();
    assert!(v.rejected.contains(&(three.id(), TreeOpReject::NoQuorum)));
    let (next, _) = committed(
        &g,
        id,
        v1.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[0, 1, 2, 3],
        8,
        1,
    );
    j.insert(next);
    let v3 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!((v3.epoch, v3.members.len()), (2, 4));
}

#[test]
fn two_facts_of_one_instance_lead_to_the_same_state() {
    // One instance recorded twice (two gatherers after a fallback, other votes, another
    // Lamport clock): whichever copy sorts first, the state after it is the same, so a
    // change agreed from that state applies whatever copies arrive later.
    let g = Group::new(5, 3, 29);
    let (j0, id) = authority(&g, 3);
    let v0 = AuthorityView::reduce(&j0, id).unwrap();
    let kind = TreeOpKind::ChangeThreshold(3);
    let (a, c) = committed(&g, id, v0.prestate(), &kind, &[0, 1, 2], 5, 1);
    let p = Proposal {
        id: c.id,
        prestate: c.prestate,
        op: c.op.clone(),
        nonce: [5; 32],
        proposer: g.keys[0].id,
    };
    let mut rng = PeerRng::from_seed([31; 32]);
    let mut votes: Vec<Vote> = [1usize, 2, 3]
        .iter()
        .map(|i| Vote::sign(&g.keys[*i], &mut rng, &p, 2))
        .collect();
    votes.sort_by_key(|v| v.voter);
    let other = Commit { votes, ..c.clone() };
    let frame = CommitFrame {
        namespace: Namespace::Authority(id),
        lamport: 4,
        author: g.keys[1].id,
    };
    let b = frame.fact(other.clone(), group_sign(&g, 3, &frame.message(&other)));
    assert_ne!(a.id(), b.id());
    let with = |facts: &[&Fact]| {
        let mut j = j0.clone();
        for f in facts {
            j.insert((*f).clone());
        }
        AuthorityView::reduce(&j, id).unwrap()
    };
    let (va, vb, both) = (with(&[&a]), with(&[&b]), with(&[&a, &b]));
    assert_eq!((va.epoch, va.prestate()), (1, vb.prestate()));
    assert_eq!((both.epoch, both.prestate()), (1, va.prestate()));
    // The next change, agreed from the state after copy `a`, applies with either copy.
    let (next, _) = committed(
        &g,
        id,
        va.prestate(),
        &TreeOpKind::RemoveDevice(g.keys[4].id),
        &[0, 1, 2],
        7,
        1,
    );
    for facts in [vec![&a, &next], vec![&b, &next], vec![&a, &b, &next]] {
        let v = with(&facts);
        assert_eq!((v.epoch, v.members.len()), (2, 4));
    }
}

#[test]
fn a_signed_promise_that_hid_a_vote_is_provable() {
    let g = Group::new(3, 2, 37);
    let mut rng = PeerRng::from_seed([12; 32]);
    let (a, b) = (proposal(b"a", 1, g.keys[0].id), proposal(b"b", 2, g.keys[1].id));
    let w = &g.keys[2];
    let key = w.cert.signing;
    let fast_a = Vote::sign(w, &mut rng, &a, 0);
    let at_two = Vote::sign(w, &mut rng, &b, 2);
    // An honest promise of ballot 3 reports the highest vote (b at 2): nothing is hidden.
    let honest = PromiseCert::sign(w, &mut rng, PRESTATE, 3, Some(&at_two));
    assert!(honest.verify(&key));
    assert!(!honest.hides(&fast_a) && !honest.hides(&at_two));
    // A promise of ballot 3 claiming no vote hides both; one reporting only the fast
    // vote hides the later one; none hides a vote at or above the ballot promised.
    let none = PromiseCert::sign(w, &mut rng, PRESTATE, 3, None);
    assert!(none.hides(&fast_a) && none.hides(&at_two));
    let partial = PromiseCert::sign(w, &mut rng, PRESTATE, 3, Some(&fast_a));
    assert!(!partial.hides(&fast_a) && partial.hides(&at_two));
    let later = Vote::sign(w, &mut rng, &b, 3);
    assert!(!none.hides(&later));
    // A second vote at the reported ballot is hidden too (it is also an equivocation).
    let other_fast = Vote::sign(w, &mut rng, &b, 0);
    assert!(partial.hides(&other_fast));
    // As a proof: checks out for the liar only, and only with valid signatures.
    let proof = HiddenVote {
        promise: none.clone(),
        vote: at_two.clone(),
    };
    assert_eq!(proof.check(&key), Ok(w.id));
    let honest_proof = HiddenVote {
        promise: honest,
        vote: at_two.clone(),
    };
    assert!(honest_proof.check(&key).is_err());
    let mut forged = proof.clone();
    forged.promise.sig.0[3] ^= 1;
    assert_eq!(forged.check(&key), Err(EquivocationError::BadSignature));
    let elsewhere = HiddenVote {
        promise: none,
        vote: Vote::sign(&g.keys[1], &mut rng, &b, 2),
    };
    assert_eq!(elsewhere.check(&key), Err(EquivocationError::DifferentVoters));
}
