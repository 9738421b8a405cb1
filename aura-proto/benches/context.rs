//! A 1 KiB application send through `Peer` in a relational context (the whole guard chain:
//! capability, flow budget with durable reservations, journal coupling, leakage, receipts
//! sealed and verified, egress record) against the same send between one's own devices
//! (the same channel path, unmetered: no reservation, charge or receipt) and against raw
//! snow sealing and opening 1 KiB, all in the same run, interleaved round by round.
//! Prints ratios (medians over rounds); absolute times are for orientation only.
//!
//! `cargo bench -p aura-proto --bench context [-- --quick]`

// A benchmark measures wall time by definition; the purity rules are for the core itself.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use aura_proto::journal::ContextId;
use aura_proto::{Command, Config, DeviceSecret, Event, Input, Now, Output, Peer};
use bytes::Bytes;

mod common;
use common::{median, snow_transport_pair};

const UNIX0: u64 = 1_790_000_000_000;

/// Four devices on an in-memory network; persists are acknowledged at once.
struct Net {
    peers: Vec<Peer>,
    wire: VecDeque<(usize, usize, Vec<u8>)>,
    events: Vec<(usize, Event)>,
    t_ns: u64,
}

impl Net {
    fn now(&self) -> Now {
        Now::from_parts(self.t_ns, UNIX0 + self.t_ns / 1_000_000)
    }

    fn drain(&mut self, i: usize) {
        let now = self.now();
        while let Some(o) = self.peers[i].poll_output() {
            match o {
                Output::Transmit { to, bytes } => {
                    let j: usize = to.strip_prefix('n').unwrap().parse().unwrap();
                    self.wire.push_back((i, j, bytes));
                }
                Output::Persist { ticket, .. } => self.peers[i].handle_input(now, Input::PersistDone(ticket)).unwrap(),
                Output::Event(e) => self.events.push((i, e)),
                Output::Egress(_) => {}
            }
        }
    }

    fn cmd(&mut self, i: usize, c: Command) {
        let now = self.now();
        self.peers[i].handle_input(now, Input::Command(c)).unwrap();
        self.drain(i);
    }

    fn run(&mut self) {
        while let Some((from, to, bytes)) = self.wire.pop_front() {
            let now = self.now();
            let from = format!("n{from}");
            self.peers[to]
                .handle_input(now, Input::Datagram { from, bytes })
                .unwrap();
            self.drain(to);
        }
    }

    fn advance(&mut self, ms: u64) {
        let end = self.t_ns + ms * 1_000_000;
        loop {
            let next = (0..4)
                .filter_map(|i| self.peers[i].poll_timeout().map(|t| (t.as_nanos(), i)))
                .min();
            match next {
                Some((t, i)) if t <= end => {
                    self.t_ns = self.t_ns.max(t);
                    let now = self.now();
                    self.peers[i].handle_input(now, Input::Timeout).unwrap();
                    self.drain(i);
                    self.run();
                }
                _ => break,
            }
        }
        self.t_ns = end;
    }

    fn code(&self, i: usize, context: bool) -> String {
        self.events
            .iter()
            .rev()
            .find_map(|(n, e)| match e {
                Event::InviteCreated { code, .. } if *n == i && !context => Some(code.clone()),
                Event::ContextInviteCreated { code, .. } if *n == i && context => Some(code.clone()),
                _ => None,
            })
            .unwrap()
    }
}

/// Devices 0+1 are one person, 2+3 another; each pair is a 2-of-2 authority; 0 and 2
/// share a context whose budgets never run out during the benchmark.
fn world() -> (Net, ContextId) {
    let cfg = Config {
        context_flow_limit: 1 << 40,
        ..Config::default()
    };
    let peers = (0..4u8)
        .map(|i| {
            Peer::new(
                cfg.clone(),
                DeviceSecret::from_bytes([i + 1; 32]),
                [i + 50; 32],
                Now::from_parts(0, UNIX0),
            )
        })
        .collect();
    let mut net = Net {
        peers,
        wire: VecDeque::new(),
        events: Vec::new(),
        t_ns: 0,
    };
    for (a, b) in [(0, 1), (2, 3)] {
        let addr_hint = format!("n{a}");
        net.cmd(
            a,
            Command::CreateInvite {
                valid_for: Duration::from_secs(3600),
                addr_hint,
            },
        );
        let code = net.code(a, false);
        net.cmd(b, Command::Join { code });
        net.run();
        let devices = vec![net.peers[b].id()];
        net.cmd(a, Command::CreateAuthority { devices, threshold: 2 });
        net.run();
    }
    net.advance(30_000);
    net.cmd(
        0,
        Command::CreateContextInvite {
            valid_for: Duration::from_secs(3600),
            addr_hint: "n0".into(),
        },
    );
    let code = net.code(0, true);
    net.cmd(2, Command::JoinContext { code });
    net.run();
    let ctx = net.peers[0].contexts()[0];
    assert_eq!(net.peers[2].contexts(), vec![ctx]);
    (net, ctx)
}

