//! Receipts: a signed, hash-chained record of every costed send.
//!
//! Each send that spends flow budget appends a [`Receipt`] to the chain of its
//! (context, sender, epoch): the receipt names the previous one by hash, and nonces count
//! up from 0 with no gaps. Signing every receipt would cost a Schnorr signature per
//! message, so the sender signs a [`Seal`] over the chain's head now and then; because
//! each receipt commits to its predecessor, one seal vouches for every receipt up to its
//! head. The verifier takes the sender's signing key from its own reduced state (via
//! [`KeyLookup`]), never from the receipt, so a receipt cannot bring its own key.

use serde::{Deserialize, Serialize};

use crate::journal::{ContextId, KeyLookup, Namespace, Sig64};
use crate::keys::DeviceId;

const CTX_RECEIPT_ID: &str = "aura 2026-11 receipt id";
const SEAL_DOMAIN: &[u8] = b"aura receipt seal v1";

/// The `prev` of the first receipt of a chain.
pub const CHAIN_START: [u8; 32] = [0; 32];

/// One costed send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Context of the channel.
    pub context: ContextId,
    /// Sending device.
    pub src: DeviceId,
    /// Receiving device.
    pub dst: DeviceId,
    /// Context epoch.
    pub epoch: u64,
    /// Flow units charged.
    pub cost: u64,
    /// Position in the (context, src, epoch) chain, from 0.
    pub nonce: u64,
    /// Hash of the previous receipt of the chain ([`CHAIN_START`] for nonce 0).
    pub prev: [u8; 32],
}

/// The key every receipt id of one chain is hashed under: it binds the chain's
/// (context, src, epoch), so each receipt hashes only its own 80 bytes (two BLAKE3 blocks
/// instead of three; every send computes two ids, one on each side).
pub fn chain_key(context: &ContextId, src: &DeviceId, epoch: u64) -> [u8; 32] {
    let mut m = [0u8; 72];
    m[..32].copy_from_slice(&context.0);
    m[32..64].copy_from_slice(&src.0);
    m[64..].copy_from_slice(&epoch.to_be_bytes());
    blake3::derive_key(CTX_RECEIPT_ID, &m)
}

impl Receipt {
    /// The receipt's id: BLAKE3 keyed with [`chain_key`] over
    /// `dst || cost (u64 BE) || nonce (u64 BE) || prev`.
    pub fn id(&self) -> [u8; 32] {
        self.id_under(&chain_key(&self.context, &self.src, self.epoch))
    }

    /// [`Receipt::id`] with the chain key already at hand.
    pub fn id_under(&self, chain_key: &[u8; 32]) -> [u8; 32] {
        let mut m = [0u8; 80];
        m[..32].copy_from_slice(&self.dst.0);
        m[32..40].copy_from_slice(&self.cost.to_be_bytes());
        m[40..48].copy_from_slice(&self.nonce.to_be_bytes());
        m[48..].copy_from_slice(&self.prev);
        *blake3::keyed_hash(chain_key, &m).as_bytes()
    }
}

/// The sender's signature over a chain head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// Context.
    pub context: ContextId,
    /// Sending device (whose key must verify `sig`).
    pub src: DeviceId,
    /// Epoch.
    pub epoch: u64,
    /// Nonce of the head receipt.
    pub nonce: u64,
    /// Hash of the head receipt.
    pub head: [u8; 32],
    /// Schnorr signature (ristretto255) by the sender's device signing key.
    pub sig: Sig64,
}

impl Seal {
    /// The bytes the signature covers.
    pub fn signed_bytes(context: &ContextId, src: &DeviceId, epoch: u64, nonce: u64, head: &[u8; 32]) -> Vec<u8> {
        let mut m = Vec::with_capacity(SEAL_DOMAIN.len() + 32 * 3 + 16);
        m.extend_from_slice(SEAL_DOMAIN);
        m.extend_from_slice(&context.0);
        m.extend_from_slice(&src.0);
        m.extend_from_slice(&epoch.to_be_bytes());
        m.extend_from_slice(&nonce.to_be_bytes());
        m.extend_from_slice(head);
        m
    }
}

