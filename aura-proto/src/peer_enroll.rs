//! Enrolling an added device: giving a device that a tree change made a member a share
//! of the authority's existing key, without a new key generation and without any one
//! device learning the share.
//!
//! FROST's repairable threshold scheme does the arithmetic. A share is the point of the
//! key polynomial at the device's identifier; `t` helpers (t = the key's threshold) can
//! each split their Lagrange-weighted contribution to that point into `t` random parts
//! (`Delta`s) that sum to it. Each helper sends one part to each other helper over their
//! member link, sums the parts it receives (a `Sigma`) and seals the sum to the
//! newcomer's HPKE key. The newcomer adds the sums: that is its share. No helper sees
//! more than one part of another's contribution, and the enroller, which relays the
//! sealed sums, cannot open them.
//!
//! The newcomer checks the result against its verifying share, which every member
//! derives from the genesis' verifying shares by interpolation
//! ([`AuthorityView::share_at`]); a wrong part from any helper is caught there, and the
//! enroller tries again with other helpers after [`ATTEMPT`].
//!
//! Flow (E = the device that paired with the newcomer N and proposed the change):
//! the `AddDevice` commit applies on E → E pushes N the facts its view is reduced from
//! → N, listed but without a share, sends `EnrollAsk` to the members it paired with
//! (again every [`ASK_EVERY`] until it has one) → E seals the authority secret to N
//! (a fact) and sends `EnrollStart` to the helpers (itself first) → `EnrollDelta`
//! between helpers → `EnrollSigma` to E → `Enroll` to N → N persists its share, opens
//! the authority secret, links with the members and answers `EnrollDone`.
//!
//! N takes a share only from a device it paired with by invitation (the user's consent),
//! and only while it holds no share of any authority. A journal that merely lists N
//! never makes that authority N's (see `Peer::owns`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use frost::keys::repairable::{self, Delta, Sigma};
use frost::keys::{KeyPackage, PublicKeyPackage, VerifyingShare};
use frost::VerifyingKey;
use frost_ristretto255 as frost;

use super::authority_impl::ident;
use super::authority_impl::{hpke_open, hpke_seal, Share};
use super::{Event, Peer, Pending};
use crate::authority::{AuthMsg, AuthorityView};
use crate::journal::{AuthorityId, FactBody, Namespace, SealedSecret, TreeOpKind};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::{Record, ShareOrigin};
use crate::time::Instant;

/// How long one attempt (one helper set) gets before the enroller picks other helpers.
const ATTEMPT: Duration = Duration::from_secs(20);
/// Attempts before the enroller gives up (the newcomer's next `EnrollAsk` starts over).
const MAX_ATTEMPTS: u32 = 6;
/// How long a helper keeps a session (its parts, for retransmission).
const HELP_TTL: Duration = Duration::from_secs(120);
/// Sessions a device helps with at once.
const MAX_HELPS: usize = 16;
/// How often a listed device without a share asks for one.
const ASK_EVERY: Duration = Duration::from_secs(5);
/// How often the enroller pushes the journal to an added device that has not asked yet,
/// and how many times.
const INVITE_EVERY: Duration = Duration::from_secs(10);
const INVITE_PUSHES: u32 = 30;
/// Sessions one enroller may have a helper keep at once.
const MAX_HELPS_PER_ENROLLER: usize = 4;
const HPKE_INFO_ENROLL: &[u8] = b"aura enroll sigma v1";

/// Enrollment as this device sees it: as enroller, helper or newcomer.
#[derive(Default)]
pub(crate) struct EnrollState {
    /// Enrollments this device runs, by newcomer.
    leads: BTreeMap<DeviceId, Lead>,
    /// Sessions this device helps with.
    helps: BTreeMap<[u8; 32], Help>,
    /// Newcomer: when to ask again.
    ask_at: Instant,
    /// Newcomer: a share record is being written.
    writing: bool,
    /// Enroller: added devices we paired with that have not asked for their share yet,
    /// with when to push them the journal again and how many pushes are left.
    invited: BTreeMap<DeviceId, (Instant, u32)>,
}

