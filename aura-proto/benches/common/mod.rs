//! Helpers shared by the benchmarks: a seeded snow resolver and raw snow baselines.
#![allow(dead_code)]

use std::cell::Cell;

use aura_proto::rng::PeerRng;
use aura_proto::NOISE_PATTERN;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// A snow resolver drawing randomness from a seeded `PeerRng` (deterministic baselines).
pub struct Res(pub Cell<Option<PeerRng>>);

impl CryptoResolver for Res {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.0.take().map(|r| Box::new(r) as Box<dyn Random>)
    }
    fn resolve_dh(&self, c: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(c)
    }
    fn resolve_hash(&self, c: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(c)
    }
    fn resolve_cipher(&self, c: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(c)
    }
}

pub fn x25519_public(private: &[u8; 32]) -> Vec<u8> {
    let mut dh = DefaultResolver.resolve_dh(&DHChoice::Curve25519).unwrap();
    dh.set(private);
    dh.pubkey().to_vec()
}

/// Median of a sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Two raw snow transport states (initiator, responder) after a full handshake.
pub fn snow_transport_pair() -> (snow::StatelessTransportState, snow::StatelessTransportState) {
    let params: snow::params::NoiseParams = NOISE_PATTERN.parse().unwrap();
    let res = |s: u8| Box::new(Res(Cell::new(Some(PeerRng::from_seed([s; 32])))));
    let kb = [5u8; 32];
    let pub_b = x25519_public(&kb);
    let psk = [1u8; 32];
    let mut i = snow::Builder::with_resolver(params.clone(), res(1))
        .local_private_key(&[6u8; 32])
        .unwrap()
        .remote_public_key(&pub_b)
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::with_resolver(params, res(2))
        .local_private_key(&kb)
        .unwrap()
        .psk(2, &psk)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut m, mut p) = (vec![0u8; 1024], vec![0u8; 1024]);
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    let n = r.write_message(&[], &mut m).unwrap();
    i.read_message(&m[..n], &mut p).unwrap();
    (
        i.into_stateless_transport_mode().unwrap(),
        r.into_stateless_transport_mode().unwrap(),
    )
}
