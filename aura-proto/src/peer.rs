//! [`Peer`]: one device's protocol state, driven by inputs and drained of outputs.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use authority_impl::{Dkg, Share, SignCoord, SignPart};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use snow::params::NoiseParams;

#[path = "peer_authority.rs"]
mod authority_impl;
#[path = "peer_consensus.rs"]
mod consensus_impl;
#[path = "peer_context.rs"]
mod context_impl;
#[path = "peer_enroll.rs"]
mod enroll_impl;
#[path = "peer_epoch.rs"]
mod epoch_impl;
#[path = "peer_guard.rs"]
mod guard_impl;
#[path = "peer_receipts.rs"]
mod receipts_impl;
#[path = "peer_refresh.rs"]
mod refresh_impl;
#[path = "peer_sync.rs"]
mod sync_impl;

pub use sync_impl::{Propagation, SyncPhase};

use context_impl::{CtxInvite, CtxJoin, CtxState, CtxStep};

use crate::authority::Views;
use crate::channel::{self, backoff, Channel, Pairing, Phase, Role, NOISE_PATTERN, PSK_LOCATION};
use crate::guard::{self, Denial, Egress, MsgKind};
use crate::invite::{Invitation, InviteError, CODE_VERSION, MAX_ADDR_HINT};
use crate::journal::{AuthorityId, ContextId, Fact, FactId, Journal, Namespace};
use crate::keys::{DeviceCert, DeviceId, DeviceKeys, DeviceSecret};
use crate::metrics::{DropReason, Metrics};
use crate::record::{PairedPeer, Record, Ticket};
use crate::rng::PeerRng;
use crate::time::{Instant, Now};
use crate::wire::{self, DecodeError, Frame, InitPayload, Packet, Purpose, RespPayload, MAX_APP_PAYLOAD};

/// Highest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Lowest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

const CTX_PAIRING_PSK: &str = "aura 2026-11 pairing psk";
const CTX_LINK_PSK: &str = "aura 2026-11 link psk";
/// How long a handshake-init hash is remembered to recognise duplicates and replays.
const SEEN_INIT_TTL: Duration = Duration::from_secs(120);
const MAX_SEEN_INIT: usize = 4096;
/// Pings answered per channel and second at most.
const PONGS_PER_SECOND: u32 = 64;
/// How long a channel of an earlier epoch of a context (a member catching up) lives.
const CATCH_UP_FOR: Duration = Duration::from_secs(15);

/// Tunables. The defaults suit a real network; the simulator shortens some of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Lowest protocol version accepted.
    pub min_version: u16,
    /// Highest protocol version spoken.
    pub max_version: u16,
    /// First handshake retransmission delay; doubles with each try.
    pub handshake_retry: Duration,
    /// Handshake messages sent (first included) before giving up.
    pub handshake_tries: u32,
    /// How long a responder keeps a half-open handshake.
    pub handshake_timeout: Duration,
    /// Answer received payload with a keepalive when we sent nothing for this long.
    pub keepalive: Duration,
    /// Declare the other side gone when it did not answer our payload for this long.
    pub idle_timeout: Duration,
    /// Send a keepalive every interval regardless of traffic (keeps NAT bindings and
    /// status fresh); disables `app_idle`.
    pub persistent_keepalive: Option<Duration>,
    /// Close a channel that carried nothing but keepalives for this long.
    pub app_idle: Option<Duration>,
    /// Half-open responder handshakes allowed at once.
    pub max_half_open: usize,
    /// Messages queued per peer while its channel is being set up.
    pub max_queued: usize,
    /// Channels allowed at once.
    pub max_channels: usize,
    /// Flow budget per (context, device, epoch) this device's authority grants the other
    /// authority when it creates or joins a context (units of 256 padded bytes).
    pub context_flow_limit: u64,
    /// Leakage budget per (context, observer class, epoch) for this device's sends.
    pub leakage_limit: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            handshake_retry: Duration::from_millis(500),
            handshake_tries: 7,
            handshake_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(35),
            persistent_keepalive: None,
            app_idle: Some(Duration::from_secs(180)),
            max_half_open: 64,
            max_queued: 64,
            max_channels: 1024,
            context_flow_limit: 1000,
            leakage_limit: 1_000_000,
        }
    }
}

/// Everything a peer needs to come back after a restart.
#[derive(Clone, Debug)]
pub struct Durable {
    /// The device secret.
    pub secret: DeviceSecret,
    /// Every record whose `PersistDone` was seen, in the order they were persisted.
    pub records: Vec<Record>,
}

/// What the host feeds the peer.
#[derive(Clone, Debug)]
pub enum Input {
    /// A datagram arrived from `from` (an address in the host's own notation).
    Datagram {
        /// Sender address.
        from: String,
        /// Raw bytes; anything at all.
        bytes: Vec<u8>,
    },
    /// The deadline from `poll_timeout` passed (spurious calls are harmless).
    Timeout,
    /// A local request.
    Command(Command),
    /// The record of this ticket is durable.
    PersistDone(Ticket),
}

/// Local requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Issue an invitation code valid for `valid_for`, telling joiners to reach us at `addr_hint`.
    CreateInvite {
        /// Lifetime of the code.
        valid_for: Duration,
        /// Address the joiner should send its handshake to.
        addr_hint: String,
    },
    /// Redeem an invitation code.
    Join {
        /// The code as pasted.
        code: String,
    },
    /// Send application bytes to a paired device (sets up the channel if needed).
    Send {
        /// Destination device.
        peer: DeviceId,
        /// Payload, at most [`MAX_APP_PAYLOAD`] bytes.
        data: Bytes,
    },
    /// Measure the round trip to a paired device.
    Ping {
        /// Destination device.
        peer: DeviceId,
    },
    /// Open a channel to a paired device without sending anything yet.
    Connect {
        /// Destination device.
        peer: DeviceId,
    },
    /// Close the channel to a device.
    Close {
        /// Device whose channel to close.
        peer: DeviceId,
    },
    /// Create a threshold authority with paired `devices` (this device joins too) by
    /// distributed key generation.
    CreateAuthority {
        /// The other members.
        devices: Vec<DeviceId>,
        /// Signatures needed.
        threshold: u16,
    },
    /// Have this device's authority sign a statement (recorded as a journal fact).
    Sign {
        /// The statement.
        statement: Vec<u8>,
    },
    /// Issue a context invitation: whoever redeems it (a member device of another
    /// authority) creates a relational context between the two authorities with us.
    CreateContextInvite {
        /// Lifetime of the code.
        valid_for: Duration,
        /// Address the joiner should send its handshake to.
        addr_hint: String,
    },
    /// Redeem a context invitation from a member device of another authority.
    JoinContext {
        /// The code as pasted.
        code: String,
    },
    /// Send application bytes to a member device of the other authority of a context
    /// (through the guard chain; sets up the context channel if needed).
    ContextSend {
        /// The context.
        context: ContextId,
        /// Destination device.
        peer: DeviceId,
        /// Payload, at most [`MAX_APP_PAYLOAD`] bytes.
        data: Bytes,
    },
    /// Reconcile every journal namespace this device shares with `peer`, fetching and
    /// pushing what differs; without a peer, with every own device and one device of
    /// each other authority of each context.
    Sync {
        /// One device, or all.
        peer: Option<DeviceId>,
    },
    /// Have the authority agree (by consensus) to need `threshold` votes and signatures.
    ChangeThreshold {
        /// The new threshold (2 ..= members).
        threshold: u16,
    },
    /// Have the authority agree (by consensus) to add a device this one paired with by
    /// invitation; once the change applies, the device is given a share of the existing
    /// key (`Event::DeviceEnrolled` here, `Event::AuthorityJoined` there).
    AddDevice {
        /// The device.
        device: DeviceId,
    },
    /// Refresh the key shares among the current members (same group key): a removed
    /// device's share stops working once the members agree to switch. Runs by itself
    /// after a removal this device committed.
    RefreshShares,
    /// Have the authority agree (by consensus) to remove a device (lost or revoked).
    RemoveDevice {
        /// The device.
        device: DeviceId,
    },
    /// Write a note (application data, at most [`crate::journal::MAX_NOTE`] bytes) into
    /// a journal this device belongs to (its authority's or a ready context's) and
    /// spread it; `Event::Propagation` reports its id and how far it got.
    Publish {
        /// The journal.
        namespace: Namespace,
        /// Payload.
        data: Vec<u8>,
        /// Ask every other member device to confirm receipt (`Event::Delivered`).
        ack: bool,
    },
    /// Issue a capability token from this device's authority.
    IssueCapability {
        /// Holder.
        to: crate::caps::Subject,
        /// Rights granted.
        rights: Vec<String>,
        /// Flow budget, if limited.
        budget: Option<u64>,
    },
    /// Have this device's authority agree (by consensus) on a new epoch of a context:
    /// a new secret, sealed to every member, and the authority's current devices.
    /// Happens by itself when the authority's devices changed.
    RekeyContext {
        /// The context.
        context: ContextId,
    },
}

/// A refused local command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The invitation code was refused.
    #[error(transparent)]
    Invite(#[from] InviteError),
    /// No paired device has this id.
    #[error("no paired device {0:?}")]
    UnknownPeer(DeviceId),
    /// Payload larger than one frame.
    #[error("payload of {len} bytes exceeds the {max} byte limit")]
    PayloadTooLarge {
        /// Given size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Too many messages waiting for a channel.
    #[error("too many messages queued for {0:?} while its channel is set up")]
    QueueFull(DeviceId),
    /// Channel table full.
    #[error("too many channels open")]
    TooManyChannels,
    /// Invitation lifetime of zero.
    #[error("an invitation must be valid for some time")]
    ZeroLifetime,
    /// This device already holds a share of an authority.
    #[error("this device is already a member of an authority")]
    AlreadyInAuthority,
    /// Threshold outside 2..=devices (or too many devices).
    #[error("threshold {threshold} is invalid for {devices} devices (need 2 <= threshold <= devices <= 64)")]
    BadThreshold {
        /// Requested threshold.
        threshold: u16,
        /// Devices including this one.
        devices: usize,
    },
    /// Signing needs membership in an authority.
    #[error("this device is not a member of an authority")]
    NotInAuthority,
    /// The capability could not be made.
    #[error(transparent)]
    Capability(#[from] crate::caps::CapError),
    /// A change from the authority's current state is already being agreed: wait for it.
    #[error("a change from the authority's current state is already being agreed")]
    Busy,
    /// A threshold below the one the group key was made with: signing would still need
    /// that many shares, so lowering it takes a new key, which is not supported yet.
    #[error(
        "threshold {asked} is below {key}, the threshold the group key was made with; lowering it \
         needs a new key, which Aura does not support yet"
    )]
    BelowKeyThreshold {
        /// The threshold asked for.
        asked: u16,
        /// The key's threshold.
        key: u16,
    },
    /// The tree change does not apply to the authority as it is (unknown device, too few
    /// members left, threshold out of range).
    #[error("the change does not apply to the authority as it is now")]
    InvalidChange,
    /// This device is not a member of that journal.
    #[error("this device is not a member of {0:?}")]
    NotMember(Namespace),
    /// No ready context has this id on this device.
    #[error("no ready context {0:?} on this device")]
    UnknownContext(ContextId),
    /// The device is not a member of the context's other authority.
    #[error("{peer:?} is not a device of another authority in context {context:?}")]
    NotContextPeer {
        /// The context.
        context: ContextId,
        /// The device.
        peer: DeviceId,
    },
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// No answer after all retransmissions.
    Timeout,
    /// No common protocol version.
    VersionMismatch {
        /// Our accepted range.
        ours: (u16, u16),
        /// Theirs.
        theirs: (u16, u16),
    },
    /// The other side's keys did not match what we expected.
    BadCert,
}

