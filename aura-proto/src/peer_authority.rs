//! The authority machines of a [`Peer`]: distributed key generation, threshold signing and
//! pushing journal facts to members. Every step is idempotent and driven by messages and a
//! retransmission tick, so loss, duplication and reordering only cost time.
//!
//! Key generation (coordinator C, members 1..=n, C included):
//! `DkgInvite` → each member runs part 1 → `DkgRound1` to C → C sends `DkgRound1All` →
//! part 2, round-2 packages HPKE-sealed per recipient → `DkgRound2` to C → C relays
//! `DkgRound2Deliver` (it cannot open them) → part 3, share persisted → `DkgDone`.
//! C then has the genesis signed by the new key (a normal signing session), records it,
//! seals a fresh authority secret to every member and pushes those facts to all members.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use frost::keys::dkg;
use frost::keys::{KeyPackage, PublicKeyPackage};
use frost::round1::{SigningCommitments, SigningNonces};
use frost::round2::SignatureShare;
use frost::{Identifier, SigningPackage};
use frost_ristretto255 as frost;
use hpke::{
    aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, OpModeR, OpModeS, Serializable,
};

use super::{CommandError, Event, Peer, Pending, Queued};
use crate::authority::{genesis_unsigned, signed_fact, AuthMsg, AuthorityView, UnsignedFact};
use crate::journal::{
    verify_fact, Fact, FactBody, FactError, FactId, FactSig, Genesis, Member, Namespace, SealedSecret, Sig64,
};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::{PairedPeer, Record, ShareOrigin};
use crate::rng::PeerRng;
use crate::time::Instant;
use crate::wire;

const RETRY: Duration = Duration::from_millis(800);
const DKG_TIMEOUT: Duration = Duration::from_secs(120);
const SIGN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a member with a share but no genesis asks its coordinator for it.
const GENESIS_POLL: Duration = Duration::from_secs(5);
/// Failed genesis signing sessions (each `SIGN_TIMEOUT` long) before a coordinator gives
/// the key generation up.
const GENESIS_ATTEMPTS: u32 = 3;
const HPKE_INFO_DKG: &[u8] = b"aura dkg round2 v1";
pub(super) const HPKE_INFO_SECRET: &[u8] = b"aura authority secret v1";
const CTX_MEMBER_LINK_PSK: &str = "aura 2026-11 member link psk";

/// A member's share of one authority key.
pub(crate) struct Share {
    pub key: KeyPackage,
    pub public: PublicKeyPackage,
}

/// Key generation as one member sees it (the coordinator's extra state in `coord`).
pub(crate) struct Dkg {
    coordinator: DeviceId,
    threshold: u16,
    members: Vec<Member>,
    me: u16,
    started: Instant,
    r1_secret: Option<dkg::round1::SecretPackage>,
    r1_msg: Option<AuthMsg>,
    r1_all: Option<BTreeMap<Identifier, dkg::round1::Package>>,
    r2_secret: Option<dkg::round2::SecretPackage>,
    r2_msg: Option<AuthMsg>,
    persisting: bool,
    done: Option<AuthMsg>,
    coord: Option<DkgCoord>,
}

#[derive(Default)]
pub(crate) struct DkgCoord {
    r1: BTreeMap<u16, Vec<u8>>,
    r2: BTreeMap<u16, Vec<Sealed>>,
    done: BTreeMap<u16, [u8; 32]>,
    genesis_started: bool,
}

/// What a finished signing session is for.
#[derive(Clone, Debug)]
pub(crate) enum SignPurpose {
    Genesis {
        dkg: [u8; 32],
    },
    Statement,
    /// A consensus commit this device coordinates.
    Commit {
        instance: crate::consensus::ConsensusId,
    },
}

/// A signing session this device coordinates.
pub(crate) struct SignCoord {
    group_key: [u8; 32],
    fact: UnsignedFact,
    message: Vec<u8>,
    threshold: u16,
    members: Vec<(DeviceId, u16)>,
    commitments: BTreeMap<Identifier, SigningCommitments>,
    /// The same commitments as received, by identifier.
    raw_commitments: BTreeMap<u16, Vec<u8>>,
    package: Option<(SigningPackage, CommitmentList)>,
    shares: BTreeMap<Identifier, SignatureShare>,
    purpose: SignPurpose,
    started: Instant,
    /// Members whose signature shares failed to verify in an earlier attempt.
    excluded: BTreeSet<DeviceId>,
}

/// A signing session this device takes part in.
pub(crate) struct SignPart {
    coordinator: DeviceId,
    group_key: [u8; 32],
    message: Vec<u8>,
    /// Dropped the moment a share is computed: a nonce signs once.
    nonces: Option<SigningNonces>,
    /// Our commitments as sent.
    own_commitment: Vec<u8>,
    commit_msg: Option<AuthMsg>,
    share_msg: Option<(CommitmentList, AuthMsg)>,
    started: Instant,
}

/// Serialized commitments of the chosen signers, by identifier, as they were sent.
type CommitmentList = Vec<(u16, Vec<u8>)>;

/// A round-2 package sealed with HPKE: (peer identifier, encapsulated key, ciphertext).
type Sealed = (u16, [u8; 32], Vec<u8>);

fn ser<E: core::fmt::Debug>(r: Result<Vec<u8>, E>) -> Vec<u8> {
    r.expect("frost values serialize")
}

pub(super) fn ident(i: u16) -> Option<Identifier> {
    Identifier::try_from(i).ok()
}

fn member_link_psk(secret: &[u8; 32], a: &DeviceId, b: &DeviceId) -> [u8; 32] {
    super::pair_key(CTX_MEMBER_LINK_PSK, secret, a, b)
}

pub(super) fn hpke_seal(
    rng: &mut PeerRng,
    to: &[u8; 32],
    aad: &[u8],
    info: &[u8],
    plain: &[u8],
) -> Option<([u8; 32], Vec<u8>)> {
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(to).ok()?;
    let (enc, ct) = hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        info,
        plain,
        aad,
        rng,
    )
    .ok()?;
    Some((enc.to_bytes().into(), ct))
}

pub(super) fn hpke_open(sk: &[u8; 32], enc: &[u8; 32], aad: &[u8], info: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(sk).ok()?;
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(enc).ok()?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(&OpModeR::Base, &sk, &enc, info, ct, aad)
        .ok()
}

fn dkg_aad(session: &[u8; 32], from: u16, to: u16) -> Vec<u8> {
    let mut a = session.to_vec();
    a.extend_from_slice(&from.to_be_bytes());
    a.extend_from_slice(&to.to_be_bytes());
    a
}

impl Peer {
    // ----- plumbing -----------------------------------------------------------------

    /// Sends a sub-protocol message to a device (to ourselves: handled in place, later).
    pub(super) fn send_auth(&mut self, to: DeviceId, msg: AuthMsg) {
        if to == self.keys.id {
            self.local.push_back(msg);
            return;
        }
        let bytes = wire::encode(&msg);
        // A full queue or an unknown device: the retransmission tick tries again.
        let _ = self.send_or_queue(to, Queued::Proto(bytes));
    }

    /// Sends several sub-protocol messages (see `send_auth`).
    pub(super) fn send_auths(&mut self, msgs: Vec<(DeviceId, AuthMsg)>) {
        for (to, m) in msgs {
            self.send_auth(to, m);
        }
    }

