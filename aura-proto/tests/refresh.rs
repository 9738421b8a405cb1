//! Share refresh after a removal: the remaining members compute new shares of the same
//! key, agree to switch, and sign with them; the removed device's share is no longer on
//! the key's polynomial.

mod common;

use aura_proto::authority::interpolate_share;
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

#[test]
fn a_refresh_change_must_list_exactly_the_members_on_one_polynomial_through_the_key() {
    use aura_proto::journal::TreeOpKind;
    let net = four();
    let v = net.nodes[0].peer.authority().unwrap().clone();
    let good: Vec<(u16, [u8; 32])> = v.verifying_shares.iter().map(|(i, y)| (*i, *y)).collect();
    assert!(v.applies(&TreeOpKind::Refresh(good.clone())));
    // A member left out, or a stranger's identifier added.
    assert!(!v.applies(&TreeOpKind::Refresh(good[..3].to_vec())));
    let mut extra = good.clone();
    extra.push((9, good[0].1));
    assert!(!v.applies(&TreeOpKind::Refresh(extra)));
    // A point off the polynomial (a valid point, just not the share).
    let mut off = good.clone();
    off[3].1 = v.group_key;
    assert!(!v.applies(&TreeOpKind::Refresh(off)));
    // Another polynomial through the same points at the first two identifiers but not
    // through the group key: shift the basis.
    let mut shifted = good.clone();
    shifted[0].1 = good[1].1;
    assert!(!v.applies(&TreeOpKind::Refresh(shifted)));
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
    // A refresh commit needs every member's vote, not a quorum.
    let kind = aura_proto::journal::TreeOpKind::Refresh(v.verifying_shares.iter().map(|(i, y)| (*i, *y)).collect());
    assert_eq!(v.votes_needed(0, Some(&kind)), 4);
    assert_eq!(v.votes_needed(1, Some(&kind)), 4);
    assert!(v.votes_needed(1, None) < 4);
}
