//! Channel cost through `Peer` against raw snow doing the same work, measured in the same
//! run, interleaved round by round so machine noise hits both sides alike. Prints ratios
//! (medians over rounds); absolute times are for orientation only.
//!
//! `cargo bench -p aura-proto --bench channel [-- --quick]`

// A benchmark measures wall time by definition; the purity rules are for the core itself.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::cell::Cell;
use std::hint::black_box;
use std::time::{Duration, Instant};

use aura_proto::rng::PeerRng;
use aura_proto::wire;
use aura_proto::{Command, Config, DeviceSecret, Durable, Event, Input, Now, Output, Peer, Record, NOISE_PATTERN};
use bytes::Bytes;

mod common;
use common::{median, snow_transport_pair, x25519_public, Res};

const UNIX0: u64 = 1_790_000_000_000;

fn now() -> Now {
    Now::from_parts(1, UNIX0)
}

/// Drains a peer: acks persists, returns transmits, collects events.
fn drain(p: &mut Peer, records: &mut Vec<Record>, events: &mut Vec<Event>) -> Vec<Vec<u8>> {
    let mut tx = Vec::new();
    while let Some(o) = p.poll_output() {
        match o {
            Output::Transmit { bytes, .. } => tx.push(bytes),
            Output::Persist { ticket, record } => {
                records.push(record);
                p.handle_input(now(), Input::PersistDone(ticket)).unwrap();
            }
            Output::Event(e) => events.push(e),
            Output::Egress(_) => {}
        }
    }
    tx
}

/// Shuttles datagrams between two peers until both are quiet.
fn pump(a: &mut Peer, b: &mut Peer, ra: &mut Vec<Record>, rb: &mut Vec<Record>, ev: &mut Vec<Event>) {
    let mut to_b = drain(a, ra, ev);
    let mut to_a = drain(b, rb, ev);
    while !to_a.is_empty() || !to_b.is_empty() {
        for bytes in std::mem::take(&mut to_b) {
            b.handle_input(
                now(),
                Input::Datagram {
                    from: "a".into(),
                    bytes,
                },
            )
            .unwrap();
            to_a.extend(drain(b, rb, ev));
        }
        for bytes in std::mem::take(&mut to_a) {
            a.handle_input(
                now(),
                Input::Datagram {
                    from: "b".into(),
                    bytes,
                },
            )
            .unwrap();
            to_b.extend(drain(a, ra, ev));
        }
    }
}

fn secrets() -> (DeviceSecret, DeviceSecret) {
    (DeviceSecret::from_bytes([1; 32]), DeviceSecret::from_bytes([2; 32]))
}

/// Two paired peers' records.
fn paired() -> (Vec<Record>, Vec<Record>) {
    let (sa, sb) = secrets();
    let mut a = Peer::new(Config::default(), sa, [3; 32], now());
    let mut b = Peer::new(Config::default(), sb, [4; 32], now());
    let (mut ra, mut rb, mut ev) = (Vec::new(), Vec::new(), Vec::new());
    let cmd = Command::CreateInvite {
        valid_for: Duration::from_secs(3600),
        addr_hint: "a".into(),
    };
    a.handle_input(now(), Input::Command(cmd)).unwrap();
    drain(&mut a, &mut ra, &mut ev);
    let code = ev
        .iter()
        .find_map(|e| match e {
            Event::InviteCreated { code, .. } => Some(code.clone()),
            _ => None,
        })
        .unwrap();
    b.handle_input(now(), Input::Command(Command::Join { code })).unwrap();
    pump(&mut a, &mut b, &mut ra, &mut rb, &mut ev);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Paired { .. })).count(), 2);
    (ra, rb)
}

fn restore(secret: DeviceSecret, records: &[Record], seed: u8) -> Peer {
    let d = Durable {
        secret,
        records: records.to_vec(),
    };
    Peer::restore(Config::default(), d, [seed; 32], now())
}

