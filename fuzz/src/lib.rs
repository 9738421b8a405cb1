//! Fuzz target bodies, shared by the cargo-fuzz binaries and the corpus replay test (which
//! runs on stable Rust without libFuzzer).

use std::sync::OnceLock;
use std::time::Duration;

use aura_proto::wire::{self, InitPayload, RespPayload};
use aura_proto::{Command, Config, DeviceSecret, Durable, Event, Input, Invitation, Now, Output, Peer, Record};

/// Every decoder on arbitrary bytes: must return an error or a value that re-encodes to
/// exactly the input (strictness), never panic.
pub fn frame_decode(data: &[u8]) {
    let mut scratch = Vec::new();
    if let Ok(p) = wire::decode_packet(data, &mut scratch) {
        assert_eq!(wire::encode_packet(&p), data, "packet decode is not canonical");
    }
    if let Ok(f) = wire::unpad_frame(data, &mut scratch) {
        let mut re = Vec::new();
        wire::pad_frame(&f, &mut re).expect("a decoded frame re-encodes");
        assert_eq!(re, data, "frame decode is not canonical");
    }
    if let Ok(p) = wire::strict_decode::<InitPayload>(data, &mut scratch) {
        assert_eq!(wire::encode(&p), data);
    }
    if let Ok(p) = wire::strict_decode::<RespPayload>(data, &mut scratch) {
        assert_eq!(wire::encode(&p), data);
    }
    if let Ok(r) = Record::decode(data) {
        assert_eq!(r.encode(), data, "record decode is not canonical");
    }
    if let Ok(f) = aura_proto::journal::Fact::decode(data) {
        assert_eq!(f.encode(), data, "fact decode is not canonical");
        // Verification of arbitrary facts yields a typed answer, never a panic.
        let _ = aura_proto::journal::verify_fact(&f, &f.namespace, &aura_proto::authority::Views::default());
    }
    if let Ok(m) = wire::strict_decode::<aura_proto::authority::AuthMsg>(data, &mut scratch) {
        assert_eq!(wire::encode(&m), data, "sub-protocol message decode is not canonical");
    }
    // Messages inside channel frames (context joins, receipt accounting).
    aura_proto::fuzzing::inner_messages(data);
    // Reconciliation messages, as responder and as initiator over a small item set: a
    // typed error or an answer, never a panic, and never a frame over the limit.
    let items = sync_items();
    if let Ok(answer) = aura_proto::sync::respond(items, 4096, data) {
        assert!(answer.len() <= 4096, "reconciliation answer over the frame limit");
    }
    if let Ok(step) = aura_proto::sync::step(items, 4096, data) {
        assert!(step.reply.is_none_or(|r| r.len() <= 4096));
    }
    // Capability tokens as we parse them: any bytes give a typed error or a snapshot.
    let _ = aura_proto::caps::verify(data, &[7; 32]);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(inv) = Invitation::from_code(s) {
            // A code that parses must round-trip to the same invitation.
            assert_eq!(Invitation::from_code(&inv.to_code()), Ok(inv));
        }
    }
}

/// 300 items with spread-out clocks (enough for fingerprinted ranges and id lists).
pub fn sync_items() -> &'static [(u64, aura_proto::journal::FactId)] {
    static ITEMS: OnceLock<Vec<(u64, aura_proto::journal::FactId)>> = OnceLock::new();
    ITEMS.get_or_init(|| {
        (0..300u64)
            .map(|i| (i * 7 % 97, fact_id(i)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    })
}

const UNIX0: u64 = 1_790_000_000_000;

/// Records of a device `B` paired with a device `A` (computed once).
fn paired_records() -> &'static (Vec<Record>, Vec<Record>) {
    static R: OnceLock<(Vec<Record>, Vec<Record>)> = OnceLock::new();
    R.get_or_init(|| {
        let now = Now::from_parts(0, UNIX0);
        let mut a = Peer::new(Config::default(), DeviceSecret::from_bytes([1; 32]), [11; 32], now);
        let mut b = Peer::new(Config::default(), DeviceSecret::from_bytes([2; 32]), [12; 32], now);
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        a.handle_input(
            now,
            Input::Command(Command::CreateInvite {
                valid_for: Duration::from_secs(3600),
                addr_hint: "a".into(),
            }),
        )
        .unwrap();
        let mut code = None;
        let mut wire: Vec<(bool, Vec<u8>)> = Vec::new();
        let pump = |p: &mut Peer,
                    recs: &mut Vec<Record>,
                    to_b: bool,
                    wire: &mut Vec<(bool, Vec<u8>)>,
                    code: &mut Option<String>| {
            while let Some(o) = p.poll_output() {
                match o {
                    Output::Persist { ticket, record } => {
                        recs.push(record);
                        p.handle_input(now, Input::PersistDone(ticket)).unwrap();
                    }
                    Output::Transmit { bytes, .. } => wire.push((to_b, bytes)),
                    Output::Event(Event::InviteCreated { code: c, .. }) => *code = Some(c),
                    Output::Event(_) | Output::Egress(_) => {}
                }
            }
        };
        pump(&mut a, &mut ra, true, &mut wire, &mut code);
        b.handle_input(
            now,
            Input::Command(Command::Join {
                code: code.clone().unwrap(),
            }),
        )
        .unwrap();
        pump(&mut b, &mut rb, false, &mut wire, &mut code);
        while let Some((to_b, bytes)) = (!wire.is_empty()).then(|| wire.remove(0)) {
            if to_b {
                b.handle_input(
                    now,
                    Input::Datagram {
                        from: "a".into(),
                        bytes,
                    },
                )
                .unwrap();
                pump(&mut b, &mut rb, false, &mut wire, &mut code);
            } else {
                a.handle_input(
                    now,
                    Input::Datagram {
                        from: "b".into(),
                        bytes,
                    },
                )
                .unwrap();
                pump(&mut a, &mut ra, true, &mut wire, &mut code);
            }
        }
        assert!(
            rb.iter().any(|r| matches!(r, Record::Paired(_))),
            "fixture pairing failed"
        );
        (ra, rb)
    })
}

