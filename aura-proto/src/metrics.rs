//! Counters. Every remote input that is dropped is counted under exactly one reason.

use serde::{Deserialize, Serialize};

/// Why a datagram (or a frame inside one) was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DropReason {
    /// Not a valid encoding (bad tag, overlong varint, trailing bytes, bad padding).
    Malformed,
    /// Ended early.
    Truncated,
    /// Larger than the hard limit.
    Oversized,
    /// Unknown wire version byte.
    WrongVersion,
    /// Failed Noise authentication (bad tag, wrong key, wrong PSK).
    Unauthenticated,
    /// A transport nonce already seen, or a handshake message already answered.
    Replayed,
    /// Addressed to a session index this peer does not have.
    UnknownSession,
    /// Handshake from a device that is not paired and redeems no known invitation.
    UnknownPeer,
    /// Pairing with an invitation this peer did not issue.
    UnknownInvite,
    /// Pairing with an expired invitation.
    ExpiredInvite,
    /// Pairing with an invitation another device already redeemed.
    ReusedInvite,
    /// Certificate signature invalid or keys not matching the handshake.
    BadCert,
    /// A frame that makes no sense in the channel's current state.
    UnexpectedFrame,
    /// Too many half-open handshakes; new ones are refused until some finish.
    Overloaded,
    /// A journal fact failed verification (reason in `Metrics::fact_rejects`).
    BadFact,
    /// A context handshake for a context this device does not have ready, a stale
    /// epoch, or from a device that is not a member of the context's other authority.
    WrongContext,
    /// A receipt batch that failed verification (reason in `Metrics::receipt_rejects`).
    BadReceipt,
}

impl DropReason {
    /// Every reason, in a fixed order (for reports).
    pub const ALL: [DropReason; 17] = [
        DropReason::Malformed,
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::WrongVersion,
        DropReason::Unauthenticated,
        DropReason::Replayed,
        DropReason::UnknownSession,
        DropReason::UnknownPeer,
        DropReason::UnknownInvite,
        DropReason::ExpiredInvite,
        DropReason::ReusedInvite,
        DropReason::BadCert,
        DropReason::UnexpectedFrame,
        DropReason::Overloaded,
        DropReason::BadFact,
        DropReason::WrongContext,
        DropReason::BadReceipt,
    ];

    /// Short snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::WrongVersion => "wrong_version",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replayed => "replayed",
            DropReason::UnknownSession => "unknown_session",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::UnknownInvite => "unknown_invite",
            DropReason::ExpiredInvite => "expired_invite",
            DropReason::ReusedInvite => "reused_invite",
            DropReason::BadCert => "bad_cert",
            DropReason::UnexpectedFrame => "unexpected_frame",
            DropReason::Overloaded => "overloaded",
            DropReason::BadFact => "bad_fact",
            DropReason::WrongContext => "wrong_context",
            DropReason::BadReceipt => "bad_receipt",
        }
    }
}

/// A peer's counters. Cheap to copy; read with [`Peer::metrics`](crate::Peer::metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Drops by reason, indexed as [`DropReason::ALL`].
    pub dropped: [u64; 17],
    /// Datagrams handed to the peer.
    pub datagrams_in: u64,
    /// Datagrams the peer asked to send.
    pub datagrams_out: u64,
    /// Handshakes completed (either role).
    pub handshakes: u64,
    /// Handshake messages sent again after a timeout.
    pub handshake_retransmits: u64,
    /// Key generations that formed an authority although some members never reported a
    /// share (a threshold of them did).
    pub dkg_partial: u64,
    /// Key generations given up by their coordinator because too few members held shares.
    pub dkg_abandoned: u64,
    /// Records handed out for persistence.
    pub persists: u64,
    /// Rejected facts by typed reason (`FactError` name).
    pub fact_rejects: std::collections::BTreeMap<String, u64>,
    /// Rejected receipt batches by reason (`ReceiptError` name).
    pub receipt_rejects: std::collections::BTreeMap<String, u64>,
    /// Sends the guard chain refused, by denial name (`guard::Denial::name`).
    pub denied: std::collections::BTreeMap<String, u64>,
    /// Sends the guard chain let out (one per `Output::Egress`).
    pub egress: u64,
    /// Sends that waited for a flow reservation to become durable.
    pub reserves: u64,
    /// Anti-entropy sessions started.
    pub sync_sessions: u64,
    /// Reconciliation queries sent again after a timeout.
    pub sync_retries: u64,
    /// Anti-entropy sessions that gave up.
    pub sync_failed: u64,
    /// Fallback ballots this device ran.
    pub consensus_fallbacks: u64,
    /// Equivocation proofs this device found and wrote.
    pub equivocations: u64,
    /// Proofs of promises that hid a vote this device found and wrote.
    pub hidden_votes: u64,
    /// Commits this device had signed with shares that came with the votes (one round
    /// trip), after the votes (two), and by the general signing session (three).
    pub commits_warm: u64,
    /// See `commits_warm`.
    pub commits_cold: u64,
    /// See `commits_warm`.
    pub commits_session: u64,
    /// Enrollment: shares this device (as newcomer) assembled that did not match its
    /// verifying share (a helper sent a wrong part), and enrollment attempts this device
    /// (as enroller) started.
    pub enroll_bad_shares: u64,
    /// See `enroll_bad_shares`.
    pub enroll_attempts: u64,
}

impl Metrics {
    /// How many drops for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// Sum of all drops.
    pub fn total_drops(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub(crate) fn drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }
}
