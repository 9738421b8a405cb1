//! Two peers wired back to back: pairing, channels and every class of bad input.

mod common;

use std::time::Duration;

use aura_proto::wire::{self, Packet, WIRE_VERSION};
use aura_proto::*;
use bytes::Bytes;
use common::*;

#[test]
fn pair_ping_and_send_both_ways() {
    let mut net = default_net(2);
    net.pair(0, 1);
    let (a, b) = (net.id(0), net.id(1));
    net.cmd(1, Command::Ping { peer: a }).unwrap();
    net.run();
    assert!(net.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::Pong { peer, .. } if *peer == a)));
    net.cmd(
        0,
        Command::Send {
            peer: b,
            data: Bytes::from_static(b"hello b"),
        },
    )
    .unwrap();
    net.cmd(
        1,
        Command::Send {
            peer: a,
            data: Bytes::from_static(b"hello a"),
        },
    )
    .unwrap();
    net.run();
    assert_eq!(received(&net.nodes[1]), vec![Bytes::from_static(b"hello b")]);
    assert_eq!(received(&net.nodes[0]), vec![Bytes::from_static(b"hello a")]);
    for i in 0..2 {
        let ch = net.nodes[i].peer.channels();
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].state, ChannelState::Up);
        assert_eq!(ch[0].version, PROTOCOL_VERSION);
        assert_eq!(net.nodes[i].peer.metrics().total_drops(), 0);
    }
}

#[test]
fn every_frame_on_the_wire_is_a_padding_bucket() {
    let mut net = default_net(2);
    net.pair(0, 1);
    let b = net.id(1);
    for len in [0usize, 1, 300, 5000] {
        net.cmd(
            0,
            Command::Send {
                peer: b,
                data: Bytes::from(vec![7u8; len]),
            },
        )
        .unwrap();
    }
    net.run();
    let mut scratch = Vec::new();
    for (_, bytes) in &net.sent {
        if let Ok(Packet::Data { ciphertext, .. }) = wire::decode_packet(bytes, &mut scratch) {
            assert!(
                wire::is_bucket_ciphertext(ciphertext.len()),
                "{} is not a bucket",
                ciphertext.len()
            );
        }
    }
}

#[test]
fn invite_code_only_after_persist_and_ack_only_after_persist() {
    let mut net = default_net(2);
    net.nodes[0].hold_persist = true;
    net.cmd(
        0,
        Command::CreateInvite {
            valid_for: Duration::from_secs(60),
            addr_hint: "n0".into(),
        },
    )
    .unwrap();
    assert!(net.nodes[0].events.is_empty(), "no code before the record is durable");
    let t = net.nodes[0].held.pop().unwrap();
    net.input(0, Input::PersistDone(t)).unwrap();
    let code = match &net.nodes[0].events[0] {
        Event::InviteCreated { code, .. } => code.clone(),
        e => panic!("{e:?}"),
    };
    net.cmd(1, Command::Join { code }).unwrap();
    net.run();
    // The inviter got the joiner's Confirm and is persisting: it must not have acked yet.
    assert_eq!(net.nodes[0].held.len(), 1);
    assert!(!net.paired(0, 1));
    let sent_before = net.sent.len();
    let t = net.nodes[0].held.pop().unwrap();
    net.input(0, Input::PersistDone(t)).unwrap();
    assert_eq!(
        net.sent.len(),
        sent_before + 1,
        "the PairAck leaves right after PersistDone"
    );
    net.run();
    assert!(net.paired(0, 1));
}

#[test]
fn restore_then_link_handshake() {
    let mut net = default_net(2);
    net.pair(0, 1);
    // Both restart from their records with new incarnation seeds.
    for i in 0..2 {
        let n = &mut net.nodes[i];
        let durable = Durable {
            secret: n.secret.clone(),
            records: n.records.clone(),
        };
        n.peer = Peer::restore(Config::default(), durable, [i as u8 + 200; 32], now(net.now_ns));
        n.events.clear();
    }
    assert_eq!(net.nodes[0].peer.paired().count(), 1);
    let a = net.id(0);
    net.cmd(
        1,
        Command::Send {
            peer: a,
            data: Bytes::from_static(b"after restart"),
        },
    )
    .unwrap();
    net.run();
    assert_eq!(received(&net.nodes[0]), vec![Bytes::from_static(b"after restart")]);
    assert!(net.nodes[1].events.iter().any(|e| matches!(e, Event::ChannelUp { .. })));
}