/// Why an established channel went away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownReason {
    /// Nothing heard for `idle_timeout`.
    Timeout,
    /// No application traffic for `app_idle`.
    Idle,
    /// The other side closed it.
    PeerClosed,
    /// Closed by a local command.
    LocalClose,
}

/// Something the application should know.
// Events are handed out once and consumed; boxing the large ones buys nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An invitation is durable; `code` may be shown.
    InviteCreated {
        /// The code to hand to the joiner.
        code: String,
        /// Wall-clock expiry.
        expires_unix_ms: u64,
    },
    /// Pairing completed and is durable on this side.
    Paired {
        /// The other device.
        peer: DeviceId,
        /// Where it was reached.
        addr: String,
        /// The invitation that paired us.
        invite: [u8; 32],
    },
    /// A pairing attempt failed (it is retried at the next restart while the code is valid).
    PairingFailed {
        /// Invitation id.
        invite: [u8; 32],
        /// Why.
        reason: FailReason,
    },
    /// A channel to a paired device is ready.
    ChannelUp {
        /// The device.
        peer: DeviceId,
        /// Its address.
        addr: String,
        /// Negotiated protocol version.
        version: u16,
    },
    /// A link handshake failed; messages queued for the device were discarded.
    ChannelFailed {
        /// The device.
        peer: DeviceId,
        /// Why.
        reason: FailReason,
        /// Queued messages discarded.
        discarded: usize,
    },
    /// A channel closed.
    ChannelDown {
        /// The device.
        peer: DeviceId,
        /// Why.
        reason: DownReason,
    },
    /// Application data arrived.
    Received {
        /// Sender device.
        peer: DeviceId,
        /// Payload.
        data: Bytes,
    },
    /// Answer to a `Ping`.
    Pong {
        /// The device.
        peer: DeviceId,
        /// Measured round trip.
        rtt: Duration,
    },
    /// This device is a member of a new authority (its genesis and share are durable).
    AuthorityCreated {
        /// The authority.
        authority: AuthorityId,
        /// Group verifying key.
        group_key: [u8; 32],
        /// Signatures needed.
        threshold: u16,
        /// Number of members.
        members: u16,
        /// Whether this device holds a share. `false` when it lost its key generation
        /// state in a crash before its share was durable while a threshold of the others
        /// finished: it is listed as a member but cannot take part in signing.
        has_share: bool,
    },
    /// Key generation this device coordinated failed.
    AuthorityFailed {
        /// Why.
        reason: String,
    },
    /// A threshold signature this device coordinated is complete (and recorded).
    Signed {
        /// The authority.
        authority: AuthorityId,
        /// Group verifying key.
        group_key: [u8; 32],
        /// The exact bytes signed (the statement fact's signing bytes).
        message: Vec<u8>,
        /// The signature (verifies with plain FROST/Schnorr verification under `group_key`).
        signature: [u8; 64],
        /// The statement fact now in the journal.
        fact: Fact,
    },
    /// A signing session gave up.
    SignFailed {
        /// Why.
        reason: String,
        /// The statement of the `Sign` command that failed; `None` when the signing was
        /// one this device started for itself (a consensus commit).
        statement: Option<Vec<u8>>,
    },
    /// A capability token is issued and durable.
    CapabilityIssued {
        /// The token (Biscuit bytes).
        token: Vec<u8>,
    },
    /// A context invitation is durable; `code` may be shown.
    ContextInviteCreated {
        /// The code to hand to a member device of the other authority.
        code: String,
        /// Wall-clock expiry.
        expires_unix_ms: u64,
    },
    /// A relational context is ready on this device: established by every authority,
    /// its members checked against their authorities' journals, and the current epoch's
    /// secret opened. Sends in it may start.
    ContextReady {
        /// The context.
        context: ContextId,
        /// The other authority.
        with: AuthorityId,
        /// Current epoch.
        epoch: u64,
    },
    /// Redeeming a context invitation failed.
    ContextJoinFailed {
        /// Invitation id.
        invite: [u8; 32],
        /// Why.
        reason: String,
    },
    /// Application data arrived in a context.
    ContextReceived {
        /// The context.
        context: ContextId,
        /// Sender device.
        peer: DeviceId,
        /// Payload.
        data: Bytes,
    },
    /// An anti-entropy session this device started finished.
    SyncDone {
        /// The other device.
        peer: DeviceId,
        /// The journal reconciled.
        namespace: Namespace,
        /// Facts we had and it lacked (pushed).
        pushed: usize,
        /// Facts it had and we lacked (asked for).
        fetched: usize,
        /// Reconciliation round trips.
        rounds: u32,
    },
    /// An anti-entropy session gave up.
    SyncFailed {
        /// The other device.
        peer: DeviceId,
        /// The journal.
        namespace: Namespace,
        /// Where.
        phase: SyncPhase,
    },
    /// A fact this device wrote changed how far it has spread (first `Local`, when it
    /// is durable here).
    Propagation {
        /// The fact.
        fact: FactId,
        /// Its new status.
        status: Propagation,
    },
    /// A change agreed by consensus applied to this device's view of its authority.
    Committed {
        /// The authority.
        authority: AuthorityId,
        /// The consensus instance.
        instance: crate::consensus::ConsensusId,
        /// The authority's tree epoch after it.
        epoch: u64,
    },
    /// An instance this device coordinated was given up.
    ConsensusFailed {
        /// The instance.
        instance: crate::consensus::ConsensusId,
        /// Why.
        reason: String,
    },
    /// A member device confirmed (durably, here too) that it holds a note of ours that
    /// asked for confirmation.
    Delivered {
        /// The note.
        fact: FactId,
        /// The device.
        peer: DeviceId,
    },
    /// The guard chain refused a send: nothing left the device, and nothing remote can
    /// tell it was attempted.
    SendDenied {
        /// The send's sequence number (never seen in an `Output::Egress`).
        seq: u64,
        /// Scope of the send.
        context: ContextId,
        /// Intended receiver.
        peer: DeviceId,
        /// Which stage refused.
        reason: Denial,
    },
    /// An equivocation proof against a member of this device's authority applied: the
    /// member voted for two instances at one ballot. It no longer counts in consensus
    /// here (remove it with `Command::RemoveDevice`).
    EquivocationProven {
        /// The authority.
        authority: AuthorityId,
        /// The equivocator.
        device: DeviceId,
    },
    /// A device added to our authority holds its share now (reported by the device that
    /// enrolled it).
    DeviceEnrolled {
        /// The authority.
        authority: AuthorityId,
        /// The added device.
        device: DeviceId,
    },
    /// The members switched to refreshed shares of the same key (this device too).
    SharesRefreshed {
        /// The authority.
        authority: AuthorityId,
    },
    /// A share refresh this device coordinated was given up.
    RefreshFailed {
        /// Why.
        reason: String,
    },
    /// This device was added to an authority and holds its share (durably): it is a
    /// member now.
    AuthorityJoined {
        /// The authority.
        authority: AuthorityId,
        /// Group verifying key.
        group_key: [u8; 32],
        /// Signatures needed.
        threshold: u16,
        /// Number of members.
        members: u16,
    },
    /// A ready context moved to a new epoch (new secret; channels of the old one
    /// closed).
    ContextEpochChanged {
        /// The context.
        context: ContextId,
        /// The new epoch.
        epoch: u64,
    },
}

/// What the peer asks the host to do.
// Persist outputs are rare and moved once; boxing them would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a datagram.
    Transmit {
        /// Destination address.
        to: String,
        /// Bytes to send.
        bytes: Vec<u8>,
    },
    /// Store a record durably, then feed back `Input::PersistDone(ticket)`.
    Persist {
        /// Ticket to return.
        ticket: Ticket,
        /// The record.
        record: Record,
    },
    /// Tell the application.
    Event(Event),
    /// The audit record of the `Transmit` that follows it: what left, to whom, in which
    /// scope, at what cost (never the content). Hosts keep these as the egress ledger.
    Egress(Egress),
}

/// Channel state as shown by `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelState {
    /// Handshake in progress.
    Handshaking,
    /// Keys agreed; waiting for the first frame or for pairing to become durable.
    Confirming,
    /// Ready.
    Up,
}

/// One channel, for status output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelInfo {
    /// The device, once known.
    pub peer: Option<DeviceId>,
    /// Its address.
    pub addr: String,
    /// Where the channel stands.
    pub state: ChannelState,
    /// Negotiated version (0 while handshaking).
    pub version: u16,
    /// Our handshake role.
    pub role: Role,
    /// Pairing, link, context join or context channel.
    pub purpose: Purpose,
    /// The context it serves (`ContextId::OWN` between one's own devices).
    pub context: ContextId,
    /// The context epoch its keys come from.
    pub epoch: u64,
}

/// What to do when a ticket comes back.
enum Pending {
    ShowInvite(Invitation),
    StartJoin(Invitation),
    /// Pairing record durable on channel `idx` (either side).
    Paired {
        idx: u32,
        peer: PairedPeer,
    },
    /// A key share is durable.
    ShareDurable {
        session: [u8; 32],
        share: Box<Share>,
    },
    /// A share is durably given up.
    Abandoned {
        session: [u8; 32],
        group_key: [u8; 32],
    },
    /// The nonce counter is durable: commit for this signing session.
    Commit {
        session: [u8; 32],
        counter: u64,
    },
    /// Nonce counter values up to this one are durably reserved.
    NoncesReserved(u64),
    /// An issued token is durable.
    TokenDurable(Vec<u8>),
    ShowContextInvite(Invitation),
    StartContextJoin(Invitation),
    /// A context record is durable; `step` says what follows.
    Context {
        idx: u32,
        step: CtxStep,
        record: Box<Record>,
    },
    /// Nothing follows.
    Nothing,
    /// A context shared by an own device is durable: acknowledge its creation fact.
    ContextShared {
        from: DeviceId,
        genesis: FactId,
        facts: Vec<Fact>,
        tokens: Vec<Vec<u8>>,
        addrs: Vec<(DeviceId, String)>,
    },
    /// A consensus vote is durable: send it.
    Voted {
        vote: crate::consensus::Vote,
        to: DeviceId,
        ask: Option<consensus_impl::SignAsk>,
    },
    /// A consensus promise is durable: send it to the coordinator (`None`: we are the
    /// coordinator; send the prepare requests).
    Promised {
        prestate: [u8; 32],
        ballot: u32,
        to: Option<DeviceId>,
    },
    /// A delivery confirmation is durable: report it.
    Delivered {
        fact: FactId,
        peer: DeviceId,
        at_ms: u64,
    },
    /// A sealed receipt batch is durable: send it.
    ReceiptsDurable(Box<crate::receipt::ReceiptBatch>),
    /// A flow reservation is durable: the sends held behind it may go.
    Reserved {
        context: ContextId,
        peer: DeviceId,
        epoch: u64,
        up_to: u64,
    },
    /// A refreshed share is durable.
    Refreshed {
        session: [u8; 32],
        share: Box<Share>,
    },
    /// An enrolled share is durable.
    Enrolled {
        authority: AuthorityId,
        session: [u8; 32],
        enroller: DeviceId,
        share: Box<Share>,
    },
    /// A fact is durable.
    FactDurable {
        fact: Box<Fact>,
        push_to: Option<BTreeSet<DeviceId>>,
        ack_to: Option<DeviceId>,
    },
}

#[derive(Debug)]
struct IssuedInvite {
    inv: Invitation,
    /// Device that redeemed it (durably, or being persisted).
    redeemed_by: Option<DeviceId>,
}

/// A padded frame waiting for its flow reservation to become durable.
#[derive(Debug)]
struct Held {
    idx: u32,
    plain: Vec<u8>,
    kind: MsgKind,
    keepalive: bool,
    portable: bool,
    seq: u64,
}

