//! One Noise `IKpsk2` channel to one remote device.
//!
//! The channel owns the Noise state, the replay window and its timers; the [`Peer`]
//! decides which channels exist and what their frames mean.
//!
//! [`Peer`]: crate::Peer

use core::cell::Cell;
use core::time::Duration;
use std::collections::BTreeMap;

use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

use crate::journal::ContextId;
use crate::keys::{DeviceCert, DeviceId};
use crate::rng::PeerRng;
use crate::time::Instant;
use crate::wire::{self, Purpose, MAX_NOISE_MSG, TAG_LEN, WIRE_VERSION};

/// The Noise protocol name every channel uses.
pub const NOISE_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Where the PSK is mixed in (after the second message).
pub(crate) const PSK_LOCATION: u8 = 2;

/// A resolver that hands snow the peer's own seeded RNG and delegates the primitives to
/// snow's defaults, so handshakes are reproducible from the peer seed.
struct SeededResolver {
    rng: Cell<Option<PeerRng>>,
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.rng.take().map(|r| Box::new(r) as Box<dyn Random>)
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// The prologue binds the wire version and the purpose, so a pairing handshake can never
/// be completed as a link handshake or by a peer speaking another wire version.
fn prologue(purpose: Purpose) -> [u8; 15] {
    let mut p = *b"aura noise v1\0\0";
    p[13] = WIRE_VERSION;
    p[14] = match purpose {
        Purpose::Pairing => 1,
        Purpose::Link => 2,
        Purpose::ContextJoin => 3,
        Purpose::Context => 4,
    };
    p
}

/// Builds a handshake state. `remote` is set for the initiator (IK knows the responder's
/// static key in advance) and `psk` when it is already known.
pub(crate) fn build_handshake(
    params: &NoiseParams,
    rng: PeerRng,
    local_private: &[u8; 32],
    remote: Option<&[u8; 32]>,
    psk: Option<&[u8; 32]>,
    purpose: Purpose,
) -> Result<HandshakeState, snow::Error> {
    let pro = prologue(purpose);
    let resolver = Box::new(SeededResolver {
        rng: Cell::new(Some(rng)),
    });
    let mut b = snow::Builder::with_resolver(params.clone(), resolver)
        .local_private_key(local_private)?
        .prologue(&pro)?;
    if let Some(psk) = psk {
        b = b.psk(PSK_LOCATION, psk)?;
    }
    match remote {
        Some(r) => b.remote_public_key(r)?.build_initiator(),
        None => b.build_responder(),
    }
}

/// Sliding window of accepted transport nonces (like IPsec/WireGuard): a nonce is fresh if
/// it is newer than everything seen, or inside the window and not yet seen.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplayWindow {
    /// One past the highest nonce accepted.
    top: u64,
    /// Bit i set = nonce `top - 1 - i` accepted.
    bits: u128,
}

impl ReplayWindow {
    const WIDTH: u64 = 128;

    pub(crate) fn is_fresh(&self, n: u64) -> bool {
        if n >= self.top {
            return true;
        }
        let back = self.top - 1 - n;
        back < Self::WIDTH && self.bits & (1u128 << back) == 0
    }

    /// Marks `n` seen. Call only after the frame authenticated.
    pub(crate) fn mark(&mut self, n: u64) {
        if n >= self.top {
            let shift = n - self.top + 1;
            self.bits = if shift >= Self::WIDTH { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = n + 1;
        } else {
            self.bits |= 1u128 << (self.top - 1 - n);
        }
    }
}

/// Which side of the handshake this device played.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// Sent the first message.
    Initiator,
    /// Answered it.
    Responder,
}

/// Where the handshake stands.
pub(crate) enum Phase {
    /// Initiator: first message sent, answer awaited.
    InitSent { hs: Box<HandshakeState>, datagram: Vec<u8> },
    /// Responder: answer sent, waiting for the initiator's first frame (kept for resending
    /// when the first message arrives again).
    RespSent { datagram: Vec<u8> },
    /// Transport keys on both sides and traffic heard.
    Established,
}

/// Pairing progress carried by a `Purpose::Pairing` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pairing {
    /// Not a pairing channel, or pairing finished.
    None,
    /// Joiner: `Confirm` sent, `PairAck` awaited.
    AwaitAck,
    /// A `Paired` record is being persisted.
    Persisting,
}

/// One channel.
pub(crate) struct Channel {
    pub local_idx: u32,
    pub remote_idx: u32,
    pub role: Role,
    pub purpose: Purpose,
    /// The scope the channel serves: `ContextId::OWN` between one person's devices, else
    /// a relational context (its PSK comes from that context's secret of `epoch`).
    pub scope: ContextId,
    pub epoch: u64,
    pub addr: String,
    pub peer: Option<DeviceId>,
    pub remote_cert: Option<DeviceCert>,
    pub remote_static: [u8; 32],
    pub invite: Option<[u8; 32]>,
    pub version: u16,
    pub phase: Phase,
    pub transport: Option<StatelessTransportState>,
    pub send_nonce: u64,
    pub replay: ReplayWindow,
    pub pairing: Pairing,
    /// Next retransmission (handshake message or pairing confirm).
    pub retx_at: Option<Instant>,
    pub tries: u32,
    pub created: Instant,
    /// Last frame sent / received, keepalives included.
    pub last_sent: Instant,
    pub last_recv: Instant,
    /// Last frame other than a keepalive sent / received.
    pub last_sent_payload: Instant,
    pub last_recv_payload: Instant,
    /// First payload sent since anything was last received: the clock of dead-peer
    /// detection. (Measuring from the *last* send would let steady traffic to a peer that
    /// lost the session postpone detection forever.)
    pub unanswered_since: Option<Instant>,
    /// Payload arrived and nothing was sent since: the other side expects a sign of life.
    pub owe_keepalive: bool,
    /// Ping id → send time.
    pub pings: BTreeMap<u64, Instant>,
    /// Pings answered in the current one-second window: (window start, count).
    pub pongs: (Instant, u32),
    /// A channel of an earlier epoch of a context, for a member to catch up: it ends
    /// then, whatever it carries (the member opens one of the current epoch after).
    pub ends_at: Option<Instant>,
}

