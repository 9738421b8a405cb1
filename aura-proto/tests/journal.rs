//! The fact journal: merge laws, order-independent reduction, typed rejection, tree-op
//! rules and snapshots of every fact kind's canonical encoding.

use aura_proto::authority::{AuthorityView, TreeOpReject, Views};
use aura_proto::journal::*;
use aura_proto::keys::DeviceKeys;
use aura_proto::rng::PeerRng;
use frost_ristretto255::SigningKey;
use quickcheck::{QuickCheck, TestResult};

mod common;
use common::{encoding_text, test_devices};

struct World {
    devices: Vec<DeviceKeys>,
    group: SigningKey,
    rng: PeerRng,
    genesis: Fact,
    ns: Namespace,
}

impl World {
    fn new() -> World {
        let (devices, rng) = test_devices(42, 4);
        // Tests may use a single key as the "group" key: a FROST group signature is a
        // plain Schnorr signature under the group key, so verification is the same.
        let mut sk = [7u8; 32];
        sk[31] &= 0x0f;
        let group = SigningKey::deserialize(&sk).unwrap();
        let gk: [u8; 32] = frost_ristretto255::VerifyingKey::from(&group)
            .serialize()
            .unwrap()
            .try_into()
            .unwrap();
        let members: Vec<Member> = devices[..3]
            .iter()
            .enumerate()
            .map(|(i, d)| Member {
                identifier: i as u16 + 1,
                cert: d.cert.clone(),
                addr: format!("sim:{i}"),
            })
            .collect();
        let g = Genesis {
            session: [1; 32],
            threshold: 2,
            members,
            group_key: gk,
            // A constant polynomial: every share is the key (an added device's too).
            verifying_shares: (1..=3).map(|i| (i, gk)).collect(),
            cap_root: [8; 32],
        };
        let ns = Namespace::Authority(g.authority_id());
        let mut w = World {
            devices,
            group,
            rng,
            genesis: dummy_fact(),
            ns,
        };
        w.genesis = w.group_fact(0, 0, FactBody::Genesis(g));
        w
    }

    fn group_fact(&mut self, lamport: u64, author: usize, body: FactBody) -> Fact {
        let author = self.devices[author].id;
        let msg = Fact::signing_bytes(&self.ns, lamport, &author, &body);
        let sig: [u8; 64] = self
            .group
            .sign(&mut self.rng, &msg)
            .serialize()
            .unwrap()
            .try_into()
            .unwrap();
        Fact {
            namespace: self.ns,
            lamport,
            author,
            body,
            sig: FactSig::Group(Sig64(sig)),
        }
    }

    fn device_fact(&mut self, lamport: u64, author: usize, body: FactBody) -> Fact {
        let id = self.devices[author].id;
        let msg = Fact::signing_bytes(&self.ns, lamport, &id, &body);
        let sig = self.devices[author].sign(&mut self.rng, &msg);
        Fact {
            namespace: self.ns,
            lamport,
            author: id,
            body,
            sig: FactSig::Device(Sig64(sig)),
        }
    }

    fn id(&self) -> AuthorityId {
        match self.ns {
            Namespace::Authority(a) => a,
            Namespace::Context(_) => unreachable!(),
        }
    }

    fn views(&self, j: &Journal) -> Views {
        let mut v = Views::default();
        if let Some(view) = AuthorityView::reduce(j, self.id()) {
            v.0.insert(self.id(), view);
        }
        v
    }

    fn op(&mut self, lamport: u64, parent: (u64, [u8; 32]), kind: TreeOpKind) -> Fact {
        self.group_fact(
            lamport,
            1,
            FactBody::TreeOp(TreeOp {
                parent_epoch: parent.0,
                parent_commitment: parent.1,
                kind,
            }),
        )
    }

    /// A pool of valid facts: genesis, statements, a sealed secret, tree ops with a fork
    /// and a replay.
    fn pool(&mut self) -> Vec<Fact> {
        let mut j = Journal::new();
        j.insert(self.genesis.clone());
        let v0 = AuthorityView::reduce(&j, self.id()).unwrap();
        let add = Member {
            identifier: 4,
            cert: self.devices[3].cert.clone(),
            addr: "sim:3".into(),
        };
        let op1 = self.op(5, (0, v0.commitment), TreeOpKind::AddDevice(add));
        j.insert(op1.clone());
        let v1 = AuthorityView::reduce(&j, self.id()).unwrap();
        // Same parent as op1 but later in journal order: the losing side of a fork.
        let fork = self.op(6, (0, v0.commitment), TreeOpKind::ChangeThreshold(3));
        let op2 = self.op(7, (1, v1.commitment), TreeOpKind::ChangeThreshold(3));
        let replay = self.op(
            9,
            (0, v0.commitment),
            TreeOpKind::AddDevice(Member {
                identifier: 4,
                cert: self.devices[3].cert.clone(),
                addr: "sim:3".into(),
            }),
        );
        let sealed = self.device_fact(
            1,
            0,
            FactBody::SealedSecret(SealedSecret {
                to: self.devices[1].id,
                epoch: 0,
                enc: [3; 32],
                ciphertext: vec![9; 48],
            }),
        );
        let mut out = vec![self.genesis.clone(), op1, fork, op2, replay, sealed];
        for k in 0..6u64 {
            out.push(self.group_fact(
                2 + k % 3,
                (k % 3) as usize,
                FactBody::Statement(format!("s{k}").into_bytes()),
            ));
        }
        out
    }
}

