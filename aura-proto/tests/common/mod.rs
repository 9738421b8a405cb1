//! A minimal deterministic host for several peers (shared by the integration tests).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use aura_proto::*;
use bytes::Bytes;

pub const UNIX0: u64 = 1_790_000_000_000;

/// A minimal host: persists are acknowledged at once unless `hold_persist` is set.
pub struct Node {
    pub peer: Peer,
    pub addr: String,
    pub records: Vec<Record>,
    pub events: Vec<Event>,
    pub held: Vec<Ticket>,
    pub hold_persist: bool,
    pub secret: DeviceSecret,
    pub log: Vec<String>,
    /// Egress records, in order.
    pub egress: Vec<guard::Egress>,
    /// Durable flow reservations (from acknowledged `Reserve` records).
    pub reserved: std::collections::BTreeMap<(journal::ContextId, DeviceId, u64), u64>,
    /// Send numbers refused in this incarnation.
    pub denied: std::collections::BTreeSet<u64>,
}

pub struct Net {
    pub now_ns: u64,
    pub nodes: Vec<Node>,
    pub wire: VecDeque<(usize, String, Vec<u8>)>, // (from node, to addr, bytes)
    pub sent: Vec<(usize, Vec<u8>)>,
    pub drop_next: usize,
    /// Drop everything this node sends.
    pub drop_from: Option<usize>,
    /// Nodes cut off from the network (nothing reaches them or leaves them).
    pub cut: std::collections::BTreeSet<usize>,
    /// Feed every node a `Timeout` before each of its inputs when none is due (as a host
    /// whose timer fires early does), checking it has no effect.
    pub early_timeouts: bool,
}

pub fn now(ns: u64) -> Now {
    Now::from_parts(ns, UNIX0 + ns / 1_000_000)
}

impl Net {
    pub fn new(n: usize, cfgs: Vec<Config>) -> Net {
        let mut nodes = Vec::new();
        assert_eq!(cfgs.len(), n);
        for (i, cfg) in cfgs.into_iter().enumerate() {
            let secret = DeviceSecret::from_bytes([i as u8 + 1; 32]);
            let peer = Peer::new(cfg, secret.clone(), [i as u8 + 100; 32], now(0));
            nodes.push(Node {
                peer,
                addr: format!("n{i}"),
                records: vec![],
                events: vec![],
                held: vec![],
                hold_persist: false,
                secret,
                log: vec![],
                egress: vec![],
                reserved: Default::default(),
                denied: Default::default(),
            });
        }
        Net {
            now_ns: 0,
            nodes,
            wire: VecDeque::new(),
            sent: vec![],
            drop_next: 0,
            drop_from: None,
            cut: Default::default(),
            early_timeouts: false,
        }
    }

    pub fn drain(&mut self, i: usize) {
        loop {
            let Some(o) = self.nodes[i].peer.poll_output() else {
                break;
            };
            self.nodes[i].log.push(format!("{o:?}").chars().take(80).collect());
            let announced = matches!(self.nodes[i].log.iter().rev().nth(1), Some(l) if l.starts_with("Egress"));
            match o {
                Output::Egress(e) => {
                    // The guard chain's promises, checked on every egress of every test.
                    let n = &mut self.nodes[i];
                    assert!(!n.denied.contains(&e.seq), "node {i}: denied send #{} left", e.seq);
                    if e.cost > 0 {
                        let r = n
                            .reserved
                            .get(&(e.context, e.peer.unwrap(), e.epoch))
                            .copied()
                            .unwrap_or(0);
                        assert!(
                            e.spent <= r,
                            "node {i}: spent {} beyond a durable reservation of {r}",
                            e.spent
                        );
                    }
                    n.egress.push(e);
                }
                Output::Transmit { to, bytes } => {
                    assert!(announced, "node {i}: a transmit without its egress record");
                    self.sent.push((i, bytes.clone()));
                    if self.drop_from == Some(i) {
                    } else if self.drop_next > 0 {
                        self.drop_next -= 1;
                    } else {
                        self.wire.push_back((i, to, bytes));
                    }
                }
                Output::Persist { ticket, record } => {
                    let n = &mut self.nodes[i];
                    n.records.push(record.clone());
                    if n.hold_persist {
                        n.held.push(ticket);
                    } else {
                        if let Record::Reserve {
                            context,
                            peer,
                            epoch,
                            up_to,
                        } = record
                        {
                            let r = n.reserved.entry((context, peer, epoch)).or_default();
                            *r = (*r).max(up_to);
                        }
                        let t = now(self.now_ns);
                        n.peer.handle_input(t, Input::PersistDone(ticket)).unwrap();
                    }
                }
                Output::Event(e) => {
                    if let Event::SendDenied { seq, .. } = &e {
                        self.nodes[i].denied.insert(*seq);
                    }
                    self.nodes[i].events.push(e)
                }
            }
        }
    }