#[derive(Debug)]
enum Queued {
    App(Bytes),
    Ping,
    Proto(Vec<u8>),
    Accounting(Vec<u8>),
}

/// One device's protocol engine. See the crate documentation for the contract.
pub struct Peer {
    cfg: Config,
    keys: DeviceKeys,
    rng: PeerRng,
    params: NoiseParams,
    now: Now,
    out: VecDeque<Output>,
    metrics: Metrics,
    next_ticket: u64,
    pending: BTreeMap<Ticket, Pending>,
    invites: BTreeMap<[u8; 32], IssuedInvite>,
    /// Invitations this device redeemed or is redeeming (id → code contents).
    joins: BTreeMap<[u8; 32], Invitation>,
    /// Invitations whose pairing completed here (as joiner).
    joined: BTreeSet<[u8; 32]>,
    peers: BTreeMap<DeviceId, PairedPeer>,
    by_noise: BTreeMap<[u8; 32], DeviceId>,
    channels: BTreeMap<u32, Channel>,
    /// The channel carrying traffic for each (scope, device).
    active: BTreeMap<(ContextId, DeviceId), u32>,
    queued: BTreeMap<(ContextId, DeviceId), Vec<Queued>>,
    /// Handshake-init hash → (channel it created, when seen).
    seen_init: BTreeMap<[u8; 32], (u32, Instant)>,
    /// Version rejections by handshake-init hash, resent if the initiator asks again
    /// (so a lost rejection still ends in a clear answer, not a timeout).
    rejected: BTreeMap<[u8; 32], Vec<u8>>,
    plain: Vec<u8>,
    scratch: Vec<u8>,
    // ----- authorities (see peer_authority.rs) -----
    journal: Journal,
    views: Views,
    /// This device's shares, by group key.
    shares: BTreeMap<[u8; 32], Share>,
    /// Shares whose genesis is not in the journal yet, by group key.
    pending_genesis: BTreeMap<[u8; 32], crate::record::ShareOrigin>,
    /// When a member next asks for a genesis it is missing.
    genesis_poll_at: Instant,
    /// Failed genesis signing attempts this incarnation, by group key.
    genesis_attempts: BTreeMap<[u8; 32], u32>,
    /// Key generations being given up (their `ShareAbandoned` not yet durable).
    abandoning: BTreeSet<[u8; 32]>,
    auth_secrets: BTreeMap<AuthorityId, [u8; 32]>,
    /// FROST nonce counter: the last value used. Every value used is durable (persisted
    /// alone before use, or below `nonce_reserved`), so no nonce is derived twice.
    nonce_counter: u64,
    /// Counter values up to this one are durably reserved and may be used without a
    /// write of their own (consensus votes carry nonce commitments this way).
    nonce_reserved: u64,
    /// A reservation is being written.
    nonce_refilling: bool,
    /// The last reservation written (durable or not).
    nonce_refill_to: u64,
    dkg: BTreeMap<[u8; 32], Dkg>,
    sign_coord: BTreeMap<[u8; 32], SignCoord>,
    sign_part: BTreeMap<[u8; 32], SignPart>,
    auth_tick: Option<Instant>,
    /// Messages this device sent to itself.
    local: VecDeque<crate::authority::AuthMsg>,
    restoring: bool,
    /// Capability tokens held or issued.
    tokens: Vec<Vec<u8>>,
    // ----- guard chain -----
    /// What the guard chain reads (grants, flow, contexts, leakage).
    guard: guard::Snapshot,
    /// Sends waiting for a flow reservation to become durable, per (scope, device), in
    /// order: nothing for that pair overtakes them.
    held: BTreeMap<(ContextId, DeviceId), VecDeque<Held>>,
    next_seq: u64,
    // ----- contexts (see peer_context.rs) -----
    contexts: BTreeMap<ContextId, CtxState>,
    ctx_invites: BTreeMap<[u8; 32], CtxInvite>,
    ctx_joins: BTreeMap<[u8; 32], CtxJoin>,
    /// Last address each context peer was reached at.
    ctx_addrs: BTreeMap<DeviceId, String>,
    /// Anti-entropy: sessions, pushes, propagation of facts written here.
    sync: sync_impl::SyncState,
    /// Consensus: votes cast, proposals seen, attempts coordinated.
    consensus: consensus_impl::ConsensusState,
    /// Enrollment of added devices.
    enroll: enroll_impl::EnrollState,
    /// Share refresh.
    refresh: refresh_impl::RefreshState,
    epochs: epoch_impl::EpochState,
    /// Contexts being shared with own devices: (creation fact id, devices yet to ack).
    ctx_push: BTreeMap<ContextId, (FactId, BTreeSet<DeviceId>)>,
    // ----- receipts (see peer_receipts.rs) -----
    out_chains: BTreeMap<(ContextId, u64), receipts_impl::OutChain>,
    in_chains: BTreeMap<(ContextId, DeviceId, u64), crate::receipt::ChainVerifier>,
    acct_tick: Option<Instant>,
}

impl core::fmt::Debug for Peer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.keys.id)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// See `crate::fuzzing::inner_messages`.
pub(crate) fn fuzz_inner_messages(data: &[u8]) {
    let mut scratch = Vec::new();
    if let Ok(m) = wire::strict_decode::<context_impl::CtxMsg>(data, &mut scratch) {
        assert_eq!(wire::encode(&m), data, "context join message decode is not canonical");
    }
    if let Ok(m) = wire::strict_decode::<receipts_impl::Accounting>(data, &mut scratch) {
        assert_eq!(wire::encode(&m), data, "accounting message decode is not canonical");
        if let receipts_impl::Accounting::Batch(b) = m {
            let _ = b.chain();
        }
    }
}

/// See `crate::fuzzing::inner_message_samples`.
pub(crate) fn inner_message_samples() -> Vec<Vec<u8>> {
    use context_impl::CtxMsg;
    use receipts_impl::Accounting;
    let batch = crate::receipt::ReceiptBatch {
        context: ContextId([3; 32]),
        src: DeviceId([4; 32]),
        epoch: 0,
        first: 0,
        prev: crate::receipt::CHAIN_START,
        dsts: vec![DeviceId([5; 32]), DeviceId([6; 32])],
        entries: vec![(0, 1), (1, 4), (0, 16)],
        sig: crate::journal::Sig64([7; 64]),
    };
    vec![
        wire::encode(&Accounting::Batch(Box::new(batch))),
        wire::encode(&Accounting::Ack { epoch: 0, through: 2 }),
        wire::encode(&Accounting::Need { epoch: 1, from: 3 }),
        wire::encode(&CtxMsg::Join {
            genesis: vec![1; 40],
            token: vec![2; 20],
        }),
        wire::encode(&CtxMsg::Accept {
            fact: vec![3; 30],
            token: vec![4; 10],
        }),
        wire::encode(&CtxMsg::Done),
    ]
}

fn pairing_psk(secret: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(CTX_PAIRING_PSK, secret)
}

/// A key for the pair {a, b} from a secret they share: the same on both sides, different
/// for every pair, and useless without the secret.
fn pair_key(ctx: &str, secret: &[u8; 32], a: &DeviceId, b: &DeviceId) -> [u8; 32] {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut m = [0u8; 96];
    m[..32].copy_from_slice(secret);
    m[32..64].copy_from_slice(&lo.0);
    m[64..].copy_from_slice(&hi.0);
    blake3::derive_key(ctx, &m)
}

fn link_psk(secret: &[u8; 32], a: &DeviceId, b: &DeviceId) -> [u8; 32] {
    pair_key(CTX_LINK_PSK, secret, a, b)
}

impl Peer {
    /// A fresh device. `seed` feeds every random choice the peer makes.
    pub fn new(cfg: Config, secret: DeviceSecret, seed: [u8; 32], now: Now) -> Peer {
        let mut rng = PeerRng::from_seed(seed);
        let keys = DeviceKeys::derive(&secret, &mut rng);
        let mut p = Peer {
            cfg,
            keys,
            rng,
            params: NOISE_PATTERN.parse().expect("the Noise pattern name is valid"),
            now,
            out: VecDeque::new(),
            metrics: Metrics::default(),
            next_ticket: 1,
            pending: BTreeMap::new(),
            invites: BTreeMap::new(),
            joins: BTreeMap::new(),
            joined: BTreeSet::new(),
            peers: BTreeMap::new(),
            by_noise: BTreeMap::new(),
            channels: BTreeMap::new(),
            active: BTreeMap::new(),
            queued: BTreeMap::new(),
            seen_init: BTreeMap::new(),
            rejected: BTreeMap::new(),
            plain: Vec::new(),
            scratch: Vec::new(),
            journal: Journal::new(),
            views: Views::default(),
            shares: BTreeMap::new(),
            pending_genesis: BTreeMap::new(),
            genesis_poll_at: Instant(0),
            genesis_attempts: BTreeMap::new(),
            abandoning: BTreeSet::new(),
            auth_secrets: BTreeMap::new(),
            nonce_counter: 0,
            nonce_reserved: 0,
            nonce_refilling: false,
            nonce_refill_to: 0,
            dkg: BTreeMap::new(),
            sign_coord: BTreeMap::new(),
            sign_part: BTreeMap::new(),
            auth_tick: None,
            local: VecDeque::new(),
            restoring: false,
            tokens: Vec::new(),
            guard: guard::Snapshot::default(),
            held: BTreeMap::new(),
            next_seq: 0,
            contexts: BTreeMap::new(),
            ctx_invites: BTreeMap::new(),
            ctx_joins: BTreeMap::new(),
            ctx_addrs: BTreeMap::new(),
            ctx_push: BTreeMap::new(),
            sync: Default::default(),
            consensus: Default::default(),
            enroll: Default::default(),
            refresh: Default::default(),
            epochs: Default::default(),
            out_chains: BTreeMap::new(),
            in_chains: BTreeMap::new(),
            acct_tick: None,
        };
        p.refresh_guard();
        p
    }

    /// Rebuilds a peer from its durable records. Use a fresh `seed` per restart (an
    /// incarnation seed) so no random value of the previous run is drawn again. Pending
    /// joins resume at once: drain outputs after this call.
    pub fn restore(cfg: Config, durable: Durable, seed: [u8; 32], now: Now) -> Peer {
        let mut p = Peer::new(cfg, durable.secret, seed, now);
        p.restoring = true;
        for r in durable.records {
            p.apply_record(r);
        }
        // Every counter value up to the largest recorded may have been used.
        p.nonce_reserved = p.nonce_counter;
        p.restored_enrollment();
        if p.my_authority().is_some_and(|v| p.shares.contains_key(&v.group_key)) {
            p.top_up_nonces();
        }
        p.restoring = false;
        p.refresh_guard();
        p.epoch_upkeep();
        let resumable: Vec<Invitation> = p
            .joins
            .iter()
            .filter(|(id, inv)| !p.joined.contains(*id) && inv.check_expiry(now.unix_ms).is_ok())
            .map(|(_, inv)| inv.clone())
            .collect();
        for inv in resumable {
            p.start_pairing(inv);
        }
        // Context joins whose acceptance never became durable start over (the inviter
        // answers a repeated join with the context it already created).
        let joins: Vec<[u8; 32]> = p
            .ctx_joins
            .iter()
            .filter(|(_, j)| !j.done && (j.context.is_some() || j.inv.check_expiry(now.unix_ms).is_ok()))
            .map(|(id, _)| *id)
            .collect();
        for id in joins {
            p.start_context_join(id);
        }
        // Whether our own devices got our contexts was not recorded: offer them again.
        for c in p.contexts() {
            p.share_context(c);
        }
        // A key generation this device coordinated finished, but its genesis was never
        // recorded: sign it now (its content is deterministic, so a retry cannot fork).
        p.resume_geneses();
        // A device coming back catches up right away.
        p.sync_soon();
        p
    }