fn dummy_fact() -> Fact {
    Fact {
        namespace: Namespace::Context(ContextId([0; 32])),
        lamport: 0,
        author: aura_proto::DeviceId([0; 32]),
        body: FactBody::Statement(vec![]),
        sig: FactSig::Device(Sig64([0; 64])),
    }
}

fn journal_of(pool: &[Fact], pick: &[u8]) -> Journal {
    let mut j = Journal::new();
    for p in pick {
        j.insert(pool[*p as usize % pool.len()].clone());
    }
    j
}

fn merged(a: &Journal, b: &Journal) -> Journal {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// The shared pool and the authority it belongs to (quickcheck wants plain `fn`s).
fn shared() -> &'static (Vec<Fact>, AuthorityId) {
    static P: std::sync::OnceLock<(Vec<Fact>, AuthorityId)> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut w = World::new();
        (w.pool(), w.id())
    })
}

#[test]
fn merge_is_commutative_associative_idempotent() {
    fn prop(a: Vec<u8>, b: Vec<u8>, c: Vec<u8>) -> bool {
        let pool = &shared().0;
        let (a, b, c) = (journal_of(pool, &a), journal_of(pool, &b), journal_of(pool, &c));
        merged(&a, &b) == merged(&b, &a)
            && merged(&merged(&a, &b), &c) == merged(&a, &merged(&b, &c))
            && merged(&a, &a) == a
            && merged(&merged(&a, &b), &b) == merged(&a, &b)
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<u8>, Vec<u8>, Vec<u8>) -> bool);
}

fn reference_view() -> &'static AuthorityView {
    static V: std::sync::OnceLock<AuthorityView> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let (pool, id) = shared();
        AuthorityView::reduce(&journal_of(pool, &(0..pool.len() as u8).collect::<Vec<_>>()), *id).unwrap()
    })
}

#[test]
fn reduction_does_not_depend_on_arrival_order() {
    let reference = reference_view();
    // The fork and the replay lose; the first op and the op built on it apply.
    assert_eq!(reference.epoch, 2);
    assert_eq!(reference.threshold, 3);
    assert_eq!(reference.members.len(), 4);
    assert_eq!(reference.rejected.len(), 2);
    assert!(reference.rejected.iter().all(|(_, r)| *r == TreeOpReject::StaleParent));
    fn prop(order: Vec<usize>) -> TestResult {
        let (pool, id) = shared();
        // A permutation of the whole pool, driven by the generated numbers.
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        for (i, r) in order.iter().enumerate() {
            let n = idx.len();
            idx.swap(i % n, r % n);
        }
        let mut j = Journal::new();
        for i in idx {
            j.insert(pool[i].clone());
        }
        TestResult::from_bool(AuthorityView::reduce(&j, *id).as_ref() == Some(reference_view()))
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<usize>) -> TestResult);
}

