//! The egress audit ledger: one line per datagram that left this device.
//!
//! `DIR/audit.log` holds JSON lines built from the core's `Output::Egress` records: time,
//! peer, address, scope (context), epoch, kind, size bucket, flow cost and leakage
//! charged. Never content. A line is appended (and flushed to the OS) before its datagram
//! is handed to the socket, so the ledger survives a process crash; a power loss can
//! lose the lines of the last moments (the log is not fsynced per datagram).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use aura_proto::guard::Egress;
use aura_proto::journal::ContextId;
use serde::{Deserialize, Serialize};

/// File name inside the data directory.
pub const FILE: &str = "audit.log";

/// One ledger line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Wall-clock time of the send, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Receiving device (hex), when known.
    pub peer: Option<String>,
    /// Destination address.
    pub addr: String,
    /// `own` between this person's devices, else the context id (hex).
    pub context: String,
    /// Context epoch.
    pub epoch: u64,
    /// `handshake`, `control`, `proto` or `app`.
    pub kind: String,
    /// Padded size bucket in bytes.
    pub bucket: usize,
    /// Flow units charged.
    pub cost: u64,
    /// Leakage charged: external, neighbor, in-group.
    pub leakage: [u64; 3],
}

impl Entry {
    /// The ledger line of an egress record.
    pub fn of(e: &Egress) -> Entry {
        Entry {
            unix_ms: e.unix_ms,
            peer: e.peer.map(|p| p.to_hex()),
            addr: e.addr.clone(),
            context: if e.context == ContextId::OWN {
                "own".into()
            } else {
                e.context.to_hex()
            },
            epoch: e.epoch,
            kind: e.kind.name().into(),
            bucket: e.bucket,
            cost: e.cost,
            leakage: e.leakage,
        }
    }
}

/// The ledger, open for appending. Lines gather in memory until [`Ledger::flush`], which
/// the host calls before it hands any datagram over, so a line still reaches the file
/// before its datagram leaves (with one `write` per batch instead of one per datagram).
pub struct Ledger {
    file: File,
    pending: Vec<u8>,
}

impl Ledger {
    /// Opens (creating) `DIR/audit.log` for appending.
    pub fn open(dir: &Path) -> io::Result<Ledger> {
        use std::os::unix::fs::OpenOptionsExt;
        // Metadata only, but whom this device talks to and when is nobody else's business.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path(dir))?;
        Ok(Ledger {
            file,
            pending: Vec::new(),
        })
    }

    /// Adds one record (written by the next [`Ledger::flush`]).
    pub fn append(&mut self, e: &Egress) -> io::Result<()> {
        serde_json::to_writer(&mut self.pending, &Entry::of(e)).map_err(io::Error::other)?;
        self.pending.push(b'\n');
        Ok(())
    }

    /// Writes the lines added since the last flush (whole lines, one `write`).
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the ledger, keeping entries at or after `since_unix_ms`. A torn last line (a
/// crash mid-write) is skipped and reported in the second value.
pub fn read(dir: &Path, since_unix_ms: u64) -> io::Result<(Vec<Entry>, usize)> {
    let f = match File::open(path(dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in BufReader::new(f).lines() {
        let line = line?;
        match serde_json::from_str::<Entry>(&line) {
            Ok(e) if e.unix_ms >= since_unix_ms => out.push(e),
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}
