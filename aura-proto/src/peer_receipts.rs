//! Receipts in [`Peer`]: every charged send appends to this device's chain of its
//! (context, epoch); stretches of the chain are sealed (one signature each), persisted,
//! and sent to every device they name, which verifies chain and seal against its own
//! reduced view of the context and acknowledges.
//!
//! A stretch is sealed when it reaches `SEAL_EVERY` receipts or when the chain has been
//! idle for `SEAL_IDLE`. After a crash the chain goes on from the last durable seal: the
//! sends since then (at most `SEAL_EVERY`, or a second's worth) lack a receipt. Their
//! budget is safe regardless: it was reserved durably before they left and counts as
//! spent on restore. (Sealing before every reservation would bound the gap tighter, at a
//! signature per reservation window: 16 one-KiB sends.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Peer, Pending, Queued};
use crate::journal::{ContextId, Sig64};
use crate::keys::DeviceId;
use crate::metrics::DropReason;
use crate::receipt::{ChainVerifier, ChainWriter, ReceiptBatch, ReceiptError, CHAIN_START};
use crate::record::Record;
use crate::time::Instant;
use crate::wire;

/// Receipts per seal at most (one Schnorr signature amortized over this many sends).
pub(super) const SEAL_EVERY: usize = 1024;
/// A chain quiet for this long is sealed.
const SEAL_IDLE: Duration = Duration::from_secs(1);
/// Unacknowledged batches are sent again this often.
const RESEND: Duration = Duration::from_secs(2);

/// Accounting messages (inside `Frame::Accounting` on a context channel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Accounting {
    /// A sealed stretch of the sender's chain (boxed: encoded like the batch itself).
    Batch(Box<ReceiptBatch>),
    /// The receiver verified the sender's chain of `epoch` through nonce `through`.
    Ack {
        /// Epoch.
        epoch: u64,
        /// Last verified nonce.
        through: u64,
    },
    /// The receiver is missing the sender's receipts of `epoch` from nonce `from`.
    Need {
        /// Epoch.
        epoch: u64,
        /// First missing nonce.
        from: u64,
    },
}

/// A durable batch, kept to send again until every device it names acknowledged it.
#[derive(Debug)]
struct Sent {
    /// Nonce after its last receipt.
    end: u64,
    /// Devices it names.
    dsts: BTreeSet<DeviceId>,
    /// `Accounting::Batch` encoded.
    bytes: Vec<u8>,
}

/// This device's chain in one (context, epoch).
#[derive(Debug)]
pub(super) struct OutChain {
    writer: ChainWriter,
    /// Receipts not yet in a batch.
    pending: Vec<(DeviceId, u64)>,
    /// Nonce and head where the last batch ended (where the next one starts).
    sealed: (u64, [u8; 32]),
    /// Durable batches, in order.
    batches: Vec<Sent>,
    /// Batches before this index are acknowledged by every device they name.
    settled: usize,
    /// A batch is being persisted.
    sealing: bool,
    last_append: Instant,
    /// Per receiving device: first nonce it has not acknowledged.
    acked: BTreeMap<DeviceId, u64>,
    /// Per receiving device: when a `Need` was last served (one per `RESEND`, so a
    /// member cannot make us resend the chain at will).
    need_served: BTreeMap<DeviceId, Instant>,
}

impl OutChain {
    fn new(writer: ChainWriter, now: Instant) -> OutChain {
        OutChain {
            writer,
            pending: Vec::new(),
            sealed: (0, CHAIN_START),
            batches: Vec::new(),
            settled: 0,
            sealing: false,
            last_append: now,
            acked: BTreeMap::new(),
            need_served: BTreeMap::new(),
        }
    }

    /// Forgets the batches every receiver acknowledged.
    fn settle(&mut self) {
        while let Some(b) = self.batches.get(self.settled) {
            if b.dsts.iter().all(|d| self.acked.get(d).copied().unwrap_or(0) >= b.end) {
                self.settled += 1;
            } else {
                break;
            }
        }
        self.batches.drain(..self.settled);
        self.settled = 0;
    }
}

impl Peer {
    /// `Effect::Receipt`: append to this device's chain.
    pub(super) fn append_receipt(&mut self, context: ContextId, peer: DeviceId, epoch: u64, cost: u64) {
        let (me, now) = (self.keys.id, self.now.mono);
        let ch = self
            .out_chains
            .entry((context, epoch))
            .or_insert_with(|| OutChain::new(ChainWriter::new(context, me, epoch), now));
        ch.writer.append(peer, cost);
        ch.pending.push((peer, cost));
        ch.last_append = now;
        if ch.pending.len() >= SEAL_EVERY {
            self.seal_chain(context, epoch);
        }
        self.arm_acct_tick(now.saturating_add(SEAL_IDLE));
    }