#[test]
fn every_pool_fact_verifies_and_bad_ones_get_typed_reasons() {
    let mut w = World::new();
    let pool = w.pool();
    let mut j = Journal::new();
    let ns = w.ns;
    for f in &pool {
        let views = w.views(&j);
        assert_eq!(verify_fact(f, &ns, &views), Ok(()), "{:?}", f.body.kind());
        j.insert(f.clone());
    }
    let views = w.views(&j);
    // Bad signature.
    let mut bad = pool[6].clone();
    if let FactSig::Group(s) = &mut bad.sig {
        s.0[40] ^= 1;
    }
    assert_eq!(verify_fact(&bad, &ns, &views), Err(FactError::BadSignature));
    // Changed content under the old signature.
    let mut bad = pool[6].clone();
    bad.lamport += 1;
    assert_eq!(verify_fact(&bad, &ns, &views), Err(FactError::BadSignature));
    // Wrong namespace.
    let other = Namespace::Context(ContextId([5; 32]));
    assert_eq!(verify_fact(&pool[6], &other, &views), Err(FactError::WrongNamespace));
    // A genesis placed in a namespace that is not its own hash.
    let mut g = w.genesis.clone();
    g.namespace = Namespace::Authority(AuthorityId([9; 32]));
    assert_eq!(
        verify_fact(&g, &g.namespace.clone(), &views),
        Err(FactError::WrongNamespace)
    );
    // A statement signed by a device instead of the group.
    let dev_stmt = w.device_fact(3, 0, FactBody::Statement(b"alone".to_vec()));
    assert_eq!(verify_fact(&dev_stmt, &ns, &views), Err(FactError::WrongSigner));
    // A sealed secret from a device that is not a member.
    let outsider = w.device_fact(
        3,
        3,
        FactBody::SealedSecret(SealedSecret {
            to: w.devices[0].id,
            epoch: 0,
            enc: [0; 32],
            ciphertext: vec![],
        }),
    );
    let before_add = {
        let mut j0 = Journal::new();
        j0.insert(w.genesis.clone());
        w.views(&j0)
    };
    assert_eq!(verify_fact(&outsider, &ns, &before_add), Err(FactError::UnknownAuthor));
    // Anything but a genesis for an authority nobody has seen.
    assert_eq!(
        verify_fact(&pool[6], &ns, &Views::default()),
        Err(FactError::UnknownAuthority)
    );
    // Malformed bytes: never a panic, always a typed error.
    let enc = pool[6].encode();
    for cut in 0..enc.len() {
        assert!(Fact::decode(&enc[..cut]).is_err());
    }
    let mut trailing = enc.clone();
    trailing.push(0);
    assert!(Fact::decode(&trailing).is_err());
    assert_eq!(Fact::decode(&enc).unwrap(), pool[6]);
}

#[test]
fn tree_ops_reject_forks_replays_and_invalid_changes() {
    let mut w = World::new();
    let id = w.id();
    let mut j = Journal::new();
    j.insert(w.genesis.clone());
    let v0 = AuthorityView::reduce(&j, id).unwrap();
    // Removing a device that is not a member, or going below the threshold, is invalid.
    let unknown = w.op(1, (0, v0.commitment), TreeOpKind::RemoveDevice(w.devices[3].id));
    let too_low = w.op(1, (0, v0.commitment), TreeOpKind::ChangeThreshold(1));
    j.insert(unknown.clone());
    j.insert(too_low.clone());
    let v = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!(v.epoch, 0);
    assert_eq!(v.rejected.len(), 2);
    assert!(v.rejected.contains(&(unknown.id(), TreeOpReject::Invalid)));
    assert!(v.rejected.contains(&(too_low.id(), TreeOpReject::Invalid)));
    // A valid removal applies and moves the epoch; replaying it with a new clock does not.
    let rm = w.op(2, (0, v0.commitment), TreeOpKind::RemoveDevice(w.devices[2].id));
    j.insert(rm.clone());
    let v1 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!(v1.epoch, 1);
    assert!(!v1.members.contains_key(&w.devices[2].id));
    assert_ne!(v1.commitment, v0.commitment);
    let replay = w.op(3, (0, v0.commitment), TreeOpKind::RemoveDevice(w.devices[2].id));
    j.insert(replay.clone());
    let v2 = AuthorityView::reduce(&j, id).unwrap();
    assert_eq!(v2.epoch, 1);
    assert!(v2.rejected.contains(&(replay.id(), TreeOpReject::StaleParent)));
}

#[test]
fn canonical_encoding_of_every_fact_kind() {
    let mut w = World::new();
    let pool = w.pool();
    let pick = |kind: &str| pool.iter().find(|f| f.body.kind() == kind).unwrap().clone();
    for kind in ["genesis", "tree-op", "sealed-secret", "statement"] {
        let f = pick(kind);
        insta::assert_snapshot!(format!("fact_{}", kind.replace('-', "_")), encoding_text(&f));
    }
}

#[test]
fn entries_give_each_fact_its_own_id_in_journal_order() {
    let (pool, id) = shared();
    let all: Vec<u8> = (0..pool.len() as u8).collect();
    let j = journal_of(pool, &all);
    let ns = Namespace::Authority(*id);
    let entries: Vec<(FactId, &Fact)> = j.entries(&ns).collect();
    let facts: Vec<&Fact> = j.facts(&ns).collect();
    assert_eq!(entries.len(), facts.len());
    assert!(!entries.is_empty());
    for ((eid, ef), f) in entries.iter().zip(&facts) {
        assert_eq!(*eid, f.id());
        assert_eq!(*ef, *f);
    }
}
