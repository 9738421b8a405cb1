//! Relational contexts between running peers: creation from an invitation, context
//! channels, isolation, and the guard chain on every send (budgets, reservations,
//! leakage, denials that leave no packet).

mod common;

use std::time::Duration;

use aura_proto::guard::{Denial, EgressKind, MsgKind, Observer};
use aura_proto::journal::ContextId;
use aura_proto::wire::{self, Packet};
use aura_proto::*;
use bytes::Bytes;
use common::*;

/// Configs for the four devices where B's devices grant A `limit` flow units per epoch.
fn b_grants(limit: u64) -> Vec<Config> {
    let b = Config {
        context_flow_limit: limit,
        ..Config::default()
    };
    vec![Config::default(), Config::default(), b.clone(), b]
}

/// Devices 0+1 form authority A, devices 2+3 authority B (2-of-2 each).
fn two_authorities(cfgs: Vec<Config>) -> Net {
    let mut net = Net::new(4, cfgs);
    net.pair(0, 1);
    net.pair(2, 3);
    for (c, other) in [(0, 1), (2, 3)] {
        let d = net.id(other);
        net.cmd(
            c,
            Command::CreateAuthority {
                devices: vec![d],
                threshold: 2,
            },
        )
        .unwrap();
    }
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    for i in 0..4 {
        assert!(net.nodes[i].peer.authority().is_some(), "device {i} has no authority");
    }
    net
}

fn ready(n: &Node) -> Vec<ContextId> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::ContextReady { context, .. } => Some(*context),
            _ => None,
        })
        .collect()
}

/// Device `inviter` invites, device `joiner` joins; returns the new context.
fn make_context(net: &mut Net, inviter: usize, joiner: usize) -> ContextId {
    let before = ready(&net.nodes[inviter]).len();
    let addr = net.nodes[inviter].addr.clone();
    net.cmd(
        inviter,
        Command::CreateContextInvite {
            valid_for: Duration::from_secs(600),
            addr_hint: addr,
        },
    )
    .unwrap();
    let code = net.nodes[inviter]
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::ContextInviteCreated { code, .. } => Some(code.clone()),
            _ => None,
        })
        .expect("context invitation shown");
    net.cmd(joiner, Command::JoinContext { code }).unwrap();
    net.run();
    let a = ready(&net.nodes[inviter]);
    let b = ready(&net.nodes[joiner]);
    assert_eq!(a.len(), before + 1, "inviter: {:?}", net.nodes[inviter].events);
    assert_eq!(b.last(), a.last(), "both sides name the same context");
    *a.last().unwrap()
}