struct Lead {
    session: [u8; 32],
    nonce: [u8; 32],
    authority: AuthorityId,
    helpers: Vec<u16>,
    sigmas: BTreeMap<u16, ([u8; 32], Vec<u8>)>,
    started: Instant,
    attempt: u32,
}

struct Help {
    enroller: DeviceId,
    authority: AuthorityId,
    newcomer: DeviceId,
    newcomer_ident: u16,
    me: u16,
    helpers: Vec<u16>,
    /// Our parts for the other helpers, as sent (resent when the enroller repeats).
    out: Vec<(DeviceId, AuthMsg)>,
    /// Parts received (ours included); dropped once summed.
    received: BTreeMap<u16, Delta>,
    sigma: Option<AuthMsg>,
    started: Instant,
}

/// Binds a sealed sum to its session, newcomer and helper.
fn sigma_aad(session: &[u8; 32], newcomer: u16, helper: u16) -> Vec<u8> {
    let mut a = session.to_vec();
    a.extend_from_slice(&newcomer.to_le_bytes());
    a.extend_from_slice(&helper.to_le_bytes());
    a
}

/// The public key package of `view`'s key: the group key and the verifying share of
/// every identifier given out (from the genesis, and interpolated for added devices).
pub(crate) fn public_package(view: &AuthorityView) -> Option<PublicKeyPackage> {
    let mut shares = BTreeMap::new();
    for (i, y) in &view.verifying_shares {
        shares.insert(ident(*i)?, VerifyingShare::deserialize(y).ok()?);
    }
    let key = VerifyingKey::deserialize(&view.group_key).ok()?;
    Some(PublicKeyPackage::new(shares, key, Some(view.key_threshold)))
}

/// Adds the verifying shares of devices added since the share was made, so their
/// signature shares check and aggregate.
pub(crate) fn extend_public(share: &mut Share, view: &AuthorityView) {
    let missing = view
        .verifying_shares
        .keys()
        .any(|i| ident(*i).is_none_or(|id| !share.public.verifying_shares().contains_key(&id)));
    if !missing {
        return;
    }
    let mut all = share.public.verifying_shares().clone();
    for (i, y) in &view.verifying_shares {
        if let (Some(id), Ok(vs)) = (ident(*i), VerifyingShare::deserialize(y)) {
            all.entry(id).or_insert(vs);
        }
    }
    share.public = PublicKeyPackage::new(all, *share.public.verifying_key(), share.public.min_signers());
}

impl Peer {
    /// `Command::AddDevice`: propose adding a device this one paired with.
    pub(super) fn add_device(&mut self, device: DeviceId) -> Result<(), super::CommandError> {
        let view = self.my_authority().ok_or(super::CommandError::NotInAuthority)?;
        let next = view.next_identifier;
        if view.members.contains_key(&device) {
            return Err(super::CommandError::InvalidChange);
        }
        let p = self
            .peers
            .get(&device)
            .filter(|p| p.invite != [0; 32])
            .ok_or(super::CommandError::UnknownPeer(device))?;
        let member = crate::journal::Member {
            identifier: next,
            cert: p.cert.clone(),
            addr: p.addr.clone(),
        };
        self.propose_change(TreeOpKind::AddDevice(member))
    }

    /// Pushes `to` the facts our view of `authority` is reduced from (a newcomer needs
    /// them to see itself listed; the rest comes by anti-entropy once it is a member).
    pub(super) fn push_view_facts(&mut self, authority: AuthorityId, to: DeviceId) {
        let ns = Namespace::Authority(authority);
        let ids: Vec<_> = self
            .journal
            .entries(&ns)
            .filter(|(_, f)| !matches!(f.body, FactBody::Note(_) | FactBody::Statement(_)))
            .map(|(id, _)| id)
            .collect();
        self.push_facts(to, &ns, &ids, true);
    }

    fn paired_by_invite(&self, d: &DeviceId) -> bool {
        self.peers.get(d).is_some_and(|p| p.invite != [0; 32])
    }