    /// Seals the pending receipts of (context, epoch) into a batch and persists it.
    pub(super) fn seal_chain(&mut self, context: ContextId, epoch: u64) {
        let Some(ch) = self.out_chains.get_mut(&(context, epoch)) else {
            return;
        };
        if ch.pending.is_empty() {
            return;
        }
        let pending = core::mem::take(&mut ch.pending);
        let (dsts, entries) = ReceiptBatch::pack(&pending);
        let (first, prev) = ch.sealed;
        let Some((last, head, msg)) = ch.writer.seal_bytes() else {
            return;
        };
        debug_assert_eq!(last + 1 - first, entries.len() as u64);
        ch.sealed = (last + 1, head);
        ch.sealing = true;
        let sig = Sig64(self.keys.sign(&mut self.rng, &msg));
        let batch = ReceiptBatch {
            context,
            src: self.keys.id,
            epoch,
            first,
            prev,
            dsts,
            entries,
            sig,
        };
        self.persist(
            Record::Receipts(batch.clone()),
            Pending::ReceiptsDurable(Box::new(batch)),
        );
    }

    /// A batch is durable (or restored): keep it, and (live) send it to its receivers.
    pub(super) fn batch_durable(&mut self, batch: ReceiptBatch, live: bool) {
        let (me, now) = (self.keys.id, self.now.mono);
        if batch.src != me {
            return;
        }
        let key = (batch.context, batch.epoch);
        let ch = self
            .out_chains
            .entry(key)
            .or_insert_with(|| OutChain::new(ChainWriter::new(batch.context, me, batch.epoch), now));
        ch.sealing = false;
        if !live {
            // Restore: the chain goes on after this batch.
            if let Some((_, s)) = batch.chain() {
                ch.writer = ChainWriter::resume(batch.context, me, batch.epoch, s.nonce + 1, s.head);
                ch.sealed = (s.nonce + 1, s.head);
            }
        }
        let end = batch.first + batch.entries.len() as u64;
        let dsts: BTreeSet<DeviceId> = batch.dsts.iter().copied().collect();
        let context = batch.context;
        let bytes = wire::encode(&Accounting::Batch(Box::new(batch)));
        if live {
            for d in &dsts {
                self.send_accounting_bytes(context, *d, bytes.clone());
            }
            self.arm_acct_tick(now.saturating_add(RESEND));
        }
        let ch = self.out_chains.get_mut(&key).expect("inserted above");
        ch.batches.push(Sent { end, dsts, bytes });
        if !live {
            // Whether it was acknowledged before the restart is not recorded: offer again.
            self.arm_acct_tick(now.saturating_add(RESEND));
        }
    }

    fn send_accounting(&mut self, context: ContextId, peer: DeviceId, msg: &Accounting) {
        self.send_accounting_bytes(context, peer, wire::encode(msg));
    }

    fn send_accounting_bytes(&mut self, context: ContextId, peer: DeviceId, bytes: Vec<u8>) {
        // Only over a channel that is up: accounting never opens one by itself.
        if self.active.contains_key(&(context, peer)) {
            let _ = self.send_or_queue_in(context, peer, Queued::Accounting(bytes));
        }
    }