fn context_received(n: &Node, ctx: ContextId) -> Vec<Bytes> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::ContextReceived { context, data, .. } if *context == ctx => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn denials(n: &Node) -> Vec<Denial> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::SendDenied { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// Device `i` crashes and comes back from its durable records.
fn restart(net: &mut Net, i: usize, seed: u8) {
    let n = &mut net.nodes[i];
    let d = Durable {
        secret: n.secret.clone(),
        records: n.records.clone(),
    };
    n.peer = Peer::restore(Config::default(), d, [seed; 32], now(net.now_ns));
    // Send numbers start again with the new incarnation.
    n.denied.clear();
    net.drain(i);
}

fn send(net: &mut Net, from: usize, to: usize, ctx: ContextId, data: &'static [u8]) {
    let peer = net.id(to);
    net.cmd(
        from,
        Command::ContextSend {
            context: ctx,
            peer,
            data: Bytes::from_static(data),
        },
    )
    .unwrap();
    net.run();
}

#[test]
fn two_authorities_create_a_context_and_talk_in_it() {
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    let (a, b) = (
        net.nodes[0].peer.authority().unwrap().id,
        net.nodes[2].peer.authority().unwrap().id,
    );
    // Each side names the other authority.
    assert!(net.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::ContextReady { context, with, epoch: 0 } if *context == ctx && *with == b)));
    assert!(net.nodes[2]
        .events
        .iter()
        .any(|e| matches!(e, Event::ContextReady { context, with, .. } if *context == ctx && *with == a)));

    send(&mut net, 0, 2, ctx, b"hello from A");
    send(&mut net, 2, 0, ctx, b"hello from B");
    assert_eq!(
        context_received(&net.nodes[2], ctx),
        vec![Bytes::from_static(b"hello from A")]
    );
    assert_eq!(
        context_received(&net.nodes[0], ctx),
        vec![Bytes::from_static(b"hello from B")]
    );
    // Nothing of it surfaced as traffic between one's own devices.
    assert!(received(&net.nodes[2]).is_empty());

    // The application frame left charged, after a durable reservation, and is in the
    // egress ledger under the context.
    let app: Vec<_> = net.nodes[0]
        .egress
        .iter()
        .filter(|e| e.kind == EgressKind::Frame(MsgKind::App))
        .collect();
    assert_eq!(app.len(), 1);
    assert_eq!((app[0].context, app[0].cost, app[0].spent), (ctx, 1, 1));
    assert_eq!(app[0].leakage, [1, 1, 1]);
    assert!(net.nodes[0].records.iter().any(|r| matches!(
        r,
        Record::Reserve { context, peer, up_to, .. } if *context == ctx && *peer == net.id(2) && *up_to >= 1
    )));
    // Each side's receipts reach the other sealed and verified against its own view of
    // the context (the chain is sealed once it has been idle for a second).
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(net.nodes[2].peer.receipts_from(ctx, net.id(0)), Some((1, 1)));
    assert_eq!(net.nodes[0].peer.receipts_from(ctx, net.id(2)), Some((1, 1)));
    assert!(net.nodes[0]
        .records
        .iter()
        .any(|r| matches!(r, Record::Receipts(b) if b.context == ctx)));
    assert_eq!(net.nodes[2].peer.metrics().drops(DropReason::BadReceipt), 0);

    // Context channels show their context in status.
    assert!(net.nodes[0]
        .peer
        .channels()
        .iter()
        .any(|c| c.context == ctx && c.peer == Some(net.id(2))));

    // A device that is not in the context's other authority cannot be addressed.
    let own = net.id(1);
    assert_eq!(
        net.cmd(
            0,
            Command::ContextSend {
                context: ctx,
                peer: own,
                data: Bytes::from_static(b"x"),
            },
        ),
        Err(CommandError::NotContextPeer {
            context: ctx,
            peer: own
        })
    );
}

#[test]
fn a_message_of_one_context_is_never_accepted_in_another() {
    let mut net = two_authorities(vec![Config::default(); 4]);
    let c1 = make_context(&mut net, 0, 2);
    let c2 = make_context(&mut net, 0, 2);
    assert_ne!(c1, c2);
    send(&mut net, 0, 2, c1, b"in one");
    send(&mut net, 0, 2, c2, b"in two");
    assert_eq!(context_received(&net.nodes[2], c1), vec![Bytes::from_static(b"in one")]);
    assert_eq!(context_received(&net.nodes[2], c2), vec![Bytes::from_static(b"in two")]);

    // The last two data packets node 0 sent: one per context channel.
    let data: Vec<(u32, u64, Vec<u8>)> = net
        .sent
        .iter()
        .filter(|(from, _)| *from == 0)
        .filter_map(|(_, b)| match wire::decode_packet(b, &mut Vec::new()) {
            Ok(Packet::Data {
                receiver,
                nonce,
                ciphertext,
            }) => Some((receiver, nonce, ciphertext.to_vec())),
            _ => None,
        })
        .collect();
    let (r1, _, ct1) = data
        .iter()
        .rev()
        .find(|d| d.0 != data.last().unwrap().0)
        .unwrap()
        .clone();
    let (r2, _, _) = data.last().unwrap().clone();
    assert_ne!(r1, r2);
    // Context 1's frame addressed to context 2's channel (fresh nonce): refused.
    let forged = wire::encode_packet(&Packet::Data {
        receiver: r2,
        nonce: 1 << 20,
        ciphertext: &ct1,
    });
    assert_eq!(net.inject(2, forged), DropReason::Unauthenticated);
    assert_eq!(context_received(&net.nodes[2], c2).len(), 1);
    let _ = r1;
}