    /// Newcomer: an authority that lists us (and a device we paired with) while we hold
    /// no share of any key.
    pub(super) fn awaiting_share(&self) -> Option<&AuthorityView> {
        if !self.shares.is_empty() || self.enroll.writing {
            return None;
        }
        let me = self.keys.id;
        self.views
            .0
            .values()
            .find(|v| v.members.contains_key(&me) && v.members.keys().any(|d| self.paired_by_invite(d)))
    }

    pub(super) fn enroll_busy(&self) -> bool {
        !self.enroll.leads.is_empty()
            || !self.enroll.helps.is_empty()
            || !self.enroll.invited.is_empty()
            || self.awaiting_share().is_some()
    }

    pub(super) fn on_enroll(&mut self, from: DeviceId, msg: AuthMsg) {
        match msg {
            AuthMsg::EnrollAsk { authority } => self.on_enroll_ask(from, authority),
            AuthMsg::EnrollStart {
                session,
                nonce,
                authority,
                newcomer,
                helpers,
            } => self.on_enroll_start(from, session, nonce, authority, newcomer, helpers),
            AuthMsg::EnrollDelta {
                session,
                from: i,
                delta,
            } => self.on_enroll_delta(from, session, i, delta),
            AuthMsg::EnrollSigma {
                session,
                from: i,
                enc,
                sealed,
            } => self.on_enroll_sigma(from, session, i, enc, sealed),
            AuthMsg::Enroll {
                session,
                authority,
                sigmas,
            } => self.on_enrollment(from, session, authority, sigmas),
            AuthMsg::EnrollDone { session } => self.on_enroll_done(from, session),
            _ => {}
        }
    }

    // ----- enroller -------------------------------------------------------------------

    fn on_enroll_ask(&mut self, from: DeviceId, authority: AuthorityId) {
        let me = self.keys.id;
        self.enroll.invited.remove(&from);
        let Some(view) = self.my_authority().filter(|v| v.id == authority).cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        if from == me || !view.members.contains_key(&from) || !self.shares.contains_key(&view.group_key) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        match self.enroll.leads.get(&from) {
            // Running: the tick retransmits (a complete one right away).
            Some(l) if l.authority == authority => {
                if let Some(m) = self.enroll_msg(&from) {
                    self.send_auth(from, m);
                }
            }
            _ => self.start_enrollment(&view, from, 0),
        }
    }

    fn start_enrollment(&mut self, view: &AuthorityView, newcomer: DeviceId, attempt: u32) {
        let me = self.keys.id;
        let Some(me_ident) = view.members.get(&me).map(|m| m.identifier) else {
            return;
        };
        self.seal_secret_to(view, newcomer);
        // This device first, then members with a channel up, then the rest; later
        // attempts rotate through the others so a silent helper is eventually left out.
        let mut others: Vec<(bool, u16)> = view
            .members
            .iter()
            .filter(|(d, _)| **d != me && **d != newcomer && !view.equivocators.contains(*d))
            .map(|(d, m)| {
                let up = self.active.contains_key(&(crate::journal::ContextId::OWN, *d));
                (!up, m.identifier)
            })
            .collect();
        others.sort();
        let t = view.key_threshold as usize;
        if others.len() + 1 < t {
            return;
        }
        if !others.is_empty() {
            let k = attempt as usize % others.len();
            others.rotate_left(k);
        }
        let mut helpers: Vec<u16> = std::iter::once(me_ident)
            .chain(others.into_iter().map(|(_, i)| i))
            .take(t)
            .collect();
        helpers.sort();
        let nonce = self.rng.bytes32();
        let session = crate::authority::enroll_session(&view.id, &me, &newcomer, &helpers, &nonce);
        self.metrics.enroll_attempts += 1;
        self.enroll.leads.insert(
            newcomer,
            Lead {
                session,
                nonce,
                authority: view.id,
                helpers: helpers.clone(),
                sigmas: BTreeMap::new(),
                started: self.now.mono,
                attempt,
            },
        );
        self.send_starts(&newcomer);
        self.arm_auth_tick();
    }

