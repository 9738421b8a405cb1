//! Adding a device: the change is agreed like any other, then the newcomer is given a
//! share of the existing key by repair among a threshold of members; it signs with the
//! others afterwards, also after a restart. A journal that merely lists a device does
//! not make that authority the device's, and forged enrollment parts are refused.

mod common;

use aura_proto::authority::{AuthMsg, AuthorityView};
use aura_proto::journal::ContextId;
use aura_proto::*;
use common::*;
use frost_ristretto255::{Signature, VerifyingKey};

fn verifies(group_key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    let vk = VerifyingKey::deserialize(group_key).unwrap();
    vk.verify(message, &Signature::deserialize(sig).unwrap()).is_ok()
}

/// Four devices paired through device 0; devices 0-2 form a 2-of-3 authority.
fn net_with_spare() -> Net {
    let mut net = default_net(4);
    for j in 1..4 {
        net.pair(0, j);
    }
    ask_for_authority(&mut net);
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    assert!(net.nodes[0].peer.authority().is_some());
    assert!(net.nodes[3].peer.authority().is_none());
    net
}

fn enrolled(n: &Node, d: DeviceId) -> bool {
    n.events
        .iter()
        .any(|e| matches!(e, Event::DeviceEnrolled { device, .. } if *device == d))
}

fn joined(n: &Node) -> bool {
    n.events.iter().any(|e| matches!(e, Event::AuthorityJoined { .. }))
}

#[test]
fn an_added_device_gets_a_share_of_the_same_key_and_signs() {
    let mut net = net_with_spare();
    let before = net.nodes[0].peer.authority().unwrap().clone();
    let newcomer = net.id(3);
    net.cmd(0, Command::AddDevice { device: newcomer }).unwrap();
    // Without time passing: the change is agreed and applied, and the newcomer holds the
    // journal that lists it, but no share yet. Being listed does not make the
    // authority its own.
    net.run();
    let listed = AuthorityView::reduce(net.nodes[3].peer.journal(), before.id).expect("journal pushed");
    assert!(listed.members.contains_key(&newcomer));
    assert!(net.nodes[3].peer.authority().is_none());
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    assert!(enrolled(&net.nodes[0], newcomer), "{:?}", net.nodes[0].events);
    assert!(joined(&net.nodes[3]), "{:?}", net.nodes[3].events);
    for i in 0..4 {
        let v = net.nodes[i].peer.authority().unwrap_or_else(|| panic!("device {i}"));
        assert_eq!((v.id, v.group_key, v.members.len()), (before.id, before.group_key, 4));
        assert_eq!(v.epoch, before.epoch + 1);
        // Identifiers go on from the founders'.
        assert_eq!(v.members[&newcomer].identifier, 4);
    }
    // The newcomer and one founder sign without the other two: the newcomer's share is
    // the key's, and the founder checks and aggregates the newcomer's signature share.
    let (msg, sig) = sign_with(&mut net, 3, &[0, 1], b"newcomer signs").expect("signed");
    let (_, _, key) = signed(&net.nodes[3]).pop().unwrap();
    assert_eq!(key, before.group_key);
    assert!(verifies(&key, &msg, &sig));
    let (msg, sig) = sign_with(&mut net, 2, &[0, 1], b"founder with newcomer").expect("signed");
    assert!(verifies(&before.group_key, &msg, &sig));
    // After a restart the newcomer is still a member with its share.
    let keep = net.nodes[3].records.len();
    crash_and_restore(&mut net, 3, keep, 77);
    net.run();
    assert_eq!(net.nodes[3].peer.authority().map(|v| v.id), Some(before.id));
    assert!(sign_with(&mut net, 3, &[0, 2], b"after restart").is_some());
}