#[test]
fn an_exhausted_budget_denies_without_a_packet() {
    // B grants A 6 units per epoch; a small message costs 1.
    let mut net = two_authorities(b_grants(6));
    let ctx = make_context(&mut net, 0, 2);
    for _ in 0..6 {
        send(&mut net, 0, 2, ctx, b"m");
    }
    assert_eq!(context_received(&net.nodes[2], ctx).len(), 6);
    let sent_before = net.sent.len();
    let egress_before = net.nodes[0].egress.len();
    send(&mut net, 0, 2, ctx, b"one too many");
    assert_eq!(net.sent.len(), sent_before, "a denied send emits no packet");
    assert_eq!(net.nodes[0].egress.len(), egress_before);
    assert_eq!(denials(&net.nodes[0]), vec![Denial::BudgetExhausted]);
    assert_eq!(net.nodes[0].peer.metrics().denied.get("budget-exhausted"), Some(&1));
    assert_eq!(context_received(&net.nodes[2], ctx).len(), 6);
    // The other direction has its own budget (A granted B the default).
    send(&mut net, 2, 0, ctx, b"still fine");
    assert_eq!(context_received(&net.nodes[0], ctx).len(), 1);
    // Reservations never ran past the limit.
    assert!(net.nodes[0]
        .records
        .iter()
        .all(|r| !matches!(r, Record::Reserve { up_to, .. } if *up_to > 6)));
}

#[test]
fn a_crash_wastes_reserved_budget_but_never_spends_it_twice() {
    let mut net = two_authorities(b_grants(100));
    let ctx = make_context(&mut net, 0, 2);
    for _ in 0..3 {
        send(&mut net, 0, 2, ctx, b"before");
    }
    // One reservation covers the three sends: 1 + 64 ahead.
    let reserves: Vec<u64> = net.nodes[0]
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Reserve { up_to, .. } => Some(*up_to),
            _ => None,
        })
        .collect();
    assert_eq!(reserves, vec![65]);

    // Crash: on restore the whole reservation counts as spent.
    let egress_before = net.nodes[0].egress.len();
    restart(&mut net, 0, 77);
    for _ in 0..40 {
        send(&mut net, 0, 2, ctx, b"after");
    }
    let delivered = context_received(&net.nodes[2], ctx).len();
    assert_eq!(delivered, 3 + 35, "65 spent before the crash, 35 left of 100");
    assert_eq!(denials(&net.nodes[0]).len(), 5);
    let spent: u64 = net.nodes[0].egress[egress_before..].iter().map(|e| e.cost).sum();
    assert_eq!(spent, 35, "this incarnation charged only what was left");
    // The three receipts of the first incarnation were never sealed (lost with it); the
    // chain of the second verifies from its start at the receiver.
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(net.nodes[2].peer.receipts_from(ctx, net.id(0)), Some((35, 35)));
}

