//! Relational contexts in [`Peer`]: invitation, creation, acceptance, and the state the
//! guard chain and context channels read.
//!
//! Creation, between a device `a` of authority A (the inviter) and `b` of B (the joiner):
//!
//! 1. `a` issues a context invitation code (durable before it is shown).
//! 2. `b` redeems it over a `ContextJoin` handshake keyed by the code's secret and sends
//!    `Join`: B's genesis fact and a capability B issues to A.
//! 3. `a` checks the genesis (self-certifying), that `b` is one of its members, and the
//!    token (rooted at B, naming A); writes the creation (every member device of A and B),
//!    the epoch-0 context secret sealed to each member, and its own token for B; once
//!    that is durable, answers `Created` with A's genesis, those facts and the token.
//! 4. `b` checks the same from its side, and that the member list is exactly the two
//!    authorities' members; writes its acceptance; once durable answers `Accept`.
//! 5. `a` records the acceptance and answers `Done`.
//!
//! A context is *ready* on a device when it is established (every authority accepted),
//! every member's claimed authority lists it in that authority's own reduced journal
//! (known here), and this device opened the current epoch's secret. Only ready contexts
//! get grants, channels and sends.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::authority_impl::{hpke_open, hpke_seal};
use super::{pair_key, CommandError, Event, Peer, Pending, Queued};
use crate::authority::AuthorityView;
use crate::caps::{self, Subject};
use crate::channel::Phase;
use crate::context::ContextView;
use crate::guard::{ContextState, Grant, Leak, Observer};
use crate::invite::{Invitation, InviteError, MAX_ADDR_HINT};
use crate::journal::{
    verify_fact, AuthorityId, ContextAccept, ContextEpochOp, ContextGenesis, ContextId, ContextMember, Fact, FactBody,
    FactSig, Journal, Namespace, SealedSecret, Sig64, MAX_CONTEXT_MEMBERS,
};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::record::Record;
use crate::time::Instant;
use crate::wire::{self, Frame, Purpose};

const CTX_JOIN_PSK: &str = "aura 2026-11 context join psk";
const CTX_CONTEXT_PSK: &str = "aura 2026-11 context channel psk";
pub(super) const HPKE_INFO_CONTEXT: &[u8] = b"aura context secret v1";
/// Rights each side grants the other authority when a context is created.
const CONTEXT_RIGHTS: [&str; 3] = ["send", "sync", "member"];
/// Context secrets kept per context: the current epoch's and the latest before it (for
/// members that missed a change or a few).
const KEEP_SECRETS: usize = 4;

pub(super) fn join_psk(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(CTX_JOIN_PSK, secret)
}

/// `PSK = KDF(context secret of the epoch, sorted device ids)`.
pub(super) fn context_psk(secret: &[u8; 32], a: &DeviceId, b: &DeviceId) -> [u8; 32] {
    pair_key(CTX_CONTEXT_PSK, secret, a, b)
}

pub(super) fn secret_aad(ctx: &ContextId, to: &DeviceId, epoch: u64) -> [u8; 72] {
    let mut a = [0u8; 72];
    a[..32].copy_from_slice(&ctx.0);
    a[32..64].copy_from_slice(&to.0);
    a[64..].copy_from_slice(&epoch.to_be_bytes());
    a
}

/// Messages on a `ContextJoin` channel (inside `Frame::Proto`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CtxMsg {
    /// Joiner → inviter: its authority's genesis fact and a token its authority issues
    /// to the inviter's.
    Join {
        /// Encoded genesis fact.
        genesis: Vec<u8>,
        /// Capability token.
        token: Vec<u8>,
    },
    /// Inviter → joiner: its authority's genesis, the creation and sealed secrets, and its
    /// token for the joiner's authority.
    Created {
        /// Encoded genesis fact of the inviter's authority.
        genesis: Vec<u8>,
        /// Encoded context facts (creation first).
        facts: Vec<Vec<u8>>,
        /// Capability token.
        token: Vec<u8>,
    },
    /// Joiner → inviter: the joiner's acceptance, and its authority's token for the
    /// inviter's authority (the one in `Join` could only name the inviter's device).
    Accept {
        /// Encoded acceptance fact.
        fact: Vec<u8>,
        /// Capability token.
        token: Vec<u8>,
    },
    /// Inviter → joiner: the acceptance is durable; the join is over.
    Done,
}

/// What follows a durable context record.
#[derive(Clone, Copy, Debug)]
pub(super) enum CtxStep {
    /// Inviter: the creation is durable; send `Created`.
    Created,
    /// Joiner: the acceptance is durable; send `Accept`.
    Joined,
    /// Inviter: the joiner's acceptance is durable; send `Done`.
    Accepted,
}

/// A context this device is a member of.
#[derive(Clone, Debug)]
pub(super) struct CtxState {
    pub view: ContextView,
    /// Opened context secrets by epoch.
    pub secrets: BTreeMap<u64, [u8; 32]>,
    pub ready: bool,
}

/// A context invitation this device issued.
#[derive(Debug)]
pub(super) struct CtxInvite {
    pub inv: Invitation,
    pub redeemed_by: Option<DeviceId>,
    /// The context created for it, and the token issued to the joiner's authority.
    pub created: Option<(ContextId, Vec<u8>)>,
    /// A creation is being persisted.
    pub persisting: bool,
}

/// A context invitation this device is redeeming.
#[derive(Debug)]
pub(super) struct CtxJoin {
    pub inv: Invitation,
    /// The context it led to, once our acceptance is durable.
    pub context: Option<ContextId>,
    /// The token our authority issued to the inviter's (sent with the acceptance).
    pub sent_token: Option<Vec<u8>>,
    pub persisting: bool,
    pub done: bool,
    pub retry_at: Option<Instant>,
    pub tries: u32,
}

impl Peer {
    // ----- commands -----------------------------------------------------------------

    /// `Command::CreateContextInvite`.
    pub(super) fn create_context_invite(&mut self, valid_for: Duration, addr_hint: String) -> Result<(), CommandError> {
        let inv = self.new_invitation(valid_for, addr_hint)?;
        self.context_authority()?;
        self.persist(
            Record::ContextInviteIssued(inv.clone()),
            Pending::ShowContextInvite(inv),
        );
        Ok(())
    }

    /// `Command::JoinContext`.
    pub(super) fn join_context(&mut self, code: &str) -> Result<(), CommandError> {
        let inv = Invitation::from_code(code)?;
        inv.check_expiry(self.now.unix_ms)?;
        if inv.inviter_noise == self.keys.cert.noise {
            return Err(InviteError::OwnCode.into());
        }
        self.context_authority()?;
        let id = inv.id();
        match self.ctx_joins.get(&id) {
            Some(j) if j.done => Err(InviteError::AlreadyUsed.into()),
            // Not finished (or our acceptance never reached the inviter): try again.
            Some(_) => {
                self.start_context_join(id);
                Ok(())
            }
            None => {
                self.persist(Record::ContextJoinStarted(inv.clone()), Pending::StartContextJoin(inv));
                Ok(())
            }
        }
    }

