//! Regenerates the seed corpus: `cargo test --manifest-path fuzz/Cargo.toml -- --ignored`.
//! Seeds are real protocol bytes, so the fuzzer starts deep inside the decoders.

use std::path::Path;
use std::time::Duration;

use aura_proto::wire::{self, Frame};
use aura_proto::{Command, Config, DeviceSecret, Event, Input, Now, Output, Peer};

fn write(target: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let name = blake3::hash(data).to_hex()[..16].to_string();
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
#[ignore]
fn generate_seed_corpus() {
    let now = Now::from_parts(0, 1_790_000_000_000);
    let mut a = Peer::new(Config::default(), DeviceSecret::from_bytes([1; 32]), [3; 32], now);
    let mut b = Peer::new(Config::default(), DeviceSecret::from_bytes([2; 32]), [4; 32], now);
    a.handle_input(
        now,
        Input::Command(Command::CreateInvite {
            valid_for: Duration::from_secs(60),
            addr_hint: "a".into(),
        }),
    )
    .unwrap();
    let mut datagrams = Vec::new();
    let mut code = String::new();
    let mut queue: Vec<(bool, Vec<u8>)> = Vec::new();
    let drain = |p: &mut Peer, to_b: bool, queue: &mut Vec<(bool, Vec<u8>)>, code: &mut String| {
        while let Some(o) = p.poll_output() {
            match o {
                Output::Persist { ticket, record } => {
                    write("frame_decode", &record.encode());
                    p.handle_input(now, Input::PersistDone(ticket)).unwrap();
                }
                Output::Transmit { bytes, .. } => queue.push((to_b, bytes)),
                Output::Event(Event::InviteCreated { code: c, .. }) => *code = c,
                Output::Event(_) | Output::Egress(_) => {}
            }
        }
    };
    drain(&mut a, true, &mut queue, &mut code);
    write("frame_decode", code.as_bytes());
    b.handle_input(now, Input::Command(Command::Join { code: code.clone() }))
        .unwrap();
    drain(&mut b, false, &mut queue, &mut code);
    let mut sent_ping = false;
    while !queue.is_empty() {
        let (to_b, bytes) = queue.remove(0);
        datagrams.push(bytes.clone());
        if to_b {
            b.handle_input(
                now,
                Input::Datagram {
                    from: "a".into(),
                    bytes,
                },
            )
            .unwrap();
            drain(&mut b, false, &mut queue, &mut code);
        } else {
            a.handle_input(
                now,
                Input::Datagram {
                    from: "b".into(),
                    bytes,
                },
            )
            .unwrap();
            drain(&mut a, true, &mut queue, &mut code);
        }
        if queue.is_empty() && !sent_ping {
            sent_ping = true;
            let id = a.id();
            b.handle_input(now, Input::Command(Command::Ping { peer: id })).unwrap();
            b.handle_input(
                now,
                Input::Command(Command::Send {
                    peer: id,
                    data: bytes::Bytes::from_static(b"hi"),
                }),
            )
            .unwrap();
            drain(&mut b, false, &mut queue, &mut code);
        }
    }
    let mut seq = Vec::new();
    for d in &datagrams {
        write("frame_decode", d);
        let mut one = (d.len() as u16).to_be_bytes().to_vec();
        one.push(0);
        one.extend_from_slice(d);
        write("peer_datagrams", &one);
        seq.extend_from_slice(&one);
    }
    seq.extend_from_slice(&[0, 0, 7]); // a timeout
    write("peer_datagrams", &seq);
    let mut plain = Vec::new();
    for f in [
        Frame::Confirm,
        Frame::Keepalive,
        Frame::Ping { id: 7 },
        Frame::App { data: b"hello" },
    ] {
        wire::pad_frame(&f, &mut plain).unwrap();
        write("frame_decode", &plain);
    }
    for m in aura_proto::fuzzing::inner_message_samples() {
        write("frame_decode", &m);
    }
    // Reconciliation: a first message over a set of 300 ids, and the sub-protocol
    // messages anti-entropy adds.
    let items = aura_fuzz::sync_items();
    write(
        "frame_decode",
        &aura_proto::sync::initiate(&items[..150], 4096).unwrap(),
    );
    write(
        "frame_decode",
        &wire::encode(&aura_proto::authority::AuthMsg::Delivered {
            ids: vec![items[0].1, items[1].1],
        }),
    );
    // A context epoch carried into a context journal: a group-signed commit of an
    // epoch change inside a device-signed fact (signatures are placeholders; the
    // decoders and the structural checks are what the fuzzer should reach).
    {
        use aura_proto::journal::*;
        let keys = aura_proto::keys::DeviceKeys::derive(
            &DeviceSecret::from_bytes([9; 32]),
            &mut aura_proto::rng::PeerRng::from_seed([9; 32]),
        );
        let ctx = ContextId([5; 32]);
        let op = ContextEpochOp {
            context: ctx,
            epoch: 1,
            members: vec![ContextMember {
                authority: AuthorityId([6; 32]),
                cert: keys.cert.clone(),
                addr: "a".into(),
            }],
            sealed: vec![SealedSecret {
                to: keys.id,
                epoch: 1,
                enc: [7; 32],
                ciphertext: vec![8; 48],
            }],
            commitment: [9; 32],
        };
        let commit = Fact {
            namespace: Namespace::Authority(AuthorityId([6; 32])),
            lamport: 3,
            author: keys.id,
            body: FactBody::Commit(aura_proto::consensus::Commit {
                id: aura_proto::consensus::ConsensusId([1; 32]),
                prestate: [2; 32],
                op: wire::encode(&TreeOpKind::ContextEpoch(op)),
                votes: vec![],
            }),
            sig: FactSig::Group(Sig64([0; 64])),
        };
        write("frame_decode", &commit.encode());
        let carried = Fact {
            namespace: Namespace::Context(ctx),
            lamport: 4,
            author: keys.id,
            body: FactBody::ContextEpoch(commit.encode()),
            sig: FactSig::Device(Sig64([0; 64])),
        };
        write("frame_decode", &carried.encode());
    }
    // Consensus: a proposal, a vote, and the fallback ballot's messages.
    {
        use aura_proto::authority::AuthMsg;
        use aura_proto::consensus::{consensus_id, op_hash, Proposal, Vote};
        let op = wire::encode(&aura_proto::journal::TreeOpKind::ChangeThreshold(2));
        let proposal = Proposal {
            id: consensus_id(&[3; 32], &op_hash(&op), &[4; 32]),
            prestate: [3; 32],
            op: op.clone(),
            nonce: [4; 32],
            proposer: aura_proto::DeviceId([5; 32]),
        };
        let vote = Vote {
            id: proposal.id,
            prestate: proposal.prestate,
            op: op_hash(&op),
            ballot: 2,
            voter: aura_proto::DeviceId([6; 32]),
            sig: aura_proto::journal::Sig64([7; 64]),
        };
        for m in [
            AuthMsg::Propose(proposal.clone()),
            AuthMsg::Voted { vote: vote.clone() },
            AuthMsg::Prepare {
                prestate: [3; 32],
                ballot: 3,
            },
            AuthMsg::Promise {
                prestate: [3; 32],
                ballot: 3,
                last: Some((vote.clone(), proposal.clone())),
                cert: aura_proto::consensus::PromiseCert {
                    prestate: [3; 32],
                    ballot: 3,
                    last: Some((vote.ballot, vote.id)),
                    voter: vote.voter,
                    sig: aura_proto::journal::Sig64([8; 64]),
                },
            },
            AuthMsg::AcceptSigned {
                ballot: 3,
                proposal: proposal.clone(),
                lamport: 9,
                commitments: vec![(1, vec![2; 66]), (2, vec![3; 66])],
            },
            AuthMsg::VoteSigned {
                vote: vote.clone(),
                share: Some(vec![4; 32]),
                next: Some(vec![5; 66]),
            },
            AuthMsg::CommitShare {
                id: proposal.id,
                share: vec![4; 32],
                next: None,
                package: [6; 32],
            },
            AuthMsg::Accept { ballot: 3, proposal },
            AuthMsg::EnrollAsk {
                authority: aura_proto::journal::AuthorityId([1; 32]),
            },
            AuthMsg::EnrollStart {
                session: [2; 32],
                nonce: [9; 32],
                authority: aura_proto::journal::AuthorityId([1; 32]),
                newcomer: aura_proto::DeviceId([3; 32]),
                helpers: vec![1, 2],
            },
            AuthMsg::EnrollDelta {
                session: [2; 32],
                from: 1,
                delta: vec![4; 32],
            },
            AuthMsg::EnrollSigma {
                session: [2; 32],
                from: 2,
                enc: [5; 32],
                sealed: vec![6; 48],
            },
            AuthMsg::Enroll {
                session: [2; 32],
                authority: aura_proto::journal::AuthorityId([1; 32]),
                sigmas: vec![(1, [5; 32], vec![6; 48]), (2, [7; 32], vec![8; 48])],
            },
            AuthMsg::EnrollDone { session: [2; 32] },
            AuthMsg::RefreshStart {
                session: [3; 32],
                nonce: [4; 32],
                authority: aura_proto::journal::AuthorityId([1; 32]),
                base: [5; 32],
                members: vec![1, 2, 3],
            },
            AuthMsg::RefreshRound1 {
                session: [3; 32],
                from: 2,
                package: vec![6; 100],
            },
            AuthMsg::RefreshRound2 {
                session: [3; 32],
                from: 3,
                package: vec![7; 40],
            },
            AuthMsg::RefreshDone {
                session: [3; 32],
                from: 1,
                shares: vec![(1, [8; 32]), (2, [9; 32]), (3, [10; 32])],
                sig: aura_proto::journal::Sig64([11; 64]),
            },
        ] {
            write("frame_decode", &wire::encode(&m));
        }
    }
    for seed in aura_fuzz::consensus_seeds() {
        write("consensus_messages", &seed);
    }
    write("consensus_messages", b"");
    write("frame_decode", b"");
    write("frame_decode", &[wire::WIRE_VERSION, 2, 0x87, 0x00, 1, 0]);
    write("peer_datagrams", b"");
}

#[test]
#[ignore]
fn generate_shell_corpus() {
    use aura_proto::Record;
    use aura_shell_smol::store::encode_entry;
    let records = [
        Record::NonceCounter(256),
        Record::Capability(vec![1, 2, 3]),
        Record::ContextJoinDone([9; 32]),
    ];
    let log: Vec<u8> = records.iter().flat_map(|r| encode_entry(&r.encode())).collect();
    write("shell_parsers", &log);
    write("shell_parsers", &log[..log.len() - 3]);
    let requests = [
        r#"{"cmd":"status"}"#,
        r#"{"cmd":"sign","text":"hello"}"#,
        r#"{"cmd":"bench_echo","peer":"ab12","count":10,"size":1024,"window":4}"#,
        r#"{"cmd":"sync","peer":null}"#,
        r#"{"cmd":"invite","valid_for_s":600,"addr":"127.0.0.1:4100"}"#,
    ];
    for r in requests {
        write("shell_parsers", r.as_bytes());
    }
    let line = r#"{"unix_ms":1790000000000,"peer":"ab","addr":"127.0.0.1:1","context":"own","epoch":0,"kind":"control","bucket":256,"cost":1,"leakage":[0,1,0]}"#;
    write("shell_parsers", line.as_bytes());
}
