//! Anti-entropy between running peers: reconciliation sessions, catching up after an
//! absence, propagation status of the facts a device writes, and delivery confirmations
//! for notes that ask for them.

mod common;

use aura_proto::journal::{FactId, Namespace, MAX_NOTE};
use aura_proto::*;
use common::*;

fn propagation(n: &Node, fact: FactId) -> Vec<Propagation> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::Propagation { fact: f, status } if *f == fact => Some(*status),
            _ => None,
        })
        .collect()
}

/// The id of the last fact device `i` wrote (its first propagation event).
fn last_written(n: &Node) -> FactId {
    n.events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Propagation {
                fact,
                status: Propagation::Local,
            } => Some(*fact),
            _ => None,
        })
        .expect("a fact was written")
}

fn authority_ns(net: &Net) -> Namespace {
    Namespace::Authority(created(&net.nodes[0]).unwrap().0)
}

// ----- anti-entropy between own devices -------------------------------------------------

#[test]
fn a_device_that_missed_facts_catches_up_by_sync() {
    let mut net = authority_net(None);
    // Device 2 is cut off while device 0 has the authority sign a statement.
    net.cut.insert(2);
    net.cmd(
        0,
        Command::Sign {
            statement: b"while 2 was away".to_vec(),
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(signed(&net.nodes[0]).len(), 1);
    // Device 0 restarts: the push it was retrying to device 2 lived in memory.
    let keep = net.nodes[0].records.len();
    crash_and_restore(&mut net, 0, keep, 90);
    net.cut.remove(&2);
    let ns = journal::Namespace::Authority(created(&net.nodes[0]).unwrap().0);
    let digest = |net: &Net, i: usize| net.nodes[i].peer.journal().digest(&ns);
    assert_ne!(digest(&net, 2), digest(&net, 0), "device 2 lacks the statement");
    // Device 2 asks at once; its channel to device 0 died with device 0's memory, so
    // that session goes nowhere, but device 0 reconciles with its devices right after
    // its restart: well within ten seconds everyone holds the statement.
    net.cmd(2, Command::Sync { peer: None }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    assert_eq!(digest(&net, 2), digest(&net, 0));
    assert_eq!(digest(&net, 1), digest(&net, 0));
    let moved: usize = [0, 2]
        .iter()
        .flat_map(|i| net.nodes[*i].events.iter())
        .filter_map(|e| match e {
            Event::SyncDone { pushed, fetched, .. } => Some(pushed + fetched),
            _ => None,
        })
        .sum();
    assert!(moved >= 1, "{:?}", net.nodes[2].events);
    // Equal journals: a second sync finds nothing and takes one round.
    let before = net.nodes[2].events.len();
    net.cmd(2, Command::Sync { peer: Some(net.id(0)) }).unwrap();
    net.run();
    assert!(net.nodes[2].events[before..].iter().any(|e| matches!(
        e,
        Event::SyncDone {
            pushed: 0,
            fetched: 0,
            rounds: 1,
            ..
        }
    )));
}

#[test]
fn a_sync_with_a_device_that_never_answers_fails_after_its_retries() {
    let mut net = authority_net(None);
    net.nodes[1].addr = "gone".into();
    net.cmd(0, Command::Sync { peer: Some(net.id(1)) }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    assert!(net.nodes[0].events.iter().any(|e| matches!(
        e,
        Event::SyncFailed {
            phase: SyncPhase::Reconcile,
            ..
        }
    )));
    assert!(net.nodes[0].peer.metrics().sync_retries >= 2);
}

#[test]
fn a_note_goes_local_then_syncing_then_failed_then_complete() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    net.cut.insert(2);
    net.cmd(
        0,
        Command::Publish {
            namespace: ns,
            data: b"hello devices".to_vec(),
            ack: false,
        },
    )
    .unwrap();
    net.run();
    let id = last_written(&net.nodes[0]);
    assert_eq!(
        propagation(&net.nodes[0], id),
        vec![Propagation::Local, Propagation::Syncing { reached: 1, known: 2 }],
        "device 1 acknowledged the push, device 2 is away"
    );
    // The pushes to device 2 back off and give up; the fact waits for anti-entropy.
    net.advance_to_ms(net.now_ns / 1_000_000 + 300_000);
    let failed = net.nodes[0].peer.propagation(&id).unwrap();
    assert!(
        matches!(
            failed,
            Propagation::Failed {
                reached: 1,
                known: 2,
                ..
            }
        ),
        "{failed:?}"
    );
    // Device 2 is back; an on-demand sync carries the note there.
    net.cut.remove(&2);
    net.cmd(0, Command::Sync { peer: None }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(net.nodes[0].peer.propagation(&id), Some(Propagation::Complete));
    assert_eq!(propagation(&net.nodes[0], id).last(), Some(&Propagation::Complete));
    assert!(net.nodes[2].peer.journal().facts(&ns).any(|f| f.id() == id));
    // Pushes to an absent device are bounded: ten per fact, not one per tick forever.
    let written = net.nodes[0].peer.written_facts();
    assert_eq!(written.last().map(|w| w.0), Some(id));
}

#[test]
fn notes_asking_for_confirmation_are_confirmed_by_every_member_and_recorded() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    net.cmd(
        1,
        Command::Publish {
            namespace: ns,
            data: b"please confirm".to_vec(),
            ack: true,
        },
    )
    .unwrap();
    net.run();
    let id = last_written(&net.nodes[1]);
    let confirmed = |n: &Node| -> Vec<DeviceId> {
        n.events
            .iter()
            .filter_map(|e| match e {
                Event::Delivered { fact, peer } if *fact == id => Some(*peer),
                _ => None,
            })
            .collect()
    };
    let mut got = confirmed(&net.nodes[1]);
    got.sort();
    let mut want = vec![net.id(0), net.id(2)];
    want.sort();
    assert_eq!(got, want);
    // Recorded before reported: one record per confirming device.
    let records = net.nodes[1]
        .records
        .iter()
        .filter(|r| matches!(r, Record::Delivered { fact, .. } if *fact == id))
        .count();
    assert_eq!(records, 2);
    assert_eq!(net.nodes[1].peer.deliveries(&id).len(), 2);
    assert_eq!(net.nodes[1].peer.propagation(&id), Some(Propagation::Complete));
    // A restart keeps the confirmations and does not report them again.
    let keep = net.nodes[1].records.len();
    let events = net.nodes[1].events.len();
    crash_and_restore(&mut net, 1, keep, 77);
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(net.nodes[1].peer.deliveries(&id).len(), 2);
    assert!(!net.nodes[1].events[events..]
        .iter()
        .any(|e| matches!(e, Event::Delivered { .. })));
}

#[test]
fn a_confirmation_lost_on_the_way_is_asked_for_again() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    // Device 2 receives the note but everything it sends is lost for a while: its
    // acknowledgement and its confirmation never arrive.
    net.drop_from = Some(2);
    net.cmd(
        0,
        Command::Publish {
            namespace: ns,
            data: b"are you there".to_vec(),
            ack: true,
        },
    )
    .unwrap();
    net.run();
    let id = last_written(&net.nodes[0]);
    assert!(net.nodes[2].peer.journal().facts(&ns).any(|f| f.id() == id));
    assert_eq!(net.nodes[0].peer.deliveries(&id).len(), 1, "only device 1 confirmed");
    net.drop_from = None;
    // The author keeps pushing until it holds a confirmation; device 2 confirms the
    // duplicate.
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    assert_eq!(net.nodes[0].peer.deliveries(&id).len(), 2);
}

#[test]
fn bad_publish_commands_are_refused() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    let too_big = net.cmd(
        0,
        Command::Publish {
            namespace: ns,
            data: vec![0; MAX_NOTE + 1],
            ack: false,
        },
    );
    assert!(
        matches!(too_big, Err(CommandError::PayloadTooLarge { .. })),
        "{too_big:?}"
    );
    let elsewhere = Namespace::Context(journal::ContextId([7; 32]));
    let not_member = net.cmd(
        0,
        Command::Publish {
            namespace: elsewhere,
            data: b"x".to_vec(),
            ack: false,
        },
    );
    assert_eq!(not_member, Err(CommandError::NotMember(elsewhere)));
    let stranger = net.cmd(
        1,
        Command::Sync {
            peer: Some(DeviceId([9; 32])),
        },
    );
    assert!(matches!(stranger, Err(CommandError::UnknownPeer(_))));
}

#[test]
fn confirmations_for_notes_we_did_not_write_are_dropped_and_counted() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    net.cmd(
        0,
        Command::Publish {
            namespace: ns,
            data: b"no confirmation wanted".to_vec(),
            ack: false,
        },
    )
    .unwrap();
    net.run();
    let id = last_written(&net.nodes[0]);
    let before = net.nodes[0].peer.metrics().drops(metrics::DropReason::UnexpectedFrame);
    // Device 1 (a member, on its authenticated channel) confirms a note that asked for
    // nothing and one that does not exist: neither is recorded.
    let msg = authority::AuthMsg::Delivered {
        ids: vec![id, FactId([3; 32])],
    };
    net.deliver_proto(0, 1, journal::ContextId::OWN, &msg);
    net.run();
    assert!(net.nodes[0].peer.deliveries(&id).is_empty());
    assert!(!net.nodes[0]
        .records
        .iter()
        .any(|r| matches!(r, Record::Delivered { .. })));
    let after = net.nodes[0].peer.metrics().drops(metrics::DropReason::UnexpectedFrame);
    assert_eq!(after - before, 2);
}

