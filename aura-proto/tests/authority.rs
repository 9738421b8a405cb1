//! Threshold authorities end to end through real peers: key generation over channels,
//! signing that plain FROST verification accepts, restore, and nonce discipline.

mod common;

use std::time::Duration;

use aura_proto::journal::FactBody;
use aura_proto::*;
use common::*;
use frost_ristretto255::{Signature, VerifyingKey};

fn frost_verifies(message: &[u8], sig: &[u8; 64], group_key: &[u8; 32]) -> bool {
    let vk = VerifyingKey::deserialize(group_key).unwrap();
    vk.verify(message, &Signature::deserialize(sig).unwrap()).is_ok()
}

#[test]
fn dkg_gives_every_member_the_same_key_and_one_share() {
    let net = authority_net(None);
    let first = created(&net.nodes[0]).expect("coordinator created the authority");
    for (i, n) in net.nodes.iter().enumerate() {
        assert_eq!(created(n), Some(first), "device {i} disagrees");
        let shares: Vec<_> = n.records.iter().filter(|r| matches!(r, Record::Share { .. })).collect();
        assert_eq!(shares.len(), 1, "device {i} must hold exactly one share");
    }
    // Shares differ between devices: nobody holds another's.
    let kp = |i: usize| {
        net.nodes[i].records.iter().find_map(|r| match r {
            Record::Share { key_package, .. } => Some(key_package.clone()),
            _ => None,
        })
    };
    assert_ne!(kp(0), kp(1));
    assert_ne!(kp(1), kp(2));
    // The genesis verifies and names the authority.
    let genesis = net.nodes[2].records.iter().find_map(|r| match r {
        Record::Fact(f) if matches!(f.body, FactBody::Genesis(_)) => Some(f.clone()),
        _ => None,
    });
    let g = genesis.expect("members hold the genesis");
    let FactBody::Genesis(body) = &g.body else {
        unreachable!()
    };
    assert_eq!(body.authority_id(), first.0);
    assert_eq!(body.group_key, first.1);
    assert_eq!(body.threshold, 2);
}

