//! Consensus between running peers: a tree change agreed by a quorum of votes, signed by
//! the group and applied everywhere; votes durable before they leave; a fallback
//! coordinator finishing an instance whose proposer crashed; competing proposals settled
//! by a fallback ballot; a change with a device down; hostile proposals refused.

mod common;

use aura_proto::authority::AuthMsg;
use aura_proto::consensus::{consensus_id, op_hash, ConsensusId, Proposal};
use aura_proto::journal::{FactBody, TreeOpKind};
use aura_proto::*;
use common::*;

fn committed(n: &Node) -> Vec<(ConsensusId, u64)> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::Committed { instance, epoch, .. } => Some((*instance, *epoch)),
            _ => None,
        })
        .collect()
}

fn votes_recorded(n: &Node) -> usize {
    n.records.iter().filter(|r| matches!(r, Record::Voted { .. })).count()
}

/// The first commit in device `i`'s journal of authority `a`.
fn first_commit(net: &Net, i: usize, a: journal::AuthorityId) -> aura_proto::consensus::Commit {
    net.nodes[i]
        .peer
        .journal()
        .facts(&journal::Namespace::Authority(a))
        .find_map(|f| match &f.body {
            FactBody::Commit(c) => Some(c.clone()),
            _ => None,
        })
        .expect("the commit is in the journal")
}