    /// This device's authority and its secret (needed to issue the capability a context
    /// creation exchanges).
    fn context_authority(&self) -> Result<(AuthorityView, [u8; 32]), CommandError> {
        let v = self.my_authority().ok_or(CommandError::NotInAuthority)?;
        let s = self.auth_secrets.get(&v.id).ok_or(CommandError::NotInAuthority)?;
        Ok((v.clone(), *s))
    }

    /// `Command::ContextSend`: application bytes to a member device of another authority
    /// in a ready context.
    pub(super) fn context_send(
        &mut self,
        context: ContextId,
        peer: DeviceId,
        data: bytes::Bytes,
    ) -> Result<(), CommandError> {
        let st = self
            .contexts
            .get(&context)
            .filter(|s| s.ready)
            .ok_or(CommandError::UnknownContext(context))?;
        let mine = self.my_authority().map(|v| v.id);
        if st.view.authority_of(&peer).is_none() || st.view.authority_of(&peer) == mine {
            return Err(CommandError::NotContextPeer { context, peer });
        }
        self.send_or_queue_in(context, peer, Queued::App(data))
    }

    // ----- the joiner ---------------------------------------------------------------

    pub(super) fn start_context_join(&mut self, id: [u8; 32]) {
        let Some(j) = self.ctx_joins.get_mut(&id) else { return };
        if j.done {
            return;
        }
        if self
            .channels
            .values()
            .any(|c| c.invite == Some(id) && c.purpose == Purpose::ContextJoin)
        {
            return;
        }
        j.tries = 0;
        j.retry_at = None;
        let (noise, psk, addr) = (j.inv.inviter_noise, join_psk(&j.inv.secret), j.inv.addr_hint.clone());
        if self
            .start_handshake(Purpose::ContextJoin, noise, psk, addr, None, Some(id), None)
            .is_err()
        {
            self.event(Event::ContextJoinFailed {
                invite: id,
                reason: "too many channels".into(),
            });
        }
    }

    /// The join channel `idx` completed its handshake (joiner side): say who we are.
    pub(super) fn context_join_up(&mut self, idx: u32) {
        let Some(id) = self.channels.get(&idx).and_then(|c| c.invite) else {
            return;
        };
        // An acceptance already durable (a restart interrupted the join) is resent;
        // otherwise the join starts.
        match self.ctx_joins.get(&id).and_then(|j| j.context) {
            Some(ctx) => {
                if let Some(j) = self.ctx_joins.get_mut(&id) {
                    j.tries = 1;
                    j.retry_at = Some(self.now.mono.saturating_add(self.cfg.handshake_retry));
                }
                self.send_accept(idx, id, ctx);
            }
            None => self.send_join(id, idx),
        }
    }

    fn send_join(&mut self, id: [u8; 32], idx: u32) {
        let Ok((auth, secret)) = self.context_authority() else {
            return;
        };
        let Some(genesis) = self.genesis_fact(&auth.id) else {
            return;
        };
        // The inviter's authority is not known yet: the token names the inviter's device;
        // it is re-issued to the authority once `Created` reveals it.
        let Some(peer) = self.channels.get(&idx).and_then(|c| c.peer) else {
            return;
        };
        let Some(token) = self.context_token(&secret, auth.id, Subject::Device(peer)) else {
            return;
        };
        self.send_ctx(
            idx,
            &CtxMsg::Join {
                genesis: genesis.encode(),
                token,
            },
        );
        if let Some(j) = self.ctx_joins.get_mut(&id) {
            j.retry_at = Some(self.now.mono.saturating_add(self.cfg.handshake_retry));
            j.tries += 1;
        }
    }

    /// The capability our authority grants `to` in contexts: send, sync and member, with
    /// the configured flow budget per epoch.
    fn context_token(&mut self, authority_secret: &[u8; 32], mine: AuthorityId, to: Subject) -> Option<Vec<u8>> {
        let kp = caps::root_keypair(authority_secret);
        let rights: Vec<String> = CONTEXT_RIGHTS.iter().map(|r| r.to_string()).collect();
        caps::issue(
            &kp,
            &mine,
            &to,
            &rights,
            Some(self.cfg.context_flow_limit),
            &mut self.rng,
        )
        .ok()
    }

    fn send_ctx(&mut self, idx: u32, msg: &CtxMsg) {
        let bytes = wire::encode(msg);
        self.send_frame(idx, &Frame::Proto { data: &bytes });
    }

    fn genesis_fact(&self, id: &AuthorityId) -> Option<Fact> {
        self.journal
            .facts(&Namespace::Authority(*id))
            .find(|f| matches!(f.body, FactBody::Genesis(_)))
            .cloned()
    }

    /// Verifies an authority genesis offered by another device; returns its view.
    fn foreign_genesis(&mut self, bytes: &[u8]) -> Option<(Fact, AuthorityView)> {
        let f = match Fact::decode(bytes) {
            Ok(f) => f,
            Err(_) => {
                self.metrics.drop(DropReason::BadFact);
                return None;
            }
        };
        let FactBody::Genesis(g) = &f.body else {
            self.metrics.drop(DropReason::BadFact);
            return None;
        };
        let ns = Namespace::Authority(g.authority_id());
        if let Err(e) = verify_fact(&f, &ns, &self.views) {
            self.fact_rejected(e);
            return None;
        }
        if !self.genesis_is_foreign(g) {
            self.fact_rejected(crate::journal::FactError::Invalid);
            return None;
        }
        let mut j = Journal::new();
        j.insert(f.clone());
        let v = AuthorityView::reduce(&j, g.authority_id())?;
        Some((f, v))
    }

    /// Our authority and its secret, and the other side's genesis and view, once that
    /// genesis checks out and lists `peer` with the keys it proved on channel `idx`.
    fn other_side(
        &mut self,
        idx: u32,
        peer: DeviceId,
        genesis: &[u8],
    ) -> Option<(AuthorityView, [u8; 32], Fact, AuthorityView)> {
        let (mine, secret) = self.context_authority().ok()?;
        let (gfact, theirs) = self.foreign_genesis(genesis)?;
        let their_cert = self.channels.get(&idx).and_then(|c| c.remote_cert.clone());
        let listed = theirs
            .members
            .get(&peer)
            .is_some_and(|m| their_cert.as_ref().is_some_and(|c| c.same_keys(&m.cert)));
        if theirs.id == mine.id || !listed {
            self.refuse_ctx();
            return None;
        }
        Some((mine, secret, gfact, theirs))
    }