#[test]
fn any_member_signs_and_plain_frost_verifies() {
    let mut net = authority_net(None);
    let (_, gk) = created(&net.nodes[0]).unwrap();
    // Device 1 is paired only with device 0: it reaches device 2 over a member link.
    net.cmd(
        1,
        Command::Sign {
            statement: b"hello from the authority".to_vec(),
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    let s = signed(&net.nodes[1]);
    assert_eq!(s.len(), 1, "events: {:?}", net.nodes[1].events);
    let (msg, sig, key) = &s[0];
    assert_eq!(*key, gk);
    assert!(frost_verifies(msg, sig, key));
    let mut bad = msg.clone();
    bad[20] ^= 1;
    assert!(!frost_verifies(&bad, sig, key));
    // The statement is a journal fact at the coordinator.
    assert!(net.nodes[1].records.iter().any(|r| matches!(r, Record::Fact(f) if matches!(&f.body, FactBody::Statement(s) if s == b"hello from the authority"))));
}

#[test]
fn signing_works_with_one_device_down_and_under_loss() {
    let mut net = authority_net(Some(7));
    assert!(created(&net.nodes[2]).is_some());
    // Device 2 goes away; 2-of-3 still signs.
    net.nodes[2].addr = "down".into();
    net.cmd(
        0,
        Command::Sign {
            statement: b"one device down".to_vec(),
        },
    )
    .unwrap();
    net.run_lossy(5);
    net.advance_to_ms(net.now_ns / 1_000_000 + 20_000);
    let s = signed(&net.nodes[0]);
    assert_eq!(s.len(), 1, "{:?}", net.nodes[0].events);
    assert!(frost_verifies(&s[0].0, &s[0].1, &s[0].2));
}

#[test]
fn restore_keeps_the_authority_and_the_nonce_counter_only_grows() {
    let mut net = authority_net(None);
    net.cmd(
        1,
        Command::Sign {
            statement: b"before".to_vec(),
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    let counters = |n: &Node| -> Vec<u64> {
        n.records
            .iter()
            .filter_map(|r| match r {
                Record::NonceCounter(c) => Some(*c),
                _ => None,
            })
            .collect()
    };
    let before = counters(&net.nodes[1]).into_iter().max().unwrap_or(0);
    assert!(before >= 1, "the coordinator always takes part");
    // Every device restarts, device 1 even with its original seed (a careless host).
    for i in 0..3 {
        let n = &mut net.nodes[i];
        let d = Durable {
            secret: n.secret.clone(),
            records: n.records.clone(),
        };
        let seed = if i == 1 { [101; 32] } else { [i as u8 + 50; 32] };
        n.peer = Peer::restore(Config::default(), d, seed, now(net.now_ns));
        n.events.clear();
    }
    net.cmd(
        1,
        Command::Sign {
            statement: b"after".to_vec(),
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    let s = signed(&net.nodes[1]);
    assert_eq!(s.len(), 1, "{:?}", net.nodes[1].events);
    assert!(frost_verifies(&s[0].0, &s[0].1, &s[0].2));
    for i in 0..3 {
        let c = counters(&net.nodes[i]);
        assert!(
            c.windows(2).all(|w| w[0] < w[1]),
            "device {i}: nonce counter must strictly grow: {c:?}"
        );
    }
    assert!(*counters(&net.nodes[1]).last().unwrap() > before);
    // Signatures never share a commitment point R (a repeated nonce would show here).
    let mut rs: Vec<[u8; 32]> = net.nodes[1]
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Fact(f) => match (&f.body, &f.sig) {
                (FactBody::Statement(_), journal::FactSig::Group(s)) => Some(s.0[..32].try_into().unwrap()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let n = rs.len();
    rs.sort();
    rs.dedup();
    assert_eq!(rs.len(), n);
    assert!(n >= 2);
}

#[test]
fn no_commitment_leaves_before_the_nonce_counter_is_durable() {
    let mut net = authority_net(None);
    net.nodes[1].hold_persist = true;
    net.nodes[2].hold_persist = true;
    let sent = |net: &Net, i: usize| net.sent.iter().filter(|(j, _)| *j == i).count();
    let before = [sent(&net, 1), sent(&net, 2)];
    net.cmd(
        0,
        Command::Sign {
            statement: b"x".to_vec(),
        },
    )
    .unwrap();
    net.run();
    // 2-of-3: the coordinator asked exactly one other device, which is now persisting
    // its nonce counter and must not have sent anything yet.
    let asked: Vec<usize> = (1..3).filter(|i| !net.nodes[*i].held.is_empty()).collect();
    assert_eq!(asked.len(), 1);
    let k = asked[0];
    assert!(net.nodes[k]
        .records
        .iter()
        .any(|r| matches!(r, Record::NonceCounter(_))));
    assert_eq!(
        sent(&net, k),
        before[k - 1],
        "device {k} sent before its nonce counter was durable"
    );
    assert!(signed(&net.nodes[0]).is_empty());
    // Releasing the persist lets it commit: exactly one datagram, then the signature.
    let held: Vec<_> = net.nodes[k].held.drain(..).collect();
    assert_eq!(held.len(), 1);
    for t in held {
        net.input(k, Input::PersistDone(t)).unwrap();
    }
    assert_eq!(sent(&net, k), before[k - 1] + 1);
    net.nodes[k].hold_persist = false;
    net.run();
    assert_eq!(signed(&net.nodes[0]).len(), 1);
}

#[test]
fn bad_commands_are_refused() {
    let mut net = default_net(2);
    net.pair(0, 1);
    let b = net.id(1);
    assert!(matches!(
        net.cmd(
            0,
            Command::CreateAuthority {
                devices: vec![b],
                threshold: 3
            }
        ),
        Err(CommandError::BadThreshold { .. })
    ));
    assert!(matches!(
        net.cmd(
            0,
            Command::CreateAuthority {
                devices: vec![b],
                threshold: 1
            }
        ),
        Err(CommandError::BadThreshold { .. })
    ));
    let stranger = DeviceId([7; 32]);
    assert_eq!(
        net.cmd(
            0,
            Command::CreateAuthority {
                devices: vec![stranger],
                threshold: 2
            }
        ),
        Err(CommandError::UnknownPeer(stranger))
    );
    assert_eq!(
        net.cmd(0, Command::Sign { statement: vec![1] }),
        Err(CommandError::NotInAuthority)
    );
    let _ = Duration::ZERO;
}

#[test]
fn capabilities_are_rooted_at_the_authority_and_survive_restore() {
    use aura_proto::caps::{self, Subject};
    let mut net = authority_net(None);
    let holder = net.id(2);
    let rights = vec!["send".to_string(), "sync".to_string()];
    net.cmd(
        1,
        Command::IssueCapability {
            to: Subject::Device(holder),
            rights: rights.clone(),
            budget: Some(100),
        },
    )
    .unwrap();
    let token = net.nodes[1]
        .events
        .iter()
        .find_map(|e| match e {
            Event::CapabilityIssued { token } => Some(token.clone()),
            _ => None,
        })
        .expect("issued");
    let snaps = net.nodes[1].peer.capabilities();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].subject, Subject::Device(holder));
    assert_eq!(snaps[0].budget, Some(100));
    // Any member verifies it offline against the root the genesis carries.
    let root = net.nodes[2].peer.authority().unwrap().cap_root;
    let s = caps::verify(&token, &root).unwrap();
    assert_eq!(s.rights.into_iter().collect::<Vec<_>>(), rights);
    assert_eq!(s.issuer, net.nodes[2].peer.authority().unwrap().id);
    // Restore rebuilds it from the record.
    let n = &mut net.nodes[1];
    let d = Durable {
        secret: n.secret.clone(),
        records: n.records.clone(),
    };
    n.peer = Peer::restore(Config::default(), d, [77; 32], now(net.now_ns));
    assert_eq!(net.nodes[1].peer.capabilities(), snaps);
    // A device outside any authority cannot issue.
    let mut lone = default_net(1);
    assert_eq!(
        lone.cmd(
            0,
            Command::IssueCapability {
                to: Subject::Device(holder),
                rights,
                budget: None
            }
        ),
        Err(CommandError::NotInAuthority)
    );
}

// ----- key generation interrupted by crashes (each found by the simulator) -------------

fn has_share_record(n: &Node) -> bool {
    n.records.iter().any(|r| matches!(r, Record::Share { .. }))
}

fn created_with_share(n: &Node) -> Option<bool> {
    n.events.iter().find_map(|e| match e {
        Event::AuthorityCreated { has_share, .. } => Some(*has_share),
        _ => None,
    })
}

/// Delivers datagrams one at a time until `stop` holds (or the wire is empty).
fn run_until(net: &mut Net, stop: impl Fn(&Net) -> bool) {
    while !stop(net) {
        let Some((from, to, bytes)) = net.wire.pop_front() else {
            return;
        };
        let Some(j) = net.nodes.iter().position(|n| n.addr == to) else {
            continue;
        };
        let from = net.nodes[from].addr.clone();
        net.input(j, Input::Datagram { from, bytes }).unwrap();
    }
}

fn sign_and_verify(net: &mut Net, signer: usize) {
    net.cmd(
        signer,
        Command::Sign {
            statement: b"after the crash".to_vec(),
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 20_000);
    let s = signed(&net.nodes[signer]);
    assert_eq!(s.len(), 1, "{:?}", net.nodes[signer].events);
    assert!(frost_verifies(&s[0].0, &s[0].1, &s[0].2));
}

#[test]
fn a_coordinator_restarted_after_its_share_still_records_the_genesis() {
    let mut net = start_authority();
    run_until(&mut net, |n| has_share_record(&n.nodes[0]));
    assert!(created(&net.nodes[0]).is_none());
    let keep = net.nodes[0].records.len();
    crash_and_restore(&mut net, 0, keep, 77);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 90_000);
    let first = created(&net.nodes[0]).expect("the restarted coordinator recorded the genesis");
    for i in 0..3 {
        assert_eq!(created(&net.nodes[i]), Some(first), "device {i}");
        assert_eq!(created_with_share(&net.nodes[i]), Some(true));
    }
    sign_and_verify(&mut net, 1);
}

#[test]
fn a_member_restarted_after_its_share_asks_the_coordinator_again() {
    let mut net = start_authority();
    // Device 2's share lands on disk but it crashes before the acknowledgement, so it never
    // sends `DkgDone`: the coordinator waits for a member that forgot the session.
    net.nodes[2].hold_persist = true;
    run_until(&mut net, |n| has_share_record(&n.nodes[2]));
    let keep = net.nodes[2].records.len();
    crash_and_restore(&mut net, 2, keep, 78);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    let first = created(&net.nodes[0]).expect("the genesis formed");
    for i in 0..3 {
        assert_eq!(created(&net.nodes[i]), Some(first), "device {i}");
        assert_eq!(created_with_share(&net.nodes[i]), Some(true));
    }
}

#[test]
fn a_member_that_lost_its_round_state_leaves_a_usable_authority_without_its_share() {
    let mut net = start_authority();
    // Device 2's share never becomes durable: it crashes with the write in flight.
    let before = net.nodes[2].records.len();
    net.nodes[2].hold_persist = true;
    run_until(&mut net, |n| n.nodes[2].records.len() > before);
    assert!(matches!(net.nodes[2].records.last(), Some(Record::Share { .. })));
    crash_and_restore(&mut net, 2, before, 79);
    net.run();
    // The coordinator waits for key generation to time out, then goes ahead with the
    // threshold of shares that exist.
    net.advance_to_ms(net.now_ns / 1_000_000 + 200_000);
    let first = created(&net.nodes[0]).expect("the genesis formed with two shares");
    assert_eq!(net.nodes[0].peer.metrics().dkg_partial, 1);
    assert_eq!(created_with_share(&net.nodes[0]), Some(true));
    assert_eq!(created_with_share(&net.nodes[1]), Some(true));
    assert_eq!(
        created(&net.nodes[2]),
        Some(first),
        "the shareless member still learns the authority"
    );
    assert_eq!(created_with_share(&net.nodes[2]), Some(false));
    assert!(!net.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::AuthorityFailed { .. })));
    sign_and_verify(&mut net, 1);
    // The shareless member asks the device it paired with, and a threshold of the others
    // repair its share (the same way an added device gets one); then it signs.
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    assert!(has_share_record(&net.nodes[2]));
    assert!(net.nodes[2]
        .events
        .iter()
        .any(|e| matches!(e, Event::AuthorityJoined { .. })));
    let (m, sig) = sign_with(&mut net, 2, &[0], b"repaired").expect("signed with its repaired share");
    let gk = net.nodes[2].peer.authority().unwrap().group_key;
    assert!(frost_verifies(&m, &sig, &gk));
}

#[test]
fn a_key_generation_no_one_else_finished_is_given_up_and_can_be_redone() {
    let mut net = start_authority();
    // The members' shares never land; the coordinator's does, then all three crash.
    let before: Vec<usize> = net.nodes.iter().map(|n| n.records.len()).collect();
    net.nodes[1].hold_persist = true;
    net.nodes[2].hold_persist = true;
    run_until(&mut net, |n| has_share_record(&n.nodes[0]));
    let keep0 = net.nodes[0].records.len();
    net.wire.clear();
    crash_and_restore(&mut net, 0, keep0, 80);
    crash_and_restore(&mut net, 1, before[1], 81);
    crash_and_restore(&mut net, 2, before[2], 82);
    net.run();
    // The restarted coordinator tries to have the genesis signed; nobody else holds a
    // share, so after a few failed sessions it gives the key generation up.
    net.advance_to_ms(net.now_ns / 1_000_000 + 240_000);
    assert!(created(&net.nodes[0]).is_none());
    assert_eq!(net.nodes[0].peer.metrics().dkg_abandoned, 1);
    assert!(net.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::AuthorityFailed { reason } if reason.contains("too few"))));
    assert!(net.nodes[0]
        .records
        .iter()
        .any(|r| matches!(r, Record::ShareAbandoned { .. })));
    // The user asks again, and this time it works.
    ask_for_authority(&mut net);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    let first = created(&net.nodes[0]).expect("the second key generation formed the authority");
    for i in 0..3 {
        assert_eq!(created(&net.nodes[i]), Some(first), "device {i}");
        assert_eq!(created_with_share(&net.nodes[i]), Some(true));
    }
    // The abandoned share stays dropped across a restart: one live share, the new one.
    let keep = net.nodes[0].records.len();
    crash_and_restore(&mut net, 0, keep, 83);
    net.run();
    sign_and_verify(&mut net, 0);
}

#[test]
fn members_drop_shares_a_coordinator_lost_before_its_own_was_durable() {
    let mut net = start_authority();
    let before0 = net.nodes[0].records.len();
    net.nodes[0].hold_persist = true;
    run_until(&mut net, |n| {
        has_share_record(&n.nodes[1]) && has_share_record(&n.nodes[2])
    });
    // The coordinator's own share never lands; it crashes and forgets the round.
    net.wire.clear();
    crash_and_restore(&mut net, 0, before0, 84);
    net.run();
    // The members keep asking for the genesis (over fresh channels once they notice the
    // old ones died with the coordinator's memory); the coordinator, which can never make
    // one (it has no share of that session), tells them to drop theirs.
    net.advance_to_ms(net.now_ns / 1_000_000 + 120_000);
    for i in [1, 2] {
        assert!(
            net.nodes[i]
                .records
                .iter()
                .any(|r| matches!(r, Record::ShareAbandoned { .. })),
            "device {i} still holds a dead share"
        );
    }
    ask_for_authority(&mut net);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    let first = created(&net.nodes[0]).expect("a fresh key generation works");
    for i in 0..3 {
        assert_eq!(created(&net.nodes[i]), Some(first), "device {i}");
    }
}