#[test]
fn a_threshold_change_is_agreed_signed_and_applied_on_every_device() {
    let mut net = authority_net(None);
    let before = net.nodes[0].peer.authority().unwrap().clone();
    net.cmd(0, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    for i in 0..3 {
        let v = net.nodes[i].peer.authority().unwrap();
        assert_eq!((v.threshold, v.epoch), (3, before.epoch + 1), "device {i}");
        assert_eq!(
            committed(&net.nodes[i]).len(),
            1,
            "device {i}: {:?}",
            net.nodes[i].events
        );
        assert_ne!(v.prestate(), before.prestate());
        // The view a device keeps by applying appended changes is the reduction of its
        // journal.
        let reduced = authority::AuthorityView::reduce(net.nodes[i].peer.journal(), before.id).unwrap();
        assert_eq!(*v, reduced, "device {i}");
    }
    // The commit carries a fast quorum of votes (all three: nobody was away), each
    // voter's vote durable.
    let commit = first_commit(&net, 1, before.id);
    assert_eq!((commit.ballot(), commit.votes.len()), (0, 3));
    assert!(commit.votes.len() >= 2);
    for v in &commit.votes {
        let i = (0..3).find(|i| net.id(*i) == v.voter).unwrap();
        assert!(votes_recorded(&net.nodes[i]) >= 1, "device {i} voted without a record");
    }
    // A change that no longer applies (threshold above the member count) is refused at once.
    assert_eq!(
        net.cmd(1, Command::ChangeThreshold { threshold: 4 }),
        Err(CommandError::InvalidChange)
    );
}

#[test]
fn no_vote_leaves_before_it_is_durable() {
    let mut net = authority_net(None);
    net.nodes[1].hold_persist = true;
    net.nodes[2].hold_persist = true;
    let sent = |net: &Net, i: usize| net.sent.iter().filter(|(j, _)| *j == i).count();
    let before = [sent(&net, 1), sent(&net, 2)];
    net.cmd(0, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.run();
    for (k, i) in [1usize, 2].into_iter().enumerate() {
        assert_eq!(votes_recorded(&net.nodes[i]), 1, "device {i} is writing its vote");
        assert_eq!(sent(&net, i), before[k], "device {i} sent before its vote was durable");
    }
    for i in [1usize, 2] {
        net.nodes[i].hold_persist = false;
        let held: Vec<_> = net.nodes[i].held.drain(..).collect();
        for t in held {
            net.input(i, Input::PersistDone(t)).unwrap();
        }
    }
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert!((0..3).all(|i| net.nodes[i].peer.authority().unwrap().threshold == 3));
}

#[test]
fn a_fallback_coordinator_finishes_when_the_proposer_crashes() {
    let mut net = authority_net(None);
    let before = net.nodes[0].peer.authority().unwrap().clone();
    // Device 0 proposes and crashes at once: its proposal is on the wire, its memory is
    // gone (its own vote record survives).
    net.cmd(0, Command::RemoveDevice { device: net.id(2) }).unwrap();
    let keep = net.nodes[0].records.len();
    crash_and_restore(&mut net, 0, keep, 55);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    for i in 0..3 {
        // Device 2 is no longer a member: it still holds the journal that says so. The
        // two others then refreshed their shares (a second change, among themselves).
        let v = authority::AuthorityView::reduce(net.nodes[i].peer.journal(), before.id).unwrap();
        let changes = if i == 2 { 1 } else { 2 };
        assert_eq!(v.epoch, before.epoch + changes, "device {i}");
        assert!(!v.members.contains_key(&net.id(2)), "device {i}");
    }
    assert!(net.nodes[2].peer.authority().is_none());
    let fallbacks: u64 = (0..3).map(|i| net.nodes[i].peer.metrics().consensus_fallbacks).sum();
    assert!(fallbacks >= 1, "a fallback coordinator ran the instance");
}

#[test]
fn proposals_that_do_not_bind_or_do_not_apply_get_no_vote() {
    let mut net = authority_net(None);
    let v = net.nodes[1].peer.authority().unwrap().clone();
    let prestate = v.prestate();
    let op = wire::encode(&TreeOpKind::ChangeThreshold(3));
    let nonce = [4; 32];
    let id = consensus_id(&prestate, &op_hash(&op), &nonce);
    let unexpected = |net: &Net| net.nodes[1].peer.metrics().drops(DropReason::UnexpectedFrame);
    let before = unexpected(&net);
    // An id that does not match its nonce; a coordinator that is not the attempt's.
    let forged = AuthMsg::Propose(Proposal {
        id,
        prestate,
        op: op.clone(),
        nonce: [5; 32],
        proposer: net.id(0),
    });
    net.deliver_proto(1, 0, journal::ContextId::OWN, &forged);
    let not_theirs = AuthMsg::Propose(Proposal {
        id,
        prestate,
        op: op.clone(),
        nonce,
        proposer: net.id(2),
    });
    net.deliver_proto(1, 0, journal::ContextId::OWN, &not_theirs);
    assert_eq!(unexpected(&net) - before, 2);
    assert_eq!(votes_recorded(&net.nodes[1]), 0);
    // A well-formed proposal from a stale prestate or of a change that does not apply:
    // refused (with evidence), no vote.
    let stale = consensus_id(&[1; 32], &op_hash(&op), &nonce);
    net.deliver_proto(
        1,
        0,
        journal::ContextId::OWN,
        &AuthMsg::Propose(Proposal {
            id: stale,
            prestate: [1; 32],
            op,
            nonce,
            proposer: net.id(0),
        }),
    );
    let bad_op = wire::encode(&TreeOpKind::ChangeThreshold(9));
    let bad = consensus_id(&prestate, &op_hash(&bad_op), &nonce);
    net.deliver_proto(
        1,
        0,
        journal::ContextId::OWN,
        &AuthMsg::Propose(Proposal {
            id: bad,
            prestate,
            op: bad_op,
            nonce,
            proposer: net.id(0),
        }),
    );
    assert_eq!(votes_recorded(&net.nodes[1]), 0);
}

#[test]
fn a_second_instance_from_the_same_prestate_gets_no_vote_even_while_the_first_is_on_disk() {
    let mut net = authority_net(None);
    let v = net.nodes[1].peer.authority().unwrap().clone();
    let prestate = v.prestate();
    let proposal = |op: TreeOpKind, nonce: u8, proposer: DeviceId| {
        let op = wire::encode(&op);
        Proposal {
            id: consensus_id(&prestate, &op_hash(&op), &[nonce; 32]),
            prestate,
            op,
            nonce: [nonce; 32],
            proposer,
        }
    };
    // Device 1's first vote is still being written when a competing proposal arrives.
    net.nodes[1].hold_persist = true;
    let (p0, p2) = (
        proposal(TreeOpKind::ChangeThreshold(3), 1, net.id(0)),
        proposal(TreeOpKind::ChangeThreshold(2), 2, net.id(2)),
    );
    let sent = |net: &Net| net.sent.iter().filter(|(j, _)| *j == 1).count();
    let before = sent(&net);
    net.deliver_proto(1, 0, journal::ContextId::OWN, &AuthMsg::Propose(p0));
    net.deliver_proto(1, 2, journal::ContextId::OWN, &AuthMsg::Propose(p2));
    assert_eq!(votes_recorded(&net.nodes[1]), 1, "one vote per prestate, ever");
    // Not even a refusal shows the vote while it is not durable (lost in a crash, it
    // would look like a second vote next to the one cast after the restart).
    assert_eq!(sent(&net), before);
    // Once it is durable the answer is the same: the second gets the first's vote back.
    net.nodes[1].hold_persist = false;
    let held: Vec<_> = net.nodes[1].held.drain(..).collect();
    for t in held {
        net.input(1, Input::PersistDone(t)).unwrap();
    }
    let p2 = proposal(TreeOpKind::ChangeThreshold(2), 2, net.id(2));
    net.deliver_proto(1, 2, journal::ContextId::OWN, &AuthMsg::Propose(p2));
    assert_eq!(votes_recorded(&net.nodes[1]), 1);
}

#[test]
fn a_device_does_not_propose_while_an_instance_from_its_state_is_open() {
    let mut net = authority_net(None);
    net.cut.insert(1);
    net.cut.insert(2);
    net.cmd(0, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.run();
    assert_eq!(
        net.cmd(0, Command::ChangeThreshold { threshold: 2 }),
        Err(CommandError::Busy)
    );
    // Back together, the open instance finishes by fallback and the next change can go.
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    assert!((0..3).all(|i| net.nodes[i].peer.authority().unwrap().threshold == 3));
    assert_eq!(net.cmd(0, Command::ChangeThreshold { threshold: 2 }), Ok(()));
}

#[test]
fn a_member_cannot_fill_memory_with_proposals() {
    let mut net = authority_net(None);
    let overloaded = |net: &Net| net.nodes[1].peer.metrics().drops(DropReason::Overloaded);
    let before = overloaded(&net);
    // Well-formed proposals from device 0 (as their proposer) for states device 1 is not
    // in: each would be kept a while in case device 1 is behind.
    for k in 0..100u64 {
        let mut prestate = [0u8; 32];
        prestate[..8].copy_from_slice(&k.to_le_bytes());
        let op = wire::encode(&TreeOpKind::ChangeThreshold(2));
        let p = Proposal {
            id: consensus_id(&prestate, &op_hash(&op), &[1; 32]),
            prestate,
            op,
            nonce: [1; 32],
            proposer: net.id(0),
        };
        net.deliver_proto(1, 0, journal::ContextId::OWN, &AuthMsg::Propose(p));
    }
    // At most 16 of them are kept for one member (64 for all members together).
    assert_eq!(overloaded(&net) - before, 100 - 16);
    assert_eq!(votes_recorded(&net.nodes[1]), 0);
}

fn failed(n: &Node) -> Vec<ConsensusId> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::ConsensusFailed { instance, .. } => Some(*instance),
            _ => None,
        })
        .collect()
}