#[test]
fn lost_handshake_answer_is_retransmitted() {
    let mut net = default_net(2);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code }).unwrap();
    // deliver msg1, lose msg2
    let (f, to, bytes) = net.wire.pop_front().unwrap();
    let from = net.nodes[f].addr.clone();
    net.nodes[0]
        .peer
        .handle_input(now(0), Input::Datagram { from, bytes })
        .unwrap();
    assert_eq!(to, "n0");
    net.drop_next = 1;
    net.drain(0);
    assert!(net.wire.is_empty());
    net.advance_to_ms(2000);
    assert!(net.paired(0, 1));
    assert!(net.nodes[1].peer.metrics().handshake_retransmits >= 1);
    assert!(
        net.nodes[0].peer.metrics().handshake_retransmits >= 1,
        "responder resent its cached answer"
    );
}

#[test]
fn unanswered_join_fails_with_timeout() {
    let mut net = default_net(2);
    let code = net.invite(0);
    net.nodes[0].addr = "gone".into();
    net.cmd(1, Command::Join { code }).unwrap();
    net.advance_to_ms(120_000);
    assert!(net.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::PairingFailed {
            reason: FailReason::Timeout,
            ..
        }
    )));
    assert_eq!(
        net.nodes[1].peer.metrics().handshake_retransmits,
        Config::default().handshake_tries as u64 - 1
    );
    assert!(net.nodes[1].peer.channels().is_empty());
}

#[test]
fn version_negotiation_min_of_both_or_clear_rejection() {
    let newer = Config {
        min_version: 1,
        max_version: 3,
        ..Config::default()
    };
    let mut net = Net::new(2, vec![Config::default(), newer]);
    net.pair(0, 1);
    assert!(net.nodes[1].peer.channels().iter().all(|c| c.version == 1));

    let only3 = Config {
        min_version: 3,
        max_version: 3,
        ..Config::default()
    };
    let mut net = Net::new(2, vec![Config::default(), only3]);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code }).unwrap();
    net.run();
    let failed = net.nodes[1].events.iter().find_map(|e| match e {
        Event::PairingFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        failed,
        Some(FailReason::VersionMismatch {
            ours: (3, 3),
            theirs: (1, 1)
        })
    );
    assert!(!net.paired(0, 1));
    assert!(
        net.nodes[0].peer.channels().is_empty(),
        "no channel for a rejected version"
    );

    // The rejection itself is lost: the retransmitted first message gets it again.
    let only3 = Config {
        min_version: 3,
        max_version: 3,
        ..Config::default()
    };
    let mut net = Net::new(2, vec![Config::default(), only3]);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code }).unwrap();
    let (_, _, msg1) = net.wire.pop_front().unwrap();
    net.drop_next = 1;
    net.input(
        0,
        Input::Datagram {
            from: "n1".into(),
            bytes: msg1,
        },
    )
    .unwrap();
    assert!(net.wire.is_empty());
    net.advance_to_ms(2_000);
    assert!(net.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::PairingFailed {
            reason: FailReason::VersionMismatch { .. },
            ..
        }
    )));
    assert_eq!(net.nodes[0].peer.metrics().handshake_retransmits, 1);
}

#[test]
fn join_command_errors() {
    let mut net = default_net(3);
    let code = net.invite(0);
    assert_eq!(
        net.cmd(0, Command::Join { code: code.clone() }),
        Err(CommandError::Invite(InviteError::OwnCode))
    );
    assert_eq!(
        net.cmd(
            1,
            Command::Join {
                code: "nonsense".into()
            }
        ),
        Err(CommandError::Invite(InviteError::BadPrefix))
    );
    assert!(matches!(
        net.cmd(
            1,
            Command::Join {
                code: code[..code.len() - 8].into()
            }
        ),
        Err(CommandError::Invite(InviteError::Truncated { .. }))
    ));
    net.cmd(1, Command::Join { code: code.clone() }).unwrap();
    net.run();
    assert!(net.paired(0, 1));
    assert_eq!(
        net.cmd(1, Command::Join { code: code.clone() }),
        Err(CommandError::Invite(InviteError::AlreadyUsed))
    );
    // expired: ten minutes later
    net.now_ns += 601 * 1_000_000_000;
    assert!(matches!(
        net.cmd(2, Command::Join { code }),
        Err(CommandError::Invite(InviteError::Expired { .. }))
    ));
    let big = Bytes::from(vec![0u8; wire::MAX_APP_PAYLOAD + 1]);
    let a = net.id(0);
    assert!(matches!(
        net.cmd(1, Command::Send { peer: a, data: big }),
        Err(CommandError::PayloadTooLarge { .. })
    ));
    let stranger = DeviceId([9; 32]);
    assert_eq!(
        net.cmd(1, Command::Ping { peer: stranger }),
        Err(CommandError::UnknownPeer(stranger))
    );
}

