//! Relational context facts: identity, structural rules, signatures, establishment by
//! every authority, sealed secrets, isolation between contexts, order independence, and
//! snapshots of the canonical encodings.

use aura_proto::context::ContextView;
use aura_proto::journal::*;
use aura_proto::keys::DeviceKeys;
use aura_proto::rng::PeerRng;

mod common;
use common::{encoding_text, test_devices};

/// Devices 0 and 1 speak for authority A, device 2 for authority B; device 3 is nobody.
struct World {
    devices: Vec<DeviceKeys>,
    a: AuthorityId,
    b: AuthorityId,
    rng: PeerRng,
}

impl World {
    fn new() -> World {
        let (devices, rng) = test_devices(21, 4);
        World {
            devices,
            a: AuthorityId([0xa0; 32]),
            b: AuthorityId([0xb0; 32]),
            rng,
        }
    }

    fn member(&self, i: usize, authority: AuthorityId) -> ContextMember {
        ContextMember {
            authority,
            cert: self.devices[i].cert.clone(),
            addr: format!("sim:{i}"),
        }
    }

    /// The creation body for devices 0, 1 (A) and 2 (B), sorted as the rules want.
    fn genesis_body(&self, nonce: u8) -> ContextGenesis {
        let mut members = vec![self.member(0, self.a), self.member(1, self.a), self.member(2, self.b)];
        members.sort_by_key(|m| m.cert.id());
        let mut authorities = vec![self.a, self.b];
        authorities.sort();
        ContextGenesis {
            authorities,
            members,
            nonce: [nonce; 32],
        }
    }

    fn signed(&mut self, ns: Namespace, lamport: u64, author: usize, body: FactBody) -> Fact {
        let who = self.devices[author].id;
        let msg = Fact::signing_bytes(&ns, lamport, &who, &body);
        Fact {
            namespace: ns,
            lamport,
            author: who,
            body,
            sig: FactSig::Device(Sig64(self.devices[author].sign(&mut self.rng, &msg))),
        }
    }

    fn create(&mut self, nonce: u8, author: usize) -> (ContextId, Fact) {
        let g = self.genesis_body(nonce);
        let id = g.context_id();
        let f = self.signed(Namespace::Context(id), 0, author, FactBody::ContextGenesis(g));
        (id, f)
    }

    fn sealed(&mut self, id: ContextId, author: usize, to: usize, epoch: u64) -> Fact {
        let body = FactBody::SealedSecret(SealedSecret {
            to: self.devices[to].id,
            epoch,
            enc: [9; 32],
            ciphertext: vec![1, 2, 3],
        });
        self.signed(Namespace::Context(id), 1 + epoch, author, body)
    }
}

/// Verifies against the view of the journal as it stands (what a peer does on arrival).
fn admit(j: &mut Journal, id: ContextId, f: Fact) -> Result<(), FactError> {
    let ns = Namespace::Context(id);
    let view = ContextView::reduce(j, id);
    match &view {
        Some(v) => verify_fact(&f, &ns, v)?,
        None => verify_fact(&f, &ns, &NoKeys)?,
    }
    j.insert(f);
    Ok(())
}

struct NoKeys;
impl KeyLookup for NoKeys {
    fn group_key(&self, _: &Namespace) -> Option<[u8; 32]> {
        None
    }
    fn device_key(&self, _: &Namespace, _: &aura_proto::keys::DeviceId) -> Option<[u8; 32]> {
        None
    }
}