#[test]
fn many_large_notes_reach_a_device_that_was_away_and_the_session_waits_for_them() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    net.cut.insert(2);
    // Twenty notes of the largest size: together far more than one frame holds.
    for k in 0..20u8 {
        net.cmd(
            0,
            Command::Publish {
                namespace: ns,
                data: vec![k; MAX_NOTE],
                ack: false,
            },
        )
        .unwrap();
    }
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 300_000);
    assert_eq!(
        net.nodes[1].peer.journal().digest(&ns),
        net.nodes[0].peer.journal().digest(&ns)
    );
    let notes = |net: &Net, i: usize| {
        net.nodes[i]
            .peer
            .journal()
            .facts(&ns)
            .filter(|f| matches!(f.body, journal::FactBody::Note(_)))
            .count()
    };
    assert_eq!(notes(&net, 2), 0);
    net.cut.remove(&2);
    // Device 2 fetches; its writes are held, so the session must not report done yet.
    net.nodes[2].hold_persist = true;
    let before = net.nodes[2].events.len();
    let n0 = net.id(0);
    net.cmd(2, Command::Sync { peer: Some(n0) }).unwrap();
    net.run();
    let done = |net: &Net| {
        net.nodes[2].events[before..]
            .iter()
            .any(|e| matches!(e, Event::SyncDone { peer, .. } if *peer == n0))
    };
    assert!(!net.nodes[2].held.is_empty(), "the fetched notes are being written");
    assert!(!done(&net), "SyncDone before the fetched facts were durable");
    net.nodes[2].hold_persist = false;
    let held: Vec<_> = net.nodes[2].held.drain(..).collect();
    for t in held {
        net.input(2, Input::PersistDone(t)).unwrap();
    }
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(notes(&net, 2), 20);
    assert!(done(&net), "{:?}", &net.nodes[2].events[before..]);
    assert_eq!(
        net.nodes[2].peer.journal().digest(&ns),
        net.nodes[0].peer.journal().digest(&ns)
    );
}