#[test]
fn reused_invitation_is_refused_by_the_inviter() {
    let mut net = default_net(3);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code: code.clone() }).unwrap();
    net.run();
    assert!(net.paired(0, 1));
    net.cmd(2, Command::Join { code }).unwrap();
    net.run();
    assert!(!net.paired(0, 2));
    assert_eq!(net.drops(0, DropReason::ReusedInvite), 1);
}

#[test]
fn unknown_and_expired_invitations_are_dropped() {
    let mut net = default_net(2);
    // A code with the right inviter key but a secret the inviter never issued.
    let forged = Invitation {
        version: 1,
        inviter_noise: net.nodes[0].peer.cert().noise,
        secret: [42; 32],
        expires_unix_ms: UNIX0 + 3_600_000,
        addr_hint: "n0".into(),
    };
    net.cmd(1, Command::Join { code: forged.to_code() }).unwrap();
    net.run();
    assert_eq!(net.drops(0, DropReason::UnknownInvite), 1);
    assert!(net.nodes[0].peer.channels().is_empty());

    // Expired on the inviter's clock, though the joiner's clock still thought it valid.
    let mut net = default_net(2);
    net.cmd(
        0,
        Command::CreateInvite {
            valid_for: Duration::from_secs(1),
            addr_hint: "n0".into(),
        },
    )
    .unwrap();
    let code = match &net.nodes[0].events[0] {
        Event::InviteCreated { code, .. } => code.clone(),
        e => panic!("{e:?}"),
    };
    net.cmd(1, Command::Join { code }).unwrap();
    let (_, _, msg1) = net.wire.pop_front().unwrap();
    let late = Now::from_parts(0, UNIX0 + 5_000);
    net.nodes[0]
        .peer
        .handle_input(
            late,
            Input::Datagram {
                from: "n1".into(),
                bytes: msg1,
            },
        )
        .unwrap();
    assert_eq!(net.drops(0, DropReason::ExpiredInvite), 1);
}

#[test]
fn every_bad_datagram_class_is_dropped_and_counted() {
    let mut net = default_net(2);
    net.pair(0, 1);
    let b = net.id(1);
    net.cmd(
        0,
        Command::Send {
            peer: b,
            data: Bytes::from_static(b"x"),
        },
    )
    .unwrap();
    let (_, _, data) = net.wire.pop_front().unwrap();
    net.input(
        1,
        Input::Datagram {
            from: "n0".into(),
            bytes: data.clone(),
        },
    )
    .unwrap();
    assert_eq!(received(&net.nodes[1]).len(), 1);

    assert_eq!(net.inject(1, vec![]), DropReason::Truncated);
    assert_eq!(net.inject(1, data[..data.len() - 1].to_vec()), DropReason::Truncated);
    let mut trailing = data.clone();
    trailing.push(0);
    assert_eq!(net.inject(1, trailing), DropReason::Malformed);
    assert_eq!(net.inject(1, vec![WIRE_VERSION, 200, 1, 2, 3]), DropReason::Malformed);
    assert_eq!(
        net.inject(1, vec![WIRE_VERSION; wire::MAX_DATAGRAM + 1]),
        DropReason::Oversized
    );
    let mut v = data.clone();
    v[0] = WIRE_VERSION + 1;
    assert_eq!(net.inject(1, v), DropReason::WrongVersion);
    assert_eq!(net.inject(1, data.clone()), DropReason::Replayed);
    let mut forged = data.clone();
    let last = forged.len() - 3;
    forged[last] ^= 0x40;
    // the same nonce with a different tag: unauthenticated, and still not accepted later
    let mut scratch = Vec::new();
    let Packet::Data {
        receiver, ciphertext, ..
    } = wire::decode_packet(&data, &mut scratch).unwrap()
    else {
        panic!()
    };
    let fresh_nonce = wire::encode_packet(&Packet::Data {
        receiver,
        nonce: 99,
        ciphertext,
    });
    assert_eq!(net.inject(1, fresh_nonce), DropReason::Unauthenticated);
    let wrong_session = wire::encode_packet(&Packet::Data {
        receiver: receiver ^ 1,
        nonce: 5,
        ciphertext,
    });
    assert_eq!(net.inject(1, wrong_session), DropReason::UnknownSession);
    // handshake garbage
    let junk_init = wire::encode_packet(&Packet::HandshakeInit {
        sender: 1,
        purpose: wire::Purpose::Link,
        noise: &[0u8; 96],
    });
    assert_eq!(net.inject(1, junk_init), DropReason::Unauthenticated);
    let junk_resp = wire::encode_packet(&Packet::HandshakeResp {
        sender: 1,
        receiver: 77,
        noise: &[0u8; 48],
    });
    assert_eq!(net.inject(1, junk_resp), DropReason::UnknownSession);
    // and the channel still works
    net.cmd(
        0,
        Command::Send {
            peer: b,
            data: Bytes::from_static(b"y"),
        },
    )
    .unwrap();
    net.run();
    assert_eq!(received(&net.nodes[1]).len(), 2);
}