#[test]
fn an_exhausted_leakage_budget_denies_without_a_packet() {
    // Channel upkeep and two data frames fit; more do not.
    let a = Config {
        leakage_limit: 4,
        ..Config::default()
    };
    let mut net = two_authorities(vec![a, Config::default(), Config::default(), Config::default()]);
    let ctx = make_context(&mut net, 0, 2);
    send(&mut net, 0, 2, ctx, b"1");
    send(&mut net, 0, 2, ctx, b"2");
    let external: u64 = net.nodes[0]
        .egress
        .iter()
        .filter(|e| e.context == ctx)
        .map(|e| e.leakage[Observer::External as usize])
        .sum();
    let sent_before = net.sent.len();
    for _ in 0..4 {
        send(&mut net, 0, 2, ctx, b"more");
    }
    let extra = net.sent.len() - sent_before;
    let after: u64 = net.nodes[0]
        .egress
        .iter()
        .filter(|e| e.context == ctx)
        .map(|e| e.leakage[Observer::External as usize])
        .sum();
    assert!(after <= 4, "external leakage {after} passed its limit");
    assert_eq!(extra as u64, after - external);
    assert!(denials(&net.nodes[0]).contains(&Denial::LeakageExhausted(Observer::External)));
}

#[test]
fn a_receipt_chain_continues_across_a_restart_and_verifies() {
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    for _ in 0..5 {
        send(&mut net, 0, 2, ctx, b"sealed before the crash");
    }
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(net.nodes[2].peer.receipts_from(ctx, net.id(0)), Some((5, 5)));
    restart(&mut net, 0, 78);
    for _ in 0..4 {
        send(&mut net, 0, 2, ctx, b"after");
    }
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    // Nonces 5..9 continue the same chain: no fork, no gap.
    assert_eq!(net.nodes[2].peer.receipts_from(ctx, net.id(0)), Some((9, 9)));
    assert_eq!(net.nodes[2].peer.metrics().drops(DropReason::BadReceipt), 0);
}

#[test]
fn a_context_survives_restart_and_sends_resume() {
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    for i in [0, 2] {
        restart(&mut net, i, 50 + i as u8);
    }
    send(&mut net, 2, 0, ctx, b"after restart");
    assert_eq!(
        context_received(&net.nodes[0], ctx),
        vec![Bytes::from_static(b"after restart")]
    );
}

// ----- property: whatever is asked, the guard's promises hold at the peer -----------

#[derive(Clone, Debug)]
enum Op {
    /// Device 0 (`true`) or 2 sends `len` bytes to the other.
    Send(bool, u16),
    /// Device 0 or 2 crashes and restarts.
    Restart(bool),
    /// Time passes (ms).
    Wait(u16),
}

impl quickcheck::Arbitrary for Op {
    fn arbitrary(g: &mut quickcheck::Gen) -> Op {
        match u8::arbitrary(g) % 10 {
            0 => Op::Restart(bool::arbitrary(g)),
            1 => Op::Wait(u16::arbitrary(g) % 3000),
            _ => Op::Send(bool::arbitrary(g), u16::arbitrary(g) % 5000),
        }
    }
}

/// After any sequence of sends, restarts and waits between two context leaders with
/// small budgets: no denied send left, every charged send stayed within a durable
/// reservation, and no incarnation's charges (plus what earlier ones reserved) passed
/// the budget the other side granted.
fn guard_promises_hold(ops: Vec<Op>) -> bool {
    let tight = Config {
        context_flow_limit: 40,
        leakage_limit: 200,
        ..Config::default()
    };
    let mut net = two_authorities(vec![tight.clone(), Config::default(), tight, Config::default()]);
    let ctx = make_context(&mut net, 0, 2);
    let mut seeds = 90u8;
    for op in ops {
        match op {
            Op::Send(from_a, len) => {
                let (from, to) = if from_a { (0, 2) } else { (2, 0) };
                let peer = net.id(to);
                let data = Bytes::from(vec![7u8; len as usize]);
                let _ = net.cmd(
                    from,
                    Command::ContextSend {
                        context: ctx,
                        peer,
                        data,
                    },
                );
                net.run();
            }
            Op::Restart(a) => {
                seeds = seeds.wrapping_add(1);
                restart(&mut net, if a { 0 } else { 2 }, seeds);
            }
            Op::Wait(ms) => net.advance_to_ms(net.now_ns / 1_000_000 + u64::from(ms)),
        }
    }
    // (The harness checks every egress as it happens: no denied send leaves, charges
    // stay within durable reservations.) Across incarnations, no more was charged than
    // the other side granted: a restart counts its whole reservation as spent.
    for i in [0, 2] {
        let charged: u64 = net.nodes[i]
            .egress
            .iter()
            .filter(|e| e.context == ctx)
            .map(|e| e.cost)
            .sum();
        if charged > 40 {
            return false;
        }
    }
    true
}

