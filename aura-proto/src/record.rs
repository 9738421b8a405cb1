//! Durable records: what a peer asks its host to store, and rebuilds itself from.
//!
//! Records are append-only facts about this device. A record counts only once its
//! `Input::PersistDone` came back; `Peer::restore` replays them in order.

use serde::{Deserialize, Serialize};

use crate::invite::Invitation;
use crate::journal::{Fact, FactId, Member};
use crate::keys::{DeviceCert, DeviceId};
use crate::wire::{self, DecodeError};

/// Record encoding version (first byte of [`Record::encode`]).
pub const RECORD_VERSION: u8 = 1;

/// Handle tying an `Output::Persist` to its `Input::PersistDone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ticket(pub u64);

/// A paired device, as both sides remember it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairedPeer {
    /// The other device.
    pub id: DeviceId,
    /// Its public keys.
    pub cert: DeviceCert,
    /// Last address it was reached at.
    pub addr: String,
    /// Pre-shared key for link handshakes (a secret only the two devices know).
    pub link_psk: [u8; 32],
    /// The invitation that paired us.
    pub invite: [u8; 32],
}

/// The key generation a share came from: enough to sign (or agree to sign) its genesis
/// after a restart, since the key generation session itself lives only in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareOrigin {
    /// Key generation session id.
    pub session: [u8; 32],
    /// The device that ran it (and signs the genesis).
    pub coordinator: DeviceId,
    /// Signing threshold.
    pub threshold: u16,
    /// Members, in identifier order.
    pub members: Vec<Member>,
}

/// One durable fact about this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// This device issued an invitation (the code may be shown once this is durable).
    InviteIssued(Invitation),
    /// This device started redeeming an invitation; the code is spent here.
    JoinStarted(Invitation),
    /// Pairing finished with another device.
    Paired(PairedPeer),
    /// This device's share of an authority key (from key generation).
    Share {
        /// The group key it belongs to.
        group_key: [u8; 32],
        /// Serialized frost `KeyPackage` (the secret share).
        key_package: Vec<u8>,
        /// Serialized frost `PublicKeyPackage`.
        public_key_package: Vec<u8>,
        /// The key generation it came from.
        origin: ShareOrigin,
    },
    /// A journal fact this device holds.
    Fact(Fact),
    /// The FROST nonce counter reached this value (durable before any nonce drawn from it).
    NonceCounter(u64),
    /// A capability token this device issued or holds.
    Capability(Vec<u8>),
    /// The share of this key generation was given up before any genesis was recorded
    /// (too few members ever held shares); it is dropped on restore.
    ShareAbandoned {
        /// Key generation session.
        session: [u8; 32],
        /// The group key of the dropped share.
        group_key: [u8; 32],
    },
    /// This device issued a context invitation (the code may be shown once durable).
    ContextInviteIssued(Invitation),
    /// This device started redeeming a context invitation.
    ContextJoinStarted(Invitation),
    /// The inviter confirmed it holds this device's acceptance: the join is over.
    ContextJoinDone([u8; 32]),
    /// A step of a context creation: facts to merge and tokens to keep, for the
    /// invitation `invite` redeemed by (or from) `peer`.
    Context {
        /// Invitation id.
        invite: [u8; 32],
        /// The device on the other side of the invitation.
        peer: DeviceId,
        /// Where that device was reached (context members' own hints may be empty).
        addr: String,
        /// The context.
        context: crate::journal::ContextId,
        /// Facts (foreign authority genesis, creation, sealed secrets, acceptance).
        facts: Vec<Fact>,
        /// Capability tokens received.
        tokens: Vec<Vec<u8>>,
        /// The token this device's authority issued to the other (kept to resend).
        sent_token: Option<Vec<u8>>,
    },
    /// A sealed stretch of this device's receipt chain.
    Receipts(crate::receipt::ReceiptBatch),
    /// Flow budget of (context, peer, epoch) reserved up to `up_to`: durable before any
    /// send spends it (charge before send). On restore the whole reservation counts as
    /// spent, so a crash can waste budget but never spend it twice.
    Reserve {
        /// Context.
        context: crate::journal::ContextId,
        /// Receiving device.
        peer: DeviceId,
        /// Epoch.
        epoch: u64,
        /// Reserved units.
        up_to: u64,
    },
    /// A context another device of the same person shared: facts (the other authority's
    /// genesis, the context's facts) and capability tokens to keep.
    ContextShared {
        /// Facts.
        facts: Vec<Fact>,
        /// Capability tokens.
        tokens: Vec<Vec<u8>>,
        /// Addresses of the other authorities' devices.
        addrs: Vec<(DeviceId, String)>,
    },
    /// A member device confirmed it holds a note of ours that asked for confirmation.
    Delivered {
        /// The note.
        fact: FactId,
        /// The device.
        peer: DeviceId,
        /// This device's wall clock when the confirmation arrived, ms since the epoch.
        at_ms: u64,
    },
    /// A consensus vote this device cast (never two at one ballot from one prestate),
    /// with the operation it voted for.
    Voted {
        /// The vote.
        vote: crate::consensus::Vote,
        /// The proposal voted for (so a restarted device can carry on its fallback).
        proposal: crate::consensus::Proposal,
    },
    /// A promise to a fallback coordinator (or, as coordinator, to itself): no vote
    /// below `ballot` from `prestate`.
    Promised {
        /// The prestate.
        prestate: [u8; 32],
        /// The ballot.
        ballot: u32,
    },
    /// Refreshed shares of this device's key, computed with the other members; they
    /// replace the share once a `Refresh` change with their verifying shares applies.
    Refreshed {
        /// Refresh session.
        session: [u8; 32],
        /// The group key (unchanged by a refresh).
        group_key: [u8; 32],
        /// Serialized frost `KeyPackage` (the refreshed secret share).
        key_package: Vec<u8>,
        /// Serialized frost `PublicKeyPackage` (the members' refreshed verifying shares).
        public_key_package: Vec<u8>,
    },
}

