//! The send path of [`Peer`]: every frame leaves through the guard chain.
//!
//! `send_frame` pads the frame, builds a `guard::Request` from the channel's scope, peer
//! and epoch, and runs `guard::evaluate`. A denial emits nothing but a local event and a
//! metric. An allowed send that needs more flow budget than is durably reserved persists
//! the reservation first and holds the frame (and everything after it for the same scope
//! and device) until the write is back; then the frame is evaluated again and sent. Each
//! datagram that leaves is announced by an `Output::Egress` record just before its
//! `Output::Transmit`.

use super::{Event, Held, Output, Peer, Pending};
use crate::guard::{self, ContextState, Denial, Effect, Egress, EgressKind, Grant, Leak, MsgKind, Observer, Request};
use crate::journal::ContextId;
use crate::keys::DeviceId;
use crate::record::Record;
use crate::wire::{self, Frame};

/// Rights a device has towards its own paired devices.
const OWN_RIGHTS: [&str; 3] = ["send", "sync", "member"];

impl Peer {
    /// Rebuilds the grants and context states the guard reads from paired devices,
    /// contexts and capability tokens. Flow and leakage accounting are kept.
    pub(super) fn refresh_guard(&mut self) {
        let own = Grant {
            rights: OWN_RIGHTS.iter().map(|r| r.to_string()).collect(),
            flow_limit: guard::UNMETERED,
        };
        self.guard.grants.retain(|(c, _), _| *c != ContextId::OWN);
        for id in self.peers.keys() {
            self.guard.grants.insert((ContextId::OWN, *id), own.clone());
        }
        // A device being paired may exchange channel upkeep (confirmations) only; one
        // joining a context also its join messages.
        let idxs: Vec<u32> = self.channels.keys().copied().collect();
        for idx in idxs {
            self.grant_upkeep(idx);
        }
        self.guard.contexts.insert(
            ContextId::OWN,
            ContextState {
                epoch: 0,
                writable: true,
                oldest: None,
            },
        );
        for o in Observer::ALL {
            self.guard.leakage.entry((ContextId::OWN, o, 0)).or_insert(Leak {
                limit: u64::MAX,
                spent: 0,
            });
        }
        self.refresh_context_grants();
    }

    /// Channel upkeep rights for a device being paired or joining a context through
    /// channel `idx`, before it is a paired device or a context member.
    pub(super) fn grant_upkeep(&mut self, idx: u32) {
        let Some(c) = self.channels.get(&idx) else { return };
        let rights: &[&str] = match c.purpose {
            wire::Purpose::Pairing => &["member"],
            wire::Purpose::ContextJoin => &["sync", "member"],
            _ => return,
        };
        let Some(p) = c.peer else { return };
        self.guard.grants.entry((ContextId::OWN, p)).or_insert_with(|| Grant {
            rights: rights.iter().map(|r| r.to_string()).collect(),
            flow_limit: guard::UNMETERED,
        });
    }