    /// Handles messages a device sent to itself (the coordinator is also a member).
    pub(super) fn run_local(&mut self) {
        let me = self.keys.id;
        let mut budget = 1024;
        while let Some(m) = self.local.pop_front() {
            self.on_auth(me, m);
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
    }

    pub(super) fn on_proto(&mut self, from: DeviceId, data: &[u8]) {
        if let Some(m) = self.decode_msg::<AuthMsg>(data) {
            self.on_auth(from, m);
        }
    }

    fn refuse(&mut self) {
        self.metrics.drop(DropReason::UnexpectedFrame);
    }

    pub(super) fn on_auth(&mut self, from: DeviceId, msg: AuthMsg) {
        match msg {
            AuthMsg::DkgInvite {
                session,
                threshold,
                members,
            } => self.on_dkg_invite(from, session, threshold, members),
            AuthMsg::DkgRound1 {
                session,
                from: i,
                package,
            } => self.on_dkg_r1(from, session, i, package),
            AuthMsg::DkgRound1All { session, packages } => self.on_dkg_r1_all(from, session, packages),
            AuthMsg::DkgRound2 {
                session,
                from: i,
                sealed,
            } => self.on_dkg_r2(from, session, i, sealed),
            AuthMsg::DkgRound2Deliver { session, packages } => self.on_dkg_deliver(from, session, packages),
            AuthMsg::DkgDone {
                session,
                from: i,
                group_key,
            } => self.on_dkg_done(from, session, i, group_key),
            AuthMsg::SignRequest {
                session,
                group_key,
                fact,
            } => self.on_sign_request(from, session, group_key, fact),
            AuthMsg::SignCommit {
                session,
                from: i,
                commitments,
            } => self.on_sign_commit(from, session, i, commitments),
            AuthMsg::SignPackage { session, commitments } => self.on_sign_package(from, session, commitments),
            AuthMsg::SignShare {
                session,
                from: i,
                share,
            } => self.on_sign_share(from, session, i, share),
            AuthMsg::Facts { facts } => self.on_facts(from, facts, None),
            AuthMsg::DkgAbandoned { session } => self.on_dkg_abandoned(from, session),
            AuthMsg::ContextShare { facts, tokens, addrs } => self.on_context_share(from, facts, tokens, addrs),
            AuthMsg::SyncQuery {
                session,
                round,
                namespace,
                msg,
            } => self.on_sync_query(from, session, round, namespace, msg),
            AuthMsg::SyncAnswer { session, round, msg } => self.on_sync_answer(from, session, round, msg),
            AuthMsg::SyncFetch { namespace, ids } => self.on_sync_fetch(from, namespace, ids),
            AuthMsg::FactsAck { ids } => self.on_facts_ack(from, ids),
            AuthMsg::Delivered { ids } => self.on_delivered(from, ids),
            AuthMsg::Propose(p) => self.on_propose(from, p, None),
            AuthMsg::ProposeSigned {
                proposal,
                lamport,
                commitments,
            } => self.on_propose(from, proposal, Some((lamport, commitments))),
            AuthMsg::VoteSigned { vote, share, next } => self.on_vote_signed(from, vote, share, next),
            AuthMsg::CommitPackage {
                id,
                lamport,
                commitments,
            } => self.on_commit_package(from, id, lamport, commitments),
            AuthMsg::CommitShare {
                id,
                share,
                next,
                package,
            } => self.on_commit_share(from, id, share, next, package),
            AuthMsg::Nonce { commitment } => self.on_nonce(from, commitment),
            AuthMsg::Voted { vote } => self.on_voted(from, vote),
            AuthMsg::Refused { id, refusal } => self.on_refused(from, id, refusal),
            AuthMsg::Prepare { prestate, ballot } => self.on_prepare(from, prestate, ballot),
            AuthMsg::Promise {
                prestate,
                ballot,
                last,
                cert,
            } => self.on_promise(from, prestate, ballot, last, cert),
            AuthMsg::Accept { ballot, proposal } => self.on_accept_ballot(from, ballot, proposal, None),
            AuthMsg::AcceptSigned {
                ballot,
                proposal,
                lamport,
                commitments,
            } => self.on_accept_ballot(from, ballot, proposal, Some((lamport, commitments))),
            m @ (AuthMsg::EnrollAsk { .. }
            | AuthMsg::EnrollStart { .. }
            | AuthMsg::EnrollDelta { .. }
            | AuthMsg::EnrollSigma { .. }
            | AuthMsg::Enroll { .. }
            | AuthMsg::EnrollDone { .. }) => self.on_enroll(from, m),
            m @ (AuthMsg::RefreshStart { .. }
            | AuthMsg::RefreshRound1 { .. }
            | AuthMsg::RefreshRound2 { .. }
            | AuthMsg::RefreshDone { .. }) => self.on_refresh(from, m),
        }
    }

    /// The member identifier `from` must have in `members`.
    fn identifier_of(members: &[Member], d: &DeviceId) -> Option<u16> {
        members.iter().find(|m| m.cert.id() == *d).map(|m| m.identifier)
    }

    // ----- key generation -----------------------------------------------------------

    /// `Command::CreateAuthority`.
    pub(super) fn create_authority(&mut self, devices: Vec<DeviceId>, threshold: u16) -> Result<(), CommandError> {
        // A member without a share (its round state died in a crash) is still a member.
        if !self.shares.is_empty() || self.my_authority().is_some() {
            return Err(CommandError::AlreadyInAuthority);
        }
        let mut ids: BTreeSet<DeviceId> = devices.into_iter().collect();
        ids.insert(self.keys.id);
        let n = ids.len();
        if n < 2 || threshold < 2 || threshold as usize > n || n > 64 {
            return Err(CommandError::BadThreshold { threshold, devices: n });
        }
        let mut members = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let (cert, addr) = if *id == self.keys.id {
                (self.keys.cert.clone(), String::new())
            } else {
                let p = self.peers.get(id).ok_or(CommandError::UnknownPeer(*id))?;
                (p.cert.clone(), p.addr.clone())
            };
            members.push(Member {
                identifier: i as u16 + 1,
                cert,
                addr,
            });
        }
        let session = self.rng.bytes32();
        let me = Self::identifier_of(&members, &self.keys.id).expect("we are a member");
        let now = self.now.mono;
        self.dkg.insert(
            session,
            Dkg {
                coordinator: self.keys.id,
                threshold,
                members: members.clone(),
                me,
                started: now,
                r1_secret: None,
                r1_msg: None,
                r1_all: None,
                r2_secret: None,
                r2_msg: None,
                persisting: false,
                done: None,
                coord: Some(DkgCoord::default()),
            },
        );
        for m in &members {
            let to = m.cert.id();
            self.send_auth(
                to,
                AuthMsg::DkgInvite {
                    session,
                    threshold,
                    members: members.clone(),
                },
            );
        }
        self.arm_auth_tick();
        Ok(())
    }

    fn on_dkg_invite(&mut self, from: DeviceId, session: [u8; 32], threshold: u16, members: Vec<Member>) {
        if let Some(d) = self.dkg.get(&session) {
            if d.coordinator != from {
                return self.refuse();
            }
            if let Some(m) = d.r1_msg.clone() {
                return self.send_auth(from, m);
            }
            // The coordinator's own entry, before its round 1: carry on below.
        }
        let coord = self.dkg.get_mut(&session).and_then(|d| d.coord.take());
        let fresh = coord.is_none();
        let n = members.len();
        // Verified once here; the session then looks members up by `DeviceCert::id`.
        let valid_ids = members.iter().enumerate().all(|(i, m)| m.identifier as usize == i + 1)
            && members.iter().all(|m| m.cert.verify().is_some());
        let Some(me) = Self::identifier_of(&members, &self.keys.id) else {
            self.restore_coord(&session, coord);
            return self.refuse();
        };
        if !valid_ids
            || n < 2
            || threshold < 2
            || threshold as usize > n
            || Self::identifier_of(&members, &from).is_none()
            || (fresh && (!self.shares.is_empty() || self.my_authority().is_some()))
            || (from != self.keys.id && !self.peers.contains_key(&from))
        {
            self.restore_coord(&session, coord);
            return self.refuse();
        }
        let Ok((secret, package)) = dkg::part1(ident(me).expect("1-based"), n as u16, threshold, &mut self.rng) else {
            self.restore_coord(&session, coord);
            return self.refuse();
        };
        let r1 = AuthMsg::DkgRound1 {
            session,
            from: me,
            package: ser(package.serialize()),
        };
        self.dkg.insert(
            session,
            Dkg {
                coordinator: from,
                threshold,
                members,
                me,
                started: self.now.mono,
                r1_secret: Some(secret),
                r1_msg: Some(r1.clone()),
                r1_all: None,
                r2_secret: None,
                r2_msg: None,
                persisting: false,
                done: None,
                coord,
            },
        );
        self.send_auth(from, r1);
        self.arm_auth_tick();
    }

    fn restore_coord(&mut self, session: &[u8; 32], coord: Option<DkgCoord>) {
        if let (Some(d), Some(c)) = (self.dkg.get_mut(session), coord) {
            d.coord = Some(c);
        }
    }

    fn coord_mut(&mut self, session: &[u8; 32]) -> Option<&mut Dkg> {
        self.dkg.get_mut(session).filter(|d| d.coord.is_some())
    }

    fn on_dkg_r1(&mut self, from: DeviceId, session: [u8; 32], i: u16, package: Vec<u8>) {
        let Some(d) = self.coord_mut(&session) else {
            return self.refuse();
        };
        if Self::identifier_of(&d.members, &from) != Some(i) {
            return self.refuse();
        }
        let c = d.coord.as_mut().expect("filtered");
        c.r1.insert(i, package);
        if c.r1.len() == d.members.len() {
            let packages: Vec<(u16, Vec<u8>)> = c.r1.iter().map(|(k, v)| (*k, v.clone())).collect();
            let to: Vec<DeviceId> = d.members.iter().map(|m| m.cert.id()).collect();
            for t in to {
                self.send_auth(
                    t,
                    AuthMsg::DkgRound1All {
                        session,
                        packages: packages.clone(),
                    },
                );
            }
        }
    }