    fn apply_record(&mut self, r: Record) {
        match r {
            Record::InviteIssued(inv) => {
                self.invites.insert(inv.id(), IssuedInvite { inv, redeemed_by: None });
            }
            Record::JoinStarted(inv) => {
                self.joins.insert(inv.id(), inv);
            }
            Record::Paired(p) => self.add_peer(p),
            Record::Share {
                key_package,
                public_key_package,
                origin,
                ..
            } => self.restore_share(&key_package, &public_key_package, origin),
            Record::Fact(f) => self.apply_fact(f),
            Record::NonceCounter(n) => self.nonce_counter = self.nonce_counter.max(n),
            Record::Capability(t) => self.tokens.push(t),
            Record::ShareAbandoned { session, group_key } => self.drop_share(session, group_key),
            Record::ContextInviteIssued(inv) => self.add_ctx_invite(inv),
            Record::ContextJoinStarted(inv) => self.add_ctx_join(inv),
            Record::ContextJoinDone(invite) => {
                if let Some(j) = self.ctx_joins.get_mut(&invite) {
                    j.done = true;
                }
            }
            Record::Context {
                invite,
                peer,
                addr,
                context,
                facts,
                tokens,
                sent_token,
            } => self.apply_context_record(invite, (peer, addr), context, facts, tokens, sent_token),
            Record::Receipts(batch) => self.batch_durable(batch, false),
            Record::ContextShared { facts, tokens, addrs } => self.apply_context_share(facts, tokens, addrs),
            Record::Delivered { fact, peer, at_ms } => self.delivery_durable(fact, peer, at_ms),
            Record::Voted { vote, proposal } => self.restore_vote(vote, proposal),
            Record::Refreshed {
                key_package,
                public_key_package,
                ..
            } => self.restore_refreshed(&key_package, &public_key_package),
            Record::Promised { prestate, ballot } => self.consensus.ballots.promise(prestate, ballot),
            Record::Reserve {
                context,
                peer,
                epoch,
                up_to,
            } => {
                // What was spent of it before the crash is unknown: count it all.
                let f = self.guard.flow.entry((context, peer, epoch)).or_default();
                f.reserved = f.reserved.max(up_to);
                f.spent = f.spent.max(up_to);
            }
        }
    }

    fn add_ctx_invite(&mut self, inv: Invitation) {
        self.ctx_invites.insert(
            inv.id(),
            CtxInvite {
                inv,
                redeemed_by: None,
                created: None,
                persisting: false,
            },
        );
    }

    fn add_ctx_join(&mut self, inv: Invitation) {
        self.ctx_joins.insert(
            inv.id(),
            CtxJoin {
                inv,
                context: None,
                sent_token: None,
                persisting: false,
                done: false,
                retry_at: None,
                tries: 0,
            },
        );
    }

    fn add_peer(&mut self, p: PairedPeer) {
        if let Some(i) = self.invites.get_mut(&p.invite) {
            i.redeemed_by = Some(p.id);
        }
        if self.joins.contains_key(&p.invite) {
            self.joined.insert(p.invite);
        }
        self.by_noise.insert(p.cert.noise, p.id);
        self.peers.insert(p.id, p);
        if !self.restoring {
            self.refresh_guard();
        }
    }

    /// This device's id.
    pub fn id(&self) -> DeviceId {
        self.keys.id
    }

    /// This device's public keys.
    pub fn cert(&self) -> &DeviceCert {
        &self.keys.cert
    }

    /// The authority this device is a member of, as its journal says.
    pub fn authority(&self) -> Option<&crate::authority::AuthorityView> {
        self.my_authority()
    }

    /// The fact journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// What every capability token this device holds or issued grants, verified offline
    /// against its issuer's root (tokens of unknown or mismatched issuers are left out).
    pub fn capabilities(&self) -> Vec<crate::caps::CapSnapshot> {
        self.tokens
            .iter()
            .filter_map(|t| {
                self.views
                    .0
                    .values()
                    .find_map(|v| crate::caps::verify(t, &v.cap_root).ok().filter(|s| s.issuer == v.id))
            })
            .collect()
    }

    /// A ready relational context's reduced view.
    pub fn context(&self, id: &ContextId) -> Option<&crate::context::ContextView> {
        self.contexts.get(id).filter(|s| s.ready).map(|s| &s.view)
    }

    /// Relational contexts ready on this device, ascending.
    pub fn contexts(&self) -> Vec<ContextId> {
        self.contexts
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Paired devices and their last known addresses.
    pub fn paired(&self) -> impl Iterator<Item = (&DeviceId, &str)> {
        self.peers.iter().map(|(id, p)| (id, p.addr.as_str()))
    }

    /// Every channel, in a stable order.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.channels
            .values()
            .map(|c| ChannelInfo {
                peer: c.peer,
                addr: c.addr.clone(),
                state: match (&c.phase, c.pairing) {
                    (Phase::InitSent { .. }, _) => ChannelState::Handshaking,
                    (Phase::RespSent { .. }, _) => ChannelState::Confirming,
                    (Phase::Established, Pairing::None) => ChannelState::Up,
                    (Phase::Established, _) => ChannelState::Confirming,
                },
                version: c.version,
                role: c.role,
                purpose: c.purpose,
                context: c.scope,
                epoch: c.epoch,
            })
            .collect()
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the peer next wants `Input::Timeout`, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut d = self
            .seen_init
            .values()
            .map(|(_, t)| t.saturating_add(SEEN_INIT_TTL))
            .min();
        for t in [
            self.auth_deadline(),
            self.ctx_deadline(),
            self.acct_deadline(),
            self.sync_deadline(),
            self.consensus_deadline(),
        ]
        .into_iter()
        .flatten()
        {
            d = Some(d.map_or(t, |x| x.min(t)));
        }
        for c in self.channels.values() {
            if let Some(t) = c.deadline(&self.cfg) {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        }
        d
    }

    /// Feeds one input. Only `Input::Command` can fail; remote garbage is dropped and counted.
    pub fn handle_input(&mut self, now: Now, input: Input) -> Result<(), CommandError> {
        // A host that hands us time going backwards gets it clamped: timers only move forward.
        self.now = Now {
            mono: now.mono.max(self.now.mono),
            unix_ms: now.unix_ms,
        };
        let r = self.dispatch(input);
        self.run_local();
        r
    }

    /// See `crate::fuzzing::deliver_proto`.
    pub(crate) fn fuzz_equivocate(&mut self, on: bool) {
        self.consensus.equivocate = on;
    }

    pub(crate) fn fuzz_deliver_proto(&mut self, now: Now, from: DeviceId, scope: ContextId, data: &[u8]) {
        self.now = Now {
            mono: now.mono.max(self.now.mono),
            unix_ms: now.unix_ms,
        };
        if scope == ContextId::OWN {
            self.on_proto(from, data);
        } else {
            self.on_context_proto(scope, from, data);
        }
        self.run_local();
    }

    fn dispatch(&mut self, input: Input) -> Result<(), CommandError> {
        match input {
            Input::Datagram { from, bytes } => {
                self.handle_datagram(from, &bytes);
                Ok(())
            }
            Input::Timeout => {
                self.handle_timeout();
                Ok(())
            }
            Input::PersistDone(t) => {
                self.handle_persist_done(t);
                Ok(())
            }
            Input::Command(c) => self.handle_command(c),
        }
    }

    // ----- outputs ------------------------------------------------------------------

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn persist(&mut self, record: Record, then: Pending) {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.metrics.persists += 1;
        self.pending.insert(ticket, then);
        self.out.push_back(Output::Persist { ticket, record });
    }

    // ----- commands -----------------------------------------------------------------

    /// A fresh invitation code (pairing or context) valid for `valid_for`.
    fn new_invitation(&mut self, valid_for: Duration, addr_hint: String) -> Result<Invitation, CommandError> {
        if addr_hint.len() > MAX_ADDR_HINT {
            return Err(InviteError::AddrTooLong.into());
        }
        if valid_for.is_zero() {
            return Err(CommandError::ZeroLifetime);
        }
        let ms = u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX);
        Ok(Invitation {
            version: CODE_VERSION,
            inviter_noise: self.keys.cert.noise,
            secret: self.rng.bytes32(),
            expires_unix_ms: self.now.unix_ms.saturating_add(ms),
            addr_hint,
        })
    }

    fn handle_command(&mut self, c: Command) -> Result<(), CommandError> {
        match c {
            Command::CreateInvite { valid_for, addr_hint } => {
                let inv = self.new_invitation(valid_for, addr_hint)?;
                self.persist(Record::InviteIssued(inv.clone()), Pending::ShowInvite(inv));
                Ok(())
            }
            Command::Join { code } => {
                let inv = Invitation::from_code(&code)?;
                inv.check_expiry(self.now.unix_ms)?;
                if inv.inviter_noise == self.keys.cert.noise {
                    return Err(InviteError::OwnCode.into());
                }
                let id = inv.id();
                if self.joined.contains(&id) {
                    return Err(InviteError::AlreadyUsed.into());
                }
                if self.joins.contains_key(&id) {
                    // Spent here but not yet paired: try again.
                    self.start_pairing(inv);
                } else {
                    self.persist(Record::JoinStarted(inv.clone()), Pending::StartJoin(inv));
                }
                Ok(())
            }
            Command::Send { peer, data } => {
                if data.len() > MAX_APP_PAYLOAD {
                    return Err(CommandError::PayloadTooLarge {
                        len: data.len(),
                        max: MAX_APP_PAYLOAD,
                    });
                }
                self.send_or_queue(peer, Queued::App(data))
            }
            Command::Ping { peer } => self.send_or_queue(peer, Queued::Ping),
            Command::Connect { peer } => {
                if !self.peers.contains_key(&peer) {
                    return Err(CommandError::UnknownPeer(peer));
                }
                if !self.active.contains_key(&(ContextId::OWN, peer)) && !self.initiating_to(ContextId::OWN, &peer) {
                    self.start_link(peer)?;
                }
                Ok(())
            }
            Command::CreateAuthority { devices, threshold } => self.create_authority(devices, threshold),
            Command::Sign { statement } => self.sign_statement(statement),
            Command::CreateContextInvite { valid_for, addr_hint } => self.create_context_invite(valid_for, addr_hint),
            Command::JoinContext { code } => self.join_context(&code),
            Command::ContextSend { context, peer, data } => {
                if data.len() > MAX_APP_PAYLOAD {
                    return Err(CommandError::PayloadTooLarge {
                        len: data.len(),
                        max: MAX_APP_PAYLOAD,
                    });
                }
                self.context_send(context, peer, data)
            }
            Command::Sync { peer } => self.start_sync(peer),
            Command::Publish { namespace, data, ack } => self.publish(namespace, data, ack),
            Command::ChangeThreshold { threshold } => {
                if let Some(v) = self.my_authority() {
                    if threshold < v.key_threshold {
                        return Err(CommandError::BelowKeyThreshold {
                            asked: threshold,
                            key: v.key_threshold,
                        });
                    }
                }
                self.propose_change(crate::journal::TreeOpKind::ChangeThreshold(threshold))
            }
            Command::AddDevice { device } => self.add_device(device),
            Command::RefreshShares => self.start_refresh(),
            Command::RemoveDevice { device } => self.propose_change(crate::journal::TreeOpKind::RemoveDevice(device)),
            Command::RekeyContext { context } => self.rekey_context(context),
            Command::IssueCapability { to, rights, budget } => {
                let v = self.my_authority().ok_or(CommandError::NotInAuthority)?;
                let id = v.id;
                let secret = self.auth_secrets.get(&id).ok_or(CommandError::NotInAuthority)?;
                let kp = crate::caps::root_keypair(secret);
                let token = crate::caps::issue(&kp, &id, &to, &rights, budget, &mut self.rng)?;
                self.persist(Record::Capability(token.clone()), Pending::TokenDurable(token));
                Ok(())
            }
            Command::Close { peer } => {
                if !self.peers.contains_key(&peer) {
                    return Err(CommandError::UnknownPeer(peer));
                }
                if let Some(idx) = self.active.get(&(ContextId::OWN, peer)).copied() {
                    self.send_frame(idx, &Frame::Close);
                    self.remove_channel(idx, Some(DownReason::LocalClose));
                }
                Ok(())
            }
        }
    }