#[test]
fn replayed_handshake_init_does_not_disturb_the_channel() {
    let mut net = default_net(2);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code }).unwrap();
    let msg1 = net.wire.front().unwrap().2.clone();
    net.run();
    assert!(net.paired(0, 1));
    assert_eq!(net.inject(0, msg1), DropReason::Replayed);
    let b = net.id(1);
    net.cmd(0, Command::Ping { peer: b }).unwrap();
    net.run();
    assert!(net.nodes[0].events.iter().any(|e| matches!(e, Event::Pong { .. })));
}

#[test]
fn handshake_from_unpaired_device_is_dropped() {
    // World X: node 2 paired with node 0. World Y (same device secrets): only 0 and 1.
    let mut x = default_net(3);
    x.pair(0, 2);
    let mut y = default_net(3);
    y.pair(0, 1);
    // Node 2 restarts in X and opens a link to node 0: that first message is addressed to
    // node 0's static key, which is the same in Y, but Y's node 0 never paired with node 2.
    let n = &mut x.nodes[2];
    let durable = Durable {
        secret: n.secret.clone(),
        records: n.records.clone(),
    };
    n.peer = Peer::restore(Config::default(), durable, [9; 32], now(0));
    let a = x.id(0);
    x.cmd(2, Command::Connect { peer: a }).unwrap();
    let (_, _, msg1) = x.wire.pop_front().unwrap();
    assert_eq!(y.inject(0, msg1), DropReason::UnknownPeer);
}

#[test]
fn keepalive_and_idle_teardown() {
    let cfg = Config {
        app_idle: Some(Duration::from_secs(60)),
        ..Config::default()
    };
    let mut net = Net::new(2, vec![cfg.clone(), cfg]);
    net.pair(0, 1);
    let b = net.id(1);
    net.cmd(0, Command::Ping { peer: b }).unwrap();
    net.run();
    net.advance_to_ms(59_000);
    assert!(net.nodes[0].peer.channels().iter().all(|c| c.state == ChannelState::Up));
    net.advance_to_ms(70_000);
    assert!(net.nodes[0].peer.channels().is_empty());
    assert!(net.nodes[0].events.iter().any(|e| matches!(
        e,
        Event::ChannelDown {
            reason: DownReason::Idle,
            ..
        }
    )));
    assert!(net.nodes[1].events.iter().any(|e| matches!(
        e,
        Event::ChannelDown {
            reason: DownReason::PeerClosed | DownReason::Idle,
            ..
        }
    )));

    // With persistent keepalives the channel stays up; cut the link and it times out.
    let cfg = Config {
        persistent_keepalive: Some(Duration::from_secs(5)),
        ..Config::default()
    };
    let mut net = Net::new(2, vec![cfg.clone(), cfg]);
    net.pair(0, 1);
    net.advance_to_ms(300_000);
    assert!(net.nodes[0].peer.channels().iter().all(|c| c.state == ChannelState::Up));
    net.drop_next = usize::MAX; // the link goes dead both ways
    net.advance_to_ms(400_000);
    assert!(net.nodes[0].events.iter().any(|e| matches!(
        e,
        Event::ChannelDown {
            reason: DownReason::Timeout,
            ..
        }
    )));
}