    /// Whether another person's genesis keeps to its own devices. A genesis signs itself,
    /// so anyone can write one listing *our* devices; accepting it would make this device
    /// look like a member of a stranger's authority (and `my_authority` could pick it).
    /// A genesis already known (by id) is fine.
    fn genesis_is_foreign(&self, g: &crate::journal::Genesis) -> bool {
        if self.views.0.contains_key(&g.authority_id()) {
            return true;
        }
        let me = self.keys.id;
        !g.members.iter().any(|m| {
            let d = m.cert.id();
            d == me || self.peers.contains_key(&d) || self.views.0.values().any(|v| v.members.contains_key(&d))
        })
    }

    fn on_created(&mut self, idx: u32, peer: DeviceId, genesis: &[u8], facts: &[Vec<u8>], token: &[u8]) {
        let Some(invite) = self.channels.get(&idx).and_then(|c| c.invite) else {
            return;
        };
        let Some(j) = self.ctx_joins.get(&invite) else { return };
        if j.persisting || j.context.is_some() {
            // Our acceptance is on its way or sent: answer again once it is durable.
            if let Some(ctx) = j.context {
                self.send_accept(idx, invite, ctx);
            }
            return;
        }
        let Some((mine, secret, gfact, theirs)) = self.other_side(idx, peer, genesis) else {
            return;
        };
        // The creation, self-certifying, naming exactly both authorities' members.
        let Some(cfact) = facts.first().and_then(|b| Fact::decode(b).ok()) else {
            return self.refuse_ctx();
        };
        let FactBody::ContextGenesis(cg) = &cfact.body else {
            return self.refuse_ctx();
        };
        let ctx = cg.context_id();
        let ns = Namespace::Context(ctx);
        if let Err(e) = verify_fact(&cfact, &ns, &self.views) {
            return self.fact_rejected(e);
        }
        if cfact.author != peer || *cg != expected_genesis(&mine, &theirs, cg.nonce) {
            return self.refuse_ctx();
        }
        let mut j = Journal::new();
        j.insert(cfact.clone());
        let Some(view) = ContextView::reduce(&j, ctx) else {
            return;
        };
        let mut all = vec![gfact, cfact.clone()];
        for b in &facts[1..] {
            let Ok(f) = Fact::decode(b) else {
                return self.refuse_ctx();
            };
            // Only the first epoch's secrets: a creation cannot come with a later epoch
            // (that would pin the context there; epochs advance by agreement).
            if !matches!(&f.body, FactBody::SealedSecret(s) if s.epoch == 0) {
                return self.refuse_ctx();
            }
            if let Err(e) = verify_fact(&f, &ns, &view) {
                return self.fact_rejected(e);
            }
            all.push(f);
        }
        let me = self.keys.id;
        let opened = all.iter().any(|f| match &f.body {
            FactBody::SealedSecret(s) if s.to == me && s.epoch == 0 => self.open_secret(&ctx, s).is_some(),
            _ => false,
        });
        if !opened {
            return self.refuse_ctx();
        }
        match caps::verify(token, &theirs.cap_root) {
            Ok(s) if s.issuer == theirs.id && s.subject == Subject::Authority(mine.id) => {}
            _ => return self.refuse_ctx(),
        }
        // Our acceptance, and our token for their authority (the one sent in `Join`
        // named only their device).
        let accept = self.device_fact(ns, FactBody::ContextAccept(ContextAccept { genesis: cfact.id() }), &all);
        all.push(accept);
        let Some(my_token) = self.context_token(&secret, mine.id, Subject::Authority(theirs.id)) else {
            return;
        };
        self.ctx_joins.get_mut(&invite).expect("checked").persisting = true;
        self.persist_context(
            idx,
            CtxStep::Joined,
            invite,
            peer,
            ctx,
            all,
            vec![token.to_vec()],
            Some(my_token),
        );
    }

    fn send_accept(&mut self, idx: u32, invite: [u8; 32], ctx: ContextId) {
        let Some(token) = self.ctx_joins.get(&invite).and_then(|j| j.sent_token.clone()) else {
            return;
        };
        let me = self.keys.id;
        let Some(f) = self
            .journal
            .facts(&Namespace::Context(ctx))
            .find(|f| f.author == me && matches!(f.body, FactBody::ContextAccept(_)))
            .cloned()
        else {
            return;
        };
        self.send_ctx(
            idx,
            &CtxMsg::Accept {
                fact: f.encode(),
                token,
            },
        );
    }

    /// The joiner's acceptance is durable.
    pub(super) fn context_joined(&mut self, idx: u32, invite: [u8; 32], ctx: ContextId) {
        if let Some(j) = self.ctx_joins.get_mut(&invite) {
            j.tries = 1;
            j.retry_at = Some(self.now.mono.saturating_add(self.cfg.handshake_retry));
        }
        if self.channels.contains_key(&idx) {
            self.send_accept(idx, invite, ctx);
        }
    }

    // ----- the inviter --------------------------------------------------------------

    fn on_join(&mut self, idx: u32, peer: DeviceId, genesis: &[u8], token: &[u8]) {
        let Some(invite) = self.channels.get(&idx).and_then(|c| c.invite) else {
            return;
        };
        let Some(issued) = self.ctx_invites.get(&invite) else {
            return;
        };
        if issued.persisting {
            return;
        }
        if let Some((ctx, my_token)) = issued.created.clone() {
            // Created before (our answer was lost, or we restarted): answer again.
            if issued.redeemed_by == Some(peer) {
                self.send_created(idx, ctx, my_token);
            }
            return;
        }
        let Some((mine, secret, gfact, theirs)) = self.other_side(idx, peer, genesis) else {
            return;
        };
        match caps::verify(token, &theirs.cap_root) {
            Ok(s) if s.issuer == theirs.id && s.subject == Subject::Device(self.keys.id) => {}
            _ => return self.refuse_ctx(),
        }
        // The creation, and the epoch-0 secret sealed to every member.
        let g = expected_genesis(&mine, &theirs, self.rng.bytes32());
        let ctx = g.context_id();
        let ns = Namespace::Context(ctx);
        let cfact = self.device_fact(ns, FactBody::ContextGenesis(g.clone()), &[]);
        let secret0 = self.rng.bytes32();
        let mut facts = vec![gfact, cfact];
        for m in &g.members {
            let to = m.cert.id();
            let Some((enc, ciphertext)) = hpke_seal(
                &mut self.rng,
                &m.cert.hpke,
                &secret_aad(&ctx, &to, 0),
                HPKE_INFO_CONTEXT,
                &secret0,
            ) else {
                continue;
            };
            let body = FactBody::SealedSecret(SealedSecret {
                to,
                epoch: 0,
                enc,
                ciphertext,
            });
            let f = self.device_fact(ns, body, &facts);
            facts.push(f);
        }
        let Some(my_token) = self.context_token(&secret, mine.id, Subject::Authority(theirs.id)) else {
            return;
        };
        let issued = self.ctx_invites.get_mut(&invite).expect("checked");
        issued.persisting = true;
        issued.redeemed_by = Some(peer);
        self.persist_context(
            idx,
            CtxStep::Created,
            invite,
            peer,
            ctx,
            facts,
            vec![token.to_vec()],
            Some(my_token),
        );
    }