    fn on_dkg_r1_all(&mut self, from: DeviceId, session: [u8; 32], packages: Vec<(u16, Vec<u8>)>) {
        let Some(d) = self.dkg.get_mut(&session) else {
            return self.refuse();
        };
        if d.coordinator != from {
            return self.refuse();
        }
        if let Some(m) = d.r2_msg.clone() {
            return self.send_auth(from, m);
        }
        let Some(secret) = d.r1_secret.take() else { return };
        let mut others = BTreeMap::new();
        for (i, p) in &packages {
            if *i == d.me {
                continue;
            }
            match (ident(*i), dkg::round1::Package::deserialize(p)) {
                (Some(id), Ok(pkg)) => {
                    others.insert(id, pkg);
                }
                _ => {
                    d.r1_secret = Some(secret);
                    return self.refuse();
                }
            }
        }
        if others.len() + 1 != d.members.len() {
            d.r1_secret = Some(secret);
            return self.refuse();
        }
        let Ok((r2_secret, out)) = dkg::part2(secret.clone(), &others) else {
            d.r1_secret = Some(secret);
            return self.refuse();
        };
        let (me, members) = (d.me, d.members.clone());
        let mut sealed = Vec::new();
        for m in &members {
            if m.identifier == me {
                continue;
            }
            let Some(pkg) = ident(m.identifier).and_then(|id| out.get(&id)) else {
                return self.refuse();
            };
            let aad = dkg_aad(&session, me, m.identifier);
            let plain = ser(pkg.serialize());
            let Some((enc, ct)) = hpke_seal(&mut self.rng, &m.cert.hpke, &aad, HPKE_INFO_DKG, &plain) else {
                return self.refuse();
            };
            sealed.push((m.identifier, enc, ct));
        }
        let msg = AuthMsg::DkgRound2 {
            session,
            from: me,
            sealed,
        };
        let d = self.dkg.get_mut(&session).expect("present");
        d.r1_all = Some(others);
        d.r2_secret = Some(r2_secret);
        d.r2_msg = Some(msg.clone());
        self.send_auth(from, msg);
    }

    fn on_dkg_r2(&mut self, from: DeviceId, session: [u8; 32], i: u16, sealed: Vec<(u16, [u8; 32], Vec<u8>)>) {
        let Some(d) = self.coord_mut(&session) else {
            return self.refuse();
        };
        if Self::identifier_of(&d.members, &from) != Some(i) {
            return self.refuse();
        }
        let c = d.coord.as_mut().expect("filtered");
        c.r2.insert(i, sealed);
        if c.r2.len() == d.members.len() {
            self.deliver_r2(&session, None);
        }
    }

    /// Relays to each member (or only to `only`) the sealed packages addressed to it.
    fn deliver_r2(&mut self, session: &[u8; 32], only: Option<&BTreeSet<u16>>) {
        let Some(d) = self.dkg.get(session) else { return };
        let Some(c) = d.coord.as_ref() else { return };
        let mut out = Vec::new();
        for m in &d.members {
            if only.is_some_and(|o| !o.contains(&m.identifier)) {
                continue;
            }
            let packages: Vec<(u16, [u8; 32], Vec<u8>)> =
                c.r2.iter()
                    .flat_map(|(from, list)| {
                        list.iter()
                            .filter(|(to, _, _)| *to == m.identifier)
                            .map(|(_, e, ct)| (*from, *e, ct.clone()))
                    })
                    .collect();
            out.push((
                m.cert.id(),
                AuthMsg::DkgRound2Deliver {
                    session: *session,
                    packages,
                },
            ));
        }
        self.send_auths(out);
    }

    fn on_dkg_deliver(&mut self, from: DeviceId, session: [u8; 32], packages: Vec<(u16, [u8; 32], Vec<u8>)>) {
        let Some(d) = self.dkg.get_mut(&session) else {
            // A restart lost the session, but if the share was durable, answer as the
            // session would have: the coordinator is still waiting for our `DkgDone`.
            return match self.done_from_origin(&session, &from) {
                Some(m) => self.send_auth(from, m),
                None => self.refuse(),
            };
        };
        if d.coordinator != from {
            return self.refuse();
        }
        if let Some(m) = d.done.clone() {
            return self.send_auth(from, m);
        }
        if d.persisting {
            return;
        }
        let (Some(r2_secret), Some(r1_all)) = (d.r2_secret.as_ref(), d.r1_all.as_ref()) else {
            return;
        };
        let mut r2 = BTreeMap::new();
        for (sender, enc, ct) in &packages {
            let aad = dkg_aad(&session, *sender, d.me);
            let opened = hpke_open(self.keys.hpke_private(), enc, &aad, HPKE_INFO_DKG, ct);
            match (
                ident(*sender),
                opened.and_then(|p| dkg::round2::Package::deserialize(&p).ok()),
            ) {
                (Some(id), Some(pkg)) => {
                    r2.insert(id, pkg);
                }
                _ => return self.refuse(),
            }
        }
        let Ok((key, public)) = dkg::part3(r2_secret, r1_all, &r2) else {
            return self.refuse();
        };
        d.persisting = true;
        let group_key = group_key_of(&public);
        let record = Record::Share {
            group_key,
            key_package: ser(key.serialize()),
            public_key_package: ser(public.serialize()),
            origin: ShareOrigin {
                session,
                coordinator: d.coordinator,
                threshold: d.threshold,
                members: d.members.clone(),
            },
        };
        self.persist(
            record,
            Pending::ShareDurable {
                session,
                share: Box::new(Share { key, public }),
            },
        );
    }

    /// The share is on disk: keep it and report to the coordinator.
    pub(super) fn share_durable(&mut self, session: [u8; 32], share: Share) {
        let group_key = group_key_of(&share.public);
        self.shares.insert(group_key, share);
        let known = self.views.0.values().any(|v| v.group_key == group_key);
        let Some(d) = self.dkg.get_mut(&session) else { return };
        if !known {
            self.pending_genesis.insert(
                group_key,
                ShareOrigin {
                    session,
                    coordinator: d.coordinator,
                    threshold: d.threshold,
                    members: d.members.clone(),
                },
            );
        }
        let msg = AuthMsg::DkgDone {
            session,
            from: d.me,
            group_key,
        };
        d.done = Some(msg.clone());
        d.persisting = false;
        // Secrets of the finished rounds are no longer needed.
        d.r1_secret = None;
        d.r2_secret = None;
        d.r1_all = None;
        let to = d.coordinator;
        self.send_auth(to, msg);
    }

    fn on_dkg_done(&mut self, from: DeviceId, session: [u8; 32], i: u16, group_key: [u8; 32]) {
        let Some(d) = self.coord_mut(&session) else {
            return self.send_genesis_to(from, session, i);
        };
        if Self::identifier_of(&d.members, &from) != Some(i) {
            return self.refuse();
        }
        let c = d.coord.as_mut().expect("filtered");
        c.done.insert(i, group_key);
        if c.done.len() < d.members.len() || c.genesis_started {
            return;
        }
        if c.done.values().any(|k| *k != group_key) {
            self.dkg.remove(&session);
            // Our own share of this session (if any) can never get a genesis.
            let mine = self
                .pending_genesis
                .iter()
                .find(|(_, o)| o.session == session)
                .map(|(k, _)| *k);
            match mine {
                Some(key) => self.abandon(session, key),
                None => self.event(Event::AuthorityFailed {
                    reason: "members computed different group keys".into(),
                }),
            }
            return;
        }
        c.genesis_started = true;
        self.sign_genesis(group_key);
    }

    /// Starts (or restarts) the signing of the genesis of a key generation this device
    /// coordinated. Everything in it follows from the key generation's outcome, so every
    /// attempt signs the same genesis.
    fn sign_genesis(&mut self, group_key: [u8; 32]) {
        let (Some(o), Some(share)) = (self.pending_genesis.get(&group_key), self.shares.get(&group_key)) else {
            return;
        };
        if o.coordinator != self.keys.id {
            return;
        }
        let verifying_shares = o
            .members
            .iter()
            .filter_map(|m| {
                let vs = share.public.verifying_shares().get(&ident(m.identifier)?)?;
                Some((m.identifier, ser(vs.serialize()).try_into().ok()?))
            })
            .collect();
        let secret = self.keys.authority_secret(&o.session);
        let genesis = Genesis {
            session: o.session,
            threshold: o.threshold,
            members: o.members.clone(),
            group_key,
            verifying_shares,
            cap_root: crate::caps::root_public(&secret),
        };
        let session = o.session;
        let unsigned = genesis_unsigned(self.keys.id, genesis);
        self.start_signing(
            group_key,
            unsigned,
            SignPurpose::Genesis { dkg: session },
            BTreeSet::new(),
        );
    }

    /// A member reports a key generation done after its session ended here (a restart on
    /// either side, or a lost push): if the genesis is recorded, send it the facts it needs
    /// to join (the genesis and the sealed authority secrets).
    fn send_genesis_to(&mut self, from: DeviceId, session: [u8; 32], i: u16) {
        let found = self.journal.namespaces().find_map(|ns| {
            let g = self.journal.facts(ns).find_map(|f| match &f.body {
                FactBody::Genesis(g) if g.session == session => Some(g),
                _ => None,
            })?;
            g.members
                .iter()
                .any(|m| m.identifier == i && m.cert.id() == from)
                .then_some(*ns)
        });
        let Some(ns) = found else {
            // No live round, no share of ours, no genesis: this device can never record a
            // genesis for the session (that takes its own share), so the member's share is
            // dead weight. Tell it to drop it. (A share of ours still pending, or being
            // given up, is not dead yet: no answer then.)
            let live = self.dkg.contains_key(&session)
                || self.abandoning.contains(&session)
                || self.pending_genesis.values().any(|o| o.session == session);
            if live {
                return self.refuse();
            }
            return self.send_auth(from, AuthMsg::DkgAbandoned { session });
        };
        let facts: Vec<Vec<u8>> = self
            .journal
            .facts(&ns)
            .filter(|f| matches!(f.body, FactBody::Genesis(_) | FactBody::SealedSecret(_)))
            .map(|f| f.encode())
            .collect();
        self.send_auth(from, AuthMsg::Facts { facts });
    }