#[test]
fn a_context_is_named_by_its_creation_and_established_by_every_authority() {
    let mut w = World::new();
    let (id, g) = w.create(1, 0);
    assert_eq!(FactBody::ContextGenesis(w.genesis_body(1)).kind(), "context-genesis");
    assert_ne!(w.genesis_body(1).context_id(), w.genesis_body(2).context_id());
    let mut j = Journal::new();
    admit(&mut j, id, g.clone()).unwrap();
    let v = ContextView::reduce(&j, id).unwrap();
    assert_eq!(v.creator, w.devices[0].id);
    assert_eq!(v.members.len(), 3);
    assert!(!v.established(), "authority B has not taken part yet");
    // A second device of the creator's own authority accepting changes nothing.
    let same_side = w.signed(
        Namespace::Context(id),
        1,
        1,
        FactBody::ContextAccept(ContextAccept { genesis: g.id() }),
    );
    admit(&mut j, id, same_side).unwrap();
    assert!(!ContextView::reduce(&j, id).unwrap().established());
    // An acceptance of some other creation does not count either.
    let elsewhere = w.signed(
        Namespace::Context(id),
        1,
        2,
        FactBody::ContextAccept(ContextAccept {
            genesis: FactId([5; 32]),
        }),
    );
    admit(&mut j, id, elsewhere).unwrap();
    assert!(!ContextView::reduce(&j, id).unwrap().established());
    let accept = w.signed(
        Namespace::Context(id),
        1,
        2,
        FactBody::ContextAccept(ContextAccept { genesis: g.id() }),
    );
    admit(&mut j, id, accept).unwrap();
    let v = ContextView::reduce(&j, id).unwrap();
    assert!(v.established());
    assert_eq!(v.authority_of(&w.devices[2].id), Some(w.b));
}

#[test]
fn malformed_creations_are_refused_with_a_reason() {
    let mut w = World::new();
    let check = |w: &mut World, body: ContextGenesis, author: usize| {
        let id = body.context_id();
        let f = w.signed(Namespace::Context(id), 0, author, FactBody::ContextGenesis(body));
        verify_fact(&f, &Namespace::Context(id), &NoKeys)
    };
    // One authority only.
    let mut g = w.genesis_body(1);
    g.authorities.truncate(1);
    g.members.retain(|m| m.authority == g.authorities[0]);
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    // Authorities out of order, or repeated.
    let mut g = w.genesis_body(1);
    g.authorities.reverse();
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    let mut g = w.genesis_body(1);
    g.authorities[1] = g.authorities[0];
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    // A member of an authority not listed; an authority with no member.
    let mut g = w.genesis_body(1);
    g.members[0].authority = AuthorityId([0xcc; 32]);
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    let mut g = w.genesis_body(1);
    let b = w.b;
    g.members.retain(|m| m.authority != b);
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    // Members out of order or repeated.
    let mut g = w.genesis_body(1);
    g.members.swap(0, 1);
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    let mut g = w.genesis_body(1);
    g.members[1] = g.members[0].clone();
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    // A tampered certificate.
    let mut g = w.genesis_body(1);
    g.members[0].cert.hpke[0] ^= 1;
    assert_eq!(check(&mut w, g, 0), Err(FactError::Invalid));
    // Signed by a device that is not a member.
    let g = w.genesis_body(1);
    assert_eq!(check(&mut w, g, 3), Err(FactError::UnknownAuthor));
    // A valid body in a namespace that is not its own id.
    let g = w.genesis_body(1);
    let f = w.signed(
        Namespace::Context(ContextId([1; 32])),
        0,
        0,
        FactBody::ContextGenesis(g),
    );
    assert_eq!(
        verify_fact(&f, &Namespace::Context(ContextId([1; 32])), &NoKeys),
        Err(FactError::WrongNamespace)
    );
    // A good creation with its signature bent.
    let (id, mut f) = w.create(1, 0);
    if let FactSig::Device(s) = &mut f.sig {
        s.0[5] ^= 1;
    }
    assert_eq!(
        verify_fact(&f, &Namespace::Context(id), &NoKeys),
        Err(FactError::BadSignature)
    );
}