/// Sends `n` payloads from 0 to `to` (in the context or between own devices) and delivers
/// them; returns seconds per send. Time advances 1 ms per send, so idle seals and acks run
/// as they would.
fn sends(net: &mut Net, ctx: Option<ContextId>, to: usize, data: &Bytes, n: usize) -> f64 {
    let peer = net.peers[to].id();
    let t = Instant::now();
    for _ in 0..n {
        let c = match ctx {
            Some(context) => Command::ContextSend {
                context,
                peer,
                data: data.clone(),
            },
            None => Command::Send {
                peer,
                data: data.clone(),
            },
        };
        net.cmd(0, c);
        net.run();
        net.t_ns += 1_000_000;
    }
    net.advance(3_000);
    let per = t.elapsed().as_secs_f64() / n as f64;
    net.events.clear();
    per
}

// Separate, never inlined, so a profiler can tell the two paths apart.
#[inline(never)]
fn context_sends(net: &mut Net, ctx: ContextId, data: &Bytes, n: usize) -> f64 {
    sends(net, Some(ctx), 2, data, n)
}

#[inline(never)]
fn own_sends(net: &mut Net, data: &Bytes, n: usize) -> f64 {
    sends(net, None, 1, data, n)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 5 } else { 21 };
    let iters = if quick { 1_000 } else { 5_000 };
    let (mut net, ctx) = world();
    // A payload whose frame fills the 1 KiB bucket (4 flow units).
    let data = Bytes::from(vec![0xab; 1000]);
    // Warm both channels up.
    sends(&mut net, Some(ctx), 2, &data, 10);
    sends(&mut net, None, 1, &data, 10);
    let (raw_a, raw_b) = snow_transport_pair();
    let (mut vs_own, mut vs_raw, mut c_us, mut o_us, mut r_us) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut m, mut p) = (vec![0u8; 2048], vec![0u8; 2048]);
    let plain = vec![0xabu8; 1024];
    let mut nonce = 0u64;
    for _ in 0..rounds {
        let c = context_sends(&mut net, ctx, &data, iters);
        let o = own_sends(&mut net, &data, iters);
        let t = Instant::now();
        for _ in 0..iters {
            let n = raw_a.write_message(nonce, &plain, &mut m).unwrap();
            let k = raw_b.read_message(nonce, &m[..n], &mut p).unwrap();
            black_box(&p[..k]);
            nonce += 1;
        }
        let r = t.elapsed().as_secs_f64() / iters as f64;
        vs_own.push(c / o);
        vs_raw.push(c / r);
        c_us.push(c * 1e6);
        o_us.push(o * 1e6);
        r_us.push(r * 1e6);
    }
    let m0 = net.peers[0].metrics();
    let verified = net.peers[2].receipts_from(ctx, net.peers[0].id()).unwrap_or_default();
    println!("aura-proto context send benchmark ({rounds} rounds of {iters}, medians)");
    println!(
        "1 KiB send in a context (guard chain, reservations, receipts sealed+verified) vs the same \
         send between own devices (channel path, unmetered): ratio {:.2}x  target <= 1.25x",
        median(vs_own)
    );
    println!(
        "  context {:.2} us, own {:.2} us, raw snow seal+open 1 KiB {:.2} us (context vs raw {:.2}x)",
        median(c_us),
        median(o_us),
        median(r_us),
        median(vs_raw)
    );
    println!(
        "  reservations persisted: {}, receipts verified by the receiver: {} (sealed {})",
        m0.reserves, verified.0, verified.1
    );
}