#[test]
fn a_fact_with_a_runaway_clock_is_refused() {
    use aura_proto::journal::{verify_fact, FactBody, FactError, Note, MAX_LAMPORT};
    let net = authority_net(None);
    let ns = authority_ns(&net);
    let keys = keys::DeviceKeys::derive(&net.nodes[1].secret, &mut rng::PeerRng::from_seed([1; 32]));
    let mut r = rng::PeerRng::from_seed([2; 32]);
    let note = |lamport: u64, r: &mut rng::PeerRng| {
        let body = FactBody::Note(Note {
            data: b"late".to_vec(),
            ack: false,
        });
        device_fact(&keys, ns, lamport, body, r)
    };
    let view = net.nodes[0].peer.authority().unwrap().clone();
    let lookup = aura_proto::authority::Views([(view.id, view)].into_iter().collect());
    assert_eq!(verify_fact(&note(5, &mut r), &ns, &lookup), Ok(()));
    assert_eq!(verify_fact(&note(MAX_LAMPORT, &mut r), &ns, &lookup), Ok(()));
    assert_eq!(
        verify_fact(&note(u64::MAX, &mut r), &ns, &lookup),
        Err(FactError::Invalid)
    );
}

#[test]
fn a_device_flooding_queries_gets_a_bounded_number_of_answers() {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    let items = sync::items(net.nodes[1].peer.journal(), &ns);
    let query = sync::initiate(&items, 16 * 1024).unwrap();
    // A second in which device 1's own periodic queries do not reach device 0 (they
    // would share the window with the flood).
    net.cut.insert(1);
    net.advance_to_ms(net.now_ns / 1_000_000 + 1_000);
    let overloaded = |net: &Net| net.nodes[0].peer.metrics().drops(DropReason::Overloaded);
    let before = overloaded(&net);
    for session in 0..200u64 {
        let msg = authority::AuthMsg::SyncQuery {
            session,
            round: 0,
            namespace: ns,
            msg: query.clone(),
        };
        net.deliver_proto(0, 1, journal::ContextId::OWN, &msg);
    }
    // 64 answered within the second, the rest dropped and counted.
    assert_eq!(overloaded(&net) - before, 200 - 64);
}

