//! Threshold signing through `Peer`s against bare frost-ristretto255 doing the same rounds,
//! and journal merge against a plain `BTreeMap`, measured in the same run (interleaved
//! rounds, medians). Prints ratios; absolute times are for orientation only.
//!
//! `cargo bench -p aura-proto --bench authority [-- --quick]`

// A benchmark measures wall time by definition; the purity rules are for the core itself.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::time::{Duration, Instant};

use aura_proto::journal::{ContextId, Fact, FactBody, FactSig, Journal, Namespace, Sig64};
use aura_proto::rng::PeerRng;
use aura_proto::{Command, Config, DeviceId, DeviceSecret, Event, Input, Now, Output, Peer};
use frost_ristretto255 as frost;

const UNIX0: u64 = 1_790_000_000_000;

fn now() -> Now {
    Now::from_parts(1, UNIX0)
}

/// n peers on an instant, lossless network; persists acknowledged at once.
struct Net {
    peers: Vec<Peer>,
    wire: VecDeque<(usize, usize, Vec<u8>)>,
    events: Vec<(usize, Event)>,
}

impl Net {
    fn new(n: usize) -> Net {
        let peers = (0..n)
            .map(|i| {
                Peer::new(
                    Config::default(),
                    DeviceSecret::from_bytes([i as u8 + 1; 32]),
                    [i as u8 + 40; 32],
                    now(),
                )
            })
            .collect();
        Net {
            peers,
            wire: VecDeque::new(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(o) = self.peers[i].poll_output() {
            match o {
                Output::Transmit { to, bytes } => {
                    let j: usize = to.strip_prefix('n').unwrap().parse().unwrap();
                    self.wire.push_back((i, j, bytes));
                }
                Output::Persist { ticket, .. } => {
                    self.peers[i].handle_input(now(), Input::PersistDone(ticket)).unwrap()
                }
                Output::Event(e) => self.events.push((i, e)),
                Output::Egress(_) => {}
            }
        }
    }

    fn cmd(&mut self, i: usize, c: Command) {
        self.peers[i].handle_input(now(), Input::Command(c)).unwrap();
        self.drain(i);
    }

    fn run(&mut self) {
        while let Some((from, to, bytes)) = self.wire.pop_front() {
            self.peers[to]
                .handle_input(
                    now(),
                    Input::Datagram {
                        from: format!("n{from}"),
                        bytes,
                    },
                )
                .unwrap();
            self.drain(to);
        }
    }

    fn take_event(&mut self, f: impl Fn(&Event) -> bool) -> Option<Event> {
        let k = self.events.iter().position(|(_, e)| f(e))?;
        Some(self.events.remove(k).1)
    }

    /// Pairs everyone with device 0 and forms a t-of-n authority.
    fn authority(n: usize, t: u16) -> Net {
        let mut net = Net::new(n);
        for j in 1..n {
            let cmd = Command::CreateInvite {
                valid_for: Duration::from_secs(3600),
                addr_hint: "n0".into(),
            };
            net.cmd(0, cmd);
            let Some(Event::InviteCreated { code, .. }) = net.take_event(|e| matches!(e, Event::InviteCreated { .. }))
            else {
                panic!("no invite")
            };
            net.cmd(j, Command::Join { code });
            net.run();
        }
        let devices: Vec<DeviceId> = net.peers[1..].iter().map(|p| p.id()).collect();
        net.cmd(0, Command::CreateAuthority { devices, threshold: t });
        net.run();
        let created = net
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::AuthorityCreated { .. }))
            .count();
        assert_eq!(created, n, "authority not formed");
        net.events.clear();
        net
    }

    /// One tree change agreed by consensus (the threshold it has, proposed by device 0)
    /// until every device applied it; returns the elapsed time.
    fn commit(&mut self, t: u16) -> Duration {
        let start = Instant::now();
        self.cmd(0, Command::ChangeThreshold { threshold: t });
        self.run();
        let d = start.elapsed();
        let applied = self
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Committed { .. }))
            .count();
        assert_eq!(applied, self.peers.len(), "not applied everywhere: {:?}", self.events);
        self.events.clear();
        d
    }

    /// One signature through the peers; returns the elapsed time.
    fn sign(&mut self, k: u64) -> Duration {
        let t = Instant::now();
        self.cmd(
            0,
            Command::Sign {
                statement: format!("benchmark statement number {k:08}").into_bytes(),
            },
        );
        self.run();
        let d = t.elapsed();
        let Some(Event::Signed { .. }) = self.take_event(|e| matches!(e, Event::Signed { .. })) else {
            panic!("no signature: {:?}", self.events)
        };
        self.events.clear();
        d
    }
}

