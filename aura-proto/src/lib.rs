//! # aura-proto: Aura's protocol core
//!
//! A pure, deterministic state machine for one device ([`Peer`]). It performs no I/O,
//! reads no clock and draws no OS randomness. A host (the simulator, the smol shell, a
//! test, any runtime) moves bytes, time and storage in and out through three calls.
//!
//! ## The contract
//!
//! - **Inputs** go in through [`Peer::handle_input`]: a datagram, a timeout, a local
//!   command or a storage acknowledgement. Each call carries [`Now`].
//! - **Drain rule**: after every `handle_input` (and after [`Peer::new`] /
//!   [`Peer::restore`]) the host calls [`Peer::poll_output`] until it returns `None`,
//!   performing each [`Output`] in order, then asks [`Peer::poll_timeout`] for the next
//!   deadline and feeds [`Input::Timeout`] once it has passed. Outputs left undrained are
//!   not lost, but their timing is then the host's fault.
//! - **Time** is data: `Now { mono, unix_ms }`. `mono` drives every timer and must not go
//!   back (if it does, the peer keeps its last value); `unix_ms` is used only for
//!   human-facing expiry of invitation codes.
//! - **Entropy**: the 32-byte seed given to `new`/`restore` feeds one ChaCha20 stream;
//!   sub-streams are forked per session. Snow gets its randomness through a custom
//!   resolver from the same stream. Same seed and same inputs → same outputs, byte for
//!   byte. Give `restore` a fresh seed per incarnation.
//! - **Durability**: nothing is durable until the host returns
//!   `Input::PersistDone(ticket)` for an [`Output::Persist`]. No packet or event that
//!   promises something depending on a record (an invitation code, a pairing ack) is
//!   emitted before that ticket is back. [`Peer::restore`] rebuilds the peer from the
//!   records whose tickets came back, in order.
//! - **Errors**: a bad *local* command returns a typed [`CommandError`]. Bad *remote*
//!   input (malformed, truncated, oversized, wrong version, unauthenticated, replayed,
//!   unknown) is dropped and counted in [`Metrics`]; it never panics and never answers
//!   with an error packet. A panic means a bug in this crate: an internal invariant broke.
//!
//! - **The guard chain**: every frame leaves through [`guard::evaluate`] (capability,
//!   flow budget, journal coupling, leakage). A refused send produces no output but a
//!   local `Event::SendDenied`; an allowed one is announced by an [`Output::Egress`]
//!   record (the audit ledger) right before its `Output::Transmit`, and a send that
//!   spends flow budget leaves only after its reservation is durable.
//!
//! Sub-protocols live in their own modules (`channel`, `invite`, `wire`, `guard`,
//! `receipt`, `context`, `authority`) and share the `handle_*`/`poll_*` vocabulary. The
//! wire formats are specified in `spec/`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authority;
pub mod caps;
mod channel;
pub mod consensus;
pub mod context;
pub mod guard;
pub mod invite;
pub mod journal;
pub mod keys;
pub mod metrics;
mod peer;
pub mod receipt;
pub mod record;
pub mod rng;
pub mod sync;
pub mod time;
pub mod wire;

/// Entry points for the fuzz targets into decoders that are otherwise internal. Not part
/// of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `data` as every message carried inside channel frames (context joins,
    /// accounting): a decode must be canonical and a decoded receipt batch must rebuild
    /// its chain or refuse, never panic.
    pub fn inner_messages(data: &[u8]) {
        crate::peer::fuzz_inner_messages(data);
    }

    /// Hands `peer` a `Proto` frame as if it had arrived, authenticated, on a channel
    /// from `from` in `scope` (the own scope or a context): what a compromised or buggy
    /// device could send. For hostile-peer tests and fuzzing the handlers behind the
    /// channel layer.
    pub fn deliver_proto(
        peer: &mut crate::Peer,
        now: crate::Now,
        from: crate::DeviceId,
        scope: crate::journal::ContextId,
        data: &[u8],
    ) {
        peer.fuzz_deliver_proto(now, from, scope, data);
    }

    /// Makes `peer` a faulty consensus witness that votes at the fast ballot for every
    /// instance it is offered (without recording any of those votes), for simulations
    /// and tests of equivocation detection.
    pub fn equivocate(peer: &mut crate::Peer, on: bool) {
        peer.fuzz_equivocate(on);
    }

    /// Encoded examples of those messages, for the seed corpus.
    pub fn inner_message_samples() -> Vec<Vec<u8>> {
        crate::peer::inner_message_samples()
    }
}

pub use channel::{Role, NOISE_PATTERN};
pub use invite::{Invitation, InviteError};
pub use keys::{DeviceCert, DeviceId, DeviceKeys, DeviceSecret};
pub use metrics::{DropReason, Metrics};
pub use peer::{
    ChannelInfo, ChannelState, Command, CommandError, Config, DownReason, Durable, Event, FailReason, Input, Output,
    Peer, Propagation, SyncPhase, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
pub use record::{PairedPeer, Record, Ticket};
pub use time::{Instant, Now};