#[test]
fn same_seeds_same_bytes() {
    let run = || {
        let mut net = default_net(2);
        net.pair(0, 1);
        let a = net.id(0);
        net.cmd(
            1,
            Command::Send {
                peer: a,
                data: Bytes::from_static(b"d"),
            },
        )
        .unwrap();
        net.run();
        net.sent.clone()
    };
    assert_eq!(run(), run());
}

mod properties {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn paired_with_data() -> (Net, Vec<u8>) {
        let mut net = default_net(2);
        net.pair(0, 1);
        let b = net.id(1);
        net.cmd(
            0,
            Command::Send {
                peer: b,
                data: Bytes::from_static(b"payload"),
            },
        )
        .unwrap();
        let (_, _, data) = net.wire.pop_front().unwrap();
        (net, data)
    }

    /// Arbitrary bytes: never a panic, never an event or packet, always exactly one drop.
    #[test]
    fn arbitrary_datagrams_are_dropped_and_counted() {
        fn prop(inputs: Vec<Vec<u8>>, version_prefix: bool) -> bool {
            let mut net = default_net(2);
            net.pair(0, 1);
            for mut bytes in inputs {
                if version_prefix {
                    // Reach past the version check into the packet decoder.
                    bytes.insert(0, WIRE_VERSION);
                }
                net.inject(1, bytes);
            }
            true
        }
        QuickCheck::new()
            .tests(60)
            .quickcheck(prop as fn(Vec<Vec<u8>>, bool) -> bool);
    }

    /// Any single mutation of a genuine data packet is dropped, and the channel survives.
    #[test]
    fn mutated_genuine_packets_are_dropped() {
        fn prop(pos: usize, xor: u8, cut: bool) -> TestResult {
            if xor == 0 && !cut {
                return TestResult::discard();
            }
            let (mut net, data) = paired_with_data();
            let mut m = data.clone();
            if cut {
                m.truncate(pos % m.len());
            } else {
                let i = pos % m.len();
                m[i] ^= xor;
            }
            net.inject(1, m);
            // The genuine packet still goes through afterwards.
            net.input(
                1,
                Input::Datagram {
                    from: "n0".into(),
                    bytes: data,
                },
            )
            .unwrap();
            TestResult::from_bool(received(&net.nodes[1]) == vec![Bytes::from_static(b"payload")])
        }
        QuickCheck::new()
            .tests(60)
            .quickcheck(prop as fn(usize, u8, bool) -> TestResult);
    }
}

/// Regression (found by `aura-sim sweep`, seed 31): the inviter's answers were lost for
/// over ten seconds; when the joiner's Confirm finally arrived on that old responder state,
/// the inviter announced a keepalive deadline in the past that its timeout handler skipped
/// while pairing was being recorded, and the host spun forever.
#[test]
fn late_confirm_on_an_old_responder_state_does_not_spin() {
    let mut net = default_net(2);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code }).unwrap();
    // The joiner's messages arrive; every answer of the inviter is lost for 12 s.
    net.drop_from = Some(0);
    net.run();
    net.advance_to_ms(12_000);
    net.drop_from = None;
    // The inviter records the pairing slowly: timers fire while it is persisting.
    net.nodes[0].hold_persist = true;
    net.advance_to_ms(17_000);
    assert_eq!(
        net.nodes[0].held.len(),
        1,
        "the Confirm arrived and the pairing is being recorded"
    );
    net.input(0, Input::Timeout).unwrap();
    let next = net.nodes[0].peer.poll_timeout().expect("a deadline");
    assert!(
        next.as_nanos() > net.now_ns,
        "the inviter's deadline is in the past while persisting"
    );
    net.advance_to_ms(20_000);
    net.nodes[0].hold_persist = false;
    let held: Vec<_> = net.nodes[0].held.drain(..).collect();
    for t in held {
        net.input(0, Input::PersistDone(t)).unwrap();
    }
    net.run();
    net.advance_to_ms(40_000);
    assert!(net.nodes[0].events.iter().any(|e| matches!(e, Event::Paired { .. })));
    assert!(net.nodes[1].events.iter().any(|e| matches!(e, Event::Paired { .. })));
}