    fn initiating_to(&self, scope: ContextId, peer: &DeviceId) -> bool {
        self.channels.values().any(|c| {
            c.scope == scope
                && c.purpose != Purpose::ContextJoin
                && c.peer.as_ref() == Some(peer)
                && matches!(c.phase, Phase::InitSent { .. })
        })
    }

    /// Link and context handshakes this device is retrying towards `peer` (any peer:
    /// `None`) go again now if their next send is further off than a fresh handshake's
    /// first retry: a user asking for something now should not wait out a backoff that
    /// grew while the peer was away (one just started is left alone). Each hurried send
    /// spends a try as a timed one would. A regular handshake with no try left that
    /// traffic is queued behind is replaced by a fresh one, if the guard still allows
    /// the channel, and the queue waits for that one instead of being dropped; with
    /// nothing queued, or for a catch-up channel, it is left to fail on its timer. So
    /// each request gets at most one send per handshake out of this.
    pub(super) fn hurry_handshakes(&mut self, peer: Option<DeviceId>) {
        let now = self.now.mono;
        let tries = self.cfg.handshake_tries;
        let grown = now.saturating_add(self.cfg.handshake_retry);
        let (mut hurried, mut spent) = (Vec::new(), Vec::new());
        for (idx, c) in self.channels.iter() {
            let towards = c.peer.is_some_and(|p| peer.is_none_or(|q| q == p));
            let kind = matches!(c.purpose, Purpose::Link | Purpose::Context);
            let backed_off = c.retx_at.is_some_and(|t| t > grown);
            if !(towards && kind && backed_off && matches!(c.phase, Phase::InitSent { .. })) {
                continue;
            }
            let waiting = c
                .peer
                .is_some_and(|p| self.queued.get(&(c.scope, p)).is_some_and(|q| !q.is_empty()));
            if c.tries < tries {
                hurried.push(*idx);
            } else if waiting && c.ends_at.is_none() {
                spent.push(*idx);
            }
        }
        for idx in hurried {
            if let Some(c) = self.channels.get_mut(&idx) {
                c.retx_at = Some(now);
            }
            self.channel_timeout(idx, now);
        }
        for idx in spent {
            let Some((scope, Some(peer))) = self.channels.get(&idx).map(|c| (c.scope, c.peer)) else {
                continue;
            };
            let epoch = self.guard.contexts.get(&scope).map_or(0, |c| c.epoch);
            let allowed = scope == ContextId::OWN || self.upkeep_allowed(scope, peer, epoch).is_ok();
            if !allowed || !self.may_keep_up(idx) {
                self.fail_initiator(idx, FailReason::Timeout);
                continue;
            }
            self.channels.remove(&idx);
            let fresh = if scope == ContextId::OWN {
                self.start_link(peer)
            } else {
                self.start_context_link(scope, peer)
            };
            if fresh.is_err() {
                // What the spent handshake's own timer would have reported.
                let discarded = self.queued.remove(&(scope, peer)).map_or(0, |q| q.len());
                self.event(Event::ChannelFailed {
                    peer,
                    reason: FailReason::Timeout,
                    discarded,
                });
            }
        }
    }

    /// Two devices opening to each other at once: the one that keeps its own attempt drops
    /// the other's first message. That message shows the peer can be reached now, so our
    /// own first message goes again now, not when a backoff that grew while the peer was
    /// away runs out (which left both sides waiting up to half a minute). At most once per
    /// `handshake_retry`, and without spending a try: a replayed message gets no more than
    /// that out of us.
    fn resend_crossed_init(&mut self, scope: ContextId, peer: DeviceId) {
        let now = self.now.mono;
        let every = self.cfg.handshake_retry;
        let mine = self.channels.values_mut().find(|c| {
            c.scope == scope
                && c.purpose != Purpose::ContextJoin
                && c.peer == Some(peer)
                && matches!(c.phase, Phase::InitSent { .. })
        });
        let Some(c) = mine else { return };
        if c.last_sent.saturating_add(every) > now {
            return;
        }
        c.last_sent = now;
        let Phase::InitSent { datagram, .. } = &c.phase else {
            return;
        };
        let (to, d) = (c.addr.clone(), datagram.clone());
        self.metrics.handshake_retransmits += 1;
        self.transmit_handshake(&to, d, scope, Some(peer));
    }

    fn send_or_queue(&mut self, peer: DeviceId, q: Queued) -> Result<(), CommandError> {
        if !self.peers.contains_key(&peer) {
            return Err(CommandError::UnknownPeer(peer));
        }
        self.send_or_queue_in(ContextId::OWN, peer, q)
    }