/// Sessions `n` finished with `peer`.
fn sync_done(n: &Node, peer: DeviceId) -> usize {
    n.events
        .iter()
        .filter(|e| matches!(e, Event::SyncDone { peer: p, .. } if *p == peer))
        .count()
}

/// Device 2 away for five minutes (while device 0 wrote a note, with `note`): both sides'
/// handshakes to each other are then waiting out long backoffs, and device 2's crosses
/// device 0's.
fn away_five_minutes(note: bool) -> (Net, Namespace, Option<FactId>) {
    let mut net = authority_net(None);
    let ns = authority_ns(&net);
    net.cut.insert(2);
    let mut id = None;
    if note {
        net.cmd(
            0,
            Command::Publish {
                namespace: ns,
                data: b"while you were away".to_vec(),
                ack: false,
            },
        )
        .unwrap();
        net.run();
        id = Some(last_written(&net.nodes[0]));
    }
    net.advance_to_ms(net.now_ns / 1_000_000 + 300_000);
    assert!(
        net.nodes[2]
            .peer
            .channels()
            .iter()
            .any(|c| c.state == ChannelState::Handshaking),
        "device 2 has a handshake of its own in flight: the two cross"
    );
    net.cut.remove(&2);
    (net, ns, id)
}

/// Back after five minutes away, a device is reached at once by an explicit sync, with no
/// timer to wait out: the sessions and handshakes that backed off meanwhile go again now
/// (one out of tries is replaced), and the device that keeps its own crossed handshake
/// (the smaller id) answers the other's first message by sending its own again at once.
#[test]
fn an_explicit_sync_reaches_a_returning_device_without_waiting_out_backoffs() {
    let (mut net, ns, id) = away_five_minutes(true);
    let id = id.unwrap();
    let t = net.now_ns;
    net.cmd(0, Command::Sync { peer: None }).unwrap();
    net.run();
    assert_eq!(net.now_ns, t, "no time passed");
    assert!(net.nodes[2].peer.journal().facts(&ns).any(|f| f.id() == id));
    assert_eq!(net.nodes[0].peer.propagation(&id), Some(Propagation::Complete));
}

/// With no note to push, only the periodic sessions wait on the handshakes: the sync still
/// completes with no time passing.
#[test]
fn an_explicit_sync_with_nothing_queued_still_goes_at_once() {
    let (mut net, _, _) = away_five_minutes(false);
    let n2 = net.id(2);
    let done = |net: &Net| sync_done(&net.nodes[0], n2);
    let (t, before) = (net.now_ns, done(&net));
    net.cmd(0, Command::Sync { peer: Some(n2) }).unwrap();
    net.run();
    assert_eq!(net.now_ns, t, "no time passed");
    assert!(done(&net) > before, "the sync with device 2 finished");
}

/// What was queued behind a handshake that an explicit sync hurries or replaces is not
/// lost: it goes out on the new channel.
#[test]
fn traffic_queued_behind_a_hurried_handshake_is_delivered() {
    let (mut net, _, _) = away_five_minutes(true);
    let n2 = net.id(2);
    let msg = bytes::Bytes::from_static(b"waited for the channel");
    net.cmd(
        0,
        Command::Send {
            peer: n2,
            data: msg.clone(),
        },
    )
    .unwrap();
    net.cmd(0, Command::Sync { peer: Some(n2) }).unwrap();
    net.run();
    assert!(received(&net.nodes[2]).contains(&msg));
}