/// Regression (found by `aura-sim sweep --swarm`, seed 153): a device restarted and lost
/// its sessions while the other kept sending every second. Dead-peer detection measured
/// from the *last* send, so steady traffic postponed it forever and the sender kept using
/// a session the other side no longer had.
#[test]
fn steady_traffic_to_a_restarted_peer_still_detects_the_dead_session() {
    let mut net = default_net(2);
    net.pair(0, 1);
    let (a, b) = (net.id(0), net.id(1));
    net.cmd(0, Command::Ping { peer: b }).unwrap();
    net.run();
    // Device 1 restarts: its channel to device 0 is gone.
    let n = &mut net.nodes[1];
    let d = Durable {
        secret: n.secret.clone(),
        records: n.records.clone(),
    };
    n.peer = Peer::restore(Config::default(), d, [9; 32], now(net.now_ns));
    n.events.clear();
    for s in 1..=60u64 {
        net.advance_to_ms(s * 1000);
        net.cmd(
            0,
            Command::Send {
                peer: b,
                data: Bytes::from(format!("m{s}")),
            },
        )
        .unwrap();
        net.run();
    }
    assert!(
        net.nodes[0]
            .events
            .iter()
            .any(|e| matches!(e, Event::ChannelDown { peer, reason: DownReason::Timeout } if *peer == b)),
        "device 0 never noticed the dead session"
    );
    assert!(
        !received(&net.nodes[1]).is_empty(),
        "messages flow again over a new session"
    );
    let _ = a;
}

/// Regression (found by `aura-sim sweep --swarm`, seed 109): every Confirm of a joiner was
/// lost in a loss burst; its pairing channel died silently and nothing ever retried.
#[test]
fn a_joiner_whose_confirms_all_vanish_reports_failure_and_can_retry() {
    let mut net = default_net(2);
    let code = net.invite(0);
    net.cmd(1, Command::Join { code: code.clone() }).unwrap();
    // Deliver the first message and the answer, then lose everything the joiner sends.
    let (_, _, m1) = net.wire.pop_front().unwrap();
    net.input(
        0,
        Input::Datagram {
            from: "n1".into(),
            bytes: m1,
        },
    )
    .unwrap();
    let (_, _, m2) = net.wire.pop_front().unwrap();
    net.drop_from = Some(1);
    net.input(
        1,
        Input::Datagram {
            from: "n0".into(),
            bytes: m2,
        },
    )
    .unwrap();
    net.advance_to_ms(120_000);
    assert!(
        net.nodes[1].events.iter().any(|e| matches!(
            e,
            Event::PairingFailed {
                reason: FailReason::Timeout,
                ..
            }
        )),
        "{:?}",
        net.nodes[1].events
    );
    // Asking again (same code, still spent only here) completes the pairing.
    net.drop_from = None;
    net.cmd(1, Command::Join { code }).unwrap();
    net.run();
    net.advance_to_ms(130_000);
    assert!(net.nodes[1].events.iter().any(|e| matches!(e, Event::Paired { .. })));
}

/// A host may wake its peer before any deadline: aura-smol leaves its timer armed at an
/// earlier deadline rather than move it later on every datagram. Such a `Timeout` must
/// change nothing: the same run with one before every input sends the same bytes and
/// reports the same events (pairing, lossy handshakes, authority creation, signing with
/// a device cut off, and the timers that follow).
#[test]
fn a_timeout_before_any_deadline_changes_nothing() {
    let run = |early: bool| {
        let mut net = default_net(3);
        net.early_timeouts = early;
        net.pair(0, 1);
        net.pair(0, 2);
        ask_for_authority(&mut net);
        net.run_lossy(4);
        net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
        let a = sign_with(&mut net, 0, &[], b"all online");
        let b = sign_with(&mut net, 1, &[0], b"device 0 cut off");
        assert!(a.is_some() && b.is_some(), "both statements are signed");
        net.advance_to_ms(net.now_ns / 1_000_000 + 120_000);
        let events: Vec<String> = net.nodes.iter().map(|n| format!("{:?}", n.events)).collect();
        (net.sent, events)
    };
    let (plain, early) = (run(false), run(true));
    assert!(plain.0.len() > 50, "the scenario sends: {}", plain.0.len());
    assert_eq!(plain.0.len(), early.0.len(), "datagrams sent");
    assert!(plain.0 == early.0, "the same datagrams");
    assert_eq!(plain.1, early.1);
}
