//! The egress audit ledger: one line per datagram that left this device.
//!
//! `DIR/audit.log` holds JSON lines built from the core's `Output::Egress` records: time,
//! peer, address, scope (context), epoch, kind, size bucket, flow cost and leakage
//! charged. Never content. A line is appended (and flushed to the OS) before its datagram
//! is handed to the socket, so the ledger survives a process crash; a power loss can
//! lose the lines of the last moments (the log is not fsynced per datagram).
//!
//! In a directory encrypted at rest every line is sealed instead: `sealed:` and the hex of
//! `nonce || ciphertext || tag`, under the ledger's own key, with the tag of the line
//! before it in the associated data. Whom this device talked to and when stays private,
//! and lines altered, removed, moved or slipped in make the lines around the change fail
//! to open (one to three: the line itself and the one after it; both ends of a swap)
//! instead of passing silently. The count of failed lines does not tell how many were
//! removed, and cutting lines off the end cannot be told from a crash, as for the
//! record log. A ledger written wholly in the clear before the directory sealed its
//! ledger is sealed in place, once, when the peer next starts (replacing the whole file
//! with clear lines is indistinguishable from that, as deleting it is from a new one).
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use aura_proto::guard::Egress;
use aura_proto::journal::ContextId;
use serde::{Deserialize, Serialize};

use crate::store::LineSealer;

/// File name inside the data directory.
pub const FILE: &str = "audit.log";

const SEALED: &str = "sealed:";
const LINE_AAD: &[u8] = b"aura-smol audit line v1";
/// Bytes read back from the end of the ledger at open, to find its last line.
const TAIL: u64 = 64 * 1024;

/// The chain value a line passes to the next: the tag of a sealed line (its last 16
/// bytes), zeros for anything else. Writer and reader compute it the same way for every
/// line, torn or not, so the chain survives a crash mid-write.
fn chain_tag(line: &[u8]) -> [u8; 16] {
    let mut tag = [0u8; 16];
    if let Some(h) = line.strip_prefix(SEALED.as_bytes()) {
        if h.len() >= 2 * (24 + 16) && h.len().is_multiple_of(2) {
            if let Some(b) = unhex(&h[h.len() - 32..]) {
                tag.copy_from_slice(&b);
            }
        }
    }
    tag
}

fn line_aad(prev: &[u8; 16]) -> Vec<u8> {
    [LINE_AAD, &prev[..]].concat()
}

fn push_hex(out: &mut Vec<u8>, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.push(DIGITS[(x >> 4) as usize]);
        out.push(DIGITS[(x & 15) as usize]);
    }
}

fn unhex(h: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    h.chunks(2)
        .map(|p| match p {
            [a, b] => Some(digit(*a)? << 4 | digit(*b)?),
            _ => None,
        })
        .collect()
}

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
    sealer: Option<LineSealer>,
    /// The chain value of the last line in the file (sealed ledgers).
    prev: [u8; 16],
}

impl Ledger {
    /// Opens (creating) `DIR/audit.log` for appending; `sealer` for a directory encrypted
    /// at rest.
    pub fn open(dir: &Path, sealer: Option<LineSealer>) -> io::Result<Ledger> {
        use std::os::unix::fs::OpenOptionsExt;
        // Metadata only, but whom this device talks to and when is nobody else's business.
        // Before the append handle is opened: the sealing replaces the file.
        if let Some(s) = &sealer {
            seal_plain_lines(dir, s)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path(dir))?;
        let (last, torn) = last_line(&path(dir))?;
        Ok(Ledger {
            file,
            // A line a crash cut short ends here, so the next one starts on its own line.
            pending: if torn { vec![b'\n'] } else { Vec::new() },
            sealer,
            prev: chain_tag(&last),
        })
    }

