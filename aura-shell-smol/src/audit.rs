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

/// The ledger, open for appending.
pub struct Ledger {
    file: File,
}

impl Ledger {
    /// Opens (creating) `DIR/audit.log` for appending.
    pub fn open(dir: &Path) -> io::Result<Ledger> {
        let file = OpenOptions::new().create(true).append(true).open(path(dir))?;
        Ok(Ledger { file })
    }

    /// Appends one record (a single `write` of a whole line).
    pub fn append(&mut self, e: &Egress) -> io::Result<()> {
        let mut line = serde_json::to_vec(&Entry::of(e)).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)
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