    /// Gives up a key generation whose genesis was never recorded: durably drop the
    /// share, then tell the members (and the user).
    fn abandon(&mut self, session: [u8; 32], group_key: [u8; 32]) {
        if self.abandoning.contains(&session) || !self.pending_genesis.contains_key(&group_key) {
            return;
        }
        self.abandoning.insert(session);
        // A genesis signing of this session still running must not finish.
        self.sign_coord
            .retain(|_, c| !matches!(c.purpose, SignPurpose::Genesis { dkg } if dkg == session));
        self.persist(
            Record::ShareAbandoned { session, group_key },
            Pending::Abandoned { session, group_key },
        );
    }

    pub(super) fn abandon_durable(&mut self, session: [u8; 32], group_key: [u8; 32]) {
        let origin = self.pending_genesis.get(&group_key).cloned();
        self.abandoning.remove(&session);
        self.drop_share(session, group_key);
        let Some(o) = origin.filter(|o| o.session == session) else {
            return;
        };
        if o.coordinator == self.keys.id {
            self.metrics.dkg_abandoned += 1;
            let me = self.keys.id;
            for to in o.members.iter().map(|m| m.cert.id()).filter(|d| *d != me) {
                self.send_auth(to, AuthMsg::DkgAbandoned { session });
            }
            self.event(Event::AuthorityFailed {
                reason: "key generation could not finish: too few members hold shares (a crash lost the \
                         round state); create the authority again"
                    .into(),
            });
        }
    }

    /// Forgets a share that was given up (live, or while restoring its record).
    pub(super) fn drop_share(&mut self, session: [u8; 32], group_key: [u8; 32]) {
        if self
            .pending_genesis
            .get(&group_key)
            .is_some_and(|o| o.session == session)
        {
            self.pending_genesis.remove(&group_key);
            self.shares.remove(&group_key);
            self.genesis_attempts.remove(&group_key);
        }
    }

    /// The coordinator gave up a key generation: drop our share of it, durably.
    fn on_dkg_abandoned(&mut self, from: DeviceId, session: [u8; 32]) {
        let found = self
            .pending_genesis
            .iter()
            .find(|(_, o)| o.session == session && o.coordinator == from)
            .map(|(k, _)| *k);
        match found {
            Some(group_key) => self.abandon(session, group_key),
            None => self.refuse(),
        }
    }

    /// The `DkgDone` this device sent (or would have) for a key generation whose share is
    /// durable but whose genesis is not recorded yet.
    fn done_from_origin(&self, session: &[u8; 32], coordinator: &DeviceId) -> Option<AuthMsg> {
        let (group_key, o) = self
            .pending_genesis
            .iter()
            .find(|(_, o)| o.session == *session && o.coordinator == *coordinator)?;
        let me = o.members.iter().find(|m| m.cert.id() == self.keys.id)?;
        Some(AuthMsg::DkgDone {
            session: *session,
            from: me.identifier,
            group_key: *group_key,
        })
    }

    /// After a restart: sign the geneses this device coordinated and never recorded.
    /// A member keeps asking (see `auth_timeout`) until the genesis arrives.
    pub(super) fn resume_geneses(&mut self) {
        let mine: Vec<[u8; 32]> = self
            .pending_genesis
            .iter()
            .filter(|(_, o)| o.coordinator == self.keys.id)
            .map(|(k, _)| *k)
            .collect();
        for k in mine {
            self.sign_genesis(k);
        }
        // Geneses this device recorded as coordinator: which members acknowledged the push
        // was not durable, so push the genesis and sealed secrets to every member again
        // (each acknowledges once; anti-entropy will make this unnecessary).
        let me = self.keys.id;
        let mut push = Vec::new();
        for v in self.views.0.values() {
            let ns = Namespace::Authority(v.id);
            let others: BTreeSet<DeviceId> = v.members.keys().copied().filter(|d| *d != me).collect();
            for f in self.journal.facts(&ns) {
                let founding = matches!(f.body, FactBody::Genesis(_) | FactBody::SealedSecret(_));
                if founding && f.author == me && !others.is_empty() {
                    push.push(((f.id(), v.id), others.clone()));
                }
            }
        }
        for (id, to) in push {
            let f = self
                .journal
                .facts(&Namespace::Authority(id.1))
                .find(|f| f.id() == id.0)
                .cloned();
            if let Some(f) = f {
                self.push_fact(&f, &to);
            }
        }
        if !self.pending_genesis.is_empty() {
            self.arm_auth_tick();
        }
    }

    // ----- signing ------------------------------------------------------------------

    /// `Command::Sign`: the authority this device belongs to signs `statement`.
    pub(super) fn sign_statement(&mut self, statement: Vec<u8>) -> Result<(), CommandError> {
        let view = self.my_authority().ok_or(CommandError::NotInAuthority)?.clone();
        if !self.shares.contains_key(&view.group_key) {
            return Err(CommandError::NotInAuthority);
        }
        let ns = Namespace::Authority(view.id);
        let fact = UnsignedFact {
            namespace: ns,
            lamport: self.journal.next_lamport(&ns),
            author: self.keys.id,
            body: FactBody::Statement(statement),
        };
        self.start_signing(view.group_key, fact, SignPurpose::Statement, BTreeSet::new());
        Ok(())
    }

    /// The authority this device is a member of (one per device for now).
    pub(super) fn my_authority(&self) -> Option<&AuthorityView> {
        // One whose share we hold first: a genesis signs itself, so another device could
        // write one listing us as a founder, and without this it might sort first.
        let me = self.keys.id;
        self.views
            .0
            .values()
            .find(|v| v.members.contains_key(&me) && self.shares.contains_key(&v.group_key))
            .or_else(|| self.views.0.values().find(|v| self.owns(v)))
    }

    /// Whether `v` is this device's authority: it lists us, and either its genesis does
    /// (we took part in its key generation) or we hold a share of its key (we were
    /// enrolled). Anyone can write a journal whose later changes add our device (a
    /// genesis signs itself, and so do the votes of devices it invents); being listed
    /// alone must not make it ours, or a stranger could pick this device's authority.
    pub(super) fn owns(&self, v: &AuthorityView) -> bool {
        let me = self.keys.id;
        v.members.contains_key(&me) && (v.founders.contains(&me) || self.shares.contains_key(&v.group_key))
    }

    /// Opens the authority secret sealed to us (once) and links with the other members.
    pub(super) fn open_authority_secret(&mut self, id: crate::journal::AuthorityId) {
        if self.auth_secrets.contains_key(&id) {
            return;
        }
        let me = self.keys.id;
        let ns = Namespace::Authority(id);
        if !self.views.0.contains_key(&id) {
            return;
        }
        // Sealed by the founder that coordinated, or whoever enrolled us (a member when
        // the fact was checked on its way in; it may have been removed since).
        let opened = self.journal.facts(&ns).find_map(|f| match &f.body {
            FactBody::SealedSecret(s) if s.to == me && s.epoch == 0 => {
                hpke_open(self.keys.hpke_private(), &s.enc, &me.0, HPKE_INFO_SECRET, &s.ciphertext)
            }
            _ => None,
        });
        let Some(secret) = opened.and_then(|s| <[u8; 32]>::try_from(s).ok()) else {
            return;
        };
        self.auth_secrets.insert(id, secret);
        self.link_members(id);
    }

    /// Makes every member of our authority a peer we can open member links with.
    fn link_members(&mut self, id: crate::journal::AuthorityId) {
        let me = self.keys.id;
        let (Some(view), Some(secret)) = (self.views.0.get(&id), self.auth_secrets.get(&id)) else {
            return;
        };
        let mut linked = false;
        for (d, m) in &view.members {
            if *d == me || self.peers.contains_key(d) {
                continue;
            }
            let p = PairedPeer {
                id: *d,
                cert: m.cert.clone(),
                addr: m.addr.clone(),
                link_psk: member_link_psk(secret, &me, d),
                invite: [0; 32],
            };
            self.by_noise.insert(p.cert.noise, p.id);
            self.peers.insert(p.id, p);
            linked = true;
        }
        if linked && !self.restoring {
            self.refresh_guard();
        }
    }

