//! Context epochs: an authority agrees (by consensus) on a new secret for a context and
//! its current devices; every member moves, one that missed it catches up, a removed
//! device is shut out and an added one is let in. Reducer rules for the carried commit
//! are in the second half.

mod common;

use std::time::Duration;

use aura_proto::journal::ContextId;
use aura_proto::record::Record;
use aura_proto::*;
use bytes::Bytes;
use common::*;

/// Devices 0-2 form authority A (2-of-3), device 3 is paired with 0 but not in A;
/// devices 4 and 5 form authority B (2-of-2). Device 0 invites 4 into a context.
fn world() -> (Net, ContextId) {
    let mut net = default_net(6);
    for j in 1..4 {
        net.pair(0, j);
    }
    net.pair(4, 5);
    ask_for_authority(&mut net);
    let five = net.id(5);
    net.cmd(
        4,
        Command::CreateAuthority {
            devices: vec![five],
            threshold: 2,
        },
    )
    .unwrap();
    net.run();
    settle(&mut net, 30);
    for i in [0, 1, 2, 4, 5] {
        assert!(net.nodes[i].peer.authority().is_some(), "device {i}");
    }
    let addr = net.nodes[0].addr.clone();
    net.cmd(
        0,
        Command::CreateContextInvite {
            valid_for: Duration::from_secs(600),
            addr_hint: addr,
        },
    )
    .unwrap();
    let code = net.nodes[0]
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::ContextInviteCreated { code, .. } => Some(code.clone()),
            _ => None,
        })
        .unwrap();
    net.cmd(4, Command::JoinContext { code }).unwrap();
    net.run();
    settle(&mut net, 10);
    let ctx = net.nodes[0].peer.contexts()[0];
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(net.nodes[i].peer.contexts(), vec![ctx], "device {i}");
    }
    (net, ctx)
}

fn settle(net: &mut Net, secs: u64) {
    net.advance_to_ms(net.now_ns / 1_000_000 + secs * 1000);
}

fn epoch(net: &Net, i: usize, ctx: ContextId) -> Option<u64> {
    net.nodes[i].peer.context(&ctx).map(|v| v.epoch)
}