/// One link handshake through two freshly restored peers, up to both sides being Up.
/// Returns the time spent in the handshake only (restoring is setup).
fn peer_handshake(ra: &[Record], rb: &[Record], seed: u8) -> Duration {
    let (sa, sb) = secrets();
    let mut a = restore(sa, ra, seed);
    let mut b = restore(sb, rb, seed.wrapping_add(1));
    let bid = b.id();
    let (mut xa, mut xb, mut ev) = (Vec::new(), Vec::new(), Vec::new());
    let t = Instant::now();
    a.handle_input(now(), Input::Command(Command::Connect { peer: bid }))
        .unwrap();
    pump(&mut a, &mut b, &mut xa, &mut xb, &mut ev);
    let d = t.elapsed();
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::ChannelUp { .. })).count(), 2);
    d
}

/// The same handshake in raw snow: build both states, two messages, split into transport
/// mode, and the initiator's first transport message (the key confirmation a responder
/// needs before it trusts the channel).
fn raw_handshake(ka: &[u8; 32], kb: &[u8; 32], pub_b: &[u8], psk: &[u8; 32], seed: u8) -> Duration {
    let params: snow::params::NoiseParams = NOISE_PATTERN.parse().unwrap();
    let t = Instant::now();
    let res = |s: u8| Box::new(Res(Cell::new(Some(PeerRng::from_seed([s; 32])))));
    let mut i = snow::Builder::with_resolver(params.clone(), res(seed))
        .local_private_key(ka)
        .unwrap()
        .remote_public_key(pub_b)
        .unwrap()
        .psk(2, psk)
        .unwrap()
        .prologue(b"aura noise v1\x01\x02")
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::with_resolver(params, res(seed.wrapping_add(1)))
        .local_private_key(kb)
        .unwrap()
        .prologue(b"aura noise v1\x01\x02")
        .unwrap()
        .build_responder()
        .unwrap();
    let payload = [7u8; 200]; // about the size of Aura's handshake payloads
    let (mut m, mut p) = (vec![0u8; 1024], vec![0u8; 1024]);
    let n = i.write_message(&payload, &mut m).unwrap();
    r.read_message(&m[..n], &mut p).unwrap();
    r.set_psk(2, psk).unwrap();
    let n = r.write_message(&payload, &mut m).unwrap();
    i.read_message(&m[..n], &mut p).unwrap();
    let ti = i.into_stateless_transport_mode().unwrap();
    let tr = r.into_stateless_transport_mode().unwrap();
    let n = ti.write_message(0, &[0u8; 240], &mut m).unwrap();
    tr.read_message(0, &m[..n], &mut p).unwrap();
    black_box(&p);
    t.elapsed()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 21 };
    let hs_iters = if quick { 20 } else { 100 };
    let frame_iters = if quick { 2_000 } else { 20_000 };

    // ----- handshake -----
    let (ra, rb) = paired();
    let mut ka = [0u8; 32];
    ka.copy_from_slice(&blake3::derive_key("bench a", b"k"));
    let mut kb = [0u8; 32];
    kb.copy_from_slice(&blake3::derive_key("bench b", b"k"));
    let pub_b = x25519_public(&kb);
    let psk = [9u8; 32];
    let (mut hs_ratio, mut hs_peer, mut hs_raw) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut raw = Duration::ZERO;
        let mut peer = Duration::ZERO;
        for k in 0..hs_iters {
            let s = (round * hs_iters + k) as u8;
            raw += raw_handshake(&ka, &kb, &pub_b, &psk, s);
            peer += peer_handshake(&ra, &rb, s);
        }
        let (r, p) = (
            raw.as_secs_f64() / hs_iters as f64,
            peer.as_secs_f64() / hs_iters as f64,
        );
        hs_raw.push(r);
        hs_peer.push(p);
        hs_ratio.push(p / r);
    }

    // ----- frames -----
    let (sa, sb) = secrets();
    let mut a = restore(sa, &ra, 50);
    let mut b = restore(sb, &rb, 51);
    let (mut xa, mut xb, mut ev) = (Vec::new(), Vec::new(), Vec::new());
    let bid = b.id();
    a.handle_input(now(), Input::Command(Command::Connect { peer: bid }))
        .unwrap();
    pump(&mut a, &mut b, &mut xa, &mut xb, &mut ev);
    // The largest payload whose frame fills the 1 KiB bucket exactly.
    let fill_1k = (0..1024)
        .rev()
        .find(|n| {
            let mut v = Vec::new();
            wire::pad_frame(&wire::Frame::App { data: &vec![0; *n] }, &mut v).unwrap();
            v.len() == 1024
        })
        .unwrap();
    let mut frame_results = Vec::new();
    for (label, payload_len, target) in [
        (
            "1 KiB frame (payload fills the 1 KiB bucket)",
            fill_1k,
            "target <= 1.5x",
        ),
        (
            "1024-byte payload (padded to the 4 KiB bucket)",
            1024,
            "no target: shows what padding to the next bucket costs",
        ),
    ] {
        let data = Bytes::from(vec![0xab; payload_len]);
        let raw_t = snow_transport_pair();
        let (mut ratios, mut peer_ns, mut raw_ns) = (Vec::new(), Vec::new(), Vec::new());
        let mut nonce = 0u64;
        let raw_plain = vec![0xabu8; 1024];
        let (mut m, mut p) = (vec![0u8; 2048], vec![0u8; 2048]);
        for _ in 0..rounds {
            let t = Instant::now();
            for _ in 0..frame_iters {
                let n = raw_t.0.write_message(nonce, &raw_plain, &mut m).unwrap();
                let k = raw_t.1.read_message(nonce, &m[..n], &mut p).unwrap();
                black_box(&p[..k]);
                nonce += 1;
            }
            let raw = t.elapsed().as_secs_f64() / frame_iters as f64;
            let t = Instant::now();
            for _ in 0..frame_iters {
                a.handle_input(
                    now(),
                    Input::Command(Command::Send {
                        peer: bid,
                        data: data.clone(),
                    }),
                )
                .unwrap();
                // The egress record comes first, then its datagram.
                let Some(Output::Egress(_)) = a.poll_output() else {
                    panic!("no egress record")
                };
                let Some(Output::Transmit { bytes, .. }) = a.poll_output() else {
                    panic!("no transmit")
                };
                b.handle_input(
                    now(),
                    Input::Datagram {
                        from: "a".into(),
                        bytes,
                    },
                )
                .unwrap();
                let Some(Output::Event(Event::Received { data, .. })) = b.poll_output() else {
                    panic!("not received")
                };
                black_box(data);
            }
            let peer = t.elapsed().as_secs_f64() / frame_iters as f64;
            raw_ns.push(raw);
            peer_ns.push(peer);
            ratios.push(peer / raw);
        }
        frame_results.push((label, target, median(ratios), median(peer_ns), median(raw_ns)));
    }

    println!("aura-proto channel benchmark ({rounds} rounds, medians; ratio = Peer / raw snow)");
    println!(
        "handshake (both sides, to key confirmation): ratio {:.2}x  (Peer {:.0} us, raw {:.0} us)  target <= 1.3x",
        median(hs_ratio),
        median(hs_peer) * 1e6,
        median(hs_raw) * 1e6
    );
    for (label, target, ratio, p, r) in frame_results {
        println!(
            "seal+open {label}: ratio {ratio:.2}x  (Peer {:.2} us, raw 1 KiB {:.2} us)  {target}",
            p * 1e6,
            r * 1e6
        );
    }
    let (ratio, guarded, alone) = guard_vs_channel(rounds, frame_iters);
    println!(
        "1 KiB send with guard chain + receipts (sealed every {SEAL_EVERY}, verified): ratio {ratio:.2}x  \
         (guarded {:.2} us, channel alone {:.2} us)  target <= 1.25x",
        guarded * 1e6,
        alone * 1e6
    );
}