/// The same rounds with bare frost: t commitments, a signing package, t shares, aggregate.
struct Bare {
    keys: BTreeMap<frost::Identifier, frost::keys::KeyPackage>,
    public: frost::keys::PublicKeyPackage,
    t: usize,
    rng: PeerRng,
}

impl Bare {
    fn new(n: u16, t: u16) -> Bare {
        let mut rng = PeerRng::from_seed([9; 32]);
        let (shares, public) =
            frost::keys::generate_with_dealer(n, t, frost::keys::IdentifierList::Default, &mut rng).unwrap();
        let keys = shares
            .into_iter()
            .map(|(id, s)| (id, frost::keys::KeyPackage::try_from(s).unwrap()))
            .collect();
        Bare {
            keys,
            public,
            t: t as usize,
            rng,
        }
    }

    fn sign(&mut self, k: u64) -> Duration {
        // About the size of the statement fact Aura signs.
        let msg = format!("{:0>150}", format!("benchmark statement number {k:08}")).into_bytes();
        let t = Instant::now();
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for (id, kp) in self.keys.iter().take(self.t) {
            let (n, c) = frost::round1::commit(kp.signing_share(), &mut self.rng);
            nonces.insert(*id, n);
            commitments.insert(*id, c);
        }
        let pkg = frost::SigningPackage::new(commitments, &msg);
        let mut shares = BTreeMap::new();
        for (id, n) in &nonces {
            shares.insert(*id, frost::round2::sign(&pkg, n, &self.keys[id]).unwrap());
        }
        let sig = frost::aggregate(&pkg, &shares, &self.public).unwrap();
        let d = t.elapsed();
        black_box(sig);
        d
    }
}

/// The least a commit's cryptography can cost as the design stands (spec/consensus.md):
/// the bare FROST rounds, plus a device-signed vote from each of the fast quorum, each
/// vote checked by the gatherer, and at each other device the group signature and a
/// batch check of the votes. What `Peer`s spend above this is the implementation's
/// overhead; what this spends above bare FROST is the design's.
struct Floor {
    bare: Bare,
    voters: Vec<frost::SigningKey>,
    group: frost::VerifyingKey,
    n: usize,
}

impl Floor {
    fn new(n: u16, t: u16) -> Floor {
        let mut bare = Bare::new(n, t);
        let q = aura_proto::consensus::fast_quorum(n as usize, t);
        let voters = (0..q).map(|_| frost::SigningKey::new(&mut bare.rng)).collect();
        let group = *bare.public.verifying_key();
        Floor {
            bare,
            voters,
            group,
            n: n as usize,
        }
    }

    fn commit(&mut self, k: u64) -> Duration {
        let msg = format!("{:0>150}", format!("benchmark vote number {k:08}")).into_bytes();
        let mut d = Duration::ZERO;
        // The group signature, made by the bare rounds (not timed twice).
        let sig = {
            let msg = format!("{:0>150}", format!("benchmark statement number {k:08}")).into_bytes();
            let mut nonces = BTreeMap::new();
            let mut commitments = BTreeMap::new();
            let t = Instant::now();
            for (id, kp) in self.bare.keys.iter().take(self.bare.t) {
                let (n, c) = frost::round1::commit(kp.signing_share(), &mut self.bare.rng);
                nonces.insert(*id, n);
                commitments.insert(*id, c);
            }
            let pkg = frost::SigningPackage::new(commitments, &msg);
            let mut shares = BTreeMap::new();
            for (id, n) in &nonces {
                shares.insert(*id, frost::round2::sign(&pkg, n, &self.bare.keys[id]).unwrap());
            }
            let sig = frost::aggregate(&pkg, &shares, &self.bare.public).unwrap();
            d += t.elapsed();
            (sig, msg)
        };
        let t = Instant::now();
        let votes: Vec<(frost::VerifyingKey, frost::Signature)> = self
            .voters
            .iter()
            .map(|v| (v.into(), v.sign(&mut self.bare.rng, &msg)))
            .collect();
        for (vk, s) in &votes {
            vk.verify(&msg, s).unwrap();
        }
        for _ in 1..self.n {
            self.group.verify(&sig.1, &sig.0).unwrap();
            let mut batch = frost_core::batch::Verifier::<frost::Ristretto255Sha512>::new();
            for (vk, s) in &votes {
                batch.queue(frost_core::batch::Item::new(*vk, *s, &msg).unwrap());
            }
            batch.verify(&mut self.bare.rng).unwrap();
        }
        d += t.elapsed();
        black_box(votes);
        d
    }
}

