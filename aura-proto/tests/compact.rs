//! Record compaction: what `record::compact` drops is provably redundant, so a peer
//! restored from the compacted log behaves exactly like one restored from the full log.

mod common;

use aura_proto::record::compact;
use aura_proto::*;
use common::*;

#[test]
fn a_compacted_log_restores_the_same_peer() {
    let mut net = authority_net(None);
    // Changes agreed at the fast ballot and, with a device away, at a fallback ballot
    // (promises); signatures (nonce reservations).
    for t in [3, 2] {
        net.cmd(0, Command::ChangeThreshold { threshold: t }).unwrap();
        net.run();
        net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    }
    net.cut.insert(2);
    net.cmd(1, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    net.cmd(0, Command::ChangeThreshold { threshold: 2 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 5_000);
    for k in 0..3 {
        assert!(sign_with(&mut net, k, &[], format!("statement {k}").as_bytes()).is_some());
    }
    let epoch = net.nodes[0].peer.authority().unwrap().epoch;
    assert!(epoch >= 4, "epoch {epoch}");

    let mut dropped_total = 0;
    for i in 0..3 {
        let full = net.nodes[i].records.clone();
        let small = compact(&full);
        // Only redundant kinds go, and some do.
        let kinds = |rs: &[Record], f: &dyn Fn(&Record) -> bool| rs.iter().filter(|r| f(r)).count();
        let votes = |r: &Record| matches!(r, Record::Voted { .. } | Record::Promised { .. });
        let counters = |r: &Record| matches!(r, Record::NonceCounter(_));
        let other = |r: &Record| !votes(r) && !counters(r) && !matches!(r, Record::Fact(_));
        assert_eq!(
            kinds(&small, &counters),
            1,
            "device {i}: one nonce reservation is enough"
        );
        assert!(
            kinds(&full, &votes) > 0 && kinds(&small, &votes) < kinds(&full, &votes),
            "device {i}"
        );
        assert_eq!(kinds(&small, &other), kinds(&full, &other), "device {i}");
        let max = |rs: &[Record]| {
            rs.iter()
                .filter_map(|r| match r {
                    Record::NonceCounter(n) => Some(*n),
                    _ => None,
                })
                .max()
        };
        assert_eq!(max(&small), max(&full));
        dropped_total += full.len() - small.len();
        // Compacting again drops nothing.
        assert_eq!(compact(&small), small, "device {i}");

        let (a, out_a) = replay(&net, i, full);
        let (b, out_b) = replay(&net, i, small);
        assert_eq!(out_a, out_b, "device {i}: the restored peers act differently");
        assert!(!out_a.is_empty());
        assert_eq!(a.authority(), b.authority());
        let facts = |p: &Peer| {
            p.journal()
                .namespaces()
                .flat_map(|ns| p.journal().facts(ns).cloned().collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(facts(&a), facts(&b));
    }
    assert!(dropped_total > 0);
}

#[test]
fn votes_from_the_current_prestate_are_kept() {
    // A vote cast from the state the authority is still in is live: it binds the device.
    let mut net = authority_net(None);
    net.cut.insert(1);
    net.cut.insert(2);
    net.cmd(0, Command::ChangeThreshold { threshold: 3 }).unwrap();
    net.run();
    let full = net.nodes[0].records.clone();
    let live = full.iter().filter(|r| matches!(r, Record::Voted { .. })).count();
    assert_eq!(live, 1, "device 0 voted for its own proposal");
    let small = compact(&full);
    assert_eq!(small.iter().filter(|r| matches!(r, Record::Voted { .. })).count(), 1);
}

#[test]
fn counters_keep_their_largest_and_duplicates_go() {
    let (c, p) = (journal::ContextId([4; 32]), DeviceId([5; 32]));
    let reserve = |epoch, up_to| Record::Reserve {
        context: c,
        peer: p,
        epoch,
        up_to,
    };
    let records = vec![
        Record::NonceCounter(5),
        reserve(1, 10),
        Record::NonceCounter(9),
        reserve(1, 30),
        reserve(2, 5),
        Record::Capability(vec![1, 2]),
        Record::Capability(vec![1, 2]),
        Record::Capability(vec![3]),
        Record::NonceCounter(7),
        reserve(1, 20),
    ];
    assert_eq!(
        compact(&records),
        vec![
            Record::NonceCounter(9),
            reserve(1, 30),
            reserve(2, 5),
            Record::Capability(vec![1, 2]),
            Record::Capability(vec![3]),
        ]
    );
    // Of repeated records the last stays, so what a later record overrode stays overridden.
    let (a, b) = (Record::Capability(vec![1]), Record::Capability(vec![2]));
    assert_eq!(compact(&[a.clone(), b.clone(), a.clone()]), vec![b, a]);
}