    /// Persists a context record; `step` says what follows once it is durable.
    #[allow(clippy::too_many_arguments)]
    fn persist_context(
        &mut self,
        idx: u32,
        step: CtxStep,
        invite: [u8; 32],
        peer: DeviceId,
        context: ContextId,
        facts: Vec<Fact>,
        tokens: Vec<Vec<u8>>,
        sent_token: Option<Vec<u8>>,
    ) {
        let addr = self.channels.get(&idx).map(|c| c.addr.clone()).unwrap_or_default();
        let record = Record::Context {
            invite,
            peer,
            addr,
            context,
            facts,
            tokens,
            sent_token,
        };
        self.persist(
            record.clone(),
            Pending::Context {
                idx,
                step,
                record: Box::new(record),
            },
        );
    }

    /// A context record is durable: apply it, then take the next step.
    pub(super) fn context_durable(&mut self, idx: u32, step: CtxStep, record: Record) {
        let Record::Context {
            invite,
            peer,
            addr,
            context,
            facts,
            tokens,
            sent_token,
        } = record
        else {
            return;
        };
        self.apply_context_record(invite, (peer, addr), context, facts, tokens, sent_token);
        match step {
            CtxStep::Created => self.context_created(idx, invite),
            CtxStep::Joined => self.context_joined(idx, invite, context),
            CtxStep::Accepted => self.context_accepted(idx),
        }
    }

    /// The inviter's creation is durable: tell the joiner.
    pub(super) fn context_created(&mut self, idx: u32, invite: [u8; 32]) {
        let Some((ctx, token)) = self.ctx_invites.get(&invite).and_then(|i| i.created.clone()) else {
            return;
        };
        if self.channels.contains_key(&idx) {
            self.send_created(idx, ctx, token);
        }
    }

    /// A durable `Record::Context` (after its write, and on restore): facts, tokens and
    /// the invitation's progress.
    pub(super) fn apply_context_record(
        &mut self,
        invite: [u8; 32],
        (peer, addr): (DeviceId, String),
        ctx: ContextId,
        facts: Vec<Fact>,
        tokens: Vec<Vec<u8>>,
        sent_token: Option<Vec<u8>>,
    ) {
        if !addr.is_empty() {
            self.ctx_addrs.insert(peer, addr);
        }
        // Tokens first: the facts may make the context ready, which reads them.
        for t in tokens.into_iter().chain(sent_token.clone()) {
            if !self.tokens.contains(&t) {
                self.tokens.push(t);
            }
        }
        for f in facts {
            self.apply_fact(f);
        }
        if let Some(i) = self.ctx_invites.get_mut(&invite) {
            i.persisting = false;
            i.redeemed_by = Some(peer);
            if let Some(t) = sent_token.clone() {
                i.created = Some((ctx, t));
            }
        }
        if let Some(j) = self.ctx_joins.get_mut(&invite) {
            j.persisting = false;
            j.context = Some(ctx);
            j.sent_token = sent_token.or(j.sent_token.take());
        }
        self.refresh_context(ctx);
    }

    fn send_created(&mut self, idx: u32, ctx: ContextId, token: Vec<u8>) {
        let Some(mine) = self.my_authority().map(|v| v.id) else {
            return;
        };
        let Some(genesis) = self.genesis_fact(&mine) else {
            return;
        };
        let me = self.keys.id;
        let ns = Namespace::Context(ctx);
        let mut facts: Vec<Vec<u8>> = Vec::new();
        if let Some(g) = self
            .journal
            .facts(&ns)
            .find(|f| matches!(f.body, FactBody::ContextGenesis(_)))
        {
            facts.push(g.encode());
        }
        facts.extend(
            self.journal
                .facts(&ns)
                .filter(|f| f.author == me && matches!(&f.body, FactBody::SealedSecret(s) if s.epoch == 0))
                .map(|f| f.encode()),
        );
        self.send_ctx(
            idx,
            &CtxMsg::Created {
                genesis: genesis.encode(),
                facts,
                token,
            },
        );
    }

    fn on_accept(&mut self, idx: u32, peer: DeviceId, fact: &[u8], token: &[u8]) {
        let Some(invite) = self.channels.get(&idx).and_then(|c| c.invite) else {
            return;
        };
        let Some((ctx, _)) = self.ctx_invites.get(&invite).and_then(|i| i.created.clone()) else {
            return;
        };
        if self.ctx_invites.get(&invite).and_then(|i| i.redeemed_by) != Some(peer) {
            return self.refuse_ctx();
        }
        let Some(genesis) = self.contexts.get(&ctx).map(|s| s.view.genesis) else {
            return;
        };
        let Ok(f) = Fact::decode(fact) else {
            return self.refuse_ctx();
        };
        if f.author != peer || !matches!(&f.body, FactBody::ContextAccept(a) if a.genesis == genesis) {
            return self.refuse_ctx();
        }
        if self.journal.contains(&f) {
            self.send_ctx(idx, &CtxMsg::Done);
            return;
        }
        let Some(view) = self.contexts.get(&ctx).map(|s| s.view.clone()) else {
            return;
        };
        if let Err(e) = verify_fact(&f, &Namespace::Context(ctx), &view) {
            return self.fact_rejected(e);
        }
        let Some(their) = view.authority_of(&peer).and_then(|a| self.views.0.get(&a)) else {
            return;
        };
        let mine = self.my_authority().map(|v| v.id);
        match caps::verify(token, &their.cap_root) {
            Ok(s) if s.issuer == their.id && Some(s.subject) == mine.map(Subject::Authority) => {}
            _ => return self.refuse_ctx(),
        }
        self.persist_context(
            idx,
            CtxStep::Accepted,
            invite,
            peer,
            ctx,
            vec![f],
            vec![token.to_vec()],
            None,
        );
    }

    pub(super) fn context_accepted(&mut self, idx: u32) {
        if self.channels.contains_key(&idx) {
            self.send_ctx(idx, &CtxMsg::Done);
        }
    }

    // ----- both ---------------------------------------------------------------------