#[test]
fn guard_promises_hold_for_any_sequence_of_sends_and_restarts() {
    quickcheck::QuickCheck::new()
        .tests(12)
        .max_tests(12)
        .quickcheck(guard_promises_hold as fn(Vec<Op>) -> bool);
}

#[test]
fn a_context_reaches_every_device_of_both_people() {
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    net.run();
    // The devices that did not take part learn the context from their own devices.
    for i in [1, 3] {
        assert_eq!(ready(&net.nodes[i]), vec![ctx], "device {i}: {:?}", net.nodes[i].events);
        assert!(net.nodes[i]
            .records
            .iter()
            .any(|r| matches!(r, Record::ContextShared { .. })));
    }
    send(&mut net, 1, 3, ctx, b"second devices talk");
    send(&mut net, 3, 0, ctx, b"and across");
    assert_eq!(
        context_received(&net.nodes[3], ctx),
        vec![Bytes::from_static(b"second devices talk")]
    );
    assert_eq!(
        context_received(&net.nodes[0], ctx),
        vec![Bytes::from_static(b"and across")]
    );
    // And it survives their restarts.
    restart(&mut net, 1, 61);
    assert_eq!(net.nodes[1].peer.contexts(), vec![ctx]);
    send(&mut net, 1, 2, ctx, b"after restart");
    assert_eq!(
        context_received(&net.nodes[2], ctx),
        vec![Bytes::from_static(b"after restart")]
    );
}

// ----- the context journal ---------------------------------------------------------