    fn send_starts(&mut self, newcomer: &DeviceId) {
        let Some(l) = self.enroll.leads.get(newcomer) else {
            return;
        };
        let Some(view) = self.views.0.get(&l.authority) else {
            return;
        };
        let msg = AuthMsg::EnrollStart {
            session: l.session,
            nonce: l.nonce,
            authority: l.authority,
            newcomer: *newcomer,
            helpers: l.helpers.clone(),
        };
        let to: Vec<DeviceId> = l
            .helpers
            .iter()
            .filter_map(|i| view.member_by_identifier(*i).map(|(d, _)| *d))
            .collect();
        for d in to {
            self.send_auth(d, msg.clone());
        }
    }

    /// The authority secret, sealed to the newcomer as a fact (once).
    fn seal_secret_to(&mut self, view: &AuthorityView, newcomer: DeviceId) {
        let ns = Namespace::Authority(view.id);
        let sealed = self
            .journal
            .facts(&ns)
            .any(|f| matches!(&f.body, FactBody::SealedSecret(s) if s.to == newcomer && s.epoch == 0));
        let (Some(secret), Some(m)) = (self.auth_secrets.get(&view.id).copied(), view.members.get(&newcomer)) else {
            return;
        };
        if sealed {
            return;
        }
        let Some((enc, ciphertext)) = hpke_seal(
            &mut self.rng,
            &m.cert.hpke,
            &newcomer.0,
            super::authority_impl::HPKE_INFO_SECRET,
            &secret,
        ) else {
            return;
        };
        let body = FactBody::SealedSecret(SealedSecret {
            to: newcomer,
            epoch: 0,
            enc,
            ciphertext,
        });
        let me = self.keys.id;
        let fact = self.device_fact(ns, body, &[]);
        let to: BTreeSet<DeviceId> = view.members.keys().copied().filter(|d| *d != me).collect();
        self.record_facts(vec![fact], Some(to));
    }

    fn enroll_msg(&self, newcomer: &DeviceId) -> Option<AuthMsg> {
        let l = self.enroll.leads.get(newcomer)?;
        (l.sigmas.len() == l.helpers.len()).then(|| AuthMsg::Enroll {
            session: l.session,
            authority: l.authority,
            sigmas: l.sigmas.iter().map(|(i, (e, c))| (*i, *e, c.clone())).collect(),
        })
    }