/// Receipts per seal (one Schnorr signature and one verification per this many sends).
const SEAL_EVERY: u64 = 1024;

/// The guard chain's CPU work around one 1 KiB send (evaluate, apply, receipt append on
/// the sender; receipt check on the receiver; a seal signed and verified every
/// `SEAL_EVERY` sends), against the same seal+open alone. Not included: the reservation
/// write a real peer makes every 16 such sends (host I/O) and carrying the receipts.
fn guard_vs_channel(rounds: usize, iters: usize) -> (f64, f64, f64) {
    use aura_proto::guard::{self, ContextState, Grant, Leak, MsgKind, Observer, Request, Snapshot};
    use aura_proto::journal::{ContextId, KeyLookup, Namespace, Sig64};
    use aura_proto::receipt::{ChainVerifier, ChainWriter, Seal};
    use aura_proto::{DeviceId, DeviceKeys};

    struct OneKey(DeviceId, [u8; 32]);
    impl KeyLookup for OneKey {
        fn group_key(&self, _: &Namespace) -> Option<[u8; 32]> {
            None
        }
        fn device_key(&self, _: &Namespace, d: &DeviceId) -> Option<[u8; 32]> {
            (*d == self.0).then_some(self.1)
        }
    }

    let (ta, tb) = snow_transport_pair();
    let mut rng = PeerRng::from_seed([8; 32]);
    let keys = DeviceKeys::derive(&DeviceSecret::from_bytes([1; 32]), &mut rng);
    let lookup = OneKey(keys.id, keys.cert.signing);
    let (ctx, dst) = (ContextId([7; 32]), DeviceId([2; 32]));
    let mut snap = Snapshot::default();
    snap.grants.insert(
        (ctx, dst),
        Grant {
            rights: ["send".to_string()].into_iter().collect(),
            flow_limit: u64::MAX / 2,
        },
    );
    snap.contexts.insert(
        ctx,
        ContextState {
            epoch: 0,
            writable: true,
            oldest: None,
        },
    );
    for o in Observer::ALL {
        snap.leakage.insert(
            (ctx, o, 0),
            Leak {
                limit: u64::MAX / 2,
                spent: 0,
            },
        );
    }
    let req = Request {
        context: ctx,
        peer: dst,
        epoch: 0,
        kind: MsgKind::App,
        bucket: 1024,
    };
    let mut writer = ChainWriter::new(ctx, keys.id, 0);
    let mut verifier = ChainVerifier::new(ctx, keys.id, 0);
    let plain = vec![0xabu8; 1024];
    let (mut m, mut p) = (vec![0u8; 2048], vec![0u8; 2048]);
    let mut nonce = 0u64;
    let mut seal_open = |nonce: &mut u64| {
        let n = ta.write_message(*nonce, &plain, &mut m).unwrap();
        let k = tb.read_message(*nonce, &m[..n], &mut p).unwrap();
        black_box(&p[..k]);
        *nonce += 1;
    };
    let (mut ratios, mut guarded_s, mut alone_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..iters {
            seal_open(&mut nonce);
        }
        let alone = t.elapsed().as_secs_f64() / iters as f64;
        let t = Instant::now();
        for _ in 0..iters {
            let effects = guard::evaluate(&snap, &req).expect("allowed");
            guard::apply(&mut snap, &effects);
            for e in effects.iter() {
                if let guard::Effect::Receipt { peer, cost, .. } = e {
                    let r = writer.append(*peer, *cost);
                    verifier.push(&r).unwrap();
                    if r.nonce % SEAL_EVERY == SEAL_EVERY - 1 {
                        let (n, head, msg) = writer.seal_bytes().unwrap();
                        let seal = Seal {
                            context: ctx,
                            src: keys.id,
                            epoch: 0,
                            nonce: n,
                            head,
                            sig: Sig64(keys.sign(&mut rng, &msg)),
                        };
                        verifier.seal(&seal, &lookup).unwrap();
                    }
                }
            }
            seal_open(&mut nonce);
        }
        let guarded = t.elapsed().as_secs_f64() / iters as f64;
        alone_s.push(alone);
        guarded_s.push(guarded);
        ratios.push(guarded / alone);
    }
    assert!(verifier.sealed() > 0);
    (median(ratios), median(guarded_s), median(alone_s))
}