    /// Adds one record (written by the next [`Ledger::flush`]).
    pub fn append(&mut self, e: &Egress) -> io::Result<()> {
        let json = serde_json::to_vec(&Entry::of(e)).map_err(io::Error::other)?;
        match &self.sealer {
            None => self.pending.extend_from_slice(&json),
            Some(s) => {
                let sealed = s.seal(&line_aad(&self.prev), &json);
                self.prev.copy_from_slice(&sealed[sealed.len() - 16..]);
                self.pending.extend_from_slice(SEALED.as_bytes());
                push_hex(&mut self.pending, &sealed);
            }
        }
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

/// The last line of the file at `p` (empty if none) and whether it is torn (no newline).
fn last_line(p: &Path) -> io::Result<(Vec<u8>, bool)> {
    let mut f = File::open(p)?;
    let len = f.metadata()?.len();
    let mut from = len.saturating_sub(TAIL);
    loop {
        f.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        let torn = !tail.is_empty() && !tail.ends_with(b"\n");
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        match body.iter().rposition(|&c| c == b'\n') {
            Some(i) => return Ok((body[i + 1..].to_vec(), torn)),
            // The whole file is one line.
            None if from == 0 => return Ok((body.to_vec(), torn)),
            // A last line longer than the window (only in a damaged file): read it all,
            // so the chain value is the one a reader computes.
            None => from = 0,
        }
    }
}

/// Seals, in place, a ledger written wholly in the clear (before the directory sealed its
/// ledger). A ledger holding any sealed line is left alone, so clear lines put in front
/// of (or among) sealed ones are never sealed into the chain: readers keep counting
/// them. Entries are sealed into one chain; lines that are not entries (torn, damaged)
/// are kept as they are, still counted. Streamed to a file aside, synced, renamed over
/// the ledger.
fn seal_plain_lines(dir: &Path, sealer: &LineSealer) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = path(dir);
    let f = match File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    drop(f);
    let any = BufReader::new(File::open(&p)?)
        .split(b'\n')
        .any(|l| l.is_ok_and(|l| !l.is_empty()));
    if !any || has_sealed_line(&p)? {
        return Ok(());
    }
    let tmp = dir.join("audit.log.sealing");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut out = io::BufWriter::new(f);
    let mut prev = [0u8; 16];
    let (mut sealed, mut kept) = (0usize, 0usize);
    let mut next = Vec::new();
    for line in BufReader::new(File::open(&p)?).split(b'\n') {
        let line = line?;
        next.clear();
        if serde_json::from_slice::<Entry>(&line).is_ok() {
            let b = sealer.seal(&line_aad(&prev), &line);
            next.extend_from_slice(SEALED.as_bytes());
            push_hex(&mut next, &b);
            sealed += 1;
        } else {
            next.extend_from_slice(&line);
            kept += 1;
        }
        prev = chain_tag(&next);
        out.write_all(&next)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &p)?;
    File::open(dir)?.sync_all()?;
    tracing::warn!(
        "audit.log: sealed {sealed} line(s) written in the clear before the ledger was sealed \
         ({kept} unreadable line(s) kept as they were); copies of the old bytes may remain in \
         freed disk blocks or backups"
    );
    Ok(())
}

/// Whether any line of the file at `p` is sealed.
fn has_sealed_line(p: &Path) -> io::Result<bool> {
    for line in BufReader::new(File::open(p)?).split(b'\n') {
        if line?.starts_with(SEALED.as_bytes()) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the ledger, keeping entries at or after `since_unix_ms`; `sealer` for a directory
/// encrypted at rest. Lines that do not read (torn by a crash; in a sealed ledger also
/// lines altered, or next to lines removed, moved or slipped in; a sealed line in a plain
/// directory's ledger) are skipped and counted in the second value.
pub fn read(dir: &Path, since_unix_ms: u64, sealer: Option<&LineSealer>) -> io::Result<(Vec<Entry>, usize)> {
    let f = match File::open(path(dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    // A ledger still wholly in the clear in an encrypted directory was written before the
    // ledger was sealed (the peer seals it at its next start): its lines are entries.
    let sealer = match sealer {
        Some(s) if has_sealed_line(&path(dir))? => Some(s),
        _ => None,
    };
    let mut out = Vec::new();
    let mut bad = 0;
    let mut prev = [0u8; 16];
    for line in BufReader::new(f).split(b'\n') {
        let line = line?;
        let json = match (sealer, line.strip_prefix(SEALED.as_bytes())) {
            (Some(s), Some(h)) => unhex(h).and_then(|b| s.open(&line_aad(&prev), &b)),
            // A sealed line in a plain directory's ledger: not ours to believe.
            (None, Some(_)) => None,
            (Some(_), None) => None,
            (None, None) => Some(line.clone()),
        };
        prev = chain_tag(&line);
        match json.and_then(|j| serde_json::from_slice::<Entry>(&j).ok()) {
            Some(e) if e.unix_ms >= since_unix_ms => out.push(e),
            Some(_) => {}
            None => bad += 1,
        }
    }
    Ok((out, bad))
}
