//! Share refresh after a removal: the remaining members compute new shares of the same
//! key, agree to switch, and sign with them; the removed device's share is no longer on
//! the key's polynomial.

mod common;

use aura_proto::authority::{interpolate_share, AuthorityView};
use aura_proto::journal::{RefreshOp, Sig64, TreeOpKind};
use aura_proto::*;
use common::*;
use frost_ristretto255::{Signature, VerifyingKey};

/// Four devices paired through device 0, all in a 2-of-4 authority.
fn four() -> Net {
    let mut net = default_net(4);
    for j in 1..4 {
        net.pair(0, j);
    }
    let devices = (1..4).map(|j| net.id(j)).collect();
    net.cmd(0, Command::CreateAuthority { devices, threshold: 2 }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    assert!((0..4).all(|i| net.nodes[i].peer.authority().is_some()));
    net
}

fn refreshed(n: &Node) -> bool {
    n.events.iter().any(|e| matches!(e, Event::SharesRefreshed { .. }))
}

#[test]
fn after_a_removal_the_others_refresh_and_the_removed_share_is_off_the_key() {
    let mut net = four();
    let before = net.nodes[0].peer.authority().unwrap().clone();
    let gone = net.id(3);
    let gone_ident = before.members[&gone].identifier;
    let old_share = before.verifying_shares[&gone_ident];
    net.cmd(0, Command::RemoveDevice { device: gone }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    for i in 0..3 {
        assert!(refreshed(&net.nodes[i]), "device {i}: {:?}", net.nodes[i].events);
        let v = net.nodes[i].peer.authority().unwrap();
        assert_eq!((v.id, v.group_key, v.members.len()), (before.id, before.group_key, 3));
        // Removal and refresh: two changes.
        assert_eq!(v.epoch, before.epoch + 2, "device {i}");
        assert_eq!(v.verifying_shares.len(), 3);
        for (k, y) in &v.verifying_shares {
            assert_ne!(before.verifying_shares[k], *y, "share {k} did not move");
        }
    }
    let v = net.nodes[1].peer.authority().unwrap().clone();
    let basis: Vec<(u16, [u8; 32])> = v.verifying_shares.iter().map(|(i, y)| (*i, *y)).take(2).collect();
    assert_eq!(interpolate_share(&basis, 0), Some(before.group_key));
    assert_ne!(
        interpolate_share(&basis, gone_ident),
        Some(old_share),
        "the removed share still fits"
    );
    // The remaining devices sign with their new shares, also after a restart.
    let vk = VerifyingKey::deserialize(&before.group_key).unwrap();
    let (m, s) = sign_with(&mut net, 1, &[0, 3], b"refreshed").expect("signed");
    assert!(vk.verify(&m, &Signature::deserialize(&s).unwrap()).is_ok());
    let keep = net.nodes[2].records.len();
    crash_and_restore(&mut net, 2, keep, 91);
    net.run();
    let (m, s) = sign_with(&mut net, 2, &[0, 3], b"after restart").expect("signed");
    assert!(vk.verify(&m, &Signature::deserialize(&s).unwrap()).is_ok());
}

#[test]
fn a_refresh_with_a_member_away_does_not_switch_anyone() {
    let mut net = four();
    let before = net.nodes[0].peer.authority().unwrap().clone();
    // Device 3 is away: the refresh needs every member, so nobody switches.
    net.cut.insert(3);
    net.cmd(0, Command::RefreshShares).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    for i in 0..3 {
        assert!(!refreshed(&net.nodes[i]), "device {i}");
        assert_eq!(
            net.nodes[i].peer.authority().unwrap().verifying_shares,
            before.verifying_shares
        );
    }
    assert!(sign_with(&mut net, 1, &[3], b"still the old shares").is_some());
    // Back: the coordinator's next attempt takes everyone along.
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 120_000);
    for i in 0..4 {
        assert!(refreshed(&net.nodes[i]), "device {i}");
    }
    assert!(sign_with(&mut net, 3, &[0, 1], b"all refreshed").is_some());
}

/// A `Refresh` change over `shares` with the signatures of the members whose node
/// index is in `signers` (each over the attestation of `attested`).
fn refresh_op(
    net: &Net,
    v: &AuthorityView,
    shares: &[(u16, [u8; 32])],
    attested: &[(u16, [u8; 32])],
    signers: &[usize],
) -> TreeOpKind {
    let mut rng = aura_proto::rng::PeerRng::from_seed([6; 32]);
    let msg = RefreshOp::attestation(&v.id, attested);
    let mut signatures: Vec<(u16, Sig64)> = signers
        .iter()
        .map(|i| {
            let keys = aura_proto::keys::DeviceKeys::derive(&net.nodes[*i].secret, &mut rng);
            (v.members[&net.id(*i)].identifier, Sig64(keys.sign(&mut rng, &msg)))
        })
        .collect();
    signatures.sort_by_key(|(i, _)| *i);
    TreeOpKind::Refresh(RefreshOp {
        shares: shares.to_vec(),
        signatures,
    })
}

#[test]
fn a_refresh_change_must_be_attested_by_every_member_and_lie_on_one_polynomial_through_the_key() {
    let net = four();
    let v = net.nodes[0].peer.authority().unwrap().clone();
    let all = [0, 1, 2, 3];
    let good: Vec<(u16, [u8; 32])> = v.verifying_shares.iter().map(|(i, y)| (*i, *y)).collect();
    assert!(v.applies(&refresh_op(&net, &v, &good, &good, &all)));
    // A member's word missing, or given for another list.
    assert!(!v.applies(&refresh_op(&net, &v, &good, &good, &[0, 1, 2])));
    let mut other = good.clone();
    other[3].1 = v.group_key;
    let mut mixed = refresh_op(&net, &v, &good, &good, &[0, 1, 2]);
    if let (TreeOpKind::Refresh(op), TreeOpKind::Refresh(o)) = (&mut mixed, refresh_op(&net, &v, &good, &other, &[3])) {
        op.signatures.extend(o.signatures);
        op.signatures.sort_by_key(|(i, _)| *i);
    }
    assert!(!v.applies(&mixed));
    // A member left out, or a stranger's identifier added.
    assert!(!v.applies(&refresh_op(&net, &v, &good[..3], &good[..3], &all)));
    let mut extra = good.clone();
    extra.push((9, good[0].1));
    assert!(!v.applies(&refresh_op(&net, &v, &extra, &extra, &all)));
    // A point off the polynomial (a valid point, just not the share).
    assert!(!v.applies(&refresh_op(&net, &v, &other, &other, &all)));
    // Another polynomial through the same points at the first two identifiers but not
    // through the group key: shift the basis.
    let mut shifted = good.clone();
    shifted[0].1 = good[1].1;
    assert!(!v.applies(&refresh_op(&net, &v, &shifted, &shifted, &all)));
}

#[test]
fn two_refreshes_at_once_end_with_every_member_on_the_same_shares() {
    let mut net = four();
    let before = net.nodes[0].peer.authority().unwrap().clone();
    // Two coordinators: each member computes two refreshed shares and must switch to
    // the one the agreed change names.
    net.cmd(0, Command::RefreshShares).unwrap();
    net.cmd(2, Command::RefreshShares).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    let v = net.nodes[0].peer.authority().unwrap().clone();
    assert_ne!(v.verifying_shares, before.verifying_shares);
    for i in 0..4 {
        assert!(refreshed(&net.nodes[i]), "device {i}");
        assert_eq!(
            net.nodes[i].peer.authority().unwrap().verifying_shares,
            v.verifying_shares
        );
    }
    // Any two sign together.
    let vk = VerifyingKey::deserialize(&before.group_key).unwrap();
    for (signer, cut) in [(0, [2, 3]), (3, [0, 1]), (1, [0, 3])] {
        let text = format!("pair {signer}");
        let (m, s) = sign_with(&mut net, signer, &cut, text.as_bytes()).expect("signed");
        assert!(vk.verify(&m, &Signature::deserialize(&s).unwrap()).is_ok());
    }
}

#[test]
fn a_member_lost_after_its_word_does_not_freeze_the_authority() {
    let mut net = four();
    let before = net.nodes[0].peer.authority().unwrap().clone();
    net.cmd(0, Command::RefreshShares).unwrap();
    // Device 3 computes and persists its refreshed share and sends its word, then is
    // gone for good before it can vote.
    let has_refreshed = |n: &Node| n.records.iter().any(|r| matches!(r, Record::Refreshed { .. }));
    let mut waves = 0;
    while !has_refreshed(&net.nodes[3]) {
        net.wave();
        waves += 1;
        assert!(waves < 50, "device 3 never refreshed");
    }
    net.wave();
    net.cut.insert(3);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    // The other three agreed with a quorum of votes and switched.
    for i in 0..3 {
        assert!(refreshed(&net.nodes[i]), "device {i}");
        assert_ne!(
            net.nodes[i].peer.authority().unwrap().verifying_shares,
            before.verifying_shares
        );
    }
    // And the authority can still change: the lost device is removed.
    net.cmd(0, Command::RemoveDevice { device: net.id(3) }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    for i in 0..3 {
        assert!(
            !net.nodes[i].peer.authority().unwrap().members.contains_key(&net.id(3)),
            "device {i}"
        );
    }
    assert!(sign_with(&mut net, 1, &[0, 3], b"after the loss").is_some());
}

#[test]
fn compaction_leaves_no_share_a_refresh_replaced() {
    let mut net = four();
    net.cmd(0, Command::RemoveDevice { device: net.id(3) }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    for i in 0..3 {
        assert!(refreshed(&net.nodes[i]), "device {i}");
        let full = net.nodes[i].records.clone();
        let keys =
            |rs: &[Record]| -> Vec<Vec<u8>> { rs.iter().filter_map(|r| r.key_package().map(<[u8]>::to_vec)).collect() };
        let old = keys(&full)[0].clone();
        // What the shell does: restore from the whole log, ask the peer, compact.
        let (restored, _) = replay(&net, i, full.clone());
        let live = restored.live_keys();
        let small = aura_proto::record::compact_with(&full, Some(&live));
        assert!(keys(&full).contains(&old));
        assert!(
            !keys(&small).contains(&old),
            "device {i}: the replaced share is still on disk"
        );
        assert!(keys(&small).iter().all(|k| live.shares.values().any(|(s, _)| s == k)));
        // And the peer restored from what is left is the same peer.
        let (a, out_a) = replay(&net, i, full);
        let (b, out_b) = replay(&net, i, small);
        assert_eq!(out_a, out_b, "device {i}: the restored peers act differently");
        assert_eq!(a.authority(), b.authority());
        assert_eq!(a.live_keys(), b.live_keys());
    }
    // Signing still works after a restart from the compacted log.
    let full = net.nodes[1].records.clone();
    let (restored, _) = replay(&net, 1, full.clone());
    let small = aura_proto::record::compact_with(&full, Some(&restored.live_keys()));
    net.nodes[1].records = small;
    let keep = net.nodes[1].records.len();
    crash_and_restore(&mut net, 1, keep, 91);
    assert!(sign_with(&mut net, 1, &[3], b"after compaction").is_some());
}
