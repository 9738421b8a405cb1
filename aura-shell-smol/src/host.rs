//! [`Host`]: a `Peer` bound to a data directory and the real clock.
//!
//! The host owns no protocol state. It converts the OS clock into `Now`, writes and fsyncs
//! every `Persist` before feeding back `PersistDone`, and hands transmits and events to
//! whoever drives it (the daemon loop or a one-shot CLI command).

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aura_proto::{CommandError, Config, Durable, Event, Input, Now, Output, Peer};

use crate::store::{os_random, Store, StoreError};

/// The fewest redundant records that make compaction at open worth its rewrite.
const COMPACT_AT_LEAST: usize = 256;

/// Work left for the caller after draining.
// Moved once from the drain to the loop; boxing buys nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Effect {
    /// Send these bytes.
    Transmit {
        /// Destination, as the core wrote it.
        to: String,
        /// Datagram.
        bytes: Vec<u8>,
    },
    /// Tell the user.
    Event(Event),
}

/// A peer with durable storage.
pub struct Host {
    /// The protocol engine.
    pub peer: Peer,
    /// The data directory.
    pub store: Store,
    /// The egress audit ledger (`audit.log`); none for a host whose transmits are never
    /// sent (one-shot commands), so the ledger lists only datagrams that left.
    ledger: Option<crate::audit::Ledger>,
    origin: std::time::Instant,
}

impl Host {
    /// Opens (and locks) `dir` and restores the peer from its records with a fresh seed,
    /// to send what it transmits (the egress ledger records every datagram).
    pub fn open(dir: &Path, cfg: Config) -> Result<Host, StoreError> {
        Self::open_with(dir, cfg, true)
    }

    /// [`Host::open`] for a caller that sends nothing the peer transmits (a one-shot
    /// command with no peer running): no ledger lines for datagrams that never left.
    pub fn open_offline(dir: &Path, cfg: Config) -> Result<Host, StoreError> {
        Self::open_with(dir, cfg, false)
    }

    fn open_with(dir: &Path, cfg: Config, sends: bool) -> Result<Host, StoreError> {
        let mut store = Store::open(dir)?;
        if let Some(reason) = store.recovery.reason {
            tracing::warn!(
                "records.log: cut {} bytes at byte {} ({reason}); every record before it is intact",
                store.recovery.cut_bytes,
                store.recovery.cut_at
            );
        }
        let origin = std::time::Instant::now();
        let durable = Durable {
            secret: store.secret.clone(),
            records: store.records.clone(),
        };
        let now = Self::now_from(origin);
        let peer = Peer::restore(cfg, durable, os_random(), now);
        // Compacting costs a rewrite of the log: only when it drops a good share of it,
        // or when a share a refresh replaced is still on disk. The peer restored from the
        // whole log is the one a restore from the compacted log would give.
        let worth = (store.records.len() / 4).max(COMPACT_AT_LEAST);
        match store.compact(worth, Some(&peer.live_keys())) {
            Ok(Some((before, after))) => tracing::info!("records.log compacted: {before} -> {after} records"),
            Ok(None) => {}
            // Compaction is an economy: a log that could not be rewritten still serves.
            Err(e @ crate::store::CompactError::NotDone(_)) => tracing::warn!("{e}"),
            Err(e) => return Err(e.into()),
        }
        tracing::debug!(records = store.records.len(), device = %peer.id().short(), "restored");
        let ledger = if sends {
            let l = crate::audit::Ledger::open(dir, store.audit_sealer()).map_err(|source| StoreError::Io {
                context: format!("opening {}", dir.join(crate::audit::FILE).display()),
                source,
            })?;
            Some(l)
        } else {
            None
        };
        Ok(Host {
            peer,
            store,
            ledger,
            origin,
        })
    }

    fn now_from(origin: std::time::Instant) -> Now {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now::from_parts(origin.elapsed().as_nanos() as u64, unix_ms)
    }

    /// Compacts the log now, as a restart would (after a share refresh: the replaced
    /// share goes from the disk). A failure that leaves the old log in place is logged;
    /// one after the new log replaced it is returned (the store cannot append any more).
    pub fn compact_now(&mut self) -> Result<(), StoreError> {
        let keys = self.peer.live_keys();
        let done = self.store.reread().and_then(|()| {
            let worth = (self.store.records.len() / 4).max(COMPACT_AT_LEAST);
            self.store.compact(worth, Some(&keys)).map_err(StoreError::from)
        });
        // The records stay on disk; memory need not hold them.
        self.store.records = Vec::new();
        match done {
            Ok(Some((before, after))) => tracing::info!("records.log compacted: {before} -> {after} records"),
            Ok(None) => {}
            Err(e @ StoreError::Compact(crate::store::CompactError::Broken(_))) => return Err(e),
            Err(e) => tracing::warn!("records.log not compacted: {e}"),
        }
        Ok(())
    }

    /// The current time as the core sees it.
    pub fn now(&self) -> Now {
        Self::now_from(self.origin)
    }

    /// The OS instant of a core deadline.
    pub fn deadline(&self, t: aura_proto::Instant) -> std::time::Instant {
        self.origin + Duration::from_nanos(t.as_nanos())
    }

    /// Feeds one input.
    pub fn input(&mut self, input: Input) -> Result<(), CommandError> {
        let now = self.now();
        self.peer.handle_input(now, input)
    }

    /// Drains every output. Records are written and fsynced, then acknowledged, before
    /// draining goes on; transmits and events are appended to `out` in order.
    pub fn drain(&mut self, out: &mut Vec<Effect>) -> io::Result<()> {
        while let Some(o) = self.peer.poll_output() {
            match o {
                Output::Persist { ticket, record } => {
                    self.store.append(&record)?;
                    let now = self.now();
                    // PersistDone never fails.
                    let _ = self.peer.handle_input(now, Input::PersistDone(ticket));
                }
                // The ledger line is written before its datagram leaves (flushed below).
                Output::Egress(e) => {
                    if let Some(l) = self.ledger.as_mut() {
                        l.append(&e)?;
                    }
                }
                Output::Transmit { to, bytes } => out.push(Effect::Transmit { to, bytes }),
                Output::Event(e) => out.push(Effect::Event(e)),
            }
        }
        // Before the caller sends any of the transmits.
        self.ledger.as_mut().map_or(Ok(()), |l| l.flush())
    }
}
