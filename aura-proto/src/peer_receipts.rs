//! Receipts in [`Peer`]: every charged send appends to this device's chain of its
//! (context, epoch); stretches of the chain are sealed (one signature each), persisted,
//! and sent to every device they name, which verifies chain and seal against its own
//! reduced view of the context and acknowledges.
//!
//! A stretch is sealed when it reaches `SEAL_EVERY` receipts, when the chain has been
//! idle for `SEAL_IDLE`, and before every flow reservation is persisted, so receipts
//! not yet durable never cover more than one reservation window: after a crash the chain
//! goes on from the last durable seal, and at most that window's sends lack a receipt.

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
    /// A sealed stretch of the sender's chain.
    Batch(ReceiptBatch),
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

/// This device's chain in one (context, epoch).
#[derive(Debug)]
pub(super) struct OutChain {
    writer: ChainWriter,
    /// Receipts not yet in a batch.
    pending: Vec<(DeviceId, u64)>,
    /// Durable batches, in order.
    batches: Vec<ReceiptBatch>,
    /// A batch is being persisted.
    sealing: bool,
    last_append: Instant,
    /// Per receiving device: first nonce it has not acknowledged.
    acked: BTreeMap<DeviceId, u64>,
}

impl OutChain {
    fn new(writer: ChainWriter, now: Instant) -> OutChain {
        OutChain {
            writer,
            pending: Vec::new(),
            batches: Vec::new(),
            sealing: false,
            last_append: now,
            acked: BTreeMap::new(),
        }
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
        let entries = core::mem::take(&mut ch.pending);
        let (next, _) = ch.writer.position();
        let first = next - entries.len() as u64;
        let prev = match ch.batches.last() {
            Some(b) => b.seal().map_or(CHAIN_START, |s| s.head),
            None if first == 0 => CHAIN_START,
            // Batches of this chain are all in memory (restored from their records).
            None => return,
        };
        let Some((_, _, msg)) = ch.writer.seal_bytes() else {
            return;
        };
        ch.sealing = true;
        let sig = Sig64(self.keys.sign(&mut self.rng, &msg));
        let batch = ReceiptBatch {
            context,
            src: self.keys.id,
            epoch,
            first,
            prev,
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
            if let Some(s) = batch.seal() {
                ch.writer = ChainWriter::resume(batch.context, me, batch.epoch, s.nonce + 1, s.head);
            }
        }
        let dsts: BTreeSet<DeviceId> = batch.entries.iter().map(|(d, _)| *d).collect();
        ch.batches.push(batch.clone());
        if live {
            for d in dsts {
                self.send_accounting(batch.context, d, &Accounting::Batch(batch.clone()));
            }
            self.arm_acct_tick(now.saturating_add(RESEND));
        }
    }

    fn send_accounting(&mut self, context: ContextId, peer: DeviceId, msg: &Accounting) {
        // Only over a channel that is up: accounting never opens one by itself.
        if self.active.contains_key(&(context, peer)) {
            let _ = self.send_or_queue_in(context, peer, Queued::Accounting(wire::encode(msg)));
        }
    }

    /// A `Frame::Accounting` on the channel of (context, from).
    pub(super) fn on_accounting(&mut self, context: ContextId, from: DeviceId, data: &[u8]) {
        let mut scratch = core::mem::take(&mut self.scratch);
        let msg: Result<Accounting, _> = wire::strict_decode(data, &mut scratch);
        self.scratch = scratch;
        match msg {
            Err(e) => self.count_decode(e),
            Ok(Accounting::Batch(b)) => self.on_batch(context, from, b),
            Ok(Accounting::Ack { epoch, through }) => {
                if let Some(ch) = self.out_chains.get_mut(&(context, epoch)) {
                    let a = ch.acked.entry(from).or_default();
                    *a = (*a).max(through.saturating_add(1));
                }
            }
            Ok(Accounting::Need { epoch, from: nonce }) => {
                let batches: Vec<ReceiptBatch> = self
                    .out_chains
                    .get(&(context, epoch))
                    .map(|ch| {
                        ch.batches
                            .iter()
                            .filter(|b| b.first + b.entries.len() as u64 > nonce)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                for b in batches {
                    self.send_accounting(context, from, &Accounting::Batch(b));
                }
            }
        }
    }

    fn on_batch(&mut self, context: ContextId, from: DeviceId, b: ReceiptBatch) {
        let Some(view) = self.contexts.get(&context).map(|s| s.view.clone()) else {
            return self.receipt_rejected(ReceiptError::WrongChain);
        };
        if b.context != context || b.src != from || b.entries.is_empty() {
            return self.receipt_rejected(ReceiptError::WrongChain);
        }
        // The signature first: nothing unsigned reaches the verifier's state.
        if !b.signed_by_sender(&view) {
            return self.receipt_rejected(ReceiptError::ForeignKey);
        }
        let v = self
            .in_chains
            .entry((context, from, b.epoch))
            .or_insert_with(|| ChainVerifier::new(context, from, b.epoch));
        for r in b.receipts() {
            if let Err(e) = v.push(&r) {
                let missing = v.len();
                self.receipt_rejected(e);
                if e == ReceiptError::Gap {
                    self.send_accounting(
                        context,
                        from,
                        &Accounting::Need {
                            epoch: b.epoch,
                            from: missing,
                        },
                    );
                }
                return;
            }
        }
        let seal = b.seal().expect("non-empty batch");
        if let Err(e) = v.seal(&seal, &view) {
            return self.receipt_rejected(e);
        }
        let through = v.sealed().saturating_sub(1);
        self.send_accounting(
            context,
            from,
            &Accounting::Ack {
                epoch: b.epoch,
                through,
            },
        );
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
            let ch = &self.out_chains[&(ctx, epoch)];
            if !ch.pending.is_empty() && !ch.sealing {
                if ch.last_append.saturating_add(SEAL_IDLE) <= now {
                    self.seal_chain(ctx, epoch);
                } else {
                    again = true;
                }
            }
            let ch = &self.out_chains[&(ctx, epoch)];
            let mut resend: Vec<(DeviceId, ReceiptBatch)> = Vec::new();
            for b in &ch.batches {
                let last = b.first + b.entries.len() as u64;
                let dsts: BTreeSet<DeviceId> = b.entries.iter().map(|(d, _)| *d).collect();
                for d in dsts {
                    if ch.acked.get(&d).copied().unwrap_or(0) < last {
                        resend.push((d, b.clone()));
                    }
                }
            }
            again |= !resend.is_empty();
            for (d, b) in resend {
                self.send_accounting(ctx, d, &Accounting::Batch(b));
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