#[test]
fn acceptances_and_secrets_come_only_from_members() {
    let mut w = World::new();
    let (id, g) = w.create(1, 0);
    let mut j = Journal::new();
    admit(&mut j, id, g.clone()).unwrap();
    let outsider = w.signed(
        Namespace::Context(id),
        1,
        3,
        FactBody::ContextAccept(ContextAccept { genesis: g.id() }),
    );
    assert_eq!(admit(&mut j, id, outsider), Err(FactError::UnknownAuthor));
    assert_eq!(admit(&mut j, id, w.sealed(id, 3, 0, 0)), Err(FactError::UnknownAuthor));
    for to in 0..3 {
        admit(&mut j, id, w.sealed(id, 0, to, 0)).unwrap();
    }
    let v = ContextView::reduce(&j, id).unwrap();
    assert_eq!((v.epoch, v.sealed_to.len()), (0, 3));
    // A member sealing a secret of a later epoch does not move the context there: only
    // an authority's agreed epoch change does (tests/context_epoch.rs).
    admit(&mut j, id, w.sealed(id, 2, 1, 1)).unwrap();
    let v = ContextView::reduce(&j, id).unwrap();
    assert_eq!((v.epoch, v.sealed_to.len(), v.decided.is_none()), (0, 3, true));
}

#[test]
fn facts_of_one_context_are_refused_in_another() {
    let mut w = World::new();
    let (a, ga) = w.create(1, 0);
    let (b, gb) = w.create(2, 0);
    let mut j = Journal::new();
    admit(&mut j, a, ga.clone()).unwrap();
    admit(&mut j, b, gb).unwrap();
    let accept_a = w.signed(
        Namespace::Context(a),
        1,
        2,
        FactBody::ContextAccept(ContextAccept { genesis: ga.id() }),
    );
    let view_b = ContextView::reduce(&j, b).unwrap();
    assert_eq!(
        verify_fact(&accept_a, &Namespace::Context(b), &view_b),
        Err(FactError::WrongNamespace)
    );
    // Re-addressed to B, its signature no longer verifies (the namespace is signed).
    let mut moved = accept_a.clone();
    moved.namespace = Namespace::Context(b);
    assert_eq!(
        verify_fact(&moved, &Namespace::Context(b), &view_b),
        Err(FactError::BadSignature)
    );
    // A's creation is not B's.
    assert_eq!(
        verify_fact(&ga, &Namespace::Context(b), &view_b),
        Err(FactError::WrongNamespace)
    );
    // And a context view answers for its own namespace only.
    assert!(view_b.device_key(&Namespace::Context(a), &w.devices[0].id).is_none());
}

#[test]
fn reduction_does_not_depend_on_arrival_order() {
    let mut w = World::new();
    let (id, g) = w.create(1, 2);
    let accept = w.signed(
        Namespace::Context(id),
        1,
        0,
        FactBody::ContextAccept(ContextAccept { genesis: g.id() }),
    );
    let facts = [
        g,
        accept,
        // The creator's seal of the first secret counts; another member's does not.
        w.sealed(id, 2, 1, 0),
        w.sealed(id, 0, 0, 0),
        w.sealed(id, 2, 0, 2),
        w.sealed(id, 1, 2, 2),
    ];
    let mut views = Vec::new();
    for rot in 0..facts.len() {
        let mut j = Journal::new();
        for f in facts.iter().cycle().skip(rot).take(facts.len()) {
            j.insert(f.clone()); // all verified above by construction; order varies
        }
        views.push(ContextView::reduce(&j, id).unwrap());
    }
    assert!(views.windows(2).all(|v| v[0] == v[1]));
    assert!(views[0].established());
    // Seals of a later epoch without an agreed change are not an epoch.
    assert_eq!(views[0].epoch, 0);
    assert_eq!(
        views[0].sealed_to.iter().copied().collect::<Vec<_>>(),
        vec![w.devices[1].id]
    );
}

#[test]
fn canonical_encoding_of_context_facts() {
    let mut w = World::new();
    let (id, g) = w.create(1, 0);
    let accept = w.signed(
        Namespace::Context(id),
        1,
        2,
        FactBody::ContextAccept(ContextAccept { genesis: g.id() }),
    );
    for f in [g, accept] {
        let name = format!("fact_{}", f.body.kind().replace('-', "_"));
        insta::assert_snapshot!(name, encoding_text(&f));
    }
}