    pub fn input(&mut self, i: usize, input: Input) -> Result<(), CommandError> {
        let due = |p: &Peer, ns: u64| p.poll_timeout().is_some_and(|t| t.as_nanos() <= ns);
        if self.early_timeouts && !matches!(input, Input::Timeout) && !due(&self.nodes[i].peer, self.now_ns) {
            let p = &mut self.nodes[i].peer;
            p.handle_input(now(self.now_ns), Input::Timeout).unwrap();
            if let Some(o) = p.poll_output() {
                panic!("node {i}: a timeout before any deadline gave {o:?}");
            }
        }
        let r = self.nodes[i].peer.handle_input(now(self.now_ns), input);
        self.drain(i);
        r
    }

    pub fn cmd(&mut self, i: usize, c: Command) -> Result<(), CommandError> {
        self.input(i, Input::Command(c))
    }

    /// Delivers everything in flight (and whatever it causes).
    pub fn run(&mut self) {
        while let Some((from, to, bytes)) = self.wire.pop_front() {
            self.deliver(from, &to, bytes);
        }
    }

    /// Hands one datagram to its receiver, unless either side is cut off.
    fn deliver(&mut self, from: usize, to: &str, bytes: Vec<u8>) {
        let Some(j) = self.nodes.iter().position(|n| n.addr == to) else {
            return;
        };
        if self.cut.contains(&from) || self.cut.contains(&j) {
            return;
        }
        let from = self.nodes[from].addr.clone();
        self.input(j, Input::Datagram { from, bytes }).unwrap();
    }

    /// Delivers what is on the wire in waves (everything sent in answer to one wave is
    /// the next), without moving time, until `done` holds; returns the number of waves:
    /// message delays on a network where every hop takes the same time.
    pub fn waves_until(&mut self, done: impl Fn(&Net) -> bool) -> usize {
        let mut waves = 0;
        while !done(self) {
            let wave: Vec<_> = self.wire.drain(..).collect();
            assert!(
                !wave.is_empty() && waves < 100,
                "nothing left to deliver after {waves} waves"
            );
            waves += 1;
            for (from, to, bytes) in wave {
                self.deliver(from, &to, bytes);
            }
        }
        waves
    }

    /// Delivers waves until the wire is quiet.
    pub fn run_waves_while_any(&mut self) -> usize {
        self.run_waves_while_any_or(|_| false)
    }

    /// Delivers waves until the wire is quiet or `done` holds; returns the waves.
    pub fn run_waves_while_any_or(&mut self, done: impl Fn(&Net) -> bool) -> usize {
        let mut waves = 0;
        while !self.wire.is_empty() && !done(self) {
            waves += 1;
            self.wave();
        }
        waves
    }

    /// Delivers what is on the wire now (not what that sends).
    pub fn wave(&mut self) {
        let wave: Vec<_> = self.wire.drain(..).collect();
        for (from, to, bytes) in wave {
            self.deliver(from, &to, bytes);
        }
    }