    /// A `Frame::Proto` on a `ContextJoin` channel.
    pub(super) fn on_ctx_msg(&mut self, idx: u32, peer: DeviceId, data: &[u8]) {
        let Some(msg) = self.decode_msg::<CtxMsg>(data) else {
            return;
        };
        let role = self.channels.get(&idx).map(|c| c.role);
        let inviter = role == Some(crate::channel::Role::Responder);
        match msg {
            CtxMsg::Join { genesis, token } if inviter => self.on_join(idx, peer, &genesis, &token),
            CtxMsg::Accept { fact, token } if inviter => self.on_accept(idx, peer, &fact, &token),
            CtxMsg::Created { genesis, facts, token } if !inviter => {
                self.on_created(idx, peer, &genesis, &facts, &token)
            }
            CtxMsg::Done if !inviter => {
                let Some(invite) = self.channels.get(&idx).and_then(|c| c.invite) else {
                    return;
                };
                let finished = self.ctx_joins.get_mut(&invite).is_some_and(|j| {
                    let first = j.context.is_some() && !j.done;
                    if first {
                        j.done = true;
                        j.retry_at = None;
                    }
                    first
                });
                if finished {
                    self.send_frame(idx, &Frame::Close);
                    self.remove_channel(idx, None);
                    // So a restart does not contact the inviter again.
                    self.persist(Record::ContextJoinDone(invite), Pending::Nothing);
                }
            }
            _ => self.refuse_ctx(),
        }
    }

    fn refuse_ctx(&mut self) {
        self.metrics.drop(DropReason::UnexpectedFrame);
    }

    /// A device-signed fact by this device in `ns`, with a Lamport clock past the
    /// journal's and `batch`'s.
    pub(super) fn device_fact(&mut self, ns: Namespace, body: FactBody, batch: &[Fact]) -> Fact {
        let lamport = batch
            .iter()
            .filter(|f| f.namespace == ns)
            .map(|f| f.lamport + 1)
            .max()
            .unwrap_or(0)
            .max(self.journal.next_lamport(&ns));
        let msg = Fact::signing_bytes(&ns, lamport, &self.keys.id, &body);
        let sig = self.keys.sign(&mut self.rng, &msg);
        Fact {
            namespace: ns,
            lamport,
            author: self.keys.id,
            body,
            sig: FactSig::Device(Sig64(sig)),
        }
    }

    pub(super) fn open_secret(&self, ctx: &ContextId, s: &SealedSecret) -> Option<[u8; 32]> {
        let me = self.keys.id;
        hpke_open(
            self.keys.hpke_private(),
            &s.enc,
            &secret_aad(ctx, &me, s.epoch),
            HPKE_INFO_CONTEXT,
            &s.ciphertext,
        )
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
    }

    /// Re-reduces context `id` from the journal and decides whether it is ready here.
    pub(super) fn refresh_context(&mut self, id: ContextId) {
        let Some(view) = ContextView::reduce(&self.journal, id) else {
            return;
        };
        let me = self.keys.id;
        if !view.members.contains_key(&me) {
            // Removed from the context by an epoch change: nothing more goes in it.
            if let Some(st) = self.contexts.get_mut(&id) {
                let was = st.ready;
                st.ready = false;
                st.view = view;
                if was {
                    self.close_context_channels(id, |_| true);
                    if !self.restoring {
                        self.refresh_guard();
                    }
                }
            }
            return;
        }
        // Every member must really belong to the authority it claims. An authority's
        // epoch change says so under its group signature; the creation's list is
        // checked against that authority's own journal (a context cannot vouch for it).
        let trusted = view.authorities.iter().all(|a| self.views.0.contains_key(a))
            && view.members.iter().all(|(d, m)| {
                view.lists.get(&m.authority).is_some_and(|e| *e > 0)
                    || self
                        .views
                        .0
                        .get(&m.authority)
                        .and_then(|a| a.members.get(d))
                        .is_some_and(|am| am.cert.same_keys(&m.cert))
            });
        let mut secrets = self.contexts.get(&id).map(|s| s.secrets.clone()).unwrap_or_default();
        let was_ready = self.contexts.get(&id).is_some_and(|s| s.ready);
        let old = self
            .contexts
            .get(&id)
            .map(|s| (s.view.epoch, s.view.decided.as_ref().map(|d| d.commitment)));
        // The secrets of use: the current epoch's and a few before it (a member that has
        // not caught up yet still reaches us with one of those), also of epochs this
        // device skipped. A decided epoch's secret counts only if it matches the
        // commitment the deciding authority signed.
        let window: Vec<u64> = std::iter::once(0)
            .chain(view.epochs.keys().copied())
            .rev()
            .take(KEEP_SECRETS)
            .collect();
        secrets.retain(|e, _| window.contains(e));
        for e in window {
            let good = |k: &[u8; 32]| {
                view.epochs
                    .get(&e)
                    .is_none_or(|d| ContextEpochOp::commit_to(&id, e, k) == d.commitment)
            };
            if secrets.get(&e).is_some_and(good) {
                continue;
            }
            secrets.remove(&e);
            let opened = match view.epochs.get(&e) {
                None => self
                    .journal
                    .facts(&Namespace::Context(id))
                    .find_map(|f| match &f.body {
                        // The creation's secret, sealed by the creator.
                        FactBody::SealedSecret(s) if s.to == me && s.epoch == 0 && f.author == view.creator => {
                            Some(s.clone())
                        }
                        _ => None,
                    })
                    .and_then(|s| self.open_secret(&id, &s)),
                Some(d) => d
                    .sealed
                    .iter()
                    .find(|s| s.to == me)
                    .and_then(|s| self.open_secret(&id, s))
                    .filter(|k| ContextEpochOp::commit_to(&id, e, k) == d.commitment),
            };
            if let Some(k) = opened {
                secrets.insert(e, k);
            }
        }
        let ready = trusted && view.established() && secrets.contains_key(&view.epoch);
        let epoch = view.epoch;
        let other = view
            .authorities
            .iter()
            .copied()
            .find(|a| Some(*a) != self.my_authority().map(|v| v.id));
        let now = (epoch, view.decided.as_ref().map(|d| d.commitment));
        let own_before: BTreeSet<DeviceId> = self
            .contexts
            .get(&id)
            .map(|s| s.view.members.keys().copied().collect())
            .unwrap_or_default();
        let newcomers = view.members.keys().any(|d| !own_before.contains(d));
        self.contexts.insert(id, CtxState { view, secrets, ready });
        if old.is_some_and(|o| o != now) {
            // A new epoch (or another secret for it, after a tie): channels keyed by the
            // old secret go.
            let tie = old.is_some_and(|o| o.0 == epoch);
            self.close_context_channels(id, |e| e < epoch || tie);
        }
        if ready && !was_ready && !self.restoring {
            self.event(Event::ContextReady {
                context: id,
                with: other.unwrap_or(AuthorityId([0; 32])),
                epoch,
            });
            self.share_context(id);
        } else if ready && newcomers && !self.restoring {
            // Devices new to the context (one of ours added by an epoch change) get it.
            self.share_context(id);
        }
        if ready && old.is_some_and(|o| o.0 < epoch) && !self.restoring {
            self.event(Event::ContextEpochChanged { context: id, epoch });
        }
        if !self.restoring {
            self.refresh_guard();
        }
    }