/// The sending side of one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainWriter {
    key: [u8; 32],
    context: ContextId,
    src: DeviceId,
    epoch: u64,
    next_nonce: u64,
    head: [u8; 32],
}

impl ChainWriter {
    /// A fresh chain (a new epoch starts one).
    pub fn new(context: ContextId, src: DeviceId, epoch: u64) -> ChainWriter {
        ChainWriter {
            key: chain_key(&context, &src, epoch),
            context,
            src,
            epoch,
            next_nonce: 0,
            head: CHAIN_START,
        }
    }

    /// The receipt for the next send.
    pub fn append(&mut self, dst: DeviceId, cost: u64) -> Receipt {
        let r = Receipt {
            context: self.context,
            src: self.src,
            dst,
            epoch: self.epoch,
            cost,
            nonce: self.next_nonce,
            prev: self.head,
        };
        self.head = r.id_under(&self.key);
        self.next_nonce += 1;
        r
    }

    /// A writer continuing a chain whose next nonce and head are known (after restore).
    pub fn resume(context: ContextId, src: DeviceId, epoch: u64, next_nonce: u64, head: [u8; 32]) -> ChainWriter {
        ChainWriter {
            next_nonce,
            head,
            ..ChainWriter::new(context, src, epoch)
        }
    }

    /// Next nonce and current head (the id of the last receipt, or [`CHAIN_START`]).
    pub fn position(&self) -> (u64, [u8; 32]) {
        (self.next_nonce, self.head)
    }

    /// What a seal over the current head signs, or `None` before the first receipt.
    pub fn seal_bytes(&self) -> Option<(u64, [u8; 32], Vec<u8>)> {
        let nonce = self.next_nonce.checked_sub(1)?;
        Some((
            nonce,
            self.head,
            Seal::signed_bytes(&self.context, &self.src, self.epoch, nonce, &self.head),
        ))
    }
}

/// Why a receipt or seal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReceiptError {
    /// A nonce was skipped (or the chain did not start at 0).
    Gap,
    /// A second, different receipt at a nonce already taken, or a `prev` that does not
    /// name the receipt before it.
    Fork,
    /// The sender is not a member device of the context (as reduced state knows it), or
    /// the seal's signature does not verify with that device's key.
    ForeignKey,
    /// A seal for a head this verifier has not seen.
    UnknownHead,
    /// The receipt belongs to another chain.
    WrongChain,
}

/// The verifying side of one (context, src, epoch) chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainVerifier {
    key: [u8; 32],
    context: ContextId,
    src: DeviceId,
    epoch: u64,
    /// Nonce of `ids[0]`: receipts before it are settled under a verified seal and
    /// forgotten (only the sealed head is kept), so memory stays bounded by what arrived
    /// since the last seal.
    base: u64,
    /// Receipt ids from `base` on, indexed by nonce - base (no gaps).
    ids: Vec<[u8; 32]>,
    /// Receipts up to this nonce are covered by a verified seal.
    sealed_through: Option<u64>,
}

impl ChainVerifier {
    /// An empty chain.
    pub fn new(context: ContextId, src: DeviceId, epoch: u64) -> ChainVerifier {
        ChainVerifier {
            key: chain_key(&context, &src, epoch),
            context,
            src,
            epoch,
            base: 0,
            ids: Vec::new(),
            sealed_through: None,
        }
    }

    /// Accepts the next receipt of the chain. A repeat of an accepted receipt is fine (and
    /// changes nothing); anything else out of line is refused.
    pub fn push(&mut self, r: &Receipt) -> Result<(), ReceiptError> {
        let id = r.id_under(&self.key);
        self.push_with_id(r, id)
    }

    /// [`ChainVerifier::push`] for a receipt whose id the caller computed under this
    /// chain's key (as [`ReceiptBatch::chain`] does), so it is not hashed twice.
    pub(crate) fn push_with_id(&mut self, r: &Receipt, id: [u8; 32]) -> Result<(), ReceiptError> {
        if r.context != self.context || r.src != self.src || r.epoch != self.epoch {
            return Err(ReceiptError::WrongChain);
        }
        if r.nonce < self.base {
            // Settled under a verified seal: a repeat changes nothing, and a different
            // receipt there cannot undo what the seal vouched for.
            return Ok(());
        }
        let known = usize::try_from(r.nonce - self.base).ok().and_then(|n| self.ids.get(n));
        if let Some(known) = known {
            return if *known == id { Ok(()) } else { Err(ReceiptError::Fork) };
        }
        if r.nonce != self.len() {
            return Err(ReceiptError::Gap);
        }
        if r.prev != *self.ids.last().unwrap_or(&CHAIN_START) {
            return Err(ReceiptError::Fork);
        }
        self.ids.push(id);
        Ok(())
    }