fn received(net: &Net, i: usize, ctx: ContextId) -> Vec<Bytes> {
    net.nodes[i]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ContextReceived { context, data, .. } if *context == ctx => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// `from` sends `data` to `to` in `ctx`; whether `to` got it.
fn talk(net: &mut Net, from: usize, to: usize, ctx: ContextId, data: &'static [u8]) -> bool {
    let peer = net.id(to);
    net.cmd(
        from,
        Command::ContextSend {
            context: ctx,
            peer,
            data: Bytes::from_static(data),
        },
    )
    .unwrap();
    net.run();
    settle(net, 2);
    received(net, to, ctx).iter().any(|d| d.as_ref() == data)
}

#[test]
fn a_rekey_moves_every_device_to_one_new_secret() {
    let (mut net, ctx) = world();
    let a = net.nodes[0].peer.authority().unwrap().id;
    let b = net.nodes[4].peer.authority().unwrap().id;
    net.cmd(1, Command::RekeyContext { context: ctx }).unwrap();
    net.run();
    settle(&mut net, 10);
    for i in [0, 1, 2, 4, 5] {
        let v = net.nodes[i].peer.context(&ctx).unwrap_or_else(|| panic!("device {i}"));
        assert_eq!(v.epoch, 1, "device {i}");
        assert_eq!(v.decided.as_ref().map(|d| d.authority), Some(a));
        assert!(net.nodes[i]
            .events
            .iter()
            .any(|e| matches!(e, Event::ContextEpochChanged { context, epoch: 1 } if *context == ctx)));
        // No channel of the old epoch is left.
        assert!(net.nodes[i]
            .peer
            .channels()
            .iter()
            .all(|c| c.context != ctx || c.epoch == 1));
    }
    // One commit, carried into the context journal once (by the device that gathered it).
    let carried = net.nodes[4]
        .peer
        .journal()
        .facts(&journal::Namespace::Context(ctx))
        .filter(|f| matches!(f.body, journal::FactBody::ContextEpoch(_)))
        .count();
    assert_eq!(carried, 1);
    // Both people talk under the new secret (a channel's keys come from it: a device
    // that opened another secret could not complete a handshake).
    assert!(talk(&mut net, 2, 5, ctx, b"a to b in epoch 1"));
    assert!(talk(&mut net, 4, 1, ctx, b"b to a in epoch 1"));
    // The other authority decides the next one.
    net.cmd(5, Command::RekeyContext { context: ctx }).unwrap();
    net.run();
    settle(&mut net, 10);
    for i in [0, 1, 2, 4, 5] {
        let v = net.nodes[i].peer.context(&ctx).unwrap();
        assert_eq!(
            (v.epoch, v.decided.as_ref().map(|d| d.authority)),
            (2, Some(b)),
            "device {i}"
        );
    }
    assert!(talk(&mut net, 0, 4, ctx, b"epoch 2"));
    // A restart keeps the epoch and its secret.
    let keep = net.nodes[1].records.len();
    crash_and_restore(&mut net, 1, keep, 91);
    net.run();
    assert_eq!(epoch(&net, 1, ctx), Some(2));
    assert!(talk(&mut net, 1, 5, ctx, b"after restart"));
}

#[test]
fn a_member_that_missed_the_change_catches_up() {
    let (mut net, ctx) = world();
    // A few epochs first (more than the secrets a device keeps), by both authorities.
    for (k, who) in [0usize, 4, 1, 5].into_iter().enumerate() {
        net.cmd(who, Command::RekeyContext { context: ctx }).unwrap();
        net.run();
        settle(&mut net, 10);
        assert_eq!(epoch(&net, 0, ctx), Some(k as u64 + 1), "round {k}");
        assert_eq!(epoch(&net, 4, ctx), Some(k as u64 + 1), "round {k}");
    }
    // B's devices are away while A changes the epoch.
    net.cut.insert(4);
    net.cut.insert(5);
    net.cmd(0, Command::RekeyContext { context: ctx }).unwrap();
    net.run();
    settle(&mut net, 10);
    assert_eq!(epoch(&net, 0, ctx), Some(5));
    assert_eq!(epoch(&net, 4, ctx), Some(4));
    net.cut.clear();
    // B still holds only the old secret; it reaches A with it, and that channel
    // carries anti-entropy only, enough to learn the change.
    assert!(talk(&mut net, 4, 0, ctx, b"from behind"));
    settle(&mut net, 20);
    for i in [4, 5] {
        assert_eq!(epoch(&net, i, ctx), Some(5), "device {i}");
    }
    assert!(received(&net, 0, ctx).iter().any(|d| d.as_ref() == b"from behind"));
    assert!(talk(&mut net, 0, 5, ctx, b"caught up"));
}

#[test]
fn a_removed_device_is_shut_out_of_the_context() {
    let (mut net, ctx) = world();
    let gone = net.id(2);
    net.cmd(0, Command::RemoveDevice { device: gone }).unwrap();
    net.run();
    settle(&mut net, 60);
    let a = net.nodes[0].peer.authority().unwrap().clone();
    assert!(!a.members.contains_key(&gone));
    // A rekeyed by itself: the new epoch lists A's two remaining devices, and its
    // secret is sealed to nobody else.
    for i in [0, 1, 4, 5] {
        let v = net.nodes[i].peer.context(&ctx).unwrap_or_else(|| panic!("device {i}"));
        assert!(v.epoch >= 1, "device {i}");
        assert!(!v.members.contains_key(&gone));
        assert!(!v.sealed_to.contains(&gone));
        assert_eq!(v.members.values().filter(|m| m.authority == a.id).count(), 2);
    }
    assert!(talk(&mut net, 4, 1, ctx, b"still talking"));
    // The removed device is out: no context, and its sends are refused here.
    assert!(net.nodes[2].peer.contexts().is_empty());
    let to = net.id(4);
    assert!(net.nodes[2]
        .peer
        .handle_input(
            now(net.now_ns),
            Input::Command(Command::ContextSend {
                context: ctx,
                peer: to,
                data: Bytes::from_static(b"let me in"),
            })
        )
        .is_err());
    assert!(!received(&net, 4, ctx).iter().any(|d| d.as_ref() == b"let me in"));
}

#[test]
fn an_added_device_is_let_into_the_context() {
    let (mut net, ctx) = world();
    let newcomer = net.id(3);
    net.cmd(0, Command::AddDevice { device: newcomer }).unwrap();
    net.run();
    settle(&mut net, 60);
    assert!(net.nodes[3].peer.authority().is_some());
    for i in [0, 1, 2, 3, 4, 5] {
        let v = net.nodes[i].peer.context(&ctx).unwrap_or_else(|| panic!("device {i}"));
        assert!(v.epoch >= 1, "device {i}");
        assert!(v.members.contains_key(&newcomer), "device {i}");
    }
    assert!(talk(&mut net, 3, 4, ctx, b"newcomer to b"));
    assert!(talk(&mut net, 5, 3, ctx, b"b to newcomer"));
}

#[test]
fn a_lost_device_can_still_be_removed_while_an_added_one_joins_the_context() {
    // Device 2 is lost for good. Device 3 is added (it holds no context yet, so it
    // cannot judge the rekey that follows): the authority must still agree on changes.
    let (mut net, ctx) = world();
    net.cut.insert(2);
    let (newcomer, lost) = (net.id(3), net.id(2));
    net.cmd(0, Command::AddDevice { device: newcomer }).unwrap();
    net.run();
    settle(&mut net, 90);
    assert!(net.nodes[0].peer.authority().unwrap().members.contains_key(&newcomer));
    let mut removed = false;
    for _ in 0..10 {
        if net.nodes[0].peer.authority().unwrap().members.contains_key(&lost) {
            let _ = net.cmd(0, Command::RemoveDevice { device: lost });
            net.run();
            settle(&mut net, 30);
        } else {
            removed = true;
            break;
        }
    }
    assert!(removed, "the lost device was never removed");
    settle(&mut net, 120);
    for i in [0, 1, 3, 4, 5] {
        let v = net.nodes[i].peer.context(&ctx).unwrap_or_else(|| panic!("device {i}"));
        assert!(
            v.members.contains_key(&newcomer) && !v.members.contains_key(&lost),
            "device {i}"
        );
        assert!(!v.sealed_to.contains(&lost), "device {i}");
    }
    assert!(talk(&mut net, 3, 4, ctx, b"from the newcomer"));
}

#[test]
fn members_refuse_epoch_changes_out_of_turn_far_ahead_or_sealed_wrong() {
    use aura_proto::authority::AuthMsg;
    use aura_proto::consensus::{consensus_id, op_hash, Proposal};
    use aura_proto::journal::{ContextEpochOp, ContextMember, SealedSecret, TreeOpKind};
    let (mut net, ctx) = world();
    let v = net.nodes[1].peer.authority().unwrap().clone();
    let cv = net.nodes[1].peer.context(&ctx).unwrap().clone();
    let turn = cv.next_epoch_of(&v.id, 0).unwrap();
    let mut members: Vec<ContextMember> = v
        .members
        .values()
        .map(|m| ContextMember {
            authority: v.id,
            cert: m.cert.clone(),
            addr: m.addr.clone(),
        })
        .collect();
    members.sort_by_key(|m| m.cert.id());
    let everyone: Vec<DeviceId> = cv.members.keys().copied().collect();
    let op = |epoch: u64, to: &[DeviceId]| ContextEpochOp {
        context: ctx,
        epoch,
        members: members.clone(),
        // Copies nobody can open (the faulty proposer's, or just wrong).
        sealed: to
            .iter()
            .map(|d| SealedSecret {
                to: *d,
                epoch,
                enc: [3; 32],
                ciphertext: vec![4; 48],
            })
            .collect(),
        commitment: [5; 32],
    };
    let b_device = net.id(4);
    let short: Vec<DeviceId> = everyone.iter().copied().filter(|d| *d != b_device).collect();
    let far = cv.next_epoch_of(&v.id, 20).unwrap();
    let cases = [
        op(turn + 1, &everyone), // the other authority's turn
        op(far, &everyone),      // many turns ahead
        op(turn, &short),        // one of the other authority's devices left out
        op(turn, &everyone),     // in turn, sealed to all, but no copy opens
    ];
    let votes = |net: &Net| {
        net.nodes[1]
            .records
            .iter()
            .filter(|r| matches!(r, Record::Voted { .. }))
            .count()
    };
    let before = votes(&net);
    let prestate = v.prestate();
    for (k, op) in cases.into_iter().enumerate() {
        let kind = TreeOpKind::ContextEpoch(op);
        assert!(v.applies(&kind), "case {k}: the authority's own rules would take it");
        let bytes = wire::encode(&kind);
        let nonce = [k as u8 + 1; 32];
        let proposal = Proposal {
            id: consensus_id(&prestate, &op_hash(&bytes), &nonce),
            prestate,
            op: bytes,
            nonce,
            proposer: net.id(0),
        };
        net.deliver_proto(1, 0, ContextId::OWN, &AuthMsg::Propose(proposal));
        assert_eq!(votes(&net), before, "case {k}: no vote");
    }
    // A proposal made by the rules gets the votes (the same member, the same state).
    net.cmd(0, Command::RekeyContext { context: ctx }).unwrap();
    net.run();
    assert!(votes(&net) > before);
}

// ----- the reducer ------------------------------------------------------------------

mod reducer {
    use aura_proto::authority::AuthorityView;
    use aura_proto::consensus::{Commit, ConsensusId};
    use aura_proto::context::ContextView;
    use aura_proto::journal::*;
    use aura_proto::keys::DeviceKeys;
    use aura_proto::rng::PeerRng;
    use aura_proto::wire;
    use frost_ristretto255::{SigningKey, VerifyingKey};

    use super::common::test_devices;

    /// Authority A: devices 0 and 1; authority B: devices 2 and 3; C (device 4) is in
    /// no context. Each "group" key is a single key (a FROST group signature is a plain
    /// Schnorr signature under the group key).
    struct World {
        devices: Vec<DeviceKeys>,
        keys: Vec<SigningKey>,
        geneses: Vec<Fact>,
        ids: Vec<AuthorityId>,
        rng: PeerRng,
        ctx: ContextId,
        creation: Fact,
    }

    fn sig64(k: &SigningKey, rng: &mut PeerRng, msg: &[u8]) -> Sig64 {
        Sig64(k.sign(rng, msg).serialize().unwrap().try_into().unwrap())
    }

    impl World {
        fn new() -> World {
            let (devices, mut rng) = test_devices(61, 5);
            let mut keys = Vec::new();
            let mut geneses = Vec::new();
            let mut ids = Vec::new();
            for (k, devs) in [vec![0usize, 1], vec![2, 3], vec![4]].into_iter().enumerate() {
                let mut sk = [k as u8 + 11; 32];
                sk[31] &= 0x0f;
                let key = SigningKey::deserialize(&sk).unwrap();
                let gk: [u8; 32] = VerifyingKey::from(&key).serialize().unwrap().try_into().unwrap();
                let members: Vec<Member> = devs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| Member {
                        identifier: i as u16 + 1,
                        cert: devices[*d].cert.clone(),
                        addr: String::new(),
                    })
                    .collect();
                let g = Genesis {
                    session: [k as u8; 32],
                    threshold: 2,
                    verifying_shares: members.iter().map(|m| (m.identifier, gk)).collect(),
                    members,
                    group_key: gk,
                    cap_root: [k as u8; 32],
                };
                let id = g.authority_id();
                let ns = Namespace::Authority(id);
                let author = devices[devs[0]].id;
                let body = FactBody::Genesis(g);
                let msg = Fact::signing_bytes(&ns, 0, &author, &body);
                let sig = sig64(&key, &mut rng, &msg);
                geneses.push(Fact {
                    namespace: ns,
                    lamport: 0,
                    author,
                    body,
                    sig: FactSig::Group(sig),
                });
                keys.push(key);
                ids.push(id);
            }
            let mut members: Vec<ContextMember> = [(0usize, 0usize), (1, 0), (2, 1), (3, 1)]
                .iter()
                .map(|(d, a)| ContextMember {
                    authority: ids[*a],
                    cert: devices[*d].cert.clone(),
                    addr: String::new(),
                })
                .collect();
            members.sort_by_key(|m| m.cert.id());
            let mut authorities = vec![ids[0], ids[1]];
            authorities.sort();
            let g = ContextGenesis {
                authorities,
                members,
                nonce: [5; 32],
            };
            let ctx = g.context_id();
            let ns = Namespace::Context(ctx);
            let body = FactBody::ContextGenesis(g);
            let msg = Fact::signing_bytes(&ns, 0, &devices[0].id, &body);
            let creation = Fact {
                namespace: ns,
                lamport: 0,
                author: devices[0].id,
                body,
                sig: FactSig::Device(Sig64(devices[0].sign(&mut rng, &msg))),
            };
            World {
                devices,
                keys,
                geneses,
                ids,
                rng,
                ctx,
                creation,
            }
        }

        fn device(&mut self, ns: Namespace, lamport: u64, author: usize, body: FactBody) -> Fact {
            let id = self.devices[author].id;
            let msg = Fact::signing_bytes(&ns, lamport, &id, &body);
            Fact {
                namespace: ns,
                lamport,
                author: id,
                body,
                sig: FactSig::Device(Sig64(self.devices[author].sign(&mut self.rng, &msg))),
            }
        }

        /// The epoch of authority `a`'s `turn`-th change (the context's authorities take
        /// turns in ascending order; C, outside the context, gets `turn` itself).
        fn epoch_of(&self, a: usize, turn: u64) -> u64 {
            let mut order = [self.ids[0], self.ids[1]];
            order.sort();
            match order.iter().position(|x| *x == self.ids[a]) {
                Some(i) => i as u64 + 1 + (turn - 1) * 2,
                None => turn,
            }
        }

        /// Authority `a`'s change for its `turn`-th epoch, listing `devs` as its devices,
        /// sealed (dummy ciphertexts) to `devs` and `others`.
        fn op(&self, a: usize, turn: u64, devs: &[usize], others: &[usize], commitment: u8) -> ContextEpochOp {
            self.op_at(a, self.epoch_of(a, turn), devs, others, commitment)
        }

        fn op_at(&self, a: usize, epoch: u64, devs: &[usize], others: &[usize], commitment: u8) -> ContextEpochOp {
            let mut members: Vec<ContextMember> = devs
                .iter()
                .map(|d| ContextMember {
                    authority: self.ids[a],
                    cert: self.devices[*d].cert.clone(),
                    addr: String::new(),
                })
                .collect();
            members.sort_by_key(|m| m.cert.id());
            let mut sealed: Vec<SealedSecret> = devs
                .iter()
                .chain(others)
                .map(|d| SealedSecret {
                    to: self.devices[*d].id,
                    epoch,
                    enc: [1; 32],
                    ciphertext: vec![2; 48],
                })
                .collect();
            sealed.sort_by_key(|s| s.to);
            ContextEpochOp {
                context: self.ctx,
                epoch,
                members,
                sealed,
                commitment: [commitment; 32],
            }
        }

        /// The commit of `op`, signed by the key of authority `signer` into authority
        /// `a`'s journal.
        fn commit(&mut self, a: usize, signer: usize, op: &ContextEpochOp) -> Fact {
            let ns = Namespace::Authority(self.ids[a]);
            let body = FactBody::Commit(Commit {
                id: ConsensusId([op.commitment[0]; 32]),
                prestate: [0; 32],
                op: wire::encode(&TreeOpKind::ContextEpoch(op.clone())),
                votes: vec![],
            });
            let author = self.devices[if a == 0 { 0 } else { 2 }].id;
            let msg = Fact::signing_bytes(&ns, 3, &author, &body);
            let sig = sig64(&self.keys[signer], &mut self.rng, &msg);
            Fact {
                namespace: ns,
                lamport: 3,
                author,
                body,
                sig: FactSig::Group(sig),
            }
        }

        fn carrier(&mut self, by: usize, commit: &Fact) -> Fact {
            self.device(
                Namespace::Context(self.ctx),
                5,
                by,
                FactBody::ContextEpoch(commit.encode()),
            )
        }

        fn journal(&self) -> Journal {
            let mut j = Journal::new();
            for g in &self.geneses {
                j.insert(g.clone());
            }
            j.insert(self.creation.clone());
            j
        }
    }

    fn admit(j: &mut Journal, ctx: ContextId, f: Fact) -> Result<(), FactError> {
        let v = ContextView::reduce(j, ctx).unwrap();
        verify_fact(&f, &Namespace::Context(ctx), &v)?;
        j.insert(f);
        Ok(())
    }

    #[test]
    fn a_carried_change_sets_the_epoch_and_that_authoritys_devices() {
        let mut w = World::new();
        let mut j = w.journal();
        let before = ContextView::reduce(&j, w.ctx).unwrap();
        assert_eq!(
            (before.epoch, before.members.len(), before.decided.is_none()),
            (0, 4, true)
        );
        // A drops device 1.
        let op = w.op(0, 1, &[0], &[2, 3], 7);
        let c = w.commit(0, 0, &op);
        let f = w.carrier(0, &c);
        admit(&mut j, w.ctx, f).unwrap();
        let v = ContextView::reduce(&j, w.ctx).unwrap();
        let e = w.epoch_of(0, 1);
        assert_eq!(v.epoch, e);
        assert_eq!(v.owner(e), Some(w.ids[0]));
        assert_eq!(
            v.decided.as_ref().map(|d| (d.authority, d.commitment)),
            Some((w.ids[0], [7; 32]))
        );
        let ids: Vec<_> = v.members.keys().copied().collect();
        let mut want = vec![w.devices[0].id, w.devices[2].id, w.devices[3].id];
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(v.sealed_to.len(), 3);
        assert_eq!((v.lists[&w.ids[0]], v.lists[&w.ids[1]]), (e, 0));
        // Device 1 is no longer a member. A fact it wrote still verifies (whether a fact
        // is accepted must not depend on whether it arrived before or after the change;
        // members refuse the device's handshakes, so it cannot bring anything new),
        // but a device never listed is unknown.
        let note = |w: &mut World, by: usize| {
            let body = FactBody::Note(Note {
                data: b"still here?".to_vec(),
                ack: false,
            });
            w.device(Namespace::Context(w.ctx), 9, by, body)
        };
        let n1 = note(&mut w, 1);
        admit(&mut j, w.ctx, n1).unwrap();
        let n4 = note(&mut w, 4);
        assert_eq!(admit(&mut j, w.ctx, n4), Err(FactError::UnknownAuthor));
        assert!(!ContextView::reduce(&j, w.ctx)
            .unwrap()
            .members
            .contains_key(&w.devices[1].id));
        // A second change of A's for the same epoch (only a broken consensus signs one)
        // does not take its list back: the lower commitment wins everywhere.
        let older = w.op(0, 1, &[0, 1], &[2, 3], 9);
        let c = w.commit(0, 0, &older);
        let f = w.carrier(1, &c);
        admit(&mut j, w.ctx, f).unwrap();
        let v = ContextView::reduce(&j, w.ctx).unwrap();
        assert_eq!(
            v.decided.as_ref().map(|d| d.commitment),
            Some([7; 32]),
            "same epoch: lower commitment"
        );
        assert!(!v.members.contains_key(&w.devices[1].id));
    }

    #[test]
    fn only_a_group_signed_change_of_a_context_authority_counts() {
        let mut w = World::new();
        let mut j = w.journal();
        let op = w.op(0, 1, &[0, 1], &[2, 3], 7);
        // Signed with B's key into A's journal.
        let c = w.commit(0, 1, &op);
        let f = w.carrier(0, &c);
        assert_eq!(admit(&mut j, w.ctx, f), Err(FactError::BadSignature));
        // Carried by a device the change does not list.
        let c = w.commit(0, 0, &op);
        let f = w.carrier(2, &c);
        assert_eq!(admit(&mut j, w.ctx, f), Err(FactError::UnknownAuthor));
        // An authority outside the context.
        let op_c = w.op(2, 1, &[4], &[0, 1, 2, 3], 7);
        let c = w.commit(2, 2, &op_c);
        let f = w.carrier(4, &c);
        assert_eq!(admit(&mut j, w.ctx, f), Err(FactError::UnknownAuthority));
        // Malformed changes: another authority's device in the list; a listed device
        // without a sealed copy; another context.
        let mut bad = w.op(0, 1, &[0, 1], &[2, 3], 7);
        bad.members[0].authority = w.ids[1];
        let mut unsealed = w.op(0, 1, &[0, 1], &[2, 3], 7);
        unsealed.sealed.retain(|s| s.to != w.devices[1].id);
        let mut elsewhere = w.op(0, 1, &[0, 1], &[2, 3], 7);
        elsewhere.context = ContextId([9; 32]);
        for op in [bad, unsealed, elsewhere] {
            let c = w.commit(0, 0, &op);
            let f = w.carrier(0, &c);
            assert_eq!(admit(&mut j, w.ctx, f), Err(FactError::Invalid));
        }
        // A device-signed "commit" is no decision.
        let mut forged = w.commit(0, 0, &op);
        forged.sig = FactSig::Device(Sig64([0; 64]));
        let f = w.carrier(0, &forged);
        assert_eq!(admit(&mut j, w.ctx, f), Err(FactError::Invalid));
        assert_eq!(ContextView::reduce(&j, w.ctx).unwrap().epoch, 0);
    }

    #[test]
    fn authorities_take_turns_and_a_change_out_of_turn_does_not_count() {
        let mut w = World::new();
        let v0 = ContextView::reduce(&w.journal(), w.ctx).unwrap();
        let (lo, hi) = (v0.authorities[0], v0.authorities[1]);
        assert_eq!(
            (v0.owner(0), v0.owner(1), v0.owner(2), v0.owner(3)),
            (None, Some(lo), Some(hi), Some(lo))
        );
        assert_eq!(v0.next_epoch_of(&lo, 0), Some(1));
        assert_eq!(v0.next_epoch_of(&lo, 1), Some(3));
        assert_eq!(v0.next_epoch_of(&lo, 2), Some(3));
        assert_eq!(v0.next_epoch_of(&hi, 0), Some(2));
        assert_eq!(v0.next_epoch_of(&hi, 2), Some(4));
        assert_eq!(v0.next_epoch_of(&hi, 3), Some(4));
        // Each authority's first turn, carried in either order: the later epoch is
        // current, and both lists count (each authority's word on its own devices).
        let a = w.op(0, 1, &[0], &[2, 3], 7);
        let b = w.op(1, 1, &[2], &[0, 1], 3);
        let ca = w.commit(0, 0, &a);
        let cb = w.commit(1, 1, &b);
        let fa = w.carrier(0, &ca);
        let fb = w.carrier(2, &cb);
        let mut views = Vec::new();
        for order in [[fa.clone(), fb.clone()], [fb, fa]] {
            let mut j = w.journal();
            for f in order {
                admit(&mut j, w.ctx, f).unwrap();
            }
            views.push(ContextView::reduce(&j, w.ctx).unwrap());
        }
        assert_eq!(views[0], views[1]);
        let v = &views[0];
        assert_eq!((v.epoch, v.decided.as_ref().map(|d| d.authority)), (2, Some(hi)));
        let mut want = vec![w.devices[0].id, w.devices[2].id];
        want.sort();
        assert_eq!(v.members.keys().copied().collect::<Vec<_>>(), want);
        // A change for an epoch that is another authority's turn is ignored, even when
        // it is group-signed and higher.
        let mut j = w.journal();
        let theirs = if w.ids[0] == lo { 4 } else { 3 };
        let out_of_turn = w.op_at(0, theirs, &[0], &[2, 3], 5);
        let c = w.commit(0, 0, &out_of_turn);
        let f = w.carrier(0, &c);
        admit(&mut j, w.ctx, f).unwrap();
        let v = ContextView::reduce(&j, w.ctx).unwrap();
        assert_eq!((v.epoch, v.members.len(), v.lists[&w.ids[0]]), (0, 4, 0));
    }

    #[test]
    fn no_authority_claims_anothers_devices_or_pushes_epochs_out_of_reach() {
        let mut w = World::new();
        let mut j = w.journal();
        // A lists B's device 2 as its own (a faulty member had it added to A).
        let op = w.op(0, 1, &[0, 1, 2], &[3], 7);
        let c = w.commit(0, 0, &op);
        let f = w.carrier(0, &c);
        admit(&mut j, w.ctx, f).unwrap();
        let v = ContextView::reduce(&j, w.ctx).unwrap();
        assert_eq!(v.epoch, w.epoch_of(0, 1), "the change itself counts");
        assert_eq!(v.members[&w.devices[2].id].authority, w.ids[1], "device 2 stays B's");
        assert_eq!(v.members.values().filter(|m| m.authority == w.ids[0]).count(), 2);
        // An epoch many turns ahead is ignored (and so is everything after it).
        let mut j = w.journal();
        let far = w.op(0, 9, &[0, 1], &[2, 3], 7);
        let c = w.commit(0, 0, &far);
        let f = w.carrier(0, &c);
        admit(&mut j, w.ctx, f).unwrap();
        assert_eq!(ContextView::reduce(&j, w.ctx).unwrap().epoch, 0);
        // Within two rounds of turns it counts.
        let near = w.op(0, 2, &[0, 1], &[2, 3], 7);
        let c = w.commit(0, 0, &near);
        let f = w.carrier(0, &c);
        admit(&mut j, w.ctx, f).unwrap();
        assert_eq!(ContextView::reduce(&j, w.ctx).unwrap().epoch, w.epoch_of(0, 2));
    }

    #[test]
    fn an_authority_decides_each_epoch_once_and_lists_exactly_its_devices() {
        let mut w = World::new();
        let mut j = Journal::new();
        j.insert(w.geneses[0].clone());
        let mut view = AuthorityView::reduce(&j, w.ids[0]).unwrap();
        // (The authority's own journal knows nothing of turns: raw epochs here.)
        let partial = w.op_at(0, 1, &[0], &[2, 3], 7);
        assert!(
            !view.applies(&TreeOpKind::ContextEpoch(partial)),
            "device 1 is still a member"
        );
        let outsider = w.op_at(0, 1, &[0, 1, 4], &[2, 3], 7);
        assert!(!view.applies(&TreeOpKind::ContextEpoch(outsider)));
        let op = w.op_at(0, 2, &[0, 1], &[2, 3], 7);
        assert!(view.applies(&TreeOpKind::ContextEpoch(op.clone())));
        // Apply it through a commit-free path: a tree op fact.
        let ns = Namespace::Authority(w.ids[0]);
        let body = FactBody::TreeOp(TreeOp {
            parent_epoch: view.epoch,
            parent_commitment: view.commitment,
            kind: TreeOpKind::ContextEpoch(op),
        });
        let msg = Fact::signing_bytes(&ns, 1, &w.devices[0].id, &body);
        let sig = sig64(&w.keys[0], &mut w.rng, &msg);
        let f = Fact {
            namespace: ns,
            lamport: 1,
            author: w.devices[0].id,
            body,
            sig: FactSig::Group(sig),
        };
        view.step(f.id(), &f);
        assert_eq!(view.context_epochs.get(&w.ctx), Some(&2));
        for e in [1, 2] {
            let again = w.op_at(0, e, &[0, 1], &[2, 3], 8);
            assert!(!view.applies(&TreeOpKind::ContextEpoch(again)), "epoch {e} again");
        }
        assert!(view.applies(&TreeOpKind::ContextEpoch(w.op_at(0, 3, &[0, 1], &[2, 3], 8))));
    }
}