impl Record {
    /// Canonical bytes for storage: version byte then postcard.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode_into(self, vec![RECORD_VERSION])
    }

    /// The secret share a `Share` or `Refreshed` record holds (a serialized `KeyPackage`).
    pub fn key_package(&self) -> Option<&[u8]> {
        match self {
            Record::Share { key_package, .. } | Record::Refreshed { key_package, .. } => Some(key_package),
            _ => None,
        }
    }

    /// Strict inverse of [`Record::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        match bytes.split_first() {
            None => Err(DecodeError::Truncated),
            Some((&RECORD_VERSION, rest)) => wire::strict_decode(rest, &mut Vec::new()),
            Some(_) => Err(DecodeError::WrongVersion),
        }
    }
}

/// The records a restore needs, in their order: `records` without those another record
/// makes redundant. Dropped, and nothing else:
/// - a `NonceCounter` below the largest (restore keeps the maximum);
/// - a `Reserve` below the largest for its (context, peer, epoch) (likewise);
/// - a `Fact`, `Capability` or `Paired` record equal to a later one (the last is kept:
///   a pairing record restored last wins);
/// - a `Voted` or `Promised` record from a prestate the authority has moved past (by
///   the facts of these same records): nothing is ever decided from it again.
///
/// Of equal maxima the last is kept. Whatever is not provably redundant stays, so
/// restoring from the result rebuilds the same peer (tests/compact.rs checks this).
pub fn compact(records: &[Record]) -> Vec<Record> {
    compact_with(records, None)
}

/// What a peer restored from the records knows that the records alone do not say: the
/// share it holds for each group key now, and the refreshed shares still waiting for a
/// `Refresh` change ([`crate::Peer::live_keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveKeys {
    /// Group key → (serialized `KeyPackage`, serialized `PublicKeyPackage`) in use.
    pub shares: std::collections::BTreeMap<[u8; 32], (Vec<u8>, Vec<u8>)>,
    /// Serialized `KeyPackage`s of refreshed shares not switched to yet.
    pub pending: std::collections::BTreeSet<Vec<u8>>,
}

/// [`compact`], and with `live` (from a peer restored from these same records) the
/// shares a refresh replaced go too: every `Share` record of a group key carries the share
/// in use instead, and `Refreshed` records no longer pending are dropped. So a stolen old
/// log holds only shares that fit the current polynomial, like the device itself.
pub fn compact_with(records: &[Record], live: Option<&LiveKeys>) -> Vec<Record> {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::journal::{Journal, Namespace};

    let mut journal = Journal::new();
    for r in records {
        if let Record::Fact(f) = r {
            journal.insert(f.clone());
        }
    }
    let authorities: Vec<_> = journal
        .namespaces()
        .filter_map(|ns| match ns {
            Namespace::Authority(a) => Some(*a),
            Namespace::Context(_) => None,
        })
        .collect();
    let dead: BTreeSet<[u8; 32]> = authorities
        .into_iter()
        .flat_map(|a| crate::authority::AuthorityView::left_behind(&journal, a))
        .collect();
    // Where the kept maximum of each counter is (the last of the largest).
    let mut last_counter = None;
    let mut last_reserve = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        match r {
            Record::NonceCounter(n) if last_counter.is_none_or(|(_, m)| *n >= m) => {
                last_counter = Some((i, *n));
            }
            Record::Reserve {
                context,
                peer,
                epoch,
                up_to,
            } => {
                let e = last_reserve.entry((*context, *peer, *epoch)).or_insert((i, *up_to));
                if *up_to >= e.1 {
                    *e = (i, *up_to);
                }
            }
            _ => {}
        }
    }
    // The last position of each distinct record of the kinds that may repeat.
    let mut last_copy = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if matches!(r, Record::Fact(_) | Record::Capability(_) | Record::Paired(_)) {
            last_copy.insert(*blake3::hash(&r.encode()).as_bytes(), i);
        }
    }
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let keep = match r {
            Record::NonceCounter(_) => last_counter.is_some_and(|(k, _)| k == i),
            Record::Reserve {
                context, peer, epoch, ..
            } => last_reserve
                .get(&(*context, *peer, *epoch))
                .is_some_and(|(k, _)| *k == i),
            Record::Fact(_) | Record::Capability(_) | Record::Paired(_) => {
                last_copy.get(blake3::hash(&r.encode()).as_bytes()) == Some(&i)
            }
            Record::Voted { vote, .. } => !dead.contains(&vote.prestate),
            Record::Promised { prestate, .. } => !dead.contains(prestate),
            Record::Refreshed { key_package, .. } => live.is_none_or(|l| l.pending.contains(key_package)),
            _ => true,
        };
        if !keep {
            continue;
        }
        match (r, live) {
            (
                Record::Share {
                    group_key,
                    key_package,
                    public_key_package,
                    origin,
                },
                Some(l),
            ) => {
                let (k, p) = l
                    .shares
                    .get(group_key)
                    .map_or((key_package, public_key_package), |(k, p)| (k, p));
                out.push(Record::Share {
                    group_key: *group_key,
                    key_package: k.clone(),
                    public_key_package: p.clone(),
                    origin: origin.clone(),
                });
            }
            _ => out.push(r.clone()),
        }
    }
    out
}