    /// Verifies a seal with the sender's key from `keys` and marks every receipt up to its
    /// head as authentic.
    pub fn seal(&mut self, s: &Seal, keys: &dyn KeyLookup) -> Result<(), ReceiptError> {
        self.check_head(s)?;
        let key = keys
            .device_key(&Namespace::Context(self.context), &self.src)
            .ok_or(ReceiptError::ForeignKey)?;
        let msg = Seal::signed_bytes(&s.context, &s.src, s.epoch, s.nonce, &s.head);
        if !crate::journal::schnorr_ok(&key, &msg, &s.sig) {
            return Err(ReceiptError::ForeignKey);
        }
        self.settle(s.nonce);
        Ok(())
    }

    fn check_head(&self, s: &Seal) -> Result<(), ReceiptError> {
        if s.context != self.context || s.src != self.src || s.epoch != self.epoch {
            return Err(ReceiptError::WrongChain);
        }
        let at = s
            .nonce
            .checked_sub(self.base)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| self.ids.get(n));
        if at != Some(&s.head) {
            return Err(ReceiptError::UnknownHead);
        }
        Ok(())
    }

    /// Marks the chain sealed through `nonce` and forgets the ids before it.
    fn settle(&mut self, nonce: u64) {
        self.sealed_through = Some(self.sealed_through.map_or(nonce, |t| t.max(nonce)));
        if nonce > self.base {
            let drop = usize::try_from(nonce - self.base)
                .unwrap_or(usize::MAX)
                .min(self.ids.len());
            self.ids.drain(..drop);
            self.base = nonce;
        }
    }

    /// [`ChainVerifier::seal`] for a seal whose signature the caller already checked
    /// with [`Seal::signed_by_sender`] against the same key lookup.
    pub(crate) fn seal_signed(&mut self, s: &Seal) -> Result<(), ReceiptError> {
        self.check_head(s)?;
        self.settle(s.nonce);
        Ok(())
    }

    /// Receipts accepted so far.
    pub fn len(&self) -> u64 {
        self.base + self.ids.len() as u64
    }

    /// Whether no receipt was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many receipts a verified seal covers.
    pub fn sealed(&self) -> u64 {
        self.sealed_through.map_or(0, |t| t + 1)
    }
}

/// A batch's receipts with their ids, and its seal.
pub type BatchChain = (Vec<(Receipt, [u8; 32])>, Seal);

/// A sealed stretch of one sender's chain: receipts `first ..` (each a receiver index and cost),
/// the first naming `prev`, and the seal's signature over the last one. Sent to every
/// device it names, which verifies it against its own view of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBatch {
    /// Context.
    pub context: ContextId,
    /// Sender.
    pub src: DeviceId,
    /// Epoch.
    pub epoch: u64,
    /// Nonce of the first receipt.
    pub first: u64,
    /// Id of the receipt before the first ([`CHAIN_START`] for nonce 0).
    pub prev: [u8; 32],
    /// The receiving devices the batch names, each once.
    pub dsts: Vec<DeviceId>,
    /// Receiver (an index into `dsts`) and cost of each receipt, in nonce order (at
    /// least one). Indices keep a batch of a thousand receipts to a few kilobytes.
    pub entries: Vec<(u16, u64)>,
    /// Seal signature over the last receipt.
    pub sig: Sig64,
}

impl ReceiptBatch {
    /// Packs receipts given as (receiver, cost) into `dsts` and indexed `entries`.
    pub fn pack(receipts: &[(DeviceId, u64)]) -> (Vec<DeviceId>, Vec<(u16, u64)>) {
        let mut dsts: Vec<DeviceId> = Vec::new();
        let mut entries = Vec::with_capacity(receipts.len());
        for (d, cost) in receipts {
            let i = match dsts.iter().position(|x| x == d) {
                Some(i) => i,
                None => {
                    dsts.push(*d);
                    dsts.len() - 1
                }
            };
            entries.push((i as u16, *cost));
        }
        (dsts, entries)
    }