    /// Our authority's members changed: link with new members, learn their verifying
    /// shares, and hand the journal to a newcomer this device paired with.
    fn member_view_changed(&mut self, id: crate::journal::AuthorityId, added: Vec<DeviceId>) {
        self.link_members(id);
        let Some(view) = self.views.0.get(&id).cloned() else {
            return;
        };
        self.maybe_switch_share(&view);
        if let Some(share) = self.shares.get_mut(&view.group_key) {
            super::enroll_impl::extend_public(share, &view);
        }
        if self.restoring {
            return;
        }
        // A removed device keeps a share of the old polynomial: a refresh is due (the
        // tick starts it on the lowest-identifier member).
        if self.refresh_busy() {
            self.arm_auth_tick();
        }
        for d in added {
            if self.peers.get(&d).is_some_and(|p| p.invite != [0; 32]) {
                self.invite_newcomer(id, d);
            }
        }
    }

    fn signing_members(&self, group_key: &[u8; 32]) -> Option<(u16, Vec<(DeviceId, u16)>)> {
        if let Some(v) = self.views.0.values().find(|v| v.group_key == *group_key) {
            return Some((v.threshold, v.members.iter().map(|(d, m)| (*d, m.identifier)).collect()));
        }
        let o = self.pending_genesis.get(group_key)?;
        Some((
            o.threshold,
            o.members.iter().map(|m| (m.cert.id(), m.identifier)).collect(),
        ))
    }

    pub(super) fn start_commit_signing(
        &mut self,
        group_key: [u8; 32],
        fact: UnsignedFact,
        instance: crate::consensus::ConsensusId,
    ) {
        self.start_signing(group_key, fact, SignPurpose::Commit { instance }, BTreeSet::new());
    }

    fn start_signing(
        &mut self,
        group_key: [u8; 32],
        fact: UnsignedFact,
        purpose: SignPurpose,
        excluded: BTreeSet<DeviceId>,
    ) {
        let Some((threshold, mut members)) = self.signing_members(&group_key) else {
            return;
        };
        members.retain(|(d, _)| !excluded.contains(d));
        let session = self.rng.bytes32();
        let message = fact.signing_bytes();
        self.sign_coord.insert(
            session,
            SignCoord {
                group_key,
                fact: fact.clone(),
                message,
                threshold,
                members: members.clone(),
                commitments: BTreeMap::new(),
                raw_commitments: BTreeMap::new(),
                package: None,
                shares: BTreeMap::new(),
                purpose,
                started: self.now.mono,
                excluded,
            },
        );
        // Ask ourselves and the threshold's worth of others first, preferring devices with a
        // live channel; the retransmission tick widens the request to every member if
        // they do not answer. Fewer requests mean fewer nonces drawn and persisted.
        let me = self.keys.id;
        let mut others: Vec<DeviceId> = members.iter().map(|(d, _)| *d).filter(|d| *d != me).collect();
        others.sort_by_key(|d| !self.active.contains_key(&(crate::journal::ContextId::OWN, *d)));
        let mut ask: Vec<DeviceId> = others.into_iter().take(threshold as usize).collect();
        if members.iter().any(|(d, _)| *d == me) {
            ask.truncate(threshold as usize - 1);
            ask.push(me);
        }
        for d in ask {
            self.send_auth(
                d,
                AuthMsg::SignRequest {
                    session,
                    group_key,
                    fact: fact.clone(),
                },
            );
        }
        self.arm_auth_tick();
    }

    /// Whether this device agrees to sign `fact` for `from` with `group_key`.
    fn may_sign(&self, from: &DeviceId, group_key: &[u8; 32], fact: &UnsignedFact) -> bool {
        if fact.author != *from {
            return false;
        }
        match &fact.body {
            // A genesis of a key generation we took part in, with the key we computed.
            FactBody::Genesis(g) => {
                g.group_key == *group_key
                    && fact.namespace == Namespace::Authority(g.authority_id())
                    && self.pending_genesis.get(group_key).is_some_and(|o| {
                        o.session == g.session
                            && o.coordinator == *from
                            && o.threshold == g.threshold
                            && o.members == g.members
                    })
                    && self.genesis_shares_match(group_key, &g.verifying_shares)
            }
            // A statement by a member of the authority that owns this key.
            FactBody::Statement(_) => self.views.0.values().any(|v| {
                v.group_key == *group_key
                    && fact.namespace == Namespace::Authority(v.id)
                    && v.members.contains_key(from)
            }),
            // Tree operations need agreement (consensus), not one member's request; the rest
            // are device-signed, never group-signed.
            FactBody::TreeOp(_)
            | FactBody::Equivocation(_)
            | FactBody::HiddenVote(_)
            | FactBody::SealedSecret(_)
            | FactBody::ContextGenesis(_)
            | FactBody::ContextAccept(_)
            | FactBody::Note(_)
            | FactBody::ContextEpoch(_) => false,
            // A commit: checked against our own view like a reducer would.
            FactBody::Commit(c) => self.may_sign_commit(from, &fact.author, c, group_key),
        }
    }

    /// Whether the verifying shares a genesis lists are the ones our key generation
    /// computed: added devices' verifying shares are interpolated from them, so a wrong
    /// list would let its author fake an enrollment.
    fn genesis_shares_match(&self, group_key: &[u8; 32], listed: &[(u16, [u8; 32])]) -> bool {
        let Some(share) = self.shares.get(group_key) else {
            return false;
        };
        let ours = share.public.verifying_shares();
        listed.len() == ours.len()
            && listed.iter().all(|(i, y)| {
                ident(*i)
                    .and_then(|id| ours.get(&id))
                    .and_then(|v| v.serialize().ok())
                    .is_some_and(|b| b[..] == y[..])
            })
    }

    fn on_sign_request(&mut self, from: DeviceId, session: [u8; 32], group_key: [u8; 32], fact: UnsignedFact) {
        if let Some(p) = self.sign_part.get(&session) {
            if p.coordinator == from {
                if let Some((_, m)) = p.share_msg.clone() {
                    return self.send_auth(from, m);
                }
                if let Some(m) = p.commit_msg.clone() {
                    self.send_auth(from, m);
                }
            }
            return;
        }
        if !self.shares.contains_key(&group_key) || !self.may_sign(&from, &group_key, &fact) {
            return self.refuse();
        }
        self.sign_part.insert(
            session,
            SignPart {
                coordinator: from,
                group_key,
                message: fact.signing_bytes(),
                nonces: None,
                own_commitment: Vec::new(),
                commit_msg: None,
                share_msg: None,
                started: self.now.mono,
            },
        );
        // The nonce counter is durable before any nonce derived from it exists, so a
        // restarted device (even one handed its old seed) never draws the same nonce twice.
        // (Past any reservation, so the recorded values only grow.)
        self.nonce_counter = self.nonce_counter.max(self.nonce_reserved).max(self.nonce_refill_to) + 1;
        self.persist(
            Record::NonceCounter(self.nonce_counter),
            Pending::Commit {
                session,
                counter: self.nonce_counter,
            },
        );
    }

    /// Fresh FROST nonces from the peer's stream and a durable, never reused counter
    /// value (so even a peer restored with an old seed never draws a nonce twice).
    pub(super) fn frost_nonce(
        rng: &mut PeerRng,
        counter: u64,
        key: &KeyPackage,
    ) -> (SigningNonces, SigningCommitments) {
        let mut seed = [0u8; 40];
        seed[..32].copy_from_slice(&rng.bytes32());
        seed[32..].copy_from_slice(&counter.to_le_bytes());
        let mut nonce_rng = PeerRng::from_seed(blake3::derive_key("aura 2026-11 frost nonce", &seed));
        frost::round1::commit(key.signing_share(), &mut nonce_rng)
    }

    /// A nonce from the durable reservation for the share of `group_key`, if one is
    /// left (and a new reservation is written when few are); `None` means "not now",
    /// and callers fall back to a path that persists its own counter.
    pub(super) fn reserved_nonce(&mut self, group_key: &[u8; 32]) -> Option<(SigningNonces, SigningCommitments)> {
        self.top_up_nonces();
        let share = self.shares.get(group_key)?;
        if self.nonce_counter >= self.nonce_reserved {
            return None;
        }
        self.nonce_counter += 1;
        Some(Self::frost_nonce(&mut self.rng, self.nonce_counter, &share.key))
    }

    /// Writes a new reservation of nonce counter values when few are left (and none is
    /// being written), so that consensus votes can carry nonce commitments.
    pub(super) fn top_up_nonces(&mut self) {
        const BLOCK: u64 = 256;
        if self.nonce_reserved.saturating_sub(self.nonce_counter) < BLOCK / 4 && !self.nonce_refilling {
            self.nonce_refilling = true;
            let upto = self.nonce_counter.max(self.nonce_reserved) + BLOCK;
            self.nonce_refill_to = upto;
            self.persist(Record::NonceCounter(upto), Pending::NoncesReserved(upto));
        }
    }

    /// The nonce counter is durable: commit and answer.
    pub(super) fn commit_durable(&mut self, session: [u8; 32], counter: u64) {
        let Some(p) = self.sign_part.get(&session) else { return };
        let Some(share) = self.shares.get(&p.group_key) else {
            return;
        };
        let (nonces, commitments) = Self::frost_nonce(&mut self.rng, counter, &share.key);
        let me = identifier_number(share.key.identifier());
        let raw = ser(commitments.serialize());
        let msg = AuthMsg::SignCommit {
            session,
            from: me,
            commitments: raw.clone(),
        };
        let p = self.sign_part.get_mut(&session).expect("present");
        p.nonces = Some(nonces);
        p.own_commitment = raw.clone();
        p.commit_msg = Some(msg.clone());
        let to = p.coordinator;
        if to == self.keys.id {
            // Our own commitment needs no trip through bytes.
            self.add_commitment(session, self.keys.id, me, commitments, raw);
        } else {
            self.send_auth(to, msg);
        }
    }