/// A paired peer fed arbitrary datagrams (and timeouts): it must never panic, and every
/// datagram that produced no event must be counted (as a drop or as handled traffic).
pub fn peer_datagrams(data: &[u8]) {
    let (ra, _) = paired_records();
    let mut now_ns = 0u64;
    let now = |ns: u64| Now::from_parts(ns, UNIX0 + ns / 1_000_000);
    let mut a = Peer::restore(
        Config::default(),
        Durable {
            secret: DeviceSecret::from_bytes([1; 32]),
            records: ra.clone(),
        },
        [21; 32],
        now(0),
    );
    while a.poll_output().is_some() {}
    // Input format: repeated [len_hi, len_lo, op, bytes...]; op 0 = datagram, 1 = timeout.
    let mut rest = data;
    while rest.len() >= 3 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let op = rest[2];
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let before = a.metrics().datagrams_in;
        if op.is_multiple_of(2) {
            a.handle_input(
                now(now_ns),
                Input::Datagram {
                    from: "x".into(),
                    bytes: chunk.to_vec(),
                },
            )
            .unwrap();
            assert_eq!(a.metrics().datagrams_in, before + 1);
        } else {
            now_ns += u64::from(op) * 100_000_000;
            a.handle_input(now(now_ns), Input::Timeout).unwrap();
        }
        while let Some(o) = a.poll_output() {
            if let Output::Transmit { bytes, .. } = o {
                assert!(bytes.len() <= wire::MAX_DATAGRAM);
            }
        }
    }
}

/// The whole simulator driven by fuzzer bytes: a seed, a device count and a schedule of
/// crashes, restarts, partitions, clogs, pauses and link changes. Every run must keep every invariant and,
/// once the schedule ends (everything healed and restarted), finish its workload. A failing
/// input is a reproducible schedule that `cargo fuzz tmin sim <file>` shrinks.
pub fn sim(data: &[u8]) {
    use aura_sim::{Action, SimConfig, World};
    let mut seed = [0u8; 8];
    for (i, b) in data.iter().take(8).enumerate() {
        seed[i] = *b;
    }
    let peers = 2 + data.get(8).map_or(1, |b| *b as usize % 4);
    let mut script = Vec::new();
    let mut t_end = 0u64;
    for c in data.get(9..).unwrap_or(&[]).chunks_exact(4).take(32) {
        let t = u16::from_be_bytes([c[0], c[1]]) as u64 * 10; // ms, up to ~11 minutes
        let arg = c[3] as usize;
        let action = match c[2] % 7 {
            0 => Action::Crash { node: arg % peers },
            1 => Action::Restart { node: arg % peers },
            2 => Action::Partition {
                a: vec![arg % peers],
                b: (0..peers).filter(|n| *n != arg % peers).collect(),
                one_way: arg & 0x80 != 0,
            },
            3 => Action::Heal,
            4 => Action::Clog {
                node: arg % peers,
                for_ms: (arg as u64 & 0x7f) * 40, // up to ~5 s
            },
            5 => Action::Pause {
                node: arg % peers,
                for_ms: (arg as u64 & 0x7f) * 40,
            },
            _ => Action::SetLink {
                loss_ppm: Some(c[3] as u32 * 3000),
                dup_ppm: None,
                reorder_ppm: None,
                min_delay_ms: None,
            },
        };
        t_end = t_end.max(t);
        script.push((std::time::Duration::from_millis(t), action));
    }
    // End of the schedule: heal, a clean link, every device back.
    let end = std::time::Duration::from_millis(t_end + 1);
    script.push((end, Action::Heal));
    script.push((
        end,
        Action::SetLink {
            loss_ppm: Some(0),
            dup_ppm: Some(0),
            reorder_ppm: Some(0),
            min_delay_ms: None,
        },
    ));
    for n in 0..peers {
        script.push((end, Action::Restart { node: n }));
    }
    let cfg = SimConfig {
        seed: u64::from_le_bytes(seed),
        peers,
        script,
        max_time: std::time::Duration::from_millis(t_end) + std::time::Duration::from_secs(300),
        ..SimConfig::default()
    };
    let mut w = World::new(cfg);
    if let Err(v) = w.run() {
        panic!(
            "invariant {} broke at event {}: {}",
            v.invariant, v.event_index, v.detail
        );
    }
    assert!(w.done(), "workload unfinished after the schedule ended: {:?}", w.stats);
}

/// A spread-out fact id from a number (the fuzz items and the corpus agree on them).
fn fact_id(i: u64) -> aura_proto::journal::FactId {
    let mut b = [0u8; 32];
    for (k, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(i + 1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(k as u32 * 13)
                .to_le_bytes(),
        );
    }
    aura_proto::journal::FactId(b)
}