    /// A `Frame::Accounting` on the channel of (context, from).
    pub(super) fn on_accounting(&mut self, context: ContextId, from: DeviceId, data: &[u8]) {
        let Some(msg) = self.decode_msg::<Accounting>(data) else {
            return;
        };
        match msg {
            Accounting::Batch(b) => self.on_batch(context, from, *b),
            Accounting::Ack { epoch, through } => {
                if let Some(ch) = self.out_chains.get_mut(&(context, epoch)) {
                    let a = ch.acked.entry(from).or_default();
                    *a = (*a).max(through.saturating_add(1));
                    ch.settle();
                }
            }
            Accounting::Need { epoch, from: nonce } => {
                let now = self.now.mono;
                let Some(ch) = self.out_chains.get_mut(&(context, epoch)) else {
                    return;
                };
                if ch
                    .need_served
                    .get(&from)
                    .is_some_and(|t| t.saturating_add(RESEND) > now)
                {
                    return self.metrics.drop(DropReason::Overloaded);
                }
                ch.need_served.insert(from, now);
                let batches: Vec<Vec<u8>> = self
                    .out_chains
                    .get(&(context, epoch))
                    .map(|ch| {
                        ch.batches
                            .iter()
                            .filter(|b| b.end > nonce && b.dsts.contains(&from))
                            .map(|b| b.bytes.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                for b in batches {
                    self.send_accounting_bytes(context, from, b);
                }
            }
        }
    }

    fn on_batch(&mut self, context: ContextId, from: DeviceId, b: ReceiptBatch) {
        let Some(view) = self.contexts.get(&context).map(|s| s.view.clone()) else {
            return self.receipt_rejected(ReceiptError::WrongChain);
        };
        // Only the current epoch, only batches naming us, only charged receipts: what a
        // peer can make us keep stays bounded by what it may spend.
        let me = self.keys.id;
        if b.context != context
            || b.src != from
            || b.epoch != view.epoch
            || !b.dsts.contains(&me)
            || b.entries.is_empty()
            || b.entries.iter().any(|(_, cost)| *cost == 0)
        {
            return self.receipt_rejected(ReceiptError::WrongChain);
        }
        let epoch = b.epoch;
        let Some((receipts, seal)) = b.chain() else {
            return self.receipt_rejected(ReceiptError::WrongChain);
        };
        // The signature first: nothing unsigned reaches the verifier's state.
        if !seal.signed_by_sender(&view) {
            return self.receipt_rejected(ReceiptError::ForeignKey);
        }
        let v = self
            .in_chains
            .entry((context, from, epoch))
            .or_insert_with(|| ChainVerifier::new(context, from, epoch));
        for (r, id) in &receipts {
            if let Err(e) = v.push_with_id(r, *id) {
                let missing = v.len();
                self.receipt_rejected(e);
                if e == ReceiptError::Gap {
                    self.send_accounting(context, from, &Accounting::Need { epoch, from: missing });
                }
                return;
            }
        }
        if let Err(e) = v.seal_signed(&seal) {
            return self.receipt_rejected(e);
        }
        let through = v.sealed().saturating_sub(1);
        self.send_accounting(context, from, &Accounting::Ack { epoch, through });
    }

    fn receipt_rejected(&mut self, e: ReceiptError) {
        self.metrics.drop(DropReason::BadReceipt);
        *self.metrics.receipt_rejects.entry(format!("{e:?}")).or_default() += 1;
    }

    fn arm_acct_tick(&mut self, at: Instant) {
        if self.acct_tick.is_none_or(|t| t > at) {
            self.acct_tick = Some(at);
        }
    }

    pub(super) fn acct_deadline(&self) -> Option<Instant> {
        self.acct_tick
    }

    /// Seals idle chains and sends unacknowledged batches again.
    pub(super) fn acct_timeout(&mut self) {
        let now = self.now.mono;
        if self.acct_tick.is_none_or(|t| t > now) {
            return;
        }
        self.acct_tick = None;
        let keys: Vec<(ContextId, u64)> = self.out_chains.keys().copied().collect();
        let mut again = false;
        for (ctx, epoch) in keys {
            // Chains of a past epoch are done: their receivers moved on too.
            if self.contexts.get(&ctx).is_none_or(|s| s.view.epoch != epoch) {
                continue;
            }
            let ch = &self.out_chains[&(ctx, epoch)];
            if !ch.pending.is_empty() && !ch.sealing {
                if ch.last_append.saturating_add(SEAL_IDLE) <= now {
                    self.seal_chain(ctx, epoch);
                } else {
                    again = true;
                }
            }
            let ch = &self.out_chains[&(ctx, epoch)];
            let mut resend: Vec<(DeviceId, Vec<u8>)> = Vec::new();
            for b in &ch.batches[ch.settled..] {
                for d in &b.dsts {
                    if ch.acked.get(d).copied().unwrap_or(0) < b.end {
                        resend.push((*d, b.bytes.clone()));
                    }
                }
            }
            again |= !resend.is_empty();
            for (d, b) in resend {
                self.send_accounting_bytes(ctx, d, b);
            }
        }
        if again {
            self.arm_acct_tick(now.saturating_add(RESEND));
        }
    }

    /// How much of `src`'s receipt chain in `context` (current epoch) this device has
    /// verified: (receipts accepted, receipts covered by a verified seal).
    pub fn receipts_from(&self, context: ContextId, src: DeviceId) -> Option<(u64, u64)> {
        let epoch = self.contexts.get(&context)?.view.epoch;
        let v = self.in_chains.get(&(context, src, epoch))?;
        Some((v.len(), v.sealed()))
    }
}