#[test]
fn a_removed_identifier_is_never_given_out_again() {
    let mut net = net_with_spare();
    let gone = net.id(2);
    net.cmd(0, Command::RemoveDevice { device: gone }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 10_000);
    assert!(!net.nodes[0].peer.authority().unwrap().members.contains_key(&gone));
    net.cmd(0, Command::AddDevice { device: net.id(3) }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    let v = net.nodes[1].peer.authority().unwrap().clone();
    // Device 2 had identifier 3; the newcomer gets 4 (identifier 3's share is the
    // removed device's).
    assert_eq!(v.members[&net.id(3)].identifier, 4);
    assert!(joined(&net.nodes[3]));
    assert!(sign_with(&mut net, 3, &[0, 2], b"without device 0").is_some());
}

#[test]
fn forged_or_unasked_enrollments_are_refused() {
    let mut net = net_with_spare();
    let a = net.nodes[0].peer.authority().unwrap().id;
    // Sums that are not sealed to anyone.
    let garbage = AuthMsg::Enroll {
        session: [9; 32],
        authority: a,
        sigmas: vec![(1, [1; 32], vec![2; 48]), (2, [3; 32], vec![4; 48])],
    };
    // An enrollment for a device that is not listed, from a member: dropped.
    let drops = net.drops(3, DropReason::UnexpectedFrame);
    net.deliver_proto(3, 0, ContextId::OWN, &garbage);
    assert_eq!(net.drops(3, DropReason::UnexpectedFrame), drops + 1);
    assert!(net.nodes[3].peer.authority().is_none());
    // A non-member's request to help is refused by members.
    let start = |net: &Net, from: usize, newcomer: usize, helpers: Vec<u16>, bind: bool| {
        let (e, n) = (net.id(from), net.id(newcomer));
        let session = if bind {
            authority::enroll_session(&a, &e, &n, &helpers, &[1; 32])
        } else {
            [8; 32]
        };
        AuthMsg::EnrollStart {
            session,
            nonce: [1; 32],
            authority: a,
            newcomer: n,
            helpers,
        }
    };
    let v = net.nodes[1].peer.authority().unwrap().clone();
    let ids: Vec<u16> = (0..3).map(|i| v.members[&net.id(i)].identifier).collect();
    let ident = |i: usize| ids[i];
    let sorted = |mut h: Vec<u16>| {
        h.sort();
        h
    };
    let helpers = sorted(vec![ident(0), ident(1)]);
    let drops = net.drops(1, DropReason::UnexpectedFrame);
    let m = start(&net, 3, 3, vec![1, 2], true);
    net.deliver_proto(1, 3, ContextId::OWN, &m);
    assert_eq!(net.drops(1, DropReason::UnexpectedFrame), drops + 1);
    // A member's request whose session id does not bind its helper set and newcomer
    // (helpers of one session could otherwise work with different sets, and the sums
    // add up to something other than the newcomer's share).
    let m = start(&net, 0, 2, helpers.clone(), false);
    net.deliver_proto(1, 0, ContextId::OWN, &m);
    assert_eq!(net.drops(1, DropReason::UnexpectedFrame), drops + 2);
    // Nor may a member have its own share repaired by others.
    let m = start(&net, 0, 0, sorted(vec![ident(1), ident(2)]), true);
    net.deliver_proto(1, 0, ContextId::OWN, &m);
    assert_eq!(net.drops(1, DropReason::UnexpectedFrame), drops + 3);
    // A bound request from a member for another member is taken up (the parts go out).
    let sent = net.sent.len();
    let m = start(&net, 0, 2, helpers, true);
    net.deliver_proto(1, 0, ContextId::OWN, &m);
    assert_eq!(net.drops(1, DropReason::UnexpectedFrame), drops + 3);
    assert!(net.sent.len() > sent, "helper sent its part");
    net.wire.clear();
    // Listed now, but the sums are garbage: nothing is persisted.
    net.cut.insert(3);
    net.cmd(0, Command::AddDevice { device: net.id(3) }).unwrap();
    net.run();
    net.cut.clear();
    net.advance_to_ms(net.now_ns / 1_000_000 + 100);
    let records = net.nodes[3].records.len();
    net.deliver_proto(3, 0, ContextId::OWN, &garbage);
    assert!(net.nodes[3].records[records..]
        .iter()
        .all(|r| !matches!(r, Record::Share { .. })));
    // The real enrollment still goes through.
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    assert!(joined(&net.nodes[3]), "{:?}", net.nodes[3].events);
}

#[test]
fn interpolation_finds_every_share_and_the_group_key_from_any_threshold() {
    use frost_ristretto255 as frost;
    let mut rng = aura_proto::rng::PeerRng::from_seed([5; 32]);
    let (_, public) = frost::keys::generate_with_dealer(5, 3, frost::keys::IdentifierList::Default, &mut rng).unwrap();
    let all: Vec<(u16, [u8; 32])> = (1..=5u16)
        .map(|i| {
            let id = frost::Identifier::try_from(i).unwrap();
            let y = public.verifying_shares()[&id].serialize().unwrap();
            (i, y.try_into().unwrap())
        })
        .collect();
    let key: [u8; 32] = public.verifying_key().serialize().unwrap().try_into().unwrap();
    for basis in [&all[0..3], &all[2..5], &[all[0], all[2], all[4]][..]] {
        assert_eq!(authority::interpolate_share(basis, 0), Some(key));
        for (i, y) in &all {
            assert_eq!(authority::interpolate_share(basis, *i), Some(*y), "share {i}");
        }
    }
    // Too few points describe another polynomial.
    assert_ne!(authority::interpolate_share(&all[0..2], 0), Some(key));
}

#[test]
fn a_forged_genesis_listing_us_does_not_displace_the_authority_we_hold_a_share_of() {
    use aura_proto::journal::{Fact, FactBody, FactSig, Genesis, Member, Namespace, Sig64};
    let mut net = net_with_spare();
    let real = net.nodes[0].peer.authority().unwrap().id;
    // Device 1 (a paired device gone bad) writes a genesis of its own that lists device
    // 0 as a founder, signed by a key it made up, with an id that sorts first.
    let mut rng = aura_proto::rng::PeerRng::from_seed([3; 32]);
    let mut sk = [9u8; 32];
    sk[31] &= 0x0f;
    let key = frost_ristretto255::SigningKey::deserialize(&sk).unwrap();
    let gk: [u8; 32] = VerifyingKey::from(&key).serialize().unwrap().try_into().unwrap();
    let members: Vec<Member> = [0, 1]
        .iter()
        .enumerate()
        .map(|(k, i)| Member {
            identifier: k as u16 + 1,
            cert: net.nodes[*i].peer.cert().clone(),
            addr: net.nodes[*i].addr.clone(),
        })
        .collect();
    let mut session = 0u64;
    let g = loop {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&session.to_le_bytes());
        let g = Genesis {
            session: s,
            threshold: 2,
            members: members.clone(),
            group_key: gk,
            verifying_shares: vec![(1, gk), (2, gk)],
            cap_root: [1; 32],
        };
        if g.authority_id() < real {
            break g;
        }
        session += 1;
    };
    let ns = Namespace::Authority(g.authority_id());
    let author = net.id(1);
    let body = FactBody::Genesis(g);
    let msg = Fact::signing_bytes(&ns, 0, &author, &body);
    let sig: [u8; 64] = key.sign(&mut rng, &msg).serialize().unwrap().try_into().unwrap();
    let fact = Fact {
        namespace: ns,
        lamport: 0,
        author,
        body,
        sig: FactSig::Group(Sig64(sig)),
    };
    net.deliver_proto(
        0,
        1,
        ContextId::OWN,
        &AuthMsg::Facts {
            facts: vec![fact.encode()],
        },
    );
    net.run();
    assert!(
        net.nodes[0].peer.journal().contains(&fact),
        "the forged genesis is stored"
    );
    assert_eq!(net.nodes[0].peer.authority().map(|v| v.id), Some(real));
}

#[test]
fn an_added_device_takes_part_in_a_share_refresh() {
    // The newcomer is the device whose id sorts first: identifiers follow the order
    // devices joined, not the order of their ids.
    let mut net = default_net(4);
    let spare = (0..4).min_by_key(|i| net.id(*i)).unwrap();
    let founders: Vec<usize> = (0..4).filter(|i| *i != spare).collect();
    let lead = founders[0];
    for j in (0..4).filter(|j| *j != lead) {
        net.pair(lead, j);
    }
    let devices = founders[1..].iter().map(|j| net.id(*j)).collect();
    net.cmd(lead, Command::CreateAuthority { devices, threshold: 2 })
        .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    net.cmd(lead, Command::AddDevice { device: net.id(spare) }).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    assert!(joined(&net.nodes[spare]));
    net.cmd(founders[1], Command::RefreshShares).unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 60_000);
    for i in 0..4 {
        assert!(
            net.nodes[i]
                .events
                .iter()
                .any(|e| matches!(e, Event::SharesRefreshed { .. })),
            "device {i}"
        );
    }
    let cut: Vec<usize> = founders[..2].to_vec();
    assert!(sign_with(&mut net, spare, &cut, b"refreshed newcomer").is_some());
}