    /// The receipts with their ids, rebuilt from `prev` (ids are recomputed, never taken
    /// on trust), and the seal over the last one. `None` for an empty batch or an entry
    /// naming a receiver index outside `dsts`.
    pub fn chain(&self) -> Option<BatchChain> {
        let key = chain_key(&self.context, &self.src, self.epoch);
        let mut prev = self.prev;
        let mut out = Vec::with_capacity(self.entries.len());
        for (i, (dst, cost)) in self.entries.iter().enumerate() {
            let r = Receipt {
                context: self.context,
                src: self.src,
                dst: *self.dsts.get(usize::from(*dst))?,
                epoch: self.epoch,
                cost: *cost,
                nonce: self.first.saturating_add(i as u64),
                prev,
            };
            prev = r.id_under(&key);
            out.push((r, prev));
        }
        let seal = out.last().map(|(last, _)| Seal {
            context: self.context,
            src: self.src,
            epoch: self.epoch,
            nonce: last.nonce,
            head: prev,
            sig: self.sig,
        })?;
        Some((out, seal))
    }
}

impl Seal {
    /// Checks the signature with the sender's key from `keys` alone (before any receipt
    /// it covers touches a verifier's state).
    pub fn signed_by_sender(&self, keys: &dyn KeyLookup) -> bool {
        let Some(key) = keys.device_key(&Namespace::Context(self.context), &self.src) else {
            return false;
        };
        let msg = Seal::signed_bytes(&self.context, &self.src, self.epoch, self.nonce, &self.head);
        crate::journal::schnorr_ok(&key, &msg, &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{DeviceKeys, DeviceSecret};
    use crate::rng::PeerRng;
    use std::collections::BTreeMap;

    struct Members(BTreeMap<DeviceId, [u8; 32]>);
    impl KeyLookup for Members {
        fn group_key(&self, _: &Namespace) -> Option<[u8; 32]> {
            None
        }
        fn device_key(&self, _: &Namespace, d: &DeviceId) -> Option<[u8; 32]> {
            self.0.get(d).copied()
        }
    }

    fn keys(i: u8) -> DeviceKeys {
        DeviceKeys::derive(&DeviceSecret::from_bytes([i; 32]), &mut PeerRng::from_seed([i; 32]))
    }

    fn setup() -> (DeviceKeys, Members, ChainWriter, ChainVerifier, PeerRng) {
        let k = keys(1);
        let m = Members([(k.id, k.cert.signing)].into_iter().collect());
        let ctx = ContextId([7; 32]);
        let w = ChainWriter::new(ctx, k.id, 3);
        let v = ChainVerifier::new(ctx, k.id, 3);
        (k, m, w, v, PeerRng::from_seed([9; 32]))
    }

    fn seal(k: &DeviceKeys, w: &ChainWriter, rng: &mut PeerRng) -> Seal {
        let (nonce, head, msg) = w.seal_bytes().unwrap();
        Seal {
            context: w.context,
            src: w.src,
            epoch: w.epoch,
            nonce,
            head,
            sig: Sig64(k.sign(rng, &msg)),
        }
    }

    #[test]
    fn ids_cover_every_field() {
        let r = Receipt {
            context: ContextId([0xff; 32]),
            src: DeviceId([0xff; 32]),
            dst: DeviceId([0xff; 32]),
            epoch: u64::MAX,
            cost: u64::MAX,
            nonce: u64::MAX,
            prev: [0xff; 32],
        };
        let mut other = r.clone();
        other.cost -= 1;
        assert_ne!(r.id(), other.id());
        // Every field counts, the chain's own fields through the key.
        let mut other = r.clone();
        other.epoch -= 1;
        assert_ne!(r.id(), other.id());
        let mut other = r.clone();
        other.src = DeviceId([0xfe; 32]);
        assert_ne!(r.id(), other.id());
    }

    #[test]
    fn one_seal_vouches_for_the_whole_chain() {
        let (k, m, mut w, mut v, mut rng) = setup();
        let dst = DeviceId([2; 32]);
        for _ in 0..5 {
            let r = w.append(dst, 4);
            v.push(&r).unwrap();
            v.push(&r).unwrap(); // a duplicate changes nothing
        }
        assert_eq!(v.sealed(), 0);
        v.seal(&seal(&k, &w, &mut rng), &m).unwrap();
        assert_eq!((v.len(), v.sealed()), (5, 5));
    }

    #[test]
    fn a_verified_seal_settles_the_chain_before_it() {
        let (k, m, mut w, mut v, mut rng) = setup();
        let dst = DeviceId([2; 32]);
        let old: Vec<Receipt> = (0..100).map(|_| w.append(dst, 1)).collect();
        for r in &old {
            v.push(r).unwrap();
        }
        v.seal(&seal(&k, &w, &mut rng), &m).unwrap();
        // Only the sealed head is kept; the chain goes on from it.
        assert_eq!(v.ids.len(), 1);
        assert_eq!((v.len(), v.sealed()), (100, 100));
        let next = w.append(dst, 1);
        v.push(&next).unwrap();
        // Settled receipts are past dispute: repeats (of anything) change nothing.
        v.push(&old[3]).unwrap();
        let mut other = old[3].clone();
        other.cost = 9;
        v.push(&other).unwrap();
        assert_eq!(v.len(), 101);
        // Unsettled ones are still checked.
        let mut fork = next.clone();
        fork.cost = 9;
        assert_eq!(v.push(&fork), Err(ReceiptError::Fork));
        // An older seal is no longer checkable against a forgotten head.
        let mut stale = seal(&k, &w, &mut rng);
        stale.nonce = 10;
        assert_eq!(v.seal(&stale, &m), Err(ReceiptError::UnknownHead));
        v.seal(&seal(&k, &w, &mut rng), &m).unwrap();
        assert_eq!((v.ids.len(), v.sealed()), (1, 101));
    }

    #[test]
    fn gaps_forks_foreign_keys_and_unknown_heads_are_refused() {
        let (k, m, mut w, mut v, mut rng) = setup();
        let dst = DeviceId([2; 32]);
        let r0 = w.append(dst, 1);
        let r1 = w.append(dst, 1);
        let r2 = w.append(dst, 1);
        assert_eq!(v.push(&r1), Err(ReceiptError::Gap));
        v.push(&r0).unwrap();
        // Same nonce, different content.
        let mut other = r0.clone();
        other.cost = 99;
        assert_eq!(v.push(&other), Err(ReceiptError::Fork));
        // Right nonce, wrong predecessor.
        let mut bent = r1.clone();
        bent.prev = [5; 32];
        assert_eq!(v.push(&bent), Err(ReceiptError::Fork));
        assert_eq!(v.push(&r2), Err(ReceiptError::Gap));
        v.push(&r1).unwrap();
        v.push(&r2).unwrap();
        // A seal signed by another device's key, even one claiming to be the sender.
        let stranger = keys(3);
        let mut forged = seal(&k, &w, &mut rng);
        let (_, _, msg) = w.seal_bytes().unwrap();
        forged.sig = Sig64(stranger.sign(&mut rng, &msg));
        assert_eq!(v.seal(&forged, &m), Err(ReceiptError::ForeignKey));
        // A sender reduced state does not know.
        let nobody = Members(BTreeMap::new());
        assert_eq!(v.seal(&seal(&k, &w, &mut rng), &nobody), Err(ReceiptError::ForeignKey));
        // A head this verifier never saw.
        let mut ahead = w.clone();
        ahead.append(dst, 1);
        assert_eq!(v.seal(&seal(&k, &ahead, &mut rng), &m), Err(ReceiptError::UnknownHead));
        // Another epoch's chain.
        let mut later = r0.clone();
        later.epoch = 4;
        assert_eq!(v.push(&later), Err(ReceiptError::WrongChain));
        assert_eq!(v.sealed(), 0);
        v.seal(&seal(&k, &w, &mut rng), &m).unwrap();
        assert_eq!(v.sealed(), 3);
    }
}