impl Channel {
    pub(crate) fn new(
        local_idx: u32,
        role: Role,
        purpose: Purpose,
        addr: String,
        now: Instant,
        phase: Phase,
    ) -> Channel {
        Channel {
            local_idx,
            remote_idx: 0,
            role,
            purpose,
            scope: ContextId::OWN,
            epoch: 0,
            addr,
            peer: None,
            remote_cert: None,
            remote_static: [0; 32],
            invite: None,
            version: 0,
            phase,
            transport: None,
            send_nonce: 0,
            replay: ReplayWindow::default(),
            pairing: Pairing::None,
            retx_at: None,
            tries: 0,
            created: now,
            last_sent: now,
            last_recv: now,
            last_sent_payload: now,
            last_recv_payload: now,
            unanswered_since: None,
            owe_keepalive: false,
            pings: Default::default(),
            pongs: (Instant(0), 0),
            ends_at: None,
        }
    }

    /// Encrypts and frames an already padded frame (`wire::pad_frame`); `keepalive` says
    /// whether it carries nothing (keepalives do not count as payload for liveness).
    pub(crate) fn seal_padded(&mut self, plain: &[u8], keepalive: bool, now: Instant) -> Option<Vec<u8>> {
        let transport = self.transport.as_ref()?;
        let ct_len = plain.len() + TAG_LEN;
        debug_assert!(ct_len <= MAX_NOISE_MSG);
        let nonce = self.send_nonce;
        let mut datagram = Vec::with_capacity(ct_len + 24);
        wire::data_header(&mut datagram, self.remote_idx, nonce, ct_len);
        let start = datagram.len();
        datagram.resize(start + ct_len, 0);
        let n = transport.write_message(nonce, plain, &mut datagram[start..]).ok()?;
        if n != ct_len {
            return None; // cannot happen with ChaChaPoly; never send a mislabelled length
        }
        self.send_nonce += 1;
        self.last_sent = now;
        self.owe_keepalive = false;
        if !keepalive {
            self.last_sent_payload = now;
            self.unanswered_since.get_or_insert(now);
        }
        Some(datagram)
    }

    /// Earliest instant this channel wants a timeout.
    pub(crate) fn deadline(&self, cfg: &crate::Config) -> Option<Instant> {
        let mut d = self.retx_at;
        let mut take = |t: Instant| d = Some(d.map_or(t, |x: Instant| x.min(t)));
        if let Some(t) = self.ends_at {
            take(t);
        }
        match self.phase {
            Phase::InitSent { .. } => {}
            Phase::RespSent { .. } => take(self.created.saturating_add(cfg.handshake_timeout)),
            Phase::Established => {
                if let Some(t) = self.dead_at(cfg) {
                    take(t);
                }
                // While pairing is being confirmed, only retransmission and death matter
                // (the timeout handler skips keepalives and idling then, so announcing
                // those deadlines would make the host spin).
                if self.pairing == Pairing::None {
                    if let Some(t) = self.keepalive_due(cfg) {
                        take(t);
                    }
                    if let Some(t) = self.idle_at(cfg) {
                        take(t);
                    }
                }
            }
        }
        d
    }
}

impl Channel {
    /// When to send a keepalive. With `persistent_keepalive`, on a fixed beat; otherwise
    /// only to answer payload we received and did not answer (never to answer a
    /// keepalive, so two quiet peers do not ping-pong forever).
    pub(crate) fn keepalive_due(&self, cfg: &crate::Config) -> Option<Instant> {
        match cfg.persistent_keepalive {
            Some(k) => Some(self.last_sent.saturating_add(k)),
            None if self.owe_keepalive => Some(self.last_recv_payload.saturating_add(cfg.keepalive)),
            None => None,
        }
    }

    /// When the other side counts as gone: we sent payload and heard nothing back for
    /// `idle_timeout` (a live peer answers within `keepalive`), or, with persistent
    /// keepalives, nothing at all arrived for `idle_timeout`.
    pub(crate) fn dead_at(&self, cfg: &crate::Config) -> Option<Instant> {
        match cfg.persistent_keepalive {
            Some(_) => Some(self.last_recv.saturating_add(cfg.idle_timeout)),
            None => self.unanswered_since.map(|t| t.saturating_add(cfg.idle_timeout)),
        }
    }

    /// When the channel closes for lack of use (never with persistent keepalives).
    pub(crate) fn idle_at(&self, cfg: &crate::Config) -> Option<Instant> {
        match (cfg.persistent_keepalive, cfg.app_idle) {
            (None, Some(a)) => Some(self.last_sent_payload.max(self.last_recv_payload).saturating_add(a)),
            _ => None,
        }
    }
}

/// Exponential backoff for the `tries`-th retransmission.
pub(crate) fn backoff(base: Duration, tries: u32) -> Duration {
    base.saturating_mul(1u32 << tries.min(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        assert!(w.is_fresh(0));
        w.mark(0);
        assert!(!w.is_fresh(0));
        w.mark(5);
        assert!(w.is_fresh(3));
        assert!(!w.is_fresh(5));
        w.mark(3);
        assert!(!w.is_fresh(3));
        w.mark(200);
        assert!(!w.is_fresh(5), "too old is refused");
        assert!(w.is_fresh(150));
        assert!(!w.is_fresh(200));
        assert!(w.is_fresh(201));
    }
}