/// Runs `aura` and `bare` interleaved (`iters` each per round, `rounds` rounds) and
/// describes the median ratio and times.
fn interleaved(
    rounds: usize,
    iters: usize,
    mut aura: impl FnMut(u64) -> Duration,
    mut bare: impl FnMut(u64) -> Duration,
) -> String {
    let (mut ratios, mut aura_us, mut bare_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut k = 0;
    for _ in 0..rounds {
        let (mut a, mut b) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..iters {
            k += 1;
            b += bare(k);
            a += aura(k);
        }
        let (a, b) = (a.as_secs_f64() / iters as f64, b.as_secs_f64() / iters as f64);
        aura_us.push(a * 1e6);
        bare_us.push(b * 1e6);
        ratios.push(a / b);
    }
    format!(
        "ratio {:.2}x  (Peer {:.0} us, bare frost {:.0} us)",
        median(ratios),
        median(aura_us),
        median(bare_us)
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn facts(n: usize) -> Vec<Fact> {
    let mut rng = PeerRng::from_seed([3; 32]);
    let ns = Namespace::Context(ContextId([1; 32]));
    (0..n)
        .map(|_| Fact {
            namespace: ns,
            lamport: rng.next_u64() % 1_000_000,
            author: DeviceId(rng.bytes32()),
            body: FactBody::Statement(rng.bytes32().to_vec()),
            sig: FactSig::Device(Sig64([7; 64])),
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 11 };
    let iters = if quick { 5 } else { 20 };
    println!("aura-proto authority benchmark ({rounds} rounds, medians; ratio = Aura / baseline)");
    for (n, t) in [(3usize, 2u16), (5, 3)] {
        let mut net = Net::authority(n, t);
        let mut bare = Bare::new(n as u16, t);
        let r = interleaved(rounds, iters, |k| net.sign(k), |k| bare.sign(k));
        println!("threshold signing {t}-of-{n} through Peers: {r}  target <= 1.3x");
    }
    // Consensus: a commit needs votes (device-signed, checked by the gatherer and by
    // every device that applies it) besides the FROST rounds. Two baselines: the bare
    // FROST rounds alone (the target), and the design's cryptographic floor.
    for (n, t) in [(3usize, 2u16), (5, 3), (7, 5)] {
        let mut net = Net::authority(n, t);
        let mut bare = Bare::new(n as u16, t);
        let mut floor = Floor::new(n as u16, t);
        let r = interleaved(rounds, iters.min(10), |_| net.commit(t), |k| bare.sign(k));
        println!("consensus commit {t}-of-{n} through Peers (all apply): {r}  target <= 1.3x");
        let r = interleaved(rounds, iters.min(10), |k| floor.commit(k), |k| bare.sign(k));
        println!(
            "  design floor {t}-of-{n} (FROST + votes + checks) against bare frost: {}",
            r.replace("Peer", "floor")
        );
        let r = interleaved(rounds, iters.min(10), |_| net.commit(t), |k| floor.commit(k));
        println!("  Peers against the design floor: {}", r.replace("bare frost", "floor"));
    }

    if std::env::args().any(|a| a == "--signing-only") {
        return;
    }
    let n = 100_000;
    let pool = facts(n);
    let mut source = Journal::new();
    for f in &pool {
        source.insert(f.clone());
    }
    let ns = Namespace::Context(ContextId([1; 32]));
    let keyed: Vec<_> = source.facts(&ns).map(|f| (f.order_key(), f.clone())).collect();
    // (1) into an empty journal; (2) into a journal that already holds every other fact.
    let mut half = Journal::new();
    for f in pool.iter().step_by(2) {
        half.insert(f.clone());
    }
    let half_keyed: BTreeMap<_, _> = half.facts(&ns).map(|f| (f.order_key(), f.clone())).collect();
    for (label, start, start_map) in [
        ("into an empty journal", Journal::new(), BTreeMap::new()),
        ("into a journal holding half of them", half, half_keyed),
    ] {
        let (mut ratios, mut j_ms, mut b_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut m = start_map.clone();
            let t = Instant::now();
            for (k, f) in &keyed {
                m.entry(*k).or_insert_with(|| f.clone());
            }
            let base = t.elapsed().as_secs_f64();
            assert_eq!(m.len(), keyed.len());
            black_box(m);
            let mut j = start.clone();
            let t = Instant::now();
            j.merge(&source);
            let jm = t.elapsed().as_secs_f64();
            assert_eq!(j.len(&ns), keyed.len());
            black_box(j);
            b_ms.push(base * 1e3);
            j_ms.push(jm * 1e3);
            ratios.push(jm / base);
        }
        println!(
            "journal merge of {} facts {label}: ratio {:.2}x  (Journal {:.1} ms, BTreeMap insert {:.1} ms)  target <= 2x",
            keyed.len(),
            median(ratios),
            median(j_ms),
            median(b_ms)
        );
    }
}
