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

/// The fixture device whose secret is all ones, restored from `records` at time 0.
fn device_one(records: &[Record], seed: [u8; 32]) -> Peer {
    let durable = Durable {
        secret: DeviceSecret::from_bytes([1; 32]),
        records: records.to_vec(),
    };
    Peer::restore(Config::default(), durable, seed, Now::from_parts(0, UNIX0))
}

/// A paired peer fed arbitrary datagrams (and timeouts): it must never panic, and every
/// datagram that produced no event must be counted (as a drop or as handled traffic).
pub fn peer_datagrams(data: &[u8]) {
    let (ra, _) = paired_records();
    let mut now_ns = 0u64;
    let now = |ns: u64| Now::from_parts(ns, UNIX0 + ns / 1_000_000);
    let mut a = device_one(ra, [21; 32]);
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

fn mini_now() -> Now {
    Now::from_parts(0, UNIX0)
}

/// Three peers on an instant network (for building fixtures).
struct Mini {
    peers: Vec<Peer>,
    wire: std::collections::VecDeque<(usize, usize, Vec<u8>)>,
    records: Vec<Record>,
    code: Option<String>,
    created: usize,
}

impl Mini {
    fn pump(&mut self, i: usize) {
        while let Some(o) = self.peers[i].poll_output() {
            match o {
                Output::Persist { ticket, record } => {
                    if i == 0 {
                        self.records.push(record);
                    }
                    self.peers[i]
                        .handle_input(mini_now(), Input::PersistDone(ticket))
                        .unwrap();
                }
                Output::Transmit { to, bytes } => {
                    if let Some(j) = to.strip_prefix('n').and_then(|s| s.parse::<usize>().ok()) {
                        self.wire.push_back((i, j, bytes));
                    }
                }
                Output::Event(Event::InviteCreated { code, .. }) => self.code = Some(code),
                Output::Event(Event::AuthorityCreated { .. }) => self.created += 1,
                Output::Event(_) | Output::Egress(_) => {}
            }
        }
    }

    fn cmd(&mut self, i: usize, c: Command) {
        self.peers[i].handle_input(mini_now(), Input::Command(c)).unwrap();
        self.pump(i);
    }

    fn run(&mut self) {
        while let Some((from, to, bytes)) = self.wire.pop_front() {
            if to < self.peers.len() {
                let from = format!("n{from}");
                self.peers[to]
                    .handle_input(mini_now(), Input::Datagram { from, bytes })
                    .unwrap();
                self.pump(to);
            }
        }
    }
}

/// A 2-of-3 authority formed on an instant network (computed once): the durable records
/// of device 0, and the three device ids.
fn authority_fixture() -> &'static (Vec<Record>, Vec<aura_proto::DeviceId>) {
    static F: OnceLock<(Vec<Record>, Vec<aura_proto::DeviceId>)> = OnceLock::new();
    F.get_or_init(|| {
        let peers = (0..3u8)
            .map(|i| {
                Peer::new(
                    Config::default(),
                    DeviceSecret::from_bytes([i + 1; 32]),
                    [i + 31; 32],
                    mini_now(),
                )
            })
            .collect();
        let mut m = Mini {
            peers,
            wire: Default::default(),
            records: Vec::new(),
            code: None,
            created: 0,
        };
        for j in 1..3 {
            m.cmd(
                0,
                Command::CreateInvite {
                    valid_for: Duration::from_secs(3600),
                    addr_hint: "n0".into(),
                },
            );
            let code = m.code.take().expect("an invitation");
            m.cmd(j, Command::Join { code });
            m.run();
        }
        let devices = vec![m.peers[1].id(), m.peers[2].id()];
        m.cmd(0, Command::CreateAuthority { devices, threshold: 2 });
        m.run();
        assert_eq!(m.created, 3, "fixture authority not formed");
        (m.records, m.peers.iter().map(|p| p.id()).collect())
    })
}

/// Device 0 of a 2-of-3 authority fed arbitrary sub-protocol messages (consensus,
/// signing, sync) as if they came, authenticated, from its co-members or a stranger, with
/// timeouts in between: it must never panic or send an oversized datagram.
///
/// Input: repeated [who, len_hi, len_lo, bytes...]; `who` % 4 picks device 1, device 2,
/// a stranger, or (3) a timeout `len_lo` x 50 ms later with no bytes.
pub fn consensus_messages(data: &[u8]) {
    let (records, ids) = authority_fixture();
    let mut now_ns = 0u64;
    let now = |ns: u64| Now::from_parts(ns, UNIX0 + ns / 1_000_000);
    let mut a = device_one(records, [41; 32]);
    let stranger = aura_proto::DeviceId([7; 32]);
    let mut rest = data;
    while rest.len() >= 3 {
        let (who, len) = (rest[0] % 4, u16::from_be_bytes([rest[1], rest[2]]) as usize);
        rest = &rest[3..];
        if who == 3 {
            now_ns += (len as u64 & 0xff) * 50_000_000;
            a.handle_input(now(now_ns), Input::Timeout).unwrap();
        } else {
            let take = len.min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let from = [ids[1], ids[2], stranger][who as usize];
            aura_proto::fuzzing::deliver_proto(&mut a, now(now_ns), from, aura_proto::journal::ContextId::OWN, chunk);
        }
        while let Some(o) = a.poll_output() {
            match o {
                Output::Transmit { bytes, .. } => assert!(bytes.len() <= wire::MAX_DATAGRAM),
                Output::Persist { ticket, .. } => a.handle_input(now(now_ns), Input::PersistDone(ticket)).unwrap(),
                _ => {}
            }
        }
    }
}