    /// Sends on the channel of (scope, peer), or queues and sets the channel up. A
    /// channel is only set up when upkeep towards the peer would pass the guard chain:
    /// a refused scope sees no handshake either.
    fn send_or_queue_in(&mut self, scope: ContextId, peer: DeviceId, q: Queued) -> Result<(), CommandError> {
        let key = (scope, peer);
        if let Some(idx) = self.active.get(&key).copied() {
            // A channel of an earlier epoch (the peer is catching up) carries only
            // anti-entropy; the rest waits for one of the current epoch.
            let behind = scope != ContextId::OWN
                && !matches!(q, Queued::Proto(_))
                && self
                    .channels
                    .get(&idx)
                    .is_some_and(|c| !self.context_current(scope, c.epoch));
            if !behind {
                self.send_queued(idx, q);
                return Ok(());
            }
            let queue = self.queued.entry(key).or_default();
            if queue.len() >= self.cfg.max_queued {
                return Err(CommandError::QueueFull(peer));
            }
            queue.push(q);
            return Ok(());
        }
        let epoch = self.guard.contexts.get(&scope).map_or(0, |c| c.epoch);
        if let Err(d) = self.upkeep_allowed(scope, peer, epoch) {
            self.deny_upkeep(scope, peer, d);
            return Ok(());
        }
        let queue = self.queued.entry(key).or_default();
        if queue.len() >= self.cfg.max_queued {
            // Full: make sure a channel is on its way to drain it.
            self.link_for_queued(scope, peer);
            return Err(CommandError::QueueFull(peer));
        }
        queue.push(q);
        if !self.initiating_to(scope, &peer) {
            let r = if scope == ContextId::OWN {
                self.start_link(peer)
            } else {
                self.start_context_link(scope, peer)
            };
            if let Err(e) = r {
                self.queued.remove(&key);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends waiting for `peer` in context `scope` (say, for a member to catch up) get a
    /// channel of the current epoch when none is up or on its way.
    fn link_for_queued(&mut self, scope: ContextId, peer: DeviceId) {
        let waiting = self.queued.get(&(scope, peer)).is_some_and(|q| !q.is_empty());
        let current = self.guard.contexts.get(&scope).map_or(0, |c| c.epoch);
        if scope != ContextId::OWN
            && waiting
            && !self.active.contains_key(&(scope, peer))
            && !self.initiating_to(scope, &peer)
            && self.context_current(scope, current)
        {
            let _ = self.start_context_link(scope, peer);
        }
    }

    fn send_queued(&mut self, idx: u32, q: Queued) {
        let now = self.now.mono;
        match q {
            Queued::App(data) => self.send_frame(idx, &Frame::App { data: &data }),
            Queued::Proto(data) => self.send_frame(idx, &Frame::Proto { data: &data }),
            Queued::Accounting(data) => self.send_frame(idx, &Frame::Accounting { data: &data }),
            Queued::Ping => {
                let id = self.rng.next_u64();
                if let Some(c) = self.channels.get_mut(&idx) {
                    c.pings.insert(id, now);
                    // Bounded: an unanswered ping is forgotten after 64 newer ones.
                    while c.pings.len() > 64 {
                        let first = *c.pings.keys().next().expect("non-empty");
                        c.pings.remove(&first);
                    }
                }
                self.send_frame(idx, &Frame::Ping { id });
            }
        }
    }

    fn fresh_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if i != 0 && !self.channels.contains_key(&i) {
                return i;
            }
        }
    }

    // ----- initiating ---------------------------------------------------------------

    fn start_pairing(&mut self, inv: Invitation) {
        // One pairing attempt per invitation at a time.
        let id = inv.id();
        if self
            .channels
            .values()
            .any(|c| c.invite == Some(id) && c.role == Role::Initiator)
        {
            return;
        }
        let psk = pairing_psk(&inv.secret);
        let addr = inv.addr_hint.clone();
        if let Err(e) = self.start_handshake(Purpose::Pairing, inv.inviter_noise, psk, addr, None, Some(id), None) {
            // Only a full channel table gets here; report it as a timeout-like failure.
            let _ = e;
            self.event(Event::PairingFailed {
                invite: id,
                reason: FailReason::Timeout,
            });
        }
    }

    fn start_link(&mut self, peer: DeviceId) -> Result<(), CommandError> {
        let p = self.peers.get(&peer).ok_or(CommandError::UnknownPeer(peer))?;
        let (noise, psk, addr) = (p.cert.noise, p.link_psk, p.addr.clone());
        self.start_handshake(Purpose::Link, noise, psk, addr, Some(peer), None, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_handshake(
        &mut self,
        purpose: Purpose,
        remote: [u8; 32],
        psk: [u8; 32],
        addr: String,
        peer: Option<DeviceId>,
        invite: Option<[u8; 32]>,
        context: Option<(ContextId, u64)>,
    ) -> Result<(), CommandError> {
        if self.channels.len() >= self.cfg.max_channels {
            return Err(CommandError::TooManyChannels);
        }
        let idx = self.fresh_index();
        let rng = self.rng.fork("noise initiator");
        let mut hs = channel::build_handshake(
            &self.params,
            rng,
            self.keys.noise_private(),
            Some(&remote),
            Some(&psk),
            purpose,
        )
        .expect("handshake parameters are valid");
        let payload = wire::encode(&InitPayload {
            version: self.cfg.max_version,
            min_version: self.cfg.min_version,
            caps: 0,
            cert: self.keys.cert.clone(),
            invite,
            context,
        });
        let mut msg = vec![0u8; wire::MAX_NOISE_MSG];
        let n = hs
            .write_message(&payload, &mut msg)
            .expect("first handshake message fits");
        let datagram = wire::encode_packet(&Packet::HandshakeInit {
            sender: idx,
            purpose,
            noise: &msg[..n],
        });
        let now = self.now.mono;
        let mut c = Channel::new(
            idx,
            Role::Initiator,
            purpose,
            addr.clone(),
            now,
            Phase::InitSent {
                hs: Box::new(hs),
                datagram: datagram.clone(),
            },
        );
        c.peer = peer;
        c.invite = invite;
        c.remote_static = remote;
        if let Some((ctx, epoch)) = context {
            c.scope = ctx;
            c.epoch = epoch;
        }
        c.retx_at = Some(now.saturating_add(self.cfg.handshake_retry));
        c.tries = 1;
        let scope = c.scope;
        self.channels.insert(idx, c);
        self.transmit_handshake(&addr, datagram, scope, peer);
        Ok(())
    }

    // ----- datagrams ----------------------------------------------------------------

    /// Strictly decodes a message carried in a frame; a failure is counted and gives `None`.
    pub(super) fn decode_msg<'a, T: serde::Deserialize<'a> + serde::Serialize>(&mut self, data: &'a [u8]) -> Option<T> {
        let mut scratch = core::mem::take(&mut self.scratch);
        let msg = wire::strict_decode(data, &mut scratch);
        self.scratch = scratch;
        msg.map_err(|e| self.count_decode(e)).ok()
    }

    pub(super) fn count_decode(&mut self, e: DecodeError) {
        self.metrics.drop(match e {
            DecodeError::Truncated => DropReason::Truncated,
            DecodeError::Malformed => DropReason::Malformed,
            DecodeError::Oversized => DropReason::Oversized,
            DecodeError::WrongVersion => DropReason::WrongVersion,
        });
    }

    fn handle_datagram(&mut self, from: String, bytes: &[u8]) {
        self.metrics.datagrams_in += 1;
        let mut scratch = core::mem::take(&mut self.scratch);
        let res = wire::decode_packet(bytes, &mut scratch);
        self.scratch = scratch;
        match res {
            Err(e) => self.count_decode(e),
            Ok(Packet::HandshakeInit { sender, purpose, noise }) => self.on_init(from, sender, purpose, noise),
            Ok(Packet::HandshakeResp {
                sender,
                receiver,
                noise,
            }) => self.on_resp(sender, receiver, noise),
            Ok(Packet::Data {
                receiver,
                nonce,
                ciphertext,
            }) => self.on_data(from, receiver, nonce, ciphertext),
        }
    }

    fn on_init(&mut self, from: String, sender: u32, purpose: Purpose, noise: &[u8]) {
        let now = self.now.mono;
        let h: [u8; 32] = blake3::hash(noise).into();
        if let Some(d) = self.rejected.get(&h).cloned() {
            self.metrics.handshake_retransmits += 1;
            self.transmit_handshake(&from, d, ContextId::OWN, None);
            return;
        }
        if let Some((idx, _)) = self.seen_init.get(&h).copied() {
            // The initiator resends its first message when our answer was lost: answer
            // again from the same state. Anything else with a known hash is a replay.
            if let Some(Channel {
                phase: Phase::RespSent { datagram },
                addr,
                scope,
                peer,
                ..
            }) = self.channels.get(&idx)
            {
                let (to, d, scope, peer) = (addr.clone(), datagram.clone(), *scope, *peer);
                self.metrics.handshake_retransmits += 1;
                self.transmit_handshake(&to, d, scope, peer);
            } else {
                self.metrics.drop(DropReason::Replayed);
            }
            return;
        }
        let half_open = self
            .channels
            .values()
            .filter(|c| matches!(c.phase, Phase::RespSent { .. }))
            .count();
        if half_open >= self.cfg.max_half_open || self.channels.len() >= self.cfg.max_channels {
            self.metrics.drop(DropReason::Overloaded);
            return;
        }
        let rng = self.rng.fork("noise responder");
        let Ok(mut hs) = channel::build_handshake(&self.params, rng, self.keys.noise_private(), None, None, purpose)
        else {
            return;
        };
        let mut buf = vec![0u8; noise.len()];
        let Ok(n) = hs.read_message(noise, &mut buf) else {
            self.metrics.drop(DropReason::Unauthenticated);
            return;
        };
        let Some(payload) = self.decode_msg::<InitPayload>(&buf[..n]) else {
            return;
        };
        let Some(remote_static) = hs.get_remote_static().and_then(|s| <[u8; 32]>::try_from(s).ok()) else {
            self.metrics.drop(DropReason::Unauthenticated);
            return;
        };
        if payload.cert.noise != remote_static {
            self.metrics.drop(DropReason::BadCert);
            return;
        }
        if (purpose == Purpose::Context) != payload.context.is_some() {
            self.metrics.drop(DropReason::Malformed);
            return;
        }
        // Who is this, and which PSK proves it?
        let (peer_id, psk, scope, epoch) = match (purpose, payload.invite) {
            (Purpose::Pairing, Some(inv_id)) => {
                let Some(issued) = self.invites.get(&inv_id) else {
                    self.metrics.drop(DropReason::UnknownInvite);
                    return;
                };
                if issued.inv.check_expiry(self.now.unix_ms).is_err() {
                    self.metrics.drop(DropReason::ExpiredInvite);
                    return;
                }
                let Some(id) = payload.cert.verify() else {
                    self.metrics.drop(DropReason::BadCert);
                    return;
                };
                if issued.redeemed_by.is_some_and(|d| d != id) {
                    self.metrics.drop(DropReason::ReusedInvite);
                    return;
                }
                (id, pairing_psk(&issued.inv.secret), ContextId::OWN, 0)
            }
            (Purpose::ContextJoin, Some(inv_id)) => {
                let Some(issued) = self.ctx_invites.get(&inv_id) else {
                    self.metrics.drop(DropReason::UnknownInvite);
                    return;
                };
                let Some(id) = payload.cert.verify() else {
                    self.metrics.drop(DropReason::BadCert);
                    return;
                };
                match issued.redeemed_by {
                    Some(d) if d != id => {
                        self.metrics.drop(DropReason::ReusedInvite);
                        return;
                    }
                    // Its redeemer may come back after expiry (it restarted mid-join).
                    Some(_) => {}
                    None if issued.inv.check_expiry(self.now.unix_ms).is_err() => {
                        self.metrics.drop(DropReason::ExpiredInvite);
                        return;
                    }
                    None => {}
                }
                (id, context_impl::join_psk(&issued.inv.secret), ContextId::OWN, 0)
            }
            (Purpose::Context, None) => {
                let (ctx, epoch) = payload.context.expect("checked above");
                let Some((id, psk)) = self.context_responder(ctx, epoch, &remote_static, &payload.cert) else {
                    return;
                };
                // Two devices opening to each other at once: the lower id's wins. Not when
                // the other is behind: ours cannot succeed until it catches up.
                if self.keys.id < id && self.initiating_to(ctx, &id) && self.context_current(ctx, epoch) {
                    self.metrics.drop(DropReason::UnexpectedFrame);
                    self.resend_crossed_init(ctx, id);
                    return;
                }
                (id, psk, ctx, epoch)
            }
            (Purpose::Link, None) => {
                let Some(id) = self.by_noise.get(&remote_static).copied() else {
                    self.metrics.drop(DropReason::UnknownPeer);
                    return;
                };
                let p = &self.peers[&id];
                if !p.cert.same_keys(&payload.cert) {
                    self.metrics.drop(DropReason::BadCert);
                    return;
                }
                // Simultaneous open: the device with the smaller id keeps its own attempt.
                if self.keys.id < id && self.initiating_to(ContextId::OWN, &id) {
                    self.metrics.drop(DropReason::UnexpectedFrame);
                    self.resend_crossed_init(ContextId::OWN, id);
                    return;
                }
                (id, p.link_psk, ContextId::OWN, 0)
            }
            _ => {
                self.metrics.drop(DropReason::Malformed);
                return;
            }
        };
        if hs.set_psk(PSK_LOCATION as usize, &psk).is_err() {
            return;
        }
        let version = self.cfg.max_version.min(payload.version);
        let ok = version >= self.cfg.min_version.max(payload.min_version);
        let resp = if ok {
            RespPayload::Accept {
                version,
                caps: 0,
                cert: self.keys.cert.clone(),
            }
        } else {
            RespPayload::Reject {
                min_version: self.cfg.min_version,
                version: self.cfg.max_version,
            }
        };
        let mut msg = vec![0u8; wire::MAX_NOISE_MSG];
        let Ok(n) = hs.write_message(&wire::encode(&resp), &mut msg) else {
            return;
        };
        let idx = self.fresh_index();
        let datagram = wire::encode_packet(&Packet::HandshakeResp {
            sender: idx,
            receiver: sender,
            noise: &msg[..n],
        });
        self.remember_init(h, idx, now);
        if !ok {
            // A clear answer and no channel: a rejected version gets no state but the answer.
            self.rejected.insert(h, datagram.clone());
            self.transmit_handshake(&from, datagram, scope, Some(peer_id));
            return;
        }
        let Ok(transport) = hs.into_stateless_transport_mode() else {
            return;
        };
        // Simultaneous open, larger id: abandon our own attempt in favour of theirs.
        if matches!(purpose, Purpose::Link | Purpose::Context) {
            let ours: Vec<u32> = self
                .channels
                .values()
                .filter(|c| {
                    c.scope == scope
                        && c.purpose == purpose
                        && c.peer == Some(peer_id)
                        && matches!(c.phase, Phase::InitSent { .. })
                })
                .map(|c| c.local_idx)
                .collect();
            for i in ours {
                self.channels.remove(&i);
            }
        }
        let mut c = Channel::new(
            idx,
            Role::Responder,
            purpose,
            from.clone(),
            now,
            Phase::RespSent {
                datagram: datagram.clone(),
            },
        );
        c.remote_idx = sender;
        c.peer = Some(peer_id);
        c.remote_cert = Some(payload.cert);
        c.remote_static = remote_static;
        c.invite = payload.invite;
        c.version = version;
        c.transport = Some(transport);
        c.scope = scope;
        c.epoch = epoch;
        if scope != ContextId::OWN && !self.context_current(scope, epoch) {
            c.ends_at = Some(now.saturating_add(CATCH_UP_FOR));
        }
        self.channels.insert(idx, c);
        self.grant_upkeep(idx);
        self.metrics.handshakes += 1;
        self.transmit_handshake(&from, datagram, scope, Some(peer_id));
    }

    fn remember_init(&mut self, h: [u8; 32], idx: u32, now: Instant) {
        if self.seen_init.len() >= MAX_SEEN_INIT {
            // Forget the oldest entry; keys are hashes so pick by time deterministically.
            if let Some(k) = self
                .seen_init
                .iter()
                .min_by_key(|(k, (_, t))| (*t, **k))
                .map(|(k, _)| *k)
            {
                self.seen_init.remove(&k);
                self.rejected.remove(&k);
            }
        }
        self.seen_init.insert(h, (idx, now));
    }

    fn on_resp(&mut self, sender: u32, receiver: u32, noise: &[u8]) {
        let Some(c) = self.channels.get_mut(&receiver) else {
            self.metrics.drop(DropReason::UnknownSession);
            return;
        };
        let Phase::InitSent { hs, .. } = &mut c.phase else {
            // Our answer was already processed: a duplicate or a replay.
            self.metrics.drop(DropReason::Replayed);
            return;
        };
        let mut buf = vec![0u8; noise.len()];
        let n = match hs.read_message(noise, &mut buf) {
            Ok(n) => n,
            Err(_) => {
                // A failed read leaves the Noise state unusable; the next retransmission
                // starts over with a fresh first message.
                self.metrics.drop(DropReason::Unauthenticated);
                self.restart_initiator(receiver);
                return;
            }
        };
        let mut scratch = core::mem::take(&mut self.scratch);
        let resp: Result<RespPayload, _> = wire::strict_decode(&buf[..n], &mut scratch);
        self.scratch = scratch;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.count_decode(e);
                self.restart_initiator(receiver);
                return;
            }
        };
        let (ours, purpose, invite, peer) = {
            let c = &self.channels[&receiver];
            (
                (self.cfg.min_version, self.cfg.max_version),
                c.purpose,
                c.invite,
                c.peer,
            )
        };
        let (version, cert) = match resp {
            RespPayload::Reject { min_version, version } => {
                self.fail_initiator(
                    receiver,
                    FailReason::VersionMismatch {
                        ours,
                        theirs: (min_version, version),
                    },
                );
                return;
            }
            RespPayload::Accept { version, cert, .. } => (version, cert),
        };
        if version < ours.0 || version > ours.1 {
            self.fail_initiator(
                receiver,
                FailReason::VersionMismatch {
                    ours,
                    theirs: (version, version),
                },
            );
            return;
        }
        let c = self.channels.get_mut(&receiver).expect("checked above");
        let id = match purpose {
            Purpose::Pairing => match cert.verify() {
                Some(id) if cert.noise == c.remote_static => id,
                _ => {
                    self.metrics.drop(DropReason::BadCert);
                    self.fail_initiator(receiver, FailReason::BadCert);
                    return;
                }
            },
            Purpose::ContextJoin => match cert.verify() {
                Some(id) if cert.noise == c.remote_static => id,
                _ => {
                    self.metrics.drop(DropReason::BadCert);
                    self.fail_initiator(receiver, FailReason::BadCert);
                    return;
                }
            },
            Purpose::Link => {
                let id = peer.expect("link channels know their peer");
                if !self.peers.get(&id).is_some_and(|p| p.cert.same_keys(&cert)) {
                    self.metrics.drop(DropReason::BadCert);
                    self.fail_initiator(receiver, FailReason::BadCert);
                    return;
                }
                id
            }
            Purpose::Context => {
                let id = peer.expect("context channels know their peer");
                let known = self
                    .contexts
                    .get(&c.scope)
                    .and_then(|s| s.view.members.get(&id))
                    .is_some_and(|m| m.cert.same_keys(&cert));
                if !known {
                    self.metrics.drop(DropReason::BadCert);
                    self.fail_initiator(receiver, FailReason::BadCert);
                    return;
                }
                id
            }
        };
        let Phase::InitSent { hs, .. } = core::mem::replace(&mut c.phase, Phase::Established) else {
            unreachable!("phase checked above")
        };
        let Ok(transport) = hs.into_stateless_transport_mode() else {
            return;
        };
        let now = self.now.mono;
        c.transport = Some(transport);
        c.remote_idx = sender;
        c.peer = Some(id);
        c.remote_cert = Some(cert);
        c.version = version;
        c.last_recv = now;
        c.retx_at = None;
        c.tries = 0;
        self.metrics.handshakes += 1;
        self.grant_upkeep(receiver);
        self.send_frame(receiver, &Frame::Confirm);
        match (purpose, invite) {
            (Purpose::Pairing, Some(_)) => {
                let c = self.channels.get_mut(&receiver).expect("present");
                c.pairing = Pairing::AwaitAck;
                c.tries = 1;
                c.retx_at = Some(now.saturating_add(self.cfg.handshake_retry));
            }
            (Purpose::ContextJoin, _) => {
                let c = self.channels.get_mut(&receiver).expect("present");
                c.retx_at = None;
                c.tries = 0;
                self.context_join_up(receiver);
            }
            _ => self.activate(receiver),
        }
    }

    /// Whether channel `idx` may still send upkeep: always between one's own devices
    /// and while pairing or joining; in a context, only while it is ready at the
    /// channel's epoch and the guard allows upkeep to the peer, or, while it is being
    /// opened in an earlier epoch to catch up, while that is allowed.
    fn may_keep_up(&self, idx: u32) -> bool {
        let Some(c) = self.channels.get(&idx) else { return false };
        if c.purpose != Purpose::Context {
            return true;
        }
        let Some(peer) = c.peer else { return false };
        let catching_up = matches!(c.phase, Phase::InitSent { .. })
            && self.context_behind(c.scope, c.epoch, &peer)
            && self.catch_up_allowed(c.scope, peer, c.epoch).is_ok();
        catching_up || (self.context_current(c.scope, c.epoch) && self.upkeep_allowed(c.scope, peer, c.epoch).is_ok())
    }

    fn restart_initiator(&mut self, idx: u32) {
        if !self.may_keep_up(idx) {
            return self.fail_initiator(idx, FailReason::Timeout);
        }
        let Some(c) = self.channels.remove(&idx) else { return };
        let tries = c.tries;
        let psk = match (c.purpose, c.invite, c.peer) {
            (Purpose::Pairing, Some(inv), _) => self.joins.get(&inv).map(|i| pairing_psk(&i.secret)),
            (Purpose::ContextJoin, Some(inv), _) => {
                self.ctx_joins.get(&inv).map(|j| context_impl::join_psk(&j.inv.secret))
            }
            (Purpose::Link, _, Some(p)) => self.peers.get(&p).map(|p| p.link_psk),
            (Purpose::Context, _, Some(p)) => self.context_psk_for(c.scope, c.epoch, &p),
            _ => None,
        };
        let Some(psk) = psk else { return };
        let context = (c.purpose == Purpose::Context).then_some((c.scope, c.epoch));
        if self
            .start_handshake(
                c.purpose,
                c.remote_static,
                psk,
                c.addr.clone(),
                c.peer,
                c.invite,
                context,
            )
            .is_ok()
        {
            // Keep the retry budget (a forged answer must not buy an attacker endless
            // tries) and a catch-up channel's end.
            if let Some(n) = self.channels.values_mut().find(|n| {
                n.invite == c.invite
                    && n.peer == c.peer
                    && n.scope == c.scope
                    && n.epoch == c.epoch
                    && n.purpose == c.purpose
                    && n.tries == 1
            }) {
                n.tries = tries;
                n.ends_at = c.ends_at;
            }
        }
    }

    fn fail_initiator(&mut self, idx: u32, reason: FailReason) {
        let Some(c) = self.channels.remove(&idx) else { return };
        match (c.purpose, c.invite, c.peer) {
            (Purpose::Pairing, Some(invite), _) => self.event(Event::PairingFailed { invite, reason }),
            (Purpose::ContextJoin, Some(invite), _) => self.event(Event::ContextJoinFailed {
                invite,
                reason: format!("{reason:?}"),
            }),
            (_, _, Some(peer)) => {
                let discarded = self.queued.remove(&(c.scope, peer)).map_or(0, |q| q.len());
                self.event(Event::ChannelFailed {
                    peer,
                    reason,
                    discarded,
                });
            }
            _ => {}
        }
    }

    /// Makes channel `idx` the one carrying traffic for its device and flushes the queue.
    fn activate(&mut self, idx: u32) {
        let Some(c) = self.channels.get_mut(&idx) else { return };
        c.pairing = Pairing::None;
        c.retx_at = None;
        let Some(peer) = c.peer else { return };
        let (addr, version, scope, role) = (c.addr.clone(), c.version, c.scope, c.role);
        if let Some(old) = self.active.insert((scope, peer), idx) {
            if old != idx {
                self.channels.remove(&old);
            }
        }
        if scope == ContextId::OWN {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.addr = addr.clone();
            }
            self.event(Event::ChannelUp { peer, addr, version });
        } else {
            self.ctx_addrs.insert(peer, addr);
        }
        // On a channel of an earlier epoch of a context (a member catching up) only
        // anti-entropy may go; the rest waits for a channel of the current epoch.
        let behind = scope != ContextId::OWN
            && self
                .channels
                .get(&idx)
                .is_some_and(|c| !self.context_current(scope, c.epoch));
        let queued = self.queued.remove(&(scope, peer)).unwrap_or_default();
        let (now, later): (Vec<Queued>, Vec<Queued>) = queued
            .into_iter()
            .partition(|q| !behind || matches!(q, Queued::Proto(_)));
        if !later.is_empty() {
            self.queued.insert((scope, peer), later);
        }
        for q in now {
            self.send_queued(idx, q);
        }
        // The side that opened the channel reconciles (both would be redundant). A
        // channel of an earlier epoch is there for a member that is behind to catch up:
        // both sides reconcile the context on it (the one that is behind may not know
        // it is, having opened in what it takes for the current epoch). A fact whose push
        // to this peer gave up is owed by its author whichever side opened: only the
        // author knows (the other side opening for its own reasons left it waiting for
        // the ten-minute round).
        if role == Role::Initiator {
            self.sync_on_link_up(scope, peer);
        }
        if behind {
            self.catch_up_with(scope, peer);
        } else if scope != ContextId::OWN {
            self.context_link_up(scope, peer);
        }
    }