#[test]
fn context_notes_reach_every_member_and_sync_carries_them_across_authorities() {
    use aura_proto::journal::Namespace;
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    net.run();
    let ns = Namespace::Context(ctx);
    let digest = |net: &Net, i: usize| net.nodes[i].peer.journal().digest(&ns);
    // A note asking for confirmation reaches the author's own device and both of the
    // other person's devices, each of which confirms it.
    net.cmd(
        0,
        Command::Publish {
            namespace: ns,
            data: b"minutes of the meeting".to_vec(),
            ack: true,
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    let (id, _, status) = *net.nodes[0].peer.written_facts().last().unwrap();
    assert_eq!(status, Propagation::Complete);
    let mut confirmed: Vec<DeviceId> = net.nodes[0].peer.deliveries(&id).into_iter().map(|d| d.0).collect();
    confirmed.sort();
    let mut members = vec![net.id(1), net.id(2), net.id(3)];
    members.sort();
    assert_eq!(confirmed, members);
    for i in 1..4 {
        assert_eq!(digest(&net, i), digest(&net, 0), "device {i}");
    }
    // Device 3 is away while device 1 writes; the pushes give up after their tries.
    net.cut.insert(3);
    net.cmd(
        1,
        Command::Publish {
            namespace: ns,
            data: b"written while 3 was away".to_vec(),
            ack: false,
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 300_000);
    assert_ne!(digest(&net, 3), digest(&net, 1));
    net.cut.remove(&3);
    // Back, device 3 reconciles with device 0, a device of the other person, over the
    // context's channel and through its guard chain.
    let egress_before = net.nodes[3].egress.len();
    let n = net.id(0);
    net.cmd(3, Command::Sync { peer: Some(n) }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert_eq!(digest(&net, 3), digest(&net, 1));
    assert!(net.nodes[3].events.iter().any(|e| matches!(
        e,
        Event::SyncDone { peer, namespace, fetched, .. } if *peer == n && *namespace == ns && *fetched >= 1
    )));
    let charged = net.nodes[3].egress[egress_before..]
        .iter()
        .filter(|e| e.context == ctx && e.kind == EgressKind::Frame(MsgKind::Proto) && e.cost > 0)
        .count();
    assert!(
        charged >= 2,
        "the session's query and fetch were charged to the context"
    );
}

#[test]
fn a_context_channel_carries_only_its_own_journal() {
    use aura_proto::authority::AuthMsg;
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    net.run();
    let a = created_ns(&net, 0);
    // Device 2 (the other person) asks, on the context's channel, to reconcile device 0's
    // authority journal, and offers it a fact of that authority: both refused, counted.
    let before = net.nodes[0].peer.metrics().drops(DropReason::WrongContext);
    let query = AuthMsg::SyncFetch {
        namespace: a,
        ids: vec![],
    };
    let genesis = net.nodes[0].peer.journal().facts(&a).next().unwrap().encode();
    let facts = AuthMsg::Facts { facts: vec![genesis] };
    for m in [&query, &facts] {
        net.deliver_proto(0, 2, ctx, m);
    }
    assert_eq!(net.nodes[0].peer.metrics().drops(DropReason::WrongContext), before + 1);
    assert!(net.nodes[0].peer.metrics().drops(DropReason::BadFact) >= 1);
    // Nor acknowledgements of facts that are not this context's.
    let ours = net.nodes[0].peer.written_facts();
    let (authority_fact, _, _) = ours.iter().find(|(_, ns, _)| *ns == a).copied().unwrap();
    let ack = AuthMsg::FactsAck {
        ids: vec![authority_fact],
    };
    net.deliver_proto(0, 2, ctx, &ack);
    assert_eq!(net.nodes[0].peer.metrics().drops(DropReason::WrongContext), before + 2);
    // And a sub-protocol message of one person's devices is not taken in a context.
    let unexpected = net.nodes[0].peer.metrics().drops(DropReason::UnexpectedFrame);
    net.deliver_proto(0, 2, ctx, &AuthMsg::DkgAbandoned { session: [1; 32] });
    assert_eq!(
        net.nodes[0].peer.metrics().drops(DropReason::UnexpectedFrame),
        unexpected + 1
    );
}

fn created_ns(net: &Net, i: usize) -> aura_proto::journal::Namespace {
    aura_proto::journal::Namespace::Authority(net.nodes[i].peer.authority().unwrap().id)
}

// ----- epoch change -----------------------------------------------------------------

#[test]
fn an_epoch_change_tears_channels_down_and_resets_budgets() {
    let tight = Config {
        context_flow_limit: 3,
        ..Config::default()
    };
    let mut net = two_authorities(vec![Config::default(), Config::default(), tight.clone(), tight]);
    let ctx = make_context(&mut net, 0, 2);
    net.run();
    for _ in 0..4 {
        send(&mut net, 0, 2, ctx, b"epoch 0");
    }
    assert_eq!(context_received(&net.nodes[2], ctx).len(), 3);
    assert_eq!(denials(&net.nodes[0]), vec![Denial::BudgetExhausted]);
    let before = net.nodes[0].peer.channels();
    assert!(before.iter().any(|c| c.context == ctx && c.epoch == 0));

    // Authority B agrees on its first epoch and carries the commit into the context
    // journal. (B, not A: A's sends to B are held to 3 units an epoch, too few to push
    // the change; B's pushes to A are not.)
    net.cmd(2, Command::RekeyContext { context: ctx }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    let e = net.nodes[2].peer.context(&ctx).unwrap().epoch;
    assert!(e >= 1);
    for i in 0..4 {
        assert_eq!(net.nodes[i].peer.context(&ctx).unwrap().epoch, e, "device {i}");
    }
    // The epoch-0 channel is gone on both sides.
    assert!(!net.nodes[0]
        .peer
        .channels()
        .iter()
        .any(|c| c.context == ctx && c.epoch == 0));
    assert!(!net.nodes[2]
        .peer
        .channels()
        .iter()
        .any(|c| c.context == ctx && c.epoch == 0));
    // A fresh budget in the new epoch, over a channel keyed by the new secret.
    for _ in 0..3 {
        send(&mut net, 0, 2, ctx, b"new epoch");
    }
    // Reconciliation in the new epoch (the new channel's, a member's catching up)
    // takes its share of the same budget; at least one message gets through.
    let got = context_received(&net.nodes[2], ctx).len();
    assert!((4..=6).contains(&got), "{got}");
    let spent: u64 = net.nodes[0]
        .egress
        .iter()
        .filter(|x| x.context == ctx && x.epoch == e && x.peer == Some(net.id(2)))
        .map(|e| e.cost)
        .sum();
    assert_eq!(spent, 3, "the whole fresh budget, no more");
    assert!(net.nodes[0]
        .peer
        .channels()
        .iter()
        .any(|c| c.context == ctx && c.epoch == e && c.peer == Some(net.id(2))));
    let epochs: Vec<u64> = net.nodes[0]
        .egress
        .iter()
        .filter(|x| x.context == ctx && x.cost > 0 && x.kind == EgressKind::Frame(MsgKind::App))
        .map(|x| x.epoch)
        .collect();
    assert_eq!(epochs.len(), got);
    assert_eq!(&epochs[..3], &[0, 0, 0]);
    assert!(epochs[3..].iter().all(|x| *x == e));
}

#[test]
fn a_peer_cannot_make_us_answer_pings_without_limit() {
    // Every answer costs leakage a whole context shares; a flood gets 64 a second.
    let mut net = default_net(2);
    net.pair(0, 1);
    let peer = net.id(0);
    // Ten at a time (the pinger itself remembers only 64 outstanding pings).
    for _ in 0..7 {
        for _ in 0..10 {
            net.cmd(1, Command::Ping { peer }).unwrap();
        }
        net.run();
    }
    let pongs = net.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Pong { .. }))
        .count();
    assert_eq!(pongs, 64);
    assert_eq!(net.drops(0, DropReason::Overloaded), 6);
    // A second later the window is fresh.
    net.advance_to_ms(net.now_ns / 1_000_000 + 1_000);
    net.cmd(1, Command::Ping { peer }).unwrap();
    net.run();
    let pongs = net.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Pong { .. }))
        .count();
    assert_eq!(pongs, 65);
}

/// A context fact whose pushes to the other person's devices gave up (they were away) is
/// owed by its author. When one of those devices later opens a channel to the author for
/// its own reasons, the author reconciles on it at once, not at the ten-minute round:
/// only the author knows the push gave up.
#[test]
fn a_fact_whose_push_gave_up_goes_over_a_channel_the_other_side_opens() {
    use aura_proto::journal::Namespace;
    let mut net = two_authorities(vec![Config::default(); 4]);
    let ctx = make_context(&mut net, 0, 2);
    net.run();
    let ns = Namespace::Context(ctx);
    // Both of A's devices are away while device 2 (of B) writes.
    net.cut.extend([0, 1]);
    net.cmd(
        2,
        Command::Publish {
            namespace: ns,
            data: b"while A was away".to_vec(),
            ack: false,
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 300_000);
    let (id, _, status) = *net.nodes[2].peer.written_facts().last().unwrap();
    assert!(matches!(status, Propagation::Failed { .. }), "{status:?}");
    net.cut.clear();
    // Device 0 opens a channel to device 2 to send something of its own.
    send(&mut net, 0, 2, ctx, b"hello again");
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    assert!(
        net.nodes[0].peer.journal().facts(&ns).any(|f| f.id() == id),
        "the note reached device 0 within seconds"
    );
}