/// A sync asked for again while the first attempt's message is lost goes out again at
/// once, instead of the second request waiting behind the first session's retry timer.
#[test]
fn asking_again_resends_a_lost_sync_at_once() {
    let mut net = authority_net(None);
    let n1 = net.id(1);
    let done = |net: &Net| sync_done(&net.nodes[0], n1);
    let before = done(&net);
    net.drop_next = 1;
    net.cmd(0, Command::Sync { peer: Some(n1) }).unwrap();
    net.run();
    assert_eq!(done(&net), before, "the first attempt was lost");
    let t = net.now_ns;
    net.cmd(0, Command::Sync { peer: Some(n1) }).unwrap();
    net.run();
    assert_eq!(net.now_ns, t, "no time passed");
    assert_eq!(done(&net), before + 1);
}

/// Asking for a sync again and again while a device stays unreachable hurries its
/// handshake (a handshake out of tries is replaced by a fresh one, keeping what is queued),
/// but never amplifies: at most two handshake messages per request on top of the timed
/// ones. Once nobody asks any more, the handshake fails on its own timers and releases
/// what waited for it.
#[test]
fn asking_again_and_again_is_bounded_and_the_handshake_still_fails_once_nobody_asks() {
    let mut net = authority_net(None);
    let n2 = net.id(2);
    net.cut.insert(2);
    let handshakes = |net: &Net| {
        net.nodes[0]
            .egress
            .iter()
            .filter(|e| e.peer == Some(n2) && e.kind == guard::EgressKind::Handshake)
            .count()
    };
    let failed = |net: &Net| {
        net.nodes[0]
            .events
            .iter()
            .filter(|e| matches!(e, Event::ChannelFailed { peer, .. } if *peer == n2))
            .count()
    };
    let (sent, before) = (handshakes(&net), failed(&net));
    let (mut timed, mut down) = (0, 0);
    for _ in 0..30 {
        // While the old channel still counts as up, the sync goes over it.
        let up = net.nodes[0]
            .peer
            .channels()
            .iter()
            .any(|c| c.peer == Some(n2) && c.state == ChannelState::Up);
        down += usize::from(!up);
        net.cmd(0, Command::Sync { peer: Some(n2) }).unwrap();
        net.run();
        let at = handshakes(&net);
        net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
        timed += handshakes(&net) - at;
    }
    let asked = handshakes(&net) - sent - timed;
    assert!(asked <= 2 * 30, "{asked} handshake messages for 30 requests");
    assert!(
        down >= 15 && asked >= down,
        "each of the {down} requests with no channel up sent at once: {asked}"
    );
    // A fresh handshake runs its course in about a minute (7 sends, 0.5 s doubling).
    net.advance_to_ms(net.now_ns / 1_000_000 + 120_000);
    assert!(
        failed(&net) > before,
        "the handshake to device 2 gave up once nobody asked"
    );
}

/// Asking for a sync many times while the device is away queues its query once, not
/// once per request: the queue for the device (shared with everything else sent to it)
/// does not fill up, and a send to it is still accepted.
#[test]
fn repeated_sync_requests_do_not_pile_up_queries() {
    let (mut net, _, _) = away_five_minutes(false);
    let n2 = net.id(2);
    net.cut.insert(2);
    for _ in 0..100 {
        net.cmd(0, Command::Sync { peer: Some(n2) }).unwrap();
        net.run();
    }
    let msg = bytes::Bytes::from_static(b"still room");
    assert_eq!(net.cmd(0, Command::Send { peer: n2, data: msg }), Ok(()));
}

/// A sync that starts a handshake sends its first message once: only handshakes that
/// backed off are hurried, not one begun by the same request.
#[test]
fn a_handshake_begun_by_a_sync_is_not_hurried_at_once() {
    let mut net = authority_net(None);
    let n2 = net.id(2);
    net.cut.insert(2);
    // Wait until device 0 has given up on device 2: no channel, nothing in flight.
    let mut waited = 0;
    while net.nodes[0].peer.channels().iter().any(|c| c.peer == Some(n2)) {
        waited += 1;
        assert!(waited < 100, "device 0 never gave up on device 2");
        net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    }
    let sent = |net: &Net| {
        net.nodes[0]
            .egress
            .iter()
            .filter(|e| e.peer == Some(n2) && e.kind == guard::EgressKind::Handshake)
            .count()
    };
    let before = sent(&net);
    net.cmd(0, Command::Sync { peer: Some(n2) }).unwrap();
    assert_eq!(sent(&net) - before, 1, "one first message, not two");
}