    /// Closes context `ctx`'s channels whose epoch `stale` picks. The goodbye goes out
    /// while the guard still has the old state (it is refreshed after), so the peer
    /// does not wait for a timeout before it opens a channel of the new epoch.
    fn close_context_channels(&mut self, ctx: ContextId, stale: impl Fn(u64) -> bool) {
        let gone: Vec<(u32, bool)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.scope == ctx && c.purpose == Purpose::Context && stale(c.epoch))
            .map(|(i, c)| (*i, c.transport.is_some()))
            .collect();
        for (i, up) in gone {
            if up && !self.restoring {
                self.send_frame(i, &Frame::Close);
            }
            self.remove_channel(i, None);
        }
    }

    /// Every context naming `authority` (its view just changed).
    pub(super) fn refresh_contexts_of(&mut self, authority: AuthorityId) {
        let ids: Vec<ContextId> = self
            .journal
            .namespaces()
            .filter_map(|n| match n {
                Namespace::Context(c) => Some(*c),
                _ => None,
            })
            .collect();
        for c in ids {
            let names = self
                .contexts
                .get(&c)
                .is_none_or(|s| s.view.authorities.contains(&authority));
            if names {
                self.refresh_context(c);
            }
        }
    }

    /// Grants, context states and leakage limits of ready contexts, for the guard.
    pub(super) fn refresh_context_grants(&mut self) {
        self.guard.grants.retain(|(c, _), _| *c == ContextId::OWN);
        self.guard.contexts.retain(|c, _| *c == ContextId::OWN);
        let mine = self.my_authority().map(|v| v.id);
        let me = self.keys.id;
        let mut by_issuer: BTreeMap<AuthorityId, Option<Grant>> = BTreeMap::new();
        type Peers = Vec<(DeviceId, AuthorityId)>;
        let ready: Vec<(ContextId, u64, Option<u64>, Peers)> = self
            .contexts
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(id, s)| {
                let oldest = s.secrets.keys().next().copied().filter(|e| *e < s.view.epoch);
                let peers = s
                    .view
                    .members
                    .iter()
                    .filter(|(_, m)| Some(m.authority) != mine)
                    .map(|(d, m)| (*d, m.authority))
                    .collect();
                (*id, s.view.epoch, oldest, peers)
            })
            .collect();
        for (ctx, epoch, oldest, peers) in ready {
            self.guard.contexts.insert(
                ctx,
                ContextState {
                    epoch,
                    writable: true,
                    oldest,
                },
            );
            for o in Observer::ALL {
                self.guard.leakage.entry((ctx, o, epoch)).or_insert(Leak {
                    limit: self.cfg.leakage_limit,
                    spent: 0,
                });
            }
            for (d, a) in peers {
                let g = by_issuer
                    .entry(a)
                    .or_insert_with(|| {
                        grant_from(
                            &self.tokens,
                            self.views.0.get(&a),
                            mine,
                            me,
                            self.cfg.context_flow_limit,
                        )
                    })
                    .clone();
                if let Some(g) = g {
                    self.guard.grants.insert((ctx, d), g);
                }
            }
        }
    }

    /// Opens a channel to `peer` in context `ctx` (its current epoch).
    pub(super) fn start_context_link(&mut self, ctx: ContextId, peer: DeviceId) -> Result<(), CommandError> {
        let epoch = self
            .contexts
            .get(&ctx)
            .filter(|s| s.ready)
            .ok_or(CommandError::UnknownContext(ctx))?
            .view
            .epoch;
        self.start_context_link_at(ctx, peer, epoch, false)
    }

    /// Opens a channel to `peer` in context `ctx` keyed by the secret of `epoch` (an
    /// earlier one to catch up).
    fn start_context_link_at(
        &mut self,
        ctx: ContextId,
        peer: DeviceId,
        epoch: u64,
        catch_up: bool,
    ) -> Result<(), CommandError> {
        let st = self
            .contexts
            .get(&ctx)
            .filter(|s| s.ready)
            .ok_or(CommandError::UnknownContext(ctx))?;
        let m = st
            .view
            .members
            .get(&peer)
            .ok_or(CommandError::NotContextPeer { context: ctx, peer })?;
        let secret = *st.secrets.get(&epoch).ok_or(CommandError::UnknownContext(ctx))?;
        let psk = context_psk(&secret, &self.keys.id, &peer);
        let noise = m.cert.noise;
        let addr = self.ctx_addrs.get(&peer).cloned().unwrap_or_else(|| m.addr.clone());
        self.start_handshake(Purpose::Context, noise, psk, addr, Some(peer), None, Some((ctx, epoch)))?;
        if catch_up {
            // Catching up: the channel is for that only, and ends by itself.
            let ends = self.now.mono.saturating_add(super::CATCH_UP_FOR);
            for c in self.channels.values_mut() {
                let opening = matches!(c.phase, Phase::InitSent { .. }) && c.ends_at.is_none();
                if opening && c.scope == ctx && c.peer == Some(peer) && c.epoch == epoch {
                    c.ends_at = Some(ends);
                }
            }
        }
        Ok(())
    }

    /// Who the initiator of a context handshake is, and its PSK, if it may open one.
    pub(super) fn context_responder(
        &mut self,
        ctx: ContextId,
        epoch: u64,
        remote_static: &[u8; 32],
        cert: &crate::keys::DeviceCert,
    ) -> Option<(DeviceId, [u8; 32])> {
        let mine = self.my_authority().map(|v| v.id);
        // The initiator must be a member now (a device removed by an epoch change is not,
        // even with an old secret). It may be behind (it has not seen the latest change):
        // then the channel runs in its epoch, for anti-entropy only, until it catches up.
        let found = self.contexts.get(&ctx).filter(|s| s.ready).and_then(|s| {
            let id = s
                .view
                .members
                .iter()
                .find(|(_, m)| m.cert.noise == *remote_static && Some(m.authority) != mine && m.cert.same_keys(cert))
                .map(|(d, _)| *d)?;
            Some((id, s.view.epoch, s.secrets.get(&epoch).copied()))
        });
        let (id, secret) = match found {
            Some((id, current, Some(secret))) if epoch <= current => (id, secret),
            Some((id, current, _)) if epoch > current => {
                // We are the one behind: reach the initiator to catch up, with a secret
                // we hold. Which one it still holds we cannot tell (it may have skipped
                // our current epoch, as we may have skipped its, or dropped an old one):
                // newest first, an older one at each next attempt.
                self.metrics.drop(DropReason::WrongContext);
                let underway = self.channels.values().any(|c| {
                    c.scope == ctx
                        && c.peer == Some(id)
                        && c.ends_at.is_some()
                        && matches!(c.phase, crate::channel::Phase::InitSent { .. })
                });
                if !underway {
                    if let Some(e) = self.catch_up_epoch(ctx, id) {
                        let _ = self.start_context_link_at(ctx, id, e, true);
                    }
                }
                return None;
            }
            _ => {
                self.metrics.drop(DropReason::WrongContext);
                return None;
            }
        };
        let allowed = if self.context_current(ctx, epoch) {
            self.upkeep_allowed(ctx, id, epoch)
        } else {
            self.catch_up_allowed(ctx, id, epoch)
        };
        if let Err(d) = allowed {
            self.deny_upkeep(ctx, id, d);
            return None;
        }
        Some((id, context_psk(&secret, &self.keys.id, &id)))
    }

    /// Whether context `ctx` is ready here at `epoch`.
    pub(super) fn context_current(&self, ctx: ContextId, epoch: u64) -> bool {
        self.contexts
            .get(&ctx)
            .is_some_and(|s| s.ready && s.view.epoch == epoch)
    }

    /// Whether `epoch` is an earlier epoch of context `ctx` whose secret this device
    /// still holds, and `peer` still a member: a member that has not caught up yet.
    pub(super) fn context_behind(&self, ctx: ContextId, epoch: u64, peer: &DeviceId) -> bool {
        self.contexts.get(&ctx).is_some_and(|s| {
            s.ready && epoch < s.view.epoch && s.secrets.contains_key(&epoch) && s.view.members.contains_key(peer)
        })
    }

    /// The PSK a context channel initiator uses again after a failed answer.
    pub(super) fn context_psk_for(&self, ctx: ContextId, epoch: u64, peer: &DeviceId) -> Option<[u8; 32]> {
        let s = self.contexts.get(&ctx)?.secrets.get(&epoch)?;
        Some(context_psk(s, &self.keys.id, peer))
    }

    // ----- sharing with one's own devices --------------------------------------------

    /// Offers ready context `ctx` to this person's other devices named in it: the other
    /// authorities' geneses, the context's facts and the tokens the other authorities
    /// issued to ours, resent until each acknowledges the creation fact.
    pub(super) fn share_context(&mut self, ctx: ContextId) {
        let Some(st) = self.contexts.get(&ctx).filter(|s| s.ready) else {
            return;
        };
        let Some(mine) = self.my_authority().map(|v| v.id) else {
            return;
        };
        let me = self.keys.id;
        let to: std::collections::BTreeSet<DeviceId> = st
            .view
            .members
            .iter()
            .filter(|(d, m)| m.authority == mine && **d != me && self.peers.contains_key(d))
            .map(|(d, _)| *d)
            .collect();
        if to.is_empty() {
            return;
        }
        self.ctx_push.insert(ctx, (st.view.genesis, to));
        self.resend_context_shares();
        self.arm_auth_tick();
    }

    /// The `ContextShare` of every context not yet acknowledged by all its own devices.
    pub(super) fn resend_context_shares(&mut self) {
        let pushes: Vec<(ContextId, Vec<DeviceId>)> = self
            .ctx_push
            .iter()
            .map(|(c, (_, to))| (*c, to.iter().copied().collect()))
            .collect();
        for (ctx, to) in pushes {
            let Some(msg) = self.context_share(ctx) else { continue };
            for d in to {
                self.send_auth(d, msg.clone());
            }
        }
    }

    fn context_share(&self, ctx: ContextId) -> Option<crate::authority::AuthMsg> {
        let st = self.contexts.get(&ctx)?;
        let mine = self.my_authority().map(|v| v.id)?;
        let mut facts: Vec<Vec<u8>> = st
            .view
            .authorities
            .iter()
            .filter(|a| **a != mine)
            .filter_map(|a| self.genesis_fact(a))
            .map(|f| f.encode())
            .collect();
        let ns = Namespace::Context(ctx);
        let mut ctx_facts: Vec<&Fact> = self.journal.facts(&ns).collect();
        // The creation first: the rest is verified against it.
        ctx_facts.sort_by_key(|f| !matches!(f.body, FactBody::ContextGenesis(_)));
        facts.extend(ctx_facts.into_iter().map(|f| f.encode()));
        let tokens = self
            .tokens
            .iter()
            .filter(|t| {
                st.view.authorities.iter().filter(|a| **a != mine).any(|a| {
                    self.views.0.get(a).is_some_and(|v| {
                        caps::verify(t, &v.cap_root)
                            .is_ok_and(|s| s.issuer == *a && s.subject == Subject::Authority(mine))
                    })
                })
            })
            .cloned()
            .collect();
        let addrs = st
            .view
            .members
            .iter()
            .filter(|(_, m)| m.authority != mine)
            .filter_map(|(d, _)| self.ctx_addrs.get(d).map(|a| (*d, a.clone())))
            .collect();
        Some(crate::authority::AuthMsg::ContextShare { facts, tokens, addrs })
    }

    /// A context shared by another device of this person: keep what concerns us.
    pub(super) fn on_context_share(
        &mut self,
        from: DeviceId,
        facts: Vec<Vec<u8>>,
        tokens: Vec<Vec<u8>>,
        addrs: Vec<(DeviceId, String)>,
    ) {
        let me = self.keys.id;
        let Some(mine) = self.my_authority().map(|v| v.id) else {
            return;
        };
        // Only a co-member of our own authority may share (paired devices not in it may not).
        if !self.my_authority().is_some_and(|v| v.members.contains_key(&from)) {
            return self.refuse_ctx();
        }
        let mut views = self.views.clone();
        let mut ctx_view: Option<ContextView> = None;
        // What is verified so far: geneses (for the group keys epoch changes are checked
        // against) and the context's facts (its view grows with each epoch change).
        let mut tj = Journal::new();
        let mut keep: Vec<Fact> = Vec::new();
        let mut decoded = Vec::new();
        for b in &facts {
            match Fact::decode(b) {
                Ok(f) => decoded.push(f),
                Err(_) => return self.fact_rejected(crate::journal::FactError::Malformed),
            }
        }
        for f in decoded {
            let ns = f.namespace;
            let checked = match (&f.body, ns) {
                (FactBody::Genesis(g), Namespace::Authority(a)) => {
                    if !self.genesis_is_foreign(g) {
                        return self.fact_rejected(crate::journal::FactError::Invalid);
                    }
                    verify_fact(&f, &ns, &views).map(|_| {
                        let mut j = Journal::new();
                        j.insert(f.clone());
                        if let Some(v) = AuthorityView::reduce(&j, a) {
                            views.0.insert(a, v);
                        }
                        tj.insert(f.clone());
                    })
                }
                (FactBody::ContextGenesis(g), Namespace::Context(c)) => {
                    if ctx_view.is_some() {
                        // One context per share.
                        return self.refuse_ctx();
                    }
                    verify_fact(&f, &ns, &views).map(|_| {
                        for a in &g.authorities {
                            if let Some(gf) = self.genesis_fact(a) {
                                tj.insert(gf);
                            }
                        }
                        tj.insert(f.clone());
                        ctx_view = ContextView::reduce(&tj, c);
                    })
                }
                (_, Namespace::Context(c)) => match &ctx_view {
                    Some(v) if v.id == c => verify_fact(&f, &ns, v).map(|_| {
                        tj.insert(f.clone());
                        if matches!(f.body, FactBody::ContextEpoch(_)) {
                            ctx_view = ContextView::reduce(&tj, c);
                        }
                    }),
                    _ => Err(crate::journal::FactError::WrongNamespace),
                },
                _ => Err(crate::journal::FactError::WrongNamespace),
            };
            match checked {
                Ok(()) => keep.push(f),
                // A bad fact of the context is left out, not the whole share (whether a
                // fact verifies can depend on what came with it).
                Err(e) if ctx_view.is_some() => self.fact_rejected(e),
                Err(e) => return self.fact_rejected(e),
            }
        }
        // Only a context that names us (in its creation, or in a later epoch).
        if !ctx_view.as_ref().is_some_and(|v| v.members.contains_key(&me)) {
            return self.refuse_ctx();
        }
        let Some(view) = ctx_view else { return self.refuse_ctx() };
        let tokens: Vec<Vec<u8>> = tokens
            .into_iter()
            .filter(|t| !self.tokens.contains(t))
            .filter(|t| {
                view.authorities.iter().filter(|a| **a != mine).any(|a| {
                    views.0.get(a).is_some_and(|v| {
                        caps::verify(t, &v.cap_root)
                            .is_ok_and(|s| s.issuer == *a && s.subject == Subject::Authority(mine))
                    })
                })
            })
            .collect();
        let genesis = view.genesis;
        // Hints for the context's devices we have not reached ourselves.
        let addrs: Vec<(DeviceId, String)> = addrs
            .into_iter()
            .filter(|(d, a)| {
                view.members.contains_key(d) && !self.ctx_addrs.contains_key(d) && a.len() <= MAX_ADDR_HINT
            })
            .take(MAX_CONTEXT_MEMBERS)
            .collect();
        let new: Vec<Fact> = keep.into_iter().filter(|f| !self.journal.contains(f)).collect();
        if new.is_empty() && tokens.is_empty() && addrs.is_empty() {
            self.send_auth(from, crate::authority::AuthMsg::FactsAck { ids: vec![genesis] });
            return;
        }
        self.persist(
            Record::ContextShared {
                facts: new.clone(),
                tokens: tokens.clone(),
                addrs: addrs.clone(),
            },
            Pending::ContextShared {
                from,
                genesis,
                facts: new,
                tokens,
                addrs,
            },
        );
    }

    /// Merges shared facts and tokens (after their write, and on restore).
    pub(super) fn apply_context_share(
        &mut self,
        facts: Vec<Fact>,
        tokens: Vec<Vec<u8>>,
        addrs: Vec<(DeviceId, String)>,
    ) {
        for (d, a) in addrs {
            self.ctx_addrs.entry(d).or_insert(a);
        }
        for t in tokens {
            if !self.tokens.contains(&t) {
                self.tokens.push(t);
            }
        }
        // Authority geneses first, so the context finds its members' authorities.
        let (auth, ctx): (Vec<Fact>, Vec<Fact>) = facts
            .into_iter()
            .partition(|f| matches!(f.namespace, Namespace::Authority(_)));
        for f in auth.into_iter().chain(ctx) {
            self.apply_fact(f);
        }
        if !self.restoring {
            self.refresh_guard();
        }
    }

    // ----- timers -------------------------------------------------------------------

    pub(super) fn ctx_deadline(&self) -> Option<Instant> {
        self.ctx_joins.values().filter_map(|j| j.retry_at).min()
    }

    pub(super) fn ctx_timeout(&mut self) {
        let now = self.now.mono;
        let due: Vec<[u8; 32]> = self
            .ctx_joins
            .iter()
            .filter(|(_, j)| j.retry_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let tries = self.ctx_joins[&id].tries;
            let idx = self
                .channels
                .iter()
                .find(|(_, c)| {
                    c.invite == Some(id) && c.purpose == Purpose::ContextJoin && matches!(c.phase, Phase::Established)
                })
                .map(|(i, _)| *i);
            if tries >= self.cfg.handshake_tries {
                let j = self.ctx_joins.get_mut(&id).expect("listed");
                j.retry_at = None;
                if let Some(i) = idx {
                    self.remove_channel(i, None);
                }
                self.event(Event::ContextJoinFailed {
                    invite: id,
                    reason: "the inviter stopped answering".into(),
                });
                continue;
            }
            let j = self.ctx_joins.get_mut(&id).expect("listed");
            j.retry_at = Some(now.saturating_add(crate::channel::backoff(self.cfg.handshake_retry, tries)));
            j.tries += 1;
            let ctx = j.context;
            match (idx, ctx) {
                (Some(i), Some(c)) => self.send_accept(i, id, c),
                (Some(i), None) => {
                    if !self.ctx_joins[&id].persisting {
                        let t = self.ctx_joins[&id].tries;
                        self.send_join(id, i);
                        if let Some(j) = self.ctx_joins.get_mut(&id) {
                            j.tries = t;
                        }
                    }
                }
                (None, _) => {}
            }
        }
    }
}