    fn on_data(&mut self, from: String, receiver: u32, nonce: u64, ct: &[u8]) {
        let now = self.now.mono;
        let Some(c) = self.channels.get_mut(&receiver) else {
            self.metrics.drop(DropReason::UnknownSession);
            return;
        };
        let Some(transport) = c.transport.as_ref() else {
            self.metrics.drop(DropReason::UnexpectedFrame);
            return;
        };
        if !c.replay.is_fresh(nonce) {
            self.metrics.drop(DropReason::Replayed);
            return;
        }
        self.plain.resize(ct.len(), 0);
        let Ok(n) = transport.read_message(nonce, ct, &mut self.plain) else {
            self.metrics.drop(DropReason::Unauthenticated);
            return;
        };
        c.replay.mark(nonce);
        c.last_recv = now;
        c.unanswered_since = None;
        // Authenticated traffic from a new address means the device moved.
        if c.addr != from {
            c.addr = from;
        }
        let mut scratch = core::mem::take(&mut self.scratch);
        let plain = core::mem::take(&mut self.plain);
        let res = wire::unpad_frame(&plain[..n], &mut scratch);
        let r = match res {
            Err(e) => Err(e),
            Ok(frame) => {
                self.on_frame(receiver, frame);
                Ok(())
            }
        };
        self.plain = plain;
        self.scratch = scratch;
        if let Err(e) = r {
            self.count_decode(e);
        }
    }