#[test]
fn competing_proposals_from_one_state_end_in_exactly_one_commit() {
    let mut net = authority_net(None);
    let before = net.nodes[0].peer.authority().unwrap().clone();
    // Devices 0 and 1 propose different changes at the same moment; each votes for its
    // own, device 2 for whichever reaches it first: no fast quorum (all three) for either.
    net.cmd(0, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.cmd(1, Command::ChangeThreshold { threshold: 2 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    let after: Vec<_> = (0..3)
        .map(|i| authority::AuthorityView::reduce(net.nodes[i].peer.journal(), before.id).unwrap())
        .collect();
    assert!(after.iter().all(|v| v.epoch == before.epoch + 1), "one change applied");
    assert!(after.iter().all(|v| *v == after[0]), "the same one everywhere");
    let won = committed(&net.nodes[0])[0].0;
    for i in 0..3 {
        assert_eq!(committed(&net.nodes[i]).len(), 1, "device {i}");
        assert_eq!(committed(&net.nodes[i])[0].0, won, "device {i}");
    }
    // The proposer of the other change hears that it lost; the winner's does not.
    let losers: Vec<usize> = (0..2).filter(|i| !failed(&net.nodes[*i]).is_empty()).collect();
    assert_eq!(losers.len(), 1, "exactly one proposer lost: {losers:?}");
    assert!(!failed(&net.nodes[losers[0]]).contains(&won));
    let fallbacks: u64 = (0..3).map(|i| net.nodes[i].peer.metrics().consensus_fallbacks).sum();
    assert!(fallbacks >= 1, "a fallback ballot settled it");
    // And the authority can change again from the new state.
    let proposer = if after[0].members.len() == 3 { 2 } else { 1 };
    assert_eq!(net.cmd(proposer, Command::ChangeThreshold { threshold: 2 }), Ok(()));
}

/// A 2-of-3 authority agrees on threshold 3 with device 2 cut off (a fallback ballot);
/// returns the network, still cut, and the view before the change.
fn change_with_device_2_down() -> (Net, authority::AuthorityView) {
    let mut net = authority_net(None);
    let before = net.nodes[0].peer.authority().unwrap().clone();
    net.cut.insert(2);
    net.cmd(0, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    (net, before)
}

#[test]
fn with_one_device_down_a_change_commits_at_a_fallback_ballot() {
    let (mut net, before) = change_with_device_2_down();
    for i in 0..2 {
        let v = net.nodes[i].peer.authority().unwrap();
        assert_eq!((v.threshold, v.epoch), (3, before.epoch + 1), "device {i}");
    }
    // Two votes of three do not make a fast commit; the commit is from a fallback ballot.
    let commit = first_commit(&net, 1, before.id);
    assert!(commit.ballot() >= 1 && commit.votes.len() == 2, "{commit:?}");
    // The device that was down catches up when it is back.
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    assert_eq!(net.nodes[2].peer.authority().unwrap().threshold, 3);
}

#[test]
fn a_commit_whose_votes_do_not_verify_is_not_applied() {
    // The group signs a commit's header, not its votes: every device that applies a
    // commit checks the votes itself (only the gatherer, which checked each as it came,
    // is spared that).
    let (mut net, before) = change_with_device_2_down();
    assert_eq!(net.nodes[0].peer.authority().unwrap().epoch, before.epoch + 1);
    let ns = journal::Namespace::Authority(before.id);
    let real = net.nodes[0]
        .peer
        .journal()
        .facts(&ns)
        .find(|f| matches!(f.body, FactBody::Commit(_)))
        .unwrap()
        .clone();
    let mut forged = real.clone();
    let FactBody::Commit(c) = &mut forged.body else {
        unreachable!()
    };
    c.votes[0].sig.0[7] ^= 1;
    let facts = AuthMsg::Facts {
        facts: vec![forged.encode()],
    };
    net.deliver_proto(2, 0, journal::ContextId::OWN, &facts);
    let v = net.nodes[2].peer.authority().unwrap();
    assert_eq!(
        (v.epoch, v.threshold),
        (before.epoch, before.threshold),
        "a forged vote was accepted"
    );
    // The real commit applies.
    let facts = AuthMsg::Facts {
        facts: vec![real.encode()],
    };
    net.deliver_proto(2, 0, journal::ContextId::OWN, &facts);
    let v = net.nodes[2].peer.authority().unwrap();
    assert_eq!((v.epoch, v.threshold), (before.epoch + 1, 3));
}

#[test]
fn a_member_that_votes_twice_is_proven_and_left_out() {
    let mut net = authority_net(None);
    let before = net.nodes[0].peer.authority().unwrap().clone();
    // Device 2 is faulty: it votes for every instance at the fast ballot. Devices 0 and
    // 1 propose at once (two instances of setting the threshold it has: 2 of 3, so the
    // two honest devices can go on without the faulty one), so it votes for both.
    aura_proto::fuzzing::equivocate(&mut net.nodes[2].peer, true);
    net.cmd(0, Command::ChangeThreshold { threshold: 2 }).unwrap();
    net.cmd(1, Command::ChangeThreshold { threshold: 2 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    let bad = net.id(2);
    let proven = |n: &Node| {
        n.events
            .iter()
            .any(|e| matches!(e, Event::EquivocationProven { device, .. } if *device == bad))
    };
    for i in 0..3 {
        let v = net.nodes[i].peer.authority().unwrap();
        assert_eq!(
            v.equivocators.iter().copied().collect::<Vec<_>>(),
            vec![bad],
            "device {i}"
        );
        assert!(proven(&net.nodes[i]), "device {i}");
        // Exactly one of the two changes applied, without the equivocator's vote.
        assert_eq!(v.epoch, before.epoch + 1, "device {i}");
    }
    let found: u64 = (0..3).map(|i| net.nodes[i].peer.metrics().equivocations).sum();
    assert!(found >= 1);
    let commit = first_commit(&net, 0, before.id);
    assert!(commit.ballot() >= 1, "no fast quorum without the equivocator");
    assert!(commit.votes.iter().all(|v| v.voter != bad), "{commit:?}");
    // Its proposals are no longer heard.
    let unexpected = net.nodes[0].peer.metrics().drops(DropReason::UnexpectedFrame);
    let threshold = net.nodes[2].peer.authority().unwrap().threshold;
    net.cmd(2, Command::ChangeThreshold { threshold }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    assert!(net.nodes[0].peer.metrics().drops(DropReason::UnexpectedFrame) > unexpected);
    assert!((0..3).all(|i| net.nodes[i].peer.authority().unwrap().epoch == before.epoch + 1));
    // Nor do its promises and votes count: with device 1 away, device 0 and the
    // equivocator are two of three, a quorum by number, but agree on nothing.
    net.cut.insert(1);
    let threshold = net.nodes[0].peer.authority().unwrap().threshold;
    net.cmd(0, Command::ChangeThreshold { threshold }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 20_000);
    assert_eq!(net.nodes[0].peer.authority().unwrap().epoch, before.epoch + 1);
    // Back together, the honest two finish it.
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    assert_eq!(net.nodes[0].peer.authority().unwrap().epoch, before.epoch + 2);
}

#[test]
fn a_proposer_cut_off_after_proposing_is_replaced_by_a_fallback_ballot() {
    let mut net = authority_net(None);
    let v = net.nodes[1].peer.authority().unwrap().clone();
    // Device 0's proposal reaches devices 1 and 2, then device 0 is cut off: their votes
    // never reach it and the fast ballot (all three) cannot finish.
    net.cut.insert(0);
    let op = wire::encode(&TreeOpKind::ChangeThreshold(3));
    let p = Proposal {
        id: consensus_id(&v.prestate(), &op_hash(&op), &[8; 32]),
        prestate: v.prestate(),
        op,
        nonce: [8; 32],
        proposer: net.id(0),
    };
    for i in [1, 2] {
        net.deliver_proto(i, 0, journal::ContextId::OWN, &AuthMsg::Propose(p.clone()));
    }
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    // The two that can talk are a quorum: a fallback ballot commits the same instance.
    for i in [1, 2] {
        let view = net.nodes[i].peer.authority().unwrap();
        assert_eq!((view.threshold, view.epoch), (3, v.epoch + 1), "device {i}");
        assert_eq!(committed(&net.nodes[i]), vec![(p.id, v.epoch + 1)], "device {i}");
    }
    assert!(first_commit(&net, 1, v.id).ballot() >= 1);
    assert_eq!(net.nodes[0].peer.authority().unwrap().epoch, v.epoch);
    // Once it can talk again, the cut-off device learns the outcome.
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    assert_eq!(net.nodes[0].peer.authority().unwrap().epoch, v.epoch + 1);
}

/// Message delays from a proposal to the commit applied at its proposer.
fn delays_to_commit(net: &mut Net, proposer: usize, cmd: Command) -> usize {
    let before = committed(&net.nodes[proposer]).len();
    net.cmd(proposer, cmd).unwrap();
    net.waves_until(|n| committed(&n.nodes[proposer]).len() > before)
}

#[test]
fn a_warm_commit_takes_one_round_trip_and_a_cold_one_two() {
    let mut net = authority_net(None);
    net.run();
    let t = net.nodes[0].peer.authority().unwrap().threshold;
    // The first change: nobody set a nonce aside for device 0 yet, so the votes bring
    // nonce commitments and the shares follow: two round trips.
    let cold = delays_to_commit(&mut net, 0, Command::ChangeThreshold { threshold: t });
    net.run();
    // The next one from the same device uses the nonces that came with those votes:
    // each signer's share comes with its vote.
    let warm = delays_to_commit(&mut net, 0, Command::ChangeThreshold { threshold: t });
    net.run();
    assert_eq!((cold, warm), (4, 2));
    let warm_again = delays_to_commit(&mut net, 0, Command::ChangeThreshold { threshold: t });
    assert_eq!(warm_again, 2);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    let epochs: Vec<u64> = (0..3).map(|i| net.nodes[i].peer.authority().unwrap().epoch).collect();
    assert!(epochs.iter().all(|e| *e == epochs[0]), "{epochs:?}");
}

#[test]
fn after_the_proposer_is_lost_a_fallback_commits_one_timer_and_four_delays_later() {
    let mut net = authority_net(None);
    net.run();
    let t = net.nodes[0].peer.authority().unwrap().threshold;
    // A first change, so that every device set nonces aside for every other.
    delays_to_commit(&mut net, 0, Command::ChangeThreshold { threshold: t });
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    // The owner of fallback ballot 1 from the current state, and a proposer that is not it.
    let v = net.nodes[0].peer.authority().unwrap().clone();
    let members: std::collections::BTreeSet<DeviceId> = v.members.keys().copied().collect();
    let owner = aura_proto::consensus::coordinator(&members, &v.prestate(), 1).unwrap();
    let o = (0..3).find(|i| net.id(*i) == owner).unwrap();
    let p = (0..3).find(|i| *i != o).unwrap();
    // The proposal reaches the others, then the proposer is gone: no fast quorum.
    net.cmd(p, Command::ChangeThreshold { threshold: t }).unwrap();
    net.wave();
    net.cut.insert(p);
    net.run_waves_while_any();
    let before = committed(&net.nodes[o]).len();
    // Fire timers one at a time (each with the network quiet): count the waves after
    // the one that starts the fallback ballot.
    let mut fallback = None;
    for _ in 0..200 {
        let (at, i) = (0..3)
            .filter(|i| *i != p)
            .filter_map(|i| net.nodes[i].peer.poll_timeout().map(|d| (d.as_nanos(), i)))
            .min()
            .unwrap();
        net.now_ns = net.now_ns.max(at);
        net.input(i, Input::Timeout).unwrap();
        let started = net.nodes[o].peer.metrics().consensus_fallbacks > 0;
        let waves = net.run_waves_while_any_or(|n| committed(&n.nodes[o]).len() > before);
        if committed(&net.nodes[o]).len() > before {
            assert!(started);
            fallback = Some(waves);
            break;
        }
    }
    assert_eq!(fallback, Some(4), "prepare, promise, accept, vote with share");
}

#[test]
fn a_second_vote_that_surfaces_after_the_commit_is_still_proven() {
    let mut net = authority_net(None);
    let before = net.nodes[0].peer.authority().unwrap().clone();
    let p = before.prestate();
    net.cmd(0, Command::ChangeThreshold { threshold: 2 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    let commit = first_commit(&net, 0, before.id);
    let bad = net.id(2);
    assert!(commit.votes.iter().any(|v| v.voter == bad && v.ballot == 0));
    // Device 2's other vote from the same prestate and ballot, for another instance,
    // reaches device 0 only now (it went elsewhere first).
    let mut rng = aura_proto::rng::PeerRng::from_seed([8; 32]);
    let keys2 = aura_proto::keys::DeviceKeys::derive(&net.nodes[2].secret, &mut rng);
    let op = wire::encode(&TreeOpKind::ChangeThreshold(3));
    let other = Proposal {
        id: consensus_id(&p, &op_hash(&op), &[4; 32]),
        prestate: p,
        op,
        nonce: [4; 32],
        proposer: net.id(1),
    };
    let vote = aura_proto::consensus::Vote::sign(&keys2, &mut rng, &other, 0);
    net.deliver_proto(0, 2, journal::ContextId::OWN, &AuthMsg::Voted { vote });
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert!(net.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::EquivocationProven { device, .. } if *device == bad)));
    assert!(net.nodes[1].peer.authority().unwrap().equivocators.contains(&bad));
}

#[test]
fn a_threshold_below_the_keys_is_refused_with_the_reason() {
    let mut net = default_net(3);
    net.pair(0, 1);
    net.pair(0, 2);
    ask_for_authority_with(&mut net, 3);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    let v = net.nodes[0].peer.authority().unwrap().clone();
    assert_eq!((v.threshold, v.key_threshold), (3, 3));
    let err = net.cmd(1, Command::ChangeThreshold { threshold: 2 }).unwrap_err();
    assert_eq!(err, CommandError::BelowKeyThreshold { asked: 2, key: 3 });
    assert!(err.to_string().contains("needs a new key"), "{err}");
    // Nothing was proposed.
    net.run();
    assert_eq!(net.nodes[1].peer.authority().unwrap().epoch, v.epoch);
}