    fn on_sign_commit(&mut self, from: DeviceId, session: [u8; 32], i: u16, commitments: Vec<u8>) {
        let Some(c) = self.sign_coord.get(&session) else {
            return self.refuse();
        };
        if !c.members.contains(&(from, i)) {
            return self.refuse();
        }
        if c.package.is_some() {
            return; // enough signers already chosen
        }
        let Ok(cm) = SigningCommitments::deserialize(&commitments) else {
            return self.refuse();
        };
        self.add_commitment(session, from, i, cm, commitments);
    }

    /// Records a commitment; with a threshold of them, fixes the signer set and sends the
    /// commitments (as received, so nothing is re-encoded) to each chosen signer.
    fn add_commitment(&mut self, session: [u8; 32], from: DeviceId, i: u16, cm: SigningCommitments, raw: Vec<u8>) {
        let Some(c) = self.sign_coord.get_mut(&session) else {
            return;
        };
        let Some(id) = ident(i) else { return };
        if c.package.is_some() || !c.members.contains(&(from, i)) {
            return;
        }
        c.commitments.insert(id, cm);
        c.raw_commitments.insert(i, raw);
        if c.commitments.len() < c.threshold as usize {
            return;
        }
        let package = SigningPackage::new(c.commitments.clone(), &c.message);
        let list: Vec<(u16, Vec<u8>)> = c.raw_commitments.iter().map(|(k, v)| (*k, v.clone())).collect();
        c.package = Some((package, list.clone()));
        let chosen: Vec<DeviceId> = c
            .members
            .iter()
            .filter(|(_, i)| c.raw_commitments.contains_key(i))
            .map(|(d, _)| *d)
            .collect();
        let me = self.keys.id;
        for d in chosen {
            if d == me {
                self.local_share(session);
            } else {
                self.send_auth(
                    d,
                    AuthMsg::SignPackage {
                        session,
                        commitments: list.clone(),
                    },
                );
            }
        }
    }

    /// The coordinator's own share, computed from the package it already holds.
    fn local_share(&mut self, session: [u8; 32]) {
        let Some(c) = self.sign_coord.get(&session) else { return };
        let Some((pkg, _)) = c.package.as_ref() else { return };
        let Some(p) = self.sign_part.get_mut(&session) else {
            return;
        };
        let Some(nonces) = p.nonces.take() else { return };
        let Some(share) = self.shares.get(&p.group_key) else {
            return;
        };
        let Ok(sig_share) = frost::round2::sign(pkg, &nonces, &share.key) else {
            return;
        };
        let id = *share.key.identifier();
        self.add_share(session, id, sig_share);
    }

    fn on_sign_package(&mut self, from: DeviceId, session: [u8; 32], commitments: Vec<(u16, Vec<u8>)>) {
        let Some(p) = self.sign_part.get_mut(&session) else {
            return self.refuse();
        };
        if p.coordinator != from {
            return self.refuse();
        }
        if let Some((list, m)) = p.share_msg.clone() {
            // The same package again (our share was lost): the same share. Anything else
            // would need the nonce a second time, and it is gone.
            if list == commitments {
                self.send_auth(from, m);
            } else {
                self.refuse();
            }
            return;
        }
        let Some(nonces) = p.nonces.take() else { return };
        let Some(share) = self.shares.get(&p.group_key) else {
            return;
        };
        let me = identifier_number(share.key.identifier());
        // Our own commitment must be in the set, byte for byte; it is used as we hold it.
        let mut map = BTreeMap::new();
        let mut ok = commitments.iter().any(|(i, raw)| *i == me && *raw == p.own_commitment);
        for (i, raw) in &commitments {
            let parsed = if *i == me {
                Some(*nonces.commitments())
            } else {
                SigningCommitments::deserialize(raw).ok()
            };
            match (ident(*i), parsed) {
                (Some(id), Some(cm)) => {
                    map.insert(id, cm);
                }
                _ => ok = false,
            }
        }
        if !ok || map.len() != commitments.len() {
            // The nonce is spent either way: never offer it for a second package.
            p.commit_msg = None;
            return self.refuse();
        }
        let pkg = SigningPackage::new(map, &p.message);
        let Ok(sig_share) = frost::round2::sign(&pkg, &nonces, &share.key) else {
            return self.refuse();
        };
        drop(nonces);
        let msg = AuthMsg::SignShare {
            session,
            from: me,
            share: sig_share.serialize(),
        };
        p.share_msg = Some((commitments, msg.clone()));
        self.send_auth(from, msg);
    }

    fn on_sign_share(&mut self, from: DeviceId, session: [u8; 32], i: u16, share: Vec<u8>) {
        let Some(c) = self.sign_coord.get(&session) else {
            return self.refuse();
        };
        let Some((pkg, _)) = c.package.as_ref() else {
            return self.refuse();
        };
        let (Some(id), Ok(s)) = (ident(i), SignatureShare::deserialize(&share)) else {
            return self.refuse();
        };
        if !c.members.contains(&(from, i)) || !pkg.signing_commitments().contains_key(&id) {
            return self.refuse();
        }
        self.add_share(session, id, s);
    }

    fn add_share(&mut self, session: [u8; 32], id: Identifier, s: SignatureShare) {
        let Some(c) = self.sign_coord.get_mut(&session) else {
            return;
        };
        c.shares.insert(id, s);
        if c.shares.len() < c.threshold as usize {
            return;
        }
        let c = self.sign_coord.remove(&session).expect("present");
        let Some(share) = self.shares.get(&c.group_key) else {
            return;
        };
        let (pkg, _) = c.package.as_ref().expect("shares follow the package");
        let signature = match frost::aggregate(pkg, &c.shares, &share.public) {
            Ok(s) => s,
            Err(e) => {
                // A member sent a bad share: try again without it. Without a culprit
                // (the shares could not be checked at all) or with too few members
                // left, another attempt would fail the same way at once.
                let mut excluded = c.excluded.clone();
                for id in e.culprits() {
                    if let Some((d, _)) = c.members.iter().find(|(_, i)| ident(*i) == Some(id)) {
                        excluded.insert(*d);
                    }
                }
                let left = c.members.iter().filter(|(d, _)| !excluded.contains(d)).count();
                if excluded.len() > c.excluded.len() && left >= c.threshold as usize {
                    self.start_signing(c.group_key, c.fact, c.purpose, excluded);
                } else if matches!(c.purpose, SignPurpose::Statement) {
                    self.event(Event::SignFailed {
                        reason: "members' signature shares did not verify".into(),
                        statement: statement_of(&c.fact),
                    });
                }
                return;
            }
        };
        let sig: [u8; 64] = ser(signature.serialize()).try_into().expect("64-byte signature");
        debug_assert!(share.public.verifying_key().verify(&c.message, &signature).is_ok());
        let fact = signed_fact(&c.fact, sig);
        match c.purpose {
            SignPurpose::Genesis { dkg } => self.genesis_signed(dkg, fact),
            SignPurpose::Commit { instance } => self.commit_signed(instance, fact),
            SignPurpose::Statement => {
                let Namespace::Authority(authority) = fact.namespace else {
                    return;
                };
                self.record_facts(vec![fact.clone()], None);
                self.event(Event::Signed {
                    authority,
                    group_key: c.group_key,
                    message: c.message,
                    signature: sig,
                    fact,
                });
            }
        }
    }

    // ----- genesis and facts --------------------------------------------------------

    fn genesis_signed(&mut self, session: [u8; 32], genesis: Fact) {
        let FactBody::Genesis(g) = &genesis.body else { return };
        if self.abandoning.contains(&session) {
            return; // given up while this signature was on its way: never record it
        }
        let Some(o) = self.pending_genesis.get(&g.group_key).filter(|o| o.session == session) else {
            return;
        };
        let members = o.members.clone();
        let secret = self.keys.authority_secret(&session);
        let ns = Namespace::Authority(g.authority_id());
        // The authority secret, sealed to every member's HPKE key.
        let mut facts = vec![genesis];
        for (k, m) in members.iter().enumerate() {
            let to = m.cert.id();
            let aad = to.0;
            let Some((enc, ciphertext)) = hpke_seal(&mut self.rng, &m.cert.hpke, &aad, HPKE_INFO_SECRET, &secret)
            else {
                continue;
            };
            let body = FactBody::SealedSecret(SealedSecret {
                to,
                epoch: 0,
                enc,
                ciphertext,
            });
            let lamport = 1 + k as u64;
            let msg = Fact::signing_bytes(&ns, lamport, &self.keys.id, &body);
            let sig = self.keys.sign(&mut self.rng, &msg);
            facts.push(Fact {
                namespace: ns,
                lamport,
                author: self.keys.id,
                body,
                sig: FactSig::Device(Sig64(sig)),
            });
        }
        let others: BTreeSet<DeviceId> = members
            .iter()
            .map(|m| m.cert.id())
            .filter(|d| *d != self.keys.id)
            .collect();
        self.record_facts(facts, Some(others));
        self.dkg.remove(&session);
    }