    fn on_frame(&mut self, idx: u32, frame: Frame<'_>) {
        let now = self.now.mono;
        let c = self.channels.get_mut(&idx).expect("caller checked");
        if !matches!(frame, Frame::Keepalive) {
            c.last_recv_payload = now;
            c.owe_keepalive = true;
        }
        let first = matches!(c.phase, Phase::RespSent { .. });
        if first {
            c.phase = Phase::Established;
        }
        let (purpose, role, peer, pairing, scope, epoch) = (c.purpose, c.role, c.peer, c.pairing, c.scope, c.epoch);
        let peer = peer.expect("established channels know their peer");
        if scope == ContextId::OWN {
            self.heard_from(&peer);
        }
        if first && matches!(purpose, Purpose::Link | Purpose::Context) {
            self.activate(idx);
        }
        let usable = self.active.get(&(scope, peer)) == Some(&idx);
        match frame {
            Frame::Confirm => {
                if purpose == Purpose::Pairing && role == Role::Responder {
                    self.on_pair_confirm(idx, peer);
                }
            }
            Frame::PairAck => {
                if pairing == Pairing::AwaitAck && role == Role::Initiator {
                    let c = self.channels.get_mut(&idx).expect("present");
                    c.pairing = Pairing::Persisting;
                    c.retx_at = None;
                    let invite = c.invite.expect("pairing channels carry their invite");
                    let Some(secret) = self.joins.get(&invite).map(|i| i.secret) else {
                        return;
                    };
                    let record = self.paired_record(idx, &secret, invite);
                    self.persist(Record::Paired(record.clone()), Pending::Paired { idx, peer: record });
                } else if pairing != Pairing::Persisting && !usable {
                    self.metrics.drop(DropReason::UnexpectedFrame);
                }
            }
            Frame::Keepalive => {}
            Frame::Close => {
                self.remove_channel(idx, Some(DownReason::PeerClosed));
                self.link_for_queued(scope, peer);
            }
            Frame::Proto { data } if purpose == Purpose::ContextJoin => self.on_ctx_msg(idx, peer, data),
            _ if !usable => self.metrics.drop(DropReason::UnexpectedFrame),
            // A member behind may still reconcile (to catch up), and what it sent before
            // it learned of the change still arrives; nothing else comes in on a channel
            // of an earlier epoch.
            Frame::Proto { data } if scope != ContextId::OWN && self.context_behind(scope, epoch, &peer) => {
                self.on_context_proto(scope, peer, data)
            }
            Frame::App { data } if scope != ContextId::OWN && self.context_behind(scope, epoch, &peer) => {
                self.event(Event::ContextReceived {
                    context: scope,
                    peer,
                    data: Bytes::copy_from_slice(data),
                });
            }
            // A context that stopped being ready here (or moved to another epoch) takes
            // nothing more from channels of the old state.
            _ if scope != ContextId::OWN && !self.context_current(scope, epoch) => {
                self.metrics.drop(DropReason::WrongContext)
            }
            Frame::Ping { id } => {
                // Answers cost leakage from a budget the whole context shares: a peer
                // gets at most PONGS_PER_SECOND of them per second.
                let c = self.channels.get_mut(&idx).expect("present");
                let (start, n) = c.pongs;
                if start.saturating_add(Duration::from_secs(1)) <= now {
                    c.pongs = (now, 1);
                } else if n >= PONGS_PER_SECOND {
                    return self.metrics.drop(DropReason::Overloaded);
                } else {
                    c.pongs.1 += 1;
                }
                self.send_frame(idx, &Frame::Pong { id });
            }
            Frame::Pong { id } => {
                let c = self.channels.get_mut(&idx).expect("present");
                match c.pings.remove(&id) {
                    Some(t) => {
                        let rtt = now.saturating_since(t);
                        self.observe_rtt(peer, rtt);
                        self.event(Event::Pong { peer, rtt });
                    }
                    None => self.metrics.drop(DropReason::UnexpectedFrame),
                }
            }
            Frame::Proto { data } if scope == ContextId::OWN => self.on_proto(peer, data),
            // In a context: anti-entropy of that context's journal only.
            Frame::Proto { data } => self.on_context_proto(scope, peer, data),
            Frame::Accounting { data } if scope != ContextId::OWN => self.on_accounting(scope, peer, data),
            Frame::Accounting { .. } => self.metrics.drop(DropReason::UnexpectedFrame),
            Frame::App { data } if scope == ContextId::OWN => {
                self.event(Event::Received {
                    peer,
                    data: Bytes::copy_from_slice(data),
                });
            }
            Frame::App { data } => {
                self.event(Event::ContextReceived {
                    context: scope,
                    peer,
                    data: Bytes::copy_from_slice(data),
                });
            }
        }
    }

    fn paired_record(&self, idx: u32, secret: &[u8; 32], invite: [u8; 32]) -> PairedPeer {
        let c = &self.channels[&idx];
        let id = c.peer.expect("known after handshake");
        PairedPeer {
            id,
            cert: c.remote_cert.clone().expect("known after handshake"),
            addr: c.addr.clone(),
            link_psk: link_psk(secret, &self.keys.id, &id),
            invite,
        }
    }

    fn on_pair_confirm(&mut self, idx: u32, peer: DeviceId) {
        let c = &self.channels[&idx];
        let Some(invite) = c.invite else { return };
        if c.pairing == Pairing::Persisting {
            return; // already being recorded; the ack follows PersistDone
        }
        if self.peers.get(&peer).is_some_and(|p| p.invite == invite) {
            // Recorded before (our ack was lost, or the joiner restarted): ack again.
            self.send_frame(idx, &Frame::PairAck);
            self.activate(idx);
            return;
        }
        let Some(issued) = self.invites.get_mut(&invite) else {
            return;
        };
        if issued.redeemed_by.is_some_and(|d| d != peer) {
            self.metrics.drop(DropReason::ReusedInvite);
            self.channels.remove(&idx);
            return;
        }
        // Claim the invitation now so a second joiner racing us is refused.
        issued.redeemed_by = Some(peer);
        let secret = issued.inv.secret;
        self.channels.get_mut(&idx).expect("present").pairing = Pairing::Persisting;
        let record = self.paired_record(idx, &secret, invite);
        self.persist(Record::Paired(record.clone()), Pending::Paired { idx, peer: record });
    }

    fn handle_persist_done(&mut self, t: Ticket) {
        let Some(p) = self.pending.remove(&t) else { return };
        match p {
            Pending::ShowInvite(inv) => {
                let code = inv.to_code();
                let expires_unix_ms = inv.expires_unix_ms;
                self.invites.insert(inv.id(), IssuedInvite { inv, redeemed_by: None });
                self.event(Event::InviteCreated { code, expires_unix_ms });
            }
            Pending::StartJoin(inv) => {
                self.joins.insert(inv.id(), inv.clone());
                self.start_pairing(inv);
            }
            Pending::ShareDurable { session, share } => self.share_durable(session, *share),
            Pending::Abandoned { session, group_key } => self.abandon_durable(session, group_key),
            Pending::Commit { session, counter } => self.commit_durable(session, counter),
            Pending::NoncesReserved(upto) => {
                self.nonce_refilling = false;
                self.nonce_reserved = self.nonce_reserved.max(upto);
            }
            Pending::ShowContextInvite(inv) => {
                let code = inv.to_code();
                let expires_unix_ms = inv.expires_unix_ms;
                self.add_ctx_invite(inv);
                self.event(Event::ContextInviteCreated { code, expires_unix_ms });
            }
            Pending::StartContextJoin(inv) => {
                let id = inv.id();
                self.add_ctx_join(inv);
                self.start_context_join(id);
            }
            Pending::Context { idx, step, record } => self.context_durable(idx, step, *record),
            Pending::ReceiptsDurable(batch) => self.batch_durable(*batch, true),
            Pending::Nothing => {}
            Pending::ContextShared {
                from,
                genesis,
                facts,
                tokens,
                addrs,
            } => {
                self.apply_context_share(facts, tokens, addrs);
                self.send_auth(from, crate::authority::AuthMsg::FactsAck { ids: vec![genesis] });
            }
            Pending::Reserved {
                context,
                peer,
                epoch,
                up_to,
            } => self.reserved_durable(context, peer, epoch, up_to),
            Pending::TokenDurable(token) => {
                self.tokens.push(token.clone());
                self.event(Event::CapabilityIssued { token });
            }
            Pending::FactDurable { fact, push_to, ack_to } => self.fact_durable(*fact, push_to, ack_to),
            Pending::Refreshed { session, share } => self.refreshed_durable(session, *share),
            Pending::Enrolled {
                authority,
                session,
                enroller,
                share,
            } => self.enrolled(authority, session, enroller, *share),
            Pending::Delivered { fact, peer, at_ms } => self.delivery_durable(fact, peer, at_ms),
            Pending::Voted { vote, to, ask } => self.vote_durable(vote, to, ask),
            Pending::Promised { prestate, ballot, to } => self.promise_durable(prestate, ballot, to),
            Pending::Paired { idx, peer } => {
                let (id, addr, invite) = (peer.id, peer.addr.clone(), peer.invite);
                self.add_peer(peer);
                self.event(Event::Paired { peer: id, addr, invite });
                let role = self.channels.get(&idx).map(|c| c.role);
                if role == Some(Role::Responder) {
                    // Only now may the inviter promise the joiner that pairing holds.
                    self.send_frame(idx, &Frame::PairAck);
                }
                if role.is_some() {
                    self.activate(idx);
                }
            }
        }
    }

    // ----- timers -------------------------------------------------------------------

    fn handle_timeout(&mut self) {
        let now = self.now.mono;
        self.seen_init.retain(|_, (_, t)| t.saturating_add(SEEN_INIT_TTL) > now);
        let seen = &self.seen_init;
        self.rejected.retain(|h, _| seen.contains_key(h));
        let idxs: Vec<u32> = self.channels.keys().copied().collect();
        for idx in idxs {
            self.channel_timeout(idx, now);
        }
        self.auth_timeout();
        self.ctx_timeout();
        self.acct_timeout();
        self.sync_timeout();
        self.consensus_timeout();
    }

    fn channel_timeout(&mut self, idx: u32, now: Instant) {
        let cfg = self.cfg.clone();
        let Some(c) = self.channels.get(&idx) else { return };
        if c.ends_at.is_some_and(|t| t <= now) {
            // A catch-up channel's time is up (the member caught up, or will try again).
            let (scope, peer, up) = (c.scope, c.peer, c.transport.is_some());
            if up {
                self.send_frame(idx, &Frame::Close);
            }
            self.remove_channel(idx, None);
            if let Some(p) = peer {
                self.link_for_queued(scope, p);
            }
            return;
        }
        if c.retx_at.is_some_and(|t| t <= now) && !self.may_keep_up(idx) {
            // The scope stopped allowing this channel while it was being set up: no
            // further handshake message goes out.
            return self.fail_initiator(idx, FailReason::Timeout);
        }
        let Some(c) = self.channels.get_mut(&idx) else { return };
        if c.retx_at.is_some_and(|t| t <= now) {
            if c.tries >= cfg.handshake_tries {
                return self.fail_initiator(idx, FailReason::Timeout);
            }
            c.retx_at = Some(now.saturating_add(backoff(cfg.handshake_retry, c.tries)));
            c.tries += 1;
            self.metrics.handshake_retransmits += 1;
            if matches!(c.phase, Phase::InitSent { .. }) {
                // So a crossed first message right after this send gets no second copy
                // (`resend_crossed_init` measures from here).
                c.last_sent = now;
            }
            match &c.phase {
                Phase::InitSent { datagram, .. } => {
                    let (to, d, scope, peer) = (c.addr.clone(), datagram.clone(), c.scope, c.peer);
                    self.transmit_handshake(&to, d, scope, peer);
                }
                _ => self.send_frame(idx, &Frame::Confirm),
            }
            return;
        }
        match c.phase {
            Phase::InitSent { .. } => {}
            Phase::RespSent { .. } => {
                if c.created.saturating_add(cfg.handshake_timeout) <= now {
                    self.channels.remove(&idx);
                }
            }
            Phase::Established => {
                if c.dead_at(&cfg).is_some_and(|t| t <= now) {
                    if c.pairing == Pairing::AwaitAck {
                        // A joiner whose pairing never got acknowledged: say so, so the
                        // user (or the next restart) can try again.
                        return self.fail_initiator(idx, FailReason::Timeout);
                    }
                    return self.remove_channel(idx, Some(DownReason::Timeout));
                }
                if c.pairing != Pairing::None {
                    return;
                }
                if c.idle_at(&cfg).is_some_and(|t| t <= now) {
                    self.send_frame(idx, &Frame::Close);
                    return self.remove_channel(idx, Some(DownReason::Idle));
                }
                if c.keepalive_due(&cfg).is_some_and(|t| t <= now) {
                    // A channel of an earlier epoch of a context (a member catching up)
                    // may carry anti-entropy only: it ends when it would need upkeep.
                    let (scope, peer) = (c.scope, c.peer);
                    // A channel whose upkeep the guard no longer allows (an earlier
                    // epoch's, or its grant went) ends rather than retrying for ever.
                    if !self.may_keep_up(idx) {
                        self.remove_channel(idx, None);
                        if let Some(p) = peer {
                            self.link_for_queued(scope, p);
                        }
                        return;
                    }
                    self.send_frame(idx, &Frame::Keepalive);
                }
            }
        }
    }

    fn remove_channel(&mut self, idx: u32, reason: Option<DownReason>) {
        let Some(c) = self.channels.remove(&idx) else { return };
        if let Some(peer) = c.peer {
            if self.active.get(&(c.scope, peer)) == Some(&idx) {
                self.active.remove(&(c.scope, peer));
                if let (Some(reason), true) = (reason, c.scope == ContextId::OWN) {
                    self.event(Event::ChannelDown { peer, reason });
                }
            }
        }
    }
}
