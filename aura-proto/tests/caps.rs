//! Biscuit capabilities rooted at an authority: issue, attenuate, verify offline.

use aura_proto::caps::*;
use aura_proto::journal::AuthorityId;
use aura_proto::rng::PeerRng;
use aura_proto::DeviceId;
use quickcheck::{QuickCheck, TestResult};

const SECRET: [u8; 32] = [11; 32];
const ALL: [&str; 5] = ["send", "sign", "sync", "relay", "admin"];

fn rights(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn token(seed: u8) -> Vec<u8> {
    let root = root_keypair(&SECRET);
    let mut rng = PeerRng::from_seed([seed; 32]);
    issue(
        &root,
        &AuthorityId([1; 32]),
        &Subject::Device(DeviceId([2; 32])),
        &rights(&ALL[..4]),
        Some(1000),
        &mut rng,
    )
    .unwrap()
}

#[test]
fn issue_and_verify_offline() {
    let root = root_public(&SECRET);
    let snap = verify(&token(1), &root).unwrap();
    assert_eq!(snap.issuer, AuthorityId([1; 32]));
    assert_eq!(snap.subject, Subject::Device(DeviceId([2; 32])));
    assert_eq!(snap.rights, ALL[..4].iter().map(|s| s.to_string()).collect());
    assert_eq!(snap.budget, Some(1000));
    // Deterministic from the seed.
    assert_eq!(token(1), token(1));
    assert_ne!(token(1), token(2));
    // Another authority's root does not verify it.
    assert_eq!(verify(&token(1), &root_public(&[12; 32])), Err(CapError::Invalid));
}

#[test]
fn attenuation_narrows_and_lowers_budget() {
    let root = root_public(&SECRET);
    let mut rng = PeerRng::from_seed([3; 32]);
    let t = attenuate(&token(1), &root, &rights(&["send", "sync"]), Some(200), &mut rng).unwrap();
    let s = verify(&t, &root).unwrap();
    assert_eq!(s.rights, ["send", "sync"].iter().map(|s| s.to_string()).collect());
    assert_eq!(s.budget, Some(200));
    // A later block asking for more budget or more rights changes nothing.
    let t2 = attenuate(&t, &root, &rights(&ALL), Some(5000), &mut rng).unwrap();
    let s2 = verify(&t2, &root).unwrap();
    assert_eq!(s2.rights, s.rights);
    assert_eq!(s2.budget, Some(200));
}

#[test]
fn an_appended_block_cannot_grant_rights() {
    use biscuit_auth::builder::BlockBuilder;
    use biscuit_auth::{Algorithm, Biscuit, KeyPair, PublicKey};
    let root = root_public(&SECRET);
    let t = Biscuit::from(token(1), PublicKey::from_bytes(&root, Algorithm::Ed25519).unwrap()).unwrap();
    let mut rng = PeerRng::from_seed([4; 32]);
    let block = BlockBuilder::new().code("right(\"admin\"); budget(999999);").unwrap();
    let forged = t
        .append_with_keypair(&KeyPair::new_with_rng(Algorithm::Ed25519, &mut rng), block)
        .unwrap();
    let s = verify(&forged.to_vec().unwrap(), &root).unwrap();
    assert!(!s.rights.contains("admin"));
    assert_eq!(s.budget, Some(1000));
}

#[test]
fn attenuation_never_widens() {
    fn prop(masks: Vec<u8>) -> TestResult {
        if masks.len() > 4 {
            return TestResult::discard();
        }
        let root = root_public(&SECRET);
        let mut rng = PeerRng::from_seed([5; 32]);
        let mut t = token(1);
        let mut allowed: std::collections::BTreeSet<String> = ALL[..4].iter().map(|s| s.to_string()).collect();
        for m in masks {
            let keep: Vec<String> = ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| m & (1 << i) != 0)
                .map(|(_, r)| r.to_string())
                .collect();
            t = attenuate(&t, &root, &keep, None, &mut rng).unwrap();
            allowed.retain(|r| keep.contains(r));
            let s = verify(&t, &root).unwrap();
            if s.rights != allowed {
                return TestResult::failed();
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(40)
        .quickcheck(prop as fn(Vec<u8>) -> TestResult);
}

#[test]
fn tampered_tokens_and_bad_input_are_refused() {
    let root = root_public(&SECRET);
    let t = token(1);
    for i in (0..t.len()).step_by(7) {
        let mut bad = t.clone();
        bad[i] ^= 0x20;
        match verify(&bad, &root) {
            Err(_) => {}
            // A flip in an unsigned length prefix can still parse to the same token.
            Ok(s) => assert_eq!(s, verify(&t, &root).unwrap(), "byte {i} changed what the token grants"),
        }
    }
    assert_eq!(verify(&[], &root), Err(CapError::Invalid));
    assert_eq!(verify(&vec![0; MAX_TOKEN + 1], &root), Err(CapError::TooLarge));
    let mut rng = PeerRng::from_seed([6; 32]);
    let err = issue(
        &root_keypair(&SECRET),
        &AuthorityId([1; 32]),
        &Subject::Device(DeviceId([2; 32])),
        &rights(&["Bad Right\")"]),
        None,
        &mut rng,
    );
    assert!(matches!(err, Err(CapError::BadRight(_))));
}

#[test]
fn tokens_for_other_authorities() {
    let root = root_public(&SECRET);
    let mut rng = PeerRng::from_seed([8; 32]);
    let other = AuthorityId([0x42; 32]);
    let t = issue(
        &root_keypair(&SECRET),
        &AuthorityId([1; 32]),
        &Subject::Authority(other),
        &rights(&["relay"]),
        None,
        &mut rng,
    )
    .unwrap();
    let s = verify(&t, &root).unwrap();
    assert_eq!(s.subject, Subject::Authority(other));
    assert_eq!(s.budget, None);
    assert!(s.rights.contains("relay"));
}