    /// Persists facts (one record each) and, once durable, merges them, pushing them to
    /// `push_to` until each acknowledges.
    pub(super) fn record_facts(&mut self, facts: Vec<Fact>, push_to: Option<BTreeSet<DeviceId>>) {
        for f in facts {
            if self.journal.contains(&f) {
                continue;
            }
            self.persist(
                Record::Fact(f.clone()),
                Pending::FactDurable {
                    fact: Box::new(f),
                    push_to: push_to.clone(),
                    ack_to: None,
                },
            );
        }
    }

    /// A fact is durable here: merge, update views, push or acknowledge.
    pub(super) fn fact_durable(&mut self, fact: Fact, push_to: Option<BTreeSet<DeviceId>>, ack_to: Option<DeviceId>) {
        let id = fact.id();
        self.sync_incoming_done(&id);
        self.apply_fact(fact.clone());
        if let Some(to) = push_to {
            if !to.is_empty() {
                self.push_fact(&fact, &to);
            }
        }
        if let Some(d) = ack_to {
            self.send_via(d, Some(&fact.namespace), AuthMsg::FactsAck { ids: vec![id] });
        }
    }

    /// Merges a verified, durable fact and refreshes what depends on it (also used by restore).
    pub(super) fn apply_fact(&mut self, fact: Fact) {
        let me = self.keys.id;
        let asks = matches!(&fact.body, FactBody::Note(n) if n.ack);
        let follow = (fact.author == me || asks).then(|| fact.clone());
        // Sessions waiting for fetched facts need to know this one arrived.
        let arrived = self.sync_awaits_facts().then(|| (fact.namespace, fact.id()));
        if !self.merge_fact(fact) {
            return;
        }
        if let Some((ns, id)) = arrived {
            self.fact_arrived(ns, id);
        }
        // After the merge, so that the views list the namespace's members.
        match follow {
            Some(f) if f.author == me => self.track_fact(&f),
            Some(f) => self.confirm_delivery(&f),
            None => {}
        }
    }

    /// Merges a fact into the journal and the views; false if it was already there.
    fn merge_fact(&mut self, fact: Fact) -> bool {
        let ns = fact.namespace;
        let is_genesis = matches!(fact.body, FactBody::Genesis(_));
        let kind = if matches!(
            fact.body,
            FactBody::TreeOp(_) | FactBody::Commit(_) | FactBody::Equivocation(_) | FactBody::HiddenVote(_)
        ) {
            Kind::TreeOp
        } else {
            Kind::Other
        };
        let is_sealed = matches!(fact.body, FactBody::SealedSecret(_));
        // A tree change appended at the end of the journal (the usual case) is applied
        // to the current view; one that sorts earlier needs the whole reduction.
        let appended = match ns {
            Namespace::Authority(a) => {
                matches!(kind, Kind::TreeOp)
                    && self.views.0.contains_key(&a)
                    && self.journal.last_key(&ns).is_none_or(|k| k < fact.order_key())
            }
            Namespace::Context(_) => false,
        };
        let step_fact = appended.then(|| fact.clone());
        let commit = match &fact.body {
            FactBody::Commit(c) => Some(c.clone()),
            _ => None,
        };
        if !self.journal.insert(fact) {
            return false;
        }
        let id = match ns {
            Namespace::Authority(id) => id,
            Namespace::Context(c) => {
                self.refresh_context(c);
                self.epoch_upkeep();
                return true;
            }
        };
        // Only a genesis or a tree operation changes the view; re-reducing on every
        // statement would make each insert cost the whole journal.
        let changes_view = is_genesis || matches!(kind, Kind::TreeOp) || !self.views.0.contains_key(&id);
        let view = if let Some(f) = step_fact {
            let mut v = self.views.0[&id].clone();
            let fid = f.id();
            v.step_checked(fid, &f, self.consensus.votes_checked == Some(fid));
            v
        } else if changes_view {
            match AuthorityView::reduce(&self.journal, id) {
                Some(v) => v,
                None => return true,
            }
        } else {
            self.views.0[&id].clone()
        };
        let mine = self.owns(&view);
        let created = is_genesis && mine && !self.views.0.contains_key(&id);
        let added: Vec<DeviceId> = match self.views.0.get(&id) {
            Some(old) => view
                .members
                .keys()
                .filter(|d| !old.members.contains_key(d))
                .copied()
                .collect(),
            None => Vec::new(),
        };
        let moved = self.views.0.get(&id).is_some_and(|old| old.epoch < view.epoch);
        if let Some(c) = &commit {
            // Applied or not, its votes may show a member voting twice.
            self.observe_votes(id, &c.votes);
        }
        if let (Some(c), true) = (commit, moved) {
            self.committed(id, c.id, c.prestate, view.epoch);
        }
        let newly: Vec<DeviceId> = match self.views.0.get(&id) {
            Some(old) => view.equivocators.difference(&old.equivocators).copied().collect(),
            None => view.equivocators.iter().copied().collect(),
        };
        self.views.0.insert(id, view.clone());
        self.pending_genesis.remove(&view.group_key);
        if changes_view {
            self.refresh_contexts_of(id);
        }
        if !self.restoring {
            for device in newly {
                self.event(Event::EquivocationProven { authority: id, device });
            }
        }
        if created && !self.restoring && self.shares.contains_key(&view.group_key) {
            self.top_up_nonces();
        }
        if created && !self.restoring {
            self.event(Event::AuthorityCreated {
                authority: id,
                group_key: view.group_key,
                threshold: view.threshold,
                members: view.members.len() as u16,
                has_share: self.shares.contains_key(&view.group_key),
            });
        }
        if mine && (is_sealed || is_genesis) {
            self.open_authority_secret(id);
        }
        if mine && changes_view {
            self.member_view_changed(id, added);
            self.epoch_upkeep();
        }
        if !self.restoring && self.awaiting_share().is_some() {
            // Listed (by a change, or as a founder whose key generation state died in a
            // crash) but without a share: ask for one (see peer_enroll.rs).
            self.arm_auth_tick();
        }
        true
    }

    /// Facts pushed by `from` (restricted to namespace `only` when it came in a context).
    pub(super) fn on_facts(&mut self, from: DeviceId, facts: Vec<Vec<u8>>, only: Option<Namespace>) {
        let mut decoded = Vec::new();
        for b in facts {
            match Fact::decode(&b) {
                Ok(f) => decoded.push(f),
                Err(_) => self.fact_rejected(FactError::Malformed),
            }
        }
        // Context facts only for contexts this device already holds, from their members:
        // storing self-certifying context creations from any device would let it fill the
        // journal with contexts that do not concern us (new contexts come through the
        // join or a share).
        let before = decoded.len();
        decoded.retain(|f| match f.namespace {
            _ if only.is_some_and(|n| n != f.namespace) => false,
            Namespace::Authority(_) => true,
            Namespace::Context(c) => self
                .contexts
                .get(&c)
                .is_some_and(|s| s.view.members.contains_key(&from)),
        });
        for _ in decoded.len()..before {
            self.fact_rejected(FactError::WrongNamespace);
        }
        // Genesis first: the other facts are verified against it.
        decoded.sort_by_key(|f| !matches!(f.body, FactBody::Genesis(_)));
        let mut views = self.views.clone();
        let mut seen = BTreeSet::new();
        let mut held: BTreeMap<Namespace, Vec<FactId>> = BTreeMap::new();
        for f in decoded {
            let ns = f.namespace;
            let id = f.id();
            // A copy within the batch, or of a fact whose write is still in flight: its
            // acknowledgement follows that write.
            if !seen.insert(id) || self.sync_incoming(&id) {
                continue;
            }
            if self.journal.contains(&f) {
                held.entry(ns).or_default().push(id);
                // The author pushes a note until it has our confirmation: it may have
                // missed it. Nobody else gets one for it.
                if f.author == from {
                    self.confirm_delivery(&f);
                }
                continue;
            }
            let checked = match ns {
                Namespace::Authority(_) => verify_fact(&f, &ns, &views),
                Namespace::Context(c) => match self.contexts.get(&c) {
                    Some(s) => verify_fact(&f, &ns, &s.view),
                    None => Err(FactError::WrongNamespace),
                },
            };
            if let Err(e) = checked {
                self.fact_rejected(e);
                continue;
            }
            if let (FactBody::Genesis(g), Namespace::Authority(id)) = (&f.body, ns) {
                // Provisional view so the genesis' companions verify in this batch.
                let mut j = crate::journal::Journal::new();
                j.insert(f.clone());
                if let Some(v) = AuthorityView::reduce(&j, id) {
                    let _ = g;
                    views.0.insert(id, v);
                }
            }
            self.sync_incoming_start(id);
            self.persist(
                Record::Fact(f.clone()),
                Pending::FactDurable {
                    fact: Box::new(f),
                    push_to: None,
                    ack_to: Some(from),
                },
            );
        }
        // One acknowledgement per namespace for the copies we already hold.
        for (ns, ids) in held {
            self.send_via(from, Some(&ns), AuthMsg::FactsAck { ids });
        }
    }