    /// Advances time to `t` ms, firing due timers in order.
    pub fn advance_to_ms(&mut self, t_ms: u64) {
        let end = t_ms * 1_000_000;
        let mut spins = 0u32;
        loop {
            spins += 1;
            assert!(spins < 200_000, "a peer keeps asking for a timeout it does not act on");
            let next = (0..self.nodes.len())
                .filter_map(|i| self.nodes[i].peer.poll_timeout().map(|t| (t.as_nanos(), i)))
                .min();
            match next {
                Some((t, i)) if t <= end => {
                    self.now_ns = self.now_ns.max(t);
                    self.input(i, Input::Timeout).unwrap();
                    if let Some(next) = self.nodes[i].peer.poll_timeout() {
                        assert!(
                            next.as_nanos() > self.now_ns,
                            "node {i}: deadline did not move after a timeout"
                        );
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now_ns = self.now_ns.max(end);
    }

    pub fn invite(&mut self, i: usize) -> String {
        let addr = self.nodes[i].addr.clone();
        self.cmd(
            i,
            Command::CreateInvite {
                valid_for: Duration::from_secs(600),
                addr_hint: addr,
            },
        )
        .unwrap();
        self.nodes[i]
            .events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::InviteCreated { code, .. } => Some(code.clone()),
                _ => None,
            })
            .expect("invite created")
    }

    pub fn pair(&mut self, inviter: usize, joiner: usize) {
        let code = self.invite(inviter);
        self.cmd(joiner, Command::Join { code }).unwrap();
        self.run();
        assert!(
            self.paired(inviter, joiner),
            "pairing failed: {:?}",
            self.nodes[joiner].events
        );
    }

    pub fn paired(&self, a: usize, b: usize) -> bool {
        let id = |i: usize| self.nodes[i].peer.id();
        let b_addr = &self.nodes[b].addr;
        self.nodes[a]
            .events
            .iter()
            .any(|e| matches!(e, Event::Paired { peer, addr, .. } if *peer == id(b) && addr == b_addr))
            && self.nodes[b]
                .events
                .iter()
                .any(|e| matches!(e, Event::Paired { peer, .. } if *peer == id(a)))
    }

    pub fn id(&self, i: usize) -> DeviceId {
        self.nodes[i].peer.id()
    }

    pub fn drops(&self, i: usize, r: DropReason) -> u64 {
        self.nodes[i].peer.metrics().drops(r)
    }

    /// Feeds raw bytes to node `i` and returns which drop counter moved (exactly one must).
    pub fn inject(&mut self, i: usize, bytes: Vec<u8>) -> DropReason {
        let before = self.nodes[i].peer.metrics().clone();
        let n_ev = self.nodes[i].events.len();
        self.input(
            i,
            Input::Datagram {
                from: "attacker".into(),
                bytes,
            },
        )
        .unwrap();
        let after = self.nodes[i].peer.metrics().clone();
        assert_eq!(
            after.total_drops(),
            before.total_drops() + 1,
            "exactly one drop counted"
        );
        assert_eq!(self.nodes[i].events.len(), n_ev, "a dropped datagram raises no event");
        assert!(self.wire.is_empty(), "a dropped datagram causes no packet");
        *DropReason::ALL
            .iter()
            .find(|r| after.drops(**r) > before.drops(**r))
            .unwrap()
    }
}

pub fn received(n: &Node) -> Vec<Bytes> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::Received { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

pub fn default_net(n: usize) -> Net {
    Net::new(n, vec![Config::default(); n])
}

impl Net {
    /// Like `run`, but loses every `k`-th datagram.
    pub fn run_lossy(&mut self, k: usize) {
        let mut n = 0usize;
        while let Some((from, to, bytes)) = self.wire.pop_front() {
            n += 1;
            if n.is_multiple_of(k) {
                continue;
            }
            let Some(j) = self.nodes.iter().position(|x| x.addr == to) else {
                continue;
            };
            if self.cut.contains(&from) || self.cut.contains(&j) {
                continue;
            }
            let from = self.nodes[from].addr.clone();
            self.input(j, Input::Datagram { from, bytes }).unwrap();
        }
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `n` devices with secrets `[1; 32]`, `[2; 32]`, …, and the RNG that signed their certs.
pub fn test_devices(seed: u8, n: u8) -> (Vec<DeviceKeys>, aura_proto::rng::PeerRng) {
    let mut rng = aura_proto::rng::PeerRng::from_seed([seed; 32]);
    let devices = (1..=n)
        .map(|i| DeviceKeys::derive(&DeviceSecret::from_bytes([i; 32]), &mut rng))
        .collect();
    (devices, rng)
}

/// What a fact-encoding snapshot records: kind, id, size and the bytes.
pub fn encoding_text(f: &aura_proto::journal::Fact) -> String {
    let enc = f.encode();
    assert_eq!(aura_proto::journal::Fact::decode(&enc).as_ref(), Ok(f));
    format!(
        "kind: {}\nfact_id: {}\nbytes: {}\nencoding: {}",
        f.body.kind(),
        f.id().to_hex(),
        enc.len(),
        hex(&enc)
    )
}

// ----- authorities (shared by the authority and sync tests) -----

pub fn created(n: &Node) -> Option<(journal::AuthorityId, [u8; 32])> {
    n.events.iter().find_map(|e| match e {
        Event::AuthorityCreated {
            authority, group_key, ..
        } => Some((*authority, *group_key)),
        _ => None,
    })
}

/// Three devices paired through device 0, then a 2-of-3 authority.
pub fn authority_net(loss_every: Option<usize>) -> Net {
    let mut net = start_authority();
    match loss_every {
        None => net.run(),
        Some(k) => net.run_lossy(k),
    }
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    net
}

/// Replaces device `i`'s peer by one restored from its durable records (the first
/// `keep` of them), as after a crash: everything in memory is gone.
pub fn crash_and_restore(net: &mut Net, i: usize, keep: usize, seed: u8) {
    let n = &mut net.nodes[i];
    n.records.truncate(keep);
    n.held.clear();
    n.hold_persist = false;
    let d = Durable {
        secret: n.secret.clone(),
        records: n.records.clone(),
    };
    n.peer = Peer::restore(Config::default(), d, [seed; 32], now(net.now_ns));
    net.drain(i);
}

/// Three devices paired through device 0; device 0 asks for a 2-of-3 authority.
pub fn start_authority() -> Net {
    let mut net = default_net(3);
    net.pair(0, 1);
    net.pair(0, 2);
    ask_for_authority(&mut net);
    net
}

/// Device 0 asks for a 2-of-3 authority with devices 1 and 2.
pub fn ask_for_authority(net: &mut Net) {
    ask_for_authority_with(net, 2);
}

/// Device 0 asks for a `threshold`-of-3 authority with devices 1 and 2.
pub fn ask_for_authority_with(net: &mut Net, threshold: u16) {
    let (b, c) = (net.id(1), net.id(2));
    net.cmd(
        0,
        Command::CreateAuthority {
            devices: vec![b, c],
            threshold,
        },
    )
    .unwrap();
}

/// Statements device `n` had signed: (message, signature, group key).
pub fn signed(n: &Node) -> Vec<(Vec<u8>, [u8; 64], [u8; 32])> {
    n.events
        .iter()
        .filter_map(|e| match e {
            Event::Signed {
                message,
                signature,
                group_key,
                ..
            } => Some((message.clone(), *signature, *group_key)),
            _ => None,
        })
        .collect()
}

impl Net {
    /// Hands node `to` a sub-protocol message as if node `from` had sent it on their
    /// authenticated channel in `scope` (what a hostile or buggy device could send), then
    /// collects node `to`'s outputs.
    pub fn deliver_proto(&mut self, to: usize, from: usize, scope: journal::ContextId, msg: &authority::AuthMsg) {
        let bytes = wire::encode(msg);
        let from = self.id(from);
        fuzzing::deliver_proto(&mut self.nodes[to].peer, now(self.now_ns), from, scope, &bytes);
        self.drain(to);
    }
}

/// A fact of `ns` signed by device `keys` (what a member device writes).
pub fn device_fact(
    keys: &keys::DeviceKeys,
    ns: journal::Namespace,
    lamport: u64,
    body: journal::FactBody,
    r: &mut rng::PeerRng,
) -> journal::Fact {
    let msg = journal::Fact::signing_bytes(&ns, lamport, &keys.id, &body);
    journal::Fact {
        namespace: ns,
        lamport,
        author: keys.id,
        body,
        sig: journal::FactSig::Device(journal::Sig64(keys.sign(r, &msg))),
    }
}

/// Device `i` signs `text` with only the devices not in `cut` reachable: the signed
/// message and signature.
pub fn sign_with(net: &mut Net, i: usize, cut: &[usize], text: &[u8]) -> Option<(Vec<u8>, [u8; 64])> {
    net.cut = cut.iter().copied().collect();
    net.cmd(
        i,
        Command::Sign {
            statement: text.to_vec(),
        },
    )
    .unwrap();
    net.run();
    net.advance_to_ms(net.now_ns / 1_000_000 + 30_000);
    net.cut.clear();
    signed(&net.nodes[i])
        .into_iter()
        .find(|(m, _, _)| m.ends_with(text))
        .map(|(m, s, _)| (m, s))
}

/// Restores device `i` from `records` with a fixed seed and returns everything it does:
/// its outputs at once, and after its timers fire a minute later.
pub fn replay(net: &Net, i: usize, records: Vec<Record>) -> (Peer, Vec<Output>) {
    let d = Durable {
        secret: net.nodes[i].secret.clone(),
        records,
    };
    let t = net.now_ns;
    let mut p = Peer::restore(Config::default(), d, [77; 32], now(t));
    let mut out = Vec::new();
    let drain = |p: &mut Peer, out: &mut Vec<Output>, at: u64| {
        while let Some(o) = p.poll_output() {
            if let Output::Persist { ticket, .. } = &o {
                p.handle_input(now(at), Input::PersistDone(*ticket)).unwrap();
            }
            out.push(o);
        }
    };
    drain(&mut p, &mut out, t);
    for k in 1..=6 {
        let at = t + k * 10_000_000_000;
        p.handle_input(now(at), Input::Timeout).unwrap();
        drain(&mut p, &mut out, at);
    }
    (p, out)
}