/// The creation both sides expect: the two authorities, every member device of each
/// (with the authority it belongs to), and `nonce`.
fn expected_genesis(a: &AuthorityView, b: &AuthorityView, nonce: [u8; 32]) -> ContextGenesis {
    let mut authorities = vec![a.id, b.id];
    authorities.sort();
    let mut members: Vec<ContextMember> = a
        .members
        .values()
        .map(|m| (a.id, m))
        .chain(b.members.values().map(|m| (b.id, m)))
        .map(|(authority, m)| ContextMember {
            authority,
            cert: m.cert.clone(),
            addr: m.addr.clone(),
        })
        .collect();
    members.sort_by_key(|m| m.cert.id());
    members.dedup_by_key(|m| m.cert.id());
    ContextGenesis {
        authorities,
        members,
        nonce,
    }
}

/// The grant a member of `issuer` gives this device: rights and flow limit from every
/// token rooted at `issuer` that names this device or its authority.
fn grant_from(
    tokens: &[Vec<u8>],
    issuer: Option<&AuthorityView>,
    mine: Option<AuthorityId>,
    me: DeviceId,
    default_limit: u64,
) -> Option<Grant> {
    let v = issuer?;
    let mut g: Option<Grant> = None;
    for t in tokens {
        let Ok(s) = caps::verify(t, &v.cap_root) else { continue };
        let names_us = match s.subject {
            Subject::Authority(a) => Some(a) == mine,
            Subject::Device(d) => d == me,
        };
        if s.issuer != v.id || !names_us {
            continue;
        }
        let e = g.get_or_insert_with(Grant::default);
        e.rights.extend(s.rights.iter().cloned());
        e.flow_limit = e.flow_limit.max(s.budget.unwrap_or(default_limit));
    }
    g
}
