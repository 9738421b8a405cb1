//! Set reconciliation of journal namespaces (the first piece of anti-entropy).
//!
//! Two devices holding journals of one namespace find which facts each lacks by range-based
//! reconciliation in the style of negentropy: items are `(lamport, FactId)` in that order;
//! each message carries, per range, a fingerprint or (below a threshold) the ids; mismatching
//! ranges split. Equal sets settle in one round trip with a few hundred bytes; `d`
//! differences cost O(d log n). The protocol itself is the `negentropy` crate (protocol
//! version 0x61, 32-byte ids); this module builds its item sets from a [`Journal`] and
//! turns its errors into typed ones.
//!
//! A session is stateless between messages on both sides (each message is answered from
//! the journal as it is then), which is what lets a sans-IO peer run many of them, lose
//! messages and retry without tearing anything down.
//!
//! Not yet here (issue 6 continues): fetching and pushing the missing facts, sessions in
//! `Peer` through the guard chain, retries with backoff, propagation status.

use negentropy::{Id, Negentropy, NegentropyStorageVector};

use crate::journal::{FactId, Journal, Namespace};

/// Why a reconciliation message could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The message is malformed, truncated, of another protocol version or out of order.
    #[error("malformed reconciliation message")]
    Malformed,
    /// The frame limit is too small for the protocol (it needs at least 4096 bytes).
    #[error("frame limit too small (need at least 4096 bytes, or 0 for none)")]
    FrameLimit,
}

fn map(e: negentropy::Error) -> SyncError {
    match e {
        negentropy::Error::FrameSizeLimitTooSmall => SyncError::FrameLimit,
        _ => SyncError::Malformed,
    }
}

/// The items of namespace `ns`: (lamport, fact id), sorted as the protocol wants.
pub fn items(journal: &Journal, ns: &Namespace) -> Vec<(u64, FactId)> {
    let mut v: Vec<(u64, FactId)> = journal.entries(ns).map(|(id, f)| (f.lamport, id)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn storage(items: &[(u64, FactId)]) -> NegentropyStorageVector {
    let mut s = NegentropyStorageVector::with_capacity(items.len());
    for (t, id) in items {
        // Inserting a 32-byte id into an unsealed vector cannot fail.
        let _ = s.insert(*t, Id::from_byte_array(id.0));
    }
    // Sealing a fresh vector cannot fail either.
    let _ = s.seal();
    s
}

/// What one step of the initiator learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// The next message to send, or `None` when reconciliation is complete.
    pub reply: Option<Vec<u8>>,
    /// Facts this side has and the other lacks.
    pub have: Vec<FactId>,
    /// Facts the other side has and this side lacks.
    pub need: Vec<FactId>,
}

/// The first message of a reconciliation of `items`. `frame_limit` bounds every message
/// of the session in bytes (0: no limit; otherwise at least 4096): more round trips,
/// never an oversized frame.
pub fn initiate(items: &[(u64, FactId)], frame_limit: u64) -> Result<Vec<u8>, SyncError> {
    let mut n = Negentropy::owned(storage(items), frame_limit).map_err(map)?;
    n.initiate().map_err(map)
}

/// The initiator's handling of an answer.
pub fn step(items: &[(u64, FactId)], frame_limit: u64, answer: &[u8]) -> Result<Step, SyncError> {
    let mut n = Negentropy::owned(storage(items), frame_limit).map_err(map)?;
    n.set_initiator();
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let reply = n.reconcile_with_ids(answer, &mut have, &mut need).map_err(map)?;
    let id = |i: Id| FactId(i.to_bytes());
    Ok(Step {
        reply,
        have: have.into_iter().map(id).collect(),
        need: need.into_iter().map(id).collect(),
    })
}

/// The responder's answer to any message of a session.
pub fn respond(items: &[(u64, FactId)], frame_limit: u64, query: &[u8]) -> Result<Vec<u8>, SyncError> {
    let mut n = Negentropy::owned(storage(items), frame_limit).map_err(map)?;
    n.reconcile(query).map_err(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::PeerRng;
    use std::collections::BTreeSet;

    fn set(rng: &mut PeerRng, n: usize) -> Vec<(u64, FactId)> {
        let mut v: Vec<(u64, FactId)> = (0..n).map(|i| (i as u64 / 4, FactId(rng.bytes32()))).collect();
        v.sort_unstable();
        v
    }

    /// Runs a whole session; returns (have, need, round trips, bytes both ways).
    fn run(a: &[(u64, FactId)], b: &[(u64, FactId)], limit: u64) -> (BTreeSet<FactId>, BTreeSet<FactId>, usize, usize) {
        let mut msg = initiate(a, limit).unwrap();
        let (mut have, mut need) = (BTreeSet::new(), BTreeSet::new());
        let (mut trips, mut bytes) = (0, 0);
        loop {
            if limit > 0 {
                assert!(
                    msg.len() as u64 <= limit,
                    "message of {} bytes over the {limit} limit",
                    msg.len()
                );
            }
            bytes += msg.len();
            let answer = respond(b, limit, &msg).unwrap();
            bytes += answer.len();
            trips += 1;
            let s = step(a, limit, &answer).unwrap();
            have.extend(s.have);
            need.extend(s.need);
            match s.reply {
                Some(m) => msg = m,
                None => break,
            }
        }
        (have, need, trips, bytes)
    }

    #[test]
    fn differences_are_found_exactly_both_ways() {
        let mut rng = PeerRng::from_seed([3; 32]);
        let common = set(&mut rng, 2000);
        let only_a = set(&mut rng, 37);
        let only_b = set(&mut rng, 55);
        let mut a = common.clone();
        a.extend(&only_a);
        a.sort_unstable();
        let mut b = common;
        b.extend(&only_b);
        b.sort_unstable();
        for limit in [0, 4096] {
            let (have, need, _, _) = run(&a, &b, limit);
            assert_eq!(have, only_a.iter().map(|x| x.1).collect());
            assert_eq!(need, only_b.iter().map(|x| x.1).collect());
        }
    }

    #[test]
    fn equal_sets_take_one_round_trip_and_little_data() {
        let mut rng = PeerRng::from_seed([4; 32]);
        let a = set(&mut rng, 10_000);
        let (have, need, trips, bytes) = run(&a, &a, 0);
        assert!(have.is_empty() && need.is_empty());
        assert_eq!(trips, 1);
        assert!(bytes <= 1024, "{bytes} bytes");
    }

    #[test]
    fn garbage_is_refused_with_a_typed_error() {
        let mut rng = PeerRng::from_seed([5; 32]);
        let a = set(&mut rng, 100);
        assert_eq!(respond(&a, 0, &[]), Err(SyncError::Malformed));
        assert_eq!(respond(&a, 0, &[0x10]), Err(SyncError::Malformed));
        assert_eq!(initiate(&a, 100), Err(SyncError::FrameLimit));
        let mut r = PeerRng::from_seed([6; 32]);
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|_| r.next_u32() as u8).collect();
            let _ = respond(&a, 0, &junk);
            let _ = step(&a, 0, &junk);
        }
    }
}