/// Seeds for `consensus_messages`: consensus messages that reach deep into the handlers
/// (a proposal from device 1 for device 0's real state, a prepare from the owner of
/// ballot 1, a promise and a vote), each framed as the target reads them.
pub fn consensus_seeds() -> Vec<Vec<u8>> {
    use aura_proto::authority::{AuthMsg, AuthorityView};
    use aura_proto::consensus::{consensus_id, coordinator, op_hash, Proposal};
    let (records, ids) = authority_fixture();
    let a = device_one(records, [41; 32]);
    let view: &AuthorityView = a.authority().expect("the fixture's authority");
    let prestate = view.prestate();
    let members: std::collections::BTreeSet<_> = view.members.keys().copied().collect();
    let owner = coordinator(&members, &prestate, 1).unwrap();
    let who = |d: aura_proto::DeviceId| ids.iter().position(|x| *x == d).unwrap_or(2).min(2) as u8;
    let op = wire::encode(&aura_proto::journal::TreeOpKind::ChangeThreshold(2));
    let proposal = Proposal {
        id: consensus_id(&prestate, &op_hash(&op), &[3; 32]),
        prestate,
        op,
        nonce: [3; 32],
        proposer: ids[1],
    };
    let frame = |who: u8, m: &AuthMsg| {
        let b = wire::encode(m);
        let mut out = vec![who];
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(&b);
        out
    };
    let tick = [3u8, 0, 10];
    let propose = frame(0, &AuthMsg::Propose(proposal.clone()));
    let prepare = frame(who(owner).saturating_sub(1), &AuthMsg::Prepare { prestate, ballot: 1 });
    let accept = frame(who(owner).saturating_sub(1), &AuthMsg::Accept { ballot: 1, proposal });
    // Enrollment: member 1 asks this device and itself to repair member 2's share; its
    // part follows.
    let ident = |d: &aura_proto::DeviceId| view.members[d].identifier;
    let mut helpers = vec![ident(&ids[0]), ident(&ids[1])];
    helpers.sort();
    let session = aura_proto::authority::enroll_session(&view.id, &ids[1], &ids[2], &helpers, &[5; 32]);
    let start = frame(
        0,
        &AuthMsg::EnrollStart {
            session,
            nonce: [5; 32],
            authority: view.id,
            newcomer: ids[2],
            helpers,
        },
    );
    let delta = frame(
        0,
        &AuthMsg::EnrollDelta {
            session,
            from: ident(&ids[1]),
            delta: vec![1; 32],
        },
    );
    let ask = frame(0, &AuthMsg::EnrollAsk { authority: view.id });
    // A refresh started by member 1 for the whole member set.
    let mut all: Vec<u16> = view.members.values().map(|m| m.identifier).collect();
    all.sort();
    let refresh = frame(
        0,
        &AuthMsg::RefreshStart {
            session: aura_proto::authority::refresh_session(&view.id, &ids[1], &view.share_base(), &all, &[6; 32]),
            nonce: [6; 32],
            authority: view.id,
            base: view.share_base(),
            members: all,
        },
    );
    vec![
        [start, delta, tick.to_vec()].concat(),
        [ask, tick.to_vec()].concat(),
        [refresh, tick.to_vec()].concat(),
        propose.clone(),
        [propose.clone(), tick.to_vec(), prepare.clone()].concat(),
        [prepare, accept, tick.to_vec(), tick.to_vec()].concat(),
        [propose, tick.to_vec(), tick.to_vec(), tick.to_vec()].concat(),
    ]
}

/// What the shell parses: the record log (entries, then records in them), control
/// requests from the local socket, and audit ledger lines. Never a panic; a log scan
/// keeps exactly a prefix of whole, checksummed entries.
pub fn shell_parsers(data: &[u8]) {
    use aura_shell_smol::store::{encode_entry, scan_entries};
    let (entries, cut) = scan_entries(data);
    let kept: Vec<u8> = entries.iter().flat_map(|p| encode_entry(p)).collect();
    assert_eq!(&data[..kept.len()], &kept[..], "a scan keeps a prefix of the log");
    match cut {
        None => assert_eq!(kept.len(), data.len(), "a clean scan covers the whole log"),
        Some((at, _)) => assert_eq!(at, kept.len(), "the cut is where the kept prefix ends"),
    }
    for p in entries {
        if let Ok(r) = Record::decode(p) {
            assert_eq!(r.encode(), p);
        }
    }
    if let Ok(req) = serde_json::from_slice::<aura_shell_smol::control::Request>(data) {
        // What parses re-serializes and parses to the same request.
        let again = serde_json::to_vec(&req).expect("requests serialize");
        assert_eq!(
            serde_json::from_slice::<aura_shell_smol::control::Request>(&again).ok(),
            Some(req)
        );
    }
    let _ = serde_json::from_slice::<aura_shell_smol::audit::Entry>(data);
}