    /// Sends `frame` on channel `idx` through the guard chain.
    pub(super) fn send_frame(&mut self, idx: u32, frame: &Frame<'_>) {
        let Some(c) = self.channels.get(&idx) else { return };
        let Some(peer) = c.peer else { return };
        if c.transport.is_none() {
            return;
        }
        let scope = c.scope;
        let kind = match frame {
            Frame::App { .. } => MsgKind::App,
            Frame::Proto { .. } => MsgKind::Proto,
            _ => MsgKind::Control,
        };
        let keepalive = matches!(frame, Frame::Keepalive);
        // Frames that make sense on any channel to this peer; the rest belong to the
        // channel they were written for (a held `Close` must not close its successor).
        let portable = matches!(
            frame,
            Frame::App { .. } | Frame::Proto { .. } | Frame::Accounting { .. }
        );
        let mut plain = core::mem::take(&mut self.plain);
        if wire::pad_frame(frame, &mut plain).is_err() {
            self.plain = plain;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(q) = self.held.get_mut(&(scope, peer)) {
            q.push_back(Held {
                idx,
                plain: plain.clone(),
                kind,
                keepalive,
                portable,
                seq,
            });
            self.plain = plain;
            return;
        }
        let held = Held {
            idx,
            plain,
            kind,
            keepalive,
            portable,
            seq,
        };
        if let Some(back) = self.guarded(scope, peer, held) {
            self.plain = back.plain;
        }
    }

    /// Evaluates and carries out one send. Returns the send when it is done with it (so
    /// its buffer can be reused), or `None` when it is now held behind a reservation.
    fn guarded(&mut self, scope: ContextId, peer: DeviceId, h: Held) -> Option<Held> {
        let Some(c) = self.channels.get(&h.idx) else {
            return Some(h);
        };
        let epoch = c.epoch;
        let req = Request {
            context: scope,
            peer,
            epoch,
            kind: h.kind,
            bucket: h.plain.len(),
        };
        let effects = match guard::evaluate(&self.guard, &req) {
            Ok(e) => e,
            Err(d) => {
                self.deny(h.seq, scope, peer, d);
                return Some(h);
            }
        };
        if let Some(&Effect::Reserve {
            context,
            peer,
            epoch,
            up_to,
        }) = effects.first()
        {
            self.metrics.reserves += 1;
            self.held.entry((scope, peer)).or_default().push_front(h);
            self.persist(
                Record::Reserve {
                    context,
                    peer,
                    epoch,
                    up_to,
                },
                Pending::Reserved {
                    context,
                    peer,
                    epoch,
                    up_to,
                },
            );
            return None;
        }
        guard::apply(&mut self.guard, &effects);
        let mut cost = 0;
        let mut leakage = [0u64; 3];
        for e in effects.iter() {
            match *e {
                Effect::Charge { cost: c, .. } => cost = c,
                Effect::Receipt {
                    context,
                    peer,
                    epoch,
                    cost,
                } => self.append_receipt(context, peer, epoch, cost),
                Effect::Leak { observer, cost, .. } => leakage[observer as usize] = cost,
                _ => {}
            }
        }
        let now = self.now.mono;
        let c = self.channels.get_mut(&h.idx).expect("checked above");
        let Some(bytes) = c.seal_padded(&h.plain, h.keepalive, now) else {
            return Some(h);
        };
        let spent = self.guard.flow.get(&(scope, peer, epoch)).map_or(0, |f| f.spent);
        let egress = Egress {
            seq: h.seq,
            unix_ms: self.now.unix_ms,
            peer: Some(peer),
            addr: c.addr.clone(),
            context: scope,
            epoch,
            kind: EgressKind::Frame(h.kind),
            bucket: h.plain.len(),
            cost,
            spent,
            leakage,
        };
        let to = c.addr.clone();
        self.metrics.egress += 1;
        self.metrics.datagrams_out += 1;
        self.out.push_back(Output::Egress(egress));
        self.out.push_back(Output::Transmit { to, bytes });
        Some(h)
    }

    fn deny(&mut self, seq: u64, context: ContextId, peer: DeviceId, reason: Denial) {
        *self.metrics.denied.entry(reason.name().to_string()).or_default() += 1;
        self.event(Event::SendDenied {
            seq,
            context,
            peer,
            reason,
        });
    }

    /// Whether a channel-upkeep message to `peer` in `scope` would pass the chain now:
    /// asked before a handshake is started or answered, so a denied scope sees no packet.
    pub(super) fn upkeep_allowed(&self, scope: ContextId, peer: DeviceId, epoch: u64) -> Result<(), Denial> {
        self.smallest_passes(scope, peer, epoch, MsgKind::Control)
    }

    /// Whether anti-entropy to `peer` in `scope` at `epoch` would pass the chain now:
    /// what a channel of an earlier epoch of a context (a member catching up) is for.
    pub(super) fn catch_up_allowed(&self, scope: ContextId, peer: DeviceId, epoch: u64) -> Result<(), Denial> {
        self.smallest_passes(scope, peer, epoch, MsgKind::Proto)
    }

    fn smallest_passes(&self, scope: ContextId, peer: DeviceId, epoch: u64, kind: MsgKind) -> Result<(), Denial> {
        let req = Request {
            context: scope,
            peer,
            epoch,
            kind,
            bucket: wire::PAD_BUCKETS[0],
        };
        guard::evaluate(&self.guard, &req).map(|_| ())
    }

    /// Refuses an upkeep-gated action with a local event (a fresh sequence number).
    pub(super) fn deny_upkeep(&mut self, scope: ContextId, peer: DeviceId, reason: Denial) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.deny(seq, scope, peer, reason);
    }

    /// A reservation is durable: record it and let the held sends go, in order, until
    /// one needs a further reservation.
    pub(super) fn reserved_durable(&mut self, context: ContextId, peer: DeviceId, epoch: u64, up_to: u64) {
        let f = self.guard.flow.entry((context, peer, epoch)).or_default();
        f.reserved = f.reserved.max(up_to);
        let Some(mut q) = self.held.remove(&(context, peer)) else {
            return;
        };
        while let Some(mut h) = q.pop_front() {
            // The channel may have been replaced by a fresh handshake meanwhile.
            if !self.channels.contains_key(&h.idx) {
                match self.active.get(&(context, peer)) {
                    Some(&i) if h.portable => h.idx = i,
                    _ => continue, // gone: like a queued message of a failed channel
                }
            }
            if self.guarded(context, peer, h).is_none() {
                // Held again behind a new reservation; keep the rest behind it.
                let held = self.held.get_mut(&(context, peer)).expect("just held");
                held.extend(q);
                return;
            }
        }
    }

    /// Sends a handshake datagram, recording it in the egress ledger. Handshakes are
    /// gated where they start (`upkeep_allowed`) and carry no flow charge.
    pub(super) fn transmit_handshake(&mut self, to: &str, bytes: Vec<u8>, scope: ContextId, peer: Option<DeviceId>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let epoch = self.guard.contexts.get(&scope).map_or(0, |c| c.epoch);
        self.metrics.egress += 1;
        self.metrics.datagrams_out += 1;
        self.out.push_back(Output::Egress(Egress {
            seq,
            unix_ms: self.now.unix_ms,
            peer,
            addr: to.to_owned(),
            context: scope,
            epoch,
            kind: EgressKind::Handshake,
            bucket: bytes.len(),
            cost: 0,
            spent: 0,
            leakage: [0; 3],
        }));
        self.out.push_back(Output::Transmit {
            to: to.to_owned(),
            bytes,
        });
    }
}