    fn on_enroll_sigma(&mut self, from: DeviceId, session: [u8; 32], i: u16, enc: [u8; 32], sealed: Vec<u8>) {
        let Some((newcomer, l)) = self.enroll.leads.iter_mut().find(|(_, l)| l.session == session) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let newcomer = *newcomer;
        let sender_ok = self
            .views
            .0
            .get(&l.authority)
            .and_then(|v| v.member_by_identifier(i))
            .is_some_and(|(d, _)| *d == from);
        if !sender_ok || !l.helpers.contains(&i) || sealed.len() > 256 {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        l.sigmas.entry(i).or_insert((enc, sealed));
        if let Some(m) = self.enroll_msg(&newcomer) {
            self.send_auth(newcomer, m);
        }
    }

    fn on_enroll_done(&mut self, from: DeviceId, session: [u8; 32]) {
        let Some(l) = self.enroll.leads.get(&from).filter(|l| l.session == session) else {
            return;
        };
        let authority = l.authority;
        self.enroll.leads.remove(&from);
        self.enroll.invited.remove(&from);
        self.event(Event::DeviceEnrolled {
            authority,
            device: from,
        });
    }

    // ----- helper ---------------------------------------------------------------------

    fn on_enroll_start(
        &mut self,
        from: DeviceId,
        session: [u8; 32],
        nonce: [u8; 32],
        authority: AuthorityId,
        newcomer: DeviceId,
        helpers: Vec<u16>,
    ) {
        if crate::authority::enroll_session(&authority, &from, &newcomer, &helpers, &nonce) != session {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if let Some(h) = self.enroll.helps.get(&session) {
            if h.enroller != from {
                return self.metrics.drop(DropReason::UnexpectedFrame);
            }
            // The enroller is still missing sums: some part may have been lost.
            let mut again = h.out.clone();
            if let Some(s) = &h.sigma {
                again.push((from, s.clone()));
            }
            self.send_auths(again);
            return;
        }
        let me = self.keys.id;
        let Some(view) = self.my_authority().filter(|v| v.id == authority).cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let Some(share) = self.shares.get(&view.group_key) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let member_of = |i: &u16| view.member_by_identifier(*i).map(|(d, _)| *d);
        let (Some(my), Some(nc)) = (view.members.get(&me), view.members.get(&newcomer)) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let ascending = helpers.windows(2).all(|w| w[0] < w[1]);
        let valid = ascending
            && helpers.len() >= view.key_threshold as usize
            && helpers.len() <= view.members.len()
            && helpers.contains(&my.identifier)
            && !helpers.contains(&nc.identifier)
            && helpers.iter().all(|i| member_of(i).is_some())
            && view.members.contains_key(&from)
            && from != newcomer
            && !view.equivocators.contains(&from)
            && self.enroll.helps.len() < MAX_HELPS
            && self.enroll.helps.values().filter(|h| h.enroller == from).count() < MAX_HELPS_PER_ENROLLER;
        if !valid {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        let (me_ident, nc_ident) = (my.identifier, nc.identifier);
        let ids: Option<Vec<frost::Identifier>> = helpers.iter().map(|i| ident(*i)).collect();
        let (Some(ids), Some(target)) = (ids, ident(nc_ident)) else {
            return;
        };
        let key = share.key.clone();
        // Parts drawn from the share and the session: a helper that restarts mid-session
        // sends the same parts again, so the sums still add up (the session fixes the
        // helper set, so parts for one set are never mixed with parts for another).
        let mut seed_material = key.signing_share().serialize();
        seed_material.extend_from_slice(&session);
        let mut rng = crate::rng::PeerRng::from_seed(blake3::derive_key("aura 2026-12 enroll parts", &seed_material));
        let Ok(parts) = repairable::repair_share_part1::<frost::Ristretto255Sha512, _>(&ids, &key, &mut rng, target)
        else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let mut received = BTreeMap::new();
        let mut out = Vec::new();
        for (id, delta) in parts {
            let i = super::authority_impl::identifier_number(&id);
            if i == me_ident {
                received.insert(i, delta);
            } else if let Some(d) = member_of(&i) {
                out.push((
                    d,
                    AuthMsg::EnrollDelta {
                        session,
                        from: me_ident,
                        delta: delta.serialize(),
                    },
                ));
            }
        }
        self.enroll.helps.insert(
            session,
            Help {
                enroller: from,
                authority,
                newcomer,
                newcomer_ident: nc_ident,
                me: me_ident,
                helpers,
                out: out.clone(),
                received,
                sigma: None,
                started: self.now.mono,
            },
        );
        self.send_auths(out);
        self.maybe_sigma(session);
        self.arm_auth_tick();
    }

    fn on_enroll_delta(&mut self, from: DeviceId, session: [u8; 32], i: u16, delta: Vec<u8>) {
        let sender = self
            .my_authority()
            .and_then(|v| v.member_by_identifier(i))
            .map(|(d, _)| *d);
        let Some(h) = self.enroll.helps.get_mut(&session) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        if sender != Some(from) || i == h.me || !h.helpers.contains(&i) {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        if h.sigma.is_some() {
            return; // a copy
        }
        let Ok(d) = Delta::deserialize(&delta) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        h.received.entry(i).or_insert(d);
        self.maybe_sigma(session);
    }

    /// Once every helper's part is in: sum, seal to the newcomer, send to the enroller.
    fn maybe_sigma(&mut self, session: [u8; 32]) {
        let Some(h) = self.enroll.helps.get(&session) else {
            return;
        };
        if h.sigma.is_some() || h.received.len() != h.helpers.len() {
            return;
        }
        let Some(hpke) = self
            .views
            .0
            .get(&h.authority)
            .and_then(|v| v.members.get(&h.newcomer))
            .map(|m| m.cert.hpke)
        else {
            return;
        };
        let parts: Vec<Delta> = h.received.values().copied().collect();
        let sigma = repairable::repair_share_part2(&parts);
        let aad = sigma_aad(&session, h.newcomer_ident, h.me);
        let Some((enc, sealed)) = hpke_seal(&mut self.rng, &hpke, &aad, HPKE_INFO_ENROLL, &sigma.serialize()) else {
            return;
        };
        let h = self.enroll.helps.get_mut(&session).expect("looked up above");
        let msg = AuthMsg::EnrollSigma {
            session,
            from: h.me,
            enc,
            sealed,
        };
        h.sigma = Some(msg.clone());
        // The parts are secret material and no longer needed.
        h.received.clear();
        let to = h.enroller;
        self.send_auth(to, msg);
    }

    // ----- newcomer -------------------------------------------------------------------

    fn on_enrollment(
        &mut self,
        from: DeviceId,
        session: [u8; 32],
        authority: AuthorityId,
        sigmas: Vec<(u16, [u8; 32], Vec<u8>)>,
    ) {
        let me = self.keys.id;
        let Some(view) = self.views.0.get(&authority).cloned() else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        if self.shares.contains_key(&view.group_key) && view.members.contains_key(&me) {
            // Our `EnrollDone` was lost.
            return self.send_auth(from, AuthMsg::EnrollDone { session });
        }
        let Some(my) = view.members.get(&me) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let ascending = sigmas.windows(2).all(|w| w[0].0 < w[1].0);
        let valid = !self.enroll.writing
            && self.shares.is_empty()
            && self.paired_by_invite(&from)
            && view.members.contains_key(&from)
            && ascending
            && sigmas.len() >= view.key_threshold as usize
            && sigmas.len() <= view.members.len()
            && sigmas
                .iter()
                .all(|(i, _, _)| *i != my.identifier && view.member_by_identifier(*i).is_some());
        if !valid {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        let mut sums = Vec::new();
        for (i, enc, sealed) in &sigmas {
            let aad = sigma_aad(&session, my.identifier, *i);
            let opened = hpke_open(self.keys.hpke_private(), enc, &aad, HPKE_INFO_ENROLL, sealed);
            match opened.and_then(|b| Sigma::deserialize(&b).ok()) {
                Some(s) => sums.push(s),
                None => return self.metrics.drop(DropReason::UnexpectedFrame),
            }
        }
        let (Some(public), Some(id), Some(expected)) = (
            public_package(&view),
            ident(my.identifier),
            view.verifying_shares.get(&my.identifier),
        ) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        let Ok(key) = repairable::repair_share_part3(&sums, id, &public) else {
            return self.metrics.drop(DropReason::UnexpectedFrame);
        };
        // The only check that matters: the share is the point of the group's polynomial
        // at our identifier. A wrong part from any helper fails it; the enroller then
        // tries other helpers.
        if key.verifying_share().serialize().ok().as_deref() != Some(&expected[..]) {
            self.metrics.enroll_bad_shares += 1;
            return self.metrics.drop(DropReason::UnexpectedFrame);
        }
        self.persist_enrolled_share(from, session, &view, key, public);
    }

    fn persist_enrolled_share(
        &mut self,
        enroller: DeviceId,
        session: [u8; 32],
        view: &AuthorityView,
        key: KeyPackage,
        public: PublicKeyPackage,
    ) {
        let (Ok(kb), Ok(pb)) = (key.serialize(), public.serialize()) else {
            return;
        };
        let mut members: Vec<_> = view.members.values().cloned().collect();
        members.sort_by_key(|m| m.identifier);
        self.enroll.writing = true;
        self.persist(
            Record::Share {
                group_key: view.group_key,
                key_package: kb,
                public_key_package: pb,
                origin: ShareOrigin {
                    session,
                    coordinator: enroller,
                    threshold: view.threshold,
                    members,
                },
            },
            Pending::Enrolled {
                authority: view.id,
                session,
                enroller,
                share: Box::new(Share { key, public }),
            },
        );
    }

    /// Our share is durable: we are a member now.
    pub(super) fn enrolled(&mut self, authority: AuthorityId, session: [u8; 32], enroller: DeviceId, share: Share) {
        self.enroll.writing = false;
        let Some(view) = self.views.0.get(&authority).cloned() else {
            return;
        };
        self.shares.insert(view.group_key, share);
        self.open_authority_secret(authority);
        self.refresh_guard();
        self.top_up_nonces();
        self.event(Event::AuthorityJoined {
            authority,
            group_key: view.group_key,
            threshold: view.threshold,
            members: view.members.len() as u16,
        });
        self.send_auth(enroller, AuthMsg::EnrollDone { session });
        // Catch up on the rest of the journal.
        self.sync_soon();
    }

    /// After a restart: an enrolled share's record follows the facts that list us, so
    /// the secret and links wait until every record is in.
    pub(super) fn restored_enrollment(&mut self) {
        if self.awaiting_share().is_some() || self.refresh_busy() {
            self.arm_auth_tick();
        }
        let Some(id) = self.my_authority().map(|v| v.id) else {
            return;
        };
        self.open_authority_secret(id);
        let Some(view) = self.views.0.get(&id).cloned() else {
            return;
        };
        if let Some(share) = self.shares.get_mut(&view.group_key) {
            extend_public(share, &view);
        }
        // Added devices we paired with may still be waiting for the journal: offer it a
        // few times (those already enrolled just acknowledge).
        let now = self.now.mono;
        for d in view.members.keys() {
            if !view.founders.contains(d) && self.paired_by_invite(d) {
                self.enroll.invited.insert(*d, (now, 3));
            }
        }
        if !self.enroll.invited.is_empty() {
            self.arm_auth_tick();
        }
    }

    /// A device we paired with was just added: push it the journal now and again until
    /// it asks for its share.
    pub(super) fn invite_newcomer(&mut self, authority: AuthorityId, device: DeviceId) {
        self.push_view_facts(authority, device);
        let next = self.now.mono.saturating_add(INVITE_EVERY);
        self.enroll.invited.insert(device, (next, INVITE_PUSHES));
        self.arm_auth_tick();
    }

    // ----- retransmission -------------------------------------------------------------

    pub(super) fn enroll_tick(&mut self) {
        let now = self.now.mono;
        // Enroller: resend what is missing, try other helpers, give up.
        let newcomers: Vec<DeviceId> = self.enroll.leads.keys().copied().collect();
        for n in newcomers {
            let Some(view) = self.my_authority().cloned() else {
                self.enroll.leads.clear();
                break;
            };
            let l = &self.enroll.leads[&n];
            if l.authority != view.id || !view.members.contains_key(&n) {
                self.enroll.leads.remove(&n);
                continue;
            }
            // Timed out even with every sum in: some helper's part was wrong (the
            // newcomer's check failed), so try other helpers.
            if l.started.saturating_add(ATTEMPT) <= now {
                let attempt = l.attempt + 1;
                self.enroll.leads.remove(&n);
                if attempt < MAX_ATTEMPTS {
                    self.start_enrollment(&view, n, attempt);
                }
            } else if let Some(m) = self.enroll_msg(&n) {
                self.send_auth(n, m);
            } else {
                self.send_starts(&n);
            }
        }
        // Enroller: an added device that has not asked yet may have missed the journal.
        let due: Vec<DeviceId> = self
            .enroll
            .invited
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(d, _)| *d)
            .collect();
        for d in due {
            let Some(id) = self.my_authority().filter(|v| v.members.contains_key(&d)).map(|v| v.id) else {
                self.enroll.invited.remove(&d);
                continue;
            };
            let left = self.enroll.invited.get(&d).map_or(0, |(_, n)| *n);
            if left == 0 {
                self.enroll.invited.remove(&d);
                continue;
            }
            self.enroll
                .invited
                .insert(d, (now.saturating_add(INVITE_EVERY), left - 1));
            self.push_view_facts(id, d);
        }
        // Helper: forget old sessions.
        self.enroll
            .helps
            .retain(|_, h| h.started.saturating_add(HELP_TTL) > now);
        // Newcomer: ask the members we paired with.
        if self.enroll.ask_at <= now {
            if let Some(v) = self.awaiting_share() {
                let authority = v.id;
                let to: Vec<DeviceId> = v.members.keys().copied().filter(|d| self.paired_by_invite(d)).collect();
                self.enroll.ask_at = now.saturating_add(ASK_EVERY);
                for d in to {
                    self.send_auth(d, AuthMsg::EnrollAsk { authority });
                }
            }
        }
    }
}