    pub(super) fn fact_rejected(&mut self, e: FactError) {
        self.metrics.drop(DropReason::BadFact);
        *self.metrics.fact_rejects.entry(format!("{e:?}")).or_default() += 1;
    }

    // ----- retransmission -----------------------------------------------------------

    pub(super) fn arm_auth_tick(&mut self) {
        if self.auth_tick.is_none() {
            self.auth_tick = Some(self.now.mono.saturating_add(RETRY));
        }
    }

    pub(super) fn auth_deadline(&self) -> Option<Instant> {
        self.auth_tick
    }

    /// Resends every step still waiting for an answer, and gives up on stale sessions.
    pub(super) fn auth_timeout(&mut self) {
        let now = self.now.mono;
        if self.auth_tick.is_none_or(|t| t > now) {
            return;
        }
        self.auth_tick = None;
        let mut resend: Vec<(DeviceId, AuthMsg)> = Vec::new();
        let mut failed = Vec::new();
        for (session, d) in &self.dkg {
            if d.started.saturating_add(DKG_TIMEOUT) <= now && d.coord.is_some() {
                failed.push(*session);
                continue;
            }
            let Some(c) = &d.coord else { continue };
            for m in &d.members {
                let to = m.cert.id();
                let i = m.identifier;
                if !c.r1.contains_key(&i) {
                    resend.push((
                        to,
                        AuthMsg::DkgInvite {
                            session: *session,
                            threshold: d.threshold,
                            members: d.members.clone(),
                        },
                    ));
                } else if c.r1.len() == d.members.len() && !c.r2.contains_key(&i) {
                    let packages = c.r1.iter().map(|(k, v)| (*k, v.clone())).collect();
                    resend.push((
                        to,
                        AuthMsg::DkgRound1All {
                            session: *session,
                            packages,
                        },
                    ));
                }
            }
        }
        let redeliver: Vec<([u8; 32], BTreeSet<u16>)> = self
            .dkg
            .iter()
            .filter_map(|(s, d)| {
                let c = d.coord.as_ref()?;
                (c.r2.len() == d.members.len()).then(|| {
                    (
                        *s,
                        d.members
                            .iter()
                            .map(|m| m.identifier)
                            .filter(|i| !c.done.contains_key(i))
                            .collect(),
                    )
                })
            })
            .collect();
        for s in failed {
            let Some(d) = self.dkg.remove(&s) else { continue };
            if d.coord.as_ref().is_some_and(|c| c.genesis_started) {
                // Key generation finished; its genesis signing has its own retries and
                // limit (see the sign_failed loop below). The round state is no longer needed.
                continue;
            }
            // Round 2 finished, so the group key is fixed; if at least a threshold of
            // members (this one included) hold durable shares, the authority can sign, and
            // a member that lost its round state in a crash only makes it less redundant.
            // Failing here instead would strand the shares that do exist.
            let usable = d.coord.as_ref().and_then(|c| {
                let key = *c.done.values().next()?;
                let agreed = c.done.values().all(|k| *k == key);
                (c.r2.len() == d.members.len()
                    && agreed
                    && c.done.len() >= d.threshold as usize
                    && !c.genesis_started
                    && self.pending_genesis.get(&key).is_some_and(|o| o.session == s))
                .then_some(key)
            });
            // Without enough shares, a share this device already holds for the session is
            // dead weight that would block every later key generation: give it up (that
            // also tells the members and the user).
            let mine = self
                .pending_genesis
                .iter()
                .find(|(_, o)| o.session == s)
                .map(|(k, _)| *k);
            match (usable, mine) {
                (Some(key), _) => {
                    self.metrics.dkg_partial += 1;
                    self.sign_genesis(key);
                }
                (None, Some(key)) => self.abandon(s, key),
                (None, None) => self.event(Event::AuthorityFailed {
                    reason: "key generation timed out".into(),
                }),
            }
        }
        for (s, only) in redeliver {
            if !only.is_empty() {
                self.deliver_r2(&s, Some(&only));
            }
        }
        let mut sign_failed = Vec::new();
        for (session, c) in &self.sign_coord {
            if c.started.saturating_add(SIGN_TIMEOUT) <= now {
                sign_failed.push(*session);
                continue;
            }
            match &c.package {
                None => {
                    for (d, i) in &c.members {
                        if ident(*i).is_some_and(|id| !c.commitments.contains_key(&id)) {
                            resend.push((
                                *d,
                                AuthMsg::SignRequest {
                                    session: *session,
                                    group_key: c.group_key,
                                    fact: c.fact.clone(),
                                },
                            ));
                        }
                    }
                }
                Some((pkg, list)) => {
                    for (d, i) in &c.members {
                        let Some(id) = ident(*i) else { continue };
                        if *d != self.keys.id
                            && pkg.signing_commitments().contains_key(&id)
                            && !c.shares.contains_key(&id)
                        {
                            resend.push((
                                *d,
                                AuthMsg::SignPackage {
                                    session: *session,
                                    commitments: list.clone(),
                                },
                            ));
                        }
                    }
                }
            }
        }
        for s in sign_failed {
            let Some(c) = self.sign_coord.remove(&s) else { continue };
            if let SignPurpose::Genesis { dkg } = c.purpose {
                // Members may be down for a while; the genesis is worth waiting for (the
                // shares are useless without it), and every attempt signs the same one. But
                // if too few members ever got their shares (the round state died with a
                // crashed coordinator), no attempt can succeed: give up after a few.
                let n = self.genesis_attempts.entry(c.group_key).or_default();
                *n += 1;
                if *n >= GENESIS_ATTEMPTS {
                    self.abandon(dkg, c.group_key);
                } else {
                    self.sign_genesis(c.group_key);
                }
                continue;
            }
            let statement = match c.purpose {
                SignPurpose::Statement => statement_of(&c.fact),
                _ => None,
            };
            self.event(Event::SignFailed {
                reason: "not enough members answered in time".into(),
                statement,
            });
        }
        // Participants forget sessions nobody finished.
        self.sign_part
            .retain(|_, p| p.started.saturating_add(SIGN_TIMEOUT * 2) > now);
        self.dkg.retain(|_, d| d.started.saturating_add(DKG_TIMEOUT * 2) > now);
        // A member whose share is durable but who has no genesis yet asks the coordinator
        // again now and then (its `DkgDone` may have been lost, or a restart ended a round).
        if self.genesis_poll_at <= now {
            self.genesis_poll_at = now.saturating_add(GENESIS_POLL);
            let me = self.keys.id;
            for o in self.pending_genesis.values() {
                // A live round that got this far has nothing left to retransmit on our
                // side either: our `DkgDone` may be what was lost.
                let round_done = self.dkg.get(&o.session).is_none_or(|d| d.done.is_some());
                if o.coordinator != me && round_done {
                    if let Some(m) = self.done_from_origin(&o.session, &o.coordinator) {
                        resend.push((o.coordinator, m));
                    }
                }
            }
        }
        self.send_auths(resend);
        self.resend_pushes();
        self.resend_context_shares();
        self.enroll_tick();
        self.refresh_tick();
        self.epoch_upkeep();
        let busy = self.enroll_busy()
            || self.refresh_busy()
            || self.epochs_busy()
            || !self.dkg.is_empty()
            || !self.sign_coord.is_empty()
            || !self.sync.push.is_empty()
            || !self.ctx_push.is_empty()
            || !self.sign_part.is_empty()
            || !self.pending_genesis.is_empty();
        if busy {
            self.arm_auth_tick();
        }
    }

    /// Restores a share from its record.
    pub(super) fn restore_share(&mut self, key_package: &[u8], public_key_package: &[u8], origin: ShareOrigin) {
        if let (Ok(key), Ok(public)) = (
            KeyPackage::deserialize(key_package),
            PublicKeyPackage::deserialize(public_key_package),
        ) {
            let group_key = group_key_of(&public);
            if !self.views.0.values().any(|v| v.group_key == group_key) {
                self.pending_genesis.insert(group_key, origin);
            }
            self.shares.insert(group_key, Share { key, public });
        }
    }
}

enum Kind {
    TreeOp,
    Other,
}

fn group_key_of(public: &PublicKeyPackage) -> [u8; 32] {
    ser(public.verifying_key().serialize())
        .try_into()
        .expect("32-byte group key")
}

pub(super) fn identifier_number(id: &Identifier) -> u16 {
    // Identifiers we create are small integers; recover the number from its encoding.
    let b = id.serialize();
    u16::from_le_bytes([b[0], b[1]])
}

/// The statement a signing of a `Sign` command is for.
fn statement_of(f: &UnsignedFact) -> Option<Vec<u8>> {
    match &f.body {
        FactBody::Statement(s) => Some(s.clone()),
        _ => None,
    }
}
